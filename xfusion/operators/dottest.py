"""Dot-product (adjoint) test, public so users can check their own responses."""
from __future__ import annotations

import numpy as np


def dottest(op, in_shape, dtype=np.float64, seed=0):
    """Relative mismatch ``|<A x, y> - <x, A^T y>| / max(|<A x, y>|, |<x, A^T y>|)``.

    ``x`` ~ U(0,1) of ``in_shape`` and ``y`` ~ U(0,1) of the output shape, in ``dtype``;
    inner products accumulated in float64. A correct adjoint gives ~1e-15 in float64 and
    ~1e-7 in float32.
    """
    rng = np.random.default_rng(seed)
    x = rng.random(in_shape).astype(dtype)
    ax = op.forward(x)
    y = rng.random(ax.shape).astype(dtype)
    aty = op.adjoint(y)
    if aty.shape != x.shape:
        raise AssertionError(f"adjoint returned shape {aty.shape}, expected {x.shape}")
    lhs = float(np.sum(ax.astype(np.float64) * y))
    rhs = float(np.sum(x.astype(np.float64) * aty))
    return abs(lhs - rhs) / max(abs(lhs), abs(rhs), 1e-300)
