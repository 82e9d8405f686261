"""Tests for xfusion.io.ogip_write: OGIP keywords/columns and round trips.

Checked against OGIP/92-007 (type-I PHA) and CAL/GEN/92-002(a) (RMF, ARF):

* PHA ``SPECTRUM``: EXTNAME, HDUCLASS=OGIP, HDUCLAS1=SPECTRUM,
  HDUCLAS2=TOTAL, HDUCLAS3=COUNT|RATE, HDUCLAS4=TYPE:I, HDUVERS, TELESCOP,
  INSTRUME, FILTER, EXPOSURE, AREASCAL, BACKSCAL, CORRSCAL, BACKFILE,
  CORRFILE, RESPFILE, ANCRFILE, CHANTYPE, DETCHANS, POISSERR, SYS_ERR,
  GROUPING, TLMIN1/TLMAX1; columns CHANNEL (J), COUNTS (J) or RATE (E) +
  STAT_ERR, QUALITY.
* RMF ``MATRIX``: HDUCLASS=OGIP, HDUCLAS1=RESPONSE, HDUCLAS2=RSP_MATRIX,
  HDUCLAS3, HDUVERS, TELESCOP, INSTRUME, FILTER, CHANTYPE, DETCHANS,
  LO_THRES, NUMGRP, NUMELT, TLMIN/TLMAX of F_CHAN; columns ENERG_LO,
  ENERG_HI (keV), N_GRP, F_CHAN, N_CHAN (variable length), MATRIX (variable
  length).  ``EBOUNDS``: HDUCLAS1=RESPONSE, HDUCLAS2=EBOUNDS, CHANTYPE,
  DETCHANS, columns CHANNEL, E_MIN, E_MAX (keV).
* ARF ``SPECRESP``: HDUCLASS=OGIP, HDUCLAS1=RESPONSE, HDUCLAS2=SPECRESP,
  HDUVERS, TELESCOP, INSTRUME, FILTER; columns ENERG_LO, ENERG_HI (keV),
  SPECRESP (cm2).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from astropy.io import fits

from xfusion.io.ogip_write import write_arf, write_pha, write_rmf
from xfusion.io.ogip_read import edges_coords, read_arf, read_rmf

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def _toy_rmf(n_true=40, n_chan=30, first_channel=None, folded=False):
    t_edges = np.linspace(0.5, 8.0, n_true + 1)
    e_edges = np.linspace(0.4, 8.5, n_chan + 1)
    et = 0.5 * (t_edges[1:] + t_edges[:-1])
    ec = 0.5 * (e_edges[1:] + e_edges[:-1])
    sigma = 0.3
    m = np.exp(-0.5 * ((ec[None, :] - et[:, None]) / sigma) ** 2)
    m[m < 1e-3] = 0.0
    m[5, int(np.argmax(m[5]))] = 0.0  # a hole -> two groups in that row
    m[7] = 0.0              # an empty row -> N_GRP = 0
    m /= np.maximum(m.sum(axis=1, keepdims=True), 1e-300)
    if folded:
        m *= 300.0
    coords = edges_coords("energy_true", t_edges[:-1], t_edges[1:])
    coords.update(edges_coords("energy", e_edges[:-1], e_edges[1:]))
    if first_channel is not None:
        coords["channel"] = xr.Variable("energy", np.arange(n_chan) + first_channel)
    attrs = {"units": "cm2" if folded else "1", "arf_folded": folded,
             "telescope": "TOY", "instrument": "DET"}
    return xr.DataArray(m, dims=("energy_true", "energy"), coords=coords, attrs=attrs)


def _toy_arf(n_true=40):
    t_edges = np.linspace(0.5, 8.0, n_true + 1)
    area = 400.0 * np.exp(-0.5 * ((0.5 * (t_edges[1:] + t_edges[:-1]) - 2.0) / 2.0) ** 2)
    return xr.DataArray(area, dims=("energy_true",),
                        coords=edges_coords("energy_true", t_edges[:-1], t_edges[1:]),
                        attrs={"units": "cm2"})


def _colformat(hdu, name):
    return hdu.columns[name].format


@pytest.mark.parametrize("first_channel", [None, 0, 1])
def test_write_rmf_keywords_and_roundtrip(tmp_path, first_channel):
    rmf = _toy_rmf(first_channel=first_channel)
    path = write_rmf(rmf, tmp_path / "toy.rmf", dtype=np.float64)
    fc = 0 if first_channel is None else first_channel
    with fits.open(path) as hdul:
        m = hdul["MATRIX"]
        h = m.header
        for key, value in {"HDUCLASS": "OGIP", "HDUCLAS1": "RESPONSE",
                           "HDUCLAS2": "RSP_MATRIX", "HDUCLAS3": "REDIST",
                           "TELESCOP": "TOY", "INSTRUME": "DET", "FILTER": "NONE",
                           "CHANTYPE": "PI", "DETCHANS": 30}.items():
            assert h[key] == value, key
        for key in ("HDUVERS", "LO_THRES", "NUMGRP", "NUMELT"):
            assert key in h
        assert m.columns.names == ["ENERG_LO", "ENERG_HI", "N_GRP", "F_CHAN",
                                   "N_CHAN", "MATRIX"]
        assert m.columns["ENERG_LO"].unit == "keV"
        assert _colformat(m, "F_CHAN").startswith("PJ")
        assert _colformat(m, "N_CHAN").startswith("PJ")
        assert _colformat(m, "MATRIX").startswith("PD")
        assert h["TLMIN4"] == fc and h["TLMAX4"] == fc + 29
        assert m.data["N_GRP"][5] == 2 and m.data["N_GRP"][7] == 0
        assert h["NUMGRP"] == int(m.data["N_GRP"].sum())
        assert h["NUMELT"] == int(np.count_nonzero(rmf.values))
        e = hdul["EBOUNDS"]
        for key, value in {"HDUCLASS": "OGIP", "HDUCLAS1": "RESPONSE",
                           "HDUCLAS2": "EBOUNDS", "CHANTYPE": "PI",
                           "DETCHANS": 30}.items():
            assert e.header[key] == value, key
        assert e.columns.names == ["CHANNEL", "E_MIN", "E_MAX"]
        assert e.columns["E_MIN"].unit == "keV"
        np.testing.assert_array_equal(e.data["CHANNEL"], np.arange(30) + fc)
    back = read_rmf(path)
    np.testing.assert_array_equal(back.values, rmf.values)
    for c in ("energy_true_lo", "energy_true_hi", "energy_lo", "energy_hi"):
        np.testing.assert_array_equal(back[c].values, rmf[c].values)
    assert back.attrs["f_chan_tlmin"] == fc and back.attrs["f_chan_tlmin_source"] == "TLMIN"
    # float32 storage: equal to float32-rounded values
    path32 = write_rmf(rmf, tmp_path / "toy32.rmf")
    np.testing.assert_array_equal(read_rmf(path32).values,
                                  rmf.values.astype(np.float32).astype(np.float64))


def test_write_rmf_folded_and_sparse(tmp_path):
    rmf = _toy_rmf(folded=True)
    path = write_rmf(rmf, tmp_path / "full.rsp", dtype=np.float64)
    with fits.open(path) as hdul:
        assert hdul[1].name == "SPECRESP MATRIX"
        assert hdul[1].header["HDUCLAS3"] == "FULL"
    back = read_rmf(path, sparse=True)
    assert back.attrs["arf_folded"] is True and back.attrs["units"] == "cm2"
    np.testing.assert_array_equal(back.matrix.toarray(), rmf.values)
    path2 = write_rmf(back, tmp_path / "again.rsp", dtype=np.float64)
    np.testing.assert_array_equal(read_rmf(path2).values, rmf.values)


def test_write_rmf_real_roundtrip(tmp_path):
    src = DATA / "epn_ff20_dY9.rmf"
    if not src.exists():
        pytest.skip(f"{src.name} not found in {DATA}")
    rmf = read_rmf(src)
    path = write_rmf(rmf, tmp_path / "epn.rmf")
    back = read_rmf(path)
    np.testing.assert_array_equal(back.values, rmf.values)  # float32 exact
    np.testing.assert_array_equal(back["channel"], rmf["channel"])
    np.testing.assert_allclose(back["energy_lo"], rmf["energy_lo"])


def test_write_arf_keywords_and_roundtrip(tmp_path):
    arf = _toy_arf()
    path = write_arf(arf, tmp_path / "toy.arf", telescope="TOY", instrument="DET")
    with fits.open(path) as hdul:
        s = hdul["SPECRESP"]
        for key, value in {"HDUCLASS": "OGIP", "HDUCLAS1": "RESPONSE",
                           "HDUCLAS2": "SPECRESP", "TELESCOP": "TOY",
                           "INSTRUME": "DET", "FILTER": "NONE"}.items():
            assert s.header[key] == value, key
        assert "HDUVERS" in s.header
        assert s.columns.names == ["ENERG_LO", "ENERG_HI", "SPECRESP"]
        assert s.columns["SPECRESP"].unit == "cm2"
        assert s.columns["ENERG_HI"].unit == "keV"
    back = read_arf(path)
    np.testing.assert_allclose(back.values, arf.values, rtol=1e-6)
    np.testing.assert_array_equal(back["energy_true_lo"], arf["energy_true_lo"])


def test_write_pha_keywords(tmp_path):
    rmf = _toy_rmf()
    arf = _toy_arf()
    rng = np.random.default_rng(3)
    counts = rng.poisson(20, size=30)
    e_edges = np.linspace(0.4, 8.5, 31)
    path = write_pha(counts, e_edges, 1234.5, tmp_path / "src.pha", rmf=rmf, arf=arf,
                     backscal=0.5, telescope="TOY", instrument="DET", obs_id=7,
                     object_name="ToySource")
    assert (tmp_path / "src.rmf").exists() and (tmp_path / "src.arf").exists()
    with fits.open(path) as hdul:
        s = hdul["SPECTRUM"]
        h = s.header
        expected = {"HDUCLASS": "OGIP", "HDUCLAS1": "SPECTRUM", "HDUCLAS2": "TOTAL",
                    "HDUCLAS3": "COUNT", "HDUCLAS4": "TYPE:I", "TELESCOP": "TOY",
                    "INSTRUME": "DET", "FILTER": "NONE", "EXPOSURE": 1234.5,
                    "AREASCAL": 1.0, "BACKSCAL": 0.5, "CORRSCAL": 0.0,
                    "CORRFILE": "NONE", "RESPFILE": "src.rmf",
                    "ANCRFILE": "src.arf", "CHANTYPE": "PI", "DETCHANS": 30,
                    "POISSERR": True, "SYS_ERR": 0.0, "GROUPING": 0,
                    "TLMIN1": 0, "TLMAX1": 29, "OBS_ID": 7, "OBJECT": "ToySource"}
        for key, value in expected.items():
            assert h[key] == value, key
        assert "HDUVERS" in h
        assert "BACKFILE" not in h                 # no background: keyword omitted
        assert s.columns.names == ["CHANNEL", "COUNTS", "QUALITY", "BACKSCAL"]
        np.testing.assert_array_equal(s.data["BACKSCAL"], 0.5)
        assert _colformat(s, "COUNTS") == "J" and _colformat(s, "CHANNEL") == "J"
        np.testing.assert_array_equal(s.data["COUNTS"], counts)
        np.testing.assert_array_equal(s.data["CHANNEL"], np.arange(30))
        np.testing.assert_allclose(hdul["EBOUNDS"].data["E_MAX"], e_edges[1:])
    # the RMF written alongside reads back equal
    np.testing.assert_allclose(read_rmf(tmp_path / "src.rmf").values, rmf.values,
                               rtol=1e-6, atol=1e-9)


def test_write_pha_rate_columns_and_errors(tmp_path):
    counts = np.array([3.0, 0.0, 5.0, 10.0])
    path = write_pha(counts, np.array([[1, 2], [2, 3], [3, 4], [4, 5]]), 10.0,
                     tmp_path / "r.pha", rate=True, backscal=np.full(4, 0.25),
                     rmf="resp.rmf", first_channel=1)
    with fits.open(path) as hdul:
        s = hdul["SPECTRUM"]
        assert s.header["HDUCLAS3"] == "RATE"
        assert s.header["POISSERR"] is False
        assert s.header["RESPFILE"] == "resp.rmf" and s.header["ANCRFILE"] == "none"
        assert s.header["TLMIN1"] == 1
        assert {"RATE", "STAT_ERR", "BACKSCAL"} <= set(s.columns.names)
        np.testing.assert_allclose(s.data["RATE"], counts / 10.0)
        # Poisson errors floored at one count: the empty channel gets 1/10, not 0 (chi-square divides by it)
        np.testing.assert_allclose(s.data["STAT_ERR"], np.sqrt([3.0, 1.0, 5.0, 10.0]) / 10.0, rtol=1e-6)
        assert "floored at the error of one count" in str(s.header["COMMENT"])
    with pytest.raises(ValueError, match="integers"):
        write_pha([1.5, 2.0], [1, 2, 3], 1.0, tmp_path / "bad.pha")
    with pytest.raises(ValueError, match="energy_edges"):
        write_pha([1, 2], [1, 2], 1.0, tmp_path / "bad.pha")
    with pytest.raises(ValueError, match="exposure"):
        write_pha([1, 2], [1, 2, 3], 0.0, tmp_path / "bad.pha")
    with pytest.raises(ValueError, match="channels"):
        write_pha([1, 2], [1, 2, 3], 1.0, tmp_path / "bad.pha", rmf=_toy_rmf())


def _result_with_replicas(nx=3, ny=4, n=50, k=6, seed=0):
    """A result-like Dataset (flux, ph cm-2 s-1 per voxel) and an uncertainty-like one with ``k`` replicas."""
    rng = np.random.default_rng(seed)
    edges = np.linspace(6.0, 7.0, n + 1)
    coords = {"x": np.arange(nx) * 10.0, "y": np.arange(ny) * 10.0, "energy": 0.5 * (edges[1:] + edges[:-1]),
              "energy_lo": ("energy", edges[:-1]), "energy_hi": ("energy", edges[1:])}
    flux = 1e-3 * (1 + rng.uniform(size=(nx, ny, n)))
    reps = flux[None] * (1 + 0.1 * rng.normal(size=(k, nx, ny, n)))
    res = xr.Dataset({"flux": (("x", "y", "energy"), flux)}, coords=coords)
    unc = xr.Dataset({"flux": res["flux"], "flux_replicas": (("replica", "x", "y", "energy"), reps)}, coords=coords)
    return res, unc, reps


def test_pha_from_result_with_replica_errors_and_covariance(tmp_path):
    from xfusion.io.ogip_write import write_pha2_from_result, write_pha_from_result

    res, unc, reps = _result_with_replicas()
    region = (slice(0, 2), slice(1, 4))
    exposure, area = 1e4, 100.0
    for rate in (False, True):
        pha, _, _ = write_pha_from_result(res, region, tmp_path / f"r{int(rate)}", exposure=exposure, area=area,
                                          rate=rate, uncertainty=unc)
        spec = reps[:, 0:2, 1:4].sum(axis=(1, 2)) * area * (1.0 if rate else exposure)
        with fits.open(pha) as h:
            hdr, data = h["SPECTRUM"].header, h["SPECTRUM"].data
            assert hdr["POISSERR"] is False and hdr["NREPLICA"] == 6
            np.testing.assert_allclose(data["STAT_ERR"], spec.std(axis=0, ddof=1), rtol=1e-5)
            cov_name = hdr["COVFILE"]
        with fits.open(tmp_path / cov_name) as c:
            cov = c["COVARIANCE"].data
            assert c["COVARIANCE"].header["RANK"] == 5 and cov.shape == (50, 50)
            np.testing.assert_allclose(cov, np.cov(spec.T), rtol=1e-6, atol=1e-12 * np.abs(cov).max())
    # PHA type II: one STAT_ERR row per pixel (the voxel std) or per region
    pha2, _, _ = write_pha2_from_result(res, tmp_path / "pix", exposure=exposure, area=area, uncertainty=unc)
    with fits.open(pha2) as h:
        d = h["SPECTRUM"].data
        assert h["SPECTRUM"].header["POISSERR"] is False and d["STAT_ERR"].shape == (12, 50)
        np.testing.assert_allclose(d["STAT_ERR"], (reps.std(axis=0, ddof=1) * area * exposure).reshape(12, 50),
                                   rtol=1e-4)
    pha3, _, _ = write_pha2_from_result(res, tmp_path / "reg", regions=[region], exposure=exposure, area=area,
                                        uncertainty=unc)
    with fits.open(pha3) as h:
        np.testing.assert_allclose(h["SPECTRUM"].data["STAT_ERR"][0],
                                   (reps[:, 0:2, 1:4].sum(axis=(1, 2)) * area * exposure).std(axis=0, ddof=1),
                                   rtol=1e-5)
    # replicas of another grid are refused with the reason
    _, other, _ = _result_with_replicas(nx=4)
    with pytest.raises(ValueError, match="grid"):
        write_pha_from_result(res, region, tmp_path / "bad", uncertainty=other)


def test_write_pha_refuses_counts_beyond_int32(tmp_path):
    """Counts >= 2**31 do not fit the 32-bit COUNTS column: refused (they wrapped to -2**31 before), and no file
    (not even the RMF written beside the PHA) is left; the largest legal count is written exactly; rates are fine."""
    edges = [1.0, 2.0, 3.0, 4.0]
    with pytest.raises(ValueError, match=r"exceed the 32-bit COUNTS column.*rate=True"):
        write_pha([3.0e9, 5.0, 2.0 ** 31], edges, 1000.0, tmp_path / "big.pha", rmf=_toy_rmf(n_chan=3))
    assert list(tmp_path.iterdir()) == []
    top = 2.0 ** 31 - 1
    path = write_pha([top, 5.0, 0.0], edges, 1000.0, tmp_path / "top.pha")
    with fits.open(path) as hdul:
        np.testing.assert_array_equal(hdul["SPECTRUM"].data["COUNTS"], [2 ** 31 - 1, 5, 0])
    path = write_pha([3.0e9, 5.0, 2.0 ** 31], edges, 1000.0, tmp_path / "rate.pha", rate=True)
    with fits.open(path) as hdul:
        np.testing.assert_allclose(hdul["SPECTRUM"].data["RATE"], [3.0e6, 5e-3, 2.0 ** 31 / 1e3], rtol=1e-6)


def _sparse_of(rmf, first_channel=1):
    """The SparseRMF of a dense toy RMF (with an explicit stored zero, as scipy allows)."""
    import scipy.sparse

    from xfusion.io.ogip_read import SparseRMF

    m = scipy.sparse.csr_array(rmf.values)
    m.data[3] = 0.0  # explicit zero: not a stored element of the file (as on the dense path)
    pairs = lambda d: np.stack([rmf[f"{d}_lo"].values, rmf[f"{d}_hi"].values], axis=1)  # noqa: E731
    return SparseRMF(matrix=m, energy_true_edges=pairs("energy_true"), energy_edges=pairs("energy"),
                     channel=np.arange(rmf.sizes["energy"]) + first_channel, attrs=dict(rmf.attrs))


@pytest.mark.parametrize("dtype,lo_thresh", [(np.float64, 0.0), (np.float32, 0.0), (np.float32, 2e-3)])
def test_write_rmf_sparse_equals_dense_path(tmp_path, dtype, lo_thresh):
    """A SparseRMF is written from its stored elements; the file holds the same MATRIX/EBOUNDS as for its dense
    to_dataarray() (groups, empty rows, channel numbers, keywords), and reads back identical."""
    rmf = _toy_rmf()
    rmf.values[9, 3] = -1e-2  # a negative element (real RMFs have some) is kept
    sparse = _sparse_of(rmf)
    p_s = write_rmf(sparse, tmp_path / "s.rmf", dtype=dtype, lo_thresh=lo_thresh)
    p_d = write_rmf(sparse.to_dataarray(), tmp_path / "d.rmf", dtype=dtype, lo_thresh=lo_thresh)
    with fits.open(p_s) as hs, fits.open(p_d) as hd:
        for ext in ("MATRIX", "EBOUNDS"):
            assert list(hs[ext].header.items()) == list(hd[ext].header.items()), ext
            for name in hd[ext].columns.names:
                a, b = hs[ext].data[name], hd[ext].data[name]
                assert len(a) == len(b)
                for x, y in zip(a, b):
                    np.testing.assert_array_equal(x, y, err_msg=f"{ext} {name}")
        assert hs["MATRIX"].header["TLMIN4"] == 1 and hs["MATRIX"].data["N_GRP"][7] == 0
    back_s, back_d = read_rmf(p_s, sparse=True), read_rmf(p_d, sparse=True)
    assert (back_s.matrix != back_d.matrix).nnz == 0
    np.testing.assert_array_equal(back_s.channel, back_d.channel)
    np.testing.assert_array_equal(back_s.energy_true_edges, back_d.energy_true_edges)


def test_write_rmf_sparse_does_not_densify(tmp_path):
    """Memory of write_rmf(SparseRMF) grows with the stored elements: a 3000 x 3000 banded RMF (72 MB dense in
    float64) is written with a traced peak far below one dense copy (the dense path peaked at ~4 dense copies)."""
    import tracemalloc

    import scipy.sparse

    from xfusion.io.ogip_read import SparseRMF

    n = 3000
    m = scipy.sparse.diags([0.25, 0.5, 0.25], [-1, 0, 1], shape=(n, n), format="csr")
    e = np.linspace(0.3, 12.0, n + 1)
    pairs = np.stack([e[:-1], e[1:]], axis=1)
    sparse = SparseRMF(matrix=scipy.sparse.csr_array(m), energy_true_edges=pairs, energy_edges=pairs,
                       channel=np.arange(n), attrs={"arf_folded": False})
    tracemalloc.start()
    try:
        path = write_rmf(sparse, tmp_path / "band.rmf")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 0.2 * n * n * 8, f"write_rmf(SparseRMF) peak {peak / 1e6:.1f} MB"
    back = read_rmf(path, sparse=True)
    assert back.matrix.nnz == m.nnz and abs(back.matrix - m).max() == 0.0
