"""Gaussian data term: gradient vs finite differences (full cube and subspace), variance weighting, masks,
mixed with a Poisson term, EM refused, bad variances refused, inputs never mutated."""
import numpy as np
import pytest

from xfusion.gaussian import EM_REFUSED, GaussianTerm
from xfusion.jwst import filter_response, ifu_model, ifu_psf_stack, imager_model
from xfusion.likelihood import PoissonLikelihood, PoissonTerm
from xfusion.solvers.subspace import SubspaceFISTA

SHAPE = (12, 12, 24)
EDGES = np.linspace(1.66, 2.30, SHAPE[2] + 1)
LAM = 0.5 * (EDGES[1:] + EDGES[:-1])


def _models():
    mx = imager_model(filter_response(["F182M", "F200W", "F210M"], EDGES), SHAPE)
    my = ifu_model(ifu_psf_stack([1.7, 2.0, 2.3], 0.1 / 3), LAM, SHAPE)
    return mx, my


def _terms(rng, mask=None):
    mx, my = _models()
    z = 5 + rng.random(SHAPE)
    dx, dy = mx.forward(z), my.forward(z)
    vx = 0.01 + 0.05 * rng.random(dx.shape)
    vy = 0.02 + 0.1 * rng.random(dy.shape)
    tx = GaussianTerm(mx, dx + rng.standard_normal(dx.shape) * np.sqrt(vx), vx, mask=mask, dtype=np.float64)
    ty = GaussianTerm(my, dy + rng.standard_normal(dy.shape) * np.sqrt(vy), vy, gamma=0.7, dtype=np.float64)
    return z, tx, ty


def test_gradient_matches_finite_differences():
    rng = np.random.default_rng(0)
    mask = rng.random((12, 12, 3)) > 0.2
    z, tx, ty = _terms(rng, mask)
    lik = PoissonLikelihood([tx, ty])  # generic sum of terms: value/residual_factor/model
    z0 = z * (0.9 + 0.2 * rng.random(z.shape))
    f0, g = lik.value_and_grad(z0)
    for _ in range(4):
        d = rng.standard_normal(z.shape)
        h = 1e-4
        fd = (lik.value(z0 + h * d) - lik.value(z0 - h * d)) / (2 * h)
        assert fd == pytest.approx(np.sum(g * d), rel=1e-6)
    # the value is exactly (gamma/2) sum w (d - m)^2 / var
    m = ty.model.forward(z0)
    assert ty.value_from_model(m) == pytest.approx(0.35 * np.sum((ty.data - m) ** 2 * ty.precision / 0.7))


def test_subspace_gradient_matches_finite_differences():
    rng = np.random.default_rng(1)
    z, tx, ty = _terms(rng)
    basis = np.linalg.qr(rng.standard_normal((SHAPE[2], 3)))[0].T  # (r, L) orthonormal
    solver = SubspaceFISTA([tx, ty], [tx.model.reduced(basis), ty.model.reduced(basis)])
    w = rng.standard_normal(SHAPE[:2] + (3,))
    f0, g = solver.f_grad(w)
    d = rng.standard_normal(w.shape)
    h = 1e-4
    fd = (solver.f(w + h * d) - solver.f(w - h * d)) / (2 * h)
    assert fd == pytest.approx(np.sum(g * d), rel=1e-6)
    # and it equals the full-cube value of the same cube
    zc = w @ basis
    assert f0 == pytest.approx(tx.value_from_model(tx.model.forward(zc)) + ty.value_from_model(ty.model.forward(zc)))


def test_mixes_with_a_poisson_term_and_em_is_refused():
    rng = np.random.default_rng(2)
    z, tx, _ = _terms(rng)
    mx, my = _models()
    counts = rng.poisson(my.forward(z) * 30.0).astype(float)
    ty = PoissonTerm(my.scaled(1 / 30.0), counts, dtype=np.float64)
    lik = PoissonLikelihood([tx, ty])
    f0, g = lik.value_and_grad(z)
    d = rng.standard_normal(z.shape) * 1e-2
    assert (lik.value(z + d) - lik.value(z - d)) / 2 == pytest.approx(np.sum(g * d), rel=1e-3)
    with pytest.raises(NotImplementedError, match="EM .*Poisson.*method='ista'"):
        tx.ratio(tx.model.forward(z))
    assert "subspace FISTA" in EM_REFUSED


def test_bad_inputs_refused_and_not_mutated():
    mx, _ = _models()
    d = np.ones(mx.data_shape)
    v = np.full(mx.data_shape, 0.1)
    v[0, 0, 0] = 0.0
    with pytest.raises(ValueError, match="variance must be finite and > 0.*Mask them"):
        GaussianTerm(mx, d, v)
    d[1, 1, 1] = np.nan
    with pytest.raises(ValueError, match="non-finite.*mask=False"):
        GaussianTerm(mx, d, 0.1)
    mask = np.isfinite(d)
    mask[0, 0, 0] = False
    d_before, v_before = d.copy(), v.copy()
    t = GaussianTerm(mx, d, v, mask=mask)
    assert np.array_equal(d, d_before, equal_nan=True) and np.array_equal(v, v_before)
    assert t.n_valid == d.size - 2 and np.all(np.isfinite(t.data))
    with pytest.raises(ValueError, match="gamma"):
        GaussianTerm(mx, np.ones(mx.data_shape), 0.1, gamma=0)
    with pytest.raises(ValueError, match="does not match"):
        GaussianTerm(mx, np.ones((3, 3, 3)), 0.1)


def test_reduced_chi_square_is_one_at_the_truth():
    rng = np.random.default_rng(4)
    mx, _ = _models()
    z = 5 + rng.random(SHAPE)
    m = mx.forward(z)
    var = 0.02 + 0.1 * rng.random(m.shape)
    t = GaussianTerm(mx, m + rng.standard_normal(m.shape) * np.sqrt(var), var, gamma=3.0)
    assert t.chi2_reduced(m) == pytest.approx(1.0, abs=0.15)
    # the per-voxel variance matters: a wrong (flat) variance gives a different chi2
    assert GaussianTerm(mx, t.data, 0.5).chi2_reduced(m) < 0.5


def test_data_term_is_chosen_per_instrument(small_toy):
    import xarray as xr

    from xfusion.gaussian import data_term
    from xfusion.jwst import make_toy

    imager, ifu, _ = make_toy(seed=0, size=12, n_channels=24)
    mx, my = _models()
    t = data_term(mx, imager.isel(filter=[0, 2, 3]), dtype=np.float64)
    assert isinstance(t, GaussianTerm) and t.gamma == 1.0
    weighted = ifu.assign_attrs(gamma=0.25)
    assert data_term(my, weighted).gamma == 0.25
    x_obs = small_toy[0]
    assert isinstance(data_term(None, x_obs, data=x_obs["counts"].values), PoissonTerm)
    asked = x_obs.assign_attrs(data_term="gaussian")
    with pytest.raises(ValueError, match="no 'variance' variable"):
        data_term(None, asked)
    with pytest.raises(ValueError, match="data_term must be"):
        data_term(None, x_obs.assign_attrs(data_term="cauchy"))
    assert isinstance(data_term(my, ifu.assign_attrs(data_term="poisson").assign(
        data=xr.ones_like(ifu["data"]))), PoissonTerm)


def test_fuse_takes_gaussian_terms_per_instrument_and_refuses_em(small_toy):
    import xfusion

    x_obs, y_obs, truth = small_toy
    # Gaussian approximation of the X counts (variance = max(counts, 1)); Y stays Poisson
    xg = x_obs.assign(variance=(("x", "y", "energy"), np.maximum(x_obs["counts"].values, 1.0)))
    res = xfusion.fuse(xg, y_obs, regularization="lowrank_sobolev", max_iter=40, progress=False)
    assert np.isfinite(res["flux"].values).all()
    # as good as with the Poisson term (16.97 dB measured) and far above the upsampled Y (4.6 dB)
    assert xfusion.metrics.nmse(truth, res["flux"]) > 15.0
    with pytest.raises(NotImplementedError, match="EM .*Poisson"):
        xfusion.fuse(xg, y_obs, regularization="none", method="em", max_iter=2, progress=False)
    # "auto" settings: Poisson thinning does not apply to a Gaussian term -> the documented fallback, recorded
    from xfusion.tuning import auto_settings

    params = {"rank": "auto", "mu": "auto", "explained": None}
    it, rec = auto_settings(xg, y_obs, "lowrank_sobolev", "fista", params, 50, 1e-4, "float32", False)
    assert "Gaussian data term" in rec["method"] and params["rank"] != "auto" and params["mu"] != "auto"
    # Gaussian data may be negative (background-subtracted; bootstrap or fission draws): accepted, and the
    # start/preconditioner never take a square root of a negative amplitude (no RuntimeWarning, no NaN)
    import warnings

    neg = xg.assign(counts=xg["counts"] - 2.0 * float(xg["counts"].mean()))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        low = xfusion.fuse(neg, y_obs.assign(variance=np.maximum(y_obs["counts"], 1.0)), regularization="lowrank_sobolev",
                           max_iter=5, progress=False)
    assert np.isfinite(low["flux"].values).all() and np.isfinite(low["objective"].values).all()
    # thinning splits Poisson counts: refused for a Gaussian term, not silently wrong (bootstrap draws N(m, var))
    with pytest.raises(NotImplementedError, match="thinning.*Gaussian data term.*bootstrap"):
        xfusion.uncertainty(res, xg, y_obs, n=2, method="thinning")


def test_fission_halves_are_independent_with_the_stated_variances():
    import xarray as xr

    from xfusion.gaussian_fission import fission

    rng = np.random.default_rng(5)
    shape = (40, 50, 100)
    mu = 3.0 + rng.random(shape)
    var = 0.5 + rng.random(shape)
    obs = xr.Dataset({"counts": (("x", "y", "energy"), mu + rng.standard_normal(shape) * np.sqrt(var)),
                      "variance": (("x", "y", "energy"), var)}, attrs={"name": "g"})
    before = obs["counts"].values.copy()
    for tau in (1.0, 0.5):
        fit, test = fission(obs, tau=tau, seed=1)
        a, b = (fit["counts"].values - mu) / np.sqrt(var), (test["counts"].values - mu) / np.sqrt(var)
        # standardized by their stated variances: unit variance, zero mean, uncorrelated (n = 2e5: se ~ 0.003)
        np.testing.assert_allclose(fit["variance"].values, (1 + tau ** 2) * var)
        np.testing.assert_allclose(test["variance"].values, (1 + tau ** -2) * var)
        za, zb = a / np.sqrt(1 + tau ** 2), b / np.sqrt(1 + tau ** -2)
        assert abs(za.var() - 1) < 0.02 and abs(zb.var() - 1) < 0.02 and abs(za.mean()) < 0.01
        assert abs(np.corrcoef(za.ravel(), zb.ravel())[0, 1]) < 0.015
        # the data are recovered exactly from the two parts: X = (X1 + tau^2 X2) / (1 + tau^2)
        np.testing.assert_allclose((fit["counts"].values + tau ** 2 * test["counts"].values) / (1 + tau ** 2), before)
    np.testing.assert_array_equal(obs["counts"].values, before)  # the input is not modified
    with pytest.raises(ValueError, match="no 'variance'.*thin"):
        fission(obs.drop_vars("variance"))


def test_a_number_or_per_channel_variance_is_broadcast():
    """Session 28 (fourth red-team pass): a scalar or per-channel 'variance' variable passed validate, then fuse
    failed in xarray's transpose; GaussianTerm documents 'broadcastable to the data or a number'."""
    import xarray as xr

    import xfusion
    from xfusion.scenes_mosaic import make_small

    obs, _ = make_small(seed=0)
    kw = dict(regularization="lowrank_sobolev", rank=3, mu=0.01, max_iter=3, progress=False)
    full = obs["pn"].assign(variance=(obs["pn"].counts.dims, np.full(obs["pn"].counts.shape, 4.0)))
    ref = xfusion.fuse(full, obs["tile1"], **kw)
    for var in (xr.DataArray(4.0), xr.DataArray(np.full(obs["pn"].sizes["energy"], 4.0), dims="energy")):
        got = xfusion.fuse(obs["pn"].assign(variance=var), obs["tile1"], **kw)
        np.testing.assert_array_equal(got.flux.values, ref.flux.values)
    with pytest.raises(ValueError, match="variance has dims .* not a subset of the data's"):
        xfusion.fuse(obs["pn"].assign(variance=xr.DataArray(np.ones(2), dims="other")), obs["tile1"], **kw)
