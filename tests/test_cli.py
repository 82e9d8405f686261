"""Command-line interface: round trip on the small toy, config/overrides, input errors, help."""
import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from xfusion.cli import main

SUBCOMMANDS = ("demo", "fuse", "toy", "metrics", "plot")
EXE = Path(sys.executable).parent / "xfusion"
#: explicit wavelet settings where runs are compared across backends: "auto" (Poisson thinning) runs in
#: memory only; Dask-backed data use the counts rule (documented in xfusion.tuning.auto_settings)
# pinned settings ("auto" ones are tuned in memory only) and few iterations: the tests compare paths, not quality
PINNED = ["--option", "k=1.0", "--option", "n_scales_1d=5", "--option", "null_space=zero", "--max-iter", "8"]


@pytest.fixture(scope="module")
def toy_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("toy")
    assert main(["toy", "small", "-o", str(d), "--seed", "1"]) == 0
    return d


@pytest.fixture(scope="module")
def fused(toy_dir):
    out = toy_dir / "out.zarr"
    # explicit settings: nothing is tuned, so the stores written here are the same for every caller
    assert main(["fuse", str(toy_dir / "x.zarr"), str(toy_dir / "y.zarr"), "-o", str(out), "--no-progress"]
                + PINNED) == 0
    return out


def test_toy_writes_three_stores(toy_dir):
    for name in ("x.zarr", "y.zarr", "truth.zarr"):
        assert (toy_dir / name / "zarr.json").is_file()


def test_metrics_and_plot_round_trip(toy_dir, fused, tmp_path, capsys):
    import xarray as xr

    res = xr.open_zarr(fused, consolidated=False)
    assert res.attrs["regularization"] == "wavelet2d1d" and "flux" in res
    capsys.readouterr()
    assert main(["metrics", str(fused), str(toy_dir / "truth.zarr")]) == 0
    out = capsys.readouterr().out
    for name in ("nmse_db", "asam_rad", "acssim", "ergas", "psnr_db", "ssim", "mean_spectrum_rel_error"):
        assert name in out
    assert main(["metrics", str(fused)]) == 0
    out = capsys.readouterr().out
    assert "psnr_db" in out and "nmse_db" not in out

    plots = tmp_path / "plots"
    assert main(["plot", str(fused), "-o", str(plots), "--truth", str(toy_dir / "truth.zarr"),
                 "--pixel", "7,7"]) == 0
    for name in ("summary.png", "spectra.png", "maps.png", "history.png", "errors.png"):
        f = plots / name
        assert f.is_file() and f.stat().st_size > 10_000
        assert f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # session 28: a pixel outside the grid is refused before any figure (was: an internal error for 99, and for -1
    # summary.png written before the refusal)
    for bad in ("99,0", "-1,0"):
        capsys.readouterr()
        assert main(["plot", str(fused), "-o", str(tmp_path / "bad"), f"--pixel={bad}"]) == 3
        assert "outside the fused grid" in capsys.readouterr().err and not (tmp_path / "bad").exists()


def test_installed_executable_round_trip(toy_dir, tmp_path):
    assert EXE.is_file(), f"console script not installed at {EXE} (pip install -e .)"
    out = tmp_path / "lr.zarr"
    env = dict(os.environ, MPLBACKEND="Agg")
    r = subprocess.run([str(EXE), "fuse", str(toy_dir / "x.zarr"), str(toy_dir / "y.zarr"), "-o", str(out),
                        "--regularization", "lowrank_sobolev", "--max-iter", "30", "--option", "rank=4",
                        "--option", "mu=0.01", "--no-progress"], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "lowrank_sobolev/fista" in r.stdout
    r = subprocess.run([str(EXE), "metrics", str(out), str(toy_dir / "truth.zarr")], capture_output=True,
                       text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "nmse_db" in r.stdout
    r = subprocess.run([str(EXE), "metrics", str(tmp_path / "missing.zarr")], capture_output=True, text=True,
                       env=env, timeout=120)
    assert r.returncode == 3
    assert "missing.zarr" in r.stderr and "Traceback" not in r.stderr


def test_config_and_override(toy_dir, tmp_path):
    import json

    import xarray as xr

    cfg = tmp_path / "fuse.toml"
    cfg.write_text('regularization = "wavelet2d1d"\nmethod = "em"\nmax_iter = 7\ntol = 0\n'
                   'checkpoint = "ck.zarr"\ncheckpoint_every = 3\n[options]\nk = 2.0\nn_scales_1d = 3\n'
                   'null_space = "zero"\n')  # nothing left "auto": no tuning
    out = tmp_path / "a.zarr"
    args = ["fuse", str(toy_dir / "x.zarr"), str(toy_dir / "y.zarr"), "-o", str(out), "--config", str(cfg),
            "--no-progress"]
    assert main(args) == 0
    res = xr.open_zarr(out, consolidated=False)
    params = json.loads(res.attrs["parameters"])
    assert res.attrs["iterations"] == 7 and params["k"] == 2.0 and params["n_scales_1d"] == 3
    assert (tmp_path / "ck.zarr").exists()  # relative to the config file
    # command-line flags override the config (and --option overrides [options])
    assert main(args + ["--max-iter", "4", "--option", "k=1.5"]) == 3  # an existing output needs --overwrite
    assert main(args + ["--max-iter", "4", "--option", "k=1.5", "--overwrite"]) == 0
    res = xr.open_zarr(out, consolidated=False)
    params = json.loads(res.attrs["parameters"])
    assert res.attrs["iterations"] == 4 and params["k"] == 1.5 and params["n_scales_1d"] == 3


def _err(capsys):
    return capsys.readouterr().err


def test_missing_store_exit_3(toy_dir, tmp_path, capsys):
    missing = tmp_path / "nope.zarr"
    assert main(["fuse", str(missing), str(toy_dir / "y.zarr"), "-o", str(tmp_path / "o.zarr")]) == 3
    err = _err(capsys)
    assert str(missing) in err and err.startswith("xfusion: error:") and "Traceback" not in err


def test_not_a_zarr_store_exit_3(toy_dir, tmp_path, capsys):
    d = tmp_path / "plain"
    d.mkdir()
    (d / "notes.txt").write_text("hello")
    assert main(["fuse", str(d), str(toy_dir / "y.zarr"), "-o", str(tmp_path / "o.zarr")]) == 3
    err = _err(capsys)
    assert "not a Zarr store" in err and str(d) in err
    f = tmp_path / "file.zarr"
    f.write_text("x")
    assert main(["metrics", str(f)]) == 3
    assert "not a Zarr store" in _err(capsys)


def test_store_without_counts_exit_3(toy_dir, tmp_path, capsys):
    from xfusion.io import zarr as xz

    bad = tmp_path / "nocounts.zarr"
    xz.write(xz.open(toy_dir / "x.zarr").drop_vars("counts"), bad)
    assert main(["fuse", str(bad), str(toy_dir / "y.zarr"), "-o", str(tmp_path / "o.zarr")]) == 3
    err = _err(capsys)
    assert "counts" in err and str(bad) in err and "Traceback" not in err


def test_unknown_regularization(toy_dir, tmp_path, capsys):
    x, y, o = str(toy_dir / "x.zarr"), str(toy_dir / "y.zarr"), str(tmp_path / "o.zarr")
    assert main(["fuse", x, y, "-o", o, "--regularization", "tv"]) == 2  # argparse choices
    assert "invalid choice: 'tv'" in _err(capsys)
    cfg = tmp_path / "c.toml"
    cfg.write_text('regularization = "tv"\n')
    assert main(["fuse", x, y, "-o", o, "--config", str(cfg), "--no-progress"]) == 3
    assert "unknown regularization 'tv'" in _err(capsys)
    cfg.write_text('regularisation = "none"\n')
    assert main(["fuse", x, y, "-o", o, "--config", str(cfg), "--no-progress"]) == 3
    assert "unknown key(s) ['regularisation']" in _err(capsys)


def test_unknown_option_exit_3(toy_dir, tmp_path, capsys):
    rc = main(["fuse", str(toy_dir / "x.zarr"), str(toy_dir / "y.zarr"), "-o", str(tmp_path / "o.zarr"),
               "--option", "bogus=1", "--no-progress"])
    assert rc == 3
    err = _err(capsys)
    assert "bogus" in err and "Traceback" not in err
    assert main(["fuse", str(toy_dir / "x.zarr"), str(toy_dir / "y.zarr"), "-o", str(tmp_path / "o.zarr"),
                 "--option", "novalue"]) == 3
    assert "KEY=VALUE" in _err(capsys)


def test_refuses_to_overwrite_non_store(toy_dir, tmp_path, capsys):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "keep.txt").write_text("data")
    rc = main(["fuse", str(toy_dir / "x.zarr"), str(toy_dir / "y.zarr"), "-o", str(precious), "--no-progress"])
    assert rc == 3 and (precious / "keep.txt").is_file()
    assert "refusing to overwrite" in _err(capsys)


def test_usage_errors_exit_2(capsys):
    assert main([]) == 2
    assert main(["toy", "no_such_toy", "-o", "x"]) == 2
    assert main(["fuse", "a.zarr"]) == 2
    capsys.readouterr()


@pytest.mark.parametrize("cmd", SUBCOMMANDS)
def test_help(cmd, capsys):
    assert main([cmd, "--help"]) == 0
    text = capsys.readouterr().out
    assert f"usage: xfusion {cmd}" in text
    assert "arcsec" in text or "keV" in text
    if cmd == "fuse":
        for word in ("arcsec", "keV", " s,", "iterations", "--resume", "--scheduler", "KEY=VALUE"):
            assert word in text


def test_top_level_help_and_version(capsys):
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    assert all(c in text for c in SUBCOMMANDS) and "exit codes" in text
    assert main(["--version"]) == 0


def test_python_dash_m_runs_the_command():
    """``python -m xfusion`` is the ``xfusion`` command (where the console script is not on the PATH): same
    version, and a usage error gives the usage exit code."""
    import xfusion

    ok = subprocess.run([sys.executable, "-m", "xfusion", "--version"], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and ok.stdout.strip() == f"xfusion {xfusion.__version__}"
    # --version answers without loading the numerical stack (the parser's registry loads it: ~2 s)
    code = ("import sys\nfrom xfusion.cli import main\nassert main(['--version']) == 0\n"
            "print([m for m in ('xarray', 'numba', 'dask', 'scipy', 'xfusion.registry') if m in sys.modules])")
    light = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert light.returncode == 0 and light.stdout.splitlines()[-1] == "[]", light.stdout + light.stderr
    bad = subprocess.run([sys.executable, "-m", "xfusion", "fuse"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "usage: xfusion fuse" in bad.stderr


def test_keyboard_interrupt_exit_130(toy_dir, tmp_path, capsys, monkeypatch):
    fuse_module = importlib.import_module("xfusion.fuse")  # the module (xfusion.fuse is the function)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(fuse_module, "fuse", interrupted)
    ck = tmp_path / "ck.zarr"
    base = ["fuse", str(toy_dir / "x.zarr"), str(toy_dir / "y.zarr"), "-o", str(tmp_path / "o.zarr")]
    assert main(base + ["--checkpoint", str(ck)]) == 130
    err = _err(capsys)  # interrupted before any checkpoint was written: says so (no false --resume promise)
    assert "no checkpoint exists" in err and str(ck) in err and "--resume" not in err
    assert main(base) == 130
    assert "--checkpoint" in _err(capsys)


@pytest.mark.parametrize("how", ["dask", "scheduler", "retained"])
def test_fuse_out_of_core_and_on_a_scheduler(toy_dir, fused, tmp_path, how, request):
    """--dask (lazy inputs, threads) and --scheduler ADDRESS (the session's LocalCluster; also with
    --retain-worker-memory, after which the workers have their own settings back) write the same cube as in
    memory."""
    import numpy as np
    import xarray as xr

    out = tmp_path / "o.zarr"
    args = ["fuse", str(toy_dir / "x.zarr"), str(toy_dir / "y.zarr"), "-o", str(out), "--no-progress"] + PINNED
    if how == "dask":
        assert main(args + ["--dask"]) == 0
    else:
        cluster, client = request.getfixturevalue("cluster")
        more = ["--retain-worker-memory"] if how == "retained" else []
        assert main(args + ["--scheduler", cluster.scheduler_address] + more) == 0
        from xfusion.solvers import heap

        assert not any(client.run(heap.active).values())
    got, ref = xr.open_zarr(out, consolidated=False), xr.open_zarr(fused, consolidated=False)
    assert got.attrs["backend"] == "dask" and ref.attrs["backend"] == "numpy"
    a, b = got.flux.values, ref.flux.values
    assert float(np.abs(a - b).max()) <= 1e-5 * float(np.abs(b).max())


def test_retain_worker_memory_needs_a_scheduler(toy_dir, tmp_path, capsys):
    out = tmp_path / "o.zarr"
    args = ["fuse", str(toy_dir / "x.zarr"), str(toy_dir / "y.zarr"), "-o", str(out), "--no-progress"] + PINNED
    assert main(args + ["--retain-worker-memory"]) == 3
    assert "give --scheduler" in capsys.readouterr().err
    assert not out.exists()


def test_plot_output_that_is_a_file_exit_3(fused, tmp_path, capsys):
    """``plot -o <an existing file>`` is bad input (exit 3, one line), not an internal error; the file is untouched."""
    target = tmp_path / "afile"
    target.write_text("mine")
    assert main(["plot", str(fused), "-o", str(target)]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "a file exists there" in err[0]
    assert target.read_text() == "mine"


def test_fuse_arguments_are_not_options_and_config_max_iter_auto(toy_dir, tmp_path, capsys):
    """Red team s29: ``--option max_iter=5`` (or ``tol`` in [options]) bypassed the flag's checks, and with the flag
    too fuse() got it twice (a TypeError); ``--option regularization=none`` reached fuse as None. A config's
    ``max_iter = "auto"`` (fuse's default for plain RL) was refused as "must be a number"."""
    x, y, o = str(toy_dir / "x.zarr"), str(toy_dir / "y.zarr"), str(tmp_path / "o.zarr")
    for extra in (["--max-iter", "3", "--option", "max_iter=5"], ["--option", "regularization=none"],
                  ["--option", "progress=true"]):
        assert main(["fuse", x, y, "-o", o, "--no-progress"] + extra) == 3
        err = _err(capsys)
        assert "not a regularization option" in err, err
        assert "Traceback" not in err and "multiple values" not in err
    cfg = tmp_path / "c.toml"
    cfg.write_text('max_iter = 3\n[options]\ntol = 0.1\n')
    assert main(["fuse", x, y, "-o", o, "--config", str(cfg), "--no-progress"]) == 3
    assert "tol is not a regularization option" in _err(capsys)
    cfg.write_text('regularization = "none"\nmax_iter = "auto"\n')
    assert main(["fuse", x, y, "-o", o, "--config", str(cfg), "--no-progress"]) == 0
    capsys.readouterr()


def test_option_stabilize_none_is_the_string(toy_dir, tmp_path, capsys):
    """Red team s29: ``--option stabilize=none`` (its documented default) became None and fuse refused it ("must be
    one of 'none', 'anscombe'; got None"); options whose None is meaningful (shape_prior) still get None."""
    import json

    import xarray as xr

    from xfusion.cli import _parse_options

    assert _parse_options(["stabilize=none", "shape_prior=none"]) == {"stabilize": "none", "shape_prior": None}
    # a list holding None (TOML has no null): the default's shape prior without its level-0 floor (session 44)
    assert _parse_options(['shape_prior=["auto", null]', 'shape_prior2=["auto", 1e5]', "name=abc"]) == {
        "shape_prior": ["auto", None], "shape_prior2": ["auto", 1e5], "name": "abc"}
    out = tmp_path / "s.zarr"
    assert main(["fuse", str(toy_dir / "x.zarr"), str(toy_dir / "y.zarr"), "-o", str(out), "--no-progress",
                 "--option", "stabilize=none"] + PINNED[:-2] + ["--max-iter", "2"]) == 0
    assert json.loads(xr.open_zarr(out, consolidated=False).attrs["parameters"])["stabilize"] == "none"
    capsys.readouterr()


def test_option_shape_prior_auto_with_a_level_0_floor(toy_dir, tmp_path, capsys):
    """``--option 'shape_prior=["auto", 1e5]'`` (a TOML array) reaches fuse as the pair: thinning picks the prior
    (n0 = 1e4 on this toy) and level 0 gets 1e5 pseudo-counts (the README's velocity recipe in one run)."""
    import json

    import xarray as xr

    out = tmp_path / "v.zarr"
    assert main(["fuse", str(toy_dir / "x.zarr"), str(toy_dir / "y.zarr"), "-o", str(out), "--no-progress",
                 "--option", 'shape_prior=["auto", 1e5]']) == 0
    p = json.loads(xr.open_zarr(out, consolidated=False).attrs["parameters"])
    assert p["shape_prior"] == [1e4, 1e5] and p["auto_tuning"]["shape_prior"]["pixel_floor"] == 1e5
    # a config file cannot write null (TOML has none): ["auto", "none"] is thinning alone, no floor (session 45)
    cfg = tmp_path / "c.toml"
    cfg.write_text('[options]\nshape_prior = ["auto", "none"]\n')
    out2 = tmp_path / "w.zarr"
    assert main(["fuse", str(toy_dir / "x.zarr"), str(toy_dir / "y.zarr"), "-o", str(out2), "--no-progress",
                 "--config", str(cfg)]) == 0
    p = json.loads(xr.open_zarr(out2, consolidated=False).attrs["parameters"])
    assert p["shape_prior"] == 1e4 and "pixel_floor" not in p["auto_tuning"]["shape_prior"]
    capsys.readouterr()


def test_config_dtype_of_the_wrong_type(toy_dir, tmp_path, capsys):
    """Red team s29: ``dtype = 64`` in the config file gave numpy's "Cannot interpret '64' as a data type"."""
    cfg = tmp_path / "c.toml"
    cfg.write_text('dtype = 64\nmax_iter = 2\n')
    assert main(["fuse", str(toy_dir / "x.zarr"), str(toy_dir / "y.zarr"), "-o", str(tmp_path / "o.zarr"),
                 "--config", str(cfg), "--no-progress"]) == 3
    err = _err(capsys)
    assert "dtype must be float32 or float64; got 64" in err and "Traceback" not in err


def test_metrics_lists_every_input_and_detector_pixels(tmp_path, capsys):
    """Session 30: `xfusion metrics` left out a third input's consistency row, and died ("internal error") in its
    consistency table on a result fused with detector pixels (counts over (pixel, energy))."""
    import numpy as np

    import xfusion
    import xfusion.io.zarr as xz
    from xfusion import toy

    x, y, _ = toy.make("small")
    x2 = toy.make("small", seed=1)[0].assign_attrs(name="X2 (second CCD)")
    xz.write(xfusion.fuse(x, y, x2, regularization="none", method="em", max_iter=2, progress=False),
             tmp_path / "three.zarr")
    capsys.readouterr()
    assert main(["metrics", str(tmp_path / "three.zarr")]) == 0
    out = capsys.readouterr().out
    assert all(n in out for n in ("X (CCD-like)", "Y (microcalorimeter-like)", "X2 (second CCD)")), out

    rng = np.random.default_rng(0)
    ef = np.linspace(6.0, 6.4, 21)
    xo = xfusion.observation(rng.poisson(20.0, (24, 24, 5)), energy_edges=ef[::4], pixel_size=4.0, exposure=50.0,
                             dims=("x", "y", "energy"), name="X")
    g = (np.arange(3) - 1) * 12.0
    dx, dy = (a.ravel() for a in np.meshgrid(g, g, indexing="ij"))
    yo = xfusion.observation(rng.poisson(50.0, (9, 20)), energy_edges=ef, pixel_size=12.0, exposure=100.0,
                             dims=("pixel", "energy"), det_x=dx, det_y=dy, roll=17.0, name="Y (Resolve pixels)")
    r = xfusion.fuse(xo, yo, regularization="none", method="em", max_iter=2, progress=False)
    xz.write(r, tmp_path / "pixels.zarr")
    capsys.readouterr()
    assert main(["metrics", str(tmp_path / "pixels.zarr")]) == 0
    out = capsys.readouterr().out
    assert "Y (Resolve pixels)" in out and "X" in out
    assert main(["plot", str(tmp_path / "pixels.zarr"), "-o", str(tmp_path / "figs")]) == 0
    assert (tmp_path / "figs" / "maps.png").is_file()


def test_metrics_consistency_leaves_masked_voxels_out():
    """Session 32: the consistency table of `xfusion metrics` compared predicted with observed counts in masked
    voxels too (a masked hot pixel's counts were scored); results now carry each input's mask and the rows use it."""
    import numpy as np

    import xfusion
    from xfusion import toy
    from xfusion.consistency import count_consistency

    x, y, _ = toy.make("small")
    m = np.ones(x.counts.shape, bool)
    m[2, 3] = False
    rows = {}
    for hot in (0.0, 1e6):
        xm = x.assign(counts=x.counts.where(m, hot), mask=(x.counts.dims, m))
        r = xfusion.fuse(xm, y, regularization="none", method="em", max_iter=2, progress=False)
        assert "mask_spatial" in r and "mask_spectral" not in r
        rows[hot] = count_consistency(r)[x.attrs["name"]]
    assert rows[1e6] == rows[0.0]  # the value under the mask changes nothing
    assert np.isfinite(rows[0.0]["psnr_db"])


def test_a_failed_plot_leaves_no_empty_folder(fused, tmp_path, monkeypatch, capsys):
    """Session 30: `xfusion plot` failing while drawing left the empty figure folder (and parents) it had created."""
    from xfusion import plot

    def boom(*a, **k):
        raise RuntimeError("drawing failed")

    monkeypatch.setattr(plot, "summary", boom)
    out = tmp_path / "new" / "figs"
    assert main(["plot", str(fused), "-o", str(out)]) == 1
    assert not (tmp_path / "new").exists()
    keep = tmp_path / "kept"
    keep.mkdir()
    assert main(["plot", str(fused), "-o", str(keep)]) == 1
    assert keep.is_dir()  # a folder that existed before stays


def test_interrupt_during_the_final_write_says_the_output_is_complete(toy_dir, tmp_path, capsys, monkeypatch):
    """Session 30: a Ctrl-C during the final write (deferred until the store is in place) ended with "interrupted; no
    checkpoint was written", not saying that OUT.zarr was complete, so the user reran and was refused ("already
    exists"). The exit code stays 130 (a script calling xfusion must stop on Ctrl-C); the message says the output
    is complete."""
    import signal

    from xfusion.io import zarr as xzarr

    real = xzarr.store

    def ctrl_c_inside(ds, path, **kw):
        out = real(ds, path, **kw)
        os.kill(os.getpid(), signal.SIGINT)  # as from a terminal: deferred by signals_deferred
        return out

    monkeypatch.setattr(xzarr, "store", ctrl_c_inside)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    out = tmp_path / "out.zarr"
    try:
        code = main(["fuse", str(toy_dir / "x.zarr"), str(toy_dir / "y.zarr"), "-o", str(out), "--no-progress",
                     "--regularization", "none", "--max-iter", "2"])
    finally:
        signal.signal(signal.SIGINT, previous)
    err = _err(capsys)
    assert code == 130 and f"{out} is complete" in err and "no checkpoint was written" not in err, err
    assert xzarr.open(out).attrs["iterations"] == 2


def test_fuse_output_paths_inside_a_store_new_folders_and_max_iter_auto(toy_dir, tmp_path, capsys):
    """Session 30 (minor): ``fuse -o userstore.zarr/child.zarr`` wrote a group inside someone's Zarr store (plot
    refuses that); a run that failed after the path checks left the folders the checks had created;
    ``--max-iter auto`` was refused on the command line though the config file accepts "auto"."""
    import zarr

    from xfusion.cli import _fuse_settings, build_parser

    x, y = str(toy_dir / "x.zarr"), str(toy_dir / "y.zarr")
    user = tmp_path / "plain.zarr"
    zarr.open_group(str(user), mode="w", zarr_format=3)
    assert main(["fuse", x, y, "-o", str(user / "child.zarr"), "--no-progress"]) == 3
    assert "lies inside the Zarr store" in _err(capsys) and sorted(os.listdir(user)) == ["zarr.json"]
    # fails after the checks created a/b/ (no such option): the folders it made are removed again
    assert main(["fuse", x, y, "-o", str(tmp_path / "a" / "b" / "o.zarr"), "--checkpoint",
                 str(tmp_path / "c" / "ck.zarr"), "--no-progress", "--option", "no_such_option=1"]) == 3
    assert "no_such_option" in _err(capsys) and sorted(os.listdir(tmp_path)) == ["plain.zarr"]
    args = build_parser().parse_args(["fuse", x, y, "-o", "o.zarr", "--max-iter", "auto"])
    assert _fuse_settings(args)[0]["max_iter"] == "auto"
    assert main(["fuse", x, y, "-o", "o.zarr", "--max-iter", "2.5"]) == 2
    assert "integer or 'auto'" in _err(capsys)


def test_plain_rl_for_line_maps_from_the_command_line(toy_dir, tmp_path, capsys):
    """Session 40's line-map recipe as a command: ``--regularization none --max-iter auto --option shape_prior=auto``
    gives RL at its thinning count delivered through the prior chosen by thinning for that fit, both recorded."""
    import json

    import xarray as xr

    out = tmp_path / "rl.zarr"
    assert main(["fuse", str(toy_dir / "x.zarr"), str(toy_dir / "y.zarr"), "-o", str(out), "--no-progress",
                 "--regularization", "none", "--max-iter", "auto", "--option", "shape_prior=auto"]) == 0
    p = json.loads(xr.open_zarr(out, consolidated=False).attrs["parameters"])
    assert p["regularization"] == "none" and p["max_iter"] == p["auto_tuning"]["choice"]["max_iter"]
    assert p["shape_prior"] is not None and p["shape_prior"] == p["auto_tuning"]["shape_prior"]["choice"]
    capsys.readouterr()
