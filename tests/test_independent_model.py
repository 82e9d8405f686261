"""The forward model against an independent simulator (tests/simulator.py) and against numbers by hand.

No inverse crime: the reference counts come from code that shares nothing with ``xfusion.operators``
(explicit loops, scipy convolutions), and the photometric test checks counts = flux x exposure x area
with numbers computed by hand. A fusion on data drawn from the independent simulator must still beat the
naive baselines.
"""
import numpy as np
import pytest
import xarray as xr

import xfusion
import xfusion.operators.model as model_mod
from xfusion import baselines, metrics, toy
from xfusion.grid import SPATIAL, SPECTRAL, fusion_grid

import simulator as sim

#: every toy configuration, shrunk to seconds (same kinds of responses, PSFs, areas and rebinning)
CONFIGS = {
    "small": {},
    "gaussian_1kev": dict(x={"shape": [12, 12], "n_channels": 300}, y={"n_channels": 300}),
    "gaussian_6kev": dict(x={"shape": [12, 12], "n_channels": 200}, y={"n_channels": 200}),
    "gaussian_rebin": dict(x={"shape": [15, 15], "n_channels": 12}, y={"n_channels": 240}),
    "realistic_rebin": dict(x={"shape": [15, 15], "n_channels": 12}, y={"n_channels": 240}),
}


def flux_of(truth):
    return truth.astype(np.float64)


def assert_close(a, b, rtol=1e-9):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape
    scale = np.abs(b).max()
    assert scale > 0
    err = np.abs(a - b).max() / scale
    assert err <= rtol, f"max relative difference {err:.3g} > {rtol}"


@pytest.fixture(scope="module", params=list(CONFIGS))
def config(request):
    x, y, t = toy.make(request.param, seed=1, **CONFIGS[request.param])
    return request.param, x, y, t


def test_predict_matches_independent_simulator(config):
    """xfusion.predict (build_model forward) == the independent simulator, both instruments, every toy kind."""
    name, x, y, t = config
    f = flux_of(t)
    ex, ey = sim.simulate(f, x, y)
    assert_close(xfusion.predict(f, x).values, ex)
    assert_close(xfusion.predict(f, y).values, ey)


def test_fft_path_matches_independent_simulator(config, monkeypatch):
    """The large-field Y path (FFT convolution + Rebin, used above DENSE_SPATIAL_MAX) == the simulator."""
    name, x, y, t = config
    monkeypatch.setattr(model_mod, "DENSE_SPATIAL_MAX", 0)
    f = flux_of(t)
    _, ey = sim.simulate(f, x, y)
    assert_close(xfusion.predict(f, y).values, ey)


def test_toy_counts_are_draws_of_the_independent_expectation():
    """The toy's Poisson data are consistent with the simulator's expectations (not only with build_model's)."""
    x, y, t = toy.make("small", seed=3)
    ex, ey = sim.simulate(flux_of(t), x, y)
    for counts, mean in ((x.counts.values, ex), (y.counts.values, ey)):
        assert abs(counts.sum() - mean.sum()) < 5 * np.sqrt(mean.sum())
        # Pearson chi2 per voxel ~ 1 for Poisson draws of the right mean (fails for any scale error > ~1%)
        ok = mean > 20
        chi2 = np.mean((counts[ok] - mean[ok]) ** 2 / mean[ok])
        assert 0.9 < chi2 < 1.1


def _edges(n, e0=1.0, width=0.01):
    return e0 + width * np.arange(n + 1)


def _flux(grid, value):
    shape = (grid.sizes["x"], grid.sizes["y"], grid.sizes["energy"])
    coords = {c: grid[c] for c in ("x", "y", "energy", "energy_lo", "energy_hi")}
    return xr.DataArray(np.full(shape, value), dims=("x", "y", "energy"), coords=coords)


def test_photometry_by_hand():
    """Flat flux f (ph cm-2 s-1 per voxel): every expected count is f x exposure x area x (voxels summed).

    X: 12 x 12 pixels of 10", 8 channels of 40 eV, t = 2e4 s, A = 400 cm2, no response: each X voxel sums
    4 fused channels -> 2.5e-4 * 2e4 * 400 * 4 = 8000 counts. Y: 4 x 4 pixels of 30", 32 channels of
    10 eV, t = 5e4 s, A = 150 cm2, no PSF: each Y voxel sums 3 x 3 fused pixels -> 2.5e-4 * 5e4 * 150 * 9
    = 16875 counts.
    """
    x = xfusion.observation(np.zeros((12, 12, 8)), dims=("x", "y", "energy"), energy_edges=_edges(8, width=0.04),
                            pixel_size=10.0, exposure=2e4, effective_area=400.0, name="X")
    y = xfusion.observation(np.zeros((4, 4, 32)), dims=("x", "y", "energy"), energy_edges=_edges(32),
                            pixel_size=30.0, exposure=5e4, effective_area=150.0, name="Y")
    f = _flux(fusion_grid(x, y), 2.5e-4)
    np.testing.assert_allclose(xfusion.predict(f, x).values, 8000.0, rtol=1e-12)
    np.testing.assert_allclose(xfusion.predict(f, y).values, 16875.0, rtol=1e-12)


def test_photometry_by_hand_with_responses_and_arf():
    """Normalized response kernel and PSF move no flux in the interior of a flat field: interior counts are
    still f x t x A(E) x voxels; A(E) = 100 + 200 (E - 1 keV) cm2 given on a coarse ARF grid (exact for a
    linear interpolation), so X channel c (fused bins 4c..4c+3) gets f t sum_k A(E_k)."""
    et = np.linspace(0.9, 1.5, 13)
    arf = xr.DataArray(100 + 200 * (0.5 * (et[1:] + et[:-1]) - 1.0), dims="energy_true", attrs={"units": "cm2"},
                       coords={"energy_true": 0.5 * (et[1:] + et[:-1]), "energy_true_lo": ("energy_true", et[:-1]),
                               "energy_true_hi": ("energy_true", et[1:])})
    k1 = np.array([0.25, 0.5, 0.25])
    psf = np.outer(k1, k1)
    x = xfusion.observation(np.zeros((12, 12, 8)), dims=("x", "y", "energy"), energy_edges=_edges(8, width=0.04),
                            pixel_size=10.0, exposure=2e4, effective_area=arf, response=k1, response_spacing=0.01,
                            name="X")
    y = xfusion.observation(np.zeros((4, 4, 32)), dims=("x", "y", "energy"), energy_edges=_edges(32),
                            pixel_size=30.0, exposure=5e4, effective_area=arf, psf=psf, psf_pixel_size=10.0, name="Y")
    grid = fusion_grid(x, y)
    f = _flux(grid, 2.5e-4)
    e = grid.energy.values
    area = 100 + 200 * (e - 1.0)
    # X: channels 1..6 are away from the band edges (the kernel spreads by one 10 eV bin)
    px = xfusion.predict(f, x).values
    by_hand = np.array([2.5e-4 * 2e4 * area[4 * c:4 * c + 4].sum() for c in range(8)])
    np.testing.assert_allclose(px[:, :, 1:7], np.broadcast_to(by_hand[1:7], (12, 12, 6)), rtol=1e-12)
    # (interior: each channel loses 0.25 A of its edge bins to its neighbours and gains 0.25 A of theirs;
    # with A linear the two cancel.) Channel 0 loses 0.25 A_0 out of the band, 0.25 A_3 to channel 1 and
    # gains 0.25 A_4 from it.
    ft = 2.5e-4 * 2e4
    np.testing.assert_allclose(px[0, 0, 0], by_hand[0] - 0.25 * ft * (area[0] + area[3] - area[4]), rtol=1e-12)
    # Y: interior coarse pixels (1..2) collect all their flux; per channel f t A(E_k) * 9
    py = xfusion.predict(f, y).values
    np.testing.assert_allclose(py[1:3, 1:3], np.broadcast_to(2.5e-4 * 5e4 * area * 9, (2, 2, 32)), rtol=1e-12)
    # an edge coarse pixel loses one row of fine pixels' spill: 9 - 3 * 0.25 = 8.25 fine-pixel equivalents
    np.testing.assert_allclose(py[0, 1], 2.5e-4 * 5e4 * area * 8.25, rtol=1e-12)


def _vignetted(obs, fine_px, factor=1, lo=0.7):
    """obs with an ARF varying linearly with x from lo to 1 times its flat value."""
    nx, ny = obs.sizes["x"], obs.sizes["y"]
    et = np.linspace(0.4, 1.5, 111)
    val = float(obs.effective_area)
    a = val * np.linspace(lo, 1.0, nx)[:, None, None] * np.ones((nx, ny, et.size - 1)) * (
        1 + 0.3 * (0.5 * (et[1:] + et[:-1]) - 1.0))
    vig = xr.DataArray(a, dims=("x", "y", "energy_true"), attrs={"units": "cm2"},
                       coords={"energy_true": 0.5 * (et[1:] + et[:-1]), "energy_true_lo": ("energy_true", et[:-1]),
                               "energy_true_hi": ("energy_true", et[1:])})
    return obs.drop_vars("effective_area").assign(effective_area=vig)


def test_vignetting_matches_independent_simulator(small_toy):
    x, y, t = small_toy
    xv, yv = _vignetted(x, 10.0), _vignetted(y, 10.0, lo=0.5)
    f = flux_of(t)
    ex, ey = sim.simulate(f, xv, yv)
    assert_close(xfusion.predict(f, xv).values, ex)
    assert_close(xfusion.predict(f, yv).values, ey)
    # and vignetting matters: the unvignetted model differs by up to the vignetting factor
    assert np.abs(xfusion.predict(f, x).values - ex).max() > 0.1 * ex.max()


def _gauss(sigma, half=6, sx=1.0):
    r = np.arange(-half, half + 1)
    g = np.exp(-0.5 * ((r[:, None] / sx) ** 2 + r[None, :] ** 2) / sigma ** 2)
    return g / g.sum()


def test_energy_dependent_psf_matches_independent_simulator(small_toy):
    x, y, t = small_toy
    c = np.arange(-6, 7) * 10.0
    psf = xr.DataArray(np.stack([_gauss(1.5), _gauss(2.5, sx=1.5), _gauss(3.5)]), dims=("psf_energy", "psf_x", "psf_y"),
                       coords={"psf_energy": ("psf_energy", [0.6, 0.9, 1.3], {"units": "keV"}),
                               "psf_x": ("psf_x", c, {"units": "arcsec"}), "psf_y": ("psf_y", c, {"units": "arcsec"})})
    ye = y.drop_vars(["psf", "psf_x", "psf_y"]).assign(psf=psf)
    f = flux_of(t)
    _, ey = sim.simulate(f, x, ye)
    assert_close(xfusion.predict(f, ye).values, ey)


def test_fusion_of_independently_simulated_data_beats_baselines():
    """Quality without inverse crime: data drawn from the independent simulator (not build_model)."""
    x, y, t = toy.make("small", seed=2)
    xc, yc = sim.simulate(flux_of(t), x, y, rng=np.random.default_rng(7))
    x = x.assign(counts=x.counts.copy(data=xc))
    y = y.assign(counts=y.counts.copy(data=yc))
    r = xfusion.fuse(x, y, progress=False, max_iter=20, k=1.0, n_scales_1d=5, null_space="zero")
    m = metrics.report(r, t)
    for f in (baselines.upsample_spatial, baselines.upsample_spectral):
        b = metrics.report(f(x, y), t, ratio=3)
        assert m["nmse_db"] > b["nmse_db"] + 3.0
    # the result's predicted counts are those of its flux through the independent model (units of the result)
    ex, ey = sim.simulate(r.flux.astype(np.float64), x, y)
    assert_close(r.model_spatial.values, ex, rtol=1e-5)
    assert_close(r.model_spectral.values, ey, rtol=1e-5)
    # and the fit explains the data's total counts within a few percent (regularized, not exact)
    assert abs(ex.sum() / xc.sum() - 1) < 0.05 and abs(ey.sum() / yc.sum() - 1) < 0.05
