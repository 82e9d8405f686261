"""Compact sources in the sharp-spatial image, and whether each one's own spectrum carries lines (session 51).

Why. On skies with bright compact sources on line-emitting gas, the 2D-1D prior moves the gas's line flux onto
the sources (``benchmarks/line_stealing.py``, QUALITY_HISTORY session 50): in the band that is fine in space and
coarse in energy, a line that shifts from pixel to pixel has small coefficients and is thresholded away, while a
bright source keeps whatever line structure sits on its large coefficients. Neither instrument sees the swap (the
sharp-spatial one cannot tell line from continuum inside one of its channels, the sharp-spectral one cannot tell
which fused pixel of its pixel holds the line), so only the prior can decide. Where a source's own spectrum is a
smooth continuum (a power law), the line structure on it is the gas's and is thresholded like the gas's
(:class:`xfusion.regularizers.sparsity.Wavelet2D1D`, ``line_peaks``); where it has lines of its own (a coronal
source) it is left alone. This module finds the sources and tells the two apart from the data alone.

**Sources** (:func:`compact_sources`), in the sharp-spatial image ``I`` (counts summed over energy): local maxima
(3x3) of ``I`` where the finest B3-spline starlet coefficient ``w1 = I - h*I`` exceeds :data:`SIGMAS` Poisson
sigmas (``var(w1) = (k^2 * max(I, 1))`` with ``k = delta - h`` the 5x5 filter) and where ``w1 / I`` at the peak is at
least :data:`COMPACT` of what a point source through the sharp-spatial PSF gives there (a smooth or ridge-like peak
gives less). Tuning seeds (session 50): point sources matched by the truth have 0.20-0.58 of a point source's
fraction, other peaks 0.03-0.29. A source's footprint is the 3x3 fused pixels around its peak
(:func:`footprint_mask`).

**Own lines** (:func:`line_free`). Per source, the excess counts of the sharp-spatial instrument over the local
gas, ``e = c3 - (n3 / n5) c5`` (``c3``: counts summed over the 3x3 footprint, ``c5`` over the ring of the 5x5
around it, ``n`` their pixel counts), with variance ``v = c3 + (n3 / n5)^2 c5``, is fitted by ``a u_G``, ``u_G``
the power law ``E^-G`` (per fused channel) folded through the instrument (:func:`xfusion.predict`, role
"spatial": its area, exposure and spectral response), for ``G`` in :data:`INDICES`; ``a`` by weighted least
squares. The source is line-free when the least ``chi2 = sum (e - a u_G)^2 / v`` is within :data:`LINE_Z` sigmas
of its ``dof = channels - 2`` (``chi2 <= dof + z sqrt(2 dof)``): a thermal (coronal) spectrum's line blends stand
far out at CCD resolution even where single lines are not resolved. An error of the test on a line-free source
leaves it alone (the prior as before), so misfits (gas that changes under the source, a curved continuum) fail
safe. Tuning seeds (48 small, 24 full-size skies): line-free sources (truth: line flux under 2.5 % of their own)
had reduced chi2 0.6-1.8 except one of 1.2e6 counts (18.8); coronal sources 5.4-6700.

**Line scale** (:func:`line_sigma`): the Gaussian standard deviation (keV) of what the sharp-spatial instrument
does to a narrow line: the second moment of a line at the band centre folded through it, plus the variance of
its channels' widths (``width^2 / 12``): structure narrower than that along energy is what that instrument cannot
see, hence the part of the fine-in-space band the prior alone decides.

The folds are computed on a patch of up to 7x7 of the instrument's own pixels around each source (one spectrum per
pixel, no PSF for the "spatial" role), so a vignetted area or an exposure map is taken where the source is (session
52; before, at the field's corner, where a vanishing area called every source line-bearing).
"""
from __future__ import annotations

import numpy as np
import xarray as xr
from scipy import ndimage as ndi

from .operators.model import predict
from .regularizers.starlet import B3_FILTER, starlet2d

#: detection threshold of the finest starlet coefficient, in Poisson sigmas of the sharp-spatial image
SIGMAS = 5.0
#: least ``w1 / I`` at a peak, as a fraction of a point source's (module notes)
COMPACT = 0.3
#: photon indices of the power laws a line-free source's excess is fitted by
INDICES = np.round(np.linspace(0.0, 4.0, 41), 2)
#: a source is line-free when its least chi2 is within this many sigmas (sqrt(2 dof)) of its dof
LINE_Z = 5.0


def _finest(img):
    """The finest 2D starlet scale ``w1 = I - h*I`` (:func:`xfusion.regularizers.starlet.starlet2d`, reflect)."""
    return starlet2d(img, 1)[0]


def compact_sources(image, psf=None, sigmas=SIGMAS, compact=COMPACT):
    """Peaks ``[(i, j), ...]`` (row-major order) of compact sources in ``image`` (M, N) counts; ``psf`` (P, Q) sums
    to 1 (None: a delta). Rule in the module notes."""
    img = np.asarray(image, dtype=np.float64)
    if img.ndim != 2 or min(img.shape) < 3:
        return []
    w1 = _finest(img)
    k = -np.outer(B3_FILTER, B3_FILTER)
    k[2, 2] += 1.0  # w1 = k * img, so var(w1) = k^2 * lambda for Poisson counts
    s = w1 / np.sqrt(ndi.correlate(np.maximum(img, 1.0), k ** 2, mode="reflect"))
    stamp = np.zeros((15, 15))
    stamp[7, 7] = 1.0
    if psf is not None and np.size(psf) > 1:
        stamp = ndi.convolve(stamp, np.asarray(psf, dtype=np.float64), mode="constant")
    point = _finest(stamp)[7, 7] / stamp[7, 7]
    peak = (img == ndi.maximum_filter(img, size=3)) & (s > sigmas) & (img > 0)
    return [(int(i), int(j)) for i, j in np.argwhere(peak) if w1[i, j] / img[i, j] >= compact * point]


def footprint_mask(peaks, shape, half=1):
    """Boolean (M, N): the ``(2 half + 1)``-square footprints around ``peaks``, clipped at the field's edges (a peak
    may lie outside the field, e.g. in a neighbouring block: only its footprint's part inside counts)."""
    mask = np.zeros(shape, dtype=bool)
    for i, j in peaks:
        mask[max(i - half, 0):max(i + half + 1, 0), max(j - half, 0):max(j + half + 1, 0)] = True
    return mask


def psf_image(obs):
    """The observation's PSF image (psf_x, psf_y), averaged over any further axis, or None."""
    if "psf" not in obs:
        return None
    p = obs["psf"]
    p = p.mean([d for d in p.dims if d not in ("psf_x", "psf_y")]) if p.ndim > 2 else p
    return np.asarray(p.transpose("psf_x", "psf_y").values, dtype=np.float64)


def _folds(obs, grid, spectra, at=(0, 0)):
    """Expected counts (n, channels) of the sharp-spatial ``obs`` per pixel for each fused-grid spectrum (n, L)
    (photon flux per fused channel), computed on a patch of up to 7x7 of its pixels around the pixel ``at`` (clipped
    to the field), one spectrum per pixel (role "spatial": no PSF, each pixel folded alone). Taken where the source
    is, so that a vignetted area, or an exposure map, that vanishes elsewhere (e.g. at the field's corner) does not
    zero the folds (session 52)."""
    spectra = np.asarray(spectra, dtype=np.float64)
    side = int(min(7, obs.sizes["x"], obs.sizes["y"]))
    i0, j0 = (int(np.clip(int(a) - side // 2, 0, n - side)) for a, n in zip(at, (obs.sizes["x"], obs.sizes["y"])))
    patch = obs.isel(x=slice(i0, i0 + side), y=slice(j0, j0 + side))
    coords = {"x": patch["x"], "y": patch["y"]}
    coords.update({c: grid[c] for c in ("energy", "energy_lo", "energy_hi")})
    out = []
    for s0 in range(0, len(spectra), side * side):
        part = spectra[s0:s0 + side * side]
        cube = np.zeros((side * side, spectra.shape[1]))
        cube[:len(part)] = part
        f = xr.DataArray(cube.reshape(side, side, -1), dims=("x", "y", "energy"), coords=coords)
        c = predict(f, patch, role="spatial").transpose("x", "y", "energy").values
        out.append(np.asarray(c, dtype=np.float64).reshape(side * side, -1)[:len(part)])
    return np.concatenate(out)


def line_sigma(obs, grid, at=(0, 0)):
    """Standard deviation (keV) of a narrow line at the band centre as the sharp-spatial ``obs`` records it at the
    pixel ``at`` (module notes): its folded counts' second moment about their mean over the channel centres, plus
    ``width^2 / 12``."""
    e = np.asarray(grid["energy"].values, dtype=np.float64)
    line = np.zeros((1, e.size))
    line[0, e.size // 2] = 1.0
    p = np.maximum(_folds(obs, grid, line, at)[0], 0.0)
    lo, hi = (np.asarray(obs[c].values, dtype=np.float64) for c in ("energy_lo", "energy_hi"))
    if p.sum() <= 0:
        return float(np.median(hi - lo))
    p = p / p.sum()
    c = 0.5 * (lo + hi)
    m = float((p * c).sum())
    return float(np.sqrt((p * (c - m) ** 2).sum() + (p * (hi - lo) ** 2).sum() / 12.0))


def line_free(obs, grid, peaks, z=LINE_Z):
    """Per peak ``{"peak": (i, j), "chi2", "dof", "index", "counts", "line_free"}`` (module notes) from the counts of
    the sharp-spatial ``obs`` (on the fused pixels) and the fused ``grid`` (its energy axis)."""
    if not peaks:
        return []
    e = np.asarray(grid["energy"].values, dtype=np.float64)
    de = np.asarray(grid["energy_hi"].values - grid["energy_lo"].values, dtype=np.float64)
    laws = np.array([e ** -g * de for g in INDICES])
    counts = obs["counts"].transpose("x", "y", "energy")
    shape = (obs.sizes["x"], obs.sizes["y"])
    out = []
    for p in peaks:
        folds = _folds(obs, grid, laws, p)  # under the source (its vignetted area, its exposure)
        m3 = footprint_mask([p], shape, 1)
        m5 = footprint_mask([p], shape, 2) & ~m3
        box = (slice(max(p[0] - 2, 0), p[0] + 3), slice(max(p[1] - 2, 0), p[1] + 3))
        c = np.asarray(counts[box].values, dtype=np.float64)
        c3, c5 = c[m3[box]].sum(0), c[m5[box]].sum(0)
        r = m3.sum() / max(m5.sum(), 1)
        ex, v = c3 - r * c5, np.maximum(c3 + r * r * c5, 1.0)
        chi, best = np.inf, None
        for g, u in zip(INDICES, folds):
            uu = float((u * u / v).sum())
            if uu <= 0:
                continue
            a = float((ex * u / v).sum()) / uu
            x2 = float(((ex - a * u) ** 2 / v).sum())
            if x2 < chi:
                chi, best = x2, float(g)
        dof = max(ex.size - 2, 1)
        out.append({"peak": (int(p[0]), int(p[1])), "chi2": chi, "dof": dof, "index": best,
                    "counts": float(ex.sum()), "line_free": bool(chi <= dof + z * np.sqrt(2.0 * dof))})
    return out


def excess_share(image, peaks):
    """Share of the counts of ``image`` (M, N) that the compact sources at ``peaks`` hold above their surroundings:
    ``sum_p (c3 - (n3 / n5) c5) / sum(image)``, ``c3`` the counts in a peak's 3x3 footprint, ``c5`` those in the
    ring of its 5x5 (``n3``, ``n5`` their pixel counts, clipped at the edges), as :func:`line_free`'s excess but
    summed over energy (dimensionless; 0 for no peaks or an empty image). A field of point sources on gas holds a
    few per cent or more there; the compact knots of filaments or clumps a few per mille (session 59)."""
    img = np.asarray(image, dtype=np.float64)
    total = float(img.sum())
    if not peaks or total <= 0:
        return 0.0
    excess = 0.0
    for p in peaks:
        m3 = footprint_mask([p], img.shape, 1)
        m5 = footprint_mask([p], img.shape, 2) & ~m3
        excess += float(img[m3].sum()) - m3.sum() / max(int(m5.sum()), 1) * float(img[m5].sum())
    return excess / total


def _unmasked(sharp):
    """``sharp`` with its masked voxels (e.g. a hot pixel) counted as empty."""
    if "mask" in sharp:
        sharp = sharp.assign(counts=sharp["counts"].where(sharp["mask"] > 0, 0))
    return sharp


def compact_peaks(sharp):
    """Peaks ``[[i, j], ...]`` (fused pixels) of the compact sources in the sharp-spatial observation ``sharp``: its
    counts summed over energy (masked voxels empty) through :func:`compact_sources` with its PSF."""
    return _peaks(_unmasked(sharp))


def peaks_and_share(sharp):
    """:func:`compact_peaks` of the sharp-spatial observation ``sharp`` and the share of its counts (summed over
    energy, masked voxels empty) they hold above their surroundings (:func:`excess_share`)."""
    img = _image(_unmasked(sharp))
    peaks = _peaks_of(img, sharp)
    return peaks, excess_share(img, peaks)


def _image(sharp):
    """The counts of ``sharp`` summed over energy, (x, y) float64."""
    return np.asarray(sharp["counts"].sum("energy").transpose("x", "y").values, dtype=np.float64)


def _peaks_of(img, sharp):
    """:func:`compact_sources` of the image ``img`` of ``sharp`` with its PSF, as lists."""
    if not np.all(np.isfinite(img)):  # refused with its own message by the data checks; nothing to find here
        return []
    return [[int(i), int(j)] for i, j in compact_sources(img, psf_image(sharp))]


def _peaks(sharp):
    """:func:`compact_peaks` of an observation whose masked voxels are already empty."""
    return _peaks_of(_image(sharp), sharp)


def source_lines(sharp, grid):
    """What ``source_lines="auto"`` resolves to for the sharp-spatial observation ``sharp`` on the fused ``grid``:
    ``(peaks of the line-free sources, line sigma in keV, per-source records)`` (module notes)."""
    sharp = _unmasked(sharp)  # once, for the peaks and for line_free's counts
    found = line_free(sharp, grid, _peaks(sharp))
    peaks = [list(s["peak"]) for s in found if s["line_free"]]
    return peaks, (line_sigma(sharp, grid, peaks[0]) if peaks else None), found
