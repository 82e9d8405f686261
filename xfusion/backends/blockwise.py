"""Dask backend: any operator, likelihood kernel or regularizer on pixel blocks of a Dask cube.

The fused cube is chunked in pixel blocks holding the whole energy axis, ``(b_x, b_y, L)``; data
cubes are chunked to cover the same sky (``(b_x / v, b_y / v, l)`` for data rebinned by ``v``).
Nothing here knows a formula: it only decides where blocks run (the interface is
:mod:`xfusion.solvers.backend`).

* Operators (:mod:`xfusion.operators.blocks`): a composition is split into runs of operators with
  a block form, each run applied with ``overlap(depth, boundary=0)`` (zeros beyond the field: the
  operators' boundary rule) + one ``map_blocks`` of its 'valid' form, which changes the block
  shape by the rebinning factor (``b -> b / v``; the adjoint ``b -> b v``). A position-dependent
  :class:`~xfusion.operators.area.Scale` (vignetted weights) multiplies each block by the
  weights of its pixels, built on the worker from the compact
  :class:`~xfusion.operators.area.AreaMap` (the (M, N, L) weights never exist on the client;
  an (M, N, L) array given as weights is sent chunked like the cube). Blocks smaller than the halo are merged for that
  operator (and split back after), so any chunking works, kernels larger than a chunk included.
  Operators and regularizers are sent to the workers once per backend (persisted), not with
  every task.
* Regularizers: ``block_statistics`` on blocks with the regularizer's halo and boundary
  (``symmetric`` = Dask's ``reflect``, which repeats the edge sample) gives small per-block
  parts that come back to the client for ``combine`` (e.g. medians of the lattice sample);
  ``block_apply`` then runs with those statistics, blockwise.
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

from ..operators import blocks

_BOUNDARY = {"symmetric": "reflect", "zero": 0}


def _meta(dtype):
    return np.empty((0, 0, 0), dtype=dtype)


def _offsets(chunks):
    return tuple(int(o) for o in np.concatenate([[0], np.cumsum(chunks)[:-1]]))


def _item(t, i):
    return t[0, 0, 0][i]


def _boxed(x):
    out = np.empty((1, 1, 1), dtype=object)
    out[0, 0, 0] = x
    return out


def _scalar_block(f, *args):
    return np.full((1, 1, 1), f(*args), dtype=np.float64)


def _op_block(op, adjoint, halo, x):
    return blocks.adjoint_block(op, x, halo) if adjoint else blocks.forward_block(op, x, halo)


def _stats_block(reg, halo, shape, ox, oy, zo, *noise, block_id=None):
    kw = {"noise": noise} if noise else {}
    return _boxed(reg.block_statistics(zo, halo, shape, (ox[block_id[0]], oy[block_id[1]]), **kw))


def _apply_block(reg, halo, stats, zo, *noise):
    z, pen = reg.block_apply(zo, halo, stats, **({"noise": noise} if noise else {}))
    return _boxed((z, np.full((1, 1, 1), pen, dtype=np.float64)))


def _scale_block(op, ox, oy, x, block_id=None):
    i, j = block_id[0], block_id[1]
    w = op.weights_block(ox[i], ox[i] + x.shape[0], oy[j], oy[j] + x.shape[1])
    return x * w.astype(x.dtype, copy=False)


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
    ``distributed.Client`` (default: the active scheduler).
    """

    def __init__(self, chunks, client=None):
        self.chunks = tuple(tuple(int(c) for c in ax) for ax in chunks)
        self.client = client
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

    def total(self, f, *args):
        """Lazy sum over the blocks of ``f(*blocks)`` (a float per block, float64)."""
        args = [self._arg(a) for a in args]
        like = next(a for a in args if isinstance(a, da.Array))
        one = tuple((1,) * len(c) for c in like.chunks)
        return da.map_blocks(_scalar_block, f, *args, chunks=one, dtype=np.float64, meta=_meta(np.float64)).sum()

    # -- operators -------------------------------------------------------------------------
    def _runs(self, op):
        run = []
        for p in blocks.parts(op):
            if getattr(p, "position_dependent", False):
                if run:
                    yield run
                    run = []
                yield p
            else:
                run.append(p)
        if run:
            yield run

    def _apply_run(self, run, x, adjoint):
        halo = blocks.adjoint_depth(run) if adjoint else blocks.depth(run)
        v = blocks.factor(run)
        if not adjoint and any(c % v[a] for a in range(2) for c in x.chunks[a]):
            raise ValueError(f"pixel chunks {x.chunks[:2]} must be multiples of the spatial factor {v}")
        chunks = tuple(_merged(x.chunks[a], halo[a], 1 if adjoint else v[a]) for a in range(2))
        xm = x if chunks == x.chunks[:2] else x.rechunk(chunks + (x.chunks[2],))
        if halo != (0, 0):
            xm = da.overlap.overlap(xm, depth={0: halo[0], 1: halo[1], 2: 0}, boundary={0: 0, 1: 0, 2: "none"},
                                    allow_rechunk=False)
        scale = (lambda c, a: c * v[a]) if adjoint else (lambda c, a: c // v[a])
        key = (tuple(id(p) for p in run), adjoint, x.shape[2], x.dtype.str)
        if key not in self._probes:  # the output's channel count, from a block of the smallest legal size
            probe = np.zeros((2 * halo[0] + (1 if adjoint else v[0]), 2 * halo[1] + (1 if adjoint else v[1]),
                              x.shape[2]), x.dtype)
            self._probes[key] = _op_block(run, adjoint, halo, probe).shape[2]
        out = tuple(tuple(scale(c, a) for c in chunks[a]) for a in range(2)) + ((self._probes[key],),)
        y = da.map_blocks(_op_block, self._send(run, ("ops",) + key[0]), adjoint, halo, xm, chunks=out, dtype=x.dtype,
                          meta=_meta(x.dtype))
        if chunks != x.chunks[:2]:
            y = y.rechunk(tuple(tuple(scale(c, a) for c in x.chunks[a]) for a in range(2)) + (out[2],))
        return y

    def _apply(self, op, x, adjoint):
        runs = list(self._runs(op))
        for r in (reversed(runs) if adjoint else runs):
            if isinstance(r, list):
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
        """``(halo, chunks, [z, *noise] with halos, one block per chunk)``: the cubes ``noise`` (shaped like ``z``)
        split and extended exactly like ``z``."""
        halo = int(reg.depth)
        chunks = tuple(_merged(z.chunks[a], halo, 1) for a in range(2))
        out = []
        for x in (z,) + tuple(noise):
            x = self._arg(x)
            xm = x if x.chunks[:2] == chunks else x.rechunk(chunks + (z.chunks[2],))
            if halo:
                b = _BOUNDARY[reg.boundary]
                xm = da.overlap.overlap(xm, depth={0: halo, 1: halo, 2: 0}, boundary={0: b, 1: b, 2: "none"},
                                        allow_rechunk=False)
            out.append(xm)
        return halo, chunks, out, tuple((1,) * len(c) for c in chunks) + ((1,),)

    def normal(self, like, seed):
        return da.random.RandomState(seed).standard_normal(like.shape, chunks=like.chunks).astype(like.dtype)

    def statistics(self, reg, z, noise=()):
        """Lazy per-block parts of ``reg``'s statistics of ``z`` (an object array, one part per block), for
        :meth:`finish` to gather with the scalars; :meth:`combined` computes and combines them now. ``noise``:
        further cubes shaped like ``z`` that the regularizer reads (with the same halo)."""
        halo, chunks, zm, one = self._halo(reg, z, noise or ())
        return da.map_blocks(_stats_block, self._send(reg), halo, z.shape, _offsets(chunks[0]), _offsets(chunks[1]),
                             *zm, chunks=one, dtype=object, meta=_meta(object))

    def combined(self, reg, z, noise=()):
        return reg.combine(list(self._compute([self.statistics(reg, z, noise)])[0].ravel()))

    def prox(self, reg, z, stats=None, noise=()):
        if stats is None:  # not computed with the state (e.g. a state resumed without them): one more pass
            stats = self.combined(reg, z, noise)
        halo, chunks, zm, one = self._halo(reg, z, noise or ())
        t = da.map_blocks(_apply_block, self._send(reg), halo, stats, *zm, chunks=one, dtype=object,
                          meta=_meta(object))
        out = da.map_blocks(_item, t, 0, chunks=chunks + (z.chunks[2],), dtype=z.dtype, meta=_meta(z.dtype))
        pen = da.map_blocks(_item, t, 1, chunks=one, dtype=np.float64, meta=_meta(np.float64)).sum()
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
