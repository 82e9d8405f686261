"""Outputs never destroy what xfusion did not write (DESIGN section 9): one test per bug of session 28's red team.

1. ``xfusion toy/demo -o DIR`` replaced existing x.zarr/y.zarr (the user's own observations) without --overwrite;
2. ``xfusion plot/demo -o DIR`` overwrote the user's files, and ``plot -o`` wrote into an input store;
3. ``write_pha_from_result`` (and the type-II writer) with the default exposure=1 s, area=1 cm2 wrote all-zero counts;
4. the FITS/OGIP writers with overwrite=True replaced any file (the user's instrument .rmf/.arf, a text file);
5. ``xfusion.io.zarr.write(..., overwrite=True)`` through a symbolic link emptied the link's target.
"""
import os

import matplotlib
import numpy as np
import pytest
import xarray as xr
from astropy.io import fits

import xfusion
from xfusion.cli import main
from xfusion.io import zarr as xzarr
from xfusion.io.ogip_read import edges_coords
from xfusion.io.ogip_write import write_pha2_from_result, write_pha_from_result

matplotlib.use("Agg")


def _user_observation(name="my XMM pn obs"):
    counts = np.random.default_rng(0).poisson(5, (8, 6, 6)).astype(float)
    return xfusion.observation(counts, dims=("energy", "y", "x"), energy_edges=np.linspace(0.5, 2.1, 9),
                               pixel_size=4.1, exposure=5e4, name=name)


def _tree(d):
    return sorted(str(p.relative_to(d)) for p in d.rglob("*"))


def _cube(flux_value=1e-6, nx=4, ny=3, n=20):
    e = np.linspace(0.5, 2.5, n + 1)
    flux = np.full((nx, ny, n), flux_value)
    return xr.Dataset({"flux": (("x", "y", "energy"), flux, {"units": "ph cm-2 s-1"})},
                      coords={"x": ("x", np.arange(nx) * 5.0, {"units": "arcsec", "pixel_size": 5.0}),
                              "y": ("y", np.arange(ny) * 5.0, {"units": "arcsec", "pixel_size": 5.0}),
                              **edges_coords("energy", e[:-1], e[1:])})


# ---------------------------------------------------------------------------------------------- bug 1
def test_toy_and_demo_refuse_existing_stores_without_overwrite(tmp_path, capsys):
    d = tmp_path / "project"
    xzarr.write(_user_observation(), d / "x.zarr")  # the user's own observation, saved as the README shows
    before = _tree(d)
    assert main(["toy", "small", "-o", str(d)]) == 3
    err = capsys.readouterr().err
    assert str(d / "x.zarr") in err and "--overwrite" in err
    assert xzarr.open(d / "x.zarr").attrs["name"] == "my XMM pn obs"
    assert _tree(d) == before  # nothing written: y.zarr, truth.zarr were not created either
    assert main(["demo", "--toy", "small", "-o", str(d), "--no-progress", "--replicas", "0"]) == 3
    err = capsys.readouterr().err
    assert str(d / "x.zarr") in err and "--overwrite" in err
    assert _tree(d) == before and xzarr.open(d / "x.zarr").attrs["name"] == "my XMM pn obs"
    # the explicit choice still works: --overwrite replaces the stores xfusion wrote
    assert main(["toy", "small", "-o", str(d), "--overwrite"]) == 0
    assert xzarr.open(d / "x.zarr").attrs["name"] != "my XMM pn obs"


# ---------------------------------------------------------------------------------------------- bug 2
def test_plot_and_demo_refuse_user_files_and_input_stores(tmp_path, capsys):
    toy = tmp_path / "toy"
    assert main(["toy", "small", "-o", str(toy)]) == 0
    out = tmp_path / "out.zarr"
    assert main(["fuse", str(toy / "x.zarr"), str(toy / "y.zarr"), "-o", str(out), "--no-progress",
                 "--regularization", "none", "--max-iter", "3"]) == 0
    capsys.readouterr()
    paper = tmp_path / "paper"
    paper.mkdir()
    (paper / "summary.png").write_text("my figure for the paper")
    (paper / "metrics.txt").write_text("my notes")
    for extra in ([], ["--overwrite"]):  # even --overwrite never replaces a file xfusion did not write
        assert main(["plot", str(out), "-o", str(paper), *extra]) == 3
        err = capsys.readouterr().err
        assert str(paper / "summary.png") in err and ("--overwrite" in err or "not written by xfusion" in err)
        assert (paper / "summary.png").read_text() == "my figure for the paper"
        assert sorted(os.listdir(paper)) == ["metrics.txt", "summary.png"]  # no other figure written either
        assert main(["demo", "--toy", "small", "-o", str(paper), "--no-progress", "--replicas", "0", *extra]) == 3
        capsys.readouterr()
        assert (paper / "metrics.txt").read_text() == "my notes"
        assert sorted(os.listdir(paper)) == ["metrics.txt", "summary.png"]
    # figures never go into an input store (nor into a folder inside one)
    store_files = _tree(toy / "x.zarr")
    for target in (out, toy / "x.zarr", out / "figs"):
        assert main(["plot", str(out), "-o", str(target)]) == 3
        assert "store" in capsys.readouterr().err
    assert main(["plot", str(out), "-o", str(toy / "x.zarr"), "--truth", str(toy / "truth.zarr")]) == 3
    assert _tree(toy / "x.zarr") == store_files and not list(out.glob("*.png")) and not (out / "figs").exists()
    # valid uses unchanged: a new folder, then the same folder again with --overwrite (xfusion's own figures)
    figs = tmp_path / "figs"
    assert main(["plot", str(out), "-o", str(figs)]) == 0
    assert main(["plot", str(out), "-o", str(figs)]) == 3
    assert "--overwrite" in capsys.readouterr().err
    assert main(["plot", str(out), "-o", str(figs), "--overwrite"]) == 0


# ---------------------------------------------------------------------------------------------- bug 3
def test_pha_refuses_counts_lost_to_rounding(tmp_path):
    ds = _cube(1e-6)  # ph cm-2 s-1 per voxel: 1e-6 counts with the default 1 s, 1 cm2
    with pytest.raises(ValueError, match="exposure.*area"):
        write_pha_from_result(ds, np.ones((4, 3), bool), tmp_path / "r")
    with pytest.raises(ValueError, match="exposure.*area"):
        write_pha2_from_result(ds, tmp_path / "r2")
    assert os.listdir(tmp_path) == []  # nothing written
    # documented use: the observation's exposure and area -> the counts are kept
    pha, _, _ = write_pha_from_result(ds, np.ones((4, 3), bool), tmp_path / "ok", exposure=1e5, area=100.0)
    assert int(fits.getdata(pha, "SPECTRUM")["COUNTS"].sum()) == 12 * 20 * 10
    pha2, _, _ = write_pha2_from_result(ds, tmp_path / "ok2", exposure=1e5, area=100.0)
    assert int(fits.getdata(pha2, "SPECTRUM")["COUNTS"].sum()) == 12 * 20 * 10
    # a region of zero flux writes zeros (nothing to lose); rate=True is never rounded
    pha0, _, _ = write_pha_from_result(_cube(0.0), np.ones((4, 3), bool), tmp_path / "zero")
    assert int(fits.getdata(pha0, "SPECTRUM")["COUNTS"].sum()) == 0
    write_pha_from_result(ds, np.ones((4, 3), bool), tmp_path / "rate", rate=True)
    # a folder that does not exist is named (was: FileNotFoundError naming the hidden temporary file)
    with pytest.raises(FileNotFoundError, match=r"its folder .*nowhere' does not exist"):
        write_pha_from_result(ds, np.ones((4, 3), bool), tmp_path / "nowhere" / "r", exposure=1e5, area=100.0)


# ---------------------------------------------------------------------------------------------- bug 4
def test_fits_writers_replace_only_their_own_files(tmp_path):
    ds = _cube(1e-6)
    pre = tmp_path / "src"
    for ext in (".rmf", ".arf"):  # the user's instrument responses under the same prefix
        h = fits.PrimaryHDU()
        h.header["ORIGIN"] = "USER " + ext
        h.writeto(f"{pre}{ext}")
    with pytest.raises(xzarr.OutputError, match=r"src\.rmf.*not written by xfusion"):
        write_pha_from_result(ds, np.ones((4, 3), bool), pre, exposure=1e5, area=100.0, overwrite=True)
    assert {ext: fits.getheader(f"{pre}{ext}").get("ORIGIN") for ext in (".rmf", ".arf")} == \
        {".rmf": "USER .rmf", ".arf": "USER .arf"}
    assert not os.path.exists(f"{pre}.pha")  # every path checked before any file is written
    notes = tmp_path / "notes.txt"
    notes.write_text("precious")
    with pytest.raises(xzarr.OutputError, match="not written by xfusion"):
        xfusion.io.write_fits_cube(ds, notes, overwrite=True)
    assert notes.read_text() == "precious"
    # xfusion's own files: overwrite=False still refuses, overwrite=True replaces them
    cube = xfusion.io.write_fits_cube(ds, tmp_path / "cube.fits")
    assert fits.getheader(cube)["CREATOR"].startswith("xfusion ")
    with pytest.raises(OSError, match="exists"):
        xfusion.io.write_fits_cube(ds, cube)
    xfusion.io.write_fits_cube(ds, cube, overwrite=True)
    pha, rmf, arf = write_pha_from_result(ds, np.ones((4, 3), bool), tmp_path / "mine", exposure=1e5, area=100.0)
    write_pha_from_result(ds, np.ones((4, 3), bool), tmp_path / "mine", exposure=2e5, area=100.0, overwrite=True)
    assert fits.getheader(pha, "SPECTRUM")["EXPOSURE"] == 2e5
    assert [p.name for p in sorted(tmp_path.iterdir()) if p.name.startswith(".")] == []  # no temporary left


# ---------------------------------------------------------------------------------------------- bug 5
def test_zarr_write_refuses_symbolic_links(tmp_path):
    x, y = _user_observation("first"), _user_observation("second")
    real = tmp_path / "runs" / "fused_v1.zarr"
    xzarr.write(x, real)
    files = _tree(real)
    link = tmp_path / "latest.zarr"
    link.symlink_to(real)
    for _ in range(2):  # and the next attempt says the same (nothing left half-done)
        with pytest.raises(xzarr.OutputError, match="symbolic link.*real path"):
            xzarr.write(y, link, overwrite=True)
        assert _tree(real) == files and xzarr.open(real).attrs["name"] == "first"
        assert sorted(os.listdir(tmp_path)) == ["latest.zarr", "runs"] and link.is_symlink()
    # a link where a half-done replace left its temporary sibling: refused, its target untouched
    link.unlink()
    tmp_link = tmp_path / ".latest.zarr.xfusion-tmp"
    tmp_link.symlink_to(real)
    with pytest.raises(xzarr.OutputError, match="symbolic link"):
        xzarr.write(y, link)
    assert _tree(real) == files and tmp_link.is_symlink() and not link.exists()
    # the real path works as before
    tmp_link.unlink()
    xzarr.write(y, real, overwrite=True)
    assert xzarr.open(real).attrs["name"] == "second"


def test_a_file_at_the_temporary_name_is_never_overwritten_or_removed(tmp_path):
    """The one temporary-file writer (xfusion.io.safe_files, used by the FITS writers, the PNG figures and the CLI's
    text files) refuses a file already at its temporary name, leaves it as it was, and removes only its own
    temporary file when the write fails."""
    import os

    from xfusion.io.safe_files import write_via_temporary

    target = tmp_path / "spec.pha"
    squat = tmp_path / f".spec.xfusion-tmp-{os.getpid()}.pha"
    squat.write_text("someone's")
    with pytest.raises(FileExistsError, match="in the way"):
        write_via_temporary(target, lambda t: t.write_text("new"))
    assert squat.read_text() == "someone's" and not target.exists()
    squat.unlink()

    def fails(t):
        t.write_text("half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        write_via_temporary(target, fails)
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    assert write_via_temporary(target, lambda t: t.write_text("ok")) == target and target.read_text() == "ok"


def test_ctrl_c_during_a_store_write_waits_for_the_store(tmp_path):
    """Session 29: Ctrl-C inside Zarr's asynchronous writer left chunk writes running after the cleanup, which
    recreated an unmarked temporary folder in the way of every later write (an uncertainty replica store then
    refused to resume). Now the first Ctrl-C takes effect once the store is written and in place."""
    import os
    import signal

    import dask.array as da

    from xfusion.io import zarr as xzarr

    fired = []

    def interrupt(block):
        if not fired:
            fired.append(1)
            os.kill(os.getpid(), signal.SIGINT)
        return block

    data = da.ones((8, 8, 4), chunks=(2, 2, 4)).map_blocks(interrupt, meta=np.empty((0, 0, 0)))  # run at compute
    ds = xr.Dataset({"flux": (("x", "y", "energy"), data)})
    # Ctrl-C as in a terminal: a test run started in the background by a non-interactive shell (as CI is)
    # inherits SIGINT ignored, and then no KeyboardInterrupt is raised at all
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            xzarr.write(ds, tmp_path / "out.zarr")
    finally:
        signal.signal(signal.SIGINT, previous)
    assert fired and sorted(p.name for p in tmp_path.iterdir()) == ["out.zarr"]  # no temporary sibling left
    np.testing.assert_array_equal(xzarr.open(tmp_path / "out.zarr")["flux"].values, np.ones((8, 8, 4)))
    xzarr.write(xr.Dataset({"flux": (("x", "y", "energy"), np.ones((2, 2, 2)))}), tmp_path / "again.zarr")


# ---------------------------------------------------------------------------------------------- session 30 (red team)
_GATED_WRITER = r'''
import os, sys, time
import dask.array as da, numpy as np, xarray as xr
from xfusion.io import zarr as xzarr
out, started, go = sys.argv[1:4]

def gate(block):  # the first writer holds the store (and its lock) until the test lets it go on
    open(started, "w").close()
    t0 = time.time()
    while not os.path.exists(go):
        if time.time() - t0 > 60:
            raise SystemExit("never released")
        time.sleep(0.01)
    return block

data = da.ones((4, 3, 2), chunks=(4, 3, 2)).map_blocks(gate, meta=np.empty((0, 0, 0)))
xzarr.write(xr.Dataset({"flux": (("x", "y", "energy"), data)}, attrs={"writer": "first"}), out)
print("OK")
'''


def test_a_second_writer_of_the_same_store_is_refused_and_the_first_completes(tmp_path):
    """Session 30: two writers of one path shared the temporary name ``.NAME.xfusion-tmp``; the second one's
    start-up recovery deleted the first one's live temporary store (it carries the marker), both said OK and the
    store had no root zarr.json. Now the lock ``.NAME.xfusion-lock`` refuses the second writer, naming the first,
    and the first one's temporary store is left alone."""
    import subprocess
    import sys
    import time

    out, started, go = tmp_path / "out.zarr", tmp_path / "started", tmp_path / "go"
    (tmp_path / "writer_script.py").write_text(_GATED_WRITER)
    proc = subprocess.Popen([sys.executable, str(tmp_path / "writer_script.py"), str(out), str(started), str(go)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        t0 = time.time()
        while not started.exists():
            assert proc.poll() is None and time.time() - t0 < 90, proc.communicate()
            time.sleep(0.02)
        assert (tmp_path / ".out.zarr.xfusion-tmp").is_dir()  # the first writer is inside its write
        second = xr.Dataset({"flux": (("x", "y", "energy"), np.full((4, 3, 2), 2.0))}, attrs={"writer": "second"})
        with pytest.raises(xzarr.OutputError, match=f"in use by process {proc.pid} .*xfusion-lock"):
            xzarr.write(second, out)
        assert (tmp_path / ".out.zarr.xfusion-tmp").is_dir() and not out.exists()  # nothing of the first touched
    finally:
        go.touch()
        stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0 and stdout.strip() == "OK", stderr
    done = xzarr.open(out)
    assert done.attrs["writer"] == "first" and float(done["flux"].min()) == 1.0
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # lock released, no temporary
    xzarr.write(second, out, overwrite=True)  # the lock is free again
    assert xzarr.open(out).attrs["writer"] == "second"


def test_a_second_cli_fuse_on_one_output_is_refused_before_it_reads_or_fits(tmp_path, capsys):
    """Session 31: the output's lock was taken only by the write, so a second ``xfusion fuse -o OUT`` while a
    first one ran did its whole fit before being refused. The CLI now holds the lock from before it reads its
    inputs to the end of the write: the second run stops at once naming the holder, writes nothing, and the lock
    is released when a run ends (also on an error); ``write(lock=)`` takes only that store's held lock."""
    import time

    d = tmp_path / "toy"
    assert main(["toy", "small", "-o", str(d)]) == 0
    out = tmp_path / "fused.zarr"
    run = ["fuse", str(d / "x.zarr"), str(d / "y.zarr"), "-o", str(out), "--no-progress", "--max-iter", "3",
           "--tol", "0", "--regularization", "none"]
    lock = xzarr.output_lock(out)
    with lock:  # the first run, as far as the second can tell (this process counts as alive)
        capsys.readouterr()
        t0 = time.time()
        assert main(run) == 3  # an input error
        assert time.time() - t0 < 5
        err = capsys.readouterr().err
        assert f"output store {str(out)!r} is in use by process {os.getpid()}" in err and "Traceback" not in err
        # refused before the inputs are read: a missing input is not what it reports
        assert main(run[:2] + [str(tmp_path / "missing.zarr")] + run[3:]) == 3
        assert "in use by process" in capsys.readouterr().err
        assert not out.exists() and lock.path.exists()
        bad = xzarr.output_lock(tmp_path / "other.zarr")
        with pytest.raises(ValueError, match="lock= must be output_lock"):
            xzarr.write(_user_observation(), out, lock=bad)
        xzarr.write(_user_observation(), out, lock=lock)  # the holder writes; the lock stays its own
        assert lock.held and lock.path.exists()
    assert not lock.path.exists()
    assert main(run + ["--overwrite"]) == 0  # the lock is free again
    assert not lock.path.exists() and xzarr.open(out).attrs["iterations"] == 3
    assert main(run[:2] + [str(tmp_path / "missing.zarr")] + run[3:] + ["--overwrite"]) == 3
    assert not lock.path.exists()  # released after a failed run too


def test_overwrite_refuses_a_store_holding_the_users_additions(tmp_path, capsys):
    """Session 30: ``--overwrite`` / ``write(..., overwrite=True)`` deleted an xfusion store whole, including an
    array and a file the user had added inside it. The store now records what xfusion wrote (root attribute
    ``xfusion_entries``); anything else in it is named in a refusal and kept."""
    import zarr

    d = tmp_path / "project"
    assert main(["toy", "small", "-o", str(d)]) == 0
    g = zarr.open_group(str(d / "x.zarr"), mode="a")
    g.create_array("my_line_map", shape=(3, 3), dtype="f4", dimension_names=["a", "b"])[:] = 1.0
    (d / "x.zarr" / "NOTES.txt").write_text("observing log, do not lose\n")
    before = _tree(d / "x.zarr")
    assert xzarr.foreign_entries(d / "x.zarr") == ["NOTES.txt", "my_line_map"]
    capsys.readouterr()
    assert main(["toy", "small", "-o", str(d), "--overwrite"]) == 3
    err = capsys.readouterr().err
    assert "'NOTES.txt', 'my_line_map'" in err and "xfusion did not write" in err and "Traceback" not in err
    with pytest.raises(xzarr.OutputError, match="NOTES.txt"):
        xzarr.write(_user_observation(), d / "x.zarr", overwrite=True)
    assert _tree(d / "x.zarr") == before  # nothing deleted
    assert xzarr.foreign_entries(d / "y.zarr") == []  # a store as xfusion wrote it is still replaced
    xzarr.write(_user_observation(), d / "y.zarr", overwrite=True)
    assert "xfusion_entries" not in xzarr.open(d / "y.zarr").attrs  # bookkeeping, not data


def test_write_takes_a_dataset(tmp_path):
    """Session 30: write(DataArray) failed inside the writer ("'DataArray' object has no attribute 'variables'"),
    after the path checks. Now a TypeError up front says a Dataset is needed and how to make one."""
    cube = _cube()
    with pytest.raises(TypeError, match=r"takes an xarray.Dataset; got .*DataArray.*to_dataset\(name='flux'\)"):
        xzarr.write(cube["flux"], tmp_path / "out.zarr")
    for bad in (None, {"flux": 1}):
        with pytest.raises(TypeError, match="takes an xarray.Dataset"):
            xzarr.write(bad, tmp_path / "out.zarr")
    assert list(tmp_path.iterdir()) == []
