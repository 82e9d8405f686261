"""Spatial response: PSF convolution of every energy slice (with optional rebinning folded in)."""
from __future__ import annotations

import numpy as np
import scipy.fft as sfft

from ..threads import run, spans
from .rebin import Rebin

#: a kernel is separable (rank 1, e.g. a Gaussian or any product f(x) g(y)) when its second singular value is at most
#: this fraction of the first: :class:`Convolve2D` may then use two 1D convolutions (exact to float64 round-off)
SEPARABLE_RTOL = 1e-12
#: outputs per Toeplitz block of a separable convolution (at least the number of taps)
BAND_ROWS = 16
#: the two 1D convolutions by (b, b + t - 1) Toeplitz blocks cost ~(b_x + t_x - 1) + (b_y + t_y - 1) multiply-adds per
#: voxel, the FFTs ~log2(P Q) (times a larger constant): the separable form is used when that sum is at most
#: SEPARABLE_MAX log2(P Q). Calibration (session 7, one BLAS thread, Gaussian kernels of 9, 27 and 61 taps on 80-320
#: pixel blocks, 20 channels, float32 and float64; notes/s7_multi_conv_calibration.log): separable / FFT time
#: 0.06-0.36 at a ratio 2.9-7.9, 0.2-1.04 at 14-17 (61 taps)
SEPARABLE_MAX = 16.0
#: channels per task of :class:`EnergyDependentSpatial` in memory (its segments of at most this many channels are one
#: task each): session 56, point_sources/500083 (45x45x2400 to 15x15, five dense bands, segments of 600 channels, two
#: threads), forward 0.047 -> 0.023 s, adjoint 0.054 -> 0.028 s; tasks of 256-300 channels were 3-23 % slower
PSF_TASK_CHANNELS = 1024


def separable_factors(kernel):
    """``(u, v)`` with ``kernel == outer(u, v)`` to :data:`SEPARABLE_RTOL` (relative, spectral norm), else None."""
    k = np.asarray(kernel, dtype=np.float64)
    U, s, Vt = np.linalg.svd(k)
    if not s[0] > 0 or (s.size > 1 and s[1] > SEPARABLE_RTOL * s[0]):
        return None
    return U[:, 0] * s[0], np.array(Vt[0])


def _toeplitz_valid(taps, n, dtype):
    """(n - t + 1, n) matrix of the 'valid' 1D convolution with ``t`` taps:
    ``(T a)[i] = sum_p taps[p] a[i + t - 1 - p]``."""
    t = taps.size
    T = np.zeros((n - t + 1, n), dtype=dtype)
    i = np.arange(n - t + 1)
    for p in range(t):
        T[i, i + t - 1 - p] = taps[p]
    return T


def _conv_valid(a, k, flipped=False):
    """'valid' linear convolution of every slice ``a[:, :, e]`` with the 2D kernel ``k`` (correlation if
    ``flipped``): output (P - kx + 1, Q - ky + 1, L) for an input (P, Q, L), dtype kept.

    Circular convolution at FFT sizes >= the input is exact on the 'valid' part. Done in slabs of
    energy channels moved to the front (contiguous 2D FFTs, cache-sized), measured ~20% faster
    than one strided FFT over axes (0, 1) on a (69, 69, 2400) float32 block. The FFTs use
    ``scipy.fft``'s current worker count (``scipy.fft.set_workers``; 1 by default, as in Dask tasks).
    """
    if flipped:
        k = k[::-1, ::-1]
    P, Q = a.shape[:2]
    kx, ky = k.shape
    if kx == 1 and ky == 1:
        return a * a.dtype.type(k[0, 0])
    F = (sfft.next_fast_len(P, real=True), sfft.next_fast_len(Q, real=True))
    K = sfft.rfft2(k, F)
    if a.dtype == np.float32:
        K = K.astype(np.complex64)
    L = a.shape[2]
    out = np.empty((P - kx + 1, Q - ky + 1, L), dtype=a.dtype)
    step = int(min(max(2 ** 20 // (P * Q * a.dtype.itemsize), 8), max(L, 1)))
    for e in range(0, L, step):
        b = np.ascontiguousarray(a[:, :, e:e + step].transpose(2, 0, 1))
        f = sfft.rfft2(b, F, axes=(1, 2))
        f *= K
        c = sfft.irfft2(f, F, axes=(1, 2))
        out[:, :, e:e + step] = c[:, kx - 1:P, ky - 1:Q].transpose(1, 2, 0)
    return out


class Convolve2D:
    """Convolve each slice ``z[:, :, k]`` with an odd, centred 2D kernel; zero boundary.

    Boundary rule: the sky outside the field is empty and flux blurred out of the field is
    lost ("same"-size linear convolution, as ``scipy.signal.fftconvolve(..., mode="same")``
    for odd kernels). Forward ``(B z)[i, j] = sum_{p,q} K[p, q] z[i - p + hx, j - q + hy]``;
    adjoint = correlation with K on the same grid.

    Block form (:mod:`xfusion.operators.blocks`): ``depth = (hx, hy)``, the kernel radius (the
    kernel is first cropped to the field: taps farther than the field size never contribute);
    ``forward_valid`` is the 'valid' convolution of a block carrying a halo of ``depth`` pixels
    (zeros beyond the field), ``adjoint_valid`` the 'valid' correlation. ``forward``/``adjoint``
    are those forms on the zero-padded field: one implementation for NumPy and Dask.

    A separable kernel ``K = outer(u, v)`` (rank 1 to :data:`SEPARABLE_RTOL`, e.g. a Gaussian PSF) is applied as
    two 1D 'valid' convolutions, products of banded (Toeplitz) blocks along axis 0 then axis 1, when that beats the
    FFTs (:data:`SEPARABLE_MAX`; e.g. 0.18 against 0.75 ms for an (80, 80, 20) float32 block and 9 x 9 taps): the
    same operator to float round-off (issue 18: MOS's PSF on its data grid).
    """

    factor = (1, 1)

    def __init__(self, kernel, shape, workers=-1):
        k = np.asarray(kernel, dtype=np.float64)
        if k.ndim != 2 or k.shape[0] % 2 == 0 or k.shape[1] % 2 == 0:
            raise ValueError(f"PSF kernel must be 2D with odd sizes; got shape {k.shape}")
        self.shape, self.workers = tuple(int(s) for s in shape[:2]), workers
        h = tuple(min(n // 2, m - 1) for n, m in zip(k.shape, self.shape))  # taps beyond the field never count
        c = (k.shape[0] // 2, k.shape[1] // 2)
        self.kernel = np.ascontiguousarray(k[c[0] - h[0]:c[0] + h[0] + 1, c[1] - h[1]:c[1] + h[1] + 1])
        self.h = self.depth = h
        self.separable = separable_factors(self.kernel) if self.kernel.size > 1 else None
        self._toeplitz = {}

    def _valid(self, a, flipped):
        """'valid' convolution (correlation if ``flipped``) of a block: for a separable kernel, two 1D convolutions
        (axis 0, then 1), each as products of (b, b + t - 1) Toeplitz blocks with the input's rows (BLAS; b =
        max(:data:`BAND_ROWS`, t) outputs per block, t taps), when cheaper than the FFTs (:data:`SEPARABLE_MAX`);
        else the FFTs."""
        P, Q = a.shape[:2]
        kx, ky = self.kernel.shape
        bx, by = max(BAND_ROWS, kx), max(BAND_ROWS, ky)
        if (self.separable is None or a.ndim != 3 or a.dtype not in (np.float32, np.float64)
                or (bx + kx - 1) + (by + ky - 1) > SEPARABLE_MAX * np.log2(max(P * Q, 2))):
            return _conv_valid(a, self.kernel, flipped)
        mats = []
        for axis, (b, taps) in enumerate(zip((bx, by), self.separable)):
            key = (axis, a.dtype.str, flipped)
            if key not in self._toeplitz:
                self._toeplitz[key] = _toeplitz_valid(taps[::-1] if flipped else taps, b + taps.size - 1, a.dtype)
            mats.append(self._toeplitz[key])
        m, n, L = P - kx + 1, Q - ky + 1, a.shape[2]
        a2 = np.ascontiguousarray(a).reshape(P, Q * L)
        b = np.empty((m, Q, L), dtype=a.dtype)
        b2 = b.reshape(m, Q * L)
        for i in range(0, m, bx):  # axis 0: output rows i..i+r from input rows i..i+r+kx-1
            r = min(bx, m - i)
            np.matmul(mats[0][:r, :r + kx - 1], a2[i:i + r + kx - 1], out=b2[i:i + r])
        out = np.empty((m, n, L), dtype=a.dtype)
        for j in range(0, n, by):  # axis 1: the same on every row (a stack of products)
            r = min(by, n - j)
            out[:, j:j + r] = np.matmul(mats[1][:r, :r + ky - 1], b[:, j:j + r + ky - 1])
        return out

    def forward_valid(self, z):
        return self._valid(z, False)

    def adjoint_valid(self, u):
        return self._valid(u, True)

    def _padded(self, f, a):
        (hx, hy) = self.h
        p = np.pad(a, ((hx, hx), (hy, hy)) + ((0, 0),) * (a.ndim - 2))
        with sfft.set_workers(self.workers):
            out = f(p if p.ndim == 3 else p[..., None])
        return out if a.ndim == 3 else out.reshape(a.shape)

    def forward(self, z):
        return self._padded(self.forward_valid, z)

    def adjoint(self, u):
        return self._padded(self.adjoint_valid, u)


class SpatialMatrix:
    """A spatial operator stored as a dense matrix P of shape (m n, M N).

    Forward ``(P z)`` acts on ``z.reshape(M*N, -1)`` (one BLAS product for all energy
    slices or subspace components); adjoint ``P^T u``. Used for rebinned PSF blurring
    ``R_MN B`` on small fields, where one matrix product beats two FFTs per slice.

    Block form: a dense matrix couples the whole field, so it runs on pixel blocks only through
    ``block_ops``, the same operator as a composition of local ones (``[Convolve2D, Rebin]`` when
    built by :meth:`from_psf`; None otherwise: no block form).
    """

    block_ops = None
    #: None, or ``(Px, Py)`` with ``P = kron(Px, Py)`` (a separable PSF, :meth:`from_psf`): the products then run
    #: on the two axes in turn
    factors = None

    def __init__(self, matrix, in_hw, out_hw):
        P = np.asarray(matrix, dtype=np.float64)
        self.in_hw, self.out_hw = tuple(in_hw), tuple(out_hw)
        if P.shape != (out_hw[0] * out_hw[1], in_hw[0] * in_hw[1]):
            raise ValueError(f"matrix shape {P.shape} does not map {in_hw} to {out_hw}")
        self.matrix = P
        self._P = {np.dtype(np.float64): P, np.dtype(np.float32): P.astype(np.float32)}
        self._F = {}

    @classmethod
    def from_psf(cls, kernel, shape, factor):
        """Dense matrix of ``Rebin(factor) o Convolve2D(kernel)`` on an (M, N) field, built directly.

        With ``G = K * ones(v, v)`` (full convolution: the PSF summed over one coarse pixel),
        ``P[(s, t), (i, j)] = G[s v - i + h_x + v - 1, t v - j + h_y + v - 1]`` (zero outside G):
        a gather of m n M N elements, no identity cube and no FFTs. A separable kernel ``K = outer(a, b)``
        (:func:`separable_factors`) also gives :attr:`factors`: ``P = kron(Px, Py)`` with ``Px[s, i] = (a * 1_v)[s v
        - i + h_x + v - 1]`` (and ``Py`` alike), which :meth:`forward` and :meth:`adjoint` then use.
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
        op = cls(P, (M, N), (m, n))
        op.block_ops = [Convolve2D(k, (M, N))] + ([Rebin((v, v, 1))] if v > 1 else [])
        sep = separable_factors(k)
        if sep is not None:  # K = outer(a, b): G = outer(a * 1_v, b * 1_v), P = kron(Px, Py)
            gx, gy = np.convolve(sep[0], np.ones(v)), np.convolve(sep[1], np.ones(v))
            op.factors = (np.where(okx, gx[Gx], 0.0), np.where(oky, gy[Gy], 0.0))
        return op

    def _factors(self, dtype):
        if dtype not in self._F:
            self._F[dtype] = tuple(np.ascontiguousarray(f, dtype=dtype) for f in self.factors)
        return self._F[dtype]

    def forward(self, z):
        """``P z`` over the pixels of every energy slice (or component); with :attr:`factors` as ``Px`` along axis
        0 then ``Py`` along axis 1 (the same operator to float round-off; (M + m) N / (m n) times fewer
        multiply-adds than the dense product, e.g. 11x for 45x45 pixels to 15x15)."""
        M, N = self.in_hw
        if self.factors is not None and z.dtype in (np.float32, np.float64):
            px, py = self._factors(z.dtype)
            a = (px @ z.reshape(M, -1)).reshape(px.shape[0], N, -1)  # (m, N, L)
            return np.matmul(py, a).reshape(self.out_hw + z.shape[2:])
        out = self._P[z.dtype] @ z.reshape(M * N, -1)
        return out.reshape(self.out_hw + z.shape[2:])

    def adjoint(self, u):
        """``P^T u``; with :attr:`factors` as ``Py^T`` along axis 1 then ``Px^T`` along axis 0."""
        m, n = self.out_hw
        if self.factors is not None and u.dtype in (np.float32, np.float64):
            px, py = self._factors(u.dtype)
            b = np.matmul(py.T, u.reshape(m, n, -1))  # (m, N, L)
            return (px.T @ b.reshape(m, -1)).reshape(self.in_hw + u.shape[2:])
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

    Block form: ``depth`` is the largest band depth, ``factor`` the bands' common one; the valid
    forms apply each band's block form (:mod:`xfusion.operators.blocks`) to its channel range
    (blocks hold the whole energy axis, so channel indices are global).
    """

    def __init__(self, ops, weights):
        self.ops = list(ops)
        self.weights = np.asarray(weights, dtype=np.float64)
        self._w32 = self.weights.astype(np.float32)
        self.ranges = []
        for w in self.weights:
            nz = np.flatnonzero(w > 0)
            self.ranges.append((int(nz[0]), int(nz[-1]) + 1) if nz.size else (0, 0))

    @property
    def depth(self):
        from .blocks import depth

        d = [depth(op) for op in self.ops]
        return (max(a for a, _ in d), max(b for _, b in d))

    @property
    def adjoint_depth(self):
        from .blocks import adjoint_depth

        d = [adjoint_depth(op) for op in self.ops]
        return (max(a for a, _ in d), max(b for _, b in d))

    @property
    def factor(self):
        from .blocks import factor

        return factor(self.ops[0])

    def _w(self, x):
        return self._w32 if x.dtype == np.float32 else self.weights

    def _apply(self, z, fwd, block):
        """``sum_b a_b B_b z`` (forward) or ``sum_b B_b^T (a_b u)`` (adjoint). The band operators act on the pixel
        axes only and the weights on the channel axis, so they commute: the weights multiply the side with fewer
        pixels when the band rebins (the forward's output, the adjoint's input; session 13: 9x fewer multiplies for
        3x3 rebinning), and the forward reads the band's channels as a view (no weighted copy of the input).

        In memory the channels are cut where the set of bands with weight changes (:meth:`segments`), and each
        segment into tasks of at most :data:`PSF_TASK_CHANNELS` channels that run on the thread pool
        (:mod:`xfusion.threads`): a task sums its bands in band order, as the block form does over whole bands, so
        the result is the same to the bit whatever the threads (session 56: 1.9x faster on two cores)."""
        from .blocks import adjoint_block, forward_block

        if all(hi <= lo for lo, hi in self.ranges):  # no band has weight anywhere: the operator is zero
            raise ValueError("EnergyDependentSpatial: every band weight is 0")
        w = self._w(z)
        if not block:
            return self._apply_tasks(z, fwd, w)
        halo = self.depth if fwd else self.adjoint_depth
        out = None
        for op, (lo, hi), wb in zip(self.ops, self.ranges, w):
            if hi <= lo:
                continue
            a, wr = z[..., lo:hi], wb[lo:hi]
            if fwd:
                part = forward_block(op, a, halo) * wr
            else:
                part = adjoint_block(op, a * wr, halo)
            if out is None:
                out = np.zeros(part.shape[:-1] + (z.shape[-1],), dtype=part.dtype)
            out[..., lo:hi] += part
        return out

    def segments(self, n_channels):
        """``[(lo, hi, bands)]``: the channel axis ``[0, n_channels)`` cut at every band's range ends, with the bands
        (indices, in order) whose range holds each piece (with linear interpolation: two neighbours, or one)."""
        cuts = sorted({0, int(n_channels)} | {c for r in self.ranges for c in r if 0 < c < n_channels})
        return [(c0, c1, [b for b, (lo, hi) in enumerate(self.ranges) if lo <= c0 and c1 <= hi])
                for c0, c1 in zip(cuts[:-1], cuts[1:])]

    def _apply_tasks(self, z, fwd, w):
        segs = self.segments(z.shape[-1])

        def part(b, a0, a1):
            op = self.ops[b]
            return op.forward(z[..., a0:a1]) * w[b, a0:a1] if fwd else op.adjoint(z[..., a0:a1] * w[b, a0:a1])

        b0 = next(bands[0] for _, _, bands in segs if bands)
        probe = part(b0, 0, 1)  # the output's pixels and dtype
        out = np.empty(probe.shape[:-1] + (z.shape[-1],), dtype=probe.dtype)
        tasks = []
        for lo, hi, bands in segs:
            if not bands:
                out[..., lo:hi] = 0
                continue
            for a0, a1 in spans(lo, hi, PSF_TASK_CHANNELS):
                def task(a0=a0, a1=a1, bands=bands):
                    o = out[..., a0:a1]
                    o[...] = part(bands[0], a0, a1)
                    for b in bands[1:]:
                        o += part(b, a0, a1)
                tasks.append(task)
        run(tasks, z.nbytes + out.nbytes)
        return out

    def forward(self, z):
        return self._apply(z, True, False)

    def adjoint(self, u):
        return self._apply(u, False, False)

    def forward_valid(self, z):
        return self._apply(z, True, True)

    def adjoint_valid(self, u):
        return self._apply(u, False, True)


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
