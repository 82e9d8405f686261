"""Spatial response: PSF convolution of every energy slice (with optional rebinning folded in)."""
from __future__ import annotations

import numpy as np
import scipy.fft as sfft

from .rebin import Rebin


class Convolve2D:
    """Convolve each slice ``z[:, :, k]`` with an odd, centred 2D kernel; zero boundary.

    Boundary rule: the sky outside the field is empty and flux blurred out of the field is
    lost ("same"-size linear convolution, as ``scipy.signal.fftconvolve(..., mode="same")``
    for odd kernels). Forward ``(B z)[i, j] = sum_{p,q} K[p, q] z[i - p + hx, j - q + hy]``;
    adjoint = correlation with K on the same grid. Real 2D FFTs of size >= (M + Kx - 1,
    N + Ky - 1) over axes (0, 1), kernel transform precomputed for float32 and float64.
    """

    def __init__(self, kernel, shape, workers=-1):
        k = np.asarray(kernel, dtype=np.float64)
        if k.ndim != 2 or k.shape[0] % 2 == 0 or k.shape[1] % 2 == 0:
            raise ValueError(f"PSF kernel must be 2D with odd sizes; got shape {k.shape}")
        self.kernel, self.shape, self.workers = k, tuple(int(s) for s in shape[:2]), workers
        self.h = (k.shape[0] // 2, k.shape[1] // 2)
        self.fshape = tuple(sfft.next_fast_len(n + kk - 1, real=True) for n, kk in zip(self.shape, k.shape))
        K = sfft.rfft2(k, self.fshape)
        self._K = {np.dtype(np.float64): K, np.dtype(np.float32): K.astype(np.complex64)}

    def in_shape(self, shape):
        return tuple(shape)

    def _k(self, z):
        K = self._K[z.dtype]
        return K.reshape(K.shape + (1,) * (z.ndim - 2))

    def forward(self, z):
        f = sfft.rfft2(z, self.fshape, axes=(0, 1), workers=self.workers)
        f *= self._k(z)
        out = sfft.irfft2(f, self.fshape, axes=(0, 1), workers=self.workers)
        (hx, hy), (M, N) = self.h, self.shape
        return np.ascontiguousarray(out[hx : hx + M, hy : hy + N])

    def adjoint(self, u):
        f = sfft.rfft2(u, self.fshape, axes=(0, 1), workers=self.workers)
        f *= np.conj(self._k(u))
        c = sfft.irfft2(f, self.fshape, axes=(0, 1), workers=self.workers)
        (hx, hy), (M, N) = self.h, self.shape
        c = np.roll(c, (hx, hy), axis=(0, 1))
        return np.ascontiguousarray(c[:M, :N])


class SpatialMatrix:
    """A spatial operator stored as a dense matrix P of shape (m n, M N).

    Forward ``(P z)`` acts on ``z.reshape(M*N, -1)`` (one BLAS product for all energy
    slices or subspace components); adjoint ``P^T u``. Used for rebinned PSF blurring
    ``R_MN B`` on small fields, where one matrix product beats two FFTs per slice.
    """

    def __init__(self, matrix, in_hw, out_hw):
        P = np.asarray(matrix, dtype=np.float64)
        self.in_hw, self.out_hw = tuple(in_hw), tuple(out_hw)
        if P.shape != (out_hw[0] * out_hw[1], in_hw[0] * in_hw[1]):
            raise ValueError(f"matrix shape {P.shape} does not map {in_hw} to {out_hw}")
        self.matrix = P
        self._P = {np.dtype(np.float64): P, np.dtype(np.float32): P.astype(np.float32)}

    @classmethod
    def from_psf(cls, kernel, shape, factor):
        """Dense matrix of ``Rebin(factor) o Convolve2D(kernel)`` on an (M, N) field, built directly.

        With ``G = K * ones(v, v)`` (full convolution: the PSF summed over one coarse pixel),
        ``P[(s, t), (i, j)] = G[s v - i + h_x + v - 1, t v - j + h_y + v - 1]`` (zero outside G):
        a gather of m n M N elements, no identity cube and no FFTs.
        """
        from scipy.signal import convolve2d

        M, N = shape
        v = int(factor)
        k = np.asarray(kernel, dtype=np.float64)
        hx, hy = k.shape[0] // 2, k.shape[1] // 2
        G = convolve2d(k, np.ones((v, v)), mode="full")
        m, n = M // v, N // v
        ax = (np.arange(m) * v)[:, None] - np.arange(M)[None, :] + hx + v - 1  # (m, M)
        ay = (np.arange(n) * v)[:, None] - np.arange(N)[None, :] + hy + v - 1  # (n, N)
        okx = (ax >= 0) & (ax < G.shape[0])
        oky = (ay >= 0) & (ay < G.shape[1])
        Gx = np.clip(ax, 0, G.shape[0] - 1)
        Gy = np.clip(ay, 0, G.shape[1] - 1)
        P = G[Gx[:, :, None, None], Gy[None, None, :, :]]  # (m, M, n, N)
        P *= okx[:, :, None, None] & oky[None, None, :, :]
        P = P.transpose(0, 2, 1, 3).reshape(m * n, M * N)
        return cls(P, (M, N), (m, n))

    def in_shape(self, shape):
        return self.in_hw + tuple(shape[2:])

    def forward(self, z):
        M, N = self.in_hw
        out = self._P[z.dtype] @ z.reshape(M * N, -1)
        return out.reshape(self.out_hw + z.shape[2:])

    def adjoint(self, u):
        m, n = self.out_hw
        out = self._P[u.dtype].T @ u.reshape(m * n, -1)
        return out.reshape(self.in_hw + u.shape[2:])


def band_weights(psf_energies, energies):
    """Hat-function weights (n_bands, L): linear interpolation of the PSF between band
    energies (constant beyond the first/last band); every column sums to 1 and is >= 0."""
    e = np.asarray(psf_energies, dtype=np.float64)
    eye = np.eye(e.size)
    return np.stack([np.interp(energies, e, eye[b]) for b in range(e.size)])


class EnergyDependentSpatial:
    """PSF varying with energy: ``(B z)[..., k] = sum_b a_b(E_k) (B_b z)[..., k]``.

    ``ops``: one spatial operator per band (each acting on axes 0, 1 of (M, N, K) arrays);
    ``weights`` (n_bands, L): the interpolation weights ``a_b(E_k)``. Because convolution
    is linear in the kernel, interpolating the PSF between bands is the weighted sum of the
    band convolutions; each band is applied only to the channels where its weight is
    non-zero, so with linear interpolation every channel goes through at most two PSFs.
    Adjoint: ``sum_b B_b^T (a_b u)``.
    """

    def __init__(self, ops, weights):
        self.ops = list(ops)
        self.weights = np.asarray(weights, dtype=np.float64)
        self._w32 = self.weights.astype(np.float32)
        self.ranges = []
        for w in self.weights:
            nz = np.flatnonzero(w > 0)
            self.ranges.append((int(nz[0]), int(nz[-1]) + 1) if nz.size else (0, 0))

    def in_shape(self, shape):
        return self.ops[0].in_shape(shape)

    def _w(self, x):
        return self._w32 if x.dtype == np.float32 else self.weights

    def forward(self, z):
        w = self._w(z)
        out = None
        for op, (lo, hi), wb in zip(self.ops, self.ranges, w):
            if hi <= lo:
                continue
            part = op.forward(z[..., lo:hi] * wb[lo:hi])
            if out is None:
                out = np.zeros(part.shape[:-1] + (z.shape[-1],), dtype=part.dtype)
            out[..., lo:hi] += part
        return out

    def adjoint(self, u):
        w = self._w(u)
        out = None
        for op, (lo, hi), wb in zip(self.ops, self.ranges, w):
            if hi <= lo:
                continue
            part = op.adjoint(u[..., lo:hi]) * wb[lo:hi]
            if out is None:
                out = np.zeros(part.shape[:-1] + (u.shape[-1],), dtype=part.dtype)
            out[..., lo:hi] += part
        return out


class StackedSpatial:
    """Subspace form of :class:`EnergyDependentSpatial`: W (M, N, r) -> concat_b B_b(W) (m, n, n_b r).

    Paired with the stacked reduced spectral model ``vstack_b(V w a_b)`` (n_b r, l), the
    product ``StackedSpatial(W) @ V_stacked = sum_b B_b(W) @ V_b`` is the energy-dependent
    model of ``W @ V``. Adjoint: split the last axis into bands and sum ``B_b^T``.
    """

    def __init__(self, ops):
        self.ops = list(ops)

    def forward(self, w):
        return np.concatenate([op.forward(w) for op in self.ops], axis=-1)

    def adjoint(self, g):
        r = g.shape[-1] // len(self.ops)
        return sum(op.adjoint(np.ascontiguousarray(g[..., b * r:(b + 1) * r])) for b, op in enumerate(self.ops))
