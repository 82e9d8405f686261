"""Tests for xfusion.io.events with synthetic event files (real column names)."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from xfusion.io.events import read_events

RA0, DEC0 = 83.63, 22.01
PIX = 0.5                 # output pixel (arcsec)
SHAPE = (21, 15)
E_EDGES = np.linspace(0.5, 10.0, 20)  # 0.5 keV bins


def _offsets_to_radec(x, y):
    """Inverse gnomonic: x west, y north offsets (arcsec) -> RA, Dec (deg)."""
    xi = -np.deg2rad(np.asarray(x) / 3600.0)
    eta = np.deg2rad(np.asarray(y) / 3600.0)
    d0, a0 = np.deg2rad(DEC0), np.deg2rad(RA0)
    rho = np.hypot(xi, eta)
    c = np.arctan(rho)
    with np.errstate(invalid="ignore", divide="ignore"):
        dec = np.arcsin(np.cos(c) * np.sin(d0)
                        + np.where(rho > 0, eta * np.sin(c) * np.cos(d0) / rho, 0.0))
    ra = a0 + np.arctan2(xi * np.sin(c),
                         rho * np.cos(d0) * np.cos(c) - eta * np.sin(d0) * np.sin(c))
    return np.rad2deg(ra), np.rad2deg(dec)


SKY = {  # (TCRPX, TCDLT deg, ref RA/Dec offset so the tangent point differs)
    "xmm_epic": (25921.0, 0.05 / 3600),
    "chandra_acis": (4096.5, 0.492 / 3600),
    "xrism_resolve": (1215.5, 1.767 / 60 / 60),
}


def _write(path, instrument, x_off, y_off, energy_kev, extra, header_extra=None):
    crpix, cdelt = SKY[instrument]
    # tangent point of the file's sky WCS slightly away from the cube centre
    ref_ra, ref_dec = RA0 + 0.002, DEC0 - 0.001
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crpix = [crpix, crpix]
    w.wcs.crval = [ref_ra, ref_dec]
    w.wcs.cdelt = [-cdelt, cdelt]
    ra, dec = _offsets_to_radec(x_off, y_off)
    xp, yp = w.wcs_world2pix(ra, dec, 1)
    if instrument == "xmm_epic":
        names = ("X", "Y", "PI")
        energy = np.round(np.asarray(energy_kev) * 1000).astype(np.int16)
        tel, ins = "XMM", header_extra.pop("INSTRUME", "EPN") if header_extra else "EPN"
    elif instrument == "chandra_acis":
        names = ("x", "y", "energy")
        energy = np.asarray(energy_kev, dtype=np.float32) * 1000
        tel, ins = "CHANDRA", "ACIS"
    else:
        names = ("X", "Y", "PI")
        energy = np.round(np.asarray(energy_kev) * 2000).astype(np.int32)
        tel, ins = "XRISM", "RESOLVE"
    cols = [fits.Column(name=names[0], format="D", array=xp),
            fits.Column(name=names[1], format="D", array=yp),
            fits.Column(name=names[2], format="E" if instrument == "chandra_acis"
                        else ("I" if instrument == "xmm_epic" else "J"), array=energy)]
    for name, (fmt, arr) in extra.items():
        cols.append(fits.Column(name=name, format=fmt, array=arr))
    hdu = fits.BinTableHDU.from_columns(cols, name="EVENTS")
    h = hdu.header
    h["TELESCOP"], h["INSTRUME"] = tel, ins
    for i, ax in ((1, 0), (2, 1)):
        h[f"TCTYP{i}"] = ["RA---TAN", "DEC--TAN"][ax]
        h[f"TCRPX{i}"] = crpix
        h[f"TCRVL{i}"] = [ref_ra, ref_dec][ax]
        h[f"TCDLT{i}"] = [-cdelt, cdelt][ax]
        h[f"TCUNI{i}"] = "deg"
    for k, v in (header_extra or {}).items():
        h[k] = v
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(path)
    return path


def _voxel(x, y, e):
    ix = int(round(x / PIX + (SHAPE[0] - 1) / 2))
    iy = int(round(y / PIX + (SHAPE[1] - 1) / 2))
    ie = int(np.searchsorted(E_EDGES, e, side="right") - 1)
    return ix, iy, ie


# good events at pixel centres: (x west, y north) arcsec, energy keV
GOOD = [(0.0, 0.0, 6.4), (2.0, -1.5, 1.2), (-4.5, 3.0, 3.3), (4.0, 0.5, 8.9)]
BAD = [(0.5, 0.5, 2.2), (-1.0, -1.0, 5.1)]
OUTSIDE = [(30.0, 0.0, 2.0)]


def _events():
    ev = GOOD + BAD + OUTSIDE
    x, y, e = (np.array(v) for v in zip(*ev))
    good = np.array([True] * len(GOOD) + [False] * len(BAD) + [True] * len(OUTSIDE))
    return x, y, e, good


def _check(cube, exposure, keyword):
    assert cube.dims == ("x", "y", "energy")
    assert cube.shape == (*SHAPE, E_EDGES.size - 1)
    assert cube.attrs["units"] == "count"
    assert cube.attrs["exposure"] == exposure
    assert cube.attrs["exposure_keyword"] == keyword
    assert cube.attrs["n_selected"] == len(GOOD) + len(OUTSIDE)
    assert cube.attrs["n_binned"] == len(GOOD)
    assert int(cube.sum()) == len(GOOD)
    for x, y, e in GOOD:
        assert int(cube[_voxel(x, y, e)]) == 1, (x, y, e)
    assert cube["x"].attrs["units"] == "arcsec"
    assert cube["energy_lo"].attrs["units"] == "keV"
    np.testing.assert_allclose(cube["x"].values[SHAPE[0] // 2], 0.0, atol=1e-12)


def test_xmm_epic(tmp_path):
    x, y, e, good = _events()
    pattern = np.where(good, 0, 12).astype(np.int16)
    pattern[len(GOOD)] = 5                       # single bad-pattern event
    flag = np.zeros(x.size, np.int32)
    flag[len(GOOD) + 1] = 1                      # flagged event
    path = _write(tmp_path / "pn.evt", "xmm_epic", x, y, e,
                  {"PATTERN": ("I", pattern), "FLAG": ("J", flag)},
                  {"EXPOSURE": 1000.0, "ONTIME": 1100.0})
    cube = read_events(path, energy_edges=E_EDGES, pixel_size=PIX,
                       center=(RA0, DEC0), shape=SHAPE)
    assert cube.attrs["instrument"] == "xmm_epic"
    _check(cube, 1000.0, "EXPOSURE")
    # no screening: the bad events are binned too
    all_ev = read_events(path, energy_edges=E_EDGES, pixel_size=PIX,
                         center=(RA0, DEC0), shape=SHAPE, filters={})
    assert int(all_ev.sum()) == len(GOOD) + len(BAD)
    # exposure keyword override
    on = read_events(path, energy_edges=E_EDGES, pixel_size=PIX, center=(RA0, DEC0),
                     shape=SHAPE, exposure_keyword="ONTIME")
    assert on.attrs["exposure"] == 1100.0


def test_chandra_acis(tmp_path):
    x, y, e, good = _events()
    grade = np.where(good, 0, 0).astype(np.int16)
    grade[len(GOOD)] = 7                         # bad grade
    status = np.zeros((x.size, 32), dtype=bool)
    status[len(GOOD) + 1, 5] = True              # a status bit set
    path = _write(tmp_path / "acis_evt2.fits", "chandra_acis", x, y, e,
                  {"grade": ("I", grade), "status": ("32X", status)},
                  {"EXPOSURE": 5000.0, "LIVETIME": 5100.0})
    cube = read_events(path, energy_edges=E_EDGES, pixel_size=PIX,
                       center=(RA0, DEC0), shape=SHAPE)
    assert cube.attrs["instrument"] == "chandra_acis"
    _check(cube, 5000.0, "EXPOSURE")


def test_xrism_resolve(tmp_path):
    x, y, e, good = _events()
    itype = np.where(good, 0, 3).astype(np.int16)
    path = _write(tmp_path / "rsl_cl.evt", "xrism_resolve", x, y, e,
                  {"ITYPE": ("B", itype.astype(np.uint8))}, {"LIVETIME": 2.5e4})
    cube = read_events(path, energy_edges=E_EDGES, pixel_size=PIX,
                       center=(RA0, DEC0), shape=SHAPE)
    assert cube.attrs["instrument"] == "xrism_resolve"
    _check(cube, 2.5e4, "LIVETIME")


def test_orientation_and_errors(tmp_path):
    # an event 3" east (larger RA) must land at negative x
    x, y, e = np.array([-3.0]), np.array([0.0]), np.array([2.0])
    path = _write(tmp_path / "o.evt", "xmm_epic", x, y, e,
                  {"PATTERN": ("I", np.zeros(1, np.int16)), "FLAG": ("J", np.zeros(1, np.int32))},
                  {"EXPOSURE": 1.0})
    ra, _ = _offsets_to_radec(x, y)
    assert ra[0] > RA0
    cube = read_events(path, energy_edges=E_EDGES, pixel_size=PIX,
                       center=(RA0, DEC0), shape=SHAPE)
    ix, iy, _ = np.unravel_index(int(np.argmax(cube.values)), cube.shape)
    assert cube["x"].values[ix] == pytest.approx(-3.0)
    with pytest.raises(ValueError, match="missing column.*PATTERN"):
        p2 = _write(tmp_path / "nopat.evt", "xmm_epic", x, y, e,
                    {"FLAG": ("J", np.zeros(1, np.int32))}, {"EXPOSURE": 1.0})
        read_events(p2, energy_edges=E_EDGES, pixel_size=PIX, center=(RA0, DEC0),
                    shape=SHAPE)
    hdu = fits.BinTableHDU.from_columns([fits.Column(name="X", format="D", array=[1.0])],
                                        name="EVENTS")
    hdu.header["TELESCOP"] = "FOO"
    hdu.writeto(tmp_path / "foo.evt")
    with pytest.raises(ValueError, match="cannot detect the instrument"):
        read_events(tmp_path / "foo.evt", energy_edges=E_EDGES, pixel_size=PIX,
                    center=(RA0, DEC0), shape=SHAPE)
