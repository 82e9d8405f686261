"""Finite-difference checks of every objective and gradient, and the data term / EM ratio by hand.

Fourth-order central differences in float64 along random directions,
``(8 (f(z + h d) - f(z - h d)) - (f(z + 2h d) - f(z - 2h d))) / 12h``, against ``<grad f(z), d>``: relative error
<= 1e-6 (truncation O(h^4) is negligible at the chosen h, round-off ~1e-7; a sign flip, a dropped term or a wrong
adjoint is O(1)).
"""
import numpy as np
import pytest

from xfusion import toy
from xfusion.grid import SPATIAL, SPECTRAL, fusion_grid
from xfusion.likelihood import PoissonLikelihood, PoissonTerm
from xfusion.operators import build_model
from xfusion.likelihood import block_value_grad, data_constant
from xfusion.regularizers.sobolev import Sobolev
from xfusion.solvers.em import EMProx
from xfusion.solvers.subspace import SubspaceFISTA


def fd_check(f, grad, z, seeds=(0, 1, 2), h=1e-4, rtol=1e-6):
    """Directional fourth-order central differences of f at z (relative step h) vs <grad, d>. (Session 29: at
    h = 1e-5 the round-off of f (a sum of ~1e5 terms) reached 1.5e-6 of a small directional derivative on the small
    toy's new data, the same with either stencil; h = 1e-4 divides it by 10, and this stencil's truncation, O(h^4),
    stays negligible.)"""
    for s in seeds:
        d = np.random.default_rng(100 + s).standard_normal(z.shape)
        d *= np.abs(z)  # relative perturbation: keeps z + 2 h d > 0
        num = (8 * (f(z + h * d) - f(z - h * d)) - (f(z + 2 * h * d) - f(z - 2 * h * d))) / (12 * h)
        ana = float(np.sum(grad * d))
        assert np.isfinite(num) and np.isfinite(ana)
        assert abs(num - ana) <= rtol * max(abs(num), abs(ana)), (s, num, ana)


@pytest.fixture(scope="module")
def problem():
    """The small toy's models (internal units as in fuse) and counts, float64, plus a positive iterate."""
    x, y, t = toy.make("small")
    g = fusion_grid(x, y)
    mx, my = build_model(g, x, SPATIAL), build_model(g, y, SPECTRAL)
    scale = float(np.mean(mx.weights))
    mx, my = mx.scaled(scale), my.scaled(scale)
    z = t.values.astype(np.float64) * scale
    z = 0.7 * z + 0.3 * z.mean() + np.random.default_rng(0).random(z.shape) * z.mean()
    mask = np.random.default_rng(1).random(y.counts.shape) > 0.2  # 20% of Y voxels masked
    return mx, my, x.counts.values.astype(np.float64), y.counts.values.astype(np.float64), z, mask


def by_hand(m, d, w=None):
    """sum_v w [m - d + d log(d/m)] with 0 log 0 = 0, written out."""
    w = np.ones_like(m) if w is None else w
    out = 0.0
    for mv, dv, wv in zip(m.ravel(), d.ravel(), w.ravel()):
        if wv == 0:
            continue
        out += wv * (mv - dv + (dv * np.log(dv / mv) if dv > 0 else 0.0))
    return out


@pytest.mark.parametrize("masked", [False, True], ids=["plain", "masked"])
def test_poisson_term_value_by_hand_and_model_gradient(problem, masked):
    mx, my, xd, yd, z, mask = problem
    w = mask if masked else None
    term = PoissonTerm(my, yd, w, np.float64)
    m = my.forward(z)
    assert np.isclose(term.value_from_model(m), by_hand(m, yd, None if w is None else w.astype(float)), rtol=1e-10)
    fd_check(term.value_from_model, term.residual_factor(m), m)
    if masked:  # masked voxels do not count at all: changing their data changes nothing
        d2 = yd.copy()
        d2[~mask] = 1e6
        assert PoissonTerm(my, d2, w, np.float64).value_from_model(m) == pytest.approx(term.value_from_model(m), rel=1e-12)


@pytest.mark.parametrize("masked", [False, True], ids=["plain", "masked"])
def test_likelihood_gradient(problem, masked):
    mx, my, xd, yd, z, mask = problem
    lik = PoissonLikelihood([PoissonTerm(mx, xd, None, np.float64),
                             PoissonTerm(my, yd, mask if masked else None, np.float64)])
    val, grad = lik.value_and_grad(z)
    assert val == pytest.approx(lik.value(z), rel=1e-12)
    np.testing.assert_array_equal(grad, lik.gradient(z))
    fd_check(lik.value, grad, z)


def test_infeasible_model_is_infinite(problem):
    mx, my, xd, yd, z, _ = problem
    term = PoissonTerm(my, yd, None, np.float64)
    m = my.forward(z)
    m[np.unravel_index(np.argmax(yd), yd.shape)] = 0.0
    assert term.value_from_model(m) == np.inf
    # (the docstring promises a finite gradient there, via d / max(m, tiny); d / tiny overflows to inf for
    # d > ~4 in both float32 and float64 -- reported, not asserted here)


def _subspace(problem, rank=4):
    mx, my, xd, yd, z, mask = problem
    r = np.random.default_rng(3)
    L = z.shape[2]
    mean = z.reshape(-1, L).mean(axis=0)
    basis = np.vstack([mean / np.linalg.norm(mean), 0.05 * r.standard_normal((rank - 1, L)) / np.sqrt(L)])
    w = np.zeros(z.shape[:2] + (rank,))
    w[..., 0] = z.sum(axis=2) / (mean.sum() / np.linalg.norm(mean)) * (1 + 0.1 * r.random(z.shape[:2]))
    w[..., 1:] = 0.3 * np.abs(w[..., :1]) * r.standard_normal(z.shape[:2] + (rank - 1,))
    return basis, w


@pytest.mark.parametrize("masked", [False, True], ids=["plain", "masked"])
@pytest.mark.parametrize("role", [0, 1], ids=["X", "Y"])
def test_subspace_value_and_grad(problem, masked, role):
    """PoissonTerm.subspace_value_and_grad (plain: the parallel block kernel; masked: the full branch) is the
    value and gradient w.r.t. the spatially transformed coefficients a of m = a @ v, and its value equals the
    full-cube value of the same model."""
    mx, my, xd, yd, z, mask = problem
    model, data = (mx, xd) if role == 0 else (my, yd)
    w_mask = (mask if role == 1 else np.random.default_rng(5).random(xd.shape) > 0.2) if masked else None
    term = PoissonTerm(model, data, w_mask, np.float64)
    basis, w = _subspace(problem)
    sp, v = model.reduced(basis)
    a = w if sp is None else sp.forward(w)
    val, g = term.subspace_value_and_grad(a, v)
    assert val == pytest.approx(term.value_from_model(model.forward(w @ basis)), rel=1e-10)
    assert term.subspace_value_and_grad(a, v, grad=False)[1] is None
    assert g.shape == a.shape
    fd_check(lambda aa: term.subspace_value_and_grad(aa, v, grad=False)[0], g, a)


def test_block_value_grad_kernel():
    """likelihood.block_value_grad on one block: value = sum(m) - sum_{d>0} d log m, gradient by FD, +inf where
    m <= 0 under positive data."""
    r = np.random.default_rng(8)
    v = np.abs(r.standard_normal((3, 20))) + 0.1
    a = np.abs(r.standard_normal((4, 5, 3))) + 0.2
    d = r.poisson(a @ v).astype(np.float64)
    out = block_value_grad(d, a, v, True)
    m = a @ v
    pos = d > 0
    assert out[0, 0, -1] == pytest.approx(m.sum() - np.sum(d[pos] * np.log(m[pos])), rel=1e-12)
    assert np.all(out[1:, :, -1] == 0) and np.all(out[0, 1:, -1] == 0)
    fd_check(lambda aa: block_value_grad(d, aa, v, False)[0, 0, -1], out[:, :, :-1], a)
    # with the data constant the value is the KL form of PoissonTerm
    assert out[0, 0, -1] + data_constant(d) == pytest.approx(by_hand(m, d), rel=1e-10)
    a_bad = a.copy()
    a_bad[np.unravel_index(np.argmax(d.sum(-1)), d.shape[:2])] = -1.0
    assert block_value_grad(d, a_bad, v, False)[0, 0, -1] == np.inf


@pytest.mark.parametrize("with_sobolev", [False, True], ids=["poisson", "poisson+sobolev"])
def test_subspace_solver_objective_gradient(problem, with_sobolev):
    """SubspaceFISTA.f_grad (both reduced instrument terms through their spatial adjoints, + Sobolev) by FD."""
    mx, my, xd, yd, z, mask = problem
    basis, w = _subspace(problem)
    terms = [PoissonTerm(mx, xd, None, np.float64), PoissonTerm(my, yd, None, np.float64)]
    smooth = Sobolev(0.05, float(z.mean())) if with_sobolev else None
    solver = SubspaceFISTA(terms, [mx.reduced(basis), my.reduced(basis)], smooth=smooth)
    val, g = solver.f_grad(w)
    assert val == pytest.approx(solver.f(w), rel=1e-12)
    full = sum(t.value_from_model(t.model.forward(w @ basis)) for t in terms)
    if smooth is not None:
        full += smooth.value(w)
    assert val == pytest.approx(full, rel=1e-10)
    fd_check(solver.f, g, w)


def test_sobolev_value_and_gradient():
    r = np.random.default_rng(9)
    w = r.standard_normal((7, 6, 3))
    s = Sobolev(0.2, 4.0)
    # value by hand: (mu / level) * sum of squared forward differences along x and y
    dx = np.diff(w, axis=0)
    dy = np.diff(w, axis=1)
    assert s.value(w) == pytest.approx(0.05 * (np.sum(dx ** 2) + np.sum(dy ** 2)), rel=1e-12)
    for seed in range(3):
        d = np.random.default_rng(seed).standard_normal(w.shape)
        h = 1e-4
        num = (s.value(w + h * d) - s.value(w - h * d)) / (2 * h)
        assert num == pytest.approx(float(np.sum(s.gradient(w) * d)), rel=1e-8)


def test_em_ratio_and_step_by_hand(problem):
    """EMProx's update is the two-instrument Richardson-Lucy step z * sum_i H_i^T(d_i / H_i z) / sum_i H_i^T 1,
    written out with the models' forward/adjoint (ratio d/m, not m/d)."""
    mx, my, xd, yd, z, mask = problem
    terms = [PoissonTerm(mx, xd, None, np.float64), PoissonTerm(my, yd, None, np.float64)]
    m = my.forward(z)
    np.testing.assert_allclose(terms[1].ratio(m), yd / m, rtol=1e-14)
    em = EMProx(PoissonLikelihood(terms))
    state = em.step(em.init(z))
    sens = mx.adjoint(np.ones_like(xd)) + my.adjoint(np.ones_like(yd))
    corr = mx.adjoint(xd / mx.forward(z)) + my.adjoint(yd / my.forward(z))
    np.testing.assert_allclose(state["z"], z * corr / sens, rtol=1e-10)
    # EM never increases the (unregularized) data term
    assert state["data_term"] <= em.init(z)["data_term"]



def test_subspace_fista_recovers_a_noise_free_minimizer(problem):
    """SubspaceFISTA (no prox) on noise-free data generated from a known W* (rank 2, both instruments): the
    KL objective has its minimum 0 at W* (unique: X's reduced model is injective per pixel), so FISTA must
    drive the objective to ~0 and W to W*."""
    from xfusion.solvers.loop import run

    mx, my, xd, yd, z, mask = problem
    b0, w_true = _subspace(problem, rank=2)
    L = b0.shape[1]
    b1 = b0[0] * np.sin(2 * np.pi * 3 * np.arange(L) / L)  # a well-determined direction, |b1| <= b0
    b1 -= (b1 @ b0[0]) * b0[0]
    basis = np.vstack([b0[0], b1 / np.linalg.norm(b1)])
    w_true[..., 1] = 0.2 * w_true[..., 0] * np.cos(np.arange(w_true.shape[0]))[:, None]  # keeps models > 0
    assert np.all(w_true @ basis > 0)
    zt = w_true @ basis
    terms = [PoissonTerm(mx, mx.forward(zt), None, np.float64), PoissonTerm(my, my.forward(zt), None, np.float64)]
    solver = SubspaceFISTA(terms, [mx.reduced(basis), my.reduced(basis)])
    w0 = w_true * (1 + 0.3 * np.random.default_rng(12).uniform(-1, 1, w_true.shape))
    w0[..., 1] = 0.0
    state, hist, n, _ = run(solver, w0, max_iter=300, tol=None, progress=False)
    assert hist["objective"][0] > 1.0
    assert state["objective"] <= 1e-6 * hist["objective"][0]
    err = np.linalg.norm(state["w"] - w_true) / np.linalg.norm(w_true)
    assert err <= 1e-3, err
