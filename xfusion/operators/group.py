"""Observations evaluated together: the models of several inputs that share their first operator (issue 18).

A fit with many inputs sums one Poisson term per input, and the EM correction is ``sum_i H_i^T(d_i / H_i z)``.
Inputs whose models start with the same KIND of operator on the same fused cube can share that first step:

* :class:`SharedResponse`: models that start with a dense spectral response on the fused cube (EPIC-pn, MOS1,
  MOS2: ``H_i = T_i R_i``, ``R_i`` an (L, l_i) :class:`~xfusion.operators.response.ResponseMatrix` with the
  exposure x area folded in, ``T_i`` the rest, e.g. MOS's PSF on its data). Forward: ONE product of the cube
  (M N, L) with the stacked matrix ``[R_1 | ... | R_n]`` (L, sum l_i) (the cube is read once), then each ``T_i`` on
  its columns. Adjoint: each ``T_i^T u_i`` written into its columns of one (M N, sum l_i) array, then ONE product
  with the stacked matrix's transpose: ``sum_i R_i^T T_i^T u_i`` without a cube per input and the sums of cubes.
* :class:`SharedGather`: models that start with a :class:`~xfusion.operators.footprint.Gather` of the fused pixels
  they see and a :class:`~xfusion.operators.footprint.BlockFootprint` (the tiles of a mosaic: ``H_i = T_i F_i G_i``,
  ``F_i`` footprint x PSF on the pixels tile i sees, ``T_i`` its exposure x area weights). The members' footprints
  are stacked into ONE (sum P_i, C) matrix on the union of the pixels they see, stored by blocks on boxes of b x b
  fused pixels of the union (b chosen for the stack by :func:`~xfusion.operators.footprint._boxes`; block k holds
  the rows of EVERY tile that sees box k). Forward: each box read straight from the fused cube, run of consecutive
  pixels by run, into one small buffer (no gathered copy). Adjoint: the tiles' ``T_i^T u_i`` stacked, one product
  per box ADDED run by run into the cube: ``sum_i G_i^T F_i^T T_i^T u_i`` without a zero cube, a scatter and a cube
  sum. :meth:`SharedGather.adjoint_add` adds into the caller's running sum (the EM correction) in place. A tile
  alone is a group of one (session 9): its model's sums, bit for bit, added into the other inputs' adjoint.

Each group is the same linear map as its members (the stacked operator ``z -> (H_1 z, ..., H_n z)``; adjoint
``(u_1, ..., u_n) -> sum_i H_i^T u_i``) up to float round-off (products summed in another order).
:func:`group_models` finds the groups of a list of models; a solver evaluates a group with ``forward(z)`` (a list
of the members' data arrays) and ``adjoint(us)`` (one cube) or ``adjoint_add(us, out)`` (``out`` plus it, in place
when ``out`` is the caller's own array). In memory only (NumPy arrays): the Dask backend runs the members one by
one (a tile there: every pixel block's share of its footprint, :mod:`xfusion.backends.blockwise`).

Measured (session 8, 72x72x400 mosaic scene, one BLAS thread, CPU ms per RL iteration with forward, data term,
adjoint and sum, each timed in place; ``benchmarks/mosaic.py --sections profile``): pn + MOS1 + MOS2 16.5-17.8
(one by one 23), the four tiles 10.2-11.2 (one by one 19); a whole iteration of the 7 inputs 27-28 ms against 43-45
(details in ``docs/mosaic.rst``, "Cost of an input"). Session 9 (cube read and written in place, same profile, load
5-6): tile 1 alone 4.2 -> 2.9 ms, the four tiles 10.1 -> 8.1 ms; boxes smaller than 12 pixels save multiply-adds
(6 x 6: 23% fewer) but cost more than they save (about 10 us per extra block, measured). Building a
:class:`SharedGather` forms the dense stacked (sum P_i, C) matrix once (144 x 5184 here) to choose its boxes.
"""
from __future__ import annotations

import numpy as np

from .footprint import BlockFootprint, Gather, _boxes
from .response import ResponseMatrix


def _dt(a):
    return a.dtype if a.dtype in (np.float32, np.float64) else np.dtype(np.float64)


def _rest(model, k):
    """The operators of ``model`` after its first ``k`` (first applied first)."""
    return model.ops[k:]


def _apply(ops, x, adjoint=False):
    for op in (reversed(ops) if adjoint else ops):
        x = op.adjoint(x) if adjoint else op.forward(x)
    return x


class SharedResponse:
    """Models ``H_i = T_i R_i`` starting with a dense :class:`ResponseMatrix` ``R_i`` (L, l_i) on the same fused
    cube (M, N, L): forward ``z -> [T_i((z R)[:, :, cols_i])]`` with ``R = [R_1 | ... | R_n]``; adjoint
    ``[u_i] -> (stack_i T_i^T u_i) R^T`` (see the module notes). ``members``: the models."""

    def __init__(self, members):
        self.members = list(members)
        mats = [m.ops[0].matrix for m in self.members]
        self.fused_shape = tuple(self.members[0].fused_shape)
        if any(m.fused_shape != self.fused_shape for m in self.members) or any(
                r.shape[0] != self.fused_shape[2] for r in mats):
            raise ValueError("SharedResponse: the members must act on the same fused cube")
        R = np.hstack([np.asarray(r, np.float64) for r in mats])
        self._R = {np.dtype(np.float64): R, np.dtype(np.float32): R.astype(np.float32)}
        self.bounds = np.r_[0, np.cumsum([r.shape[1] for r in mats])]
        self.rests = [_rest(m, 1) for m in self.members]

    def forward(self, z):
        dt = _dt(z)
        M, N, L = self.fused_shape
        y = np.asarray(z, dtype=dt).reshape(M * N, L) @ self._R[dt]
        out = []
        for a, e, rest in zip(self.bounds[:-1], self.bounds[1:], self.rests):
            part = np.ascontiguousarray(y[:, a:e]).reshape(M, N, e - a)
            out.append(_apply(rest, part))
        return out

    def adjoint(self, us):
        dt = _dt(us[0])
        M, N, L = self.fused_shape
        buf = np.empty((M * N, int(self.bounds[-1])), dtype=dt)
        for a, e, rest, u in zip(self.bounds[:-1], self.bounds[1:], self.rests, us):
            buf[:, a:e] = np.asarray(_apply(rest, u, adjoint=True), dtype=dt).reshape(M * N, e - a)
        return (buf @ self._R[dt].T).reshape(M, N, L)

    def adjoint_add(self, us, out):
        """``out + adjoint(us)`` (a new array: the same sum as the caller's ``np.add``)."""
        return np.add(out, self.adjoint(us))


class SharedGather:
    """Models ``H_i = T_i F_i G_i`` starting with a :class:`Gather` ``G_i`` and a :class:`BlockFootprint` ``F_i``
    on the same fused field (the tiles of a mosaic; also a tile alone): the members' footprints stacked into ONE
    block-sparse (sum P_i, C) matrix on boxes of the union of the pixels they see, each box read straight from the
    fused cube (:meth:`BlockFootprint.forward_from`: no gathered copy); the adjoints of the members stacked and
    ADDED box by box into one cube (:meth:`BlockFootprint.adjoint_add`; into the caller's running sum with
    :meth:`adjoint_add`: no zero cube, scatter or cube sum). A single member has its model's boxes: the same sums
    as the model, bit for bit (module notes)."""

    def __init__(self, members):
        self.members = list(members)
        self.in_hw = self.members[0].ops[0].in_hw
        self.fused_shape = tuple(self.members[0].fused_shape)
        if any(m.ops[0].in_hw != self.in_hw or m.fused_shape != self.fused_shape for m in self.members):
            raise ValueError("SharedGather: the members must act on the same fused cube")
        union = np.unique(np.concatenate([m.ops[0].columns for m in self.members]))
        F = np.zeros((sum(m.ops[1].n_pixels for m in self.members), union.size))
        r = 0
        for m in self.members:  # member i's rows, its columns placed at its pixels' union positions
            g, fp = m.ops[:2]
            F[r:r + fp.n_pixels, np.searchsorted(union, g.columns)] = fp.matrix
            r += fp.n_pixels
        order, starts = _boxes(F, union, self.in_hw[1])
        self.gather = Gather(union[order], self.in_hw)
        self.footprint = BlockFootprint(F[:, order], starts)
        self.rows = np.r_[0, np.cumsum([m.ops[1].n_pixels for m in self.members])]
        self.rests = [_rest(m, 2) for m in self.members]
        self._runs = self.footprint.runs(self.gather.columns)

    @property
    def columns(self):
        """The fused pixels (flat indices) the members see, in the order of the boxes."""
        return self.gather.columns

    def forward(self, z):
        M, N, L = self.fused_shape
        flat = np.ascontiguousarray(np.asarray(z, dtype=_dt(z)).reshape(M * N, L))
        y = self.footprint.forward_from(flat, self._runs)  # (sum P_i, L)
        return [_apply(rest, y[a:e]) if rest else y[a:e].copy() for a, e, rest in
                zip(self.rows[:-1], self.rows[1:], self.rests)]

    def _add(self, us, flat):
        v = np.empty((int(self.rows[-1]), flat.shape[1]), dtype=flat.dtype)
        for a, e, rest, u in zip(self.rows[:-1], self.rows[1:], self.rests, us):
            v[a:e] = np.asarray(_apply(rest, u, adjoint=True), dtype=flat.dtype).reshape(e - a, flat.shape[1])
        return self.footprint.adjoint_add(v, flat, self._runs)

    def adjoint(self, us):
        M, N, L = self.fused_shape
        return self._add(us, np.zeros((M * N, L), dtype=_dt(us[0]))).reshape(M, N, L)

    def adjoint_add(self, us, out):
        """``out + adjoint(us)``, added INTO ``out`` when it is a C-contiguous, writeable fused cube of the members'
        float dtype sharing no memory with ``us`` (the caller's running sum of adjoints, which it owns: e.g. the
        EM correction); otherwise a new array. The same sums as ``out + adjoint(us)`` (bit for bit for one
        member)."""
        dt = _dt(us[0])
        if not (isinstance(out, np.ndarray) and out.shape == self.fused_shape and out.dtype == dt
                and out.flags.c_contiguous and out.flags.writeable
                and not any(np.may_share_memory(out, u) for u in us)):
            return np.add(out, self.adjoint(us))
        M, N, L = self.fused_shape
        self._add(us, out.reshape(M * N, L))
        return out


def _kind(model):
    """What a model can share with others: ``("response", ...)``, ``("gather", ...)`` or None."""
    ops = getattr(model, "ops", None)
    if not ops:
        return None
    first = ops[0]
    shape = tuple(getattr(model, "fused_shape", ()))
    if isinstance(first, ResponseMatrix) and not first.sparse and len(shape) == 3:
        return ("response", shape)
    if isinstance(first, Gather) and len(ops) > 1 and isinstance(ops[1], BlockFootprint) and len(shape) == 3:
        return ("gather", shape, first.in_hw)
    return None


def group_models(models):
    """Groups of ``models`` (a list of :class:`~xfusion.operators.model.InstrumentModel`) evaluated together:
    a list of ``(group, indices)`` in the order of each group's first member, ``group`` a :class:`SharedResponse`
    of the models at ``indices`` (two or more), a :class:`SharedGather` of the tiles at ``indices`` (one or more: a
    tile alone adds its adjoint into the others' in place), or None for a model evaluated alone (``indices`` of
    length 1). Every index appears once."""
    keys = [_kind(m) for m in models]
    out, seen = [], {}
    for i, k in enumerate(keys):
        if k is None or (keys.count(k) < 2 and k[0] != "gather"):
            out.append((None, [i]))
        elif k not in seen:
            seen[k] = len(out)
            out.append((k, [i]))
        else:
            out[seen[k]][1].append(i)
    groups = []
    for k, idx in out:
        if k is None:
            groups.append((None, idx))
        else:
            cls = SharedResponse if k[0] == "response" else SharedGather
            groups.append((cls([models[i] for i in idx]), idx))
    return groups
