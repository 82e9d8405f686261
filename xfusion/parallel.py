"""Dask execution: chunking policy and block-wise data terms for out-of-core / distributed fusion.

Design (measured choices are in the issue notes and benchmarks/scale.py):

* Data cubes are chunked in **pixel blocks that hold the whole energy axis** (``chunks=(cx,
  cy, -1)``): every spectral operation is local to a block, and the blocks of the
  sharp-spatial data (cx, cy) and of the sharp-spectral data (cx/v, cy/v) cover the same
  sky, so the two data sets are chunked consistently.
* **Low-rank path**: the iterate W (x, y, r) is r/L of the cube (a few MB even for 10^9-voxel
  fields) and stays in client memory; each objective/gradient evaluation is one
  ``map_blocks`` pass over each (persisted) data cube that returns, per block, the gradient
  coefficients (bx, by, r) plus the block's data term, so only subspace-sized arrays and
  scalars travel. The graph of an evaluation has a fixed number of tasks (two per data
  block plus the reduction), independent of the iteration number. The fused cube is never
  formed in the loop; at the end it is defined lazily block by block (``W @ V``) and written
  to Zarr chunk by chunk by :func:`xfusion.io.zarr.write`.
* Scheduler: whatever ``dask`` is configured with (threads by default); pass a
  ``distributed.Client`` to ``fuse(client=...)`` to run on a cluster. A killed worker's
  blocks are recomputed from their lineage (the Zarr store), so the run survives it.
"""
from __future__ import annotations

import math
import os

import numpy as np

from .likelihood import aligned, block_value_grad, data_constant, poisson_ratio, poisson_value

try:  # dask is a core dependency, but keep the in-memory path importable without it
    import dask
    import dask.array as da
except ImportError:  # pragma: no cover
    dask = da = None

#: target size of one data chunk (bytes): big enough to amortize task overhead (~1 ms per task)
TARGET_CHUNK_BYTES = 64 * 2 ** 20


def is_dask(obj):
    data = getattr(obj, "data", obj)
    return da is not None and isinstance(data, da.Array)


def pixel_block(shape, itemsize, factor=1, target_bytes=TARGET_CHUNK_BYTES, *, min_block=1, copies=1,
                memory=None):
    """Square pixel block (multiple of ``factor``) so that a (b, b, L) chunk is about ``target_bytes``.

    ``shape`` = (M, N, L) of the fine-pixel cube. The target is lowered to ``memory / copies``
    when a task needs ``copies`` chunk-sized temporaries and has ``memory`` bytes (see
    :func:`task_memory`), and the block is raised to at least ``min_block`` pixels (a halo of
    r pixels costs ``((b + 2r) / b)**2`` in the spatial operators: ``min_block = 4 r`` keeps
    that below 2.25). Blocks divide the field when a divisor is close. Returns (bx, by).
    """
    M, N, L = shape
    if memory is not None:
        target_bytes = min(target_bytes, memory / max(copies, 1))
    b = int(math.sqrt(max(target_bytes / (L * itemsize), 1.0)))
    b = max(factor, (b // factor) * factor, -(-int(min_block) // factor) * factor)  # min_block rounded up

    def fit(n):
        if b >= n:
            return n
        for c in range(b, max(factor, b // 2, int(min_block)) - 1, -factor):  # prefer a divisor of n
            if n % c == 0:
                return c
        return b

    return fit(M), fit(N)


def task_memory(client=None, fraction=0.5):
    """Bytes one running task may use for temporaries: ``fraction`` of the memory per thread.

    With a ``distributed.Client``: the smallest ``memory_limit / nthreads`` over its workers
    (the other half is left for the worker's share of the persisted data). Without: the
    available RAM of this machine divided by its CPU count (threaded scheduler). None if unknown.
    """
    per = []
    if client is not None:
        for w in client.scheduler_info().get("workers", {}).values():
            if w.get("memory_limit"):
                per.append(w["memory_limit"] / max(w.get("nthreads", 1), 1))
    else:
        try:
            import psutil

            per.append(psutil.virtual_memory().available / max(os.cpu_count() or 1, 1))
        except ImportError:  # pragma: no cover
            pass
    return fraction * min(per) if per else None


def check_workers(client, timeout=10.0, busy=0.9):
    """Refuse a cluster that cannot run fusion, before any work: no worker joined within ``timeout``
    seconds (e.g. workers whose ``memory_limit`` is below what a worker process uses at rest are
    restarted by their nanny over and over), or a worker already using more than ``busy`` of its
    ``memory_limit`` while idle."""
    if not (hasattr(client, "wait_for_workers") and hasattr(client, "scheduler_info")):
        raise TypeError(f"client must be a dask.distributed.Client (or None to run on this machine); got "
                        f"{type(client).__name__} {client!r}")
    if getattr(client, "status", "running") in ("closing", "closed"):
        raise ValueError(f"the Dask client is {client.status}: pass an open client, or client=None to run on this "
                         "machine")  # (session 29: this failed inside Dask with 'IOLoop is closed')
    try:
        client.wait_for_workers(1, timeout=timeout)
    except (TimeoutError, OSError) as exc:
        raise ValueError(f"no Dask worker joined the cluster at {client.scheduler.address} within {timeout:g} s "
                         f"({type(exc).__name__}). If workers were started with a small memory_limit they may be "
                         "restarting over and over: a worker process needs ~150 MB at rest; give each worker "
                         "more memory (e.g. LocalCluster(memory_limit='2GB')) or check the cluster") from None
    for addr, w in client.scheduler_info().get("workers", {}).items():
        limit, used = w.get("memory_limit") or 0, (w.get("metrics") or {}).get("memory") or 0
        if limit and used > busy * limit:
            raise ValueError(f"Dask worker {addr} already uses {used / 2**20:.0f} MiB of its memory_limit "
                             f"{limit / 2**20:.0f} MiB before any fusion work: give workers more memory")


def _block_constant(b):
    """:func:`xfusion.likelihood.data_constant` of one block, as a (1, ..., 1) array; quiet on non-finite or negative
    counts, which the problem's setup refuses by name right after (xfusion.fuse: the first read of Dask counts)."""
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        return np.full((1,) * b.ndim, data_constant(b))


class DaskPoissonTerm:
    """Poisson data term whose counts are a Dask array chunked (bx, by, full energy), persisted.

    Subspace (low-rank) path: evaluated through :meth:`evaluate_many` (all terms in one compute),
    the Dask counterpart of :meth:`xfusion.likelihood.PoissonTerm.subspace_value_and_grad`.
    Full-cube path (with a ``backend``, :class:`xfusion.backends.blockwise.DaskBackend`):
    :meth:`value_from_model` and :meth:`ratio` map the likelihood's block kernels
    (:func:`~xfusion.likelihood.poisson_value`, :func:`~xfusion.likelihood.poisson_ratio`) over
    the blocks, as :class:`~xfusion.likelihood.PoissonTerm` calls them on the whole cube; the
    model's known background B (``model.background``, counts, data shape) is chunked like the
    data and added to the model block by block (expected counts ``H z + B``); a ``mask`` (1 = use,
    0 = ignore, shaped like the data) becomes the kernels' weight ``w`` (masked counts set to 0, as
    in memory). Background and mask: full-cube path only (with a ``backend``).
    """

    def __init__(self, model, data, dtype=np.float32, client=None, backend=None, mask=None):
        self.model, self.client, self.backend = model, client, backend
        d = data.astype(dtype)
        if len(d.chunks[-1]) != 1:
            d = d.rechunk({d.ndim - 1: -1})
        self.weight = None
        if mask is not None:
            if backend is None:
                raise NotImplementedError("masks on Dask-backed data run with the full-cube regularizations (method "
                                          "'em'); for the low-rank family load the observations into memory (.load()) "
                                          "and fuse without a client")
            if tuple(mask.shape) != tuple(d.shape):
                raise ValueError(f"mask shape {tuple(mask.shape)} differs from the data shape {d.shape}")
            w = da.asarray(mask).astype(dtype).rechunk(d.chunks)
            d = da.where(w > 0, d, 0).astype(dtype)  # masked counts never enter (no inf * 0 in the ratios)
            self.weight = persist_many([w], client)[0]
        bg = getattr(model, "background", None)
        if bg is not None and np.any(bg > 0):
            if backend is None:
                raise NotImplementedError("a known background on Dask-backed data runs with the full-cube "
                                          "regularizations (method 'em'); for the low-rank family load the "
                                          "observations into memory (.load()) and fuse without a client")
            if bg.shape != d.shape or not np.all(np.isfinite(bg)) or np.any(bg < 0):
                raise ValueError(f"background must be finite, >= 0 and shaped like the data {d.shape}; got {bg.shape}")
            self.data, self.background = persist_many([d, da.from_array(np.asarray(bg, dtype), chunks=d.chunks)],
                                                      client)
        else:
            self.data, self.background = persist_many([d], client)[0], None
        d = self.data if self.weight is None else self.data * self.weight
        consts = d.map_blocks(_block_constant, dtype=np.float64, chunks=tuple((1,) * len(c) for c in d.chunks))
        self.constant = float(compute(consts.sum(), client))

    def _dw(self):
        return (self.data,) if self.weight is None else (self.data, self.weight)

    def _plus_background(self, m):
        return m if self.background is None else self.backend.map(np.add, m, self.background)

    def value_from_model(self, m):
        """Lazy D for the model m = H z (Dask, chunked like the data; the background, if any, added here)."""
        return self.backend.total(poisson_value, self._plus_background(m), *self._dw()) + self.constant

    def ratio(self, m):
        """Lazy ``d / (m + B)`` (the Richardson-Lucy correction), chunked like the data."""
        return self.backend.map(poisson_ratio, self._plus_background(m), *self._dw())

    def graph(self, a, v, grad=True):
        """The Dask array of one evaluation (exposed so tests can count its tasks)."""
        ad = da.from_array(np.ascontiguousarray(a), chunks=(self.data.chunks[0], self.data.chunks[1], a.shape[2]))
        r = v.shape[0]
        return da.map_blocks(block_value_grad, self.data, ad, v, grad, dtype=np.float64,
                             chunks=(self.data.chunks[0], self.data.chunks[1], (r + 1 if grad else 1,)),
                             meta=np.empty((0, 0, 0), dtype=np.float64))

    def _finish(self, out, dtype, grad):
        val = float(out[:, :, -1].sum()) + self.constant
        if not np.isfinite(val):
            val = np.inf
        return val, (out[:, :, :-1].astype(dtype) if grad else None)

    @staticmethod
    def evaluate_many(terms, inputs, grad=True):
        """Evaluate several terms (``inputs`` = [(a, v), ...]) in ONE compute, so the workers
        process the blocks of both data cubes concurrently instead of one cube after the other."""
        graphs = [t.graph(a, np.asarray(v), grad) for t, (a, v) in zip(terms, inputs)]
        client = terms[0].client
        outs = compute_many(graphs, client)
        return [t._finish(o, a.dtype, grad) for t, o, (a, _) in zip(terms, outs, inputs)]


def lazy_product(w, basis, chunks_xy, scale=1.0, clip=True, dtype=np.float32):
    """Dask array (x, y, L) = max(W @ basis, 0) / scale, built block by block (never materialized)."""
    wd = da.from_array(w, chunks=(chunks_xy[0], chunks_xy[1], w.shape[2]))
    L = basis.shape[1]

    def block(wb):
        z = (aligned(wb) @ aligned(basis)) / scale  # aligned: see :func:`aligned`
        if clip:
            np.maximum(z, 0, out=z)
        return z.astype(dtype)

    return da.map_blocks(block, wd, dtype=dtype, chunks=(wd.chunks[0], wd.chunks[1], (L,)),
                         meta=np.empty((0, 0, 0), dtype=dtype))


def compute(x, client=None):
    """Value of one Dask collection, on ``client`` when given (else the active scheduler)."""
    return compute_many([x], client)[0]


def compute_many(colls, client=None):
    """Values of several Dask collections in one pass, on ``client`` when given (else the active scheduler).

    Collections persisted on a client must be computed on it: a non-default client's data are
    invisible to the default scheduler.
    """
    if client is not None:
        return list(client.gather(client.compute(list(colls))))
    return list(dask.compute(*colls))


def persist_many(colls, client=None):
    """Persist several Dask collections (on ``client`` when given), returned in order."""
    if client is not None:
        return list(client.persist(list(colls)))
    return list(dask.persist(*colls))
