"""benchmarks/shape_cost.py (session 64): the bound the stored tables put on the NMSE target, and the stored fits of
the default with and without the spectral-shape prior on the small rows where no candidate reaches RL's oracle."""
import json

import pytest

from conftest import BENCH


@pytest.fixture()
def shape_cost(bench_module):
    return bench_module("shape_cost")


def test_ceiling_from_the_stored_tables(shape_cost, capsys):
    """A row whose best candidate in hindsight is below RL's oracle is a miss whatever the choice: at small size 47 of
    the 61 misses of the 504 stored rows, so no selection within the grid passes 457/504 = 90.7 %."""
    small = shape_cost.table_rows("small")
    assert len(small) == 504 and len({r["scene"] for r in small}) == 504
    cut = shape_cost.unreachable(small)
    assert all(r["nmse_default_db"] < r["nmse_rl_oracle_db"] for r in cut)  # each is a miss of the default too
    assert shape_cost.main(["--ceiling"]) == 0
    out = capsys.readouterr().out
    assert ("small: 504 rows, NMSE >= RL oracle 443/504; 61 misses, 47 of them with no candidate reaching RL's "
            "oracle: any choice within the grid reaches at most 457/504 = 90.7 %") in out
    assert "full: 360 rows, NMSE >= RL oracle 342/360; 18 misses, 6 of them" in out


def test_stored_fits_are_those_rows_and_read_back(shape_cost, capsys):
    """The two stored runs hold every one of the 47 rows once, in table order, and their summary is the one quoted
    in benchmarks/QUALITY_HISTORY.md (session 64)."""
    files = [BENCH / "results" / f"shape_cost_small_{p}.jsonl" for p in ("a", "b")]
    recs = [json.loads(line) for f in files for line in f.read_text().splitlines() if line.strip()]
    assert [r["scene"] for r in recs] == [r["scene"] for r in shape_cost.unreachable(shape_cost.table_rows("small"))]
    assert all(r["xfusion_benchmark"] == "shape_cost.py" for r in recs)
    assert shape_cost.main(["--summary", ",".join(map(str, files))]) == 0
    out = capsys.readouterr().out
    for line in ("47 rows; without the shape prior NMSE changes by +0.215 dB on average (median +0.115), higher on 36; "
                 "reaches RL's oracle on 12 (6 of them within 0.005 dB",
                 "default cube as in the table (0.005 dB): 42/47",
                 "higher on 37; velocity <= RL oracle 33 with the prior, 26 without"):
        assert line in out, line


#: fresh small sets: (first row, end row, the issue-13 counts printed by suite_figure.py, the NMSE misses that a
#: candidate of the grid would have passed (the bound reached, the choice did not), the rows under a naive baseline)
FRESH_SMALL = {  # first row, end, summary lines, NMSE misses, the reachable ones, rows under a naive baseline
    "session 64": (1344, 1392, ("beats both naive baselines: 48/48", "NMSE >= RL oracle: 43/48 = 89.6 %",
                                "velocity RMS <= RL oracle: 33/39 = 84.6 %", "in hindsight: 47/48 = 97.9 %"), 5, (), ()),
    "session 67": (1392, 1440, ("beats both naive baselines: 48/48", "NMSE >= RL oracle: 43/48 = 89.6 %",
                                "velocity RMS <= RL oracle: 33/38 = 86.8 %", "in hindsight: 42/48 = 87.5 %"), 5, (), ()),
    "session 68": (1440, 1488, ("beats both naive baselines: 47/48", "NMSE >= RL oracle: 43/48 = 89.6 %",
                                "velocity RMS <= RL oracle: 34/38 = 89.5 %", "in hindsight: 41/48 = 85.4 %"), 5,
                   ("point_sources/501483", "snr_shell/501450", "snr_shell/501470"),
                   ("snr_shell/501485",)),  # its aSAM: 0.283 against 0.245 for Y upsampled in space
    "session 69": (1488, 1536, ("beats both naive baselines: 48/48", "NMSE >= RL oracle: 41/48 = 85.4 %",
                                "velocity RMS <= RL oracle: 30/39 = 76.9 %", "in hindsight: 46/48 = 95.8 %"), 7, (), ()),
    "session 70": (1536, 1584, ("beats both naive baselines: 48/48", "NMSE >= RL oracle: 43/48 = 89.6 %",
                                "velocity RMS <= RL oracle: 36/38 = 94.7 %", "in hindsight: 41/48 = 85.4 %"), 5,
                   ("mixed/501564", "mixed/501569"), ()),
}


@pytest.mark.parametrize("which", sorted(FRESH_SMALL))
def test_fresh_small_rows_read_back(bench_module, capsys, which):
    """48 never-run small held-out rows each (session 64: 1344-1391 of ``suite("heldout")``; session 67: 1392-1439;
    session 68: 1440-1487; session 69: 1488-1535; session 70: 1536-1583; row i from ``n = 24 (i // 24 + 1)``)
    through ``suite.py --select`` and ``tuning.py hindsight`` with the default of their session. Each row is its
    scene, in order, in both files. The issue-13 counts: NMSE 43/48 in the first three and in session 70's, 41/48 in
    session 69's; velocity 33/39, 33/38, 34/38, 30/39 and 36/38; hindsight 47/48, 42/48, 41/48, 46/48 and 41/48; flux
    on all; baselines on all but snr_shell/501485 (aSAM). Every NMSE miss of sessions 64, 67 and 69 is one that no
    candidate of the grid reaches (the bound of ``shape_cost.py``); in session 68's set three of the five are
    reachable, in session 70's two of the five."""
    import csv

    from xfusion import scenes

    first, end, lines, n_miss, reachable, under_baseline = FRESH_SMALL[which]
    names = [scenes.suite("heldout", n=24 * (i // 24 + 1))[i]["name"] for i in range(first, end)]
    res = BENCH / "results"
    files = [res / f"{kind}_fresh_{first}_{end - 1}_small.csv" for kind in ("suite", "hindsight")]
    tables = []
    for path in files:
        with open(path) as fh:
            rows = list(csv.DictReader(fh))
        assert {r["size"] for r in rows} == {"small"} and [r["scene"] for r in rows] == names, path
        tables.append(rows)
    best = {r["scene"]: float(r["nmse_best_db"]) for r in tables[1]}
    miss = [r for r in tables[0] if float(r["nmse_default_db"]) < float(r["nmse_rl_oracle_db"])]
    assert len(miss) == n_miss
    assert tuple(r["scene"].split()[0] for r in tables[0] if r["beats_both_baselines"] != "True") == under_baseline
    assert sorted(r["scene"].split()[0] for r in miss if best[r["scene"]] >= float(r["nmse_rl_oracle_db"])) == list(
        reachable)
    capsys.readouterr()
    bench_module("suite_figure").main(["--base-csv", str(files[0]), "--hindsight-csv", str(files[1])])
    out = capsys.readouterr().out
    for line in ("|total-flux bias| <= 1 %: 48/48",) + lines:
        assert line in out, line
