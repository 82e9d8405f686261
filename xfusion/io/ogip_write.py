"""Writers for OGIP spectral files: type-I PHA spectra, RMFs and ARFs.

The formats follow the HEASARC OGIP memos OGIP/92-007 (spectra, "PHA") and
CAL/GEN/92-002 (+92-002a) (responses: RMF ``MATRIX`` + ``EBOUNDS``, ARF
``SPECRESP``), so the files can be loaded by XSPEC, Sherpa, gammapy, etc.

Inputs use the :mod:`xfusion` conventions: an RMF is a DataArray with dims
``("energy_true", "energy")`` and coordinates ``energy_true_lo/hi`` and
``energy_lo/hi`` (keV), optionally ``channel``; an ARF is a DataArray along
``energy_true`` in cm2.

Writing never destroys what xfusion did not create (DESIGN section 9, :mod:`xfusion.io.fits_output`):
every file carries ``CREATOR = 'xfusion VERSION'`` in its primary header; ``overwrite=False`` refuses
an existing path (``FileExistsError``) and ``overwrite=True`` replaces only a FITS file that xfusion
wrote (anything else -- e.g. the instrument's own ``PREFIX.rmf`` -- is refused with
:class:`xfusion.io.zarr.OutputError`, a ``ValueError``). The writers of several files check every
path before writing any, and each file is written to a temporary sibling renamed when complete.

The spectra of a fused cube (:func:`write_pha_from_result`, :func:`write_pha2_from_result`) refuse
integer counts that lost the spectrum to rounding (``ValueError``): pass the observation's exposure
and effective area.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import scipy.sparse
import xarray as xr
from astropy.io import fits

from xfusion.io.fits_output import check_fits_output, primary_hdu
from xfusion.io.fits_output import writeto as _writeto
from xfusion.io.ogip_read import SparseRMF

__all__ = ["write_pha", "write_rmf", "write_arf"]

_CREATOR = "xfusion.io.ogip_write"
_INT32_MAX = np.iinfo(np.int32).max  # largest value of a J (32-bit integer) FITS column


def _edges_from(obj: xr.DataArray, dim: str) -> tuple[np.ndarray, np.ndarray]:
    lo_name, hi_name = f"{dim}_lo", f"{dim}_hi"
    if lo_name not in obj.coords or hi_name not in obj.coords:
        raise ValueError(
            f"DataArray needs coordinates {lo_name!r} and {hi_name!r} (keV) "
            f"along {dim!r}; it has {list(obj.coords)}."
        )
    lo = np.asarray(obj[lo_name].values, dtype=np.float64)
    hi = np.asarray(obj[hi_name].values, dtype=np.float64)
    if np.any(hi <= lo) or np.any(np.diff(lo) <= 0):
        raise ValueError(f"{dim} edges must be increasing with positive widths.")
    return lo, hi


def _as_edges(energy_edges, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Accept (n + 1,) contiguous edges or (n, 2) [lo, hi] pairs (keV)."""
    e = np.asarray(energy_edges, dtype=np.float64)
    if e.ndim == 1 and e.size == n + 1:
        lo, hi = e[:-1], e[1:]
    elif e.ndim == 2 and e.shape == (n, 2):
        lo, hi = e[:, 0], e[:, 1]
    else:
        raise ValueError(
            f"energy_edges must have shape ({n + 1},) or ({n}, 2) for {n} "
            f"channels; got {e.shape}."
        )
    if np.any(hi <= lo) or np.any(np.diff(lo) <= 0):
        raise ValueError("energy_edges must be increasing with positive widths.")
    return lo, hi


def _pair_edges(pairs, dim: str) -> tuple[np.ndarray, np.ndarray]:
    """``(n, 2)`` [lo, hi] edges of a :class:`SparseRMF` (keV), checked as :func:`_edges_from` checks coordinates."""
    e = np.asarray(pairs, dtype=np.float64)
    if e.ndim != 2 or e.shape[1] != 2:
        raise ValueError(f"SparseRMF {dim}_edges must have shape (n, 2) [lo, hi] (keV); got {e.shape}.")
    lo, hi = e[:, 0], e[:, 1]
    if np.any(hi <= lo) or np.any(np.diff(lo) <= 0):
        raise ValueError(f"{dim} edges must be increasing with positive widths.")
    return lo, hi


def _sparse_elements(m, lo_thresh):
    """(rows, cols, values) of the elements of the sparse matrix ``m`` with ``|value| > lo_thresh``, in
    row-major order -- what ``np.nonzero(np.abs(dense) > lo_thresh)`` gives on ``m.toarray()`` (duplicate
    entries summed, explicit zeros dropped), in memory proportional to the stored elements."""
    csr = scipy.sparse.csr_array(m, dtype=np.float64, copy=True)
    csr.sum_duplicates()  # also sorts the column indices of every row
    rows = np.repeat(np.arange(csr.shape[0], dtype=np.int64), np.diff(csr.indptr))
    keep = np.abs(csr.data) > lo_thresh
    return rows[keep], csr.indices[keep].astype(np.int64), csr.data[keep]


def _common_keywords(header, telescope, instrument, filter_):
    header["TELESCOP"] = (str(telescope), "mission/satellite name")
    header["INSTRUME"] = (str(instrument), "instrument/detector name")
    header["FILTER"] = (str(filter_), "filter in use")
    header["HDUCLASS"] = ("OGIP", "format conforms to OGIP standard")
    header["CREATOR"] = (_CREATOR, "software that created this file")


def _ebounds_hdu(lo, hi, channel, telescope, instrument, filter_, chantype):
    n = lo.size
    hdu = fits.BinTableHDU.from_columns(
        [
            fits.Column(name="CHANNEL", format="J", array=np.asarray(channel, np.int32)),
            fits.Column(name="E_MIN", format="D", unit="keV", array=lo),
            fits.Column(name="E_MAX", format="D", unit="keV", array=hi),
        ],
        name="EBOUNDS",
    )
    h = hdu.header
    _common_keywords(h, telescope, instrument, filter_)
    h["HDUCLAS1"] = ("RESPONSE", "dataset relates to spectral response")
    h["HDUCLAS2"] = ("EBOUNDS", "nominal energies of PHA channel boundaries")
    h["HDUVERS"] = ("1.2.0", "version of the format (OGIP CAL/GEN/92-002a)")
    h["CHANTYPE"] = (chantype, "channel type (PHA or PI)")
    h["DETCHANS"] = (n, "total number of detector channels")
    h["TLMIN1"] = (int(channel[0]), "first legal channel number")
    h["TLMAX1"] = (int(channel[-1]), "last legal channel number")
    return hdu


def _meta(obj, key, default):
    if obj is not None and key in getattr(obj, "attrs", {}) and obj.attrs[key]:
        return obj.attrs[key]
    return default


# --------------------------------------------------------------------------
# RMF
# --------------------------------------------------------------------------
def write_rmf(
    matrix,
    path,
    *,
    first_channel: int | None = None,
    telescope: str | None = None,
    instrument: str | None = None,
    filter: str | None = None,  # noqa: A002 - OGIP keyword name
    chantype: str = "PI",
    lo_thresh: float = 0.0,
    dtype=np.float32,
    overwrite: bool = False,
) -> Path:
    """Write a response matrix as an OGIP RMF (``MATRIX`` + ``EBOUNDS``).

    Parameters
    ----------
    matrix : xarray.DataArray or SparseRMF
        Dims ``("energy_true", "energy")`` with coordinates
        ``energy_true_lo/hi`` and ``energy_lo/hi`` (keV) and optionally
        ``channel`` (e.g. the output of :func:`xfusion.io.ogip_read.read_rmf`).
        If ``attrs["arf_folded"]`` is true the extension is named
        ``SPECRESP MATRIX`` with ``HDUCLAS3 = 'FULL'``; otherwise ``MATRIX``
        with ``HDUCLAS3 = 'REDIST'``.
    path : str or os.PathLike
        Output file.
    first_channel : int, optional
        Number of the first channel.  Default: the ``channel`` coordinate's
        first value if present, else 0.  (0 is the default because some
        readers, e.g. gammapy, ignore ``TLMIN`` and treat ``F_CHAN`` as a
        0-based index.)
    telescope, instrument, filter : str, optional
        ``TELESCOP``/``INSTRUME``/``FILTER``; default from ``attrs`` or
        ``"UNKNOWN"``/``"UNKNOWN"``/``"NONE"``.
    chantype : str
        ``CHANTYPE`` ("PI" or "PHA").
    lo_thresh : float
        Elements with ``|value| <= lo_thresh`` are not stored (``LO_THRES``
        keyword); negative elements (present in some real RMFs) are kept.
    dtype : numpy dtype
        Storage type of ``MATRIX``: float32 (``PE``, default) or float64
        (``PD``).
    overwrite : bool
        Replace an existing file, only if xfusion wrote it (FITS ``CREATOR = 'xfusion ...'``);
        anything else at ``path`` is refused (:mod:`xfusion.io.fits_output`).

    Returns
    -------
    pathlib.Path

    Notes
    -----
    Compressed variable-length format: one row per true-energy bin with
    ``N_GRP`` (J), ``F_CHAN``/``N_CHAN`` (``PJ()``) listing the contiguous
    runs of stored elements and ``MATRIX`` (``PE()``/``PD()``) holding them;
    rows without elements have ``N_GRP = 0``.  ``TLMIN4``/``TLMAX4`` give the
    legal channel range of ``F_CHAN``; ``NUMGRP``/``NUMELT`` the totals.
    Energies are written as double precision (``D``) in keV.

    A :class:`~xfusion.io.ogip_read.SparseRMF` is written from its stored elements, never
    as a dense matrix (memory and time grow with the stored elements, not with
    ``n_energy_true * n_channel``); the file is the same as for its ``to_dataarray()``.
    """
    if isinstance(matrix, SparseRMF):
        # the stored elements straight from the sparse structure: a dense 12,000-channel matrix is 1.15 GB
        # (a 60,000-channel one 29 GB), the reason read_rmf returned a SparseRMF
        t_lo, t_hi = _pair_edges(matrix.energy_true_edges, "energy_true")
        e_lo, e_hi = _pair_edges(matrix.energy_edges, "energy")
        n_true, n_chan = matrix.shape
        if (t_lo.size, e_lo.size) != (n_true, n_chan) or np.shape(matrix.channel) != (n_chan,):
            raise ValueError(
                f"SparseRMF matrix has shape {matrix.shape} but {t_lo.size} energy_true bins, {e_lo.size} energy "
                f"bins and {np.size(matrix.channel)} channels.")
        default_first = int(np.asarray(matrix.channel)[0]) if n_chan else 0
        rows, cols, vals = _sparse_elements(matrix.matrix, lo_thresh)
    else:
        if set(matrix.dims) != {"energy_true", "energy"}:
            raise ValueError(
                f"RMF must have dims ('energy_true', 'energy'); got {matrix.dims}."
            )
        matrix = matrix.transpose("energy_true", "energy")
        t_lo, t_hi = _edges_from(matrix, "energy_true")
        e_lo, e_hi = _edges_from(matrix, "energy")
        values = np.asarray(matrix.values, dtype=np.float64)
        n_true, n_chan = values.shape
        default_first = int(matrix["channel"].values[0]) if "channel" in matrix.coords else 0
        rows, cols = np.nonzero(np.abs(values) > lo_thresh)  # row-major order
        vals = values[rows, cols]
    if first_channel is None:
        first_channel = default_first
    channel = np.arange(n_chan, dtype=np.int64) + int(first_channel)
    telescope = telescope or _meta(matrix, "telescope", "UNKNOWN")
    instrument = instrument or _meta(matrix, "instrument", "UNKNOWN")
    filter_ = filter or _meta(matrix, "filter", "NONE")
    dtype = np.dtype(dtype)
    code = {np.dtype(np.float32): "E", np.dtype(np.float64): "D"}.get(dtype)
    if code is None:
        raise ValueError("dtype must be float32 or float64.")

    # --- groups of contiguous stored elements, vectorised ---
    elems = vals.astype(dtype)
    if rows.size:
        new = np.ones(rows.size, dtype=bool)
        new[1:] = (rows[1:] != rows[:-1]) | (cols[1:] != cols[:-1] + 1)
        starts = np.flatnonzero(new)
    else:
        starts = np.zeros(0, dtype=np.int64)
    group_row = rows[starts]
    group_f = cols[starts] + int(first_channel)
    group_n = np.diff(np.append(starts, rows.size))
    n_grp = np.bincount(group_row, minlength=n_true).astype(np.int32)
    row_elems = np.bincount(rows, minlength=n_true)
    g_split = np.cumsum(n_grp)[:-1]
    e_split = np.cumsum(row_elems)[:-1]

    def _vla(parts, dt):
        out = np.empty(n_true, dtype=object)
        for i, p in enumerate(parts):
            out[i] = np.ascontiguousarray(p, dtype=dt)
        return out

    f_chan = _vla(np.split(group_f, g_split), np.int32)
    n_chan_col = _vla(np.split(group_n, g_split), np.int32)
    mat = _vla(np.split(elems, e_split), dtype)

    arf_folded = bool(matrix.attrs.get("arf_folded", False))
    extname = "SPECRESP MATRIX" if arf_folded else "MATRIX"
    mhdu = fits.BinTableHDU.from_columns(
        [
            fits.Column(name="ENERG_LO", format="D", unit="keV", array=t_lo),
            fits.Column(name="ENERG_HI", format="D", unit="keV", array=t_hi),
            fits.Column(name="N_GRP", format="J", array=n_grp),
            fits.Column(name="F_CHAN", format="PJ()", array=f_chan),
            fits.Column(name="N_CHAN", format="PJ()", array=n_chan_col),
            fits.Column(name="MATRIX", format=f"P{code}()", array=mat),
        ],
        name=extname,
    )
    h = mhdu.header
    _common_keywords(h, telescope, instrument, filter_)
    h["HDUCLAS1"] = ("RESPONSE", "dataset relates to spectral response")
    h["HDUCLAS2"] = ("RSP_MATRIX", "dataset is a spectral response matrix")
    h["HDUCLAS3"] = ("FULL" if arf_folded else "REDIST",
                     "includes effective area" if arf_folded else "redistribution only")
    h["HDUVERS"] = ("1.3.0", "version of the format (OGIP CAL/GEN/92-002a)")
    h["CHANTYPE"] = (chantype, "channel type (PHA or PI)")
    h["DETCHANS"] = (n_chan, "total number of detector channels")
    h["LO_THRES"] = (float(lo_thresh), "lower threshold for stored matrix")
    h["NUMGRP"] = (int(n_grp.sum()), "total number of channel groups")
    h["NUMELT"] = (int(rows.size), "total number of response elements")
    h["TLMIN4"] = (int(channel[0]), "first legal channel number")
    h["TLMAX4"] = (int(channel[-1]), "last legal channel number")

    ehdu = _ebounds_hdu(e_lo, e_hi, channel, telescope, instrument, filter_, chantype)
    path = Path(path)
    _writeto([primary_hdu(), mhdu, ehdu], path, overwrite, "RMF")
    return path


# --------------------------------------------------------------------------
# ARF
# --------------------------------------------------------------------------
def write_arf(
    arf: xr.DataArray,
    path,
    *,
    telescope: str | None = None,
    instrument: str | None = None,
    filter: str | None = None,  # noqa: A002
    overwrite: bool = False,
) -> Path:
    """Write an effective area as an OGIP ARF (``SPECRESP`` extension).

    Parameters
    ----------
    arf : xarray.DataArray, dims ("energy_true",)
        Effective area in cm2 with ``energy_true_lo/hi`` coordinates (keV).
    path : str or os.PathLike
        Output file.
    telescope, instrument, filter : str, optional
        Header keywords; default from ``attrs`` or UNKNOWN/UNKNOWN/NONE.
    overwrite : bool
        Replace an existing file, only if xfusion wrote it (FITS ``CREATOR = 'xfusion ...'``);
        anything else at ``path`` is refused (:mod:`xfusion.io.fits_output`).

    Returns
    -------
    pathlib.Path

    Notes
    -----
    Columns ``ENERG_LO``, ``ENERG_HI`` (D, keV) and ``SPECRESP`` (E, cm2);
    keywords ``HDUCLASS='OGIP'``, ``HDUCLAS1='RESPONSE'``,
    ``HDUCLAS2='SPECRESP'``, ``HDUVERS='1.1.0'``, ``TELESCOP``,
    ``INSTRUME``, ``FILTER`` (CAL/GEN/92-002).
    """
    if arf.dims != ("energy_true",):
        raise ValueError(f"ARF must have dims ('energy_true',); got {arf.dims}.")
    units = str(arf.attrs.get("units", "cm2")).strip().lower()
    if units not in ("cm2", "cm**2", "cm^2"):
        raise ValueError(f"ARF units must be cm2; got {units!r}.")
    lo, hi = _edges_from(arf, "energy_true")
    telescope = telescope or _meta(arf, "telescope", "UNKNOWN")
    instrument = instrument or _meta(arf, "instrument", "UNKNOWN")
    filter_ = filter or _meta(arf, "filter", "NONE")
    hdu = fits.BinTableHDU.from_columns(
        [
            fits.Column(name="ENERG_LO", format="D", unit="keV", array=lo),
            fits.Column(name="ENERG_HI", format="D", unit="keV", array=hi),
            fits.Column(name="SPECRESP", format="E", unit="cm2",
                        array=np.asarray(arf.values, dtype=np.float32)),
        ],
        name="SPECRESP",
    )
    h = hdu.header
    _common_keywords(h, telescope, instrument, filter_)
    h["HDUCLAS1"] = ("RESPONSE", "dataset relates to spectral response")
    h["HDUCLAS2"] = ("SPECRESP", "dataset contains spectral response")
    h["HDUVERS"] = ("1.1.0", "version of the format (OGIP CAL/GEN/92-002)")
    path = Path(path)
    _writeto([primary_hdu(), hdu], path, overwrite, "ARF")
    return path


# --------------------------------------------------------------------------
# PHA
# --------------------------------------------------------------------------
def write_pha(
    spectrum_counts,
    energy_edges,
    exposure: float,
    path,
    *,
    rmf=None,
    arf=None,
    backscal=1.0,
    areascal=1.0,
    corrscal: float = 0.0,
    backfile: str | None = None,
    corrfile: str | None = None,
    telescope: str = "UNKNOWN",
    instrument: str = "UNKNOWN",
    filter: str = "NONE",  # noqa: A002
    object_name: str | None = None,
    obs_id=None,
    chantype: str = "PI",
    first_channel: int | None = None,
    rate: bool = False,
    stat_err=None,
    quality=None,
    grouping=None,
    ebounds: bool = True,
    overwrite: bool = False,
) -> Path:
    """Write a type-I OGIP PHA spectrum (OGIP/92-007).

    Parameters
    ----------
    spectrum_counts : array_like or xarray.DataArray, shape (n_channel,)
        Counts per channel (dim ``energy`` for a DataArray).  Must be
        non-negative integers unless ``rate=True``, and at most 2**31 - 1
        (the 32-bit ``COUNTS`` column; larger counts raise ``ValueError``:
        split the exposure, or use ``rate=True``).
    energy_edges : array_like or None
        Nominal channel energies (keV): ``(n + 1,)`` contiguous edges or
        ``(n, 2)`` pairs.  ``None`` takes ``energy_lo/hi`` from the
        DataArray.  Used for the optional EBOUNDS extension.
    exposure : float
        Exposure time in s (``EXPOSURE``).
    path : str or os.PathLike
        Output file.
    rmf, arf : str, os.PathLike, xarray.DataArray or None
        Response files.  A path is written verbatim into ``RESPFILE`` /
        ``ANCRFILE`` (readers resolve relative names against the PHA's
        directory).  A DataArray is written next to the PHA as
        ``<stem>.rmf`` / ``<stem>.arf`` (with :func:`write_rmf` /
        :func:`write_arf`) and its basename is recorded.  ``None`` ->
        ``'none'``.
    backscal, areascal : float or array_like
        ``BACKSCAL`` is always written as a column (gammapy's OGIP reader
        needs the column) and as a keyword (the scalar, or 1 for an array).
        ``AREASCAL``: a scalar goes to the keyword, an array (one value per
        channel) to a column with the keyword set to 1.
    backfile : str, optional
        Background PHA file name (``BACKFILE``), relative to this file.
        ``None`` (default) or ``"none"``/``"NONE"`` omits the keyword: gammapy
        2.x opens any ``BACKFILE`` it finds (``'none'`` included) and XSPEC,
        Sherpa and gammapy all take a missing ``BACKFILE`` as "no background".
    corrscal, corrfile : ``CORRSCAL``, ``CORRFILE`` (``None``: ``'NONE'``,
        the OGIP null value; no reader opens it).
    telescope, instrument, filter, object_name : header keywords.
    obs_id : optional
        ``OBS_ID``; default: the file stem (gammapy names the dataset after
        it and refuses a file without it).
    chantype : str
        ``CHANTYPE`` ("PI" or "PHA").
    first_channel : int, optional
        First channel number; default from the ``channel`` coordinate of
        ``spectrum_counts`` or of an ``rmf`` DataArray, else 0.  Must match
        the RMF's channels.
    rate : bool
        Write ``RATE`` (count/s, = counts / exposure) instead of ``COUNTS``;
        then ``STAT_ERR`` is written (``POISSERR = F``), by default
        ``sqrt(max(counts, 1)) / exposure``: the Poisson error, floored at
        the error of one count so that channels with fewer than one count
        (empty ones included) never get ``STAT_ERR = 0``, which a chi-square
        -- the only statistic for a ``RATE`` spectrum without Poisson
        errors -- cannot use (the floor is recorded in a header ``COMMENT``).
    stat_err : array_like, optional
        Explicit statistical errors (same units as the data column); written
        as ``STAT_ERR`` with ``POISSERR = F``.
    quality : array_like of int, optional
        ``QUALITY`` column (0 = good); default all 0.
    grouping : array_like of int, optional
        OGIP ``GROUPING`` column (``1`` starts a group, ``-1`` continues it,
        ``0`` no grouping information); default: no column and the keyword
        ``GROUPING = 0``.
    ebounds : bool
        Also write an ``EBOUNDS`` extension (not part of 92-007 but read by
        several tools, gammapy requires it).
    overwrite : bool
        Replace existing files (the PHA and the responses written beside it), only those
        xfusion wrote (FITS ``CREATOR = 'xfusion ...'``); anything else is refused. Every
        path is checked before any file is written.

    Returns
    -------
    pathlib.Path

    Notes
    -----
    ``SPECTRUM`` columns: ``CHANNEL`` (J, with ``TLMIN1``/``TLMAX1``),
    ``COUNTS`` (J, count) or ``RATE`` (E, count/s), ``QUALITY`` (I),
    optional ``STAT_ERR``, ``BACKSCAL``, ``AREASCAL``.  Keywords:
    ``HDUCLASS='OGIP'``, ``HDUCLAS1='SPECTRUM'``, ``HDUCLAS2='TOTAL'``,
    ``HDUCLAS3='COUNT'|'RATE'``, ``HDUCLAS4='TYPE:I'``, ``HDUVERS='1.2.1'``,
    ``TELESCOP``, ``INSTRUME``, ``FILTER``, ``EXPOSURE``, ``AREASCAL``,
    ``BACKSCAL``, ``CORRSCAL``, ``BACKFILE`` (only with a background),
    ``CORRFILE``, ``RESPFILE``, ``ANCRFILE``, ``CHANTYPE``, ``DETCHANS``,
    ``POISSERR``, ``SYS_ERR``, ``GROUPING`` (keyword 0 unless a
    ``GROUPING`` column is written), ``OBS_ID``.  gammapy's
    ``OGIPDatasetReader`` also needs ``ANCRFILE`` (an ARF).  Read back with
    :func:`xfusion.io.ogip_read.read_pha`.
    """
    path = Path(path)
    da = spectrum_counts if isinstance(spectrum_counts, xr.DataArray) else None
    counts = np.asarray(spectrum_counts, dtype=np.float64).ravel()
    n = counts.size
    if energy_edges is None:
        if da is None:
            raise ValueError("energy_edges is required unless a DataArray is given.")
        lo, hi = _edges_from(da, "energy")
    else:
        lo, hi = _as_edges(energy_edges, n)
    if not float(exposure) > 0:
        raise ValueError(f"exposure must be positive (s); got {exposure!r}.")
    if np.any(counts < 0) or not np.all(np.isfinite(counts)):
        raise ValueError("spectrum counts must be finite and non-negative.")
    if not rate and counts.max(initial=0) > _INT32_MAX:  # checked before any file is written
        k = int(np.argmax(counts))
        raise ValueError(
            f"write_pha: counts up to {counts[k]:.6g} (channel index {k}) exceed the 32-bit COUNTS column "
            f"(at most {_INT32_MAX}); they would wrap to negative numbers. Split the exposure into shorter "
            "spectra, or write rates with rate=True (RATE in count/s, float).")

    if first_channel is None:
        if da is not None and "channel" in da.coords:
            first_channel = int(da["channel"].values[0])
        elif isinstance(rmf, xr.DataArray) and "channel" in rmf.coords:
            first_channel = int(rmf["channel"].values[0])
        else:
            first_channel = 0
    channel = np.arange(n, dtype=np.int64) + int(first_channel)
    _check_outputs([("PHA", path)] + [(what, path.with_suffix(suffix)) for obj, what, suffix in
                                      ((rmf, "RMF", ".rmf"), (arf, "ARF", ".arf"))
                                      if isinstance(obj, (xr.DataArray, SparseRMF))], overwrite)

    def _response(obj, suffix, writer, n_check_dim):
        if obj is None:
            return "none"
        if isinstance(obj, (xr.DataArray, SparseRMF)):
            size = (obj.shape[1] if isinstance(obj, SparseRMF)
                    else obj.sizes.get(n_check_dim))
            if n_check_dim == "energy" and size != n:
                raise ValueError(
                    f"RMF has {size} channels but the spectrum has {n}."
                )
            out = path.with_suffix(suffix)
            kwargs = {"overwrite": overwrite}
            if suffix == ".rmf":
                kwargs["first_channel"] = int(first_channel)
            writer(obj, out, **kwargs)
            return out.name
        return os.fspath(obj)

    respfile = _response(rmf, ".rmf", write_rmf, "energy")
    ancrfile = _response(arf, ".arf", write_arf, "energy_true")

    exposure = float(exposure)
    floored_err = False
    cols = [fits.Column(name="CHANNEL", format="J", array=channel.astype(np.int32))]
    if rate:
        cols.append(fits.Column(name="RATE", format="E", unit="count/s",
                                array=(counts / exposure).astype(np.float32)))
        if stat_err is None:  # Poisson error, floored at one count: never 0 (chi-square divides by it)
            stat_err = np.sqrt(np.maximum(counts, 1.0)) / exposure
            floored_err = True
    else:
        if not np.all(counts == np.round(counts)):
            raise ValueError(
                "COUNTS must be integers; round them or use rate=True."
            )
        cols.append(fits.Column(name="COUNTS", format="J", unit="count",
                                array=counts.astype(np.int32)))
    if stat_err is not None:
        stat_err = np.broadcast_to(np.asarray(stat_err, dtype=np.float64), (n,))
        cols.append(fits.Column(name="STAT_ERR", format="E",
                                unit="count/s" if rate else "count",
                                array=stat_err.astype(np.float32)))
    q = np.zeros(n, np.int16) if quality is None else np.asarray(quality, np.int16)
    if q.shape != (n,):
        raise ValueError(f"quality must have one value per channel ({n},); got shape {q.shape}.")
    cols.append(fits.Column(name="QUALITY", format="I", array=q))
    if grouping is not None:
        grp = np.asarray(grouping)
        if grp.shape != (n,) or not np.all(np.isin(grp, (-1, 0, 1))):
            raise ValueError(f"grouping must hold one of 1, -1, 0 per channel ({n},) (OGIP GROUPING).")
        cols.append(fits.Column(name="GROUPING", format="I", array=grp.astype(np.int16)))
    scal_keys = {}
    for name, value in (("BACKSCAL", backscal), ("AREASCAL", areascal)):
        arr = np.asarray(value, dtype=np.float64)
        if not np.all(np.isfinite(arr)) or np.any(arr < 0):
            raise ValueError(f"{name} must be finite and >= 0.")
        if arr.ndim == 0 and name == "BACKSCAL":
            cols.append(fits.Column(name=name, format="E", array=np.full(n, float(arr), np.float32)))
            scal_keys[name] = float(arr)
        elif arr.ndim == 0:
            scal_keys[name] = float(arr)
        else:
            if arr.shape != (n,):
                raise ValueError(f"{name} array must have shape ({n},).")
            cols.append(fits.Column(name=name, format="E", array=arr.astype(np.float32)))
            scal_keys[name] = 1.0

    hdu = fits.BinTableHDU.from_columns(cols, name="SPECTRUM")
    h = hdu.header
    _common_keywords(h, telescope, instrument, filter)
    h["HDUCLAS1"] = ("SPECTRUM", "PHA dataset (OGIP/92-007)")
    h["HDUCLAS2"] = ("TOTAL", "gross spectrum (source + background)")
    h["HDUCLAS3"] = ("RATE" if rate else "COUNT", "data stored as rates or counts")
    h["HDUCLAS4"] = ("TYPE:I", "single spectrum (type I)")
    h["HDUVERS"] = ("1.2.1", "version of the format (OGIP/92-007)")
    if object_name is not None:
        h["OBJECT"] = (str(object_name), "name of the observed object")
    h["OBS_ID"] = (path.stem if obs_id is None else obs_id, "observation identifier")
    h["EXPOSURE"] = (exposure, "[s] exposure time")
    h["AREASCAL"] = (scal_keys["AREASCAL"], "area scaling factor")
    h["BACKSCAL"] = (scal_keys["BACKSCAL"], "background scaling factor")
    h["CORRSCAL"] = (float(corrscal), "correction file scaling factor")
    if backfile is not None and str(backfile).strip().lower() != "none":
        h["BACKFILE"] = (str(backfile), "associated background file")
    h["CORRFILE"] = ("NONE" if corrfile is None else str(corrfile), "associated correction file")
    h["RESPFILE"] = (respfile, "associated redistribution matrix file")
    h["ANCRFILE"] = (ancrfile, "associated ancillary response file")
    h["CHANTYPE"] = (chantype, "channel type (PHA or PI)")
    h["DETCHANS"] = (n, "total number of detector channels")
    h["POISSERR"] = (stat_err is None, "Poisson errors to be assumed")
    h["SYS_ERR"] = (0.0, "no systematic error")
    if grouping is None:
        h["GROUPING"] = (0, "no grouping of the data")
    h["TLMIN1"] = (int(channel[0]), "first legal channel number")
    h["TLMAX1"] = (int(channel[-1]), "last legal channel number")
    if floored_err:
        h["COMMENT"] = "STAT_ERR = sqrt(max(counts, 1)) / EXPOSURE: the Poisson error of the counts,"
        h["COMMENT"] = "floored at the error of one count so that no channel has STAT_ERR = 0"
        h["COMMENT"] = "(a chi-square divides by it; empty channels are common in fused cubes)."

    hdus = [primary_hdu(), hdu]
    if ebounds:
        hdus.append(_ebounds_hdu(lo, hi, channel, telescope, instrument, filter, chantype))
    _writeto(hdus, path, overwrite, "PHA")
    return path


# --------------------------------------------------------------------------
# Spectrum of a fused cube for a nominal "fused instrument"
# --------------------------------------------------------------------------
__all__ += ["write_pha_from_result", "region_mask"]


def region_mask(region, shape, coords=None) -> np.ndarray:
    """Boolean (x, y) mask of ``shape`` from a region of the fused cube.

    ``region`` is one of:

    * a boolean mask of shape ``shape`` (NumPy array, or a DataArray with dims ``x``, ``y``). A DataArray
      with ``x`` and ``y`` coordinates is read by its coordinates when ``coords`` (the cube's ``(x, y)``
      coordinate values) is given: its labels must be the cube's (any order, e.g. x descending);
      other labels (another grid, a shifted or cropped one) are refused (``ValueError``) rather than
      applied to the wrong pixels. Without coordinates it is read by position;
    * a **list** of ``(ix, iy)`` integer pixel indices, e.g. ``[(0, 2), (3, 1)]`` (an ``(n, 2)`` array);
    * NumPy's **tuple of index arrays** ``(ix_array, iy_array)``, as returned by ``np.nonzero(mask)``
      or ``np.where(mask)``: read the NumPy way (``mask[region]``), for any number of pixels --
      ``np.nonzero(mask)`` selects exactly the pixels of ``mask``;
    * a pair of slices ``(slice_x, slice_y)``.

    A tuple of exactly two plain ``(a, b)`` pairs, e.g. ``((0, 2), (3, 1))``, could be either two
    pixels or NumPy's index arrays (pixels (0, 3) and (2, 1)), so it is refused (``ValueError``): pass
    a list ``[(0, 2), (3, 1)]`` for pixels, or NumPy arrays ``(np.array([0, 2]), np.array([3, 1]))``
    for index arrays. Pixel indices must lie inside ``shape`` (no negative indices).
    """
    if isinstance(region, xr.DataArray):
        region = _mask_values(region, coords)
    if isinstance(region, tuple) and len(region) == 2 and all(isinstance(s, slice) for s in region):
        mask = np.zeros(shape, dtype=bool)
        mask[region] = True
        return mask
    if isinstance(region, tuple) and len(region) == 2 and _index_arrays(region):
        ix, iy = (np.asarray(a) for a in region)
        arr = np.stack([ix, iy], axis=1)  # NumPy's (ix_array, iy_array) -> (n, 2) pixel list
    else:
        arr = np.asarray(region)
    if arr.dtype == bool:
        if arr.shape != tuple(shape):
            raise ValueError(f"region mask has shape {arr.shape}; the cube has (x, y) shape {tuple(shape)}.")
        return arr
    if arr.ndim == 2 and arr.shape[1] == 2 and np.issubdtype(arr.dtype, np.integer):
        if np.any(arr < 0) or np.any(arr >= np.asarray(shape)):
            raise ValueError(f"region pixel indices must lie in [0, {shape[0]}) x [0, {shape[1]}).")
        mask = np.zeros(shape, dtype=bool)
        mask[arr[:, 0], arr[:, 1]] = True
        return mask
    raise ValueError(
        "region must be a boolean (x, y) mask, a list of (ix, iy) integer pixel indices, NumPy's tuple of index "
        "arrays (ix_array, iy_array) as from np.nonzero(mask), or a pair of slices (slice_x, slice_y)."
    )


def _mask_values(region, coords):
    """The values of a DataArray region in the cube's (x, y) order: by its coordinates when it has them and the
    cube's ``coords = (x_values, y_values)`` are known (session 34: a mask stored with x descending selected the
    mirrored pixels, +50 % counts), else by position."""
    if set(region.dims) != {"x", "y"}:
        raise ValueError(f"a region DataArray has dims ('x', 'y'); got {region.dims}")
    if coords is not None and all(d in region.coords for d in ("x", "y")):
        for d, want in zip(("x", "y"), coords):
            have, want = np.asarray(region[d].values), np.asarray(want)
            if have.shape != want.shape or not np.array_equal(np.sort(have), np.sort(want)):
                raise ValueError(
                    f"the region's {d} coordinates ({have.size} values, {_span(have)}) are not the cube's ({want.size} "
                    f"values, {_span(want)}): a mask from another grid would select the wrong pixels. Build it on "
                    f"the result's own coordinates (e.g. (result.x > a) & (result.y < b)), or pass .values to "
                    "select by position")
        region = region.sel(x=np.asarray(coords[0]), y=np.asarray(coords[1]))
    return region.transpose("x", "y").values


def _span(v):
    return f"{v.min():g} .. {v.max():g}" if v.size else "empty"


def _index_arrays(region) -> bool:
    """True if the 2-tuple ``region`` is NumPy's ``(ix_array, iy_array)`` form; raise on the ambiguous
    ``((a, b), (c, d))``; False for anything else (read as a pixel list, or refused, by the caller)."""
    a, b = region
    if all(isinstance(v, np.ndarray) for v in (a, b)):  # np.nonzero / np.where / np.unravel_index output
        if a.ndim == 1 and b.ndim == 1 and a.shape == b.shape and a.dtype != bool and b.dtype != bool:
            return True
        raise ValueError(
            f"region: a tuple of two arrays is read as NumPy's index arrays (ix_array, iy_array), as from "
            f"np.nonzero(mask); these have shapes {a.shape} and {b.shape} (need two 1-D integer arrays of the same "
            "length). Pass a boolean (x, y) mask or a list of (ix, iy) pixels instead.")
    try:
        lens = [len(v) for v in (a, b)]
    except TypeError:
        return False
    if lens == [2, 2]:
        raise ValueError(
            f"region {region!r} is ambiguous: two (ix, iy) pixels, or NumPy's index arrays (ix_array, iy_array) "
            "(as from np.nonzero)? Pass a list [(ix, iy), (ix, iy)] for pixels, or NumPy arrays "
            "(np.array(ixs), np.array(iys)) / np.nonzero(mask) for index arrays.")
    return False


__all__ += ["channel_correlation", "error_inflation", "recommended_grouping"]


def channel_correlation(replicas, max_lag: int = 4) -> np.ndarray:
    """Mean correlation across replicas of channels ``k`` apart, ``k = 0 .. max_lag``.

    ``replicas``: (replica, channel) array of one spectrum in every replica (>= 3 replicas).
    ``rho_k = mean_i corr(s_i, s_{i+k})`` over the channel pairs whose two channels both vary
    (channels with zero spread -- e.g. empty ones -- are skipped); ``rho_0 = 1``. Assumes the
    correlation depends on the lag, not on the channel (a fused spectrum's channels are alike).
    From ``n`` replicas and ``p`` channels each ``rho_k`` carries a noise of about
    ``1 / sqrt((n - 1) p)``. Returns float64 (max_lag + 1,).
    """
    r = np.asarray(replicas, dtype=np.float64)
    if r.ndim != 2 or r.shape[0] < 3:
        raise ValueError(f"replicas must be a (replica, channel) array with >= 3 replicas; got shape {r.shape}.")
    dev = r - r.mean(axis=0)
    sd = dev.std(axis=0, ddof=1)
    ok = sd > 0
    z = np.where(ok, dev / np.where(ok, sd, 1.0), 0.0)
    out = np.full(int(max_lag) + 1, np.nan)
    out[0] = 1.0
    for k in range(1, int(max_lag) + 1):
        if k >= r.shape[1]:
            break
        both = ok[:-k] & ok[k:]
        if both.any():
            c = np.sum(z[:, :-k] * z[:, k:], axis=0) / (r.shape[0] - 1)
            out[k] = float(np.mean(c[both]))
    return out


def error_inflation(rho) -> float:
    """``sqrt(1 + 2 sum_{k>=1} rho_k)``: how much a chi-square with only the diagonal errors
    understates the error of a parameter that weights neighbouring channels alike (a sum, a
    continuum level, the centroid of a line wider than the correlation length), for channels with
    lag correlations ``rho`` (:func:`channel_correlation`; NaN lags ignored). 1 for independent
    channels, > 1 for positively correlated ones (diagonal errors too small), < 1 for
    anticorrelated ones (too large: conservative). The variance of a sum of ``m`` channels is
    ``m sigma^2 (1 + 2 sum_k (1 - k/m) rho_k)``, which tends to this factor squared for ``m`` much
    longer than the correlation length."""
    rho = np.asarray(rho, dtype=np.float64)
    v = 1.0 + 2.0 * float(np.nansum(rho[1:]))
    return float(np.sqrt(max(v, 0.0)))


def recommended_grouping(replicas, *, tol: float = 0.1, max_group: int = 32, max_lag: int = 4):
    """Smallest number ``g`` of adjacent channels to merge so that the merged spectrum's diagonal
    errors are valid: ``error_inflation(channel_correlation(grouped replicas)) <= 1 + tol``.

    ``replicas``: (replica, channel). Tries ``g = 1, 2, ..., max_group`` (bins of ``g`` channels
    from channel 0; the replicas are summed in the same bins, so within-bin correlations are in
    the bins' spread) and returns ``(g, inflation at g)``; if none reaches the tolerance, the ``g``
    with the smallest inflation. Anticorrelated channels (inflation < 1) need no grouping: diagonal
    errors are then conservative."""
    r = np.asarray(replicas, dtype=np.float64)
    best = None
    for g in range(1, int(max_group) + 1):
        if g > 1 and r.shape[1] // g < 2 * (max_lag + 1):  # too few bins left to measure the correlation
            break
        rg = r if g == 1 else np.add.reduceat(r, np.arange(0, r.shape[1], g), axis=1)
        f = error_inflation(channel_correlation(rg, max_lag))
        if f <= 1.0 + tol:
            return g, f
        if best is None or f < best[1]:
            best = (g, f)
    return best


def write_pha_from_result(
    result,
    region,
    path_prefix,
    *,
    exposure: float = 1.0,
    area: float = 1.0,
    variable: str = "flux",
    rate: bool = False,
    telescope: str = "XFUSION",
    instrument: str = "FUSED",
    object_name: str | None = None,
    obs_id=1,
    uncertainty=None,
    group=None,
    overwrite: bool = False,
) -> tuple[Path, Path, Path]:
    """Write the fused spectrum of a region as a PHA + RMF + ARF of a nominal "fused instrument".

    The *fused instrument* is a perfect instrument on the fused grid: its channels are the
    fused energy bins (``EBOUNDS`` = the result's ``energy_lo``/``energy_hi``), its RMF is
    diagonal (``energy_true`` bins = channels, probability 1 on the diagonal), its ARF is
    flat at ``area`` cm2 on the same bins, and it observes for ``exposure`` s. Folding a
    spectral model through these files therefore predicts
    ``flux_in_bin * area * exposure`` counts per channel, the quantity written here, so a
    model fitted to the spectrum (XSPEC, Sherpa, gammapy) is directly in ph cm-2 s-1.

    **Line widths include the sharp-spectral instrument's line spread.** The fused cube has the
    spectral resolution of the sharp-spectral instrument (e.g. the microcalorimeter): the
    fusion models that instrument without a spectral response, so its line spread function
    (LSF) stays in the cube. The diagonal RMF written here does not contain it, so a line
    width fitted to the exported spectrum is ``sqrt(sigma_line**2 + sigma_LSF**2)`` (the
    toy's 150 km/s Ne X line at 1.022 keV, 0.51 eV, seen with a 2.5 eV-sigma LSF, fits as
    2.55 eV = ~750 km/s). Subtract the
    instrument's LSF sigma in quadrature from the fitted sigma, as
    :func:`xfusion.analysis.line_map` does with ``lsf_sigma``, or convolve the fitted model
    with that LSF (e.g. XSPEC ``gsmooth``). Line centres and fluxes are unaffected. The RMF
    header says so in ``COMMENT`` lines.

    Parameters
    ----------
    result : xarray.Dataset or DataArray
        A :func:`xfusion.fuse` result (or any Dataset with a ``variable`` (x, y, energy)
        in ph cm-2 s-1 per voxel and ``energy_lo``/``energy_hi`` coordinates in keV), or that
        (x, y, energy) DataArray itself (e.g. ``result["flux"]``, a toy truth). A cube declared in
        other units (a wavelength axis in um, a flux in MJy/sr: a JWST result) or with a NaN/inf
        voxel in the region is refused (``ValueError``) before anything is written. The
        energy bins must be contiguous (each ``energy_lo`` = the previous ``energy_hi``): a
        cube with channels dropped (``result.isel(energy=good)``) is refused
        (``ValueError``) before anything is written, since its ARF could not be read back;
        export contiguous channel ranges separately, or ignore channels in the fitting tool.
    region : bool array / DataArray (x, y), list of (ix, iy), NumPy's (ix_array, iy_array), or (slice, slice)
        Pixels summed into the spectrum (a pixel listed twice counts once); ``np.nonzero(mask)``
        selects the pixels of ``mask``. See :func:`region_mask` (an ambiguous tuple of two
        ``(a, b)`` pairs is refused).
    path_prefix : str or os.PathLike
        Output prefix: writes ``<prefix>.pha``, ``<prefix>.rmf`` and ``<prefix>.arf`` (the
        PHA refers to the others by basename in ``RESPFILE``/``ANCRFILE``).
    exposure, area : float
        Nominal exposure (s) and flat effective area (cm2). Choose them so that the counts
        per channel are large (the rounding below is then negligible): the numbers carry
        no noise information of their own. The observation's exposure and effective area
        are a natural choice. With ``rate=False``, a ``ValueError`` is raised when the
        rounding loses the spectrum: when the written integer counts total differs from the
        expected total ``sum(flux * area * exposure)`` by more than half of it (e.g. every
        channel rounds to 0, as with the defaults 1 s and 1 cm2 for a fused flux of ~1e-5
        ph cm-2 s-1 per channel). A region of zero flux writes zeros.
    variable : str
        Variable of ``result`` to sum (default ``"flux"``).
    rate : bool
        False (default): ``COUNTS`` = expected counts ``flux * area * exposure`` summed over
        the region, **rounded to the nearest integer** (``numpy.rint``, halves to even;
        negative values from round-off are set to 0), Poisson errors implied
        (``POISSERR = T``). True: ``RATE`` = expected counts / exposure (count/s, not
        rounded) with ``STAT_ERR = sqrt(max(expected counts, 1)) / exposure``
        (``POISSERR = F``): the Poisson error, floored at the error of one count so that
        channels of zero fused flux (zeroed null-space bands, flux clipped at 0) do not get
        ``STAT_ERR = 0``, which a chi-square fit would divide by (the floor is noted in a
        header ``COMMENT``; pass ``uncertainty`` for the errors of the fused spectrum).
    telescope, instrument, object_name, obs_id : header keywords (``OBS_ID`` is optional in
        OGIP but gammapy's reader names the dataset after it).
    uncertainty : xarray.Dataset, optional
        The Dataset of :func:`xfusion.uncertainty` for this result (``flux_replicas``, same
        grid). The region is summed in every replica: ``STAT_ERR`` = their standard deviation
        (ddof=1) in the unit of the data column (count, or count/s with ``rate``) and
        ``POISSERR = F`` (the fused spectrum is not Poisson: its errors come from the
        replicas). The channel-by-channel covariance across replicas (same unit squared) goes
        to the companion file ``<prefix>.cov.fits`` (image HDU ``COVARIANCE``, n_channel x
        n_channel, keywords ``NREPLICA`` and ``RANK`` <= NREPLICA - 1), named in the PHA
        header by ``COVFILE``. Without it the errors are those of Poisson counts (see
        ``rate``), which understate or overstate the real ones.
        The PHA header also records how correlated neighbouring channels are across the
        replicas: ``CORRLAG1``/``CORRLAG2`` (mean correlation of channels 1 and 2 apart,
        :func:`channel_correlation`), ``ERRINFL`` (:func:`error_inflation`: the factor by
        which a chi-square with these diagonal errors understates the error of a parameter
        that weights neighbouring channels alike -- 1 for independent channels) and
        ``GRPRECOM`` (:func:`recommended_grouping`: the smallest number of adjacent
        channels to merge for ``ERRINFL`` <= 1.1). These correlation keywords need at least 3
        replicas: with 2 (``xfusion.uncertainty(..., n=2)``) ``STAT_ERR`` and the covariance are
        written without them (a ``HISTORY`` line says so) and ``group="auto"`` is refused. A
        keyword that is undefined -- a lag longer than the (grouped) spectrum, or no channel
        varying across the replicas (a region of zero flux) -- is left out (``HISTORY`` names it);
        ``ERRINFL`` is then computed from the defined lags, or left out if none is.
    group : None, int >= 1 or "auto"
        Merge adjacent channels into bins of ``group`` channels (the last bin may hold
        fewer) and write that *grouped* spectrum: ``EBOUNDS``, RMF and ARF on the merged
        bins, counts summed, and -- with ``uncertainty`` -- ``STAT_ERR`` and the covariance
        of the summed bins computed from the replicas' grouped spectra (so the
        within-bin correlations are in them; an OGIP ``GROUPING`` column would instead
        let XSPEC/Sherpa add the per-channel errors in quadrature, which is wrong for
        correlated channels). ``"auto"`` (needs ``uncertainty``): ``GRPRECOM`` -- the
        smallest grouping whose diagonal errors are valid (keyword ``GRPSIZE`` records
        it; 1 writes the channels as they are). ``None`` (default) or 1: no grouping.
    overwrite : bool
        Replace existing output files that xfusion wrote (FITS ``CREATOR = 'xfusion ...'``);
        any other file at an output path (e.g. your instrument's ``<prefix>.rmf``) is refused
        even then. Every output path is checked before anything is written.

    Returns
    -------
    (pha_path, rmf_path, arf_path) : tuple of pathlib.Path (with ``uncertainty`` the covariance
    file ``<prefix>.cov.fits`` is written too)

    Notes
    -----
    ``BACKSCAL`` is written both as a column of ones and as the keyword 1 (gammapy's OGIP
    reader needs the column); no background file, ``QUALITY`` good (0) except 2 in channels that no input
    observed (masked in every input; HISTORY says how many), channels numbered
    from 0 in the PHA, the RMF (``F_CHAN``, ``TLMIN4``) and ``EBOUNDS``.
    """
    da = _result_cube(result, variable, "write_pha_from_result")
    mask = region_mask(region, (da.sizes["x"], da.sizes["y"]), (da["x"].values, da["y"].values))
    if not mask.any():
        raise ValueError("the region selects no pixel.")
    vals = np.asarray(da.values, dtype=np.float64)
    _check_finite(vals, mask, "write_pha_from_result")
    if not (float(exposure) > 0 and float(area) > 0):
        raise ValueError(f"exposure and area must be positive; got {exposure!r} s and {area!r} cm2.")
    lo, hi = _edges_from(da, "energy")
    _check_contiguous(lo, hi, "write_pha_from_result")
    if group is not None and not (group == "auto" or (isinstance(group, (int, np.integer))
                                                      and not isinstance(group, (bool, np.bool_)) and group >= 1)):
        raise ValueError(f"group must be None, an integer >= 1 (channels merged per bin) or 'auto'; got {group!r}.")
    if group == "auto" and uncertainty is None:
        raise ValueError("group='auto' chooses the grouping from the replicas' channel correlations: pass "
                         "uncertainty= (the Dataset of xfusion.uncertainty), or an integer group.")
    outs = [(what, Path(os.fspath(path_prefix) + sfx)) for what, sfx in (("PHA", ".pha"), ("RMF", ".rmf"),
                                                                          ("ARF", ".arf"))]
    if uncertainty is not None:
        outs.append(("covariance file", Path(os.fspath(path_prefix) + ".cov.fits")))
    _check_outputs(outs, overwrite)  # before any computing or writing
    spectrum = vals[mask].sum(axis=0)
    reps = None
    header = {"NPIXSOU": (int(mask.sum()), "number of fused pixels summed")}  # all keywords known before writing
    history = []
    correlations = False  # the channel-correlation diagnostics need >= 3 replicas
    if uncertainty is not None:
        reps = _replica_spectra(uncertainty, [mask], da)[:, 0]  # (replica, energy)
        correlations = reps.shape[0] >= 3
        header["ORIGCHAN"] = (lo.size, "fused channels before grouping")
        if correlations:
            rho1 = channel_correlation(reps, 2)
            g_rec, _ = recommended_grouping(reps)
            header["CORR1ORG"] = (float(rho1[1]), "lag-1 correlation before grouping")
            header["GRPRECOM"] = (int(g_rec), "channels to merge for ERRINFL <= 1.1")
        elif group == "auto":
            raise ValueError(f"group='auto' chooses the grouping from the channel correlations across the replicas, "
                             f"which need at least 3; uncertainty= has {reps.shape[0]}: compute it with "
                             "xfusion.uncertainty(..., n=3) or more, or pass an integer group.")
    unseen = _unobserved_channels(result, lo, hi)
    g = 1 if group is None else int(g_rec if group == "auto" else group)
    if g > 1:
        starts = np.arange(0, lo.size, g)
        unseen = np.logical_or.reduceat(unseen, starts)
        ends = np.minimum(starts + g, lo.size) - 1  # last channel of each bin
        lo, hi = lo[starts], hi[ends]
        spectrum = np.add.reduceat(spectrum, starts)
        if reps is not None:
            reps = np.add.reduceat(reps, starts, axis=1)
    expected = np.clip(spectrum * float(area) * float(exposure), 0.0, None)
    if not rate:
        if expected.max() >= 2**31:
            raise ValueError("expected counts exceed the 32-bit COUNTS column; lower exposure/area or use rate=True.")
        data = np.rint(expected)
        _check_rounding(expected, data, exposure, area, "write_pha_from_result")
    else:
        data = expected
    stat_err = cov = None
    if reps is not None:
        unit = float(area) * float(exposure) / (float(exposure) if rate else 1.0)
        stat_err, n_floor = _floored_stat_err(reps.std(axis=0, ddof=1) * unit, expected,
                                              float(exposure) if rate else 1.0)
        if n_floor:
            history.append(f"STAT_ERR floored at sqrt(max(counts, 1)) in {n_floor} channel(s) where the replicas do "
                           "not vary (e.g. a refit at 0): QUALITY unchanged, the error is the Poisson one")
        dev = (reps - reps.mean(axis=0)) * unit
        cov = dev.T @ dev / (reps.shape[0] - 1)
        cov_path = Path(os.fspath(path_prefix) + ".cov.fits")
        header["COVFILE"] = (cov_path.name, "channel covariance file")
        header["NREPLICA"] = (int(reps.shape[0]), "replicas behind STAT_ERR")
        if correlations:
            rho = channel_correlation(reps, 4)
            header["CORRLAG1"] = (float(rho[1]), "mean corr. of channels 1 apart")
            header["CORRLAG2"] = (float(rho[2]), "mean corr. of channels 2 apart")
            if np.isfinite(rho[1:]).any():
                header["ERRINFL"] = (float(error_inflation(rho)), "diag. errors too small by (smooth params)")
        history += ["STAT_ERR: std over xfusion.uncertainty replicas; channel covariance in COVFILE",
                    "chi2 with STAT_ERR alone is valid when ERRINFL ~ 1 (else group: GRPRECOM)"]
        if not correlations:
            history.append("CORR1ORG, CORRLAG1/2, ERRINFL, GRPRECOM omitted: they need >= 3 replicas")
    if unseen.any():
        history.append(f"QUALITY = 2 in {int(unseen.sum())} channel(s) that no input observed (masked in every input):"
                       " the cube there is the prior's and other energies' through the line spread")
    if g > 1:
        header["GRPSIZE"] = (g, "fused channels per bin (last: maybe fewer)")
    undefined = [k for k, (v, _) in header.items() if isinstance(v, float) and not np.isfinite(v)]
    for k in undefined:  # FITS headers hold no NaN (session 31: astropy refused them after all files were written)
        del header[k]
    if undefined:
        history.append(f"{', '.join(undefined)} omitted: undefined (too few channels, or none varies across replicas)")

    n = lo.size
    keys = {"telescope": telescope, "instrument": instrument, "filter": "NONE"}
    pha_path, rmf_path, arf_path = _write_flat_responses(path_prefix, lo, hi, area, overwrite, keys)
    # BACKSCAL as a column of ones (keyword 1): OGIP allows either, gammapy needs the column
    write_pha(data, np.append(lo, hi[-1]), float(exposure), pha_path, rmf=rmf_path.name, arf=arf_path.name,
              rate=rate, first_channel=0, object_name=object_name, obs_id=obs_id, backscal=np.ones(n),
              stat_err=stat_err, overwrite=overwrite, quality=np.where(unseen, 2, 0), **keys)
    if cov is not None:
        _write_covariance(cov, cov_path, reps.shape[0], "count/s" if rate else "count", overwrite, pha_path.name,
                          rank=int(np.linalg.matrix_rank(dev)))  # rank of dev^T dev: the small (replica, channel) SVD
    with fits.open(pha_path, mode="update") as hdul:
        h = hdul["SPECTRUM"].header
        for k, v in header.items():
            h[k] = v
        for line in history:
            h["HISTORY"] = line
        h["HISTORY"] = "Spectrum of an xfusion fused cube for a nominal fused instrument:"
        h["HISTORY"] = "diagonal RMF on the fused energy bins, flat ARF, counts = flux*area*exposure"
        h["HISTORY"] = "(expected counts, rounded to nearest integer)" if not rate else "(expected rate, not rounded)"
    return pha_path, rmf_path, arf_path


# --------------------------------------------------------------------------
# PHA type II: one spectrum per row
# --------------------------------------------------------------------------
__all__ += ["write_pha2", "write_pha2_from_result"]


def write_pha2(
    spectra,
    energy_edges,
    exposure,
    path,
    *,
    respfile: str = "none",
    ancrfile: str = "none",
    backscal=1.0,
    quality=None,
    telescope: str = "UNKNOWN",
    instrument: str = "UNKNOWN",
    filter: str = "NONE",  # noqa: A002
    object_name: str | None = None,
    first_channel: int = 0,
    extra_columns: dict | None = None,
    stat_err=None,
    overwrite: bool = False,
) -> Path:
    """Write a type-II OGIP PHA file (OGIP/92-007): one integer-count spectrum per row.

    Parameters
    ----------
    spectra : array_like, shape (n_spectra, n_channel)
        Counts (non-negative integers).
    energy_edges : array_like, (n_channel + 1,) or (n_channel, 2)
        Nominal channel energies (keV), written as ``EBOUNDS``.
    exposure : float or array_like (n_spectra,)
        Exposure (s): keyword if scalar, else an ``EXPOSURE`` column.
    path : str or os.PathLike
        Output file.
    respfile, ancrfile : str
        ``RESPFILE`` / ``ANCRFILE`` keywords shared by all rows.
    backscal : float or array_like (n_spectra,)
        ``BACKSCAL``: the keyword when all rows share it, else a per-row vector column
        (the value repeated over the channels, the layout Sherpa reads).
    quality : array_like of int (n_spectra, n_channel), optional
        ``QUALITY`` (default all 0).
    first_channel : int
        Number of the first channel (``TLMIN`` of ``CHANNEL``).
    extra_columns : dict, optional
        ``{name: (fits_format, values (n_spectra,))}``: per-row information, e.g. the
        fused-pixel offsets of :func:`write_pha2_from_result`, written with ``SPEC_NUM``
        in a separate ``SPEC_INFO`` table (Sherpa's type-II reader refuses scalar
        per-row columns in ``SPECTRUM`` other than ``SPEC_NUM``/``TG_*``).
    stat_err : array_like (n_spectra, n_channel), optional
        Statistical errors (count) written as a ``STAT_ERR`` vector column with
        ``POISSERR = F``; default none (``POISSERR = T``).

    Notes
    -----
    Columns ``SPEC_NUM`` (J, 1..n), ``CHANNEL`` (nJ), ``COUNTS`` (nJ), ``QUALITY``
    (nI) [, ``BACKSCAL`` (nE)] [, ``EXPOSURE`` (D) when the rows' exposures differ, which
    Sherpa does not read]; keywords as for :func:`write_pha` with ``HDUCLAS4 =
    'TYPE:II'``, ``POISSERR = T``, no ``BACKFILE``. Sherpa 4.19 loads such a file as one
    dataset per row (checked); gammapy 2.x has no type-II reader (use :func:`write_pha`
    per spectrum for it). Read back with :func:`xfusion.io.ogip_read.read_pha`.
    """
    path = Path(path)
    c = np.asarray(spectra, dtype=np.float64)
    if c.ndim != 2:
        raise ValueError(f"spectra must be 2D (n_spectra, n_channel); got shape {c.shape}.")
    n_spec, n = c.shape
    if np.any(c < 0) or not np.all(np.isfinite(c)) or not np.all(c == np.round(c)):
        raise ValueError("type-II COUNTS must be finite non-negative integers.")
    if c.max(initial=0) >= 2**31:
        raise ValueError("counts exceed the 32-bit COUNTS column.")
    lo, hi = _as_edges(energy_edges, n)
    channel = np.arange(n, dtype=np.int32) + int(first_channel)
    exp = np.asarray(exposure, dtype=np.float64)
    if not np.all(exp > 0):
        raise ValueError("exposure must be positive (s).")
    q = np.zeros((n_spec, n), np.int16) if quality is None else np.asarray(quality, np.int16)
    if q.shape != (n_spec, n):
        raise ValueError(f"quality must have shape {(n_spec, n)}.")
    bs = np.broadcast_to(np.asarray(backscal, dtype=np.float64), (n_spec,))
    spec_num = np.arange(1, n_spec + 1, dtype=np.int32)
    cols = [
        fits.Column(name="SPEC_NUM", format="J", array=spec_num),
        fits.Column(name="CHANNEL", format=f"{n}J", array=np.broadcast_to(channel, (n_spec, n))),
        fits.Column(name="COUNTS", format=f"{n}J", unit="count", array=c.astype(np.int32)),
        fits.Column(name="QUALITY", format=f"{n}I", array=q),
    ]
    if stat_err is not None:
        se = np.asarray(stat_err, dtype=np.float64)
        if se.shape != (n_spec, n) or not np.all(np.isfinite(se)) or np.any(se < 0):
            raise ValueError(f"stat_err must be finite, >= 0 and have shape {(n_spec, n)} (count).")
        cols.append(fits.Column(name="STAT_ERR", format=f"{n}E", unit="count", array=se.astype(np.float32)))
    if not np.all(bs == bs[0]):
        cols.append(fits.Column(name="BACKSCAL", format=f"{n}E",
                                array=np.repeat(bs[:, None], n, axis=1).astype(np.float32)))
    if exp.ndim:
        if exp.shape != (n_spec,):
            raise ValueError(f"exposure must be a scalar or have shape ({n_spec},).")
        if np.all(exp == exp[0]):
            exp = exp[0]
        else:
            cols.append(fits.Column(name="EXPOSURE", format="D", unit="s", array=exp))
    hdu = fits.BinTableHDU.from_columns(cols, name="SPECTRUM")
    h = hdu.header
    _common_keywords(h, telescope, instrument, filter)
    h["HDUCLAS1"] = ("SPECTRUM", "PHA dataset (OGIP/92-007)")
    h["HDUCLAS2"] = ("TOTAL", "gross spectrum (source + background)")
    h["HDUCLAS3"] = ("COUNT", "data stored as counts")
    h["HDUCLAS4"] = ("TYPE:II", "one spectrum per row (type II)")
    h["HDUVERS"] = ("1.2.1", "version of the format (OGIP/92-007)")
    if object_name is not None:
        h["OBJECT"] = (str(object_name), "name of the observed object")
    if exp.ndim == 0:
        h["EXPOSURE"] = (float(exp), "[s] exposure time")
    h["AREASCAL"] = (1.0, "area scaling factor")
    if np.all(bs == bs[0]):
        h["BACKSCAL"] = (float(bs[0]), "background scaling factor")
    h["CORRSCAL"] = (0.0, "correction file scaling factor")
    h["CORRFILE"] = ("NONE", "associated correction file")
    h["RESPFILE"] = (str(respfile), "associated redistribution matrix file")
    h["ANCRFILE"] = (str(ancrfile), "associated ancillary response file")
    h["CHANTYPE"] = ("PI", "channel type (PHA or PI)")
    h["DETCHANS"] = (n, "total number of detector channels")
    h["POISSERR"] = (stat_err is None, "Poisson errors to be assumed")
    h["SYS_ERR"] = (0.0, "no systematic error")
    h["GROUPING"] = (0, "no grouping of the data")
    idx = [c.upper() for c in hdu.columns.names].index("CHANNEL") + 1
    h[f"TLMIN{idx}"] = (int(channel[0]), "first legal channel number")
    h[f"TLMAX{idx}"] = (int(channel[-1]), "last legal channel number")
    hdus = [primary_hdu(), hdu, _ebounds_hdu(lo, hi, channel, telescope, instrument, filter, "PI")]
    if extra_columns:
        info = [fits.Column(name="SPEC_NUM", format="J", array=spec_num)]
        for name, (fmt, arr) in extra_columns.items():
            arr = np.asarray(arr)
            if arr.shape[:1] != (n_spec,):
                raise ValueError(f"extra column {name!r} needs one value per spectrum ({n_spec}).")
            info.append(fits.Column(name=name, format=fmt, array=arr))
        hdus.append(fits.BinTableHDU.from_columns(info, name="SPEC_INFO"))
    _writeto(hdus, path, overwrite, "PHA")
    return path


def write_pha2_from_result(
    result,
    path_prefix,
    *,
    regions=None,
    exposure: float = 1.0,
    area: float = 1.0,
    variable: str = "flux",
    telescope: str = "XFUSION",
    instrument: str = "FUSED",
    object_name: str | None = None,
    uncertainty=None,
    overwrite: bool = False,
) -> tuple[Path, Path, Path]:
    """Type-II PHA of a fused cube: one spectrum per fused pixel (or per region), + RMF + ARF.

    The same nominal "fused instrument" as :func:`write_pha_from_result` (diagonal RMF on
    the fused energy bins, flat ARF of ``area`` cm2, ``exposure`` s): row ``k`` holds the
    expected counts ``flux * area * exposure`` of pixel / region ``k``, rounded to the
    nearest integer (negative round-off set to 0). Pass the observation's ``exposure`` (s)
    and ``area`` (cm2): a ``ValueError`` is raised when the rounding loses the spectra, i.e.
    when the total of the written counts over all rows differs from the expected total by
    more than half of it (e.g. every count rounds to 0 with the defaults 1 s, 1 cm2; single
    faint pixels may round to 0, the file as a whole may not). The energy bins must be
    contiguous, as for :func:`write_pha_from_result`. ``overwrite``: as for
    :func:`write_pha_from_result` (only files xfusion wrote are replaced). ``result``: as for
    :func:`write_pha_from_result` (a Dataset or the flux DataArray; an X-ray cube in keV and
    ph cm-2 s-1, no NaN/inf in the pixels written).

    **Line widths include the sharp-spectral instrument's line spread**, as for
    :func:`write_pha_from_result`: the fused cube keeps that instrument's LSF and the
    diagonal RMF does not contain it, so a fitted line sigma is
    ``sqrt(sigma_line**2 + sigma_LSF**2)``; subtract the LSF sigma in quadrature (as
    :func:`xfusion.analysis.line_map`'s ``lsf_sigma`` does) or fold the model with the LSF.

    Parameters
    ----------
    regions : None or sequence
        ``None``: one row per fused pixel, in C order of (x, y); the ``SPEC_INFO`` table
        gives ``X_PIX``, ``Y_PIX`` (0-based indices) and ``X_OFF``, ``Y_OFF`` (arcsec
        offsets of the pixel centre, from the ``x``/``y`` coordinates) per ``SPEC_NUM``.
        Otherwise a sequence of regions as accepted by :func:`write_pha_from_result`
        (masks, pixel lists, ``np.nonzero`` index arrays or slice pairs; :func:`region_mask`),
        one row each, ``SPEC_INFO`` giving
        ``NPIXSOU`` (pixels summed).
    uncertainty : xarray.Dataset, optional
        The Dataset of :func:`xfusion.uncertainty` for this result: each row gets ``STAT_ERR``
        (count) = the standard deviation over the replicas of that pixel's / region's
        spectrum (ddof=1), ``POISSERR = F``. Channels (and neighbouring pixels) are
        correlated -- single fused pixels more than regions (session 7, cluster cores: a
        broad-band mode with lag correlations ~0.1 for the bias-aware refit, 0.2-0.8 for the
        tuned cube, against ~0 for 4x4-pixel regions); the covariance of a region and its
        correlation keywords are in :func:`write_pha_from_result`'s output.

    Returns
    -------
    (pha_path, rmf_path, arf_path)

    ``QUALITY`` is 0 except 2, in every row, in the channels no input observed (masked in every input), as in
    :func:`write_pha_from_result`.
    """
    da = _result_cube(result, variable, "write_pha2_from_result")
    if not (float(exposure) > 0 and float(area) > 0):
        raise ValueError(f"exposure and area must be positive; got {exposure!r} s and {area!r} cm2.")
    _check_outputs([(what, Path(os.fspath(path_prefix) + sfx))
                    for what, sfx in (("PHA", ".pha"), ("RMF", ".rmf"), ("ARF", ".arf"))], overwrite)
    lo, hi = _edges_from(da, "energy")
    _check_contiguous(lo, hi, "write_pha2_from_result")
    vals = np.asarray(da.values, dtype=np.float64)
    nx, ny, n = vals.shape
    if regions is None:
        _check_finite(vals, np.ones((nx, ny), bool), "write_pha2_from_result")
        spectra = vals.reshape(nx * ny, n)
        ix, iy = np.unravel_index(np.arange(nx * ny), (nx, ny))
        extra = {"X_PIX": ("J", ix.astype(np.int32)), "Y_PIX": ("J", iy.astype(np.int32)),
                 "X_OFF": ("D", np.asarray(da["x"].values, np.float64)[ix]),
                 "Y_OFF": ("D", np.asarray(da["y"].values, np.float64)[iy])}
    else:
        masks = [region_mask(r, (nx, ny), (da["x"].values, da["y"].values)) for r in regions]
        if any(not m.any() for m in masks):
            raise ValueError("a region selects no pixel.")
        _check_finite(vals, np.any(masks, axis=0), "write_pha2_from_result")
        spectra = np.stack([vals[m].sum(axis=0) for m in masks])
        extra = {"NPIXSOU": ("J", np.array([int(m.sum()) for m in masks], np.int32))}
    stat_err = None
    if uncertainty is not None:
        if regions is None:
            reps = uncertainty["flux_replicas"].transpose("replica", "x", "y", "energy") \
                if isinstance(uncertainty, xr.Dataset) and "flux_replicas" in uncertainty else None
            if reps is None or reps.shape[1:] != vals.shape or reps.shape[0] < 2:
                _replica_spectra(uncertainty, [np.ones((nx, ny), bool)], da)  # raises the explanatory error
            _check_uncertainty_of(uncertainty, da, np.ones((nx, ny), bool))
            acc, acc2 = np.zeros(vals.shape), np.zeros(vals.shape)
            for i in range(reps.shape[0]):
                r = np.asarray(reps[i].values, np.float64)
                acc += r
                acc2 += r * r
            k = reps.shape[0]
            var = np.maximum(acc2 - acc * acc / k, 0.0) / (k - 1)
            stat_err = np.sqrt(var).reshape(nx * ny, n)
        else:
            stat_err = _replica_spectra(uncertainty, masks, da).std(axis=0, ddof=1)
        stat_err = stat_err * float(area) * float(exposure)
    expected = np.clip(spectra * float(area) * float(exposure), 0.0, None)
    if stat_err is not None:
        stat_err = _floored_stat_err(stat_err, expected, 1.0)[0]
    _check_rounding(expected, np.rint(expected), exposure, area, "write_pha2_from_result", rate_hint=False)
    keys = {"telescope": telescope, "instrument": instrument, "filter": "NONE"}
    pha_path, rmf_path, arf_path = _write_flat_responses(path_prefix, lo, hi, area, overwrite, keys)
    unseen = _unobserved_channels(result, lo, hi)  # QUALITY 2 in every row (see write_pha_from_result)
    write_pha2(np.rint(expected), np.append(lo, hi[-1]), float(exposure), pha_path, respfile=rmf_path.name,
               ancrfile=arf_path.name, object_name=object_name, extra_columns=extra, stat_err=stat_err,
               quality=np.broadcast_to(np.where(unseen, 2, 0), expected.shape), overwrite=overwrite, **keys)
    return pha_path, rmf_path, arf_path


_PHOTON_FLUX = "ph cm-2 s-1"


def _result_cube(result, variable, writer):
    """The (x, y, energy) photon-flux cube behind a fused spectrum: ``result[variable]`` of a Dataset, or a DataArray
    itself. Refused (``ValueError``, before anything is written) unless it is an X-ray cube: every spectral unit it
    declares (``attrs["spectral_unit"]``, the ``units`` of ``energy``/``energy_lo``/``energy_hi``) keV and its flux
    ``ph cm-2 s-1`` (or no units) -- the fused instrument's EBOUNDS are keV and its COUNTS photons."""
    if isinstance(result, xr.Dataset):
        if variable not in result.data_vars:
            raise ValueError(f"{writer}: the result has no variable {variable!r} (it has {list(result.data_vars)}); "
                             "pass the Dataset of xfusion.fuse, variable=, or the flux DataArray itself.")
        da = result[variable]
        flux_unit = da.attrs.get("units", result.attrs.get("flux_units") if variable == "flux" else None)
    elif isinstance(result, xr.DataArray):
        da, flux_unit = result, result.attrs.get("units")
    else:
        raise ValueError(f"{writer} needs a fused cube: a Dataset with a {variable!r} variable (x, y, energy) or that "
                         f"DataArray, with energy_lo/energy_hi coordinates (keV); got {type(result).__name__}.")
    if da.ndim != 3 or set(da.dims) != {"x", "y", "energy"}:
        raise ValueError(f"{writer}: the cube must have dims ('x', 'y', 'energy'); got {da.dims}.")
    spectral = {str(u) for u in (result.attrs.get("spectral_unit"),
                                 *(da[c].attrs.get("units") for c in ("energy", "energy_lo", "energy_hi")
                                   if c in da.coords)) if u is not None}
    if spectral - {"keV"} or flux_unit not in (None, "", _PHOTON_FLUX):
        raise ValueError(
            f"{writer}: OGIP spectra need an X-ray cube (spectral axis in keV, photon flux in {_PHOTON_FLUX} per "
            f"voxel); this one has its spectral axis in {', '.join(sorted(spectral)) or 'keV'} and its flux in "
            f"{flux_unit!r}. XSPEC, Sherpa and gammapy would read its channels as keV and its values as photon "
            "counts (a wavelength / JWST result is not an X-ray spectrum). Nothing was written.")
    return da.transpose("x", "y", "energy")


def _check_finite(vals, mask, writer):
    """Refuse NaN/inf voxels of ``vals`` (x, y, energy) in the pixels of ``mask`` (x, y) before anything is written
    (their counts could not be written; xfusion does not patch them)."""
    bad = ~np.isfinite(vals) & mask[:, :, None]
    if bad.any():
        ix, iy, ie = (int(i[0]) for i in np.nonzero(bad))
        raise ValueError(f"{writer}: the cube has {int(bad.sum())} NaN/inf voxel(s) in the pixels to write (the "
                         f"first at x index {ix}, y index {iy}, energy channel {ie}): their counts are undefined. Fix "
                         "or mask the cube first (xfusion does not patch them), or leave those pixels out of the "
                         "region. Nothing was written.")


def _unobserved_channels(result, lo, hi):
    """Fused channels ``[lo, hi)`` (keV) that no input of ``result`` observed: no channel of any input overlapping
    them is unmasked anywhere in its field (its ``mask_<key>`` variable; an input without one observed every channel).
    The cube there comes from the prior and from other energies through the line spread (red team s33: +30 % over
    the truth, 18 times the STAT_ERR, written as good data). False everywhere when ``result`` is not a Dataset of
    :func:`xfusion.fuse` (no inputs recorded), or when an input's channel edges cannot be read."""
    nothing = np.zeros(lo.size, bool)
    keys = [v[len("counts_"):] for v in result.data_vars if v.startswith("counts_")] \
        if isinstance(result, xr.Dataset) else []
    if not keys:
        return nothing
    seen = np.zeros(lo.size, bool)
    tol = 1e-6 * (hi - lo)
    for key in keys:
        da = result[f"counts_{key}"]
        dims = [d for d in da.dims if d == "energy" or d.startswith("energy_")]
        edges = None
        if len(dims) == 1:
            d = dims[0]
            one_d = [c for c in da.coords if da[c].dims == (d,)]
            los = [c for c in one_d if "lo" in c.split("_")]
            his = [c for c in one_d if "hi" in c.split("_")]
            if len(los) == 1 and len(his) == 1:
                edges = (np.asarray(da[los[0]].values, np.float64), np.asarray(da[his[0]].values, np.float64))
        if edges is None:
            return nothing  # cannot tell: nothing flagged
        observed = np.ones(edges[0].size, bool)
        if f"mask_{key}" in result:
            m = result[f"mask_{key}"]
            observed = np.asarray(m.any(dim=[x for x in m.dims if x != dims[0]]).values, bool)
        clo, chi = edges[0][observed], edges[1][observed]
        seen |= ((clo[None, :] < (hi - tol)[:, None]) & (chi[None, :] > (lo + tol)[:, None])).any(axis=1)
    return ~seen


def _floored_stat_err(stat_err, expected, per):
    """``(STAT_ERR, number floored)``: channels whose replicas do not vary (std 0, e.g. a bias-aware refit at 0 in
    every replica: 16 of 40 channels of an edge pixel, red team s33) get the Poisson error of the expected counts,
    at least one count, ``sqrt(max(expected, 1)) / per`` (``per`` the exposure for RATE, else 1): a chi-square fit
    divides by STAT_ERR."""
    floor = np.sqrt(np.maximum(expected, 1.0)) / per
    zero = ~(stat_err > 0)
    return np.where(zero, floor, stat_err), int(zero.sum())


def _check_uncertainty_of(uncertainty, da, mask):
    """Refuse replicas computed for another cube: ``uncertainty["flux"]`` (the cube the replicas belong to: the
    result, or the refit of a bias-aware view) must equal the exported cube over the exported pixels (red team s33:
    the ML refit exported with the tuned fit's replicas got STAT_ERR 5x too small, silently)."""
    if "flux" not in uncertainty or da.name not in (None, "flux"):
        return
    ref = uncertainty["flux"].transpose("x", "y", "energy")
    if ref.shape != da.shape:
        return  # the grid check of _replica_spectra explains
    a = np.asarray(ref.values, np.float64)[mask]
    b = np.asarray(da.values, np.float64)[mask]
    scale = float(np.abs(b).max(initial=0.0))
    if not np.allclose(a, b, rtol=1e-5, atol=1e-6 * scale):
        raise ValueError(
            "uncertainty= belongs to another cube: its flux differs from the exported one (max relative difference "
            f"{float(np.abs(a - b).max()) / max(scale, 1e-300):.2g} over the exported pixels). Pass the result the "
            "uncertainty was computed for, with it: write_pha_from_result(result, ..., uncertainty=u) for "
            "xfusion.uncertainty(result, ...), or view = bias_aware_view(u) as both: write_pha_from_result(view, ..., "
            "uncertainty=view)")


def _replica_spectra(uncertainty, masks, da):
    """Region spectra of every replica, (replica, region, energy) float64, checked against the result's grid and
    cube (:func:`_check_uncertainty_of`)."""
    if not isinstance(uncertainty, xr.Dataset) or "flux_replicas" not in uncertainty:
        raise ValueError("uncertainty= must be the Dataset returned by xfusion.uncertainty (with flux_replicas)")
    _check_uncertainty_of(uncertainty, da, np.any(np.stack(masks), axis=0))
    reps = uncertainty["flux_replicas"].transpose("replica", "x", "y", "energy")
    want = (da.sizes["x"], da.sizes["y"], da.sizes["energy"])
    if reps.shape[1:] != want:
        raise ValueError(f"uncertainty= replicas are on a {reps.shape[1:]} grid but the result is {want}: pass the "
                         "uncertainty computed for this result")
    if reps.shape[0] < 2:
        raise ValueError("uncertainty= needs at least 2 replicas")
    m = np.stack(masks).astype(np.float64)
    out = np.stack([np.einsum("rxy,xye->re", m, np.asarray(reps[i].values, np.float64))
                    for i in range(reps.shape[0])])
    if not np.all(np.isfinite(out)):
        raise ValueError("uncertainty= replicas contain NaN or inf")
    return out


def _write_covariance(cov, path, n_rep, unit, overwrite, pha_name, rank=None):
    """Companion FITS file of a PHA: the channel covariance (image HDU ``COVARIANCE``); ``rank``: its rank if
    known (the rank of the replica deviations), else computed."""
    hdu = fits.ImageHDU(np.asarray(cov, np.float64), name="COVARIANCE")
    h = hdu.header
    h["BUNIT"] = (f"({unit})**2", "unit of the PHA data column, squared")
    h["NREPLICA"] = (int(n_rep), "replicas behind the covariance (ddof=1)")
    if rank is None:
        rank = int(np.linalg.matrix_rank(cov)) if cov.shape[0] <= 4096 else min(n_rep - 1, cov.shape[0])
    h["RANK"] = (int(rank), "rank <= NREPLICA - 1")
    h["PHAFILE"] = (pha_name, "spectrum these errors belong to")
    h["CHAN0"] = (0, "channel number of row/column 0")
    h["COMMENT"] = "Covariance of the fused spectrum across xfusion.uncertainty replicas: the fused"
    h["COMMENT"] = "channels are correlated (deconvolution, regularization), STAT_ERR = sqrt(diag)."
    h["COMMENT"] = "Do not invert a raw block of it with few replicas (n): its inverse is about"
    h["COMMENT"] = "(n-1)/(n-p-2) times too large for p channels, and noisy. Band it first (lags"
    h["COMMENT"] = "<= 2, correlations averaged over all channels), or group (PHA GRPRECOM)."
    _writeto([primary_hdu(), hdu], path, overwrite, "covariance file")
    return path


def _check_outputs(paths, overwrite):
    """Every output of a multi-file writer checked before any is written (a refusal writes nothing)."""
    for what, p in paths:
        check_fits_output(p, overwrite, what)


#: channels per block of the rounding check (:func:`_check_rounding`)
ROUNDING_BLOCK = 16


def _check_rounding(expected, counts, exposure, area, writer, rate_hint=True):
    """Refuse integer counts that distort the spectrum. ``expected`` (channel,) or (row, channel): the expected counts
    ``flux * area * exposure``; ``counts`` their rounding. In every block of :data:`ROUNDING_BLOCK` consecutive
    channels (of every row), the change the rounding makes must stay below half the Poisson error of the block,
    ``|sum(counts - expected)| <= 0.5 sqrt(sum(max(expected, 1)))``, and the total of every row within half.
    Rounding moves a channel by up to half a count, the same way in neighbouring channels of a smooth spectrum:
    negligible at many counts per channel, but a faint pixel at ~0.8 counts per channel gained 34 % (its continuum
    30 times its STAT_ERR; red team s33), which the earlier check (total within 50 %) let through."""
    e = np.atleast_2d(np.asarray(expected, np.float64))
    c = np.atleast_2d(np.asarray(counts, np.float64))
    n = e.shape[1]
    starts = np.arange(0, n, ROUNDING_BLOCK)
    bias = np.add.reduceat(c - e, starts, axis=1)
    block = np.add.reduceat(e, starts, axis=1)  # expected counts per block
    sigma = np.sqrt(np.add.reduceat(np.maximum(e, 1.0), starts, axis=1))
    bad = np.abs(bias) > 0.5 * sigma
    # and the total within half (a spectrum of ~0.01 count per channel rounds to 0 by less than a block's error)
    total = e.sum(axis=1)
    lost = (total > 0) & (np.abs(c.sum(axis=1) - total) > 0.5 * total)
    bad |= lost[:, None] & (block > 0)
    if not bad.any():
        return
    row, blk = np.argwhere(bad)[0]
    ch = slice(int(starts[blk]), int(min(starts[blk] + ROUNDING_BLOCK, n)))
    mean = float(e[row, ch].mean())
    # exposure x area giving >= 20 expected counts per channel in the faintest failing block (rounding, at most 0.5
    # per channel, then stays below half the error of a block of 16 even when every channel moves the same way)
    faintest = float((block / np.diff(np.append(starts, n)))[bad].min())
    need = 20.0 / max(faintest, 1e-30) * float(exposure) * float(area)
    where = f"row {int(row)}, " if e.shape[0] > 1 else ""
    alt = "; or rate=True (RATE in count/s, not rounded)" if rate_hint else ""
    raise ValueError(
        f"{writer}: rounding the expected counts flux * area * exposure to integers would distort the spectrum: in "
        f"{int(bad.sum())} block(s) of {ROUNDING_BLOCK} channels it moves the counts by more than half their Poisson "
        f"error (first: {where}channels {ch.start}-{ch.stop - 1}, {mean:.3g} expected counts per channel, changed by "
        f"{float(bias[row, blk]):+.3g} counts of {float(e[row, ch].sum()):.3g}; exposure={float(exposure):g} s, "
        f"area={float(area):g} cm2). Pass an exposure x area giving many counts per channel, about {need:.3g} s cm2 "
        f"(e.g. exposure={need / float(area):.3g} with area={float(area):g}: the files stay consistent, the counts "
        f"are expected counts, not a Poisson draw){alt}.")


def _check_contiguous(lo, hi, writer):
    """Refuse fused energy bins with gaps (or overlaps) before anything is written: the nominal fused
    instrument's RMF and ARF tabulate those bins, and an ARF over non-contiguous bins is refused by
    :func:`xfusion.io.ogip_read.read_arf` (and by other OGIP readers). Same tolerance as ``read_arf``."""
    gap = np.abs(lo[1:] - hi[:-1]) > 1e-3 * (hi - lo)[:-1]
    if gap.any():
        k = int(np.flatnonzero(gap)[0])
        raise ValueError(
            f"{writer}: the energy bins are not contiguous ({int(gap.sum())} gap(s)): channel {k} ends at "
            f"{hi[k]:.6g} keV but channel {k + 1} starts at {lo[k + 1]:.6g} keV (were channels dropped, e.g. "
            "result.isel(energy=good)?). The fused instrument's ARF and RMF need contiguous bins (read_arf refuses "
            "gaps). Export each contiguous channel range separately (result.isel(energy=slice(i0, i1))), or keep "
            "every channel and exclude the bad ones in the fitting tool (XSPEC ignore, Sherpa ignore) instead of "
            "dropping them.")


_LSF_NOTE = (
    "Diagonal RMF of an xfusion fused cube (nominal fused instrument). The fused",
    "cube keeps the line spread function (LSF) of the sharp-spectral instrument,",
    "which this RMF does not contain: a fitted line sigma is",
    "sqrt(sigma_line**2 + sigma_LSF**2). Subtract the LSF sigma in quadrature (as",
    "xfusion.analysis.line_map's lsf_sigma does) or fold the model with the LSF.",
)


def _write_flat_responses(path_prefix, lo, hi, area, overwrite, keys):
    """Write ``PREFIX.rmf`` (identity: fused channels are true energies) and ``PREFIX.arf`` (constant
    ``area`` cm2) on the channel edges ``lo``/``hi`` (keV); return the (pha, rmf, arf) paths."""
    from .ogip_read import edges_coords

    prefix = os.fspath(path_prefix)
    pha_path, rmf_path, arf_path = (Path(prefix + s) for s in (".pha", ".rmf", ".arf"))
    n = lo.size
    coords = edges_coords("energy_true", lo, hi)
    coords.update(edges_coords("energy", lo, hi))
    coords["channel"] = xr.Variable("energy", np.arange(n))
    rmf = xr.DataArray(np.eye(n), dims=("energy_true", "energy"), coords=coords,
                       attrs={"units": "1", "arf_folded": False})
    arf = xr.DataArray(np.full(n, float(area)), dims=("energy_true",),
                       coords=edges_coords("energy_true", lo, hi), attrs={"units": "cm2"})
    _check_outputs((("PHA", pha_path), ("RMF", rmf_path), ("ARF", arf_path)), overwrite)
    write_rmf(rmf, rmf_path, first_channel=0, overwrite=overwrite, **keys)
    with fits.open(rmf_path, mode="update") as hdul:
        h = hdul["MATRIX"].header
        for line in _LSF_NOTE:
            h["COMMENT"] = line
    write_arf(arf, arf_path, overwrite=overwrite, **keys)
    return pha_path, rmf_path, arf_path
