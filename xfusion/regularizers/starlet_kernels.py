r"""Compiled smoothing passes of the starlet transforms (Numba), the same numbers as the NumPy passes.

:mod:`xfusion.regularizers.starlet` smooths a block with the 3-tap pass
``out[i] = src[i-s] + 2 src[i] + src[i+s]`` (reflect boundary) written as three NumPy operations
(``a + b``, ``+= c``, ``+= c``), then rescales and subtracts in further operations. Each operation
reads and writes the whole block, so a level of the 1D transform is 8 passes over memory and a level
of the 2D one 14. The kernels here do a 1D level in one loop over the spectra (each copied into a contiguous
row, smoothed twice there, written out as ``nxt`` and ``w``) and a 2D level in 4 loops over the block, with
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
``XFUSION_NUMBA=0``. They are not cached on disk: Numba's cache index is a pickle, and xfusion reads no pickles. The two
helpers (:func:`_refl`, :func:`_tap`) are plain compiled functions that LLVM inlines; inlining them in Numba's own IR
(``inline="always"``, until session 45) gave the same machine speed and cost compile time.

**When they are compiled (session 63).** Compiling costs each process 4-6 s of CPU (one version per dtype and array
layout, :func:`_signatures`), and a kernel saves about 1.4 ns per element over the NumPy passes (point_sources/500083:
the default ``fuse`` 83.3 s wall with the NumPy passes only, 76 s with the kernels compiled beforehand). A small fit
never earns that back: a small suite scene (24x24x600) took 10.8 s with the kernels compiled on its first block
against 7.1 s with the NumPy passes alone, and the demo's (45x45x2400, 1.85e9 elements through the passes) 21.3 s
against 17.4-20.9 s. So the NumPy passes run first, and once :func:`takes` has declined :data:`COMPILE_AFTER`
elements of one dtype the kernels for that dtype are compiled on a thread of their own (in the caller when
``XFUSION_NUM_THREADS=1``) while the NumPy passes go on; calls use the kernels from the moment they are ready. The
numbers are the same either way, so the switch does not show in any result. :func:`warm` compiles them at once.

Measured in session 26 (2-core VM, 45x45x2400 float32): ``starlet2d`` with one scale 25 -> 11 ms,
``starlet1d`` with two scales 20 -> 9 ms; one EM step of the thresholded 2D-1D prior 0.23 -> 0.19 s;
the default ``fuse`` of suite scene point_sources/500018 66.4 -> 55.5 s wall (compilation included).

**Contiguous rows (session 66).** Numba vectorizes a loop only over arrays it knows to be contiguous, and the blocks
the transforms pass were strided views: the 2D transform's blocks of channels and the cropped 2D bands that the
2D-1D prior gives the 1D transform. So the 2D kernels read and write the C-contiguous parents at the block's
channels (``e0``), and the 1D kernel copies each spectrum into a contiguous row first. Same numbers to the bit;
45x45x2400 float32 on this machine: one 2D level (49x49 extended field) 27-29 -> 12 ms, the two-level 1D transform
of a cropped band 17 -> 10 ms, the 2D-1D prox 85 -> 61-67 ms; one thread, one 2D level 75 -> 15 ms.
"""
from __future__ import annotations

import importlib.util
import os
import threading
import warnings

import numpy as np

from ..threads import num_threads

#: whether Numba is installed (optional: without it the NumPy passes run, the same numbers, slower). It is imported
#: only when the kernels are compiled (:func:`_define`), not with this module: its import costs a process ~0.3 s, which
#: a short run, the command line and every process that runs the NumPy passes alone need not pay (session 68)
_HAVE_NUMBA = importlib.util.find_spec("numba") is not None

__all__ = ["available", "takes", "expect", "level_1d", "level_2d", "shrink_add", "shape_level", "warm"]


def _enabled() -> bool:
    return _HAVE_NUMBA and os.environ.get("XFUSION_NUMBA", "1").strip() != "0"


available = _enabled()


def takes(*arrays) -> bool:
    """Whether the kernels take these blocks: available, all 3D arrays of one dtype, float32 or float64, and the
    kernels compiled for that dtype. Until they are, the blocks count towards :data:`COMPILE_AFTER` (see the module
    notes) and the NumPy passes run them."""
    dt = arrays[0].dtype
    if not (available and dt in (np.float32, np.float64)
            and all(a.ndim == 3 and a.dtype == dt for a in arrays)):
        return False
    if dt.name in _ready:
        return True
    _account(dt.name, arrays[0].size)
    return dt.name in _ready


#: elements of one dtype run through the NumPy passes (the first array of each call that :func:`takes` declines) after
#: which the kernels are compiled for that dtype: about 4-6 s of CPU per process against ~1.4 ns saved per element
#: (session 63, see the module notes)
COMPILE_AFTER = 2e9

_lock = threading.Lock()
_work: dict = {}  # dtype name -> elements through the NumPy passes so far
_ready: set = set()  # dtype names whose kernels are compiled
_jobs: dict = {}  # dtype name -> its compiling thread (None: compiled in the caller)


#: fused cubes of at least this many voxels have the kernels compiled as their fit starts (:func:`expect`), session 66
COMPILE_NOW_VOXELS = 1e6


def expect(dtype, voxels):
    """Told by ``fuse`` the fused cube's size before any work: a cube of at least
    :data:`COMPILE_NOW_VOXELS` voxels starts the compilation of the kernels for ``dtype`` now (on a thread of its own,
    as after :data:`COMPILE_AFTER` elements), since its fit will run the passes over billions of elements. Session 66
    (45x45x2400 float32, the kernels made faster that session): point_sources/500083's default ``fuse`` 68.5 and
    65.3 s with the compilation early against 76.8 and 71.6 s after 2e9 elements (runs in pairs, the same hour); the
    demo's 17.6 and 16.9 s against 16.2-20.2 s (no loss); the small suite cubes (24x24x600, 3.5e5 voxels) stay
    below it and keep the lazy rule (a compilation late in a 3-8 s fit cost them 1-3 s)."""
    dt = np.dtype(dtype)
    if available and dt in (np.float32, np.float64) and voxels >= COMPILE_NOW_VOXELS:
        _start(dt.name)


def _account(name, n):
    with _lock:
        _work[name] = _work.get(name, 0) + int(n)
        if _work[name] < COMPILE_AFTER or name in _jobs:
            return
    _start(name)


def _start(name):
    """Compile the kernels for dtype ``name`` unless already started: on a thread of its own, or in the caller when
    xfusion runs on one thread."""
    with _lock:
        if name in _jobs or name in _ready:
            return
        here = num_threads() == 1
        # not xfusion.threads.background: its thread is a daemon (a process could end inside LLVM) and, with one
        # thread, it waits to be asked; here the compile runs at once, and a process ending waits for it
        job = None if here else threading.Thread(target=_compile_job, args=(name,), name=f"xfusion-compile-{name}")
        _jobs[name] = job
    if here:
        _compile_job(name)
    else:
        job.start()


def _compile_job(name):
    try:
        _compile(np.dtype(name))
    except Exception as e:  # pragma: no cover - a broken Numba install; the NumPy passes give the same numbers
        warnings.warn(f"xfusion could not compile its starlet kernels for {name} ({type(e).__name__}: {e}); the "
                      "NumPy passes (the same numbers, slower) go on", RuntimeWarning, stacklevel=2)
        return
    with _lock:
        _ready.add(name)


# The kernels, written as plain Python: :func:`_define` compiles them with Numba (each helper and kernel replaced in
# this module by its Numba dispatcher, so a kernel calls the compiled helpers, which LLVM inlines).
def _refl(i, n):
    """Position ``i`` mapped into ``[0, n)`` by repeated half-sample reflection (scipy ``mode='reflect'``)."""
    i = i % (2 * n)
    return 2 * n - 1 - i if i >= n else i


def _tap(left, right, c):
    """``((left + right) + c) + c``: NumPy's 3-tap pass for one element, its roundings in its order."""
    v = left + right
    v = v + c
    return v + c


def _pass0(src, s, out, e0):
    """One 3-tap pass along axis 0 of a 3D block ``out`` (nx, ny, nb), read from channels ``e0 .. e0 + nb`` of
    ``src`` (nx, ny, >= e0 + nb): a C-contiguous parent whose channels are contiguous, so the loops vectorize
    (session 66: a block passed as a strided view did not, and made the 2D level 2.9x slower)."""
    n, ny, nl = out.shape
    for i in range(n):
        il, ir = _refl(i - s, n), _refl(i + s, n)
        for y in range(ny):
            a, b, c, o = src[il, y, e0:e0 + nl], src[ir, y, e0:e0 + nl], src[i, y, e0:e0 + nl], out[i, y]
            for e in range(nl):
                o[e] = _tap(a[e], b[e], c[e])


def _pass1(src, s, out):
    """One 3-tap pass along axis 1 of a 3D block."""
    nx, n, nl = src.shape
    for x in range(nx):
        for i in range(n):
            il, ir = _refl(i - s, n), _refl(i + s, n)
            a, b, c, o = src[x, il], src[x, ir], src[x, i], out[x, i]
            for e in range(nl):
                o[e] = _tap(a[e], b[e], c[e])


def _pass1_last(src, s, out, scale, prev, w, e0):
    """The last 2D pass (axis 1) of a block ``src`` (nx, ny, nb) with the level's rescaling and wavelet, written to
    channels ``e0 .. e0 + nb`` of the parents ``out``, ``w`` (``prev`` read there): ``out = pass(src) * scale``,
    ``w = prev - out`` (``w`` may be ``prev``)."""
    nx, n, nl = src.shape
    for x in range(nx):
        for i in range(n):
            il, ir = _refl(i - s, n), _refl(i + s, n)
            a, b, c = src[x, il], src[x, ir], src[x, i]
            o, p, q = out[x, i, e0:e0 + nl], prev[x, i, e0:e0 + nl], w[x, i, e0:e0 + nl]
            for e in range(nl):
                v = _tap(a[e], b[e], c[e]) * scale
                o[e] = v
                q[e] = p[e] - v


def _level1(c, s, nxt, w, scale):
    """One level of the 1D transform along axis 2 of a 3D block, spectrum by spectrum: the spectrum is copied
    into a contiguous row (so that the passes vectorize whatever the block's strides), smoothed twice by the
    3-tap pass with the level's rescaling, ``nxt = pass(pass(c)) * scale``, ``w = c - nxt`` (``w`` may be ``c``).
    Both passes run on rows that stay in the cache: 3 streams over memory instead of 6 (session 66)."""
    nx, ny, n = c.shape
    row = np.empty(n, c.dtype)
    buf = np.empty(n, c.dtype)
    lo, hi = min(s, n), max(n - s, min(s, n))
    for x in range(nx):
        for y in range(ny):
            cr = c[x, y]
            for i in range(n):
                row[i] = cr[i]
            for i in range(lo):
                buf[i] = _tap(row[_refl(i - s, n)], row[_refl(i + s, n)], row[i])
            left, right, mid, b = row[lo - s:hi - s], row[lo + s:hi + s], row[lo:hi], buf[lo:hi]
            for k in range(hi - lo):  # interior: offsets as views (no negative-index test in the loop)
                b[k] = _tap(left[k], right[k], mid[k])
            for i in range(hi, n):
                buf[i] = _tap(row[_refl(i - s, n)], row[_refl(i + s, n)], row[i])
            o, q = nxt[x, y], w[x, y]
            for i in range(lo):
                v = _tap(buf[_refl(i - s, n)], buf[_refl(i + s, n)], buf[i]) * scale
                o[i] = v
                q[i] = row[i] - v
            left, right, mid = buf[lo - s:hi - s], buf[lo + s:hi + s], buf[lo:hi]
            om, qm, pm = o[lo:hi], q[lo:hi], row[lo:hi]
            for k in range(hi - lo):
                v = _tap(left[k], right[k], mid[k]) * scale
                om[k] = v
                qm[k] = pm[k] - v
            for i in range(hi, n):
                v = _tap(buf[_refl(i - s, n)], buf[_refl(i + s, n)], buf[i]) * scale
                o[i] = v
                q[i] = row[i] - v


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


#: the functions :func:`_define` hands to Numba, helpers first
_KERNELS = ("_refl", "_tap", "_pass0", "_pass1", "_pass1_last", "_level1", "_shrink_add", "_shape_level")
_define_lock = threading.Lock()
_defined = False


def _define():
    """Import Numba and replace each function of :data:`_KERNELS` in this module by its Numba dispatcher (once per
    process; ``nogil``, not cached on disk). Compiling then works on the dispatchers (:func:`_compile`). A Numba that
    is installed but does not import turns the kernels off (``available`` False, a ``RuntimeWarning``): the NumPy
    passes give the same numbers."""
    global _defined, available
    with _define_lock:
        if _defined:
            return
        try:
            from numba import njit
        except ImportError as e:  # a broken Numba install (tests/test_starlet_kernels.py)
            available = False
            warnings.warn(f"xfusion could not import Numba ({e}); the starlet's NumPy passes (the same numbers, "
                          "slower) run instead", RuntimeWarning, stacklevel=3)
            raise
        g = globals()
        for name in _KERNELS:
            g[name] = njit(nogil=True, cache=False)(g[name])
        _defined = True


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


def level_1d(c, s, nxt, w):
    """One level of the 1D transform along the last axis of a 3D block: ``nxt = h_j * c`` (taps ``s`` apart),
    ``w = c - nxt`` (``w`` may be ``c``; ``nxt`` and ``w`` C-contiguous)."""
    _level1(c, s, nxt, w, nxt.dtype.type(1.0 / 16.0))


def level_2d(c, s, axes, nxt, w, s1, s2, e0=0):
    """One level of the 2D transform over ``axes`` ``(0, 1)`` of the block of channels ``e0 .. e0 + nb`` of C-contiguous
    3D parents: ``nxt = (h_j (x) h_j) * c``, ``w = c - nxt`` there (``w`` may be ``c``); ``s1``, ``s2`` C-contiguous
    scratch of the block's shape (nx, ny, nb)."""
    if tuple(axes) != (0, 1):
        raise ValueError(f"level_2d smooths axes (0, 1) of a 3D block, not {axes}")
    _pass0(c, s, s1, e0)
    _pass0(s1, s, s2, 0)
    _pass1(s2, s, s1)
    _pass1_last(s1, s, nxt, nxt.dtype.type(1.0 / 256.0), c, w, e0)


def _signatures(dt):
    """``[(kernel, argument types)]`` compiled for ``dt``: every kernel with the array layouts fits meet (whole
    blocks, ``C``, and blocks cut along the energy axis or transposed: strided views, ``A``), as read off fits."""
    from numba import from_dtype, types

    t = from_dtype(dt)
    C, A, i = types.Array(t, 3, "C"), types.Array(t, 3, "A"), types.int64
    sigs = [(_pass0, (C, i, C, i)), (_pass1, (C, i, C)), (_pass1_last, (C, i, C, t, C, C, i)),
            (_level1, (C, i, C, C, t)), (_level1, (A, i, C, C, t)),
            (_shrink_add, (C, t, C, C))]
    if dt == np.float64:  # the spectral-shape prior runs in float64
        sigs.append((_shape_level, (C, C, t, C, C, C)))
    return sigs


def _compile(dt):
    _define()
    for kernel, sig in _signatures(np.dtype(dt)):
        kernel.compile(sig)


def warm(dtypes=("float32", "float64")):
    """Compile the kernels now for ``dtypes`` (every array layout fits meet), so that the next calls use them and no
    compilation happens later in a timed call; returns the seconds it took (0 when the kernels are not available).
    Without it a process compiles them once its NumPy passes have run :data:`COMPILE_AFTER` elements."""
    if not available:
        return 0.0
    import time

    t0 = time.perf_counter()
    for name in dtypes:
        dt = np.dtype(name)
        try:
            _compile(dt)
        except ImportError:  # a broken Numba install (_define warned)
            return 0.0
        with _lock:
            _ready.add(dt.name)
    return time.perf_counter() - t0
