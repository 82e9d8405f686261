"""xfusion.uncertainty: replicas, statistics, the resumable store, the Dask path and bad input.

Tiny scene (12x12 fused pixels x 240 channels), fixed settings (no tuning), 3 replicas: the coverage
of the error bars is measured in benchmarks/calibration.py, not here.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr

import xfusion
from xfusion import scenes
from xfusion.io import zarr as xzarr
from xfusion.uncertainty import ReplicaStore, region_masks

SETTINGS = {"k": 1.0, "n_scales_1d": 2, "null_space": "zero", "max_iter": 8, "tol": None}


@pytest.fixture(scope="module")
def fitted():
    x, y, truth = scenes.make("cluster_core", seed=3, counts=3e5, size=(12, 240))
    r = xfusion.fuse(x, y, progress=False, **SETTINGS)
    return x, y, r


def test_replicas_statistics_store_and_resume(fitted, tmp_path):
    x, y, r = fitted
    x_before = x["counts"].values.copy()
    store = tmp_path / "reps"
    regions = {"centre": {"x": (4, 8), "y": (4, 8)}, "left": (slice(0, 6), slice(None))}
    # a run "killed" after 2 replicas, then resumed to 3: replicas 0-1 come from the store, not refitted
    u2 = xfusion.uncertainty(r, x, y, n=2, store=store, regions=regions, seed=5)
    assert xzarr.written_by_xfusion(store) and sorted(p.name for p in store.iterdir() if p.is_dir()) == \
        ["replica_00000", "replica_00001"]
    u3 = xfusion.uncertainty(r, x, y, n=3, store=store, regions=regions, seed=5)
    np.testing.assert_array_equal(u3["flux_replicas"].values[:2], u2["flux_replicas"].values)
    np.testing.assert_array_equal(u3["replica_elapsed_s"].values[:2], u2["replica_elapsed_s"].values)
    # the same replicas without a store: replica i depends only on (seed, i)
    u = xfusion.uncertainty(r, x, y, n=3, regions=regions, seed=5)
    np.testing.assert_array_equal(u["flux_replicas"].values, u3["flux_replicas"].values)
    np.testing.assert_array_equal(x["counts"].values, x_before)  # inputs untouched

    reps = u["flux_replicas"].values.astype(np.float64)
    assert not np.array_equal(reps[0], reps[1])  # independent draws
    np.testing.assert_allclose(u["flux_std"].values, reps.std(axis=0, ddof=1), rtol=1e-4, atol=1e-12)
    q = u["flux_quantile"].values
    assert np.all(q[0] <= q[1]) and np.all(q[1] <= q[2])
    assert float(u["flux_std"].max()) > 0
    # region spectra: the masks summed in each replica; covariance diagonal = variance
    m = region_masks(regions, (12, 12))[1]
    assert m[0].sum() == 16 and m[1].sum() == 72
    rs = np.einsum("rxy,nxye->nre", m.astype(float), reps)
    np.testing.assert_allclose(u["region_replicas"].values, rs, rtol=1e-6)
    np.testing.assert_allclose(np.diagonal(u["region_covariance"].values, axis1=1, axis2=2),
                               u["region_std"].values ** 2, rtol=1e-3)
    assert list(u["region"].values) == ["centre", "left"]
    # the fit ran all max_iter (tol=None): not converged, so replicas start cold with the same count
    assert not u["replica_warm"].any() and np.all(u["replica_iterations"].values == 8)
    assert json.loads(u.attrs["settings"])["k"] == 1.0


def test_store_is_never_foreign(fitted, tmp_path):
    x, y, r = fitted
    foreign = tmp_path / "mine.zarr"
    xr.Dataset({"a": ("t", np.arange(3))}).to_zarr(foreign, consolidated=False)
    before = sorted(p.name for p in foreign.rglob("*"))
    with pytest.raises(xzarr.OutputError, match="not created by xfusion"):
        xfusion.uncertainty(r, x, y, n=2, store=foreign)
    assert sorted(p.name for p in foreign.rglob("*")) == before
    afile = tmp_path / "notes.txt"
    afile.write_text("keep")
    with pytest.raises(xzarr.OutputError):
        xfusion.uncertainty(r, x, y, n=2, store=afile)
    assert afile.read_text() == "keep"
    # an xfusion replica store of another problem (other seed) is refused, not mixed
    ReplicaStore(tmp_path / "other", "0" * 64)
    with pytest.raises(xzarr.OutputError, match="different problem"):
        xfusion.uncertainty(r, x, y, n=2, store=tmp_path / "other")


def test_dask_client_and_thinning(fitted, tmp_path):
    distributed = pytest.importorskip("distributed")
    x, y, r = fitted
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                                  dashboard_address=":0") as lc, distributed.Client(lc) as client:
        ud = xfusion.uncertainty(r, x, y, n=2, client=client, store=tmp_path / "d", seed=1)
    us = xfusion.uncertainty(r, x, y, n=2, seed=1)
    np.testing.assert_array_equal(ud["flux_replicas"].values, us["flux_replicas"].values)
    # thinning: centred on the fit, spread from the two halves
    ut = xfusion.uncertainty(r, x, y, n=2, method="thinning", seed=1)
    assert ut.attrs["method"] == "thinning" and np.all(ut["replica_iterations"].values == 16)
    d = ut["flux_replicas"].values - r["flux"].values[None]
    assert float(np.abs(d).max()) > 0 and np.all(np.isfinite(d))


def test_bad_input(fitted):
    x, y, r = fitted
    with pytest.raises(ValueError, match="n \\(replicas\\)"):
        xfusion.uncertainty(r, x, y, n=1)
    with pytest.raises(ValueError, match="method"):
        xfusion.uncertainty(r, x, y, n=2, method="jackknife")
    with pytest.raises(ValueError, match="parameters"):
        xfusion.uncertainty(r.assign_attrs(parameters=None).drop_attrs(), x, y, n=2)
    with pytest.raises(ValueError, match="selects no pixel"):
        xfusion.uncertainty(r, x, y, n=2, regions={"empty": {"x": (3, 3), "y": (0, 2)}})
    xs, ys, _ = scenes.make("cluster_core", seed=3, counts=3e5, size=(24, 240))
    with pytest.raises(ValueError, match="do not match"):
        xfusion.uncertainty(r, xs, ys, n=2)
