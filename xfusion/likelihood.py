"""Poisson data fidelity for the two instruments.

For one data set d with model m = H z (H an :class:`~xfusion.operators.model.InstrumentModel`)
the negative Poisson log-likelihood is ``sum(m - d log m)`` up to a constant. We report it
in Kullback-Leibler (Csiszar) form

    D(z) = sum_v w_v [ m_v - d_v + d_v log(d_v / m_v) ]      (0 log 0 = 0)

which differs from ``sum(m - d log m)`` only by a constant, is >= 0 and 0 at a perfect fit, so
relative changes of the objective are meaningful. Gradient:
``grad D = H^T( w (1 - d / m) )``.

Masked voxels (``w_v = 0``; from the observation's ``mask``) are excluded explicitly.
Where ``m_v = 0`` and ``d_v > 0`` the objective is +inf (the point is infeasible); the
gradient there uses ``d / max(m, tiny)`` so it is finite but huge. ``m_v < 0`` (possible
only for low-rank iterates) is treated as infeasible too. Sums are accumulated in float64.
"""
from __future__ import annotations

import numpy as np


class PoissonTerm:
    """One data set: counts ``data`` (shape ``model.data_shape``), its model and optional mask."""

    def __init__(self, model, data, mask=None, dtype=np.float32):
        self.model = model
        self.data = np.array(data, dtype=dtype, order="C", copy=True)  # private copy: never aliases user data
        self.weight = None if mask is None else np.asarray(mask, dtype=dtype)
        d = self.data if self.weight is None else self.data * self.weight
        self._dlogd = float(np.sum(np.where(d > 0, d * np.log(np.where(d > 0, d, 1.0)), 0.0), dtype=np.float64))
        self._dsum = float(np.sum(d, dtype=np.float64))

    def value_from_model(self, m):
        """D for a model array m (float64 accumulation)."""
        d = self.data
        w = self.weight
        pos = d > 0
        if np.any((m <= 0) & pos if w is None else (m <= 0) & pos & (w > 0)):
            return np.inf
        logm = np.log(np.where(m > 0, m, 1.0))
        if w is None:
            return float(np.sum(m, dtype=np.float64)) - self._dsum + self._dlogd - float(np.sum(d * logm, dtype=np.float64))
        return (float(np.sum(w * m, dtype=np.float64)) - self._dsum + self._dlogd
                - float(np.sum(w * d * logm, dtype=np.float64)))

    def residual_factor(self, m):
        """``w (1 - d/m)``: the gradient of D with respect to the model."""
        tiny = np.finfo(m.dtype).tiny
        r = 1.0 - self.data / np.maximum(m, tiny)
        return r if self.weight is None else r * self.weight

    def ratio(self, m):
        """``w d / m`` (the Richardson-Lucy correction in data space)."""
        tiny = np.finfo(m.dtype).tiny
        q = self.data / np.maximum(m, tiny)
        return q if self.weight is None else q * self.weight

    def subspace_value_and_grad(self, a, v, grad=True):
        """Value (and coefficient gradient) for the model ``m = a @ v`` of a subspace iterate.

        ``a`` (..., r): the spatially transformed coefficients; ``v`` (r, l): the reduced
        spectral model. Returns ``(D, (w (1 - d/m)) @ v.T or None)``.
        """
        if self.weight is None:  # the same block kernel as the Dask path, on one block
            from .parallel import _block_value_grad

            out = _block_value_grad(self.data, a, v, grad)
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
