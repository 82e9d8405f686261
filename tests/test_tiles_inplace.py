"""Issue 18 (session 9): a tile's block-sparse footprint read straight from the fused cube and its adjoint added into
the caller's cube in place (:meth:`BlockFootprint.forward_from`, :meth:`BlockFootprint.adjoint_add`,
:meth:`SharedGather.adjoint_add`): the same sums as gather + product and product + scatter + cube sum, bit for bit,
and the caller's cube is written only when it may be."""
import numpy as np
import pytest

from xfusion.operators.dottest import dottest
from xfusion.operators.footprint import BlockFootprint, Footprint, Gather
from xfusion.operators.group import SharedGather, group_models
from xfusion.operators.model import InstrumentModel

DTYPES = pytest.mark.parametrize("dtype", [np.float32, np.float64])


def _tile(r, hw, box, n_pixels, L):
    """A tile-like model: footprint x PSF non-zero on the fused pixels of ``box`` only (random sparsity inside)."""
    F = np.zeros((n_pixels,) + hw)
    x0, x1, y0, y1 = box
    F[:, x0:x1, y0:y1] = r.random((n_pixels, x1 - x0, y1 - y0)) * (r.random((n_pixels, x1 - x0, y1 - y0)) < 0.6)
    return InstrumentModel(r.random(L) + 0.5, None, Footprint(F.reshape(n_pixels, -1), hw), hw + (L,), (n_pixels, L))


@DTYPES
def test_block_footprint_reads_and_adds_into_the_cube_bit_for_bit(dtype):
    r = np.random.default_rng(3)
    hw, L, P = (9, 8), 6, 5
    columns = np.array([3, 4, 5, 11, 12, 13, 30, 31, 40, 2, 50, 51, 52, 60, 71])  # runs of consecutive pixels
    F = r.random((P, columns.size)) * (r.random((P, columns.size)) < 0.5)
    F[:, 9] = 0  # a box no detector pixel sees
    op = BlockFootprint(F, [0, 6, 9, 10, 14])
    runs = op.runs(columns)
    assert [len(x) for x in runs] == [2, 2, 1, 2, 1]
    cube = r.standard_normal((hw[0] * hw[1], L)).astype(dtype)
    gather = Gather(columns, hw)
    fwd = op.forward_from(cube, runs)
    assert fwd.dtype == dtype
    np.testing.assert_array_equal(fwd, op.forward(gather.forward(cube.reshape(hw + (L,)))))
    np.testing.assert_allclose(fwd, F @ cube[columns], rtol=0, atol=1e-5 if dtype == np.float32 else 1e-12)
    u = r.standard_normal((P, L)).astype(dtype)
    acc = r.standard_normal(cube.shape).astype(dtype)
    ref = acc + gather.adjoint(op.adjoint(u)).reshape(acc.shape)
    assert op.adjoint_add(u, acc, runs) is acc
    np.testing.assert_array_equal(acc, ref)
    with pytest.raises(ValueError, match="columns"):
        op.runs(columns[:-1])
    with pytest.raises(ValueError, match="dtype|float"):
        op.adjoint_add(u.astype(np.float64 if dtype == np.float32 else np.float32), acc, runs)


@DTYPES
def test_shared_gather_adds_into_an_owned_cube_only(dtype):
    r = np.random.default_rng(4)
    hw, L = (10, 9), 7
    models = [_tile(r, hw, (0, 6, 1, 7), 4, L), _tile(r, hw, (3, 10, 2, 9), 3, L)]
    z = r.standard_normal(hw + (L,)).astype(dtype)
    us = [r.standard_normal(m.data_shape).astype(dtype) for m in models]
    # a tile alone is a group of one: its model's sums bit for bit
    (one, idx), = group_models(models[:1])
    assert isinstance(one, SharedGather) and idx == [0]
    np.testing.assert_array_equal(one.forward(z)[0], models[0].forward(z))
    np.testing.assert_array_equal(one.adjoint(us[:1]), models[0].adjoint(us[0]))
    running = r.standard_normal(hw + (L,)).astype(dtype)  # e.g. pn's adjoint in the EM correction
    ref = running + models[0].adjoint(us[0])
    np.testing.assert_array_equal(one.adjoint_add(us[:1], running), ref)
    group = SharedGather(models)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    for f, m in zip(group.forward(z), models):
        np.testing.assert_allclose(f, m.forward(z), rtol=0, atol=tol * np.abs(f).max())

    class Stacked:  # the group as one operator: cube -> the members' data, concatenated
        def forward(self, x):
            return np.concatenate([f.ravel() for f in group.forward(x)])

        def adjoint(self, y):
            cut = np.cumsum([int(np.prod(m.data_shape)) for m in models])[:-1]
            return group.adjoint([p.reshape(m.data_shape) for p, m in zip(np.split(y, cut), models)])

    assert dottest(Stacked(), hw + (L,), dtype) <= (1e-4 if dtype == np.float32 else 1e-10)
    out = r.standard_normal(hw + (L,)).astype(dtype)
    before = out.copy()
    ref = before + group.adjoint(us)
    assert group.adjoint_add(us, out) is out  # the caller's running sum, written in place
    np.testing.assert_allclose(out, ref, rtol=0, atol=tol * np.abs(ref).max())
    # a cube it may not write (read-only, another dtype): a new array, the cube untouched
    frozen = before.copy()
    frozen.flags.writeable = False
    res = group.adjoint_add(us, frozen)
    assert res is not frozen
    np.testing.assert_array_equal(frozen, before)
    np.testing.assert_allclose(res, ref, rtol=0, atol=tol * np.abs(ref).max())
    other = before.astype(np.float64 if dtype == np.float32 else np.float32)
    res = group.adjoint_add(us, other)
    assert res is not other and res.dtype == np.float64
    np.testing.assert_array_equal(other, before.astype(other.dtype))
