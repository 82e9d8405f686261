"""Tests for xfusion.io.psf."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from astropy.io import fits

from xfusion.io.psf import psf_pixel_scale, read_psf, read_psf_stack, resample_psf

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CHANDRA_PSF = DATA / "psf_f1_norm_0.25pix.fits"
ACIS_PIXEL = 0.492  # arcsec


def _need():
    if not CHANDRA_PSF.exists():
        pytest.skip(f"real data file {CHANDRA_PSF.name} not found in {DATA} "
                    "(expected ../shared/data relative to the repo root)")


def _centroid(psf):
    w = psf / psf.sum()
    return (float((w.sum("psf_y") * w["psf_x"]).sum()),
            float((w.sum("psf_x") * w["psf_y"]).sum()))


def _check_conventions(psf):
    assert psf.dims == ("psf_x", "psf_y")
    nx, ny = psf.shape
    assert nx % 2 == 1 and ny % 2 == 1
    assert psf["psf_x"].values[nx // 2] == 0.0
    assert psf["psf_y"].values[ny // 2] == 0.0
    np.testing.assert_allclose(psf["psf_x"].values, -psf["psf_x"].values[::-1], atol=1e-12)
    assert abs(float(psf.sum()) - 1.0) < 1e-12
    assert psf["psf_x"].attrs["units"] == "arcsec"
    assert psf.attrs["units"] == "1"


def _gaussian_hdu(n=41, sigma_pix=3.0, cdelt_deg=None, cd=False, keyword=None,
                  centre=None, transpose_check=False):
    yy, xx = np.indices((n, n), dtype=float)
    cx, cy = ((n - 1) / 2, (n - 1) / 2) if centre is None else centre
    img = np.exp(-0.5 * ((xx - cx) ** 2 + (yy - cy) ** 2) / sigma_pix ** 2)
    hdu = fits.PrimaryHDU(img)
    if cdelt_deg is not None:
        h = hdu.header
        h["CTYPE1"], h["CTYPE2"] = "RA---TAN", "DEC--TAN"
        h["CRVAL1"], h["CRVAL2"] = 150.0, 2.0
        h["CRPIX1"], h["CRPIX2"] = cx + 1, cy + 1
        if cd:
            h["CD1_1"], h["CD1_2"], h["CD2_1"], h["CD2_2"] = -cdelt_deg, 0.0, 0.0, cdelt_deg
        else:
            h["CDELT1"], h["CDELT2"] = -cdelt_deg, cdelt_deg
    if keyword is not None:
        hdu.header[keyword[0]] = keyword[1]
    return hdu


# ---------------------------------------------------------------------------
# real Chandra PSF
# ---------------------------------------------------------------------------
def test_chandra_psf_native():
    _need()
    psf = read_psf(CHANDRA_PSF)
    _check_conventions(psf)
    # 0.25 ACIS pixel = 0.123 arcsec (CDELT = 3.41667e-5 deg)
    assert psf.attrs["pixel_size"] == pytest.approx(0.25 * ACIS_PIXEL, rel=1e-6)
    assert psf.attrs["input_pixel_size"] == pytest.approx(0.123, rel=1e-6)
    np.testing.assert_allclose(np.diff(psf["psf_x"].values), 0.123, rtol=1e-6)
    assert psf.attrs["enclosed_fraction"] == pytest.approx(1.0)
    # peak-centred: the brightest pixel is at (0, 0)
    ix, iy = np.unravel_index(int(np.argmax(psf.values)), psf.shape)
    assert (ix, iy) == (psf.shape[0] // 2, psf.shape[1] // 2)
    # transposed correctly: FITS peak is at (row=128, col=127) -> x=127, y=128
    data = fits.getdata(CHANDRA_PSF)
    assert psf.attrs["center_pixel"] == (127.0, 128.0)
    assert data[128, 127] == data.max()
    # the centroid is within one native pixel of the peak
    cx, cy = _centroid(psf)
    assert abs(cx) < 0.123 and abs(cy) < 0.123


def test_chandra_psf_resample_coarser():
    _need()
    native = read_psf(CHANDRA_PSF)
    coarse = resample_psf(native, ACIS_PIXEL)
    _check_conventions(coarse)
    assert coarse.attrs["pixel_size"] == ACIS_PIXEL
    # the default stamp covers the whole input: all flux conserved
    assert coarse.attrs["enclosed_fraction"] == pytest.approx(1.0, abs=1e-12)
    cx0, cy0 = _centroid(native)
    cx, cy = _centroid(coarse)
    # centroid kept near 0 (a fraction of the output pixel) and close to input
    assert abs(cx) < 0.25 * ACIS_PIXEL and abs(cy) < 0.25 * ACIS_PIXEL
    assert abs(cx - cx0) < 0.05 * ACIS_PIXEL and abs(cy - cy0) < 0.05 * ACIS_PIXEL
    # read_psf with pixel_size and a small odd size
    small = read_psf(CHANDRA_PSF, pixel_size=ACIS_PIXEL, size=21)
    _check_conventions(small)
    assert small.shape == (21, 21)
    assert 0.95 < small.attrs["enclosed_fraction"] < 1.0
    # the core flux of the coarse stamps agrees
    np.testing.assert_allclose(
        small.values * small.attrs["enclosed_fraction"],
        coarse.values[coarse.shape[0] // 2 - 10:coarse.shape[0] // 2 + 11,
                      coarse.shape[1] // 2 - 10:coarse.shape[1] // 2 + 11],
        atol=1e-12)


def test_chandra_psf_centroid_centre_and_crop():
    _need()
    psf = read_psf(CHANDRA_PSF, center="centroid")
    _check_conventions(psf)
    cx, cy = _centroid(psf)
    assert abs(cx) < 0.01 * 0.123 and abs(cy) < 0.01 * 0.123
    crop = read_psf(CHANDRA_PSF, size=31)
    assert crop.shape == (31, 31)
    assert 0.5 < crop.attrs["enclosed_fraction"] < 1.0
    _check_conventions(crop)
    with pytest.raises(ValueError, match="outside"):
        read_psf(CHANDRA_PSF, center="crpix")  # CRPIX2 = 280.5 is off-image
    with pytest.raises(ValueError, match="odd"):
        read_psf(CHANDRA_PSF, size=30)


# ---------------------------------------------------------------------------
# synthetic
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("cd", [False, True])
def test_pixel_scale_from_wcs(cd):
    hdu = _gaussian_hdu(cdelt_deg=0.5 / 3600, cd=cd)
    assert psf_pixel_scale(hdu.header) == pytest.approx(0.5)
    psf = read_psf(hdu)
    assert psf.attrs["pixel_size"] == pytest.approx(0.5)
    _check_conventions(psf)


def test_pixel_scale_keyword_and_errors():
    hdu = _gaussian_hdu(keyword=("PIXSIZE", 0.25))
    assert read_psf(hdu).attrs["pixel_size"] == 0.25
    bare = _gaussian_hdu()
    with pytest.raises(ValueError, match="cannot determine the pixel size.*input_pixel_size"):
        read_psf(bare)
    assert read_psf(bare, input_pixel_size=2.0).attrs["pixel_size"] == 2.0


def test_transpose_x_y():
    # elongated source: long along x (FITS columns)
    n = 41
    yy, xx = np.indices((n, n), dtype=float)
    img = np.exp(-0.5 * ((xx - 20) ** 2 / 6.0 ** 2 + (yy - 20) ** 2 / 1.5 ** 2))
    img[20, 30] = 5.0  # bright spot 10 px to +x of the centre
    img[20, 20] = 10.0  # peak
    hdu = fits.PrimaryHDU(img)
    psf = read_psf(hdu, input_pixel_size=1.0)
    assert float(psf.sel(psf_x=10.0, psf_y=0.0)) == pytest.approx(5.0 / img.sum())


def _sky_psf_hdu(data, cd1, cd2, pc=None):
    h = fits.Header()
    h["CTYPE1"], h["CTYPE2"], h["CUNIT1"], h["CUNIT2"] = "RA---TAN", "DEC--TAN", "deg", "deg"
    h["CRVAL1"], h["CRVAL2"], h["CRPIX1"], h["CRPIX2"] = 150.0, 30.0, 11, 11
    h["CDELT1"], h["CDELT2"] = cd1, cd2
    h.update(pc or {})
    return fits.PrimaryHDU(data, h)


@pytest.mark.parametrize("case", ["standard", "columns east", "rows south", "both"])
@pytest.mark.parametrize("center", ["peak", "crpix", "centroid"])
def test_wcs_orientation_flips_to_west_north(case, center):
    """Session 29 red team: read_psf took psf_x = +column and psf_y = +row whatever the celestial WCS said, so a
    PSF image with CDELT1 > 0 (columns east) or CDELT2 < 0 (rows south) came out mirrored."""
    s = 1.0 / 3600
    img = np.zeros((21, 21))  # rows = y, columns = x; standard orientation: columns west, rows north
    img[10, 10], img[10, 14], img[13, 10] = 0.6, 0.3, 0.1  # 0.3: 4" west of the peak, 0.1: 3" north
    data, cd1, cd2 = {"standard": (img, -s, s), "columns east": (img[:, ::-1], s, s),
                      "rows south": (img[::-1], -s, -s), "both": (img[::-1, ::-1], s, -s)}[case]
    psf = read_psf(_sky_psf_hdu(data, cd1, cd2), center=center)
    at = {round(float(psf.sel(psf_x=x, psf_y=y, method="nearest")), 6): (x, y) for x, y in
          ((4.0, 0.0), (0.0, 3.0), (-4.0, 0.0), (0.0, -3.0))}
    if center == "centroid":  # sub-pixel centre (1.2", 0.3") west/north of the peak: the taps are resampled
        assert _centroid(psf) == pytest.approx((0.0, 0.0), abs=1e-9)
        assert float(psf.where(psf.psf_x > 1.5, 0.0).sum()) == pytest.approx(0.3, abs=1e-9)  # west: the 0.3 tap
        assert float(psf.where(psf.psf_y > 1.5, 0.0).sum()) == pytest.approx(0.1, abs=1e-9)  # north: the 0.1 tap
        return
    assert at[0.3] == (4.0, 0.0) and at[0.1] == (0.0, 3.0), case
    assert psf.attrs["wcs_flips"] == {"standard": "none", "columns east": "columns (ran east)",
                                      "rows south": "rows (ran south)",
                                      "both": "columns (ran east), rows (ran south)"}[case]


def test_wcs_rotation_refused():
    s = 1.0 / 3600
    img = np.zeros((21, 21))
    img[10, 10] = 1.0
    rot = {"PC1_1": 0.0, "PC1_2": -1.0, "PC2_1": 1.0, "PC2_2": 0.0}
    with pytest.raises(ValueError, match="WCS is rotated: its columns run 90 deg from the east-west line.*reproject"):
        read_psf(_sky_psf_hdu(img, -s, s, rot))
    tiny = {"PC1_1": 1.0, "PC1_2": -1e-9, "PC2_1": 1e-9, "PC2_2": 1.0}  # rounding-level terms: accepted
    assert read_psf(_sky_psf_hdu(img, -s, s, tiny)).attrs["wcs_flips"] == "none"


def test_resample_flux_and_shift():
    hdu = _gaussian_hdu(n=61, sigma_pix=4.0, centre=(30.3, 29.6))
    psf = read_psf(hdu, input_pixel_size=0.1, center="centroid", pixel_size=0.37)
    _check_conventions(psf)
    assert psf.attrs["enclosed_fraction"] == pytest.approx(1.0, abs=1e-12)
    cx, cy = _centroid(psf)
    assert abs(cx) < 0.02 * 0.37 and abs(cy) < 0.02 * 0.37
    # finer resampling also conserves flux
    fine = resample_psf(psf, 0.1, size=51)
    _check_conventions(fine)
    assert fine.attrs["enclosed_fraction"] == pytest.approx(1.0, abs=1e-6)
    # truncation is reported
    cut = resample_psf(psf, 0.37, size=3)
    assert cut.shape == (3, 3)
    assert cut.attrs["enclosed_fraction"] < 0.9


def test_resample_exact_rebin():
    # 2x2 block sum when the grid aligns exactly
    rng = np.random.default_rng(0)
    vals = rng.random((9, 9))
    coords = (np.arange(9) - 4) * 1.0
    psf = xr.DataArray(vals, dims=("psf_x", "psf_y"),
                       coords={"psf_x": coords, "psf_y": coords})
    out = resample_psf(psf, 3.0)
    assert out.shape == (3, 3)
    expected = vals.reshape(3, 3, 3, 3).sum(axis=(1, 3))
    np.testing.assert_allclose(out.values, expected / expected.sum())


def test_psf_stack():
    hdus = [_gaussian_hdu(n=31, sigma_pix=s, cdelt_deg=0.5 / 3600) for s in (2.0, 3.0)]
    hdus.append(_gaussian_hdu(n=81, sigma_pix=8.0, cdelt_deg=0.25 / 3600))
    stack = read_psf_stack(hdus, [1.0, 3.0, 6.0], energy_edges=[[0.5, 2], [2, 4], [4, 8]])
    assert stack.dims == ("psf_energy", "psf_x", "psf_y")
    assert stack["psf_energy"].attrs["units"] == "keV"
    np.testing.assert_array_equal(stack["psf_energy"], [1.0, 3.0, 6.0])
    np.testing.assert_array_equal(stack["psf_energy_hi"], [2, 4, 8])
    assert stack.attrs["pixel_size"] == pytest.approx(0.5)
    assert stack.shape[1] % 2 == 1 and stack.shape[1] == stack.shape[2]
    np.testing.assert_allclose(stack.sum(("psf_x", "psf_y")), 1.0)
    for i in range(3):
        cx, cy = _centroid(stack.isel(psf_energy=i))
        assert abs(cx) < 1e-6 and abs(cy) < 1e-6
    with pytest.raises(ValueError, match="one band-centre energy"):
        read_psf_stack(hdus, [1.0, 2.0])


def test_psf_stack_real_file():
    _need()
    stack = read_psf_stack([CHANDRA_PSF, CHANDRA_PSF], [1.5, 6.4],
                           pixel_size=ACIS_PIXEL, size=15)
    assert stack.shape == (2, 15, 15)
    np.testing.assert_allclose(stack.sum(("psf_x", "psf_y")), 1.0)
