"""Dask execution of the full-cube ``wavelet2d1d`` regularization: EM steps + 2D-1D starlet prox, blockwise.

Same maths as :class:`xfusion.solvers.em.EMProx` (one iteration: EM step
``Z_half = Z * (Hx^T(dx / Hx Z) + Hy^T(dy / Hy Z)) / s``, then ``max(prox(Z_half), 0)``, the
prox being :meth:`xfusion.regularizers.sparsity.Wavelet2D1D.prox`), with the fused cube a Dask
array chunked in pixel blocks that hold the whole energy axis, ``(bx, by, L)``, aligned with the
data chunks ``(bx, by, l)`` (X) and ``(bx/v, by/v, L)`` (Y).

Blockwise operators
-------------------
* X model ``spectral(w_x * Z)`` and its adjoint: local to a block.
* Y model ``rebin_v(PSF * (w_y * Z))``: the PSF convolution needs a halo of the PSF radius
  (``overlap`` with boundary 0 = the zero-boundary rule of :class:`~xfusion.operators.psf.Convolve2D`),
  then a 'valid' FFT convolution and the sum-rebinning, giving exactly the Y block. Adjoint
  ``w_y * correlate(repeat(u))``: the halo is taken on the coarse grid (``ceil(radius / v)``
  coarse pixels, boundary 0), repeated, cropped to the PSF radius and correlated ('valid').
  The kernel is cropped to the field (taps farther than the field size never contribute),
  so one block covering the whole field always works. An energy-dependent PSF (band stack
  + interpolation weights, as :class:`~xfusion.operators.psf.EnergyDependentSpatial`) is the
  weighted sum of the band convolutions over each band's channel range.
* Cost of the halos: the PSF halo is paid by the FFT convolutions, ``((b + 2r) / b)**2`` for
  blocks of b pixels and PSF radius r, so blocks should be several times the PSF radius
  (the default :func:`xfusion.parallel.pixel_block` gives ~80-pixel blocks for 2400 channels).
* ``layout="rechunk"`` instead moves ``w_y * Z`` to full-field channel slabs ``(M, N, n)`` of
  about ``slab_bytes`` (an all-to-all rechunk), convolves each slab with zero padding and
  rebins, and rechunks the result back to the Y blocks; the adjoint does the same on the
  coarse grid. No PSF halo, so blocks may be smaller than the PSF; two rechunks each way per
  iteration. Same numbers as the halo layout to float32 rounding (tests). Measured in
  ``benchmarks/layouts.py --full``; the halo layout is the default (see the README).
* 2D-1D starlet: the 2D part needs a halo of ``2 (2**n_scales_2d - 1)`` pixels with the
  half-sample symmetric boundary of :mod:`xfusion.regularizers.starlet` at the field edges:
  Dask's ``boundary="reflect"`` pads ``(c b a | a b c ...)`` (the edge sample repeated), i.e.
  NumPy's ``"symmetric"`` = SciPy's ``"reflect"`` (checked in the tests). Interior
  coefficients are then bitwise those of the full-field transform. The 1D part is local.

Global thresholds without gathering the cube
--------------------------------------------
The per-band MADs use the chunk-independent lattice subsample of
:func:`xfusion.regularizers.sparsity.lattice_strides` (global indices ``i % s == 0`` on every
axis): each block returns its lattice values (its global offsets come from the chunk
layout and ``block_id``) and the client takes the medians of the gathered sample (about
``sample`` values per band), so the thresholds are identical to the in-memory ones for the
same ``Z_half``. ``k_rule="sigmoid"`` also needs the mean and standard deviation of ``|C|``
(coarse band), from per-block float64 sums.

One round trip per iteration
----------------------------
The state holds ``z`` and ``z_half = Z * corr / s`` (both persisted) and the thresholds of
``z_half``. ``step`` builds one graph: prox of ``z_half`` with the known thresholds (starlet
pass 1) -> ``z`` -> both data terms and ``z_half`` of the new iterate -> lattice samples of its
starlet coefficients (starlet pass 2); it persists ``z`` and ``z_half`` and brings back only
scalars (data terms and penalty per block) and the lattice samples. The starlet is computed
twice per iteration (storing the (n2+1)(n1+1) coefficient cubes would cost more memory than
recomputing them). The graph has the same number of tasks at every iteration
(:meth:`DaskEMProx.iteration_graph_size`).

Masks (``w_v = 0`` voxels) are not supported on this path.
"""
from __future__ import annotations

import math

import numpy as np
import scipy.fft as sfft

try:
    import dask
    import dask.array as da
except ImportError:  # pragma: no cover
    dask = da = None

from .parallel import compute_many, persist_many
from .regularizers.sparsity import lattice_strides
from .regularizers.starlet import mad_sigma, soft_threshold, starlet1d, starlet2d

_F32 = np.dtype(np.float32)
#: layouts of the spatial (PSF) operators: halos on the pixel blocks, or a rechunk to full-field channel slabs
LAYOUTS = ("halo", "rechunk")
#: target size (bytes) of one full-field channel slab in the "rechunk" layout
SLAB_BYTES = 64 * 2 ** 20
_OBJ_META = np.empty((0, 0, 0), dtype=object)


def _meta(dtype):
    return np.empty((0, 0, 0), dtype=dtype)


# ---------------------------------------------------------------------------
# block kernels (module level: picklable for distributed workers)
# ---------------------------------------------------------------------------


def _item(t, i):
    return t[i]


def _scalar(v):
    return np.full((1, 1, 1), v, dtype=np.float64)


def _value(m, d):
    """Block part of the Poisson data term: ``sum(m) - sum(d log m)`` (inf if m <= 0 where d > 0)."""
    pos = d > 0
    if np.any((m <= 0) & pos):
        return np.inf
    logm = np.log(np.where(m > 0, m, 1.0))
    return float(np.sum(m, dtype=np.float64)) - float(np.sum(d * logm, dtype=np.float64))


def _data_consts(d):
    """(sum d, sum d log d) of a data block, float64 sums (terms as in PoissonTerm)."""
    pos = d > 0
    dlogd = np.where(pos, d * np.log(np.where(pos, d, 1.0)), 0.0)
    return np.array([[[np.sum(d, dtype=np.float64), np.sum(dlogd, dtype=np.float64)]]])


def _conv_valid(a, k):
    """'valid' linear convolution of every slice ``a[:, :, e]`` with the 2D kernel ``k`` (FFT, dtype kept).

    Circular convolution at sizes >= the input is exact on the 'valid' part. Done in slabs of
    energy channels moved to the front (contiguous 2D FFTs, cache-sized), measured ~20%
    faster than one strided FFT over axes (0, 1) on a (69, 69, 2400) float32 block.
    """
    P, Q = a.shape[:2]
    kx, ky = k.shape
    if kx == 1 and ky == 1:
        return a * a.dtype.type(k[0, 0])
    F = (sfft.next_fast_len(P, real=True), sfft.next_fast_len(Q, real=True))
    K = sfft.rfft2(k, F)
    if a.dtype == _F32:
        K = K.astype(np.complex64)
    L = a.shape[2]
    out = np.empty((P - kx + 1, Q - ky + 1, L), dtype=a.dtype)
    step = int(min(max(2 ** 20 // (P * Q * a.dtype.itemsize), 8), L))
    for e in range(0, L, step):
        b = np.ascontiguousarray(a[:, :, e:e + step].transpose(2, 0, 1))
        f = sfft.rfft2(b, F, axes=(1, 2))
        f *= K
        c = sfft.irfft2(f, F, axes=(1, 2))
        out[:, :, e:e + step] = c[:, kx - 1:P, ky - 1:Q].transpose(1, 2, 0)
    return out


def _rebin(c, v):
    if v == 1:
        return c
    bx, by = c.shape[:2]
    return c.reshape(bx // v, v, by // v, v, -1).sum(axis=(1, 3))


def _x_block(z, d, w, spec):
    """X term of one block: (w * S^T(d / m), data-term part) with m = S(w z)."""
    wz = z * w
    m = wz if spec is None else spec.forward(wz)
    val = _value(m, d)
    q = d / np.maximum(m, np.finfo(m.dtype).tiny)
    if spec is not None:
        q = spec.adjoint(q)
    return q * w, _scalar(val)


def _x_adjoint(u, w, spec):
    q = u if spec is None else spec.adjoint(u)
    return q * w


def _x_forward(z, w, spec):
    wz = z * w
    return (wz if spec is None else spec.forward(wz)).astype(_F32)


def _y_model(zo, w, psf, v):
    """Y model of a block from its (halo'ed) fused block: rebin_v(PSF * (w z)), 'valid' convolution.

    ``psf``: None, or [(kernel, flipped kernel, lo, hi, band weights or None)]: one entry with
    weights None for a stationary PSF; for an energy-dependent PSF one entry per band, applied
    to channels lo:hi with the interpolation weights (as ``EnergyDependentSpatial``).
    """
    wz = zo * w
    return _rebin(wz if psf is None else _band_sum(wz, psf, 0, False), v)


def _y_adjoint(uo, psf, v, dc, h):
    """correlate(repeat(u)) of a block from its coarse-halo'ed block (weights applied by the caller)."""
    r = uo if v == 1 else np.repeat(np.repeat(uo, v, axis=0), v, axis=1)
    if psf is None:
        return r
    ox, oy = dc[0] * v - h[0], dc[1] * v - h[1]
    return _band_sum(r[ox:r.shape[0] - ox, oy:r.shape[1] - oy], psf, 0, True)


def _y_ratio(m, d):
    """(d / m, data-term part) of a Y block from its predicted counts ``m``."""
    val = _value(m, d)
    return d / np.maximum(m, np.finfo(m.dtype).tiny), _scalar(val)


def _band_sum(a, psf, e0, flipped):
    """Sum over the PSF bands of the 'valid' convolutions of a channel slab starting at channel ``e0``."""
    L = a.shape[2]
    if psf[0][4] is None:
        return _conv_valid(a, psf[0][1 if flipped else 0])
    out = None
    for k, kf, lo, hi, wb in psf:
        lo_, hi_ = max(lo, e0), min(hi, e0 + L)
        if lo_ >= hi_:
            continue
        w = wb[lo_ - lo:hi_ - lo]
        part = a[..., lo_ - e0:hi_ - e0]
        part = _conv_valid(part, kf) * w if flipped else _conv_valid(part * w, k)
        if out is None:
            out = np.zeros(part.shape[:2] + (L,), dtype=part.dtype)
        out[..., lo_ - e0:hi_ - e0] += part
    if out is None:  # no band covers this slab
        hx, hy = psf[0][0].shape[0] // 2, psf[0][0].shape[1] // 2
        out = np.zeros((a.shape[0] - 2 * hx, a.shape[1] - 2 * hy, L), dtype=a.dtype)
    return out


def _slab_band_sum(a, psf, e0, flipped):
    """``_band_sum`` of a full-field slab with the zero boundary (zero padding by the PSF radius, 'valid')."""
    hx, hy = psf[0][0].shape[0] // 2, psf[0][0].shape[1] // 2
    return _band_sum(np.pad(a, ((hx, hx), (hy, hy), (0, 0))), psf, e0, flipped)


def _slab_forward(wz, psf, v, e_offsets, block_id=None):
    """rebin_v(PSF * wz) of a full-field channel slab."""
    return _rebin(wz if psf is None else _slab_band_sum(wz, psf, e_offsets[block_id[2]], False), v)


def _slab_adjoint(u, psf, v, e_offsets, block_id=None):
    """correlate(repeat_v(u)) of a full-field channel slab of the coarse grid."""
    r = u if v == 1 else np.repeat(np.repeat(u, v, axis=0), v, axis=1)
    return r if psf is None else _slab_band_sum(r, psf, e_offsets[block_id[2]], True)


def _em_half(z, qx, qy_raw, wy, s):
    """``z * (Hx^T(..) + Hy^T(..)) / s`` (same operation order as EMProx)."""
    corr = qx + qy_raw * wy
    return z * corr / s


def _sensitivity(sx, sy_raw, wy):
    s = sx + sy_raw * wy
    return np.maximum(s, np.finfo(s.dtype).tiny)


def _interior_2d(zo, n2, D):
    c2 = starlet2d(zo, n2)
    if D:
        c2 = c2[:, D:c2.shape[1] - D, D:c2.shape[2] - D]
    return c2


def _k_block(coarse, k, rule):
    """``_k_map`` of :mod:`xfusion.regularizers.sparsity` with the global mean/std of |C|."""
    if rule is None:
        return k
    k_min, k_max, mean, std = rule
    a = np.abs(coarse)
    c = (a - np.float32(mean) if a.dtype == _F32 else a - mean) / max(std, 1e-30)
    return ((k_max - k_min) / (1.0 + np.exp(-c)) + k_min).astype(coarse.dtype)


def _prox_block(zo, n2, n1, D, bands, k, rule):
    """Thresholded 2D-1D starlet synthesis of one block (``Wavelet2D1D.prox``), clipped at 0.

    ``bands``: [(a, b, sigma)] of the thresholded bands in ``Wavelet2D1D._bands`` order.
    Returns (block, penalty part).
    """
    c2 = _interior_2d(zo, n2, D)
    c = [starlet1d(c2[a], n1, axis=-1) for a in range(n2 + 1)]
    del c2
    out = c[n2][n1].copy()
    kk = _k_block(out, k, rule)
    pen = 0.0
    for a, b, sig in bands:
        th = 1.0 * kk * sig
        band = soft_threshold(c[a][b], th)
        out += band
        pen += float(np.sum(np.abs(band) * th, dtype=np.float64))
    np.maximum(out, 0, out=out)
    return out, _scalar(pen)


def _sample_block(zo, n2, n1, D, need, strides, stats, ox, oy, block_id=None):
    """Lattice values of the needed bands (nx, ny, len(need) * ne) and |C| moments (1, 1, 3) of one block."""
    c2 = _interior_2d(zo, n2, D)
    sx, sy, se = strides
    i, j = block_id[0], block_id[1]
    lx, ly = (-ox[i]) % sx, (-oy[j]) % sy
    sub = c2[:, lx::sx, ly::sy, :]
    cache, pieces = {}, []
    for a, b in need:
        if a not in cache:
            cache[a] = starlet1d(sub[a], n1, axis=-1)
        pieces.append(cache[a][b][:, :, ::se])
    del cache
    samples = np.concatenate(pieces, axis=-1) if pieces else np.empty(sub.shape[1:3] + (0,), c2.dtype)
    mom = np.zeros((1, 1, 3))
    if stats:
        a = np.abs(starlet1d(c2[n2], n1, axis=-1)[n1]).astype(np.float64)
        mom[0, 0] = (a.sum(), np.sum(a * a), a.size)
    return samples, mom


# ---------------------------------------------------------------------------
# the solver
# ---------------------------------------------------------------------------


def _offsets(chunks):
    return tuple(int(o) for o in np.concatenate([[0], np.cumsum(chunks)[:-1]]))


class DaskEMProx:
    """EM + 2D-1D starlet prox (:class:`~xfusion.solvers.em.EMProx`) on Dask arrays.

    Parameters
    ----------
    x_data : dask array (M, N, l) of X counts, chunks (bx, by, l) (the whole energy axis per chunk).
    y_data : dask array (M/v, N/v, L) of Y counts, chunks (bx/v, by/v, L); rechunked to match X if needed.
    mx, my : :class:`~xfusion.operators.model.InstrumentModel` (internal units); uses ``mx.weights``,
        ``mx.spectral`` and ``my.weights`` only (never ``my.spatial``).
    psf_kernel : 2D odd array (PSF at the fused pixel scale) or None; or a band stack
        (n_bands, kx, ky) for an energy-dependent PSF, interpolated over the fused channels with
        ``psf_weights`` (n_bands, L) (default: ``my.spatial.weights`` of an
        :class:`~xfusion.operators.psf.EnergyDependentSpatial`, cheap to read).
    factor : int spatial rebin factor v.
    regularizer : :class:`~xfusion.regularizers.sparsity.Wavelet2D1D` or None (plain Richardson-Lucy).
    client : optional ``distributed.Client``.

    ``init(z0)`` takes the start cube as a Dask array (rechunked to the fused chunks), a NumPy
    array or a scalar level. The state holds ``z``, ``z_half`` (persisted Dask arrays) and
    Python floats (``data_term``, ``penalty``, ``objective``, the band MADs ``sigma_a_b`` of
    ``z_half`` and, for ``k_rule="sigmoid"``, ``k_mean``/``k_std``).
    """

    name = "em"

    def __init__(self, x_data, y_data, mx, my, psf_kernel, factor, regularizer, client=None, psf_weights=None,
                 layout="halo", slab_bytes=SLAB_BYTES):
        if da is None:  # pragma: no cover
            raise ImportError("dask is needed for DaskEMProx")
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}; got {layout!r}")
        self.layout = layout
        self.client = client
        self.reg = regularizer
        v = self.v = int(factor)
        xd = da.asarray(x_data).astype(_F32)
        yd = da.asarray(y_data).astype(_F32)
        if len(xd.chunks[2]) != 1:
            xd = xd.rechunk({2: -1})
        M, N, _ = xd.shape
        L = yd.shape[2]
        if yd.shape[:2] != (M // v, N // v) or M % v or N % v:
            raise ValueError(f"Y counts {yd.shape} do not match X counts {xd.shape} with spatial factor {v}")
        if any(c % v for c in xd.chunks[0] + xd.chunks[1]):
            raise ValueError(f"X pixel chunks {xd.chunks[:2]} must be multiples of the spatial factor {v}")
        ychunks = (tuple(c // v for c in xd.chunks[0]), tuple(c // v for c in xd.chunks[1]), (L,))
        if yd.chunks != ychunks:
            yd = yd.rechunk(ychunks)
        self.shape = (M, N, L)
        self.chunks = (xd.chunks[0], xd.chunks[1], (L,))
        self.ychunks = ychunks
        self._one = (tuple(1 for _ in xd.chunks[0]), tuple(1 for _ in xd.chunks[1]), (1,))

        # PSF: cropped to the field (taps beyond the field size never contribute)
        self.psf, self.h = None, (0, 0)
        if psf_kernel is not None:
            k = np.asarray(psf_kernel, dtype=np.float64)
            if k.ndim not in (2, 3) or k.shape[-2] % 2 == 0 or k.shape[-1] % 2 == 0:
                raise ValueError(f"PSF kernel must be 2D (or a 3D band stack) with odd sizes; got shape {k.shape}")
            hx, hy = min(k.shape[-2] // 2, M - 1), min(k.shape[-1] // 2, N - 1)
            cx, cy = k.shape[-2] // 2, k.shape[-1] // 2
            k = k[..., cx - hx:cx + hx + 1, cy - hy:cy + hy + 1]
            self.h = (hx, hy)
            if k.ndim == 2:
                self.psf = [(np.ascontiguousarray(k), np.ascontiguousarray(k[::-1, ::-1]), 0, L, None)]
            else:
                wb = psf_weights if psf_weights is not None else getattr(my.spatial, "weights", None)
                wb = None if wb is None else np.asarray(wb, dtype=np.float64)
                if wb is None or wb.shape != (k.shape[0], L):
                    raise ValueError(f"a PSF band stack {k.shape} needs psf_weights of shape ({k.shape[0]}, {L})")
                self.psf = []
                for kb, w in zip(k, wb):
                    nz = np.flatnonzero(w > 0)  # the channel ranges of EnergyDependentSpatial
                    if nz.size:
                        lo, hi = int(nz[0]), int(nz[-1]) + 1
                        self.psf.append((np.ascontiguousarray(kb), np.ascontiguousarray(kb[::-1, ::-1]), lo, hi,
                                         w[lo:hi].astype(_F32)))
        self.dc = tuple(-(-h // v) for h in self.h)
        if layout == "rechunk":  # full-field channel slabs of about slab_bytes for the spatial operators
            n = max(1, min(L, int(slab_bytes // (M * N * 4))))
            self.slabs = tuple(min(n, L - e) for e in range(0, L, n))
            self.e_offsets = _offsets(self.slabs)
        self.D = 2 * (2 ** regularizer.n2 - 1) if regularizer is not None else 0
        halos = [("starlet halo", (self.D, self.D), self.chunks)]
        if layout == "halo":
            halos += [("PSF radius", self.h, self.chunks), ("PSF radius on the coarse grid", self.dc, self.ychunks)]
        for name, depth, chunks in halos:
            for ax in range(2):
                if depth[ax] > min(chunks[ax]):
                    raise ValueError(
                        f"pixel chunks {self.chunks[:2]} are smaller than the {name} ({depth[ax]} pixels on axis "
                        f"{ax}); use larger chunks (e.g. chunks=({M}, {N}), one block)")

        # weights: (L,) as float32 vectors, or (M, N, L) as persisted Dask arrays chunked like the cube
        wx = np.asarray(mx.weights, dtype=np.float64).astype(_F32)
        wy = np.asarray(my.weights, dtype=np.float64).astype(_F32)
        persist = []
        if wx.ndim == 3:
            wx = da.from_array(wx, chunks=self.chunks)
            persist.append(wx)
        if wy.ndim == 3:
            wy = da.from_array(wy, chunks=self.chunks)
            wyo = self._halo(wy, self.h, 0) if layout == "halo" else wy
            persist += [wy, wyo]
        spec = dask.delayed(mx.spectral, pure=True) if mx.spectral is not None else None
        persist = [xd, yd] + persist + ([spec] if spec is not None else [])
        persist = self._persist(persist)
        self.xd, self.yd = persist[0], persist[1]
        rest = persist[2:]
        if wx.ndim == 3:
            wx, rest = rest[0], rest[1:]
        if wy.ndim == 3:
            (wy, wyo), rest = rest[:2], rest[2:]
        else:
            wyo = wy
        self.wx, self.wy, self.wyo = wx, wy, wyo
        self.spec = rest[0] if spec is not None else None

        # constants: sum d and sum d log d of both data sets, the sensitivity s = Hx^T 1 + Hy^T 1
        cx_ = da.map_blocks(_data_consts, self.xd, chunks=self._one[:2] + ((2,),), dtype=np.float64,
                            meta=_meta(np.float64))
        cy_ = da.map_blocks(_data_consts, self.yd, chunks=self._one[:2] + ((2,),), dtype=np.float64,
                            meta=_meta(np.float64))
        sx = da.map_blocks(_x_adjoint, da.ones(self.xd.shape, chunks=self.xd.chunks, dtype=_F32), self.wx,
                           self.spec, chunks=self.chunks, dtype=_F32, meta=_meta(_F32))
        sy = self._hy_adjoint_raw(da.ones(self.yd.shape, chunks=self.yd.chunks, dtype=_F32))
        sens = da.map_blocks(_sensitivity, sx, sy, self.wy, chunks=self.chunks, dtype=_F32, meta=_meta(_F32))
        self.sens, cx_, cy_ = self._persist([sens, cx_, cy_])
        cx_, cy_ = self._compute([cx_, cy_])
        self._consts = (-float(cx_[..., 0].sum()) + float(cx_[..., 1].sum()),
                        -float(cy_[..., 0].sum()) + float(cy_[..., 1].sum()))

        # regularizer plan
        if regularizer is not None:
            r = regularizer
            self.bands = [(a, b) for a, b, null in r._bands() if not (null and r.null_space == "zero")]
            self.need = self.bands if r.per_band else [(0, 0)]
            self.strides = lattice_strides(self.shape, r.sample)
            self.ox, self.oy = _offsets(self.chunks[0]), _offsets(self.chunks[1])

    # -- scheduling helpers -------------------------------------------------
    def _persist(self, colls):
        return persist_many(colls, self.client)

    def _compute(self, colls):
        return compute_many(colls, self.client)

    # -- blockwise operators ------------------------------------------------
    @staticmethod
    def _halo(x, depth, boundary):
        if isinstance(depth, int):
            depth = (depth, depth)
        if depth[0] == 0 and depth[1] == 0:
            return x
        return da.overlap.overlap(x, depth={0: depth[0], 1: depth[1], 2: 0},
                                  boundary={0: boundary, 1: boundary, 2: "none"}, allow_rechunk=False)

    def _hy_adjoint_raw(self, u):
        """``correlate(repeat_v(u))`` (without the weights) of a Y-shaped array, in the fused chunks."""
        if self.layout == "rechunk":
            M, N, _ = self.shape
            us = u.rechunk((self.shape[0] // self.v, self.shape[1] // self.v, self.slabs))
            q = da.map_blocks(_slab_adjoint, us, self.psf, self.v, self.e_offsets, chunks=((M,), (N,), self.slabs),
                              dtype=_F32, meta=_meta(_F32))
            return q.rechunk(self.chunks)
        uo = self._halo(u, self.dc, 0)
        return da.map_blocks(_y_adjoint, uo, self.psf, self.v, self.dc, self.h, chunks=self.chunks, dtype=_F32,
                             meta=_meta(_F32))

    def _hy_forward(self, z):
        """Predicted Y counts ``rebin_v(PSF * (w_y z))`` in the Y chunks."""
        if self.layout == "rechunk":
            M, N, _ = self.shape
            wz = da.map_blocks(np.multiply, z, self.wy, dtype=_F32, meta=_meta(_F32))
            ws = wz.rechunk((M, N, self.slabs))
            m = da.map_blocks(_slab_forward, ws, self.psf, self.v, self.e_offsets,
                              chunks=((M // self.v,), (N // self.v,), self.slabs), dtype=_F32, meta=_meta(_F32))
            return m.rechunk(self.ychunks)
        zo = self._halo(z, self.h, 0)
        return da.map_blocks(_y_model, zo, self.wyo, self.psf, self.v, chunks=self.ychunks, dtype=_F32,
                             meta=_meta(_F32))

    def _as_cube(self, z0):
        if da is not None and isinstance(z0, da.Array):
            z = z0.astype(_F32)
            return z.rechunk(self.chunks) if z.chunks != self.chunks else z
        a = np.asarray(z0, dtype=_F32)
        if a.ndim == 0:
            return da.full(self.shape, a, chunks=self.chunks, dtype=_F32)
        return da.from_array(a, chunks=self.chunks)

    def model_x(self, z):
        """Lazy predicted X counts (M, N, l), chunks (bx, by, l)."""
        z = self._as_cube(z)
        l = self.xd.shape[2]
        return da.map_blocks(_x_forward, z, self.wx, self.spec, chunks=self.chunks[:2] + ((l,),), dtype=_F32,
                             meta=_meta(_F32))

    def model_y(self, z):
        """Lazy predicted Y counts (M/v, N/v, L), chunks (bx/v, by/v, L)."""
        return self._hy_forward(self._as_cube(z))

    def _graph(self, z, pen):
        """Collections of one evaluation at ``z``: z_half, data-term parts, (penalty), lattice samples."""
        tx = da.map_blocks(_x_block, z, self.xd, self.wx, self.spec, chunks=self.chunks, dtype=object,
                           meta=_OBJ_META)
        qx = da.map_blocks(_item, tx, 0, chunks=self.chunks, dtype=_F32, meta=_meta(_F32))
        vx = da.map_blocks(_item, tx, 1, chunks=self._one, dtype=np.float64, meta=_meta(np.float64))
        ty = da.map_blocks(_y_ratio, self._hy_forward(z), self.yd, chunks=self.ychunks, dtype=object,
                           meta=_OBJ_META)
        ry = da.map_blocks(_item, ty, 0, chunks=self.ychunks, dtype=_F32, meta=_meta(_F32))
        vy = da.map_blocks(_item, ty, 1, chunks=self._one, dtype=np.float64, meta=_meta(np.float64))
        qy = self._hy_adjoint_raw(ry)
        zh = da.map_blocks(_em_half, z, qx, qy, self.wy, self.sens, chunks=self.chunks, dtype=_F32,
                           meta=_meta(_F32))
        out = {"z": z, "z_half": zh, "vx": vx, "vy": vy}
        if pen is not None:
            out["pen"] = pen
        if self.reg is not None:
            r = self.reg
            ts = da.map_blocks(_sample_block, self._halo(zh, self.D, "reflect"), r.n2, r.n1, self.D, self.need,
                               self.strides, r.k_rule == "sigmoid", self.ox, self.oy, chunks=self.chunks,
                               dtype=object, meta=_OBJ_META)
            sx, sy, se = self.strides
            cnt = lambda chunks, offs, s: tuple(len(range((-o) % s, c, s)) for c, o in zip(chunks, offs))  # noqa
            ne = len(range(0, self.shape[2], se)) * len(self.need)
            out["samples"] = da.map_blocks(_item, ts, 0, chunks=(cnt(self.chunks[0], self.ox, sx),
                                                                  cnt(self.chunks[1], self.oy, sy), (ne,)),
                                           dtype=_F32, meta=_meta(_F32))
            out["moments"] = da.map_blocks(_item, ts, 1, chunks=self._one[:2] + ((3,),), dtype=np.float64,
                                           meta=_meta(np.float64))
        return out

    def _prox(self, state):
        """Lazy ``max(prox(z_half), 0)`` with the thresholds of the state, and the penalty parts."""
        zh = state["z_half"]
        if self.reg is None:
            return da.maximum(zh, 0), None
        r = self.reg
        bands = [(a, b, float(state[f"sigma_{a}_{b}"] if r.per_band else state["sigma_0_0"]))
                 for a, b in self.bands]
        rule = None
        if r.k_rule == "sigmoid":
            rule = (r.k_min, r.k_max, float(state["k_mean"]), float(state["k_std"]))
        t = da.map_blocks(_prox_block, self._halo(zh, self.D, "reflect"), r.n2, r.n1, self.D, bands, r.k, rule,
                          chunks=self.chunks, dtype=object, meta=_OBJ_META)
        z = da.map_blocks(_item, t, 0, chunks=self.chunks, dtype=_F32, meta=_meta(_F32))
        pen = da.map_blocks(_item, t, 1, chunks=self._one, dtype=np.float64, meta=_meta(np.float64))
        return z, pen

    def _execute(self, colls):
        keys = list(colls)
        vals = dict(zip(keys, self._persist([colls[k] for k in keys])))
        small = [k for k in keys if k not in ("z", "z_half")]
        got = dict(zip(small, self._compute([vals[k] for k in small])))
        vx, vy = float(np.sum(got["vx"])), float(np.sum(got["vy"]))
        val = 0.0
        for part, c in ((vx, self._consts[0]), (vy, self._consts[1])):
            val += np.inf if not np.isfinite(part) else part + c
        pen = float(np.sum(got["pen"])) if "pen" in got else 0.0
        state = {"z": vals["z"], "z_half": vals["z_half"], "data_term": float(val), "penalty": pen,
                 "objective": float(val + pen)}
        if self.reg is not None:
            s = got["samples"]
            s = s.reshape(s.shape[0], s.shape[1], len(self.need), -1)
            for i, (a, b) in enumerate(self.need):
                state[f"sigma_{a}_{b}"] = float(mad_sigma(s[:, :, i, :]))
            if self.reg.k_rule == "sigmoid":
                s1, s2, n = np.sum(got["moments"], axis=(0, 1)).reshape(-1)
                mean = s1 / n
                state["k_mean"] = float(mean)
                state["k_std"] = float(np.float32(math.sqrt(max(s2 / n - mean * mean, 0.0))))
        return state

    # -- method interface -----------------------------------------------------
    def init(self, z0):
        return self._execute(self._graph(self._as_cube(z0), None))

    def step(self, state):
        return self._execute(self._graph(*self._prox(state)))

    def solution(self, state):
        return state["z"]

    def iteration_graph_size(self, state):
        """Number of tasks of the graph of one ``step`` from ``state`` (constant over the iterations)."""
        colls = list(self._graph(*self._prox(state)).values())
        tasks = {}
        for c in colls:
            tasks.update(dict(c.__dask_graph__()))
        return len(tasks)
