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


def _write_resolve_pixels(path, events, header=None):
    """Resolve events with the real column set: PIXEL, ITYPE, PI (0.5 eV), DETX/DETY (1-6), TIME, X, Y; GTI."""
    pix, detx, dety, itype, pi, t = (np.asarray(v) for v in zip(*events))
    cols = [fits.Column(name="TIME", format="D", array=t.astype(float)),
            fits.Column(name="PIXEL", format="B", array=pix.astype(np.uint8)),
            fits.Column(name="ITYPE", format="B", array=itype.astype(np.uint8)),
            fits.Column(name="PI", format="J", array=pi.astype(np.int32)),
            fits.Column(name="DETX", format="I", array=detx.astype(np.int16)),
            fits.Column(name="DETY", format="I", array=dety.astype(np.int16)),
            fits.Column(name="X", format="I", array=np.full(pix.size, 600, np.int16)),
            fits.Column(name="Y", format="I", array=np.full(pix.size, 600, np.int16))]
    hdu = fits.BinTableHDU.from_columns(cols, name="EVENTS")
    h = hdu.header
    h.update(TELESCOP="XRISM", INSTRUME="RESOLVE", PA_NOM=17.0, RA_PNT=RA0 + 0.001, DEC_PNT=DEC0,
             TLMIN2=0, TLMAX2=35, TLMIN5=1, TLMAX5=6, TLMIN6=1, TLMAX6=6, DEADC=0.9)
    h.update(header or {})
    gti = fits.BinTableHDU.from_columns([fits.Column(name="START", format="D", array=[0.0, 200.0]),
                                         fits.Column(name="STOP", format="D", array=[100.0, 300.0])], name="GTI")
    fits.HDUList([fits.PrimaryHDU(), hdu, gti]).writeto(path)
    return path


def test_resolve_binned_by_pixel(tmp_path):
    # every pixel 0..35 has one Hp event at 6.0005 keV (PI 12001); DETX/DETY from a simple map
    ev = [(p, p % 6 + 1, p // 6 + 1, 0, 12001, 50.0) for p in range(36)]
    ev += [(3, 4, 1, 0, 12001, 250.0),     # a second Hp event in pixel 3 (second GTI)
           (3, 4, 1, 1, 12001, 50.0),      # Mp grade: screened by ITYPE == 0
           (5, 6, 1, 0, 12001, 150.0),     # between the GTIs: dropped
           (12, 1, 3, 0, 12001, 60.0)]     # calibration pixel: excluded
    path = _write_resolve_pixels(tmp_path / "rsl_p0px1000_cl.evt", ev)
    cube = read_events(path, energy_edges=[5.9, 6.1, 6.3], center=(RA0, DEC0), bin_by="pixel",
                       exclude_pixels=(12, 20))
    assert cube.dims == ("pixel", "energy") and 12 not in cube["pixel"].values and 20 not in cube["pixel"].values
    assert cube.sizes["pixel"] == 34
    counts = dict(zip(cube["pixel"].values.tolist(), cube.values[:, 0].tolist()))
    assert counts[3] == 2 and counts[5] == 1 and counts[0] == 1 and cube.values[:, 1].sum() == 0
    assert cube.attrs["exposure"] == pytest.approx(200.0 * 0.9)
    # detector positions: (DETX - 3.5) * 30 arcsec; roll from PA_NOM; array centre from RA_PNT/DEC_PNT
    k = list(cube["pixel"].values).index(7)   # DETX 2, DETY 2
    assert cube["det_x"].values[k] == -45.0 and cube["det_y"].values[k] == -45.0
    assert cube.attrs["roll"] == 17.0 and cube.attrs["roll_source"] == "PA_NOM"
    ax, ay = cube.attrs["array_center"]
    assert ax == pytest.approx(-0.001 * 3600 * np.cos(np.deg2rad(DEC0)), rel=1e-4) and abs(ay) < 1e-3
    import xfusion

    obs = xfusion.observation(cube, energy_edges=[5.9, 6.1, 6.3], pixel_size=30.0, exposure=cube.attrs["exposure"])
    assert float(obs["roll"]) == 17.0 and obs["det_x"].values[k] == -45.0
    # a pixel without events has no known position: a clear error naming it
    path2 = _write_resolve_pixels(tmp_path / "missing.evt", ev[:30])
    with pytest.raises(ValueError, match="pixel 30 has no events"):
        read_events(path2, energy_edges=[5.9, 6.1], center=(RA0, DEC0), bin_by="pixel")


def test_tangent_point_on_the_far_side_bins_nothing(tmp_path):
    """Session 28: positions 90 deg or more from ``center`` have no gnomonic projection; the formula put the far
    hemisphere back onto the field (every event of a file binned for the antipodal tangent point)."""
    x, y, e, _ = _events()
    path = _write(tmp_path / "pn.evt", "xmm_epic", x, y, e, {}, {"EXPOSURE": 1000.0})
    near = read_events(path, energy_edges=E_EDGES, pixel_size=PIX, center=(RA0, DEC0), shape=SHAPE, filters={})
    with pytest.warns(UserWarning, match="none of its 7 events was binned into the cube"):
        far = read_events(path, energy_edges=E_EDGES, pixel_size=PIX, center=((RA0 + 180.0) % 360.0, -DEC0),
                          shape=SHAPE, filters={})
    assert near.attrs["n_binned"] > 0 and far.attrs["n_binned"] == 0 and int(far.sum()) == 0


@pytest.mark.parametrize("binned_about", ["grid centre", "pointing"])
def test_resolve_position_angle_is_turned_into_the_grid_frame(tmp_path, binned_about):
    """Session 29 red team: PA_NOM (position angle at the pointing, east of the local north there) was used as the
    roll in the tangent frame of ``center`` without the turn of north between the pointing and that tangent point:
    3.5 arcsec off at Dec 85 for a pointing 10' east of the grid centre when binned about the grid centre."""
    from astropy.coordinates import SkyCoord

    import xfusion
    import xarray as xr
    from xfusion.grid import _radec_of, footprint_geometry
    from xfusion.operators.footprint import detector_corners

    c0, pa = (150.0, 85.0), 30.0
    ra_p, dec_p = _radec_of(*c0, -600.0, 0.0)
    ev = [(p, p % 6 + 1, p // 6 + 1, 0, 12001, 50.0) for p in range(36)]
    path = _write_resolve_pixels(tmp_path / "rsl.evt", ev, {"RA_PNT": ra_p, "DEC_PNT": dec_p, "PA_NOM": pa})
    center = c0 if binned_about == "grid centre" else (ra_p, dec_p)
    cube = read_events(path, energy_edges=[5.9, 6.1], center=center, bin_by="pixel", exclude_pixels=())
    assert cube.attrs["roll"] == pa  # stored as given: the position angle at the array centre
    obs = xfusion.observation(cube, energy_edges=[5.9, 6.1], pixel_size=30.0, exposure=1.0)
    grid = xr.Dataset(coords={"x": ("x", [0.0], {"center_ra": c0[0], "center_dec": c0[1], "pixel_size": 4.0})})
    (cx, cy), roll = footprint_geometry(grid, obs)
    got = detector_corners(obs.det_x.values, obs.det_y.values, 30.0, roll, (cx, cy)).mean(axis=1)
    # truth (astropy): a gnomonic detector frame at the pointing, +DETY at PA east of north, +DETX to the west
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval, w.wcs.crpix = [ra_p, dec_p], [1.0, 1.0]
    a = np.deg2rad(pa)
    w.wcs.cd = np.array([[-np.cos(a), np.sin(a)], [np.sin(a), np.cos(a)]]) / 3600.0
    sky = w.pixel_to_world(obs.det_x.values, obs.det_y.values)
    g = WCS(naxis=2)
    g.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    g.wcs.crval, g.wcs.crpix, g.wcs.cdelt = list(c0), [1.0, 1.0], [-1 / 3600.0, 1 / 3600.0]
    tx, ty = g.world_to_pixel(SkyCoord(sky.ra, sky.dec))
    assert np.hypot(got[:, 0] - tx, got[:, 1] - ty).max() < 0.01
    assert roll == pytest.approx(28.096, abs=1e-3)


def test_center_as_quantities_or_skycoord(tmp_path):
    """Session 29 red team: read_events took float(center[0]): a Quantity pair or a SkyCoord (which
    xfusion.observation(center=) accepts) failed with astropy's TypeError."""
    import astropy.units as u
    from astropy.coordinates import SkyCoord

    x, y, e, _ = _events()
    path = _write(tmp_path / "pn.evt", "xmm_epic", x, y, e, {}, {"EXPOSURE": 1000.0})
    ref = read_events(path, energy_edges=E_EDGES, pixel_size=PIX, center=(RA0, DEC0), shape=SHAPE, filters={})
    for c in ((RA0 * u.deg, DEC0 * u.deg), SkyCoord(RA0 * u.deg, DEC0 * u.deg), (RA0 * 60 * u.arcmin, DEC0 * u.deg)):
        cube = read_events(path, energy_edges=E_EDGES, pixel_size=PIX, center=c, shape=SHAPE, filters={})
        np.testing.assert_array_equal(cube.values, ref.values)
        assert cube.attrs["center"] == pytest.approx(ref.attrs["center"], abs=1e-12)
