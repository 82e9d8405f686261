"""Observation builder, validation, Zarr round trip and the fusion grid."""
import numpy as np
import pytest
import xarray as xr

import xfusion
from xfusion.grid import assign_roles, fusion_grid
from xfusion.observation import observation, validate


def simple(shape=(6, 4, 10), pixel=10.0, edges=None, **kw):
    rng = np.random.default_rng(0)
    counts = rng.poisson(3.0, shape).astype(float)
    edges = np.linspace(1.0, 2.0, shape[2] + 1) if edges is None else edges
    kw.setdefault("exposure", 1000.0)
    return observation(counts, dims=("x", "y", "energy"), energy_edges=edges, pixel_size=pixel, **kw)


def test_builder_from_numpy_any_axis_order():
    rng = np.random.default_rng(0)
    c = rng.poisson(2.0, (10, 4, 6)).astype(float)  # (energy, y, x)
    ds = observation(c, dims=("energy", "y", "x"), energy_edges=np.linspace(1, 2, 11), pixel_size=5.0, exposure=10.0)
    assert ds.counts.dims == ("x", "y", "energy") and ds.counts.shape == (6, 4, 10)
    np.testing.assert_array_equal(ds.counts.values[:, :, 3], c[3].T)
    assert ds.x.attrs == {"units": "arcsec", "pixel_size": 5.0}
    np.testing.assert_allclose(ds.energy_hi.values - ds.energy_lo.values, 0.1)


def test_builder_from_dataarray_and_does_not_mutate():
    da = xr.DataArray(np.ones((10, 6, 4)), dims=("energy", "x", "y"))
    before = da.copy(deep=True)
    ds = observation(da, energy_edges=np.linspace(1, 2, 11), pixel_size=5.0, exposure=10.0)
    assert ds.counts.dims == ("x", "y", "energy")
    xr.testing.assert_identical(da, before)


def test_zarr_round_trip(tmp_path, small_toy):
    x_obs, y_obs, _ = small_toy
    for obs in (x_obs, y_obs):
        path = tmp_path / f"{obs.attrs['name'][:1]}.zarr"
        xfusion.io.zarr.write(obs, path)
        back = xfusion.io.zarr.open(path)
        xr.testing.assert_identical(back.load(), obs)
        validate(back)


def test_effective_area_dataarray_kept_on_its_grid():
    et = np.linspace(0.5, 3.0, 251)
    area = xr.DataArray(np.linspace(100, 200, 250), dims="energy_true",
                        coords={"energy_true": 0.5 * (et[1:] + et[:-1]), "energy_true_lo": ("energy_true", et[:-1]),
                                "energy_true_hi": ("energy_true", et[1:])}, attrs={"units": "cm2"})
    ds = simple(effective_area=area)
    assert ds.effective_area.dims == ("energy_true",) and ds.sizes["energy_true"] == 250


BAD = {
    "missing dims": (dict(dims=None), "dims="),
    "uneven energy": (dict(energy_edges=np.array([1, 1.1, 1.05, 1.3, 1.4, 1.5, 1.6, 1.7, 1.8, 1.9, 2.0])), "increase strictly"),
    "negative energy": (dict(energy_edges=np.linspace(-1, 2, 11)), "photon energies are >= 0"),
    "edges wrong length": (dict(energy_edges=np.linspace(1, 2, 10)), "pass 11 edges"),
    "negative exposure": (dict(exposure=-1.0), "exposure must be a positive"),
    "zero exposure": (dict(exposure=0.0), "exposure must be a positive"),
    "missing exposure": (dict(exposure=None), "exposure is required"),
    "area wrong length": (dict(effective_area=np.ones(7)), "effective_area has shape (7,)"),
    "even psf": (dict(psf=np.ones((4, 4)) / 16), "even shape"),
    "unnormalized psf": (dict(psf=np.ones((3, 3))), "sums to 9"),
    "even kernel": (dict(response=np.ones(4) / 4, response_spacing=0.01), "even length"),
    "kernel no spacing": (dict(response=np.ones(3) / 3), "response_spacing"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_inputs_raise_clear_errors(case):
    kw, msg = BAD[case]
    rng = np.random.default_rng(0)
    args = dict(dims=("x", "y", "energy"), energy_edges=np.linspace(1, 2, 11), pixel_size=10.0, exposure=100.0)
    args.update(kw)
    with pytest.raises(ValueError, match=msg.replace("(", r"\(").replace(")", r"\)")):
        observation(rng.poisson(2.0, (6, 4, 10)).astype(float), **args)


@pytest.mark.parametrize("value,msg", [(-1.0, "negative"), (np.nan, "NaN"), (np.inf, "NaN or inf")])
def test_bad_counts(value, msg):
    c = np.ones((4, 4, 5))
    c[1, 2, 3] = value
    with pytest.raises(ValueError, match=msg):
        observation(c, dims=("x", "y", "energy"), energy_edges=np.linspace(1, 2, 6), pixel_size=1.0, exposure=1.0)


@pytest.mark.parametrize("xs,msg", [([0.0, 10.0, 5.0], r"coordinate x does not increase .*sortby\('x'\)"),
                                     ([20.0, 10.0, 0.0], r"coordinate x is descending .*sortby\('x'\)"),
                                     ([0.0, np.nan, 20.0], "coordinate x has 1 non-finite pixel centres"),
                                     ([0.0, 5.0, 10.0], r"pixel centres 5 arcsec apart but pixel_size=10 arcsec")])
def test_one_pixel_grid_rule_for_builder_validate_and_wcs(xs, msg):
    """observation(), validate() and the WCS (axis_spacing) apply one rule to x/y pixel centres (pixel_step):
    finite, increasing, evenly spaced; the builder and validate also by the pixel size."""
    da = xr.DataArray(np.ones((3, 3, 4)), dims=("x", "y", "energy"), coords={"x": xs})
    with pytest.raises(ValueError, match=msg):
        observation(da, energy_edges=np.linspace(1, 2, 5), pixel_size=10.0, exposure=1.0)
    ds = simple(shape=(3, 4, 10))
    ds = ds.assign_coords(x=("x", xs, ds["x"].attrs))
    with pytest.raises(ValueError, match=msg.replace("coordinate x", "coordinate x of '.*'").replace(
            "pixel centres 5 arcsec apart but pixel_size=10", "pixel_size attribute 10 arcsec but its values are 5")):
        validate(ds)
    if "pixel_size" not in msg:
        with pytest.raises(ValueError, match=msg):
            xfusion.celestial_wcs(xr.Dataset(coords={"x": ("x", xs, {"pixel_size": 10.0}), "y": [0.0, 10.0]},
                                             attrs={"center_ra": 10.0, "center_dec": 20.0}))


def test_uneven_spatial_coordinate_and_missing_units():
    da = xr.DataArray(np.ones((3, 3, 4)), dims=("x", "y", "energy"), coords={"x": [0.0, 10.0, 25.0]})
    with pytest.raises(ValueError, match="coordinate x is not uniformly spaced"):
        observation(da, energy_edges=np.linspace(1, 2, 5), pixel_size=10.0, exposure=1.0)
    ds = simple()
    ds["energy"].attrs.pop("units")
    with pytest.raises(ValueError, match="coordinate energy has no units"):
        validate(ds)
    ds = simple()
    ds["x"].attrs["units"] = "deg"
    with pytest.raises(ValueError, match="'deg' but xfusion expects 'arcsec'"):
        validate(ds)


def _psf_da(values, cx, cy):
    return xr.DataArray(values, dims=("psf_x", "psf_y"), coords={"psf_x": ("psf_x", cx, {"units": "arcsec"}),
                                                                 "psf_y": ("psf_y", cy, {"units": "arcsec"})})


def test_psf_dataarray_is_placed_by_its_coordinates():
    """A PSF DataArray is placed by its psf_x/psf_y offsets (session 29: only the x spacing was kept and the offsets
    rebuilt centred, so an asymmetrically cropped stamp was silently shifted, non-square pixels squashed, and a
    descending axis failed later): an off-centre stamp is padded to an odd stamp centred on offset 0, a descending
    axis reversed with its values; non-square, non-uniform sampling or no sample at offset 0 is refused."""
    q = np.zeros((9, 9))
    q[2, 4], q[5, 4], q[2, 7] = 0.5, 0.3, 0.2  # taps at (0, 0), (+3, 0) and (0, +3) arcsec by the coordinates below
    c = np.arange(9) - 4.0
    ds = simple(psf=_psf_da(q, np.arange(9) - 2.0, c))
    psf = ds.psf
    assert psf.shape == (13, 9) and psf.psf_x.attrs["pixel_size"] == 1.0
    assert psf.sel(psf_x=0.0, psf_y=0.0) == 0.5 and psf.sel(psf_x=3.0, psf_y=0.0) == 0.3
    assert psf.sel(psf_x=0.0, psf_y=3.0) == 0.2 and float(psf.sum()) == 1.0
    np.testing.assert_array_equal(psf.psf_x.values, np.arange(13) - 6.0)
    # the same taps with psf_x descending
    down = simple(psf=_psf_da(q[::-1], (np.arange(9) - 2.0)[::-1], c)).psf
    xr.testing.assert_identical(down, psf)
    # a centred stamp is unchanged
    g = np.outer([1, 2, 1], [1, 2, 1]) / 16.0
    np.testing.assert_array_equal(simple(psf=_psf_da(g, [-2.0, 0, 2.0], [-2.0, 0, 2.0])).psf.values, g)
    bad = {"not square": (_psf_da(q, c, 2 * c), "psf pixels are not square"),
           "uneven": (_psf_da(g, [-1.0, 0, 1.5], [-1.0, 0, 1.0]), "psf coordinate psf_x is not uniformly spaced"),
           "no sample at 0": (_psf_da(g, [-0.5, 0.5, 1.5], [-1.0, 0, 1.0]), "psf coordinate psf_x has no sample at offset 0")}
    for psf_in, msg in bad.values():
        with pytest.raises(ValueError, match=msg):
            simple(psf=psf_in)


# ----------------------------------------------------------------------------- grid
def pair(x_shape=(6, 6, 4), y_shape=(2, 2, 20), px=10.0, py=30.0, ex=None, ey=None):
    ex = np.linspace(1, 2, x_shape[2] + 1) if ex is None else ex
    ey = np.linspace(1, 2, y_shape[2] + 1) if ey is None else ey
    a = simple(x_shape, px, ex, response=np.array([0.25, 0.5, 0.25]), response_spacing=0.01, name="A")
    b = simple(y_shape, py, ey, psf=np.array([[0, 0.1, 0], [0.1, 0.6, 0.1], [0, 0.1, 0]]), psf_pixel_size=px, name="B")
    return a, b


def test_grid_either_order():
    a, b = pair()
    g1, g2 = fusion_grid(a, b), fusion_grid(b, a)
    for g in (g1, g2):
        assert g.attrs["spatial_factor"] == 3 and g.attrs["spectral_factor"] == 5
        assert g.sizes == {"x": 6, "y": 6, "energy": 20, "psf_x": 3, "psf_y": 3}
        assert g.attrs["spatial_obs"] == "A" and g.attrs["spectral_obs"] == "B"
    assert g1.attrs["order"] == "ab" and g2.attrs["order"] == "ba"


def test_grid_same_size_uses_responses(small_toy):
    x_obs, y_obs, _ = small_toy
    assert assign_roles(x_obs, y_obs)[2] == "ab"


@pytest.mark.parametrize("kw,msg", [
    (dict(py=25.0), "non-integer ratio"),
    (dict(y_shape=(3, 2, 20), x_shape=(6, 6, 4)), "coordinate x: 'A' has 6 pixels"),
    (dict(y_shape=(2, 2, 18)), "not a multiple"),
    (dict(ey=np.concatenate([np.linspace(1, 1.52, 11), np.linspace(1.56, 2.0, 10)])), "coordinate energy: edge"),
    (dict(x_shape=(6, 6, 40)), "neither observation"),
])
def test_grid_errors(kw, msg):
    a, b = pair(**kw)
    with pytest.raises(ValueError, match=msg):
        fusion_grid(a, b)


def test_grid_misaligned_pixels():
    a, b = pair()
    b = b.assign_coords(x=b.x + 5.0)
    with pytest.raises(ValueError, match="coordinate x: first pixel edges differ"):
        fusion_grid(a, b)


def test_grid_refuses_different_tangent_points():
    """Session 29 red team: fusion_grid / fuse combined images about tangent points 30' apart without a word and
    labelled the result with the first one's; align refused the same pair."""
    c0, c1 = (10.0, 20.0), (10.0, 20.5)
    a1 = simple((6, 6, 4), 10.0, np.linspace(1, 2, 5), response=np.array([0.25, 0.5, 0.25]), response_spacing=0.01,
                name="A", center=c0)
    b1 = simple((2, 2, 20), 30.0, np.linspace(1, 2, 21), psf=np.array([[0, 0.1, 0], [0.1, 0.6, 0.1], [0, 0.1, 0]]),
                psf_pixel_size=10.0, name="B", center=c1)
    for call in (lambda: fusion_grid(a1, b1), lambda: fusion_grid(b1, a1),
                 lambda: xfusion.fuse(a1, b1, regularization="none", max_iter=1, progress=False)):
        with pytest.raises(ValueError, match=r"'A' and 'B' use different tangent points .* 1\.8e\+03 arcsec apart.*"
                                             r"center="):
            call()
    b0 = b1.assign_attrs(center_ra=c0[0], center_dec=c0[1])
    for d in ("x", "y"):
        b0[d].attrs.update(center_ra=c0[0], center_dec=c0[1])
    g = fusion_grid(a1, b0)  # one tangent point: accepted
    assert g.x.attrs["center_dec"] == 20.0
    # a third image on the fused pixels about another tangent point is refused too
    a2 = a1.assign_attrs(center_dec=20.5, name="A2")
    with pytest.raises(ValueError, match="the fused grid .* and 'A2' use different tangent points"):
        fusion_grid(a1, b0, a2)
    # a detector-pixel tile may keep its own tangent point (footprint_geometry re-projects it)
    x = simple((6, 6, 2), 10.0, np.linspace(6.0, 6.2, 3), center=c0, name="X")
    tile = _pixels(center=(c0[0], c0[1] + 10 / 3600))
    assert fusion_grid(x, tile).attrs["spatial_model"] == "footprint"


def test_grid_mismatched_units():
    a, b = pair()
    b["energy"].attrs["units"] = "eV"
    with pytest.raises(ValueError, match="'eV' but xfusion expects 'keV'"):
        fusion_grid(a, b)


# ----------------------------------------------------------------------------- detector-pixel observations
def _pixels(**kw):
    g = np.array([-30.0, 0.0, 30.0])
    dx, dy = (a.ravel() for a in np.meshgrid(g, g, indexing="ij"))
    args = dict(energy_edges=np.linspace(6.0, 6.2, 11), pixel_size=30.0, exposure=1e4, dims=("energy", "pixel"),
                det_x=dx, det_y=dy, roll=17.0, array_center=(3.0, -4.0), name="Resolve")
    args.update(kw)
    return observation(np.ones((10, 9)), **args)


def test_pixel_observation_schema():
    import astropy.units as u

    ds = _pixels(exposure=np.linspace(5e3, 1e4, 9), mask=np.arange(9) != 4, roll=0.3 * u.rad,
                 background=np.full((10, 9), 2.0))  # in the layout of counts (dims=("energy", "pixel"))
    assert ds["counts"].dims == ("pixel", "energy") and ds.sizes["pixel"] == 9
    assert float(ds["exposure"]) == 1e4 and ds["exposure_fraction"].values[0] == pytest.approx(0.5)
    assert float(ds["roll"]) == pytest.approx(np.rad2deg(0.3)) and ds["roll"].attrs["units"] == "deg"
    assert ds["mask"].shape == (9, 10) and not ds["mask"].values[4].any() and ds["mask"].values[3].all()
    # background stored as a rate: counts / per-pixel exposure
    np.testing.assert_allclose(ds["background_rate"].values[0], 2.0 / 5e3)
    assert validate(ds) is ds
    with pytest.warns(UserWarning, match="taken in the stored order"):  # (pixel, energy): accepted, with a warning
        stored = _pixels(exposure=np.linspace(5e3, 1e4, 9), background=np.full((9, 10), 2.0))
    np.testing.assert_array_equal(stored["background_rate"].values, ds["background_rate"].values)
    area = xr.DataArray(np.full((9, 5), 100.0), dims=("pixel", "energy_true"),
                        coords={"energy_true_lo": ("energy_true", np.linspace(5.9, 6.3, 6)[:-1]),
                                "energy_true_hi": ("energy_true", np.linspace(5.9, 6.3, 6)[1:])})
    assert _pixels(effective_area=area)["effective_area"].dims == ("pixel", "energy_true")


@pytest.mark.parametrize("kw,msg", [
    ({"det_x": None}, "needs det_x and det_y"),
    ({"det_y": np.zeros(3)}, "det_y must be 9 finite values"),
    ({"exposure": np.ones(4)}, "per-pixel exposure must be 9"),
    ({"array_center": 5.0}, "array_center must be"),
    ({"background": np.ones((9, 3))}, "background must have the shape of counts"),
    ({"background": -np.ones((10, 9))}, "finite and >= 0"),
    ({"mask": np.ones(4, bool)}, "mask must be a boolean array"),
])
def test_pixel_observation_errors(kw, msg):
    with pytest.raises(ValueError, match=msg):
        _pixels(**kw)


def test_detector_geometry_needs_pixel_counts():
    with pytest.raises(ValueError, match="detector-pixel observations"):
        simple(roll=10.0)
