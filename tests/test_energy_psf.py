"""PSFs that vary with energy: interpolated band stacks in the Y model, full cube and subspace."""
import numpy as np
import pytest
import xarray as xr

import xfusion
from xfusion import toy
from xfusion.grid import SPECTRAL, fusion_grid
from xfusion.operators import build_model
from xfusion.operators.dottest import dottest
from xfusion.operators.psf import EnergyDependentSpatial, band_weights


def stack(psfs, energies, pixel):
    n = psfs[0].shape[0]
    c = (np.arange(n) - n // 2) * pixel
    return xr.DataArray(np.stack(psfs), dims=("psf_energy", "psf_x", "psf_y"),
                        coords={"psf_energy": ("psf_energy", np.asarray(energies, float), {"units": "keV"}),
                                "psf_x": ("psf_x", c, {"units": "arcsec"}), "psf_y": ("psf_y", c, {"units": "arcsec"})})


def with_psf(y_obs, psf):
    return y_obs.drop_vars(["psf", "psf_x", "psf_y"]).assign(psf=psf)


def gauss(sigma, half=12):
    r = np.arange(-half, half + 1)
    g = np.exp(-0.5 * (r[:, None] ** 2 + r[None, :] ** 2) / sigma ** 2)
    return g / g.sum()


@pytest.fixture(scope="module")
def pair():
    x, y, t = toy.make("small")
    psf = stack([gauss(2.0), gauss(3.0), gauss(4.0)], [0.6, 0.9, 1.3], 10.0)
    ye = xfusion.observation(y.counts, energy_edges=np.append(y.energy_lo.values, y.energy_hi.values[-1]),
                             pixel_size=30.0, exposure=float(y.exposure), effective_area=float(y.effective_area),
                             psf=psf, name="Y energy-dependent PSF")
    return x, ye, t


def test_weights_interpolate_and_sum_to_one():
    w = band_weights([1.0, 2.0, 4.0], np.array([0.5, 1.0, 1.5, 2.0, 3.0, 5.0]))
    np.testing.assert_allclose(w.sum(axis=0), 1.0)
    np.testing.assert_allclose(w[:, 2], [0.5, 0.5, 0.0])
    np.testing.assert_allclose(w[:, 4], [0.0, 0.5, 0.5])
    np.testing.assert_allclose(w[:, 0], [1, 0, 0])


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-10), (np.float32, 1e-4)])
def test_model_dot_product(pair, dtype, tol):
    x, ye, t = pair
    m = build_model(fusion_grid(x, ye), ye, SPECTRAL)
    assert isinstance(m.spatial, EnergyDependentSpatial)
    assert dottest(m, t.shape, dtype) <= tol


def test_identical_bands_equal_the_stationary_model(small_toy):
    x, y, t = small_toy
    k = y.psf.values
    ye = with_psf(y, stack([k, k], [0.7, 1.2], 10.0))
    z = t.values.astype(np.float64)
    a = build_model(fusion_grid(x, y), y, SPECTRAL).forward(z)
    b = build_model(fusion_grid(x, ye), ye, SPECTRAL).forward(z)
    np.testing.assert_allclose(b, a, rtol=1e-10, atol=1e-20)


def test_channel_uses_interpolated_psf(pair):
    """At a fused channel between two bands the model equals the stationary model with the interpolated PSF."""
    x, ye, t = pair
    g = fusion_grid(x, ye)
    m = build_model(g, ye, SPECTRAL)
    k = 120
    e = float(g.energy[k])
    a = np.interp(e, [0.6, 0.9, 1.3], [0, 1, 0]), np.interp(e, [0.6, 0.9, 1.3], [0, 0, 1])
    psf_k = a[0] * gauss(3.0) + a[1] * gauss(4.0) if e > 0.9 else None
    z = t.values.astype(np.float64)
    if psf_k is None:
        w0 = np.interp(e, [0.6, 0.9], [1, 0])
        psf_k = w0 * gauss(2.0) + (1 - w0) * gauss(3.0)
    from xfusion.operators import SpatialMatrix

    ref = SpatialMatrix.from_psf(psf_k, (15, 15), 3).forward(z[:, :, k:k + 1] * m.weights[k])
    np.testing.assert_allclose(m.forward(z)[:, :, k:k + 1], ref, rtol=1e-10)


def test_subspace_reduction_matches_full_model(pair):
    x, ye, t = pair
    m = build_model(fusion_grid(x, ye), ye, SPECTRAL)
    rng = np.random.default_rng(0)
    basis = rng.standard_normal((4, 240))
    w = rng.random((15, 15, 4))
    sp, v = m.reduced(basis)
    np.testing.assert_allclose(sp.forward(w) @ v, m.forward(w @ basis), rtol=1e-9, atol=1e-12)
    g = rng.random((5, 5, v.shape[0]))
    assert sp.adjoint(g).shape == (15, 15, 4)


@pytest.mark.parametrize("reg", ["wavelet2d1d", "lowrank_sobolev"])
def test_fuse_with_energy_dependent_psf(pair, reg):
    x, ye, t = pair
    r = xfusion.fuse(x, ye, regularization=reg, progress=False, max_iter=10)
    assert np.isfinite(r.objective.values).all()
    np.testing.assert_allclose(xfusion.predict(r.flux, ye).values.sum(), r.model_spectral.values.sum(), rtol=1e-3)
