"""Exposure x effective area: a diagonal operator."""
from __future__ import annotations

import numpy as np


class Scale:
    """Multiply by ``weights`` (t * A): ``y = w * z``; self-adjoint, ``z' = w * y``.

    ``weights`` broadcasts against the cube: shape (L,) for an effective area per energy,
    (M, N, L) for a vignetted one, or scalar. Units: s cm2 (exposure x area), turning a
    photon flux per voxel (ph cm-2 s-1) into expected counts.

    Block form: local (no halo) when the weights vary with energy only; vignetted (M, N, L)
    weights depend on the position, so a block backend multiplies by the weights chunked like
    the cube instead (``position_dependent``).
    """

    depth, factor = (0, 0), (1, 1)

    def __init__(self, weights):
        self.weights = np.asarray(weights, dtype=np.float64)
        self._w32 = self.weights.astype(np.float32)
        self.position_dependent = self.weights.ndim > 1

    def _w(self, z):
        return self._w32 if z.dtype == np.float32 else self.weights

    def forward(self, z):
        return z * self._w(z)

    adjoint = forward

    def forward_valid(self, z):
        if self.position_dependent:
            raise ValueError("Scale with (M, N, L) weights has no block form: multiply by the weights chunked like "
                             "the cube")
        return self.forward(z)

    adjoint_valid = forward_valid
