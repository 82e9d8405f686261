r"""Compiled smoothing passes of the starlet transforms (Numba), the same numbers as the NumPy passes.

:mod:`xfusion.regularizers.starlet` smooths a block with the 3-tap pass
``out[i] = src[i-s] + 2 src[i] + src[i+s]`` (reflect boundary) written as three NumPy operations
(``a + b``, ``+= c``, ``+= c``), then rescales and subtracts in further operations. Each operation
reads and writes the whole block, so a level of the 1D transform is 8 passes over memory and a level
of the 2D one 14. The kernels here do one level's work in 2 (1D) or 4 (2D) loops over the block, with
**the same floating-point operations in the same order** for every element:

.. math:: t_i = ((x_{i-s} + x_{i+s}) + x_i) + x_i, \qquad
          c_{j+1} = \mathrm{pass}(\mathrm{pass}(c_j)) \cdot 2^{-4}\ (\text{1D}),\ 2^{-8}\ (\text{2D}),
          \qquad w_{j+1} = c_j - c_{j+1},

each result rounded to the array's dtype as NumPy rounds it (float32 stays float32; only additions,
one exact power-of-two product and one subtraction: no fused multiply-add can change them). So the
coefficients are equal to the bit (``tests/test_starlet_kernels.py`` checks it on float32 and float64 blocks,
every axis, dilations larger than the axis). The speed-up is measured in ``benchmarks/starlet.py``.

Two element-wise passes of the priors built on the starlet are compiled the same way: the 2D-1D prior's
shrink-and-add of a band (:func:`shrink_add`), and one level of the spectral-shape prior's posterior mean
(:func:`shape_level`: ``(n u + n0 s) / (n + n0)``, then times the pixel total at the last level; 4 NumPy passes per
level before). Session 27: the shape prior's 10-rung ladder on a 45x45x2400 cube 0.82 -> 0.21-0.30 s.

The kernels release the GIL and run on the caller's thread (the starlet's block pool keeps its
threads; Numba's own threading is not used). They take 3D blocks; :mod:`~xfusion.regularizers.starlet`
uses NumPy for other shapes, or when Numba is not installed (``available`` False) or
``XFUSION_NUMBA=0``. They are compiled on first use in each process (about 3 s per dtype on the
2-core machine) and not cached on disk: Numba's cache index is a pickle, and xfusion reads no pickles. The two
helpers (:func:`_refl`, :func:`_tap`) are plain compiled functions that LLVM inlines; inlining them in Numba's own IR
(``inline="always"``, until session 45) gave the same machine speed and cost compile time: :func:`warm` for both
dtypes 7.6-8.2 -> 6.5 s (two runs each, load 2 from other jobs; ``benchmarks/starlet.py`` timings equal within noise).

Measured in session 26 (2-core VM, 45x45x2400 float32): ``starlet2d`` with one scale 25 -> 11 ms,
``starlet1d`` with two scales 20 -> 9 ms; one EM step of the thresholded 2D-1D prior 0.23 -> 0.19 s;
the default ``fuse`` of suite scene point_sources/500018 66.4 -> 55.5 s wall (compilation included).
"""
from __future__ import annotations

import os

import numpy as np

try:  # optional at import: without Numba the NumPy passes run (the same numbers, slower)
    from numba import njit
except ImportError:  # pragma: no cover - exercised only without numba
    njit = None

__all__ = ["available", "takes", "level_1d", "level_2d", "shrink_add", "shape_level", "warm"]


def _enabled() -> bool:
    return njit is not None and os.environ.get("XFUSION_NUMBA", "1").strip() != "0"


available = _enabled()


def takes(*arrays) -> bool:
    """Whether the kernels take these blocks: available, and all 3D arrays of one dtype, float32 or float64."""
    dt = arrays[0].dtype
    return (available and dt in (np.float32, np.float64)
            and all(a.ndim == 3 and a.dtype == dt for a in arrays))

if njit is not None:
    _jit = njit(nogil=True, cache=False)

    @njit(nogil=True)
    def _refl(i, n):
        """Position ``i`` mapped into ``[0, n)`` by repeated half-sample reflection (scipy ``mode='reflect'``)."""
        i = i % (2 * n)
        return 2 * n - 1 - i if i >= n else i

    @njit(nogil=True)
    def _tap(left, right, c):
        """``((left + right) + c) + c``: NumPy's 3-tap pass for one element, its roundings in its order."""
        v = left + right
        v = v + c
        return v + c

    @_jit
    def _pass0(src, s, out):
        """One 3-tap pass along axis 0 of a 3D block."""
        n, ny, nl = src.shape
        for i in range(n):
            il, ir = _refl(i - s, n), _refl(i + s, n)
            for y in range(ny):
                for e in range(nl):
                    out[i, y, e] = _tap(src[il, y, e], src[ir, y, e], src[i, y, e])

    @_jit
    def _pass1(src, s, out):
        """One 3-tap pass along axis 1 of a 3D block."""
        nx, n, nl = src.shape
        for x in range(nx):
            for i in range(n):
                il, ir = _refl(i - s, n), _refl(i + s, n)
                for e in range(nl):
                    out[x, i, e] = _tap(src[x, il, e], src[x, ir, e], src[x, i, e])

    @_jit
    def _pass1_last(src, s, out, scale, prev, w):
        """The last 2D pass (axis 1) with the level's rescaling and wavelet: ``out = pass(src) * scale``,
        ``w = prev - out`` (``w`` may be ``prev``)."""
        nx, n, nl = src.shape
        for x in range(nx):
            for i in range(n):
                il, ir = _refl(i - s, n), _refl(i + s, n)
                for e in range(nl):
                    v = _tap(src[x, il, e], src[x, ir, e], src[x, i, e]) * scale
                    out[x, i, e] = v
                    w[x, i, e] = prev[x, i, e] - v

    @_jit
    def _pass2(src, s, out):
        """One 3-tap pass along axis 2 (the contiguous one) of a 3D block."""
        nx, ny, n = src.shape
        lo, hi = min(s, n), max(n - s, min(s, n))
        for x in range(nx):
            for y in range(ny):
                for i in range(lo):
                    out[x, y, i] = _tap(src[x, y, _refl(i - s, n)], src[x, y, _refl(i + s, n)], src[x, y, i])
                left, right = src[x, y, lo - s:hi - s], src[x, y, lo + s:hi + s]
                mid, o = src[x, y, lo:hi], out[x, y, lo:hi]
                for k in range(hi - lo):  # interior: offsets as views (no negative-index test in the loop)
                    o[k] = _tap(left[k], right[k], mid[k])
                for i in range(hi, n):
                    out[x, y, i] = _tap(src[x, y, _refl(i - s, n)], src[x, y, _refl(i + s, n)], src[x, y, i])

    @_jit
    def _pass2_last(src, s, out, scale, prev, w):
        """The last 1D pass (axis 2) with the rescaling and the wavelet (see :func:`_pass1_last`)."""
        nx, ny, n = src.shape
        lo, hi = min(s, n), max(n - s, min(s, n))
        for x in range(nx):
            for y in range(ny):
                for i in range(lo):
                    v = _tap(src[x, y, _refl(i - s, n)], src[x, y, _refl(i + s, n)], src[x, y, i]) * scale
                    out[x, y, i] = v
                    w[x, y, i] = prev[x, y, i] - v
                left, right = src[x, y, lo - s:hi - s], src[x, y, lo + s:hi + s]
                mid, o, p, q = src[x, y, lo:hi], out[x, y, lo:hi], prev[x, y, lo:hi], w[x, y, lo:hi]
                for k in range(hi - lo):
                    v = _tap(left[k], right[k], mid[k]) * scale
                    o[k] = v
                    q[k] = p[k] - v
                for i in range(hi, n):
                    v = _tap(src[x, y, _refl(i - s, n)], src[x, y, _refl(i + s, n)], src[x, y, i]) * scale
                    out[x, y, i] = v
                    w[x, y, i] = prev[x, y, i] - v

    @_jit
    def _shrink_add(band, th, out, mag):
        """Soft thresholding of a 3D block in place as ``band - clip(band, -th, th)``, added into ``out``, its
        magnitude written to ``mag`` (the NumPy steps of ``sparsity._apply``, element by element)."""
        nx, ny, nl = band.shape
        lo = -th
        for x in range(nx):
            for y in range(ny):
                b, o, m = band[x, y], out[x, y], mag[x, y]
                for e in range(nl):
                    v = b[e]
                    c = lo if v < lo else (th if v > th else v)
                    k = v - c
                    b[e] = k
                    m[e] = abs(k)
                    o[e] = o[e] + k

    @_jit
    def _shape_level(u, n, n0, s, t, out):
        """``(n u + n0 s) / (n + n0)`` per element (``n``, ``t`` per pixel: shape (x, y, 1)), times ``t`` when ``t``
        has pixels (the last level; an empty ``t`` skips it); ``out`` may be ``s``."""
        nx, ny, nl = u.shape
        last = t.shape[0] > 0
        for x in range(nx):
            for y in range(ny):
                nn = n[x, y, 0]
                den = nn + n0
                ux, sx, ox = u[x, y], s[x, y], out[x, y]
                if last:
                    tt = t[x, y, 0]
                    for e in range(nl):
                        ox[e] = tt * ((nn * ux[e] + n0 * sx[e]) / den)
                else:
                    for e in range(nl):
                        ox[e] = (nn * ux[e] + n0 * sx[e]) / den


def shrink_add(band, th, out, mag):
    """``band -= clip(band, -th, th)`` (in place), ``out += band``, ``mag = |band|`` on 3D blocks of one dtype, ``th``
    a number >= 0 (else ``ValueError``, as NumPy's path): the values of ``np.clip``, ``-=``, ``np.abs`` and ``+=`` to
    the bit."""
    if th < 0:
        raise ValueError("thresh must be non-negative")
    _shrink_add(band, band.dtype.type(th), out, mag)


def shape_level(u, n, n0, s, t, out):
    """One level of the spectral-shape prior's posterior mean (:func:`xfusion.regularizers.shape._shrink`) on float64
    3D blocks: ``out = (n u + n0 s) / (n + n0)``, times ``t`` if ``t`` is not None (the last level); ``n``, ``t`` per
    pixel (shape (x, y, 1)), ``n0`` a number; ``out`` may be ``s``. The values of the NumPy expression to the bit."""
    empty = np.empty((0, 1, 1), u.dtype)
    _shape_level(u, n, u.dtype.type(n0), s, empty if t is None else t, out)


def level_1d(c, s, nxt, w, scratch):
    """One level of the 1D transform along the last axis of a 3D block: ``nxt = h_j * c`` (taps ``s`` apart),
    ``w = c - nxt`` (``w`` may be ``c``); ``scratch`` shaped like ``c``."""
    _pass2(c, s, scratch)
    _pass2_last(scratch, s, nxt, nxt.dtype.type(1.0 / 16.0), c, w)


def level_2d(c, s, axes, nxt, w, s1, s2):
    """One level of the 2D transform over ``axes`` ``(0, 1)`` of a 3D block: ``nxt = (h_j (x) h_j) * c``,
    ``w = c - nxt`` (``w`` may be ``c``); ``s1``, ``s2`` scratch shaped like ``c``."""
    if tuple(axes) != (0, 1):
        raise ValueError(f"level_2d smooths axes (0, 1) of a 3D block, not {axes}")
    _pass0(c, s, s1)
    _pass0(s1, s, s2)
    _pass1(s2, s, s1)
    _pass1_last(s1, s, nxt, nxt.dtype.type(1.0 / 256.0), c, w)


def warm(dtypes=("float32", "float64")):
    """Compile the kernels now for ``dtypes`` and for the array layouts fits meet (whole blocks, and blocks cut
    along the energy axis: strided views), so that no compilation happens later in a timed call; returns the
    seconds it took (0 when the kernels are not available). Numba compiles one version per combination of array
    layouts and dtypes on first use; a fit compiles the ones it needs as it goes (a few seconds per process)."""
    if not available:
        return 0.0
    import time

    from . import starlet
    from .shape import shrink_ladder
    from .sparsity import Wavelet2D1D

    t0 = time.perf_counter()
    rng = np.random.default_rng(0)
    for dt in dtypes:
        for shape in ((8, 8, 64), (24, 24, 1200)):  # one block, and blocks cut along energy / rows (> 2 MiB)
            z = rng.random(shape).astype(dt)
            starlet.starlet2d1d(z, 2, 3)
            for null_space in ("zero", "threshold"):
                Wavelet2D1D(n_scales_2d=1, n_scales_1d=2, null_space=null_space).prox(z)
    dict(shrink_ladder(rng.random((8, 8, 64)), 1e6, (1e3,)))  # the shape prior's level (float64 only)
    return time.perf_counter() - t0
