"""Export a fused cube as a FITS image cube with a world coordinate system.

Layout of the file written by :func:`write_fits_cube`:

* primary HDU: the cube, ``NAXIS1`` = x, ``NAXIS2`` = y, ``NAXIS3`` = energy (so in
  NumPy the array is (energy, y, x)), float32 (float64 kept if the variable is float64),
  ``BUNIT`` from the variable's units (``ph cm-2 s-1`` is written ``photon cm-2 s-1``, a
  flux per voxel: per fused pixel and per energy bin; a JWST cube's ``MJy/sr`` is a surface
  brightness, written as it is).
* spatial axes, with a tangent point (stored on the cube, or ``center=(ra, dec)``): a celestial gnomonic WCS
  ``RA---TAN``/``DEC--TAN`` with tangent point ``CRVAL = center`` at the x = y = 0 offset
  (``CRPIX`` may be fractional), ``CDELT1 = -pixel/3600``, ``CDELT2 = +pixel/3600`` deg
  (``pixel`` and ``CRPIX`` from the ``x``/``y`` coordinate values, which must increase
  uniformly: :func:`xfusion.observation.axis_spacing`)
  (x grows towards the west like :func:`xfusion.io.read_events` offsets, so RA decreases
  with the column index: the usual east-left orientation), ``RADESYS = 'ICRS'``.
  Without a tangent point: a linear offset WCS, ``CTYPE1 = 'XOFFSET'``, ``CTYPE2 = 'YOFFSET'``,
  ``CUNIT = 'arcsec'``, world coordinate = the cube's own ``x``/``y`` coordinate values
  (arcsec, x west, y north).
* spectral axis: channel centres in the cube's spectral unit (:func:`xfusion.observation.spectral_unit`:
  ``attrs["spectral_unit"]`` and the ``units`` of the energy coordinates, which must agree; none: keV).
  An X-ray cube is energy in keV (below); a wavelength cube (a JWST result, ``um``) is written the
  same way with ``CTYPE3 = 'WAVE'`` (``'WAVE-TAB'``), ``CUNIT3 = 'um'`` and the edges in the table
  ``WAVELENGTHS`` (``WAVE_MIN``, ``WAVE_MAX``, um) in place of ``ENERGIES``. Uniform channels -- every edge
  within 0.1 % of a channel width plus float32 rounding of the linear grid, so float32 EBOUNDS count as
  uniform: linear, ``CTYPE3 = 'ENER'`` (the FITS WCS Paper III spectral type, which
  ``astropy.wcs.WCS(header).has_spectral`` / ``.spectral`` recognise), ``CUNIT3 = 'keV'``,
  ``CRPIX3 = 1``, ``CRVAL3`` = first centre, ``CDELT3`` = mean width; the exact edges are
  in ``ENERGIES``. (wcslib converts a spectral axis to SI: ``WCS.wcs_pix2world`` returns
  J (m for a wavelength); ``WCS.pixel_to_world(...)[-1].to("keV")`` gives keV.) Non-uniform channels: the FITS tabular algorithm (WCS Paper III), which
  needs the 4-3 form of the spectral type, ``CTYPE3 = 'ENER-TAB'``, with the centres in the
  one-row table extension ``WCS-TAB`` (column ``COORDS``, ``PS3_0``/``PS3_1``); astropy
  reads it with ``astropy.wcs.WCS(header, fobj=hdulist)`` (between two pixels the
  energy is interpolated linearly between the centres).
* ``ENERGIES`` binary table (always; ``WAVELENGTHS`` for a um cube): ``CHANNEL`` (1-based index along
  NAXIS3), ``E_MIN``, ``E_MAX`` (keV; ``WAVE_MIN``, ``WAVE_MAX`` in um), the exact channel edges.
* ``CREATOR = 'xfusion VERSION'`` in the primary header: the marker by which ``overwrite=True``
  knows the file is xfusion's. Only such a file is replaced; anything else at the path (a text
  file, someone's FITS image) is refused (:mod:`xfusion.io.fits_output`), and the file is written
  to a temporary sibling renamed when complete.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr
from astropy.io import fits

from .fits_output import check_fits_output, creator
from .fits_output import writeto as _writeto

__all__ = ["write_fits_cube"]

_FITS_UNITS = {"ph cm-2 s-1": "photon cm-2 s-1", "count": "count"}
#: per spectral unit: CTYPE3 (FITS WCS Paper III), the quantity, the edges table and its columns
_SPECTRAL = {"keV": ("ENER", "energy", "ENERGIES", "E_MIN", "E_MAX"),
             "um": ("WAVE", "wavelength", "WAVELENGTHS", "WAVE_MIN", "WAVE_MAX")}


def _spectral_unit(result, da, ed):
    """The cube's spectral unit, ``"keV"`` or ``"um"``: every one it declares (``attrs["spectral_unit"]`` of the
    Dataset or the variable, the ``units`` of ``ed``/``ed_lo``/``ed_hi``) must be the same; none declared: keV."""
    found = {str(u) for u in (getattr(result, "attrs", {}).get("spectral_unit"), da.attrs.get("spectral_unit"),
                              *(da[c].attrs.get("units") for c in (ed, f"{ed}_lo", f"{ed}_hi") if c in da.coords))
             if u is not None}
    if len(found) > 1 or found - set(_SPECTRAL):
        raise ValueError(f"the cube's spectral axis is declared in {', '.join(sorted(found))} (attrs['spectral_unit'] "
                         f"and the units of {ed}/{ed}_lo/{ed}_hi): a FITS cube is written in keV (X-ray energy) or um "
                         "(wavelength), one of them; convert the axis (astropy: edges.to(u.um, "
                         "equivalencies=u.spectral())) and give every coordinate that unit. Nothing was written.")
    return found.pop() if found else "keV"


def _dim(da, prefix):
    found = [d for d in da.dims if d == prefix or d.startswith(prefix + "_")]
    if len(found) != 1:
        raise ValueError(f"cannot find the {prefix!r} dimension of {da.name!r} (dims {da.dims})")
    return found[0]


def _pixel(da, dim):
    """Pixel size from the coordinate values (uniform, increasing; see :func:`xfusion.observation.axis_spacing`)."""
    from ..observation import axis_spacing

    return axis_spacing(da[dim], dim)


def _center(result, da, xd, center, pixel):
    """The tangent point to write: the one stored on the cube (``center_ra``/``center_dec`` on its x coordinate,
    the variable or the Dataset), else ``center``; a ``center`` that contradicts the stored one (by more than
    1e-3 pixel) is refused: the offsets are about the stored point, so another CRVAL would move every pixel."""
    from ..observation import _center_degrees

    stored = None
    for attrs in (da[xd].attrs, da.attrs, getattr(result, "attrs", {})):
        if attrs.get("center_ra") is not None and attrs.get("center_dec") is not None:
            stored = _center_degrees((float(attrs["center_ra"]), float(attrs["center_dec"])))
            break
    given = None if center is None else _center_degrees(center)
    if stored is None or given is None:
        return stored if given is None else given
    r0, d0, r1, d1 = np.deg2rad([*stored, *given])
    sep = float(np.rad2deg(np.arccos(np.clip(np.sin(d0) * np.sin(d1) + np.cos(d0) * np.cos(d1) * np.cos(r1 - r0),
                                             -1, 1))) * 3600)
    if sep > 1e-3 * pixel:
        raise ValueError(
            f"center={given} deg contradicts the tangent point stored on the cube ({stored[0]:.6f}, {stored[1]:.6f}) "
            f"deg, {sep:.3g} arcsec apart: its x/y offsets are about the stored point, so every pixel would be "
            "written that far off. Omit center= (the stored one is used), or re-bin the events about the other "
            "centre and fuse again")
    return stored


def write_fits_cube(result, path, *, variable="flux", center=None, overwrite=False) -> Path:
    """Write a fused cube (or any (x, y, energy) variable of a result) as a FITS image cube.

    Parameters
    ----------
    result : xarray.Dataset or DataArray
        A :func:`xfusion.fuse` result (or a DataArray with x, y, energy dims and
        ``energy_lo``/``energy_hi`` coords). Dims may carry suffixes (``x_spectral``,
        ``energy_spatial``) for the instrument-grid variables. The spectral axis is written in the
        cube's unit: keV (``ENER``) or, for a JWST result (``spectral_unit = 'um'``), wavelength in um
        (``WAVE``); a cube whose declared units disagree is refused (module docstring).
    path : str or os.PathLike
        Output file.
    variable : str
        Variable of ``result`` to write (default ``"flux"``).
    center : (float, float) deg, (Quantity, Quantity) or astropy SkyCoord, optional
        (RA, Dec) of the tangent point (offset x = y = 0). Default: the one stored on the cube
        (``center_ra``/``center_dec`` of its ``x`` coordinate, as :func:`xfusion.fuse` results of
        observations with a ``center`` carry, or of the variable / Dataset); one that contradicts
        the stored one is refused. Without either, the spatial axes are linear offsets in arcsec
        (see module docstring).
    overwrite : bool
        Replace an existing file, only if xfusion wrote it (``CREATOR = 'xfusion ...'``); any
        other file at ``path`` is refused even then. Checked before anything is computed.

    Returns
    -------
    pathlib.Path
    """
    check_fits_output(path, overwrite, "FITS cube")
    da = result[variable] if isinstance(result, xr.Dataset) else result
    xd, yd, ed = _dim(da, "x"), _dim(da, "y"), _dim(da, "energy")
    if da.ndim != 3:
        raise ValueError(f"{variable!r} must be a 3D (x, y, energy) cube; got dims {da.dims}")
    unit = _spectral_unit(result, da, ed)
    ctype, quantity, table, col_lo, col_hi = _SPECTRAL[unit]
    for c in (f"{ed}_lo", f"{ed}_hi"):
        if c not in da.coords:
            raise ValueError(f"{variable!r} needs {quantity} edges: coordinate {c!r} ({unit}) is missing")
    values = np.asarray(da.transpose(ed, yd, xd).values)
    values = values if values.dtype == np.float64 else values.astype(np.float32)
    lo = np.asarray(da[f"{ed}_lo"].values, dtype=np.float64)
    hi = np.asarray(da[f"{ed}_hi"].values, dtype=np.float64)
    n_e = lo.size
    x = np.asarray(da[xd].values, dtype=np.float64)
    y = np.asarray(da[yd].values, dtype=np.float64)
    px, py = _pixel(da, xd), _pixel(da, yd)
    center = _center(result, da, xd, center, min(px, py))

    hdu = fits.PrimaryHDU(values)
    h = hdu.header
    h["WCSAXES"] = 3
    if center is not None:
        ra, dec = center
        h["CTYPE1"], h["CTYPE2"] = ("RA---TAN", "gnomonic projection"), ("DEC--TAN", "gnomonic projection")
        h["CUNIT1"], h["CUNIT2"] = "deg", "deg"
        h["CRPIX1"] = (1.0 - x[0] / px, "pixel of the tangent point (x offset 0)")
        h["CRPIX2"] = (1.0 - y[0] / py, "pixel of the tangent point (y offset 0)")
        h["CRVAL1"], h["CRVAL2"] = (ra, "[deg] RA of the tangent point"), (dec, "[deg] Dec of the tangent point")
        h["CDELT1"] = (-px / 3600.0, "[deg] x grows towards the west")
        h["CDELT2"] = (py / 3600.0, "[deg] y grows towards the north")
        h["RADESYS"] = "ICRS"
    else:
        h["CTYPE1"], h["CTYPE2"] = ("XOFFSET", "tangent-plane offset, west"), ("YOFFSET", "tangent-plane offset, north")
        h["CUNIT1"], h["CUNIT2"] = "arcsec", "arcsec"
        h["CRPIX1"], h["CRPIX2"] = 1.0, 1.0
        h["CRVAL1"], h["CRVAL2"] = (float(x[0]), "[arcsec] x offset of the first pixel"), (
            float(y[0]), "[arcsec] y offset of the first pixel")
        h["CDELT1"], h["CDELT2"] = (px, "[arcsec]"), (py, "[arcsec]")
    widths = hi - lo
    centres = 0.5 * (lo + hi)
    edges = np.append(lo, hi[-1])
    step = (hi[-1] - lo[0]) / n_e
    linear = lo[0] + step * np.arange(n_e + 1)
    tol = 1e-3 * step + 2 * float(np.finfo(np.float32).eps) * np.abs(edges)  # float32 EBOUNDS are uniform
    contiguous = n_e == 1 or np.allclose(lo[1:], hi[:-1], rtol=0, atol=1e-6 * widths.min())
    uniform = contiguous and bool(np.all(np.abs(edges - linear) <= tol))
    h["CUNIT3"] = unit
    extra = []
    if uniform:
        h["CTYPE3"] = (ctype, f"{quantity} channel centres (FITS WCS Paper III)")
        h["CRPIX3"] = 1.0
        h["CRVAL3"] = (float(lo[0] + 0.5 * step), f"[{unit}] centre of the first channel")
        h["CDELT3"] = (float(step), f"[{unit}] channel width")
    else:
        h["CTYPE3"] = (f"{ctype}-TAB", "channel centres tabulated in WCS-TAB")
        h["CRPIX3"], h["CRVAL3"], h["CDELT3"] = 1.0, 1.0, 1.0
        h["PS3_0"] = ("WCS-TAB", "EXTNAME of the coordinate table")
        h["PS3_1"] = ("COORDS", "column of the coordinate array")
        h["PV3_1"], h["PV3_2"], h["PV3_3"] = 1, 1, 1
        tab = fits.BinTableHDU.from_columns(
            [fits.Column(name="COORDS", format=f"{n_e}D", unit=unit, dim=f"(1,{n_e})",
                         array=centres.reshape(1, n_e, 1))],
            name="WCS-TAB")
        extra.append(tab)
    units = str(da.attrs.get("units", ""))
    if units:
        h["BUNIT"] = (_FITS_UNITS.get(units, units), "per voxel (pixel x energy bin)" if units in _FITS_UNITS else
                      "surface brightness" if units == "MJy/sr" else "")
    h["BTYPE"] = str(da.name or variable)
    attrs = result.attrs if isinstance(result, xr.Dataset) else {}
    for key, fkey in (("xfusion_version", "XFUSVERS"), ("regularization", "XFREGUL"), ("method", "XFMETHOD"),
                      ("iterations", "XFNITER")):
        if key in attrs:
            h[fkey] = attrs[key]
    h["CREATOR"] = (creator(), "xfusion.io.fits_cube")

    energies = fits.BinTableHDU.from_columns(
        [fits.Column(name="CHANNEL", format="J", array=np.arange(1, n_e + 1, dtype=np.int32)),
         fits.Column(name=col_lo, format="D", unit=unit, array=lo),
         fits.Column(name=col_hi, format="D", unit=unit, array=hi)],
        name=table)
    return _writeto([hdu, energies, *extra], path, overwrite, "FITS cube")
