"""Spectral responses: a stationary 1D kernel (FFT) or a general redistribution matrix."""
from __future__ import annotations

import numpy as np
import scipy.fft as sfft

from ..threads import run, spans

#: spectra per task of a dense :class:`ResponseMatrix` product (session 56, point_sources/500083: 2025 spectra of 2400
#: channels to 60, two threads: forward 0.0090 -> 0.0040 s, adjoint 0.0092 -> 0.0037 s)
RESPONSE_TASK_ROWS = 512


class Convolve1D:
    """Convolution of every spectrum with an odd, centred kernel, zero boundary.

    Forward: ``(S z)[..., k] = sum_j kernel[j] z[..., k - j + h]`` with ``h = len(kernel)//2``,
    output on the input grid ("same"); channels outside the band count as empty (flux that
    leaks out of the band is lost). Adjoint: correlation with the kernel (convolution with the
    flipped kernel) on the same grid. Computed with real FFTs of length >= L + K - 1 along
    the last axis, kernel transform precomputed.
    """

    #: block form: acts on the energy axis only (blocks hold all of it): no halo, no spatial factor
    depth, factor = (0, 0), (1, 1)

    def __init__(self, kernel, n, workers=-1):
        k = np.asarray(kernel, dtype=np.float64)
        if k.ndim != 1 or k.size % 2 == 0:
            raise ValueError("spectral kernel must be 1D with odd length")
        self.kernel, self.n, self.h, self.workers = k, int(n), k.size // 2, workers
        self.nfft = sfft.next_fast_len(self.n + k.size - 1, real=True)
        K = sfft.rfft(k, self.nfft)
        self._K = {np.dtype(np.float64): K, np.dtype(np.float32): K.astype(np.complex64)}

    def _apply(self, z, conj):
        K = self._K[z.dtype]
        if conj:
            # adjoint: c = circular correlation of u (at offset 0) with the kernel; the "same"
            # grid sits at offset h of the full grid, so (S^T u)[i] = c[(i - h) mod nfft].
            f = sfft.rfft(z, self.nfft, axis=-1, workers=self.workers)
            f *= np.conj(K)
            c = sfft.irfft(f, self.nfft, axis=-1, workers=self.workers)
            return np.ascontiguousarray(np.roll(c, self.h, axis=-1)[..., : self.n])
        f = sfft.rfft(z, self.nfft, axis=-1, workers=self.workers)
        f *= K
        out = sfft.irfft(f, self.nfft, axis=-1, workers=self.workers)
        return np.ascontiguousarray(out[..., self.h : self.h + self.n])

    def forward(self, z):
        return self._apply(z, False)

    def adjoint(self, u):
        return self._apply(u, True)

    def forward_valid(self, z):
        return self.forward(z)

    def adjoint_valid(self, u):
        return self.adjoint(u)


class ResponseMatrix:
    """Redistribution by a matrix ``R`` of shape (L, l): ``(S z)[..., c] = sum_k z[..., k] R[k, c]``.

    ``R[k, c]`` is the probability that a photon in fused energy bin ``k`` is detected in
    channel ``c`` (an RMF resampled on the fused grid, possibly with the energy rebinning
    folded in). Energy-dependent resolution is just a non-Toeplitz ``R``. Adjoint:
    ``(S^T u)[..., k] = sum_c u[..., c] R[k, c]``. Both are one BLAS matrix product over the
    contiguous last axis.

    ``matrix`` may be a ``scipy.sparse`` matrix/array (e.g. ``read_rmf(...).matrix`` of a
    large microcalorimeter RMF): it is kept in CSR form, with its transpose in CSR for the
    forward product, and never densified; forward and adjoint are then sparse x dense
    products on the spectra flattened to (pixels, energy), exact adjoints of each other.
    """

    #: block form: acts on the energy axis only (blocks hold all of it): no halo, no spatial factor
    depth, factor = (0, 0), (1, 1)

    def __init__(self, matrix):
        import scipy.sparse as ssp

        if ssp.issparse(matrix):
            m = ssp.csr_array(matrix, dtype=np.float64)
            if m.ndim != 2:
                raise ValueError("response matrix must be 2D (L, l)")
            self.sparse = True
            self.matrix = m
            mt = m.T.tocsr()
            self._m = {np.dtype(np.float64): m, np.dtype(np.float32): m.astype(np.float32)}
            self._mt = {np.dtype(np.float64): mt, np.dtype(np.float32): mt.astype(np.float32)}
            return
        m = np.asarray(matrix, dtype=np.float64)
        if m.ndim != 2:
            raise ValueError("response matrix must be 2D (L, l)")
        self.sparse = False
        self.matrix = m
        self._m = {np.dtype(np.float64): m, np.dtype(np.float32): m.astype(np.float32)}

    def _sparse_apply(self, mats, z):
        a = mats[z.dtype]
        z2 = z.reshape(-1, z.shape[-1])
        out = np.ascontiguousarray((a @ z2.T).T)
        return out.reshape(z.shape[:-1] + (a.shape[0],))

    @staticmethod
    def _dense_apply(a, m):
        """``a @ m`` over the spectra of ``a`` (..., L), in tasks of at most :data:`RESPONSE_TASK_ROWS` spectra on
        the thread pool (:mod:`xfusion.threads`; each task writes its own rows: the same to the bit whatever the
        threads)."""
        a2 = a.reshape(-1, a.shape[-1])
        out = np.empty((a2.shape[0], m.shape[1]), dtype=np.result_type(a2.dtype, m.dtype))
        run([lambda r0=r0, r1=r1: np.matmul(a2[r0:r1], m, out=out[r0:r1])
             for r0, r1 in spans(0, a2.shape[0], RESPONSE_TASK_ROWS)], a2.nbytes + out.nbytes)
        return out.reshape(a.shape[:-1] + (m.shape[1],))

    def forward(self, z):
        if self.sparse:
            return self._sparse_apply(self._mt, z)
        return self._dense_apply(z, self._m[z.dtype])

    def adjoint(self, u):
        if self.sparse:
            return self._sparse_apply(self._m, u)
        return self._dense_apply(u, self._m[u.dtype].T)

    def forward_valid(self, z):
        return self.forward(z)

    def adjoint_valid(self, u):
        return self.adjoint(u)


def kernel_cdf(kernel, spacing):
    """Cumulative distribution of a sampled kernel seen as a piecewise-constant density.

    Returns (nodes, cdf) in keV for ``np.interp``: sample i covers
    ``[offset_i - spacing/2, offset_i + spacing/2]``.
    """
    k = np.asarray(kernel, dtype=np.float64)
    h = k.size // 2
    nodes = (np.arange(k.size + 1) - h - 0.5) * spacing
    cdf = np.concatenate([[0.0], np.cumsum(k)])
    return nodes, cdf / cdf[-1]


def kernel_on_spacing(kernel, spacing, target_spacing):
    """Resample a 1D kernel (sampled every ``spacing`` keV) to bins of ``target_spacing`` keV, flux-conserving."""
    nodes, cdf = kernel_cdf(kernel, spacing)
    half = int(np.ceil((nodes[-1]) / target_spacing - 0.5))
    centres = np.arange(-half, half + 1) * target_spacing
    k = np.interp(centres + target_spacing / 2, nodes, cdf) - np.interp(centres - target_spacing / 2, nodes, cdf)
    return k / k.sum()


def kernel_matrix(kernel, spacing, fine_edges, coarse_edges):
    """Matrix (L, l) of a stationary kernel integrated over the coarse channels.

    ``R[k, c] = CDF(hi_c - E_k) - CDF(lo_c - E_k)`` with ``E_k`` the fine bin centres: the
    probability that a photon of energy E_k lands in channel c. Folds convolution and
    energy rebinning into one matrix.
    """
    nodes, cdf = kernel_cdf(kernel, spacing)
    e = 0.5 * (fine_edges[1:] + fine_edges[:-1])
    c = np.interp(coarse_edges[None, :] - e[:, None], nodes, cdf)
    return np.diff(c, axis=1)


def rmf_on_grid(matrix, true_edges, fine_edges):
    """Rows of an RMF (energy_true bins x channels) picked for the fused energy bins.

    Each fused bin takes the row of the true-energy bin containing its centre (piecewise
    constant in true energy, no blending of neighbouring rows). Raises if the fused band is
    not covered by the RMF.
    """
    e = 0.5 * (fine_edges[1:] + fine_edges[:-1])
    if e[0] < true_edges[0] or e[-1] > true_edges[-1]:
        raise ValueError(
            f"the response covers true energies {true_edges[0]:.4g}-{true_edges[-1]:.4g} keV but the fused grid "
            f"spans {fine_edges[0]:.4g}-{fine_edges[-1]:.4g} keV. An observation from "
            "xfusion.io.observation_from_files(band=...) keeps its RMF for that band only: build it with a band= "
            "covering the fused band, or crop the inputs to their common band with xfusion.io.align; otherwise pass "
            "an RMF that covers the fused band"
        )
    idx = np.clip(np.searchsorted(true_edges, e, side="right") - 1, 0, true_edges.size - 2)
    import scipy.sparse as ssp

    if ssp.issparse(matrix):  # stays sparse (CSR rows picked, never densified)
        return ssp.csr_array(matrix, dtype=np.float64)[idx]
    return np.asarray(matrix, dtype=np.float64)[idx]
