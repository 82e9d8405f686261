"""Dask backend: any operator, likelihood kernel or regularizer on pixel blocks of a Dask cube.

The fused cube is chunked in pixel blocks holding the whole energy axis, ``(b_x, b_y, L)``; data
cubes are chunked to cover the same sky (``(b_x / v, b_y / v, l)`` for data rebinned by ``v``).
Nothing here knows a formula: it only decides where blocks run (the interface is
:mod:`xfusion.solvers.backend`).

* Operators (:mod:`xfusion.operators.blocks`): a composition is split into runs of operators with
  a block form, each run applied to every block extended by its halo (``depth``; zeros beyond the
  field: the operators' boundary rule) in its 'valid' form, which changes the block shape by the
  rebinning factor (``b -> b / v``; the adjoint ``b -> b v``). A position-dependent
  :class:`~xfusion.operators.area.Scale` (vignetted weights) multiplies each block by the
  weights of its pixels, built on the worker from the compact
  :class:`~xfusion.operators.area.AreaMap` (the (M, N, L) weights never exist on the client;
  an (M, N, L) array given as weights is sent chunked like the cube). Blocks smaller than the halo are merged for that
  operator (and split back after), so any chunking works, kernels larger than a chunk included.
  Operators and regularizers are sent to the workers once per backend (persisted), not with
  every task.
* Whole-field detector maps (a Resolve tile's footprint x PSF: :func:`~xfusion.operators.footprint.field_matrix`,
  (P, M N)) are cut by the cube's pixel blocks (:func:`~xfusion.operators.footprint.block_columns`, sent once):
  the forward is one task per block that holds any of the map's pixels (its share ``F_b z_b``, (P, K)) and one
  task summing them; the adjoint one task per block (``F_b^T u``; zeros where the map reads nothing). The
  operators after the map (weights over energy and per detector pixel) act on its small (P, K) output in one
  task. Same sums as in memory up to float round-off (added block by block).
* Halos: ONE task per block gathers the block's halo from its neighbouring blocks and runs the
  operator or regularizer on it (:func:`_halo_map`; the same block as ``dask.array.overlap`` with
  that boundary builds, bit for bit, without its ~10-20 slicing, concatenation and boundary tasks per
  block). Blocks over ``rim_bytes`` (8 MiB) send their neighbours only their rims (one small task per
  block), so a task never holds its 8 neighbouring blocks whole. Measured (benchmarks/dask_tasks.py,
  EM + 2D-1D starlet, 30x30x240 in 4 blocks): 385 -> 93 tasks per iteration.
* Regularizers: ``block_statistics`` on blocks with the regularizer's halo and boundary
  (``symmetric``: ``np.pad``'s mode, which repeats the edge sample, = Dask's ``reflect``) gives small per-block
  parts that come back to the client for ``combine`` (e.g. medians of the lattice sample);
  ``block_apply`` then runs with those statistics, blockwise.
* Totals (``total``, the prox's penalty): one float per block, summed by ONE task (:func:`_summed`).
* ``finish`` persists the state's arrays and computes its scalars AND the statistics' parts of
  the new state in one pass.

So one iteration of EM + prox is one graph and one round trip: prox of ``z_half`` with the
statistics carried in the state -> ``z`` -> data terms and the next ``z_half`` -> its statistics'
parts; only scalars and the lattice samples reach the client. The regularizer's 2D transform is
computed twice per iteration (statistics, then prox): storing its coefficient cubes would cost
more memory. The graphs have the same number of tasks at every iteration (``graph_sizes``
records them when ``record`` is set).
"""
from __future__ import annotations

import dask
import dask.array as da
import numpy as np
from dask.base import tokenize
from dask.core import flatten
from dask.highlevelgraph import HighLevelGraph

from ..operators import blocks
from ..operators.footprint import block_columns, field_matrix

try:  # dask >= 2024.12 describes tasks with Task / TaskRef; older versions take tuples
    from dask._task_spec import Task, TaskRef
except ImportError:  # pragma: no cover
    Task = TaskRef = None

#: a block's boundary rule -> ``np.pad`` mode (``symmetric`` repeats the edge sample: Dask's ``reflect``; ``odd``:
#: point-symmetric about the edge sample, ``(mode, reflect_type)``)
_PAD = {"symmetric": "symmetric", "zero": "constant", "odd": ("reflect", "odd")}
#: blocks larger than this (bytes) send only their rims (``halo`` pixels wide, one small task per block) to their
#: neighbours; smaller ones are read whole by their neighbours' tasks (no extra task)
RIM_BYTES = 8 * 2 ** 20


def _task(key, func, *args):
    return (func,) + args if Task is None else Task(key, func, *args)


def _ref(key):
    return key if TaskRef is None else TaskRef(key)


def _rim(x, hx, hy):
    """The parts of block ``x`` its neighbours read: ``(first hx rows, last hx rows, first hy columns, last hy
    columns)`` (copies: a neighbour on another worker receives only these)."""
    return (x[:hx].copy(), x[x.shape[0] - hx:].copy(), x[:, :hy].copy(), x[:, x.shape[1] - hy:].copy())


def _piece(p, a, b, hx, hy):
    """What the block at offset ``(a - 1, b - 1)`` from a block gives to that block's halo: its last ``hx`` rows
    (a = 0, above), all rows (a = 1) or its first ``hx`` rows (a = 2); columns alike. ``p``: the whole neighbour
    block or its :func:`_rim`."""
    if isinstance(p, np.ndarray):
        rows = (slice(p.shape[0] - hx, None), slice(None), slice(0, hx))[a]
        cols = (slice(p.shape[1] - hy, None), slice(None), slice(0, hy))[b]
        return p[rows, cols]
    if a != 1:
        r = p[1] if a == 0 else p[0]
        return r[:, (slice(r.shape[1] - hy, None), slice(None), slice(0, hy))[b]]
    return p[3] if b == 0 else p[2]


def _assemble(nb, halo, mode):
    """The centre block of ``nb`` (9 blocks, row-major 3x3 neighbourhood; None beyond the field) extended by
    ``halo = (hx, hy)`` pixels taken from its neighbours and, beyond the field, by ``np.pad`` ``mode``
    (zeros, the half-sample symmetric or the point-symmetric extension): the block ``dask.array.overlap.overlap``
    with that boundary builds,
    bit for bit (padding is separable per axis, so padding the gathered block equals padding the field)."""
    hx, hy = halo
    ra = [a for a in range(3) if a == 1 or nb[3 * a + 1] is not None]
    ca = [b for b in range(3) if b == 1 or nb[3 + b] is not None]
    rows = []
    for a in ra:
        ps = [nb[4] if (a, b) == (1, 1) else _piece(nb[3 * a + b], a, b, hx, hy) for b in ca]
        rows.append(ps[0] if len(ps) == 1 else np.concatenate(ps, axis=1))
    x = rows[0] if len(rows) == 1 else np.concatenate(rows, axis=0)
    pad = ((hx * (0 not in ra), hx * (2 not in ra)), (hy * (0 not in ca), hy * (2 not in ca)))
    if not any(pad[0] + pad[1]):
        return x
    kw = {"mode": mode} if isinstance(mode, str) else {"mode": mode[0], "reflect_type": mode[1]}
    return np.pad(x, pad + ((0, 0),) * (x.ndim - 2), **kw)


def _haloed(func, halo, mode, lead, *args):
    """``func(*args[:lead], *blocks)`` with ``blocks`` the haloed blocks (:func:`_assemble`) of the 3x3
    neighbourhoods that follow (9 arguments per array)."""
    nbs = args[lead:]
    return func(*args[:lead], *(_assemble(nbs[k:k + 9], halo, mode) for k in range(0, len(nbs), 9)))


def _fsum(*parts):
    """Sum of per-block floats (float64, block order)."""
    return np.float64(sum(float(np.sum(p, dtype=np.float64)) for p in parts))


def _meta(dtype):
    return np.empty((0, 0, 0), dtype=dtype)


def _offsets(chunks):
    return tuple(int(o) for o in np.concatenate([[0], np.cumsum(chunks)[:-1]]))


def _boxed(x):
    out = np.empty((1, 1, 1), dtype=object)
    out[0, 0, 0] = x
    return out


def _scalar_block(f, *args):
    nd = next(a.ndim for a in args if isinstance(a, np.ndarray))
    return np.full((1,) * nd, f(*args), dtype=np.float64)


def _op_block(op, adjoint, halo, x):
    return blocks.adjoint_block(op, x, halo) if adjoint else blocks.forward_block(op, x, halo)


def _stats_block(reg, halo, shape, origin, zo, *noise):
    kw = {"noise": noise} if noise else {}
    return _boxed(reg.block_statistics(zo, halo, shape, origin, **kw))


def _apply_block(reg, halo, stats, origin, zo, *noise):
    kw = {"noise": noise} if noise else {}
    if getattr(reg, "uses_origin", False):  # e.g. the 2D-1D prior's line step at given pixels
        kw["origin"] = origin
    z, pen = reg.block_apply(zo, halo, stats, **kw)
    return z, np.full((1, 1, 1), pen, dtype=np.float64)


def _field_forward_block(Fb, zb):
    """One pixel block's share ``Fb z_b`` (P, K) of a whole-field map's forward."""
    return np.asarray(Fb @ zb.reshape(-1, zb.shape[-1]), dtype=zb.dtype)


def _field_adjoint_block(Fb, u, bx, by):
    """One pixel block ``(Fb^T u)`` (bx, by, K) of a whole-field map's adjoint."""
    return np.asarray(Fb.T @ u, dtype=u.dtype).reshape(bx, by, u.shape[-1])


def _field_sum(shape, dtype, *parts):
    """The sum of the blocks' shares (block order; zeros when no block has any)."""
    out = np.zeros(shape, dtype=dtype)
    for p in parts:
        out += p
    return out


def _zeros(shape, dtype):
    return np.zeros(shape, dtype=dtype)


def _rest_block(ops, adjoint, x):
    """Operators that follow a whole-field map, on its small (P, K) output, in memory (one task)."""
    for op in (reversed(ops) if adjoint else ops):
        x = op.adjoint(x) if adjoint else op.forward(x)
    return x


class _FieldMap:
    """A whole-field detector map ``F`` (P, M N) (:func:`xfusion.operators.footprint.field_matrix`) in a model's
    operators, and the operators after it (``rest``: they act on its (P, K) output, in memory)."""

    def __init__(self, parts, F, rest):
        self.parts, self.F, self.rest = parts, F, rest


def _scale_block(op, ox, oy, x, block_id=None):
    i, j = block_id[0], block_id[1]
    w = op.weights_block(ox[i], ox[i] + x.shape[0], oy[j], oy[j] + x.shape[1])
    return x * w.astype(x.dtype, copy=False)


def _keys(x):
    """The block keys of ``x`` (one chunk along the energy axis) as ``{(i, j): key}``."""
    return {k[1:3]: k for k in flatten(x.__dask_keys__())}


def _halo_map(prefix, func, lead, arrays, halo, mode, chunks, dtype, per_block=None, rim_bytes=RIM_BYTES):
    """Dask array (``chunks``, ``dtype``) whose block ``(i, j)`` is ``func(*lead, *per_block(i, j), *haloed)``, with
    ``haloed`` the blocks ``(i, j)`` of ``arrays`` (same pixel chunks, one chunk along energy, every chunk at least
    ``halo`` pixels) extended by ``halo = (hx, hy)`` pixels of their neighbours and, beyond the field, by ``mode``
    (:func:`_assemble`).

    ONE task per block: it reads the neighbouring blocks (or, for blocks over ``rim_bytes``, their rims: one
    more small task per block) and gathers its halo itself, where ``dask.array.overlap`` adds a slicing task per
    neighbour piece, a concatenation per block and the boundary blocks (~10-20 tasks per block and halo, which
    dominated the task count of an iteration). ``lead`` may hold ``dask.delayed`` objects (e.g. sent operators)."""
    from dask.delayed import Delayed

    hx, hy = int(halo[0]), int(halo[1])
    head, deps = [], list(arrays)
    for v in lead:
        if isinstance(v, Delayed):
            deps.append(v)
            head.append(_ref(v.key))
        else:
            head.append(v)
    token = tokenize(func, [v.key if isinstance(v, Delayed) else v for v in lead], [a.name for a in arrays], hx, hy,
                     mode, chunks, np.dtype(dtype).str)
    name = f"{prefix}-halo-{token}"
    nx, ny = len(arrays[0].chunks[0]), len(arrays[0].chunks[1])
    layer, sources = {}, []
    for a in arrays:
        if len(a.chunks[2]) != 1 or a.chunks[:2] != arrays[0].chunks[:2]:
            raise ValueError(f"haloed blocks need one chunk along energy and the same pixel chunks; got {a.chunks}")
        keys, rims = _keys(a), None
        if (hx or hy) and max(a.chunks[0]) * max(a.chunks[1]) * a.chunks[2][0] * a.dtype.itemsize > rim_bytes:
            rname = f"rim-{tokenize(a.name, hx, hy)}"  # shared by the haloed tasks that read the same blocks
            rims = {ij: (rname,) + ij for ij in keys}
            for ij, key in keys.items():
                layer[rims[ij]] = _task(rims[ij], _rim, _ref(key), hx, hy)
        sources.append((keys, rims or keys))
    for i in range(nx):
        for j in range(ny):
            refs = []
            for keys, far in sources:
                for a in (-1, 0, 1):
                    for b in (-1, 0, 1):
                        inside = 0 <= i + a < nx and 0 <= j + b < ny and (hx or not a) and (hy or not b)
                        refs.append(None if not inside else _ref((keys if (a, b) == (0, 0) else far)[i + a, j + b]))
            extra = list(per_block(i, j)) if per_block is not None else []
            key = (name, i, j, 0)
            layer[key] = _task(key, _haloed, func, (hx, hy), mode, len(head) + len(extra), *head, *extra, *refs)
    graph = HighLevelGraph.from_collections(name, layer, dependencies=deps)
    return da.Array(graph, name, chunks=chunks, dtype=dtype, meta=_meta(dtype))


def _items(t, i, chunks, dtype):
    """Dask array of item ``i`` of every block of ``t`` (blocks that are tuples), one small task per block."""
    import operator

    name = f"item{i}-{tokenize(t.name, i)}"
    layer = {(name,) + k[1:]: _task((name,) + k[1:], operator.getitem, _ref(k), i)
             for k in flatten(t.__dask_keys__())}
    return da.Array(HighLevelGraph.from_collections(name, layer, dependencies=[t]), name, chunks=chunks, dtype=dtype,
                    meta=_meta(dtype))


def _summed(parts):
    """0-d Dask array: the float64 sum of the blocks of ``parts`` (per-block floats) in ONE task (a ``.sum()``
    adds a task per block and a tree of aggregations)."""
    name = f"total-{tokenize(parts.name)}"
    keys = [_ref(k) for k in flatten(parts.__dask_keys__())]
    graph = HighLevelGraph.from_collections(name, {(name,): _task((name,), _fsum, *keys)}, dependencies=[parts])
    return da.Array(graph, name, chunks=(), dtype=np.float64, meta=np.empty((), np.float64))


def _merged(chunks, need, unit):
    """Chunks of one axis merged until each is >= ``need`` (boundaries kept: multiples of ``unit`` stay so)."""
    if need <= min(chunks):
        return tuple(chunks)
    out, cur = [], 0
    for c in chunks:
        cur += c
        if cur >= need:
            out.append(cur)
            cur = 0
    if cur:
        if out:
            out[-1] += cur
        else:
            out.append(cur)
    return tuple(out)


class DaskBackend:
    """Solver backend on Dask arrays (see the module notes).

    ``chunks``: the fused cube's chunks ``((b_x, ...), (b_y, ...), (L,))``; ``client``: optional
    ``distributed.Client`` (default: the active scheduler). ``rim_bytes``: blocks larger than this send only their
    rims to their neighbours' haloed tasks (:func:`_halo_map`; default :data:`RIM_BYTES`).
    """

    def __init__(self, chunks, client=None, rim_bytes=RIM_BYTES):
        self.chunks = tuple(tuple(int(c) for c in ax) for ax in chunks)
        self.client = client
        self.rim_bytes = int(rim_bytes)
        self._sent, self._probes = {}, {}
        self.record, self.graph_sizes = False, []

    # -- scheduling ------------------------------------------------------------------
    def _compute(self, colls):
        self._note(colls)
        if self.client is not None:
            return list(self.client.gather(self.client.compute(list(colls))))
        return list(dask.compute(*colls))

    def _persist(self, colls):
        self._note(colls)
        if self.client is not None:
            return list(self.client.persist(list(colls)))
        return list(dask.persist(*colls))

    def _note(self, colls):
        if self.record:
            keys = {}
            for c in colls:
                keys.update(dict(c.__dask_graph__()))
            self.graph_sizes.append(len(keys))

    def _send(self, obj, key=None, make=None):
        """``obj`` (an operator, regularizer, list of operators or cube-shaped array) as a Dask object on
        the workers, sent once per ``key`` (default: the object's identity; the object is kept, so its
        id stays unique). ``make()`` builds the value to send when it differs from ``obj``."""
        key = ("id", id(obj)) if key is None else key
        if key not in self._sent:
            val = obj if make is None else make()
            if isinstance(val, np.ndarray) and val.ndim == 3:
                d = da.from_array(val, chunks=self.chunks[:2] + (val.shape[2],))
            else:
                d = dask.delayed(val, pure=True)
            self._sent[key] = (obj, self._persist([d])[0])
        return self._sent[key][1]

    def persist(self, x):
        return self._persist([x])[0]

    def cube(self, z0, shape, dtype):
        if isinstance(z0, da.Array):
            z = z0.astype(dtype)
            return z.rechunk(self.chunks) if z.chunks != self.chunks else z
        a = np.asarray(z0, dtype=dtype)
        if a.ndim == 0:
            return da.full(shape, a, chunks=self.chunks, dtype=dtype)
        return da.from_array(a, chunks=self.chunks)

    # -- local functions -----------------------------------------------------------------
    def _arg(self, a):
        if isinstance(a, np.ndarray) and a.ndim == 3:
            return self._send(a)
        return a

    def map(self, f, *args):
        args = [self._arg(a) for a in args]
        like = next(a for a in args if isinstance(a, da.Array))
        return da.map_blocks(f, *args, dtype=like.dtype, meta=_meta(like.dtype))

    def peak(self, x):
        """Lazy largest value of ``x`` (a 0-d Dask array; 0 for an empty or all-negative ``x``, as in memory)."""
        return da.maximum(da.max(x), 0.0)

    def total(self, f, *args):
        """Lazy sum over the blocks of ``f(*blocks)`` (a float per block, float64)."""
        args = [self._arg(a) for a in args]
        like = next(a for a in args if isinstance(a, da.Array))
        one = tuple((1,) * len(c) for c in like.chunks)
        return _summed(da.map_blocks(_scalar_block, f, *args, chunks=one, dtype=np.float64, meta=_meta(np.float64)))

    # -- operators -------------------------------------------------------------------------
    def _field(self, ps):
        """``(F, n)`` of the whole-field map ``ps`` starts with, or None (cached per operator)."""
        key = ("field", id(ps[0]))
        if key not in self._sent:
            self._sent[key] = (ps[0], field_matrix(ps))
        return self._sent[key][1]

    def _runs(self, op):
        """The parts of ``op`` in the order applied: lists of operators with block forms (one haloed pass each),
        position-dependent weights, and at most one :class:`_FieldMap` (a whole-field detector map, e.g. a
        Resolve tile's footprint x PSF) that takes the operators after it along."""
        run, ps = [], blocks.parts(op)
        for k, p in enumerate(ps):
            fm = None if hasattr(p, "forward_valid") else self._field(ps[k:])
            if fm is not None:
                if run:
                    yield run
                yield _FieldMap(ps[k:k + fm[1]], fm[0], ps[k + fm[1]:])
                return
            if getattr(p, "position_dependent", False):
                if run:
                    yield run
                    run = []
                yield p
            else:
                run.append(p)
        if run:
            yield run

    def supports(self, op):
        """Whether ``op`` runs on this backend: operators with block forms and position-dependent weights, then
        at most one whole-field detector map and anything after it (in memory, on the map's small output)."""
        for r in self._runs(op):
            if isinstance(r, list) and not blocks.has_block_form(r):
                return False
        return True

    def _field_blocks(self, fm, chunks, dtype):
        """``{(i, j): matrix sent to the workers, or None}``: the columns of ``fm.F`` of every pixel block."""
        key = ("fieldblocks", id(fm.parts[0]), chunks, np.dtype(dtype).str)
        if key not in self._sent:
            ox, oy = _offsets(chunks[0]), _offsets(chunks[1])
            hw = (sum(chunks[0]), sum(chunks[1]))
            mats = {}
            for i, cx in enumerate(chunks[0]):
                for j, cy in enumerate(chunks[1]):
                    b = block_columns(fm.F, hw, ox[i], ox[i] + cx, oy[j], oy[j] + cy, dtype)
                    mats[i, j] = None if b is None else self._persist([dask.delayed(b, pure=True)])[0]
            self._sent[key] = (fm.parts[0], mats)
        return self._sent[key][1]

    def _apply_field(self, fm, x, adjoint):
        """Forward: the cube's pixel blocks -> (P, K) (one task per block that the map reads, one sum), then
        ``rest`` in one task. Adjoint: ``rest``'s adjoint in one task, then (P, K) -> one block per pixel block
        of the fused cube (zeros where the map reads nothing)."""
        ops = self._send(fm.rest, ("ops",) + tuple(id(p) for p in fm.rest)) if fm.rest else None
        if not adjoint:
            chunks, P, K = x.chunks[:2], fm.F.shape[0], x.shape[2]
            mats = self._field_blocks(fm, chunks, x.dtype)
            name = f"field-{tokenize(x.name, id(fm.parts[0]))}"
            layer, parts = {}, []
            for ij, key in _keys(x).items():
                if mats[ij] is not None:
                    pk = (name + "-part",) + ij
                    layer[pk] = _task(pk, _field_forward_block, _ref(mats[ij].key), _ref(key))
                    parts.append(_ref(pk))
            out = (name, 0, 0)
            layer[out] = _task(out, _field_sum, (P, K), x.dtype.str, *parts)
            deps = [x] + [m for m in mats.values() if m is not None]
            y = da.Array(HighLevelGraph.from_collections(name, layer, dependencies=deps), name,
                         chunks=((P,), (K,)), dtype=x.dtype, meta=np.empty((0, 0), x.dtype))
            return y if ops is None else da.map_blocks(_rest_block, ops, False, y, dtype=x.dtype,
                                                       meta=np.empty((0, 0), x.dtype))
        u = x.rechunk((-1, -1))  # the (P, K) data in one chunk
        if ops is not None:
            u = da.map_blocks(_rest_block, ops, True, u, dtype=u.dtype, meta=np.empty((0, 0), u.dtype))
        chunks, K = self.chunks[:2], u.shape[1]
        mats = self._field_blocks(fm, chunks, u.dtype)
        ukey = next(iter(flatten(u.__dask_keys__())))
        name = f"fieldT-{tokenize(u.name, id(fm.parts[0]), chunks)}"
        layer = {}
        for i, cx in enumerate(chunks[0]):
            for j, cy in enumerate(chunks[1]):
                key = (name, i, j, 0)
                m = mats[i, j]
                layer[key] = (_task(key, _zeros, (cx, cy, K), u.dtype.str) if m is None else
                              _task(key, _field_adjoint_block, _ref(m.key), _ref(ukey), cx, cy))
        deps = [u] + [m for m in mats.values() if m is not None]
        return da.Array(HighLevelGraph.from_collections(name, layer, dependencies=deps), name,
                        chunks=chunks + ((K,),), dtype=u.dtype, meta=_meta(u.dtype))

    def _apply_run(self, run, x, adjoint):
        halo = blocks.adjoint_depth(run) if adjoint else blocks.depth(run)
        v = blocks.factor(run)
        if not adjoint and any(c % v[a] for a in range(2) for c in x.chunks[a]):
            raise ValueError(f"pixel chunks {x.chunks[:2]} must be multiples of the spatial factor {v}")
        chunks = tuple(_merged(x.chunks[a], halo[a], 1 if adjoint else v[a]) for a in range(2))
        xm = x if chunks == x.chunks[:2] else x.rechunk(chunks + (x.chunks[2],))
        scale = (lambda c, a: c * v[a]) if adjoint else (lambda c, a: c // v[a])
        key = (tuple(id(p) for p in run), adjoint, x.shape[2], x.dtype.str)
        if key not in self._probes:  # the output's channel count, from a block of the smallest legal size
            probe = np.zeros((2 * halo[0] + (1 if adjoint else v[0]), 2 * halo[1] + (1 if adjoint else v[1]),
                              x.shape[2]), x.dtype)
            self._probes[key] = _op_block(run, adjoint, halo, probe).shape[2]
        out = tuple(tuple(scale(c, a) for c in chunks[a]) for a in range(2)) + ((self._probes[key],),)
        ops = self._send(run, ("ops",) + key[0])
        if halo == (0, 0):
            y = da.map_blocks(_op_block, ops, adjoint, halo, xm, chunks=out, dtype=x.dtype, meta=_meta(x.dtype))
        else:  # one task per block: its halo gathered from the neighbouring blocks (zeros beyond the field) + the run
            y = _halo_map("op", _op_block, [ops, adjoint, halo], [xm], halo, "constant", out, x.dtype,
                          rim_bytes=self.rim_bytes)
        if chunks != x.chunks[:2]:
            y = y.rechunk(tuple(tuple(scale(c, a) for c in x.chunks[a]) for a in range(2)) + (out[2],))
        return y

    def _apply(self, op, x, adjoint):
        runs = list(self._runs(op))
        for r in (reversed(runs) if adjoint else runs):
            if isinstance(r, _FieldMap):
                x = self._apply_field(r, x, adjoint)
            elif isinstance(r, list):
                x = self._apply_run(r, x, adjoint)
            elif isinstance(r.area, np.ndarray):  # an (M, N, L) array: sent once, chunked like the cube
                w = self._send(r, ("weights", id(r), x.dtype.str), lambda: r.weights.astype(x.dtype))
                x = da.map_blocks(np.multiply, x, w, dtype=x.dtype, meta=_meta(x.dtype))
            else:  # a compact AreaMap: each block's weights built where the block is
                x = da.map_blocks(_scale_block, self._send(r), _offsets(x.chunks[0]), _offsets(x.chunks[1]), x,
                                  dtype=x.dtype, meta=_meta(x.dtype))
        return x

    def forward(self, op, z):
        return self._apply(op, z, False)

    def adjoint(self, op, u):
        return self._apply(op, u, True)

    # -- regularizers ------------------------------------------------------------------------
    def _halo(self, reg, z, noise=()):
        """``(halo, chunks, [z, *noise], one block per chunk)``: ``z`` and the cubes ``noise`` (shaped like ``z``)
        split alike, in blocks of at least the regularizer's halo (its tasks gather the halos: :func:`_halo_map`)."""
        halo = int(reg.depth)
        chunks = tuple(_merged(z.chunks[a], halo, 1) for a in range(2))
        out = []
        for x in (z,) + tuple(noise):
            x = self._arg(x)
            out.append(x if x.chunks[:2] == chunks else x.rechunk(chunks + (z.chunks[2],)))
        return halo, chunks, out, tuple((1,) * len(c) for c in chunks) + ((1,),)

    def normal(self, like, seed):
        return da.random.RandomState(seed).standard_normal(like.shape, chunks=like.chunks).astype(like.dtype)

    def statistics(self, reg, z, noise=()):
        """Lazy per-block parts of ``reg``'s statistics of ``z`` (an object array, one part per block), for
        :meth:`finish` to gather with the scalars; :meth:`combined` computes and combines them now. ``noise``:
        further cubes shaped like ``z`` that the regularizer reads (with the same halo)."""
        halo, chunks, zm, one = self._halo(reg, z, noise or ())
        ox, oy = _offsets(chunks[0]), _offsets(chunks[1])
        return _halo_map("stats", _stats_block, [self._send(reg), halo, tuple(z.shape)], zm, (halo, halo),
                         _PAD[reg.boundary], one, object, lambda i, j: [(ox[i], oy[j])], self.rim_bytes)

    def combined(self, reg, z, noise=()):
        return reg.combine(list(self._compute([self.statistics(reg, z, noise)])[0].ravel()))

    def prox(self, reg, z, stats=None, noise=()):
        if stats is None:  # not computed with the state (e.g. a state resumed without them): one more pass
            stats = self.combined(reg, z, noise)
        halo, chunks, zm, one = self._halo(reg, z, noise or ())
        ox, oy = _offsets(chunks[0]), _offsets(chunks[1])
        t = _halo_map("prox", _apply_block, [self._send(reg), halo, stats], zm, (halo, halo), _PAD[reg.boundary], one,
                      object, lambda i, j: [(ox[i], oy[j])], rim_bytes=self.rim_bytes)  # blocks: (z block, penalty)
        out = _items(t, 0, chunks + (z.chunks[2],), z.dtype)
        pen = _summed(_items(t, 1, one, np.float64))
        if chunks != z.chunks[:2]:
            out = out.rechunk(z.chunks)
        return out, pen

    # -- state --------------------------------------------------------------------------------
    def finish(self, arrays, scalars, stats=None):
        """Persist ``arrays``, the lazy ``scalars`` and the statistics' parts in ONE pass (shared
        intermediates computed once), then bring the scalars and parts back: one round trip."""
        names = list(arrays)
        lazy = [k for k, v in scalars.items() if isinstance(v, da.Array)]
        extra = [stats[1]] if stats is not None and stats[1] is not None else []
        kept = self._persist([arrays[k] for k in names] + [scalars[k] for k in lazy] + extra)
        out = dict(zip(names, kept))
        small = self._compute(kept[len(names):]) if len(kept) > len(names) else []
        got = dict(zip(lazy, small))
        out.update({k: float(got[k]) if k in got else float(v) for k, v in scalars.items()})
        if extra:
            reg = stats[0]
            out.update(reg.stats_scalars(reg.combine(list(small[-1].ravel()))))
        return out
