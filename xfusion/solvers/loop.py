"""The iteration loop shared by every method: stopping, history, progress, checkpoints.

A *method* object holds the maths only:

* ``init(x0) -> state`` and ``step(state) -> state``: the state is a flat dict of NumPy
  arrays, Dask arrays (out-of-core solvers: written chunk by chunk, read back lazily) and
  Python scalars (so it can be checkpointed to Zarr as is);
* ``state["objective"]``: the objective of the current iterate, set by ``init``/``step``;
* ``solution(state)``: the fused cube in internal units;
* optionally ``stop_on = "iterate"``: stop on the relative change of the iterate, which ``step`` then
  sets as ``state["iterate_change"]`` (:class:`IterateChange`; default ``"objective"``:
  :class:`RelativeChange`).

``run`` adds the bookkeeping: the stopping rule (:func:`stopping_rule`), ``max_iter``, callback,
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
#: recorded in the history too by methods that stop on it (``stop_on = "iterate"``)
ITERATE_KEY = "iterate_change"


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

    key = "objective"

    def __call__(self, history):
        f = history["objective"]
        n = len(f) - 1
        if self.tol <= 0 or n < max(self.min_iter, self.patience):
            return False
        return all(abs(f[-i] - f[-i - 1]) <= self.tol * abs(f[-i]) for i in range(1, self.patience + 1))

    @staticmethod
    def last(history):
        """The last relative change (for the progress bar)."""
        f = history["objective"]
        return abs(f[-1] - f[-2]) / max(abs(f[-1]), 1e-300)


class IterateChange(RelativeChange):
    """Stop when ``||z_k - z_{k-1}|| / ||z_k|| <= tol`` (Euclidean norms over the whole cube; the history entry
    ``iterate_change``) held for ``patience`` consecutive iterations and at least ``min_iter`` iterations ran
    (``tol <= 0`` never stops; a NaN entry -- e.g. iterations resumed from a checkpoint that did not record it --
    never counts as small).

    For methods whose monitored "objective" is not one fixed function (EM + prox, :mod:`xfusion.solvers.em`): its
    two parts can cancel. Measured (session 6, 72x72x200 mosaic scene of benchmarks/mosaic.py, pn 3e6 counts,
    wavelet2d1d k=1): the objective rule stopped pn + MOS1 + MOS2 + Resolve after 20 iterations (NMSE 20.88 dB)
    against 46 for pn + Resolve (22.83 dB) while both still improved to ~100 iterations; this rule with
    ``tol=1e-4`` ran both to ``max_iter=50`` (22.24 and 22.92 dB).
    """

    key = ITERATE_KEY

    def __call__(self, history):
        c = history.get(ITERATE_KEY, [])
        n = len(c) - 1
        if self.tol <= 0 or n < max(self.min_iter, self.patience):
            return False
        return all(c[-i] <= self.tol for i in range(1, self.patience + 1))  # NaN <= tol is False

    @staticmethod
    def last(history):
        return history[ITERATE_KEY][-1]


def stopping_rule(method, tol):
    """The stopping rule of ``method``: :class:`IterateChange` if ``method.stop_on == "iterate"``, else
    :class:`RelativeChange` (the objective), with the method's ``patience`` (default 5) and ``min_iter`` (0)."""
    cls = IterateChange if getattr(method, "stop_on", "objective") == "iterate" else RelativeChange
    return cls(tol, patience=getattr(method, "patience", 5), min_iter=getattr(method, "min_iter", 0))


def run(method, x0, *, max_iter=100, tol=1e-4, callback=None, progress=True, checkpoint=None,
        checkpoint_every=10, resume=False):
    """Iterate ``method`` from ``x0``; return ``(state, history, n_iter, converged)``.

    ``history`` lists the objective (and its parts; and ``iterate_change``, NaN at iterate 0, for a method
    that stops on it) of iterates 0..n_iter. ``tol``: see :func:`stopping_rule`. ``callback(it,
    state)`` is called after each iteration ``it`` (1, 2, ...; a resumed run starts at the
    checkpoint's iteration + 1); returning True stops the run. ``checkpoint``: an object with
    ``open/load/save/close`` (module notes) or None. ``resume``: False (start from ``x0``; a
    checkpoint is replaced at the first save), True (continue from the checkpoint, which must
    exist) or ``"auto"`` (continue if one exists, else start from ``x0``).

    The returned state also holds ``elapsed_loop_s`` (s, wall time of this call's iterations) and
    ``iterations_run`` (the iterations this call ran: ``n_iter`` minus the checkpoint's iteration when
    resumed).
    """
    if isinstance(checkpoint_every, bool) or not isinstance(checkpoint_every, numbers.Integral) \
            or checkpoint_every < 1:
        raise ValueError(f"checkpoint_every must be a positive integer (iterations between checkpoints); "
                         f"got {checkpoint_every!r}")
    if resume not in (False, True, "auto"):
        raise ValueError(f"resume must be False, True or 'auto'; got {resume!r}")
    if resume and checkpoint is None:
        raise ValueError("resume needs a checkpoint to continue from (checkpoint=PATH)")
    stop = stopping_rule(method, tol)
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
    if stored is not None and stored[2] > max_iter:
        raise ValueError(f"the checkpoint at {checkpoint} is at iteration {stored[2]}, past max_iter={max_iter}: a run "
                         f"cannot be rewound. Resume with max_iter >= {stored[2]} (the same as the interrupted run), or "
                         "start a new run (resume=False replaces the checkpoint at its first save; or another path)")
    keys = HISTORY_KEYS + ((ITERATE_KEY,) if stop.key == ITERATE_KEY else ())
    start = 0
    if stored is not None:
        state, history, start = stored
        if isinstance(x0, np.ndarray):  # a checkpoint written on Dask, resumed in memory: its lazy state is read now
            state = {k: np.asarray(v) if hasattr(v, "dask") else v for k, v in state.items()}
        for k in keys:  # a checkpoint written before the key was recorded
            history.setdefault(k, [np.nan] * len(history["objective"]))
    else:
        state = method.init(x0)
        history = {k: [float(state.get(k, np.nan))] for k in keys}
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
            for k in keys:
                history[k].append(float(state.get(k, np.nan)))
            converged = stop(history)
            if bar is not None:
                bar.set_postfix(objective=f"{history['objective'][-1]:.6g}",
                                **{"rel_change" if stop.key == "objective" else stop.key: f"{stop.last(history):.2e}"})
                bar.update(1)
            if checkpoint is not None and (it % checkpoint_every == 0 or converged or it == max_iter):
                checkpoint.save(state, history, it, client)
            if callback is not None and callback(it, state):
                break
    finally:
        if bar is not None:
            bar.close()
    state["elapsed_loop_s"] = time.perf_counter() - t0
    state["iterations_run"] = it - start  # by this call (a resumed run started at ``start``)
    return state, history, it, bool(converged)
