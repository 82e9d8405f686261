"""Tests for xfusion.io.ogip_read (RMF / ARF readers)."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse
from astropy.io import fits

from xfusion.io.ogip_read import OGIPError, SparseRMF, read_arf, read_rmf

from conftest import require_data

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
EPN_RMF = DATA / "epn_ff20_dY9.rmf"
EPN_ARF = DATA / "pn_pi_src.arf"
MUCAL_RMF = DATA / "xrs_mucal.rmf"
MUCAL_ARF = DATA / "xrs_mucal_3x10.arf"


def _need(path: Path):
    """Real-file tests FAIL when the file is missing (skip only with XFUSION_ALLOW_MISSING_DATA=1)."""
    require_data(path)


# ---------------------------------------------------------------------------
# independent slow reference reader (row by row, group by group)
# ---------------------------------------------------------------------------
def _reference_rows(path, rows=None):
    """Return {row: {column_index: value}} read with a plain Python loop."""
    out = {}
    with fits.open(path) as hdul:
        names = [h.name for h in hdul]
        mname = "MATRIX" if "MATRIX" in names else "SPECRESP MATRIX"
        m = hdul[mname]
        e = hdul["EBOUNDS"]
        col_idx = m.columns.names.index("F_CHAN") + 1
        first = m.header.get(f"TLMIN{col_idx}", 1)  # OGIP default when TLMIN is absent
        data = m.data
        nrows = len(data)
        for i in range(nrows) if rows is None else rows:
            row = data[i]
            ngrp = int(row["N_GRP"])
            fch = np.atleast_1d(row["F_CHAN"])
            nch = np.atleast_1d(row["N_CHAN"])
            mat = np.atleast_1d(row["MATRIX"])
            entries = {}
            k = 0
            for g in range(ngrp):
                for j in range(int(nch[g])):
                    c = int(fch[g]) - first + j
                    entries[c] = entries.get(c, 0.0) + float(mat[k])
                    k += 1
            out[i] = entries
        n_ebounds = len(e.data)
    return out, nrows, n_ebounds


def _compare_to_reference(dense_rows, ref):
    for i, entries in ref.items():
        expected = np.zeros(dense_rows.shape[1])
        for c, v in entries.items():
            expected[c] = v
        np.testing.assert_array_equal(dense_rows[i], expected, err_msg=f"row {i}")


# ---------------------------------------------------------------------------
# real files
# ---------------------------------------------------------------------------
def test_epn_rmf_matches_reference_dense():
    _need(EPN_RMF)
    rmf = read_rmf(EPN_RMF)
    ref, nrows, nchan = _reference_rows(EPN_RMF)
    assert rmf.dims == ("energy_true", "energy")
    assert rmf.shape == (nrows, nchan) == (1319, 4096)
    assert rmf.dtype == np.float64
    _compare_to_reference(rmf.values, ref)
    # metadata
    assert rmf.attrs["file"] == "epn_ff20_dY9.rmf"
    assert rmf.attrs["hdu"] == "SPECRESP MATRIX"
    assert rmf.attrs["f_chan_tlmin"] == 1
    assert rmf.attrs["f_chan_tlmin_source"] == "default"  # no TLMIN4 in this file
    # named SPECRESP MATRIX but row sums are probabilities -> not ARF-folded
    assert rmf.attrs["arf_folded"] is False
    assert rmf.attrs["units"] == "1"
    np.testing.assert_array_equal(rmf["channel"].values, np.arange(4096))
    for name in ("energy", "energy_lo", "energy_hi", "energy_true",
                 "energy_true_lo", "energy_true_hi"):
        assert rmf[name].attrs["units"] == "keV"
    np.testing.assert_allclose(
        rmf["energy_true"], 0.5 * (rmf["energy_true_lo"] + rmf["energy_true_hi"]))


def test_mucal_rmf_matches_reference():
    """Sparse read of the 12000 x 12000 microcalorimeter RMF equals the row-by-row reference exactly.

    (Read times and the 1.15 GB dense read are measured by benchmarks/ogip_read.py, not asserted here.)
    """
    _need(MUCAL_RMF)
    sp = read_rmf(MUCAL_RMF, sparse=True)
    assert isinstance(sp, SparseRMF)
    assert isinstance(sp.matrix, scipy.sparse.csr_array)
    assert sp.shape == (12000, 12000)
    assert sp.attrs["f_chan_tlmin"] == 1 and sp.attrs["f_chan_tlmin_source"] == "TLMIN"
    ref, nrows, nchan = _reference_rows(MUCAL_RMF)
    assert (nrows, nchan) == (12000, 12000)
    r, c, v = [], [], []
    for i, entries in ref.items():
        for col, val in entries.items():
            r.append(i)
            c.append(col)
            v.append(val)
    expected = scipy.sparse.csr_array((v, (r, c)), shape=(nrows, nchan))
    assert abs(sp.matrix - expected).max() == 0.0
    # a few rows through the dense layout (what read_rmf(sparse=False) returns), without the 1.15 GB matrix
    rng = np.random.default_rng(1)
    rows = np.sort(rng.choice(nrows, size=200, replace=False))
    _compare_to_reference(sp.matrix[rows].toarray(), {k: ref[i] for k, i in enumerate(rows)})


@pytest.mark.parametrize("path", [EPN_RMF, MUCAL_RMF], ids=["epn", "mucal"])
def test_rmf_row_sums_and_ebounds(path):
    _need(path)
    sp = read_rmf(path, sparse=True)
    sums = np.asarray(sp.matrix.sum(axis=1)).ravel()
    assert sums.max() <= 1.05
    assert np.all(sums >= 0)
    # rows whose true energy is well inside the channel range are populated
    e_lo, e_hi = sp.energy_edges[0, 0], sp.energy_edges[-1, 1]
    centre = sp.energy_true_edges.mean(axis=1)
    inside = (centre > max(e_lo, 0.3)) & (centre < 0.95 * e_hi)
    assert np.all(sums[inside] > 0.4)
    # EBOUNDS monotonic and contiguous-ish
    assert np.all(np.diff(sp.energy_edges[:, 0]) > 0)
    assert np.all(sp.energy_edges[:, 1] > sp.energy_edges[:, 0])
    assert np.all(np.diff(sp.energy_true_edges[:, 0]) > 0)


def _line_mode(rmf, arf, line):
    """Fold a delta line through ARF x RMF; return (true E, mode E, chan width)."""
    # all flux in the true-energy bin closest to the line; true bins are up
    # to 50 eV wide (~10 pn channels), so the bin centre is the reference
    row = int(np.argmin(np.abs(rmf["energy_true"].values - line)))
    e_true = float(rmf["energy_true"][row])
    assert abs(e_true - line) < 0.03
    spectrum = np.zeros(rmf.sizes["energy_true"])
    spectrum[row] = 1.0
    counts = (spectrum * arf.values) @ rmf.values
    peak = int(np.argmax(counts))
    # the pn photopeak is flat-topped: refine with a parabola through the
    # three highest channels
    a, b, c = counts[peak - 1:peak + 2]
    shift = 0.5 * (a - c) / (a - 2 * b + c)
    width = float(rmf["energy_hi"][peak] - rmf["energy_lo"][peak])
    return e_true, float(rmf["energy"][peak]) + shift * width, width


@pytest.mark.parametrize("line", [1.0, 6.4])
def test_epn_line_peak_channel(line):
    _need(EPN_RMF)
    _need(EPN_ARF)
    arf = read_arf(EPN_ARF)
    rmf = read_rmf(EPN_RMF)
    np.testing.assert_allclose(arf["energy_true_lo"], rmf["energy_true_lo"])
    e_true, e_mode, width = _line_mode(rmf, arf, line)
    # default reading (no TLMIN on F_CHAN -> OGIP/XSPEC default 1): the photopeak
    # lies within half a channel of the true energy
    assert rmf.attrs["f_chan_tlmin_source"] == "default"
    assert abs(e_mode - e_true) <= 0.5 * width
    # taking the first EBOUNDS channel (0) instead shifts it by about one channel
    rmf0 = read_rmf(EPN_RMF, first_channel=0)
    assert rmf0.attrs["f_chan_tlmin_source"] == "argument"
    e_true0, e_mode0, _ = _line_mode(rmf0, arf, line)
    assert 0.5 * width < abs(e_mode0 - e_true0) <= 1.5 * width


def test_read_arf_real():
    _need(EPN_ARF)
    _need(MUCAL_ARF)
    for path in (EPN_ARF, MUCAL_ARF):
        arf = read_arf(path)
        assert arf.dims == ("energy_true",)
        assert arf.attrs["units"] == "cm2"
        assert arf.attrs["file"] == path.name
        assert np.all(arf.values >= 0) and arf.values.max() > 10
        assert np.all(np.diff(arf["energy_true"].values) > 0)
        assert arf["energy_true_lo"].attrs["units"] == "keV"


# ---------------------------------------------------------------------------
# synthetic files
# ---------------------------------------------------------------------------
# dense reference: 6 true-energy bins x 9 channels; rows with 0, 1, 2, 3 groups
_EXPECTED = np.zeros((6, 9))
_EXPECTED[1, 2:5] = [0.1, 0.5, 0.2]                         # 1 group
_EXPECTED[2, [0, 1, 4, 5, 6]] = [0.05, 0.1, 0.4, 0.3, 0.1]  # 2 groups
_EXPECTED[3, [0, 3, 4, 8]] = [0.2, 0.3, 0.3, 0.2]           # 3 groups
_EXPECTED[4, 8] = 0.9                                       # last channel
_EXPECTED[5, 0:9] = np.linspace(0.01, 0.2, 9)               # full row
# row 0 has N_GRP = 0


def _groups(row):
    """(f_chan_index, n_chan) groups of contiguous non-zeros in a row."""
    nz = np.flatnonzero(row)
    groups = []
    for c in nz:
        if groups and groups[-1][0] + groups[-1][1] == c:
            groups[-1][1] += 1
        else:
            groups.append([int(c), 1])
    return groups


def _write_rmf(path, expected=_EXPECTED, *, first_channel=1, tlmin=True,
               grp_format="vla", mat_format="vla", extname="MATRIX",
               compress=False, energy_true=None, ebounds_rows=None,
               drop_column=None, detchans=None):
    """Write a synthetic RMF with astropy, independent of xfusion's writer."""
    n_true, n_chan = expected.shape
    if energy_true is None:
        energy_true = np.linspace(0.5, 2.0, n_true + 1)
    groups = [_groups(r) for r in expected]
    n_grp = np.array([len(g) for g in groups], dtype=np.int32)
    f_chan = [np.array([g[0] + first_channel for g in gs], dtype=np.int32) for gs in groups]
    n_ch = [np.array([g[1] for g in gs], dtype=np.int32) for gs in groups]
    mats = [np.concatenate([expected[i, g[0]:g[0] + g[1]] for g in gs]).astype(np.float32)
            if gs else np.zeros(0, np.float32) for i, gs in enumerate(groups)]

    def col(name, cells, dtype, code, fmt):
        if fmt == "vla":
            return fits.Column(name=name, format=f"P{code}()",
                               array=np.array([np.asarray(c, dtype) for c in cells],
                                              dtype=object))
        if fmt == "scalar":
            arr = np.array([c[0] if len(c) else 0 for c in cells], dtype=dtype)
            return fits.Column(name=name, format=code, array=arr)
        width = max(1, max(len(c) for c in cells))
        arr = np.zeros((len(cells), width), dtype=dtype)
        for i, c in enumerate(cells):
            arr[i, :len(c)] = c
        return fits.Column(name=name, format=f"{width}{code}", array=arr)

    cols = [
        fits.Column(name="ENERG_LO", format="E", unit="keV", array=energy_true[:-1]),
        fits.Column(name="ENERG_HI", format="E", unit="keV", array=energy_true[1:]),
        fits.Column(name="N_GRP", format="I", array=n_grp),
        col("F_CHAN", f_chan, np.int32, "J", grp_format),
        col("N_CHAN", n_ch, np.int32, "J", grp_format),
        col("MATRIX", mats, np.float32, "E", mat_format),
    ]
    cols = [c for c in cols if c.name != drop_column]
    mhdu = fits.BinTableHDU.from_columns(cols, name=extname)
    mhdu.header["DETCHANS"] = n_chan if detchans is None else detchans
    mhdu.header["HDUCLASS"] = "OGIP"
    mhdu.header["HDUCLAS1"] = "RESPONSE"
    mhdu.header["HDUCLAS2"] = "RSP_MATRIX"
    if tlmin and "F_CHAN" in [c.name for c in cols]:
        idx = [c.name for c in cols].index("F_CHAN") + 1
        mhdu.header[f"TLMIN{idx}"] = first_channel
        mhdu.header[f"TLMAX{idx}"] = first_channel + n_chan - 1
    n_eb = n_chan if ebounds_rows is None else ebounds_rows
    e_edges = np.linspace(0.4, 2.2, n_eb + 1)
    ehdu = fits.BinTableHDU.from_columns([
        fits.Column(name="CHANNEL", format="J",
                    array=np.arange(first_channel, first_channel + n_eb)),
        fits.Column(name="E_MIN", format="E", unit="keV", array=e_edges[:-1]),
        fits.Column(name="E_MAX", format="E", unit="keV", array=e_edges[1:]),
    ], name="EBOUNDS")
    ehdu.header["DETCHANS"] = n_eb
    hdul = fits.HDUList([fits.PrimaryHDU(), mhdu, ehdu])
    if compress:
        tmp = Path(str(path) + ".tmp")
        hdul.writeto(tmp, overwrite=True)
        with open(tmp, "rb") as fin, gzip.open(path, "wb") as fout:
            shutil.copyfileobj(fin, fout)
        tmp.unlink()
    else:
        hdul.writeto(path, overwrite=True)
    return path, np.float32(expected).astype(np.float64), energy_true, e_edges


@pytest.mark.parametrize("first_channel", [0, 1])
@pytest.mark.parametrize("tlmin", [True, False])
@pytest.mark.parametrize("grp_format", ["vla", "fixed"])
@pytest.mark.parametrize("mat_format", ["vla", "fixed"])
def test_synthetic_roundtrip(tmp_path, first_channel, tlmin, grp_format, mat_format):
    if not tlmin and first_channel == 0:
        pytest.skip("without TLMIN a 0-based file is read with the OGIP default 1 (documented)")
    path, expected, et, ee = _write_rmf(
        tmp_path / "syn.rmf", first_channel=first_channel, tlmin=tlmin,
        grp_format=grp_format, mat_format=mat_format)
    rmf = read_rmf(path)
    np.testing.assert_array_equal(rmf.values, expected)
    np.testing.assert_allclose(rmf["energy_true_lo"], np.float32(et[:-1]))
    np.testing.assert_allclose(rmf["energy_hi"], np.float32(ee[1:]))
    np.testing.assert_array_equal(rmf["channel"], np.arange(9) + first_channel)
    assert rmf.attrs["f_chan_tlmin"] == first_channel
    assert rmf.attrs["f_chan_tlmin_source"] == ("TLMIN" if tlmin else "default")
    assert rmf.attrs["hdu"] == "MATRIX" and rmf.attrs["arf_folded"] is False
    sp = read_rmf(path, sparse=True)
    np.testing.assert_array_equal(sp.matrix.toarray(), expected)
    np.testing.assert_array_equal(sp.to_dataarray().values, expected)


def test_synthetic_scalar_fchan(tmp_path):
    expected = _EXPECTED.copy()
    expected[2] = 0
    expected[2, 4:7] = [0.4, 0.3, 0.1]
    expected[3] = 0
    expected[3, 3:5] = [0.5, 0.5]
    path, expected, _, _ = _write_rmf(tmp_path / "scalar.rmf", expected,
                                      grp_format="scalar", mat_format="fixed")
    np.testing.assert_array_equal(read_rmf(path).values, expected)


def test_synthetic_gzip_and_specresp(tmp_path):
    path, expected, _, _ = _write_rmf(tmp_path / "syn.rmf.gz", compress=True,
                                      extname="SPECRESP MATRIX")
    with open(path, "rb") as f:
        assert f.read(2) == b"\x1f\x8b"  # really gzipped
    rmf = read_rmf(path)
    np.testing.assert_array_equal(rmf.values, expected)
    assert rmf.attrs["hdu"] == "SPECRESP MATRIX"
    assert rmf.attrs["file"] == "syn.rmf.gz"
    # row sums <= 1: a redistribution, despite the name
    assert rmf.attrs["arf_folded"] is False
    # with an effective area folded in the name is believed
    path2, expected2, _, _ = _write_rmf(tmp_path / "full.rsp", _EXPECTED * 250.0,
                                        extname="SPECRESP MATRIX")
    full = read_rmf(path2)
    assert full.attrs["arf_folded"] is True and full.attrs["units"] == "cm2"
    np.testing.assert_array_equal(full.values, expected2)
    assert read_rmf(path2, arf_folded=False).attrs["units"] == "1"


# ---------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------
def test_error_wrong_hdu(tmp_path):
    _need(EPN_ARF)
    with pytest.raises(OGIPError, match=r"pn_pi_src.arf.*no response matrix.*SPECRESP"):
        read_rmf(EPN_ARF)
    path, *_ = _write_rmf(tmp_path / "syn.rmf")
    with pytest.raises(OGIPError, match=r"no SPECRESP \(ARF\).*MATRIX"):
        read_arf(path)
    with pytest.raises(OGIPError, match="does not exist"):
        read_rmf(path, hdu="NOPE")


def test_error_missing_column(tmp_path):
    path, *_ = _write_rmf(tmp_path / "nochan.rmf", drop_column="N_CHAN")
    with pytest.raises(OGIPError, match=r"nochan.rmf.*missing required column.*N_CHAN"):
        read_rmf(path)


def test_error_unsorted_energies(tmp_path):
    # swap two true-energy bins (all widths stay positive)
    et = np.linspace(0.5, 2.0, 7)
    lo, hi = et[:-1].copy(), et[1:].copy()
    path, *_ = _write_rmf(tmp_path / "unsorted.rmf")
    with fits.open(path) as hdul:
        d = hdul["MATRIX"].data
        d["ENERG_LO"][[1, 2]] = lo[[2, 1]]
        d["ENERG_HI"][[1, 2]] = hi[[2, 1]]
        hdul.writeto(tmp_path / "unsorted2.rmf")
    with pytest.raises(OGIPError, match="not strictly increasing"):
        read_rmf(tmp_path / "unsorted2.rmf")


def test_error_nonpositive_width(tmp_path):
    path, *_ = _write_rmf(tmp_path / "w.rmf")
    with fits.open(path) as hdul:
        hdul["EBOUNDS"].data["E_MAX"][3] = hdul["EBOUNDS"].data["E_MIN"][3]
        hdul.writeto(tmp_path / "w2.rmf")
    with pytest.raises(OGIPError, match="non-positive bin widths.*E_MAX"):
        read_rmf(tmp_path / "w2.rmf")


def test_error_channel_mismatch(tmp_path):
    # EBOUNDS shorter than the channels used by the matrix
    path, *_ = _write_rmf(tmp_path / "short.rmf", ebounds_rows=6, detchans=6)
    with pytest.raises(OGIPError, match="channel-count mismatch.*refers to channels"):
        read_rmf(path)
    # DETCHANS of the matrix disagrees with EBOUNDS
    path, *_ = _write_rmf(tmp_path / "det.rmf", detchans=12)
    with pytest.raises(OGIPError, match="channel-count mismatch.*DETCHANS=12"):
        read_rmf(path)
    # wrong TLMIN: 1-based channels declared 0-based -> last channel overflows
    path, *_ = _write_rmf(tmp_path / "tl.rmf", first_channel=1)
    with fits.open(path) as hdul:
        hdul["MATRIX"].header["TLMIN4"] = 0
        hdul.writeto(tmp_path / "tl2.rmf")
    with pytest.raises(OGIPError, match="TLMIN of F_CHAN"):
        read_rmf(tmp_path / "tl2.rmf")


def test_error_is_valueerror():
    assert issubclass(OGIPError, ValueError)


def _with_column_in_ev(path, out, extname, colname):
    """Copy of ``path`` whose ``extname`` column ``colname`` is stored in eV (TUNIT 'eV', values x 1000)."""
    with fits.open(path) as hdul:
        h = hdul[extname]
        cols = [fits.Column(name=c.name, format=c.format, unit="eV" if c.name == colname else c.unit,
                            array=np.asarray(h.data[c.name], np.float64) * 1e3 if c.name == colname
                            else h.data[c.name]) for c in h.columns]
        new = fits.BinTableHDU.from_columns(cols, name=extname)
        for k, v in h.header.items():
            if not k.startswith(("TTYPE", "TFORM", "TUNIT", "NAXIS", "PCOUNT", "GCOUNT", "TFIELDS", "XTENSION",
                                 "BITPIX", "EXTNAME")):
                new.header[k] = v
        hdul[extname] = new
        hdul.writeto(out)
    return out


def test_every_energy_column_read_with_its_own_tunit(tmp_path):
    """Red team s30: ENERG_HI (and E_MAX) were converted with the TUNIT of ENERG_LO (E_MIN): an ENERG_HI in eV
    next to an ENERG_LO in keV was read 1000x too large (0.75 keV as 750 keV), silently."""
    path, expected, et, ee = _write_rmf(tmp_path / "kev.rmf")
    p1 = _with_column_in_ev(path, tmp_path / "hi_ev.rmf", "MATRIX", "ENERG_HI")
    p2 = _with_column_in_ev(p1, tmp_path / "hi_ev_emax_ev.rmf", "EBOUNDS", "E_MAX")
    for p in (p1, p2):
        rmf = read_rmf(p)
        np.testing.assert_array_equal(rmf.values, expected)
        np.testing.assert_allclose(rmf["energy_true_hi"], et[1:], rtol=1e-6)
        np.testing.assert_allclose(rmf["energy_hi"], ee[1:], rtol=1e-6)
    lo = np.linspace(0.3, 10.0, 50)
    arf = tmp_path / "kev.arf"
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns(
        [fits.Column(name="ENERG_LO", format="D", unit="keV", array=lo[:-1]),
         fits.Column(name="ENERG_HI", format="D", unit="eV", array=lo[1:] * 1e3),
         fits.Column(name="SPECRESP", format="D", unit="cm2", array=np.full(49, 100.0))], name="SPECRESP")]).writeto(arf)
    np.testing.assert_allclose(read_arf(arf)["energy_true_hi"], lo[1:], rtol=1e-12)


def _two_block_rmf(tmp_path, name, first, second, **kw2):
    """An RMF with two MATRIX extensions (EXTVER 1 and 2) holding ``first`` and ``second`` (``kw2``: options of
    the second block's writer, e.g. another true-energy grid) and one EBOUNDS."""
    pa, ea, *_ = _write_rmf(tmp_path / f"{name}_a.rmf", first)
    pb, eb, *_ = _write_rmf(tmp_path / f"{name}_b.rmf", second, **kw2)
    with fits.open(pa, memmap=False) as ha, fits.open(pb, memmap=False) as hb:
        m1, m2 = ha["MATRIX"], hb["MATRIX"]
        m1.header["EXTVER"], m2.header["EXTVER"] = 1, 2
        fits.HDUList([fits.PrimaryHDU(), m1, m2, ha["EBOUNDS"]]).writeto(tmp_path / f"{name}.rmf")
    return tmp_path / f"{name}.rmf", ea, eb


def test_rmf_split_in_several_matrix_blocks_is_their_sum(tmp_path):
    """Red team s30: an RMF with two MATRIX extensions (EXTVER 1, 2: CAL/GEN/92-002 2020 revision, the response is
    their sum) was read from the first only, silently (the photopeak block of EPIC-pn without its tail). Now the
    blocks are summed when they share the true-energy grid and channels, and refused otherwise, naming them."""
    core = np.where(_EXPECTED >= 0.2, _EXPECTED, 0.0)
    tail = _EXPECTED - core
    path, ea, eb = _two_block_rmf(tmp_path, "two", core, tail)
    expected = ea + eb
    rmf = read_rmf(path)
    np.testing.assert_allclose(rmf.values, expected, rtol=0, atol=1e-7)
    assert np.abs(rmf.values - ea).max() > 0.09                   # the tail is really there (0.1 in row 1)
    assert rmf.attrs["matrix_blocks"] == 2 and rmf.attrs["hdu"] == "MATRIX"
    np.testing.assert_allclose(read_rmf(path, sparse=True).matrix.toarray(), expected, rtol=0, atol=1e-7)
    one = read_rmf(path, hdu=2)                                   # hdu= reads that block only
    np.testing.assert_array_equal(one.values, eb)
    assert one.attrs["matrix_blocks"] == 1
    # blocks on different true-energy grids cannot be summed: refused, naming both blocks
    path, *_ = _two_block_rmf(tmp_path, "grids", core, tail, energy_true=np.linspace(0.5, 2.6, 7))
    with pytest.raises(OGIPError, match=r"blocks HDU 1 \(MATRIX, EXTVER 1\) and HDU 2 \(MATRIX, EXTVER 2\) have "
                                        r"different true-energy grids \(edge 1: 0\.75 vs 0\.850000\d* keV\).*hdu="):
        read_rmf(path)
    path, *_ = _two_block_rmf(tmp_path, "chans", core, tail, first_channel=0)
    with pytest.raises(OGIPError, match=r"HDU 1 .* and HDU 2 .* number their channels from 1 and 0"):
        read_rmf(path)
