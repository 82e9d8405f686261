"""Every operator: independent reference, purity, dtype, conservation (dot tests: tests/test_adjoints.py)."""
import numpy as np
import pytest
import scipy.signal

from xfusion.grid import SPATIAL, SPECTRAL, fusion_grid
from xfusion.operators import Convolve1D, Convolve2D, Rebin, ResponseMatrix, SpatialMatrix, build_model
from xfusion.operators.dottest import dottest
from xfusion.operators.response import kernel_matrix, kernel_on_spacing

from test_adjoints import OPS  # the one table of operators (dot tests there, purity and dtype here)

rng = np.random.default_rng(1)
K2 = rng.random((7, 5))
K2 /= K2.sum()
K1 = rng.random(9)
K1 /= K1.sum()

@pytest.mark.parametrize("name", OPS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_pure_and_dtype(name, dtype):
    make, shape = OPS[name]
    op = make()
    x = rng.random(shape).astype(dtype)
    x0 = x.copy()
    y = op.forward(x)
    assert y.dtype == dtype and np.array_equal(x, x0)
    y0 = y.copy()
    z = op.adjoint(y)
    assert z.dtype == dtype and np.array_equal(y, y0) and z.shape == shape
    # no hidden state: same call twice gives the same answer
    assert np.array_equal(op.forward(x), y)


def test_conv2d_matches_scipy():
    x = rng.random((11, 8, 3))
    out = Convolve2D(K2, (11, 8)).forward(x)
    ref = np.stack([scipy.signal.convolve2d(x[:, :, k], K2, mode="same") for k in range(3)], axis=-1)
    np.testing.assert_allclose(out, ref, rtol=1e-10, atol=1e-13)


def test_conv1d_matches_numpy():
    x = rng.random((3, 2, 13))
    out = Convolve1D(K1, 13).forward(x)
    ref = np.apply_along_axis(lambda s: np.convolve(s, K1, mode="same"), -1, x)
    np.testing.assert_allclose(out, ref, rtol=1e-10, atol=1e-13)


def test_matrix_and_rebin_match_dense_loops():
    x = rng.random((4, 6, 12))
    R = rng.random((12, 4))
    np.testing.assert_allclose(ResponseMatrix(R).forward(x), np.einsum("ijk,kc->ijc", x, R))
    ref = np.zeros((2, 3, 4))
    for i in range(4):
        for j in range(6):
            for k in range(12):
                ref[i // 2, j // 2, k // 3] += x[i, j, k]
    np.testing.assert_allclose(Rebin((2, 2, 3)).forward(x), ref)


def test_spatial_matrix_equals_fft_then_rebin():
    x = rng.random((9, 6, 4))
    k = K2[:, :5] / K2[:, :5].sum()
    a = SpatialMatrix.from_psf(k, (9, 6), 3).forward(x)
    b = Rebin((3, 3, 1)).forward(Convolve2D(k, (9, 6)).forward(x))
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


def test_spatial_matrix_separable_factors_equal_dense_matrix():
    """A separable PSF: forward/adjoint by the two factors (kron(Px, Py) = P) equal the dense products."""
    k = np.outer([0.1, 0.5, 1.0, 0.3, 0.05], [0.2, 1.0, 0.4])
    op = SpatialMatrix.from_psf(k, (9, 6), 3)
    assert op.factors is not None and SpatialMatrix.from_psf(K2, (9, 6), 3).factors is None
    np.testing.assert_allclose(np.kron(*op.factors), op.matrix, rtol=1e-13, atol=1e-16)
    x, u = rng.random((9, 6, 4)), rng.random((3, 2, 4))
    np.testing.assert_allclose(op.forward(x), (op.matrix @ x.reshape(54, 4)).reshape(3, 2, 4), rtol=1e-12)
    np.testing.assert_allclose(op.adjoint(u), (op.matrix.T @ u.reshape(6, 4)).reshape(9, 6, 4), rtol=1e-12)
    np.testing.assert_allclose(op.forward(x[:, :, 0]), op.forward(x)[:, :, 0], rtol=1e-12)  # one slice, 2D
    x32 = x.astype(np.float32)
    assert op.forward(x32).dtype == np.float32
    np.testing.assert_allclose(op.forward(x32), op.forward(x), rtol=1e-5)


def test_kernel_matrix_equals_convolution_then_rebin():
    """Folding the 1D kernel and the energy rebinning into one matrix = convolve, then sum channels."""
    fine = np.linspace(1.0, 1.12, 121)  # 1 eV bins
    coarse = fine[::10]
    k = np.exp(-0.5 * (np.arange(-15, 16) / 4.0) ** 2)
    k /= k.sum()
    R = kernel_matrix(k, 0.001, fine, coarse)
    x = rng.random((2, 2, 120))
    a = ResponseMatrix(R).forward(x)
    b = Rebin((1, 1, 10)).forward(Convolve1D(k, 120).forward(x))
    np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(kernel_on_spacing(k, 0.001, 0.001), k, rtol=1e-12)


def test_normalized_kernels_and_rebin_conserve_counts():
    x = np.zeros((30, 30, 200))
    x[10:20, 10:20, 80:120] = rng.random((10, 10, 40))  # well inside: nothing leaks out
    total = x.sum()
    assert np.isclose(Convolve2D(K2, (30, 30)).forward(x).sum(), total, rtol=1e-10)
    assert np.isclose(Convolve1D(K1, 200).forward(x).sum(), total, rtol=1e-10)
    assert np.isclose(Rebin((3, 3, 5)).forward(x).sum(), total, rtol=1e-12)
    assert np.isclose(SpatialMatrix.from_psf(K2[:, :5] / K2[:, :5].sum(), (30, 30), 3).forward(x).sum(), total)


@pytest.mark.parametrize("role", [SPATIAL, SPECTRAL])
@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-10), (np.float32, 1e-4)])
def test_composed_models_dot_product(small_toy, role, dtype, tol):
    x_obs, y_obs, truth = small_toy
    grid = fusion_grid(x_obs, y_obs)
    model = build_model(grid, x_obs if role == SPATIAL else y_obs, role)
    assert dottest(model, truth.shape, dtype) <= tol


def test_realistic_models_dot_product():
    from xfusion import toy

    x_obs, y_obs, truth = toy.make("realistic_rebin", x={"shape": [15, 15], "n_channels": 12}, y={"n_channels": 240})
    grid = fusion_grid(x_obs, y_obs)
    for obs, role in ((x_obs, SPATIAL), (y_obs, SPECTRAL)):
        assert dottest(build_model(grid, obs, role), truth.shape) <= 1e-10


def test_large_field_uses_fft_path_and_agrees_with_dense():
    """Above DENSE_SPATIAL_MAX the Y model uses FFT + rebin; both paths give the same counts."""
    import xfusion.operators.model as model_mod
    from xfusion import toy

    x_obs, y_obs, truth = toy.make("small")
    grid = fusion_grid(x_obs, y_obs)
    dense = build_model(grid, y_obs, SPECTRAL)
    old = model_mod.DENSE_SPATIAL_MAX
    model_mod.DENSE_SPATIAL_MAX = 0
    try:
        fft = build_model(grid, y_obs, SPECTRAL)
    finally:
        model_mod.DENSE_SPATIAL_MAX = old
    assert isinstance(dense.spatial, SpatialMatrix) and not isinstance(fft.spatial, SpatialMatrix)
    z = truth.values.astype(np.float64)
    np.testing.assert_allclose(dense.forward(z), fft.forward(z), rtol=1e-9, atol=1e-20)
    assert dottest(fft, z.shape) <= 1e-10
