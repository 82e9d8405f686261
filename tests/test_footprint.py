"""Spatial footprint of a detector-pixel instrument (issue 15): exact overlap areas, the integer
rebinning as a special case, detector-pixel observations, and fusion with one."""
import numpy as np
import pytest

import xfusion
from xfusion.grid import SPECTRAL, fusion_grid
from xfusion.operators import Rebin, build_model
from xfusion.operators.footprint import Footprint, footprint_matrix, polygon_rect_overlap

P, N_FINE = 4.0, 24
CEN = (np.arange(N_FINE) - (N_FINE - 1) / 2) * P


def _layout(n=3, pitch=12.0):
    g = (np.arange(n) - (n - 1) / 2) * pitch
    dx, dy = np.meshgrid(g, g, indexing="ij")
    return dx.ravel(), dy.ravel()


def test_polygon_clipping_known_areas():
    diamond = [(0.0, -1.0), (1.0, 0.0), (0.0, 1.0), (-1.0, 0.0)]  # area 2
    assert polygon_rect_overlap(diamond, -5, 5, -5, 5) == pytest.approx(2.0, abs=1e-15)
    assert polygon_rect_overlap(diamond, 0, 5, -5, 5) == pytest.approx(1.0, abs=1e-15)
    assert polygon_rect_overlap(diamond, 0, 5, 0, 5) == pytest.approx(0.5, abs=1e-15)
    assert polygon_rect_overlap(diamond, 2, 5, 0, 5) == 0.0


def test_exact_areas_against_supersampling():
    dx, dy = _layout()
    roll, cen = 17.0, (1.3, -2.1)
    F = footprint_matrix(CEN, CEN, P, dx, dy, 12.0, roll, cen).toarray()
    # every detector pixel lies inside the field: its row sums to its area in fused pixels
    np.testing.assert_allclose(F.sum(axis=1), (12.0 / P) ** 2, rtol=1e-12)
    assert F.min() >= 0 and F.sum(axis=0).max() <= 1 + 1e-12   # a sky pixel is never counted twice
    # brute force: 100 x 100 sub-samples of each touched fused pixel, point-in-rotated-square
    a = np.deg2rad(roll)
    sub = (np.arange(100) + 0.5) / 100 - 0.5
    worst = 0.0
    for k in (0, 4, 8):
        for ij in np.flatnonzero(F[k] > 0):
            i, j = divmod(ij, N_FINE)
            px = CEN[i] + sub[:, None] * P - cen[0]
            py = CEN[j] + sub[None, :] * P - cen[1]
            u = np.cos(a) * px + np.sin(a) * py - dx[k]
            v = -np.sin(a) * px + np.cos(a) * py - dy[k]
            worst = max(worst, abs(np.mean((np.abs(u) <= 6) & (np.abs(v) <= 6)) - F[k, ij]))
    assert worst < 2e-3  # the supersampling's own error at 100 x 100 (measured: ~1e-4)


def test_aligned_footprint_is_the_integer_rebinning():
    # 3 x 3 pixels of 8" on the 4" grid, edges aligned: the footprint must equal Rebin(2) on that block
    g = np.array([-8.0, 0.0, 8.0])
    dx, dy = (a.ravel() for a in np.meshgrid(g, g, indexing="ij"))
    x = (np.arange(6) - 2.5) * P
    op = Footprint(footprint_matrix(x, x, P, dx, dy, 8.0), (6, 6))
    z = np.random.default_rng(0).uniform(size=(6, 6, 5))
    np.testing.assert_allclose(op.forward(z), Rebin((2, 2, 1)).forward(z).reshape(9, 5), rtol=1e-12)


def test_dense_psf_footprint_equals_chain():
    from xfusion.operators.model import Chain
    from xfusion.operators.psf import Convolve2D

    dx, dy = _layout()
    op = Footprint(footprint_matrix(CEN, CEN, P, dx, dy, 12.0, 17.0, (1.0, 2.0)), (N_FINE, N_FINE))
    k = np.outer([1, 4, 6, 4, 1], [1, 2, 3, 2, 1]).astype(float)   # asymmetric: a transpose would show
    conv = Convolve2D(k / k.sum(), (N_FINE, N_FINE))
    z = np.random.default_rng(1).uniform(size=(N_FINE, N_FINE, 3))
    np.testing.assert_allclose(op.with_psf(conv).forward(z), Chain([conv, op]).forward(z), rtol=1e-10, atol=1e-14)


def _pixel_pair(roll=17.0, background=0.0, seed=0):
    rng = np.random.default_rng(seed)
    ef = np.linspace(6.0, 6.4, 21)
    truth = np.full((N_FINE, N_FINE, 20), 0.02)
    truth[8:14, 10:16, 8:12] += 0.5
    x_counts = rng.poisson(truth.reshape(N_FINE, N_FINE, 5, 4).sum(-1) * 50.0)
    x = xfusion.observation(x_counts, energy_edges=ef[::4], pixel_size=P, exposure=50.0, dims=("x", "y", "energy"),
                            name="X")
    dx, dy = _layout()
    y0 = xfusion.observation(np.zeros((9, 20)), energy_edges=ef, pixel_size=12.0, exposure=100.0,
                             dims=("pixel", "energy"), det_x=dx, det_y=dy, roll=roll, array_center=(1.3, -2.1),
                             name="Y")
    mu = xfusion.predict(_flux(truth, x, ef), y0)
    y_counts = rng.poisson(mu.values + background)
    mask = np.ones(9, bool)
    mask[4] = False  # a bad pixel
    y = xfusion.observation(y_counts, energy_edges=ef, pixel_size=12.0, exposure=100.0, dims=("pixel", "energy"),
                            det_x=dx, det_y=dy, roll=roll, array_center=(1.3, -2.1), name="Y", mask=mask,
                            background=np.full((9, 20), background) if background else None)
    return x, y, truth


def _flux(truth, x, ef):
    import xarray as xr

    c = {"x": x["x"], "y": x["y"]}
    from xfusion.observation import _edges_coords

    coords = dict(c)
    coords.update({k: xr.Variable(*v) for k, v in _edges_coords(ef, "energy").items()})
    return xr.DataArray(truth, dims=("x", "y", "energy"), coords=coords)


def test_pixel_observation_grid_model_and_adjoint():
    from xfusion.operators.dottest import dottest

    x, y, truth = _pixel_pair()
    grid = fusion_grid(y, x)  # either order
    assert grid.attrs["spatial_model"] == "footprint" and grid.attrs["footprint_roll"] == 17.0
    model = build_model(grid, y, SPECTRAL)
    assert model.data_shape == (9, 20)
    assert dottest(model, model.fused_shape) < 1e-12
    assert dottest(model, model.fused_shape, np.float32) < 1e-4
    # a detector pixel reaching outside the fused field is refused, naming the pixel and the fix
    far = y.assign(array_x=y["array_x"] + 40.0)
    with pytest.raises(ValueError, match="inside the fused field"):
        build_model(grid, far, SPECTRAL)


def test_fuse_with_footprint_and_background():
    x, y, truth = _pixel_pair(background=3.0)
    res = xfusion.fuse(x, y, regularization="none", max_iter=20, tol=None, progress=False)
    assert res["model_spectral"].dims == ("pixel", "energy")
    # expected counts include the background: the fit reproduces the unmasked Y counts in total
    keep = y["mask"].values
    total_model = float(res["model_spectral"].values[keep].sum())
    assert total_model == pytest.approx(float(y["counts"].values[keep].sum()), rel=0.02)
    # the sky part of the Y model is the counts minus the background (3 per voxel, ~15 % of the counts);
    # ignoring the background puts those counts into the sky
    y_nob = y.drop_vars("background_rate")
    b = 3.0 * keep.sum()  # keep: (pixel, energy) voxels
    sky_part = float(xfusion.predict(res["flux"], y_nob).values[keep].sum())
    assert sky_part == pytest.approx(float(y["counts"].values[keep].sum()) - b, rel=0.03)
    res_nob = xfusion.fuse(x, y_nob, regularization="none", max_iter=20, tol=None, progress=False)
    assert float(xfusion.predict(res_nob["flux"], y_nob).values[keep].sum()) > sky_part + 0.5 * b


@pytest.mark.parametrize("background", [0.0, 0.3])
def test_detector_pixels_on_the_dask_path_equal_memory(background):
    """A detector-pixel Y (bare footprint, no PSF; with and without a known background) with Dask-backed counts,
    the X blocks smaller than the field: the block-wise fit (each block adds its share of the footprint) equals
    the in-memory one; the low-rank family is refused there with a message."""
    pytest.importorskip("dask.array")
    x, y, _ = _pixel_pair(background=background)
    assert ("background_rate" in y) == (background > 0)
    y = y.drop_vars("mask")
    opts = dict(regularization="wavelet2d1d", k=1.0, n_scales_1d=2, max_iter=3, tol=None, progress=False)
    ref = xfusion.fuse(x, y, **opts)
    got = xfusion.fuse(x.chunk({"x": 6, "y": 6}), y.chunk(), chunks=(6, 6), **opts)
    assert got.attrs["backend"] == "dask" and ref.attrs["backend"] == "numpy"
    f = np.asarray(got.flux.values)
    np.testing.assert_allclose(f, ref.flux.values, rtol=0, atol=1e-5 * float(ref.flux.max()))
    # the low-rank family has no detector-pixel form on Dask: refused, saying what to do
    with pytest.raises(NotImplementedError, match="low-rank family.*detector-pixel input"):
        xfusion.fuse(x.chunk({"x": 6, "y": 6}), y.chunk(), regularization="lowrank", rank=2, max_iter=2,
                     progress=False)


def test_per_pixel_exposure_and_area():
    """Per-pixel exposure folds into the footprint rows, per-pixel ARFs act after it (data side)."""
    import xarray as xr
    from xfusion.operators.dottest import dottest

    x, y, truth = _pixel_pair()
    te = np.linspace(5.9, 6.5, 7)
    a = np.tile(np.linspace(100.0, 200.0, 6), (9, 1))
    a[3] *= 0.5
    area = xr.DataArray(a, dims=("pixel", "energy_true"), coords={"energy_true_lo": ("energy_true", te[:-1]),
                                                                   "energy_true_hi": ("energy_true", te[1:])})
    t = np.full(9, 100.0)
    t[2] = 50.0
    y2 = xfusion.observation(y["counts"], energy_edges=np.linspace(6.0, 6.4, 21), pixel_size=12.0, exposure=t,
                             effective_area=area, det_x=y["det_x"].values, det_y=y["det_y"].values, roll=17.0,
                             array_center=(1.3, -2.1), name="Y2")
    y1 = xfusion.observation(y["counts"], energy_edges=np.linspace(6.0, 6.4, 21), pixel_size=12.0, exposure=100.0,
                             effective_area=area.isel(pixel=0), det_x=y["det_x"].values, det_y=y["det_y"].values,
                             roll=17.0, array_center=(1.3, -2.1), name="Y1")
    g = fusion_grid(x, y2)
    m2, m1 = build_model(g, y2, SPECTRAL), build_model(g, y1, SPECTRAL)
    assert dottest(m2, m2.fused_shape) < 1e-12
    z = truth
    r = m2.forward(z) / m1.forward(z)   # pixel 0 has the reference exposure and area of y1
    np.testing.assert_allclose(r[0], 1.0, rtol=1e-10)
    np.testing.assert_allclose(r[2], 0.5, rtol=1e-10)   # half the exposure
    np.testing.assert_allclose(r[3], 0.5, rtol=1e-10)   # half the area
    with pytest.raises(ValueError, match="per-pixel ARFs"):
        m2.reduced(np.ones((1, 20)))
