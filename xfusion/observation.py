"""Observation data model: schema, builder, validation.

One observation is one :class:`xarray.Dataset`:

================  =================================  ========  ==========================================
variable          dims                               units     meaning
================  =================================  ========  ==========================================
``counts``        (x, y, energy)                     count     the data cube (energy last, C-contiguous)
``exposure``      ()                                 s         exposure time
``effective_area``() or (energy_true) or             cm2       ARF: area as a function of TRUE energy;
                  (x, y, energy_true)                          optionally vignetted
``psf``           (psf_x, psf_y) or                  1         spatial response, odd-sized, centred,
                  (psf_energy, psf_x, psf_y)                   sums to 1 (optional); a stack over
                                                               bands at ``psf_energy`` (keV) varies
                                                               with energy (linear interpolation)
``response``      (energy_offset) or                 1         spectral response: a stationary 1D kernel
                  (energy_true, energy)                        (offsets in keV) or a redistribution
                                                               matrix (RMF) (optional)
``mask``          (x, y, energy)                     bool      True where a voxel is valid (optional)
================  =================================  ========  ==========================================

Optional ``background_rate`` (dims like counts, count s-1): a known additive background per
voxel, expected counts = forward(Z) + rate x exposure.

Detector-pixel observations (XRISM Resolve binned by PIXEL) have ``counts`` over
``("pixel", "energy")`` instead, coords ``pixel`` (detector numbers) and ``det_x``/``det_y``
(arcsec, detector frame, ``pixel_size`` attribute = side of a detector pixel), 0-d variables
``roll`` (deg) and ``array_x``/``array_y`` (arcsec, sky offset of the array centre), optionally
``exposure_fraction`` (pixel) and an ``effective_area`` over (pixel, energy_true); see
:func:`observation` and :mod:`xfusion.operators.footprint`.

Coordinates: ``x``, ``y`` pixel centres in arcsec (tangent-plane offsets; the pixel size
is ``x.attrs["pixel_size"]``), ``energy`` channel centres in keV with explicit edges
``energy_lo``/``energy_hi``; ``energy_true`` (+ ``energy_true_lo``/``_hi``) for the
model-side energy of the ARF and RMF; ``psf_x``/``psf_y`` offsets of PSF pixel centres in
arcsec; ``energy_offset`` kernel sample offsets in keV. Edges are always stored, never
inferred from centres.

Units: :func:`observation` accepts an astropy ``Quantity`` for every physical number (energy
edges, pixel sizes, exposure, effective area, kernel spacing) and converts it to keV, arcsec,
s and cm2; plain numbers are taken in those units, and implausible ones are refused with the
likely mistake named (edges above ``MAX_PLAIN_KEV`` look like eV, angles below
``MIN_PLAIN_ARCSEC`` like degrees). How each input was given is recorded in
``attrs["input_units"]`` (JSON). A plain PSF array needs ``psf_pixel_size``: its sampling is
never assumed. ``center=(ra, dec)`` records the tangent point of the offsets
(``center_ra``/``center_dec`` on the Dataset and on ``x``/``y``); :func:`celestial_wcs` gives
the WCS.

NaN counts are refused: mark invalid voxels with ``mask`` instead (explicit, never
patched). PSFs must be odd-sized and sum to 1 within 1e-3 (refused otherwise, with the fix
in the message): a PSF stamp that lost flux outside its edges should be renormalized by
the user knowingly; :func:`validate` applies the same value rules (finite, >= 0, sums to 1) to a
Dataset's ``psf``.

Counts are photon counts: a Quantity or DataArray ``units`` other than counts (or
dimensionless), e.g. a rate in ct/s, is refused. Per-voxel arrays (``mask``, ``background``)
given as plain arrays are read in the layout of ``counts`` as given and reordered exactly like
it; DataArrays by their dims and their own ``energy`` coordinate. A counts DataArray's ``energy``
coordinate must lie in the bins of ``energy_edges`` (a cube stored from high to low energy is
reordered by it; one on other channels is refused).
"""
from __future__ import annotations

import json
import numbers
import os

import numpy as np
import xarray as xr

SCHEMA_VERSION = "1"
CUBE_DIMS = ("x", "y", "energy")
#: dims of the counts of a detector-pixel observation (e.g. XRISM Resolve binned by PIXEL)
PIXEL_DIMS = ("pixel", "energy")
PSF_NORM_TOL = 1e-3
REL_TOL = 1e-6
#: channel edges of two grids coincide when they differ by less than EDGE_TOL channel widths plus
#: FLOAT32_REL times the energy: real EBOUNDS are float32 (off by up to half an ulp, ~2e-7 keV at
#: 6 keV), while a genuinely misaligned edge is off by a sizeable fraction of a channel
EDGE_TOL = 1e-3
FLOAT32_REL = 2 * float(np.finfo(np.float32).eps)
#: a coarse channel edge NESTS on a fine one (the coarse channel groups whole fine channels: fusion_grid, align,
#: common_channel_edges) when they differ by less than NEST_TOL fine channel widths plus FLOAT32_REL times the energy,
#: the 1 % within which observation_from_files snaps energy_edges= onto EBOUNDS. Real EBOUNDS need more than EDGE_TOL:
#: EPIC-pn's nominal edges at 3.0-3.2 keV sit 1-6 meV (0.1-0.55 % of a 1 eV microcalorimeter channel) off round
#: values. The cost: where the coarse counts are modelled as sums of fine channels (no response: integer grouping;
#: the baselines), a fine channel straddling a coarse edge by d < 1 % is counted wholly on one side, misplacing a
#: fraction d of that one channel's flux (d / v of a coarse channel of v fine ones for a smooth spectrum). With an RMF
#: the coarse model is the RMF on its own EBOUNDS channels and the offset does not enter. Both are far below the
#: energy-scale calibration of either instrument (tenths of an eV for a microcalorimeter, eV for a CCD).
NEST_TOL = 1e-2


def edge_tolerance(edges, width=None, rel=EDGE_TOL):
    """Absolute tolerance (keV) for matching each of ``edges`` (keV) with another grid's edges.

    ``rel * width + FLOAT32_REL * |edge|`` with ``width`` the narrowest channel (keV)
    of the finer grid (default: of ``edges``). ``rel=EDGE_TOL`` (the same grid): accepts
    float32-rounded edges, refuses edges off by more than ~0.1 % of a channel;
    ``rel=NEST_TOL`` (coarse channels nesting in fine ones): 1 % of a fine channel.
    """
    e = np.asarray(edges, dtype=np.float64)
    w = float(np.min(np.diff(e))) if width is None else float(width)
    return rel * w + FLOAT32_REL * np.abs(e)


def seam_gaps(lo, hi):
    """Gaps between consecutive bins ``[lo[i], hi[i]]`` (keV) and the seams that are real gaps.

    Returns ``(gap, bad)``: ``gap[i] = lo[i + 1] - hi[i]`` (keV, negative for an overlap) and the
    indices ``i`` of the seams where ``|gap[i]|`` exceeds ``EDGE_TOL`` times the narrower of the two
    bins plus ``FLOAT32_REL * |E|`` -- the tolerance of :func:`edge_tolerance`. Smaller seams are the
    rounding of float32 files (``E_MAX = E_MIN + width`` computed in float32 misses the next
    ``E_MIN`` by 1-2 ulps, up to 1.9e-6 keV at 30 keV); readers close them by keeping ``lo[i + 1]``
    (the upper bin's lower edge, which is what :func:`energy_edges` already uses: edges are
    ``lo`` plus the last ``hi``), so grids stay strictly contiguous downstream.
    """
    lo = np.asarray(lo, dtype=np.float64)
    hi = np.asarray(hi, dtype=np.float64)
    if lo.size < 2:
        return np.zeros(0), np.zeros(0, dtype=np.int64)
    gap = lo[1:] - hi[:-1]
    width = hi - lo
    tol = EDGE_TOL * np.minimum(width[:-1], width[1:]) + FLOAT32_REL * np.maximum(np.abs(lo[1:]), np.abs(hi[:-1]))
    return gap, np.flatnonzero(~(np.abs(gap) <= tol))


# --------------------------------------------------------------------------- units
#: the unit of a plain number for each kind of input; an astropy Quantity is converted to it
UNITS = {"energy": "keV", "angle": "arcsec", "time": "s", "area": "cm2"}
#: plain energies above this (keV) are refused as "looks like eV"
MAX_PLAIN_KEV = 100.0
#: plain angles below this (arcsec) are refused as "looks like degrees"
MIN_PLAIN_ARCSEC = 0.01


def _is_quantity(v):
    return hasattr(v, "unit") and hasattr(v, "to_value")


def _to_unit(value, unit, what):
    """Plain value(s) in ``unit`` and a note of how ``value`` was given.

    ``value``: a number or array (taken to be in ``unit`` already), an astropy Quantity
    (converted), or a 0-d xarray DataArray whose ``units`` attribute, if any, is converted
    the same way (e.g. ``exposure`` or a scalar ``effective_area`` of another observation).
    Returns ``(value, note)``; ``note`` is e.g. ``"ks (Quantity)"`` or ``"s (plain number)"``.
    """
    if isinstance(value, xr.DataArray):
        if value.ndim != 0:
            raise ValueError(f"{what}: expected a number, got a DataArray with dims {value.dims}")
        given = value.attrs.get("units")
        value = value.values[()]
        if given is not None and str(given) != unit:
            from astropy import units as u

            try:
                value = float(value) * u.Unit(str(given).replace("^", "**"))
            except ValueError as exc:
                raise ValueError(f"{what} has units {given!r}, which astropy cannot read; convert it to {unit}") from exc
        elif given is not None:
            return value, f"{unit} (DataArray units)"
    if _is_quantity(value):
        from astropy import units as u

        try:
            out = value.to_value(u.Unit(unit))
        except u.UnitConversionError as exc:
            raise ValueError(f"{what} is in {value.unit}, which cannot be converted to {unit}") from exc
        return out, f"{value.unit.to_string()} (Quantity)"
    return value, f"{unit} (plain number)"


def _plausible_energies(edges, what, note):
    """Plain keV values above MAX_PLAIN_KEV were almost certainly meant as eV."""
    if note.endswith("(plain number)") and edges.size and np.nanmax(edges) > MAX_PLAIN_KEV:
        raise ValueError(
            f"{what} go up to {np.nanmax(edges):g}, which looks like eV: plain numbers are keV. "
            f"Pass {what} * astropy.units.eV, or divide them by 1000"
        )


def _plausible_angle(value, what, note):
    """Plain arcsec values below MIN_PLAIN_ARCSEC were almost certainly meant as degrees."""
    if note.endswith("(plain number)") and value < MIN_PLAIN_ARCSEC:
        raise ValueError(
            f"{what}={value:g} looks like degrees ({value * 3600:g} arcsec if so): plain numbers are arcsec. "
            f"Pass {what}={value:g} * astropy.units.deg, or the value in arcsec"
        )


#: spectral axes xfusion knows: X-ray energy (keV, the default) and wavelength (um, JWST; see xfusion.jwst).
#: The dimension is called ``energy`` either way; its coordinates' ``units`` (and ``attrs["spectral_unit"]``)
#: say which quantity it is.
SPECTRAL_UNITS = {"keV": "energy", "um": "wavelength"}


def spectral_unit(ds, strict=True):
    """Unit of the spectral axis of an observation or result: ``attrs["spectral_unit"]``, else the ``units`` of its
    ``energy`` coordinate, else None (no spectral axis, e.g. an imager's filter stack without one). A unit other
    than those of ``SPECTRAL_UNITS`` is refused (``strict``) or returned as None (left to :func:`validate`)."""
    unit = ds.attrs.get("spectral_unit")
    if unit is None and "energy" in getattr(ds, "coords", {}):
        unit = ds["energy"].attrs.get("units")
    if unit is not None and str(unit) not in SPECTRAL_UNITS and not strict:
        return None
    if unit is not None and str(unit) not in SPECTRAL_UNITS:
        raise ValueError(f"spectral axis of '{ds.attrs.get('name', '?')}' is in {unit!r}; xfusion knows "
                         f"{', '.join(f'{u} ({q})' for u, q in SPECTRAL_UNITS.items())}. Convert it with astropy "
                         "(e.g. edges.to(u.um, equivalencies=u.spectral()))")
    return None if unit is None else str(unit)


def check_spectral_units(*datasets):
    """Refuse datasets whose spectral axes are different quantities (keV energy vs um wavelength).

    xfusion never converts between energy and wavelength implicitly: the channel order reverses
    and bin widths change non-linearly, so a silent conversion would misplace every response.
    """
    units = [(ds.attrs.get("name", f"#{i}"), spectral_unit(ds, strict=False)) for i, ds in enumerate(datasets)]
    known = {u for _, u in units if u is not None}
    if len(known) > 1:
        desc = ", ".join(f"'{n}' in {u} ({SPECTRAL_UNITS[u]})" for n, u in units if u is not None)
        raise ValueError(f"spectral axes do not match: {desc}. xfusion does not convert between X-ray energy and "
                         "wavelength implicitly; convert one of them first (astropy: "
                         "edges.to(u.um, equivalencies=u.spectral()); note that the channel order reverses)")
    return known.pop() if known else None


def _positive_number(value, label, unit):
    """A positive finite float from a number, Quantity or 0-d DataArray; plus its unit note."""
    if value is None:
        raise ValueError(f"{label} is required ({unit})")
    value, note = _to_unit(value, unit, label)
    if np.ndim(value) == 0 and isinstance(value, (numbers.Real, np.ndarray, np.generic)):
        value = value.item() if isinstance(value, (np.ndarray, np.generic)) else value
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not np.isfinite(value) or value <= 0:
        raise ValueError(f"{label} must be a positive finite number ({unit}); got {value!r}")
    return float(value), note


def _center_degrees(center):
    """(RA, Dec) in degrees from a pair of numbers (deg) or Quantities, or an astropy SkyCoord."""
    if hasattr(center, "icrs") and hasattr(center, "ra"):
        c = center.icrs
        ra, dec = float(c.ra.deg), float(c.dec.deg)
    else:
        try:
            ra, dec = center
        except (TypeError, ValueError) as exc:
            raise ValueError(f"center must be (RA, Dec) in degrees or a SkyCoord; got {center!r}") from exc
        ra, _ = _to_unit(ra, "deg", "center RA")
        dec, _ = _to_unit(dec, "deg", "center Dec")
        ra, dec = float(ra), float(dec)
    if not (np.isfinite(ra) and np.isfinite(dec) and -90.0 <= dec <= 90.0):
        raise ValueError(f"center must be a finite (RA, Dec) in degrees with |Dec| <= 90; got ({ra}, {dec})")
    return ra % 360.0, dec


def pixel_step(values, dim, *, who="", rtol=REL_TOL):
    """The spacing (arcsec) of pixel centres ``values`` along ``dim``: they must be finite and increase evenly.

    The one rule every reader of an ``x``/``y`` coordinate applies (:func:`observation`, :func:`validate`,
    :func:`axis_spacing` for a WCS, the JWST readers): differences ``d = diff(values)`` all > 0 and equal to their
    mean ``(values[-1] - values[0]) / (n - 1)`` within ``rtol``. A descending or uneven axis is refused naming
    ``dim`` (and ``who``, e.g. " of 'pn'") with the fix: sort it, or regrid the cube. Fewer than two values have no
    spacing: returns None (the caller falls back on a ``pixel_size`` attribute).
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    if v.size < 2:
        return None
    d, name = np.diff(v), f"coordinate {dim}{who}"
    if not np.all(np.isfinite(v)):
        raise ValueError(f"{name} has {int(np.sum(~np.isfinite(v)))} non-finite pixel centres; give finite "
                         "offsets (arcsec)")
    if np.any(d <= 0):
        order = "is descending" if np.all(d < 0) else "does not increase"
        raise ValueError(
            f"{name} {order} (from {v[0]:.6g} to {v[-1]:.6g} arcsec over {v.size} pixels); xfusion needs pixel "
            f"centres increasing ({dim} grows {'north' if dim.endswith('y') else 'west'} with the pixel index): sort "
            f"it first, e.g. ds.sortby('{dim}') (and any mask or background given with it)")
    step = (v[-1] - v[0]) / (v.size - 1)
    if not np.allclose(d, step, rtol=rtol, atol=0):
        raise ValueError(
            f"{name} is not uniformly spaced (steps {d.min():.6g} to {d.max():.6g} arcsec); xfusion needs a regular "
            "grid: regrid the cube, or select a regular subset (e.g. isel with a constant step)")
    return float(step)


def axis_spacing(coord, dim=None):
    """Pixel size (arcsec) of a spatial coordinate, from its values (:func:`pixel_step`: increasing, uniform).

    The coordinate values win over a ``pixel_size`` attribute that disagrees with them: xarray keeps the values
    in step with the data through ``coarsen``, strided ``isel`` or ``sel``, but copies the attribute unchanged,
    so after such an operation only the values still say where the pixels are. An attribute that agrees is
    returned as is (so a fused cube's WCS is unchanged to the last digit); a single pixel has only the attribute.
    """
    dim = dim or coord.name
    attr = coord.attrs.get("pixel_size")
    step = pixel_step(coord.values, dim)
    if step is None:
        if attr is None:
            raise ValueError(f"coordinate {dim} has one pixel and no pixel_size attribute: give it pixel_size (arcsec)")
        return float(attr)
    if attr is not None and np.isclose(float(attr), step, rtol=REL_TOL, atol=0):
        return float(attr)
    return step


def celestial_wcs(ds):
    """Celestial WCS (astropy) of the (x, y) pixels of an observation or a fused result.

    Needs the tangent point of the offsets: ``center_ra``/``center_dec`` (deg) in the
    attributes of the ``x`` coordinate (set by :func:`observation` with ``center=``, or from
    event files; carried over to ``xfusion.fuse`` results) or of the Dataset. Returns
    ``None`` without one. The WCS is gnomonic (``RA---TAN``/``DEC--TAN``), its pixel axes
    are (x, y) in that order with 0-based indices in astropy's ``pixel_to_world(ix, iy)``,
    and ``x`` grows towards the west (RA decreases: ``CDELT1 < 0``), ``y`` towards the north.
    The pixel size and reference pixel come from the ``x``/``y`` coordinate values, which must
    increase uniformly (:func:`axis_spacing`: after ``coarsen`` or a strided selection the
    values are right and a copied ``pixel_size`` attribute is not).
    """
    x, y = ds["x"], ds["y"]
    ra = x.attrs.get("center_ra", ds.attrs.get("center_ra"))
    dec = x.attrs.get("center_dec", ds.attrs.get("center_dec"))
    if ra is None or dec is None:
        return None
    from astropy.wcs import WCS

    px, py = axis_spacing(x, "x"), axis_spacing(y, "y")
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.cunit = ["deg", "deg"]
    w.wcs.crval = [float(ra), float(dec)]
    w.wcs.cdelt = [-px / 3600.0, py / 3600.0]
    # FITS pixel (1-based) of the zero offset
    w.wcs.crpix = [1.0 - float(x.values[0]) / px, 1.0 - float(y.values[0]) / py]
    return w


# --------------------------------------------------------------------------- helpers
def _is_lazy(a):
    return hasattr(a, "dask") and hasattr(a, "chunks")


def _edges_coords(edges, dim):
    edges = np.asarray(edges, dtype=np.float64)
    if edges.ndim != 1 or edges.size < 2:
        raise ValueError(f"{dim} edges must be a 1D array of at least 2 values (keV); got shape {edges.shape}")
    if not np.all(np.isfinite(edges)):
        raise ValueError(f"{dim} edges contain non-finite values; pass finite edges in keV")
    if edges[0] < 0:
        raise ValueError(f"{dim} edges start at {edges[0]:g} keV; photon energies are >= 0 (pass the channels' "
                         "energies in keV, not offsets from a line)")
    if np.any(np.diff(edges) <= 0):
        i = int(np.argmax(np.diff(edges) <= 0))
        raise ValueError(
            f"{dim} edges must increase strictly; edge {i} = {edges[i]} keV and edge {i+1} = {edges[i+1]} keV. "
            "Sort the channels by energy and remove empty bins."
        )
    lo, hi = edges[:-1], edges[1:]
    attrs = {"units": "keV"}
    return {
        dim: (dim, 0.5 * (lo + hi), attrs),
        f"{dim}_lo": (dim, lo, attrs),
        f"{dim}_hi": (dim, hi, attrs),
    }


def energy_edges(ds_or_da, dim="energy"):
    """Edges (keV, length n+1) of an energy-like dimension, from its stored lo/hi coords."""
    lo = np.asarray(ds_or_da[f"{dim}_lo"].values, dtype=np.float64)
    hi = np.asarray(ds_or_da[f"{dim}_hi"].values, dtype=np.float64)
    if lo.size > 1 and np.any(np.diff(lo) <= 0):
        order = "descending" if np.all(np.diff(lo) < 0) else "not sorted by energy"
        raise ValueError(f"{dim} bins are {order} ({dim}_lo {lo[0]:g}, {lo[1]:g}, ... keV); xfusion needs them "
                         f"increasing. Sort them, e.g. ds.sortby('{dim}')")
    if lo.size > 1 and not np.allclose(lo[1:], hi[:-1], rtol=0, atol=REL_TOL * np.min(hi - lo)):
        raise ValueError(f"{dim} bins are not contiguous (gaps between {dim}_hi and the next {dim}_lo)")
    return np.append(lo, hi[-1])


def pixel_size(ds, dim="x"):
    """Pixel size in arcsec stored on the ``x``/``y`` coordinate (of a detector-pixel
    observation: the side of its square detector pixels, on ``det_x``)."""
    if dim in ("x", "y") and dim not in ds.coords and "det_x" in ds.coords:
        return float(ds["det_x"].attrs["pixel_size"])
    return float(ds[dim].attrs["pixel_size"])


def is_pixel_observation(ds) -> bool:
    """True for a detector-pixel observation (counts over ``("pixel", "energy")``)."""
    return "counts" in ds and ds["counts"].dims == PIXEL_DIMS


def _pixel_coords(npix, size, ids, det_x, det_y, units):
    """Coords ``pixel`` (ids), ``det_x``/``det_y`` (arcsec, detector frame) of a pixel observation."""
    if det_x is None or det_y is None:
        raise ValueError("a detector-pixel observation needs det_x and det_y: the pixel centres in detector "
                         "coordinates (arcsec offsets from the array centre), e.g. from xfusion.io.read_events("
                         "..., bin_by='pixel')")
    out = {}
    for name, v in (("det_x", det_x), ("det_y", det_y)):
        v, units[name] = _to_unit(v, UNITS["angle"], name)
        v = np.asarray(v, dtype=np.float64)
        if v.shape != (npix,) or not np.all(np.isfinite(v)):
            raise ValueError(f"{name} must be {npix} finite values (arcsec), one per pixel; got shape {v.shape}")
        out[name] = ("pixel", v, {"units": "arcsec", "pixel_size": float(size)})
    ids = np.arange(npix) if ids is None else np.asarray(ids)
    if ids.shape != (npix,) or np.unique(ids).size != npix:
        raise ValueError(f"pixel ids must be {npix} distinct values; got {ids}")
    out["pixel"] = ("pixel", ids, {"long_name": "detector pixel number"})
    return out


def _add_pixel_geometry(ds, roll, array_center, exposure_fraction, units):
    roll = 0.0 if roll is None else roll
    roll, units["roll"] = _to_unit(roll, "deg", "roll")
    if np.ndim(roll) != 0 or not np.isfinite(float(roll)):
        raise ValueError(f"roll must be a finite angle (degrees or Quantity); got {roll!r}")
    ds["roll"] = ((), float(roll), {"units": "deg",
                                    "long_name": "detector roll: +y_det position angle at the array centre, east of north"})
    ac = (0.0, 0.0) if array_center is None else array_center
    try:
        ax, ay = ac
    except (TypeError, ValueError) as exc:
        raise ValueError(f"array_center must be (x, y) arcsec offsets; got {array_center!r}") from exc
    for name, v in (("array_x", ax), ("array_y", ay)):
        v, units[name] = _to_unit(v, UNITS["angle"], name)
        if np.ndim(v) != 0 or not np.isfinite(float(v)):
            raise ValueError(f"array_center must be two finite offsets (arcsec); got {array_center!r}")
        ds[name] = ((), float(v), {"units": "arcsec", "long_name": "sky offset of the detector array centre"})
    if exposure_fraction is not None:
        ds["exposure_fraction"] = (("pixel",), np.asarray(exposure_fraction, np.float64),
                                   {"units": "1", "long_name": "per-pixel exposure / exposure"})
    return ds


def _background_rate(background, ds, cdims, given_shape, given_dims):
    """``background`` (count per data voxel, already in the stored order of counts, see
    :func:`_like_counts`) as a rate (count s-1) per voxel."""
    b = np.array(background, dtype=np.float64)  # a copy: never an alias of the caller's array
    if b.shape != ds["counts"].shape:
        raise ValueError(f"background must have the shape of counts {tuple(given_shape)} {given_dims} (expected "
                         f"background counts per voxel, in the layout of counts, or a DataArray with dims "
                         f"{cdims}); got {b.shape}")
    if not np.all(np.isfinite(b)) or np.any(b < 0):
        raise ValueError("background must be finite and >= 0 (expected background counts per voxel)")
    t = float(ds["exposure"].values)
    if "exposure_fraction" in ds:
        t = t * ds["exposure_fraction"].values[:, None]
    return (cdims, b / t, {"units": "count s-1",
                           "long_name": "known background rate per data voxel (expected counts / exposure)"})


def _check_units(da, expected, what):
    units = da.attrs.get("units")
    if units is None:
        raise ValueError(f"{what} has no units attribute; set .attrs['units'] = '{expected}'")
    if units != expected:
        raise ValueError(f"{what} is in '{units}' but xfusion expects '{expected}'; convert it to {expected}")


def _spatial_coord(n, size, values, dim):
    if values is None:
        values = (np.arange(n) - (n - 1) / 2.0) * size
    values = np.asarray(values, dtype=np.float64)
    if values.shape != (n,):
        raise ValueError(f"coordinate {dim} has {values.size} values for {n} pixels")
    step = pixel_step(values, dim)
    if step is not None and not np.isclose(step, size, rtol=REL_TOL, atol=0):
        raise ValueError(f"coordinate {dim} has pixel centres {step:g} arcsec apart but pixel_size={size:g} arcsec: "
                         f"give pixel_size={step:g} if the coordinate values are right, or the right values")
    return (dim, values, {"units": "arcsec", "pixel_size": float(size)})


def check_psf_values(values, what="psf", fix="pass psf / psf.sum() (or xfusion.io.read_psf, which normalizes) if the "
                                             "stamp contains all the flux"):
    """Refuse a PSF image or a response kernel (any shape) that is not finite, has negative values, or does not sum to 1.

    The rules :func:`observation` applies to a ``psf`` or a 1D response kernel and :func:`validate` to a Dataset's
    ``psf`` (each band of an energy-dependent stack) and kernel: every value finite and >= 0, the sum 1 within
    ``PSF_NORM_TOL`` (one that sums to s scales the model by s, i.e. silently changes the flux). ``what`` names it in
    the message, ``fix`` says how to normalize it.
    """
    values = np.asarray(values, dtype=np.float64)
    if not np.all(np.isfinite(values)) or np.any(values < 0):
        n_bad, n_neg = int(np.sum(~np.isfinite(values))), int(np.sum(values < 0))
        raise ValueError(f"{what} contains negative or non-finite values; it must be finite and >= 0 (found "
                         f"{n_bad} NaN/inf and {n_neg} negative values)")
    total = values.sum()
    if not np.isclose(total, 1.0, rtol=0, atol=PSF_NORM_TOL):
        raise ValueError(f"{what} sums to {total:.6g}, not 1; xfusion refuses unnormalized ones: {fix}")


#: what :func:`check_psf_values` says about a response kernel
KERNEL_CHECK = dict(what="response kernel", fix="pass kernel / kernel.sum()")


#: a PSF coordinate may be off the uniform sampling by this fraction of its spacing
PSF_COORD_TOL = 1e-3


def _psf_by_coords(psf, psf_pixel_size):
    """(values (psf_x, psf_y), spacing) of a PSF DataArray placed by its ``psf_x``/``psf_y`` coordinates (offsets
    from the source position, arcsec): each must be uniform (a descending axis is reversed with its values) with
    the same spacing on both axes (square pixels), and offset 0 must be one of its samples; a stamp whose offset 0
    is not its middle pixel (cropped asymmetrically) is padded with zeros to an odd stamp centred on it (session
    29: the coordinates were dropped but for the x spacing, so such a stamp was silently re-centred, non-square
    pixels squashed, and a descending axis failed later). An axis without a coordinate is taken as centred."""
    values = np.asarray(psf.values, dtype=np.float64)
    steps, starts = {}, {}
    for k, d in enumerate(("psf_x", "psf_y")):
        if d not in psf.coords or psf.sizes[d] < 2:
            continue
        _check_units(psf[d], "arcsec", f"psf coordinate {d}")
        c = np.asarray(psf[d].values, dtype=np.float64)
        if not np.all(np.isfinite(c)):
            raise ValueError(f"psf coordinate {d} has non-finite values")
        if c[-1] < c[0]:  # descending (e.g. x increasing to the east): reverse the axis with its values
            c, values = c[::-1], np.flip(values, axis=k)
        step = (c[-1] - c[0]) / (c.size - 1)
        off = np.abs(c - (c[0] + step * np.arange(c.size)))
        if step <= 0 or np.any(off > PSF_COORD_TOL * step):
            raise ValueError(f"psf coordinate {d} is not uniformly spaced (offsets {c[:4]}...); give the PSF on a regular "
                             "grid of square pixels (xfusion.io.resample_psf)")
        steps[d], starts[d] = step, c[0]
    if not steps:
        return values, psf_pixel_size
    sizes = list(steps.values())
    if len(sizes) == 2 and not np.isclose(sizes[0], sizes[1], rtol=REL_TOL):
        raise ValueError(f"psf pixels are not square: psf_x spacing {sizes[0]} arcsec, psf_y spacing {sizes[1]} "
                         "arcsec; resample the PSF to square pixels first (the model samples it on the square fused "
                         "pixels)")
    if psf_pixel_size is not None and not np.isclose(sizes[0], psf_pixel_size, rtol=REL_TOL):
        raise ValueError(f"psf coords give a {sizes[0]} arcsec pixel but psf_pixel_size={psf_pixel_size}")
    step = sizes[0]
    pads = []
    for k, d in enumerate(("psf_x", "psf_y")):
        n = values.shape[k]
        if d not in starts:
            pads.append((0, 0))
            continue
        i0 = -starts[d] / step  # index of offset 0
        if abs(i0 - round(i0)) > PSF_COORD_TOL:
            raise ValueError(
                f"psf coordinate {d} has no sample at offset 0 (the source position): its samples are at "
                f"{starts[d]:.6g} + i * {step:.6g} arcsec. Give the PSF sampled on pixel centres that include the "
                "source position, e.g. resampled with xfusion.io.resample_psf")
        i0 = int(round(i0))
        h = max(abs(i0), abs(n - 1 - i0))  # half-width of the centred stamp that holds every sample
        pads.append((h - i0, h - (n - 1 - i0)))
    if any(p != (0, 0) for p in pads):
        values = np.pad(values, pads)
    return values, step


def _psf_dataarray(psf, psf_pixel_size, psf_dims=None):
    if isinstance(psf, xr.DataArray) and "psf_energy" in psf.dims:
        # energy-dependent PSF: a stack over bands, linearly interpolated in energy by the model
        if "psf_energy" not in psf.coords:
            raise ValueError("an energy-dependent psf needs a 'psf_energy' coordinate (keV) giving the band energies")
        _check_units(psf["psf_energy"], "keV", "psf coordinate psf_energy")
        e = np.asarray(psf["psf_energy"].values, dtype=np.float64)
        if e.size < 1 or np.any(np.diff(e) <= 0):
            raise ValueError(f"psf_energy must increase strictly; got {e}")
        bands = [_psf_dataarray(psf.isel(psf_energy=i).drop_vars("psf_energy"), psf_pixel_size) for i in range(e.size)]
        out = xr.concat(bands, dim="psf_energy")
        return out.assign_coords(psf_energy=("psf_energy", e, {"units": "keV"})).transpose("psf_energy", "psf_x", "psf_y")
    if isinstance(psf, xr.DataArray):
        if set(psf.dims) != {"psf_x", "psf_y"}:
            raise ValueError(f"psf DataArray must have dims ('psf_x', 'psf_y'); got {psf.dims}")
        values, psf_pixel_size = _psf_by_coords(psf.transpose("psf_x", "psf_y"), psf_pixel_size)
    else:
        values = np.array(psf, dtype=np.float64)
        # plain arrays follow the image convention (rows = y, columns = x, like FITS images and
        # numpy's imshow) unless psf_dims says otherwise; stored as (psf_x, psf_y)
        dims = ("psf_y", "psf_x") if psf_dims is None else tuple(psf_dims)
        if sorted(dims) != ["psf_x", "psf_y"]:
            raise ValueError(f"psf_dims must be ('psf_y', 'psf_x') (image rows = y) or ('psf_x', 'psf_y'); got {psf_dims}")
        if values.ndim == 2 and dims == ("psf_y", "psf_x"):
            values = values.T
    if values.ndim != 2:
        raise ValueError(f"psf must be a 2D image (psf_x, psf_y); got {values.ndim} dimensions")
    if values.shape[0] % 2 == 0 or values.shape[1] % 2 == 0:
        raise ValueError(
            f"psf has even shape {values.shape}; xfusion needs an odd-sized PSF centred on its middle pixel. "
            "Crop one row/column (or pad with zeros) so the peak sits in the central pixel."
        )
    check_psf_values(values)
    if psf_pixel_size is None:
        raise ValueError(
            "psf is a plain array, so its sampling is unknown: pass psf_pixel_size= (arcsec per PSF pixel, or a "
            "Quantity; psf_pixel_size=pixel_size if it is sampled on the counts' pixels), or a DataArray with "
            "psf_x/psf_y coordinates in arcsec")
    nx, ny = values.shape
    attrs = {"units": "arcsec", "pixel_size": float(psf_pixel_size)}
    return xr.DataArray(
        values,
        dims=("psf_x", "psf_y"),
        coords={
            "psf_x": ("psf_x", (np.arange(nx) - nx // 2) * psf_pixel_size, attrs),
            "psf_y": ("psf_y", (np.arange(ny) - ny // 2) * psf_pixel_size, attrs),
        },
        attrs={"units": "1"},
    )


def _arf_is_finer(arf_edges, row_edges):
    """Whether every ARF bin is at most as wide as the narrowest RMF row (float32 rounding allowed)."""
    return float(np.max(np.diff(arf_edges))) <= float(np.min(np.diff(row_edges))) * (1 + 1e-6)


def _area_on_rows(vals, arf_edges, row_edges, arf_centres):
    """An ARF (..., K) on its true-energy bins ``arf_edges`` (K+1,) (centres ``arf_centres``) put on the RMF rows
    ``row_edges`` (R+1,), keV.

    An ARF's SPECRESP is the mean area over its bin [ENERG_LO, ENERG_HI]. When every ARF bin is at most as wide
    as the narrowest row, row r gets the mean of the ARF over the row (bins weighted by their overlap with it,
    over the part of the row the ARF covers): ``A_r = sum_i |b_i & r| A_i / sum_i |b_i & r|``. A coarser ARF is
    interpolated linearly between its bin centres at the row centre (sampling a step function at the centre would
    put an ARF bin's edge in the middle of a row). Returns the (..., R) areas and the row centres (R,); rows the
    ARF does not reach are left to the caller (their value is then meaningless).
    """
    src_lo, src_hi = arf_edges[:-1], arf_edges[1:]
    dst = 0.5 * (row_edges[1:] + row_edges[:-1])
    if _arf_is_finer(arf_edges, row_edges):
        lo = np.maximum(src_lo[:, None], row_edges[None, :-1])
        hi = np.minimum(src_hi[:, None], row_edges[None, 1:])
        w = np.clip(hi - lo, 0.0, None)                       # (K, R) overlap widths, keV
        cover = w.sum(axis=0)
        w = np.divide(w, cover, out=np.zeros_like(w), where=cover > 0)
        return vals @ w, dst
    src = np.asarray(arf_centres, dtype=np.float64)
    j = np.clip(np.searchsorted(src, dst) - 1, 0, src.size - 2) if src.size > 1 else np.zeros(dst.size, int)
    f = np.clip((dst - src[j]) / (src[j + 1] - src[j]), 0.0, 1.0) if src.size > 1 else np.zeros(dst.size)
    return vals[..., j] * (1 - f) + vals[..., np.minimum(j + 1, src.size - 1)] * f, dst


#: energy coordinates of an ARF or RMF DataArray, converted to keV by :func:`_energy_coords_in_kev`
ENERGY_COORDS = ("energy_true", "energy_true_lo", "energy_true_hi", "energy", "energy_lo", "energy_hi")


def _energy_coords_in_kev(da, what):
    """``da`` with its energy coordinates (``ENERGY_COORDS``) in keV: a ``units`` attribute other than keV is
    converted with astropy (e.g. ``'eV'``; session 30: eV edges were stored as they were and an RMF's relabelled
    keV, so 500-1400 eV became 500-1400 keV), one astropy cannot convert to keV is refused naming it, and
    coordinates without units (keV) going above ``MAX_PLAIN_KEV`` are refused as "looks like eV"."""
    from astropy import units as u

    new = {}
    for c in ENERGY_COORDS:
        if c not in da.coords:
            continue
        given = da[c].attrs.get("units")
        v = np.asarray(da[c].values, dtype=np.float64)
        if given is None:
            _plausible_energies(v, f"{what} coordinate {c} (no units attribute, so keV)", "(plain number)")
        elif str(given) != UNITS["energy"]:
            try:
                v = (v * u.Unit(str(given))).to_value(u.keV)
            except (ValueError, TypeError, u.UnitConversionError) as exc:
                raise ValueError(f"{what} coordinate {c} is in {given!r}, which cannot be converted to keV; give "
                                 "true energies in keV or eV (attrs['units'])") from exc
            new[c] = (da[c].dims, v, dict(da[c].attrs, units=UNITS["energy"]))
    return da.assign_coords(new) if new else da


def _energy_true_dataarray(da, what):
    """Validate a DataArray on ``energy_true`` (with edges) and return it in float64."""
    if "energy_true" not in da.dims:
        raise ValueError(f"{what} DataArray must have an 'energy_true' dim; got {da.dims}")
    for c in ("energy_true_lo", "energy_true_hi"):
        if c not in da.coords:
            raise ValueError(f"{what} needs explicit true-energy edges: coordinate '{c}' (keV) is missing")
    da = _energy_coords_in_kev(da, what)
    edges = energy_edges(da, "energy_true")
    if np.any(np.diff(edges) <= 0):
        raise ValueError(f"{what}: energy_true edges must increase strictly")
    return da


#: unit strings of a counts DataArray taken as photon counts (others are parsed by astropy: ct or dimensionless)
COUNT_UNITS = ("count", "counts", "ct", "cts", "1", "")


def _plain_counts(counts):
    """``counts`` without its unit, refusing any unit other than counts (or dimensionless).

    An astropy Quantity must be in ``ct`` or dimensionless; a DataArray's ``units`` attribute,
    if any, must be a count unit (``COUNT_UNITS`` or what astropy reads as ``ct`` or
    dimensionless). A count *rate* (ct / s) or a flux is refused: the likelihood is Poisson in
    the number of photons, so the cube must hold counts.
    """
    fix = ("xfusion fits photon counts (Poisson data): pass the number of counts per voxel, e.g. "
           "rate * exposure for a count-rate cube, as a plain array or with units 'count'")
    if _is_quantity(counts):
        from astropy import units as u

        if counts.unit not in (u.ct, u.dimensionless_unscaled):
            raise ValueError(f"counts are in {counts.unit.to_string()}, not counts; {fix}")
        return counts.value
    if isinstance(counts, xr.DataArray) and counts.attrs.get("units") is not None:
        given = str(counts.attrs["units"]).strip()
        if given.lower() in COUNT_UNITS:
            return counts
        from astropy import units as u

        try:
            unit = u.Unit(given.replace("^", "**"))
        except ValueError:
            unit = None
        if unit not in (u.ct, u.dimensionless_unscaled):
            raise ValueError(f"counts have units {given!r}, not counts; {fix}")
    return counts


def _energy_order(da, edges, what="counts"):
    """Channel order that puts DataArray ``da`` on the bins of ``edges`` (keV), from its ``energy`` coordinate.

    Returns None when ``da`` has no ``energy`` coordinate or its values already lie in the
    matching bins of ``edges`` (within :func:`edge_tolerance`: centres, lower or upper edges all
    qualify); else the permutation (``np.argsort``) after which they do -- e.g. a cube stored
    from high to low energy is reversed. Raises ValueError when no order fits: the coordinate
    and the edges describe different channels. A ``units`` attribute on the coordinate is
    converted to keV (astropy); without one the values are taken in keV.
    """
    if "energy" not in da.coords or da["energy"].ndim != 1 or da["energy"].size + 1 != edges.size:
        return None
    coord = da["energy"]
    e = np.asarray(coord.values, dtype=np.float64)
    given = coord.attrs.get("units")
    if given is not None and str(given) != "keV":
        from astropy import units as u

        try:
            e = (e * u.Unit(str(given).replace("^", "**"))).to_value(u.keV)
        except (ValueError, u.UnitConversionError) as exc:
            raise ValueError(f"{what}: its energy coordinate is in {given!r}, which cannot be converted to keV; "
                             "convert it (or drop it: .drop_vars('energy'))") from exc
    lo, hi = edges[:-1], edges[1:]
    tol = edge_tolerance(edges)

    def fits(v):
        return bool(np.all((v >= lo - tol[:-1]) & (v <= hi + tol[1:])))

    if fits(e):
        return None
    order = np.argsort(e, kind="stable")
    if fits(e[order]):
        return order
    off = int(np.flatnonzero(~((e >= lo - tol[:-1]) & (e <= hi + tol[1:])))[0])
    hint = ("" if given is not None or np.nanmax(np.abs(e)) <= MAX_PLAIN_KEV else
            " (the coordinate has no units attribute, so it is taken in keV; it looks like eV: set "
            ".attrs['units'] = 'eV')")
    raise ValueError(
        f"{what}: its energy coordinate ({e[0]:.6g} ... {e[-1]:.6g} keV) does not match energy_edges "
        f"({edges[0]:.6g} ... {edges[-1]:.6g} keV): channel {off} is at {e[off]:.6g} keV but its bin is "
        f"{lo[off]:.6g}-{hi[off]:.6g} keV{hint}. Pass the edges of the cube's own channels, or drop the "
        "coordinate (.drop_vars('energy')) if it is only a label")


def _like_counts(arr, what, layout):
    """A per-voxel argument (``mask``, ``background``) as a NumPy array in the stored order of counts.

    ``layout``: dict with ``dims`` and ``shape`` of counts as given, ``cdims`` (stored dims),
    ``stored`` (stored shape), ``order`` (channel permutation applied to counts, or None),
    ``edges`` (keV) and ``coords`` (stored x/y coordinate values, or None).

    * a DataArray is transposed by its dims; if it has an ``energy`` coordinate it is ordered
      by it (:func:`_energy_order`), otherwise like counts; its ``x``/``y`` coordinates, if
      any, must equal the counts';
    * a plain array shaped like counts as given is read in the counts' layout: transposed as
      counts and its channels reordered as counts' were;
    * a plain array shaped like the stored counts (``cdims`` order) but not like counts as given
      is taken in the stored order, with a warning (with a shape that fits both, the counts'
      layout wins);
    * anything else is returned as an array for the caller's shape check to refuse.
    """
    cdims, order = layout["cdims"], layout["order"]
    if isinstance(arr, xr.DataArray):
        if set(arr.dims) - set(cdims):
            raise ValueError(f"{what} DataArray has dims {arr.dims}; expected those of counts {tuple(cdims)} "
                             "(any order)")
        da = arr.transpose(*[d for d in cdims if d in arr.dims], ...)
        for d in ("x", "y"):
            if d in da.coords and layout["coords"] is not None and d in layout["coords"]:
                own, ref = np.asarray(da[d].values, dtype=np.float64), layout["coords"][d]
                if own.shape != ref.shape or not np.allclose(own, ref, rtol=0, atol=REL_TOL * max(np.ptp(ref), 1.0)):
                    raise ValueError(f"{what}: its coordinate {d} ({own[:3]}...) differs from the counts' "
                                     f"({ref[:3]}...); give {what} on the counts' pixels")
        if "energy" in da.dims:
            own = _energy_order(da, layout["edges"], what) if "energy" in da.coords else order
            if own is not None:
                da = da.isel(energy=own)
        return np.asarray(da.values)
    a = np.asarray(arr)
    src = tuple(layout["dims"])
    if a.shape == tuple(layout["shape"]) and a.ndim == len(cdims):
        a = np.transpose(a, [src.index(d) for d in cdims])
        return a if order is None else a[..., order]
    if a.shape == tuple(layout["stored"]) and src != tuple(cdims):
        import warnings

        warnings.warn(f"{what} has shape {a.shape}: counts in the stored order {cdims}, not in the layout of "
                      f"counts {src} {tuple(layout['shape'])}; taken in the stored order. Give {what} in the "
                      "layout of counts (or as a DataArray with dims): when the sizes cannot tell the two apart, "
                      "arrays are read in the layout of counts", UserWarning, stacklevel=4)
    return a


def _numpy_buffers(value):
    """The in-memory NumPy arrays behind a user's argument (an array, Quantity, or DataArray with its coordinates)."""
    if isinstance(value, xr.DataArray):
        return [a for a in [value.data] + [c.data for c in value.coords.values()] if isinstance(a, np.ndarray)]
    value = getattr(value, "value", value) if _is_quantity(value) else value
    return [value] if isinstance(value, np.ndarray) else []


def _unaliased(ds, *given):
    """``ds`` with a copy of every in-memory variable or coordinate that may share memory with an argument in
    ``given`` (session 30: the counts, a 1D effective_area, a PSF or RMF DataArray were stored as views, so editing
    the caller's array afterwards changed the observation). Nothing the user passed is aliased; Dask arrays are
    left lazy (they are never written to)."""
    bufs = [b for g in given for b in _numpy_buffers(g) if b.size]
    if not bufs:
        return ds
    for name in list(ds.variables):
        data = ds.variables[name].data
        if isinstance(data, np.ndarray) and data.size and any(np.may_share_memory(data, b) for b in bufs):
            var = ds.variables[name].copy(deep=True)
            if name in ds.coords:
                ds = ds.assign_coords({name: var})
            else:
                ds[name] = var
    return ds


# --------------------------------------------------------------------------- builder
def observation(
    counts,
    *,
    energy_edges,
    pixel_size,
    exposure,
    effective_area=None,
    psf=None,
    psf_pixel_size=None,
    response=None,
    response_spacing=None,
    dims=None,
    name=None,
    mask=None,
    center=None,
    psf_dims=None,
    det_x=None,
    det_y=None,
    roll=None,
    array_center=None,
    background=None,
) -> xr.Dataset:
    """Build and validate one observation Dataset (see module docstring for the schema).

    Units: every physical number may be an astropy ``Quantity`` (converted to keV, arcsec,
    s, cm2); plain numbers *are* keV, arcsec, s and cm2. How each one was given is recorded
    in ``attrs["input_units"]`` (JSON). Plain numbers that are implausible in these units
    are refused with the likely mistake named: energy edges above 100 ("look like eV"),
    pixel sizes below 0.01 ("look like degrees").

    Detector-pixel observations (a microcalorimeter such as XRISM Resolve): ``counts`` with
    dims ("pixel", "energy") (a DataArray, or a plain array with
    ``dims=("pixel", "energy")``; a ``pixel`` coordinate keeps the detector pixel numbers). Their geometry:
    ``det_x``, ``det_y`` (P,) pixel centres in DETECTOR coordinates (arcsec or Quantity,
    offsets from the array centre), ``pixel_size`` the side of the square detector pixel
    (arcsec), ``roll`` (degrees, default 0) the position angle of the detector +y axis at the
    array centre, east of the local north there (e.g. ``PA_NOM``; at roll 0 +x_det is west) --
    and ``array_center`` (x, y) arcsec, the sky offset of the array centre in the tangent frame
    of ``center`` (default (0, 0)). On the fused grid the roll becomes the counter-clockwise
    rotation of the detector axes from +x (west) towards +y (north) in the grid's tangent frame:
    the position angle plus the turn of north between the array centre and the grid's tangent
    point (:func:`xfusion.grid.footprint_geometry`; without ``center`` the roll is used as that
    rotation directly). Stored as coords ``det_x``/``det_y``
    (``pixel_size`` attribute) and 0-d variables ``roll`` (deg), ``array_x``/``array_y``
    (arcsec). ``exposure`` may then be a per-pixel array (P,) (s): stored as ``exposure``
    (the largest) and ``exposure_fraction`` (pixel,) = t_p / exposure; ``effective_area``
    may be a DataArray (pixel, energy_true) of per-pixel ARFs; ``mask`` may be (P,) (a
    pixel mask, broadcast over energy) or (P, n_energy). The model of such an observation
    on the fused grid is the exact footprint of its pixels (:mod:`xfusion.operators.footprint`),
    after its PSF.

    Parameters
    ----------
    counts : ndarray, DataArray or Quantity
        Counts cube (photon counts per voxel). A NumPy array needs ``dims`` naming its axes (a
        permutation of ``("x", "y", "energy")``); a DataArray must carry those dims (any order).
        Stored transposed to (x, y, energy), energy contiguous. Must be finite and >= 0. Units:
        a Quantity must be in ``ct`` or dimensionless, a DataArray's ``units`` attribute (if
        any) "count", "counts", "ct" or dimensionless; anything else (a rate in ct/s, a flux)
        is refused: pass counts, e.g. rate * exposure. A DataArray's own ``energy``
        coordinate (keV, or converted from its ``units``), if it has one, must lie in the
        bins of ``energy_edges``: a cube stored in another channel order (e.g. high to low
        energy) is reordered by it, one on other channels is refused. Its ``x``/``y``
        coordinates become the pixel centres (increasing, spaced by ``pixel_size``).
    energy_edges : array (n_energy + 1,), keV, or Quantity
        Channel edges, strictly increasing. ``edges * u.eV`` is converted to keV.
    pixel_size : float, arcsec, or Quantity
        Spatial pixel size (square pixels), e.g. ``10.0`` or ``2.78e-3 * u.deg``.
    exposure : float, s, Quantity, or 0-d DataArray
        Exposure time, > 0, e.g. ``5e4`` or ``50 * u.ks``.
    effective_area : None, float, array (n_energy,), Quantity, or DataArray, cm2
        Effective area as a function of true energy. A float is flat; a 1D array is taken
        on the channel grid of ``energy_edges`` (ascending, whatever the order of a counts
        DataArray's channels); a DataArray over ``energy_true`` (with ``energy_true_lo/hi``
        edge coords, e.g. from :func:`xfusion.io.read_arf`) keeps its own grid (with a
        ``response`` matrix on another true-energy grid it is put on the matrix's rows: averaged
        over each row when its bins are at most as wide as the rows, else interpolated linearly
        between its bin centres) and is interpolated onto the fused grid later; a DataArray over (x, y, energy_true)
        describes vignetting; a 0-d DataArray (another observation's scalar
        ``effective_area``) is a flat area. DataArray ``units`` other than cm2 (e.g.
        "m2") are converted. ``None`` means 1 cm2 (counts are then per cm2).
    psf : None, 2D array or DataArray (psf_x, psf_y) or (psf_energy, psf_x, psf_y)
        Spatial response (odd size, sums to 1). A DataArray carries its sampling in its
        ``psf_x``/``psf_y`` coordinates (arcsec offsets from the source position) and is placed
        by them: uniform, square pixels (a descending axis is reversed with its values), offset 0
        one of the samples; a stamp whose offset 0 is not the middle pixel is padded with zeros to
        an odd stamp centred on it (any size then). A plain array **requires**
        ``psf_pixel_size`` (arcsec or Quantity): a PSF sampled more finely than the counts
        (usual for instrument PSF images) would otherwise be stretched silently. Pass
        ``psf_pixel_size=pixel_size`` if it is sampled on the counts' pixels. A stack over
        ``psf_energy`` (keV) is an energy-dependent PSF, interpolated linearly between bands
        (e.g. :func:`xfusion.io.read_psf_stack`'s output, taken as is). A plain 2D array
        follows the image convention: ``psf[row, column]`` = ``psf[y, x]`` (rows = y, as
        in FITS images and in ``counts`` given with ``dims=("y", "x", ...)``); pass
        ``psf_dims=("psf_x", "psf_y")`` if its first axis is x.
    psf_dims : None or tuple
        Axis order of a plain-array ``psf``: ``("psf_y", "psf_x")`` (default, image
        convention) or ``("psf_x", "psf_y")``. Ignored for DataArrays (they carry dims).
    response : None, 1D array, DataArray (energy_true, energy) or SparseRMF
        Spectral response: a stationary kernel (odd length, sums to 1) sampled every
        ``response_spacing`` keV (or Quantity, e.g. ``0.5 * u.eV``) -- a kernel DataArray with an
        ``energy_offset`` coordinate is placed by it (units converted, e.g. eV; uniform; offset 0
        must be a sample, an off-centre kernel is padded to centre it) -- or an RMF matrix whose
        ``energy`` columns are the channels of ``counts`` (or an integer grouping of them,
        summed here). A :class:`xfusion.io.ogip_read.SparseRMF` (what ``read_rmf`` returns for
        large RMFs) is cropped to the rows overlapping the counts' band and its channels
        grouped on ``energy_edges`` (which must be EBOUNDS edges), so only that block is
        dense. Small negative elements (calibration noise of real RMFs) are set to 0 with a
        warning naming the rows (``clip_negative_rows``). A *full* response (RMF x ARF in
        cm2: ``attrs["units"] == "cm2"`` or ``attrs["arf_folded"]``, as ``read_rmf`` labels an
        OGIP ``SPECRESP MATRIX`` with ``HDUCLAS3 = 'FULL'``) already holds the effective area:
        together with ``effective_area`` it is refused (the area would count twice); alone it
        is split exactly (:func:`split_full_response`): ``effective_area`` (energy_true, cm2) =
        its row sums over all its channels (all EBOUNDS channels for a SparseRMF, the
        DataArray's own otherwise), ``response`` = each row divided by its sum, so
        ``effective_area x response`` is the full response.
    mask : None, bool array like counts, or DataArray
        True where voxels are valid; invalid voxels are excluded from the likelihood. A plain
        array is read in the layout of ``counts`` as given (its shape, its ``dims``) and
        reordered exactly like counts (transposed, channels reordered as counts' were); a
        DataArray by its dims (and by its own ``energy`` coordinate if it has one; its
        ``x``/``y`` coordinates, if any, must equal the counts'). An array in the stored
        (x, y, energy) order whose shape cannot be the counts' layout is still accepted, with
        a warning.
    name : str, optional
        Label (e.g. "XMM/EPIC-pn").
    center : (RA, Dec) in degrees (numbers or Quantities) or an astropy SkyCoord, optional
        Tangent point of the ``x``/``y`` offsets (x grows to the west, y to the north).
        Default: ``counts.attrs["center"]`` when ``counts`` comes from
        :func:`xfusion.io.read_events`. Recorded as ``center_ra``/``center_dec`` attributes
        of the Dataset and of its ``x``/``y`` coordinates, so fused results inherit it;
        :func:`celestial_wcs` turns it into an astropy WCS.
    det_x, det_y, roll, array_center : detector-pixel observations only (see below).
    background : None, array like counts (count per data voxel), or DataArray, optional
        Known additive background: expected counts ``forward(Z) + B`` (e.g. a background
        region of the same events scaled by BACKSCAL/area, or a model). Stored as
        ``background_rate`` (count s-1 per voxel, = B / exposure), so a thinned or rescaled
        exposure rescales it consistently. Must be finite and >= 0. Read in the layout of
        ``counts`` exactly like ``mask``.

    """
    units = {}
    counts = _plain_counts(counts)
    given_dims = tuple(counts.dims) if isinstance(counts, xr.DataArray) else (None if dims is None else tuple(dims))
    given_shape = np.shape(counts) if not isinstance(counts, xr.DataArray) else counts.shape
    if center is None and isinstance(counts, xr.DataArray) and counts.attrs.get("center") is not None:
        center = tuple(counts.attrs["center"])
    sky = _center_degrees(center) if center is not None else None
    pixel_obs = (isinstance(counts, xr.DataArray) and "pixel" in counts.dims) or (
        not isinstance(counts, xr.DataArray) and dims is not None and "pixel" in tuple(dims))
    pixel_ids = None
    if pixel_obs:
        if isinstance(counts, xr.DataArray):
            if set(counts.dims) != set(PIXEL_DIMS):
                raise ValueError(f"detector-pixel counts must have dims {PIXEL_DIMS}; got {counts.dims}")
            da = counts.transpose(*PIXEL_DIMS)
            values = np.asarray(da.values)
            pixel_ids = np.asarray(da["pixel"].values) if "pixel" in da.coords else None
            # geometry carried by xfusion.io.read_events(..., bin_by="pixel") unless given here
            det_x = da["det_x"].values if det_x is None and "det_x" in da.coords else det_x
            det_y = da["det_y"].values if det_y is None and "det_y" in da.coords else det_y
            roll = counts.attrs.get("roll") if roll is None else roll
            array_center = counts.attrs.get("array_center") if array_center is None else array_center
        else:
            values = np.asarray(counts)
            if sorted(tuple(dims)) != sorted(PIXEL_DIMS) or values.ndim != 2:
                raise ValueError(f"dims must be a permutation of {PIXEL_DIMS} for detector-pixel counts of ndim 2; "
                                 f"got {dims}")
            values = np.transpose(values, [tuple(dims).index(d) for d in PIXEL_DIMS])
        xcoord = ycoord = None
    elif isinstance(counts, xr.DataArray):
        missing = set(CUBE_DIMS) - set(counts.dims)
        if missing or counts.ndim != 3:
            raise ValueError(f"counts DataArray must have dims {CUBE_DIMS} (any order); got {counts.dims}")
        da = counts.transpose(*CUBE_DIMS)
        values = da.data if _is_lazy(da.data) else np.asarray(da.values)
        xcoord = da["x"].values if "x" in da.coords else None
        ycoord = da["y"].values if "y" in da.coords else None
    else:
        values = np.asarray(counts)
        if dims is None:
            raise ValueError("counts is a plain array: pass dims=, e.g. dims=('energy', 'y', 'x')")
        dims = tuple(dims)
        if sorted(dims) != sorted(CUBE_DIMS) or values.ndim != 3:
            raise ValueError(f"dims must be a permutation of {CUBE_DIMS} matching counts.ndim=3; got {dims}")
        values = np.transpose(values, [dims.index(d) for d in CUBE_DIMS])
        xcoord = ycoord = None
    if not _is_lazy(values):  # Dask arrays stay lazy (validated when read); NumPy: a copy-or-view, never written to
        values = np.ascontiguousarray(values)
    if not np.issubdtype(values.dtype, np.number):
        raise ValueError(f"counts must be numeric; got dtype {values.dtype}")
    if not np.issubdtype(values.dtype, np.floating):
        values = values.astype(np.float64)

    pixel_size, units["pixel_size"] = _positive_number(pixel_size, "pixel_size", UNITS["angle"])
    _plausible_angle(pixel_size, "pixel_size", units["pixel_size"])
    exposure_fraction = None
    if pixel_obs and not isinstance(exposure, xr.DataArray) and np.ndim(_to_unit(exposure, "s", "exposure")[0]) == 1:
        tp, units["exposure"] = _to_unit(exposure, UNITS["time"], "exposure")
        tp = np.asarray(tp, dtype=np.float64)
        if tp.shape != values.shape[:1] or not np.all(np.isfinite(tp)) or np.any(tp <= 0):
            raise ValueError(f"per-pixel exposure must be {values.shape[0]} positive finite values (s), one per "
                             f"pixel; got shape {tp.shape}")
        exposure, exposure_fraction = float(tp.max()), tp / tp.max()
    else:
        exposure, units["exposure"] = _positive_number(exposure, "exposure", UNITS["time"])
    energy_edges, units["energy_edges"] = _to_unit(energy_edges, UNITS["energy"], "energy_edges")
    energy_edges = np.asarray(energy_edges, dtype=np.float64)
    _plausible_energies(energy_edges, "energy_edges", units["energy_edges"])

    if pixel_obs:
        (npix, ne), nx, ny = values.shape, None, None
        coords = _pixel_coords(npix, float(pixel_size), pixel_ids, det_x, det_y, units)
        cdims = PIXEL_DIMS
    else:
        if any(v is not None for v in (det_x, det_y, roll, array_center)):
            raise ValueError("det_x, det_y, roll and array_center describe detector-pixel observations: pass counts "
                             "with dims ('pixel', 'energy')")
        nx, ny, ne = values.shape
        coords = {
            "x": _spatial_coord(nx, float(pixel_size), xcoord, "x"),
            "y": _spatial_coord(ny, float(pixel_size), ycoord, "y"),
        }
        cdims = CUBE_DIMS
    if sky is not None:
        for d in (("det_x", "det_y") if pixel_obs else ("x", "y")):
            coords[d][2].update(center_ra=sky[0], center_dec=sky[1])
    coords.update(_edges_coords(energy_edges, "energy"))
    if coords["energy"][1].size != ne:
        raise ValueError(
            f"energy_edges has {coords['energy'][1].size + 1} values but counts has {ne} energy channels; "
            f"pass {ne + 1} edges"
        )
    # a counts DataArray's own energy coordinate must agree with the edges; a cube stored in another channel
    # order (e.g. high to low energy) is put in order (values is a new array: the caller's is never touched)
    order = _energy_order(counts, energy_edges) if isinstance(counts, xr.DataArray) else None
    if order is not None:
        values = values[..., order]
        values = values if _is_lazy(values) else np.ascontiguousarray(values)
    layout = {"dims": given_dims, "shape": given_shape, "cdims": cdims, "stored": values.shape, "order": order,
              "edges": energy_edges, "coords": None if pixel_obs else {d: coords[d][1] for d in ("x", "y")}}
    ds = xr.Dataset(coords=coords)
    ds["counts"] = (cdims, values, {"units": "count"})
    ds["exposure"] = ((), float(exposure), {"units": "s"})
    if pixel_obs:
        ds = _add_pixel_geometry(ds, roll, array_center, exposure_fraction, units)

    # effective area
    if effective_area is not None and not isinstance(effective_area, xr.DataArray) or (
            isinstance(effective_area, xr.DataArray) and effective_area.ndim == 0):
        effective_area, units["effective_area"] = _to_unit(effective_area, UNITS["area"], "effective_area")
    if effective_area is None:
        ds["effective_area"] = ((), 1.0, {"units": "cm2", "note": "not given: 1 cm2 assumed"})
    elif isinstance(effective_area, xr.DataArray):
        area = _energy_true_dataarray(effective_area, "effective_area")
        if pixel_obs and area.ndim == 2 and "pixel" in area.dims:
            area = area.transpose("pixel", "energy_true")
            if area.shape[0] != values.shape[0]:
                raise ValueError(f"per-pixel effective_area has {area.shape[0]} pixels, counts {values.shape[0]}")
            area = area.drop_vars(["pixel"], errors="ignore")
        elif area.ndim == 3:
            if pixel_obs:
                raise ValueError("a detector-pixel observation takes effective_area over (pixel, energy_true), not "
                                 "(x, y, energy_true)")
            area = area.transpose("x", "y", "energy_true")
            if area.shape[:2] != (nx, ny):
                raise ValueError(f"vignetted effective_area has spatial shape {area.shape[:2]}, counts {(nx, ny)}")
            area = area.drop_vars(["x", "y"], errors="ignore")
        elif area.dims != ("energy_true",):
            raise ValueError(f"effective_area dims must be (energy_true,) or (x, y, energy_true); got {area.dims}")
        given = str(area.attrs.get("units", "cm2"))
        area = area.astype(np.float64)
        if given not in ("cm2", "cm**2", "cm^2"):
            from astropy import units as u

            try:
                factor = u.Unit(given.replace("^", "**")).to(u.cm ** 2)
            except ValueError as exc:
                raise ValueError(f"effective_area is in '{given}', which cannot be converted to cm2; "
                                 "convert it to cm2") from exc
            area = area * factor
        units["effective_area"] = f"{given} (DataArray units)"
        ds["effective_area"] = area.assign_attrs(units="cm2")
    elif np.ndim(effective_area) == 0:
        ds["effective_area"] = ((), float(effective_area), {"units": "cm2"})
    else:
        arr = np.asarray(effective_area, dtype=np.float64)
        if arr.shape != (ne,):
            raise ValueError(
                f"effective_area has shape {arr.shape} but counts has {ne} channels; pass one value per channel, "
                "or a DataArray over energy_true with its own edges (e.g. from xfusion.io.read_arf)"
            )
        ds = ds.assign_coords(_edges_coords(np.append(coords["energy_lo"][1], coords["energy_hi"][1][-1]), "energy_true"))
        ds["effective_area"] = (("energy_true",), arr, {"units": "cm2"})

    if psf_pixel_size is not None:
        psf_pixel_size, units["psf_pixel_size"] = _positive_number(psf_pixel_size, "psf_pixel_size", UNITS["angle"])
        _plausible_angle(psf_pixel_size, "psf_pixel_size", units["psf_pixel_size"])
    if psf is not None:
        ds["psf"] = _psf_dataarray(psf, psf_pixel_size, psf_dims)

    if response_spacing is not None:
        response_spacing, units["response_spacing"] = _positive_number(
            response_spacing, "response_spacing", UNITS["energy"])
        if units["response_spacing"].endswith("(plain number)") and response_spacing > 1.0:
            raise ValueError(
                f"response_spacing={response_spacing:g} keV between kernel samples looks like eV: plain numbers "
                f"are keV. Pass response_spacing={response_spacing:g} * astropy.units.eV, or divide by 1000")
    if response is not None:
        ds = _add_response(ds, response, response_spacing, area_given=effective_area is not None)

    if mask is not None:
        m = _like_counts(mask, "mask", layout)
        if pixel_obs and m.shape == values.shape[:1] and m.dtype == bool:
            m = np.repeat(m[:, None], values.shape[1], axis=1)
        if m.shape != values.shape or m.dtype != bool:
            raise ValueError(f"mask must be a boolean array shaped like counts, {tuple(given_shape)} {given_dims}"
                             + (f", or ({values.shape[0]},) per pixel" if pixel_obs else "")
                             + f", or a DataArray with dims {cdims}; got {m.dtype} {m.shape}")
        ds["mask"] = (cdims, np.array(m, copy=True))
    if background is not None:
        ds["background_rate"] = _background_rate(_like_counts(background, "background", layout), ds, cdims,
                                                 given_shape, given_dims)

    ds.attrs.update({"xfusion_schema": SCHEMA_VERSION, "name": name or "observation",
                     "input_units": json.dumps(units, sort_keys=True)})
    if sky is not None:
        ds.attrs.update(center_ra=sky[0], center_dec=sky[1])
    return validate(_unaliased(ds, counts, effective_area, psf, response, exposure))


#: negative RMF elements are clipped (with a warning) when none is larger in magnitude than this
#: fraction of the largest element of its row; larger negative elements are refused
NEG_RMF_TOL = 0.05


def clip_negative_rows(mat, true_edges, what="response"):
    """``mat`` (energy_true, energy) with small negative elements removed, warning which rows.

    Real RMFs carry small negative elements from their calibration fits (the XMM EPIC-pn
    ``epn_ff20_dY9.rmf``: rows at 0.168-0.226 keV true energy, elements down to -0.57 % of
    the row's peak, oscillating around zero over the channels). A probability cannot be
    negative: in each such row the negative elements are set to 0 and the row is rescaled
    to keep its sum (the total detection probability, which carries the flux calibration),
    with a warning naming the rows and true energies (keV). Non-finite values, or a negative
    element larger than ``NEG_RMF_TOL`` of its row's peak, are refused. Returns a new array
    when anything changes (the input is never modified).
    """
    if not np.all(np.isfinite(mat)):
        raise ValueError(f"{what} matrix contains non-finite values")
    neg = mat < 0
    if not neg.any():
        return mat
    rows = np.flatnonzero(neg.any(axis=1))
    sub = mat[rows]
    peak = sub.max(axis=1)
    worst = -sub.min(axis=1)
    e = np.asarray(true_edges, dtype=np.float64)
    bad = rows[~(worst <= NEG_RMF_TOL * np.maximum(peak, 0.0))]
    if bad.size:
        i = int(bad[0])
        raise ValueError(
            f"{what} matrix row {i} (true energy {e[i]:.4g}-{e[i + 1]:.4g} keV) has a negative element "
            f"({float(mat[i].min()):.3g}) larger than {NEG_RMF_TOL:.0%} of the row's peak ({float(mat[i].max()):.3g}); "
            "this is not the calibration noise of a probability matrix. Fix the RMF or crop its rows to the "
            "band you fit")
    clipped = np.where(sub < 0, 0.0, sub)
    total, kept = sub.sum(axis=1), clipped.sum(axis=1)
    scale = np.where((total > 0) & (kept > 0), total / np.where(kept > 0, kept, 1.0), 1.0)
    out = np.array(mat, dtype=np.float64, copy=True)
    out[rows] = clipped * scale[:, None]
    import warnings

    warnings.warn(
        f"{what}: {int(neg.sum())} negative element(s) (down to {float((worst / peak).max()):.2%} of their row's "
        f"peak) in {rows.size} row(s) {int(rows[0])}..{int(rows[-1])} (true energies {e[rows[0]]:.4g}-"
        f"{e[rows[-1] + 1]:.4g} keV) set to 0, each row rescaled to keep its sum (by up to "
        f"{float(np.abs(scale - 1).max()):.2%})", stacklevel=3)
    return out


#: largest row sum accepted for a redistribution matrix (units '1'): a photon lands in at most one channel, so rows
#: sum to <= 1 (calibration rounding allowed); larger sums are a full response (cm2) without its label, refused
PROBABILITY_ROW_MAX = 1.5
#: units of a response matrix that carries the effective area (a full response, RMF x ARF)
AREA_UNITS = ("cm2", "cm**2", "cm^2")


def is_full_response(response) -> bool:
    """True when ``response`` (an RMF DataArray or SparseRMF) is a full response, RMF x ARF, in cm2.

    Read from its ``attrs``: ``units`` cm2 or ``arf_folded`` true, as :func:`xfusion.io.read_rmf`
    labels an OGIP ``SPECRESP MATRIX`` with ``HDUCLAS3 = 'FULL'`` (or row sums above 1.5).
    """
    attrs = getattr(response, "attrs", None) or {}
    units = str(attrs.get("units", "")).strip().lower().replace(" ", "")
    return bool(attrs.get("arf_folded", False)) or units in AREA_UNITS


def split_full_response(mat, row_sum):
    """``(redistribution, area)``: a full response ``R`` (energy_true, energy) in cm2 as the product
    the forward model applies, ``R[i, c] = A_i P[i, c]``.

    xfusion applies the effective area on true energies and then a dimensionless redistribution,
    so a full response (RMF x ARF, the area already inside it) is split exactly: ``A_i = s_i`` (cm2),
    ``row_sum[i]``, the sum of row ``i`` over all the response's channels, and
    ``P[i, c] = R[i, c] / s_i`` (rows summing to 1 over those channels). ``A_i`` is then the ARF
    times the RMF's total detection probability at ``E_i`` (the ARF itself when the RMF's rows sum
    to 1); ``A_i P[i, c] = R[i, c]``, so the expected counts are those of the full response. Rows
    with ``s_i <= 0`` get ``A_i = 0`` and ``P[i, :] = 0``.
    """
    mat = np.asarray(mat, dtype=np.float64)
    s = np.asarray(row_sum, dtype=np.float64)
    pos = s > 0
    p = np.where(pos[:, None], mat / np.where(pos, s, 1.0)[:, None], 0.0)
    return p, np.where(pos, s, 0.0)


def _full_response_refused(response, what="effective_area="):
    """ValueError for a full response (cm2) given together with an effective area."""
    attrs = getattr(response, "attrs", None) or {}
    name = f" {attrs['file']!r}" if attrs.get("file") else ""
    rs = attrs.get("row_sum_max")
    sums = f", row sums up to {float(rs):.4g} cm2" if isinstance(rs, (int, float)) else ""
    return ValueError(
        f"response{name} is a full response (RMF x ARF: units {attrs.get('units', '?')!r}, arf_folded="
        f"{attrs.get('arf_folded', '?')}{sums}): the effective area is already inside it, and {what} would "
        "multiply it again (expected counts hundreds of times too high). Pass the redistribution-only RMF "
        f"(units '1', e.g. the .rmf, not the .rsp) with {what}, or this response without {what} (xfusion "
        "then splits it exactly: effective_area = its row sums in cm2, response = each row / its sum)")


def _sparse_rmf_band(rmf, data_edges):
    """Dense (energy_true, energy) DataArray of a SparseRMF-like object on the counts' band.

    ``rmf`` has ``matrix`` (scipy.sparse, true-energy rows x EBOUNDS channels),
    ``energy_true_edges`` and ``energy_edges`` ((n, 2) [lo, hi] keV). Every counts edge must
    be an EBOUNDS edge (within :func:`edge_tolerance`); rows overlapping the band are kept
    and the channels are summed over each counts channel.
    """
    eb = np.append(np.asarray(rmf.energy_edges, dtype=np.float64)[:, 0], float(rmf.energy_edges[-1][1]))
    tl, th = (np.asarray(rmf.energy_true_edges, dtype=np.float64)[:, k] for k in (0, 1))
    j = np.clip(np.searchsorted(eb, data_edges), 1, eb.size - 1)
    j = np.where(np.abs(eb[j - 1] - data_edges) <= np.abs(eb[j] - data_edges), j - 1, j)
    off = np.abs(eb[j] - data_edges) > edge_tolerance(data_edges, np.min(np.diff(eb)))
    if off.any():
        i = int(np.flatnonzero(off)[0])
        raise ValueError(
            f"energy edge {data_edges[i]:.6g} keV of the counts is not a channel edge of the response (nearest "
            f"EBOUNDS edge {eb[j[i]]:.6g} keV); bin the counts on whole RMF channels, e.g. with "
            "xfusion.io.observation_from_files")
    rows = np.flatnonzero((th > data_edges[0]) & (tl < data_edges[-1]))
    if rows.size == 0 or tl[rows[0]] > data_edges[0] or th[rows[-1]] < data_edges[-1]:
        raise ValueError(f"the response covers true energies {tl[0]:.4g}-{th[-1]:.4g} keV, not the counts' band "
                         f"{data_edges[0]:.4g}-{data_edges[-1]:.4g} keV")
    block = rmf.matrix[rows[0]:rows[-1] + 1][:, j[0]:j[-1]].toarray()
    block = np.add.reduceat(np.asarray(block, dtype=np.float64), j[:-1] - j[0], axis=1)
    coords = _edges_coords(np.append(tl[rows[0]:rows[-1] + 1], th[rows[-1]]), "energy_true")
    coords.update(_edges_coords(eb[j], "energy"))
    folded = is_full_response(rmf)  # a full response keeps its cm2 label (never relabelled as a probability)
    return xr.DataArray(block, dims=("energy_true", "energy"), coords=coords,
                        attrs={"units": "cm2" if folded else "1", "arf_folded": folded})


def _kernel_offsets_kev(coord):
    """Offsets (keV) of a response kernel's ``energy_offset`` coordinate, converted from its ``units`` attribute
    (astropy; e.g. ``'eV'``). Without units they are taken in keV, and offsets of more than 1 keV between samples
    are refused as "looks like eV" (the rule of a plain ``response_spacing``)."""
    c = np.asarray(coord.values, dtype=np.float64)
    given = coord.attrs.get("units")
    if given is not None and str(given) != UNITS["energy"]:
        from astropy import units as u

        try:
            c = (c * u.Unit(str(given))).to_value(u.keV)
        except (ValueError, TypeError, u.UnitConversionError) as exc:
            raise ValueError(f"response kernel coordinate energy_offset has units {given!r}, which cannot be "
                             "converted to keV; give the offsets in keV or eV (attrs['units'])") from exc
    elif given is None and c.size > 1 and np.all(np.isfinite(c)) and np.abs(np.diff(c)).max() > 1.0:
        raise ValueError(f"response kernel coordinate energy_offset has no units attribute, so it is taken in keV, "
                         f"but its samples are {np.abs(np.diff(c)).max():g} keV apart, which looks like eV: set "
                         "kernel['energy_offset'].attrs['units'] = 'eV' (or divide the offsets by 1000)")
    return c


def _kernel_by_coords(kernel, spacing=None):
    """(values, spacing keV) of a 1D response kernel DataArray placed by its ``energy_offset`` coordinate (offset of
    the recorded energy from the true one): like a PSF (:func:`_psf_by_coords`), the offsets must be uniform (a
    descending axis is reversed with its values) and 0 must be one of the samples; a kernel whose offset 0 is not
    its middle sample is padded with zeros to an odd kernel centred on it (session 30: the offsets were read for
    their mean spacing only, so a kernel at +0.06..+0.18 keV was silently re-centred on 0 and a coordinate in eV
    was taken as keV). ``spacing`` (keV, from ``response_spacing``) must agree with the coordinate if given."""
    values = np.asarray(kernel.values, dtype=np.float64)
    c = _kernel_offsets_kev(kernel["energy_offset"])
    if c.size < 2:
        if spacing is None:
            raise ValueError("a 1-sample response kernel needs response_spacing (keV between samples), > 0")
        if not np.isclose(c[0], 0.0, atol=1e-9):
            raise ValueError(f"response kernel's only sample is at energy_offset {c[0]:g} keV, not 0")
        return values, spacing
    if not np.all(np.isfinite(c)):
        raise ValueError("response kernel coordinate energy_offset has non-finite values")
    if c[-1] < c[0]:
        c, values = c[::-1], values[::-1]
    step = (c[-1] - c[0]) / (c.size - 1)
    if step <= 0 or np.any(np.abs(c - (c[0] + step * np.arange(c.size))) > PSF_COORD_TOL * step):
        raise ValueError(f"response kernel coordinate energy_offset is not uniformly spaced (offsets {c[:4]}... keV); "
                         "give the kernel on a regular grid of offsets (interpolate it first)")
    if spacing is not None and not np.isclose(step, spacing, rtol=REL_TOL):
        raise ValueError(f"response kernel energy_offset gives a {step:g} keV spacing but response_spacing={spacing:g} "
                         "keV; pass one of them")
    i0 = -c[0] / step
    if abs(i0 - round(i0)) > PSF_COORD_TOL:
        raise ValueError(f"response kernel coordinate energy_offset has no sample at offset 0: its samples are at "
                         f"{c[0]:.6g} + i * {step:.6g} keV. Give the kernel sampled on offsets that include 0")
    i0, n = int(round(i0)), values.size
    h = max(abs(i0), abs(n - 1 - i0))
    if (h - i0, h - (n - 1 - i0)) != (0, 0):
        values = np.pad(values, (h - i0, h - (n - 1 - i0)))
    return values, step


def _add_response(ds, response, spacing, area_given=False):
    """``ds`` with its ``response`` (and, for a full response in cm2, its ``effective_area``).

    A full response (:func:`is_full_response`) with ``area_given`` is refused (the area would
    count twice); alone it is split by :func:`split_full_response` with the row sums over all
    its channels (all EBOUNDS channels for a SparseRMF, the DataArray's own channels otherwise):
    ``effective_area`` (energy_true) = the row sums (cm2), ``response`` = rows / row sums.
    """
    full = is_full_response(response)
    if full and area_given:
        raise _full_response_refused(response)
    full_rows = None
    if hasattr(response, "matrix") and hasattr(response, "energy_true_edges"):
        # a SparseRMF (read_rmf's default above 2.5e7 elements): keep only the rows and channel
        # groups of the counts' band, never densifying the whole matrix
        band = _sparse_rmf_band(response, energy_edges(ds, "energy"))
        if full:  # row sums over ALL the RMF's channels, not only the band's
            r0 = int(np.searchsorted(np.asarray(response.energy_true_edges, dtype=np.float64)[:, 0],
                                     float(band["energy_true_lo"].values[0])))
            full_rows = np.asarray(response.matrix[r0:r0 + band.sizes["energy_true"]].sum(axis=1)).ravel()
        response = band
    if isinstance(response, xr.DataArray) and response.ndim == 2:
        rmf = _energy_true_dataarray(response, "response").transpose("energy_true", "energy")
        if "energy_lo" not in rmf.coords:
            raise ValueError("response matrix needs channel edges 'energy_lo'/'energy_hi' coordinates (keV)")
        ch_edges = energy_edges(rmf, "energy")
        data_edges = energy_edges(ds, "energy")
        n_r, n_d = ch_edges.size - 1, data_edges.size - 1
        if n_r % n_d != 0:
            raise ValueError(
                f"response has {n_r} channels and counts {n_d}; channels must match or group by an integer factor"
            )
        g = n_r // n_d
        if np.any(np.abs(ch_edges[::g] - data_edges) > edge_tolerance(data_edges, np.min(np.diff(ch_edges)))):
            raise ValueError(
                "response channel edges (coordinate energy) do not line up with the counts' energy_edges: "
                f"first edges {ch_edges[:3]} vs {data_edges[:3]} keV. Bin the counts on the RMF's EBOUNDS channels."
            )
        mat = np.asarray(rmf.values, dtype=np.float64)
        if g > 1:
            mat = mat.reshape(mat.shape[0], n_d, g).sum(axis=-1)
        et = energy_edges(rmf, "energy_true")
        row_sum = mat.sum(axis=1) if full_rows is None else full_rows
        mat = clip_negative_rows(mat, et, "response")
        area = None
        if full:
            mat, area = split_full_response(mat, row_sum)
        elif mat.size and float(mat.sum(axis=1).max()) > PROBABILITY_ROW_MAX:
            i = int(np.argmax(mat.sum(axis=1)))
            raise ValueError(
                f"response row {i} (true energy {0.5 * (et[i] + et[i + 1]):.4g} keV) sums to "
                f"{float(mat[i].sum()):.4g} over the counts' channels: a redistribution matrix (units '1') sends each "
                f"photon to at most one channel, so its rows sum to at most 1 (above {PROBABILITY_ROW_MAX} is refused). "
                "This looks like a full response (RMF x ARF, cm2): set response.attrs['units'] = 'cm2' (xfusion then "
                "splits it into an effective area and a redistribution) and pass no effective_area, or pass the "
                "redistribution-only RMF (.rmf, not .rsp)")
        if "energy_true" in ds.dims:
            ds_et = energy_edges(ds, "energy_true")
            if ds_et.size != et.size or not np.allclose(ds_et, et):
                # put the area on the RMF grid: an ARF normally shares the RMF grid already
                area = ds["effective_area"]
                vals = np.asarray(area.values, dtype=np.float64)
                new, dst = _area_on_rows(vals, ds_et, et, ds["energy_true"].values)
                # no extrapolation: outside the ARF's own edges the area is unknown (session 28: an ARF of 8-18 keV
                # gave a 6.2-7 keV band its 8 keV value); refused where the response sends photons into the channels
                tol = edge_tolerance(ds_et)
                outside = (dst < ds_et[0] - tol[0]) | (dst > ds_et[-1] + tol[-1])
                if outside.any():
                    rows = mat.sum(axis=1)
                    needed = outside & (rows > 1e-3 * rows.max())
                    if needed.any():
                        raise ValueError(
                            f"effective_area (ARF) covers {ds_et[0]:.4g}-{ds_et[-1]:.4g} keV but the response maps "
                            f"true energies {dst[needed].min():.4g}-{dst[needed].max():.4g} keV into these channels: "
                            "xfusion does not extrapolate an ARF. Pass the ARF made for this RMF (covering at least "
                            f"{et[0]:.4g}-{et[-1]:.4g} keV)")
                    new[..., outside] = 0.0
                ds = ds.drop_vars(["effective_area", "energy_true", "energy_true_lo", "energy_true_hi"])
                ds = ds.assign_coords(_edges_coords(et, "energy_true"))
                note = ("averaged over each RMF row" if _arf_is_finer(ds_et, et)
                        else "interpolated linearly between the ARF's bin centres at each RMF row's centre")
                ds["effective_area"] = (area.dims, new, {"units": "cm2", "note": note})
        else:
            ds = ds.assign_coords(_edges_coords(et, "energy_true"))
        attrs = {"units": "1", "kind": "matrix"}
        if full:
            note = "split from a full response (RMF x ARF, cm2)"
            ds["effective_area"] = (("energy_true",), area, {"units": "cm2", "note": f"row sums of the {note}"})
            attrs["note"] = f"rows divided by their sums (effective_area): {note}"
        ds["response"] = (("energy_true", "energy"), mat, attrs)
        return ds
    kernel = np.array(response.values if isinstance(response, xr.DataArray) else response, dtype=np.float64)
    if isinstance(response, xr.DataArray) and kernel.ndim == 1 and "energy_offset" in response.coords:
        kernel, spacing = _kernel_by_coords(response, spacing)
    if kernel.ndim != 1:
        raise ValueError("response must be a 1D kernel or a 2D (energy_true, energy) DataArray")
    if spacing is None or not np.isfinite(spacing) or spacing <= 0:
        raise ValueError("a 1D response kernel needs response_spacing (keV between samples), > 0")
    if kernel.size % 2 == 0:
        raise ValueError(f"response kernel has even length {kernel.size}; use an odd, centred kernel")
    check_psf_values(kernel, **KERNEL_CHECK)
    off = (np.arange(kernel.size) - kernel.size // 2) * float(spacing)
    ds = ds.assign_coords(energy_offset=("energy_offset", off, {"units": "keV", "spacing": float(spacing)}))
    ds["response"] = (("energy_offset",), kernel, {"units": "1", "kind": "kernel"})
    return ds


# --------------------------------------------------------------------------- validation
def _check_center_attrs(ds):
    """Refuse a tangent point (``center_ra``/``center_dec`` attributes of the Dataset or its ``x``/``y``, deg) that
    is not a finite (RA, Dec) with |Dec| <= 90, the rule of ``observation(center=...)``."""
    for where, attrs in (("", ds.attrs), *((f" coordinate {d}", ds[d].attrs) for d in ("x", "y") if d in ds.coords)):
        if "center_ra" not in attrs and "center_dec" not in attrs:
            continue
        ra, dec = attrs.get("center_ra", 0.0), attrs.get("center_dec", 0.0)  # either may be on another object
        try:
            ok = np.isfinite(float(ra)) and np.isfinite(float(dec)) and -90.0 <= float(dec) <= 90.0
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise ValueError(f"observation '{ds.attrs.get('name', '?')}'{where}: center_ra/center_dec = {ra!r}, "
                             f"{dec!r} is not a finite (RA, Dec) in degrees with |Dec| <= 90; fix the attributes "
                             "or rebuild with xfusion.observation(..., center=(ra, dec))")


def _check_uniform_pixels(ds, d):
    """Refuse an ``x``/``y`` coordinate whose pixel centres are not increasing evenly (:func:`pixel_step`) by its
    ``pixel_size`` attribute (rtol ``REL_TOL``), the rule :func:`observation` applies: the model uses the attribute
    and assumes a regular grid, so edited centres or an attribute left stale (e.g. by ``coarsen``) would be silently
    mislabelled."""
    name, size = ds.attrs.get("name", "?"), float(ds[d].attrs["pixel_size"])
    if not np.isfinite(size) or size <= 0:
        raise ValueError(f"coordinate {d} of '{name}' has pixel_size {size!r}; it must be a positive number (arcsec)")
    step = pixel_step(ds[d].values, d, who=f" of '{name}'")
    if step is not None and not np.isclose(step, size, rtol=REL_TOL, atol=0):
        raise ValueError(f"coordinate {d} of '{name}' has pixel_size attribute {size:g} arcsec but its values are "
                         f"{step:g} arcsec apart (e.g. after coarsen or a strided isel); set "
                         f"ds['{d}'].attrs['pixel_size'] = {step:g} if the values are right")


def _check_kernel_offsets(ds):
    """Refuse a 1D response kernel whose ``energy_offset`` coordinate is not the centred grid the model uses:
    keV, odd length, ``(i - n // 2) * spacing`` with ``spacing`` its attribute (the model reads only the attribute,
    so offsets shifted or rescaled by hand would be silently ignored)."""
    name = ds.attrs.get("name", "?")
    if "energy_offset" not in ds.coords or "spacing" not in ds["energy_offset"].attrs:
        raise ValueError(f"response kernel of '{name}' has no energy_offset coordinate with a 'spacing' attribute "
                         "(keV); build it with xfusion.observation(..., response=kernel, response_spacing=...)")
    _check_units(ds["energy_offset"], "keV", "coordinate energy_offset")
    off = np.asarray(ds["energy_offset"].values, dtype=np.float64)
    spacing = float(ds["energy_offset"].attrs["spacing"])
    want = (np.arange(off.size) - off.size // 2) * spacing
    if off.size % 2 == 0 or not np.isfinite(spacing) or spacing <= 0 or not np.allclose(
            off, want, rtol=0, atol=PSF_COORD_TOL * abs(spacing)):
        raise ValueError(f"response kernel of '{name}': energy_offset ({off[0]:.6g} .. {off[-1]:.6g} keV, {off.size} "
                         f"samples) is not the odd, centred grid (i - n // 2) * spacing with its spacing attribute "
                         f"{spacing:g} keV that the model uses; rebuild the observation with xfusion.observation "
                         "(a kernel DataArray is placed by its energy_offset coordinate)")


def validate(ds: xr.Dataset) -> xr.Dataset:
    """Check an observation Dataset against the schema; return it unchanged or raise ValueError.

    Works on NumPy- or Dask-backed datasets: the value checks of Dask-backed counts and
    ``background_rate`` (cube-sized) are skipped here to avoid a full pass; ``fuse`` does them when it
    first reads them (the counts in its first pass over the data, the background when its model is built).
    A Dask-backed ``response`` (small) is loaded and checked as in memory.

    Checks dims and units of counts, coordinates and exposure; ``x``/``y`` pixel centres
    uniformly spaced by their ``pixel_size`` attribute (as :func:`observation` builds them) and
    energy bins increasing (descending ones are refused with the fix, ``ds.sortby(...)``);
    counts finite and >= 0; effective area finite and >= 0; a ``psf`` (each band of a
    ``psf_energy`` stack) finite, >= 0 and summing to 1 within ``PSF_NORM_TOL`` (the rules
    of :func:`observation`, :func:`check_psf_values`); a ``response`` finite (a 1D kernel also >= 0 and
    summing to 1, the same check); a ``background_rate`` finite and >= 0; a ``mask`` boolean.
    """
    if not isinstance(ds, xr.Dataset):
        raise TypeError(f"an observation is an xarray.Dataset; got {type(ds).__name__}. Build one with xfusion.observation")
    for v in ("counts", "exposure"):
        if v not in ds:
            fix = "set ds['exposure'] = ((), seconds, {'units': 's'})" if v == "exposure" else "add a counts cube"
            raise ValueError(f"observation '{ds.attrs.get('name', '?')}' has no '{v}' variable; {fix}")
    pixel_obs = ds["counts"].dims == PIXEL_DIMS
    if ds["counts"].dims != CUBE_DIMS and not pixel_obs:
        raise ValueError(f"counts dims must be {CUBE_DIMS} (or {PIXEL_DIMS} for a detector-pixel observation); got "
                         f"{ds['counts'].dims}. Use .transpose{CUBE_DIMS}")
    for d in (("det_x", "det_y") if pixel_obs else ("x", "y")):
        if d not in ds.coords:
            raise ValueError(f"coordinate {d} is missing (arcsec)")
        _check_units(ds[d], "arcsec", f"coordinate {d}")
        if "pixel_size" not in ds[d].attrs:
            raise ValueError(f"coordinate {d} has no 'pixel_size' attribute (arcsec)")
        if not pixel_obs:
            _check_uniform_pixels(ds, d)
    if pixel_obs:
        for v, u in (("roll", "deg"), ("array_x", "arcsec"), ("array_y", "arcsec")):
            if v not in ds:
                raise ValueError(f"detector-pixel observation '{ds.attrs.get('name', '?')}' has no '{v}' ({u}); "
                                 "build it with xfusion.observation(..., det_x=, det_y=, roll=, array_center=)")
            _check_units(ds[v], u, v)
            if not np.all(np.isfinite(np.asarray(ds[v].values, dtype=np.float64))):
                raise ValueError(f"detector-pixel observation '{ds.attrs.get('name', '?')}': '{v}' is not finite "
                                 f"({ds[v].values!r} {u}); give the array's roll and centre")
        for d in ("det_x", "det_y"):
            if not np.all(np.isfinite(np.asarray(ds[d].values, dtype=np.float64))):
                raise ValueError(f"detector-pixel observation '{ds.attrs.get('name', '?')}': coordinate {d} has "
                                 "non-finite values; give every detector pixel's offset (arcsec)")
    if "background_rate" in ds:
        _check_units(ds["background_rate"], "count s-1", "background_rate")
        if ds["background_rate"].dims != ds["counts"].dims:
            raise ValueError(f"background_rate dims {ds['background_rate'].dims} differ from counts {ds['counts'].dims}")
        if isinstance(ds["background_rate"].data, np.ndarray):  # Dask: checked where the model reads it
            check_background_values(ds.attrs.get("name", "?"), ds["background_rate"].data)
    if "mask" in ds and ds["mask"].dims != ds["counts"].dims:
        raise ValueError(f"mask of '{ds.attrs.get('name', '?')}' has dims {ds['mask'].dims}; it must have the dims "
                         f"of counts {ds['counts'].dims}: broadcast it, e.g. ds['mask'] = "
                         "ds['mask'].broadcast_like(ds['counts']).transpose(*ds['counts'].dims)")
    if "mask" in ds and ds["mask"].dtype != bool:
        raise ValueError(f"mask of '{ds.attrs.get('name', '?')}' has dtype {ds['mask'].dtype}; a mask is boolean "
                         "(True where the data are valid): ds['mask'] = ds['mask'] > 0")
    for c in ("energy", "energy_lo", "energy_hi"):
        if c not in ds.coords:
            raise ValueError(f"coordinate '{c}' is missing; energies need explicit edges (energy_lo, energy_hi in keV)")
        if ds[c].attrs.get("units") in ("um", "micron"):
            raise ValueError(f"observation '{ds.attrs.get('name', '?')}' has a wavelength axis ({c} in um): the "
                             "counts schema is for X-ray energies in keV. Fuse imager + IFU wavelength data with "
                             "xfusion.jwst.fuse_jwst, or convert the edges to keV with astropy "
                             "(edges.to(u.keV, equivalencies=u.spectral()), reversing the channel order)")
        _check_units(ds[c], "keV", f"coordinate {c}")
    energy_edges(ds, "energy")
    _check_units(ds["exposure"], "s", "exposure")
    if ds["exposure"].ndim != 0:
        raise ValueError(f"exposure of '{ds.attrs.get('name', '?')}' has dims {ds['exposure'].dims}; it is one number "
                         "(s). An exposure map: pass the largest as exposure and build the observation with "
                         "xfusion.observation (a detector-pixel observation takes per-pixel exposures)")
    _check_center_attrs(ds)
    t = float(ds["exposure"].values)
    if not np.isfinite(t) or t <= 0:
        raise ValueError(f"exposure of '{ds.attrs.get('name', '?')}' must be > 0 s; got {t}")
    if "effective_area" in ds:
        _check_units(ds["effective_area"], "cm2", "effective_area")
        allowed = [(), ("energy_true",), ("pixel", "energy_true") if pixel_obs else ("x", "y", "energy_true")]
        if ds["effective_area"].dims not in allowed:
            raise ValueError(f"effective_area of '{ds.attrs.get('name', '?')}' has dims {ds['effective_area'].dims}; "
                             f"allowed: {', '.join(map(str, allowed))}. An ARF is over true energies: rename its "
                             "dimension to 'energy_true' with edges energy_true_lo/energy_true_hi (keV), or build the "
                             "observation with xfusion.observation(..., effective_area=...)")
        if "energy_true" in ds["effective_area"].dims:
            if not {"energy_true_lo", "energy_true_hi"} <= set(ds.coords):
                raise ValueError(f"effective_area of '{ds.attrs.get('name', '?')}' is over energy_true but the "
                                 "coordinates energy_true_lo/energy_true_hi (keV) are missing; give the ARF's edges")
            energy_edges(ds, "energy_true")
        a = np.asarray(ds["effective_area"].values)
        if not np.all(np.isfinite(a)) or np.any(a < 0):
            raise ValueError("effective_area contains negative or non-finite values")
    if "psf" in ds:
        psf = ds["psf"]
        if "psf_energy" in psf.dims:
            for i in range(psf.sizes["psf_energy"]):
                check_psf_values(psf.isel(psf_energy=i).values, f"psf band {i} (psf_energy index {i})")
        else:
            check_psf_values(psf.values)
    if "response" in ds:  # small: a Dask-backed one (e.g. read from Zarr) is loaded for the same checks
        r = np.asarray(ds["response"].values)
        if not np.all(np.isfinite(r)):
            raise ValueError(f"response of '{ds.attrs.get('name', '?')}' contains {int(np.sum(~np.isfinite(r)))} "
                             "NaN or inf value(s); a response must be finite. Fix or rebuild it (e.g. with "
                             "xfusion.observation, or xfusion.io.read_rmf for an RMF)")
        if ds["response"].attrs.get("kind") == "kernel":
            check_psf_values(r, **KERNEL_CHECK)
            _check_kernel_offsets(ds)
    counts = ds["counts"].data
    if isinstance(counts, np.ndarray):
        gaussian = "variance" in ds or str(ds.attrs.get("data_term", "poisson")).lower() == "gaussian"
        n_bad = int(np.sum(~np.isfinite(counts)))
        check_count_values(ds.attrs.get("name", "?"), n_bad, float(np.min(counts, initial=0.0)) if not n_bad else 0.0,
                           gaussian, ds.encoding.get("source"))
    return ds


def check_background_values(name, rate):
    """Refuse a ``background_rate`` (count s-1 per data voxel, NumPy) with NaN/inf or negative values:
    :func:`validate` for an in-memory one, :func:`xfusion.operators.model.build_model` when it reads a
    Dask-backed one (the model holds the background in memory)."""
    b = np.asarray(rate)
    if not np.all(np.isfinite(b)) or np.any(b < 0):
        raise ValueError(f"background_rate of '{name}' contains negative or non-finite values; a background is "
                         "finite and >= 0 (count s-1 per voxel)")


def check_count_values(name, n_nonfinite, minimum, gaussian=False, source=None):
    """Refuse counts with NaN/inf (``n_nonfinite`` voxels) or, unless the data are Gaussian (xfusion.gaussian: they
    may be negative), negative values (``minimum``, the smallest value or 0): :func:`validate` for in-memory counts,
    :func:`xfusion.fuse` in the pass that first reads Dask-backed ones. ``source``: the store the counts were read
    from (xarray's ``encoding["source"]``), named in the message because a chunk missing from a Zarr store reads back
    as NaN, which masking would silently hide."""
    if n_nonfinite:
        store = (f" They were read from '{source}': a chunk file missing from a Zarr store reads back as NaN, so if "
                 "the store was written complete it has lost files since; rewrite it from its source rather than "
                 "masking them." if isinstance(source, (str, os.PathLike)) else "")
        raise ValueError(f"counts of '{name}' contain NaN or inf ({int(n_nonfinite)} voxels); xfusion never patches "
                         "them silently. Set those voxels to 0 and pass mask= (False where invalid) to exclude them "
                         f"from the fit.{store}")
    if minimum < 0 and not gaussian:
        raise ValueError(f"counts of '{name}' contain negative values (min {float(minimum):g}); counts must be >= 0 "
                         "(data with Gaussian errors: give their 'variance' variable)")
