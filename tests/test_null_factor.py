"""``null_factor`` of the 2D-1D starlet prior (xfusion.regularizers.sparsity): with ``null_space="threshold"`` the
bands neither instrument sees (fine in space and in energy) are thresholded at ``null_factor`` times the rule of the
other bands. 1 is the plain thresholded prior, a huge factor is the zeroed one, and in between a coefficient far above
the noise (a bright, narrow line in one pixel) survives where the zeroed prior removes it."""
import numpy as np
import pytest

import xfusion
from xfusion import tuning
from xfusion.regularizers.sparsity import Wavelet2D1D

da = pytest.importorskip("dask.array")
from xfusion.backends.blockwise import DaskBackend  # noqa: E402


def _cube(seed=3, shape=(24, 24, 96)):
    """Smooth positive sky + Poisson-like noise, and one pixel with a narrow, bright line (fine in space and energy)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    sky = 40.0 * np.exp(-((xx - 12.0) ** 2 + (yy - 11.0) ** 2) / 60.0)[:, :, None] * np.ones(shape[2])
    z = rng.poisson(sky + 5.0).astype(np.float32)
    z[6, 17, 40:43] += np.float32(4000.0)
    return z


def _prox(z, **kw):
    reg = Wavelet2D1D(n_scales_2d=1, n_scales_1d=3, k=1.0, **kw)
    return reg.prox(z, with_penalty=True)


def test_factor_one_is_the_thresholded_prior_and_a_huge_factor_the_zeroed_one():
    z = _cube()
    out1, pen1 = _prox(z, null_space="threshold", null_factor=1.0)
    out_t, pen_t = _prox(z, null_space="threshold")
    np.testing.assert_array_equal(out1, out_t)
    assert pen1 == pen_t
    out_big, pen_big = _prox(z, null_space="threshold", null_factor=1e9)
    out_zero, pen_zero = _prox(z, null_space="zero")
    np.testing.assert_allclose(out_big, out_zero, rtol=0, atol=1e-5 * float(np.abs(out_zero).max()))
    assert pen_big == pytest.approx(pen_zero, rel=1e-6)
    assert np.abs(out1 - out_zero).max() > 1.0  # the null bands do matter on this cube


def test_a_factor_of_20_keeps_only_the_bright_narrow_line_in_the_null_bands():
    z = _cube()
    out20, _ = _prox(z, null_space="threshold", null_factor=20.0)
    out_zero, _ = _prox(z, null_space="zero")
    out1, _ = _prox(z, null_space="threshold", null_factor=1.0)
    diff = np.abs(out20 - out_zero)
    # at the line the factor-20 prior keeps null-band structure that the zeroed one removes ...
    assert diff[6, 17, 40:43].max() > 100.0
    # ... the line's peak is closer to the data than with the zeroed prior
    assert abs(out20[6, 17, 41] - z[6, 17, 41]) < abs(out_zero[6, 17, 41] - z[6, 17, 41])
    # away from it (beyond the finest bands' reach) the noise stays zeroed: same cube as the zeroed prior
    far = np.ones(z.shape[:2], bool)
    far[6 - 4:6 + 5, 17 - 4:17 + 5] = False
    np.testing.assert_allclose(out20[far], out_zero[far], rtol=0, atol=1e-5 * float(np.abs(out_zero).max()))
    # while the plain thresholded prior (factor 1) lets noise through there
    assert np.abs(out1[far] - out_zero[far]).max() > 1.0


@pytest.mark.parametrize("factor", [{"null_space": "threshold", "null_factor": 20.0},
                                    {"spectral_band_factor": 2.0}])  # session 60 (tests/test_spectral_band_factor.py)
def test_band_factors_on_dask_blocks_match_numpy(factor):
    z = _cube()
    reg = Wavelet2D1D(n_scales_2d=1, n_scales_1d=3, k=1.0, sample=20000, **factor)
    B = DaskBackend(((7, 9, 8), (11, 13), (96,)))
    zc = B.cube(z, z.shape, z.dtype)
    stats = B.combined(reg, zc, None)
    out, pen = B.prox(reg, zc, stats, None)
    ref, ref_pen = reg.prox(z, with_penalty=True)
    np.testing.assert_allclose(out.compute(), ref, rtol=0, atol=1e-6 * float(np.abs(ref).max()))
    assert float(pen.compute()) == pytest.approx(ref_pen, rel=1e-6)


@pytest.mark.parametrize("bad", [0.0, -1.0, float("inf"), True])
def test_bad_null_factor_is_refused(small_toy, bad):
    x, y, _ = small_toy
    with pytest.raises(ValueError, match="null_factor"):
        xfusion.fuse(x, y, regularization="wavelet2d1d", null_space="threshold", null_factor=bad, max_iter=1,
                     progress=False)


def test_auto_scores_the_thresholded_candidate_with_the_null_factor(small_toy):
    """The thresholded candidate of regularization="auto" carries tuning.NULL_FACTOR; the fuse option reaches it."""
    x, y, _ = small_toy
    sp = tuning._splits([x, y], 0.5, 1, 0, "float32")
    setting, _, choice = tuning._tune_threshold(sp, {}, {"k": 1.0, "n_scales_1d": 2}, max_iter=8)
    assert setting["null_factor"] == tuning.NULL_FACTOR == choice["null_factor"]
    r = xfusion.fuse(x, y, **{k: v for k, v in setting.items() if k != "max_iter"}, max_iter=3, progress=False)
    assert np.isfinite(r.flux.values).all()
    import json
    assert json.loads(r.attrs["parameters"])["null_factor"] == tuning.NULL_FACTOR
