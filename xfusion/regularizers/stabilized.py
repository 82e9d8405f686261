r"""A prior applied to the variance-stabilized cube: ``prox(z) = A^-1(prox_inner(A(z)))``.

Poisson noise grows like the square root of the intensity, so a threshold of k times ONE noise level per band (the
MAD over the whole cube) under-smooths bright voxels and over-smooths faint ones. The Anscombe transform

.. math:: A(z) = 2\sqrt{\max(z, 0) + 3/8}

(Anscombe 1948; ``z`` in internal units, about the sharp-spatial counts per fused voxel) makes the noise close to 1
everywhere; the inner prior (the 2D-1D starlet sparsity of :mod:`xfusion.regularizers.sparsity`) works on ``A(z)``
and the result goes back by the algebraic inverse ``A^-1(a) = (a / 2)^2 - 3/8`` (clipped at 0 by the method). The
monitored penalty is the inner penalty of ``A(z)``. Used by ``wavelet2d1d`` with ``stabilize="anscombe"`` (also
under ``regularization="auto"``, where every wavelet candidate of the tuning is stabilized) and by ``anscombe2d1d``.
In memory only: the band statistics are those of the stabilized cube, computed inside :meth:`prox`.
"""
from __future__ import annotations

import numpy as np

#: Anscombe's offset: 2 sqrt(n + 3/8) has variance ~1 for Poisson n
OFFSET = 3.0 / 8.0


class AnscombeStabilized:
    """``prox(z) = A^-1(inner.prox(A(z)))``, cube (M, N, L) in, same shape and dtype out; ``value(z)``: the inner
    penalty of ``A(z)`` (module notes). ``inner``: a full-cube prior with ``prox(z, step, with_penalty)`` and
    ``value(z)`` (e.g. :class:`~xfusion.regularizers.sparsity.Wavelet2D1D` with ``noise`` "mad" or "poisson")."""

    def __init__(self, inner):
        if getattr(inner, "wants_noise", False):
            raise ValueError('the Anscombe-stabilized prior cannot use noise="propagated" (it needs the EM step\'s '
                             'variance, which the transform changes); use noise="mad" or "poisson"')
        self.inner = inner

    @staticmethod
    def forward(z):
        return 2 * np.sqrt(np.maximum(z, 0) + np.asarray(OFFSET, z.dtype))

    @staticmethod
    def inverse(a):
        return np.square(a * np.asarray(0.5, a.dtype)) - np.asarray(OFFSET, a.dtype)

    def prox(self, z, step=1.0, with_penalty=False):
        out = self.inner.prox(self.forward(z), step=step, with_penalty=with_penalty)
        if with_penalty:
            return self.inverse(out[0]), out[1]
        return self.inverse(out)

    def value(self, z):
        return self.inner.value(self.forward(z))

    def spatial_bands(self):
        """The inner prior's spatial bands (the balanced EM step of several sharp-spatial inputs scales them)."""
        return self.inner.spatial_bands()

    def with_band_scale(self, scale):
        """The same stabilized prior around ``inner.with_band_scale(scale)``."""
        return AnscombeStabilized(self.inner.with_band_scale(scale))

    def stats_from_scalars(self, state):
        """No statistics carried in the solver state: the band MADs are those of the stabilized cube, computed
        inside :meth:`prox` (in memory only)."""
        return None
