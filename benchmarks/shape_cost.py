"""What the spectral-shape prior costs and buys on the rows where no tuning candidate reaches RL's oracle.

Issue 13 asks the default's NMSE to reach plain RL's at its best iteration (an oracle that uses the truth) in >= 90 %
of scenes. ``tuning.py hindsight`` fits every candidate of the default's grid (the k ladder, the thresholded
candidate, plain RL at its truth-free count, each delivered through the shape prior as ``fuse`` does) and scores it
against the truth. On a row where even the best of them (``nmse_best_db``) is below RL's oracle
(``nmse_rl_oracle_db`` of ``suite.py``), no truth-free selection within that grid can meet the target: the share of
such rows bounds the NMSE rate any choice rule can reach.

``--ceiling`` (offline, nothing fitted) reads the stored suite and hindsight tables (:data:`TABLES`, the 360-row
table per size and the fresh sets) and prints, per size, the rows, the NMSE misses, the misses no candidate could have
met, and that bound.

Without ``--ceiling`` it fits, on each small row of that kind (or ``--rows a:b`` of them, in table order), the default
``fuse(x, y)`` and the same settings without the shape prior (``fuse(x, y, settings=default, shape_prior=None)``,
``source_lines="none"`` when the default used the line step, which needs the prior), and records both cubes' NMSE and
velocity-map RMS error (brighter half, km/s, as ``suite.py``) beside RL's oracle from the table:

    python benchmarks/shape_cost.py --ceiling
    python benchmarks/shape_cost.py --rows 0:24 --json a.jsonl      # two jobs on two cores
    python benchmarks/shape_cost.py --summary a.jsonl,b.jsonl
"""
import argparse
import csv
import json
import math
import sys
import time
from pathlib import Path

from bench_cli import append_record, check_output, parse_records  # benchmarks/bench_cli.py

SCRIPT = "shape_cost.py"
RESULTS = Path(__file__).resolve().parent / "results"
#: (suite table, hindsight table): the 360 rows per size of the issue-13 table, then session 62's 144 small rows
TABLES = [("suite_heldout.csv", "hindsight_heldout.csv"),
          ("suite_fresh_408_455.csv", "hindsight_fresh_408_455.csv"),
          ("suite_fresh_456_503.csv", "hindsight_fresh_456_503.csv"),
          ("suite_fresh_504_551.csv", "hindsight_fresh_504_551.csv"),
          ("suite_fresh_1200_1343_small.csv", "hindsight_fresh_1200_1343_small.csv")]


def table_rows(size):
    """Every stored row of ``size`` ("full" or "small"): scene, seed, the default's and RL's oracle NMSE (dB), the
    best candidate's NMSE in hindsight (dB), velocity RMS (km/s; NaN without lines) and the choice, in table order."""
    rows = []
    for suite_csv, hind_csv in TABLES:
        with open(RESULTS / hind_csv) as fh:
            best = {r["scene"]: float(r["nmse_best_db"]) for r in csv.DictReader(fh) if r["size"].startswith(size)}
        with open(RESULTS / suite_csv) as fh:
            for r in csv.DictReader(fh):
                if not r["size"].startswith(size):
                    continue
                v, vo = (float(r[k]) if r[k] not in ("", "nan") else math.nan
                         for k in ("velocity_rms_default_kms", "velocity_rms_rl_oracle_kms"))
                rows.append({"scene": r["scene"], "seed": int(r["seed"]), "choice": r["choice"],
                             "nmse_default_db": float(r["nmse_default_db"]),
                             "nmse_rl_oracle_db": float(r["nmse_rl_oracle_db"]),
                             "nmse_best_candidate_db": best[r["scene"]], "velocity_default_kms": v,
                             "velocity_rl_oracle_kms": vo})
    return rows


def unreachable(rows):
    """The rows where no candidate of the grid reaches RL's oracle NMSE."""
    return [r for r in rows if r["nmse_best_candidate_db"] < r["nmse_rl_oracle_db"]]


def ceiling_lines():
    out = []
    for size in ("full", "small"):
        rows = table_rows(size)
        miss = [r for r in rows if r["nmse_default_db"] < r["nmse_rl_oracle_db"]]
        cut = unreachable(rows)
        bound = len(rows) - len(cut)
        out.append(f"{size}: {len(rows)} rows, NMSE >= RL oracle {len(rows) - len(miss)}/{len(rows)}; "
                   f"{len(miss)} misses, {len(cut)} of them with no candidate reaching RL's oracle: any choice "
                   f"within the grid reaches at most {bound}/{len(rows)} = {100.0 * bound / len(rows):.1f} %")
    return out


def measure(row):
    import xfusion
    from xfusion import analysis, metrics, scenes

    i = row["seed"] - 500000
    spec = scenes.suite("heldout", n=24 * (i // 24 + 1))[i]  # the tables' rows: row i from n = 24 (i // 24 + 1)
    if spec["name"] != row["scene"]:
        raise RuntimeError(f"row {row['scene']!r} is not scene {i} ({spec['name']!r})")
    x, y, truth = scenes.from_spec(spec, size="small")
    flux = truth["flux"]
    lm = scenes.line_map_args(truth)
    lsf = float(truth.attrs["lsf_sigma_kev"])
    maps = analysis.line_map(flux, lsf_sigma=lsf, **lm) if lm else None

    def velocity(cube):
        if maps is None:
            return math.nan
        return analysis.map_errors(maps, analysis.line_map(cube, lsf_sigma=lsf, **lm), fraction=0.5)["velocity_rms_kms"]

    t0 = time.perf_counter()
    default = xfusion.fuse(x, y, progress=False)
    params = json.loads(default.attrs["parameters"])
    off = {"shape_prior": None}
    if isinstance(params.get("source_lines"), list):  # the line step at sources needs the prior
        off["source_lines"] = "none"
    plain = xfusion.fuse(x, y, progress=False, settings=default, **off)
    nmse_default = float(metrics.nmse(flux, default["flux"]))
    return dict(row, shape_prior=params.get("shape_prior"),
                nmse_default_now_db=nmse_default,
                nmse_without_shape_db=float(metrics.nmse(flux, plain["flux"])),
                velocity_default_now_kms=float(velocity(default["flux"])),
                velocity_without_shape_kms=float(velocity(plain["flux"])),
                same_as_table=abs(nmse_default - row["nmse_default_db"]) <= 0.005,
                seconds=time.perf_counter() - t0)


def summary_lines(recs):
    n = len(recs)
    if not n:
        return ["no records"]
    d = [r["nmse_without_shape_db"] - r["nmse_default_now_db"] for r in recs]
    reach = [r for r in recs if r["nmse_without_shape_db"] >= r["nmse_rl_oracle_db"]]
    ties = [r for r in reach if r["nmse_without_shape_db"] - r["nmse_rl_oracle_db"] < 0.005]
    lines = [f"{n} rows; without the shape prior NMSE changes by {sum(d) / n:+.3f} dB on average (median "
             f"{sorted(d)[n // 2]:+.3f}), higher on {sum(x > 0 for x in d)}; reaches RL's oracle on {len(reach)} "
             f"({len(ties)} of them within 0.005 dB of it: plain RL at its truth-free count, where RL's oracle run, which "
             f"goes on to at least that count, has its best iterate)",
             f"default cube as in the table (0.005 dB): {sum(r['same_as_table'] for r in recs)}/{n}"]
    v = [r for r in recs if not math.isnan(r["velocity_default_now_kms"])]
    if v:
        dv = [r["velocity_without_shape_kms"] - r["velocity_default_now_kms"] for r in v]

        def hit(key):
            return sum(r[key] <= r["velocity_rl_oracle_kms"] + 1e-9 for r in v)

        lines.append(f"{len(v)} rows with lines; without the shape prior the velocity RMS changes by "
                     f"{sum(dv) / len(v):+.1f} km/s on average (median {sorted(dv)[len(v) // 2]:+.1f}), higher on "
                     f"{sum(x > 0 for x in dv)}; velocity <= RL oracle {hit('velocity_default_now_kms')} with the prior, "
                     f"{hit('velocity_without_shape_kms')} without")
    return lines


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ceiling", action="store_true", help="print the bound from the stored tables and exit")
    ap.add_argument("--rows", default=None, metavar="A:B", help="fit only these of the small rows with no candidate "
                    "reaching RL's oracle (table order)")
    ap.add_argument("--json", default=None, help="append one JSON line per row to this file (a file this script did "
                    "not write is refused before computing)")
    ap.add_argument("--summary", default=None, metavar="FILE[,FILE]", help="summarize stored records and exit")
    args = ap.parse_args(argv)
    if args.ceiling:
        for line in ceiling_lines():
            print(line)
        return 0
    if args.summary:
        recs = []
        for path in args.summary.split(","):
            recs += [r for r in parse_records(Path(path).read_text()) or [] if r.get("xfusion_benchmark") == SCRIPT]
        for line in summary_lines(recs):
            print(line)
        return 0
    check_output(ap, args.json, SCRIPT)
    rows = unreachable(table_rows("small"))
    if args.rows:
        try:
            a, b = (int(v) if v else None for v in args.rows.split(":"))
        except ValueError:
            ap.error(f"--rows {args.rows!r}: give A:B, e.g. 0:24")
        rows = rows[a:b]
    recs = []
    for row in rows:
        rec = measure(row)
        recs.append(rec)
        print(f"{rec['scene'][:42]:42s} NMSE default {rec['nmse_default_now_db']:6.2f} without shape "
              f"{rec['nmse_without_shape_db']:6.2f} RL oracle {rec['nmse_rl_oracle_db']:6.2f} | velocity "
              f"{rec['velocity_default_now_kms']:6.1f} {rec['velocity_without_shape_kms']:6.1f} "
              f"{rec['velocity_rl_oracle_kms']:6.1f} km/s | {rec['seconds']:.0f} s", flush=True)
        if args.json:
            append_record(args.json, rec, SCRIPT)
    for line in summary_lines(recs):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
