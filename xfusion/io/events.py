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

Exposure (s) -- ``attrs["exposure"]``, how it was obtained in
``attrs["exposure_source"]``:

* **From the GTIs** (default when the file has GTI extensions): the sum of the
  lengths of the good time intervals (overlaps merged) of the CCD the events
  come from, times the dead-time correction of that mission:

  =================  ===========================  =================================
  instrument         GTI extensions               dead-time correction (livetime
                                                  fraction), EVENTS header
  =================  ===========================  =================================
  ``xmm_epic``       ``STDGTInn`` (one per CCD    ``LIVETInn / ONTIMEnn`` of the CCD
                     ``nn``; ``CCDNR`` column)    (``DEADC`` if those are absent)
  ``chandra_acis``   ``GTIn`` with ``CCD_ID``     ``DTCOR`` (same for all CCDs)
                     (``ccd_id`` column)
  ``xrism_resolve``  ``GTI`` (whole array)        ``DEADC`` if present, else
                                                  ``LIVETIME / ONTIME``, else 1
  =================  ===========================  =================================

  Missing correction keywords mean a correction of 1, said in
  ``attrs["exposure_source"]``.  The CCD is the one holding most of the binned
  events; when binned events come from CCDs whose exposures differ by more
  than 0.1 % a warning says so (``attrs["exposure_per_ccd"]`` lists them all).
  Events whose ``TIME`` lies outside the GTIs of their CCD are dropped
  (``attrs["n_outside_gti"]``).
* **From a header keyword** when there is no GTI extension or when
  ``exposure_keyword`` is given: ``EXPOSURE``, else ``LIVETIME``, else
  ``ONTIME`` (``attrs["exposure_keyword"]``).

Energies and channels.  Integer ``PI`` columns are binned as integers, never
as float energies: with ``channel_edges`` (what
:func:`xfusion.io.observation_files.observation_from_files` passes) an event of channel
``PI // pi_per_channel`` goes to group ``k`` when ``channel_edges[k] <=
channel < channel_edges[k + 1]`` (the RMF's EBOUNDS give the energies, e.g.
EPIC-pn: 5 eV channels, ``pi_per_channel=5``; Resolve: ``pi_per_channel=1``);
this is exact even where EBOUNDS are not linear in the channel number (EPIC-pn
below 3 keV).  With ``energy_edges`` only, an event goes to bin ``k`` when
``edge_k <= PI * unit < edge_k+1``, each edge first snapped to the nearest
whole PI value when within 1 % of a PI unit of it, so float32 EBOUNDS edges
(off by ~1e-7 keV) never move an event to the neighbouring bin.  The floating
``energy`` column of Chandra is binned as is.

Pixel binning (``bin_by="pixel"``).  Events are screened as usual (Resolve default:
``ITYPE == 0``, high-resolution primary "Hp" grade only; add Mp with
``filters={"ITYPE": ("in", (0, 1))}``), kept inside the GTIs, and counted per ``PIXEL`` and
energy group.  The pixels are those from ``TLMIN`` to ``TLMAX`` of the ``PIXEL``
column minus ``exclude_pixels``; a pixel without events still gets a (zero) spectrum.
Each pixel's detector position is the most frequent (``DETX``, ``DETY``) of its events
(integer detector pixel coordinates), centred on the middle of the ``TLMIN``-``TLMAX``
range of those columns and scaled by ``detector_pixel_size``: ``det_x = (DETX -
(TLMIN + TLMAX) / 2) * detector_pixel_size``; DETX is taken to be the detector x axis
that ``roll`` rotates (a detector frame mirrored with respect to the sky would need its
DETX negated). A pixel with no events and so no position is an error.

Default screening skips a column that an already-screened file does not have
when the screen is optional (Chandra ``status``: level-2 files are already
status-filtered); the skipped screen is named in ``attrs["filters"]``.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Mapping

import numpy as np
import xarray as xr
from astropy.io import fits

from xfusion.io.ogip_read import edges_coords
from xfusion.observation import _center_degrees

__all__ = ["read_events", "INSTRUMENTS"]

_ACIS_GOOD_GRADES = (0, 2, 3, 4, 6)

#: Per-instrument column names, energy scale (keV per unit of the energy
#: column), default screening, screens skipped when their column is absent
#: (already-screened files), CCD column, and whether the energy column holds
#: integer PI channels.
INSTRUMENTS: dict[str, dict] = {
    "xmm_epic": {
        "x": "X", "y": "Y", "energy": "PI", "kev_per_unit": 1e-3, "pi": True,
        "filters": {"PATTERN": ("<=", 4), "FLAG": ("==", 0)},
        "optional": (), "ccd": "CCDNR",
    },
    "chandra_acis": {
        "x": "x", "y": "y", "energy": "energy", "kev_per_unit": 1e-3, "pi": False,
        "filters": {"grade": ("in", _ACIS_GOOD_GRADES), "status": ("==", 0)},
        "optional": ("status",), "ccd": "ccd_id",
    },
    "xrism_resolve": {
        "x": "X", "y": "Y", "energy": "PI", "kev_per_unit": 0.5e-3, "pi": True,
        "filters": {"ITYPE": ("==", 0)},
        "optional": (), "ccd": None,
        # bin_by="pixel": the calibration pixel sees the 55Fe source, not the sky; nominal 30" pixels
        "exclude_pixels": (12,), "detector_pixel_size": 30.0,
    },
}

_EXPOSURE_KEYWORDS = ("EXPOSURE", "LIVETIME", "ONTIME")
#: relative spread of per-CCD exposures above which a warning is issued
_CCD_EXPOSURE_RTOL = 1e-3
#: an energy edge within this fraction of a PI unit of a whole PI value is snapped to it
_PI_SNAP = 0.01


# --------------------------------------------------------------------------- GTIs
def _merged_intervals(start, stop):
    """Union of [start, stop) intervals, sorted: (starts, stops)."""
    start = np.asarray(start, dtype=np.float64).ravel()
    stop = np.asarray(stop, dtype=np.float64).ravel()
    keep = stop > start
    start, stop = start[keep], stop[keep]
    if start.size == 0:
        return start, stop
    order = np.argsort(start, kind="stable")
    start, stop = start[order], stop[order]
    run_stop = np.maximum.accumulate(stop)
    new = np.concatenate(([True], start[1:] > run_stop[:-1]))
    idx = np.flatnonzero(new)
    return start[idx], np.maximum.reduceat(stop, idx)


def _gti_ccd(hdu, instrument):
    """CCD a GTI extension belongs to (None = all CCDs), or False if not a GTI of this mission."""
    import re

    name = hdu.name.upper()
    cols = [c.upper() for c in hdu.columns.names]
    if "START" not in cols or "STOP" not in cols:
        return False
    if instrument == "xmm_epic":
        m = re.fullmatch(r"STDGTI(\d+)", name)
        if not m:
            return False
        return int(hdu.header.get("CCDID", m.group(1)))
    if instrument == "chandra_acis":
        m = re.fullmatch(r"GTI(\d*)", name)
        if "CCD_ID" in hdu.header:
            return int(hdu.header["CCD_ID"])
        if not m:
            return False
        return int(m.group(1)) if m.group(1) else None
    return None if name == "GTI" else False


def _read_gtis(hdul, instrument):
    """{ccd (or None): (starts, stops)} merged, from the mission's GTI extensions."""
    gtis: dict = {}
    for h in hdul[1:]:
        if not isinstance(h, fits.BinTableHDU):
            continue
        ccd = _gti_ccd(h, instrument)
        if ccd is False:
            continue
        s0, s1 = gtis.get(ccd, (np.zeros(0), np.zeros(0)))
        gtis[ccd] = _merged_intervals(np.concatenate([s0, h.data["START"]]),
                                      np.concatenate([s1, h.data["STOP"]]))
    return gtis


def _livetime_fraction(header, instrument, ccd):
    """(dead-time correction factor, keyword text) for one CCD (see module docstring); a factor outside (0, 1] (or not
    a number) is refused by name: the live time cannot exceed the on time."""
    f, kw = _livetime_keyword(header, instrument, ccd)
    try:
        ok = 0.0 < float(f) <= 1.0 + 1e-9
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"dead-time correction {kw} = {f!r} is not in (0, 1] (live time / on time): the event file's "
                         "header is damaged; pass exposure_keyword= (e.g. 'LIVETIME' or 'EXPOSURE') or fix the keyword")
    return float(f), kw


def _livetime_keyword(header, instrument, ccd):
    def ratio(live, on):
        if live in header and on in header:
            try:
                if float(header[on]) > 0:
                    return float(header[live]) / float(header[on]), f"{live}/{on}"
            except (TypeError, ValueError):
                return f"{header[live]!r}/{header[on]!r}", f"{live}/{on}"
        return None

    if instrument == "chandra_acis":
        if "DTCOR" in header:
            return header["DTCOR"], "DTCOR"
    elif instrument == "xmm_epic":
        r = ratio(f"LIVETI{ccd:02d}", f"ONTIME{ccd:02d}") if ccd is not None else None
        if r is not None:
            return r
        if "DEADC" in header:
            return header["DEADC"], "DEADC"
    else:
        if "DEADC" in header:
            return header["DEADC"], "DEADC"
        r = ratio("LIVETIME", "ONTIME")
        if r is not None:
            return r
    return 1.0, "no dead-time keyword: correction 1"


def _in_intervals(t, starts, stops):
    i = np.searchsorted(starts, t, side="right") - 1
    ok = i >= 0
    ok[ok] = t[ok] < stops[i[ok]]
    return ok


# --------------------------------------------------------------------------- energies
def _snap_pi_edges(edges_kev, kev_per_unit):
    """Edges in PI units, snapped to whole PI values within _PI_SNAP of one."""
    e = np.asarray(edges_kev, dtype=np.float64) / kev_per_unit
    r = np.round(e)
    return np.where(np.abs(e - r) <= _PI_SNAP, r, e)


def _events_hdu(hdul, hdu, label):
    """The events extension ``hdu`` of an open FITS file; a ValueError naming the file's HDUs if it has none."""
    try:
        return hdul[hdu]
    except KeyError as exc:
        raise ValueError(f"{label}: no {hdu!r} extension; HDUs: {[h.name for h in hdul]}.") from exc


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
    """Gnomonic offsets (arcsec): x towards the west, y towards the north. Positions 90 deg or more from the tangent
    point have no gnomonic projection (the formula would put the far hemisphere back onto the field): NaN, binned
    nowhere."""
    a = np.deg2rad(ra)
    d = np.deg2rad(dec)
    a0 = np.deg2rad(ra0)
    d0 = np.deg2rad(dec0)
    cos_c = np.sin(d0) * np.sin(d) + np.cos(d0) * np.cos(d) * np.cos(a - a0)
    cos_c = np.where(cos_c > 0, cos_c, np.nan)
    xi = np.cos(d) * np.sin(a - a0) / cos_c                    # east
    eta = (np.cos(d0) * np.sin(d) - np.sin(d0) * np.cos(d) * np.cos(a - a0)) / cos_c
    rad2as = 180.0 / np.pi * 3600.0
    return -xi * rad2as, eta * rad2as


def read_events(
    path,
    *,
    energy_edges,
    pixel_size: float | None = None,
    center: tuple[float, float] = None,
    shape: tuple[int, int] | None = None,
    filters: Mapping | None = None,
    instrument: str | None = None,
    hdu: str | int = "EVENTS",
    exposure_keyword: str | None = None,
    channel_edges=None,
    pi_per_channel: int | None = None,
    gti: bool = True,
    bin_by: str = "sky",
    exclude_pixels=None,
    detector_pixel_size: float | None = None,
    roll: float | None = None,
    array_center=None,
) -> xr.DataArray:
    """Bin an event list into a counts cube.

    Parameters
    ----------
    path : str or os.PathLike
        Event file (``.gz`` fine).
    energy_edges : array_like, shape (n_energy + 1,)
        Energy bin edges in keV (increasing).  With ``channel_edges`` they are
        only the energies of the groups (coordinates); the binning is by channel.
    pixel_size : float
        Spatial pixel size in arcsec.
    center : (float, float), (Quantity, Quantity) or astropy SkyCoord
        (RA, Dec) in degrees of the cube centre (tangent point).
    shape : (int, int)
        Number of pixels (nx, ny).  Pixel centres are at
        ``(i - (n - 1) / 2) * pixel_size``.
    filters : mapping, optional
        Event screening ``{column: rule}``; a rule is a callable returning a
        boolean mask, a tuple ``(op, value)`` with op one of ``== != < <= >
        >= in``, a list/set (membership) or a scalar (equality).  ``None``
        applies the instrument defaults (see module docstring; for XMM MOS
        ``PATTERN <= 12``); ``{}`` applies no screening.  A column missing
        from the file is an error, except for optional default screens
        (Chandra ``status``), which are skipped with a note in
        ``attrs["filters"]``.
    instrument : {"xmm_epic", "chandra_acis", "xrism_resolve"}, optional
        Default: detected from ``TELESCOP``/``INSTRUME``.
    hdu : str or int
        Events extension (default ``"EVENTS"``).
    exposure_keyword : str, optional
        Take the exposure from this EVENTS header keyword instead of the GTIs.
    channel_edges : array_like of int, shape (n_energy + 1,), optional
        Bin integer ``PI`` by channel: group ``k`` holds the channels
        ``channel_edges[k] <= PI // pi_per_channel < channel_edges[k + 1]``
        (channel numbers as in the RMF's EBOUNDS ``CHANNEL``).  PI instruments
        only (XMM EPIC, XRISM Resolve).
    pi_per_channel : int, optional
        PI values per RMF channel (EPIC-pn 5 eV channels: 5; Resolve: 1).
        Required with ``channel_edges``.
    gti : bool
        Use the GTI extensions for the exposure and drop events outside them
        (default).  False: header keyword only, no time screening.
    bin_by : {"sky", "pixel"}
        ``"pixel"`` (XRISM Resolve): bin by the ``PIXEL`` column instead of the sky
        position; see "Pixel binning" in the module docstring. ``pixel_size`` and
        ``shape`` are then not used.
    exclude_pixels : sequence of int, optional
        ``bin_by="pixel"``: detector pixels left out (default for Resolve: ``(12,)``, the
        calibration pixel, which sees the 55Fe source, not the sky). Add bad pixels here.
    detector_pixel_size : float, arcsec, optional
        ``bin_by="pixel"``: side of a detector pixel on the sky (default for Resolve: 30).
    roll : float, deg, optional
        ``bin_by="pixel"``: roll (position angle of the detector +DETY axis at the array centre,
        east of the local north there); default: the ``PA_NOM`` keyword (EVENTS header, then
        primary). Stored as given: it is not the rotation in the frame of ``center``, which
        differs by the turn of north between the array centre and ``center`` (0.3 deg at
        Dec 60 for a pointing 5' away); :func:`xfusion.grid.footprint_geometry` adds that turn
        when the array is placed on a grid, so binning about ``center`` or about the pointing
        gives the same footprint.
    array_center : (RA, Dec) deg (or Quantities, or a SkyCoord), optional
        ``bin_by="pixel"``: sky position of the array centre; default ``RA_PNT``/``DEC_PNT``,
        else ``RA_NOM``/``DEC_NOM``.

    Returns
    -------
    xarray.DataArray, dims ("x", "y", "energy"), int64, units "count"
        With ``bin_by="pixel"`` the dims are ("pixel", "energy"), with coords ``pixel``,
        ``det_x``, ``det_y`` (arcsec) and attrs ``roll`` (deg), ``array_center`` (x, y arcsec
        offsets about ``center``), ``detector_pixel_size`` and ``excluded_pixels``.
        Coordinates ``x``, ``y`` (arcsec tangent-plane offsets, x west, y
        north), ``energy``, ``energy_lo``, ``energy_hi`` (keV).  ``attrs``:
        ``units``, ``exposure`` (s, NaN if unknown), ``exposure_source``
        (text: GTIs and dead-time keyword, or header keyword),
        ``exposure_keyword`` (header keyword or None), ``ontime`` (s, sum of
        GTIs, NaN without GTIs), ``deadtime_correction``,
        ``exposure_per_ccd`` (text ``ccd: s`` pairs), ``ccd``,
        ``instrument``, ``file``, ``center`` (RA, Dec deg), ``pixel_size``,
        ``n_events`` (in file), ``n_selected`` (after screening and GTIs),
        ``n_outside_gti``, ``n_binned`` (inside the cube), ``filters`` (text),
        ``energy_binning`` (``"channel"``, ``"pi"`` or ``"energy"``).
    """
    label = os.path.basename(os.fspath(path))
    edges = np.asarray(energy_edges, dtype=np.float64)
    if edges.ndim != 1 or edges.size < 2 or np.any(np.diff(edges) <= 0):
        raise ValueError("energy_edges must be a 1-D increasing array of >= 2 edges (keV).")
    if bin_by not in ("sky", "pixel"):
        raise ValueError(f"bin_by must be 'sky' (an (x, y) image) or 'pixel' (detector pixels); got {bin_by!r}")
    if center is None:
        raise ValueError("center (RA, Dec in degrees: the tangent point of the sky offsets) is required")
    center = _center_degrees(center)  # numbers (deg), Quantities or a SkyCoord, as xfusion.observation takes
    if bin_by == "sky":
        if pixel_size is None or shape is None:
            raise ValueError("pixel_size and shape are required to bin events on the sky (bin_by='sky')")
        if len(shape) != 2 or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in shape):
            raise ValueError(f"shape must be two integers (pixels along x and y); got {shape!r}")
        nx, ny = (int(s) for s in shape)
        if nx < 1 or ny < 1 or not float(pixel_size) > 0:
            raise ValueError("shape must be positive and pixel_size > 0.")
    if channel_edges is not None:
        channel_edges = np.asarray(channel_edges)
        if (channel_edges.shape != edges.shape or not np.issubdtype(channel_edges.dtype, np.integer)
                or np.any(np.diff(channel_edges) <= 0)):
            raise ValueError(
                f"channel_edges must be {edges.size} strictly increasing integers (one per energy edge); "
                f"got shape {channel_edges.shape}, dtype {channel_edges.dtype}"
            )
        if pi_per_channel is None or int(pi_per_channel) < 1:
            raise ValueError("channel_edges needs pi_per_channel (PI values per channel, a positive integer)")

    with fits.open(path, memmap=False) as hdul:
        ev = _events_hdu(hdul, hdu, label)
        header = ev.header
        if instrument is None:
            instrument, ins_name = _detect_instrument(header, label)
        else:
            ins_name = str(header.get("INSTRUME", "")).strip().upper()
        if instrument not in INSTRUMENTS:
            raise ValueError(f"instrument must be one of {sorted(INSTRUMENTS)}.")
        cfg = INSTRUMENTS[instrument]
        present = [c.upper() for c in ev.columns.names]
        notes = []
        if filters is None:
            filters = dict(cfg["filters"])
            if instrument == "xmm_epic" and ins_name.startswith("EMOS"):
                filters["PATTERN"] = ("<=", 12)
            for col in cfg["optional"]:
                if col.upper() not in present:
                    filters.pop(col)
                    notes.append(f"{col}: column absent (already-screened file), screen skipped")
        pos_cols = [cfg["x"], cfg["y"]] if bin_by == "sky" else ["PIXEL", "DETX", "DETY"]
        needed = [*pos_cols, cfg["energy"], *filters]
        missing = [c for c in needed if c.upper() not in present]
        if missing:
            raise ValueError(
                f"{label}: EVENTS is missing column(s) {missing} needed for "
                f"{instrument}; it has {ev.columns.names}."
            )
        if channel_edges is not None and not cfg["pi"]:
            raise ValueError(
                f"{label}: channel_edges bins integer PI channels, but {instrument} events are binned on the "
                f"floating '{cfg['energy']}' column; pass energy_edges only"
            )
        data = ev.data
        n_events = len(data)
        mask = np.ones(n_events, dtype=bool)
        for col, rule in filters.items():
            mask &= _column_mask(data[col], rule, col)
        ccd_col = cfg["ccd"] if cfg["ccd"] and cfg["ccd"].upper() in present else None
        ccd_all = np.asarray(data[ccd_col]).astype(np.int64) if ccd_col else None

        # ---- exposure: GTIs x dead-time correction, or a header keyword
        gtis = _read_gtis(hdul, instrument) if (gti and exposure_keyword is None) else {}
        if gtis and "TIME" not in present:
            raise ValueError(
                f"{label}: the events have no TIME column, so they cannot be screened by the GTI extensions, and an "
                "exposure summed from those GTIs would not describe them. Pass gti=False (the header exposure, no "
                "time screening) or exposure_keyword='EXPOSURE' (or another keyword) if the events were screened "
                "already")
        n_outside_gti = 0
        if gtis and "TIME" in present:
            t = np.asarray(data["TIME"], dtype=np.float64)
            in_gti = np.zeros(n_events, dtype=bool)
            for ccd, (g0, g1) in gtis.items():
                sel = mask if (ccd is None or ccd_all is None) else (mask & (ccd_all == ccd))
                in_gti[sel] |= _in_intervals(t[sel], g0, g1)
            if ccd_all is not None and None not in gtis:
                known = np.isin(ccd_all, [c for c in gtis])
                in_gti &= known
            n_outside_gti = int(np.sum(mask & ~in_gti))
            mask &= in_gti

        raw_e = np.asarray(data[cfg["energy"]])[mask]
        ccd_sel = ccd_all[mask] if ccd_all is not None else None
        if bin_by == "sky":
            x_pix = np.asarray(data[cfg["x"]], dtype=np.float64)[mask]
            y_pix = np.asarray(data[cfg["y"]], dtype=np.float64)[mask]
            wx = _column_wcs(ev, cfg["x"], label)
            wy = _column_wcs(ev, cfg["y"], label)
        else:
            pix_info = _pixel_columns(ev, mask, label, instrument, exclude_pixels, roll, array_center,
                                      [h.header for h in hdul])

    # ---- energy index of every event (-1 = outside the band)
    if cfg["pi"] and np.issubdtype(raw_e.dtype, np.floating) and raw_e.size and np.all(np.isfinite(raw_e)) and \
            np.all(raw_e == np.round(raw_e)) and np.all(np.abs(raw_e) < 2.0 ** 53):
        raw_e = raw_e.astype(np.int64)  # a PI column stored as floats holding whole channel numbers: channels
    if channel_edges is not None:
        if not np.issubdtype(raw_e.dtype, np.integer):
            bad = raw_e[~np.isfinite(raw_e) | (raw_e != np.round(raw_e))]
            raise ValueError(f"{label}: column {cfg['energy']} holds values that are not whole channel numbers (e.g. "
                             f"{float(bad[0]):g}); binning by the response's channels needs integer PI channels. Bin by "
                             "energy instead (read_events with energy_edges=) or give the events' integer PI column")
        chan = raw_e.astype(np.int64) // int(pi_per_channel)
        ie = np.searchsorted(channel_edges.astype(np.int64), chan, side="right") - 1
        ie[(chan < channel_edges[0]) | (chan >= channel_edges[-1])] = -1
        binning = "channel"
    elif cfg["pi"] and np.issubdtype(raw_e.dtype, np.integer):
        pe = _snap_pi_edges(edges, cfg["kev_per_unit"])
        p = raw_e.astype(np.float64)
        ie = np.searchsorted(pe, p, side="right") - 1
        ie[(p < pe[0]) | (p >= pe[-1])] = -1
        binning = "pi"
    else:
        energy = raw_e.astype(np.float64) * cfg["kev_per_unit"]
        ie = np.searchsorted(edges, energy, side="right") - 1
        ie[(energy < edges[0]) | (energy >= edges[-1])] = -1
        binning = "energy"

    ne = edges.size - 1
    if bin_by == "pixel":
        ids, row = pix_info["ids"], pix_info["row"]
        inside = (row >= 0) & (ie >= 0)
        flat = row[inside] * ne + ie[inside]
        cube = np.bincount(flat, minlength=ids.size * ne).astype(np.int64).reshape(ids.size, ne)
    else:
        ra, dec = _sky_to_radec(x_pix, y_pix, wx, wy)
        xo, yo = _tangent_offsets(ra, dec, float(center[0]), float(center[1]))
        x_edges = (np.arange(nx + 1) - nx / 2.0) * float(pixel_size)
        y_edges = (np.arange(ny + 1) - ny / 2.0) * float(pixel_size)
        seen = np.isfinite(xo) & np.isfinite(yo)  # NaN: 90 deg or more from the tangent point (binned nowhere)
        ix = np.floor(np.where(seen, xo / float(pixel_size) + nx / 2.0, -1.0)).astype(np.int64)
        iy = np.floor(np.where(seen, yo / float(pixel_size) + ny / 2.0, -1.0)).astype(np.int64)
        inside = (ix >= 0) & (ix < nx) & (iy >= 0) & (iy < ny) & (ie >= 0)
        flat = (ix[inside] * ny + iy[inside]) * ne + ie[inside]
        cube = np.bincount(flat, minlength=nx * ny * ne).astype(np.int64).reshape(nx, ny, ne)

    # ---- exposure
    exposure_kw = None
    ontime = deadc = float("nan")
    per_ccd: dict = {}
    ccd_used = None
    if gtis:
        for ccd, (g0, g1) in gtis.items():
            on = float(np.sum(g1 - g0))
            f, kw = _livetime_fraction(header, instrument, ccd)
            per_ccd[ccd] = (on, f, kw)
        if len(per_ccd) == 1:
            ccd_used = next(iter(per_ccd))
        else:
            if ccd_sel is None:
                raise ValueError(
                    f"{label}: {len(per_ccd)} per-CCD GTI extensions but no {cfg['ccd']!r} column to tell "
                    "which CCD the events come from; pass exposure_keyword= or gti=False"
                )
            ids, n = np.unique(ccd_sel[inside], return_counts=True)
            ids = [int(i) for i in ids if int(i) in per_ccd]
            if not ids:
                ccd_used = max(per_ccd, key=lambda c: per_ccd[c][0] * per_ccd[c][1])
            else:
                counts = dict(zip(np.unique(ccd_sel[inside]).tolist(), n.tolist()))
                ccd_used = max(ids, key=lambda c: counts[c])
                exps = np.array([per_ccd[c][0] * per_ccd[c][1] for c in ids])
                if exps.max() - exps.min() > _CCD_EXPOSURE_RTOL * exps.max():
                    warnings.warn(
                        f"{label}: the binned events come from CCDs {ids} with exposures "
                        f"{', '.join(f'{e:.6g}' for e in exps)} s; the cube uses CCD {ccd_used} "
                        f"({per_ccd[ccd_used][0] * per_ccd[ccd_used][1]:.6g} s, most events). Bin one CCD "
                        "at a time (filters={...: ...}) if the difference matters",
                        stacklevel=2,
                    )
        ontime, deadc, kw = per_ccd[ccd_used]
        exposure = ontime * deadc
        where = "" if ccd_used is None else f" of CCD {ccd_used}"
        source = f"GTIs{where} ({ontime:.6g} s) x dead-time correction {deadc:.6g} ({kw})"
    else:
        if exposure_keyword is None:
            exposure_kw = next((k for k in _EXPOSURE_KEYWORDS if k in header), None)
        else:
            exposure_kw = exposure_keyword
            if exposure_kw not in header:
                raise ValueError(f"{label}: no {exposure_kw!r} keyword in the {hdu} header")
        if exposure_kw is None:
            warnings.warn(f"{label}: no GTI extension and no EXPOSURE/LIVETIME/ONTIME keyword; exposure=NaN",
                          stacklevel=2)
            exposure = float("nan")
            source = "unknown"
        else:
            exposure = float(header[exposure_kw])
            source = f"header keyword {exposure_kw}" + ("" if exposure_keyword else " (no GTI extension)")

    if bin_by == "pixel":
        size = float(detector_pixel_size if detector_pixel_size is not None
                     else INSTRUMENTS[instrument].get("detector_pixel_size", np.nan))
        if not size > 0:
            raise ValueError(f"{label}: pass detector_pixel_size= (arcsec per detector pixel) for {instrument}")
        coords = {"pixel": xr.Variable("pixel", ids, {"long_name": "detector pixel (PIXEL column)"}),
                  "det_x": xr.Variable("pixel", pix_info["detx"] * size, {"units": "arcsec"}),
                  "det_y": xr.Variable("pixel", pix_info["dety"] * size, {"units": "arcsec"})}
        ac = _tangent_offsets(np.array([pix_info["center_radec"][0]]), np.array([pix_info["center_radec"][1]]),
                              float(center[0]), float(center[1]))
        if not (np.isfinite(ac[0][0]) and np.isfinite(ac[1][0])):
            raise ValueError(f"{label}: the array centre {tuple(pix_info['center_radec'])} deg is 90 deg or more from "
                             f"center={tuple(center)}: pass the tangent point of the field (e.g. RA_PNT, DEC_PNT)")
        pixel_attrs = {"roll": float(pix_info["roll"]), "roll_source": pix_info["roll_source"],
                       "array_center": (float(ac[0][0]), float(ac[1][0])),
                       "array_center_source": pix_info["center_source"],
                       "detector_pixel_size": size, "excluded_pixels": list(pix_info["excluded"])}
        pixel_size = size
    else:
        coords = {
            "x": xr.Variable("x", 0.5 * (x_edges[1:] + x_edges[:-1]), {"units": "arcsec"}),
            "y": xr.Variable("y", 0.5 * (y_edges[1:] + y_edges[:-1]), {"units": "arcsec"}),
        }
        pixel_attrs = {}
    coords.update(edges_coords("energy", edges[:-1], edges[1:]))
    filt_text = "; ".join([f"{k} {v}" for k, v in filters.items()] + notes)
    attrs = {
        "units": "count",
        "exposure": float(exposure),
        "exposure_source": source,
        "exposure_keyword": exposure_kw,
        "ontime": float(ontime),
        "deadtime_correction": float(deadc),
        "exposure_per_ccd": "; ".join(f"{c}: {on * f:.9g}" for c, (on, f, _) in per_ccd.items()),
        "ccd": -1 if ccd_used is None else int(ccd_used),
        "instrument": instrument,
        "file": label,
        "center": (float(center[0]), float(center[1])),
        "pixel_size": float(pixel_size),
        "n_events": int(n_events),
        "n_selected": int(mask.sum()),
        "n_outside_gti": int(n_outside_gti),
        "n_binned": int(cube.sum()),
        "filters": filt_text,
        "energy_binning": binning,
        **pixel_attrs,
    }
    if n_events > 0 and attrs["n_binned"] == 0:  # legal, but nearly always a wrong center, shape, band or GTI
        warnings.warn(f"{label}: none of its {n_events} events was binned into the cube ({attrs['n_selected']} passed "
                      f"the screening, {attrs['n_outside_gti']} fell outside the GTIs): check center, shape and "
                      "pixel_size (sky binning), the energy band, the filters and the GTIs", UserWarning, stacklevel=2)
    return xr.DataArray(cube, dims=("pixel", "energy") if bin_by == "pixel" else ("x", "y", "energy"),
                        coords=coords, name="counts", attrs=attrs)


def _header_value(headers, *keys):
    for k in keys:
        for h in headers:
            if k in h:
                return k, h[k]
    return None, None


def _pixel_columns(ev, mask, label, instrument, exclude, roll, array_center, headers):
    """Detector pixels of the selected events: row index per event (-1 = excluded), pixel ids,
    DET positions (in detector pixels from the array centre), roll and array-centre sky position."""
    data, cols = ev.data, ev.columns

    def lim(name, values):
        i = [c.upper() for c in cols.names].index(name)
        lo = ev.header.get(f"TLMIN{i + 1}")
        hi = ev.header.get(f"TLMAX{i + 1}")
        if lo is None or hi is None:
            lo, hi = (int(values.min()), int(values.max())) if values.size else (0, -1)
        return int(lo), int(hi)

    pix_all = np.asarray(data["PIXEL"]).astype(np.int64)
    detx_all = np.asarray(data["DETX"]).astype(np.float64)
    dety_all = np.asarray(data["DETY"]).astype(np.float64)
    if exclude is None:
        exclude = INSTRUMENTS[instrument].get("exclude_pixels", ())
    exclude = tuple(int(p) for p in exclude)
    p0, p1 = lim("PIXEL", pix_all)
    ids = np.array([p for p in range(p0, p1 + 1) if p not in exclude], dtype=np.int64)
    xl, yl = lim("DETX", detx_all), lim("DETY", dety_all)
    cx, cy = 0.5 * (xl[0] + xl[1]), 0.5 * (yl[0] + yl[1])
    detx, dety = np.empty(ids.size), np.empty(ids.size)
    for k, p in enumerate(ids):
        sel = pix_all == p
        if not sel.any():
            raise ValueError(f"{label}: pixel {p} has no events, so its DETX/DETY position is unknown; add it to "
                             "exclude_pixels= (or check the PIXEL column range TLMIN/TLMAX)")
        vals, n = np.unique(np.stack([detx_all[sel], dety_all[sel]], axis=1), axis=0, return_counts=True)
        detx[k], dety[k] = vals[int(np.argmax(n))] - (cx, cy)
    lut = np.full(max(p1, int(pix_all.max(initial=0))) + 2, -1, dtype=np.int64)
    lut[ids] = np.arange(ids.size)
    pix = pix_all[mask]
    row = np.where((pix >= 0) & (pix < lut.size), lut[np.clip(pix, 0, lut.size - 1)], -1)
    if roll is None:
        kw, roll = _header_value(headers, "PA_NOM")
        if kw is None:
            raise ValueError(f"{label}: no PA_NOM keyword (roll angle); pass roll= (deg, position angle of +DETY)")
        roll_source = "PA_NOM"
    else:
        roll_source = "argument roll="
    if array_center is None:
        kw, ra = _header_value(headers, "RA_PNT", "RA_NOM")
        kw2, dec = _header_value(headers, "DEC_PNT", "DEC_NOM")
        if kw is None or kw2 is None:
            raise ValueError(f"{label}: no RA_PNT/DEC_PNT (or RA_NOM/DEC_NOM) keywords; pass array_center=(ra, dec)")
        array_center, center_source = (float(ra), float(dec)), f"{kw}/{kw2}"
    else:
        array_center, center_source = _center_degrees(array_center), "argument array_center="
    return {"ids": ids, "row": row, "detx": detx, "dety": dety, "roll": float(roll), "roll_source": roll_source,
            "center_radec": tuple(float(v) for v in array_center), "center_source": center_source,
            "excluded": exclude}
