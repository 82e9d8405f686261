"""Truth-free "auto" settings on Dask-backed observations (session 17): Poisson thinning runs on in-memory copies
when the tuning fits ``xfusion.tuning.IN_MEMORY_BYTES``, the final fit runs on Dask, and the result is the in-memory
one to float round-off; above the limit the pre-thinning fallbacks apply and the record says why."""
import importlib
import json

import numpy as np
import pytest
import xarray as xr

import xfusion
from xfusion import parallel, tuning


def _lazy(x, y):
    return x.chunk({"x": 8, "y": 8}), y.chunk()


def _record(r):
    return json.loads(r.attrs["parameters"])


@pytest.mark.parametrize("kw", [{}, {"regularization": "none"}], ids=["auto", "none-max_iter-auto"])
def test_auto_on_dask_backed_data_is_tuned_in_memory_and_matches_numpy(small_toy, kw):
    x, y, _ = small_toy
    xd, yd = _lazy(x, y)
    before = [o.copy(deep=True) for o in (xd, yd)]
    a = xfusion.fuse(x, y, progress=False, **kw)
    b = xfusion.fuse(xd, yd, progress=False, **kw)
    pa, pb = _record(a), _record(b)
    assert parallel.is_dask(b.flux.data)  # the final fit ran on Dask
    # the same choice from the same thinning split (seed 0), noted as tuned in memory
    assert pa["regularization"] == pb["regularization"] and pa["max_iter"] == pb["max_iter"]
    assert pa["auto_tuning"]["choice"] == pb["auto_tuning"]["choice"]
    assert "in memory" in pb["auto_tuning"]["in_memory"] and "MiB" in pb["auto_tuning"]["in_memory"]
    assert "fallback" not in json.dumps(pb["auto_tuning"])
    fa, fb = a.flux.values, b.flux.values
    np.testing.assert_allclose(fb, fa, rtol=0, atol=1e-5 * float(fa.max()))
    # the caller's lazy observations are left lazy and unchanged
    for o, o0 in zip((xd, yd), before):
        assert parallel.is_dask(o["counts"].data)
        xr.testing.assert_identical(o, o0)


def test_over_the_memory_limit_dask_takes_the_recorded_fallback(small_toy, monkeypatch):
    x, y, _ = small_toy
    monkeypatch.setattr(tuning, "IN_MEMORY_BYTES", 1024)
    with pytest.warns(UserWarning, match="not tuned.*IN_MEMORY_BYTES") as seen:
        r = xfusion.fuse(*_lazy(x, y), progress=False, max_iter=3)
    assert seen[0].filename == __file__  # the warning points at the user's call, not inside xfusion
    p = _record(r)
    assert p["regularization"] == "wavelet2d1d"
    method = p["auto_tuning"]["method"]
    assert method.startswith("fallback") and "IN_MEMORY_BYTES" in method and "MiB" in method
    # an explicit prior with "auto" settings: the counts rule, and the record says why
    with pytest.warns(UserWarning, match="not tuned"):
        r = xfusion.fuse(*_lazy(x, y), progress=False, regularization="none")
    p = _record(r)
    assert p["max_iter"] == importlib.import_module("xfusion.fuse").EARLY_STOP["none"]
    assert "IN_MEMORY_BYTES" in p["auto_tuning"]["method"]


def test_a_mosaic_too_large_is_tuned_on_its_central_subfield(monkeypatch):
    """pn + four Resolve tiles on Dask, the whole field over the in-memory limit: the tuning runs on the central
    sub-field (pn cropped, each tile keeping its detector pixels wholly inside the box), the fit on the whole field
    on Dask with those settings (no NaN); with a limit no sub-field meets, the recorded fallback rules."""
    from xfusion.scenes_mosaic import make_mosaic

    # 72 fused pixels a side (session 31; was 108: 20 s of tuning and fit, now ~9 s)
    obs, _ = make_mosaic("cluster_core", 3, size=(72, 40), counts=(3e5, 3e5), mos=False)
    lazy = [o.chunk() for o in obs.values()]
    need, _ = tuning._need(list(obs.values()))
    sub = tuning._central_subfield(list(obs.values()), 0.75)
    assert sub is not None and sub[0].sizes["x"] == 54 and len(sub) >= 2
    for full, cut in zip(list(obs.values())[1:], sub[1:]):  # every kept tile pixel lies inside the crop
        assert 0 < cut.sizes["pixel"] <= full.sizes["pixel"]
    # a limit between what the central sub-field and the whole field need (the fixed part, tuning.OVERHEAD_BYTES,
    # is most of both at this size)
    monkeypatch.setattr(tuning, "IN_MEMORY_BYTES", (need + tuning._need(sub)[0]) // 2)
    with pytest.warns(UserWarning, match="tuned in memory on its central"):
        r = xfusion.fuse(*lazy, progress=False)
    assert r.attrs["backend"] == "dask" and "central" in _record(r)["auto_tuning"]["in_memory"]
    assert not np.isnan(np.asarray(r.flux.values)).any()
    monkeypatch.setattr(tuning, "IN_MEMORY_BYTES", 1024)
    with pytest.warns(UserWarning, match="no central sub-field fits"):
        r = xfusion.fuse(*lazy, progress=False, max_iter=3)
    assert _record(r)["auto_tuning"]["method"].startswith("fallback")


def _toy_geometry(n, L):
    """Empty observations of the geometry of ``benchmarks/dask_memory.py`` (the gaussian_rebin toy scaled): X n x n
    pixels of 10 arcsec, L/40 channels; Y n/3 x n/3 pixels of 30 arcsec, L channels; fused cube n x n x L."""
    def obs(m, pixel, channels):
        return xfusion.observation(np.zeros((m, m, channels), np.float32),
                                   energy_edges=np.linspace(0.5, 1.4, channels + 1),
                                   pixel_size=pixel, exposure=5e4, effective_area=1000.0, dims=("x", "y", "energy"))
    return [obs(n, 10.0, L // 40), obs(n // 3, 30.0, L)]


@pytest.mark.parametrize("n, L, peak_mib", [(48, 400, 139), (96, 800, 711)])
def test_in_memory_tuning_estimate_is_within_30_percent_above_the_measured_peak(n, L, peak_mib):
    """The estimate that decides whether Dask-backed data are tuned in memory (:func:`xfusion.tuning._need`) against
    the peak measured by ``benchmarks/dask_memory.py`` (session 30: the calling process's peak resident memory above
    its resident memory before, ``regularization="auto"`` tuned in full): never below it, at most 1.3 times it. Without
    the fixed part (imports, Numba compiling) the 48x48x400 estimate was 86 MiB, 0.62 of the peak; an estimate twice
    the peak (1290 against 711 MiB at 96x96x800) would refuse fields that fit."""
    need, shape = tuning._need(_toy_geometry(n, L))
    assert shape == (n, n)
    assert 1.0 <= need / (peak_mib * 2 ** 20) <= 1.3


def test_in_memory_copies_estimate_subfield_and_refuse(small_toy, monkeypatch):
    x, y, _ = small_toy
    xd, yd = _lazy(x, y)
    copies, note = tuning.in_memory_copies([xd, yd])
    assert not any(parallel.is_dask(v.data) for c in copies for v in c.variables.values())
    xr.testing.assert_identical(copies[0], x)
    voxels = x.sizes["x"] * x.sizes["y"] * y.sizes["energy"]
    need = tuning.OVERHEAD_BYTES + tuning.CUBE_COPIES * 4 * voxels + 3 * (x.nbytes + y.nbytes)
    assert f"{need / 2 ** 20:.0f} MiB" in note
    monkeypatch.setattr(tuning, "IN_MEMORY_BYTES", need)
    assert tuning.in_memory_copies([xd, yd])[0][0].sizes["x"] == 15  # the whole field fits exactly
    # just too small for the whole field: the central 4x4 of Y's 5x5 pixels and the 12x12 of X's under them
    monkeypatch.setattr(tuning, "IN_MEMORY_BYTES", need - 1)
    with pytest.warns(UserWarning, match="central 12x12"):
        copies, note = tuning.in_memory_copies([xd, yd])
    xc, yc = copies
    assert (xc.sizes["x"], xc.sizes["y"], yc.sizes["x"], yc.sizes["y"]) == (12, 12, 4, 4)
    xr.testing.assert_identical(xc, x.isel(x=slice(0, 12), y=slice(0, 12)))
    xr.testing.assert_identical(yc, y.isel(x=slice(0, 4), y=slice(0, 4)))
    assert "central 12x12" in note and "whole field (15x15" in note
    # no sub-field fits: refused, with what to do
    monkeypatch.setattr(tuning, "IN_MEMORY_BYTES", 1024)
    with pytest.warns(UserWarning, match="raise that limit"):
        copies, note = tuning.in_memory_copies([xd, yd])
    assert copies is None
    # more image inputs: every one cropped to the same box (the two-input crop, for the same two)
    two, three = tuning._central_subfield([xd, yd], 0.5), tuning._central_subfield([xd, yd, xd], 0.5)
    assert len(three) == 3 and all(a.sizes == b.sizes for a, b in zip(two + [two[0]], three))


def test_too_large_for_memory_is_tuned_on_the_central_subfield(small_toy, monkeypatch):
    """The whole field's estimate above the limit, a central sub-field below it: thinning runs on the sub-field (in
    memory), the whole field is fitted on Dask with its settings (on this toy the same family as the whole field;
    the early-stopping count differs, 15 vs 8 iterations since the toy's session-29 redraw: it is chosen on the
    sub-field's counts)."""
    x, y, _ = small_toy
    xd, yd = _lazy(x, y)
    before = [o.copy(deep=True) for o in (xd, yd)]
    ref = xfusion.fuse(x, y, progress=False)
    # the cubes and observations at 0.8 of their estimate (the fixed part does not shrink with the field)
    monkeypatch.setattr(tuning, "IN_MEMORY_BYTES", tuning.OVERHEAD_BYTES + int(0.8 * (tuning._need([x, y])[0] -
                                                                                     tuning.OVERHEAD_BYTES)))
    with pytest.warns(UserWarning, match="tuned in memory on its central 12x12") as seen:
        out = xfusion.fuse(xd, yd, progress=False)
    assert seen[0].filename == __file__
    p = _record(out)
    assert "central 12x12" in p["auto_tuning"]["in_memory"] and out.flux.shape == ref.flux.shape
    assert p["auto_tuning"]["choice"]["regularization"] == _record(ref)["auto_tuning"]["choice"]["regularization"]
    # the sub-field's settings (the shape prior's pseudo-counts or the iteration count, chosen on the sub-field) on
    # the whole field
    same = xfusion.fuse(x, y, progress=False, settings=out)
    assert _record(same).get("shape_prior") == p.get("shape_prior") == \
        (p["auto_tuning"]["shape_prior"]["choice"] if "shape_prior" in p["auto_tuning"] else None)
    # the field's count: the sub-field's count, or 3/4 of it where the compact sources run on (session 59's rule,
    # on the whole field's sources)
    from xfusion import sources
    from xfusion.grid import assign_roles

    n = p["auto_tuning"]["choice"]["max_iter"]
    assert (p["max_iter"], p["source_iter"]) == tuning.run_on(p["auto_tuning"]["choice"], n,
                                                            *sources.peaks_and_share(assign_roles(x, y)[0]))
    assert same.attrs["iterations"] == out.attrs["iterations"] == p["max_iter"]
    np.testing.assert_allclose(out.flux.values, same.flux.values, rtol=0, atol=1e-5 * float(ref.flux.max()))
    for o, o0 in zip((xd, yd), before):
        xr.testing.assert_identical(o, o0)


def test_four_inputs_on_dask_are_tuned_in_memory_like_numpy():
    """pn + MOS1 + a Resolve-like image + MOS2 (issue 18), chunked: the same thinning choice as in memory (every input
    thinned and scored), the fit on Dask (two iterations here) equal to the in-memory one."""
    from xfusion import scenes, scenes_mosaic

    obs, _ = scenes_mosaic.make_small(seed=3)
    _, y, _ = scenes.make("cluster_core", 3, counts=(2e5, 2e5), psf_pixels=1.0, response="gaussian",
                          geometry="xmm_resolve", size=(24, 40))
    ins = [obs["pn"], obs["mos1"], y.assign_attrs(name="Resolve image"), obs["mos2"]]
    lazy = [o.assign(counts=o.counts.chunk({"x": 2 if o is ins[2] else 12, "y": 2 if o is ins[2] else 12}))
            for o in ins]
    ref = xfusion.fuse(*ins, progress=False, max_iter=2)
    out = xfusion.fuse(*lazy, progress=False, max_iter=2)
    pr, pd = _record(ref), _record(out)
    assert out.attrs["backend"] == "dask" and pd["auto_tuning"]["choice"] == pr["auto_tuning"]["choice"]
    assert len(pd["auto_tuning"]["heldout_deviance"]) == len(pr["auto_tuning"]["heldout_deviance"]) > 1
    assert "tuned in memory" in pd["auto_tuning"]["in_memory"]
    np.testing.assert_allclose(out.flux.values, ref.flux.values, rtol=0, atol=1e-5 * float(ref.flux.max()))
