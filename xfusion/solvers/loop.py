"""The iteration loop shared by every method: stopping, history, progress, checkpoints.

A *method* object holds the maths only:

* ``init(x0) -> state`` and ``step(state) -> state``: the state is a flat dict of NumPy
  arrays, Dask arrays (out-of-core solvers: written chunk by chunk, read back lazily) and
  Python scalars (so it can be checkpointed to Zarr as is);
* ``state["objective"]``: the objective of the current iterate, set by ``init``/``step``;
* ``solution(state)``: the fused cube in internal units.

``run`` adds the bookkeeping: relative-change stopping rule, ``max_iter``, callback,
tqdm progress bar, and a Zarr checkpoint every ``checkpoint_every`` iterations that
``resume=True`` continues from (same state -> same result as an uninterrupted run).
"""
from __future__ import annotations

import json
import os
import shutil
import time

import numpy as np

from ..io.zarr import write

HISTORY_KEYS = ("objective", "data_term", "penalty")


class RelativeChange:
    """Stop when ``|f_k - f_{k-1}| <= tol * |f_k|`` held for ``patience`` consecutive
    iterations and at least ``min_iter`` iterations ran (``tol <= 0`` never stops).

    Patience and a floor matter for accelerated methods: measured on ``gaussian_rebin``,
    FISTA's objective changes by < 1e-5 (relative) for ~8 iterations right after its first
    restart before the momentum builds up and it improves NMSE by another 0.8 dB.
    """

    def __init__(self, tol, patience=5, min_iter=0):
        self.tol = 0.0 if tol is None else float(tol)
        self.patience, self.min_iter = int(patience), int(min_iter)

    def __call__(self, history):
        f = history["objective"]
        n = len(f) - 1
        if self.tol <= 0 or n < max(self.min_iter, self.patience):
            return False
        return all(abs(f[-i] - f[-i - 1]) <= self.tol * abs(f[-i]) for i in range(1, self.patience + 1))


def _is_dask(v):
    try:
        import dask.array as da
    except ImportError:  # pragma: no cover
        return False
    return isinstance(v, da.Array)


def _uniform_chunks(v):
    """Zarr needs equal chunks except the last one on every axis: rechunk a Dask array if it has others."""
    chunks = tuple(c if len(c) < 2 or len(set(c[:-1])) == 1 and c[-1] <= c[0] else (max(c),) for c in v.chunks)
    return v if chunks == v.chunks else v.rechunk(tuple(c[0] for c in chunks))


def _write_checkpoint(path, state, history, iteration, fingerprint, client=None):
    """Write ``state`` + ``history`` to a Zarr store at ``path`` atomically (tmp + rename).

    NumPy arrays are stored as is; Dask arrays (the out-of-core solvers) are written chunk by
    chunk (``to_zarr`` of the lazy variables; by ``client`` when given, else by the active Dask
    scheduler) into the same store, and listed in the ``dask_state`` attribute so they are
    read back lazily.
    """
    import xarray as xr

    data, lazy = {}, []
    for k, v in state.items():
        if isinstance(v, np.ndarray):
            data[f"state_{k}"] = ([f"{k}_d{i}" for i in range(v.ndim)], v)
        elif _is_dask(v):
            data[f"state_{k}"] = ([f"{k}_d{i}" for i in range(v.ndim)], _uniform_chunks(v))
            lazy.append(k)
    for k, v in history.items():
        data[f"history_{k}"] = (("iteration",), np.asarray(v, dtype=np.float64))
    scalars = {k: v for k, v in state.items() if not isinstance(v, np.ndarray) and not _is_dask(v)}
    attrs = {"iteration": int(iteration), "scalars": json.dumps(scalars), "fingerprint": fingerprint,
             "dask_state": json.dumps(lazy), "complete": 1}
    tmp, old = f"{path}.tmp", f"{path}.old"
    shutil.rmtree(tmp, ignore_errors=True)
    ds = xr.Dataset(data, attrs=attrs)
    write(ds, tmp, client=client if lazy else None)
    if os.path.exists(path):
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


def _read_checkpoint(path, fingerprint):
    """Read a checkpoint: NumPy state arrays loaded, Dask state arrays lazy (chunks as stored).

    The lazy arrays read from ``path``: the solver must consume them (e.g. persist its next
    iterate) before the next checkpoint replaces the store.
    """
    import xarray as xr

    if not os.path.exists(path) and os.path.exists(f"{path}.old"):
        os.replace(f"{path}.old", path)  # killed between the two renames
    ds = xr.open_zarr(path, consolidated=False, chunks={})
    if ds.attrs.get("fingerprint") != fingerprint:
        raise ValueError(
            f"checkpoint {path} was written by a run with different inputs or parameters; delete it or "
            "use the same call to resume"
        )
    lazy = set(json.loads(ds.attrs.get("dask_state", "[]")))
    state = {}
    for k in ds.data_vars:
        if k.startswith("state_"):
            name = k[len("state_"):]
            state[name] = ds[k].data if name in lazy else np.ascontiguousarray(ds[k].values)
    state.update(json.loads(ds.attrs["scalars"]))
    history = {k[len("history_"):]: list(map(float, ds[k].values)) for k in ds.data_vars if k.startswith("history_")}
    return state, history, int(ds.attrs["iteration"])


def run(method, x0, *, max_iter=100, tol=1e-4, callback=None, progress=True, checkpoint=None,
        checkpoint_every=10, resume=False, fingerprint=""):
    """Iterate ``method`` from ``x0``; return ``(state, history, n_iter, converged)``.

    ``history`` lists the objective (and its parts) of iterates 0..n_iter. ``callback(it,
    state)`` is called after each iteration; returning True stops the run.
    """
    stop = RelativeChange(tol, patience=getattr(method, "patience", 5), min_iter=getattr(method, "min_iter", 0))
    start = 0
    if checkpoint is not None and resume and (os.path.exists(checkpoint) or os.path.exists(f"{checkpoint}.old")):
        state, history, start = _read_checkpoint(checkpoint, fingerprint)
    else:
        if checkpoint is not None and os.path.exists(checkpoint) and not resume:
            shutil.rmtree(checkpoint)
        state = method.init(x0)
        history = {k: [float(state.get(k, np.nan))] for k in HISTORY_KEYS}
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=max_iter, initial=start, desc=f"xfusion {method.name}", unit="it", leave=True)
    converged = stop(history)
    it = start
    t0 = time.perf_counter()
    try:
        while it < max_iter and not converged:
            state = method.step(state)
            it += 1
            for k in HISTORY_KEYS:
                history[k].append(float(state.get(k, np.nan)))
            converged = stop(history)
            if bar is not None:
                f = history["objective"]
                rel = abs(f[-1] - f[-2]) / max(abs(f[-1]), 1e-300)
                bar.set_postfix(objective=f"{f[-1]:.6g}", rel_change=f"{rel:.2e}")
                bar.update(1)
            if checkpoint is not None and (it % checkpoint_every == 0 or converged or it == max_iter):
                _write_checkpoint(checkpoint, state, history, it, fingerprint, getattr(method, "client", None))
            if callback is not None and callback(it, state):
                break
    finally:
        if bar is not None:
            bar.close()
    state["elapsed_loop_s"] = time.perf_counter() - t0
    return state, history, it, bool(converged)
