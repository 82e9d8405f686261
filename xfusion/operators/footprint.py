"""Spatial footprint of a detector-pixel instrument on the fused sky grid (exact overlap areas).

A microcalorimeter array (XRISM Resolve: 6 x 6 pixels of 30", one a calibration pixel) is
rotated on the sky by the roll angle and offset from the sharp-spatial grid by a fraction of
a pixel: its pixels are not an integer grouping of the fused pixels, so the integer
:class:`~xfusion.operators.rebin.Rebin` cannot describe it. The footprint operator is the
sparse matrix

    F[p, (i, j)] = area(detector pixel p  n  fused pixel (i, j)) / area(fused pixel (i, j))

(dimensionless, in [0, 1]): the fraction of the flux of fused pixel (i, j), taken uniform
within that pixel, that falls on detector pixel p. Forward ``(F z)[p, k] = sum_ij F[p, ij]
z[i, j, k]`` maps a cube (M, N, K) to detector spectra (P, K); the adjoint spreads (P, K)
back onto (M, N, K) with the same weights (``<F z, u> = <z, F^T u>`` exactly: one matrix
and its transpose). Flux on no detector pixel (outside the array, in gaps between
absorbers, on a masked pixel) is lost, as on the real detector.

Geometry (all in arcsec, in the tangent-plane frame of the fused grid: ``x`` to the west,
``y`` to the north, see :func:`xfusion.observation.celestial_wcs`). Detector pixel ``p`` is
a square of side ``det_pixel_size`` centred at ``(det_x[p], det_y[p])`` in DETECTOR
coordinates (offsets from the array centre); the detector frame is rotated by ``roll``
degrees counter-clockwise (from +x towards +y) and its origin placed at ``center`` on the
sky::

    sky = center + R(roll) @ det,     R(a) = [[cos a, -sin a], [sin a, cos a]]

Areas are EXACT: each detector square is clipped against each fused pixel it touches
(Sutherland-Hodgman clipping of a convex polygon by the four half-planes of an axis-aligned
rectangle, then the shoelace area); fused pixels entirely inside a detector pixel get 1
without clipping. Measured against 200x200 point supersampling of every fused pixel touched by
three of the 36 pixels of a Resolve-like array (30" pixels on a 4" grid, roll 17 deg): maximum
difference 3.2e-5 of a pixel area (the supersampling's own error), and the row sums equal
``det_pixel_size**2 / pixel_size**2`` to 8e-13 for pixels inside the field; built in 0.24 s for
36 pixels on a 64x64 grid.

Restriction to what a tile sees (issue 18): a tile of a mosaic sees only part of the fused field
(its pixels and the PSF halo around them). :meth:`Footprint.restricted` splits a footprint whose
dense ``F B`` keeps only those columns into a :class:`Gather` (fused cube -> the seen pixels,
adjoint: scatter into zeros) and the footprint on the seen pixels; an instrument model then applies
the exposure x area weights (per energy) after the footprint, on the tile's (P, L) data
(:func:`xfusion.operators.model._ordered`), so no per-iteration pass over the whole cube remains but
the scatter of the adjoint. Per use, a tile costs one gather of the C pixels it sees, the dense
(P, C) x (C, L) product (BLAS; C = 3364-3756 of 5184 pixels on the 72x72 mosaic scene: the PSF halo
of 13 pixels around 6x6 detector pixels of 6 fused pixels) and O(P L) for the weights. The dense
product beats a sparse one here (measured, 1 thread, 200 channels: 0.53 ms dense against 0.72 ms
CSR with the 31% non-zero entries, 0.56 ms with entries below 1e-5 of the largest dropped).

The matrix acts on the whole field at once (``depth = 0``: no halo form). On Dask (session 24) it is cut by the
fused cube's pixel blocks instead: :func:`field_matrix` gives the whole map as one sparse (P, M N) matrix and
:func:`block_columns` its columns in one block, so the forward is the sum of every block's share ``F_b z_b``
(a (P, K) array per block that holds any of the map's pixels) and the adjoint writes each block ``F_b^T u``
from the small (P, K) data (:mod:`xfusion.backends.blockwise`).
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp


def _clip(poly, axis, bound, keep_below):
    """Part of convex polygon ``poly`` (V, 2) with coordinate ``axis`` <= bound (or >=)."""
    out = []
    n = len(poly)
    for k in range(n):
        a, b = poly[k], poly[(k + 1) % n]
        ina = (a[axis] <= bound) if keep_below else (a[axis] >= bound)
        inb = (b[axis] <= bound) if keep_below else (b[axis] >= bound)
        if ina:
            out.append(a)
        if ina != inb:
            t = (bound - a[axis]) / (b[axis] - a[axis])
            out.append(a + t * (b - a))
    return out


def _area(poly):
    if len(poly) < 3:
        return 0.0
    p = np.asarray(poly)
    x, y = p[:, 0], p[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def polygon_rect_overlap(poly, x0, x1, y0, y1):
    """Area of the convex polygon ``poly`` (V, 2) inside the rectangle [x0, x1] x [y0, y1]."""
    p = [np.asarray(v, dtype=np.float64) for v in poly]
    for axis, bound, below in ((0, x0, False), (0, x1, True), (1, y0, False), (1, y1, True)):
        p = _clip(p, axis, bound, below)
        if len(p) < 3:
            return 0.0
    return _area(p)


def detector_corners(det_x, det_y, det_pixel_size, roll=0.0, center=(0.0, 0.0)):
    """Sky corners (P, 4, 2) arcsec of square detector pixels (see the module docstring)."""
    dx, dy = np.asarray(det_x, np.float64), np.asarray(det_y, np.float64)
    h = 0.5 * float(det_pixel_size)
    a = np.deg2rad(float(roll))
    R = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    local = np.array([[-h, -h], [h, -h], [h, h], [-h, h]])
    det = np.stack([dx, dy], axis=-1)[:, None, :] + local[None]  # (P, 4, 2) detector frame
    return det @ R.T + np.asarray(center, np.float64)


def footprint_matrix(x, y, pixel_size, det_x, det_y, det_pixel_size, roll=0.0, center=(0.0, 0.0)):
    """Sparse CSR matrix (P, M N) of exact fractional overlaps (see the module docstring).

    ``x`` (M,), ``y`` (N,): centres of the fused pixels (arcsec), square pixels of side
    ``pixel_size``; column index ``i * N + j`` (C order of an (M, N) image).
    """
    xs, ys = np.asarray(x, np.float64), np.asarray(y, np.float64)
    p = float(pixel_size)
    if not (p > 0 and float(det_pixel_size) > 0):
        raise ValueError(f"pixel sizes must be > 0 arcsec; got fused {pixel_size}, detector {det_pixel_size}")
    M, N = xs.size, ys.size
    corners = detector_corners(det_x, det_y, det_pixel_size, roll, center)
    a = np.deg2rad(float(roll))
    c, s = np.cos(a), np.sin(a)
    h = 0.5 * float(det_pixel_size)
    cen = np.asarray(center, np.float64)
    rows, cols, vals = [], [], []
    for k, poly in enumerate(corners):
        lo, hi = poly.min(axis=0), poly.max(axis=0)
        i = np.flatnonzero((xs + p / 2 > lo[0]) & (xs - p / 2 < hi[0]))
        j = np.flatnonzero((ys + p / 2 > lo[1]) & (ys - p / 2 < hi[1]))
        if i.size == 0 or j.size == 0:
            continue
        ii, jj = np.meshgrid(i, j, indexing="ij")
        ii, jj = ii.ravel(), jj.ravel()
        # fused pixels whose 4 corners are inside the detector square: overlap = whole pixel
        inside = np.ones(ii.size, bool)
        for sx in (-0.5, 0.5):
            for sy in (-0.5, 0.5):
                px, py = xs[ii] + sx * p - cen[0], ys[jj] + sy * p - cen[1]
                u = c * px + s * py - float(np.asarray(det_x, np.float64)[k])
                v = -s * px + c * py - float(np.asarray(det_y, np.float64)[k])
                inside &= (np.abs(u) <= h) & (np.abs(v) <= h)
        area = np.where(inside, p * p, 0.0)
        for n in np.flatnonzero(~inside):
            area[n] = polygon_rect_overlap(poly, xs[ii[n]] - p / 2, xs[ii[n]] + p / 2,
                                           ys[jj[n]] - p / 2, ys[jj[n]] + p / 2)
        keep = area > 1e-12 * p * p
        rows.append(np.full(int(keep.sum()), k))
        cols.append(ii[keep] * N + jj[keep])
        vals.append(area[keep] / (p * p))
    P = corners.shape[0]
    if rows:
        r, cc, v = np.concatenate(rows), np.concatenate(cols), np.concatenate(vals)
    else:
        r, cc, v = np.zeros(0, int), np.zeros(0, int), np.zeros(0)
    return sp.csr_matrix((v, (r, cc)), shape=(P, M * N))


#: a dense footprint keeps only its non-zero columns when they are fewer than this fraction of the field
COLUMN_FRACTION = 0.8
#: relative size of the FFT round-off zeroed in a dense footprint x PSF matrix (:meth:`Footprint.with_psf`)
ROUNDOFF = 1e-12


class Footprint:
    """Fused cube (M, N, K) -> detector spectra (P, K) by a (sparse or dense) matrix F (P, M N).

    Forward ``F @ z.reshape(M N, K)``, adjoint ``F^T @ u``; keeps float32/float64. ``matrix``
    may be scipy.sparse (the bare footprint) or a dense ndarray (footprint x PSF, see
    :meth:`with_psf`). ``depth = 0``: a global operator (no pixel-block halo).
    """

    depth = 0

    def __init__(self, matrix, in_hw):
        # ``columns``: for a dense matrix with all-zero columns (a tile seeing part of the field), the
        # fused pixels (flat indices) it touches; forward gathers them, adjoint scatters back (zeros elsewhere)
        self.in_hw = tuple(int(v) for v in in_hw)
        if sp.issparse(matrix):
            F = sp.csr_matrix(matrix, dtype=np.float64)
            self._F = {np.dtype(np.float64): F, np.dtype(np.float32): F.astype(np.float32)}
            self._FT = {k: m.T.tocsr() for k, m in self._F.items()}
            self.columns = None
        else:
            F = np.asarray(matrix, dtype=np.float64)
            # a dense F B (footprint x PSF) of a tile that sees part of the field: keep the columns it
            # touches only, so its cost scales with the fused pixels it sees, not with the whole field
            cols = np.flatnonzero(np.any(F != 0, axis=0)) if F.ndim == 2 else None
            self.columns = cols if cols is not None and cols.size < COLUMN_FRACTION * F.shape[1] else None
            Fc = F if self.columns is None else np.ascontiguousarray(F[:, self.columns])
            self._F = {np.dtype(np.float64): Fc, np.dtype(np.float32): Fc.astype(np.float32)}
            self._FT = {k: m.T for k, m in self._F.items()}
        if F.ndim != 2 or F.shape[1] != self.in_hw[0] * self.in_hw[1]:
            raise ValueError(f"footprint matrix shape {F.shape} does not act on a {self.in_hw} field")
        self.matrix = F
        self.n_pixels = F.shape[0]

    def _dt(self, a):
        return a.dtype if a.dtype in (np.float32, np.float64) else np.dtype(np.float64)

    def forward(self, z):
        dt = self._dt(z)
        M, N = self.in_hw
        flat = np.asarray(z, dtype=dt).reshape(M * N, -1)
        if self.columns is not None:
            flat = flat[self.columns]
        out = np.asarray(self._F[dt] @ flat, dtype=dt)
        return out.reshape((self.n_pixels,) + z.shape[2:])

    def adjoint(self, u):
        dt = self._dt(u)
        flat = np.asarray(u, dtype=dt).reshape(self.n_pixels, -1)
        out = np.asarray(self._FT[dt] @ flat, dtype=dt)
        if self.columns is not None:
            full = np.zeros((self.in_hw[0] * self.in_hw[1], out.shape[1]), dtype=dt)
            full[self.columns] = out
            out = full
        return out.reshape(self.in_hw + u.shape[1:])

    def restricted(self):
        """``(gather, footprint)`` with ``footprint.forward(gather.forward(z)) == self.forward(z)`` (to float
        round-off): :class:`Gather` of the fused pixels this operator sees (:attr:`columns`), box by box, and the
        block-sparse footprint on them (:class:`BlockFootprint`, input (C, 1, K)); None when it acts on the whole
        field (``columns`` None, e.g. a bare sparse footprint)."""
        if self.columns is None:
            return None
        order, starts = _boxes(self._F[np.dtype(np.float64)], self.columns, self.in_hw[1])
        g = Gather(self.columns[order], self.in_hw)
        return g, BlockFootprint(self._F[np.dtype(np.float64)][:, order], starts)

    def with_psf(self, psf_op):
        """Dense ``F B`` (P, M N) for a spatial operator ``B`` on the (M, N) field (e.g. a
        :class:`~xfusion.operators.psf.Convolve2D` of the PSF on the fused grid): built from the
        adjoint, ``(F B)^T = B^T F^T``, exact to float64 rounding. PSF first, then footprint.
        Entries below ``ROUNDOFF`` x the largest are the FFT's round-off where the PSF does not reach:
        set to 0, so that a tile keeps only the columns it sees (:attr:`columns`)."""
        FT = self.matrix.T
        FT = FT.toarray() if sp.issparse(FT) else np.asarray(FT)
        cols = psf_op.adjoint(np.ascontiguousarray(FT.reshape(self.in_hw + (self.n_pixels,))))
        FB = np.ascontiguousarray(cols.reshape(-1, self.n_pixels).T)
        FB[np.abs(FB) < ROUNDOFF * np.abs(FB).max(initial=0.0)] = 0.0
        return Footprint(FB, self.in_hw)


#: box sizes (fused pixels a side) tried for the blocks of a :class:`BlockFootprint`
BOX_SIZES = (4, 6, 8, 12, 16, 24, 32)
#: cost of one more block (one more BLAS call and its small copies), in multiply-adds per channel, in the choice
#: of the box size (:func:`_boxes`): measured on the 72x72x200 mosaic scene (1 thread), a block costs ~4 us
#: (~1000 multiply-adds per channel at 200 channels)
BLOCK_COST = 1000


def _boxes(F, columns, n_y):
    """Order of the C columns of a dense (P, C) ``F`` (fused pixels ``columns``, flat indices i n_y + j) grouped in
    square boxes of b x b fused pixels, and the start of each box in that order: the box size b (or one box)
    minimizing the multiply-adds of the block-sparse product, sum over boxes of (rows seeing the box) x (its
    pixels), plus :data:`BLOCK_COST` per box."""
    ii, jj = np.divmod(np.asarray(columns, np.intp), n_y)
    nz = F != 0
    best = None
    for b in BOX_SIZES + (None,):
        key = np.zeros(ii.size, np.intp) if b is None else (ii // b) * (n_y // b + 1) + jj // b
        order = np.argsort(key, kind="stable")
        k = key[order]
        starts = np.flatnonzero(np.r_[True, k[1:] != k[:-1]])
        ends = np.r_[starts[1:], k.size]
        seen = np.logical_or.reduceat(nz[:, order], starts, axis=1)  # (P, boxes): row p sees box k
        cost = float(np.sum(seen.sum(axis=0) * (ends - starts))) + BLOCK_COST * starts.size
        if best is None or cost < best[0]:
            best = (cost, order, starts)
    return best[1], best[2]


class BlockFootprint:
    """A dense (P, C) footprint x PSF on the C fused pixels a tile sees ((C, 1, K) -> (P, K)), stored by blocks.

    The pixels come grouped in boxes (contiguous ranges ``starts[k]:starts[k+1]``, :func:`_boxes`); block k keeps
    the rows (detector pixels) that see box k, ``B_k = F[rows_k, box k]``. Forward
    ``(F z)[rows_k] += B_k z[box k]`` summed over the boxes; adjoint ``(F^T u)[box k] = B_k^T u[rows_k]`` (boxes
    are disjoint: each written once). The same matrix as the dense one (only exact zeros left out; sums in another
    order: float round-off). Why: a detector pixel's row of F B is non-zero only on its pixel plus the PSF halo
    (31% of the tile's pixels on the mosaic scene); boxes of 12 pixels keep 46% of the multiply-adds and, with the
    gather and scatter, cost 0.86 ms per forward + adjoint against 1.27 ms dense (one thread, 200 channels).

    Evaluation (session 9): the block products go into one stacked (sum_k |rows_k|, K) array and are summed onto the
    detector pixels by one sparse 0/1 matrix ``S`` (P, sum_k |rows_k|) (``y = S [B_1 z_1; B_2 z_2; ...]``: the same
    additions in the same order as adding block by block, without a fancy-indexed read-add-write per block); the
    adjoint reads the rows of every block with one gather. :meth:`forward_from` and :meth:`adjoint_add` fuse the
    :class:`Gather` of the tile's pixels in (:meth:`runs`: where each box lies in the cube, a b x b box being b runs
    of consecutive fused pixels): each box copied from the fused cube run by run into a small buffer (no gathered
    (C, K) copy), each box's adjoint ADDED run by run into a fused cube (no zero cube, scatter and cube sum). The
    same sums as gather + :meth:`forward` and :meth:`adjoint` + scatter + cube sum, bit for bit. Measured (session
    9, 72x72x400 mosaic scene, one thread, in the RL loop): tile 1 4.2 -> 2.9 ms per forward + adjoint + sum.
    ``depth = 0``: a whole-field operator (no halo form; on Dask cut by pixel blocks, :func:`field_matrix`)."""

    depth = 0

    def __init__(self, matrix, starts):
        F = np.asarray(matrix, dtype=np.float64)
        self.n_pixels, n = F.shape
        self.in_hw = (n, 1)
        starts = np.asarray(starts, np.intp)
        ends = np.r_[starts[1:], n]
        self.blocks = []
        for a, e in zip(starts, ends):
            rows = np.flatnonzero(np.any(F[:, a:e] != 0, axis=1))
            B = F[rows, a:e]
            self.blocks.append((int(a), int(e), rows, {np.dtype(np.float64): np.ascontiguousarray(B),
                                                       np.dtype(np.float32): np.ascontiguousarray(B, np.float32)},
                                {np.dtype(np.float64): np.ascontiguousarray(B.T),
                                 np.dtype(np.float32): np.ascontiguousarray(B.T, np.float32)}))
        # the stacked block products: block k's rows at [offsets[k], offsets[k + 1]); S sums them per detector pixel
        rows = [b[2] for b in self.blocks]
        self._rows = np.concatenate(rows).astype(np.intp) if rows else np.zeros(0, np.intp)
        self._offsets = np.r_[0, np.cumsum([r.size for r in rows], dtype=np.intp)].astype(np.intp)
        S = sp.csr_matrix((np.ones(self._rows.size), (self._rows, np.arange(self._rows.size))),
                          shape=(self.n_pixels, self._rows.size))
        self._sum = {np.dtype(np.float64): S, np.dtype(np.float32): S.astype(np.float32)}
        self._width = max((e - a for a, e, *_ in self.blocks), default=0)

    @property
    def matrix(self):
        """The dense (P, C) matrix (built on demand)."""
        F = np.zeros((self.n_pixels, self.in_hw[0]))
        for a, e, rows, B, _ in self.blocks:
            F[rows, a:e] = B[np.dtype(np.float64)]
        return F

    def _dt(self, a):
        return a.dtype if a.dtype in (np.float32, np.float64) else np.dtype(np.float64)

    def _forward(self, dt, n_channels, box):
        """``S [B_k box(k)]_k`` (P, K): ``box(k)`` gives block k's input (its pixels x K), float ``dt``."""
        T = np.empty((self._rows.size, n_channels), dtype=dt)
        for k, (a, e, rows, B, _) in enumerate(self.blocks):
            if rows.size:
                np.matmul(B[dt], box(k), out=T[self._offsets[k]:self._offsets[k + 1]])
        return np.asarray(self._sum[dt] @ T, dtype=dt)

    def forward(self, z):
        dt = self._dt(z)
        flat = np.asarray(z, dtype=dt).reshape(self.in_hw[0], -1)
        out = self._forward(dt, flat.shape[1], lambda k: flat[self.blocks[k][0]:self.blocks[k][1]])
        return out.reshape((self.n_pixels,) + z.shape[2:])

    def runs(self, columns):
        """Where each box lies in a fused cube (M N, K), for :meth:`forward_from` and :meth:`adjoint_add`: per block,
        the runs of consecutive fused pixels ``(cube_start, cube_stop, box_start, box_stop)`` among ``columns`` (the
        fused pixel, flat index i N + j, of each of the C positions, e.g. a :class:`Gather`'s), a box of b x b pixels
        being b runs of consecutive pixels along y."""
        cols = np.asarray(columns, np.intp)
        if cols.shape != (self.in_hw[0],):
            raise ValueError(f"columns must give the fused pixel of each of the {self.in_hw[0]} positions")
        out = []
        for a, e, *_ in self.blocks:
            c = cols[a:e]
            cut = np.flatnonzero(np.diff(c) != 1) + 1
            out.append([(int(c[s0]), int(c[s0]) + int(s1 - s0), int(s0), int(s1))
                        for s0, s1 in zip(np.r_[0, cut], np.r_[cut, c.size])])
        return out

    def forward_from(self, cube, runs):
        """``forward(cube[columns])`` (P, K) for a fused cube ``cube`` (M N, K) (float32/float64) and the
        :meth:`runs` of ``columns``: each box copied from the cube run by run into one small buffer (no (C, K)
        gathered copy)."""
        dt = cube.dtype
        if dt not in (np.float32, np.float64):
            raise ValueError(f"forward_from: the cube must be float32 or float64, not {dt}")
        buf = np.empty((self._width, cube.shape[1]), dtype=dt)

        def box(k):
            for c0, c1, b0, b1 in runs[k]:
                buf[b0:b1] = cube[c0:c1]
            return buf[:self.blocks[k][1] - self.blocks[k][0]]

        return self._forward(dt, cube.shape[1], box)

    def _adjoint_blocks(self, u):
        """``(dt, U, flat)``: the rows of every block gathered once (sum_k |rows_k|, K)."""
        dt = self._dt(u)
        flat = np.asarray(u, dtype=dt).reshape(self.n_pixels, -1)
        return dt, flat[self._rows], flat

    def adjoint(self, u):
        dt, U, flat = self._adjoint_blocks(u)
        out = np.empty((self.in_hw[0], flat.shape[1]), dtype=dt)
        for k, (a, e, rows, _, BT) in enumerate(self.blocks):
            if rows.size:
                np.matmul(BT[dt], U[self._offsets[k]:self._offsets[k + 1]], out=out[a:e])
            else:
                out[a:e] = 0
        return out.reshape(self.in_hw + u.shape[1:])

    def adjoint_add(self, u, cube, runs):
        """``cube[columns] += adjoint(u)`` in place for a fused cube ``cube`` (M N, K) of ``u``'s float dtype
        (writeable, owned by the caller) and the :meth:`runs` of ``columns``; returns ``cube``. Box by box through
        one small buffer, added run by run: no (C, K) adjoint, zero cube, scatter or cube sum."""
        dt, U, flat = self._adjoint_blocks(u)
        if cube.dtype != dt:
            raise ValueError(f"adjoint_add: the cube is {cube.dtype}, the data {dt}")
        buf = np.empty((self._width, flat.shape[1]), dtype=dt)
        for k, (a, e, rows, _, BT) in enumerate(self.blocks):
            if rows.size:
                v = np.matmul(BT[dt], U[self._offsets[k]:self._offsets[k + 1]], out=buf[:e - a])
                for c0, c1, b0, b1 in runs[k]:
                    dst = cube[c0:c1]
                    np.add(dst, v[b0:b1], out=dst)
        return cube


class Gather:
    """Fused cube (M, N, K) -> the fused pixels ``columns`` (flat C-order indices i N + j, distinct, in any order)
    as (C, 1, K); the adjoint scatters (C, 1, K) back into zeros (M, N, K). ``<G z, u> = <z, G^T u>`` exactly (a
    selection).

    The first operator of a tile that sees part of the field (:meth:`Footprint.restricted`): everything after
    it (the footprint, then the exposure x area weights on the data) costs in proportion to the pixels the tile
    sees or to its data."""

    depth = 0

    def __init__(self, columns, in_hw):
        self.in_hw = tuple(int(v) for v in in_hw)
        cols = np.asarray(columns, dtype=np.intp)
        n = self.in_hw[0] * self.in_hw[1]
        if cols.ndim != 1 or cols.size == 0 or cols.min() < 0 or cols.max() >= n or np.unique(cols).size != cols.size:
            raise ValueError(f"columns must be distinct flat indices of the {self.in_hw} field")
        self.columns = cols

    def forward(self, z):
        M, N = self.in_hw
        return np.asarray(z).reshape(M * N, -1)[self.columns].reshape((self.columns.size, 1) + z.shape[2:])

    def adjoint(self, u):
        u = np.asarray(u)
        n = self.in_hw[0] * self.in_hw[1]  # every pixel written when all are gathered: no zeros needed
        full = (np.empty if self.columns.size == n else np.zeros)((n,) + u.shape[2:], dtype=u.dtype)
        full[self.columns] = u.reshape((self.columns.size,) + u.shape[2:])
        return full.reshape(self.in_hw + u.shape[2:])


def field_matrix(ops):
    """The whole-field detector map that ``ops`` (first applied first) start with, as ``(F, n)``: ``F`` the float64
    CSR matrix (P, M N) over the flat fused pixels (i N + j) and ``n`` how many of ``ops`` it stands for --
    ``[Footprint, ...]`` (n = 1) or ``[Gather, BlockFootprint, ...]`` (a tile that sees part of the field, n = 2);
    None if ``ops`` starts with neither. ``F z`` is the same linear map as those operators (exact zeros left out,
    sums in another order: float round-off). Used by the Dask backend (:mod:`xfusion.backends.blockwise`), which
    cuts ``F`` by the fused cube's pixel blocks (:func:`block_columns`)."""
    if not ops:
        return None
    first = ops[0]
    if isinstance(first, Footprint):
        F = first.matrix
        return (F.tocsr() if sp.issparse(F) else sp.csr_matrix(F)), 1
    if isinstance(first, Gather) and len(ops) > 1 and isinstance(ops[1], BlockFootprint):
        B = sp.coo_matrix(ops[1].matrix)
        n = first.in_hw[0] * first.in_hw[1]
        return sp.csr_matrix((B.data, (B.row, first.columns[B.col])), shape=(B.shape[0], n)), 2
    return None


#: a block's columns of a whole-field map are kept dense above this fraction of non-zero entries, sparse below
BLOCK_DENSE_FRACTION = 0.1


def block_columns(F, in_hw, x0, x1, y0, y1, dtype=np.float64):
    """The columns of a whole-field map ``F`` (P, M N) (:func:`field_matrix`) of the fused pixels
    ``[x0, x1) x [y0, y1)``, in their C order within that block: a (P, (x1 - x0) (y1 - y0)) matrix of ``dtype``
    (dense above :data:`BLOCK_DENSE_FRACTION` non-zeros, CSR below), or None when the block holds none of the
    map's non-zeros (the block adds nothing to the forward, and its adjoint is 0). So that ``F z = sum_blocks
    block_columns(...) @ z_block`` and ``(F^T u)_block = block_columns(...)^T u``."""
    N = int(in_hw[1])
    cols = (np.arange(x0, x1)[:, None] * N + np.arange(y0, y1)[None, :]).ravel()
    sub = F[:, cols]
    if sub.nnz == 0:
        return None
    if sub.nnz > BLOCK_DENSE_FRACTION * sub.shape[0] * sub.shape[1]:
        return np.ascontiguousarray(sub.toarray(), dtype=dtype)
    return sub.astype(dtype).tocsr()
