"""benchmarks/suite_figure.py: the README's suite table and figure are computed from suite.py's JSON rows."""
import csv
import importlib
import json
import sys
from pathlib import Path

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
def suite_figure(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    mod = importlib.import_module("suite_figure")
    yield mod
    for name in ("suite_figure", "suite"):  # benchmarks/suite.py, imported by suite_figure
        sys.modules.pop(name, None)


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
