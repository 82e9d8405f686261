"""JWST imager + IFU: filter operator adjoints, filters and cross-calibration (SyFu eq. 6-7), wavelength units
refused next to keV, i2d/s3d readers on files written with the pipeline's layout, the toy fuses, SyFu baseline."""

import numpy as np
import pytest
from astropy.io import fits

import xfusion
from xfusion import jwst, metrics
from xfusion.io.jwst import read_nircam_i2d, read_nirspec_s3d, stack_filters
from xfusion.observation import check_spectral_units, observation, spectral_unit, validate
from xfusion.operators.dottest import dottest
from xfusion.syfu import syfu

EDGES = np.linspace(1.66, 2.30, 33)
LAM = 0.5 * (EDGES[1:] + EDGES[:-1])


@pytest.fixture(scope="module")
def toy():
    return jwst.make_toy(seed=1, size=24, n_channels=48)


def test_filter_and_ifu_operators_are_adjoint():
    shape = (12, 9, EDGES.size - 1)
    R = jwst.filter_response(list(jwst.FILTERS), EDGES)
    mx = jwst.imager_model(R, shape)
    assert mx.data_shape == (12, 9, 5)
    assert dottest(mx, shape) < 1e-10 and dottest(mx, shape, np.float32) < 1e-4
    my = jwst.ifu_model(jwst.ifu_psf_stack([1.7, 2.0, 2.3], 0.1 / 3), LAM, shape)
    assert my.data_shape == (4, 3, 32)
    assert dottest(my, shape) < 1e-10
    # a flat cube of 1 MJy/sr is 1 MJy/sr in every filter and (away from the edges) in every IFU spaxel
    np.testing.assert_allclose(mx.forward(np.ones(shape)), 1.0, rtol=1e-12)
    big = (18, 18, shape[2])
    my = jwst.ifu_model(jwst.ifu_psf_stack([1.7, 2.0, 2.3], 0.1 / 3), LAM, big)
    np.testing.assert_allclose(my.forward(np.ones(big))[2:-2, 2:-2, :], 1.0, rtol=1e-9)


def test_filter_response_overlaps_and_refuses_filters_outside_the_grid():
    R = jwst.filter_response(list(jwst.FILTERS), EDGES)
    np.testing.assert_allclose(R.sum(axis=0), 1.0)
    # F200W overlaps all the others; a narrow filter's weight sits at its pivot
    f200 = list(jwst.FILTERS).index("F200W")
    for j in range(5):
        if j != f200:
            assert np.sum((R[:, f200] > 0.01) & (R[:, j] > 0.01)) >= 1
    f187 = list(jwst.FILTERS).index("F187N")
    assert abs(LAM[np.argmax(R[:, f187])] - jwst.FILTERS["F187N"].pivot) < 0.02
    with pytest.raises(ValueError, match="F182M has only .* inside .*symmetric fusion"):
        jwst.filter_response(["F182M"], np.linspace(1.85, 2.3, 20))
    with pytest.raises(ValueError, match="unknown filter 'F444W'"):
        jwst.filter_response(["F444W"], EDGES)
    # tabulated curves are accepted
    wl = np.linspace(1.9, 2.1, 50)
    Rt = jwst.filter_response(["MINE"], EDGES, {"MINE": (wl, np.ones_like(wl))})
    assert Rt[:, 0].sum() == pytest.approx(1.0) and Rt[LAM < 1.88, 0].sum() == 0


def test_cross_calibration_recovers_the_pipeline_mismatch(toy):
    imager, ifu, truth = toy
    R = jwst.filter_response(list(imager["filter"].values), jwst._edges(ifu))
    factors, Rc = jwst.cross_calibrate(imager["data"].values, ifu["data"].values, R)
    # recovered to the flux exchanged across the small field's edges by the two different PSFs (< 3 %)
    np.testing.assert_allclose(factors, truth["calibration"].values, rtol=0.03)
    # eq. 6 holds with the calibrated response
    mean_h = ifu["data"].values.mean(axis=(0, 1))
    np.testing.assert_allclose(mean_h @ Rc, imager["data"].values.mean(axis=(0, 1)), rtol=1e-12)
    with pytest.raises(ValueError, match="response shape"):
        jwst.cross_calibrate(imager["data"].values, ifu["data"].values, R[:-1])


def test_wavelength_axis_refused_next_to_kev(toy, small_toy):
    imager, ifu, _ = toy
    x_obs = small_toy[0]
    assert spectral_unit(ifu) == "um" and spectral_unit(x_obs) == "keV"
    with pytest.raises(ValueError, match=r"spectral axes do not match.*keV \(energy\).*um \(wavelength\).*convert"):
        check_spectral_units(x_obs, ifu)
    with pytest.raises(ValueError, match="spectral axes do not match"):
        xfusion.fusion_grid(x_obs, ifu)
    with pytest.raises(ValueError, match="spectral axes do not match"):
        jwst.fuse_jwst(x_obs, ifu)
    # a counts observation whose energy axis is really in um is refused with the way out
    bad = x_obs.copy()
    for c in ("energy", "energy_lo", "energy_hi"):
        bad[c].attrs["units"] = "um"
    bad.attrs.pop("spectral_unit", None)
    with pytest.raises(ValueError, match="wavelength axis .*xfusion.jwst.fuse_jwst"):
        validate(bad)
    # an unknown spectral unit is refused; keV with keV (X-ray) is unchanged
    odd = ifu.copy()
    odd.attrs["spectral_unit"] = "Hz"
    with pytest.raises(ValueError, match="'Hz'.*xfusion knows keV"):
        spectral_unit(odd)
    assert check_spectral_units(small_toy[0], small_toy[1]) == "keV"
    # wavelength edges given to the X-ray builder are not silently taken as keV
    import astropy.units as u

    with pytest.raises(ValueError, match="um.*cannot be converted to keV"):
        observation(np.ones((4, 4, 3)), dims=("x", "y", "energy"), energy_edges=[1.7, 1.8, 1.9, 2.0] * u.um,
                    pixel_size=1.0, exposure=10.0)


def _write(path, sci, err, dq, hdr_sci, primary):
    ph = fits.PrimaryHDU()
    for k, v in primary.items():
        ph.header[k] = v
    hdus = [ph]
    for name, arr in (("SCI", sci), ("ERR", err), ("DQ", dq)):
        h = fits.ImageHDU(arr, name=name)
        if name in ("SCI", "ERR"):
            for k, v in hdr_sci.items():
                h.header[k] = v
        hdus.append(h)
    hdus.append(fits.BinTableHDU.from_columns([fits.Column(name="meta", format="10A", array=["asdf"])],
                                              name="ASDF"))
    fits.HDUList(hdus).writeto(path)


def _celestial(pixel_deg, crpix=(5.0, 4.0)):
    return {"CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN", "CUNIT1": "deg", "CUNIT2": "deg",
            "CRVAL1": 83.8375, "CRVAL2": -5.4169, "CRPIX1": crpix[0], "CRPIX2": crpix[1],
            "CDELT1": -pixel_deg, "CDELT2": pixel_deg, "PC1_1": 1.0, "PC1_2": 0.0, "PC2_1": 0.0, "PC2_2": 1.0,
            "BUNIT": "MJy/sr", "PIXAR_SR": (pixel_deg * np.pi / 180) ** 2}


def test_readers_on_files_with_the_pipeline_layout(tmp_path):
    rng = np.random.default_rng(0)
    # i2d: (ny, nx) = (6, 9), one NaN and one DQ-flagged pixel
    sci = rng.random((6, 9)) * 10
    err = 0.1 + rng.random((6, 9))
    dq = np.zeros((6, 9), np.uint32)
    sci[2, 3] = np.nan
    dq[4, 7] = 1
    px = 0.031 / 3600
    for f in ("F187N", "F212N"):
        _write(tmp_path / f"jw01288_{f.lower()}_i2d.fits", sci, err, dq, _celestial(px),
               {"TELESCOP": "JWST", "INSTRUME": "NIRCAM", "FILTER": f, "TARGNAME": "d203-506"})
    ims = [read_nircam_i2d(tmp_path / f"jw01288_{f.lower()}_i2d.fits") for f in ("F187N", "F212N")]
    im = stack_filters(ims)
    assert list(im["filter"].values) == ["F187N", "F212N"] and im.attrs["instrument"] == "NIRCAM"
    assert im["x"].attrs["pixel_size"] == pytest.approx(0.031, rel=1e-9)
    assert im["data"].dims == ("x", "y", "filter") and im.sizes["x"] == 9 and im.sizes["y"] == 6
    assert float(im["data"].isel(x=1, y=0, filter=0)) == pytest.approx(sci[0, 1])  # x = FITS axis 1
    np.testing.assert_allclose(im["variance"].isel(filter=1).values[0, 0], err[0, 0] ** 2)
    assert not im["mask"].isel(x=3, y=2, filter=0) and not im["mask"].isel(x=7, y=4, filter=0)
    assert int(im["mask"].sum()) == 2 * (54 - 2)
    assert float(im["x"].values[4]) == 0.0 and float(im["y"].values[3]) == 0.0  # CRPIX (5, 4) -> offset 0
    assert im.attrs["pixar_sr"] == pytest.approx((px * np.pi / 180) ** 2)
    from astropy.wcs import WCS

    assert WCS(fits.Header.fromstring(im.attrs["wcs"])).wcs.crval[0] == pytest.approx(83.8375)

    # s3d: (nwave, ny, nx) = (20, 5, 4), linear wavelength in um
    cube = rng.random((20, 5, 4)) + 1
    cerr = np.full(cube.shape, 0.05)
    cdq = np.zeros(cube.shape, np.uint32)
    cdq[3, 1, 2] = 513
    hdr = _celestial(0.1 / 3600, (2.0, 3.0))
    hdr.update({"CTYPE3": "WAVE", "CUNIT3": "um", "CRVAL3": 1.66, "CDELT3": 0.000355, "CRPIX3": 1.0,
                "PC3_3": 1.0})
    _write(tmp_path / "jw01288_s3d.fits", cube, cerr, cdq, hdr,
           {"TELESCOP": "JWST", "INSTRUME": "NIRSPEC", "GRATING": "G235H", "FILTER": "F170LP"})
    ifu = read_nirspec_s3d(tmp_path / "jw01288_s3d.fits")
    assert ifu["data"].dims == ("x", "y", "energy") and ifu["data"].shape == (4, 5, 20)
    assert spectral_unit(ifu) == "um" and ifu["energy"].attrs["units"] == "um"
    np.testing.assert_allclose(ifu["energy"].values[:2], [1.66, 1.66 + 0.000355])
    np.testing.assert_allclose(ifu["energy_hi"].values - ifu["energy_lo"].values, 0.000355)
    assert float(ifu["data"].isel(x=2, y=1, energy=5)) == pytest.approx(cube[5, 1, 2])
    assert not ifu["mask"].isel(x=2, y=1, energy=3) and int((~ifu["mask"]).sum()) == 1
    assert ifu.attrs["grating"] == "G235H" and ifu["x"].attrs["pixel_size"] == pytest.approx(0.1)

    # wrong units and a tabulated wavelength axis are refused with the fix
    hdr_bad = dict(hdr, BUNIT="MJy")
    _write(tmp_path / "bad_s3d.fits", cube, cerr, cdq, hdr_bad, {"INSTRUME": "NIRSPEC"})
    with pytest.raises(ValueError, match="BUNIT='MJy'.*MJy/sr.*PIXAR_SR"):
        read_nirspec_s3d(tmp_path / "bad_s3d.fits")
    _write(tmp_path / "tab_s3d.fits", cube, cerr, cdq, dict(hdr, CTYPE3="WAVE-TAB"), {"INSTRUME": "NIRSPEC"})
    with pytest.raises(ValueError, match="WAVE-TAB.*linear grid"):
        read_nirspec_s3d(tmp_path / "tab_s3d.fits")


def test_toy_fuses_and_passes_the_syfu_checks(toy):
    imager, ifu, truth = toy
    res = jwst.fuse_jwst(imager, ifu, max_iter=60)
    z = res["flux"].values
    assert res["flux"].dims == ("x", "y", "energy") and res.attrs["spectral_unit"] == "um"
    assert res["energy"].attrs["units"] == "um"
    target = truth["flux"].values
    # better than the upsampled IFU, in NMSE and SAM
    up = np.repeat(np.repeat(ifu["data"].values, 3, 0), 3, 1)
    assert metrics.nmse(target, z) > metrics.nmse(target, up) + 4
    assert metrics.asam(target, z) < metrics.asam(target, up)
    v = metrics.jwst_validation(imager["data"].values, ifu["data"].values, z, res["response"].values,
                                filters=list(imager["filter"].values))
    assert v["min_psnr_db"] > 28 and v["mean_spectrum_max_rel_error"] < 0.05
    np.testing.assert_allclose(res["cross_calibration"].values, truth["calibration"].values, rtol=0.03)
    _, held = jwst.held_out_check(imager, ifu, "F187N", max_iter=30)
    assert held["F187N"]["psnr_db"] > 20 and np.isfinite(held["F187N"]["ssim"])
    with pytest.raises(ValueError, match="some, not all"):
        jwst.held_out_check(imager, ifu, list(imager["filter"].values))


def test_syfu_baseline_runs_and_improves_on_its_start(toy):
    imager, ifu, truth = toy
    edges = jwst._edges(ifu)
    lam = 0.5 * (edges[1:] + edges[:-1])
    px = float(imager["x"].attrs["pixel_size"])

    def ks(fwhm):
        k = [jwst.gaussian_kernel(f, px) for f in fwhm]
        n = max(a.shape[0] for a in k)
        return np.stack([np.pad(a, (n - a.shape[0]) // 2) for a in k])

    _, R = jwst.cross_calibrate(imager["data"].values, ifu["data"].values,
                                jwst.filter_response(list(imager["filter"].values), edges))
    out = syfu(imager["data"].values, ifu["data"].values, R, ks(jwst.nircam_fwhm(lam)), ks(jwst.nirspec_fwhm(lam)),
               k=3, n_iter=40)
    up = np.repeat(np.repeat(ifu["data"].values, 3, 0), 3, 1)
    assert out["k"] == 3 and out["n_iter"] <= 40 and out["gamma"] > 0 and out["mu"] > 0
    assert metrics.nmse(truth["flux"].values, out["at_imager_resolution"]) > metrics.nmse(truth["flux"].values, up)


def test_ifu_model_with_margin_is_adjoint_and_matches_scipy():
    from scipy.signal import fftconvolve

    shape = (18, 15, 8)
    lam = np.linspace(1.7, 2.2, 8)
    my = jwst.ifu_model(jwst.ifu_psf_stack([1.7, 2.2], 0.1 / 3), lam, shape, margin=1)
    assert my.data_shape == (4, 3, 8) and dottest(my, shape) < 1e-10
    z = np.random.default_rng(0).random(shape)
    k = jwst.ifu_psf_stack([1.7], 0.1 / 3).values[0]
    ref = fftconvolve(z[..., 0], k, mode="same").reshape(6, 3, 5, 3).mean(axis=(1, 3))[1:-1, 1:-1]
    np.testing.assert_allclose(my.forward(z)[..., 0], ref, rtol=1e-10)


def _toy_to_fits(imager, ifu, folder):
    """The toy written as pipeline products: one i2d per filter (SCI/ERR/DQ, TAN WCS, MJy/sr) and one s3d."""
    paths = []
    for f in imager["filter"].values:
        im = imager.sel(filter=f)
        px = float(imager["x"].attrs["pixel_size"])
        hdr = _celestial(px / 3600, ((imager.sizes["x"] + 1) / 2, (imager.sizes["y"] + 1) / 2))
        p = folder / f"toy_{str(f).lower()}_i2d.fits"
        _write(p, im["data"].values.T, np.sqrt(im["variance"].values).T, np.zeros(im["data"].shape[::-1], np.uint32),
               hdr, {"INSTRUME": "NIRCAM", "FILTER": str(f)})
        paths.append(str(p))
    e = jwst._edges(ifu)
    hdr = _celestial(float(ifu["x"].attrs["pixel_size"]) / 3600, ((ifu.sizes["x"] + 1) / 2, (ifu.sizes["y"] + 1) / 2))
    hdr.update({"CTYPE3": "WAVE", "CUNIT3": "um", "CRVAL3": 0.5 * (e[0] + e[1]), "CDELT3": e[1] - e[0], "CRPIX3": 1.0})
    cube = ifu["data"].values.transpose(2, 1, 0)
    s3d = folder / "toy_s3d.fits"
    _write(s3d, cube, np.sqrt(ifu["variance"].values).transpose(2, 1, 0), np.zeros(cube.shape, np.uint32), hdr,
           {"INSTRUME": "NIRSPEC", "GRATING": "G235H", "FILTER": "F170LP"})
    return paths, str(s3d)


def test_cli_fuses_pipeline_files_and_reports_the_checks(toy, tmp_path, capsys):
    from xfusion import cli

    imager, ifu, _ = toy
    i2d, s3d = _toy_to_fits(imager, ifu, tmp_path)
    # the files read back as the toy
    back = stack_filters([read_nircam_i2d(p) for p in i2d])
    np.testing.assert_allclose(back["data"].values, imager["data"].values)
    np.testing.assert_allclose(read_nirspec_s3d(s3d)["energy_hi"].values, ifu["energy_hi"].values, rtol=1e-9)
    out = tmp_path / "fused.zarr"
    rc = cli.main(["jwst", "--imager", *i2d, "--ifu", s3d, "--held-out", "F212N", "--max-iter", "25", "-o", str(out)])
    text = capsys.readouterr().out
    assert rc == 0 and "cross-calibration factors" in text and "held out" in text and out.exists()
    fused = xfusion.io.zarr.open(out)
    assert fused["flux"].dims == ("x", "y", "energy") and fused["energy"].attrs["units"] == "um"
    # a second run on an output in use is refused before it fits (session 31), and writes nothing
    with xfusion.io.zarr.output_lock(tmp_path / "busy.zarr"):
        capsys.readouterr()
        assert cli.main(["jwst", "--imager", *i2d, "--ifu", s3d, "-o", str(tmp_path / "busy.zarr")]) == 3
        assert "is in use by process" in capsys.readouterr().err
    assert not (tmp_path / "busy.zarr").exists()
    # misaligned fields are refused (exit 3, one line)
    shifted = tmp_path / "shifted"
    shifted.mkdir()
    i2d2, _ = _toy_to_fits(imager.assign_coords(x=imager["x"] + 0.05), ifu, shifted)
    with fits.open(i2d2[0], mode="update") as h:
        h["SCI"].header["CRVAL1"] = 83.8375 + 0.1 / 3600
    assert cli.main(["jwst", "--imager", i2d2[0], "--ifu", s3d]) == 3
    assert "not co-registered" in capsys.readouterr().err
    assert cli.main(["jwst", "--imager", *i2d]) == 3


def test_general_fuse_takes_jwst_data_tunes_by_fission_and_bootstraps(toy, small_toy):
    imager, ifu, truth = toy
    small = dict(regularization="lowrank_sobolev", rank=4, max_iter=40, tol=None, dtype="float64", progress=False)
    before = (imager["data"].values.copy(), ifu["data"].values.copy(), dict(imager.attrs))
    res = xfusion.fuse(ifu, imager, mu=0.003, **small)  # any order; the JWST layout is converted (jwst.observations)
    np.testing.assert_array_equal(imager["data"].values, before[0])  # inputs untouched
    np.testing.assert_array_equal(ifu["data"].values, before[1])
    assert dict(imager.attrs) == before[2] and "counts" not in imager
    # the result is on the imager's field (margin cropped), wavelength in um, the data units
    assert res["flux"].shape == (24, 24, 48) and res["energy"].attrs["units"] == "um"
    np.testing.assert_allclose(res["x"].values, imager["x"].values)
    assert res["flux"].attrs["units"] == "MJy/sr" and res.attrs["spectral_unit"] == "um"
    assert res["model_spatial"].dims == ("x", "y", "filter") and res["model_spatial"].shape == (24, 24, 5)
    # fuse_jwst is this call with the JWST defaults: the same cube
    same = jwst.fuse_jwst(imager, ifu, rank=4, mu=0.003, max_iter=40, tol=None)
    np.testing.assert_allclose(same["flux"].values, res["flux"].values, rtol=1e-6, atol=1e-6)
    assert metrics.nmse(truth["flux"].values, res["flux"].values) > 25
    # plots say wavelength (um) and the data units, not keV and photon fluxes
    import matplotlib

    matplotlib.use("Agg")
    from xfusion import plot

    fig = plot.spectra(res, pixels=[(5, 5)])
    assert fig.axes[0].get_xlabel() == "wavelength (um)" and "MJy/sr" in fig.axes[0].get_ylabel()
    matplotlib.pyplot.close(fig)
    # a wavelength observation next to an X-ray one is refused through the general API too
    x_obs, y_obs = jwst.observations(imager, ifu)
    with pytest.raises(ValueError, match="spectral axes do not match"):
        xfusion.fuse(small_toy[0], y_obs, **small)
    # mu="auto": Gaussian data fission chooses it (recorded), not the Poisson-thinning fallback
    import json

    auto = xfusion.fuse(x_obs, y_obs, mu="auto", **dict(small, max_iter=15))
    rec = json.loads(auto.attrs["parameters"])["auto_tuning"]
    assert rec["method"] == "gaussian data fission" and len(rec["heldout_chi2"]) == 6
    assert json.loads(auto.attrs["parameters"])["mu"] == rec["candidates"][int(np.argmin(rec["heldout_chi2"]))]["mu"]
    # parametric bootstrap with Gaussian noise of the given variance; thinning refused
    unc = xfusion.uncertainty(res, imager, ifu, n=2, seed=3)
    assert unc["flux_std"].shape == res["flux"].shape and unc["flux_std"].attrs["units"] == "MJy/sr"
    assert np.all(np.isfinite(unc["flux_std"].values)) and float(unc["flux_std"].mean()) > 0
    with pytest.raises(NotImplementedError, match="thinning.*bootstrap"):
        xfusion.uncertainty(res, imager, ifu, n=2, method="thinning")


def test_nan_ifu_voxels_are_fused_when_masked_and_named_when_not(toy):
    """Session 28 (second red-team pass): real s3d cubes have NaN spaxels. Masked (as the error asks), they stopped
    the low-rank basis ('spectra ... contain NaN'); unmasked, the error blamed the imager's response."""
    imager, ifu, _ = toy
    bad = ifu.copy(deep=True)
    d, m = bad["data"].values.copy(), bad["mask"].values.copy()
    d[0, 0, :], d[3, 4, 10] = np.nan, np.nan
    m[0, 0, :], m[3, 4, 10] = False, False
    masked = bad.assign(data=(bad["data"].dims, d, bad["data"].attrs), mask=(bad["mask"].dims, m))
    r = jwst.fuse_jwst(imager, masked, max_iter=10)
    assert np.all(np.isfinite(r.flux.values))
    with pytest.raises(ValueError, match="the IFU data contain 49 non-finite values where the mask says valid"):
        jwst.fuse_jwst(imager, masked.assign(mask=ifu["mask"]), max_iter=10)


def test_ifu_in_another_flux_unit_is_converted_or_refused():
    """Session 29 red team: an IFU in Jy/sr next to an imager in MJy/sr was fused as if both were MJy/sr (the
    factor 1e6 absorbed into the cross-calibration, the result labelled MJy/sr)."""
    imager, ifu, truth = jwst.make_toy(size=12, n_channels=16)
    e, px = jwst._edges(ifu), float(ifu["x"].attrs["pixel_size"])
    jy = jwst.ifu_dataset(ifu["data"].values * 1e6, ifu["variance"].values * 1e12, e, px, bunit="Jy/sr")
    x_ref, y_ref = jwst.observations(imager, ifu)
    x_jy, y_jy = jwst.observations(imager, jy)
    np.testing.assert_allclose(y_jy["counts"].values, y_ref["counts"].values, rtol=1e-12)
    np.testing.assert_allclose(y_jy["variance"].values, y_ref["variance"].values, rtol=1e-12)
    assert y_jy["counts"].attrs["units"] == "MJy/sr" and y_jy.attrs["converted_from"] == "Jy/sr"
    assert x_jy.attrs["cross_calibration"] == x_ref.attrs["cross_calibration"]
    r = jwst.fuse_jwst(imager, jy, max_iter=5)
    assert r["flux"].attrs["units"] == "MJy/sr" and abs(float(r["cross_calibration"].mean()) - 1) < 0.1
    flux_density = jwst.ifu_dataset(ifu["data"].values, ifu["variance"].values, e, px, bunit="Jy")
    with pytest.raises(ValueError, match=r"imager's data are in 'MJy/sr' .*IFU's in 'Jy' .*cannot be converted"):
        jwst.observations(imager, flux_density)
    odd = jwst.ifu_dataset(ifu["data"].values, ifu["variance"].values, e, px, bunit="DN/s/pixel-ish")
    with pytest.raises(ValueError, match="astropy cannot read"):
        jwst.fuse_jwst(imager, odd)


def test_cross_calibration_compares_the_same_field_when_spaxels_are_masked():
    """Session 29 red team: with IFU spaxels masked the imager was averaged over the whole field and the IFU over
    its valid spaxels (factors ~5 % off, the fused cube ~5 % low)."""
    imager, ifu, truth = jwst.make_toy(size=24, n_channels=32)
    e = jwst._edges(ifu)
    R = jwst.filter_response(list(imager["filter"].values), e)
    ym, yh = imager["data"].values, ifu["data"].values
    full, _ = jwst.cross_calibrate(ym, yh, R)
    br = yh.mean(-1)
    idx = np.unravel_index(np.argsort(br.ravel())[-8:], br.shape)  # the 8 brightest spaxels flagged
    mh = np.ones(yh.shape, bool)
    mh[idx[0], idx[1], :] = False
    masked, _ = jwst.cross_calibrate(ym, np.where(mh, yh, np.nan), R, None, mh)
    np.testing.assert_allclose(masked, full, rtol=0.01)  # was 5-6 % higher
    np.testing.assert_allclose(masked, truth["calibration"].values, rtol=0.03)
    # masked imager pixels likewise: the same spaxels masked through the imager gives the same factors
    mm = np.repeat(np.repeat(mh[..., :1], 3, 0), 3, 1) & np.ones(ym.shape, bool)
    np.testing.assert_allclose(jwst.cross_calibrate(np.where(mm, ym, np.nan), yh, R, mm, None)[0], masked,
                               rtol=1e-12)
    with pytest.raises(ValueError, match="filter column 1: no IFU spaxel is valid"):
        jwst.cross_calibrate(ym, yh, R, np.broadcast_to(np.arange(5) != 1, ym.shape), None)


def test_readers_orient_mirrored_and_rotated_products_north_up(tmp_path):
    """Session 29 red team: an i2d stored rotated by 180 degrees (CD1_1 > 0, CD2_2 < 0) or mirrored (CDELT1 > 0) was
    returned in file order with the coordinates of a north-up image (the sky rotated/mirrored, fused silently)."""
    from astropy.wcs import WCS

    rng = np.random.default_rng(2)
    sci, err, dq = rng.random((6, 9)) * 10, 0.1 + rng.random((6, 9)), np.zeros((6, 9), np.uint32)
    dq[1, 2] = 1
    px = 0.031 / 3600
    hdr = _celestial(px, (3.0, 2.0))
    prim = {"INSTRUME": "NIRCAM", "FILTER": "F200W"}
    _write(tmp_path / "up_i2d.fits", sci, err, dq, hdr, prim)
    # the same sky stored rotated by 180 degrees / mirrored east-west, with a correct WCS
    rot = dict(hdr, CDELT1=px, CDELT2=-px, CRPIX1=9 + 1 - 3.0, CRPIX2=6 + 1 - 2.0)
    _write(tmp_path / "rot_i2d.fits", sci[::-1, ::-1], err[::-1, ::-1], dq[::-1, ::-1], rot, prim)
    mir = dict(hdr, CDELT1=px, CRPIX1=9 + 1 - 3.0)
    _write(tmp_path / "mir_i2d.fits", sci[:, ::-1], err[:, ::-1], dq[:, ::-1], mir, prim)
    up = read_nircam_i2d(tmp_path / "up_i2d.fits")
    assert "reoriented" not in up.attrs
    for name, what in (("rot", "x (east-west) and y (north-south)"), ("mir", "x (east-west) to")):
        other = read_nircam_i2d(tmp_path / f"{name}_i2d.fits")
        np.testing.assert_array_equal(other["data"].values, up["data"].values)
        np.testing.assert_array_equal(other["mask"].values, up["mask"].values)
        np.testing.assert_allclose(other["x"].values, up["x"].values, atol=1e-12)
        np.testing.assert_allclose(other["y"].values, up["y"].values, atol=1e-12)
        assert what in other.attrs["reoriented"]
        # the WCS kept describes the returned array: the same sky at every pixel
        w_up, w_o = (WCS(fits.Header.fromstring(d.attrs["wcs"])) for d in (up, other))
        np.testing.assert_allclose(w_o.all_pix2world([[0, 0], [8, 5]], 0), w_up.all_pix2world([[0, 0], [8, 5]], 0))
    # an s3d cube with y to the south is flipped the same way
    cube = rng.random((4, 6, 9)) + 1
    h3 = dict(hdr, CTYPE3="WAVE", CUNIT3="um", CRVAL3=1.7, CDELT3=0.01, CRPIX3=1.0)
    _write(tmp_path / "up_s3d.fits", cube, cube * 0 + 0.1, np.zeros(cube.shape, np.uint32), h3, {"INSTRUME": "NIRSPEC"})
    _write(tmp_path / "s_s3d.fits", cube[:, ::-1], cube * 0 + 0.1, np.zeros(cube.shape, np.uint32),
           dict(h3, CDELT2=-px, CRPIX2=6 + 1 - 2.0), {"INSTRUME": "NIRSPEC"})
    a, b = read_nirspec_s3d(tmp_path / "up_s3d.fits"), read_nirspec_s3d(tmp_path / "s_s3d.fits")
    np.testing.assert_array_equal(b["data"].values, a["data"].values)
    np.testing.assert_allclose(b["y"].values, a["y"].values, atol=1e-12)
    # a rotation by another angle is refused with the way out
    turned = dict(hdr, PC1_1=np.cos(0.3), PC1_2=-np.sin(0.3), PC2_1=np.sin(0.3), PC2_2=np.cos(0.3))
    _write(tmp_path / "turn_i2d.fits", sci, err, dq, turned, prim)
    with pytest.raises(ValueError, match="rotated with respect to RA/Dec.*reproject"):
        read_nircam_i2d(tmp_path / "turn_i2d.fits")


def test_stack_filters_compares_sky_positions_and_refuses_duplicate_filters(tmp_path):
    """Session 29 red team: two i2d with the same CRPIX but CRVAL1 5 pixels apart were stacked (only the offsets
    from each file's own reference pixel were compared); the same filter twice crashed in pandas later."""
    rng = np.random.default_rng(3)
    sci, err, dq = rng.random((6, 9)), np.ones((6, 9)), np.zeros((6, 9), np.uint32)
    px = 0.031 / 3600
    hdr = _celestial(px, (5.0, 4.0))
    cosd = np.cos(np.deg2rad(hdr["CRVAL2"]))
    files = {"a": (hdr, "F182M"), "off": (dict(hdr, CRVAL1=hdr["CRVAL1"] + 5 * px / cosd), "F200W"),
             # the same sky as "a" with another reference pixel: CRPIX 2 columns to the east, CRVAL there
             "same": (dict(hdr, CRPIX1=3.0, CRVAL1=hdr["CRVAL1"] + 2 * px / cosd), "F210M"), "dup": (hdr, "F182M")}
    for k, (h, f) in files.items():
        _write(tmp_path / f"{k}_i2d.fits", sci, err, dq, h, {"INSTRUME": "NIRCAM", "FILTER": f})
    a, off, same, dup = (read_nircam_i2d(tmp_path / f"{k}_i2d.fits") for k in files)
    with pytest.raises(ValueError, match=r"different pixels of the sky.*offset by \(-0.155\", 0\"\) = \(-5, 0\) "
                                         r"pixels.*[Rr]esample"):
        stack_filters([a, off])
    st = stack_filters([a, same])
    assert list(st["filter"].values) == ["F182M", "F210M"]
    np.testing.assert_allclose(st["x"].values, a["x"].values)
    np.testing.assert_allclose(st["data"].isel(filter=1).values, a["data"].isel(filter=0).values)
    with pytest.raises(ValueError, match="filter F182M appears twice .*dup_i2d.fits.*give each filter once"):
        stack_filters([a, dup])


def test_s3d_wavelengths_follow_the_full_wcs(tmp_path):
    """Session 29 red team: read_nirspec_s3d ignored PC3_3 (CDELT3 = 1, PC3_3 = 0.02 um read as 1 um steps: 1.67,
    2.67 ... 32.67 um) and refused the CD3_3 form."""
    cube = np.random.default_rng(4).random((12, 3, 3)) + 1
    err, dq = np.full(cube.shape, 0.1), np.zeros(cube.shape, np.uint32)
    base = dict(_celestial(0.1 / 3600, (2.0, 2.0)), CTYPE3="WAVE", CUNIT3="um", CRVAL3=1.67, CRPIX3=1.0)
    expect = 1.67 + 0.02 * np.arange(12)
    cd = {k: v for k, v in base.items() if not k.startswith(("PC", "CDELT"))}
    cd.update(CD1_1=-0.1 / 3600, CD2_2=0.1 / 3600, CD3_3=0.02)
    cases = {"pc": dict(base, CDELT3=1.0, PC3_3=0.02), "cd": cd, "nm": dict(base, CUNIT3="nm", CRVAL3=1670.0,
                                                                             CDELT3=20.0),
             "micron": dict(base, CUNIT3="micron", CDELT3=0.02), "crpix": dict(base, CDELT3=0.02, CRPIX3=3.0,
                                                                               CRVAL3=1.71)}
    for k, h in cases.items():
        _write(tmp_path / f"{k}_s3d.fits", cube, err, dq, h, {"INSTRUME": "NIRSPEC"})
        ifu = read_nirspec_s3d(tmp_path / f"{k}_s3d.fits")
        np.testing.assert_allclose(ifu["energy"].values, expect, rtol=1e-12, err_msg=k)
        np.testing.assert_allclose(ifu["energy_hi"].values - ifu["energy_lo"].values, 0.02, rtol=1e-9, err_msg=k)
    bad = {"mixed": (dict(base, CDELT3=1.0, CD3_3=0.02), "mixes the CDi_j form .*CD3_3.*PCi_j"),
           "none": (base, "no CRVAL3 or no CDELT3 / CD3_3 / PC3_3"),
           "down": (dict(base, CDELT3=1.0, PC3_3=-0.02), r"wavelength step .* -0.02 um <= 0"),
           "coupled": (dict(base, CDELT3=0.02, PC3_1=0.1), "coupled to the spatial axes")}
    for k, (h, msg) in bad.items():
        _write(tmp_path / f"{k}_s3d.fits", cube, err, dq, h, {"INSTRUME": "NIRSPEC"})
        with pytest.raises(ValueError, match=msg):
            read_nirspec_s3d(tmp_path / f"{k}_s3d.fits")


def test_uncertainty_rebuilds_the_fits_observations_and_refuses_others():
    """Session 29 red team: xfusion.uncertainty(result, imager, ifu) rebuilt the observations with
    jwst.observations' defaults: a 3-filter result got the replicas of the 5-filter problem (3.3 x the error bars),
    a cross_calibration=False result those of a calibrated one, without a word."""
    import json

    imager, ifu, _ = jwst.make_toy(size=12, n_channels=16)
    keep = ["F182M", "F200W", "F210M"]
    r = jwst.fuse_jwst(imager, ifu, filters=keep, max_iter=20)
    opts = json.loads(r.attrs["jwst_options"])
    assert opts["filters"] == keep and opts["cross_calibration"] is True and opts["margin"] == 1
    own = xfusion.uncertainty(r, imager.sel(filter=keep), ifu, n=2, seed=1)
    full = xfusion.uncertainty(r, imager, ifu, n=2, seed=1)  # raw data: rebuilt with the fit's 3 filters
    np.testing.assert_allclose(full["flux_std"].values, own["flux_std"].values, rtol=1e-6)
    with pytest.raises(ValueError, match=r"fitted on the filters \['F182M', 'F200W', 'F210M'\] but the "
                                         r"observations hold \['F182M', 'F187N'.*imager.sel"):
        xfusion.uncertainty(r, *jwst.observations(imager, ifu), n=2)
    nocal = jwst.fuse_jwst(imager, ifu, cross_calibration=False, max_iter=20)
    a = xfusion.uncertainty(nocal, imager, ifu, n=2, seed=1)
    b = xfusion.uncertainty(nocal, *jwst.observations(imager, ifu, cross_calibration=False), n=2, seed=1)
    np.testing.assert_allclose(a["flux_std"].values, b["flux_std"].values, rtol=1e-6)
    with pytest.raises(ValueError, match="cross-calibration factors .* differ from the observations'"):
        xfusion.uncertainty(nocal, *jwst.observations(imager, ifu), n=2)
    with pytest.raises(ValueError, match="fitted with gamma=2.0 but the IFU observation has gamma=1.0"):
        xfusion.uncertainty(jwst.fuse_jwst(imager, ifu, gamma=2.0, max_iter=5), *jwst.observations(imager, ifu), n=2)
    psf = jwst.ifu_psf_stack([1.66, 2.3], float(imager["x"].attrs["pixel_size"]))
    with pytest.raises(ValueError, match="fitted with a user psf.*xfusion.jwst.observations\\(imager, ifu, psf=..."):
        xfusion.uncertainty(jwst.fuse_jwst(imager, ifu, psf=psf, max_iter=5), imager, ifu, n=2)


def test_jwst_validation_mean_spectrum_over_the_same_field():
    """Session 29 red team: the fused cube's mean spectrum was taken over the whole field, the IFU's over its valid
    spaxels only (max relative error 0.064 instead of 0.0115 with 8 bright spaxels masked)."""
    rng = np.random.default_rng(5)
    yh = rng.random((4, 4, 6)) + 1
    z = np.repeat(np.repeat(yh, 3, 0), 3, 1)  # a fused cube whose block means are the IFU exactly
    z[:3, :3] *= 5  # ... except under spaxel (0, 0), which the IFU masks
    R = np.full((6, 1), 1 / 6)
    vh = np.ones(yh.shape, bool)
    vh[0, 0] = False
    v = metrics.jwst_validation(z @ R, np.where(vh, yh, np.nan), z, R, ifu_mask=vh)
    assert v["mean_spectrum_max_rel_error"] < 1e-12
    vh[1, 1, 2] = False  # per channel
    v = metrics.jwst_validation(z @ R, yh, z, R, ifu_mask=vh)
    assert v["mean_spectrum_max_rel_error"] < 1e-12
    v = metrics.jwst_validation(z @ R, yh, z, R)  # no mask: the whole field, where the cube differs
    assert v["mean_spectrum_max_rel_error"] > 0.1


def test_user_psf_is_checked_finite_normalized_and_on_the_imagers_pixels():
    """Session 29 red team: a PSF x 2 (NMSE 16 dB instead of 30), one on 0.1" pixels, or with a NaN (an unrelated
    'predicts zero counts' error) were accepted."""
    import warnings

    imager, ifu, truth = jwst.make_toy(size=12, n_channels=16)
    psf = truth["psf"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        jwst.observations(imager, ifu, psf=psf)  # the right PSF: no warning
    with pytest.raises(ValueError, match=r"psf does not sum to 1 at every node \(1.66 um: 2,.*Normalize it"):
        jwst.observations(imager, ifu, psf=psf * 2)
    with pytest.warns(UserWarning, match="psf sums to 1.66 um: 0.95.*truncated"):
        jwst.observations(imager, ifu, psf=psf * 0.95)
    coarse = jwst.ifu_psf_stack(np.linspace(1.66, 2.30, 5), 0.1)
    with pytest.raises(ValueError, match=r"sampled on 0.1\" pixels \(psf_x\) but the imager's pixels are 0.0333333\""):
        jwst.observations(imager, ifu, psf=coarse)
    bad = psf.copy(deep=True)
    bad[1, 0, 0] = np.nan
    with pytest.raises(ValueError, match=r"psf has 1 NaN or inf value\(s\) \(at nodes \[1\]\)"):
        jwst.observations(imager, ifu, psf=bad)


def test_i2d_without_dq_reads_with_wht_and_nan_as_the_mask(tmp_path):
    """Session 29 red team: a pipeline i2d (SCI, ERR, CON, WHT, VAR_*: no DQ) was refused ('no DQ extension')."""
    sci = np.ones((6, 9), np.float32)
    sci[2, 3] = np.nan
    wht = np.ones((6, 9), np.float32)
    wht[0, :2] = 0  # no data there
    h = fits.Header(_celestial(0.031 / 3600))
    prim = fits.PrimaryHDU()
    prim.header["FILTER"], prim.header["INSTRUME"] = "F200W", "NIRCAM"
    fits.HDUList([prim, fits.ImageHDU(sci, h, name="SCI"), fits.ImageHDU(sci * 0 + 0.1, name="ERR"),
                  fits.ImageHDU(np.zeros((1, 6, 9), np.int32), name="CON"), fits.ImageHDU(wht, name="WHT"),
                  fits.ImageHDU(sci * 0.01, name="VAR_POISSON")]).writeto(tmp_path / "f200w_i2d.fits")
    im = read_nircam_i2d(tmp_path / "f200w_i2d.fits")
    m = im["mask"].isel(filter=0).values  # (x, y)
    assert int((~m).sum()) == 3 and not m[3, 2] and not m[0, 0] and not m[1, 0]
    fits.HDUList([prim, fits.ImageHDU(sci, h, name="SCI")]).writeto(tmp_path / "noerr_i2d.fits")
    with pytest.raises(ValueError, match="no ERR extension; a JWST i2d/s3d product has SCI and ERR"):
        read_nircam_i2d(tmp_path / "noerr_i2d.fits")


def test_held_out_check_and_cli_with_masked_pixels_and_bad_names(tmp_path, capsys):
    """Session 29 red team: held_out_check and the CLI's --held-out failed after the fusion with 'the truth contains
    NaN' on any masked imager pixel; the CLI noticed an unknown --held-out name only after fusing, and holding out
    every filter was an 'internal error'."""
    from xfusion import cli

    imager, ifu, _ = jwst.make_toy(size=12, n_channels=16)
    d, m = imager["data"].values.copy(), np.ones(imager["data"].shape, bool)
    d[5, 5, :], m[5, 5, :] = np.nan, False
    masked = jwst.imager_dataset(d, imager["variance"].values, list(imager["filter"].values),
                                 imager["x"].attrs["pixel_size"], mask=m)
    _, ref = jwst.held_out_check(imager, ifu, ["F187N"], max_iter=10)
    _, got = jwst.held_out_check(masked, ifu, ["F187N"], max_iter=10)
    assert np.isfinite(got["F187N"]["psnr_db"]) and abs(got["F187N"]["psnr_db"] - ref["F187N"]["psnr_db"]) < 1.0
    with pytest.raises(ValueError, match=r"held-out filters \['f187n'\] are not in the imager .*case-sensitive"):
        jwst.held_out_check(imager, ifu, ["f187n"])
    i2d, s3d = _toy_to_fits(imager, ifu, tmp_path)
    for p in i2d:  # DQ-flagged NaN pixels, as at the edge of a real mosaic
        with fits.open(p, mode="update") as h:
            h["SCI"].data[0, :3] = np.nan
            h["DQ"].data[0, :3] = 1
    capsys.readouterr()
    assert cli.main(["jwst", "--imager", *i2d, "--ifu", s3d, "--held-out", "F187N", "--max-iter", "5"]) == 0
    assert "held out" in capsys.readouterr().out
    assert cli.main(["jwst", "--imager", *i2d, "--ifu", s3d, "--held-out", "F999W"]) == 3
    assert "--held-out: held-out filters ['F999W'] are not in the imager" in capsys.readouterr().err
    assert cli.main(["jwst", "--imager", *i2d[:2], "--ifu", s3d, "--held-out", "F182M", "F187N"]) == 3
    assert "some, not all" in capsys.readouterr().err


def test_duplicate_or_empty_filters_psf_nodes_and_wavelength_unit_hints():
    """Session 29 red team: a filter twice (pandas InvalidIndexError, or weighted twice), a fully masked filter (NaN
    calibration, then an unrelated error), n_psf_nodes=0 ('max() arg is an empty sequence'), a grid in nm or m (no
    hint)."""
    imager, ifu, _ = jwst.make_toy(size=12, n_channels=16)
    with pytest.raises(ValueError, match=r"filters= names filter\(s\) \['F200W'\] more than once"):
        jwst.observations(imager, ifu, filters=["F200W", "F200W"])
    twice = imager.isel(filter=[0, 2, 2])
    with pytest.raises(ValueError, match=r"the imager names filter\(s\) \['F200W'\] more than once"):
        jwst.fuse_jwst(twice, ifu)
    m = imager["mask"].values.copy()
    m[..., 1] = False
    with pytest.raises(ValueError, match=r"filter\(s\) \['F187N'\] have no valid pixel .*filters=\['F182M', 'F200W'"):
        jwst.observations(imager.assign(mask=(imager["mask"].dims, m)), ifu)
    with pytest.raises(ValueError, match="n_psf_nodes must be an integer >= 1"):
        jwst.observations(imager, ifu, n_psf_nodes=0)
    e = jwst._edges(ifu)
    with pytest.raises(ValueError, match="looks like nm: give wavelengths in um"):
        jwst.filter_response(["F182M"], e * 1000)
    with pytest.raises(ValueError, match="looks like m: give wavelengths in um"):
        jwst.filter_response(["F182M"], e * 1e-6)


def test_ifu_channel_with_no_valid_spaxel_is_refused_naming_it():
    """Session 30: an IFU channel NaN in every spaxel (a detector gap, a bad channel), masked as the readers do,
    failed in the cross-calibration ('channels with no valid spaxel', no index, no wavelength, no way out), and
    unmasked with the generic non-finite count; without the cross-calibration the fused flux there came out 0
    (~14 MJy/sr in the truth) with no error. SyFu's baseline failed in numpy's SVD ('did not converge')."""
    imager, ifu, _ = jwst.make_toy(size=12, n_channels=16)
    d, m = ifu["data"].values.copy(), ifu["mask"].values.copy()
    d[..., 7] = np.nan
    gap = ifu.assign(data=(ifu["data"].dims, d, ifu["data"].attrs))
    msg = (r"1 wavelength channel\(s\) with no valid spaxel .*channel 7 \(1.96 um\).*refuses.*channels 8-15 "
           r"\(1.98-2.3 um\): ifu.isel\(energy=slice\(8, 16\)\)")
    for cube in (gap, gap.assign(mask=(ifu["mask"].dims, m & np.isfinite(d)))):  # unmasked, then masked
        for cal in (True, False):
            with pytest.raises(ValueError, match=msg):
                jwst.observations(imager, cube, cross_calibration=cal)
    x_obs, y_obs = jwst.observations(imager, ifu)  # observations edited afterwards: refused by the general path
    y_obs["mask"][..., 7] = False
    with pytest.raises(ValueError, match=r"channel 7 \(1.96 um\)"):
        xfusion.fuse(x_obs, y_obs, regularization="lowrank_sobolev", rank=3, mu=0.003, max_iter=2)
    # some valid spaxels in the channel: fused; the suggested crop fuses too
    part = gap.assign(data=(ifu["data"].dims, np.where(np.arange(4)[:, None, None] == 0, ifu["data"].values, d)))
    part = part.assign(mask=(ifu["mask"].dims, np.isfinite(part["data"].values)))
    for im, cube in ((imager, part), (imager.sel(filter=["F210M", "F212N"]), gap.isel(energy=slice(8, 16)))):
        assert np.all(np.isfinite(jwst.fuse_jwst(im, cube, max_iter=5)["flux"].values))
    R = jwst.filter_response(list(imager["filter"].values), jwst._edges(ifu))
    k = np.stack([jwst.gaussian_kernel(0.1, 0.1 / 3, radius=3)] * 16)
    with pytest.raises(ValueError, match=r"ifu_data contain NaN or inf: every pixel of channel\(s\) \[7\]"):
        syfu(imager["data"].values, d, R, k, k, n_iter=2)


def test_non_square_pixels_are_refused_naming_both_sizes():
    """Session 30: an imager (or IFU) whose pixels differ along x and y (y coordinates and pixel_size 1.5 x those of
    x) was fused as if square (only x's pixel_size was read); coordinates contradicting pixel_size were not seen."""
    imager, ifu, _ = jwst.make_toy(size=12, n_channels=16)

    def stretch(ds, f, attr=True):
        n, px = ds.sizes["y"], float(ds["y"].attrs["pixel_size"])
        a = {**ds["y"].attrs, "pixel_size": f * px} if attr else dict(ds["y"].attrs)
        return ds.assign_coords(y=("y", (np.arange(n) - (n - 1) / 2.0) * f * px, a))

    with pytest.raises(ValueError, match=r"the imager's pixels are not square: 0.0333333\" along x and 0.05\" along y "
                                         r"\(from the x and y coordinates\).*resample the imager onto square pixels"):
        jwst.fuse_jwst(stretch(imager, 1.5), ifu, max_iter=2)
    with pytest.raises(ValueError, match=r"imager's pixels are not square: 0.0333333\" along x and 0.05\" along y"):
        jwst.observations(stretch(imager, 1.5, attr=False), ifu)  # pixel_size says square, the coordinates do not
    with pytest.raises(ValueError, match=r"the IFU's pixels are not square: 0.1\" along x and 0.15\" along y"):
        jwst.observations(imager, stretch(ifu, 1.5))
    lie = imager.assign_coords(y=imager["y"].assign_attrs(pixel_size=0.05))  # square coordinates, attr says 0.05
    with pytest.raises(ValueError, match=r"imager's y pixel_size attribute says 0.05\" but its coordinates are "
                                         r"0.0333333\" apart"):
        jwst.observations(lie, ifu)
    uneven = imager.assign_coords(y=imager["y"] + np.r_[0.0, 0.01, np.zeros(10)])
    with pytest.raises(ValueError, match="coordinate y of the imager is not uniformly spaced"):
        jwst.observations(uneven, ifu)
    with pytest.raises(ValueError, match=r"coordinate x of the IFU is descending .*sortby\('x'\)"):
        jwst.observations(imager, ifu.isel(x=slice(None, None, -1)))  # was read by its absolute spacing
    x_obs, y_obs = jwst.observations(imager, ifu)  # the general path checks the observations too
    with pytest.raises(ValueError, match=r"IFU's pixels are not square: 0.1\" along x and 0.15\" along y"):
        xfusion.fuse(x_obs, stretch(y_obs, 1.5), regularization="lowrank_sobolev", rank=3, mu=0.003, max_iter=2)


def test_psf_nodes_must_span_the_fused_channels():
    """Session 30: a PSF given at 1.9-2.1 um for a 1.66-2.30 um cube was fused with the 1.9 um PSF below 1.9 um and
    the 2.1 um one above (band_weights clamps), silently; unsorted nodes were interpolated as if sorted."""
    import warnings

    imager, ifu, truth = jwst.make_toy(size=12, n_channels=16)
    px = float(imager["x"].attrs["pixel_size"])
    narrow = jwst.ifu_psf_stack(np.linspace(1.9, 2.1, 3), px)
    with pytest.raises(ValueError, match=r"psf is given at 1.9-2.1 um \(psf_energy\) but the fused channels run from "
                                         r"1.68 to 2.28 um .*0.22 um \(13.1% .*ifu.sel\(energy=slice\(1.9, 2.1\)\)"):
        jwst.fuse_jwst(imager, ifu, psf=narrow, max_iter=2)
    with pytest.warns(UserWarning, match=r"psf is given at 1.68-2.27 um.*up to 0.01 um \(0.4% .*within 1%, accepted"):
        jwst.observations(imager, ifu, psf=jwst.ifu_psf_stack([1.68, 2.0, 2.27], px))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        jwst.observations(imager, ifu, psf=jwst.ifu_psf_stack([1.68, 2.28], px))  # nodes at the first/last centres
        jwst.observations(imager, ifu, psf=jwst.ifu_psf_stack([2.0], px))  # one node: the same PSF everywhere
        _, y1 = jwst.observations(imager, ifu, n_psf_nodes=1)
    assert y1["psf"]["psf_energy"].values.tolist() == pytest.approx([1.98])  # default single node: the band's centre
    with pytest.raises(ValueError, match=r"nodes \(psf_energy\) must be strictly increasing; got \[2.3, 1.98, 1.66\]"):
        jwst.observations(imager, ifu, psf=truth["psf"].isel(psf_energy=[4, 2, 0]))
    x_obs, y_obs = jwst.observations(imager, ifu)  # a PSF swapped into the observations: refused by fuse too
    y_obs = y_obs.drop_vars(["psf", "psf_energy", "psf_x", "psf_y"]).assign(psf=narrow)
    with pytest.raises(ValueError, match=r"psf is given at 1.9-2.1 um"):
        xfusion.fuse(x_obs, y_obs, regularization="lowrank_sobolev", rank=3, mu=0.003, max_iter=2)


def test_cli_jwst_with_the_imager_at_half_the_spaxel_writes_its_report_and_store(tmp_path, capsys):
    """Session 31 red team: `xfusion jwst` with imager pixels 1/2 of the IFU spaxel (the API fuses any integer ratio)
    fused, then failed in jwst_validation (called with its default factor 3) and never wrote -o."""
    from xfusion import cli

    imager, _, truth = jwst.make_toy(size=12, n_channels=16)
    rng = np.random.default_rng(3)
    flux = truth["flux"].values
    cube = flux.reshape(6, 2, 6, 2, -1).mean(axis=(1, 3))
    var = (0.02 * cube.mean()) ** 2
    ifu = jwst.ifu_dataset(cube + rng.standard_normal(cube.shape) * np.sqrt(var), np.full(cube.shape, var),
                           jwst._edges(truth), 2 * float(imager["x"].attrs["pixel_size"]))
    i2d, s3d = _toy_to_fits(imager, ifu, tmp_path)
    out = tmp_path / "fused.zarr"
    capsys.readouterr()
    assert cli.main(["jwst", "--imager", *i2d, "--ifu", s3d, "--max-iter", "5", "-o", str(out)]) == 0
    assert "mean spectrum vs the IFU" in capsys.readouterr().out and out.exists()
    fused = xfusion.io.zarr.open(out)
    assert fused.attrs["spatial_factor"] == 2 and fused["flux"].shape == (12, 12, 16)


def test_cli_jwst_overwrite_replaces_only_its_own_store(tmp_path, capsys):
    """Session 31 red team: an existing `jwst -o` store was refused pointing to 'CLI --overwrite', a flag the jwst
    command did not have (usage error)."""
    from xfusion import cli

    imager, ifu, _ = jwst.make_toy(size=12, n_channels=16)
    i2d, s3d = _toy_to_fits(imager, ifu, tmp_path)
    out = tmp_path / "fused.zarr"
    run = ["jwst", "--imager", *i2d, "--ifu", s3d, "--max-iter", "3", "-o", str(out)]
    assert cli.main(run) == 0
    capsys.readouterr()
    assert cli.main(run) == 3 and "already exists" in capsys.readouterr().err
    assert cli.main(run + ["--overwrite"]) == 0 and out.exists()
    mine = tmp_path / "mine.zarr"  # a store xfusion did not write: refused even with --overwrite
    import zarr

    zarr.open_group(str(mine), mode="w").create_array("a", shape=(2,), dtype="f8")
    capsys.readouterr()
    assert cli.main(run[:-1] + [str(mine), "--overwrite"]) == 3
    assert "mine.zarr" in capsys.readouterr().err and (mine / "a").exists()


def test_i2d_named_by_a_pupil_wheel_filter(tmp_path):
    """Session 31 red team: FILTER='F150W2', PUPIL='F162M' (NIRCam's pupil-wheel filter crossed with the wide one:
    the bandpass is F162M's) was read as 'F150W2'."""
    sci = np.ones((6, 9))
    for pupil, name in (("F162M", "F162M"), ("F470N", "F470N"), ("CLEAR", "F150W2"), ("GRISMR", "F150W2")):
        _write(tmp_path / f"{pupil}.fits", sci, sci * 0.1, np.zeros((6, 9), np.uint32), _celestial(0.031 / 3600),
               {"INSTRUME": "NIRCAM", "FILTER": "F150W2", "PUPIL": pupil})
        im = read_nircam_i2d(tmp_path / f"{pupil}.fits")
        assert str(im["filter"].values[0]) == name
        assert (im.attrs["filter_keyword"], im.attrs["pupil_keyword"]) == ("F150W2", pupil)
    assert str(read_nircam_i2d(tmp_path / "F162M.fits", filter="X")["filter"].values[0]) == "X"


def test_readers_refuse_a_missing_or_non_radec_celestial_wcs(tmp_path):
    """Session 31 red team: no WCS read as 3600" pixels (flipped), no CDELT as 3600" pixels, Dec on axis 1 as if it
    were RA, and galactic axes as RA/Dec."""
    sci = np.arange(54.0).reshape(6, 9) + 1
    base = _celestial(0.031 / 3600)
    cases = {"none": ({k: v for k, v in base.items() if k[:2] not in ("CT", "CU", "CR", "CD", "PC")},
                      r"CTYPE1='', CTYPE2='' \(no celestial WCS"),
             "no_cdelt": ({k: v for k, v in base.items() if not k.startswith("CDELT")},
                          r"no CDELT1 and no CDELT2 and no CD matrix.*1 degree per pixel"),
             "dec_first": (dict(base, CTYPE1="DEC--TAN", CTYPE2="RA---TAN", CRVAL1=base["CRVAL2"],
                                CRVAL2=base["CRVAL1"]), r"CTYPE1='DEC--TAN', CTYPE2='RA---TAN' \(Dec first"),
             "galactic": (dict(base, CTYPE1="GLON-TAN", CTYPE2="GLAT-TAN"), r"'GLON-TAN'.*GLON/GLAT frame, not RA/Dec")}
    for name, (hdr, msg) in cases.items():
        _write(tmp_path / f"{name}.fits", sci, sci * 0.1, np.zeros((6, 9), np.uint32), hdr,
               {"INSTRUME": "NIRCAM", "FILTER": "F200W"})
        with pytest.raises(ValueError, match=msg):
            read_nircam_i2d(tmp_path / f"{name}.fits")
    cd = {k: v for k, v in base.items() if k[:2] not in ("CD", "PC")}  # a CD matrix alone gives the scale
    cd.update(CD1_1=-0.031 / 3600, CD2_2=0.031 / 3600)
    _write(tmp_path / "cd.fits", sci, sci * 0.1, np.zeros((6, 9), np.uint32), cd, {"FILTER": "F200W"})
    assert read_nircam_i2d(tmp_path / "cd.fits")["x"].attrs["pixel_size"] == pytest.approx(0.031)


def test_bunit_read_by_astropy_units_and_converted_to_mjy_per_sr(tmp_path):
    """Session 31 red team: BUNIT 'MJy / sr' (astropy's own spelling) and 'Jy/sr' were refused."""
    sci, err, dq = np.full((6, 9), 2.0), np.full((6, 9), 0.1), np.zeros((6, 9), np.uint32)
    read = {}
    for unit in ("MJy/sr", "MJy / sr", "Jy/sr", "MJy/str"):
        _write(tmp_path / "a.fits", sci, err, dq, dict(_celestial(0.031 / 3600), BUNIT=unit), {"FILTER": "F200W"})
        read[unit] = read_nircam_i2d(tmp_path / "a.fits")
        (tmp_path / "a.fits").unlink()
    for unit in ("MJy / sr", "MJy/str"):
        np.testing.assert_array_equal(read[unit]["data"].values, read["MJy/sr"]["data"].values)
        assert "bunit_in_file" not in read[unit].attrs
    jy = read["Jy/sr"]
    np.testing.assert_allclose(jy["data"].values, 2e-6, rtol=1e-12)
    np.testing.assert_allclose(jy["variance"].values, 1e-14, rtol=1e-9)
    assert jy["data"].attrs["units"] == "MJy/sr" and (jy.attrs["bunit_in_file"], jy.attrs["bunit_factor"]) == \
        ("Jy/sr", pytest.approx(1e-6))
    for unit, kind in (("DN/s", "unknown"), ("MJy", "spectral flux density"), ("", "")):
        _write(tmp_path / "b.fits", sci, err, dq, dict(_celestial(0.031 / 3600), BUNIT=unit), {"FILTER": "F200W"})
        with pytest.raises(ValueError, match=f"BUNIT={unit!r}.*{kind}.*expected a surface brightness.*PIXAR_SR"):
            read_nircam_i2d(tmp_path / "b.fits")
        (tmp_path / "b.fits").unlink()


def test_syfu_checks_the_fields_against_factor_first():
    """Session 31 red team: a 2x imager with the default factor=3 failed in numpy's reshape."""
    rng = np.random.default_rng(0)
    ym, yh, R, psf = rng.random((8, 8, 2)), rng.random((4, 4, 5)), np.full((5, 2), 0.2), np.ones((5, 3, 3)) / 9
    with pytest.raises(ValueError, match=r"imager field 8x8 \(imager_data \(8, 8, 2\)\) is not factor=3 x the IFU "
                                         r"field 4x4 \(ifu_data \(4, 4, 5\)\): pass factor=2"):
        syfu(ym, yh, R, psf, psf, k=1, n_iter=2)
    with pytest.raises(ValueError, match=r"not factor=3 .*crop both to the common field"):
        syfu(np.ones((8, 9, 2)), yh, R, psf, psf, k=1, n_iter=2)
    with pytest.raises(ValueError, match=r"response \(5, 3\) must be .*\(L, F\)"):
        syfu(ym, yh, np.ones((5, 3)), psf, psf, factor=2, k=1, n_iter=2)
    assert syfu(ym, yh, R, psf, psf, factor=2, k=1, n_iter=2)["scene"].shape == (8, 8, 5)


def test_throughput_curves_are_sorted_checked_finite_and_unit_hinted():
    """Session 31 red team: a descending table and a NaN were refused as 'only 0.0% / nan% of its throughput inside
    the grid'; a curve in Angstrom got no unit hint."""
    wl = np.linspace(1.60, 2.36, 761)
    t = 0.4 * jwst.throughput("F200W", wl)
    up = jwst.filter_response(["F200W"], EDGES, throughput_curves={"F200W": (wl, t)})
    down = jwst.filter_response(["F200W"], EDGES, throughput_curves={"F200W": (wl[::-1], t[::-1])})
    np.testing.assert_array_equal(down, up)
    with pytest.raises(ValueError, match=r"throughput curve of F200W: 1 non-finite .* row 5"):
        jwst.filter_response(["F200W"], EDGES, throughput_curves={"F200W": (wl, np.where(wl == wl[5], np.nan, t))})
    with pytest.raises(ValueError, match=r"throughput curve of F200W: the wavelength 1.6 appears more than once"):
        jwst.filter_response(["F200W"], EDGES, throughput_curves={"F200W": (np.r_[wl[0], wl], np.r_[t[0], t])})
    with pytest.raises(ValueError, match=r"spans 1.6e\+04-2.36e\+04, outside the grid: give its wavelengths in um; "
                                         r"they look like Angstrom \(divide by 1e4\)"):
        jwst.filter_response(["F200W"], EDGES, throughput_curves={"F200W": (wl * 1e4, t)})


@pytest.fixture(scope="module")
def fused_toy(toy):
    imager, ifu, _ = toy
    return jwst.fuse_jwst(imager, ifu, max_iter=30)


def test_fits_cube_of_a_jwst_result_is_wavelength_in_um(fused_toy, tmp_path):
    """Session 31: write_fits_cube wrote a JWST result (spectral axis in um, flux MJy/sr) as CTYPE3 'ENER',
    CUNIT3 'keV', with ENERGIES E_MIN/E_MAX in keV."""
    from astropy import units as u
    from astropy.wcs import WCS

    from xfusion.io.fits_cube import write_fits_cube

    res = fused_toy
    lo, hi = res["energy_lo"].values, res["energy_hi"].values
    path = write_fits_cube(res, tmp_path / "jwst.fits")
    with fits.open(path) as hdul:
        h = hdul[0].header
        assert (h["CTYPE3"], h["CUNIT3"], h["BUNIT"]) == ("WAVE", "um", "MJy/sr") and "ENERGIES" not in hdul
        assert u.Unit(h["BUNIT"]) == u.MJy / u.sr
        np.testing.assert_array_equal(hdul["WAVELENGTHS"].data["WAVE_MIN"], lo)
        np.testing.assert_array_equal(hdul["WAVELENGTHS"].data["WAVE_MAX"], hi)
        assert hdul["WAVELENGTHS"].columns["WAVE_MAX"].unit == "um"
        w = WCS(h)
        assert w.has_spectral
        np.testing.assert_allclose(w.sub([3]).wcs_pix2world(np.arange(lo.size), 0)[0] * 1e6,  # wcslib: metres
                                   0.5 * (lo + hi), rtol=1e-9)
    # non-uniform channels: the tabular form, in um
    gappy = res["flux"].isel(energy=[0, 1, 2, 5, 6])
    path = write_fits_cube(gappy, tmp_path / "gappy.fits")
    with fits.open(path) as hdul:
        assert (hdul[0].header["CTYPE3"], hdul[0].header["CUNIT3"]) == ("WAVE-TAB", "um")
        we = WCS(hdul[0].header, fobj=hdul).wcs_pix2world([[0, 0, 3]], 0)[0][2]
        assert we == pytest.approx(float(gappy["energy"].values[3]), rel=1e-9)  # -TAB: the table's um
    # declared units that disagree are refused before anything is written
    with pytest.raises(ValueError, match=r"declared in keV, um.*keV \(X-ray energy\) or um.*Nothing was written"):
        write_fits_cube(res.assign_attrs(spectral_unit="keV"), tmp_path / "mixed.fits")
    assert not (tmp_path / "mixed.fits").exists()


def test_syfu_automatic_gamma_and_mu_refuse_a_zero_noise_level():
    """Session 31: exactly constant data gave a bare ZeroDivisionError in gamma = sigma_m^2 / sigma_h^2 (noise 0);
    a constant IFU with a noisy imager gave mu = sigma_m^2 / 1e-300."""
    m, L = 4, 6
    ym, yh, R = np.full((3 * m, 3 * m, 2), 5.0), np.full((m, m, L), 5.0), np.full((L, 2), 1.0 / L)
    psf = np.zeros((L, 3, 3))
    psf[:, 1, 1] = 1.0
    noise = np.random.default_rng(0).normal(0.0, 0.1, ym.shape)
    with pytest.raises(ValueError, match=r"automatic gamma and mu .*MAD noise level of imager_data and ifu_data, "
                                         r"which is 0.*exactly constant.*Pass gamma= .* and mu= "):
        syfu(ym, yh, R, psf, psf, n_iter=5)
    with pytest.raises(ValueError, match=r"automatic gamma \(gamma = sigma_m\^2 / sigma_h\^2\) needs the MAD noise "
                                         r"level of ifu_data"):
        syfu(ym + noise, yh, R, psf, psf, mu=0.1, n_iter=5)
    with pytest.raises(ValueError, match=r"automatic mu .*needs alpha\^2.*same spectrum in every spaxel.*Pass mu="):
        syfu(ym + noise, yh, R, psf, psf, gamma=1.0, n_iter=5)
    out = syfu(ym, yh, R, psf, psf, gamma=1.0, mu=0.1, n_iter=5)  # given, they work: the constant is recovered
    np.testing.assert_allclose(out["scene"], 5.0, atol=1e-9)


def test_stack_filters_keeps_each_files_keywords_per_filter(tmp_path):
    """Session 31: stack_filters kept only the first image's attrs: the others' FILTER/PUPIL keywords and BUNIT
    conversion were dropped and the first image's claimed for the whole stack."""
    sci, err, dq = np.ones((6, 9)), np.full((6, 9), 0.1), np.zeros((6, 9), np.uint32)
    files = {"a": ("F200W", "CLEAR", "MJy/sr"), "b": ("F150W2", "F162M", "Jy/sr"), "c": ("F210M", None, "MJy/sr")}
    for k, (f, pupil, bunit) in files.items():
        prim = {"INSTRUME": "NIRCAM", "TARGNAME": "d203-506", "FILTER": f, **({"PUPIL": pupil} if pupil else {})}
        _write(tmp_path / f"{k}_i2d.fits", sci, err, dq, dict(_celestial(0.031 / 3600), BUNIT=bunit), prim)
    st = stack_filters([read_nircam_i2d(tmp_path / f"{k}_i2d.fits") for k in files])
    assert list(st["filter"].values) == ["F200W", "F162M", "F210M"]
    assert list(st["filter_keyword"].values) == ["F200W", "F150W2", "F210M"]
    assert list(st["pupil_keyword"].values) == ["CLEAR", "F162M", ""]
    assert list(st["bunit_in_file"].values) == ["", "Jy/sr", ""]
    np.testing.assert_allclose(st["bunit_factor"].values, [1.0, 1e-6, 1.0])
    assert [p.split("/")[-1] for p in st["source_file"].values] == ["a_i2d.fits", "b_i2d.fits", "c_i2d.fits"]
    assert str(st["pupil_keyword"].sel(filter="F162M").values) == "F162M"
    for key in ("filter_keyword", "pupil_keyword", "bunit_in_file", "bunit_factor", "source_file"):
        assert key not in st.attrs  # no single file's value claimed for the stack
    assert (st.attrs["name"], st.attrs["instrument"], st.attrs["center_ra"]) == ("d203-506", "NIRCAM", 83.8375)
    assert "wcs" in st.attrs and st.attrs["pixar_sr"] > 0  # the same in every image: stays an attr
    # the coordinates follow a selection, and a stack of stacks keeps them
    again = stack_filters([st.sel(filter=["F162M"]), st.sel(filter=["F200W", "F210M"])])
    assert list(again["pupil_keyword"].values) == ["F162M", "CLEAR", ""]
    np.testing.assert_allclose(again["bunit_factor"].values, [1e-6, 1.0, 1.0])


def test_band_velocity_maps_refuse_a_one_channel_band(toy, fused_toy):
    """Session 31: on a JWST result the default band is one fused channel (no sharp-spatial channels), so every
    velocity and velocity_err came out exactly 0 km/s without a word."""
    from xfusion import plot

    imager, ifu, _ = toy
    unc = xfusion.uncertainty(fused_toy, imager, ifu, n=2, seed=0)
    with pytest.raises(ValueError, match=r"holds a single fused channel \(the default: .*no sharp-spatial channel.*"
                                         r"exactly 0\. Give band=\(lo, hi\) in um .*e\.g\. band=\(") as err:
        plot.band_velocity_maps(unc)
    with pytest.raises(ValueError, match=r"single fused channel \(given band="):
        plot.band_velocity_maps(unc, band=plot.line_band(unc))
    band = [float(v) for v in str(err.value).split("band=(")[-1].split(")")[0].split(",")]
    maps, _ = plot.band_velocity_maps(unc, band=band)  # the suggested band: 7 channels around the line
    assert np.nanmax(np.abs(maps["velocity"].values)) > 0 and np.nanmax(maps["velocity_err"].values) > 0
