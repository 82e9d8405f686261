"""Poisson data fidelity for the two instruments.

For one data set d with model m = H z (H an :class:`~xfusion.operators.model.InstrumentModel`)
the negative Poisson log-likelihood is ``sum(m - d log m)`` up to a constant. We report it
in Kullback-Leibler (Csiszar) form

    D(z) = sum_v w_v [ m_v - d_v + d_v log(d_v / m_v) ]      (0 log 0 = 0)

which differs from ``sum(m - d log m)`` only by a constant, is >= 0 and 0 at a perfect fit, so
relative changes of the objective are meaningful. Gradient:
``grad D = H^T( w (1 - d / m) )``.

Known background. With an additive background ``B`` (expected counts per data voxel, known:
``model.background`` from the observation's ``background_rate``, or ``background=``) the
expected counts are ``m = H z + B``: the value and ``w (1 - d / m)`` use that ``m``, the
Richardson-Lucy ratio is ``d / (H z + B)``, the EM sensitivity ``H^T w`` is unchanged. The
methods below take ``Hz`` (the linear model, what the solvers compute) and add ``B``
themselves, so the solvers need no change.

Masked voxels (``w_v = 0``; from the observation's ``mask``) are excluded explicitly.
Where ``m_v = 0`` and ``d_v > 0`` the objective is +inf (the point is infeasible); the
gradient there uses ``d / max(m, tiny)`` so it is finite but huge. ``m_v < 0`` (possible
only for low-rank iterates) is infeasible where ``d_v > 0``; where ``d_v = 0`` the expected
counts are ``max(m_v, 0)`` (term 0, gradient 0), so ``D >= 0`` always -- it is what fusion
results report as ``data_term`` (half the Poisson deviance, in nats). Sums are accumulated in
float64.
"""
from __future__ import annotations

import numpy as np


def aligned(x, dtype=None):
    """``x`` as an aligned, C-contiguous NumPy array (``dtype`` if given; a copy only when needed).

    Why every block kernel calls it on its inputs: ``distributed`` hands task inputs (embedded
    constants and data transferred between workers) over as views of its network frames, which
    start at arbitrary byte offsets. NumPy routes a matmul with a misaligned operand through
    its own loop instead of BLAS and buffers reductions over misaligned arrays, so the same
    block gave results 1 ulp apart depending on where its message landed in memory. Measured
    on the ``small`` toy, 2-worker LocalCluster: 30-80% of the gradient blocks differed in the
    last bit between identical evaluations, and two identical ``lowrank_sobolev`` runs parted
    (line-search and restart decisions flip) -- with aligned inputs they are bit-identical.
    """
    return np.require(x, dtype=dtype, requirements=("C", "A"))


def block_value_grad(d, a, v, grad):
    """Variable part of the data term and coefficient gradient of one block, ``m = a @ v``.

    Returns (bx, by, r [+1]) with ``sum(max(m, 0)) - sum_{d>0} d log m`` in element [0, 0, -1]
    (the data-only constant ``sum(d log d - d)`` is added once by the caller) and, where
    feasible, the gradient ``g @ v.T`` with ``g = 1 - d/m`` where ``m > 0`` and 0 where ``m < 0``.
    A subspace model may dip below 0 where ``d = 0``; expected counts cannot, so the data term
    is that of the clipped model ``max(m, 0)`` -- a Poisson deviance, >= 0 -- and a negative
    model is not rewarded (with ``sum(m)`` it was: measured on ``small``, ``lowrank_sobolev``
    drove the data term to -5570 and ran 300 iterations unconverged, 16.46 dB; clipped: 49
    iterations, converged, 16.75 dB; ``gaussian_rebin``: 15.75 dB either way, plain
    ``lowrank`` at its 30-iteration early stop 16.96 -> 16.83 dB). Computed in float64
    whatever the input dtype: BLAS picks different kernels for different block shapes, and
    in float32 their rounding differs enough (~1e-7) for an accelerated solver to drift
    apart between chunkings over tens of iterations; in float64 the NumPy path (one block)
    and every Dask chunking agree to float32 precision.
    """
    a = aligned(a, np.float64)
    v = aligned(v, np.float64)
    d = aligned(d)
    m = a @ v
    pos = d > 0
    dp = np.asarray(d[pos], dtype=np.float64)
    mp = m[pos]
    r = v.shape[0]
    out = np.zeros(a.shape[:2] + (r + 1 if grad else 1,), dtype=np.float64)
    if np.any(mp <= 0):
        out[0, 0, -1] = np.inf
        return out
    neg = m < 0  # only where d = 0 (d > 0 with m <= 0 is infeasible, above)
    out[0, 0, -1] = float(np.sum(np.where(neg, 0.0, m))) - float(np.sum(dp * np.log(mp)))
    if grad:  # at an infeasible point the value (+inf) already rejects it
        q = np.zeros_like(m)
        q[pos] = dp / mp
        q[neg] = 1.0  # d/dm max(m, 0) = 0 there: cancels the 1 of v.sum(1)
        out[:, :, :r] = v.sum(axis=1) - q @ v.T
    return out


def data_constant(d):
    """``sum(d log d - d)`` (0 log 0 = 0), float64, for a NumPy block."""
    d = aligned(d, np.float64)
    pos = d > 0
    return float(np.sum(d[pos] * np.log(d[pos])) - np.sum(d))


def poisson_value(m, d, w=None):
    """Variable part of D for one block: ``sum w max(m, 0) - sum w d log m`` (float64 sums), +inf where the
    model is <= 0 with counts (masked voxels, ``w = 0``, excluded). The block kernel of every backend:
    D is the sum over blocks plus the data-only constant ``sum(w d log d - w d)``."""
    pos = d > 0
    if np.any((m <= 0) & pos if w is None else (m <= 0) & pos & (w > 0)):
        return np.inf
    logm = np.log(np.where(m > 0, m, 1.0))
    if np.any(m < 0):  # subspace iterates only: expected counts are max(m, 0)
        m = np.maximum(m, 0)
    if w is None:
        return float(np.sum(m, dtype=np.float64)) - float(np.sum(d * logm, dtype=np.float64))
    return float(np.sum(w * m, dtype=np.float64)) - float(np.sum(w * d * logm, dtype=np.float64))


def poisson_ratio(m, d, w=None):
    """``w d / m`` of one block (the Richardson-Lucy correction in data space; 0 where masked, whatever m)."""
    tiny = np.finfo(m.dtype).tiny
    with np.errstate(over="ignore"):
        q = d / np.maximum(m, tiny)
    return q if w is None else np.where(w > 0, q * w, 0).astype(q.dtype, copy=False)


class PoissonTerm:
    """One data set: counts ``data`` (shape ``model.data_shape``), its model and optional mask."""

    def __init__(self, model, data, mask=None, dtype=np.float32, background=None):
        self.model = model
        self.data = np.array(data, dtype=dtype, order="C", copy=True)  # private copy: never aliases user data
        self.weight = None if mask is None else np.asarray(mask, dtype=dtype)
        if background is None:
            background = getattr(model, "background", None)
        self.background = None
        if background is not None:
            b = np.array(background, dtype=dtype, order="C", copy=True)
            if b.shape != self.data.shape or not np.all(np.isfinite(b)) or np.any(b < 0):
                raise ValueError(f"background must be finite, >= 0 and shaped like the data {self.data.shape}; got "
                                 f"shape {b.shape}")
            self.background = b if np.any(b > 0) else None
        if self.weight is not None:
            self.data[self.weight == 0] = 0  # masked counts never enter (no inf * 0 in the ratios)
        d = self.data if self.weight is None else self.data * self.weight
        self._dlogd = float(np.sum(np.where(d > 0, d * np.log(np.where(d > 0, d, 1.0)), 0.0), dtype=np.float64))
        self._dsum = float(np.sum(d, dtype=np.float64))

    def _plus_background(self, m):
        return m if self.background is None else m + self.background.astype(m.dtype, copy=False)

    @property
    def constant(self):
        """``sum(w d log d - w d)``: the data-only part of D (0 log 0 = 0), float64."""
        return self._dlogd - self._dsum

    def value_from_model(self, m):
        """D for a linear model array m = H z (float64 accumulation; the background, if any, added here)."""
        return poisson_value(self._plus_background(m), self.data, self.weight) + self.constant

    def residual_factor(self, m):
        """``w (1 - d/(m + B))``: the gradient of D with respect to the model (0 where masked, whatever m)."""
        m = self._plus_background(m)
        tiny = np.finfo(m.dtype).tiny
        with np.errstate(over="ignore"):  # d > 0 = m: infeasible, the value (+inf) says so
            r = 1.0 - self.data / np.maximum(m, tiny)
        if np.any(m < 0):  # d/dm max(m, 0) = 0 where a subspace model dips below 0 (d = 0 there)
            r = np.where(m < 0, 0.0, r).astype(r.dtype, copy=False)
        return r if self.weight is None else np.where(self.weight > 0, r * self.weight, 0).astype(r.dtype, copy=False)

    def ratio(self, m):
        """``w d / (m + B)`` (the Richardson-Lucy correction in data space; 0 where masked, whatever m)."""
        return poisson_ratio(self._plus_background(m), self.data, self.weight)

    def subspace_value_and_grad(self, a, v, grad=True):
        """Value (and coefficient gradient) for the model ``m = a @ v`` of a subspace iterate.

        ``a`` (..., r): the spatially transformed coefficients; ``v`` (r, l): the reduced
        spectral model. Returns ``(D, (w (1 - d/m)) @ v.T or None)``.
        """
        if self.weight is None and self.background is None and self.data.ndim == 3:  # the Dask path's block kernel
            out = block_value_grad(self.data, a, v, grad)
            val = float(out[:, :, -1].sum()) + self._dlogd - self._dsum
            return val, (out[:, :, :-1].astype(a.dtype) if grad else None)
        m = a @ v
        val = self.value_from_model(m)
        return val, (self.residual_factor(m) @ v.T if grad else None)

    def sensitivity(self):
        """``H^T w``: the EM normalisation (expected counts per unit flux, summed over the data)."""
        ones = np.ones(self.data.shape, self.data.dtype) if self.weight is None else self.weight
        return self.model.adjoint(ones)


class PoissonLikelihood:
    """Sum of :class:`PoissonTerm` over the instruments: value and gradient w.r.t. the fused cube."""

    def __init__(self, terms):
        self.terms = list(terms)

    def models(self, z):
        return [t.model.forward(z) for t in self.terms]

    def value(self, z):
        return sum(t.value_from_model(m) for t, m in zip(self.terms, self.models(z)))

    def value_and_grad(self, z):
        val, grad = 0.0, None
        for t in self.terms:
            m = t.model.forward(z)
            val += t.value_from_model(m)
            g = t.model.adjoint(t.residual_factor(m))
            grad = g if grad is None else grad + g
        return val, grad

    def gradient(self, z):
        return self.value_and_grad(z)[1]


# --------------------------------------------------------------------------- degenerate problems
#: expected counts (per unit flux) below this fraction of their maximum count as "never nonzero": an
#: exact zero (zero area, zero response row) stays 0 through the operators, FFT noise is ~1e-16
ZERO_SUPPORT = 1e-12


def _ranges(idx, edges):
    """'0.50-0.72 keV (channels 0-2), ...' for sorted channel indices (runs merged)."""
    runs, start = [], idx[0]
    for a, b in zip(idx[:-1], idx[1:]):
        if b != a + 1:
            runs.append((start, a))
            start = b
    runs.append((start, idx[-1]))
    text = [f"{edges[i]:.4g}-{edges[j + 1]:.4g} keV (channel{'s' if j > i else ''} {i}{'' if j == i else f'-{j}'})"
            for i, j in runs[:8]]
    return ", ".join(text) + (f" and {len(runs) - 8} more ranges" if len(runs) > 8 else "")


def _silent_cause(model):
    if not np.any(model.weights > 0):
        return ("its exposure x effective area is 0 at every energy of the fused grid (check effective_area and "
                "exposure)")
    return ("its response maps no energy of the fused grid onto any channel (an all-zero response matrix or PSF?); "
            "check response")


def _check_channels(name, model, support, channel_counts, edges):
    """Shared by both paths: refuse a model that is zero everywhere, or data where it is always 0.

    ``support``: expected counts per unit flux (``H 1``), per channel (l,) or per voxel; ``channel_counts``
    (l,): observed counts per channel where ``support`` is zero (summed over pixels).
    """
    if not np.any(support > 0):
        raise ValueError(f"observation '{name}' predicts zero counts for any flux: {_silent_cause(model)}")
    bad = np.flatnonzero(channel_counts > 0)
    if bad.size:
        raise ValueError(
            f"observation '{name}' has {float(channel_counts[bad].sum()):.6g} counts in "
            f"{_ranges(bad, edges)} where its model predicts zero counts for any flux (effective area x "
            "response is 0 there, so no flux can explain them). Exclude those channels with mask= (False there), "
            "or fix effective_area/response.")


def support_in_memory(term, name, edges):
    """Check one in-memory data set and return its sensitivity ``H^T w`` (fused shape, float64).

    ``H 1`` is computed on a cube of ones (one forward), zero where below ``ZERO_SUPPORT`` of its
    maximum; data counts (``w > 0``) where it is zero raise a ``ValueError`` naming the channels
    (exclusion must be explicit: a mask), a model zero everywhere raises naming the cause.
    """
    model = term.model
    h1 = np.asarray(model.forward(np.ones(model.fused_shape, np.float64)), dtype=np.float64)
    valid = np.ones(h1.shape, bool) if term.weight is None else term.weight > 0
    if not valid.any():  # (session 28: blamed the response or PSF)
        raise ValueError(f"observation '{name}' has every data voxel masked (mask False everywhere): it constrains "
                         "nothing; leave it out of the inputs or fix its mask")
    peak = float(h1[valid].max()) if valid.any() else 0.0
    zero = h1 <= ZERO_SUPPORT * peak
    support = np.where(valid & ~zero, h1, 0.0)
    unexplained = valid & zero if term.background is None else valid & zero & (term.background <= 0)
    counts = np.where(unexplained, term.data, 0).sum(axis=tuple(range(h1.ndim - 1)), dtype=np.float64)
    _check_channels(name, model, support, counts, edges)
    w = np.ones(term.data.shape, np.float64) if term.weight is None else term.weight.astype(np.float64)
    return np.asarray(model.adjoint(np.where(zero, 0.0, w)), dtype=np.float64)


def support_by_channel(model, name, edges, channel_counts, voxel_counts=None):
    """Dask path (weights over energy only): per-channel version of :func:`support_in_memory`.

    The spatial operators (rebin, PSF: non-negative, summing to 1) see every pixel, so whether
    a channel can ever hold counts depends on energy only: ``H 1`` per data channel is
    ``spectral(weights)`` (bands of an energy-dependent PSF summed). Returns the fused
    channels' sensitivity (L,) up to a positive spatial factor; ``channel_counts`` (l,) are
    the observed counts per channel. A model whose weights vary with position (vignetted, per-pixel ARFs) is
    checked with its pixel-mean weights (:meth:`~xfusion.operators.model.InstrumentModel.per_channel`), and
    ``voxel_counts`` (l,), if given, are its counts per channel in the data voxels whose own ``H 1`` is zero (the
    per-voxel rule of :func:`support_in_memory`, summed by the caller block by block): refused like counts in a
    channel no flux reaches.
    """
    _, v = model.reduced(np.ones((1, model.fused_shape[-1])))
    h1 = np.asarray(v, dtype=np.float64).sum(axis=0)
    zero = h1 <= ZERO_SUPPORT * float(h1.max(initial=0.0))
    unexplained = np.where(zero, channel_counts, 0.0 if voxel_counts is None else voxel_counts)
    _check_channels(name, model, np.where(zero, 0.0, h1), unexplained, edges)
    w = model.weights
    u = np.where(zero, 0.0, 1.0)[None]
    back = u if model.spectral is None else model.spectral.adjoint(u)
    return np.asarray(w * np.asarray(back, dtype=np.float64)[0], dtype=np.float64)


#: a fused voxel whose summed sensitivity is at most this fraction of the largest is not free (held at 0, reported
#: unconstrained): below it the data cannot move it (the float32 iterate resolves 1e-7), and it is the floor below
#: which an input's coverage map reports 0 (session 28: 1e-12 here left voxels that no input's coverage saw at their
#: start value, marked constrained)
FREE_FLOOR = 1e-9


def above_support(s, peak):
    """``s > FREE_FLOOR peak`` (bool): where a sensitivity ``s`` is not zero, relative to its largest value
    ``peak`` (the rule of :func:`free_voxels`; the EM solver applies it block by block on Dask)."""
    return s > FREE_FLOOR * peak


def free_voxels(sensitivity):
    """Fused voxels some flux can change the data of: ``s = sum_i H_i^T w_i > FREE_FLOOR max(s)``."""
    s = np.asarray(sensitivity)
    return above_support(s, float(s.max(initial=0.0)))


def make_term(obs, model, dtype=np.float32):
    """The data term of one observation on its instrument model: the ONE place :func:`xfusion.fuse`'s problem
    builder (and its pre-checks) create data terms, so another statistic (e.g. a Gaussian term for
    background-subtracted or integrated data) is added here. Today: Poisson counts (:class:`PoissonTerm`) with
    the observation's ``mask`` (1 = use, 0 = ignore) and the model's known background, in ``dtype``; a Gaussian
    term (:class:`xfusion.gaussian.GaussianTerm`) when the observation has a ``variance`` variable or
    ``attrs["data_term"] == "gaussian"`` (:func:`xfusion.gaussian.data_term`)."""
    if "variance" in obs or str(obs.attrs.get("data_term", "poisson")).lower() != "poisson":
        from .gaussian import data_term

        return data_term(model, obs, dtype=dtype)
    return PoissonTerm(model, obs["counts"].values, obs["mask"].values if "mask" in obs else None, dtype)
