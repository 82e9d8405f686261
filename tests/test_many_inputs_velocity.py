"""Issue 18 (session 9): the balanced EM step when several inputs share the sharp-spatial role (pn + MOS1 + MOS2).

The sharp-spatial inputs get the weight ``a = sum_v max_i s_i / sum_v sum_i s_i`` (the others 1), the step is the EM
step of the weighted likelihood ``sum_i a_i L_i``, the prior's spatial-only band thresholds get the factor
``f = a S / S_a``; one sharp-spatial input (two inputs, or pn + Resolve tiles) is untouched
(:mod:`xfusion.solvers.em`). The Dask path runs the same code: tests/test_mosaic.py
``test_more_than_two_inputs_on_dask_match_numpy`` (pn + MOS1 + MOS2 + an image, balanced) compares it with NumPy.
"""
import numpy as np
import pytest

from xfusion import scenes_mosaic
from xfusion.fuse import _precheck, _role_groups
from xfusion.likelihood import PoissonLikelihood, make_term
from xfusion.regularizers.sparsity import Wavelet2D1D
from xfusion.solvers.em import EMProx


@pytest.fixture(scope="module")
def problem():
    obs, _ = scenes_mosaic.make_small(seed=3)
    grid, ins, names, models, _ = _precheck(list(obs.values()), {}, False)
    terms = [make_term(o, m, np.float64) for o, m in zip(ins, models)]
    return grid, names, models, terms


def test_balanced_weights_step_and_thresholds(problem):
    grid, names, models, terms = problem
    roles = _role_groups(grid, len(terms))
    assert roles == ["spatial", "spectral", "spatial", "spatial", "spectral"], (names, roles)
    reg = Wavelet2D1D(k=1.0, n_scales_1d=2, null_space="zero")
    em = EMProx(PoissonLikelihood(terms), reg, roles=roles)
    # the weights from the sensitivities s_i = H_i^T 1, computed here independently
    s = [t.model.adjoint(np.ones(t.data.shape)) for t in terms]
    sp = [i for i, r in enumerate(roles) if r == "spatial"]
    a = np.sum(np.max([s[i] for i in sp], axis=0)) / np.sum([s[i] for i in sp])
    assert 0.3 < a < 0.9
    np.testing.assert_allclose(em.weights, [a if r == "spatial" else 1.0 for r in roles], rtol=1e-9)
    sx, sr = sum(s[i].sum() for i in sp), sum(s[i].sum() for i in range(len(s)) if i not in sp)
    assert em.band_factor == pytest.approx(a * (sx + sr) / (a * sx + sr), rel=1e-9)
    assert em.reg is not reg and reg.band_scale == {} and em.reg.band_scale == {(0, 2): em.band_factor}
    # one step without a prior: z sum_i a_i H_i^T(d_i / H_i z) / sum_i a_i H_i^T 1, and the weighted data term
    plain = EMProx(PoissonLikelihood(terms), roles=roles)
    z0 = np.full(models[0].fused_shape, 0.5 * float(terms[0].data.mean()) / float(np.mean(s[0])) + 1e-3)
    st = plain.step(plain.init(z0))
    num = sum(w * t.model.adjoint(t.ratio(t.model.forward(z0))) for w, t in zip(plain.weights, terms))
    den = sum(w * si for w, si in zip(plain.weights, s))
    want = np.where(den > 0, z0 * num / np.where(den > 0, den, 1), 0)
    np.testing.assert_allclose(st["z"], want, rtol=1e-9, atol=1e-12 * float(want.max()))
    val = sum(w * t.value_from_model(t.model.forward(st["z"])) for w, t in zip(plain.weights, terms))
    assert st["data_term"] == pytest.approx(val, rel=1e-9)
    # the spatial-only band's threshold is scaled, the others are not
    zh = np.abs(want) + 1e-3
    c1 = em.reg._coefficients(zh, 0)
    stats = reg._statistics(c1, zh.shape)
    got = {i: th for i, (_, th) in enumerate(em.reg._thresholds(c1, stats, 1.0))}
    ref = {i: th for i, (_, th) in enumerate(reg._thresholds(c1, stats, 1.0))}
    kept = reg._kept()
    for i, ab in enumerate(kept):
        assert got[i] == pytest.approx(ref[i] * (em.band_factor if ab == (0, 2) else 1.0), rel=1e-12)


def test_one_sharp_spatial_input_is_untouched(problem):
    grid, names, models, terms = problem
    roles = _role_groups(grid, len(terms))
    keep = [i for i, r in enumerate(roles) if r == "spectral" or i == 0]  # pn + the two tiles
    for idx in (keep, [0, 1]):
        em = EMProx(PoissonLikelihood([terms[i] for i in idx]), Wavelet2D1D(n_scales_1d=2),
                    roles=[roles[i] for i in idx])
        assert em.weights is None and em.band_factor is None
    assert _role_groups(grid, 2) is None
    with pytest.raises(ValueError, match="roles must give 'spatial' or 'spectral'"):
        EMProx(PoissonLikelihood(terms), roles=["spatial", "pixels", "spatial", "spatial", "spectral"])
    with pytest.raises(ValueError, match="finite and > 0"):
        Wavelet2D1D().with_band_scale({(0, 5): 0.0})
