r"""Isotropic undecimated B3-spline ("à trous") starlet transforms.

Conventions
-----------
Cubes are NumPy arrays with axes ``(x, y, energy)``, energy last.  The
transforms accept any floating array; integer / boolean inputs are converted
to ``float64``.  Floating inputs keep their dtype (``float32`` in ->
``float32`` out).  Inputs are never modified.

Maths
-----
The scaling filter is the cubic B-spline

.. math:: h = \tfrac{1}{16}\,[1, 4, 6, 4, 1].

At scale :math:`j = 0, 1, \dots` the five taps are spaced :math:`2^j` samples
apart ("à trous", holes between the taps):

.. math:: (h_j \star c)[i] = \tfrac{1}{16}\bigl(c[i-2^{j+1}] + 4c[i-2^j]
          + 6c[i] + 4c[i+2^j] + c[i+2^{j+1}]\bigr).

In 2D the filter is separable, :math:`h_j \otimes h_j` (the isotropic
starlet of Starck & Murtagh).  With :math:`c_0` the input and :math:`J` the
number of wavelet scales,

.. math:: c_{j+1} = h_j \star c_j, \qquad w_{j+1} = c_j - c_{j+1},
          \qquad j = 0, \dots, J-1,

and the input is recovered exactly (up to floating point rounding) by the
synthesis-by-summation left inverse

.. math:: c_0 = c_J + \sum_{j=1}^{J} w_j .

Coefficient layout: a 1D or 2D transform returns an array of shape
``(J + 1, *cube.shape)`` holding ``[w_1, ..., w_J, c_J]`` (finest wavelet
scale first, coarse scale last).  The 2D-1D transform returns
``(J2 + 1, J1 + 1, *cube.shape)``: index ``[j2, j1]``; the last index of each
scale dimension is the coarse part of that transform.

Boundary
--------
Half-sample symmetric reflection, i.e. ``mode='reflect'`` in the
:mod:`scipy.ndimage` sense: ``(d c b a | a b c d | d c b a)``; the edge
sample is repeated.  The extension is the :math:`2n`-periodic symmetric
signal, so dilations larger than the axis length are well defined (the
reflection is applied repeatedly).  Because the symmetric extension commutes
with symmetric filters, the smoothing equals
``scipy.ndimage.correlate1d(c, dilated_h, mode='reflect')`` with an
explicitly dilated kernel, but is computed without building that kernel.
The priors built on these transforms (:mod:`xfusion.regularizers.sparsity`) do not rely on this rule at the
field edge: they extend the field point-symmetrically first (``FIELD_EDGE``, session 34), so that a source
brightening inward has no fine-scale coefficient at the edge for thresholding to shrink.

Implementation
--------------
:math:`h = \tfrac{1}{16}[1,2,1] \star [1,2,1]`, so each smoothing is done as
two passes of the unnormalised 3-tap filter ``[1, 0..0, 2, 0..0, 1]`` (taps
``2**j`` apart), each computed as sums of shifted slices (no dilated kernels,
no padding copies), followed by one exact power-of-two rescaling.  Work is
split in cache-sized blocks along an axis that is not being filtered and the
blocks are processed on the process's thread pool (:mod:`xfusion.threads`; NumPy releases the GIL).  One
un-blocked smoothing pass measured ~1.7x faster than
``scipy.ndimage.correlate1d`` on a ``(45, 45, 2400)`` float32 cube, and the
blocking makes the full transforms several times faster again (see
``benchmarks/starlet.py``).  Set the environment variable
``XFUSION_NUM_THREADS`` to limit the number of threads.  With Numba installed, a
level of a 3D block (1D along the last axis, 2D over the first two) runs as compiled
loops that do the same operations in the same order
(:mod:`xfusion.regularizers.starlet_kernels`: equal to the bit, about 2x faster).
"""

from __future__ import annotations

import numpy as np

from ..threads import PARALLEL_MIN_BYTES as _PARALLEL_MIN_BYTES
from ..threads import num_threads as _num_threads
from ..threads import run as _run
from . import starlet_kernels as _kernels

__all__ = [
    "starlet1d",
    "starlet2d",
    "starlet2d1d",
    "reconstruct",
    "mad_sigma",
    "soft_threshold",
    "B3_FILTER",
]

#: The B3-spline scaling filter ``[1, 4, 6, 4, 1] / 16``.
B3_FILTER = np.array([1.0, 4.0, 6.0, 4.0, 1.0]) / 16.0

# Blocking / threading parameters (tuned on a 2-core machine with 2 MiB L2).
_BLOCK_BYTES = 1 << 21  # target size of one block of the input, 2 MiB

# ---------------------------------------------------------------------------
# low-level kernels
# ---------------------------------------------------------------------------


def _as_float(a) -> np.ndarray:
    a = np.asarray(a)
    if not np.issubdtype(a.dtype, np.floating):
        a = a.astype(np.float64)
    return a


def _check_scales(n, name="n_scales") -> int:
    if isinstance(n, (bool, np.bool_)) or int(n) != n or n < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {n!r}")
    return int(n)


def _reflect_index(i: np.ndarray, n: int) -> np.ndarray:
    """Map integer positions onto ``[0, n)`` with scipy 'reflect' extension."""
    i = np.mod(i, 2 * n)
    return np.where(i >= n, 2 * n - 1 - i, i)


def _idx(ndim: int, axis: int, s: slice) -> tuple:
    key = [slice(None)] * ndim
    key[axis] = s
    return tuple(key)


def _b121(src: np.ndarray, s: int, axis: int, out: np.ndarray) -> None:
    """``out[i] = src[i-s] + 2 src[i] + src[i+s]`` along ``axis`` (reflect).

    Unnormalised; ``out`` must not overlap ``src``.
    """
    n = src.shape[axis]
    nd = src.ndim

    def S(a, b, step=None):
        return src[_idx(nd, axis, slice(a, b, step))]

    def O(a, b):
        return out[_idx(nd, axis, slice(a, b))]

    if n >= 2 * s:
        if n > 2 * s:  # interior: both neighbours inside
            o = O(s, n - s)
            np.add(S(0, n - 2 * s), S(2 * s, n), out=o)
            c = S(s, n - s)
            o += c
            o += c
        # left edge i in [0, s): src[i-s] -> src[s-1-i]
        o = O(0, s)
        np.add(S(s - 1, None, -1), S(s, 2 * s), out=o)
        c = S(0, s)
        o += c
        o += c
        # right edge i in [n-s, n): src[i+s] -> src[2n-1-i-s]
        o = O(n - s, n)
        np.add(S(n - 2 * s, n - s), S(n - 1, n - s - 1, -1), out=o)
        c = S(n - s, n)
        o += c
        o += c
    else:  # dilation larger than half the axis: generic repeated reflection
        i = np.arange(n)
        np.add(
            np.take(src, _reflect_index(i - s, n), axis=axis),
            np.take(src, _reflect_index(i + s, n), axis=axis),
            out=out,
        )
        out += src
        out += src


def _smooth1(src, s, axis, out, scratch) -> None:
    """``out = h_j * src`` along one axis, taps ``s = 2**j`` apart."""
    _b121(src, s, axis, scratch)
    _b121(scratch, s, axis, out)
    out *= out.dtype.type(1.0 / 16.0)


def _smooth2(src, s, axes, out, s1, s2) -> None:
    """``out = (h_j (x) h_j) * src`` over two axes, taps ``s`` apart."""
    a0, a1 = axes
    _b121(src, s, a0, s1)
    _b121(s1, s, a0, s2)
    _b121(s2, s, a1, s1)
    _b121(s1, s, a1, out)
    out *= out.dtype.type(1.0 / 256.0)


def _blocks(shape, itemsize, skip_axes, ncoef=1):
    """Split along the largest axis not in ``skip_axes``.

    Returns ``(axis, [slice, ...])``; ``axis`` is None when no split is
    possible/needed.
    """
    free = [a for a in range(len(shape)) if a not in skip_axes]
    if not free:
        return None, [slice(None)]
    ca = max(free, key=lambda a: shape[a])
    n = shape[ca]
    total = int(np.prod(shape)) * itemsize
    nblk = max(1, min(n, -(-total // _BLOCK_BYTES)))
    nthr = _num_threads()
    if nthr > 1 and total >= _PARALLEL_MIN_BYTES:
        nblk = max(nblk, min(n, nthr))
    edges = [i * n // nblk for i in range(nblk + 1)]
    return ca, [slice(edges[i], edges[i + 1]) for i in range(nblk) if edges[i + 1] > edges[i]]


def _st1d_block(src, out, J, axis) -> None:
    """1D transform of ``src`` into ``out[0..J]`` (``src`` may be ``out[0]``)."""
    fast = axis == src.ndim - 1 and _kernels.takes(src, out[0])  # compiled passes (.starlet_kernels)
    scratch = None if fast else np.empty(src.shape, dtype=out.dtype)
    c = src
    for j in range(J):
        nxt = out[j + 1]
        if fast:
            _kernels.level_1d(c, 1 << j, nxt, out[j])
        else:
            _smooth1(c, 1 << j, axis, nxt, scratch)
            np.subtract(c, nxt, out=out[j])
        c = nxt


def _st2d_block(src, out, J, axes, span=None) -> None:
    """2D transform of ``src`` into ``out[0..J]``; ``span = (e0, e1)``: only channels ``e0 .. e1`` of the last axis
    (``src`` and every ``out[j]`` then whole 3D arrays, read and written there in place)."""
    blk = src if span is None else src[..., span[0]:span[1]]
    s1 = np.empty(blk.shape, dtype=out.dtype)
    s2 = np.empty(blk.shape, dtype=out.dtype)
    # the compiled passes read and write C-contiguous parents at the block's channels (.starlet_kernels.level_2d)
    fast = (tuple(axes) == (0, 1) and _kernels.takes(blk, out[0]) and src.flags.c_contiguous
            and all(o.flags.c_contiguous for o in out))
    if span is not None and not fast:
        src, out = blk, out[..., span[0]:span[1]]
    e0 = 0 if span is None else span[0]
    c = src
    for j in range(J):
        nxt = out[j + 1]
        if fast:
            _kernels.level_2d(c, 1 << j, axes, nxt, out[j], s1, s2, e0)
        else:
            _smooth2(c, 1 << j, axes, nxt, s1, s2)
            np.subtract(c, nxt, out=out[j])
        c = nxt


def _tasks_1d(src, out, J, axis):
    """Block tasks for a 1D transform of ``src`` into ``out`` (shape (J+1,...))."""
    if J == 0:
        return [lambda: np.copyto(out[0], src)]
    ca, sl = _blocks(src.shape, src.dtype.itemsize, (axis,))
    if ca is None:
        return [lambda: _st1d_block(src, out, J, axis)]
    tasks = []
    for s in sl:
        k = _idx(src.ndim, ca, s)
        ko = (slice(None),) + k
        tasks.append(lambda k=k, ko=ko: _st1d_block(src[k], out[ko], J, axis))
    return tasks


def _tasks_2d(src, out, J, axes):
    if J == 0:
        return [lambda: np.copyto(out[0], src)]
    ca, sl = _blocks(src.shape, src.dtype.itemsize, axes)
    if ca is None:
        return [lambda: _st2d_block(src, out, J, axes)]
    tasks = []
    for s in sl:
        if ca == src.ndim - 1:  # blocks of channels: the parents and the span (see _st2d_block)
            tasks.append(lambda s=s: _st2d_block(src, out, J, axes, (s.start, s.stop)))
            continue
        k = _idx(src.ndim, ca, s)
        ko = (slice(None),) + k
        tasks.append(lambda k=k, ko=ko: _st2d_block(src[k], out[ko], J, axes))
    return tasks


def _norm_axis(axis, ndim) -> int:
    axis = int(axis)
    if not -ndim <= axis < ndim:
        raise ValueError(f"axis {axis} out of range for a {ndim}-d array")
    return axis % ndim


# ---------------------------------------------------------------------------
# public transforms
# ---------------------------------------------------------------------------


def reach(n_scales: int) -> int:
    """Pixels beyond its own on each side that one coefficient of a ``n_scales``-level starlet reads:
    ``sum_j 2 * 2**j = 2 (2**J - 1)`` (the B3 kernel's radius 2, dilated by 2**j at level j). The halo a block needs
    for its interior coefficients to equal the whole field's."""
    return 2 * (2 ** int(n_scales) - 1)


def starlet1d(cube, n_scales: int, axis: int = -1) -> np.ndarray:
    r"""1D starlet transform along one axis.

    Parameters
    ----------
    cube : array_like, any shape, e.g. ``(x, y, energy)``
        Input array (not modified).  Floating dtypes are preserved; other
        dtypes are computed in ``float64``.
    n_scales : int
        Number of wavelet scales :math:`J \ge 0`.
    axis : int, default -1
        Axis along which to smooth (default: energy, the last axis).

    Returns
    -------
    ndarray, shape ``(n_scales + 1, *cube.shape)``
        ``[w_1, ..., w_J, c_J]`` with :math:`c_{j+1} = h_j \star c_j`,
        :math:`w_{j+1} = c_j - c_{j+1}`, :math:`h_j` the B3-spline
        ``[1, 4, 6, 4, 1] / 16`` with taps :math:`2^j` apart and
        half-sample symmetric ('reflect') boundaries.
        ``coeffs.sum(axis=0)`` reconstructs ``cube``.
    """
    x = _as_float(cube)
    J = _check_scales(n_scales)
    axis = _norm_axis(axis, x.ndim)
    out = np.empty((J + 1,) + x.shape, dtype=x.dtype)
    _run(_tasks_1d(x, out, J, axis), out.nbytes)
    return out


def starlet2d(cube, n_scales: int, axes: tuple[int, int] = (0, 1)) -> np.ndarray:
    r"""Isotropic 2D starlet transform over two axes.

    Every slice along the remaining axes (e.g. every energy channel of an
    ``(x, y, energy)`` cube, or every component of an ``(x, y, r)`` array) is
    transformed independently with the separable filter
    :math:`h_j \otimes h_j`.

    Parameters
    ----------
    cube : array_like, ndim >= 2
        Input array (not modified); floating dtypes preserved.
    n_scales : int
        Number of wavelet scales :math:`J \ge 0`.
    axes : pair of int, default (0, 1)
        The two spatial axes.

    Returns
    -------
    ndarray, shape ``(n_scales + 1, *cube.shape)``
        ``[w_1, ..., w_J, c_J]`` (finest first, coarse last);
        ``coeffs.sum(axis=0)`` reconstructs ``cube``.
    """
    x = _as_float(cube)
    J = _check_scales(n_scales)
    if x.ndim < 2:
        raise ValueError("starlet2d needs an array with at least 2 dimensions")
    a0, a1 = (_norm_axis(a, x.ndim) for a in axes)
    if a0 == a1:
        raise ValueError("axes must be two distinct axes")
    x = np.ascontiguousarray(x)  # the compiled passes read C-contiguous cubes (a strided view: one copy)
    out = np.empty((J + 1,) + x.shape, dtype=x.dtype)
    _run(_tasks_2d(x, out, J, (a0, a1)), out.nbytes)
    return out


def starlet2d1d(cube, n_scales_2d: int, n_scales_1d: int) -> np.ndarray:
    r"""2D-1D starlet transform of an ``(x, y, energy)`` cube.

    The 2D starlet transform (``n_scales_2d`` scales) is applied to every
    energy channel over axes ``(0, 1)``; then the 1D starlet transform
    (``n_scales_1d`` scales) is applied along the energy axis (-1) to every
    pixel of each of the ``n_scales_2d + 1`` 2D bands.

    Returns
    -------
    ndarray, shape ``(n_scales_2d + 1, n_scales_1d + 1, *cube.shape)``
        Coefficient ``[j2, j1]``: 2D band ``j2`` (wavelet scales finest
        first, index ``n_scales_2d`` = 2D coarse scale), 1D band ``j1``
        (index ``n_scales_1d`` = 1D coarse scale).  Reconstruction is the
        sum over both scale axes, ``coeffs.sum(axis=(0, 1))``.
    """
    x = _as_float(cube)
    J2 = _check_scales(n_scales_2d, "n_scales_2d")
    J1 = _check_scales(n_scales_1d, "n_scales_1d")
    if x.ndim < 3:
        raise ValueError("starlet2d1d needs an array with at least 3 dimensions (x, y, energy)")
    ax_e = x.ndim - 1
    x = np.ascontiguousarray(x)  # as in starlet2d
    out = np.empty((J2 + 1, J1 + 1) + x.shape, dtype=x.dtype)
    # phase 1: 2D bands written to out[:, 0]
    _run(_tasks_2d(x, out[:, 0], J2, (0, 1)), out.nbytes)
    # phase 2: in-place 1D transform of every band out[j2, 0] -> out[j2, :]
    if J1 > 0:
        tasks = []
        for j2 in range(J2 + 1):
            tasks += _tasks_1d(out[j2, 0], out[j2], J1, ax_e)
        _run(tasks, out.nbytes)
    return out


def reconstruct(coeffs, ndim_scales: int = 1) -> np.ndarray:
    """Synthesis by summation: the left inverse of the starlet transforms.

    Parameters
    ----------
    coeffs : ndarray
        Output of :func:`starlet1d` / :func:`starlet2d` (``ndim_scales=1``)
        or :func:`starlet2d1d` (``ndim_scales=2``), possibly modified (e.g.
        thresholded).
    ndim_scales : {1, 2}
        Number of leading scale axes to sum over.

    Returns
    -------
    ndarray, shape ``coeffs.shape[ndim_scales:]``, same floating dtype.
    """
    c = _as_float(coeffs)
    if ndim_scales not in (1, 2):
        raise ValueError("ndim_scales must be 1 or 2")
    if c.ndim < ndim_scales:
        raise ValueError("coeffs has fewer dimensions than ndim_scales")
    flat = c.reshape((-1,) + c.shape[ndim_scales:])
    out = flat[0].copy()
    for k in range(1, flat.shape[0]):
        out += flat[k]
    return out


# ---------------------------------------------------------------------------
# thresholding helpers
# ---------------------------------------------------------------------------


def mad_sigma(a) -> float:
    r"""Robust noise standard deviation from the median absolute deviation.

    .. math:: \hat\sigma = \operatorname{median}(|a - \operatorname{median}(a)|) / 0.6745

    (0.6745 is the 0.75 quantile of the standard normal, so the estimate is
    unbiased for Gaussian noise.)  Subsampling of large bands is done by the
    caller on a lattice of global indices
    (:func:`xfusion.regularizers.sparsity.lattice_strides`), the same on every
    backend.

    Parameters
    ----------
    a : array_like
        Values (any shape, flattened).  Not modified.

    Returns
    -------
    float
    """
    x = np.asarray(a)
    if x.size == 0:
        raise ValueError("mad_sigma of an empty array")
    x = x.reshape(-1)
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float64)
    med = _median(x)
    dev = np.abs(x - med)
    return float(_median(dev)) / 0.6745


def _median(x):
    """``np.median`` of a 1D floating array, the same value (NaN if any is NaN; the mean of the two middle values, in
    the array's dtype, for an even size) by one partition at the middle (``np.median`` also partitions the last
    element, to find NaNs). For an even size the lower middle value is the largest of the partition's lower half (one
    partition and one max instead of partitioning at both middle positions: 20-35 % less time, the same two values)."""
    n = x.size
    h = n // 2
    if np.isnan(x).any():
        return x.dtype.type(np.nan)
    p = np.partition(x, h)
    if n % 2:
        return p[h]
    return np.mean(np.array([p[:h].max(), p[h]], dtype=p.dtype))


def soft_threshold(a, thresh) -> np.ndarray:
    r"""Soft thresholding, the proximal operator of :math:`t\,\|\cdot\|_1`.

    ``sign(a) * max(|a| - thresh, 0)``.

    Parameters
    ----------
    a : array_like
        Coefficients (not modified).  Floating dtype preserved (non-floating
        -> float64).
    thresh : float or array_like broadcastable to ``a``
        Non-negative threshold(s); cast to ``a``'s dtype.

    Returns
    -------
    ndarray of the broadcast shape (zeros may carry the sign of ``a``,
    i.e. ``-0.0``).
    """
    x = _as_float(a)
    t = np.asarray(thresh, dtype=x.dtype)
    if np.any(t < 0):
        raise ValueError("thresh must be non-negative")
    out = np.abs(x)
    if t.ndim and np.broadcast_shapes(out.shape, t.shape) != out.shape:
        out = out - t
    else:
        out -= t
    np.maximum(out, 0, out=out)
    np.copysign(out, x, out=out)
    return out
