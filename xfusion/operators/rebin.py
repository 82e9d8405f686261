"""Sum-rebinning of groups of pixels / channels (paper eq. 8)."""
from __future__ import annotations

import numpy as np


class Rebin:
    """Sum blocks of ``factors = (v_x, v_y, v_e)`` voxels.

    Forward: ``(R z)[s, t, c] = sum_{p<v_x, q<v_y, k<v_e} z[s v_x + p, t v_y + q, c v_e + k]``
    (M, N, L) -> (M/v_x, N/v_y, L/v_e). Adjoint: replicate each coarse value over its block
    (``R^T u = u (x) 1``). Sum-rebinning conserves counts; the adjoint conserves nothing but
    satisfies <R z, u> = <z, R^T u>.

    Block form (:mod:`xfusion.operators.blocks`): no halo, ``factor = (v_x, v_y)``: a block of
    ``(b_x, b_y)`` pixels (multiples of the factors) maps to ``(b_x / v_x, b_y / v_y)``.
    """

    depth = (0, 0)

    def __init__(self, factors):
        self.factors = tuple(int(f) for f in factors)
        if len(self.factors) != 3 or min(self.factors) < 1:
            raise ValueError(f"rebin factors must be 3 positive integers; got {factors}")
        self.factor = self.factors[:2]

    def forward(self, z):
        fx, fy, fe = self.factors
        M, N, L = z.shape
        if M % fx or N % fy or L % fe:
            raise ValueError(f"cube shape {z.shape} is not divisible by rebin factors {self.factors}")
        out = z
        if fe > 1:
            out = out.reshape(M, N, L // fe, fe).sum(axis=-1)
        if fx > 1 or fy > 1:
            out = out.reshape(M // fx, fx, N // fy, fy, -1).sum(axis=(1, 3))
        return out if out is not z else z.copy()

    def adjoint(self, u):
        fx, fy, fe = self.factors
        m, n, l = u.shape
        out = u
        if fe > 1:
            out = np.broadcast_to(out[:, :, :, None], (m, n, l, fe)).reshape(m, n, l * fe)
        if fx > 1 or fy > 1:
            out = np.broadcast_to(out[:, None, :, None, :], (m, fx, n, fy, out.shape[-1])).reshape(m * fx, n * fy, -1)
        return np.array(out, copy=True) if out is u or not out.flags.owndata else out

    forward_valid = forward
    adjoint_valid = adjoint
