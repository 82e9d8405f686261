"""Haloed blocks of the Dask backend (xfusion.backends.blockwise._halo_map): one task per block gathers its halo
from the neighbouring blocks (whole, or their rims for large blocks); the blocks equal dask.array.overlap's, the
operators keep their adjoints, the prior its statistics and prox, and an iteration stays a few tasks per block."""
import numpy as np
import pytest
from dask.callbacks import Callback

from xfusion.backends.blockwise import DaskBackend, _halo_map
from xfusion.operators import Chain, Convolve2D, Rebin, Scale
from xfusion.regularizers.sparsity import Wavelet2D1D

da = pytest.importorskip("dask.array")

TOL = {np.float64: 1e-10, np.float32: 1e-4}


class Count(Callback):
    def __init__(self):
        super().__init__()
        self.n = 0

    def _posttask(self, key, result, dsk, state, id):
        self.n += 1


def _identity(x):
    return x


@pytest.mark.parametrize("rim_bytes", [2 ** 40, 0], ids=["whole_neighbours", "rims"])
@pytest.mark.parametrize("mode,boundary", [("constant", 0), ("symmetric", "reflect")])
def test_haloed_blocks_equal_dask_overlap(rim_bytes, mode, boundary):
    """Uneven chunks, halos of different depths per axis (one of them 0), at the field's edges and corners."""
    z = np.random.default_rng(3).standard_normal((16, 17, 5)).astype(np.float32)
    chunks = ((5, 7, 4), (6, 4, 7), (5,))
    x = da.from_array(z, chunks=chunks)
    for halo in ((3, 2), (4, 0), (0, 1)):
        ref = da.overlap.overlap(x, depth={0: halo[0], 1: halo[1], 2: 0},
                                 boundary={0: boundary, 1: boundary, 2: "none"}, allow_rechunk=False)
        got = _halo_map("t", _identity, [], [x], halo, mode, ref.chunks, z.dtype, rim_bytes=rim_bytes)
        np.testing.assert_array_equal(got.compute(), ref.compute())


OPS = {
    "conv2d": (lambda: Convolve2D(np.outer([0.1, 0.5, 1.0, 0.3, 0.05], [0.2, 1.0, 0.4]) + 0.01, (12, 10)),
               (12, 10, 6), (((3, 6, 3), (4, 2, 4)))),
    "chain_conv_rebin": (lambda: Chain([Scale(np.linspace(0.5, 1.5, 6)), Convolve2D(np.ones((7, 5)) / 35, (12, 12)),
                                        Rebin((3, 3, 1))]), (12, 12, 6), ((3, 6, 3), (6, 6))),
}


@pytest.mark.parametrize("name", OPS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
def test_operators_through_rims_equal_numpy_and_dot_test(name, dtype):
    """Blocks that send only their rims (some smaller than the kernel: merged first): forward and adjoint equal the
    in-memory ones, and the block-wise pair passes the dot test (float64 sums)."""
    make, shape, pix = OPS[name]
    op = make()
    B = DaskBackend(pix + ((shape[2],),), rim_bytes=0)
    r = np.random.default_rng(5)
    x = r.standard_normal(shape).astype(dtype)
    fx = B.forward(op, da.from_array(x, chunks=B.chunks))
    y = r.standard_normal(fx.shape).astype(dtype)
    aty = B.adjoint(op, da.from_array(y, chunks=fx.chunks))
    fx, aty = fx.compute(), aty.compute()
    for got, ref in ((fx, op.forward(x)), (aty, op.adjoint(y))):
        np.testing.assert_allclose(got, ref, rtol=0, atol=10 * TOL[dtype] * np.abs(ref).max())
    lhs, rhs = float(np.sum(fx.astype(np.float64) * y)), float(np.sum(x.astype(np.float64) * aty))
    assert abs(lhs - rhs) <= TOL[dtype] * max(abs(lhs), abs(rhs))


def test_prior_through_rims_and_tasks_per_block():
    """The 2D-1D prior's statistics and prox through rims equal Wavelet2D1D's in memory; a PSF forward, the
    statistics and the prox on 3x3 blocks run in at most a few tasks per block (dask.array.overlap took ~10-20 per
    block and halo: 385 tasks for an EM iteration on 2x2 blocks before, 93 after)."""
    reg = Wavelet2D1D(n_scales_2d=2, sample=None)  # halo 6: blocks of 6, 8 and 7 pixels
    z = np.random.default_rng(9).gamma(2.0, 1.0, (21, 21, 16)).astype(np.float32)
    ref_out, ref_pen = reg.prox(z, with_penalty=True)
    ref_stats = reg.statistics(z)
    for rim_bytes in (0, 2 ** 40):
        B = DaskBackend(((6, 8, 7), (7, 6, 8), (16,)), rim_bytes=rim_bytes)
        zd = B.cube(z, z.shape, z.dtype)
        assert B.combined(reg, zd)["sigma"] == ref_stats["sigma"]
        out, pen = B.prox(reg, zd, ref_stats)
        conv = B.forward(Convolve2D(np.ones((5, 5)) / 25, (21, 21)), zd)
        parts = B.statistics(reg, zd)
        with Count() as c:
            out, pen, conv, parts = B._compute([out, pen, conv, parts])
        np.testing.assert_allclose(out, ref_out, rtol=0, atol=1e-6 * np.abs(ref_out).max())
        assert float(pen) == pytest.approx(ref_pen, rel=1e-6)
        n_blocks = 9
        # prox: apply + 2 items per block + 1 sum; forward and statistics: 1 per block; the start's blocks; rims: 1
        # per block and haloed cube (the statistics and the prox share the rims of z)
        assert c.n <= n_blocks * (3 + 1 + 1 + 1) + 1 + (2 * n_blocks if rim_bytes == 0 else 0)
