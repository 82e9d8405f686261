"""Poisson likelihood: finite-difference gradient, masking, zero models."""
import numpy as np
import pytest

from xfusion.grid import SPATIAL, SPECTRAL, fusion_grid
from xfusion.likelihood import PoissonLikelihood, PoissonTerm
from xfusion.operators import build_model


def likelihood(toy_pair, dtype=np.float64, mask=None):
    x_obs, y_obs, _ = toy_pair
    grid = fusion_grid(x_obs, y_obs)
    return PoissonLikelihood([
        PoissonTerm(build_model(grid, x_obs, SPATIAL), x_obs.counts.values, mask=mask, dtype=dtype),
        PoissonTerm(build_model(grid, y_obs, SPECTRAL), y_obs.counts.values, dtype=dtype),
    ])


def test_gradient_matches_finite_differences(small_toy):
    lik = likelihood(small_toy)
    truth = small_toy[2].values.astype(np.float64)
    rng = np.random.default_rng(3)
    z = truth * (0.7 + 0.6 * rng.random(truth.shape))
    f0, g = lik.value_and_grad(z)
    for _ in range(5):
        d = rng.standard_normal(z.shape) * truth * 1e-3
        h = 1e-1  # a relative step of 1e-4: truncation ~1e-9 (session 29: at 1e-6 round-off of the sum reached 1e-5)
        fd = (lik.value(z + h * d) - lik.value(z - h * d)) / (2 * h)
        assert fd == pytest.approx(np.sum(g * d), rel=1e-5)
    # and single voxels
    for idx in [(7, 7, 100), (0, 14, 3)]:
        e = np.zeros_like(z)
        e[idx] = truth[idx] * 0.05
        fd = (lik.value(z + e) - lik.value(z - e)) / 2
        assert fd == pytest.approx(g[idx] * truth[idx] * 0.05, rel=1e-3)


def test_value_is_kl_form_and_zero_at_perfect_fit():
    from xfusion.operators import Scale

    class Model(Scale):
        data_shape = (2, 2, 3)

    d = np.array([0.0, 1.0, 5.0] * 4).reshape(2, 2, 3)
    term = PoissonTerm(Model(1.0), d, dtype=np.float64)
    assert term.value_from_model(d + (d == 0)) == pytest.approx(4.0)  # only the m - d of the zero-count voxels
    m = np.full_like(d, 2.0)
    ref = np.sum(m - d) + np.sum(np.where(d > 0, d * np.log(np.where(d > 0, d, 1) / m), 0))
    assert term.value_from_model(m) == pytest.approx(ref)
    # model zero where data is zero: fine; where data > 0: infeasible
    m0 = d.copy()
    assert np.isfinite(term.value_from_model(m0))
    m0[0, 0, 1] = 0.0
    assert term.value_from_model(m0) == np.inf
    assert np.all(np.isfinite(term.residual_factor(m0)))


def test_mask_excludes_voxels(small_toy):
    x_obs = small_toy[0]
    mask = np.ones(x_obs.counts.shape, bool)
    mask[3, 4, :] = False
    lik_m = likelihood(small_toy, mask=mask)
    z = small_toy[2].values.astype(np.float64)
    # changing the masked data changes nothing
    t = lik_m.terms[0]
    v1 = t.value_from_model(t.model.forward(z))
    t.data[3, 4, :] += 100
    t._dlogd = PoissonTerm(t.model, t.data, mask=mask, dtype=np.float64)._dlogd
    t._dsum = PoissonTerm(t.model, t.data, mask=mask, dtype=np.float64)._dsum
    assert t.value_from_model(t.model.forward(z)) == pytest.approx(v1)
    g = t.model.adjoint(t.residual_factor(t.model.forward(z)))
    assert np.all(np.isfinite(g))


def test_float32_gradient_close_to_float64(small_toy):
    z = small_toy[2].values
    g64 = likelihood(small_toy, np.float64).gradient(z.astype(np.float64))
    g32 = likelihood(small_toy, np.float32).gradient(z.astype(np.float32))
    assert g32.dtype == np.float32
    assert np.linalg.norm(g32 - g64) / np.linalg.norm(g64) < 1e-4


def test_negative_subspace_model_counts_as_zero_expected_counts():
    """Where d = 0 a low-rank model may dip below 0: the term is that of max(m, 0) (>= 0, flat), never a reward."""
    from xfusion.operators import Scale

    class Model(Scale):
        data_shape = (1, 1, 4)

    d = np.array([0.0, 0.0, 3.0, 1.0]).reshape(1, 1, 4)
    term = PoissonTerm(Model(1.0), d, dtype=np.float64)
    m = np.array([-2.0, 0.5, 3.0, 2.0]).reshape(1, 1, 4)
    ref = 0.0 + 0.5 + 0.0 + (2.0 - 1.0 + np.log(1 / 2.0))
    assert term.value_from_model(m) == pytest.approx(ref)
    assert term.value_from_model(m) >= 0
    r = term.residual_factor(m)
    np.testing.assert_allclose(r.ravel(), [0.0, 1.0, 0.0, 0.5])
    # the block kernel of the subspace path (NumPy and Dask) agrees: value and gradient
    from xfusion.likelihood import block_value_grad, data_constant

    a, v = np.ones((1, 1, 1)), m.reshape(1, 4)
    out = block_value_grad(d, a, v, True)
    assert out[0, 0, -1] + data_constant(d) == pytest.approx(ref)
    assert out[0, 0, 0] == pytest.approx(float(r.ravel() @ v.ravel()))


def test_known_background_enters_value_gradient_and_ratio(small_toy):
    """expected counts = H z + B (issue 15): value, gradient w (1 - d/(Hz+B)), RL ratio d/(Hz+B); the
    sensitivity H^T w is unchanged; the model's own background is picked up by default."""
    x_obs, y_obs, truth = small_toy
    grid = fusion_grid(x_obs, y_obs)
    my = build_model(grid, y_obs, SPECTRAL)
    d = y_obs.counts.values
    b = np.full(d.shape, 0.7)
    term = PoissonTerm(my, d, dtype=np.float64, background=b)
    plain = PoissonTerm(my, d, dtype=np.float64)
    z = truth.values.astype(np.float64)
    m = my.forward(z)
    ref = np.sum((m + b) - d + np.where(d > 0, d * np.log(np.where(d > 0, d, 1) / (m + b)), 0))
    assert term.value_from_model(m) == pytest.approx(ref, rel=1e-12)
    assert term.value_from_model(m) != pytest.approx(plain.value_from_model(m), rel=1e-3)
    np.testing.assert_allclose(term.ratio(m), d / (m + b))
    np.testing.assert_allclose(term.residual_factor(m), 1 - d / (m + b))
    np.testing.assert_allclose(term.sensitivity(), plain.sensitivity())
    # finite differences of the value along a random direction
    lik = PoissonLikelihood([term])
    rng = np.random.default_rng(0)
    dz = rng.standard_normal(z.shape) * z * 1e-3
    f, g = lik.value_and_grad(z)
    fd = (lik.value(z + dz) - lik.value(z - dz)) / 2
    assert fd == pytest.approx(np.sum(g * dz), rel=1e-4)
    # a model carrying its background (from the observation's background_rate) is used without passing it
    y_b = y_obs.assign(background_rate=(y_obs.counts.dims, b / float(y_obs.exposure), {"units": "count s-1"}))
    auto = PoissonTerm(build_model(grid, y_b, SPECTRAL), d, dtype=np.float64)
    np.testing.assert_allclose(auto.background, b)
    with pytest.raises(ValueError, match="background must be finite"):
        PoissonTerm(my, d, dtype=np.float64, background=-b)
