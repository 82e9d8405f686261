"""Low-rank solvers: the iterate lives in the r-dimensional spectral subspace, Z = W V.

W has shape (M, N, r). Each instrument model is evaluated as ``spatial(W) @ V_eff`` with
``V_eff = spectral(V * t A)`` precomputed (:meth:`InstrumentModel.reduced`), so an iteration
costs O(r) full-field operations plus one product with the data of each instrument -- the
fused cube is never formed inside the loop. Non-negativity of Z is not enforced inside
the subspace (Z = W V may dip below 0 where the basis does); models must stay > 0 where
data > 0 (the objective is +inf otherwise, which the line search rejects) and the final
cube is clipped at 0 (the clipped fraction is recorded in the result).

Method: accelerated proximal gradient (FISTA, Beck & Teboulle 2009) with backtracking on
the Lipschitz estimate and function-value adaptive restart (O'Donoghue & Candes 2015); the
smooth part is the Poisson data term plus an optional Sobolev term, the non-smooth part an
optional 2D starlet sparsity prox on W.
"""
from __future__ import annotations

import numpy as np


class SubspaceFISTA:
    """``max_backtracks``: doublings of the Lipschitz estimate tried per iteration. When none gives a step
    satisfying the quadratic upper bound (an objective that is not locally smooth, or round-off at the
    optimum), no unverified step is taken: the iterate stays, the momentum restarts, the estimate returns
    to its value before the search, and ``state["backtrack_failures"]`` counts it (:func:`xfusion.fuse`
    reports the count as the result attribute ``backtrack_failures`` and warns)."""
    name = "fista"
    min_iter, patience = 30, 10
    max_backtracks = 60

    def __init__(self, terms, reduced, smooth=None, prox=None, precond=None):
        self.terms = terms
        # diagonal metric P (broadcast to W): steps are -P grad / L, the quadratic bound uses
        # ||.||^2 in P^{-1}; P ~ pixel brightness mimics the EM scaling Z / s of the full cube
        self.precond = None if precond is None else np.asarray(precond)
        self.reduced = [(sp, np.asarray(v)) for sp, v in reduced]
        self.smooth, self.proxreg = smooth, prox

    # ----------------------------------------------------------------- smooth part
    # each term evaluates value (and gradient) of m = A @ V_eff with A = spatial(W): the terms
    # are PoissonTerm (NumPy) or parallel.DaskPoissonTerm (data blocks on Dask workers)
    def _terms(self, w, grad):
        val, g = 0.0, (np.zeros_like(w) if grad else None)
        inputs = [(w if sp is None else sp.forward(w), v.astype(w.dtype, copy=False)) for sp, v in self.reduced]
        if all(hasattr(t, "evaluate_many") for t in self.terms):  # Dask: all data passes in one compute
            results = type(self.terms[0]).evaluate_many(self.terms, inputs, grad)
        else:
            results = [t.subspace_value_and_grad(a, v, grad=grad) for t, (a, v) in zip(self.terms, inputs)]
        for (sp, _), (tv, tg) in zip(self.reduced, results):
            val += tv
            if grad:
                g += tg if sp is None else sp.adjoint(tg)
        return val, g

    def _smooth_value(self, w):
        return self.smooth.value(w) if self.smooth is not None else 0.0

    def f(self, w):
        """Smooth part of the objective: Poisson data term + Sobolev penalty (if any)."""
        val = self._terms(w, False)[0]
        if self.smooth is not None and np.isfinite(val):
            val += self.smooth.value(w)
        return val

    def f_grad(self, w):
        val, grad = self._terms(w, True)
        if self.smooth is not None:
            val += self.smooth.value(w)
            grad += self.smooth.gradient(w)
        return val, grad

    def _pen(self, w):
        return self.proxreg.value(w) if self.proxreg is not None else 0.0

    def _record(self, state, w, fval, pen=None):
        """Store the iterate and its objective split honestly: ``data_term`` is the Poisson term
        alone, ``penalty`` everything the regularization adds (Sobolev + sparsity); ``fval``
        (the smooth part the line search works with) already contains the Sobolev term."""
        pen = self._pen(w) if pen is None else pen
        smooth = self._smooth_value(w) if np.isfinite(fval) else 0.0
        state.update(w=w, data_term=fval - smooth, penalty=pen + smooth, objective=fval + pen)
        return state

    # ----------------------------------------------------------------- iteration
    def init(self, w0):
        w = np.ascontiguousarray(w0)
        f0, g0 = self.f_grad(w)
        if not np.isfinite(f0):
            raise ValueError("the low-rank starting point predicts zero counts where data are positive")
        # Lipschitz guess from a small secant
        d = 1e-3 * (np.abs(w) + np.abs(w).mean())
        f1, g1 = self.f_grad(w + d)
        dg = g1 - g0 if self.precond is None else (g1 - g0) * np.sqrt(self.precond)
        dd = d if self.precond is None else d / np.sqrt(self.precond)
        lip = float(np.linalg.norm(dg.ravel()) / max(np.linalg.norm(dd.ravel()), 1e-300))
        lip = lip if np.isfinite(lip) and lip > 0 else 1.0
        return self._record({"w_prev": w.copy(), "t": 1.0, "lip": lip, "lip0": lip, "restarts": 0,
                             "backtrack_failures": 0}, w, f0)

    def step(self, state):
        w, w_prev, t, lip = state["w"], state["w_prev"], state["t"], state["lip"]
        t_next = 0.5 * (1.0 + np.sqrt(1.0 + 4.0 * t * t))
        y = w + ((t - 1.0) / t_next) * (w - w_prev)
        fy, gy = self.f_grad(y)
        if not np.isfinite(fy):
            y, t_next = w, 1.0
            fy, gy = self.f_grad(y)
        pg = gy if self.precond is None else gy * self.precond.astype(gy.dtype, copy=False)
        accepted = False
        for _ in range(self.max_backtracks):
            w_new = y - pg / np.asarray(lip, dtype=y.dtype)
            if self.proxreg is not None:
                # prox of (lambda/L) phi in the P metric: thresholds scale with the step P/L;
                # lambda is set so the first step thresholds at k * MAD (see Wavelet2D)
                step = state["lip0"] / lip
                w_new = self.proxreg.prox(w_new, step=step if self.precond is None else step * self.precond)
            f_new = self.f(w_new)
            dw = (w_new - y).astype(np.float64)
            quad = dw * dw if self.precond is None else dw * dw / self.precond
            bound = fy + float(np.sum(gy * dw)) + 0.5 * lip * float(np.sum(quad))
            if np.isfinite(f_new) and f_new <= bound + 1e-12 * abs(bound):
                accepted = True
                break
            lip *= 2.0
        restarts, failures = state["restarts"], int(state.get("backtrack_failures", 0))
        if not accepted:  # explicit outcome: keep the iterate, restart the momentum, count it
            pen = self._pen(w)
            new = {"w_prev": w, "t": 1.0, "lip": float(state["lip"]), "lip0": state["lip0"],
                   "restarts": int(restarts) + 1, "backtrack_failures": failures + 1}
            return self._record(new, w, state["objective"] - pen, pen)
        pen = self._pen(w_new)
        if f_new + pen > state["objective"]:  # adaptive restart
            t_next, restarts = 1.0, restarts + 1
            if not np.isfinite(f_new):
                w_new, pen = w, self._pen(w)
                f_new = state["objective"] - pen
        new = {"w_prev": w, "t": float(t_next), "lip": float(lip) * 0.8, "lip0": state["lip0"],
               "restarts": int(restarts), "backtrack_failures": failures}
        return self._record(new, w_new, f_new, pen)

    def solution(self, state):
        return state["w"]
