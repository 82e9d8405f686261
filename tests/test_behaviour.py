"""Behaviour that had no test (issue 19): ARF interpolation, PSF resampling and asymmetric PSFs in a fusion,
Dask vs NumPy for the low-rank family, masks through the public API, read_psf_stack into an observation,
the randomized PCA, and the exact automatic k / scales rule."""
import importlib
import json

import dask.array
import numpy as np
import pytest
import xarray as xr
from threadpoolctl import threadpool_info, threadpool_limits

import xfusion
from xfusion import metrics, toy
from xfusion.grid import SPATIAL, SPECTRAL, fusion_grid
from xfusion.operators import build_model

fuse_mod = importlib.import_module("xfusion.fuse")  # the module (xfusion.fuse is the function)
#: fixed wavelet settings where a test is not about the automatic (thinning-tuned) defaults
WAVE = dict(k=1.0, n_scales_1d=5, null_space="zero")

import simulator as sim


def _arf(et, values):
    c = 0.5 * (et[1:] + et[:-1])
    return xr.DataArray(values, dims="energy_true", attrs={"units": "cm2"},
                        coords={"energy_true": c, "energy_true_lo": ("energy_true", et[:-1]),
                                "energy_true_hi": ("energy_true", et[1:])})


def _with(obs, **variables):
    return obs.drop_vars([k for k in variables if k in obs]).assign(**variables)


# ----------------------------------------------------------------------------- effective area
def test_area_interpolated_from_an_arf_grid(small_toy):
    """A coarse ARF (50 eV true-energy bins) is interpolated linearly at the fused bin centres (3.75 eV)."""
    x, y, _ = small_toy
    et = np.arange(0.40, 1.5001, 0.05)
    c = 0.5 * (et[1:] + et[:-1])
    vals = 300 + 400 * np.sin(3 * c) ** 2  # not linear: the interpolation rule matters
    xa = _with(x, effective_area=_arf(et, vals)).drop_vars(["energy_true", "energy_true_lo", "energy_true_hi"],
                                                           errors="ignore").assign_coords(
        _arf(et, vals).coords)
    g = fusion_grid(xa, y)
    m = build_model(g, xa, SPATIAL)
    e = g.energy.values
    t = float(x.exposure)
    # by hand for a few bins: bracketing ARF centres and the linear weight
    for k in (0, 37, 120, 239):
        j = int(np.searchsorted(c, e[k]) - 1)
        w = (e[k] - c[j]) / (c[j + 1] - c[j])
        assert m.weights[k] == pytest.approx(t * ((1 - w) * vals[j] + w * vals[j + 1]), rel=1e-12)
    # an ARF that does not cover the fused band is refused with the fix in the message
    short = _arf(et[et < 1.2], vals[: (et < 1.2).sum() - 1])
    xs = _with(x, effective_area=short).drop_vars(["energy_true", "energy_true_lo", "energy_true_hi"],
                                                  errors="ignore").assign_coords(short.coords)
    with pytest.raises(ValueError, match="otherwise pass an ARF and RMF that cover the fused band"):
        build_model(fusion_grid(xs, y), xs, SPATIAL)


def test_arf_must_cover_the_fused_bins_edges():
    """The ARF coverage check uses the fused bins' edges, as the per-pixel ARFs' (session 29: it used their centres,
    so an ARF starting at 0.56 keV inside a 0.50-0.65 keV first bin was accepted and its end value held over 40% of
    the bin); an ARF ending on the last edge up to float32 rounding is accepted."""
    fe = np.linspace(0.5, 1.1, 5)

    def obs(et):
        return xfusion.observation(np.zeros((4, 4, 4)), dims=("x", "y", "energy"), energy_edges=fe, pixel_size=2.0,
                                   exposure=1.0, effective_area=_arf(et, np.linspace(100, 200, et.size - 1)))

    flux = xr.DataArray(np.ones((4, 4, 4)), dims=("x", "y", "energy"), coords={
        "x": ("x", (np.arange(4.0) - 1.5) * 2, {"units": "arcsec", "pixel_size": 2.0}),
        "y": ("y", (np.arange(4.0) - 1.5) * 2, {"units": "arcsec", "pixel_size": 2.0}),
        "energy": ("energy", 0.5 * (fe[1:] + fe[:-1]), {"units": "keV"}),
        "energy_lo": ("energy", fe[:-1], {"units": "keV"}), "energy_hi": ("energy", fe[1:], {"units": "keV"})})
    with pytest.raises(ValueError, match="covers 0.56-1.2 keV but the fused grid needs 0.5-1.1 keV"):
        xfusion.predict(flux, obs(np.linspace(0.56, 1.2, 9)), role="spatial")
    with pytest.raises(ValueError, match="covers 0.4-1.05 keV"):
        xfusion.predict(flux, obs(np.linspace(0.4, 1.05, 9)), role="spatial")
    et = np.linspace(0.5, 1.1, 9).astype(np.float32).astype(np.float64)
    et[0], et[-1] = np.nextafter(np.float32(0.5), 1), np.nextafter(np.float32(1.1), 0)
    assert np.all(xfusion.predict(flux, obs(et), role="spatial").values > 0)


# ----------------------------------------------------------------------------- PSF resampling
def _gauss_stamp(half, pixel, sx, sy, offset=(0.0, 0.0)):
    """PSF stamp at ``pixel`` arcsec: a 2D Gaussian integrated exactly over each pixel (erf)."""
    from scipy.special import erf

    e = (np.arange(-half, half + 2) - 0.5) * pixel

    def cdf(u, s, o):
        return 0.5 * (1 + erf((u - o) / (np.sqrt(2) * s)))

    px = np.diff(cdf(e, sx, offset[0]))
    py = np.diff(cdf(e, sy, offset[1]))
    k = np.outer(px, py)
    return k / k.sum()


def _psf_da(k, pixel):
    c = (np.arange(k.shape[0]) - k.shape[0] // 2) * pixel
    d = (np.arange(k.shape[1]) - k.shape[1] // 2) * pixel
    return xr.DataArray(k, dims=("psf_x", "psf_y"), coords={"psf_x": ("psf_x", c, {"units": "arcsec"}),
                                                             "psf_y": ("psf_y", d, {"units": "arcsec"})})


def _bin_5_to_10(k5):
    """Flux-conserving 5" -> 10" resampling by hand: the 10" pixel j covers input pixel 2j fully and half of
    2j +- 1 (per axis)."""
    n5 = k5.shape[0]
    h5 = n5 // 2
    H = int(np.ceil((5 * h5 + 2.5 - 5) / 10))  # smallest half-size covering the input
    W = np.zeros((2 * H + 1, n5))
    for j in range(-H, H + 1):
        for i, f in ((2 * j - 1, 0.5), (2 * j, 1.0), (2 * j + 1, 0.5)):
            if -h5 <= i <= h5:
                W[j + H, i + h5] += f
    return W @ k5 @ W.T


def test_psf_resampled_in_a_fusion(small_toy):
    """A Y PSF sampled at 5" (fused pixels are 10") is resampled flux-conservingly: the model and the fusion
    equal those with the PSF resampled by hand."""
    x, y, t = small_toy
    k5 = _gauss_stamp(14, 5.0, 22.0, 14.0)  # elongated: a transposed resampling would show
    k10 = _bin_5_to_10(k5)
    assert k10.sum() == pytest.approx(1.0, abs=1e-12)
    y5 = _with(y.drop_vars(["psf_x", "psf_y"]), psf=_psf_da(k5, 5.0))
    y10 = _with(y.drop_vars(["psf_x", "psf_y"]), psf=_psf_da(k10, 10.0))
    f = t.astype(np.float64)
    _, ey = sim.simulate(f, x, y10)
    np.testing.assert_allclose(xfusion.predict(f, y5).values, ey, rtol=1e-9)
    r5 = xfusion.fuse(x, y5, regularization="none", max_iter=4, tol=None, progress=False, dtype="float64")
    r10 = xfusion.fuse(x, y10, regularization="none", max_iter=4, tol=None, progress=False, dtype="float64")
    np.testing.assert_allclose(r5.flux.values, r10.flux.values, rtol=1e-6, atol=1e-6 * float(r10.flux.max()))


# ----------------------------------------------------------------------------- asymmetric PSF
def test_asymmetric_psf_orientation_in_the_model(small_toy):
    """A PSF that moves every photon one fused pixel towards +x: a point source in the last fused pixel of
    coarse pixel (0, 0) shows up in coarse pixel (1, 0) -- not (0, 1) (swapped axes) and not (0, 0) (flip)."""
    x, y, t = small_toy
    k = np.zeros((3, 3))
    k[2, 1] = 1.0  # psf_x offset +10", psf_y offset 0
    ya = _with(y.drop_vars(["psf_x", "psf_y"]), psf=_psf_da(k, 10.0))
    f = xr.zeros_like(t, dtype=np.float64)
    f[2, 1, 100] = 1.0
    counts = xfusion.predict(f, ya).values
    hit = np.argwhere(counts > 0)
    assert hit.tolist() == [[1, 0, 100]]
    assert counts[1, 0, 100] == pytest.approx(float(y.exposure) * 250.0, rel=1e-12)


def test_asymmetric_psf_end_to_end(small_toy):
    """Data simulated (independent simulator) with an elongated, off-centre PSF: the fusion that uses that
    PSF beats the one given its transpose (x <-> y swapped) by a clear NMSE margin."""
    x, y, t = small_toy
    k = _gauss_stamp(7, 10.0, 25.0, 6.0, offset=(8.0, 0.0))
    ya = _with(y.drop_vars(["psf_x", "psf_y"]), psf=_psf_da(k, 10.0))
    yt = _with(y.drop_vars(["psf_x", "psf_y"]), psf=_psf_da(k.T.copy(), 10.0))
    xc, yc = sim.simulate(t.astype(np.float64), x, ya, rng=np.random.default_rng(4))
    xs = x.assign(counts=x.counts.copy(data=xc))
    ya, yt = ya.assign(counts=ya.counts.copy(data=yc)), yt.assign(counts=yt.counts.copy(data=yc))
    right = metrics.nmse(t, xfusion.fuse(xs, ya, progress=False, max_iter=10, **WAVE).flux)
    wrong = metrics.nmse(t, xfusion.fuse(xs, yt, progress=False, max_iter=10, **WAVE).flux)
    assert right > wrong + 1.0, (right, wrong)


# ----------------------------------------------------------------------------- Dask vs NumPy
@pytest.mark.parametrize("reg", ["lowrank", "lowrank_wavelet2d"])
def test_dask_and_numpy_agree_for_the_low_rank_family(small_toy, reg):
    """Dask-backed counts (uneven chunks) and in-memory counts give the same fused cube (BLAS at one thread
    in both, as fuse() does on Dask: FISTA amplifies 1-ulp BLAS differences)."""
    x, y, t = small_toy
    xd = x.assign(counts=x.counts.chunk({"x": 6, "y": 9, "energy": -1}))
    yd = y.assign(counts=y.counts.chunk({"x": 2, "y": 3, "energy": -1}))
    kw = dict(regularization=reg, progress=False, max_iter=25, tol=None, chunks=(6, 9), rank=10)
    lazy = xfusion.fuse(xd, yd, **kw)
    assert lazy.attrs["backend"] == "dask"
    with threadpool_limits(limits=1, user_api="blas"):
        ref = xfusion.fuse(x, y, **{k: v for k, v in kw.items() if k != "chunks"})
    a, b = lazy.flux.values, ref.flux.values
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-4 * float(np.abs(b).max()))
    np.testing.assert_allclose(lazy.objective.values, ref.objective.values, rtol=1e-5)


def _blas_threads():
    return [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]


def test_fuse_runs_one_blas_thread_and_restores_the_callers(small_toy):
    """fuse fits with BLAS_THREADS BLAS threads (measured faster here, far faster under load) and gives the
    caller's setting back, also when the fit raises."""
    x, y, _ = small_toy
    seen = []
    with threadpool_limits(limits=2, user_api="blas"):
        before = _blas_threads()
        xfusion.fuse(x, y, regularization="none", max_iter=2, tol=None, progress=False,
                     callback=lambda it, state: seen.append(_blas_threads()))
        assert _blas_threads() == before
        with pytest.raises(ValueError):
            xfusion.fuse(x, y, regularization="none", max_iter=-1, progress=False)
        assert _blas_threads() == before
    assert seen and all(n == [1] * len(n) for n in seen)



def test_blas_libraries_are_found_once_and_again_after_new_imports(small_toy, monkeypatch):
    """fuse and tune limit BLAS through one cached threadpoolctl controller (finding the libraries scans every
    shared library of the process: ~4 ms a call, session 67); it is made again once more modules were imported (a
    new one may bring another BLAS), and a fit inside a fit (tune inside fuse) uses the outer one's limits."""
    import sys
    import types

    from xfusion.solvers import backend

    x, y, _ = small_toy
    kw = dict(regularization="none", max_iter=2, tol=None, progress=False)
    xfusion.fuse(x, y, **kw)
    first = backend._blas_controller()
    made = []
    orig = backend.ThreadpoolController

    def counted():
        made.append(1)
        return orig()

    monkeypatch.setattr(backend, "ThreadpoolController", counted)
    xfusion.fuse(x, y, **kw)
    assert not made and backend._blas_controller() is first  # no new scan: nothing was imported
    monkeypatch.setitem(sys.modules, "xfusion_test_new_module", types.ModuleType("xfusion_test_new_module"))
    seen = []
    xfusion.fuse(x, y, callback=lambda it, st: seen.append(_blas_threads()), **kw)
    assert made == [1] and backend._blas_controller() is not first  # scanned again after the import
    assert seen and all(n == [1] * len(n) for n in seen)
    # the kept controller reads the caller's setting at each call (3 threads here, set after it was made)
    with threadpool_limits(limits=3, user_api="blas"):
        xfusion.fuse(x, y, **kw)
        assert made == [1] and _blas_threads() == [3] * len(_blas_threads())

# ----------------------------------------------------------------------------- masks in fuse
def test_masks_through_the_public_api(small_toy):
    """Masked voxels leave the problem: garbage counts under the mask change nothing; without the mask the
    same garbage changes the result."""
    x, y, t = small_toy
    r = np.random.default_rng(5)
    my = r.random(y.counts.shape) > 0.1
    mx = r.random(x.counts.shape) > 0.05
    edges_x = np.append(x.energy_lo.values, x.energy_hi.values[-1])
    edges_y = np.append(y.energy_lo.values, y.energy_hi.values[-1])

    def obs(src, counts, mask, edges, **kw):
        return xfusion.observation(counts, dims=("x", "y", "energy"), energy_edges=edges,
                                   pixel_size=float(src.x.attrs["pixel_size"]), exposure=float(src.exposure),
                                   effective_area=float(src.effective_area), mask=mask, name=src.attrs["name"], **kw)

    xkw = dict(response=x.response.values, response_spacing=float(x.energy_offset.attrs["spacing"]))
    ykw = dict(psf=y.psf.values, psf_pixel_size=10.0)
    gx, gy = x.counts.values.copy(), y.counts.values.copy()
    gx[~mx] = 5000.0
    gy[~my] = 7000.0
    run = dict(progress=False, max_iter=5, tol=None, **WAVE)
    clean = xfusion.fuse(obs(x, x.counts.values, mx, edges_x, **xkw), obs(y, y.counts.values, my, edges_y, **ykw),
                         **run)
    dirty = xfusion.fuse(obs(x, gx, mx, edges_x, **xkw), obs(y, gy, my, edges_y, **ykw), **run)
    np.testing.assert_array_equal(dirty.flux.values, clean.flux.values)  # bitwise since session 31
    with pytest.warns(RuntimeWarning, match="does not reproduce every input's total counts"):  # the garbage
        unmasked = xfusion.fuse(obs(x, gx, None, edges_x, **xkw), obs(y, gy, None, edges_y, **ykw), **run)
    assert metrics.nmse(t, unmasked.flux) < metrics.nmse(t, clean.flux) - 5.0
    # masking 10% of Y costs little against the unmasked fit of the clean data
    full = xfusion.fuse(x, y, **run)
    assert metrics.nmse(t, clean.flux) > metrics.nmse(t, full.flux) - 1.5


def test_masked_counts_do_not_enter_the_start_or_the_statistics(small_toy):
    """Masked counts change nothing, to the bit: not the start level (session 31: it summed them), nor the counts
    rule of the Dask fallback for k / n_scales_1d "auto" (xfusion.registry.wavelet2d1d.auto_wavelet_params)."""
    from xfusion.registry.wavelet2d1d import auto_wavelet_params

    x, y, _ = small_toy
    my = np.random.default_rng(5).random(y.counts.shape) > 0.1
    mx = np.random.default_rng(6).random(x.counts.shape) > 0.05
    gx, gy = x.counts.values.copy(), y.counts.values.copy()
    gx[~mx] = 5000.0
    gy[~my] = 7000.0
    xa, ya = x.assign(mask=(x.counts.dims, mx)), y.assign(mask=(y.counts.dims, my))
    xb, yb = xa.assign(counts=x.counts.copy(data=gx)), ya.assign(counts=y.counts.copy(data=gy))
    run = dict(progress=False, max_iter=3, tol=None, **WAVE)
    a, b = xfusion.fuse(xa, ya, **run), xfusion.fuse(xb, yb, **run)
    np.testing.assert_array_equal(a.flux.values, b.flux.values)
    for counts in (y.counts.values, gy):  # counts per used Y voxel, on NumPy and Dask
        for lazy in (False, True):
            c, m = (dask.array.from_array(counts, chunks=5), dask.array.from_array(my, chunks=5)) if lazy else (counts, my)
            params = {"k": "auto", "n_scales_1d": "auto"}
            auto_wavelet_params(params, c, None, mask=m)
            assert params["auto_counts_per_voxel"] == pytest.approx(float(y.counts.values[my].sum()) / my.sum(), rel=1e-9)


# ----------------------------------------------------------------------------- read_psf_stack -> observation
def test_read_psf_stack_into_observation(small_toy, tmp_path):
    """PSF images on disk (FITS, 10" pixels) -> read_psf_stack -> observation(psf=...) -> the same model as
    the in-memory energy-dependent stack."""
    from astropy.io import fits

    from xfusion.io.psf import read_psf_stack

    x, y, t = small_toy
    stamps = [_gauss_stamp(6, 10.0, s, s) for s in (12.0, 20.0, 30.0)]
    paths = []
    for i, k in enumerate(stamps):
        h = fits.PrimaryHDU(k.T)  # FITS rows are y, columns x
        h.header["CTYPE1"], h.header["CTYPE2"] = "RA---TAN", "DEC--TAN"
        h.header["CRPIX1"], h.header["CRPIX2"] = 7.0, 7.0
        h.header["CRVAL1"], h.header["CRVAL2"] = 150.0, 2.0
        h.header["CDELT1"], h.header["CDELT2"] = -10.0 / 3600, 10.0 / 3600
        p = tmp_path / f"psf_{i}.fits"
        h.writeto(p)
        paths.append(p)
    stack = read_psf_stack(paths, [0.6, 0.9, 1.3])
    edges = np.append(y.energy_lo.values, y.energy_hi.values[-1])
    y_file = xfusion.observation(y.counts.values, dims=("x", "y", "energy"), energy_edges=edges, pixel_size=30.0,
                                 exposure=float(y.exposure), effective_area=250.0, psf=stack)
    c = (np.arange(13) - 6) * 10.0
    ref = xr.DataArray(np.stack(stamps), dims=("psf_energy", "psf_x", "psf_y"),
                       coords={"psf_energy": ("psf_energy", [0.6, 0.9, 1.3], {"units": "keV"}),
                               "psf_x": ("psf_x", c, {"units": "arcsec"}), "psf_y": ("psf_y", c, {"units": "arcsec"})})
    y_mem = _with(y_file.drop_vars(["psf_x", "psf_y", "psf_energy"], errors="ignore"), psf=ref)
    f = t.astype(np.float64)
    np.testing.assert_allclose(xfusion.predict(f, y_file).values, xfusion.predict(f, y_mem).values, rtol=1e-9)


# ----------------------------------------------------------------------------- randomized PCA
def test_randomized_pca_matches_exact_pca():
    """pca_basis_randomized spans the same subspace as pca_basis on spectra of rank 4 + noise (principal
    angles ~0) and returns the same mean vector."""
    da = pytest.importorskip("dask.array")
    from xfusion.regularizers.lowrank import pca_basis, pca_basis_randomized

    r = np.random.default_rng(6)
    L, n = 200, 240
    comps = np.stack([np.exp(-0.5 * ((np.arange(L) - c) / w) ** 2) for c, w in ((40, 15), (100, 6), (150, 20))])
    amps = np.abs(r.standard_normal((n, 3))) * [5.0, 3.0, 2.0] + 1.0
    spectra = amps @ comps + 2.0 + 0.01 * r.standard_normal((n, L))
    exact = pca_basis(spectra, rank=4)
    rand = pca_basis_randomized(da.from_array(spectra, chunks=(67, L)), rank=4)
    assert rand.shape == exact.shape == (4, L)
    np.testing.assert_allclose(rand @ rand.T, np.eye(4), atol=1e-10)
    np.testing.assert_allclose(rand[0], exact[0], atol=1e-8)  # the normalized mean spectrum
    s = np.linalg.svd(rand @ exact.T, compute_uv=False)
    assert s.min() > 1 - 1e-6
    # and both beat a random 4-dimensional subspace by far in reconstruction error
    centred = spectra - spectra.mean(0)
    err = lambda v: np.linalg.norm(centred - centred @ v.T @ v) / np.linalg.norm(centred)  # noqa: E731
    q = np.linalg.qr(r.standard_normal((L, 4)))[0].T
    assert err(rand) < 0.01 < err(q)


# ----------------------------------------------------------------------------- the automatic k / scales rule
@pytest.mark.parametrize("per_voxel,k,n1", [(4.6, 1.0, 5), (14.999, 1.0, 5), (15.0, 0.5, 2), (56.0, 0.5, 2)])
def test_auto_wavelet_rule_exact(per_voxel, k, n1):
    """k='auto', n_scales_1d='auto': dim data (< 15 counts per Y voxel) -> k=1, 5 energy scales;
    bright -> k=0.5, 2 scales. Explicit values are never overridden."""
    yd = np.full((4, 5, 10), per_voxel)
    p = {"k": "auto", "n_scales_1d": "auto"}
    fuse_mod._auto_wavelet_params(p, yd, None)
    assert (p["k"], p["n_scales_1d"]) == (k, n1)
    assert p["auto_counts_per_voxel"] == pytest.approx(per_voxel, rel=1e-12)
    q = {"k": 2.0, "n_scales_1d": "auto"}
    fuse_mod._auto_wavelet_params(q, yd, None)
    assert q["k"] == 2.0 and q["n_scales_1d"] == n1


@pytest.mark.parametrize("y_counts,k,n1", [(4e5, 0.5, 2), (2e4, 1.0, 5)])
def test_auto_rule_recorded_by_fuse(y_counts, k, n1, monkeypatch):
    """Through fuse on Dask-backed data too large to tune in memory (here: a limit of 0 bytes; the counts rule then
    sets k and the scales, elsewhere they are tuned by thinning): the small toy's Y has 66.7 counts per voxel
    (bright); with 2e4 counts 3.3 (dim)."""
    from xfusion import tuning

    monkeypatch.setattr(tuning, "IN_MEMORY_BYTES", 0)
    x, y, _ = toy.make("small", y={"counts": y_counts})
    y = y.assign(counts=y.counts.chunk({"x": 5, "y": 5, "energy": -1}))
    with pytest.warns(UserWarning, match="not tuned"):  # the fallback is announced
        r = xfusion.fuse(x, y, progress=False, max_iter=1, null_space="zero")
    p = json.loads(r.attrs["parameters"])
    assert (p["k"], p["n_scales_1d"]) == (k, n1)
    assert p["auto_counts_per_voxel"] == pytest.approx(float(y.counts.sum()) / y.counts.size, rel=1e-9)


def test_thread_pools_are_never_replaced_under_a_submitting_thread():
    """Asking for a pool of another size must not shut down the pool another thread is submitting to (it used to:
    its next submit raised RuntimeError 'cannot schedule new futures after shutdown')."""
    import threading

    from xfusion import threads

    p2 = threads.pool(2)
    assert threads.pool(1) is not p2 and threads.pool(2) is p2
    assert p2.submit(lambda: 41 + 1).result() == 42
    errors = []

    def hammer(n):
        try:
            for _ in range(50):
                assert threads.pool(n).submit(lambda: n).result() == n
        except Exception as e:  # noqa: BLE001 - any failure is the bug
            errors.append(e)
    workers = [threading.Thread(target=hammer, args=(n,)) for n in (1, 2, 3, 2)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    assert errors == []
