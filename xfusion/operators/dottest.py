"""Dot-product (adjoint) test, public so users can check their own responses.

For a linear operator ``A`` with a claimed adjoint ``A^T`` the identity
``<A x, y> = <x, A^T y>`` holds for every ``x`` and ``y``. With zero-mean N(0, 1) vectors the
two inner products are sums of terms of random sign: a wrong adjoint (e.g. one shifted by
one pixel) changes them by an amount of the same order as the products themselves, so the
relative mismatch of a wrong adjoint is O(0.1-1), while a correct one gives ~1e-15 in float64
and ~1e-7-1e-6 in float32. (Positive U(0, 1) vectors hide such errors: every term is
positive and the products agree to ~1e-4 even for a shifted adjoint, the float32 tolerance.)
"""
from __future__ import annotations

import numpy as np


def dottest(op, in_shape, dtype=np.float64, seed=0):
    """Relative mismatch ``|<A x, y> - <x, A^T y>| / s``.

    ``op`` has ``forward`` and ``adjoint`` acting on NumPy arrays; ``in_shape`` is the shape
    of ``x``. ``x`` ~ N(0, 1) of ``in_shape`` and ``y`` ~ N(0, 1) of the output shape, both in
    ``dtype``; inner products accumulated in float64. The scale ``s`` is the larger of
    ``|<A x, y>|``, ``|<x, A^T y>|`` and their typical size under the random vectors,
    ``||A x|| ||y|| / sqrt(y.size)`` and ``||x|| ||A^T y|| / sqrt(x.size)`` (the standard
    deviation of the inner product): with zero-mean vectors the products can be near 0 by
    chance, and float32 rounding relative to such a near-zero value would look like an error.
    A correct adjoint gives ~1e-15 in float64 and <= ~1e-6 in float32 (tolerances 1e-10 and
    1e-4 are safe); a wrong one O(0.1-1). Raises AssertionError if the adjoint returns the
    wrong shape.
    """
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(in_shape).astype(dtype)
    ax = np.asarray(op.forward(x))
    y = rng.standard_normal(ax.shape).astype(dtype)
    aty = np.asarray(op.adjoint(y))
    if aty.shape != x.shape:
        raise AssertionError(f"adjoint returned shape {aty.shape}, expected {x.shape}")
    ax64, y64 = ax.astype(np.float64), y.astype(np.float64)
    x64, aty64 = x.astype(np.float64), aty.astype(np.float64)
    lhs = float(np.sum(ax64 * y64))
    rhs = float(np.sum(x64 * aty64))
    typical = max(np.linalg.norm(ax64) * np.linalg.norm(y64) / np.sqrt(max(y.size, 1)),
                  np.linalg.norm(x64) * np.linalg.norm(aty64) / np.sqrt(max(x.size, 1)))
    return abs(lhs - rhs) / max(abs(lhs), abs(rhs), float(typical), 1e-300)
