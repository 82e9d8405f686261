"""Exposure x effective area: a diagonal operator."""
from __future__ import annotations

import numpy as np


class Scale:
    """Multiply by ``weights`` (t * A): ``y = w * z``; self-adjoint, ``z' = w * y``.

    ``weights`` broadcasts against the cube: shape (L,) for an effective area per energy,
    (M, N, L) for a vignetted one, or scalar. Units: s cm2 (exposure x area), turning a
    photon flux per voxel (ph cm-2 s-1) into expected counts.
    """

    def __init__(self, weights):
        self.weights = np.asarray(weights, dtype=np.float64)
        self._w32 = self.weights.astype(np.float32)

    def _w(self, z):
        return self._w32 if z.dtype == np.float32 else self.weights

    def in_shape(self, shape):
        return tuple(shape)

    def forward(self, z):
        return z * self._w(z)

    adjoint = forward
