r"""Quality metrics for fused hyperspectral cubes.

Reference-based metrics follow Appendix A of Lascar, Bobin & Acero (2025)
(NMSE, aSAM, acSSIM, ERGAS), plus the SAM map (their eq. 23), the
neighbour spectral angle (eq. 22) and a relative amplitude error map.
Reference-free consistency checks (PSNR, SSIM, mean spectrum) follow
Appendix D of the JWST fusion paper (Guilloteau et al.).

Conventions
-----------
* Cubes are NumPy arrays with axes ``(x, y, energy)`` or xarray DataArrays
  whose dims include ``x``, ``y`` and ``energy`` (any order; they are
  transposed to ``("x", "y", "energy")``; extra dims must have size 1), or
  Datasets holding the cube as ``flux`` (a result, a ``truth.zarr`` store).
* Two labelled cubes must be on the same grid (coordinates ``x``, ``y``,
  ``energy``; a reversed axis is refused, reorder it with ``.sortby(dim)``)
  and, when both carry a ``units`` attribute, in the same units (equivalent
  spellings, read by astropy, pass); otherwise ValueError.
* Argument order is always ``truth`` (or ``observed``) first, ``estimate``
  (or ``predicted``) second.
* Everything is computed in float64; scalars are returned as Python floats,
  maps as float64 ``(x, y)`` arrays.  Inputs are never modified.
* Spectral angles use the numerically stable form
  :math:`\theta = 2\,\mathrm{atan2}(\|u - v\|, \|u + v\|)` with
  :math:`u, v` the unit-normalised spectra, which equals
  :math:`\arccos(\langle a, b\rangle / \|a\|\|b\|)` but is exact near 0.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

__all__ = [
    "nmse",
    "sam_map",
    "asam",
    "acssim",
    "ergas",
    "relative_error_map",
    "neighbour_angle_map",
    "psnr",
    "ssim_image",
    "consistency",
    "filter_images",
    "jwst_validation",
    "report",
    "format_report",
    "SSIM_SIGMA",
    "SSIM_TRUNCATE",
]

#: Gaussian window of the SSIM (Wang et al. 2004): sigma = 1.5 px, truncated
#: at 3.5 sigma, i.e. an 11 x 11 window (radius 5), normalised to sum 1.
SSIM_SIGMA = 1.5
SSIM_TRUNCATE = 3.5
_SSIM_RADIUS = int(SSIM_TRUNCATE * SSIM_SIGMA + 0.5)  # = 5
_K1, _K2 = 0.01, 0.03
_CUBE_DIMS = ("x", "y", "energy")


# ---------------------------------------------------------------------------
# input handling
# ---------------------------------------------------------------------------


def _is_dataarray(a) -> bool:
    return hasattr(a, "dims") and hasattr(a, "transpose") and not isinstance(a, np.ndarray)


def _variable(a, what: str):
    """The cube of a Dataset (its ``flux`` variable, or its only variable), else ``a`` itself.

    A result of :func:`xfusion.fuse` and the ``truth.zarr`` of ``xfusion toy`` (opened with
    :func:`xfusion.io.zarr.open`) are Datasets holding ``flux`` (session 30: a truth Dataset failed
    with numpy's "float() argument must be ... not 'method'")."""
    if not hasattr(a, "data_vars"):
        return a
    if "flux" in a.data_vars:
        return a["flux"]
    if len(a.data_vars) == 1:
        return a[next(iter(a.data_vars))]
    raise ValueError(f"{what}: a Dataset without a 'flux' variable (it has {sorted(a.data_vars)}): pass the cube, "
                     f"e.g. ds['name'] for the variable holding the {what}")


def _labelled(a, dims: tuple[str, ...], what: str) -> np.ndarray:
    missing = [d for d in dims if d not in a.dims]
    if missing:
        raise ValueError(f"{what}: DataArray dims {tuple(a.dims)} lack {missing}")
    extra = [d for d in a.dims if d not in dims]
    if any(a.sizes[d] != 1 for d in extra):
        raise ValueError(f"{what}: extra dims {extra} must have size 1")
    if extra:
        a = a.squeeze(extra, drop=True)
    return np.asarray(a.transpose(*dims).values, dtype=np.float64)


def _cube(a, what: str = "cube") -> np.ndarray:
    """``(x, y, energy)`` float64 array from an ndarray, a DataArray or a Dataset (its ``flux``)."""
    a = _variable(a, what)
    if _is_dataarray(a):
        return _labelled(a, _CUBE_DIMS, what)
    arr = np.asarray(a, dtype=np.float64)
    if arr.ndim != 3:
        raise ValueError(f"{what}: expected a 3-d (x, y, energy) array, got shape {arr.shape}")
    return arr


def _image(a, what: str = "image") -> np.ndarray:
    """``(x, y)`` float64 array from an ndarray or a DataArray."""
    a = _variable(a, what)
    if _is_dataarray(a):
        return _labelled(a, ("x", "y"), what)
    arr = np.asarray(a, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"{what}: expected a 2-d (x, y) array, got shape {arr.shape}")
    return arr


def _same_grid(truth, estimate, names=("truth", "estimate")):
    """Refuse two labelled cubes or images on different grids (session 28: they were compared by position, e.g. a
    channel with its mirror, or a cube with one shifted off the field)."""
    if not (_is_dataarray(truth) and _is_dataarray(estimate)):
        return
    for c in ("x", "y", "energy", "energy_lo"):
        if c in truth.coords and c in estimate.coords and truth[c].ndim == 1 and estimate[c].ndim == 1:
            a, b = np.asarray(truth[c].values, np.float64), np.asarray(estimate[c].values, np.float64)
            if a.shape == b.shape and not np.allclose(a, b, rtol=1e-6, atol=1e-9 * max(np.abs(a).max(initial=0), 1)):
                dim = truth[c].dims[0]
                hint = (f"; {names[1]} runs the other way along {dim}: reorder it with .sortby({dim!r})"
                        if np.allclose(a, b[::-1], rtol=1e-6, atol=1e-9 * max(np.abs(a).max(initial=0), 1)) else "")
                raise ValueError(f"{names[0]} and {names[1]} are on different grids (coordinate {c} differs: "
                                 f"{a[:3]}... vs {b[:3]}...); compare them on the same grid{hint}")


#: spellings of a unit that astropy does not read, and what they mean
_UNIT_ALIASES = {"counts": "ct", "cts": "ct", "count": "ct", "photons": "ph", "photon": "ph"}


def _parse_unit(text: str):
    """An astropy unit for a ``units`` attribute, or None if astropy cannot read it."""
    from astropy import units as u

    words = [_UNIT_ALIASES.get(w.lower(), w) for w in text.replace("^", "**").split()]
    try:
        return u.Unit(" ".join(words), parse_strict="raise")
    except (ValueError, TypeError):
        return None


def _same_units(a, b, names=("truth", "estimate")):
    """Refuse two labelled cubes whose ``units`` attributes disagree (session 30: a result in ph cm-2 s-1 was scored
    against a truth in counts without a word). Equivalent spellings (``ph cm-2 s-1``, ``photon / (cm2 s)``) pass;
    a cube without units (or with an empty one) is taken to be in the other's units."""
    ua = str(getattr(a, "attrs", {}).get("units", "") or "").strip()
    ub = str(getattr(b, "attrs", {}).get("units", "") or "").strip()
    if not ua or not ub or " ".join(ua.split()) == " ".join(ub.split()):
        return
    pa, pb = _parse_unit(ua), _parse_unit(ub)
    if pa is not None and pb is not None and pa == pb:
        return
    why = "" if pa is not None and pb is not None else " (astropy cannot read one of them, so they cannot be compared)"
    raise ValueError(f"{names[0]} is in {ua!r} but {names[1]} is in {ub!r}{why}: compare cubes in the same units "
                     f"(convert one, e.g. counts / (exposure x area) for a photon flux, and set its 'units' "
                     f"attribute)")


def _finite(arrays):
    """Refuse NaN or inf in any of the named arrays ``(name, array)``."""
    for what, a in arrays:
        if not np.all(np.isfinite(a)):  # (session 28: a NaN voxel gave aSAM 0, a perfect score)
            raise ValueError(f"the {what} contains {int(np.sum(~np.isfinite(a)))} NaN or inf value(s); metrics "
                             "need finite cubes")


def _pair(truth, estimate, conv=_cube, names=("truth", "estimate"), no_data=False):
    """Both cubes as float64 arrays, checked (grid, units, shape, finite). ``no_data``: NaN at the same voxels of
    both is no data (a masked voxel) and becomes 0 in both; NaN in one only is still refused."""
    truth, estimate = _variable(truth, names[0]), _variable(estimate, names[1])
    _same_grid(truth, estimate, names)
    _same_units(truth, estimate, names)
    t = conv(truth, names[0])
    e = conv(estimate, names[1])
    if t.shape != e.shape:
        raise ValueError(f"shape mismatch: {names[0]} {t.shape} vs {names[1]} {e.shape}")
    if no_data:
        both = np.isnan(t) & np.isnan(e)
        if np.any(both):
            t, e = np.where(both, 0.0, t), np.where(both, 0.0, e)
    _finite(((names[0], t), (names[1], e)))
    return t, e


def _unit(z: np.ndarray):
    """Unit-normalise spectra along the last axis; zero spectra -> 0, flagged."""
    norm = np.sqrt(np.einsum("...k,...k->...", z, z))
    valid = norm > 0
    u = np.zeros_like(z)
    np.divide(z, norm[..., None], out=u, where=valid[..., None])
    return u, valid


def _angle(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Angle between unit vectors along the last axis (stable atan2 form)."""
    d = u - v
    s = u + v
    return 2.0 * np.arctan2(
        np.sqrt(np.einsum("...k,...k->...", d, d)), np.sqrt(np.einsum("...k,...k->...", s, s))
    )


def _db(num: float, den: float) -> float:
    """``10 log10(num / den)`` with the limits ``+inf`` (den = 0) and
    ``-inf`` (num = 0); ``nan`` if both are 0."""
    if den == 0.0:
        return math.inf if num > 0 else math.nan
    if num == 0.0:
        return -math.inf
    return 10.0 * math.log10(num / den)


# ---------------------------------------------------------------------------
# reference-based metrics (Appendix A)
# ---------------------------------------------------------------------------


def nmse(truth, estimate) -> float:
    r"""Normalised mean squared error in dB (eq. A.1), higher is better.

    .. math:: \mathrm{NMSE} = 10\log_{10}
              \frac{\sum_i Z_i^2}{\sum_i (Z_i - \hat Z_i)^2}

    with :math:`Z` the truth and the sums over all voxels.  Identical cubes
    give ``+inf``; an all-zero truth with a non-zero error gives ``-inf``;
    both zero gives ``nan``.  ``estimate = 2 * truth`` gives exactly 0 dB.
    """
    t, e = _pair(truth, estimate)
    num = float(np.sum(np.square(t)))
    den = float(np.sum(np.square(t - e)))
    return _db(num, den)


def sam_map(truth, estimate) -> np.ndarray:
    r"""Spectral angle mapper map (eq. 23), radians, shape ``(x, y)``.

    .. math:: \mathrm{SAM}(Z_i) = \arccos
              \frac{\langle Z_i, \hat Z_i\rangle}{\|Z_i\|_2 \|\hat Z_i\|_2}

    Pixels where both spectra are identically zero are ``nan`` (nothing to
    compare). Where only one of them is zero (an estimate with no flux in a
    pixel that has some, or the reverse) the angle is undefined; it is set to
    :math:`\pi/2`, the largest angle between non-negative spectra: the
    estimate holds no spectral information there (session 33: such pixels
    were left out, so a baseline with empty pixels scored better for them).
    Values lie in :math:`[0, \pi]`.
    """
    t, e = _pair(truth, estimate)
    ut, vt = _unit(t)
    ue, ve = _unit(e)
    out = _angle(ut, ue)
    out[vt != ve] = np.pi / 2
    out[~vt & ~ve] = np.nan
    return out


def asam(truth, estimate) -> float:
    r"""Average spectral angle (radians), lower is better.

    Mean of :func:`sam_map` over the pixels where it is defined (not both
    spectra zero; one zero counts :math:`\pi/2`).  Eq. A.2 of the paper writes the prefactor as
    :math:`1/L` with a sum over the :math:`MN` pixels; we read this as a
    typo and use the mean over pixels, :math:`1/(MN)\sum_i`.  Returns
    ``nan`` if no pixel is valid.
    """
    m = sam_map(truth, estimate)
    ok = np.isfinite(m)
    if not ok.any():
        return math.nan
    return float(np.mean(m[ok]))


def _ssim_channels(ref: np.ndarray, img: np.ndarray, data_range=None) -> np.ndarray:
    """SSIM of every channel ``[..., k]`` of two ``(x, y, K)`` float64 stacks.

    Channels whose data range is 0 give ``nan``.
    """
    K = ref.shape[-1]
    if data_range is None:
        rng = ref.max(axis=(0, 1)) - ref.min(axis=(0, 1))
    else:
        rng = np.broadcast_to(np.asarray(data_range, dtype=np.float64), (K,))
    out = np.full(K, np.nan)
    valid = rng > 0
    if not valid.any():
        return out
    if not valid.all():
        ref, img, rng = ref[..., valid], img[..., valid], rng[valid]
    c1 = (_K1 * rng) ** 2
    c2 = (_K2 * rng) ** 2
    sigma = (SSIM_SIGMA, SSIM_SIGMA, 0.0)

    def g(z):
        return ndimage.gaussian_filter(z, sigma=sigma, truncate=SSIM_TRUNCATE, mode="reflect")

    mu1 = g(ref)
    mu2 = g(img)
    mu11, mu22, mu12 = mu1 * mu1, mu2 * mu2, mu1 * mu2
    s11 = g(ref * ref) - mu11
    s22 = g(img * img) - mu22
    s12 = g(ref * img) - mu12
    smap = ((2.0 * mu12 + c1) * (2.0 * s12 + c2)) / ((mu11 + mu22 + c1) * (s11 + s22 + c2))
    r = _SSIM_RADIUS
    if smap.shape[0] > 2 * r and smap.shape[1] > 2 * r:
        smap = smap[r:-r, r:-r]
    out[valid] = smap.mean(axis=(0, 1))
    return out


def acssim(truth, estimate) -> float:
    r"""Average complementary SSIM (eq. A.3), lower is better (ideal 0).

    .. math:: \mathrm{acSSIM} = 1 - \frac{1}{L}\sum_k \mathrm{SSIM}(Z_k, \hat Z_k)

    SSIM of Wang et al. (2004) computed per energy channel :math:`k`:
    Gaussian window :math:`\sigma = 1.5` px truncated to 11 x 11 (normalised,
    ``scipy.ndimage.gaussian_filter`` over x and y only, 'reflect'
    boundaries), population (weighted) moments, :math:`K_1 = 0.01`,
    :math:`K_2 = 0.03`, data range :math:`\max Z_k - \min Z_k` of the truth
    slice.  The SSIM map is averaged over the pixels at least 5 px from the
    border (over all pixels if the image is smaller than 11 px).  Channels
    whose truth slice has zero range are skipped and the mean is over the
    remaining channels; ``nan`` if none remains.
    """
    t, e = _pair(truth, estimate)
    s = _ssim_channels(t, e)
    ok = np.isfinite(s)
    if not ok.any():
        return math.nan
    return float(1.0 - np.mean(s[ok]))


def ergas(truth, estimate, ratio: float) -> float:
    r"""Relative dimensionless global error (eq. A.4), lower is better.

    .. math:: \mathrm{ERGAS} = 100\, d \sqrt{\frac{1}{L}\sum_k
              \left(\frac{\|\hat Z_k - Z_k\|_F}{\mu_k\sqrt{MN}}\right)^2},
              \qquad d = \frac{1}{\mathrm{ratio}}

    with :math:`\mu_k` the mean of the **truth** slice :math:`Z_k` (the
    standard ERGAS normalisation; the paper's :math:`\hat Z` notation in
    Appendix A denotes the reference).  Channels with :math:`\mu_k = 0` are
    skipped (``nan`` if none remains).  :math:`d` is the ratio of the spatial
    resolution of X to that of Y (eq. A.4; Wald's :math:`h/l`), e.g.
    10"/30" = 1/3: ``ratio = 3`` gives :math:`100/3` times the root mean
    square relative error.  (Before session 30 :math:`d` = ``ratio`` was used,
    ``ratio**2`` = 9 times the paper's value for a factor 3.)

    Parameters
    ----------
    ratio : float
        The resolution factor, pixel size of the low-spatial-resolution data
        Y over that of X (e.g. 3 for 30"/10"; the result attribute
        ``spatial_factor``); :math:`d` is its inverse.
    """
    ratio = float(ratio)
    if not ratio > 0:
        raise ValueError("ratio must be positive (the pixel size of Y over that of X, e.g. 3 for 30\"/10\")")
    t, e = _pair(truth, estimate)
    mu = t.mean(axis=(0, 1))
    rmse = np.sqrt(np.mean(np.square(e - t), axis=(0, 1)))
    ok = mu != 0
    if not ok.any():
        return math.nan
    return float(100.0 / ratio * np.sqrt(np.mean((rmse[ok] / mu[ok]) ** 2)))


def relative_error_map(truth, estimate) -> np.ndarray:
    r"""Per-pixel relative amplitude error in percent, shape ``(x, y)``.

    .. math:: 100\,\frac{\sum_E \hat Z - \sum_E Z}{\sum_E Z}

    ``nan`` where the truth amplitude :math:`\sum_E Z` is 0.
    """
    t, e = _pair(truth, estimate)
    st = t.sum(axis=-1)
    se = e.sum(axis=-1)
    out = np.full(st.shape, np.nan)
    np.divide(se - st, st, out=out, where=st != 0)
    out *= 100.0
    return out


def neighbour_angle_map(cube) -> np.ndarray:
    r"""Mean spectral angle to the 8 neighbouring pixels (eq. 22), radians.

    .. math:: \theta(Z_k) = \frac{1}{\mathrm{card}(\mathcal N)}
              \sum_{Z_{k'}\in\mathcal N}
              \arccos\frac{\langle Z_k, Z_{k'}\rangle}{\|Z_k\|\,\|Z_{k'}\|}

    :math:`\mathcal N` is the set of the (up to) 8 adjacent pixels that
    exist (5 on edges, 3 in corners) and whose spectrum is not all-zero.
    Pixels whose own spectrum is zero, or with no valid neighbour, are
    ``nan``.  Returns an ``(x, y)`` map.
    """
    z = _cube(cube)
    u, valid = _unit(z)
    X, Y = valid.shape
    acc = np.zeros((X, Y))
    cnt = np.zeros((X, Y))
    # each unordered neighbour pair once: right, down, two diagonals
    for dx, dy in ((1, 0), (0, 1), (1, 1), (1, -1)):
        ax = slice(0, X - dx)
        bx = slice(dx, X)
        if dy >= 0:
            ay, by = slice(0, Y - dy), slice(dy, Y)
        else:
            ay, by = slice(-dy, Y), slice(0, Y + dy)
        ok = valid[ax, ay] & valid[bx, by]
        ang = np.where(ok, _angle(u[ax, ay], u[bx, by]), 0.0)
        acc[ax, ay] += ang
        acc[bx, by] += ang
        cnt[ax, ay] += ok
        cnt[bx, by] += ok
    out = np.full((X, Y), np.nan)
    np.divide(acc, cnt, out=out, where=(cnt > 0) & valid)
    return out


# ---------------------------------------------------------------------------
# reference-free consistency checks (JWST paper, Appendix D)
# ---------------------------------------------------------------------------


def psnr(observed, predicted) -> float:
    r"""Peak signal-to-noise ratio in dB (JWST paper eq. 10).

    .. math:: \mathrm{PSNR} = 10\log_{10}\frac{\max(Y)^2}{\mathrm{MSE}(Y, X)}

    with :math:`Y` = ``observed`` (its maximum is the data range) and
    :math:`X` = ``predicted``; arrays of any equal shape (DataArrays are
    aligned on the observed dim order; two DataArrays on different x, y or
    energy coordinates, e.g. one mirrored, are refused as by the other
    metrics).  ``+inf`` if identical.
    """
    names = ("observed", "predicted")
    observed, predicted = _variable(observed, names[0]), _variable(predicted, names[1])
    if _is_dataarray(observed):
        o = np.asarray(observed.values, dtype=np.float64)
        if _is_dataarray(predicted):
            _same_grid(observed, predicted, names)
            _same_units(observed, predicted, names)
            predicted = predicted.transpose(*observed.dims)
    else:
        o = np.asarray(observed, dtype=np.float64)
    p = np.asarray(getattr(predicted, "values", predicted), dtype=np.float64)
    if o.shape != p.shape:
        raise ValueError(f"shape mismatch: observed {o.shape} vs predicted {p.shape}")
    mse = float(np.mean(np.square(o - p)))
    peak = float(np.max(o))
    return _db(peak * peak, mse)


def ssim_image(a, b, *, data_range: float | None = None) -> float:
    """Structural similarity of two 2D images (Wang et al. 2004).

    Same definition as in :func:`acssim` (11 x 11 Gaussian window,
    sigma = 1.5, K1 = 0.01, K2 = 0.03, border of 5 px excluded from the
    mean).  ``a`` is the reference: the data range defaults to
    ``max(a) - min(a)``.  Returns 1 for identical images, ``nan`` if the
    data range is 0.
    """
    x, y = _pair(a, b, conv=_image)
    dr = None if data_range is None else float(data_range)
    if dr is not None and not (np.isfinite(dr) and dr > 0):  # (session 28: returned NaN)
        raise ValueError(f"data_range must be a finite number > 0 (the span of the values); got {data_range!r}")
    return float(_ssim_channels(x[..., None], y[..., None], dr)[0])


def consistency(observed, predicted) -> dict:
    r"""Consistency of predicted counts with an observed counts cube.

    Both are ``(x, y, energy)`` cubes of the same shape (e.g. the data and
    the forward model applied to a fused cube); two DataArrays must be on
    the same grid and in the same units (else ValueError). NaN marks no data
    (a masked voxel, as :func:`xfusion.fuse.counts_of` gives it): it must be
    NaN in both, and counts as 0 in the sums and means; any other NaN or inf
    is refused. :func:`xfusion.consistency.count_consistency` scores every
    input of a fusion result this way.

    Returns
    -------
    dict with Python floats
        ``"psnr_db"``: :func:`psnr` of the energy-summed images;
        ``"ssim"``: :func:`ssim_image` of the energy-summed images
        (observed as reference);
        ``"mean_spectrum_rel_error"``: with :math:`\bar o_k`,
        :math:`\bar p_k` the spatially averaged spectra,
        :math:`\frac{\frac1L\sum_k |\bar p_k - \bar o_k|}{\frac1L\sum_k \bar o_k}`
        (``nan`` if the observed mean spectrum sums to 0).
    """
    o, p = _pair(observed, predicted, names=("observed", "predicted"), no_data=True)
    io, ip = o.sum(axis=-1), p.sum(axis=-1)
    mo, mp = o.mean(axis=(0, 1)), p.mean(axis=(0, 1))
    den = float(np.mean(mo))
    rel = float(np.mean(np.abs(mp - mo))) / den if den != 0 else math.nan
    return {
        "psnr_db": psnr(io, ip),
        "ssim": ssim_image(io, ip),
        "mean_spectrum_rel_error": rel,
    }


# ---------------------------------------------------------------------------
# reports
# ---------------------------------------------------------------------------


def report(result, truth, *, ratio: float | None = None) -> dict:
    """The four scalar metrics of the paper's Table 2.

    Parameters
    ----------
    result : xarray.Dataset with variable ``flux`` (dims x, y, energy), or a
        DataArray / ndarray cube.
    truth : DataArray / ndarray cube of the same shape, or a Dataset holding it
        as ``flux`` (e.g. ``xfusion.io.zarr.open("truth.zarr")``). Labelled
        cubes must share the grid (coordinates x, y, energy) and, when both
        carry a ``units`` attribute, the units (equivalent spellings pass).
    ratio : float, optional
        ERGAS resolution ratio; defaults to the Dataset attribute
        ``spatial_factor`` when ``result`` is a Dataset that has it.

    Returns
    -------
    dict
        ``{"nmse_db", "asam_rad", "acssim", "ergas"}`` as Python floats.
    """
    est = result
    if hasattr(result, "data_vars"):
        if "flux" not in result.data_vars:
            raise ValueError("result Dataset has no 'flux' variable")
        est = result["flux"]
        if ratio is None and "spatial_factor" in result.attrs:
            ratio = float(result.attrs["spatial_factor"])
    if ratio is None:
        raise ValueError("ratio is required (no 'spatial_factor' attribute on result)")
    t, e = _pair(truth, est)  # grids, units and finiteness checked once, on the labelled cubes
    return {
        "nmse_db": nmse(t, e),
        "asam_rad": asam(t, e),
        "acssim": acssim(t, e),
        "ergas": ergas(t, e, ratio),
    }


def _fmt(v, floatfmt: str) -> str:
    if v is None:
        return "-"
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v))
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        return format(float(v), floatfmt)
    return str(v)


def format_report(rows: dict[str, dict], *, floatfmt: str = ".4g", name_header: str = "method") -> str:
    """Format named rows of metrics as an aligned plain-text table.

    ``rows`` maps a row name (e.g. a method) to a dict of values, e.g. the
    output of :func:`report`.  Columns are the union of the keys in order of
    first appearance; missing entries print as ``-``.  Floats use
    ``floatfmt``; names are left-aligned and values right-aligned.
    """
    cols: list[str] = []
    for vals in rows.values():
        for k in vals:
            if k not in cols:
                cols.append(k)
    table = [[name_header] + cols]
    for name, vals in rows.items():
        table.append([str(name)] + [_fmt(vals.get(c), floatfmt) for c in cols])
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    lines = []
    for n, r in enumerate(table):
        cells = [r[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(r[1:], widths[1:])]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# imager + IFU validation (SyFu, Marquis et al. 2026, Appendix D)
# ---------------------------------------------------------------------------


def filter_images(flux, response) -> np.ndarray:
    r"""Images of a fused cube through filters: ``I[x, y, f] = sum_l Z[x, y, l] R[l, f]``.

    ``flux`` (x, y, energy) cube (e.g. MJy/sr over wavelength bins), ``response`` (L, F) the
    normalized (columns summing to 1), cross-calibrated filter matrix
    (``xfusion.jwst.filter_response`` / ``cross_calibrate``): each image is the
    throughput-weighted mean of the cube, in the cube's units. Returns float64 (x, y, F).
    """
    z = _cube(flux, "flux")
    R = np.asarray(response, dtype=np.float64)
    if R.ndim != 2 or R.shape[0] != z.shape[-1]:
        raise ValueError(f"response must be (channels={z.shape[-1]}, filters); got shape {R.shape}")
    return z @ R


def jwst_validation(imager_data, ifu_data, flux, response, *, filters=None, factor: int = 3,
                    imager_mask=None, ifu_mask=None) -> dict:
    r"""SyFu's truth-free checks of a fused cube against its two inputs.

    * per filter f: PSNR (eq. 10) and SSIM (eq. 11) of the filter image of ``flux``
      (:func:`filter_images`) against the imager's image ``imager_data[..., f]`` (reference);
      masked pixels are replaced by the prediction in both (they do not count);
    * the mean spectrum: relative error :math:`(\bar Z_l - \bar Y_{h,l}) / \bar Y_{h,l}` per
      channel, with bars the means over the field (valid spaxels of the IFU; the fused cube
      over the same field), and its maximum absolute value.

    ``imager_data`` (M, N, F), ``ifu_data`` (M/factor, N/factor, L), ``flux`` (M, N, L),
    ``response`` (L, F). A held-out filter is checked the same way: pass a cube fused
    without it and that filter's image and response. Returns ``{"filters": {name: {"psnr_db",
    "ssim"}}, "min_psnr_db", "mean_spectrum_rel_error" (L,), "mean_spectrum_max_rel_error"}``.
    """
    z = _cube(flux, "flux")
    ym = np.asarray(getattr(imager_data, "values", imager_data), dtype=np.float64)
    yh = np.asarray(getattr(ifu_data, "values", ifu_data), dtype=np.float64)
    if ym.ndim != 3 or ym.shape[:2] != z.shape[:2]:
        raise ValueError(f"imager_data must be (x, y, filter) on the fused pixels {z.shape[:2]}; got {ym.shape}")
    if yh.ndim != 3 or yh.shape[-1] != z.shape[-1] or yh.shape[0] * factor != z.shape[0] \
            or yh.shape[1] * factor != z.shape[1]:
        raise ValueError(f"ifu_data must be (x, y, energy) = ({z.shape[0] // factor}, {z.shape[1] // factor}, "
                         f"{z.shape[-1]}) for the fused cube {z.shape} and factor {factor}; got {yh.shape}")
    pred = filter_images(z, response)
    if pred.shape[-1] != ym.shape[-1]:
        raise ValueError(f"response has {pred.shape[-1]} filters but imager_data has {ym.shape[-1]}")
    names = [f"filter{i}" for i in range(ym.shape[-1])] if filters is None else [str(f) for f in filters]
    if len(names) != ym.shape[-1]:
        raise ValueError(f"{len(names)} filter names for {ym.shape[-1]} images")
    vm = np.ones(ym.shape, bool) if imager_mask is None else np.asarray(imager_mask, bool)
    out = {}
    for i, name in enumerate(names):
        obs = np.where(vm[..., i], ym[..., i], pred[..., i])
        out[name] = {"psnr_db": psnr(obs, pred[..., i]), "ssim": ssim_image(obs, pred[..., i])}
    vh = np.ones(yh.shape, bool) if ifu_mask is None else np.asarray(ifu_mask, bool)
    cnt = vh.sum(axis=(0, 1))
    if np.any(cnt == 0):
        raise ValueError("some IFU channels have no valid spaxel: the mean spectrum is undefined there")
    mh = np.where(vh, yh, 0.0).sum(axis=(0, 1)) / cnt
    m_, n_ = yh.shape[:2]  # the fused cube over the same field: the pixels of the valid spaxels, per channel
    zb = z.reshape(m_, factor, n_, factor, z.shape[-1]).mean(axis=(1, 3))
    mz = np.where(vh, zb, 0.0).sum(axis=(0, 1)) / cnt
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(mh != 0, (mz - mh) / np.where(mh != 0, mh, 1.0), np.nan)
    return {"filters": out, "min_psnr_db": float(min(v["psnr_db"] for v in out.values())),
            "mean_spectrum_rel_error": rel,
            "mean_spectrum_max_rel_error": float(np.nanmax(np.abs(rel))) if np.any(np.isfinite(rel)) else math.nan}
