import numpy as np
import pytest
from scipy import ndimage

from xfusion.regularizers.starlet import (
    B3_FILTER,
    mad_sigma,
    reconstruct,
    soft_threshold,
    starlet1d,
    starlet2d,
    starlet2d1d,
)

RTOL = {np.float64: 1e-12, np.float32: 1e-5}


def dilated(j):
    k = np.zeros(4 * 2**j + 1)
    k[:: 2**j] = B3_FILTER
    return k


def rel_err(a, b):
    return np.max(np.abs(np.asarray(a, np.float64) - b)) / np.max(np.abs(b))


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("n", [1, 2, 5, 8, 17, 64])
def test_reconstruction_1d(rng, dtype, n):
    x = rng.normal(size=(3, 4, n)).astype(dtype)
    for J in (0, 1, 3):
        c = starlet1d(x, J)
        assert c.shape == (J + 1,) + x.shape
        assert c.dtype == dtype
        assert rel_err(reconstruct(c), x) < RTOL[dtype]
    c = starlet1d(x, 2, axis=0)
    assert rel_err(c.sum(axis=0), x) < RTOL[dtype]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape", [(5, 5, 3), (16, 9, 4), (4, 7), (45, 45, 10)])
def test_reconstruction_2d(rng, dtype, shape):
    x = rng.normal(size=shape).astype(dtype)
    c = starlet2d(x, 3)
    assert c.shape == (4,) + shape and c.dtype == dtype
    assert rel_err(reconstruct(c), x) < RTOL[dtype]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape", [(5, 6, 5), (12, 11, 40), (45, 45, 300)])
def test_reconstruction_2d1d(rng, dtype, shape):
    x = rng.normal(size=shape).astype(dtype)
    c = starlet2d1d(x, 2, 3)
    assert c.shape == (3, 4) + shape and c.dtype == dtype
    assert rel_err(reconstruct(c, ndim_scales=2), x) < RTOL[dtype]
    # first index is the 2D band: summing the 1D scales gives starlet2d
    np.testing.assert_allclose(c.sum(axis=1), starlet2d(x, 2), rtol=0, atol=1e-5 if dtype == np.float32 else 1e-12)


def test_2d1d_matches_composition(rng):
    x = rng.normal(size=(9, 8, 30))
    c = starlet2d1d(x, 2, 2)
    b2 = starlet2d(x, 2)
    for j2 in range(3):
        np.testing.assert_allclose(c[j2], starlet1d(b2[j2], 2, axis=-1), atol=1e-13)


@pytest.mark.parametrize("n", [3, 5, 6, 13, 40])
def test_smoothing_matches_dilated_correlate1d(rng, n):
    x = rng.normal(size=(n, 2, 3))
    J = 3
    c = starlet1d(x, J, axis=0)
    ref = x
    for j in range(J):
        prev = ref
        ref = ndimage.correlate1d(ref, dilated(j), axis=0, mode="reflect")
        # wavelet coefficient j+1 = c_j - c_{j+1}
        np.testing.assert_allclose(c[j], prev - ref, atol=1e-13)
    np.testing.assert_allclose(c[-1], ref, atol=1e-13)


def test_smoothing_2d_matches_reference(rng):
    x = rng.normal(size=(11, 7, 2))
    c = starlet2d(x, 2, axes=(0, 1))
    ref = x
    for j in range(2):
        ref = ndimage.correlate1d(ref, dilated(j), axis=0, mode="reflect")
        ref = ndimage.correlate1d(ref, dilated(j), axis=1, mode="reflect")
    np.testing.assert_allclose(c[-1], ref, atol=1e-13)
    # other axes choice: the image along axes (0, 2)
    c2 = starlet2d(x.transpose(0, 2, 1), 2, axes=(0, 1))
    np.testing.assert_allclose(starlet2d(x, 2, axes=(0, 2))[-1].transpose(0, 2, 1), c2[-1], atol=1e-13)


def test_constant_input():
    x = np.full((7, 6, 9), 3.25)
    for c in (starlet1d(x, 3), starlet2d(x, 3), starlet2d1d(x, 2, 2).reshape((-1,) + x.shape)):
        assert np.all(np.abs(c[:-1]) < 1e-14)
        np.testing.assert_allclose(c[-1], 3.25, rtol=1e-15)


def test_delta_profile():
    x = np.zeros(21)
    x[10] = 1.0
    w1 = starlet1d(x, 1)[0]
    expect = np.zeros(21)
    expect[8:13] = -B3_FILTER
    expect[10] += 1.0
    np.testing.assert_allclose(w1, expect, atol=1e-15)
    # 2D: w1 = delta - h (outer) h
    img = np.zeros((15, 15))
    img[7, 7] = 1.0
    w1 = starlet2d(img, 2)[0]
    e2 = -np.zeros((15, 15))
    e2[5:10, 5:10] = -np.outer(B3_FILTER, B3_FILTER)
    e2[7, 7] += 1.0
    np.testing.assert_allclose(w1, e2, atol=1e-15)
    assert np.isclose(w1[7, 7], 1 - 36 / 256)


@pytest.mark.parametrize("fn", [lambda x: starlet1d(x, 2), lambda x: starlet2d(x, 2),
                                lambda x: starlet2d1d(x, 1, 2)])
def test_dtype_and_purity(rng, fn):
    for dtype in (np.float32, np.float64):
        x = rng.normal(size=(6, 5, 12)).astype(dtype)
        x0 = x.copy()
        c = fn(x)
        assert c.dtype == dtype
        np.testing.assert_array_equal(x, x0)
    xi = np.arange(60).reshape(3, 4, 5)
    assert fn(xi).dtype == np.float64


def test_large_cube_threaded_path(rng):
    # big enough to take the blocked / threaded code path
    x = rng.random((20, 21, 1500), dtype=np.float32)
    c = starlet2d1d(x, 2, 3)
    assert rel_err(reconstruct(c, 2), x) < 1e-5
    ref = starlet2d1d(x[:, :, :100].astype(np.float64), 2, 3)
    # the energy edge only sees the reflection, so interior channels far from
    # the cut must match the un-cut transform
    np.testing.assert_allclose(c[..., 10:60], ref[..., 10:60], atol=1e-5)


def test_non_contiguous_input(rng):
    x = rng.normal(size=(12, 10, 40))
    xt = x.transpose(1, 0, 2)
    np.testing.assert_allclose(starlet2d1d(xt, 1, 2), starlet2d1d(np.ascontiguousarray(xt), 1, 2))


def test_bad_scales():
    with pytest.raises(ValueError):
        starlet1d(np.zeros(5), -1)
    with pytest.raises(ValueError):
        starlet2d(np.zeros((4, 4)), 1, axes=(0, 0))


def test_mad_sigma(rng):
    sigma = 2.5
    a = rng.normal(3.0, sigma, size=200_000)
    assert abs(mad_sigma(a) - sigma) / sigma < 0.05
    assert isinstance(mad_sigma(a), float)
    a32 = a.astype(np.float32).reshape(400, 500)
    a0 = a32.copy()
    assert abs(mad_sigma(a32) - sigma) / sigma < 0.05
    np.testing.assert_array_equal(a32, a0)


def test_soft_threshold():
    a = np.array([-3.0, -1.0, -0.5, 0.0, 0.5, 2.0])
    a0 = a.copy()
    np.testing.assert_array_equal(soft_threshold(a, 1.0), [-2.0, 0.0, 0.0, 0.0, 0.0, 1.0])
    np.testing.assert_array_equal(a, a0)
    # array thresholds broadcast
    t = np.array([[0.0], [2.5]])
    out = soft_threshold(a, t)
    assert out.shape == (2, 6)
    np.testing.assert_array_equal(out[0], a)
    np.testing.assert_array_equal(out[1], [-0.5, 0, 0, 0, 0, 0])
    assert soft_threshold(a.astype(np.float32), np.float64(1.0)).dtype == np.float32
    with pytest.raises(ValueError):
        soft_threshold(a, -1.0)


@pytest.mark.parametrize("n", [1, 2, 7, 8, 1001])
def test_median_equals_numpy(rng, n):
    """The one-partition median: np.median's value for odd and even sizes, ties and NaN, in the array's dtype."""
    from xfusion.regularizers.starlet import _median

    for a in (rng.standard_normal(n), np.round(rng.standard_normal(n), 1), rng.standard_normal(n).astype(np.float32)):
        m = _median(a.copy())
        assert m == np.median(a) and np.asarray(m).dtype == a.dtype
    a = rng.standard_normal(n)
    a[n // 2] = np.nan
    assert np.isnan(_median(a))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_threshold_in_place_equals_soft_threshold(rng, dtype):
    """The prox's in-place, row-blocked thresholding gives the cube of coarse + sum_b soft_threshold(w_b, th_b) to
    the bit, and its penalty sum_b th_b ||S(w_b)||_1 to float64 round-off."""
    from xfusion.regularizers.sparsity import Wavelet2D1D

    reg = Wavelet2D1D(k=1.5, n_scales_2d=1, n_scales_1d=3, null_space="zero")
    z = rng.gamma(2.0, 1.0, (9, 7, 40)).astype(dtype)
    c1 = reg._coefficients(z, 0)
    stats = reg._statistics(c1, z.shape)
    ref, pen = c1[reg.n2][reg.n1].copy(), 0.0
    for band, th in reg._thresholds(c1, stats, 1.0):
        kept = soft_threshold(band, th)
        ref += kept
        pen += float(np.sum(np.abs(kept) * th, dtype=np.float64))
    out, got = reg._apply(reg._coefficients(z, 0), stats)
    np.testing.assert_array_equal(out, ref)
    assert got == pytest.approx(pen, rel=1e-6) and pen > 0


@pytest.mark.parametrize("n_scales", [1, 2, 3])
def test_reach_is_the_support_of_an_impulse(n_scales):
    """``starlet.reach(J)``, the halo every block form uses: the coefficients of a unit impulse far from the edges are
    non-zero exactly within ``reach(J)`` pixels of it, at some level."""
    from xfusion.regularizers.starlet import reach, starlet2d

    r = reach(n_scales)
    n = 2 * r + 9
    z = np.zeros((n, n, 1))
    z[n // 2, n // 2] = 1.0
    nonzero = np.any(starlet2d(z, n_scales)[..., 0] != 0, axis=0)
    rows = np.flatnonzero(nonzero.any(axis=1))
    assert rows.min() == n // 2 - r and rows.max() == n // 2 + r
