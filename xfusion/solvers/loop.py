"""The iteration loop shared by every method: stopping, history, progress, checkpoints.

A *method* object holds the maths only:

* ``init(x0) -> state`` and ``step(state) -> state``: the state is a flat dict of NumPy
  arrays, Dask arrays (out-of-core solvers: written chunk by chunk, read back lazily) and
  Python scalars (so it can be checkpointed to Zarr as is);
* ``state["objective"]``: the objective of the current iterate, set by ``init``/``step``;
* ``solution(state)``: the fused cube in internal units.

``run`` adds the bookkeeping: relative-change stopping rule, ``max_iter``, callback,
tqdm progress bar, and a checkpoint every ``checkpoint_every`` iterations that ``resume``
continues from (same state -> same result as an uninterrupted run). The checkpoint is an
object given by the caller (``fuse`` builds an :class:`xfusion.checkpoints.ZarrCheckpoint`),
so this module does no I/O itself; it calls

* ``checkpoint.open()`` before anything else (lock, repair of a killed commit) and
  ``checkpoint.close()`` at the end, whatever happens;
* ``checkpoint.load(client)`` -> ``(state, history, iteration)`` or None when there is none
  (the store verifies checksums, completeness and the run's fingerprint);
* ``checkpoint.save(state, history, iteration, client)`` after iterations k, 2k, ..., at
  convergence and at ``max_iter``.
"""
from __future__ import annotations

import numbers
import time

import numpy as np

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


def run(method, x0, *, max_iter=100, tol=1e-4, callback=None, progress=True, checkpoint=None,
        checkpoint_every=10, resume=False):
    """Iterate ``method`` from ``x0``; return ``(state, history, n_iter, converged)``.

    ``history`` lists the objective (and its parts) of iterates 0..n_iter. ``callback(it,
    state)`` is called after each iteration ``it`` (1, 2, ...; a resumed run starts at the
    checkpoint's iteration + 1); returning True stops the run. ``checkpoint``: an object with
    ``open/load/save/close`` (module notes) or None. ``resume``: False (start from ``x0``; a
    checkpoint is replaced at the first save), True (continue from the checkpoint, which must
    exist) or ``"auto"`` (continue if one exists, else start from ``x0``).
    """
    if isinstance(checkpoint_every, bool) or not isinstance(checkpoint_every, numbers.Integral) \
            or checkpoint_every < 1:
        raise ValueError(f"checkpoint_every must be a positive integer (iterations between checkpoints); "
                         f"got {checkpoint_every!r}")
    if resume not in (False, True, "auto"):
        raise ValueError(f"resume must be False, True or 'auto'; got {resume!r}")
    if resume and checkpoint is None:
        raise ValueError("resume needs a checkpoint to continue from (checkpoint=PATH)")
    stop = RelativeChange(tol, patience=getattr(method, "patience", 5), min_iter=getattr(method, "min_iter", 0))
    client = getattr(method, "client", None)
    if checkpoint is not None:
        checkpoint.open()
    try:
        return _iterate(method, x0, stop, max_iter, callback, progress, checkpoint, checkpoint_every, resume, client)
    finally:
        if checkpoint is not None:
            checkpoint.close()


def _iterate(method, x0, stop, max_iter, callback, progress, checkpoint, checkpoint_every, resume, client):
    stored = checkpoint.load(client) if checkpoint is not None and resume else None
    if stored is None and resume is True:
        raise FileNotFoundError(f"resume=True but there is no checkpoint at {checkpoint} to continue from; "
                                "run without resume (or with resume='auto', CLI --resume-or-start) to start one")
    start = 0
    if stored is not None:
        state, history, start = stored
    else:
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
                checkpoint.save(state, history, it, client)
            if callback is not None and callback(it, state):
                break
    finally:
        if bar is not None:
            bar.close()
    state["elapsed_loop_s"] = time.perf_counter() - t0
    return state, history, it, bool(converged)
