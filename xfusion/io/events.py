"""Bin X-ray event lists into (x, y, energy) count cubes.

Supported event files (``EVENTS`` extension):

=================  ==================  ======================  =====================================
instrument         position columns    energy column           default screening
=================  ==================  ======================  =====================================
``xmm_epic``       ``X``, ``Y``        ``PI`` (eV)             ``PATTERN <= 4`` (pn; ``<= 12`` for
                                                               MOS), ``FLAG == 0``
``chandra_acis``   ``x``, ``y``        ``energy`` (eV)         ``grade`` in {0, 2, 3, 4, 6},
                                                               ``status == 0`` (all bits clear)
``xrism_resolve``  ``X``, ``Y``        ``PI`` (0.5 eV chans)   ``ITYPE == 0`` (high-res primary, Hp)
=================  ==================  ======================  =====================================

The instrument is detected from ``TELESCOP``/``INSTRUME`` unless given.

Sky positions come from the column WCS keywords of the position columns
(``TCTYPn``, ``TCRPXn``, ``TCRVLn``, ``TCDLTn``, OGIP/FITS "sky pixel"
convention) and are converted to RA/Dec, then gnomonically projected about
``center``.  Output coordinates are tangent-plane offsets in arcsec:
``x`` increases towards the **west** (like the sky-pixel X axis and image
columns of a north-up, east-left image) and ``y`` towards the north.  This
matches the PSF convention of :mod:`xfusion.io.psf` (offsets grow with the
image column).

The exposure (s) is taken from the EVENTS header keyword ``EXPOSURE`` if
present, else ``LIVETIME``, else ``ONTIME`` (or the keyword named by
``exposure_keyword``); the keyword used is recorded in
``attrs["exposure_keyword"]``.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Mapping

import numpy as np
import xarray as xr
from astropy.io import fits

from xfusion.io.ogip import edges_coords

__all__ = ["read_events", "INSTRUMENTS"]

_ACIS_GOOD_GRADES = (0, 2, 3, 4, 6)

#: Per-instrument column names, energy scale (keV per unit of the energy
#: column) and default screening.
INSTRUMENTS: dict[str, dict] = {
    "xmm_epic": {
        "x": "X", "y": "Y", "energy": "PI", "kev_per_unit": 1e-3,
        "filters": {"PATTERN": ("<=", 4), "FLAG": ("==", 0)},
    },
    "chandra_acis": {
        "x": "x", "y": "y", "energy": "energy", "kev_per_unit": 1e-3,
        "filters": {"grade": ("in", _ACIS_GOOD_GRADES), "status": ("==", 0)},
    },
    "xrism_resolve": {
        "x": "X", "y": "Y", "energy": "PI", "kev_per_unit": 0.5e-3,
        "filters": {"ITYPE": ("==", 0)},
    },
}

_EXPOSURE_KEYWORDS = ("EXPOSURE", "LIVETIME", "ONTIME")


def _detect_instrument(header, label):
    tel = str(header.get("TELESCOP", "")).strip().upper()
    ins = str(header.get("INSTRUME", "")).strip().upper()
    if tel.startswith("XMM") and ins in ("EPN", "EMOS1", "EMOS2"):
        return "xmm_epic", ins
    if tel == "CHANDRA" and ins.startswith("ACIS"):
        return "chandra_acis", ins
    if tel == "XRISM" and ins.startswith("RESOLVE"):
        return "xrism_resolve", ins
    raise ValueError(
        f"{label}: cannot detect the instrument from TELESCOP={tel!r}, "
        f"INSTRUME={ins!r}; pass instrument= one of {sorted(INSTRUMENTS)}."
    )


def _column_mask(values, rule, name):
    """Boolean mask of events passing one screening rule."""
    if callable(rule):
        return np.asarray(rule(values), dtype=bool)
    if isinstance(rule, tuple) and len(rule) == 2 and isinstance(rule[0], str):
        op, ref = rule
    elif isinstance(rule, (list, set, frozenset, np.ndarray)):
        op, ref = "in", rule
    else:
        op, ref = "==", rule
    v = np.asarray(values)
    if v.dtype == bool and v.ndim == 2:
        # bit-array column (e.g. Chandra status '32X'): compare as "any bit set"
        if op == "==" and ref == 0:
            return ~v.any(axis=1)
        raise ValueError(f"Only '== 0' is supported for bit column {name!r}.")
    ops: dict[str, Callable] = {
        "==": np.equal, "!=": np.not_equal, "<": np.less, "<=": np.less_equal,
        ">": np.greater, ">=": np.greater_equal,
    }
    if op == "in":
        return np.isin(v, np.asarray(list(ref)))
    if op not in ops:
        raise ValueError(f"Unknown filter operator {op!r} for column {name!r}.")
    return ops[op](v, ref)


def _column_wcs(hdu, colname, label):
    names = [c.upper() for c in hdu.columns.names]
    idx = names.index(colname.upper()) + 1
    h = hdu.header
    keys = {k: h.get(f"{k}{idx}") for k in ("TCTYP", "TCRPX", "TCRVL", "TCDLT")}
    missing = [f"{k}{idx}" for k, v in keys.items() if v is None]
    if missing:
        raise ValueError(
            f"{label}: sky column {colname} has no WCS keywords {missing}; "
            "cannot convert event positions to RA/Dec."
        )
    unit = str(h.get(f"TCUNI{idx}", "deg")).strip().lower()
    if unit not in ("deg", "degree", "degrees", ""):
        raise ValueError(f"{label}: column {colname} WCS unit {unit!r} is not degrees.")
    return keys


def _sky_to_radec(x, y, wx, wy):
    from astropy.wcs import WCS

    w = WCS(naxis=2)
    w.wcs.ctype = [str(wx["TCTYP"]).strip(), str(wy["TCTYP"]).strip()]
    w.wcs.crpix = [float(wx["TCRPX"]), float(wy["TCRPX"])]
    w.wcs.crval = [float(wx["TCRVL"]), float(wy["TCRVL"])]
    w.wcs.cdelt = [float(wx["TCDLT"]), float(wy["TCDLT"])]
    w.wcs.cunit = ["deg", "deg"]
    # column values are FITS-convention pixel coordinates -> origin 1
    ra, dec = w.wcs_pix2world(x, y, 1)
    return ra, dec


def _tangent_offsets(ra, dec, ra0, dec0):
    """Gnomonic offsets (arcsec): x towards the west, y towards the north."""
    a = np.deg2rad(ra)
    d = np.deg2rad(dec)
    a0 = np.deg2rad(ra0)
    d0 = np.deg2rad(dec0)
    cos_c = np.sin(d0) * np.sin(d) + np.cos(d0) * np.cos(d) * np.cos(a - a0)
    xi = np.cos(d) * np.sin(a - a0) / cos_c                    # east
    eta = (np.cos(d0) * np.sin(d) - np.sin(d0) * np.cos(d) * np.cos(a - a0)) / cos_c
    rad2as = 180.0 / np.pi * 3600.0
    return -xi * rad2as, eta * rad2as


def read_events(
    path,
    *,
    energy_edges,
    pixel_size: float,
    center: tuple[float, float],
    shape: tuple[int, int],
    filters: Mapping | None = None,
    instrument: str | None = None,
    hdu: str | int = "EVENTS",
    exposure_keyword: str | None = None,
) -> xr.DataArray:
    """Bin an event list into a counts cube.

    Parameters
    ----------
    path : str or os.PathLike
        Event file (``.gz`` fine).
    energy_edges : array_like, shape (n_energy + 1,)
        Energy bin edges in keV (increasing).
    pixel_size : float
        Spatial pixel size in arcsec.
    center : (float, float)
        (RA, Dec) in degrees of the cube centre (tangent point).
    shape : (int, int)
        Number of pixels (nx, ny).  Pixel centres are at
        ``(i - (n - 1) / 2) * pixel_size``.
    filters : mapping, optional
        Event screening ``{column: rule}``; a rule is a callable returning a
        boolean mask, a tuple ``(op, value)`` with op one of ``== != < <= >
        >= in``, a list/set (membership) or a scalar (equality).  ``None``
        applies the instrument defaults (see module docstring; for XMM MOS
        ``PATTERN <= 12``); ``{}`` applies no screening.
    instrument : {"xmm_epic", "chandra_acis", "xrism_resolve"}, optional
        Default: detected from ``TELESCOP``/``INSTRUME``.
    hdu : str or int
        Events extension (default ``"EVENTS"``).
    exposure_keyword : str, optional
        Header keyword giving the exposure; default: the first of
        ``EXPOSURE``, ``LIVETIME``, ``ONTIME`` present.

    Returns
    -------
    xarray.DataArray, dims ("x", "y", "energy"), int64, units "count"
        Coordinates ``x``, ``y`` (arcsec tangent-plane offsets, x west, y
        north), ``energy``, ``energy_lo``, ``energy_hi`` (keV).  ``attrs``:
        ``units``, ``exposure`` (s, NaN if no keyword), ``exposure_keyword``,
        ``instrument``, ``file``, ``center`` (RA, Dec deg), ``pixel_size``,
        ``n_events`` (in file), ``n_selected`` (after screening),
        ``n_binned`` (inside the cube), ``filters`` (text).
    """
    label = os.path.basename(os.fspath(path))
    edges = np.asarray(energy_edges, dtype=np.float64)
    if edges.ndim != 1 or edges.size < 2 or np.any(np.diff(edges) <= 0):
        raise ValueError("energy_edges must be a 1-D increasing array of >= 2 edges (keV).")
    nx, ny = (int(s) for s in shape)
    if nx < 1 or ny < 1 or not float(pixel_size) > 0:
        raise ValueError("shape must be positive and pixel_size > 0.")

    with fits.open(path, memmap=False) as hdul:
        try:
            ev = hdul[hdu]
        except KeyError as exc:
            raise ValueError(
                f"{label}: no {hdu!r} extension; HDUs: {[h.name for h in hdul]}."
            ) from exc
        header = ev.header
        if instrument is None:
            instrument, ins_name = _detect_instrument(header, label)
        else:
            ins_name = str(header.get("INSTRUME", "")).strip().upper()
        if instrument not in INSTRUMENTS:
            raise ValueError(f"instrument must be one of {sorted(INSTRUMENTS)}.")
        cfg = INSTRUMENTS[instrument]
        if filters is None:
            filters = dict(cfg["filters"])
            if instrument == "xmm_epic" and ins_name.startswith("EMOS"):
                filters["PATTERN"] = ("<=", 12)
        present = [c.upper() for c in ev.columns.names]
        needed = [cfg["x"], cfg["y"], cfg["energy"], *filters]
        missing = [c for c in needed if c.upper() not in present]
        if missing:
            raise ValueError(
                f"{label}: EVENTS is missing column(s) {missing} needed for "
                f"{instrument}; it has {ev.columns.names}."
            )
        data = ev.data
        n_events = len(data)
        mask = np.ones(n_events, dtype=bool)
        for col, rule in filters.items():
            mask &= _column_mask(data[col], rule, col)
        x_pix = np.asarray(data[cfg["x"]], dtype=np.float64)[mask]
        y_pix = np.asarray(data[cfg["y"]], dtype=np.float64)[mask]
        energy = np.asarray(data[cfg["energy"]], dtype=np.float64)[mask] * cfg["kev_per_unit"]
        wx = _column_wcs(ev, cfg["x"], label)
        wy = _column_wcs(ev, cfg["y"], label)
        if exposure_keyword is None:
            exposure_keyword = next((k for k in _EXPOSURE_KEYWORDS if k in header), None)
        if exposure_keyword is None:
            warnings.warn(f"{label}: no EXPOSURE/LIVETIME/ONTIME keyword; exposure=NaN",
                          stacklevel=2)
            exposure = float("nan")
        else:
            exposure = float(header[exposure_keyword])

    ra, dec = _sky_to_radec(x_pix, y_pix, wx, wy)
    xo, yo = _tangent_offsets(ra, dec, float(center[0]), float(center[1]))
    x_edges = (np.arange(nx + 1) - nx / 2.0) * float(pixel_size)
    y_edges = (np.arange(ny + 1) - ny / 2.0) * float(pixel_size)
    cube, _ = np.histogramdd(np.column_stack([xo, yo, energy]),
                             bins=(x_edges, y_edges, edges))
    cube = cube.astype(np.int64)

    coords = {
        "x": xr.Variable("x", 0.5 * (x_edges[1:] + x_edges[:-1]), {"units": "arcsec"}),
        "y": xr.Variable("y", 0.5 * (y_edges[1:] + y_edges[:-1]), {"units": "arcsec"}),
    }
    coords.update(edges_coords("energy", edges[:-1], edges[1:]))
    attrs = {
        "units": "count",
        "exposure": exposure,
        "exposure_keyword": exposure_keyword,
        "instrument": instrument,
        "file": label,
        "center": (float(center[0]), float(center[1])),
        "pixel_size": float(pixel_size),
        "n_events": int(n_events),
        "n_selected": int(mask.sum()),
        "n_binned": int(cube.sum()),
        "filters": "; ".join(f"{k} {v}" for k, v in filters.items()),
    }
    return xr.DataArray(cube, dims=("x", "y", "energy"), coords=coords,
                        name="counts", attrs=attrs)
