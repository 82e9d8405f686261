"""benchmarks/suite_figure.py: the README's suite table and figure are computed from suite.py's JSON rows; and the
command lines of the benchmark scripts (benchmarks/bench_cli.py: indices, JSON options, result files that are not the
script's own are refused before computing), checked by running only their argument parsing."""
import csv
import importlib
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _metrics(nmse, asam, acssim, ergas, v=float("nan")):
    return {"nmse_db": nmse, "asam_rad": asam, "acssim": acssim, "ergas": ergas, "velocity_rms_kms": v,
            "width_rms_kms": v}


def _row(name, kind, default, rl_best, bias):
    return {"name": name, "spec": {"kind": kind, "seed": 1}, "size": "8x8x10", "counts_x": 1e5, "counts_y": 2e5,
            "selected": {"regularization": "none", "max_iter": 7}, "default": default, "rl_best": rl_best,
            "x_up": _metrics(3.0, 0.5, 0.5, 900.0, 400.0), "y_up": _metrics(5.0, 0.4, 0.6, 500.0, 300.0),
            "flux_bias_pct": bias}


@pytest.fixture()
def suite_figure(bench_module):
    return bench_module("suite_figure")


def test_table_and_figure_from_suite_rows(tmp_path, suite_figure):
    rows = [_row("a", "snr_shell", _metrics(12.0, 0.2, 0.3, 200.0, 50.0), _metrics(11.0, 0.2, 0.3, 200.0, 60.0), 0.2),
            # loses to Y upsampled on the spectral angle, and to RL's oracle on NMSE and velocity
            _row("b", "mixed", _metrics(10.0, 0.45, 0.3, 200.0, 80.0), _metrics(10.5, 0.2, 0.3, 200.0, 70.0), -1.5)]
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps({"rows": rows[:1]}))
    b.write_text(json.dumps({"rows": rows[1:] + [{"name": "c", "error": "boom"}]}))
    out_csv, out_png = tmp_path / "t.csv", tmp_path / "f.png"
    suite_figure.main(["--input", f"small={a},{b}", "--csv", str(out_csv), "--png", str(out_png)])
    got = {r["scene"]: r for r in csv.DictReader(out_csv.open())}
    assert set(got) == {"a", "b"}  # the scene that raised is left out
    assert got["a"]["beats_both_baselines"] == "True" and got["b"]["beats_both_baselines"] == "False"
    assert float(got["b"]["nmse_rl_oracle_db"]) == 10.5 and float(got["a"]["velocity_rms_default_kms"]) == 50.0
    assert got["a"]["choice"] == "RL 7 it"
    assert out_png.stat().st_size > 10_000


def test_input_without_rows_is_refused(tmp_path, suite_figure):
    empty = tmp_path / "e.json"
    empty.write_text(json.dumps({"rows": []}))
    with pytest.raises(SystemExit, match="no scene rows"):
        suite_figure.main(["--input", f"small={empty}"])
    with pytest.raises(SystemExit, match="LABEL=FILE"):
        suite_figure.main(["--input", str(empty)])


def test_base_csv_keeps_the_other_rows_and_replaces_the_scenes_measured_again(tmp_path, suite_figure):
    rows = [_row("a", "snr_shell", _metrics(12.0, 0.2, 0.3, 200.0, 50.0), _metrics(11.0, 0.2, 0.3, 200.0, 60.0), 0.2),
            _row("b", "mixed", _metrics(10.0, 0.45, 0.3, 200.0, 80.0), _metrics(10.5, 0.2, 0.3, 200.0, 70.0), -1.5)]
    first, again = tmp_path / "first.json", tmp_path / "again.json"
    first.write_text(json.dumps({"rows": rows}))
    base = tmp_path / "base.csv"
    suite_figure.main(["--input", f"small={first}", "--input", f"full={first}", "--csv", str(base)])
    better = _row("b", "mixed", _metrics(11.0, 0.2, 0.3, 200.0, 65.0), _metrics(10.5, 0.2, 0.3, 200.0, 70.0), 0.1)
    again.write_text(json.dumps({"rows": [better]}))
    out, png = tmp_path / "out.csv", tmp_path / "out.png"
    suite_figure.main(["--base-csv", str(base), "--input", f"small={again}", "--csv", str(out), "--png", str(png)])
    got = [(r["size"], r["scene"], r["nmse_default_db"], r["beats_both_baselines"]) for r in csv.DictReader(out.open())]
    assert got == [("small", "a", "12", "True"), ("small", "b", "11", "True"),  # b measured again, in place
                   ("full", "a", "12", "True"), ("full", "b", "10", "False")]  # the other size untouched
    assert png.stat().st_size > 10_000
    with pytest.raises(SystemExit, match="no rows of size 'huge'"):
        suite_figure.main(["--base-csv", str(base), "--input", f"huge={again}"])


@pytest.fixture()
def run(bench_module, capsys):
    """Run a benchmark script's main in this process, where it must stop at its argument checks: (exit code,
    output). In-process: a subprocess per case would pay xfusion's import again (seconds on a loaded machine)."""

    def go(script, *args):
        mod = bench_module(script[:-3])
        entry = mod.cli if script == "operators.py" else mod.main
        try:
            code = entry(list(args))
        except SystemExit as exc:
            code = exc.code
        out = capsys.readouterr()
        return code or 0, out.out + out.err

    return go


@pytest.mark.parametrize("script, extra", [("suite.py", ["--n", "24"]), ("tuning_cost.py", ["--n", "24"]),
                                           ("mosaic_suite.py", ["--n", "6"]), ("alternatives.py", ["--n", "24"]),
                                           ("rl_lines.py", ["--n", "24"]), ("shape_floor.py", ["--n", "24"]),
                                           ("velocity_redraws.py", ["--n", "24"]), ("shape_in_loop.py", ["--n", "24"]),
                                           ("delivery_probes.py", ["warm", "--n", "24", "--out", "unused.jsonl"]),
                                           ("velocity_scales.py", ["--n", "24"])])
def test_bad_indices_are_argparse_errors(run, script, extra):
    """Session 30 (red team): --indices 99 gave an IndexError traceback, -1 ran the last scene silently."""
    for bad, what in (("99", "index 99 out of range 0.."), ("-1", "index -1 out of range"), ("1,x", "got 'x'")):
        rc, out = run(script, *extra, "--indices", bad)
        assert rc == 2 and what in out and "Traceback" not in out, out[-500:]


def test_mosaic_suite_bad_options_and_scripts_that_did_nothing(run):
    """Session 30 (red team): mosaic_suite --options '{bad' gave a JSONDecodeError traceback; tuning.py --help or an
    unknown sub-command printed nothing and exited 0 (none: IndexError); mosaic.py --sections with a typo ran
    nothing and exited 0; operators.py ignored --help and started its benchmark."""
    rc, out = run("mosaic_suite.py", "--options", "{bad")
    assert rc == 2 and "--options is not valid JSON" in out and "Traceback" not in out
    rc, out = run("tuning.py", "--help")
    assert rc == 0 and "rl_rule INDICES [SIZE]" in out
    rc, out = run("tuning.py", "rl_rul", "2,3", "small")
    assert rc == 2 and "invalid choice: 'rl_rul'" in out
    rc, out = run("tuning.py")
    assert rc == 2 and "required: COMMAND" in out and "Traceback" not in out
    rc, out = run("tuning.py", "rl_rule", "2,x")
    assert rc == 2 and "rl_rule INDICES [SIZE]: bad argument" in out
    rc, out = run("mosaic.py", "--sections", "qualty", "--size", "72", "40")
    assert rc == 2 and "unknown section(s) ['qualty']" in out
    rc, out = run("operators.py", "--help")
    assert rc == 0 and "Time one full Poisson likelihood gradient" in out and "machine:" not in out


def test_operators_threads_section_runs_and_reports_the_same_numbers(run):
    """Session 56: ``operators.py --only threads`` times the thread pool's work on the slowest held-out scene with one
    thread and with two and says whether the outputs are equal to the bit (they must be: tasks of fixed sizes); a
    --repeat below 1 is refused."""
    rc, out = run("operators.py", "--only", "threads", "--repeat", "1")
    assert rc == 0 and "point_sources/500083" in out and "EnergyDependentSpatial of 5 bands" in out
    assert out.count("the same to the bit: True") == 6 and "False" not in out and "machine:" not in out
    rc, out = run("operators.py", "--only", "threads", "--repeat", "0")
    assert rc == 2 and "--repeat must be >= 1" in out


def test_alternatives_size_nxl_is_parsed(run):
    """Session 30 (red team): --help promised --size NxL but 12x80 was passed on as a string and refused."""
    rc, out = run("alternatives.py", "--size", "12x80", "--indices", "99")
    assert rc == 2 and "index 99 out of range" in out  # the size parsed; stopped at the indices
    rc, out = run("alternatives.py", "--size", "12y80")
    assert rc == 2 and "expected 'small', 'default' or NxL like 12x80" in out
    alt = importlib.import_module("alternatives")
    assert alt._size("12x80") == (12, 80) and alt._size("small") == "small"


@pytest.mark.parametrize("script, extra", [("suite.py", []), ("mosaic_suite.py", []), ("tuning_cost.py", []),
                                           ("alternatives.py", []), ("heap.py", []), ("rl_lines.py", []),
                                           ("shape_floor.py", []), ("velocity_redraws.py", []),
                                           ("shape_in_loop.py", []), ("velocity_scales.py", [])])
def test_json_output_that_is_not_the_scripts_own_is_refused_before_computing(run, tmp_path, script, extra):
    """Session 30 (red team): suite.py and mosaic_suite.py --json F overwrote a user's F after computing (tuning_cost,
    alternatives and heap appended to it). A file whose records do not carry the script's marker is refused before
    anything is computed, and left as it was."""
    user = tmp_path / "mine.json"
    user.write_text('{"my": "precious results"}\n')
    # --indices 99: without the check a script stops at once there, instead of computing a suite before writing
    rc, out = run(script, *extra, "--json", str(user), "--indices", "99")
    assert rc == 2 and "refused: it exists and was not written by benchmarks/" + script in out, out[-500:]
    assert user.read_text() == '{"my": "precious results"}\n'
    rc, out = run(script, "--json", str(tmp_path / "no" / "such" / "dir.json"))
    assert rc == 2 and "does not exist" in out


@pytest.mark.parametrize("script", ["spectral_bands.py", "zero_count.py"])
def test_factor_probes_refuse_an_out_not_their_own_and_bad_input_before_computing(run, tmp_path, script):
    """Session 61: the two per-scene factor probes share bench_cli.run_probe: an --out whose records do not carry the
    script's marker is refused and left as it was; bad indices and factors are argparse errors; nothing is written."""
    user = tmp_path / "mine.jsonl"
    user.write_text('{"my": "precious results"}\n')
    rc, out = run(script, "--indices", "0", "--out", str(user))
    assert rc == 2 and "refused: it exists and was not written by benchmarks/" + script in out, out[-500:]
    assert user.read_text() == '{"my": "precious results"}\n'
    new = tmp_path / "new.jsonl"
    for extra, what in ((["--indices", "99"], "index 99 out of range 0..47"), (["--indices", "1,x"], "got 'x'"),
                        (["--indices", "0", "--factors", "two"], "--factors: expected comma-separated factors")):
        rc, out = run(script, *extra, "--out", str(new))
        assert rc == 2 and what in out and "Traceback" not in out, out[-500:]
    assert not new.exists()


def test_result_files_are_recognized_by_their_marker(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    bc = importlib.import_module("bench_cli")
    lines, doc = tmp_path / "a.jsonl", tmp_path / "b.json"
    assert bc.why_not_ours(str(lines), "x.py") is None  # absent
    lines.write_text("")
    assert bc.why_not_ours(str(lines), "x.py") is None  # empty: nothing to lose
    bc.append_record(str(lines), {"index": 1}, "x.py")
    bc.append_record(str(lines), {"index": 2}, "x.py")
    assert [json.loads(v)["index"] for v in lines.read_text().splitlines()] == [1, 2]
    assert "not written by benchmarks/y.py" in bc.why_not_ours(str(lines), "y.py")  # another script's file
    with lines.open("a") as fh:  # a line cut short by a killed run: still ours, the next record on its own line
        fh.write('{"xfusion_benchmark": "x.py", "ind')
    bc.append_record(str(lines), {"index": 3}, "x.py")
    assert json.loads(lines.read_text().splitlines()[-1])["index"] == 3
    bc.write_document(str(doc), {"rows": [1]}, "x.py")
    bc.write_document(str(doc), {"rows": [1, 2]}, "x.py")  # its own file: rewritten (renamed over)
    assert json.loads(doc.read_text()) == {"xfusion_benchmark": "x.py", "rows": [1, 2]}
    assert os.listdir(tmp_path) == sorted(os.listdir(tmp_path)) and len(os.listdir(tmp_path)) == 2  # no temporaries
    doc.write_text('[{"spec": 1}]')
    with pytest.raises(RuntimeError, match="not written"):
        bc.write_document(str(doc), [{"spec": 2}], "x.py")
    assert doc.read_text() == '[{"spec": 1}]'
    sys.modules.pop("bench_cli", None)


def test_quality_times_em_wavelet_explicitly(monkeypatch):
    """Session 30 (red team): quality.py timed fuse's default ("auto": tuning included, may be plain RL) from before
    the call as "EM+wavelet", and printed "0x faster" for ratios below 1."""
    import xfusion

    monkeypatch.syspath_prepend(str(BENCH))
    q = importlib.import_module("quality")
    assert q._ratio(1.0, 2.0) == "2x slower" and q._ratio(3.0, 0.4) == "7.5x faster"
    calls, fuse = [], xfusion.fuse

    def spy(*a, **kw):
        calls.append(kw)
        return fuse(*a, **kw)

    monkeypatch.setattr(q, "RUNS", [("wavelet2d1d", "ista")])
    monkeypatch.setattr(q, "metrics", type("M", (), {"report": staticmethod(lambda *a, **k: {}),
                                                     "nmse": staticmethod(lambda *a, **k: 0.0),
                                                     "format_report": staticmethod(lambda rows: "")}))
    monkeypatch.setattr(q.xfusion, "fuse", spy)
    q.main(["--toy", "small", "--ista", "3", "--rl", "1"])
    timed = calls[-1]
    assert timed["regularization"] == "wavelet2d1d" and timed["method"] == "em" and callable(timed["callback"])
    sys.modules.pop("quality", None)


def _summary_of(run, tmp_path, script, rows):
    """``script --summary`` of ``rows`` written as that script's JSON-lines records: its output (exit code 0)."""
    f = tmp_path / "records.jsonl"
    f.write_text("".join(json.dumps({"xfusion_benchmark": script, **r}) + "\n" for r in rows))
    rc, out = run(script, "--summary", str(f))
    assert rc == 0, out
    return out


def test_velocity_redraws_summary_counts_each_draw_and_the_expected_passes(run, tmp_path):
    """benchmarks/velocity_redraws.py --summary: per draw the scenes whose default velocity error is at most RL's
    oracle's, and the expected pass count (the sum over scenes of the fraction of draws passed)."""
    def draw(d, v_default, v_rl, nmse_default=20.0, nmse_rl=19.0):
        return {"draw": d, "default": {"nmse_db": nmse_default, "velocity_rms_kms": v_default, "width_rms_kms": 1.0},
                "rl_best": {"nmse_db": nmse_rl, "velocity_rms_kms": v_rl, "width_rms_kms": 1.0, "iteration": 5}}

    rows = [{"name": "a/1 x", "size": "small", "draws": [draw(0, 10, 12), draw(1, 13, 12), draw(2, 9, 9)]},
            {"name": "b/2 x", "size": "small", "draws": [draw(0, 30, 20), draw(1, 31, 20), draw(2, 29, 20, 18.0)]}]
    out = _summary_of(run, tmp_path, "velocity_redraws.py", rows)
    assert "draw 0 (the suite): velocity <= RL oracle 1/2  NMSE >= RL oracle 2/2" in out
    assert "draw 1            : velocity <= RL oracle 0/2" in out
    assert "draw 2            : velocity <= RL oracle 1/2  NMSE >= RL oracle 1/2" in out
    assert "expected pass count (sum over scenes of the fraction of draws passed): 0.7/2" in out
    assert "scenes passing every draw 0, none 1, some 1" in out


def test_velocity_scales_parts_add_up_and_the_summary_counts_the_misses(run, bench_module, tmp_path):
    """benchmarks/velocity_scales.py (session 58): a velocity error map over a region splits into the sharp-spectral
    pixels' means and the structure within them, whose squares add up to the whole; a map that is constant on each
    block has no within part, one with zero block means no block part; --summary counts, over the misses, where the
    default's part is the larger."""
    vs = bench_module("velocity_scales")
    rng = np.random.default_rng(3)
    err, use = rng.normal(0, 10, (8, 7)), rng.uniform(size=(8, 7)) < 0.7
    fp = np.zeros((8, 7), bool)
    fp[2:5, 2:5] = True
    d = vs.decompose(err, use, 3, fp)
    assert d["n"] == use.sum() and np.isclose(d["sse"], np.sum(err[use] ** 2))
    assert np.isclose(d["block_sse"] + d["within_sse"], d["sse"]) and d["within_sse"] > 0 and d["block_sse"] > 0
    assert np.isclose(d["footprint_sse"], np.sum(err[use & fp] ** 2)) and np.isclose(d["offset"], err[use].mean())
    blocks = np.kron(rng.normal(0, 5, (3, 3)), np.ones((3, 3)))[:8, :7]  # constant on each 3x3 block (edges cut)
    assert vs.decompose(blocks, use, 3)["within_sse"] < 1e-20
    zero_mean = np.tile([[1.0, -1.0]], (8, 3))[:, :6]  # every 2x2 block's mean is 0
    p = vs.decompose(zero_mean, np.ones((8, 6), bool), 2)
    assert p["block_sse"] == 0 and np.isclose(p["within_sse"], 48.0)
    with pytest.raises(ValueError, match="whole number of pixels"):
        vs.decompose(err, use, 0)

    def part(block, within, offset=0.0, n=10):
        return {"n": n, "sse": (block + within) * n, "offset": offset, "block_sse": block * n,
                "within_sse": within * n, "footprint_sse": 0.1 * (block + within) * n,
                "velocity_rms_kms": float(np.sqrt(block + within))}

    rows = [{"name": "a/1 x", "size": "small", "factor": 3, "choice": "wavelet2d1d", "rl_iteration": 5,
             "default": part(900, 100), "rl_best": part(400, 200)},  # misses: block larger, within smaller
            {"name": "b/2 x", "size": "small", "factor": 3, "choice": "none", "rl_iteration": 9,
             "default": part(100, 100), "rl_best": part(300, 100)}]  # passes
    out = _summary_of(run, tmp_path, "velocity_scales.py", rows)
    assert "2 line scenes; the default's velocity RMS above RL's oracle on 1" in out
    assert "block part larger than RL's on 1 (median ratio 1.50), within part larger on 0 (median 0.71); more of " \
           "the default's excess squared error at the pixel scale than within on 1" in out
    assert "the default would pass on 0" in out and "a/1 x" in out and "b/2 x" not in out


def test_shape_floor_bad_floors_is_an_argparse_error(run):
    """benchmarks/shape_floor.py --floors 3e4,x was a ValueError traceback (session 42)."""
    rc, out = run("shape_floor.py", "--floors", "3e4,x", "--indices", "0")
    assert rc == 2 and "--floors: expected comma-separated pseudo-counts" in out and "Traceback" not in out


def test_shape_in_loop_bad_factors_and_the_summary_pick(run, tmp_path):
    """benchmarks/shape_in_loop.py (session 43): a bad --factors is an argparse error; --summary scores, beside each
    fixed factor, the factor whose half-data cube has the smallest held-out deviance (both instruments)."""
    for bad in ("0,x", "-0.1", "nan"):
        rc, out = run("shape_in_loop.py", "--factors", bad, "--indices", "0")
        assert rc == 2 and "--factors: expected comma-separated fractions" in out and "Traceback" not in out

    def m(nmse, vel, dev=None):
        out = {"nmse_db": nmse, "asam_rad": 0.1, "acssim": 0.1, "ergas": 1.0, "velocity_rms_kms": vel,
               "width_rms_kms": 1.0, "flux_bias_pct": 0.0}
        if dev is not None:
            out["deviance"] = {"x": dev, "y": 1.0}
        return out

    base = {"x_up": m(0.0, 0.0) | {"asam_rad": 9, "acssim": 9, "ergas": 99}, "size": "small"}
    base["y_up"] = base["x_up"]
    rows = [dict(base, name="a/1", default=m(20, 50), f0=m(20, 50, 10.0), **{"f0.1": m(21, 30, 5.0)},
                 rl_best=m(19, 40)),
            dict(base, name="b/2", default=m(20, 50), f0=m(20, 50, 1.0), **{"f0.1": m(18, 20, 2.0)},
                 rl_best=m(19, 40))]
    f = tmp_path / "r.jsonl"
    f.write_text("".join(json.dumps({"xfusion_benchmark": "shape_in_loop.py", **r}) + "\n" for r in rows))
    rc, out = run("shape_in_loop.py", "--summary", str(f))
    assert rc == 0, out
    lines = {ln.split()[0]: ln for ln in out.splitlines() if ln.startswith("   ") and "velocity <=" in ln}
    assert "velocity <= RL oracle 0/2" in lines["f0"] and "NMSE >= RL 2/2" in lines["f0"]
    assert "velocity <= RL oracle 2/2" in lines["f0.1"] and "NMSE >= RL 1/2" in lines["f0.1"]
    # the pick: f0.1 on a/1 (deviance 6 < 11), f0 on b/2 (2 < 3)
    assert "velocity <= RL oracle 1/2" in lines["chosen"] and "NMSE >= RL 2/2" in lines["chosen"]
    assert "picks (chosen): f0 1, f0.1 1" in out
    # the sharp-spectral deviance alone (1.0 everywhere here): the first factor, f0, on both
    assert "velocity <= RL oracle 0/2" in lines["chosen_y"] and "picks (chosen_y): f0 2, f0.1 0" in out


def test_hindsight_csv_keeps_every_candidate(run, tmp_path):
    """Session 46: hindsight_csv's candidate_scores hold each candidate's setting, held-out deviance (null for the
    chosen zeroed fit at its transferred count, printed as "dev nan") and all-count NMSE, parsed from the log line;
    ladder_scores_table refuses a CSV without that column (the session-45 format) before reading any probe rows."""
    log = tmp_path / "h.log"
    log.write_text(
        "noise line\n"
        "snr_shell/7 xr gauss 1.0e+06 psf2.0: choice {'k': 2.0, 'max_iter': 9, 'n_scales_1d': 2, 'null_space': 'zero', "
        "'regularization': 'wavelet2d1d'} -> 14.10 dB, best in hindsight 14.46 dB, loss -0.36 dB; "
        '{"k": 1.0, "n_scales_1d": 2, "null_space": "zero"}: dev 273161, 14.46 dB; '
        '{"max_iter": 18, "regularization": "none"}: dev 281755, 12.54 dB, v 20.1 w 30.2 km/s; '
        '{"chosen": true, "k": 2.0, "max_iter": 9, "n_scales_1d": 2, "null_space": "zero", '
        '"regularization": "wavelet2d1d"}: dev nan, 14.10 dB (57 s, load 2.2)\n')
    out = tmp_path / "h.csv"
    rc, text = run("tuning.py", "hindsight_csv", str(out), f"full={log}")
    assert rc == 0 and "full: 1/1 within 0.5 dB" in text, text
    (row,) = list(csv.DictReader(open(out)))
    assert row["candidates"] == "3" and row["best_candidate"] == '{"k": 1.0, "n_scales_1d": 2, "null_space": "zero"}'
    scores = json.loads(row["candidate_scores"])
    assert [s["heldout_deviance"] for s in scores] == [273161.0, 281755.0, None]
    assert [s["nmse_db"] for s in scores] == [14.46, 12.54, 14.10]
    assert scores[1]["setting"] == {"max_iter": 18, "regularization": "none"}
    # session 47: hindsight's reuse=CSV takes a row's numbers only for the same choice among the same candidates
    import xarray as xr

    mod = sys.modules["tuning"]
    name = "snr_shell/7 xr gauss 1.0e+06 psf2.0"
    ch = {"k": 2.0, "max_iter": 9, "n_scales_1d": 2, "null_space": "zero", "regularization": "wavelet2d1d"}
    cur = xr.Dataset(coords={"setting": ("candidate", [json.dumps(s["setting"]) for s in scores[:2]])})
    again = mod._reusable(str(out), "default", name, ch, cur)
    assert again is not None and again[1:] == (14.10, 14.46, -0.36) and again[0] == scores
    assert mod._reusable(str(out), "small", name, ch, cur) is None  # another size
    assert mod._reusable(str(out), "default", name, dict(ch, max_iter=10), cur) is None  # another count
    other = xr.Dataset(coords={"setting": ("candidate", [json.dumps(scores[0]["setting"])])})
    assert mod._reusable(str(out), "default", name, ch, other) is None  # other candidates visited
    old = tmp_path / "old.csv"
    old.write_text("size,scene,choice\nfull,a,{}\n")
    with pytest.raises(ValueError, match="144 full rows of hindsight_csv with candidate_scores"):
        run("tuning.py", "ladder_scores_table", "full", str(tmp_path / "missing.jsonl"), str(old))


def test_tuning_script_sets_the_threshold_cap_for_its_run_only(run, tmp_path):
    """Session 48: ``--threshold-max-iter N`` sets :data:`xfusion.tuning.THRESHOLD_MAX_ITER` for the sub-command's
    run (what ``_tune_threshold`` reads when called) and restores the library's value after; below 1 it is refused
    before any work."""
    from xfusion import tuning

    seen = []
    mod_before = tuning.THRESHOLD_MAX_ITER
    rc, text = run("tuning.py", "--threshold-max-iter", "0", "hindsight_csv", str(tmp_path / "x.csv"), "full=nothing")
    assert rc == 2 and "--threshold-max-iter must be >= 1" in text
    mod = sys.modules["tuning"]
    mod.COMMANDS["probe_cap"] = ("", lambda a: (lambda: seen.append(tuning.THRESHOLD_MAX_ITER)))
    try:
        rc, _ = run("tuning.py", "--threshold-max-iter", "157", "probe_cap")
    finally:
        del mod.COMMANDS["probe_cap"]
    assert rc == 0 and seen == [157] and tuning.THRESHOLD_MAX_ITER == mod_before == 100


def test_every_row_of_the_results_tables_is_the_scene_table_n_names(monkeypatch):
    """Sessions 49-50: the README table grew to 216 held-out rows per size (rows 144-167 from ``suite("heldout",
    n=168)``, 168-191 from ``n=192``, 192-215 from ``n=216``). Each row of ``results/suite_heldout.csv`` and
    ``results/hindsight_heldout.csv`` must be the scene ``tuning.table_n`` names for its index, in table order, at both
    sizes; an index past the table is refused."""
    from xfusion import scenes

    monkeypatch.syspath_prepend(str(BENCH))
    tuning_script = importlib.import_module("tuning")
    try:
        names = [scenes.suite("heldout", n=tuning_script.table_n(i))[i]["name"]
                 for i in range(tuning_script.TABLE_ROWS)]
        for path, sizes in (("suite_heldout.csv", ("full size", "small")), ("hindsight_heldout.csv", ("full", "small"))):
            rows = list(csv.DictReader(open(BENCH / "results" / path)))
            for size in sizes:
                assert [r["scene"] for r in rows if r["size"] == size] == names, (path, size)
        with pytest.raises(ValueError, match="rows 0-215"):
            tuning_script.table_n(216)
        assert [tuning_script.table_n(i) for i in (0, 95, 96, 143, 144, 167, 168, 191, 192, 215)] == \
            [24, 96, 144, 144, 168, 168, 192, 192, 216, 216]
    finally:
        sys.modules.pop("tuning", None)


def test_target_counts_with_their_intervals(tmp_path, suite_figure, capsys):
    """Session 49: the suite table's target counts come with the Wilson 95 % interval of each pass rate, and a rate
    whose interval spans the target says so; the closed forms at k = 0 and k = n (upper z^2 / (n + z^2), lower
    n / (n + z^2)) pin the interval."""
    z2 = 1.96 ** 2
    assert suite_figure.wilson(0, 10) == pytest.approx((0.0, z2 / (10 + z2)))
    assert suite_figure.wilson(10, 10) == pytest.approx((10 / (10 + z2), 1.0))
    lo, hi = suite_figure.wilson(129, 144)
    assert 0.83 < lo < 0.84 and 0.93 < hi < 0.94
    assert suite_figure.verdict(129, 144, 0.9, (lo, hi)) == "not met (the 95 % interval spans the target)"
    assert suite_figure.verdict(144, 144, 0.95, suite_figure.wilson(144, 144)) == "met"
    assert suite_figure.verdict(143, 144, 1.0, suite_figure.wilson(143, 144)) == "not met"
    rows = [_row("a", "snr_shell", _metrics(12.0, 0.2, 0.3, 200.0, 50.0), _metrics(11.0, 0.2, 0.3, 200.0, 60.0), 0.2),
            _row("b", "mixed", _metrics(10.0, 0.45, 0.3, 200.0, 80.0), _metrics(10.5, 0.2, 0.3, 200.0, 70.0), -1.5),
            _row("c", "synchrotron", _metrics(9.0, 0.2, 0.3, 200.0), _metrics(8.0, 0.2, 0.3, 200.0), 0.1)]
    src = tmp_path / "rows.json"
    src.write_text(json.dumps({"rows": rows}))
    hind = tmp_path / "h.csv"
    hind.write_text("size,scene,within_0_5_db\nsmall,a,True\nsmall,b,False\nsmall,c,True\n")
    suite_figure.main(["--input", f"small={src}", "--hindsight-csv", str(hind), "--report-rows", "last=1-2"])
    out = capsys.readouterr().out
    assert "small, all:" in out and "NMSE >= RL oracle: 2/3 = 66.7 %" in out
    assert "velocity RMS <= RL oracle: 1/2 = 50.0 %" in out  # c has no lines: not counted
    assert "|total-flux bias| <= 1 %: 2/3 = 66.7 %" in out and "in hindsight: 2/3" in out
    assert "small, rows 1-2 (last):" in out and "in hindsight: 1/2" in out and "miss:" not in out
    suite_figure.main(["--input", f"small={src}", "--fails"])
    out = capsys.readouterr().out
    assert "miss: b -0.50 dB" in out and "miss: b 80.0 vs 70.0 km/s" in out and "miss: b -1.50 %" in out
    with pytest.raises(SystemExit):
        suite_figure.main(["--input", f"small={src}", "--report-rows", "last=1"])


def test_tuning_cost_summary_of_the_stored_fresh_rows(run, tmp_path):
    """Session 55: the README's cost figures for rows 408-455 are read back from the stored records
    (``results/tuning_cost_fresh_408_431.jsonl`` and ``_432_455``, 24 rows per size each): each record is the scene of
    ``suite("heldout", n)`` its index names, its cube equals the one fit with the chosen settings, and ``--summary`` prints the counts
    within 3x and names every scene above it. A file of another script is refused."""
    from xfusion import scenes

    for first, last in ((408, 431), (432, 455)):
        path = BENCH / "results" / f"tuning_cost_fresh_{first}_{last}.jsonl"
        recs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        names = [s["name"] for s in scenes.suite("heldout", n=last + 1)]
        for size in ("default", "small"):
            part = [r for r in recs if r["size"] == size]
            assert [r["index"] for r in part] == list(range(first, last + 1)), size
            assert all(r["name"] == names[r["index"]] and r["chosen_same_cube"] for r in part)
    path = BENCH / "results" / "tuning_cost_fresh_408_431.jsonl"
    recs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    rc, out = run("tuning_cost.py", "--summary", str(path))
    above = sum(r["ratio_cpu"] > 3 for r in recs)
    assert rc == 0 and "default / one fixed fit, CPU: median 2.22, max 5.26, within 3x 21/24" in out
    assert "default / one fixed fit, CPU: median 2.13, max 6.22, within 3x 17/24" in out
    assert out.count("above 3x: ") == above == 10 and "mixed/500409" in out
    both = f"{path},{BENCH / 'results' / 'tuning_cost_fresh_432_455.jsonl'}"
    rc, out = run("tuning_cost.py", "--summary", both)  # the README's 48 rows per size
    assert rc == 0 and "size default: 48 scenes" in out and "within 3x 44/48" in out and "within 3x 35/48" in out
    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps({"xfusion_benchmark": "suite.py", "rows": []}) + "\n")
    rc, out = run("tuning_cost.py", "--summary", str(other))
    assert rc == 2 and "not records of benchmarks/tuning_cost.py" in out and "Traceback" not in out
    rc, out = run("tuning_cost.py", "--summary", str(tmp_path / "absent.jsonl"))
    assert rc == 2 and "absent.jsonl: No such file or directory" in out and "Traceback" not in out


def test_several_tables_are_pooled_in_order(tmp_path, suite_figure, capsys):
    """Session 55: ``--base-csv A,B`` and ``--hindsight-csv A,B`` count the targets over several result tables (the
    README's table and the fresh replications), B's rows after A's, so that ``--report-rows`` can name B's alone."""
    rows = [_row("a", "snr_shell", _metrics(12.0, 0.2, 0.3, 200.0, 50.0), _metrics(11.0, 0.2, 0.3, 200.0, 60.0), 0.2),
            _row("b", "mixed", _metrics(10.0, 0.45, 0.3, 200.0, 80.0), _metrics(10.5, 0.2, 0.3, 200.0, 70.0), -1.5)]
    src, first, second = tmp_path / "rows.json", tmp_path / "a.csv", tmp_path / "b.csv"
    src.write_text(json.dumps({"rows": rows}))
    suite_figure.main(["--input", f"small={src}", "--csv", str(first)])
    src.write_text(json.dumps({"rows": rows[1:]}))
    suite_figure.main(["--input", f"small={src}", "--csv", str(second)])
    h1, h2 = tmp_path / "h1.csv", tmp_path / "h2.csv"
    h1.write_text("size,scene,within_0_5_db\nsmall,a,True\nsmall,b,True\n")
    h2.write_text("size,scene,within_0_5_db\nsmall,b,False\n")
    capsys.readouterr()
    suite_figure.main(["--base-csv", f"{first},{second}", "--hindsight-csv", f"{h1},{h2}", "--report-rows",
                       "second=2-2"])
    out = capsys.readouterr().out
    assert "NMSE >= RL oracle: 1/3 = 33.3 %" in out and "in hindsight: 2/3" in out
    second_part = out[out.index("small, rows 2-2 (second):"):]
    assert "NMSE >= RL oracle: 0/1" in second_part and "in hindsight: 0/1" in second_part
    # the stored tables pooled: the README's small-size NMSE count of table and fresh rows together
    res = BENCH / "results"
    suite_figure.main(["--base-csv", f"{res / 'suite_heldout.csv'},{res / 'suite_fresh_408_455.csv'}"])
    out = capsys.readouterr().out
    assert "NMSE >= RL oracle: 235/264 = 89.0 %" in out and "NMSE >= RL oracle: 253/264 = 95.8 %" in out


def test_every_row_of_the_fresh_replications_is_its_scene(suite_figure, capsys):
    """Sessions 54-56: the fresh replications (rows 408-455, 456-503 and 504-551 of ``suite("heldout")``, row i from
    ``n = 24 (i // 24 + 1)``) hold, at both sizes and in both files, exactly those scenes in order; and the four tables
    pooled give the README's counts over 360 rows per size."""
    from xfusion import scenes

    for first, last in ((408, 455), (456, 503), (504, 551)):
        names = [scenes.suite("heldout", n=24 * (i // 24 + 1))[i]["name"] for i in range(first, last + 1)]
        for path, sizes in ((f"suite_fresh_{first}_{last}.csv", ("full size", "small")),
                            (f"hindsight_fresh_{first}_{last}.csv", ("full", "small"))):
            rows = list(csv.DictReader(open(BENCH / "results" / path)))
            for size in sizes:
                assert [r["scene"] for r in rows if r["size"] == size] == names, (path, size)
    res = BENCH / "results"
    tables = ("heldout", "fresh_408_455", "fresh_456_503", "fresh_504_551")
    capsys.readouterr()
    suite_figure.main(["--base-csv", ",".join(str(res / f"suite_{t}.csv") for t in tables),
                       "--hindsight-csv", ",".join(str(res / f"hindsight_{t}.csv") for t in tables)])
    out = capsys.readouterr().out
    for line in ("NMSE >= RL oracle: 342/360 = 95.0 %", "NMSE >= RL oracle: 317/360 = 88.1 %",
                 "velocity RMS <= RL oracle: 274/289 = 94.8 %", "velocity RMS <= RL oracle: 238/289 = 82.4 %",
                 "in hindsight: 291/360 = 80.8 %", "in hindsight: 309/360 = 85.8 %",
                 "beats both naive baselines: 358/360", "beats both naive baselines: 359/360"):
        assert line in out, line


def test_stored_wall_times_of_the_threaded_code():
    """Session 56: the README's 60 s figures are read back from ``results/wall_time_threads.jsonl``: each record is the
    scene of ``suite("heldout", n)`` its index names; the code with the thread pool (ce5db84) gave the same cube to the
    bit as the code before it on every scene both timed (this file's paired runs and session 55's
    ``wall_time_long_counts.jsonl``), and took at most 60 s on every scene it timed."""
    from xfusion import scenes

    def load(name):
        return [json.loads(line) for line in (BENCH / "results" / name).read_text().splitlines() if line.strip()]

    recs = load("wall_time_threads.jsonl")
    for r in recs:
        n = 24 * (r["index"] // 24 + 1)
        assert r["name"] == scenes.suite("heldout", n=n)[r["index"]]["name"] and r["size"] == "default"
    new = [r for r in recs if r["code"] == "ce5db84"]
    before = {r["name"]: r["flux_md5"] for r in load("wall_time_long_counts.jsonl") + recs if r.get("code") != "ce5db84"}
    both = [r for r in new if r["name"] in before]
    assert len({r["name"] for r in both}) == 5 and all(r["flux_md5"] == before[r["name"]] for r in both)
    assert len({r["name"] for r in new}) == 9 and max(r["wall"] for r in new) <= 60.0
    paired = {(r["code"], r["index"]): r["wall"] for r in recs if "paired" in r["run"]}
    assert paired[("6bd6e07", 83)] / paired[("ce5db84", 83)] > 1.4


def test_session_57_measurements_read_back():
    """Session 57 (nothing adopted), read back from the stored rows: ``noise="propagated"`` as the default's noise model
    on the small rows 504-551 (``results/suite_propagated_504_551.csv``, the same scenes as ``suite_fresh_504_551.csv``
    and the same RL oracle) takes NMSE >= RL oracle from 40 to 27 and the mean NMSE down by 0.87 dB; and on the 38 small
    rows of the four tables where the default chose plain RL (``results/rl_floor_small.csv``: the default reproduced,
    and the same fit without the level-0 floor) NMSE >= RL oracle goes 13 -> 22 (the small-size count 317 -> 326/360)
    while the line-width RMS is worse on 34 of the 38."""
    import math
    import statistics

    res = BENCH / "results"
    fresh = [r for r in csv.DictReader(open(res / "suite_fresh_504_551.csv")) if r["size"] == "small"]
    prop = list(csv.DictReader(open(res / "suite_propagated_504_551.csv")))
    assert [r["scene"] for r in prop] == [r["scene"] for r in fresh]
    assert all(abs(float(a["nmse_rl_oracle_db"]) - float(b["nmse_rl_oracle_db"])) < 1e-3 for a, b in zip(prop, fresh))

    def passes(rows):
        return sum(float(r["nmse_default_db"]) >= float(r["nmse_rl_oracle_db"]) for r in rows)

    assert (passes(fresh), passes(prop)) == (40, 27)
    change = statistics.mean(float(a["nmse_default_db"]) - float(b["nmse_default_db"]) for a, b in zip(prop, fresh))
    assert -0.88 < change < -0.86

    suite = {}
    for t in ("heldout", "fresh_408_455", "fresh_456_503", "fresh_504_551"):
        suite.update({r["scene"]: r for r in csv.DictReader(open(res / f"suite_{t}.csv")) if r["size"] == "small"})
    rl = list(csv.DictReader(open(res / "rl_floor_small.csv")))
    assert sorted(r["scene"] for r in rl) == sorted(s for s, r in suite.items() if r["choice"].startswith("RL"))
    assert all(abs(float(r["nmse_floor_db"]) - float(suite[r["scene"]]["nmse_default_db"])) < 0.01 for r in rl)
    oracle = {r["scene"]: float(suite[r["scene"]]["nmse_rl_oracle_db"]) for r in rl}
    with_floor = sum(float(r["nmse_floor_db"]) >= oracle[r["scene"]] for r in rl)
    without = sum(float(r["nmse_no_floor_db"]) >= oracle[r["scene"]] for r in rl)
    assert (len(rl), with_floor, without) == (38, 13, 22)
    assert sum(float(r["nmse_default_db"]) >= float(r["nmse_rl_oracle_db"]) for r in suite.values()) - with_floor \
        + without == 326
    wider = [float(r["width_rms_no_floor_kms"]) > float(r["width_rms_floor_kms"]) for r in rl
             if math.isfinite(float(r["width_rms_floor_kms"]))]
    assert (len(wider), sum(wider)) == (38, 34)


def test_session_58_measurements_read_back():
    """Session 58 (diagnostics, nothing adopted), read back from the stored rows. (1) ``results/velocity_scales_small_
    misses.jsonl``: every small row of the four tables whose velocity RMS is above RL's oracle, run by
    ``benchmarks/velocity_scales.py``; the default's error reproduces the CSVs' on all 51; where this script's RL oracle
    (100 iterations at most) still beats the default (42 rows) the default's error at the sharp-spectral pixel scale is
    the larger on 38; at full size (``velocity_scales_full_misses.jsonl``, all 15 misses) on all 15. (2) ``results/rl_floor_small.csv``: on the 38 plain-RL rows a level-0 floor of 3e4 instead of 1e5
    gives NMSE >= RL oracle on 19 (13 with 1e5, 22 without) and wider line-width errors than 1e5 on 35."""
    import math

    res = BENCH / "results"
    suite = {}
    for t in ("heldout", "fresh_408_455", "fresh_456_503", "fresh_504_551"):
        suite.update({r["scene"]: r for r in csv.DictReader(open(res / f"suite_{t}.csv")) if r["size"] == "small"})
    recs = [json.loads(line) for line in open(res / "velocity_scales_small_misses.jsonl")]
    assert all(r["xfusion_benchmark"] == "velocity_scales.py" for r in recs)
    misses = {s for s, r in suite.items() if r["velocity_rms_default_kms"] and
              float(r["velocity_rms_default_kms"]) > float(r["velocity_rms_rl_oracle_kms"])}
    assert sorted(r["name"] for r in recs) == sorted(misses) and len(recs) == 51
    assert all(abs(r["default"]["velocity_rms_kms"] - float(suite[r["name"]]["velocity_rms_default_kms"])) < 0.05
               for r in recs)
    for r in recs:  # the parts add up to the whole
        for p in (r["default"], r["rl_best"]):
            assert math.isclose(p["block_sse"] + p["within_sse"], p["sse"], rel_tol=1e-9)
    still = [r for r in recs if r["default"]["velocity_rms_kms"] > r["rl_best"]["velocity_rms_kms"]]
    larger = sum(r["default"]["block_sse"] / r["default"]["n"] > r["rl_best"]["block_sse"] / r["rl_best"]["n"]
                 for r in still)
    assert (len(still), larger) == (42, 38)
    full = [json.loads(line) for line in open(res / "velocity_scales_full_misses.jsonl")]  # all 15 full-size misses
    big = {}
    for t in ("heldout", "fresh_408_455", "fresh_456_503", "fresh_504_551"):
        big.update({r["scene"]: r for r in csv.DictReader(open(res / f"suite_{t}.csv")) if r["size"] == "full size"})
    assert sorted(r["name"] for r in full) == sorted(s for s, r in big.items() if r["velocity_rms_default_kms"] and
                                                     float(r["velocity_rms_default_kms"]) >
                                                     float(r["velocity_rms_rl_oracle_kms"]))
    assert sum(r["default"]["block_sse"] / r["default"]["n"] > r["rl_best"]["block_sse"] / r["rl_best"]["n"]
               for r in full) == 15

    rl = list(csv.DictReader(open(res / "rl_floor_small.csv")))
    oracle = {r["scene"]: float(suite[r["scene"]]["nmse_rl_oracle_db"]) for r in rl}
    counts = [sum(float(r[c]) >= oracle[r["scene"]] for r in rl)
              for c in ("nmse_floor_db", "nmse_floor_3e4_db", "nmse_no_floor_db")]
    assert counts == [13, 19, 22]
    assert sum(float(r["width_rms_floor_3e4_kms"]) > float(r["width_rms_floor_kms"]) for r in rl) == 35


def test_session_58_runon_tuning_seeds_read_back():
    """Session 58's rule R(f) (the thresholded field stopped at f N, the compact sources run on to N) on the tuning
    seeds, as ``benchmarks/delivery_probes.py runon`` stored it: 12 small rows and 4 full-size rows touched; at small
    size the mean NMSE change is -0.369 dB (f = 0.5) and -0.071 dB (f = 0.75), both below the -0.05 dB written first,
    so the rule went no further; every point-source sky's velocity map is better at both sizes."""
    res = BENCH / "results"
    kept = {}
    for size, touched, means in (("small", 12, (-0.369, -0.071)), ("full", 4, (-0.206, 0.028))):
        recs = [json.loads(line) for line in open(res / f"runon_tune_{size}.jsonl")]
        hit = [r["result"] for r in recs if r["result"]]
        assert len(hit) == touched
        for label, mean in zip(("f0.5", "f0.75"), means):
            got = sum(h[label]["nmse"] - h["count"]["nmse"] for h in hit) / len(hit)
            assert abs(got - mean) < 5e-4, (size, label, got)
            kept[size, label] = got >= -0.05  # the criterion written before the run
        ps = [r["result"] for r in recs if r["result"] and r["scene"].startswith("point_sources")]
        assert ps and all(h[f]["v"] < h["count"]["v"] for h in ps for f in ("f0.5", "f0.75"))
    assert kept == {("small", "f0.5"): False, ("small", "f0.75"): False, ("full", "f0.5"): False,
                    ("full", "f0.75"): True}  # no fraction passes at both sizes: the rule stopped there


def _runon_criteria(hit):
    """Session 59's criteria a-e over the touched rows (``delivery_probes.py runon`` records): mean NMSE change
    (dB), worst, velocity lower on (rows with lines), median width change, largest |flux bias| (%)."""
    d = np.array([h["f0.75"]["nmse"] - h["count"]["nmse"] for h in hit])
    lines = [h for h in hit if "v" in h["count"]]
    lower = sum(h["f0.75"]["v"] < h["count"]["v"] for h in lines)
    width = float(np.median([h["f0.75"]["w"] / h["count"]["w"] - 1 for h in lines]))
    return d.mean(), d.min(), lower, len(lines), width, max(abs(h["f0.75"]["flux"]) for h in hit)


def test_session_59_runon_fresh_rows_read_back():
    """Session 59's rule (the thresholded field stopped at 3/4 of thinning's count where the compact sources hold
    at least 2.5 % of the sharp-spatial counts; the sources run on to the count) on never-run held-out rows
    552-791, as ``delivery_probes.py runon --min-share 0.025`` stored them; criteria written before each run: over
    the touched rows a mean NMSE change >= -0.05 dB, none below -0.5 dB, velocity lower on >= 2/3, median width
    change <= +1 %, |flux bias| <= 1 %, at least 4 rows. Small rows 552-599 and 600-695 and full-size rows
    552-695 decide; rows 696-791 test the line-free variant R** (not adopted: 3 full-size rows, too few)."""
    res = BENCH / "results"
    recs = {s: {r["index"]: r for r in map(json.loads, open(res / f"runon_fresh_{s}.jsonl"))}
            for s in ("small", "full")}
    assert all(sorted(v) == list(range(552, 792)) for v in recs.values())
    for r in (r for v in recs.values() for r in v.values()):  # the gate is the share: below it no fit ran
        assert r["result"] is None or r["result"]["share"] >= 0.025
        assert r["choice"] is not None or r["share"] < 0.025

    def hit(size, lo, hi, keep=lambda h: True):
        return [r["result"] for i, r in recs[size].items() if lo <= i <= hi and r["result"] and keep(r["result"])]

    decided = {}
    for size, lo, hi, n, mean in (("small", 552, 599, 10, -0.039), ("small", 600, 695, 23, -0.025),
                                  ("full", 552, 695, 4, -0.004), ("small", 696, 791, 19, -0.005),
                                  ("full", 696, 791, 5, 0.045)):
        h = hit(size, lo, hi)
        m, worst, lower, lines, width, flux = _runon_criteria(h)
        assert len(h) == n and abs(m - mean) < 5e-4, (size, lo, len(h), m)
        decided[size, lo] = (m >= -0.05 and worst >= -0.5 and 3 * lower >= 2 * lines and width <= 0.01
                             and flux <= 1.0 and len(h) >= 4)
    assert all(decided.values())
    # R** (at least one line-free source among them): on 696-791 it touches 13 small rows, 3 full-size ones
    lf = [len(hit(s, 696, 791, lambda h: h["line_free"] > 0)) for s in ("small", "full")]
    assert lf == [13, 3]
    # the point-source skies: every velocity map lower at both sizes
    ps = [r["result"] for s in recs for r in recs[s].values() if r["result"] and r["scene"].startswith("point_")]
    assert len(ps) >= 50 and all(h["f0.75"]["v"] < h["count"]["v"] for h in ps)


def test_session_59_runon_on_the_seen_rows_read_back():
    """The same probe on every seen held-out row (README table and three fresh sets, 360 per size) that session 59's
    rule touches: 71 small rows, 21 full-size rows; the count fit reproduces the stored suite row. With the rule's
    change substituted on those rows, velocity <= RL oracle goes 238 -> 247 (small) and 274 -> 275 (full size) of
    289, NMSE >= RL oracle 317 -> 317 and 342 -> 343 of 360."""
    res = BENCH / "results"
    suites = [res / f for f in ("suite_heldout.csv", "suite_fresh_408_455.csv", "suite_fresh_456_503.csv",
                                "suite_fresh_504_551.csv")]
    for size, label, touched, counts in (("small", "small", 71, (317, 317, 238, 247)),
                                         ("full", "full size", 21, (342, 343, 274, 275))):
        recs = {r["scene"]: r["result"] for r in map(json.loads, open(res / f"runon_seen_{size}.jsonl"))}
        hit = {k: v for k, v in recs.items() if v}
        assert len(hit) == touched and all(h["share"] >= 0.025 for h in hit.values())
        rows = [r for f in suites for r in csv.DictReader(open(f)) if r["size"] == label]
        assert len(rows) == 360
        got = [0, 0, 0, 0]
        for r in rows:
            h = hit.get(r["scene"])
            d, ratio = (0.0, 1.0) if h is None else (h["f0.75"]["nmse"] - h["count"]["nmse"],
                                                      h["f0.75"].get("v", 1.0) / h["count"].get("v", 1.0))
            if h is not None:
                assert abs(h["count"]["nmse"] - float(r["nmse_default_db"])) < 0.05  # the stored row, reproduced
            oracle = float(r["nmse_rl_oracle_db"])
            got[0] += float(r["nmse_default_db"]) >= oracle
            got[1] += float(r["nmse_default_db"]) + d >= oracle
            v = float(r["velocity_rms_default_kms"] or "nan")
            if np.isfinite(v):
                got[2] += v <= float(r["velocity_rms_rl_oracle_kms"])
                got[3] += v * ratio <= float(r["velocity_rms_rl_oracle_kms"])
        assert tuple(got) == counts, (size, got)


def test_session_59_half_count_costs_point_source_skies_in_every_share_bin():
    """The field at half the count on the 71 seen small rows the rule touches: the point-source skies lose 0.07-0.09 dB
    on average in each share bin, beyond the -0.05 dB the rule had to keep (so 3/4 stays)."""
    res = BENCH / "results"
    recs = [r["result"] for r in map(json.loads, open(res / "runon_seen_small_f05.jsonl"))
            if r["result"] and r["scene"].startswith("point_sources")]
    assert len(recs) == 60
    for lo, hi in ((0.025, 0.05), (0.05, 0.1), (0.1, 1.0)):
        d = [h["f0.5"]["nmse"] - h["count"]["nmse"] for h in recs if lo <= h["share"] < hi]
        assert len(d) >= 9 and -0.1 < np.mean(d) < -0.05


def _band_criteria(recs, f):
    """Over the fitted rows of ``benchmarks/spectral_bands.py`` records: (rows, mean NMSE change of factor ``f``
    against 1 (dB), worst, rows below -0.5 dB, rows with lines, median velocity- and width-RMS changes, largest
    |flux bias| (%))."""
    hit = [r for r in recs if r["result"]]
    d = np.array([r["result"][f]["nmse"] - r["result"]["1"]["nmse"] for r in hit])
    lines = [r["result"] for r in hit if "v" in r["result"]["1"]]
    v = float(np.median([h[f]["v"] / h["1"]["v"] - 1 for h in lines])) if lines else None
    w = float(np.median([h[f]["w"] / h["1"]["w"] - 1 for h in lines])) if lines else None
    return (len(hit), float(d.mean()), float(d.min()), int((d < -0.5).sum()), len(lines), v, w,
            max(abs(r["result"][f]["flux"]) for r in hit))


def test_session_60_spectral_band_factor_read_back(monkeypatch):
    """Session 60 (``benchmarks/spectral_bands.py``): the bands coarse in space and fine in energy thresholded at a
    factor times the others' in every wavelet fit of the default. On every sky (factor 2; tuning seeds 48 small,
    fresh rows 792-887 small and 792-815 full size) it failed the full-size width criterion (median +1.6 % > +1 %).
    Only where the summed sharp-spectral counts read as a continuum (factor 8, picked on the tuning seeds among 2,
    4 and 8): with the family prior's line test (richness < 100; fresh rows 816-911 small, 816-875 full size) a
    faint cluster core (richness 52) passed it and its velocity RMS rose 1.2 % (> +1 %): failed; with richness
    < 36 (the tuning seeds' gap; fresh rows 912-1007 small, 876-935 full size) every criterion was met: adopted.
    Criteria, written before each run: mean NMSE change >= +0.05 dB (everywhere) / >= +0.1 dB (continuum), at most
    5 % / no row below -0.5 dB, velocity and width medians <= +1 % (velocity lower on >= 40 % everywhere), |flux
    bias| <= 1 %, at least 8 touched rows (continuum)."""
    res = BENCH / "results"

    def load(name):
        return list(map(json.loads, open(res / f"spectral_band_{name}.jsonl")))

    # everywhere, factor 2
    n, m, worst, below, nl, v, w, flux = _band_criteria(load("tune_small"), "2")
    assert (n, nl, below) == (48, 38, 0) and abs(m - 0.116) < 5e-4
    verdicts = []
    for name, rows, mean in (("fresh_small", 96, 0.218), ("fresh_full", 24, 0.456)):
        recs = load(name)
        assert sorted(r["index"] for r in recs) == list(range(792, 792 + rows))
        n, m, worst, below, nl, v, w, flux = _band_criteria(recs, "2")
        lower = sum(r["result"]["2"]["v"] < r["result"]["1"]["v"] for r in recs if "v" in r["result"]["1"])
        assert n == rows and abs(m - mean) < 5e-4
        verdicts.append(m >= 0.05 and below <= 0.05 * n and v <= 0.01 and lower >= 0.4 * nl and w <= 0.01
                        and flux <= 1.0)
    assert verdicts == [True, False]  # the full-size widths: median +1.6 %
    assert 0.015 < _band_criteria(load("fresh_full"), "2")[6] < 0.017
    # continuum skies only, factor 8: the tuning seeds pick 8 (the best mean at both sizes, no row below -0.5 dB)
    for name, rows in (("continuum_tune_small", 10), ("continuum_tune_full", 7)):
        recs = load(name)
        means = {f: _band_criteria(recs, f)[1] for f in ("2", "4", "8")}
        assert len([r for r in recs if r["result"]]) == rows and max(means, key=means.get) == "8"
        assert all(_band_criteria(recs, f)[3] == 0 for f in means)

    def decided(name, lo, hi, max_rich, rows, mean):
        recs = load(name)
        assert sorted(r["index"] for r in recs) == list(range(lo, hi + 1))
        assert all((r["result"] is not None) == (r["line_richness"] < max_rich) for r in recs)
        n, m, worst, below, nl, v, w, flux = _band_criteria(recs, "8")
        assert n == rows and abs(m - mean) < 5e-4
        return m >= 0.1 and worst >= -0.5 and (nl == 0 or (v <= 0.01 and w <= 0.01)) and flux <= 1.0 and n >= 8
    assert decided("continuum_fresh_small", 816, 911, 100, 19, 1.698)
    assert not decided("continuum_fresh_full", 816, 875, 100, 13, 2.281)  # cluster_core/500841: velocity +1.2 %
    assert decided("continuum36_fresh_small", 912, 1007, 36, 20, 1.367)
    assert decided("continuum36_fresh_full", 876, 935, 36, 13, 1.877)
    import xfusion.tuning as tuning
    assert (tuning.SPECTRAL_BAND_FACTOR, tuning.SPECTRAL_BAND_RICHNESS) == (8.0, 36.0)  # the adopted rule
    # the seen rows the rule can touch (diagnostic): every small row (360) and 116 full-size line rows (the 111 with
    # under 1.5e6 counts and 5 others), read by tuning.line_richness: below 36 only synchrotron skies
    seen = list(map(json.loads, open(res / "spectral_band_seen_richness.jsonl")))
    small = [r for r in seen if r["size"] == "small"]
    assert len(small) == 360 and {r["scene"].split("/")[0] for r in small if r["line_richness"] < 36} == {"synchrotron"}
    assert sum(r["line_richness"] < 36 for r in small) == 71
    full = [r for r in seen if r["size"] == "full" and not r["scene"].startswith("synchrotron")]
    assert len(full) >= 111 and min(r["line_richness"] for r in full) > 90
    # the adopted rule's fresh continuum rows through benchmarks/suite.py --select (33: all 20 small, all 13 full):
    # every one beats both naive baselines on the four metrics and reaches RL's oracle NMSE; flux within 1 %
    monkeypatch.syspath_prepend(str(BENCH))
    beats = importlib.import_module("suite")._beats
    rows = list(map(json.loads, open(res / "spectral_band_continuum36_suite.jsonl")))
    assert [sum(r["size"] == s for r in rows) for s in ("small", "full")] == [20, 13]
    assert all(r["selected"]["spectral_band_factor"] == 8.0 for r in rows if r["selected"]["regularization"]
               == "wavelet2d1d")
    assert all(beats(r["default"], r["x_up"]) and beats(r["default"], r["y_up"]) for r in rows)
    assert all(r["default"]["nmse_db"] >= r["rl_best"]["nmse_db"] and abs(r["flux_bias_pct"]) <= 1.0 for r in rows)
    # hindsight on them (every candidate with the factor 8, fitted on all counts): small 16/20, full size 6/6
    hs = list(csv.DictReader(open(res / "spectral_band_continuum36_hindsight.csv")))
    assert [(sum(r["size"] == s for r in hs), sum(r["size"] == s and r["within_0_5_db"] == "True" for r in hs))
            for s in ("small", "full")] == [(20, 16), (6, 6)]
    assert all('"spectral_band_factor": 8.0' in r["choice"] for r in hs)
    # the 71 seen small rows it touches (all synchrotron) through suite.py --select: still 71/71 beat both baselines
    # and reach RL's oracle; NMSE +1.37 dB on average against the stored suite rows
    seen = list(map(json.loads, open(res / "spectral_band_seen_synchrotron_small.jsonl")))
    assert len(seen) == 71 and all(r["selected"]["spectral_band_factor"] == 8.0 for r in seen)
    assert all(beats(r["default"], r["x_up"]) and beats(r["default"], r["y_up"]) for r in seen)
    assert all(r["default"]["nmse_db"] >= r["rl_best"]["nmse_db"] and abs(r["flux_bias_pct"]) <= 1.0 for r in seen)
    gain = np.array([r["default"]["nmse_db"] - r["stored_nmse_default_db"] for r in seen])
    assert abs(gain.mean() - 1.373) < 5e-4 and gain.min() > -0.01
    # and the 28 full-size synchrotron rows of the three fresh sets (408-551): all take the factor 8, still beat both
    # baselines and reach RL's oracle; NMSE +2.89 dB on average against the stored rows (at least +0.57)
    full = list(map(json.loads, open(res / "spectral_band_seen_synchrotron_full.jsonl")))
    assert len(full) == 28 and all(r["selected"]["spectral_band_factor"] == 8.0 for r in full)
    assert all(beats(r["default"], r["x_up"]) and beats(r["default"], r["y_up"]) for r in full)
    assert all(r["default"]["nmse_db"] >= r["rl_best"]["nmse_db"] and abs(r["flux_bias_pct"]) <= 1.0 for r in full)
    gain = np.array([r["default"]["nmse_db"] - r["stored_nmse_default_db"] for r in full])
    assert abs(gain.mean() - 2.889) < 5e-4 and gain.min() > 0.5


def _bottom(name, touched_only=True):
    """Session 61 records (``benchmarks/zero_count.py``): per measured row, the NMSE change of the zeroed prior run to
    fuse's stop (factor 10 -> 50 iterations) against its transferred count (factor 1.25), and whether session 61's
    rule touches the row (a continuum sky at k = 0.125 with a half-data best iterate >= 8)."""
    recs = list(map(json.loads, open(BENCH / "results" / f"zero_count_{name}.jsonl")))
    out = []
    for r in recs:
        if not r.get("result"):
            continue
        hit = r["continuum"] and r["settings"]["k"] == 0.125 and r["n_half"] >= 8
        if hit or not touched_only:
            out.append((r["index"], r["result"]["10"]["nmse"] - r["result"]["1.25"]["nmse"], r))
    return recs, out


def test_session_61_zero_count_read_back(monkeypatch):
    """Session 61: the zeroed prior's count on continuum skies. A larger transfer factor than ZERO_FACTOR (1.25) on
    every continuum sky failed on the tuning seeds (criteria written first: >= +0.10 dB at each size); running to
    fuse's stop only where the walk kept the ladder's lowest rung with a half-data best iterate >= 8 (H2, written
    before its runs) met its criteria on never-run rows and was adopted (xfusion.tuning.bottom_rung_count)."""
    import xfusion.tuning as tuning

    recs, rows = _bottom("tune_small", touched_only=False)
    cont = [r for _, _, r in rows if r["continuum"]]
    assert len(cont) == 17
    means = {f: np.mean([r["result"][f]["nmse"] - r["result"]["1.25"]["nmse"] for r in cont])
             for f in ("1.5", "2", "3", "4", "10")}
    assert max(means.values()) < 0.10 and abs(means["1.5"] - 0.050) < 5e-4  # stage 1: no factor qualifies
    _, rows = _bottom("tune_full", touched_only=False)
    assert len(rows) == 6 and all(np.mean([r["result"][f]["nmse"] - r["result"]["1.25"]["nmse"] for _, _, r in rows])
                                  < 0 for f in ("1.5", "2", "3", "4", "10"))
    # H2, tuning seeds (new draws): 6 small rows touched, none at full size
    for name, n, mean in (("bottom_tune_small", 6, 0.465), ("bottom_tune_full", 0, None),
                          ("bottom_fresh_small", 3, 0.564), ("bottom_fresh_full", 0, None),
                          ("bottom_fresh2_small", 5, 0.840), ("bottom_s60rows_small", 4, 0.294),
                          ("bottom_fresh3_full", 0, None)):
        recs, rows = _bottom(name)
        d = [x for _, x, _ in rows]
        assert len(d) == n, name
        if n:
            assert abs(np.mean(d) - mean) < 5e-4 and min(d) > -0.5, name
            assert all(abs(r["result"]["10"]["flux"]) <= 1.0 for _, _, r in rows)
    recs, rows = _bottom("bottom_fresh_small")
    assert sorted(r["index"] for r in recs) == list(range(1008, 1104))
    assert sorted(r["index"] for r in _bottom("bottom_fresh_full")[0]) == list(range(936, 984))
    # the one full-size row the rule touches anywhere (of the 71 seen full-size synchrotron rows) loses; the default
    # now runs it to 50
    recs, rows = _bottom("bottom_seen_full")
    assert len(recs) == 71 and sorted(r["index"] for r in recs) == sorted(set(range(2, 216, 5)) | set(range(412, 552, 5)))
    assert [(i, round(x, 2), r["default_count"], r["same_cube"]) for i, x, r in rows] == [(62, -1.02, 50, True)]
    # seen small synchrotron rows, hindsight with session 60's default: 51/71 (50/71 before it); with the rule's
    # delivery (the ladder rung's own all-count fit) substituted on the 20 rows it touches: 61/71 (diagnostic)
    hs = list(csv.DictReader(open(BENCH / "results" / "hindsight_seen_synchrotron_small_s60.csv")))
    within, moved = 0, 0
    for r in hs:
        c, cs = json.loads(r["choice"]), json.loads(r["candidate_scores"])
        new = float(r["nmse_choice_db"])
        if c.get("null_space") == "zero" and c.get("k") == 0.125 and 10 <= c.get("max_iter", 50) < 50:
            new = [x["nmse_db"] for x in cs if x["setting"].get("k") == 0.125 and "max_iter" not in x["setting"]
                   and x["setting"].get("null_space") == "zero"][0]
            moved += 1
        within += new >= float(r["nmse_best_db"]) - 0.5
    assert len(hs) == 71 and sum(r["within_0_5_db"] == "True" for r in hs) == 51 and (moved, within) == (20, 61)
    # measured end to end with the adopted default (tuning.py hindsight, the same 71 rows): 62/71; one more than the
    # substitution because the chosen count is no longer a candidate of the grid where the rule applies (e.g.
    # synchrotron/500057: the count's 37.85 dB was the best; now the best is the chosen 37.59)
    hs61 = {r["scene"]: r for r in csv.DictReader(open(BENCH / "results" / "hindsight_seen_synchrotron_small_s61.csv"))}
    assert set(hs61) == {r["scene"] for r in hs} and sum(r["within_0_5_db"] == "True" for r in hs61.values()) == 62
    ran_on = [s for s, r in hs61.items() if json.loads(r["choice"]).get("max_iter") == 50 and json.loads(
        {r["scene"]: r for r in hs}[s]["choice"]).get("max_iter", 50) < 50]
    assert len(ran_on) == 20
    assert (tuning.ZERO_BOTTOM_HALF, tuning.K_LADDER[0], tuning.ZERO_FACTOR) == (8, 0.125, 1.25)
    # the 8 touched never-run small rows through benchmarks/suite.py --select with the adopted default: it runs them
    # to 50 iterations, its NMSE is the probe's, every row beats both baselines on the four metrics and RL's oracle
    monkeypatch.syspath_prepend(str(BENCH))
    beats = importlib.import_module("suite")._beats
    suite_rows = list(map(json.loads, open(BENCH / "results" / "zero_count_bottom_fresh_suite.jsonl")))
    probe = {r["scene"]: r["result"]["10"]["nmse"] for name in ("bottom_fresh_small", "bottom_fresh2_small")
             for _, _, r in _bottom(name)[1]}
    assert sorted(r["name"] for r in suite_rows) == sorted(probe)
    for r in suite_rows:
        assert r["selected"]["max_iter"] == 50 and abs(r["default"]["nmse_db"] - probe[r["name"]]) < 1e-9
        assert beats(r["default"], r["x_up"]) and beats(r["default"], r["y_up"]) and abs(r["flux_bias_pct"]) < 1.0
        assert r["default"]["nmse_db"] > r["rl_best"]["nmse_db"]


def _fresh_full_size(suite_figure, capsys, first, end):
    """``(tables, printed)`` of the fresh full-size rows ``first .. end - 1`` of ``suite("heldout")`` (row i from
    ``n = 24 (i // 24 + 1)``): the suite and hindsight CSVs, each checked to hold those scenes in order, and what
    ``suite_figure.py --fails`` prints for them."""
    from xfusion import scenes

    names = [scenes.suite("heldout", n=24 * (i // 24 + 1))[i]["name"] for i in range(first, end)]
    paths = [BENCH / "results" / f"{kind}_fresh_{first}_{end - 1}_full.csv" for kind in ("suite", "hindsight")]
    tables = []
    for path, size in zip(paths, ("full size", "full")):
        rows = list(csv.DictReader(open(path)))
        assert {r["size"] for r in rows} == {size} and [r["scene"] for r in rows] == names, path
        tables.append(rows)
    capsys.readouterr()
    suite_figure.main(["--base-csv", str(paths[0]), "--hindsight-csv", str(paths[1]), "--fails"])
    return tables, capsys.readouterr().out


def _hindsight_misses(rows):
    """``(missed, pairs)`` of a hindsight table's rows: the rows more than 0.5 dB below the best candidate by scene
    name, and the sorted (family of the choice, family of the best candidate) of each."""
    missed = {r["scene"].split()[0]: r for r in rows if r["within_0_5_db"] != "True"}
    return missed, sorted((_family(json.loads(r["choice"])), _family(json.loads(r["best_candidate"])))
                          for r in missed.values())


def _family(setting):
    """The family of a hindsight candidate's setting: "rl" (plain RL), "zero" or "threshold" (the 2D-1D prior)."""
    return "rl" if setting.get("regularization") == "none" else setting.get("null_space", "zero")


def test_session_65_fresh_full_size_rows_read_back(suite_figure, capsys):
    """Session 65: 48 never-run full-size held-out rows (1080-1127 of ``suite("heldout")``, row i from
    ``n = 24 (i // 24 + 1)``) through ``suite.py --select`` and ``tuning.py hindsight`` with today's default: each row
    is its scene, in order, in both files; the issue-13 counts. Baselines, NMSE, velocity and flux met as on the table;
    hindsight within 0.5 dB 38/48 (not met: 291/360 on the table). Its ten misses in session 57's categories: 7 family
    choices (the one NMSE miss, mixed/501104, plain RL chosen, among them), 2 the zeroed choice's transferred count (the
    same rung at fuse's default stop within 0.5 dB of the best), 1 the zeroed ladder's k."""
    tables, out = _fresh_full_size(suite_figure, capsys, 1080, 1128)

    def category(row):
        ch, best = json.loads(row["choice"]), float(row["nmse_best_db"])
        if _family(ch) == "zero" and "max_iter" in ch:  # the same rung at fuse's default stop
            rung = [c["nmse_db"] for c in json.loads(row["candidate_scores"])
                    if "max_iter" not in c["setting"] and _family(c["setting"]) == "zero" and c["setting"]["k"] == ch["k"]]
            if rung and rung[0] >= best - 0.5:
                return "count"
        return "family" if _family(ch) != _family(json.loads(row["best_candidate"])) else "k"

    missed = {r["scene"].split()[0]: category(r) for r in tables[1] if r["within_0_5_db"] != "True"}
    assert sorted(missed.values()) == ["count"] * 2 + ["family"] * 7 + ["k"]
    assert missed["mixed/501104"] == "family" and missed["cluster_core/501096"] == "count"
    for line in ("beats both naive baselines: 48/48", "NMSE >= RL oracle: 47/48 = 97.9 %", "miss: mixed/501104 -0.98 dB",
                 "velocity RMS <= RL oracle: 37/38 = 97.4 %", "|total-flux bias| <= 1 %: 48/48",
                 "in hindsight: 38/48 = 79.2 %"):
        assert line in out, line


def test_session_67_fresh_full_size_rows_read_back(suite_figure, capsys):
    """Session 67: 24 never-run full-size held-out rows (1128-1151 of ``suite("heldout")``, row i from ``n = 24 (i //
    24 + 1)``) through ``suite.py --select`` and ``tuning.py hindsight`` with today's default: each row is its scene, in
    order, in both files; the issue-13 counts (hindsight 22/24). One miss is new in kind: on a faint shell
    (snr_shell/501130, 1.1e5 counts) plain RL at one iteration had the least held-out deviance, 3.57 dB below the
    zeroed ladder's top rung (k = 16)."""
    tables, out = _fresh_full_size(suite_figure, capsys, 1128, 1152)
    missed = {r["scene"].split()[0]: json.loads(r["choice"]) for r in tables[1] if r["within_0_5_db"] != "True"}
    assert sorted(missed) == ["snr_shell/501130", "snr_shell/501135"]
    assert missed["snr_shell/501130"] == {"max_iter": 1, "regularization": "none"}
    for line in ("beats both naive baselines: 24/24", "NMSE >= RL oracle: 23/24 = 95.8 %", "miss: mixed/501139 -0.05 dB",
                 "velocity RMS <= RL oracle: 17/20 = 85.0 %", "|total-flux bias| <= 1 %: 24/24",
                 "in hindsight: 22/24 = 91.7 %"):
        assert line in out, line


def test_session_68_fresh_full_size_rows_read_back(suite_figure, capsys):
    """Session 68: the next 24 never-run full-size held-out rows (1152-1175) with today's default: each row is its
    scene, in order, in both files; baselines, NMSE, velocity and flux on every row; hindsight 18/24. Its six misses:
    two the zeroed ladder's k on bright synchrotron skies (k = 0.125 run to fuse's stop, k = 0.5-1 better), four
    family choices, both ways."""
    tables, out = _fresh_full_size(suite_figure, capsys, 1152, 1176)
    missed = {r["scene"].split()[0]: json.loads(r["choice"]) for r in tables[1] if r["within_0_5_db"] != "True"}
    assert sorted(missed) == ["cluster_core/501171", "mixed/501154", "mixed/501169", "snr_shell/501175",
                              "synchrotron/501152", "synchrotron/501162"]
    assert all(missed[s]["k"] == 0.125 and missed[s]["max_iter"] == 50 for s in ("synchrotron/501152",
                                                                                  "synchrotron/501162"))
    assert max(abs(float(r["flux_bias_pct"])) for r in tables[0]) < 0.4
    for line in ("beats both naive baselines: 24/24", "NMSE >= RL oracle: 24/24 = 100.0 %",
                 "velocity RMS <= RL oracle: 19/19 = 100.0 %", "|total-flux bias| <= 1 %: 24/24",
                 "in hindsight: 18/24 = 75.0 %"):
        assert line in out, line


def test_session_73_fresh_full_size_rows_read_back(suite_figure, capsys):
    """Session 73: 24 never-run full-size held-out rows (1416-1439) with session 71's default: each row is its scene,
    in order, in both files; baselines, velocity and flux on every row, NMSE 22/24 (both misses within 0.1 dB),
    hindsight 17/24. Of the seven misses five are family choices, two of them 4 dB on point-source skies where the
    zeroed prior's held-out deviance was 0.2-0.5 % below the thresholded prior's; two are the zeroed ladder's k."""
    tables, out = _fresh_full_size(suite_figure, capsys, 1416, 1440)

    missed = {r["scene"].split()[0]: r for r in tables[1] if r["within_0_5_db"] != "True"}
    kinds = {s: "family" if _family(json.loads(r["choice"])) != _family(json.loads(r["best_candidate"])) else "k"
             for s, r in missed.items()}
    assert sorted(kinds.values()) == ["family"] * 5 + ["k"] * 2
    for s in ("point_sources/501433", "point_sources/501438"):
        r = missed[s]
        assert float(r["loss_db"]) < -3.8 and json.loads(r["choice"])["null_space"] == "zero"
        dev = {_family(c["setting"]): c["heldout_deviance"] for c in json.loads(r["candidate_scores"])
               if c["heldout_deviance"] is not None and c["setting"].get("k") == json.loads(r["choice"])["k"]}
        assert 0.001 < (dev["threshold"] - dev["zero"]) / dev["zero"] < 0.005
    for line in ("beats both naive baselines: 24/24", "NMSE >= RL oracle: 22/24 = 91.7 %",
                 "miss: mixed/501424 -0.09 dB, point_sources/501438 -0.06 dB",
                 "velocity RMS <= RL oracle: 19/19 = 100.0 %", "|total-flux bias| <= 1 %: 24/24",
                 "in hindsight: 17/24 = 70.8 %"):
        assert line in out, line


def test_session_74_fresh_full_size_rows_read_back(suite_figure, capsys):
    """Session 74: 24 never-run full-size held-out rows (1440-1463), the same default: baselines, velocity and flux on
    every row, NMSE 23/24 (mixed/501444, plain RL chosen, -0.06 dB), hindsight 16/24. None of the eight misses is the
    kind benchmarks/family_kl.py found out of reach (the zeroed prior chosen where the thresholded one was better):
    four are the zeroed ladder's k or count (cluster_core/501441 -3.17 dB), three the thresholded prior where a zeroed
    rung was better, one plain RL where the thresholded prior was."""
    tables, out = _fresh_full_size(suite_figure, capsys, 1440, 1464)

    missed, pairs = _hindsight_misses(tables[1])
    assert pairs == [("rl", "threshold")] + [("threshold", "zero")] * 3 + [("zero", "zero")] * 4
    assert float(missed["cluster_core/501441"]["loss_db"]) == -3.17
    for line in ("beats both naive baselines: 24/24", "NMSE >= RL oracle: 23/24 = 95.8 %", "miss: mixed/501444 -0.06 dB",
                 "velocity RMS <= RL oracle: 19/19 = 100.0 %", "|total-flux bias| <= 1 %: 24/24",
                 "in hindsight: 16/24 = 66.7 %"):
        assert line in out, line


def test_session_75_fresh_full_size_rows_read_back(suite_figure, capsys):
    """Session 75: 24 never-run full-size held-out rows (1464-1487), the same default: flux on every row, baselines
    23/24 (snr_shell/501485 loses aSAM to Y upsampled in space: 0.256 against 0.245; the same sky missed at small size
    in session 68), NMSE 23/24 (point_sources/501483 -0.62 dB), velocity 18/19, hindsight 16/24. Of the eight misses
    four chose the zeroed prior where the thresholded one was better (point_sources/501483 -4.60 dB), three are the
    zeroed ladder's k, one the thresholded prior where a zeroed rung was better."""
    tables, out = _fresh_full_size(suite_figure, capsys, 1464, 1488)

    missed, pairs = _hindsight_misses(tables[1])
    assert pairs == [("threshold", "zero")] + [("zero", "threshold")] * 4 + [("zero", "zero")] * 3
    assert float(missed["point_sources/501483"]["loss_db"]) == -4.60
    under = [r for r in tables[0] if r["beats_both_baselines"] != "True"]
    assert [r["scene"].split()[0] for r in under] == ["snr_shell/501485"]
    for line in ("beats both naive baselines: 23/24", "NMSE >= RL oracle: 23/24 = 95.8 %",
                 "miss: point_sources/501483 -0.62 dB", "velocity RMS <= RL oracle: 18/19 = 94.7 %",
                 "miss: point_sources/501473 38.2 vs 35.3 km/s", "|total-flux bias| <= 1 %: 24/24",
                 "in hindsight: 16/24 = 66.7 %"):
        assert line in out, line


def test_session_76_fresh_full_size_rows_read_back(suite_figure, capsys):
    """Session 76: 24 never-run full-size held-out rows (1488-1511), the same default: baselines, NMSE and flux on
    every row, velocity 19/20 (snr_shell/501495, a faint line sky), hindsight 20/24. The four misses: two the zeroed
    ladder's k (synchrotron/501497 -1.19 dB, mixed/501499 -0.77), one the thresholded prior where a zeroed rung was
    better (cluster_core/501506 -0.78), one the zeroed prior where the thresholded one was better
    (point_sources/501508 -3.07)."""
    tables, out = _fresh_full_size(suite_figure, capsys, 1488, 1512)

    missed, pairs = _hindsight_misses(tables[1])
    assert pairs == [("threshold", "zero"), ("zero", "threshold"), ("zero", "zero"), ("zero", "zero")]
    assert {name: float(r["loss_db"]) for name, r in missed.items()} == {
        "synchrotron/501497": -1.19, "mixed/501499": -0.77, "cluster_core/501506": -0.78,
        "point_sources/501508": -3.07}
    assert all(r["beats_both_baselines"] == "True" for r in tables[0])
    for line in ("beats both naive baselines: 24/24", "NMSE >= RL oracle: 24/24 = 100.0 %",
                 "velocity RMS <= RL oracle: 19/20 = 95.0 %", "miss: snr_shell/501495 971.1 vs 786.3 km/s",
                 "|total-flux bias| <= 1 %: 24/24", "in hindsight: 20/24 = 83.3 %"):
        assert line in out, line


def test_session_77_fresh_full_size_rows_read_back(suite_figure, capsys):
    """Session 77: 24 never-run full-size held-out rows (1512-1535), the same default: baselines, NMSE and flux on
    every row, velocity 18/19 (point_sources/501513), hindsight 16/24, the lowest of any full-size set. The eight
    misses, 0.59-1.00 dB: five the zeroed ladder's k (three synchrotron skies, two mixed ones), three the
    thresholded prior where a zeroed rung was better (a faint cluster core and two point-source skies)."""
    tables, out = _fresh_full_size(suite_figure, capsys, 1512, 1536)

    missed, pairs = _hindsight_misses(tables[1])
    assert pairs == [("threshold", "zero")] * 3 + [("zero", "zero")] * 5
    assert {name: float(r["loss_db"]) for name, r in missed.items()} == {
        "synchrotron/501517": -1.00, "cluster_core/501521": -0.90, "synchrotron/501522": -0.73,
        "point_sources/501523": -0.98, "mixed/501524": -0.59, "synchrotron/501532": -0.79,
        "point_sources/501533": -0.67, "mixed/501534": -0.86}
    assert all(r["beats_both_baselines"] == "True" for r in tables[0])
    for line in ("beats both naive baselines: 24/24", "NMSE >= RL oracle: 24/24 = 100.0 %",
                 "velocity RMS <= RL oracle: 18/19 = 94.7 %", "miss: point_sources/501513 47.3 vs 44.9 km/s",
                 "|total-flux bias| <= 1 %: 24/24", "in hindsight: 16/24 = 66.7 %"):
        assert line in out, line


def test_session_78_fresh_full_size_rows_read_back(suite_figure, capsys):
    """Session 78: 24 never-run full-size held-out rows (1536-1559), the same default: baselines and flux on every
    row, NMSE 23/24 and velocity 18/19 (both missed by mixed/501539, the zeroed prior at the ladder's lowest rung run to
    fuse's stop where the thresholded one was better), hindsight 17/24. The seven misses: the thresholded prior where a
    zeroed rung was better three times, the reverse once, the zeroed count twice (the same rung at fuse's stop was the
    best) and the zeroed ladder's k once."""
    tables, out = _fresh_full_size(suite_figure, capsys, 1536, 1560)

    missed, pairs = _hindsight_misses(tables[1])
    assert pairs == [("threshold", "zero")] * 3 + [("zero", "threshold")] + [("zero", "zero")] * 3
    assert {name: float(r["loss_db"]) for name, r in missed.items()} == {
        "mixed/501539": -0.74, "point_sources/501543": -0.94, "mixed/501544": -0.95, "point_sources/501548": -0.57,
        "snr_shell/501550": -0.59, "cluster_core/501551": -2.10, "point_sources/501558": -0.52}
    choice = {name: json.loads(r["choice"]) for name, r in missed.items()}
    best = {name: json.loads(r["best_candidate"]) for name, r in missed.items()}
    same_k = [name for name in missed if _family(choice[name]) == _family(best[name]) == "zero"
              and choice[name]["k"] == best[name]["k"]]
    assert sorted(same_k) == ["cluster_core/501551", "mixed/501544"]  # the count, not the rung
    assert all(r["beats_both_baselines"] == "True" for r in tables[0])
    for line in ("beats both naive baselines: 24/24", "NMSE >= RL oracle: 23/24 = 95.8 %",
                 "miss: mixed/501539 -0.12 dB", "velocity RMS <= RL oracle: 18/19 = 94.7 %",
                 "miss: mixed/501539 70.6 vs 70.1 km/s",
                 "|total-flux bias| <= 1 %: 24/24", "in hindsight: 17/24 = 70.8 %"):
        assert line in out, line


def test_session_73_science_of_the_full_size_misses_read_back():
    """Session 73: the seven hindsight misses of rows 1416-1439 run again with ``tuning.py hindsight ... science`` (the
    same choices and NMSE, and each candidate's velocity- and width-map RMS errors, parsed by ``hindsight_csv``). On
    the six line skies the NMSE-best candidate is better in both maps on two (point_sources/501433, cluster_core/501416),
    worse in both on two (cluster_core/501431, point_sources/501418: the choice keeps the maps better) and better in
    one, worse in the other on two."""
    sci = list(csv.DictReader(open(BENCH / "results" / "hindsight_science_misses_1416_1439_full_s73.csv")))
    plain = {r["scene"]: r for r in csv.DictReader(open(BENCH / "results" / "hindsight_fresh_1416_1439_full.csv"))}
    assert len(sci) == 7 and all(plain[r["scene"]]["within_0_5_db"] != "True" for r in sci)
    verdict = {}
    for r in sci:
        assert r["choice"] == plain[r["scene"]]["choice"] and r["nmse_choice_db"] == plain[r["scene"]]["nmse_choice_db"]
        assert r["nmse_best_db"] == plain[r["scene"]]["nmse_best_db"]
        cands, choice = json.loads(r["candidate_scores"]), json.loads(r["choice"])
        chosen = ([c for c in cands if c["setting"].get("chosen")] or [c for c in cands if c["setting"] == choice])[0]
        best = max((c for c in cands if not c["setting"].get("chosen")), key=lambda c: c["nmse_db"])
        if "velocity_rms_kms" not in chosen:
            continue  # no lines
        better = [best[m] < chosen[m] for m in ("velocity_rms_kms", "width_rms_kms")]
        verdict[r["scene"].split()[0]] = "both" if all(better) else "neither" if not any(better) else "one"
    assert verdict == {"point_sources/501433": "both", "cluster_core/501416": "both", "cluster_core/501431": "neither",
                       "point_sources/501418": "neither", "mixed/501429": "one", "point_sources/501438": "one"}


def test_session_62_fresh_small_rows_read_back(suite_figure, capsys):
    """Session 62: 144 never-run small held-out rows (1200-1343 of ``suite("heldout")``, row i from
    ``n = 24 (i // 24 + 1)``) through ``suite.py --select`` and ``tuning.py hindsight`` with the default of that
    session (sessions 59-61's rules included): each row is its scene, in order, in both files; the issue-13 counts.
    Hindsight within 0.5 dB 130/144 (met on these rows; the 360-row table reads 322/360), NMSE >= RL oracle 126/144
    and velocity <= RL oracle 97/115 (not met), baselines and flux on all."""
    from xfusion import scenes

    names = [scenes.suite("heldout", n=24 * (i // 24 + 1))[i]["name"] for i in range(1200, 1344)]
    res = BENCH / "results"
    for path in ("suite_fresh_1200_1343_small.csv", "hindsight_fresh_1200_1343_small.csv"):
        rows = list(csv.DictReader(open(res / path)))
        assert {r["size"] for r in rows} == {"small"} and [r["scene"] for r in rows] == names, path
    capsys.readouterr()
    suite_figure.main(["--base-csv", str(res / "suite_fresh_1200_1343_small.csv"),
                       "--hindsight-csv", str(res / "hindsight_fresh_1200_1343_small.csv")])
    out = capsys.readouterr().out
    for line in ("beats both naive baselines: 144/144", "NMSE >= RL oracle: 126/144 = 87.5 %",
                 "velocity RMS <= RL oracle: 97/115 = 84.3 %", "|total-flux bias| <= 1 %: 144/144",
                 "in hindsight: 130/144 = 90.3 %"):
        assert line in out, line


def test_fuse_timeline_records_every_stage_and_unwraps_them(bench_module):
    """``benchmarks/fuse_timeline.py`` (session 67): the default ``fuse`` of the small toy with its stages wrapped
    records the tuning and its candidates, plain RL on its own thread inside the tuning's span, the final fit's loop
    and the result builder in order, with the EM steps of each, and leaves the library's functions as they were."""
    import xfusion.fuse  # noqa: F401  (the module, for the identity check below)
    from xfusion import toy, tuning

    fuse_module = sys.modules["xfusion.fuse"]
    before = (tuning.select, tuning._tune_none, fuse_module.run, fuse_module._result)
    x, y, _ = toy.make("small", seed=0)
    events, wall, cpu, r = bench_module("fuse_timeline").timeline(x, y)
    assert (tuning.select, tuning._tune_none, fuse_module.run, fuse_module._result) == before
    got = {name: (thread, s, e) for name, thread, s, e, *_ in events}
    assert all(c >= 0 for *_, c, _ in events) and max(c for *_, c, _ in events) <= cpu + 1e-6
    # the EM steps of each stage (session 70): the final loop's are the result's iterations; the tuning's include
    # its candidates', plain RL's on its own thread not
    n = {name: k for name, *_, k in events}
    from xfusion.solvers import em
    assert em.EMProx.step.__qualname__ == "EMProx.step"  # unwrapped again
    assert n["run"] == r.attrs["iterations"] and n["_tune_none"] >= 1 and n["_tune_wavelet"] >= 1
    assert n["select"] >= n["_tune_wavelet"] + n.get("_tune_threshold", 0) and n["_result"] == 0
    assert {"_precheck", "select", "_tune_wavelet", "_tune_none", "tune_shape", "run", "_result"} <= set(got)
    assert got["_tune_none"][0] != "MainThread"
    assert got["select"][1] <= got["_tune_none"][1] and got["_tune_none"][2] <= got["select"][2]
    assert got["select"][2] <= got["run"][1] <= got["run"][2] <= got["_result"][1] <= wall and cpu > 0
    assert r.attrs["iterations"] >= 1


def test_session_68_ladder_beyond_read_back(bench_module, capsys):
    """Session 68 (not adopted): the k ladder with rungs 24 and 32 above 16 (``tuning.py ladder_beyond``) on the 5
    full-size tuning seeds and the 69 held-out full-size rows whose ladder had its least deviance at the top rung 16.
    Each row is its scene; the rule changed 1 tuning seed (mixed/1009 -0.33 dB, so the criterion written first failed)
    and 38 held-out rows (mean +0.25 dB, median -0.04, 20 worse; snr_shell/501130 +4.51)."""
    from xfusion import scenes

    path = BENCH / "results" / "ladder_beyond_s68.jsonl"
    rows = [json.loads(line) for line in open(path)]
    assert [r["split"] for r in rows].count("tune") == 5 and len(rows) == 74
    for r in rows:
        assert scenes.suite(r["split"], n=r["n"])[r["index"]]["name"] == r["name"]
        assert len(r["runs"]) == (2 if r["taken"] else 1) and r["runs"][0]["top"] == 32.0
        assert r["taken"] == any(s["k"] > 16 and s["sq_gain_spectral"] > 0 for s in (r["runs"][0]["steps"] or {})
                                 .get("steps", []))
    capsys.readouterr()
    bench_module("tuning").main(["ladder_beyond_summary", str(path)])
    out = capsys.readouterr().out
    for line in ("tune: 1 of 5 rows changed", "heldout: 38 of 69 rows changed",
                 "NMSE change mean +0.25 dB, median -0.04, better on 18, worse on 20, from -0.73 to +4.51",
                 "mixed/1009 t1 real 2.4e+05 psf2.7            k 16.0 -> 32.0:  17.24 ->  16.91 dB (-0.33)"):
        assert line in out, line


def test_session_70_continuum_k_cap_read_back():
    """Session 70 (not adopted): the k walk capped at 1 on small continuum skies. From the stored files: on the small
    tuning rows (``suite("tune", 48)``, and the synchrotron rows of ``n=144`` and ``n=240``) the cap changes 3, 4 and 4
    rows (the continuum ones whose walk went above 1) and the k = 1 rung beats the choice on all 11; on the 19 held-out
    synchrotron rows of 1584-1679 the default is within 0.5 dB of the best rung on 15 and the cap changes 4; run with
    the cap (``continuum_k_cap_s70.jsonl``), 3 of those gain and synchrotron/501642 loses more than 0.5 dB, the
    criterion written first that failed. Each row is its scene."""
    from xfusion import scenes

    res = BENCH / "results"

    def changed(rows):
        out = {}
        for r in rows:
            c = json.loads(r["choice"])
            if c.get("spectral_band_factor") == 8.0 and c.get("null_space") == "zero" and c["k"] > 1.0:
                k1 = [s["nmse_db"] for s in json.loads(r["candidate_scores"]) if s["setting"].get("k") == 1.0
                      and s["setting"].get("null_space") == "zero" and "max_iter" not in s["setting"]]
                out[r["scene"].split()[0]] = (float(r["nmse_choice_db"]), k1[0])
        return out

    sets = {"hindsight_tune_small_s70.csv": (48, 3), "hindsight_tune144_synchrotron_small_s70.csv": (144, 4),
            "hindsight_tune240_synchrotron_small_s70.csv": (240, 4)}
    for name, (n, n_changed) in sets.items():
        rows = list(csv.DictReader(open(res / name)))
        names = {s["name"] for s in scenes.suite("tune", n=n)}
        assert all(r["scene"] in names and r["size"] == "small" for r in rows), name
        got = changed(rows)
        assert len(got) == n_changed and all(k1 > old for old, k1 in got.values()), (name, got)
    held = list(csv.DictReader(open(res / "hindsight_heldout_synchrotron_1587_1677_small_s70.csv")))
    assert [r["scene"] for r in held] == [scenes.suite("heldout", n=24 * (i // 24 + 1))[i]["name"]
                                          for i in range(1587, 1680, 5)]
    assert sum(r["within_0_5_db"] == "True" for r in held) == 15
    before = changed(held)
    runs = [json.loads(line) for line in open(res / "continuum_k_cap_s70.jsonl")]
    ran = {r["name"].split()[0]: r for r in runs if r["split"] == "heldout"}
    assert sorted(ran) == sorted(before) and all(r["selected"]["k"] == 1.0 for r in runs)
    delta = {s: ran[s]["nmse_db"] - before[s][0] for s in ran}
    assert sorted(s for s, d in delta.items() if d > 0) == ["synchrotron/501592", "synchrotron/501602",
                                                            "synchrotron/501607"]
    assert -0.7 < delta["synchrotron/501642"] < -0.5 and all(abs(r["flux_bias_pct"]) < 1 for r in runs)


def test_session_71_shape_step_read_back():
    """Session 71 (adopted): the k walk's choice moved half-way toward the rung best through the shape prior on small
    continuum skies. From the stored files: on the 48 small synchrotron tuning rows the half-way rung is within 0.5 dB
    of the best rung on 39 (the walk 34), and every one of the 11 rows it changes gains; on the never-run rows
    1680-2063 it changes 8 of the 77 continuum rows, each gains (mean +1.41 dB), flux within 1 % and hindsight 3 -> 6
    of them (the criteria written first); on the 744-row small pool it changes 16 of the 148 synchrotron rows, all
    gain, hindsight 5 -> 9; all 24 changed rows beat both naive baselines and RL's oracle NMSE through ``suite.py
    --select``; at full size (rows 1176-1271, the voxel gate lifted) it changes 5 of the 19 continuum rows, each
    gains (mean +0.72 dB), flux within 1 %. Each row is its scene."""
    from xfusion import scenes, tuning

    res = BENCH / "results"
    lad = list(tuning.K_LADDER)
    rung_nmse = {}
    for name in ("hindsight_tune_small_s70.csv", "hindsight_tune144_synchrotron_small_s70.csv",
                 "hindsight_tune240_synchrotron_small_s70.csv"):
        for r in csv.DictReader(open(res / name)):
            rung_nmse[r["scene"]] = {s["setting"]["k"]: s["nmse_db"] for s in json.loads(r["candidate_scores"])
                                     if s["setting"].get("null_space") == "zero" and s["heldout_deviance"] is not None}
    walk_in = half_in = 0
    gains = []
    probe = [json.loads(line) for line in open(res / "shape_step_tune_small_s71.jsonl")]
    assert len(probe) == 48 and all(p["name"].startswith("synchrotron/") for p in probe)
    for p in probe:
        rung = rung_nmse[p["name"]]
        raw = {float(k): v["dev"] for k, v in p["rungs"].items()}
        shaped = {float(k): v["dev_shape"] for k, v in p["rungs"].items()}
        seen = {1.0: raw[1.0]}  # the walk: down from 1 while the deviance falls, else up
        for step in (-1, 1):
            i = lad.index(1.0) + step
            while 0 <= i < len(lad) and lad[i] in raw:
                seen[lad[i]] = raw[lad[i]]
                if seen[lad[i]] >= seen[lad[i - step]]:
                    break
                i += step
            if min(seen, key=seen.get) != 1.0:
                break
        k_walk = min(seen, key=seen.get)
        k = tuning._half_way(lad, k_walk, min(seen, key=shaped.get))
        best = max(rung.values())
        walk_in += rung[k_walk] >= best - 0.5
        half_in += rung[k] >= best - 0.5
        if k != k_walk:
            gains.append(rung[k] - rung[k_walk])
    assert (walk_in, half_in, len(gains)) == (34, 39, 11) and min(gains) > 0.4
    held = [json.loads(line) for line in open(res / "shape_step_heldout_1680_2063_small_s71.jsonl")]
    assert len(held) == 77 and all(
        r["scene"] == scenes.suite("heldout", n=24 * (r["row"] // 24 + 1))[r["row"]]["name"] for r in held)
    moved = [r for r in held if r["changed"]]
    assert [r["row"] for r in moved] == [1802, 1882, 1932, 1962, 1997, 2032, 2037, 2062]
    delta = [r["nmse_after_db"] - r["nmse_before_db"] for r in moved]
    assert min(delta) > 0.6 and abs(sum(delta) / len(delta) - 1.41) < 0.01
    assert all(abs(r[f"flux_bias_{w}_pct"]) < 1 for r in moved for w in ("before", "after"))
    assert all(r["k_after"] == r["k"] == tuning._half_way(lad, r["k_walk"], r["k_shape"]) for r in moved)
    within = [sum(r["within_0_5_db"] == "True" for r in csv.DictReader(open(res / f"hindsight_shape_step_heldout_{w}_s71.csv")))
              for w in ("old", "new")]
    assert within == [3, 6]
    pool = [json.loads(line) for line in open(res / "shape_step_pool_select_s71.jsonl")]
    assert len(pool) == 148 and sum(r["changed"] for r in pool) == 16
    after = list(csv.DictReader(open(res / "hindsight_shape_step_pool_small_s71.csv")))
    assert sorted(r["scene"] for r in after) == sorted(r["scene"] for r in pool if r["changed"])
    assert sum(r["within_0_5_db"] == "True" for r in after) == 9
    suite = list(csv.DictReader(open(res / "suite_shape_step_changed_small_s71.csv")))
    assert sorted(r["scene"] for r in suite) == sorted([r["scene"] for r in moved] + [r["scene"] for r in after])
    assert all(r["beats_both_baselines"] == "True" and float(r["nmse_default_db"]) >= float(r["nmse_rl_oracle_db"])
               and abs(float(r["flux_bias_pct"])) <= 1.0 for r in suite)
    full = [json.loads(line) for line in open(res / "shape_step_heldout_1176_1271_full_s71.jsonl")]
    assert len(full) == 19 and all(
        r["scene"] == scenes.suite("heldout", n=24 * (r["row"] // 24 + 1))[r["row"]]["name"] for r in full)
    moved = [r for r in full if r["changed"]]
    assert [r["row"] for r in moved] == [1202, 1207, 1222, 1257, 1267]
    delta = [r["nmse_after_db"] - r["nmse_before_db"] for r in moved]
    assert min(delta) > 0.4 and abs(sum(delta) / len(delta) - 0.72) < 0.01
    assert all(abs(r[f"flux_bias_{w}_pct"]) < 1 for r in moved for w in ("before", "after"))
    for w in ("old", "new"):
        rows = list(csv.DictReader(open(res / f"hindsight_shape_step_heldout_full_{w}_s71.csv")))
        assert sorted(r["scene"] for r in rows) == sorted(r["scene"] for r in moved)
        assert all(r["within_0_5_db"] == "True" and r["size"] == "full" for r in rows)


def test_session_72_long_count_read_back():
    """Session 72 (not adopted): the zeroed prior's thinning count of 12-49 run to fuse's stop instead. From the stored
    files: as first written (every sky), full-size rows 1272-1313 change 7, and at the judgement (the 6th) the NMSE
    gain is +0.45 dB on average but the velocity RMS +17.4 %, from three point-source skies (+28 to +40 %); small rows
    2256-2447 change 3. V2 (no compact sources) on never-run full-size rows 1320-1415: 5 change, all gain (mean +0.61
    dB), velocity -2.7 % on average, but every line-width RMS is worse by more than 10 % (mean +20.6 %); small rows
    2448-2543: none. Offline on the 456 pooled full-size hindsight rows, V2 would take 39 rows to fuse's stop and
    hindsight from 369 to 381. Each changed row is its scene."""
    from xfusion import scenes

    res = BENCH / "results"

    def load(name):
        return [json.loads(line) for line in open(res / name)]

    def rel(rows, key):
        return [100.0 * (r["new"][key] / r["old"][key] - 1.0) for r in rows if key in r["old"]]

    first = load("count_long_full_1272_1313_s72.jsonl")
    assert [r["i"] for r in first] == list(range(1272, 1314)) and {r["variant"] for r in first} == {"everywhere"}
    moved = [r for r in first if "gain_db" in r]
    assert [r["i"] for r in moved] == [1278, 1288, 1293, 1301, 1304, 1305, 1313]
    judged = moved[:6]
    assert abs(np.mean([r["gain_db"] for r in judged]) - 0.454) < 0.001 and sum(r["gain_db"] > 0 for r in judged) == 4
    vel = rel(judged, "velocity_rms_kms")
    assert abs(np.mean(vel) - 17.4) < 0.1 and sorted(vel)[-3:] == pytest.approx([28.5, 37.0, 39.6], abs=0.1)
    assert all(r["name"].startswith("point_sources/") for r, v in zip(judged, vel) if v > 20)
    small = load("count_long_small_2256_2447_s72.jsonl")
    assert len(small) == 192 and [r["i"] for r in small if "gain_db" in r] == [2297, 2329, 2404]
    v2 = load("count_long_full_1320_1415_s72.jsonl")
    assert [r["i"] for r in v2] == list(range(1320, 1416)) and {r["variant"] for r in v2} == {"no_sources"}
    moved2 = [r for r in v2 if "gain_db" in r]
    assert [r["i"] for r in moved2] == [1320, 1325, 1330, 1406, 1410] and all(r["peaks"] == 0 for r in moved2)
    assert min(r["gain_db"] for r in moved2) > 0 and abs(np.mean([r["gain_db"] for r in moved2]) - 0.608) < 0.001
    assert abs(np.mean(rel(moved2, "velocity_rms_kms")) + 2.67) < 0.01
    width = rel(moved2, "width_rms_kms")
    assert min(width) > 10.0 and abs(np.mean(width) - 20.63) < 0.01
    for r in moved + moved2:
        assert 12 <= r["old"]["max_iter"] < 50 == r["new"]["max_iter"] and abs(r["new"]["flux_bias_pct"]) < 1.0
        assert r["name"] == scenes.suite("heldout", n=24 * (r["i"] // 24 + 1))[r["i"]]["name"]
    assert not [r for r in load("count_long_small_2448_2543_s72.jsonl") if "gain_db" in r]
    peaks = {r["scene"]: r["peaks"] for r in load("count_long_pool_peaks_full_s72.jsonl")}
    assert len(peaks) == 75 and sum(v > 0 for v in peaks.values()) == 36
    within = {"now": 0, "v2": 0}
    for name in ("hindsight_heldout.csv", "hindsight_fresh_408_455.csv", "hindsight_fresh_456_503.csv",
                 "hindsight_fresh_504_551.csv", "hindsight_fresh_1080_1127_full.csv",
                 "hindsight_fresh_1128_1151_full.csv", "hindsight_fresh_1152_1175_full.csv"):
        for r in csv.DictReader(open(res / name)):
            if r["size"] != "full":
                continue
            ch, cands = json.loads(r["choice"]), json.loads(r["candidate_scores"])
            best, got = max(c["nmse_db"] for c in cands), float(r["nmse_choice_db"])
            within["now"] += r["within_0_5_db"] == "True"
            if peaks.get(r["scene"]) == 0:  # V2: the same rung at fuse's stop, a candidate of the grid
                got = next(c["nmse_db"] for c in cands if c["setting"].get("null_space") == "zero"
                           and c["setting"].get("k") == ch["k"] and "max_iter" not in c["setting"])
            within["v2"] += got >= best - 0.5
    assert within == {"now": 369, "v2": 381}


def test_session_72_probe_changes_only_the_counts_it_names(bench_module):
    """benchmarks/count_long.py's rule: a zeroed count of 12-49 that thinning chose goes to fuse's stop, with compact
    sources only under ``everywhere``; anything else is ``xfusion.tuning.run_on``'s own answer."""
    from xfusion import tuning

    probe = bench_module("count_long")
    z = {"regularization": "wavelet2d1d", "k": 1.0, "null_space": "zero"}
    peaks = [[3, 4]]
    v2, every = probe._run_on_long(False), probe._run_on_long(True)
    assert v2(dict(z, max_iter=12), 12, []) == every(dict(z, max_iter=12), 12, peaks) == (tuning.ZERO_MAX_ITER, None)
    assert v2(dict(z, max_iter=12), 12, peaks) == tuning.run_on(dict(z, max_iter=12), 12, peaks) == (12, [50, peaks])
    for args in ((dict(z, max_iter=11), 11, []), (dict(z, max_iter=12), 13, []),  # short; the user's count
                 (dict(z, null_space="threshold", max_iter=30), 30, [])):  # the thresholded prior
        assert not probe._long(*args, True) and v2(*args) == tuning.run_on(*args)
