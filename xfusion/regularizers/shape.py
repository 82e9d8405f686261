"""Spectral-shape prior of the delivered cube: each pixel's spectrum shrunk toward its neighbourhood's shape by
its photon count (``shape_prior``; on by default with ``regularization="auto"``, issue 13).

Why. A fused pixel's spectral SHAPE is pinned only by the photons that pixel sends to the instruments: the
sharp-spatial instrument sees it at coarse energy, the sharp-spectral one only through pixels many fused pixels
wide. Faint pixels therefore carry shapes that are mostly noise (plain RL and long runs amplify it; on SNR shells
the faint pixels are the PSF wings of the shell, whose true shape is the shell's). Measured on the 48 small tuning
scenes of ``xfusion.scenes.suite("tune", n=48)`` (session 8, ``regularization="auto"``): the mean spectral angle
of the faintest quarter of pixels was 0.45-1.25 rad on the scenes that lost aSAM to the "Y upsampled in space"
baseline, 2-4x that of the brightest quarter.

Maths (a hierarchical Dirichlet-multinomial posterior mean). Let ``z`` (x, y, energy) be the cube (any
non-negative units), ``F_p = sum_e z_p(e)`` the total of pixel p and ``n_p = C F_p`` its photon count, ``C`` =
(total counts of every input) / (total of ``z``): the pixel's share of all detected photons. Let ``c_j`` be ``z``
smoothed by the 2D starlet (B3-spline) scaling function of level j (every channel; ``c_0 = z``), ``u(c)`` the
spectral shape ``c / sum_e c`` of each pixel, ``N_j = A_j C sum_e c_j`` the photons inside the level-j window
(``A_j = 1 / sum h_j^2`` the effective number of pixels of the level-j kernel ``h_j``; ``A_0 = 1``). With a
Dirichlet prior of concentration ``n0`` (``shape_prior``, pseudo-counts) centred on the next coarser level's
shape, the posterior mean shape is, from the coarsest level ``J`` (:data:`N_SCALES`) down to the pixel::

    s_J = u(c_J);     s_j = (N_j u(c_j) + n0 s_{j+1}) / (N_j + n0),   j = J-1, ..., 0

(level 0 with its own concentration ``n0_pixel`` when the prior is given as a pair ``[n0, n0_pixel]``) and the result
is ``F_p s_0(p)``: every pixel keeps its total (so the spatial image, the total flux and each
pixel's prediction of energy-integrated counts are unchanged); a pixel with ``n_p >> n0`` keeps its own shape,
one with ``n_p << n0`` takes its neighbourhood's flux-weighted shape (which is dominated by the nearest bright
emission). Non-negative in, non-negative out. ``n0`` does not depend on the counts (the concentration of the shape
model); sessions 8-19 fixed it (below), since session 20 ``regularization="auto"`` chooses it per scene by Poisson
thinning (:func:`xfusion.tuning.tune_shape`, several values at the cost of one: :func:`shrink_ladder`).

Measured (offline on the 48 cached 'auto' fits, 24x24x600; benchmarks/faint_eval.py; beats both naive baselines
on all four metrics / mean NMSE / mean velocity RMS over the brighter half, 38 scenes with lines): without
36/48, 20.53 dB, 158.5 km/s; J=2 with n0 = 5e3: 46/48, 20.87, 151.1; 1e4: 46/48, 20.93, 150.8 (worst scene
-0.46 dB, mixed/1039); 2e4: 47/48, 20.97, 150.8 (worst -1.03 dB); J=1, 1e4: 44/48, 20.95, 150.3; J=3 1e4:
46/48, 20.92, 150.8. n0 = 1e4 with J=2 is the frozen default (:data:`AUTO_PSEUDO_COUNTS`). Through
benchmarks/suite.py --select, tuning seeds (48 small): baselines 46/48 (36), NMSE >= RL oracle 29/48 (21), velocity
RMS <= RL oracle 34/38 (31), mean NMSE 20.93 dB (20.53). Held out after freezing, 24 small scenes: baselines 23/24
(18), NMSE >= RL oracle 17/24 (15), velocity 15/19 (13), mean NMSE 20.16 dB (19.73), mean velocity RMS 164 km/s
(185), no scene worse than -0.14 dB; 8 full-size scenes (36x36-45x45, 1600-2400 channels): baselines 7/8 (6),
velocity 6/7 (4), mean NMSE 17.87 dB (17.20), every scene better. Cost: ~1 s on 45x45x2400 (NumPy).

Backends: :meth:`SpectralShape.block_apply` works on a pixel block with a halo of :attr:`depth` pixels (the
starlet's reach, half-sample symmetric extension at the field edges): the interior equals the whole-field result
bitwise; the only global number is the cube's total (:meth:`block_statistics` / :meth:`combine`). The NumPy path
runs the same code on one block without halo.
"""
from __future__ import annotations

import numpy as np

from . import starlet_kernels
from .starlet import reach, starlet2d

#: pseudo-counts n0 of ``regularization="auto"`` in sessions 8-19 (module notes; fitted on tuning seeds only); since
#: session 20 ``"auto"`` chooses n0 by thinning (:func:`xfusion.tuning.tune_shape`) and keeps this value unless the
#: held-out half prefers another by more than one paired standard error (:data:`xfusion.tuning.SHAPE_ANCHOR`)
AUTO_PSEUDO_COUNTS = 1.0e4
#: starlet levels of the hierarchy (module notes)
N_SCALES = 2

_AREAS = {}


def levels_of(pseudo_counts, sources=False):
    """``(n0, n0_pixel)``: the pseudo-counts of levels 1..J-1 and of level 0, from a number (both) or a pair
    ``[n0, n0_pixel]`` (photons, finite, > 0; else ``ValueError``). With ``sources=True`` also a triple
    ``[n0, n0_pixel, n0_sources]`` (level 0 in the footprints of given compact sources, :class:`SpectralShape`), and
    the result has three values (the third ``n0_pixel`` for a number or a pair)."""
    many = list(pseudo_counts) if isinstance(pseudo_counts, (list, tuple)) else [pseudo_counts, pseudo_counts]
    ok = len(many) in ((2, 3) if sources else (2,)) and all(
        isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) and np.isfinite(v) and v > 0
        for v in many)
    if not ok:
        extra = " or a triple [n0, n0_pixel, n0_sources]" if sources else ""
        raise ValueError(f"pseudo_counts must be a finite number > 0 (photons) or a pair [n0, n0_pixel] of them"
                         f"{extra}; got {pseudo_counts!r}")
    out = tuple(float(v) for v in many)
    return (out + (out[1],))[:3] if sources else out


def _area(j):
    """Effective number of pixels ``1 / sum h^2`` of the 2D starlet scaling function of level ``j`` (1 for j = 0)."""
    if j not in _AREAS:
        if j == 0:
            _AREAS[j] = 1.0
        else:
            half = 4 * 2 ** j + 1
            e = np.zeros((2 * half + 1, 2 * half + 1, 1))
            e[half, half] = 1.0
            w = starlet2d(e, j)
            _AREAS[j] = 1.0 / float(np.sum(w[j] ** 2))
    return _AREAS[j]


def _as_cube(zo, halo):
    z = np.asarray(zo)
    dt = z.dtype if np.issubdtype(z.dtype, np.floating) else np.dtype(np.float64)
    z = np.maximum(z.astype(np.float64, copy=False), 0.0)
    return z, dt, (slice(halo, z.shape[0] - halo), slice(halo, z.shape[1] - halo))


def _unit(c):
    """Spectral shape ``c / sum_e c`` of each pixel (flat where the pixel is empty) and the pixel totals."""
    c = np.maximum(c, 0.0)
    t = c.sum(axis=-1, keepdims=True)
    return np.where(t > 0, c / np.where(t > 0, t, 1.0), 1.0 / c.shape[-1]), t


class _Hierarchy:
    """What the posterior mean needs whatever ``n0``: the shapes ``u(c_j)`` and photons ``N_j`` of every level
    (interior ``inner`` of the block), and each pixel's total; ``C`` photons per unit of ``z``."""

    def __init__(self, z, n_scales, inner, C):
        w = starlet2d(z, n_scales)
        levels = [z]
        for j in range(n_scales):
            levels.append(levels[-1] - w[j])
        del w
        self.coarsest = _unit(levels[n_scales][inner])[0]
        self.fine = []
        for j in range(n_scales - 1, -1, -1):
            u, t = _unit(levels[j][inner])
            self.fine.append((u, (C * _area(j)) * t))
        self.totals = z[inner].sum(axis=-1, keepdims=True)


def _shrink(h, n0, n0_pixel):
    """``F_p s_0(p)`` of the module notes for pseudo-counts ``n0`` on a :class:`_Hierarchy` (``n0_pixel`` at level 0;
    :func:`levels_of` gives both): one compiled pass per level
    (:func:`~xfusion.regularizers.starlet_kernels.shape_level`, the same numbers) when it takes the cubes."""
    s = h.coarsest
    last = len(h.fine) - 1
    per_level = [n0] * last + [n0_pixel]  # h.fine runs from the coarsest fine level down to level 0
    if h.fine and starlet_kernels.takes(s, h.totals, *(a for level in h.fine for a in level)):
        out = np.empty_like(s)
        for j, (u, n) in enumerate(h.fine):
            starlet_kernels.shape_level(u, n, per_level[j], s if j == 0 else out, h.totals if j == last else None,
                                        out)
        return out
    for (u, n), m in zip(h.fine, per_level):
        s = (n * u + m * s) / (n + m)
    return h.totals * s


def _at(h, pix):
    """The hierarchy ``h`` at the pixels ``pix`` (index arrays) only, as (n, 1, energy) arrays."""
    sub = _Hierarchy.__new__(_Hierarchy)
    sub.coarsest = h.coarsest[pix][:, None]
    sub.fine = [(u[pix][:, None], n[pix][:, None]) for u, n in h.fine]
    sub.totals = h.totals[pix][:, None]
    return sub


def shrink_ladder(z, counts, pseudo_counts, n_scales=N_SCALES):
    """``z`` (x, y, energy; any non-negative units) through the prior of each of ``pseudo_counts`` (photons; each a
    number or a pair ``[n0, n0_pixel]``, as :class:`SpectralShape` takes): yields ``(p, cube)`` (``p`` a float or a
    list of two floats; the cube float64) in that order, the starlet levels computed once and each cube when it is
    asked for (one in memory at a time if the caller lets it go). ``counts``: total photons of every input (the cube
    comes back unchanged when it or the cube's total is 0). Each cube equals
    ``SpectralShape(p, counts, n_scales).prox(z)`` (in float64)."""
    z, _, inner = _as_cube(z, 0)
    total = float(np.sum(z, dtype=np.float64))
    levels = [levels_of(p) for p in pseudo_counts]
    keys = [list(lv) if isinstance(p, (list, tuple)) else lv[0] for p, lv in zip(pseudo_counts, levels)]
    if not (total > 0 and counts > 0):
        for p in keys:
            yield p, z.copy()
        return
    h = _Hierarchy(z, int(n_scales), inner, counts / total)
    for p, lv in zip(keys, levels):
        yield p, _shrink(h, *lv)


class SpectralShape:
    """Hierarchical shrinkage of each pixel's spectral shape (module notes).

    ``pseudo_counts``: n0 > 0 (photons) for every level, or a pair ``[n0, n0_pixel]``: n0_pixel at level 0 (a pixel
    against its level-1 neighbourhood; the default's floor for velocity maps, benchmarks/DEFAULT_RULES.md), or a triple
    ``[n0, n0_pixel, n0_sources]``: level 0 at n0_sources in the 3x3 footprints of ``sources`` (global ``[i, j]``
    pixels of compact sources; :func:`xfusion.sources.footprint_mask`) and at n0_pixel elsewhere. Level 0 is the last
    step of the hierarchy and ``s_1`` does not depend on it, so each footprint pixel equals the same prior run with
    n0_pixel = n0_sources there (``fuse``'s default: the level-0 floor kept off the sources with line-free spectra,
    session 52);
    ``counts``: total counts of every input (photons, > 0 for any effect);
    ``n_scales``: J >= 1 starlet levels. ``apply(z, statistics(z))`` is the result; block forms for the Dask
    backend (:mod:`xfusion.backends.blockwise` calls ``block_statistics``, ``combine`` and ``block_apply``, the
    latter with the block's global ``origin`` when there are ``sources``)."""

    boundary = "symmetric"

    def __init__(self, pseudo_counts, counts, n_scales=N_SCALES, sources=()):
        n0, n0_pixel, n0_sources = levels_of(pseudo_counts, sources=True)
        if not (np.isfinite(counts) and counts >= 0):
            raise ValueError(f"counts must be the total photon count (finite, >= 0); got {counts!r}")
        if int(n_scales) < 1:
            raise ValueError(f"n_scales must be an integer >= 1; got {n_scales!r}")
        self.n0, self.n0_pixel, self.n0_sources = n0, n0_pixel, n0_sources
        self.counts, self.J = float(counts), int(n_scales)
        self.sources = [(int(i), int(j)) for i, j in sources] if n0_sources != n0_pixel else []
        self.uses_origin = bool(self.sources)  # the footprints are global pixels: blocks need their origin
        self.depth = reach(self.J)

    # -- statistics (global): the cube's total ---------------------------------------------------
    def block_statistics(self, zo, halo, shape, origin):
        inner = zo if halo == 0 else zo[halo:zo.shape[0] - halo, halo:zo.shape[1] - halo]
        return float(np.sum(inner, dtype=np.float64))

    def combine(self, parts):
        return {"total": float(np.sum(list(parts), dtype=np.float64))}

    def statistics(self, z):
        return self.combine([self.block_statistics(z, 0, z.shape, (0, 0))])

    # -- apply (local) -----------------------------------------------------------------------------
    def block_apply(self, zo, halo, stats, origin=(0, 0)):
        """Shrunk interior of a block ``zo`` with ``halo`` pixels whose first interior pixel is the global
        ``origin`` (and a zero penalty, the backends' prox form)."""
        z, dt, inner = _as_cube(zo, halo)
        if not (stats["total"] > 0 and self.counts > 0):
            return z[inner].astype(dt), 0.0
        h = _Hierarchy(z, self.J, inner, self.counts / stats["total"])
        out = _shrink(h, self.n0, self.n0_pixel)
        if self.sources:
            from ..sources import footprint_mask  # lazily: xfusion.sources sits above the regularizers

            m = footprint_mask([(i - origin[0], j - origin[1]) for i, j in self.sources], out.shape[:2])
            if m.any():
                pix = np.nonzero(m)
                out[pix] = _shrink(_at(h, pix), self.n0, self.n0_sources)[:, 0]
        return out.astype(dt), 0.0

    def apply(self, z, stats):
        return self.block_apply(z, 0, stats)[0]

    def prox(self, z, step=1.0, with_penalty=False):
        out = self.apply(z, self.statistics(z))
        return (out, 0.0) if with_penalty else out
