"""Units that cannot be mistaken: Quantities converted and recorded, implausible plain numbers refused
with the likely mistake named, PSF sampling explicit, the tangent point carried to a WCS."""
import json

import astropy.units as u
import numpy as np
import pytest
import xarray as xr

import xfusion
from xfusion.observation import celestial_wcs, energy_edges, observation

EDGES = np.linspace(0.5, 1.4, 13)  # keV


def _counts(shape=(6, 6, 12), seed=0):
    return np.random.default_rng(seed).poisson(3.0, shape).astype(float)


def _build(**kw):
    args = dict(dims=("x", "y", "energy"), energy_edges=EDGES, pixel_size=10.0, exposure=5e4)
    args.update(kw)
    return observation(_counts(), **args)


def _units(ds):
    return json.loads(ds.attrs["input_units"])


def test_plain_numbers_are_kev_arcsec_s_cm2_and_recorded():
    ds = _build(effective_area=250.0)
    np.testing.assert_allclose(energy_edges(ds), EDGES)
    assert ds["energy"].attrs["units"] == "keV" and ds["x"].attrs["units"] == "arcsec"
    assert float(ds["exposure"]) == 5e4 and ds["exposure"].attrs["units"] == "s"
    assert float(ds["effective_area"]) == 250.0 and ds["effective_area"].attrs["units"] == "cm2"
    assert _units(ds) == {"energy_edges": "keV (plain number)", "pixel_size": "arcsec (plain number)",
                          "exposure": "s (plain number)", "effective_area": "cm2 (plain number)"}


def test_quantities_are_converted_and_recorded():
    ds = _build(energy_edges=EDGES * 1000 * u.eV, pixel_size=(10.0 / 3600) * u.deg, exposure=50 * u.ks,
                effective_area=0.025 * u.m ** 2)
    np.testing.assert_allclose(energy_edges(ds), EDGES, rtol=1e-12)
    assert ds["x"].attrs["pixel_size"] == pytest.approx(10.0, rel=1e-12)
    assert float(ds["exposure"]) == pytest.approx(5e4)
    assert float(ds["effective_area"]) == pytest.approx(250.0)
    rec = _units(ds)
    assert rec["energy_edges"] == "eV (Quantity)" and rec["exposure"] == "ks (Quantity)"
    assert rec["pixel_size"] == "deg (Quantity)" and rec["effective_area"].startswith("m2")
    # an area per channel as a Quantity array
    ds = _build(effective_area=np.linspace(1, 2, 12) * 1e-4 * u.m ** 2)
    np.testing.assert_allclose(ds["effective_area"].values, np.linspace(1, 2, 12))


def test_edges_in_ev_as_plain_numbers_are_refused_with_the_fix():
    with pytest.raises(ValueError, match=r"looks like eV.*energy_edges \* astropy.units.eV.*divide them by 1000"):
        _build(energy_edges=EDGES * 1000)


def test_pixel_size_in_degrees_is_refused_with_the_fix():
    with pytest.raises(ValueError, match=r"pixel_size=0.0028 looks like degrees \(10.08 arcsec if so\)"):
        _build(pixel_size=0.0028)
    with pytest.raises(ValueError, match=r"psf_pixel_size=0.0028 looks like degrees"):
        _build(psf=np.ones((3, 3)) / 9, psf_pixel_size=0.0028)


def test_wrong_dimension_is_refused():
    with pytest.raises(ValueError, match=r"exposure is in m, which cannot be converted to s"):
        _build(exposure=3 * u.m)
    with pytest.raises(ValueError, match=r"energy_edges is in arcsec"):
        _build(energy_edges=EDGES * u.arcsec)


def test_plain_psf_needs_its_sampling():
    psf = np.zeros((9, 9))
    psf[4, 4] = 1.0
    with pytest.raises(ValueError, match=r"plain array, so its sampling is unknown: pass psf_pixel_size="):
        _build(psf=psf)
    # a 10"-sampled PSF for a 30" instrument keeps its own sampling
    ds = _build(pixel_size=30.0, psf=psf, psf_pixel_size=10 * u.arcsec)
    np.testing.assert_allclose(np.diff(ds["psf_x"].values), 10.0)
    assert ds["psf_x"].attrs["pixel_size"] == 10.0
    # a DataArray carries its sampling in its coordinates: no psf_pixel_size needed
    same = _build(pixel_size=30.0, psf=ds["psf"])
    xr.testing.assert_identical(same["psf"], ds["psf"])


def test_response_spacing_units():
    kern = np.array([0.25, 0.5, 0.25])
    ds = _build(response=kern, response_spacing=2.0 * u.eV)
    np.testing.assert_allclose(ds["energy_offset"].values, [-0.002, 0.0, 0.002])
    with pytest.raises(ValueError, match=r"response_spacing=2 keV between kernel samples looks like eV"):
        _build(response=kern, response_spacing=2.0)


def test_toy_observation_values_are_accepted_back(small_toy):
    """The toy's own scalar area and exposure (0-d DataArrays) rebuild the same observation."""
    x_obs, y_obs, _ = small_toy
    back = observation(y_obs["counts"], energy_edges=energy_edges(y_obs), pixel_size=y_obs["x"].attrs["pixel_size"],
                       exposure=y_obs["exposure"], effective_area=y_obs["effective_area"], psf=y_obs["psf"],
                       name=y_obs.attrs["name"])
    for v in ("counts", "exposure", "effective_area", "psf"):
        xr.testing.assert_allclose(back[v], y_obs[v])
    assert _units(back)["exposure"] == "s (DataArray units)"
    # a 0-d area in another unit is converted
    area_m2 = xr.DataArray(0.025, attrs={"units": "m2"})
    assert float(_build(effective_area=area_m2)["effective_area"]) == pytest.approx(250.0)
    area_da = xr.DataArray(
        np.full(12, 2.5e-2), dims="energy_true",
        coords={"energy_true": 0.5 * (EDGES[1:] + EDGES[:-1]), "energy_true_lo": ("energy_true", EDGES[:-1]),
                "energy_true_hi": ("energy_true", EDGES[1:])}, attrs={"units": "m2"})
    np.testing.assert_allclose(_build(effective_area=area_da)["effective_area"].values, 250.0)


def test_center_gives_a_wcs_that_fused_results_keep(small_toy):
    from astropy.coordinates import SkyCoord

    from xfusion.io.events import _tangent_offsets

    x_obs, y_obs, _ = small_toy
    ra0, dec0 = 83.63, 22.01
    rebuilt = []
    for o, extra in ((x_obs, {"response": x_obs["response"]}), (y_obs, {"psf": y_obs["psf"]})):
        rebuilt.append(observation(
            o["counts"], energy_edges=energy_edges(o), pixel_size=o["x"].attrs["pixel_size"] * u.arcsec,
            exposure=o["exposure"], effective_area=o["effective_area"], name=o.attrs["name"],
            center=SkyCoord(ra0 * u.deg, dec0 * u.deg) if o is x_obs else (ra0 * u.deg, dec0), **extra))
    for o in rebuilt:
        assert (o.attrs["center_ra"], o.attrs["center_dec"]) == pytest.approx((ra0, dec0))
    assert celestial_wcs(x_obs) is None  # no tangent point, no WCS
    result = xfusion.fuse(*rebuilt, progress=False, max_iter=2, k=1.0, n_scales_1d=2, null_space="zero")  # not tuned
    wcs = celestial_wcs(result)
    assert wcs is not None
    # the WCS of fused pixel (ix, iy) is the sky position whose tangent-plane offsets are (x[ix], y[iy])
    ix, iy = 2, 11
    sky = wcs.pixel_to_world(ix, iy)
    xo, yo = _tangent_offsets(np.array([sky.ra.deg]), np.array([sky.dec.deg]), ra0, dec0)
    assert xo[0] == pytest.approx(float(result["x"][ix]), abs=1e-6)
    assert yo[0] == pytest.approx(float(result["y"][iy]), abs=1e-6)
    # x grows to the west: RA decreases along x
    assert wcs.pixel_to_world(ix + 1, iy).ra.deg < sky.ra.deg


def test_center_from_event_cube_attrs():
    cube = xr.DataArray(_counts(), dims=("x", "y", "energy"), attrs={"center": (10.5, -30.25)})
    ds = observation(cube, energy_edges=EDGES, pixel_size=10.0, exposure=1.0)
    assert (ds.attrs["center_ra"], ds.attrs["center_dec"]) == (10.5, -30.25)
    assert ds["x"].attrs["center_ra"] == 10.5
    with pytest.raises(ValueError, match=r"\|Dec\| <= 90"):
        _build(center=(10.0, 95.0))


def test_help_of_fuse_explains_every_option():
    import importlib

    fuse_module = importlib.import_module("xfusion.fuse")
    doc = xfusion.fuse.__doc__
    options = {o for table in (*fuse_module.OPTION_DEFAULTS.values(), *fuse_module.METHOD_OPTIONS.values())
               for o in table}
    missing = sorted(o for o in options if f"``{o}``" not in doc)
    assert not missing, f"help(xfusion.fuse) does not explain {missing}"
    assert "Poisson thinning" in doc and '"auto"' in doc
