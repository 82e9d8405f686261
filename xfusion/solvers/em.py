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

Noise maps (priors with ``noise="propagated"``, :mod:`xfusion.regularizers.sparsity`): with the state the
solver also passes ``var = z / s`` (the EM step's Poisson variance per voxel, independent-voxel bound) and a
noise probe ``(z / s) sum_i H_i^T(w_i eps_i / sqrt(m_i))`` (fixed standard-normal draws ``eps_i`` on each input's
data: the linearized noise of the EM step, correlations included) to the prior's statistics, and ``var`` to its
apply. The probe's back-projection ``sum_i H_i^T(...)`` (one adjoint per input, state ``noise_q``) and the
prior's statistics (per-band factors and variance floors: a few floats) are refreshed at the first 4 states
and every :attr:`EMProx.probe_every`-th and carried in the state in between, when only ``var`` is new (the
factors describe the operators' correlations and change slowly). Subclasses that override :meth:`_eval` must
set ``self._expected`` (the expected counts of every input). Cost per iteration against ``noise="mad"``
(session 7, in memory, one BLAS thread, load ~2, iterations 4-19 of k=1, best of 2): suite scene mixed/1004
(45x45x2400, 2 inputs) 0.280 vs 0.225 s (n_scales_1d=2), 0.427 vs 0.339 s (5); 72x72x200 mosaic with 7 inputs
0.068 vs 0.064 s and 0.096 vs 0.088 s. The extra work is the threshold maps (a smoothing cascade of ``var``
and one threshold array per band) and, every 8th iteration, the probe (one adjoint per input).

Several sharp-spatial inputs (issue 18, session 9; ``roles`` given, at least two inputs with role "spatial": pn + MOS1
+ MOS2). The EM correction is the sensitivity-weighted mean of the inputs' back-projected ratios, so adding MOS
(same pixels, same role) shrinks the share ``s_R / s`` of the sharp-spectral inputs in every step: the structure only
they constrain (line shifts, i.e. velocities) moves more slowly, and with thresholds set by the signal ("mad") its
implied penalty ``rho s / z`` grows. Balanced step: every sharp-spatial input gets the weight
``a = sum_v max_i s_i(v) / sum_v sum_i s_i(v)`` (i over the sharp-spatial inputs, ``s_i = H_i^T w_i``; 0.54 for
pn + MOS1 + MOS2), the others 1, and the EM step is that of the WEIGHTED likelihood ``sum_i a_i L_i``::

    Z_half = Z / s_a * sum_i a_i H_i^T( d_i / (H_i Z) ),     s_a = sum_i a_i H_i^T 1

(without a prior it converges to the maximizer of ``sum_i a_i L_i``: a weighted (tempered) likelihood in which the
sharp-spatial group weighs as much as its largest input alone while its ratio pools all its counts; it equals the ML
estimate when the model fits the data exactly, e.g. noise-free). The data term in the state is ``sum_i a_i L_i``.
With a prior, the thresholds of the bands only the sharp-spatial inputs constrain (fine in space, coarsest in
energy: ``(a, n1)``, ``a < n2``) are multiplied by ``f = a S / S_a`` (``S = sum_v s``, ``S_a = sum_v s_a``; noise
models "mad" and "poisson"), so structure only the sharp-spatial inputs see keeps the penalty it has without the
weights (exactly so where the thresholds are signal-dominated), while the sharp-spectral structure gets the step
share it has with one sharp-spatial input. Two inputs, or one sharp-spatial input (pn + Resolve tiles): unchanged
(no weights). :attr:`EMProx.balance_spatial` = False turns it off. Measured (benchmarks/mosaic_suite.py, default
"auto", 72x72x200, pn + MOS1 + MOS2 + 2x2 Resolve mosaic minus pn + mosaic; session-9 logs s9_mosvel_*.log of the
development notes): 20 tuning scenes, NMSE +0.40 dB (better on 15/20, worst -1.50) -> +0.41 (17/20, worst -1.73),
velocity RMS -1.7 km/s (better on 10/16) -> -1.1 (10/16); weights alone (no threshold factor): +0.25 dB 16/20,
+0.1 km/s 9/16. Held out (10 scenes, rule frozen before): +0.62 dB (8/10, worst -1.08) -> +1.15 (9/10, worst
-0.05), velocity +9.1 km/s (better on 2/8) -> +5.5 (5/8; point_sources/700007: +55 km/s, "auto" picked the
thresholded null space there).
At fixed k = 1, 50 iterations (3 tuning scenes, weights alone) the velocity error with MOS fell 7-13 km/s below pn's
(unweighted: 0 to 3 above). Most of the remaining per-scene velocity change comes from the k and iterations auto picks.

Written once against a backend (:mod:`xfusion.solvers.backend`): in memory by default, on
Dask blocks with :class:`xfusion.backends.blockwise.DaskBackend`. In memory, inputs whose models share their
first operator are evaluated together (:attr:`EMProx.groups`, :mod:`xfusion.operators.group`: pn + MOS1 + MOS2
as one product with their stacked response matrices, a mosaic's tiles as one gather and one scatter; issue 18,
session 8: 7 inputs of the 72x72x400 mosaic 45 -> 28 ms per RL iteration): the same sums in another order (float
round-off; two inputs form no group, bit-identical); on Dask the inputs run one by one. The state holds ``z`` and
``corr = sum_i H_i^T(d_i / H_i z)`` (persisted on Dask), the data term and penalty, and -- when
the backend computes them with the state (Dask: one round trip per iteration) -- the
regularizer's statistics of the next EM step ``z * corr / s`` as named floats.
"""
from __future__ import annotations

import numpy as np

from ..likelihood import above_support
from .backend import NumpyBackend


def _ones(d):
    return np.ones(d.shape, d.dtype)


def _half(z, corr, s):
    """The EM step ``z * corr / s``."""
    out = np.multiply(z, corr)
    return np.divide(out, s, out=out) if out.dtype == np.result_type(out, s) else out / s


def _variance(z, s):
    """``z / s``: the Poisson variance of the EM step ``z * corr / s`` per voxel (independent-voxel model; see
    :mod:`xfusion.regularizers.sparsity`, noise model "propagated")."""
    return z / s


def _noise_ratio(m, eps, w=None):
    """``w eps / sqrt(m)`` (0 where ``m <= 0``): data-space noise whose back-projection ``H^T`` has the covariance
    ``H^T diag(w^2 / m) H`` of the EM correction ``H^T(w d / m)`` under ``d ~ Poisson(m)`` (``m`` the expected
    counts, background included)."""
    out = np.where(m > 0, eps / np.sqrt(np.maximum(m, np.finfo(m.dtype).tiny)), 0).astype(m.dtype, copy=False)
    return out if w is None else out * w


def _safe(s, free):
    """The sensitivity with 1 where no data constrain the voxel (their EM step is 0 / 0)."""
    keep = s > 0 if free is None else free
    return np.where(keep, s, 1).astype(s.dtype, copy=False)


def _scaled(a, f):
    """``a * f`` (``f`` a float; the dtype of ``a`` kept)."""
    return a * a.dtype.type(f)


def _weighted_total(s, z):
    """``sum(s z)`` in float64 (a block's share of the predicted counts)."""
    return float(np.sum(s * z, dtype=np.float64))


def _row_total(q):
    """``sum(q)`` of a cube of squares: summed along the last axis in ``q``'s dtype (pairwise: relative error ~1e-7
    in float32), the partial sums in float64; None when not finite in a narrower dtype than float64 (overflow: the
    caller sums again in float64)."""
    out = float(np.sum(np.add.reduce(q, axis=-1) if q.ndim else q, dtype=np.float64))
    return out if np.isfinite(out) or q.dtype == np.float64 else None


def _sq_diff(a, b):
    """``sum((a - b)^2)`` (a block's share; for the iterate change of the stop rule, which is compared with ``tol``):
    see :func:`_row_total`."""
    d = np.subtract(a, b)
    out = _row_total(np.multiply(d, d, out=d))
    if out is None:
        d = np.subtract(a, b, dtype=np.float64)
        out = _row_total(np.multiply(d, d, out=d))
    return out


def _sum(a):
    """``sum(a)`` in float64 (a block's share; e.g. the total the spectral-shape prior of :attr:`EMProx.post` needs)."""
    return float(np.sum(a, dtype=np.float64))


def _sq(a):
    """``sum(a^2)`` (a block's share): see :func:`_row_total`."""
    out = _row_total(np.square(a))
    return _row_total(np.square(a, dtype=np.float64)) if out is None else out


def _rescaled(z, num, den):
    """``z * num / den`` (unchanged when ``den`` is not > 0 or either total is not finite)."""
    num, den = float(num), float(den)
    if not (den > 0 and np.isfinite(num) and np.isfinite(den)):
        return z
    # the product in float64, rounded to z's dtype on output (no float64 cube)
    return np.multiply(z, np.float64(num / den), out=np.empty(z.shape, z.dtype), casting="same_kind")


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
    #: noise="propagated" priors: the noise probe's back-projection and the prior's statistics are recomputed at
    #: the first 4 states, then at every ``probe_every``-th (one adjoint per input each time); carried in between
    probe_every = 8
    #: weigh the sharp-spatial inputs together as much as the largest of them when there are several (module notes,
    #: "Several sharp-spatial inputs"); needs ``roles``
    balance_spatial = True
    #: a prior applied to the iterate before every EM step and to the solution (``fuse``'s ``shape_loop``: a
    #: :class:`~xfusion.regularizers.shape.SpectralShape`), or None. The state keeps the iterate as the step left it
    #: (its EM correction computed there), so a checkpointed state resumes the same way (:meth:`_shrunk`). On Dask
    #: the prior's total comes with the state, but the regularizer's statistics are then taken from the shrunk
    #: iterate's step inside the prox: one more round trip per iteration than without ``post``.
    post = None

    def __init__(self, likelihood, regularizer=None, free=None, backend=None, roles=None):
        """``free`` (bool, fused shape or broadcastable to it): voxels some data constrain (``s > 0``, see
        :func:`xfusion.likelihood.free_voxels`); the others are held at 0 (their EM step would be 0/0).
        Default: all voxels, those with ``s = 0`` staying at 0 by themselves. ``"sensitivity"``: the voxels
        :func:`~xfusion.likelihood.free_voxels` finds in this solver's own sensitivity ``s`` (on Dask: a bool cube
        kept like the iterate, never gathered; so that voxels no input sees stay at 0 as in memory). ``backend``: where the
        arrays live (:mod:`xfusion.solvers.backend`; default in memory). ``roles``: None, or per term "spatial"
        (the sharp-spatial input and inputs on its pixels) or "spectral" (the others): with two or more "spatial"
        inputs the EM step is balanced (module notes; :attr:`weights`, None when not)."""
        self.lik = likelihood
        self.reg = regularizer
        self.B = backend or NumpyBackend()
        self.client = self.B.client
        by_sensitivity = isinstance(free, str) and free == "sensitivity"
        if isinstance(free, str) and not by_sensitivity:
            raise ValueError(f"free must be a bool array, None or 'sensitivity'; got {free!r}")
        self.free = None if by_sensitivity or free is None or np.all(free) else np.asarray(free, bool)
        qs = []
        for t in likelihood.terms:
            w = t.weight if t.weight is not None else self.B.map(_ones, t.data)
            qs.append(self.B.adjoint(t.model, w))
        #: per-input weights ``a_i`` of the EM step (None: all 1) and the spatial-band threshold factor
        self.weights, self.band_factor = self._balance(qs, roles)
        if self.band_factor is not None and hasattr(regularizer, "with_band_scale"):
            self.reg = regularizer.with_band_scale({ab: self.band_factor for ab in regularizer.spatial_bands()})
        s = None
        for i, q in enumerate(qs):
            if self.weights is not None:
                q = self.B.map(_scaled, q, self.weights[i])
            s = q if s is None else self.B.map(np.add, s, q)
        if by_sensitivity:  # free_voxels(s), on the backend
            peak = self.B.finish({}, {"peak": self.B.peak(s)})["peak"]
            self.free = self.B.persist(self.B.map(above_support, s, peak))
        self.sens = self.B.persist(self.B.map(_safe, s, self.free))
        #: the prior's thresholds need the EM step's noise maps (``noise="propagated"``)
        self.noise_maps = regularizer is not None and bool(getattr(regularizer, "wants_noise", False))
        self._eps = {}

    def _balance(self, qs, roles):
        """``(weights, f)`` of the balanced EM step (module notes) from the inputs' sensitivities ``qs``
        (``H_i^T w_i``) and ``roles``; ``(None, None)`` when fewer than two inputs are "spatial" (or no roles, or
        :attr:`balance_spatial` is off). One round trip of totals on Dask."""
        if roles is None or not self.balance_spatial:
            return None, None
        roles = list(roles)
        if len(roles) != len(qs) or any(r not in ("spatial", "spectral") for r in roles):
            raise ValueError(f"roles must give 'spatial' or 'spectral' for each of the {len(qs)} inputs; got {roles}")
        sp = [i for i, r in enumerate(roles) if r == "spatial"]
        if len(sp) < 2:
            return None, None
        top, tot = qs[sp[0]], qs[sp[0]]
        for i in sp[1:]:
            top, tot = self.B.map(np.maximum, top, qs[i]), self.B.map(np.add, tot, qs[i])
        lazy = {"max": self.B.total(_sum, top), "spatial": self.B.total(_sum, tot)}
        lazy.update({f"s{i}": self.B.total(_sum, qs[i]) for i in range(len(qs)) if i not in sp})
        got = self.B.finish({}, lazy)
        sx, sr = got["spatial"], sum(v for k, v in got.items() if k.startswith("s") and k != "spatial")
        if not (sx > 0 and got["max"] > 0):
            return None, None
        a = got["max"] / sx
        return [a if i in sp else 1.0 for i in range(len(qs))], a * (sx + sr) / (a * sx + sr)

    def _probe_noise(self, i, like):
        """Fixed standard-normal draws shaped like input ``i``'s data (seed ``i``; kept for the whole fit)."""
        if i not in self._eps:
            self._eps[i] = self.B.persist(self.B.normal(like, i))
        return self._eps[i]

    def _probe_due(self, index):
        """Whether state ``index`` (0 = the start; kept in the state as ``noise_state``, so a resumed fit keeps the
        schedule) refreshes the noise probe's back-projection: the first 4 states, then every :attr:`probe_every`
        (it follows the expected counts, which change slowly after the first iterations)."""
        return index < 4 or index % self.probe_every == 0

    def _noise_q(self):
        """``q = sum_i H_i^T(w_i eps_i / sqrt(m_i))`` at the expected counts ``m_i`` of the last :meth:`_eval`
        (``eps_i`` fixed standard-normal draws): the back-projected noise probe. One adjoint per input."""
        models = getattr(self, "_expected", None)
        if models is None or len(models) != len(self.lik.terms):
            raise RuntimeError("the noise probe needs the expected counts of every input from _eval (self._expected)")
        q = None
        for i, (t, m) in enumerate(zip(self.lik.terms, models)):
            w = () if t.weight is None else (t.weight,)
            r = self.B.map(_noise_ratio, m, self._probe_noise(i, m), *w)
            if self.weights is not None:  # the weighted correction's noise
                r = self.B.map(_scaled, r, self.weights[i])
            a = self.B.adjoint(t.model, r)
            q = a if q is None else self.B.map(np.add, q, a)
        return q

    def _noise(self, z, q):
        """``(var, probe)`` at ``z`` for a prior with ``noise="propagated"``: ``var = z / s`` and the noise probe
        ``z / s * q`` (:meth:`_noise_q`): a draw of the EM step's linearized Poisson noise, correlations
        included (:mod:`xfusion.regularizers.sparsity`)."""
        var = self.B.map(_variance, z, self.sens)
        return var, self.B.map(np.multiply, var, q)

    @property
    def groups(self):
        """The inputs evaluated together (:func:`xfusion.operators.group.group_models`): ``(group, indices)``
        pairs, ``group`` None for an input alone. In memory only (the backend's ``grouped``); on Dask, one by
        one."""
        if getattr(self, "_groups", None) is None:
            terms = self.lik.terms
            if getattr(self.B, "grouped", False):
                from ..operators.group import group_models

                self._groups = group_models([t.model for t in terms])
            else:
                self._groups = [(None, [i]) for i in range(len(terms))]
        return self._groups

    def _models_and_correction(self, z):
        """``(val, corr, m)``: the data term at z, the EM correction ``sum_i H_i^T(d_i / H_i z)`` (weighted:
        ``sum_i a_i L_i`` and ``sum_i a_i H_i^T(d_i / H_i z)``, :attr:`weights`) and every
        input's linear model ``H_i z`` (a list in the terms' order). Inputs that share a first operator are
        evaluated together (:attr:`groups`): the same sums in another order (float round-off)."""
        terms = self.lik.terms
        val, corr, models = 0.0, None, [None] * len(terms)
        for g, idx in self.groups:
            ms = [self.B.forward(terms[idx[0]].model, z)] if g is None else g.forward(z)
            rs = []
            for i, m in zip(idx, ms):
                models[i] = m
                if self.weights is None:
                    val = val + terms[i].value_from_model(m)
                    rs.append(terms[i].ratio(m))
                else:  # the balanced step: the weighted data term sum_i a_i L_i and its EM correction
                    val = val + self.weights[i] * terms[i].value_from_model(m)
                    rs.append(self.B.map(_scaled, terms[i].ratio(m), self.weights[i]))
            if g is None:
                q = self.B.adjoint(terms[idx[0]].model, rs[0])
                corr = q if corr is None else self.B.map(np.add, corr, q)
            else:  # a group adds its adjoint into the running sum where it can (tiles: no zero cube, no cube sum)
                corr = g.adjoint(rs) if corr is None else g.adjoint_add(rs, corr)
        return val, corr, models

    def _eval(self, z):
        """Data term at z and the EM correction factor sum_i H_i^T(d_i / H_i z)."""
        val, corr, models = self._models_and_correction(z)
        # the expected counts (background included) for the noise probe
        self._expected = [t._plus_background(m) for t, m in zip(self.lik.terms, models)] if self.noise_maps else []
        return val, corr

    @property
    def stop_on(self):
        """What :func:`xfusion.solvers.loop.run` stops on: the iterate when regularized (module notes), else the
        objective (plain RL: the data term)."""
        return "objective" if self.reg is None else "iterate"

    def _state(self, z, pen, z_prev=None, q=None, carried=None, index=0):
        val, corr = self._eval(z)
        stats, arrays, scalars = None, {"z": z, "corr": corr}, {"data_term": val, "penalty": pen}
        if self.noise_maps:  # refresh the probe and the statistics (first states, every probe_every-th), or carry them
            if self._probe_due(index) or q is None or not carried:
                q = self._noise_q()
                noise = self._noise(z, q)
                zh = self.B.map(_half, z, corr, self.sens)
                st = self.B.statistics(self.reg, zh, noise)
                if st is None:  # in memory: computed here (the apply reads them from the state until the next refresh)
                    scalars.update(self.reg.stats_scalars(self.reg.statistics(zh, noise)))
                stats = (self.reg, st)
            else:
                scalars.update(carried)
            arrays["noise_q"] = q
            scalars["noise_state"] = index
            self._expected = None
        elif self.reg is not None and self.post is None:  # statistics of the next EM step, with the state (None in
            # memory: see the backend); with :attr:`post` the step's prox computes them from the shrunk iterate's step
            stats = (self.reg, self.B.statistics(self.reg, self.B.map(_half, z, corr, self.sens))
                     if getattr(self.B, "stats_with_state", True) else None)
        if self.post is not None:  # the total :attr:`post` needs to shrink z, on Dask in the same round trip
            scalars["post_total"] = self.B.total(_sum, z)
        if z_prev is not None:  # ||z - z_prev||^2 and ||z||^2: totals, on Dask in the same round trip
            scalars.update(_dz2=self.B.total(_sq_diff, z, z_prev), _z2=self.B.total(_sq, z))
        state = self.B.finish(arrays, scalars, stats)
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
        z0 = self._shrunk(state)  # the iterate the EM step starts from (with :attr:`post`: shrunk first)
        zh = self.B.map(_half, z0, state["corr"], self.sens)
        if self.reg is None:
            z, pen = zh, 0.0
        else:  # the statistics of zh come with the state when the backend computed them there
            stats = self.reg.stats_from_scalars(state)
            if self.noise_maps and (stats is None or "noise_q" not in state):  # a state without them (resumed)
                state = self._state(state["z"], state["penalty"])
                stats = self.reg.stats_from_scalars(state)
                zh = self.B.map(_half, z0, state["corr"], self.sens)
            if self.noise_maps:  # var = z / s of the iterate the EM step started from
                z, pen = self.B.prox(self.reg, zh, stats, (self.B.map(_variance, z0, self.sens),))
            else:
                z, pen = self.B.prox(self.reg, zh, stats)
        z = self.B.map(_clip_hold, z, self.free)
        if self.reg is not None and self.renormalize:
            z = self._renormalized(z, zh)
        if not self.noise_maps:
            return self._state(z, pen, state["z"] if self.stop_on == "iterate" else None)
        # the statistics are carried to the next state unless it refreshes them (a state without an index: refresh)
        return self._state(z, pen, state["z"] if self.stop_on == "iterate" else None, state["noise_q"],
                           self.reg.stats_scalars(stats), int(state.get("noise_state", -1)) + 1)

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

    def _shrunk(self, state):
        """The state's iterate ``z`` through :attr:`post` (on the backend: Dask blocks with the prior's halo, the
        cube's total from the state, :meth:`_state`; recomputed for a state without it), or ``z`` itself.

        With ``post`` = P the iteration is ``z_{t+1} = prox(P(z_t) c(z_t) / s)``, ``c(z_t)`` the EM correction
        ``sum_i H_i^T(d_i / H_i z_t)`` of the state, and the solution is ``P(z_T)``: the prior shrinks every iterate
        the EM step reads, while the correction is the data's answer to the iterate as the previous step left it
        (what session 43 measured, ``benchmarks/shape_in_loop.py``)."""
        if self.post is None:
            return state["z"]
        total = state.get("post_total")
        stats = None if total is None else self.post.combine([total])
        return self.B.prox(self.post, state["z"], stats)[0]

    def solution(self, state):
        return self._shrunk(state)
