"""Point-spread-function readers and flux-conserving resampling.

A PSF in :mod:`xfusion` is an :class:`xarray.DataArray` with dims
``("psf_x", "psf_y")`` whose coordinates ``psf_x`` and ``psf_y`` are the
offsets (arcsec) of the pixel centres from the PSF centre.  The array is
odd-sized along both axes, centred (the middle pixel has offset 0) and sums
to 1.  Energy-dependent PSFs (:func:`read_psf_stack`) add a leading
``psf_energy`` dim (band energies in keV), the layout
:func:`xfusion.observation` takes as is.

FITS images are stored row = y, column = x; they are transposed to (x, y)
on reading.  ``psf_x`` grows towards the west (decreasing RA) and ``psf_y``
towards the north, as ``x``/``y`` do.  A standard sky image (``CDELT1 < 0``,
``CDELT2 > 0``) is read as it is (``psf_x`` increases with the column); one
whose celestial WCS says its columns run east or its rows south is flipped
(:func:`psf_axis_flips`); a rotated WCS is refused (rotate or reproject the
image first).  An image without a celestial WCS is read as it is.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence

import numpy as np
import xarray as xr
from astropy.io import fits

__all__ = ["read_psf", "resample_psf", "read_psf_stack", "psf_pixel_scale", "psf_axis_flips"]

#: Keywords accepted (in this order) as the pixel size in arcsec when the
#: header has no usable celestial WCS.
PIXEL_SIZE_KEYWORDS = ("PIXSIZE", "PIXSCALE", "PIXSCAL1", "SECPIX", "SECPIX1")

_DEG_PER_UNIT = {"deg": 1.0, "degree": 1.0, "degrees": 1.0,
                 "arcmin": 1.0 / 60.0, "arcsec": 1.0 / 3600.0,
                 "mas": 1.0 / 3.6e6, "rad": 180.0 / math.pi}


# --------------------------------------------------------------------------
# input helpers
# --------------------------------------------------------------------------
def _open_image(source, hdu):
    """Return (2-D float64 array (row=y, col=x), header, label, hdu name)."""
    if isinstance(source, (fits.PrimaryHDU, fits.ImageHDU, fits.CompImageHDU)):
        return _image_from_hdu(source, "<HDU>")
    if isinstance(source, fits.HDUList):
        return _image_from_hdulist(source, hdu, "<HDUList>")
    label = os.path.basename(os.fspath(source))
    with fits.open(source, memmap=False) as hdul:
        return _image_from_hdulist(hdul, hdu, label)


def _image_from_hdulist(hdul, hdu, label):
    if hdu is not None:
        try:
            return _image_from_hdu(hdul[hdu], label)
        except (KeyError, IndexError) as exc:
            raise ValueError(
                f"{label}: HDU {hdu!r} not found; the file has HDUs "
                f"{[h.name for h in hdul]}."
            ) from exc
    for h in hdul:
        if isinstance(h, (fits.PrimaryHDU, fits.ImageHDU, fits.CompImageHDU)) and (
            h.data is not None and h.data.ndim >= 2
        ):
            return _image_from_hdu(h, label)
    raise ValueError(
        f"{label}: no 2-D image HDU found (HDUs: {[h.name for h in hdul]}). "
        "Pass `hdu=` to select the PSF image."
    )


def _image_from_hdu(h, label):
    data = h.data
    if data is None:
        raise ValueError(f"{label}: HDU {h.name!r} has no data.")
    data = np.asarray(data, dtype=np.float64)
    while data.ndim > 2 and data.shape[0] == 1:
        data = data[0]
    if data.ndim != 2:
        raise ValueError(
            f"{label}: HDU {h.name!r} has a {data.ndim}-D image of shape "
            f"{data.shape}; a 2-D PSF image is required (use read_psf_stack "
            "with one HDU per energy for cubes)."
        )
    return data, h.header, label, h.name


def psf_pixel_scale(header, label: str = "PSF image") -> float:
    """Pixel size in arcsec of a FITS image header.

    Uses the celestial WCS (``CDELTi``, ``CDi_j`` or ``PCi_j`` x ``CDELTi``,
    with ``CUNITi``, default degrees) if present, otherwise the first of
    :data:`PIXEL_SIZE_KEYWORDS` found, interpreted as arcsec.

    Raises
    ------
    ValueError
        If no scale can be found, or the pixels are not square.
    """
    wcs, header = _wcs2(header)
    scales = None
    if wcs is not None and wcs.has_celestial:
        from astropy.wcs.utils import proj_plane_pixel_scales

        cel = wcs.celestial
        scales = np.abs(proj_plane_pixel_scales(cel)) * 3600.0  # deg -> arcsec
    elif wcs is not None and any(
        str(header.get(f"CDELT{i}", "")) != "" or f"CD{i}_{i}" in header
        for i in (1, 2)
    ):
        # linear WCS with angular units (e.g. CUNIT = 'arcsec')
        units = [str(header.get(f"CUNIT{i}", "")).strip().lower() for i in (1, 2)]
        if all(u in _DEG_PER_UNIT for u in units):
            from astropy.wcs.utils import proj_plane_pixel_scales

            raw = np.abs(proj_plane_pixel_scales(wcs))  # in header units
            scales = np.array([raw[i] * _DEG_PER_UNIT[units[i]] * 3600.0
                               for i in range(2)])
    if scales is not None and np.all(scales > 0):
        if not np.isclose(scales[0], scales[1], rtol=1e-6):
            raise ValueError(
                f"{label}: pixels are not square ({scales[0]:.6g} x "
                f"{scales[1]:.6g} arcsec); resample the image to square "
                "pixels first."
            )
        return float(scales[0])
    for key in PIXEL_SIZE_KEYWORDS:
        if key in header:
            value = float(header[key])
            if value > 0:
                return value
    raise ValueError(
        f"{label}: cannot determine the pixel size: no celestial WCS "
        f"(CTYPE/CDELT or CD matrix) and none of the keywords "
        f"{list(PIXEL_SIZE_KEYWORDS)} (arcsec). Pass `input_pixel_size=` "
        "(arcsec) explicitly."
    )


def _wcs2(header):
    """``(wcs, header)``: the 2-axis astropy WCS of an image header (None if malformed) and the header it was read
    from (a copy, with CUNIT 'degree' spelled 'deg': wcslib rejects the spelled-out form CIAO writes)."""
    from astropy.wcs import WCS, FITSFixedWarning

    header = header.copy()
    for i in (1, 2):
        if str(header.get(f"CUNIT{i}", "")).strip().lower() in ("degree", "degrees"):
            header[f"CUNIT{i}"] = "deg"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        try:
            return WCS(header, naxis=2), header
        except Exception:  # malformed WCS -> treat as absent
            return None, header


def _celestial_wcs2(header):
    """The 2-axis astropy WCS of an image header if it is celestial, else None."""
    wcs = _wcs2(header)[0]
    return wcs if wcs is not None and wcs.has_celestial and wcs.wcs.lng >= 0 and wcs.wcs.lat >= 0 else None


def psf_axis_flips(header, shape, label: str = "PSF image") -> tuple[bool, bool]:
    """(flip columns, flip rows) that put a PSF image with a celestial WCS in xfusion's orientation: columns
    towards the west (``psf_x``), rows towards the north (``psf_y``), as in a standard sky image (``CDELT1 < 0``,
    ``CDELT2 > 0``). Measured with astropy at the reference pixel (sky offsets of one column and one row step),
    so ``CDELTi``, ``CDi_j``, ``PCi_j``, ``CROTA2`` and swapped RA/Dec axes are all read. An image without a
    celestial WCS is taken as it is (``(False, False)``).

    Raises
    ------
    ValueError
        If the axes are rotated (not along west/east and north/south): only flips are applied.
    """
    wcs = _celestial_wcs2(header)
    if wcs is None:
        return False, False
    c0, r0 = (float(v) - 1.0 for v in wcs.wcs.crpix)
    ref = wcs.pixel_to_world(c0, r0)
    jac = np.empty((2, 2))  # rows (west, north) arcsec, columns (one column step, one row step)
    for k, (dc, dr) in enumerate(((1.0, 0.0), (0.0, 1.0))):
        east, north = ref.spherical_offsets_to(wcs.pixel_to_world(c0 + dc, r0 + dr))
        jac[:, k] = -east.to_value("arcsec"), north.to_value("arcsec")
    diag, off = np.abs(np.diag(jac)), np.abs(jac[[0, 1], [1, 0]])
    ny, nx = shape
    # off-diagonal terms move the outermost taps by more than 1 % of a pixel: a rotation, not a flip
    if not np.all(diag > 0) or np.max(off / diag.min()) * max(nx, ny) / 2 > 0.01:
        angle = float(np.rad2deg(np.arctan2(abs(jac[1, 0]), abs(jac[0, 0]))))
        raise ValueError(
            f"{label}: the image's WCS is rotated: its columns run {angle:.4g} deg from the east-west line (WCS "
            f"matrix, arcsec per column / row: west {jac[0, 0]:.4g} / {jac[0, 1]:.4g}, north {jac[1, 0]:.4g} / "
            f"{jac[1, 1]:.4g}). read_psf only flips axes to put the columns west and the rows north; rotate the "
            "image to a north-up, east-left orientation first (e.g. reproject it onto a WCS with CDELT1 < 0, "
            "CDELT2 > 0 and no rotation), or pass the PSF as a DataArray with psf_x (west) / psf_y (north) "
            "coordinates")
    return bool(jac[0, 0] < 0), bool(jac[1, 1] < 0)


from ..psf_sampling import _make_psf, resample_psf  # noqa: E402,F401 - resampling lives in the core


def read_psf(
    path,
    *,
    pixel_size: float | None = None,
    hdu: int | str | None = None,
    size: int | None = None,
    center: str | tuple[float, float] = "peak",
    input_pixel_size: float | None = None,
) -> xr.DataArray:
    """Read a PSF image from FITS.

    Parameters
    ----------
    path : str, os.PathLike, astropy HDUList or image HDU
        FITS file (``.gz`` fine) or an already-open HDU/HDUList.
    pixel_size : float, optional
        Output pixel size in arcsec.  Default: the native pixel size (no
        resampling when the centre is a pixel centre).
    hdu : int or str, optional
        Image extension; default the first HDU with a >= 2-D image.
    size : int, optional
        Odd output size in pixels (at the output scale), applied to both
        axes.  Default: large enough to keep the whole image.
    center : {"peak", "centroid", "crpix"} or (x, y)
        Where offset (0, 0) is placed.  ``"peak"`` (default, preferred):
        centre of the brightest pixel, so no resampling is needed at the
        native scale.  ``"centroid"``: flux-weighted centroid (sub-pixel;
        implies resampling).  ``"crpix"``: the WCS reference pixel
        (``CRPIX1``, ``CRPIX2``), which must lie inside the image.  A tuple
        gives 0-based (x, y) = (column, row) pixel coordinates.
    input_pixel_size : float, optional
        Override the input pixel size (arcsec).  By default it comes from
        the celestial WCS (CDELT or CD matrix, degrees converted to arcsec)
        or, failing that, from one of the keywords
        :data:`PIXEL_SIZE_KEYWORDS` (arcsec); see :func:`psf_pixel_scale`.

    Returns
    -------
    xarray.DataArray, dims ("psf_x", "psf_y")
        Odd, centred, normalized to sum 1; coordinates in arcsec.
        ``attrs``: ``units`` ("1"), ``pixel_size`` (arcsec),
        ``input_pixel_size`` (arcsec), ``enclosed_fraction`` (fraction of
        the image flux inside the returned stamp), ``center`` (method),
        ``center_pixel`` ((x, y) 0-based in the input image), ``file``,
        ``hdu``, ``n_nonfinite`` (non-finite input pixels set to 0),
        ``wcs_flips`` (axes flipped to put ``psf_x`` west and ``psf_y`` north,
        from the celestial WCS: "none" for a standard sky image).

    Raises
    ------
    ValueError
        No image / no pixel scale / bad centre / even size / a rotated
        celestial WCS (only flips are applied: rotate or reproject first).
    """
    data, header, label, hdu_name = _open_image(path, hdu)
    nonfinite = ~np.isfinite(data)
    n_nonfinite = int(nonfinite.sum())
    if n_nonfinite:
        data = np.where(nonfinite, 0.0, data)
    flip_x, flip_y = psf_axis_flips(header, data.shape, label)
    img = data.T  # (x, y)
    total = float(img.sum())
    if not total > 0:
        raise ValueError(f"{label}: PSF image has non-positive total flux.")
    scale = (float(input_pixel_size) if input_pixel_size is not None
             else psf_pixel_scale(header, label))
    nx, ny = img.shape

    if isinstance(center, str):
        method = center.lower()
        if method == "peak":
            cx, cy = (float(v) for v in np.unravel_index(np.argmax(img), img.shape))
        elif method == "centroid":
            xx = np.arange(nx, dtype=np.float64)
            yy = np.arange(ny, dtype=np.float64)
            cx = float(img.sum(axis=1) @ xx / total)
            cy = float(img.sum(axis=0) @ yy / total)
        elif method == "crpix":
            if "CRPIX1" not in header or "CRPIX2" not in header:
                raise ValueError(f"{label}: center='crpix' but no CRPIX1/2 keywords.")
            cx, cy = float(header["CRPIX1"]) - 1.0, float(header["CRPIX2"]) - 1.0
        else:
            raise ValueError(
                f"center must be 'peak', 'centroid', 'crpix' or (x, y); got {center!r}."
            )
    else:
        method = "user"
        cx, cy = (float(v) for v in center)
    if not (-0.5 <= cx <= nx - 0.5 and -0.5 <= cy <= ny - 0.5):
        raise ValueError(
            f"{label}: PSF centre ({cx:.2f}, {cy:.2f}) (0-based x, y pixels, "
            f"method {method!r}) lies outside the {nx} x {ny} image; choose "
            "center='peak' or 'centroid'."
        )

    attrs = {
        "units": "1",
        "input_pixel_size": scale,
        "center": method,
        "center_pixel": (cx, cy),
        "wcs_flips": ", ".join(n for n, f in (("columns (ran east)", flip_x), ("rows (ran south)", flip_y)) if f)
                     or "none",
        "file": label,
        "hdu": hdu_name,
        "n_nonfinite": n_nonfinite,
    }
    # to xfusion's orientation (psf_x west, psf_y north); center_pixel stays in the input image's pixels
    if flip_x:
        img, cx = img[::-1, :], nx - 1 - cx
    if flip_y:
        img, cy = img[:, ::-1], ny - 1 - cy
    integer_centre = float(cx).is_integer() and float(cy).is_integer()
    same_scale = pixel_size is None or math.isclose(float(pixel_size), scale, rel_tol=1e-9)
    if integer_centre and same_scale:
        # exact crop / zero-pad around the centre pixel, no interpolation
        ix, iy = int(cx), int(cy)
        if size is None:
            half = max(ix, nx - 1 - ix, iy, ny - 1 - iy)
            size = 2 * half + 1
        size = int(size)
        if size < 1 or size % 2 == 0:
            raise ValueError(f"PSF size must be a positive odd integer, got {size}.")
        half = size // 2
        padded = np.zeros((size, size))
        x0, x1 = max(ix - half, 0), min(ix + half + 1, nx)
        y0, y1 = max(iy - half, 0), min(iy + half + 1, ny)
        padded[x0 - (ix - half):x1 - (ix - half), y0 - (iy - half):y1 - (iy - half)] = (
            img[x0:x1, y0:y1]
        )
        kept = float(padded.sum())
        if not kept > 0:
            raise ValueError(f"{label}: no flux inside the requested PSF stamp.")
        attrs["pixel_size"] = scale
        attrs["enclosed_fraction"] = kept / total
        return _make_psf(padded / kept, scale, attrs)

    raw = xr.DataArray(
        img,
        dims=("psf_x", "psf_y"),
        coords={"psf_x": (np.arange(nx) - cx) * scale,
                "psf_y": (np.arange(ny) - cy) * scale},
        attrs=attrs,
    )
    return resample_psf(raw, scale if pixel_size is None else float(pixel_size), size)


def _pad_to(psf: xr.DataArray, n: int) -> xr.DataArray:
    nx, ny = psf.shape
    if nx == n and ny == n:
        return psf
    out = np.zeros((n, n))
    ox, oy = (n - nx) // 2, (n - ny) // 2
    out[ox:ox + nx, oy:oy + ny] = psf.values
    return _make_psf(out, float(psf.attrs["pixel_size"]), dict(psf.attrs))


def read_psf_stack(
    paths_or_hdus: Sequence,
    energies,
    *,
    pixel_size: float | None = None,
    size: int | None = None,
    energy_edges=None,
    **kwargs,
) -> xr.DataArray:
    """Read one PSF image per energy band into an energy-dependent PSF.

    Parameters
    ----------
    paths_or_hdus : sequence
        Files, HDULists or image HDUs, one per band (anything
        :func:`read_psf` accepts).
    energies : array_like, shape (n_energy,)
        Band centres in keV, strictly increasing.
    pixel_size : float, optional
        Common output pixel size (arcsec).  Default: the native pixel size of
        the first image; images with another native scale are resampled.
    size : int, optional
        Common odd output size.  Default: the largest of the individual
        sizes, smaller stamps being zero-padded (flux unchanged).
    energy_edges : array_like, shape (n_energy, 2), optional
        ``[lo, hi]`` of each band (keV); adds ``psf_energy_lo`` /
        ``psf_energy_hi`` coordinates.
    **kwargs
        Passed to :func:`read_psf` (``hdu``, ``center``, ``input_pixel_size``).

    Returns
    -------
    xarray.DataArray, dims ("psf_energy", "psf_x", "psf_y")
        Each energy slice sums to 1; coordinate ``psf_energy`` (keV) = ``energies``.
        Accepted as is by :func:`xfusion.observation` (``psf=``), whose model
        interpolates linearly in energy between the bands.  ``attrs["enclosed_fraction"]`` is an
        array (one per band), ``attrs["files"]`` the source labels.
    """
    energies = np.atleast_1d(np.asarray(energies, dtype=np.float64))
    items = list(paths_or_hdus)
    if energies.ndim != 1 or energies.size != len(items):
        raise ValueError(
            f"Got {len(items)} PSF images but {energies.size} energies; "
            "give one band-centre energy (keV) per image."
        )
    if energies.size > 1 and np.any(np.diff(energies) <= 0):
        raise ValueError("PSF stack energies must be strictly increasing (keV).")
    psfs = []
    for item in items:
        psf = read_psf(item, pixel_size=pixel_size, size=size, **kwargs)
        if pixel_size is None:
            pixel_size = float(psf.attrs["pixel_size"])
        psfs.append(psf)
    n = max(max(p.shape) for p in psfs) if size is None else int(size)
    psfs = [_pad_to(p, n) for p in psfs]
    stack = np.stack([p.values for p in psfs])
    coords = {
        "psf_energy": xr.Variable("psf_energy", energies, {"units": "keV"}),
        "psf_x": psfs[0]["psf_x"].variable,
        "psf_y": psfs[0]["psf_y"].variable,
    }
    if energy_edges is not None:
        edges = np.asarray(energy_edges, dtype=np.float64).reshape(energies.size, 2)
        coords["psf_energy_lo"] = xr.Variable("psf_energy", edges[:, 0], {"units": "keV"})
        coords["psf_energy_hi"] = xr.Variable("psf_energy", edges[:, 1], {"units": "keV"})
    attrs = {
        "units": "1",
        "pixel_size": float(pixel_size),
        "enclosed_fraction": np.array([p.attrs["enclosed_fraction"] for p in psfs]),
        "files": [str(p.attrs.get("file", "")) for p in psfs],
    }
    return xr.DataArray(stack, dims=("psf_energy", "psf_x", "psf_y"),
                        coords=coords, name="psf", attrs=attrs)
