"""The backend interface the solvers are written against, and its in-memory (NumPy) implementation.

A solver never touches arrays directly: it asks its backend to

* ``cube(z0, shape, dtype)``: a private copy of the start point (array or scalar level);
* ``forward(op, z)`` / ``adjoint(op, u)``: apply an operator (:mod:`xfusion.operators`);
* ``map(f, *args)``: apply a local function voxel by voxel / block by block (``f`` sees NumPy
  arrays; arguments shaped like the cube are split like it, smaller ones broadcast, totals
  from ``total`` passed as numbers);
* ``total(f, *args)``: the sum over the blocks of ``f(*blocks)`` (a float per block; on Dask a
  lazy scalar that ``map`` and ``finish`` accept, so a global sum needs no extra round trip);
* ``peak(x)``: the largest value of ``x`` (0 for none; on Dask a lazy scalar that ``finish`` accepts);
* ``normal(like, seed)``: standard-normal draws shaped (and on Dask chunked) like ``like`` (the noise
  probe of a prior with ``noise="propagated"``; the draws differ between backends);
* ``statistics(reg, z[, noise])``: the regularizer's global statistics of ``z`` to be computed with the
  state (on Dask in the same pass, so an iteration is one round trip), or None when the prox
  computes them itself (in memory: the 2D transform is then shared);
* ``prox(reg, z, stats[, noise])``: a regularizer's prox and its penalty, ``(z', penalty)``, with the
  statistics of ``z`` (None: computed here); ``noise``: cubes shaped like ``z`` the regularizer reads
  beside it (the EM step's ``(var, probe)`` maps; split and haloed like ``z`` on Dask);
* ``finish(arrays, scalars, stats)``: the state of an iteration: arrays kept (persisted on a
  cluster), scalars (data-term parts from the terms' ``value_from_model``, penalties) as Python
  floats, and ``stats = (reg, statistics(reg, z) or None)`` as the regularizer's named floats --
  on Dask the only values that travel back to the client;
* ``persist(x)``: keep an array that every iteration reads (e.g. the EM sensitivity).

:class:`NumpyBackend` does each directly; the Dask one (:mod:`xfusion.backends.blockwise`) runs
the same functions on pixel blocks holding the whole energy axis. The maths lives in the
operators, the likelihood's block kernels and the regularizers, never in a backend.
"""
from __future__ import annotations

import functools
import sys
import threading

import numpy as np
from threadpoolctl import ThreadpoolController

from .. import threads
from . import heap

#: BLAS threads while xfusion fits or tunes (NumPy and Dask alike; the caller's setting is restored on
#: return). The operators' dense products are small, so extra BLAS threads gain little when the cores are
#: free and cost a lot when they are not (threads that wait for one another). Measured on the 2-core
#: machine, session 6, wavelet2d1d, 10 iterations in memory: suite scene mixed/1004 (45x45x2400) quiet
#: (load < 1): 2 threads 5.6 s, 1 thread 5.8-6.2 s (one thread 3-9% slower); gaussian_rebin with one other
#: job running (load 1-3): 13.3-13.9 s against 6.3-6.7 s; at load 4-6: 87-116 s against 10-15 s. Raise
#: it on a many-core machine that runs nothing else.
BLAS_THREADS = 1


def fitting(func):
    """Decorator for the entry points that fit (``fuse``, ``tune``): run ``func`` with at most
    :data:`BLAS_THREADS` BLAS threads (``threadpoolctl``) and with freed memory kept in the process
    (:func:`xfusion.solvers.heap.retained`); the caller's settings are restored on return."""
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        if getattr(_fit_local, "depth", 0):  # inside another entry point of this thread: its limits hold
            return func(*args, **kwargs)
        _fit_local.depth = 1
        try:
            with _blas_controller().limit(limits=BLAS_THREADS, user_api="blas"), heap.retained():
                return func(*args, **kwargs)
        finally:
            _fit_local.depth = 0
    return wrapper


_fit_local = threading.local()
_controller: list = []  # [(modules loaded when it was made, ThreadpoolController)]
_controller_lock = threading.Lock()


def _blas_controller():
    """The process's ``threadpoolctl.ThreadpoolController``: finding the loaded BLAS libraries scans every shared
    library of the process (about 4 ms with NumPy, SciPy, Numba and Dask loaded, once per ``fuse`` or ``tune`` until
    session 67), so it is made once and made again only after more Python modules were imported (which may have
    loaded another BLAS library)."""
    n = len(sys.modules)
    with _controller_lock:
        if not _controller or _controller[0][0] != n:
            _controller[:] = [(n, ThreadpoolController())]
        return _controller[0][1]


#: bytes of the largest argument per task when :meth:`NumpyBackend.total` cuts a cube along its first axis (a fixed
#: size, never the thread count: the same blocks and sums on any number of threads)
SPLIT_BYTES = 1 << 20


def _row_spans(args):
    """``(shape, spans)`` when the arguments hold a cube worth cutting along axis 0 -- the largest array argument
    is at least :data:`xfusion.threads.PARALLEL_MIN_BYTES`, has two or more dimensions and is the broadcast shape of
    all of them -- with ``spans`` the ``(r0, r1)`` row ranges of about :data:`SPLIT_BYTES` each; else None."""
    arrays = [a for a in args if isinstance(a, np.ndarray)]
    if not arrays:
        return None
    ref = max(arrays, key=lambda a: a.nbytes)
    if ref.ndim < 2 or ref.shape[0] < 2 or ref.nbytes < threads.PARALLEL_MIN_BYTES:
        return None
    try:
        if np.broadcast_shapes(*(a.shape for a in arrays)) != ref.shape:
            return None
    except ValueError:  # not broadcastable: the function's own call raises the error
        return None
    parts = threads.spans(0, ref.shape[0], max(1, SPLIT_BYTES // max(ref.nbytes // ref.shape[0], 1)))
    return (ref.shape, parts) if len(parts) > 1 else None


def _rows(a, shape, r0, r1):
    """Rows ``r0:r1`` of an argument shaped like the cube along axis 0; anything else (numbers, arrays that
    broadcast along axis 0) as it is."""
    if isinstance(a, np.ndarray) and a.ndim == len(shape) and a.shape[0] == shape[0]:
        return a[r0:r1]
    return a


class NumpyBackend:
    """In-memory backend: direct calls on NumPy arrays.

    :meth:`total` runs its function on blocks of rows (axis 0) of about :data:`SPLIT_BYTES` of the cube on the thread
    pool (:mod:`xfusion.threads`), as the Dask backend runs it on pixel blocks (the function gives a block's share of
    the sum): the sum of the shares in block order, float64; the blocks depend on the cube's shape only, so the sums
    are the same on any number of threads. Session 69, point_sources/500083 (45x45x2400): the EM step's four totals
    19 -> 12 ms per step. :meth:`map` calls its function once: cut into blocks the same way, its voxel-wise passes
    took as long (3.0-3.6 ms each, against 2.6-4.1 ms) once the blocks were copied into the output.
    """

    client = None
    #: the solvers may evaluate inputs that share a first operator together (:mod:`xfusion.operators.group`)
    grouped = True
    #: :meth:`statistics` returns None (the prox computes them): a solver need not form their argument
    stats_with_state = False

    def cube(self, z0, shape, dtype):
        a = np.asarray(z0)
        if a.ndim == 0:
            return np.full(shape, a, dtype=dtype)
        return np.array(a, dtype=a.dtype if np.issubdtype(a.dtype, np.floating) else dtype, order="C", copy=True)

    def forward(self, op, z):
        return op.forward(z)

    def adjoint(self, op, u):
        return op.adjoint(u)

    def map(self, f, *args):
        return f(*args)

    def total(self, f, *args):
        split = _row_spans(args)
        if split is None:
            return f(*args)
        shape, parts = split
        shares = [0.0] * len(parts)

        def task(i, r0, r1):
            shares[i] = f(*(_rows(a, shape, r0, r1) for a in args))

        threads.run([functools.partial(task, i, r0, r1) for i, (r0, r1) in enumerate(parts)],
                    sum(a.nbytes for a in args if isinstance(a, np.ndarray)))
        out = 0.0
        for v in shares:  # in block order
            out += float(v)
        return out

    def peak(self, x):
        return float(np.max(x, initial=0.0))

    def normal(self, like, seed):
        return np.random.default_rng(seed).standard_normal(like.shape, dtype=np.float32).astype(like.dtype, copy=False)

    def statistics(self, reg, z, noise=None):
        return None

    def prox(self, reg, z, stats=None, noise=None):
        kw = {} if noise is None else {"noise": noise}
        if stats is None:
            return reg.prox(z, with_penalty=True, **kw)
        return reg.block_apply(z, 0, stats, **kw)

    def persist(self, x):
        return x

    def finish(self, arrays, scalars, stats=None):
        return dict(arrays, **{k: float(v) for k, v in scalars.items()})
