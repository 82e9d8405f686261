"""Default solver for full-cube regularizations: EM (Richardson-Lucy) steps with a proximal denoising step.

One iteration (``Z`` the fused cube, ``H_i`` the instrument models, ``d_i`` the data)::

    Z_half = Z / s  *  sum_i H_i^T( d_i / (H_i Z) )        s = sum_i H_i^T 1   (two-instrument EM)
    Z      = max( prox(Z_half), 0 )                       prox = starlet soft thresholding
    Z      = a Z,   a = sum(s Z_half) / sum(s Z)          (regularized only: keeps the predicted counts)

The EM step is the gradient step ``Z - D grad L(Z)`` with the diagonal scaling ``D = Z / s``
and unit step (scaled gradient projection with EM scaling, Bonettini et al. 2009): it needs
no step size, keeps Z > 0 and is monotone for the data term. The denoising step is the
paper's proximal wavelet step (Alg. 2) applied with the same unit step. This is a
heuristic split (the l1 prox is taken in the Euclidean, not the D, metric): it is the
majorize-then-denoise scheme, not an exact minimizer of a fixed objective, so the objective
we monitor is the Poisson data term of the iterate plus the weighted l1 norm of its
thresholded coefficients with the current thresholds (``rho_b * |w_b|`` summed, in cube
units; recorded separately as ``data_term`` and ``penalty`` in the history). Why this method: measured on
``gaussian_rebin`` (see benchmarks/quality.py) it reaches its best NMSE in 5-15 iterations
(about 0.1-0.2 s each), while fixed-step ISTA needs thousands.

Stopping (regularized): on the relative change of the iterate, ``||Z_k - Z_{k-1}|| / ||Z_k|| <= tol``
for 5 iterations (``state["iterate_change"]``, :class:`xfusion.solvers.loop.IterateChange`), not on the
objective: the data term falls while the penalty (with thresholds re-estimated at every step) rises, so
their sum can change by < 1e-4 (relative) while the cube still changes by ~1e-3 per iteration. Measured
(session 6, replayed on the recorded history of 150-iteration runs, iterations capped at the default
``max_iter=50``): on the 72x72x200 mosaic scene of benchmarks/mosaic.py at pn 3e6 counts, wavelet2d1d
k=1, the objective rule stopped pn + MOS1 + MOS2 + Resolve at 20 iterations (NMSE 20.88 dB) and pn +
Resolve at 46 (22.83 dB); the iterate rule at ``tol=1e-4`` ran both to 50 (22.24 and 22.92 dB; the
default "auto" choice: 16 -> 50 it, 20.65 -> 22.27 dB, and 42 -> 50, 22.60 -> 22.76 dB); on 8 small
tuning scenes of benchmarks/suite.py (k=1) it changed NMSE by -0.06 to 0 dB (the objective rule ran to
50 on 6 of them already); with "auto" (``--select``, all 24 small tuning scenes) the choices were the
same and 3 fits changed: cluster_core/1011 24 -> 50 it, +0.59 dB; cluster_core/1001 36 -> 50, -0.05 dB;
synchrotron/1002 17 -> 50, -0.42 dB (a zeroed-null-space prior whose NMSE falls after its first
iterations). Cost: iterations only (the two extra sums are ~0.5% of an iteration). Plain RL (no prior:
objective = data term, no cancellation) keeps the objective rule.

Written once against a backend (:mod:`xfusion.solvers.backend`): in memory by default, on
Dask blocks with :class:`xfusion.backends.blockwise.DaskBackend`. The state holds ``z`` and
``corr = sum_i H_i^T(d_i / H_i z)`` (persisted on Dask), the data term and penalty, and -- when
the backend computes them with the state (Dask: one round trip per iteration) -- the
regularizer's statistics of the next EM step ``z * corr / s`` as named floats.
"""
from __future__ import annotations

import numpy as np

from .backend import NumpyBackend


def _ones(d):
    return np.ones(d.shape, d.dtype)


def _half(z, corr, s):
    """The EM step ``z * corr / s``."""
    return z * corr / s


def _safe(s, free):
    """The sensitivity with 1 where no data constrain the voxel (their EM step is 0 / 0)."""
    keep = s > 0 if free is None else free
    return np.where(keep, s, 1).astype(s.dtype, copy=False)


def _weighted_total(s, z):
    """``sum(s z)`` in float64 (a block's share of the predicted counts)."""
    return float(np.sum(s * z, dtype=np.float64))


def _sq_diff(a, b):
    """``sum((a - b)^2)`` in float64 (a block's share)."""
    d = a.astype(np.float64) - b
    return float(np.sum(d * d))


def _sq(a):
    """``sum(a^2)`` in float64 (a block's share)."""
    return float(np.sum(np.square(a, dtype=np.float64)))


def _rescaled(z, num, den):
    """``z * num / den`` (unchanged when ``den`` is not > 0 or either total is not finite)."""
    num, den = float(num), float(den)
    if not (den > 0 and np.isfinite(num) and np.isfinite(den)):
        return z
    return (z * np.float64(num / den)).astype(z.dtype, copy=False)


def _clip_hold(z, free):
    """``max(z, 0)``, and 0 on the voxels no data constrain."""
    out = np.maximum(z, 0)
    if free is not None:
        out = np.where(free, out, 0).astype(out.dtype, copy=False)
    return out


class EMProx:
    name = "em"

    #: rescale the regularized iterate to the predicted counts of its EM step (see :meth:`_renormalized`)
    renormalize = True

    def __init__(self, likelihood, regularizer=None, free=None, backend=None):
        """``free`` (bool, fused shape or broadcastable to it): voxels some data constrain (``s > 0``, see
        :func:`xfusion.likelihood.free_voxels`); the others are held at 0 (their EM step would be 0/0).
        Default: all voxels, those with ``s = 0`` staying at 0 by themselves. ``backend``: where the
        arrays live (:mod:`xfusion.solvers.backend`; default in memory)."""
        self.lik = likelihood
        self.reg = regularizer
        self.B = backend or NumpyBackend()
        self.client = self.B.client
        self.free = None if free is None or np.all(free) else np.asarray(free, bool)
        s = None
        for t in likelihood.terms:
            w = t.weight if t.weight is not None else self.B.map(_ones, t.data)
            q = self.B.adjoint(t.model, w)
            s = q if s is None else self.B.map(np.add, s, q)
        self.sens = self.B.persist(self.B.map(_safe, s, self.free))

    def _eval(self, z):
        """Data term at z and the EM correction factor sum_i H_i^T(d_i / H_i z)."""
        val, corr = 0.0, None
        for t in self.lik.terms:
            m = self.B.forward(t.model, z)
            val = val + t.value_from_model(m)
            q = self.B.adjoint(t.model, t.ratio(m))
            corr = q if corr is None else self.B.map(np.add, corr, q)
        return val, corr

    @property
    def stop_on(self):
        """What :func:`xfusion.solvers.loop.run` stops on: the iterate when regularized (module notes), else the
        objective (plain RL: the data term)."""
        return "objective" if self.reg is None else "iterate"

    def _state(self, z, pen, z_prev=None):
        val, corr = self._eval(z)
        stats = None
        if self.reg is not None:  # statistics of the next EM step, with the state (None in memory: see the backend)
            stats = (self.reg, self.B.statistics(self.reg, self.B.map(_half, z, corr, self.sens)))
        scalars = {"data_term": val, "penalty": pen}
        if z_prev is not None:  # ||z - z_prev||^2 and ||z||^2: totals, on Dask in the same round trip
            scalars.update(_dz2=self.B.total(_sq_diff, z, z_prev), _z2=self.B.total(_sq, z))
        state = self.B.finish({"z": z, "corr": corr}, scalars, stats)
        state["objective"] = state["data_term"] + state["penalty"]
        if z_prev is not None:
            dz2, z2 = state.pop("_dz2"), state.pop("_z2")
            state["iterate_change"] = float(np.sqrt(dz2 / z2)) if z2 > 0 else (0.0 if dz2 == 0 else np.inf)
        return state

    def init(self, z0):
        z = self.B.cube(z0, self.sens.shape, self.sens.dtype)
        if self.free is not None:
            z = self.B.map(_clip_hold, z, self.free)
        return self._state(z, 0.0)

    def step(self, state):
        zh = self.B.map(_half, state["z"], state["corr"], self.sens)
        if self.reg is None:
            z, pen = zh, 0.0
        else:  # the statistics of zh come with the state when the backend computed them there
            z, pen = self.B.prox(self.reg, zh, self.reg.stats_from_scalars(state))
        z = self.B.map(_clip_hold, z, self.free)
        if self.reg is not None and self.renormalize:
            z = self._renormalized(z, zh)
        return self._state(z, pen, state["z"] if self.stop_on == "iterate" else None)

    def _renormalized(self, z, z_half):
        """``z`` rescaled so its predicted counts ``sum(s z)`` equal those of the EM step ``z_half``.

        Without background ``sum(s z_half) = sum_i sum(d_i)`` exactly (the EM step conserves the
        counts), and the factor ``a = sum(d) / sum(s z)`` is the closed-form Poisson MLE of a global
        amplitude of ``z`` (``d/da L(a z) = 0``). Soft thresholding and the clip at 0 otherwise add
        flux: clipping the negative lobes of thresholded coefficients is not zero-mean (measured +1
        to +4% total flux on the scene suite). With a background, ``sum(s z_half)`` is the EM
        estimate of the source counts, so the same rule applies.
        """
        num = self.B.total(_weighted_total, self.sens, z_half)
        den = self.B.total(_weighted_total, self.sens, z)
        return self.B.map(_rescaled, z, num, den)  # on Dask: reductions inside the graph, no round trip

    def solution(self, state):
        return state["z"]
