"""Readers for OGIP files: spectral responses (RMF, ARF) and spectra (PHA, type I and II).

The OGIP formats are described in the HEASARC memos CAL/GEN/92-002 (and its
addendum 92-002a).  An RMF has a response-matrix extension (``MATRIX`` or
``SPECRESP MATRIX``) and an ``EBOUNDS`` extension giving the nominal energy
range of each detector channel.  An ARF has a ``SPECRESP`` extension with the
effective area per true-energy bin.

Conventions (shared with the rest of :mod:`xfusion`):

* ``energy_true`` -- model-side (true photon) energy axis in keV.  Coordinates
  ``energy_true`` (bin centre ``(lo + hi) / 2``), ``energy_true_lo`` and
  ``energy_true_hi``.
* ``energy`` -- detector channel axis in keV (nominal channel energies from
  EBOUNDS).  Coordinates ``energy``, ``energy_lo``, ``energy_hi`` and the
  integer OGIP channel number ``channel``.
* Units are stored in ``.attrs["units"]`` of every variable and coordinate.

Compressed responses are the matrix elements stored in groups: each row (one
true-energy bin) has ``N_GRP`` groups, group ``g`` starting at channel
``F_CHAN[g]`` and spanning ``N_CHAN[g]`` channels; the ``MATRIX`` cell of the
row holds the concatenated values of all its groups.  ``F_CHAN``/``N_CHAN``
may be scalar, fixed-length or variable-length columns and ``MATRIX`` may be
fixed-length (zero padded) or variable-length; all of these are handled by a
vectorised unpacker.  An RMF split into several matrix extensions
(``EXTVER`` 1, 2, ...) is read as the sum of its blocks.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse
import xarray as xr
from astropy.io import fits

from ..observation import edge_tolerance, seam_gaps

__all__ = [
    "OGIPError",
    "SparseRMF",
    "read_rmf",
    "read_arf",
    "edges_coords",
]

_MATRIX_NAMES = ("MATRIX", "SPECRESP MATRIX")
_MATRIX_COLUMNS = ("ENERG_LO", "ENERG_HI", "N_GRP", "F_CHAN", "N_CHAN", "MATRIX")
_EBOUNDS_COLUMNS = ("CHANNEL", "E_MIN", "E_MAX")
_ARF_COLUMNS = ("ENERG_LO", "ENERG_HI", "SPECRESP")

#: Row sums of a pure redistribution matrix are probabilities (<= 1 up to
#: rounding).  Above this value the matrix must carry an effective area.
_ROW_SUM_AREA_THRESHOLD = 1.5

#: ``read_rmf(sparse=None)`` returns a :class:`SparseRMF` when the dense matrix
#: would hold more elements than this (2.5e7 float64 = 200 MB): the 12,000-channel
#: microcalorimeter RMF (1.44e8 elements, 1.15 GB dense) is read sparse, the
#: 1319 x 4096 EPIC-pn RMF dense.
SPARSE_THRESHOLD = 25_000_000


class OGIPError(ValueError):
    """A file does not follow the OGIP convention expected by the reader.

    The message names the file, the problem and, where possible, the fix.
    """


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------
def _name(path) -> str:
    try:
        return os.path.basename(os.fspath(path))
    except TypeError:
        return str(path)


def _hdu_names(hdul) -> list[str]:
    return [h.name for h in hdul]


def _find_hdu(hdul, names, fname, what, hduclas2=None, hdu=None):
    """Return the first table HDU whose EXTNAME is in ``names``.

    Falls back to ``HDUCLAS2`` matching ``hduclas2`` if no EXTNAME matches.
    """
    if hdu is not None:
        try:
            found = hdul[hdu]
        except (KeyError, IndexError) as exc:
            raise OGIPError(
                f"{fname}: requested HDU {hdu!r} for the {what} does not exist; "
                f"the file has HDUs {_hdu_names(hdul)}. Pass one of these as `hdu=`."
            ) from exc
        if not isinstance(found, fits.BinTableHDU):
            raise OGIPError(
                f"{fname}: HDU {hdu!r} is not a binary table, so it cannot hold "
                f"the {what}; the file has HDUs {_hdu_names(hdul)}."
            )
        return found
    for h in hdul:
        if isinstance(h, fits.BinTableHDU) and h.name.upper() in names:
            return h
    if hduclas2 is not None:
        for h in hdul:
            if (
                isinstance(h, fits.BinTableHDU)
                and str(h.header.get("HDUCLAS2", "")).strip().upper() == hduclas2
            ):
                return h
    raise OGIPError(
        f"{fname}: no {what} extension found (looked for EXTNAME in "
        f"{list(names)}"
        + (f" or HDUCLAS2={hduclas2!r}" if hduclas2 else "")
        + f"); the file has HDUs {_hdu_names(hdul)}. Check that this is the "
        "right kind of file, or pass the extension explicitly with `hdu=`."
    )


def _require_columns(hdu, columns, fname):
    present = [c.upper() for c in hdu.columns.names]
    missing = [c for c in columns if c not in present]
    if missing:
        raise OGIPError(
            f"{fname}: extension {hdu.name!r} is missing required column(s) "
            f"{missing}; it has columns {hdu.columns.names}. An OGIP file "
            f"needs columns {list(columns)} in this extension."
        )


def _check_edges(lo, hi, fname, hdu_name, lo_name, hi_name):
    """Validate a set of bin edges: finite, sorted, positive widths."""
    lo = np.asarray(lo, dtype=np.float64)
    hi = np.asarray(hi, dtype=np.float64)
    if lo.size == 0:
        raise OGIPError(f"{fname}: extension {hdu_name!r} has no rows.")
    if not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi))):
        raise OGIPError(
            f"{fname}: {hdu_name} columns {lo_name}/{hi_name} contain "
            "non-finite values; fix or regenerate the file."
        )
    width = hi - lo
    if np.any(width <= 0):
        bad = np.flatnonzero(width <= 0)
        raise OGIPError(
            f"{fname}: {hdu_name} has non-positive bin widths "
            f"({hi_name} <= {lo_name}) in {bad.size} row(s), first at row "
            f"{int(bad[0])} ({lo_name}={lo[bad[0]]!r}, {hi_name}={hi[bad[0]]!r}). "
            "Every bin must satisfy lo < hi; fix or regenerate the file."
        )
    if lo.size > 1 and (np.any(np.diff(lo) <= 0) or np.any(np.diff(hi) <= 0)):
        bad = np.flatnonzero((np.diff(lo) <= 0) | (np.diff(hi) <= 0))
        raise OGIPError(
            f"{fname}: {hdu_name} energies are not strictly increasing "
            f"({lo_name}/{hi_name} decrease or repeat at row {int(bad[0]) + 1}). "
            "This reader requires bins sorted by increasing energy; sort the "
            "rows (and the matching matrix rows/columns) first."
        )
    return lo, hi


def _close_float32_seams(lo, hi):
    """``(hi, gap, bad)``: ``hi`` (keV) with every float32-rounding seam closed, ``hi[i] = lo[i + 1]``.

    ``gap`` and ``bad`` are those of :func:`xfusion.observation.seam_gaps`: ``gap[i] = lo[i + 1] - hi[i]``
    and the indices of the real gaps or overlaps, which are left as they are (the caller refuses or keeps
    them). The kept value of a closed seam is the upper bin's lower edge (``ENERG_LO`` / ``E_MIN``),
    the edge xfusion's grids are built from.
    """
    gap, bad = seam_gaps(lo, hi)
    hi = np.array(hi, dtype=np.float64, copy=True)
    close = np.ones(gap.size, dtype=bool)
    close[bad] = False
    hi[:-1][close] = np.asarray(lo, dtype=np.float64)[1:][close]
    return hi, gap, bad


def edges_coords(dim: str, lo, hi, units: str = "keV") -> dict[str, xr.Variable]:
    """Build the centre / lo / hi coordinate variables for an energy dim.

    Parameters
    ----------
    dim : str
        Dimension name, e.g. ``"energy_true"`` or ``"energy"``.
    lo, hi : array_like, shape (n,)
        Lower and upper bin edges.
    units : str
        Unit string stored in ``attrs["units"]`` of each coordinate.

    Returns
    -------
    dict
        ``{dim: centres, dim + "_lo": lo, dim + "_hi": hi}`` as
        :class:`xarray.Variable` objects along ``dim``.
    """
    lo = np.asarray(lo, dtype=np.float64)
    hi = np.asarray(hi, dtype=np.float64)
    return {
        dim: xr.Variable(dim, 0.5 * (lo + hi), attrs={"units": units}),
        f"{dim}_lo": xr.Variable(dim, lo, attrs={"units": units}),
        f"{dim}_hi": xr.Variable(dim, hi, attrs={"units": units}),
    }


def _energy_unit_scale(hdu, colname, fname) -> float:
    """Factor converting column ``colname``'s energies to keV, from that column's own ``TUNITn``
    (keV assumed if it has none): 1 for keV, 1e-3 for eV, 1e3 for MeV."""
    idx = [c.upper() for c in hdu.columns.names].index(colname) + 1
    unit = str(hdu.header.get(f"TUNIT{idx}", "keV")).strip().lower()
    scales = {"kev": 1.0, "": 1.0, "ev": 1e-3, "mev": 1e3}
    if unit not in scales:
        raise OGIPError(
            f"{fname}: column {colname} of {hdu.name!r} has unit {unit!r}; "
            "expected keV (or eV/MeV). Fix the TUNIT keyword."
        )
    return scales[unit]


def _column_tlmin(hdu, colname):
    idx = [c.upper() for c in hdu.columns.names].index(colname) + 1
    value = hdu.header.get(f"TLMIN{idx}")
    return None if value is None else int(value)


def _flatten_groups(col, n_per_row, fname, colname, hdu_name):
    """Flatten a per-row group column, keeping the first ``n_per_row[i]``
    entries of row ``i``.

    ``col`` may be a 1-D array (scalar column), a 2-D array (fixed-length
    vector column) or an object array / astropy ``_VLF`` of 1-D arrays
    (variable-length column).  Returns a 1-D array of length
    ``n_per_row.sum()``, ordered row by row.
    """
    n_per_row = np.asarray(n_per_row, dtype=np.int64)
    nrows = n_per_row.size
    total = int(n_per_row.sum())
    arr = col
    if isinstance(arr, np.ndarray) and arr.dtype != object:
        if arr.ndim == 1:
            arr = arr[:, None]
        elif arr.ndim > 2:
            arr = arr.reshape(nrows, -1)
        width = arr.shape[1]
        if np.any(n_per_row > width):
            bad = int(np.flatnonzero(n_per_row > width)[0])
            raise OGIPError(
                f"{fname}: {hdu_name} row {bad} needs {int(n_per_row[bad])} "
                f"{colname} entries but the fixed-length column only holds "
                f"{width}. The file is inconsistent (check N_GRP/N_CHAN)."
            )
        mask = np.arange(width)[None, :] < n_per_row[:, None]
        return arr[mask]
    # variable-length array column: list/object array of 1-D arrays
    cells = [np.atleast_1d(np.asarray(c)).ravel() for c in arr]
    lens = np.fromiter((c.size for c in cells), dtype=np.int64, count=nrows)
    if np.any(lens < n_per_row):
        bad = int(np.flatnonzero(lens < n_per_row)[0])
        raise OGIPError(
            f"{fname}: {hdu_name} row {bad} needs {int(n_per_row[bad])} "
            f"{colname} entries but its variable-length cell holds only "
            f"{int(lens[bad])}. The file is inconsistent (check N_GRP/N_CHAN)."
        )
    if total == 0:
        return np.zeros(0)
    flat = np.concatenate(cells) if cells else np.zeros(0)
    if np.array_equal(lens, n_per_row):
        return flat
    starts = np.concatenate(([0], np.cumsum(lens)[:-1]))
    pos = np.arange(flat.size) - np.repeat(starts, lens)
    keep = pos < np.repeat(n_per_row, lens)
    return flat[keep]


# --------------------------------------------------------------------------
# RMF
# --------------------------------------------------------------------------
@dataclass
class SparseRMF:
    """Sparse response matrix with its coordinates.

    Attributes
    ----------
    matrix : scipy.sparse.csr_array, shape (n_energy_true, n_energy)
        Redistribution probabilities (float64), rows = true-energy bins,
        columns = detector channels (times the effective area in cm2 if
        ``attrs["arf_folded"]``).
    energy_true_edges : numpy.ndarray, shape (n_energy_true, 2)
        ``[lo, hi]`` of each true-energy bin in keV.
    energy_edges : numpy.ndarray, shape (n_energy, 2)
        ``[lo, hi]`` nominal energy range of each channel in keV (EBOUNDS).
    channel : numpy.ndarray, shape (n_energy,)
        OGIP channel numbers (EBOUNDS ``CHANNEL``).
    attrs : dict
        Same metadata as the dense :func:`read_rmf` result.
    """

    matrix: scipy.sparse.csr_array
    energy_true_edges: np.ndarray
    energy_edges: np.ndarray
    channel: np.ndarray
    attrs: dict[str, Any] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.matrix.shape)

    def coords(self) -> dict[str, xr.Variable]:
        """Coordinate variables for the ``energy_true`` and ``energy`` dims."""
        coords = edges_coords(
            "energy_true", self.energy_true_edges[:, 0], self.energy_true_edges[:, 1]
        )
        coords.update(
            edges_coords("energy", self.energy_edges[:, 0], self.energy_edges[:, 1])
        )
        coords["channel"] = xr.Variable(
            "energy", np.asarray(self.channel), attrs={"units": "1"}
        )
        return coords

    def to_dataarray(self) -> xr.DataArray:
        """Dense :class:`xarray.DataArray` with dims ``(energy_true, energy)``."""
        return xr.DataArray(
            self.matrix.toarray(),
            dims=("energy_true", "energy"),
            coords=self.coords(),
            name="rmf",
            attrs=dict(self.attrs),
        )


def _matrix_hdus(hdul, fname, hdu):
    """``[(label, hdu), ...]``: the response-matrix extensions to read.

    ``hdu`` given: that one. Otherwise every binary table named ``MATRIX`` or ``SPECRESP MATRIX``
    (an RMF may be split into several, ``EXTVER`` 1, 2, ... -- CAL/GEN/92-002, 2020 revision --
    whose sum is the response) or, failing that, every one with ``HDUCLAS2 = 'RSP_MATRIX'``.
    ``label`` names the block in messages: ``"HDU 2 (MATRIX, EXTVER 2)"``.
    """
    def label(h):
        i = next(k for k, x in enumerate(hdul) if x is h)
        return f"HDU {i} ({h.name}, EXTVER {h.header.get('EXTVER', 1)})"

    if hdu is None:
        tables = [h for h in hdul if isinstance(h, fits.BinTableHDU)]
        found = [h for h in tables if h.name.upper() in _MATRIX_NAMES] or [
            h for h in tables if str(h.header.get("HDUCLAS2", "")).strip().upper() == "RSP_MATRIX"]
        if found:
            return [(label(h), h) for h in found]
    h = _find_hdu(hdul, _MATRIX_NAMES, fname, "response matrix (MATRIX / SPECRESP MATRIX)",
                  hduclas2="RSP_MATRIX", hdu=hdu)
    return [(label(h), h)]


def _read_matrix_block(mhdu, label, ehead, channel, first_channel, fname):
    """One matrix extension unpacked: a dict with its true-energy edges ``t_lo``/``t_hi`` (keV),
    the element ``rows``, ``cols`` (column index = channel - first channel) and ``values``, the
    first channel ``tlmin`` and its ``tlmin_source``, ``name``, ``label``, ``hduclas3`` and ``meta``."""
    _require_columns(mhdu, _MATRIX_COLUMNS, fname)
    mhead = mhdu.header
    mdata = mhdu.data
    n_chan_total = channel.size

    # ---- MATRIX energies (each column with its own TUNIT) ----
    t_lo, t_hi = _check_edges(
        np.asarray(mdata["ENERG_LO"], dtype=np.float64) * _energy_unit_scale(mhdu, "ENERG_LO", fname),
        np.asarray(mdata["ENERG_HI"], dtype=np.float64) * _energy_unit_scale(mhdu, "ENERG_HI", fname),
        fname, mhdu.name, "ENERG_LO", "ENERG_HI",
    )
    t_hi, _, _ = _close_float32_seams(t_lo, t_hi)
    nrows = t_lo.size

    detchans = mhead.get("DETCHANS")
    if detchans is not None and int(detchans) != n_chan_total:
        raise OGIPError(
            f"{fname}: channel-count mismatch: {mhdu.name} has DETCHANS="
            f"{int(detchans)} but EBOUNDS has {n_chan_total} rows. The "
            "matrix and EBOUNDS must describe the same channels; use the "
            "EBOUNDS extension that belongs to this matrix."
        )

    # ---- channel offset ----
    tlmin = _column_tlmin(mhdu, "F_CHAN")
    if first_channel is not None:
        tlmin = int(first_channel)
        tlmin_source = "argument"
    elif tlmin is not None:
        tlmin_source = "TLMIN"
    else:
        tlmin = 1
        tlmin_source = "default"

    # ---- unpack groups (vectorised) ----
    n_grp = np.asarray(mdata["N_GRP"]).astype(np.int64).ravel()
    if np.any(n_grp < 0):
        raise OGIPError(f"{fname}: negative N_GRP values in {mhdu.name}.")
    f_chan = _flatten_groups(
        mdata["F_CHAN"], n_grp, fname, "F_CHAN", mhdu.name
    ).astype(np.int64)
    n_chan = _flatten_groups(
        mdata["N_CHAN"], n_grp, fname, "N_CHAN", mhdu.name
    ).astype(np.int64)
    if np.any(n_chan < 0):
        raise OGIPError(f"{fname}: negative N_CHAN values in {mhdu.name}.")
    group_row = np.repeat(np.arange(nrows), n_grp)
    row_len = np.bincount(group_row, weights=n_chan, minlength=nrows).astype(
        np.int64
    )
    values = _flatten_groups(
        mdata["MATRIX"], row_len, fname, "MATRIX", mhdu.name
    ).astype(np.float64)

    # element -> (row, column)
    n_elem = int(n_chan.sum())
    group_start = np.cumsum(n_chan) - n_chan
    offset = np.arange(n_elem, dtype=np.int64) - np.repeat(group_start, n_chan)
    cols = np.repeat(f_chan - tlmin, n_chan) + offset
    rows = np.repeat(group_row, n_chan)
    if n_elem and (cols.min() < 0 or cols.max() >= n_chan_total):
        bad_lo, bad_hi = int(cols.min()) + tlmin, int(cols.max()) + tlmin
        raise OGIPError(
            f"{fname}: channel-count mismatch: {mhdu.name} refers to channels "
            f"{bad_lo}..{bad_hi} (F_CHAN/N_CHAN with first channel {tlmin}, "
            f"from {tlmin_source}) but EBOUNDS has {n_chan_total} channels "
            f"({channel[0]}..{channel[-1]}). Check TLMIN of F_CHAN (0- vs "
            "1-based channels) and that EBOUNDS belongs to this matrix."
        )
    meta = {
        "telescope": str(mhead.get("TELESCOP", "")).strip(),
        "instrument": str(mhead.get("INSTRUME", "")).strip(),
        "detnam": str(mhead.get("DETNAM", "")).strip(),
        "filter": str(mhead.get("FILTER", "")).strip(),
        "chantype": str(mhead.get("CHANTYPE", ehead.get("CHANTYPE", ""))).strip(),
        "lo_thresh": float(mhead.get("LO_THRES", mhead.get("LO_THRESH", 0.0))),
    }
    return {"t_lo": t_lo, "t_hi": t_hi, "rows": rows, "cols": cols, "values": values, "tlmin": tlmin,
            "tlmin_source": tlmin_source, "name": mhdu.name, "label": label,
            "hduclas3": str(mhead.get("HDUCLAS3", "")).strip().upper(), "meta": meta}


def _check_matrix_blocks(parts, fname):
    """The first block, after checking that all blocks are parts of one response (their sum).

    They must be the same kind of matrix (EXTNAME and ``HDUCLAS3``), on the same true-energy grid
    (edges equal within :func:`xfusion.observation.edge_tolerance`, i.e. float32 rounding) and
    number their channels from the same first channel; anything else is refused naming the blocks.
    """
    a = parts[0]
    ea = np.append(a["t_lo"], a["t_hi"][-1])
    fix = "Read one block with read_rmf(..., hdu=<HDU number>) if that is what you mean, or fix the file"
    for b in parts[1:]:
        pair = f"{a['label']} and {b['label']}"
        if (b["name"].upper(), b["hduclas3"]) != (a["name"].upper(), a["hduclas3"]):
            raise OGIPError(
                f"{fname}: the response-matrix blocks {pair} are not parts of one response (HDUCLAS3 "
                f"{a['hduclas3']!r} vs {b['hduclas3']!r}); a multi-block RMF is the sum of blocks of the same kind. "
                + fix)
        eb = np.append(b["t_lo"], b["t_hi"][-1])
        if eb.size != ea.size:
            raise OGIPError(
                f"{fname}: the response-matrix blocks {pair} have different true-energy grids ({ea.size - 1} and "
                f"{eb.size - 1} rows); a multi-block RMF is the sum of blocks on one grid, so they cannot be "
                "summed. " + fix)
        off = np.flatnonzero(np.abs(eb - ea) > edge_tolerance(ea))
        if off.size:
            k = int(off[0])
            raise OGIPError(
                f"{fname}: the response-matrix blocks {pair} have different true-energy grids (edge {k}: "
                f"{ea[k]:.9g} vs {eb[k]:.9g} keV); a multi-block RMF is the sum of blocks on one grid, so they "
                "cannot be summed. " + fix)
        if b["tlmin"] != a["tlmin"]:
            raise OGIPError(
                f"{fname}: the response-matrix blocks {pair} number their channels from {a['tlmin']} and "
                f"{b['tlmin']} (TLMIN of F_CHAN); the channels of a summed response must be the same. Pass "
                "first_channel= if the file is mislabelled, or read one block with hdu=")
    return a


def read_rmf(
    path,
    *,
    sparse: bool | None = None,
    hdu: int | str | None = None,
    arf_folded: bool | None = None,
    first_channel: int | None = None,
):
    """Read an OGIP redistribution matrix file (RMF / RSP).

    Parameters
    ----------
    path : str or os.PathLike
        File name; gzip-compressed files (``.gz``) are read transparently.
    sparse : bool or None
        ``True`` returns a :class:`SparseRMF` (``scipy.sparse.csr_array`` plus
        coordinates), ``False`` a dense :class:`xarray.DataArray`.  ``None``
        (the default) chooses: sparse when the dense matrix would have more
        than :data:`SPARSE_THRESHOLD` elements (2.5e7, 200 MB in float64; a
        12,000 x 12,000 matrix is 1.15 GB dense, a 60,000-channel Resolve RMF
        29 GB), dense otherwise.  ``attrs["sparse_auto"]`` records the
        automatic choice.
    hdu : int or str, optional
        Matrix extension to use (that one only).  By default every binary
        table with EXTNAME ``MATRIX`` or ``SPECRESP MATRIX`` (or, failing
        that, ``HDUCLAS2 = 'RSP_MATRIX'``) is read, and several are summed
        (see Notes, *Several matrix blocks*).
    arf_folded : bool, optional
        Override the detection of a folded-in effective area (see Notes).
    first_channel : int, optional
        Channel number of the first column (the value subtracted from
        ``F_CHAN``).  Overrides the ``TLMIN`` keyword and the default of 1
        (see Notes); use it for files known to be mislabelled.

    Returns
    -------
    xarray.DataArray or SparseRMF
        (a :class:`SparseRMF` with ``sparse=True`` or, with ``sparse=None``,
        above :data:`SPARSE_THRESHOLD` elements; its ``coords()`` and
        ``to_dataarray()`` give the layout below.)
        Float64 array with dims ``("energy_true", "energy")`` and shape
        ``(n_rows_of_MATRIX, n_rows_of_EBOUNDS)``.  Coordinates:

        * ``energy_true``, ``energy_true_lo``, ``energy_true_hi`` (keV), from
          ``ENERG_LO``/``ENERG_HI``;
        * ``energy``, ``energy_lo``, ``energy_hi`` (keV), from EBOUNDS
          ``E_MIN``/``E_MAX`` (every energy column converted with its own
          ``TUNITn``: keV, eV or MeV, keV if absent);
        * ``channel`` (along ``energy``), from EBOUNDS ``CHANNEL``.

        ``attrs``: ``units`` (``"1"`` or ``"cm2"``), ``file`` (basename),
        ``hdu`` (EXTNAME of the matrix), ``matrix_blocks`` (number of
        matrix extensions summed, usually 1), ``arf_folded``, ``hduclas3``,
        ``row_sum_max``, ``f_chan_tlmin`` (first channel number used to
        convert ``F_CHAN`` to column indices), ``f_chan_tlmin_source``
        (``"TLMIN"``: the ``TLMINn`` keyword of ``F_CHAN``; ``"default"``: no
        such keyword, the OGIP default 1; ``"argument"``: ``first_channel=``),
        ``telescope``, ``instrument``, ``detnam``, ``filter``, ``chantype``,
        ``detchans``, ``lo_thresh`` (the header values of the first block).

    Raises
    ------
    OGIPError
        If an extension or column is missing, energies are not strictly
        increasing, bin widths are non-positive, the channel counts of
        the matrix and EBOUNDS disagree, or several matrix blocks cannot be
        summed (different kinds, true-energy grids or first channels).

    Notes
    -----
    *Channel numbering.*  ``F_CHAN`` holds OGIP channel numbers, which start
    at 0 or 1 depending on the instrument.  The column index of a channel is
    ``F_CHAN - TLMIN`` where ``TLMIN`` is the ``TLMINn`` keyword of the
    ``F_CHAN`` column (OGIP 92-002a).  Many files omit it (e.g. XMM EPIC-pn
    RMFs); the fallback is 1, the OGIP default that XSPEC also assumes
    (recorded as ``f_chan_tlmin_source="default"``).  Measured on the
    shipped ``epn_ff20_dY9.rmf`` (no TLMIN, EBOUNDS channels from 0): with 1
    the photopeak of 1-8 keV lines sits < 1 eV from the true energy, while
    taking the first EBOUNDS channel (0, Sherpa's choice) puts it one
    channel (5 eV) high.  Pass ``first_channel`` to override.

    *Folded effective area.*  By OGIP convention an extension called
    ``SPECRESP MATRIX`` contains the full response (RMF x ARF, cm2) while
    ``MATRIX`` is a pure redistribution.  In practice many pure RMFs are
    named ``SPECRESP MATRIX`` (both the XMM EPIC-pn and the microcalorimeter
    RMFs shipped with the test data are, with row sums <= 1).  Therefore
    ``arf_folded`` is set to ``True`` only when the extension is named
    ``SPECRESP MATRIX`` *and* either ``HDUCLAS3 = 'FULL'`` or the largest row
    sum exceeds 1.5 (a probability cannot).  ``attrs["units"]`` is ``"cm2"``
    when ``arf_folded`` and ``"1"`` otherwise.  Pass ``arf_folded=`` to
    override.

    *Float32 seams.*  Files written in float32 often have ``E_MAX[i]`` (or
    ``ENERG_HI[i]``) one or two float32 ulps away from ``E_MIN[i + 1]``
    (``ENERG_LO[i + 1]``), e.g. when computed as ``E_MIN + width``.  Such
    seams (within :func:`xfusion.observation.seam_gaps`' tolerance) are
    closed with the upper bin's lower edge, so the channel and true-energy
    grids returned are strictly contiguous; larger gaps are kept as in the
    file (:func:`xfusion.io.observation_from_files` refuses them in EBOUNDS).

    *Several matrix blocks.*  CAL/GEN/92-002 (2020 revision) lets an RMF
    be split into several ``MATRIX`` extensions (``EXTVER`` 1, 2, ..., e.g.
    a calorimeter's line core and its low-energy tail); the response is
    their sum.  Without ``hdu=`` all of them are read and summed; they must
    be of one kind (EXTNAME, ``HDUCLAS3``), on one true-energy grid (edges
    equal to float32 rounding) and number their channels from the same
    first channel, else an :class:`OGIPError` names the two blocks.  They
    share the file's ``EBOUNDS``.

    *Groups.*  ``N_GRP = 0`` rows are all-zero; ``N_GRP > 1`` is supported for
    scalar, fixed-length and variable-length ``F_CHAN``/``N_CHAN`` columns
    and for fixed-length (zero-padded) and variable-length ``MATRIX``
    columns.  Elements falling on the same matrix cell are summed.
    """
    fname = _name(path)
    with fits.open(path, memmap=False) as hdul:
        blocks = _matrix_hdus(hdul, fname, hdu)
        ehdu = _find_hdu(hdul, ("EBOUNDS",), fname, "EBOUNDS", hduclas2="EBOUNDS")
        _require_columns(ehdu, _EBOUNDS_COLUMNS, fname)
        ehead = ehdu.header
        edata = ehdu.data

        # ---- EBOUNDS ----
        # each column with its own TUNIT (FITS gives every column one; E_MAX in eV next to E_MIN in keV is legal)
        e_lo, e_hi = _check_edges(
            np.asarray(edata["E_MIN"], dtype=np.float64) * _energy_unit_scale(ehdu, "E_MIN", fname),
            np.asarray(edata["E_MAX"], dtype=np.float64) * _energy_unit_scale(ehdu, "E_MAX", fname),
            fname, "EBOUNDS", "E_MIN", "E_MAX",
        )
        e_hi, _, _ = _close_float32_seams(e_lo, e_hi)
        channel = np.asarray(edata["CHANNEL"]).astype(np.int64)
        n_chan_total = channel.size
        if n_chan_total > 1 and np.any(np.diff(channel) != 1):
            raise OGIPError(
                f"{fname}: EBOUNDS CHANNEL numbers are not consecutive "
                f"(first {channel[0]}, last {channel[-1]}, {n_chan_total} rows). "
                "This reader requires one EBOUNDS row per channel in order."
            )
        e_detchans = ehead.get("DETCHANS")
        if e_detchans is not None and int(e_detchans) != n_chan_total:
            raise OGIPError(
                f"{fname}: channel-count mismatch: EBOUNDS has DETCHANS="
                f"{int(e_detchans)} but {n_chan_total} rows; fix the file."
            )

        parts = [_read_matrix_block(mhdu, label, ehead, channel, first_channel, fname)
                 for label, mhdu in blocks]
    first = _check_matrix_blocks(parts, fname)
    t_lo, t_hi = first["t_lo"], first["t_hi"]
    nrows = t_lo.size
    # the response is the sum of its blocks: elements on the same cell (within or across blocks) are summed
    matrix = scipy.sparse.csr_array(
        (np.concatenate([b["values"] for b in parts]),
         (np.concatenate([b["rows"] for b in parts]), np.concatenate([b["cols"] for b in parts]))),
        shape=(nrows, n_chan_total), dtype=np.float64,
    )
    matrix.sum_duplicates()
    row_sum = np.asarray(matrix.sum(axis=1)).ravel()
    row_sum_max = float(row_sum.max()) if row_sum.size else 0.0

    hdu_name, hduclas3 = first["name"], first["hduclas3"]
    if arf_folded is None:
        arf_folded = hdu_name.upper() == "SPECRESP MATRIX" and (
            hduclas3 == "FULL" or row_sum_max > _ROW_SUM_AREA_THRESHOLD
        )
    attrs = {
        "units": "cm2" if arf_folded else "1",
        "file": fname,
        "hdu": hdu_name,
        "matrix_blocks": len(parts),
        "arf_folded": bool(arf_folded),
        "hduclas3": hduclas3,
        "row_sum_max": row_sum_max,
        "f_chan_tlmin": int(first["tlmin"]),
        "f_chan_tlmin_source": first["tlmin_source"],
        "detchans": int(n_chan_total),
        **first["meta"],
    }

    sp = SparseRMF(
        matrix=matrix,
        energy_true_edges=np.stack([t_lo, t_hi], axis=1),
        energy_edges=np.stack([e_lo, e_hi], axis=1),
        channel=channel,
        attrs=attrs,
    )
    if sparse is None:
        sparse = nrows * n_chan_total > SPARSE_THRESHOLD
        sp.attrs["sparse_auto"] = bool(sparse)
    if sparse:
        return sp
    return sp.to_dataarray()


# --------------------------------------------------------------------------
# ARF
# --------------------------------------------------------------------------
def read_arf(path, *, hdu: int | str | None = None) -> xr.DataArray:
    """Read an OGIP ancillary response file (effective area).

    Parameters
    ----------
    path : str or os.PathLike
        File name (``.gz`` accepted).
    hdu : int or str, optional
        Extension to read; default: EXTNAME ``SPECRESP`` (or
        ``HDUCLAS2 = 'SPECRESP'``).

    Returns
    -------
    xarray.DataArray
        Float64, dims ``("energy_true",)``, effective area in cm2
        (``attrs["units"] = "cm2"``), with coordinates ``energy_true``,
        ``energy_true_lo``, ``energy_true_hi`` (keV).  ``attrs`` also holds
        ``file`` (basename), ``hdu``, ``telescope``, ``instrument``,
        ``filter``.  The bins are strictly contiguous: a seam where
        ``ENERG_HI[i]`` and ``ENERG_LO[i + 1]`` differ by float32 rounding
        (:func:`xfusion.observation.seam_gaps`: up to 0.1 % of the bin plus
        ``FLOAT32_REL * E``) is closed with ``ENERG_LO[i + 1]``.

    Raises
    ------
    OGIPError
        Missing extension/columns, unsorted energies, non-positive widths, a
        real gap or overlap between consecutive bins (more than float32
        rounding), or a NaN / infinite / negative ``SPECRESP``.
    """
    fname = _name(path)
    with fits.open(path, memmap=False) as hdul:
        ahdu = _find_hdu(hdul, ("SPECRESP",), fname, "SPECRESP (ARF)",
                         hduclas2="SPECRESP", hdu=hdu)
        _require_columns(ahdu, _ARF_COLUMNS, fname)
        lo, hi = _check_edges(  # each column with its own TUNIT
            np.asarray(ahdu.data["ENERG_LO"], dtype=np.float64) * _energy_unit_scale(ahdu, "ENERG_LO", fname),
            np.asarray(ahdu.data["ENERG_HI"], dtype=np.float64) * _energy_unit_scale(ahdu, "ENERG_HI", fname),
            fname, ahdu.name, "ENERG_LO", "ENERG_HI",
        )
        # float32 seams (1-2 ulps) are closed, real gaps refused (session 28: accepted silently; session 30: a
        # test at 1e-3 of a bin refused 1-ulp seams of a 0.5 eV float32 grid as "ends at 8 keV, starts at 8 keV")
        hi, gap, bad = _close_float32_seams(lo, hi)
        if bad.size:
            k = int(bad[0])
            raise OGIPError(
                f"{fname}: {ahdu.name} bins are not contiguous: row {k} ends at {hi[k]:.9g} keV, row {k + 1} starts at "
                f"{lo[k + 1]:.9g} keV (a {'gap' if gap[k] > 0 else 'overlap'} of {abs(gap[k]):.3g} keV, "
                f"{abs(gap[k]) / (hi[k] - lo[k]):.3g} of the bin; {bad.size} such seam(s)), more than float32 rounding. "
                "An ARF must tabulate the area over contiguous bins; regenerate it (or fill the gap) rather than let "
                "xfusion interpolate across it")
        area = np.asarray(ahdu.data["SPECRESP"], dtype=np.float64)
        idx = [c.upper() for c in ahdu.columns.names].index("SPECRESP") + 1
        unit = str(ahdu.header.get(f"TUNIT{idx}", "cm2")).strip().lower()
        unit_scale = {"cm2": 1.0, "cm**2": 1.0, "cm^2": 1.0, "": 1.0,
                      "m2": 1e4, "m**2": 1e4, "m^2": 1e4}
        if unit not in unit_scale:
            raise OGIPError(
                f"{fname}: SPECRESP has unit {unit!r}; expected cm2 (or m2)."
            )
        area = area * unit_scale[unit]
        bad = ~np.isfinite(area) | (area < 0)
        if bad.any():
            rows = np.flatnonzero(bad)
            i = int(rows[0])
            raise OGIPError(
                f"{fname}: SPECRESP has {rows.size} negative or non-finite value(s), first at row {i} "
                f"(ENERG_LO={lo[i]:.6g} keV, SPECRESP={area[i]!r}). An effective area must be finite and "
                ">= 0 cm2; regenerate the ARF (or, knowingly, set those rows to 0 in a copy)."
            )
        head = ahdu.header
        attrs = {
            "units": "cm2",
            "file": fname,
            "hdu": ahdu.name,
            "telescope": str(head.get("TELESCOP", "")).strip(),
            "instrument": str(head.get("INSTRUME", "")).strip(),
            "filter": str(head.get("FILTER", "")).strip(),
        }
    return xr.DataArray(
        area, dims=("energy_true",), coords=edges_coords("energy_true", lo, hi),
        name="arf", attrs=attrs,
    )


# --------------------------------------------------------------------------
# PHA spectra
# --------------------------------------------------------------------------
__all__ += ["read_pha"]

_PHA_HEADER_KEYS = {
    "telescope": "TELESCOP", "instrument": "INSTRUME", "filter": "FILTER", "obs_id": "OBS_ID",
    "object": "OBJECT", "chantype": "CHANTYPE", "hduclas3": "HDUCLAS3", "backfile": "BACKFILE",
    "respfile": "RESPFILE", "ancrfile": "ANCRFILE", "corrfile": "CORRFILE",
}


def _pha_column_or_key(table, header, name, n_rows, n_chan, default, dtype):
    """(n_rows, n_chan) values of a PHA quantity given as a column (scalar or vector) or a keyword."""
    names = [c.upper() for c in table.columns.names]
    if name in names:
        v = np.asarray(table.data[name], dtype=dtype)
        if v.ndim == 1:                       # one value per row (type II) or per channel (type I)
            v = v[:, None] if n_rows > 1 or v.size != n_chan else v[None, :]
        return np.broadcast_to(v, (n_rows, n_chan)).copy(), "column"
    value = header.get(name, default)
    return np.full((n_rows, n_chan), value, dtype=dtype), ("keyword" if name in header else "default")


def read_pha(path, *, spectrum: int | None = None, hdu: int | str | None = None) -> xr.Dataset:
    """Read an OGIP PHA spectrum (OGIP/92-007), type I or type II.

    Parameters
    ----------
    path : str or os.PathLike
        PHA file (``.gz`` fine).
    spectrum : int, optional
        For a type-II file, the row (0-based) to read; default: all rows along a
        ``spectrum`` dim (coordinate ``spec_num`` from ``SPEC_NUM`` if present).
    hdu : int or str, optional
        Extension; default EXTNAME ``SPECTRUM`` (or ``HDUCLAS1 = 'SPECTRUM'``).

    Returns
    -------
    xarray.Dataset
        Dims ``("energy",)`` (type I or one row) or ``("spectrum", "energy")``.
        Variables: ``counts`` (count) or ``rate`` (count/s) as stored,
        ``stat_err`` when present, ``quality`` (int16, 0 = good), ``grouping``
        (int16, OGIP ``+1`` starts a group, ``-1`` continues, ``0`` = no
        grouping), ``backscal``, ``areascal`` (float64) and ``exposure`` (s),
        each from its column (per channel or per row) or else its keyword,
        broadcast to every channel; ``attrs[<name>_source]`` says which.
        Coordinates: ``channel`` (the file's channel numbers) and, when an
        ``EBOUNDS`` extension is in the file or in the ``RESPFILE`` (resolved
        relative to the PHA's directory), ``energy``, ``energy_lo``,
        ``energy_hi`` (keV).  ``attrs``: ``file``, ``spectrum_type``
        (``"I"``/``"II"``), ``poisserr``, ``telescope``, ``instrument``,
        ``filter``, ``obs_id``, ``object``, ``chantype``, ``hduclas3``,
        ``backfile``, ``respfile``, ``ancrfile``, ``corrfile`` (empty string
        when absent).  A type-II file's ``SPEC_INFO`` table (per-row
        information from :func:`xfusion.io.ogip_write.write_pha2`) becomes
        coordinates along ``spectrum`` (lower-case names).

    Raises
    ------
    OGIPError
        No spectrum extension, no ``CHANNEL`` or no ``COUNTS``/``RATE``
        column, channel counts disagreeing with EBOUNDS.
    """
    fname = _name(path)
    base_dir = os.path.dirname(os.fspath(path))
    with fits.open(path, memmap=False) as hdul:
        shdu = None
        if hdu is not None:
            shdu = hdul[hdu]
        else:
            for h in hdul:
                if isinstance(h, fits.BinTableHDU) and (
                        h.name.upper() == "SPECTRUM"
                        or str(h.header.get("HDUCLAS1", "")).strip().upper() == "SPECTRUM"):
                    shdu = h
                    break
        if shdu is None:
            raise OGIPError(f"{fname}: no SPECTRUM extension (HDUs {_hdu_names(hdul)}); pass hdu=.")
        head = shdu.header
        cols = [c.upper() for c in shdu.columns.names]
        data_col = "COUNTS" if "COUNTS" in cols else ("RATE" if "RATE" in cols else None)
        if "CHANNEL" not in cols or data_col is None:
            raise OGIPError(f"{fname}: {shdu.name} needs CHANNEL and COUNTS (or RATE) columns; it has "
                            f"{shdu.columns.names}.")
        values = np.asarray(shdu.data[data_col], dtype=np.float64)
        chan = np.asarray(shdu.data["CHANNEL"])
        type2 = values.ndim == 2
        if not type2:
            values, chan = values[None, :], chan[None, :]
        n_rows, n_chan = values.shape
        if np.any(chan != chan[:1]):
            raise OGIPError(f"{fname}: the rows of a type-II file have different CHANNEL arrays.")
        chan = chan[0].astype(np.int64)
        out = {data_col.lower(): values}
        sources = {}
        if "STAT_ERR" in cols:
            out["stat_err"], sources["stat_err"] = _pha_column_or_key(shdu, head, "STAT_ERR", n_rows, n_chan,
                                                                       0.0, np.float64)
        for name, default, dt in (("QUALITY", 0, np.int16), ("GROUPING", 0, np.int16),
                                  ("BACKSCAL", 1.0, np.float64), ("AREASCAL", 1.0, np.float64),
                                  ("EXPOSURE", np.nan, np.float64)):
            out[name.lower()], sources[name.lower()] = _pha_column_or_key(shdu, head, name, n_rows, n_chan,
                                                                           default, dt)
        attrs = {k: str(head.get(v, "")).strip() for k, v in _PHA_HEADER_KEYS.items()}
        attrs.update({"file": fname, "spectrum_type": "II" if type2 else "I",
                      "poisserr": bool(head.get("POISSERR", data_col == "COUNTS"))})
        attrs.update({f"{k}_source": v for k, v in sources.items()})
        spec_num = np.asarray(shdu.data["SPEC_NUM"]) if (type2 and "SPEC_NUM" in cols) else None
        info = {}
        if type2 and "SPEC_INFO" in _hdu_names(hdul):   # per-row information (write_pha2)
            t = hdul["SPEC_INFO"].data
            for c in t.columns.names:
                if c.upper() != "SPEC_NUM":
                    info[c.lower()] = np.asarray(t[c])
        eb = None
        for h in hdul:
            if isinstance(h, fits.BinTableHDU) and h.name.upper() == "EBOUNDS":
                eb = h
                break
        if eb is not None:
            eb = (np.asarray(eb.data["CHANNEL"]), np.asarray(eb.data["E_MIN"], np.float64)
                  * _energy_unit_scale(eb, "E_MIN", fname), np.asarray(eb.data["E_MAX"], np.float64)
                  * _energy_unit_scale(eb, "E_MAX", fname))
    if eb is None and attrs["respfile"] and attrs["respfile"].lower() != "none":
        resp = os.path.join(base_dir, attrs["respfile"])
        if os.path.exists(resp):
            with fits.open(resp, memmap=False) as rh:
                e = _find_hdu(rh, ("EBOUNDS",), _name(resp), "EBOUNDS", hduclas2="EBOUNDS")
                eb = (np.asarray(e.data["CHANNEL"]), np.asarray(e.data["E_MIN"], np.float64)
                      * _energy_unit_scale(e, "E_MIN", _name(resp)), np.asarray(e.data["E_MAX"], np.float64)
                      * _energy_unit_scale(e, "E_MAX", _name(resp)))
    coords = {"channel": xr.Variable("energy", chan, attrs={"units": "1"})}
    if eb is not None:
        e_ch, e_lo, e_hi = eb
        pos = {int(c): i for i, c in enumerate(e_ch)}
        missing = [int(c) for c in chan if int(c) not in pos]
        if missing:
            raise OGIPError(f"{fname}: channels {missing[:5]}... of the spectrum are not in EBOUNDS "
                            f"({int(e_ch[0])}..{int(e_ch[-1])}); the EBOUNDS belong to another channel set.")
        take = np.array([pos[int(c)] for c in chan])
        coords.update(edges_coords("energy", e_lo[take], e_hi[take]))
    units = {"counts": "count", "rate": "count/s", "stat_err": "count/s" if data_col == "RATE" else "count",
             "quality": "1", "grouping": "1", "backscal": "1", "areascal": "1", "exposure": "s"}
    dims = ("spectrum", "energy") if (type2 and spectrum is None) else ("energy",)
    ds = xr.Dataset(coords=coords, attrs=attrs)
    for k, v in out.items():
        v = v if dims == ("spectrum", "energy") else v[0 if spectrum is None else int(spectrum)]
        ds[k] = xr.Variable(dims, v, attrs={"units": units[k]})
    if spec_num is not None and spectrum is None:
        ds = ds.assign_coords(spec_num=("spectrum", spec_num))
        ds = ds.assign_coords({k: ("spectrum", v) for k, v in info.items() if v.shape[:1] == spec_num.shape})
    elif spec_num is not None:
        ds.attrs["spec_num"] = int(spec_num[int(spectrum)])
    return ds
