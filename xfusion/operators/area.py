"""Exposure x effective area: a diagonal operator, and its compact form for vignetted areas."""
from __future__ import annotations

from functools import cached_property

import numpy as np


class AreaMap:
    """Position-dependent exposure x area on the fused grid, stored at the resolution it was given.

    ``w[i, j, e] = c * ((1 - t_e) A[i // f, j // f, k_e] + t_e A[i // f, j // f, k_e + 1])``

    ``table`` A (Mo, No, K): area (cm2) on the observation's pixels and true-energy nodes
    ``nodes`` (K,) keV (a vignetted ARF or an exposure map times the ARF); ``energies`` (L,) keV:
    the fused channel centres, linearly interpolated between the nodes (held at the end values
    outside them, as ``numpy.interp``); ``factor`` f: fused pixels per observation pixel;
    ``c``: exposure (s) over the solver's internal flux unit. The full (M, N, L) = (Mo f, No f, L)
    weights are never needed at once: :meth:`block` gives any pixel block (the Dask backend
    builds each block's weights on its worker), :attr:`dense` the whole cube (in memory only),
    :meth:`mean` and :meth:`channel_mean` are exact from the table.
    """

    ndim = 3

    def __init__(self, table, nodes, energies, factor=1, c=1.0):
        self.table = np.asarray(table, dtype=np.float64)
        nodes = np.asarray(nodes, dtype=np.float64)
        e = np.asarray(energies, dtype=np.float64)
        if self.table.ndim != 3 or self.table.shape[2] != nodes.size:
            raise ValueError(f"area table {self.table.shape} must be (x, y, {nodes.size} energy nodes)")
        self.factor, self.c = int(factor), float(c)
        if nodes.size == 1:
            self.k = np.zeros(e.size, np.intp)
            self.t = np.zeros(e.size)
        else:
            self.k = np.clip(np.searchsorted(nodes, e, side="right") - 1, 0, nodes.size - 2)
            self.t = np.clip((e - nodes[self.k]) / (nodes[self.k + 1] - nodes[self.k]), 0.0, 1.0)
        self.k1 = np.minimum(self.k + 1, nodes.size - 1)
        self._nodes, self._energies = nodes, e
        self.shape = (self.table.shape[0] * self.factor, self.table.shape[1] * self.factor, e.size)

    def __getstate__(self):  # sent to Dask workers without the in-memory cube
        return {k: v for k, v in self.__dict__.items() if k not in ("dense", "dense32")}

    def _interp(self, rows):
        """Rows of the table (..., K) on the fused channels (..., L), times ``c``."""
        return self.c * (rows[..., self.k] * (1.0 - self.t) + rows[..., self.k1] * self.t)

    def scaled(self, s):
        """The same map times ``s``."""
        return AreaMap(self.table, self._nodes, self._energies, self.factor, self.c * s)

    def block(self, x0, x1, y0, y1):
        """Weights of the fused pixels ``[x0, x1) x [y0, y1)``, shape (x1 - x0, y1 - y0, L), float64."""
        f = self.factor
        a, b = x0 // f, y0 // f
        w = self._interp(self.table[a:(x1 - 1) // f + 1, b:(y1 - 1) // f + 1])
        if f > 1:
            w = w[np.arange(x0, x1) // f - a][:, np.arange(y0, y1) // f - b]
        return w

    @cached_property
    def dense(self):
        """The whole (M, N, L) weights (float64), built once (in-memory path)."""
        return self.block(0, self.shape[0], 0, self.shape[1])

    @cached_property
    def dense32(self):
        return self.dense.astype(np.float32)

    def channel_mean(self):
        """Mean over the fused pixels, (L,): exact (linear in the table; every table pixel covers f x f)."""
        return self._interp(self.table.mean(axis=(0, 1)))

    def mean(self):
        return float(self.channel_mean().mean())

    def any_positive(self):
        """Whether some weight is > 0 (the table is >= 0, so: a node used with a non-zero coefficient is > 0)."""
        used = np.zeros(self._nodes.size, bool)
        used[self.k[self.t < 1]] = True
        used[self.k1[self.t > 0]] = True
        return bool(self.c > 0 and np.any(self.table[:, :, used] > 0))


class Scale:
    """Multiply by ``weights`` (t * A): ``y = w * z``; self-adjoint, ``z' = w * y``.

    ``weights`` broadcasts against the cube: shape (L,) for an effective area per energy,
    (M, N, L) for a vignetted one (an array, or an :class:`AreaMap` that builds it from the
    observation's own pixels and energy nodes), or scalar. Units: s cm2 (exposure x area),
    turning a photon flux per voxel (ph cm-2 s-1) into expected counts.

    Block form: local (no halo) when the weights vary with energy only; vignetted (M, N, L)
    weights depend on the position, so a block backend multiplies a block by the weights of
    its pixels instead (``position_dependent``, :meth:`weights_block`).
    """

    depth, factor = (0, 0), (1, 1)

    def __init__(self, weights):
        if isinstance(weights, AreaMap):
            self.area = weights
        else:
            self.area = np.asarray(weights, dtype=np.float64)
            self._w32 = self.area.astype(np.float32)
        self.position_dependent = self.area.ndim > 1

    @property
    def weights(self):
        """The weights as an array (an :class:`AreaMap` is built whole: in-memory use)."""
        return self.area.dense if isinstance(self.area, AreaMap) else self.area

    def _w(self, z):
        if isinstance(self.area, AreaMap):
            return self.area.dense32 if z.dtype == np.float32 else self.area.dense
        return self._w32 if z.dtype == np.float32 else self.area

    def weights_block(self, x0, x1, y0, y1):
        """Weights (float64) of the fused pixels ``[x0, x1) x [y0, y1)`` (position-dependent weights)."""
        if isinstance(self.area, AreaMap):
            return self.area.block(x0, x1, y0, y1)
        return self.area[x0:x1, y0:y1]

    def forward(self, z):
        return z * self._w(z)

    adjoint = forward

    def forward_valid(self, z):
        if self.position_dependent:
            raise ValueError("Scale with (M, N, L) weights has no block form: multiply by the weights chunked like "
                             "the cube")
        return self.forward(z)

    adjoint_valid = forward_valid
