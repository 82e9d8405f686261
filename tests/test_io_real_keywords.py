"""I/O on files written with the real column sets and keywords (issue 15).

Event files carry the column sets of XMM EPIC-pn (``STDGTInn`` per CCD, ``LIVETInn`` /
``ONTIMEnn``), Chandra ACIS level 2 (per-CCD ``GTIn`` with ``CCD_ID``, ``DTCOR``, no
``status`` column as in screened slices) and XRISM Resolve (``GTI``, ``PIXEL``, ``ITYPE``,
``DEADC`` or ``LIVETIME``/``ONTIME``); responses are the real EPIC-pn and microcalorimeter
files of ``../shared/data`` (next to the checkout) where the test says so.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse
import xarray as xr
from astropy.io import fits
from astropy.wcs import WCS

import xfusion
from xfusion.io.events import read_events
from xfusion.io.ogip_write import write_pha, write_pha2, write_pha2_from_result
from xfusion.io.observation_files import common_channel_edges, observation_from_files
from xfusion.io.ogip_read import OGIPError, SparseRMF, edges_coords, read_arf, read_pha, read_rmf
from xfusion.io.psf import read_psf, read_psf_stack
from xfusion.observation import NEST_TOL, edge_tolerance, energy_edges
from xfusion.operators.response import ResponseMatrix, rmf_on_grid

from conftest import require_data

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
EPN_RMF = DATA / "epn_ff20_dY9.rmf"
MUCAL_RMF = DATA / "xrs_mucal.rmf"
RA0, DEC0 = 83.633, 22.0145
GRID = {"pixel_size": 4.0, "center": (RA0, DEC0), "shape": (9, 9)}


# --------------------------------------------------------------------------- writers
def _sky_pixels(n, rng, pix_arcsec, crpix):
    """Sky-pixel X/Y (1-based, FITS) of n events within +-10 arcsec of the centre, and the column WCS."""
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crpix = [crpix, crpix]
    w.wcs.crval = [RA0, DEC0]
    w.wcs.cdelt = [-pix_arcsec / 3600, pix_arcsec / 3600]
    off = rng.uniform(-10, 10, (n, 2)) / 3600
    ra = RA0 - off[:, 0] / np.cos(np.deg2rad(DEC0))
    x, y = w.wcs_world2pix(ra, DEC0 + off[:, 1], 1)
    return x, y, (crpix, pix_arcsec)


def _events_hdu(columns, header, xy_names, wcs):
    cols = [fits.Column(name=k, format=f, array=a) for k, (f, a) in columns.items()]
    hdu = fits.BinTableHDU.from_columns(cols, name="EVENTS")
    h = hdu.header
    names = [c.name for c in cols]
    crpix, pix = wcs
    for ax, name in enumerate(xy_names):
        i = names.index(name) + 1
        h[f"TCTYP{i}"] = ("RA---TAN", "DEC--TAN")[ax]
        h[f"TCRPX{i}"] = crpix
        h[f"TCRVL{i}"] = (RA0, DEC0)[ax]
        h[f"TCDLT{i}"] = (-1, 1)[ax] * pix / 3600
        h[f"TCUNI{i}"] = "deg"
    for k, v in header.items():
        h[k] = v
    return hdu


def _gti_hdu(name, start, stop, **keys):
    hdu = fits.BinTableHDU.from_columns([fits.Column(name="START", format="D", unit="s", array=start),
                                         fits.Column(name="STOP", format="D", unit="s", array=stop)], name=name)
    hdu.header["HDUCLASS"], hdu.header["HDUCLAS1"] = "OGIP", "GTI"
    for k, v in keys.items():
        hdu.header[k] = v
    return hdu


def _merged_length(start, stop):
    """Length of the union of intervals, by brute force on a fine time grid-free sweep."""
    iv = sorted(zip(start, stop))
    total, cur0, cur1 = 0.0, *iv[0]
    for a, b in iv[1:]:
        if a > cur1:
            total += cur1 - cur0
            cur0, cur1 = a, b
        else:
            cur1 = max(cur1, b)
    return total + cur1 - cur0


def _pn_file(path, rng, pi=None, n=600, ccd_main=4, whole_gti=False):
    """EPIC-pn imaging event list: real columns, STDGTI01..12, per-CCD ONTIME/LIVETI keywords."""
    t0 = 6.5e8
    pi = rng.integers(150, 12000, n) if pi is None else np.asarray(pi)
    n = pi.size
    x, y, wcs = _sky_pixels(n, rng, 0.05, 25921.0)
    ccd = np.full(n, ccd_main, np.int16)
    ccd[: n // 20] = 1                                   # a few events on CCD 1
    t = t0 + rng.uniform(0, 4.0e4, n)
    cols = {
        "TIME": ("D", t), "RAWX": ("I", rng.integers(1, 64, n)), "RAWY": ("I", rng.integers(1, 200, n)),
        "DETX": ("I", rng.integers(-1e4, 1e4, n)), "DETY": ("I", rng.integers(-1e4, 1e4, n)),
        "X": ("J", np.round(x).astype(np.int32)), "Y": ("J", np.round(y).astype(np.int32)),
        "PHA": ("I", pi.astype(np.int16) // 3), "PI": ("I", pi.astype(np.int16)),
        "FLAG": ("J", np.zeros(n, np.int32)), "PATTERN": ("B", np.zeros(n, np.uint8)),
        "PAT_ID": ("I", np.zeros(n, np.int16)), "PAT_SEQ": ("B", np.zeros(n, np.uint8)),
        "CCDNR": ("B", ccd.astype(np.uint8)), "TIME_RAW": ("D", t),
    }
    # GTIs per CCD: CCD 4 has overlapping and unsorted intervals (merged by the reader)
    gti = {c: (np.array([t0, t0 + 2.0e4]), np.array([t0 + 1.5e4, t0 + 3.9e4])) for c in range(1, 13)}
    gti[4] = (np.array([t0 + 2.0e4, t0, t0 + 1.0e4, t0 + 3.0e4]),
              np.array([t0 + 2.6e4, t0 + 1.2e4, t0 + 1.4e4, t0 + 3.95e4]))
    if whole_gti:
        gti = {c: (np.array([t0]), np.array([t0 + 4.0e4])) for c in range(1, 13)}
    header = {"TELESCOP": "XMM", "INSTRUME": "EPN", "DATAMODE": "IMAGING", "SUBMODE": "PrimeFullWindow",
              "FILTER": "Thin1", "FRMTIME": 73, "OBS_ID": "0123456789", "EXPIDSTR": "S003",
              "TSTART": t0, "TSTOP": t0 + 4.0e4}
    live = {}
    for c, (a, b) in gti.items():
        on = _merged_length(a, b)
        live[c] = 0.9933 if (c == 4 or whole_gti) else 0.9901   # live fraction (frame transfer), per CCD
        header[f"ONTIME{c:02d}"] = on
        header[f"LIVETI{c:02d}"] = on * live[c]
    header["EXPOSURE"] = 5.0e4   # a misleading global keyword: the reader must not use it
    hdus = [fits.PrimaryHDU(), _events_hdu(cols, header, ("X", "Y"), wcs)]
    hdus += [_gti_hdu(f"STDGTI{c:02d}", *gti[c], CCDID=c) for c in range(1, 13)]
    fits.HDUList(hdus).writeto(path)
    return path, gti, live, pi


# --------------------------------------------------------------------------- exposure
def test_exposure_xmm_pn_gti_times_livetime(tmp_path):
    rng = np.random.default_rng(1)
    path, gti, live, _ = _pn_file(tmp_path / "P0123456789PNS003PIEVLI0000.FIT", rng)
    edges = np.linspace(0.2, 12.0, 60)
    with pytest.warns(UserWarning, match="CCDs \\[1, 4\\]"):       # CCD 1 events, different exposure
        cube = read_events(path, energy_edges=edges, **GRID)
    expected = _merged_length(*gti[4]) * live[4]
    assert cube.attrs["ccd"] == 4
    assert abs(cube.attrs["exposure"] / expected - 1) < 1e-3           # requirement: within 0.1 %
    assert cube.attrs["exposure"] == pytest.approx(expected, rel=1e-12)  # measured: exact
    assert "LIVETI04/ONTIME04" in cube.attrs["exposure_source"]
    assert abs(cube.attrs["exposure"] - 5.0e4) > 1e4                   # the EXPOSURE keyword is not used
    # events outside the merged CCD-4 GTIs are dropped (TIME screening)
    with fits.open(path) as h:
        t, c = h["EVENTS"].data["TIME"], h["EVENTS"].data["CCDNR"]
    a, b = gti[4]
    inside4 = np.zeros(t.size, bool)
    for s0, s1 in zip(a, b):
        inside4 |= (t >= s0) & (t < s1)
    a1, b1 = gti[1]
    inside1 = np.zeros(t.size, bool)
    for s0, s1 in zip(a1, b1):
        inside1 |= (t >= s0) & (t < s1)
    n_in = int(np.sum(np.where(c == 4, inside4, inside1)))
    assert cube.attrs["n_selected"] == n_in and cube.attrs["n_outside_gti"] == t.size - n_in
    # the old behaviour stays available on request
    kw = read_events(path, energy_edges=edges, exposure_keyword="EXPOSURE", **GRID)
    assert kw.attrs["exposure"] == 5.0e4 and kw.attrs["n_outside_gti"] == 0
    # session 28: without a TIME column the events cannot be screened by the GTIs, whose summed exposure would then
    # not describe them (was: GTI exposure with every event binned); refused, header keyword still available
    with fits.open(path) as h:
        ev = h["EVENTS"]
        cols = [c for c in ev.columns if c.name != "TIME"]
        hdus = [fits.PrimaryHDU(), fits.BinTableHDU.from_columns(cols, header=ev.header, name="EVENTS")]
        hdus += [hdu.copy() for hdu in h[2:]]
    fits.HDUList(hdus).writeto(tmp_path / "notime.fits")
    with pytest.raises(ValueError, match="no TIME column, so they cannot be screened by the GTI"):
        read_events(tmp_path / "notime.fits", energy_edges=edges, **GRID)
    kw = read_events(tmp_path / "notime.fits", energy_edges=edges, exposure_keyword="EXPOSURE", **GRID)
    assert kw.attrs["exposure"] == 5.0e4


def test_exposure_chandra_acis_screened_evt2(tmp_path):
    """Level-2 slice: no status column (default screen skipped, not failed), DTCOR, GTI per CCD."""
    rng = np.random.default_rng(2)
    n = 400
    x, y, wcs = _sky_pixels(n, rng, 0.492, 4096.5)
    t0 = 7.0e8
    ccd = np.full(n, 7, np.int16)
    energy = rng.uniform(300, 9000, n).astype(np.float32)
    t = t0 + rng.uniform(0, 3000.0, n)
    cols = {"time": ("D", t), "ccd_id": ("I", ccd), "node_id": ("I", np.zeros(n, np.int16)),
            "expno": ("J", np.arange(n, dtype=np.int32)), "chipx": ("I", rng.integers(1, 1024, n)),
            "chipy": ("I", rng.integers(1, 1024, n)), "tdetx": ("I", np.zeros(n, np.int16)),
            "tdety": ("I", np.zeros(n, np.int16)), "detx": ("E", x.astype(np.float32)),
            "dety": ("E", y.astype(np.float32)), "x": ("E", x.astype(np.float32)), "y": ("E", y.astype(np.float32)),
            "pha": ("J", (energy / 4).astype(np.int32)), "pha_ro": ("J", (energy / 4).astype(np.int32)),
            "energy": ("E", energy), "pi": ("J", (energy / 14.6).astype(np.int32) + 1),
            "fltgrade": ("I", np.zeros(n, np.int16)), "grade": ("I", np.where(np.arange(n) % 10 == 0, 7, 0))}
    dtcor = 0.98717
    header = {"TELESCOP": "CHANDRA", "INSTRUME": "ACIS", "DETNAM": "ACIS-7", "READMODE": "TIMED",
              "EXPTIME": 3.2, "DTCOR": dtcor, "ONTIME": 6.3e4, "LIVETIME": 6.3e4 * dtcor,
              "EXPOSURE": 6.3e4 * dtcor,      # full-observation values: 21x the slice
              "ONTIME7": 6.3e4, "LIVTIME7": 6.3e4 * dtcor, "EXPOSUR7": 6.3e4 * dtcor}
    gti7 = (np.array([t0, t0 + 1200.0]), np.array([t0 + 1000.0, t0 + 3000.0]))
    gti6 = (np.array([t0]), np.array([t0 + 2500.0]))
    hdus = [fits.PrimaryHDU(), _events_hdu(cols, header, ("x", "y"), wcs),
            _gti_hdu("GTI7", *gti7, CCD_ID=7), _gti_hdu("GTI6", *gti6, CCD_ID=6)]
    fits.HDUList(hdus).writeto(tmp_path / "acisf_slice_evt2.fits")
    cube = read_events(tmp_path / "acisf_slice_evt2.fits", energy_edges=np.linspace(0.3, 9.0, 30), **GRID)
    expected = 2800.0 * dtcor
    assert abs(cube.attrs["exposure"] / expected - 1) < 1e-3
    assert cube.attrs["exposure"] == pytest.approx(expected, rel=1e-12)
    assert cube.attrs["ccd"] == 7 and "DTCOR" in cube.attrs["exposure_source"]
    assert "status: column absent" in cube.attrs["filters"]
    in_gti = ((t < t0 + 1000) | (t >= t0 + 1200)) & (t < t0 + 3000)
    assert cube.attrs["n_selected"] == int(np.sum(in_gti & (np.arange(n) % 10 != 0)))   # grade 7 screened
    # an explicit screen on a missing column is still an error
    with pytest.raises(ValueError, match="missing column.*status"):
        read_events(tmp_path / "acisf_slice_evt2.fits", energy_edges=np.linspace(0.3, 9.0, 30),
                    filters={"status": ("==", 0)}, **GRID)


@pytest.mark.parametrize("deadc", [None, 0.9987, 1.5, "N/A"], ids=["livetime_over_ontime", "DEADC", "DEADC>1",
                                                                  "DEADC-text"])
def test_exposure_xrism_resolve(tmp_path, deadc):
    rng = np.random.default_rng(3)
    n = 300
    x, y, wcs = _sky_pixels(n, rng, 1.767, 1215.5)
    t0 = 3.0e8
    t = t0 + rng.uniform(0, 9.0e4, n)
    pi = rng.integers(1000, 24000, n)
    cols = {"TIME": ("D", t), "PIXEL": ("B", rng.integers(0, 36, n).astype(np.uint8)),
            "ITYPE": ("B", np.where(np.arange(n) % 7 == 0, 3, 0).astype(np.uint8)),
            "PHA": ("J", pi.astype(np.int32)), "PI": ("J", pi.astype(np.int32)),
            "EPI": ("E", pi * 0.5), "DETX": ("I", rng.integers(1, 6, n)), "DETY": ("I", rng.integers(1, 6, n)),
            "X": ("I", np.round(x).astype(np.int16)), "Y": ("I", np.round(y).astype(np.int16)),
            "RISE_TIME": ("B", np.full(n, 40, np.uint8)), "STATUS": ("16X", np.zeros((n, 16), bool))}
    gti = (np.array([t0, t0 + 3.0e4, t0 + 6.5e4]), np.array([t0 + 2.5e4, t0 + 6.0e4, t0 + 8.8e4]))
    on = _merged_length(*gti)
    header = {"TELESCOP": "XRISM", "INSTRUME": "RESOLVE", "FILTER": "OPEN", "DATAMODE": "PX_NORMAL",
              "ONTIME": on, "LIVETIME": on * 0.995, "EXPOSURE": 1.0e5}
    if deadc is not None:
        header["DEADC"] = deadc
    hdus = [fits.PrimaryHDU(), _events_hdu(cols, header, ("X", "Y"), wcs), _gti_hdu("GTI", *gti)]
    fits.HDUList(hdus).writeto(tmp_path / "xa000000000rsl_p0px1000_cl.evt")
    if deadc in (1.5, "N/A"):  # session 28: an exposure above the on time, or "could not convert string to float"
        with pytest.raises(ValueError, match=r"dead-time correction DEADC = .* is not in \(0, 1\]"):
            read_events(tmp_path / "xa000000000rsl_p0px1000_cl.evt", energy_edges=np.linspace(0.5, 12, 24), **GRID)
        return
    cube = read_events(tmp_path / "xa000000000rsl_p0px1000_cl.evt", energy_edges=np.linspace(0.5, 12, 24),
                       **GRID)
    with pytest.raises(ValueError, match="shape must be two integers"):
        read_events(tmp_path / "xa000000000rsl_p0px1000_cl.evt", energy_edges=np.linspace(0.5, 12, 24),
                    **{**GRID, "shape": (16.7, 16)})
    corr = deadc if deadc is not None else 0.995
    assert abs(cube.attrs["exposure"] / (on * corr) - 1) < 1e-3
    assert cube.attrs["exposure"] == pytest.approx(on * corr, rel=1e-12)
    assert ("DEADC" if deadc else "LIVETIME/ONTIME") in cube.attrs["exposure_source"]


# --------------------------------------------------------------------------- channels
def test_pi_binning_exact_on_real_pn_ebounds(tmp_path):
    """Every PI value of 0.1-12 keV binned by channel index = PI // 5: exactly 5 events per channel."""
    require_data(EPN_RMF)
    pi = np.repeat(np.arange(100, 12000), 1)                  # one event per PI value (eV)
    rng = np.random.default_rng(4)
    path, _, _, _ = _pn_file(tmp_path / "pn.evt", rng, pi=pi, whole_gti=True)
    eb = fits.getdata(EPN_RMF, "EBOUNDS")
    ch = np.asarray(eb["CHANNEL"], np.int64)
    e_min, e_max = eb["E_MIN"], eb["E_MAX"]                    # float32 as in the file
    edges = np.append(np.asarray(e_min, np.float64), float(e_max[-1]))[20:2400]
    cube = read_events(path, energy_edges=edges, channel_edges=ch[20:2400], pi_per_channel=5,
                       filters={}, pixel_size=200.0, center=(RA0, DEC0), shape=(1, 1))
    spec = cube.values[0, 0]
    assert cube.attrs["energy_binning"] == "channel"
    np.testing.assert_array_equal(spec, 5)                    # exact: no channel gains or loses an event
    # the old way (PI as a float energy against the nominal EBOUNDS) misplaces events
    naive = np.histogram(pi * 1e-3, bins=edges)[0]
    assert np.sum(np.abs(naive - 5)) > 100
    # observation_from_files does the same from the RMF itself (5 eV channels, PI // 5)
    o = observation_from_files(events=path, rmf=EPN_RMF, band=(0.5, 10.0), group=4, filters={},
                               pixel_size=200.0, center=(RA0, DEC0), shape=(1, 1))
    assert np.all(o["counts"].values[0, 0] == 20)


def test_pi_binning_exact_float32_edges_resolve(tmp_path):
    """Resolve PI (0.5 eV) against float32 0.5-eV edges, by energy (snapped) and by channel: exact."""
    rng = np.random.default_rng(5)
    pi = np.arange(4000, 24000)                                # 2-12 keV, one event per channel
    n = pi.size
    x, y, wcs = _sky_pixels(n, rng, 1.767, 1215.5)
    cols = {"TIME": ("D", np.zeros(n)), "PIXEL": ("B", np.zeros(n, np.uint8)), "ITYPE": ("B", np.zeros(n, np.uint8)),
            "PI": ("J", pi.astype(np.int32)), "X": ("I", np.round(x).astype(np.int16)),
            "Y": ("I", np.round(y).astype(np.int16))}
    fits.HDUList([fits.PrimaryHDU(), _events_hdu(cols, {"TELESCOP": "XRISM", "INSTRUME": "RESOLVE",
                                                         "EXPOSURE": 1.0}, ("X", "Y"), wcs)]).writeto(tmp_path / "r.evt")
    edges32 = (np.arange(4000, 24001) * 0.5e-3).astype(np.float32).astype(np.float64)
    assert np.any(edges32 != np.arange(4000, 24001) * 0.5e-3)   # they really are off (float32)
    naive = np.histogram(pi * 0.5e-3, bins=edges32)[0]
    lost = int(np.sum(naive != 1))
    kw = dict(pixel_size=200.0, center=(RA0, DEC0), shape=(1, 1))
    by_pi = read_events(tmp_path / "r.evt", energy_edges=edges32, **kw)
    by_chan = read_events(tmp_path / "r.evt", energy_edges=edges32, channel_edges=np.arange(4000, 24001),
                          pi_per_channel=1, **kw)
    print(f"float32 0.5-eV edges, 2-12 keV: naive float binning misplaces {lost} of {n} events; "
          f"PI-snapped and channel binning misplace 0")
    assert lost > 0
    np.testing.assert_array_equal(by_pi.values[0, 0], 1)
    np.testing.assert_array_equal(by_chan.values[0, 0], 1)
    assert by_pi.attrs["energy_binning"] == "pi" and by_chan.attrs["energy_binning"] == "channel"


def _obs(edges, pixel, n_pix, name, **kw):
    rng = np.random.default_rng(0)
    counts = rng.poisson(3.0, (n_pix, n_pix, edges.size - 1)).astype(float)
    return xfusion.observation(counts, dims=("x", "y", "energy"), energy_edges=edges, pixel_size=pixel,
                               exposure=1e4, name=name, **kw)


def test_float32_ebounds_align_and_misaligned_refused():
    # Resolve-like 0.5 eV EBOUNDS computed in float32 arithmetic, pn-like 5 eV edges rounded to float32
    fine = (np.float32(0.5e-3) * np.arange(4000, 6001, dtype=np.float32)).astype(np.float64)
    coarse = (2.0 + 5e-3 * np.arange(0, 201)).astype(np.float32).astype(np.float64)
    dev = np.abs(fine[::10] - coarse).max()
    assert 0 < dev < 1e-6                                       # the ~1e-7 keV float32 mismatch of the issue
    assert np.all(dev < edge_tolerance(coarse, 0.5e-3))
    psf = np.zeros((3, 3))
    psf[1, 1] = 1
    x = _obs(coarse, 2.0, 12, "pn", response=np.array([0.25, 0.5, 0.25]), response_spacing=5e-3)
    y = _obs(fine, 6.0, 4, "resolve", psf=psf, psf_pixel_size=6.0)
    grid = xfusion.fusion_grid(x, y)
    assert grid.attrs["spectral_factor"] == 10
    # genuinely misaligned: every coarse edge shifted by 0.1 fine channel (0.05 eV)
    bad = _obs(coarse + 0.05e-3, 2.0, 12, "pn shifted", response=np.array([0.25, 0.5, 0.25]),
               response_spacing=5e-3)
    with pytest.raises(ValueError, match="channel edges must line up.*0.1 fine channel.*align"):
        xfusion.fusion_grid(bad, y)


def test_grouping_and_common_channel_edges(tmp_path):
    require_data(EPN_RMF)
    rng = np.random.default_rng(6)
    path, _, _, pi = _pn_file(tmp_path / "pn.evt", rng)
    eb = fits.getdata(EPN_RMF, "EBOUNDS")
    e = np.append(np.asarray(eb["E_MIN"], np.float64), float(eb["E_MAX"][-1]))
    inside = np.flatnonzero((e[:-1] >= 2.0 - 1e-6) & (e[1:] <= 3.0 + 1e-6))
    flags = -np.ones(inside.size, int)
    flags[[0, 10, 15, 40, 100]] = 1                              # groups of 10, 5, 25, 60, rest channels
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        o = observation_from_files(events=path, rmf=EPN_RMF, band=(2.0, 3.0), grouping=flags, **GRID)
    ee = energy_edges(o)
    np.testing.assert_array_equal(ee, e[np.append(inside[[0, 10, 15, 40, 100]], inside[-1] + 1)])
    with pytest.raises(ValueError, match="one flag per RMF channel"):
        observation_from_files(events=path, rmf=EPN_RMF, band=(2.0, 3.0), grouping=flags[:-1], **GRID)
    # edges of the pn RMF that fall on a (float32) 0.5-eV grid within 1 % of a channel (NEST_TOL)
    fine = _obs((3.0 + 0.5e-3 * np.arange(2001)).astype(np.float32).astype(np.float64), 6.0, 2, "fine")
    common = common_channel_edges(EPN_RMF, fine)
    ef = energy_edges(fine)
    in_band = e[(e >= 3.0 - 1e-6) & (e <= 4.0 + 1e-6)]
    on_grid = [x for x in in_band if np.min(np.abs(ef - x)) <= NEST_TOL * 0.5e-3 + 2.4e-7 * x]
    np.testing.assert_array_equal(common, on_grid)
    # pn EBOUNDS are 5 eV x channel from 3.2 keV up; below, nominal energies drift by up to 5.5e-6 keV at 3.0-3.2 keV
    # (1.1 % of a 0.5 eV channel, inside NEST_TOL with float32 rounding): every 5 eV edge of 3-4 keV nests
    assert common[0] == pytest.approx(3.0, abs=1e-5) and common[-1] == pytest.approx(4.0) and common.size == 201


# --------------------------------------------------------------------------- responses
def test_real_pn_rmf_negative_elements(tmp_path):
    require_data(EPN_RMF)
    full = read_rmf(EPN_RMF)                                     # faithful: negatives kept
    assert float(full.min()) < 0
    edges = np.append(full["energy_lo"].values, full["energy_hi"].values[-1])
    counts = np.zeros((1, 1, edges.size - 1))
    with pytest.warns(UserWarning, match=r"negative element.*row\(s\) 118\.\.175 \(true energies 0\.168-0\.226 keV\)"):
        o = xfusion.observation(counts, dims=("x", "y", "energy"), energy_edges=edges, pixel_size=1.0,
                                exposure=1.0, response=full)
    assert float(o["response"].min()) == 0.0
    assert float(full.min()) < 0                                 # the input is not modified
    np.testing.assert_allclose(o["response"].sum("energy").values, full.sum("energy").values, rtol=1e-12)
    untouched = np.flatnonzero((full.values >= 0).all(axis=1))
    np.testing.assert_array_equal(o["response"].values[untouched], full.values[untouched])
    # observation_from_files keeps only the RMF rows overlapping the band: above 0.23 keV nothing to clip
    path, _, _, _ = _pn_file(tmp_path / "pn.evt", np.random.default_rng(7), whole_gti=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        hi = observation_from_files(events=path, rmf=EPN_RMF, band=(0.5, 2.0), group=10, **GRID)
    assert float(hi["response"].min()) >= 0 and energy_edges(hi, "energy_true")[0] > 0.49
    # a band reaching down to 0.15 keV uses the negative rows: clipped with the warning
    with pytest.warns(UserWarning, match=r"epn_ff20_dY9.rmf.*true energies 0\.168-0\.22\d keV"):
        lo = observation_from_files(events=path, rmf=EPN_RMF, band=(0.15, 0.5), group=10, **GRID)
    assert float(lo["response"].min()) == 0.0
    # a matrix whose negative part is not round-off is refused
    bad = full.copy()
    bad[500, :50] = -0.1
    with pytest.raises(ValueError, match="row 500 .*negative element .*larger than 5% of the row's peak"):
        xfusion.observation(counts, dims=("x", "y", "energy"), energy_edges=edges, pixel_size=1.0, exposure=1.0,
                            response=bad)


def test_full_response_never_counts_the_area_twice(tmp_path):
    """Red team s30: a full response (RMF x ARF: SPECRESP MATRIX, HDUCLAS3='FULL'; read_rmf says units cm2) given with
    the ARF was stored as a probability (units '1', row sums up to 573) and multiplied by the ARF again: expected
    counts ~500x too high. With an area it is now refused (observation and observation_from_files); alone it is split
    exactly into effective_area (its row sums, cm2) and a redistribution, whose product is the plain RMF x ARF."""
    from xfusion.io import write_rmf

    require_data(EPN_RMF)
    pn_arf = DATA / "pn_pi_src.arf"
    require_data(pn_arf)
    rmf, arf = read_rmf(EPN_RMF), read_arf(pn_arf)          # same true-energy grid
    full = rmf.copy(data=rmf.values * arf.values[:, None])
    full.attrs.update(arf_folded=True, units="cm2")
    rsp = read_rmf(write_rmf(full, tmp_path / "pn.rsp"), sparse=True)
    assert rsp.attrs["units"] == "cm2" and rsp.attrs["arf_folded"] is True
    eb = np.append(rsp.energy_edges[:, 0], rsp.energy_edges[-1, 1])
    i0, i1 = np.searchsorted(eb, 6.0 - 1e-4), np.searchsorted(eb, 7.0 - 1e-4)
    edges = eb[i0:i1 + 1:10]
    kw = dict(dims=("x", "y", "energy"), energy_edges=edges, pixel_size=5.0, exposure=1e4)
    counts = np.ones((3, 3, edges.size - 1))
    with pytest.raises(ValueError, match=r"response 'pn.rsp' is a full response \(RMF x ARF: units 'cm2'.*"
                                         r"effective_area= would multiply it again.*redistribution-only RMF"):
        xfusion.observation(counts, effective_area=arf, response=rsp, **kw)
    ref = xfusion.observation(counts, effective_area=arf, response=read_rmf(EPN_RMF, sparse=True), **kw)
    r0 = int(np.searchsorted(rsp.energy_true_edges[:, 0], float(ref["energy_true_lo"][0])))
    block = rsp.to_dataarray().isel(energy=slice(i0, i1), energy_true=slice(r0, r0 + ref.sizes["energy_true"]))
    for resp in (rsp, block):                     # a SparseRMF, and a dense block (split on its own channels)
        o = xfusion.observation(counts, response=resp, **kw)
        assert o["response"].attrs["units"] == "1" and o["effective_area"].attrs["units"] == "cm2"
        assert o["effective_area"].dims == ("energy_true",) and float(o["response"].sum("energy").max()) <= 1 + 1e-6
        np.testing.assert_allclose(o["effective_area"].values[:, None] * o["response"].values,
                                   ref["effective_area"].values[:, None] * ref["response"].values,
                                   rtol=2e-6, atol=1e-9 * float(arf.max()))
    # the SparseRMF's area is its row sums over all EBOUNDS channels: the ARF x the RMF's row sum (~1)
    o = xfusion.observation(counts, response=rsp, **kw)
    k = int(np.searchsorted(rmf["energy_true_lo"].values, float(o["energy_true_lo"][0])))
    n = o.sizes["energy_true"]
    np.testing.assert_allclose(o["effective_area"].values, arf.values[k:k + n] * rmf.values[k:k + n].sum(axis=1),
                               rtol=2e-6)
    # observation_from_files: refused with arf= (before reading the events), split without it
    rng = np.random.default_rng(8)
    path, *_ = _pn_file(tmp_path / "pn.evt", rng)
    fkw = dict(events=path, band=(6.0, 7.0), group=10, **GRID)
    with pytest.raises(ValueError, match=r"full response .*arf= would multiply it again"):
        observation_from_files(rmf=tmp_path / "pn.rsp", arf=pn_arf, **fkw)
    ref = observation_from_files(rmf=EPN_RMF, arf=pn_arf, **fkw)
    o = observation_from_files(rmf=tmp_path / "pn.rsp", **fkw)
    assert o["response"].attrs["units"] == "1" and float(o["response"].sum("energy").max()) <= 1 + 1e-6
    np.testing.assert_allclose(o["effective_area"].values[:, None] * o["response"].values,
                               ref["effective_area"].values[:, None] * ref["response"].values,
                               rtol=2e-6, atol=1e-9 * float(arf.max()))
    np.testing.assert_array_equal(o["counts"].values, ref["counts"].values)


def test_read_arf_refuses_nan_and_negative(tmp_path):
    lo = np.linspace(0.3, 10, 50)
    for name, bad in (("nan", np.nan), ("neg", -1.0)):
        area = np.full(49, 100.0)
        area[7] = bad
        hdu = fits.BinTableHDU.from_columns([fits.Column(name="ENERG_LO", format="E", unit="keV", array=lo[:-1]),
                                             fits.Column(name="ENERG_HI", format="E", unit="keV", array=lo[1:]),
                                             fits.Column(name="SPECRESP", format="E", unit="cm**2", array=area)],
                                            name="SPECRESP")
        fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(tmp_path / f"{name}.arf")
        with pytest.raises(OGIPError, match=r"SPECRESP has 1 negative or non-finite value\(s\), first at row 7"):
            read_arf(tmp_path / f"{name}.arf")
    # session 28: a gap between rows was accepted (and interpolated across later)
    hi = lo[1:].copy()
    hi[10] -= 0.05
    hdu = fits.BinTableHDU.from_columns([fits.Column(name="ENERG_LO", format="E", unit="keV", array=lo[:-1]),
                                         fits.Column(name="ENERG_HI", format="E", unit="keV", array=hi),
                                         fits.Column(name="SPECRESP", format="E", unit="cm**2",
                                                     array=np.full(49, 100.0))], name="SPECRESP")
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(tmp_path / "gap.arf")
    with pytest.raises(OGIPError, match="bins are not contiguous: row 10 ends at"):
        read_arf(tmp_path / "gap.arf")


def _arf_file(path, lo, hi, fmt="E"):
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns(
        [fits.Column(name="ENERG_LO", format=fmt, unit="keV", array=lo),
         fits.Column(name="ENERG_HI", format=fmt, unit="keV", array=hi),
         fits.Column(name="SPECRESP", format="E", unit="cm2", array=np.full(lo.size, 100.0))],
        name="SPECRESP")]).writeto(path)
    return path


def test_read_arf_float32_seams_closed_real_gaps_refused(tmp_path):
    """Red team s30: a float32 0.5-eV ARF grid with ENERG_HI = ENERG_LO + width (1-2 ulp seams, up to 1.9e-6 keV at
    30 keV) was refused as 'not contiguous: row k ends at 8 keV, row k+1 starts at 8 keV'. The seams are closed with
    the next ENERG_LO (strictly contiguous downstream); a real gap is still refused, with the digits that show it."""
    lo = (np.float32(0.3) + np.arange(59400, dtype=np.float32) * np.float32(0.0005)).astype(np.float32)
    hi = (lo + np.float32(0.0005)).astype(np.float32)
    assert np.count_nonzero(lo[1:] != hi[:-1]) > 1000
    arf = read_arf(_arf_file(tmp_path / "f32.arf", lo, hi))
    assert arf.sizes["energy_true"] == 59400
    np.testing.assert_array_equal(arf["energy_true_lo"].values, lo.astype(np.float64))   # ENERG_LO kept as is
    np.testing.assert_array_equal(arf["energy_true_hi"].values[:-1], arf["energy_true_lo"].values[1:])
    assert arf["energy_true_hi"].values[-1] == float(hi[-1])
    np.testing.assert_array_equal(energy_edges(arf, "energy_true")[:-1], lo.astype(np.float64))
    obs = xfusion.observation(np.ones((2, 2, 2)), dims=("x", "y", "energy"), energy_edges=[6.0, 6.5, 7.0],
                              pixel_size=5.0, exposure=1e3, effective_area=arf)
    assert obs.sizes["energy_true"] == 59400
    # a real gap of 1e-5 keV (2 % of a 0.5 eV bin) at 8 keV: refused, naming the row and showing the gap
    gap_hi = hi.copy()
    k = int(np.searchsorted(lo, 8.0))
    gap_hi[k] = lo[k + 1] - np.float32(1e-5)
    with pytest.raises(OGIPError, match=rf"not contiguous: row {k} ends at 8\.0004\d{{4}} keV, row {k + 1} starts at "
                                        r"8\.0005\d{4} keV \(a gap of 9\.5\de-06 keV, 0\.019\d of the bin; 1 such seam"):
        read_arf(_arf_file(tmp_path / "gap.arf", lo, gap_hi))


def test_float32_ebounds_seams_accepted_real_gaps_refused(tmp_path):
    """Red team s30: EBOUNDS with E_MAX = E_MIN + 5 eV in float32 (884 seams of 1-2 ulps, up to 1.9e-6 keV = 0.04 %
    of a channel) were refused by observation_from_files and common_channel_edges ('EBOUNDS channels are not
    contiguous', tolerance 1e-6 of a channel, naming no channel). Float32 seams are accepted (E_MIN kept); a real
    gap is refused naming the channels and the gap. read_rmf closes such seams itself (strictly contiguous)."""
    require_data(EPN_RMF)
    sp = read_rmf(EPN_RMF, sparse=True)
    emin = sp.energy_edges[:, 0].astype(np.float32)
    width = np.where(np.arange(emin.size) >= 600, np.float32(0.005),
                     (sp.energy_edges[:, 1] - sp.energy_edges[:, 0]).astype(np.float32)).astype(np.float32)
    emax = (emin + width).astype(np.float32)
    assert np.count_nonzero(emin[1:] != emax[:-1]) > 500
    seamed = SparseRMF(matrix=sp.matrix, energy_true_edges=sp.energy_true_edges, channel=sp.channel,
                       energy_edges=np.stack([emin, emax], axis=1).astype(np.float64), attrs=dict(sp.attrs))
    fine = _obs((3.0 + 0.5e-3 * np.arange(2001)).astype(np.float32).astype(np.float64), 6.0, 2, "fine")
    np.testing.assert_array_equal(common_channel_edges(seamed, fine), common_channel_edges(sp, fine))
    rng = np.random.default_rng(7)
    path, *_ = _pn_file(tmp_path / "pn.evt", rng)
    kw = dict(events=path, band=(6.0, 7.0), group=10, **GRID)
    ref = observation_from_files(rmf=sp, **kw)
    o = observation_from_files(rmf=seamed, **kw)
    np.testing.assert_array_equal(energy_edges(o), energy_edges(ref))
    np.testing.assert_array_equal(o["counts"].values, ref["counts"].values)
    np.testing.assert_array_equal(o["response"].values, ref["response"].values)
    # a real gap (1 eV, 0.2 of a channel) after channel 1200: refused, naming the channels and the gap
    gap = emax.astype(np.float64)
    gap[1200] -= 1e-3
    bad = SparseRMF(matrix=sp.matrix, energy_true_edges=sp.energy_true_edges, channel=sp.channel,
                    energy_edges=np.stack([emin.astype(np.float64), gap], axis=1), attrs=dict(sp.attrs))
    with pytest.raises(ValueError, match=r"EBOUNDS channels are not contiguous: channel 1200 ends at 6\.004\d* keV "
                                         r"and channel 1201 starts at 6\.005\d* keV, a gap of 0\.001 keV \(0\.25 of a "
                                         r"channel; 1 such seam"):
        common_channel_edges(bad, fine)
    # the same seams in a file: read_rmf closes them (E_MAX = next E_MIN), so the dense RMF is a valid response
    with fits.open(EPN_RMF) as h:
        h["EBOUNDS"].data["E_MIN"] = emin
        h["EBOUNDS"].data["E_MAX"] = emax
        h.writeto(tmp_path / "pn_f32.rmf")
    dense = read_rmf(tmp_path / "pn_f32.rmf", sparse=False)
    np.testing.assert_array_equal(dense["energy_hi"].values[:-1], dense["energy_lo"].values[1:])
    np.testing.assert_array_equal(dense["energy_lo"].values, emin.astype(np.float64))
    edges = energy_edges(ref)
    sel = dense.isel(energy=slice(int(np.searchsorted(dense["energy_lo"].values, edges[0])),
                                  int(np.searchsorted(dense["energy_lo"].values, edges[-1]))))
    r0 = int(np.searchsorted(sel["energy_true_lo"].values, ref["energy_true_lo"].values[0]))
    sel = sel.isel(energy_true=slice(r0, r0 + ref.sizes["energy_true"]))   # the rows observation_from_files kept
    obs = xfusion.observation(np.ones((2, 2, edges.size - 1)), dims=("x", "y", "energy"), energy_edges=edges,
                              pixel_size=5.0, exposure=1e3, response=sel)
    np.testing.assert_allclose(obs["response"].values, ref["response"].values, rtol=1e-12, atol=0)


@pytest.fixture(scope="module")
def mucal_default():
    """The 12000 x 12000 microcalorimeter RMF read with the defaults (read once for the module)."""
    require_data(MUCAL_RMF)
    return read_rmf(MUCAL_RMF)


def test_sparse_rmf_by_default_and_in_the_model(mucal_default):
    require_data(EPN_RMF)
    assert isinstance(read_rmf(EPN_RMF), xr.DataArray)           # 5.4e6 elements: dense
    sp = mucal_default                                            # 1.44e8 elements: sparse by default
    assert isinstance(sp, SparseRMF) and sp.attrs["sparse_auto"] is True
    assert isinstance(sp.matrix, scipy.sparse.csr_array)
    true_edges = np.append(sp.energy_true_edges[:, 0], sp.energy_true_edges[-1, 1])
    fine = np.append(sp.energy_edges[:, 0], sp.energy_edges[-1, 1])[5950:6451]   # 6-6.5 keV on its channels
    rows = rmf_on_grid(sp.matrix, true_edges, fine)
    assert scipy.sparse.issparse(rows) and rows.shape == (500, 12000)
    op, dense = ResponseMatrix(rows), ResponseMatrix(rows.toarray())
    rng = np.random.default_rng(8)
    z, u = rng.random((3, 2, 500)), rng.random((3, 2, 12000))
    np.testing.assert_allclose(op.forward(z), dense.forward(z), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(op.adjoint(u), dense.adjoint(u), rtol=1e-12, atol=1e-15)
    assert abs(np.vdot(op.forward(z), u) - np.vdot(z, op.adjoint(u))) < 1e-10 * abs(np.vdot(z, op.adjoint(u)))


# --------------------------------------------------------------------------- PSFs
def test_psf_stack_accepted_and_plain_psf_not_transposed(tmp_path):
    n = 15
    yy, xx = np.indices((n, n), dtype=float)
    img = np.exp(-0.5 * ((xx - 7) ** 2 / 2.5 ** 2 + (yy - 7) ** 2 / 0.8 ** 2))  # long along x (columns)
    img[7, 11] = 0.5                                                           # a spot 4 px to +x
    img /= img.sum()
    # plain array, image convention (rows = y)
    o = _obs(np.linspace(1, 2, 5), 2.0, 4, "Y", psf=img, psf_pixel_size=1.0)
    assert float(o["psf"].sel(psf_x=4.0, psf_y=0.0)) == pytest.approx(img[7, 11])
    assert float(o["psf"].sel(psf_x=0.0, psf_y=4.0)) == pytest.approx(img[11, 7])
    # the same image through FITS and read_psf gives the same PSF (no transpose between the paths)
    fits.PrimaryHDU(img, header=fits.Header({"PIXSIZE": 1.0})).writeto(tmp_path / "psf.fits")
    from_file = read_psf(tmp_path / "psf.fits")
    np.testing.assert_allclose(o["psf"].transpose("psf_x", "psf_y").values, from_file.values, rtol=1e-12)
    # explicit psf_dims for an (x, y) array
    o2 = _obs(np.linspace(1, 2, 5), 2.0, 4, "Y", psf=img.T, psf_pixel_size=1.0, psf_dims=("psf_x", "psf_y"))
    np.testing.assert_array_equal(o2["psf"].values, o["psf"].values)
    # read_psf_stack output is taken as is
    img2 = np.roll(img, 1, axis=0)
    img2 = np.pad(img2, 2)
    fits.PrimaryHDU(img2 / img2.sum(), header=fits.Header({"PIXSIZE": 1.0})).writeto(tmp_path / "psf2.fits")
    stack = read_psf_stack([tmp_path / "psf.fits", tmp_path / "psf2.fits"], [1.5, 6.0])
    o3 = _obs(np.linspace(1, 8, 8), 2.0, 4, "Y", psf=stack)
    assert o3["psf"].dims == ("psf_energy", "psf_x", "psf_y")
    np.testing.assert_array_equal(o3["psf_energy"].values, [1.5, 6.0])


# --------------------------------------------------------------------------- PHA
def test_pha_reader_keeps_grouping_quality_backscal(tmp_path):
    n = 40
    e = np.linspace(0.5, 8.5, n + 1)
    counts = np.random.default_rng(9).poisson(12, n)
    grouping = np.where(np.arange(n) % 4 == 0, 1, -1)
    quality = np.zeros(n, int)
    quality[:3] = 5
    bscal = np.linspace(0.9, 1.1, n)
    path = write_pha(counts, e, 2500.0, tmp_path / "src.pha", grouping=grouping, quality=quality,
                     backscal=bscal, backfile="src_bkg.pha", telescope="XMM", instrument="EPN")
    ds = read_pha(path)
    np.testing.assert_array_equal(ds["counts"].values, counts)
    np.testing.assert_array_equal(ds["grouping"].values, grouping)
    np.testing.assert_array_equal(ds["quality"].values, quality)
    np.testing.assert_allclose(ds["backscal"].values, bscal, rtol=1e-6)
    np.testing.assert_allclose(ds["energy_lo"].values, e[:-1])
    assert ds.attrs["backfile"] == "src_bkg.pha" and ds.attrs["spectrum_type"] == "I"
    assert float(ds["exposure"][0]) == 2500.0 and ds.attrs["exposure_source"] == "keyword"
    # scalar BACKSCAL: column (gammapy reads the column) and keyword
    p2 = write_pha(counts, e, 2500.0, tmp_path / "b.pha", backscal=0.25)
    with fits.open(p2) as h:
        assert h["SPECTRUM"].header["BACKSCAL"] == 0.25 and "BACKFILE" not in h["SPECTRUM"].header
    np.testing.assert_array_equal(read_pha(p2)["backscal"].values, 0.25)


def test_pha_type2_one_spectrum_per_fused_pixel(tmp_path):
    n_e = 12
    e = np.linspace(1.0, 2.2, n_e + 1)
    rng = np.random.default_rng(10)
    flux = rng.random((3, 2, n_e)) * 1e-4
    ds = xr.Dataset({"flux": (("x", "y", "energy"), flux, {"units": "ph cm-2 s-1"})},
                    coords={"x": ("x", [-5.0, 0.0, 5.0], {"units": "arcsec", "pixel_size": 5.0}),
                            "y": ("y", [0.0, 5.0], {"units": "arcsec", "pixel_size": 5.0}),
                            **edges_coords("energy", e[:-1], e[1:])})
    pha, rmf, arf = write_pha2_from_result(ds, tmp_path / "pix", exposure=1e5, area=100.0)
    back = read_pha(pha)
    assert back.attrs["spectrum_type"] == "II" and back["counts"].dims == ("spectrum", "energy")
    np.testing.assert_array_equal(back["counts"].values, np.rint(flux.reshape(6, n_e) * 1e7))
    np.testing.assert_array_equal(back["spec_num"].values, np.arange(1, 7))
    with fits.open(pha) as h:
        s = h["SPECTRUM"]
        assert s.header["HDUCLAS4"] == "TYPE:II" and s.header["RESPFILE"] == "pix.rmf"
        assert s.header["BACKSCAL"] == 1.0 and s.header["EXPOSURE"] == 1e5
        np.testing.assert_array_equal(h["SPEC_INFO"].data["X_OFF"], [-5, -5, 0, 0, 5, 5])
    np.testing.assert_array_equal(back["y_pix"].values, [0, 1, 0, 1, 0, 1])
    np.testing.assert_array_equal(back["x_off"].values, [-5, -5, 0, 0, 5, 5])
    one = read_pha(pha, spectrum=3)
    np.testing.assert_array_equal(one["counts"].values, np.rint(flux[1, 1] * 1e7))
    # regions: one row each
    pha_r, _, _ = write_pha2_from_result(ds, tmp_path / "reg", regions=[(slice(0, 2), slice(0, 2)),
                                                                          np.ones((3, 2), bool)], exposure=1e5,
                                         area=100.0)
    r = read_pha(pha_r)
    np.testing.assert_array_equal(r["counts"].values[1], np.rint(flux.sum(axis=(0, 1)) * 1e7))
    with pytest.raises(ValueError, match="integers"):
        write_pha2([[1.5, 2]], [1, 2, 3], 1.0, tmp_path / "bad.pha")


def test_observation_takes_a_sparse_rmf_by_its_band(mucal_default):
    """read_rmf's default output for a large RMF goes into observation() without a dense 12k x 12k matrix."""
    sp = mucal_default
    e = np.append(sp.energy_edges[:, 0], sp.energy_edges[-1, 1])[5950:6251]     # 6.0-6.3 keV, 300 channels
    counts = np.ones((2, 2, e.size - 1))
    o = xfusion.observation(counts, dims=("x", "y", "energy"), energy_edges=e, pixel_size=30.0, exposure=1e4,
                            response=sp)
    assert o["response"].sizes["energy"] == 300 and o["response"].sizes["energy_true"] < 320
    t = sp.energy_true_edges
    keep = np.flatnonzero((t[:, 1] > e[0]) & (t[:, 0] < e[-1]))
    np.testing.assert_array_equal(o["response"].values, sp.matrix[keep][:, 5950:6250].toarray())
