"""How xfusion.observation and xfusion.validate read what users pass: layouts, coordinates, units.

One test per confirmed bug (red-team reproducers of session 28): each fails without its fix.
"""
import numpy as np
import pytest
import xarray as xr

from xfusion.observation import observation, validate

EDGES = np.linspace(1.0, 2.0, 5)  # 4 channels, keV
KW = dict(energy_edges=EDGES, pixel_size=10.0, exposure=1e4)


def _centres(edges):
    return 0.5 * (edges[1:] + edges[:-1])


# ----------------------------------------------------------------------------- 1. mask / background layout
def test_mask_and_background_follow_the_layout_of_counts():
    """A cube with as many channels as x pixels, given as (energy, y, x): a mask or background in the same
    layout must be transposed with it (they used to be taken as (x, y, energy): channel 0 became column 0)."""
    ne, ny, nx = 4, 3, 4
    counts = np.ones((ne, ny, nx))
    mask = np.ones((ne, ny, nx), bool)
    mask[0] = False                   # channel 0 is bad
    bg = np.zeros((ne, ny, nx))
    bg[0] = 100.0                     # background only in channel 0
    mask0, bg0 = mask.copy(), bg.copy()
    obs = observation(counts, dims=("energy", "y", "x"), mask=mask, background=bg, **KW)
    m = obs["mask"].transpose("x", "y", "energy").values
    assert (~m).sum(axis=(0, 1)).tolist() == [nx * ny, 0, 0, 0]
    b = obs["background_rate"].transpose("x", "y", "energy").values * 1e4
    np.testing.assert_allclose(b.sum(axis=(0, 1)), [100.0 * nx * ny, 0, 0, 0])
    # DataArrays are read by their dims; nothing the user passed is changed or aliased
    obs2 = observation(counts, dims=("energy", "y", "x"), mask=xr.DataArray(mask, dims=("energy", "y", "x")), **KW)
    assert obs2["mask"].equals(obs["mask"])
    obs["mask"].values[:] = True
    assert np.array_equal(mask, mask0) and np.array_equal(bg, bg0)


# ----------------------------------------------------------------------------- 2. a DataArray's energy coordinate
def test_counts_energy_coordinate_is_used():
    """A cube stored from high to low energy (with its coordinate) is put in order; one on other channels
    than energy_edges is refused. The caller's DataArray is not changed."""
    c = np.zeros((3, 2, 4))
    c[..., 0] = 100.0                  # a line in the first stored channel = the highest energy
    da = xr.DataArray(c, dims=("x", "y", "energy"), coords={"energy": _centres(EDGES)[::-1]})
    da0 = da.copy(deep=True)
    mask = np.ones(c.shape, bool)
    mask[..., 0] = False               # plain mask in the counts' layout: masks the same (line) channel
    obs = observation(da, mask=mask, **KW)
    spec = obs["counts"].sum(("x", "y")).values
    assert int(np.argmax(spec)) == 3 and float(obs["energy"][3]) == pytest.approx(1.875)
    assert not obs["mask"].values[..., 3].any() and obs["mask"].values[..., :3].all()
    assert da.identical(da0)
    other = xr.DataArray(c, dims=("x", "y", "energy"), coords={"energy": np.linspace(6.0, 7.0, 4)})
    with pytest.raises(ValueError, match="energy coordinate .* does not match energy_edges.*drop the coordinate"):
        observation(other, **KW)
    # in eV with a units attribute: converted; the right channels in keV: accepted as is
    ev = da.assign_coords(energy=("energy", _centres(EDGES)[::-1] * 1e3, {"units": "eV"}))
    assert int(np.argmax(observation(ev, **KW)["counts"].sum(("x", "y")).values)) == 3
    asc = da.assign_coords(energy=_centres(EDGES))
    assert int(np.argmax(observation(asc, **KW)["counts"].sum(("x", "y")).values)) == 0


# ----------------------------------------------------------------------------- 3. validate: psf and response
def test_validate_refuses_a_bad_psf_and_a_nan_response(small_toy):
    x, y, _ = small_toy
    for change, msg in ((lambda p: p.where(p.psf_x != p.psf_x[0], np.nan), "psf contains negative or non-finite"),
                        (lambda p: p * 3, "psf sums to 3, not 1")):
        bad = y.copy()
        bad["psf"] = change(y["psf"])
        with pytest.raises(ValueError, match=msg):
            validate(bad)
    bad = x.copy(deep=True)
    bad["response"][2] = np.nan
    with pytest.raises(ValueError, match="response of .* contains 1 NaN or inf"):
        validate(bad)
    # also refused since session 28 (a Dataset built by hand or read back): a kernel that does not sum to 1, a
    # negative or non-finite background, a non-boolean mask
    bad = x.copy(deep=True)
    bad["response"] = bad["response"] * 2
    with pytest.raises(ValueError, match="response kernel sums to 2, not 1"):
        validate(bad)
    for value in (np.nan, -1e-3):
        bad = x.assign(background_rate=(x.counts.dims, np.full(x.counts.shape, value), {"units": "count s-1"}))
        with pytest.raises(ValueError, match="background_rate of .* contains negative or non-finite"):
            validate(bad)
    with pytest.raises(ValueError, match="mask of .* has dtype float64; a mask is boolean"):
        validate(x.assign(mask=(x.counts.dims, np.ones(x.counts.shape))))
    assert validate(x.assign(mask=(x.counts.dims, np.ones(x.counts.shape, bool)))) is not None
    assert validate(x) is x and validate(y) is y


def test_lazy_response_and_background_get_the_in_memory_checks(small_toy):
    """Session 31 (red team, Dask): a Dask-backed response (e.g. read from Zarr) skipped every value check of
    validate, so a negative or NaN kernel sample, a shifted energy_offset or a NaN in an RMF were fused silently or
    failed late; a Dask-backed background_rate with a NaN/negative voxel was dropped silently when no voxel was > 0
    and otherwise refused without naming the observation. Now both get the in-memory refusal (the response in
    validate, the background when fuse's model reads it, before any work)."""
    import xfusion

    x, y, _ = small_toy
    neg = x.copy(deep=True)
    neg["response"][5] = -0.01
    neg["response"][28] += 0.01
    nan = x.copy(deep=True)
    nan["response"][3] = np.nan
    shifted = x.assign_coords(energy_offset=x["energy_offset"] + 0.01)
    shifted["energy_offset"].attrs.update(x["energy_offset"].attrs)
    for bad, msg in ((neg, "response kernel contains negative or non-finite"), (nan, "contains 1 NaN or inf"),
                     (shifted, "is not the odd, centred grid")):
        for ds in (bad, bad.chunk()):
            with pytest.raises(ValueError, match=msg):
                validate(ds)
    for fill, value in ((0.0, -1e-3), (0.0, np.nan), (1e-5, np.nan)):
        b = np.full(x.counts.shape, fill)
        b[2, 2, 2] = value
        bad = x.assign(background_rate=(x.counts.dims, b, {"units": "count s-1"})).chunk({"x": 5})
        assert validate(bad) is bad  # a cube-sized variable: its values are checked where fuse reads them
        with pytest.raises(ValueError, match=r"background_rate of 'X \(CCD-like\)' contains negative or non-finite"):
            xfusion.fuse(bad, y.chunk(), regularization="none", max_iter=1, tol=None, progress=False)


# ----------------------------------------------------------------------------- 4. counts units
def test_counts_must_be_counts():
    import astropy.units as u

    rate = np.full((4, 3, 2), 2e-3)
    with pytest.raises(ValueError, match=r"counts are in ct / s, not counts.*rate \* exposure"):
        observation(rate * u.ct / u.s, dims=("energy", "y", "x"), **KW)
    with pytest.raises(ValueError, match="counts have units 'count s-1', not counts"):
        observation(xr.DataArray(rate, dims=("energy", "y", "x"), attrs={"units": "count s-1"}), **KW)
    ok = observation(rate * 5e4 * u.ct, dims=("energy", "y", "x"), **KW)
    assert float(ok["counts"].max()) == pytest.approx(100.0)
    for units in ("count", "counts", "ct", "1"):
        observation(xr.DataArray(rate, dims=("energy", "y", "x"), attrs={"units": units}), **KW)


# ----------------------------------------------------------------------------- 5. descending axes: say "sort"
def test_descending_axes_are_named_with_the_fix(small_toy):
    x, _, _ = small_toy
    with pytest.raises(ValueError, match=r"energy bins are descending.*ds.sortby\('energy'\)"):
        validate(x.isel(energy=slice(None, None, -1)))
    with pytest.raises(ValueError, match=r"coordinate x of .* is descending.*ds.sortby\('x'\)"):
        validate(x.isel(x=slice(None, None, -1)))
    da = xr.DataArray(np.ones((3, 2, 4)), dims=("x", "y", "energy"), coords={"x": [20.0, 10.0, 0.0]})
    with pytest.raises(ValueError, match=r"coordinate x is descending.*sortby\('x'\)"):
        observation(da, **KW)


# ----------------------------------------------------------------------------- 6. an ARF is not extrapolated
def _edges_da(values, et, name="energy_true"):
    return xr.DataArray(values, dims=name, coords={name: _centres(et), f"{name}_lo": (name, et[:-1]),
                                                   f"{name}_hi": (name, et[1:])}, attrs={"units": "cm2"})


def test_arf_on_another_grid_is_interpolated_never_extrapolated():
    """Session 28 (second red-team pass): an ARF not covering the RMF's true energies was extrapolated flat (an
    8-18 keV ARF gave a 6.2-7 keV band its 8 keV area, silently). Now refused where the response maps those
    energies into the channels; where it does not, the area there is 0."""
    et = np.linspace(1.0, 2.0, 21)  # the RMF's true-energy grid (50 eV)
    rmf = np.zeros((20, 4))
    rmf[np.arange(20), np.arange(20) // 5] = 1.0  # diagonal-ish: each true bin into one channel
    response = xr.DataArray(rmf, dims=("energy_true", "energy"), coords={
        "energy_true": _centres(et), "energy_true_lo": ("energy_true", et[:-1]), "energy_true_hi": ("energy_true", et[1:]),
        "energy": _centres(EDGES), "energy_lo": ("energy", EDGES[:-1]), "energy_hi": ("energy", EDGES[1:])})
    counts = np.ones((4, 3, 2))
    fine = np.linspace(0.5, 2.5, 81)  # covers the RMF: interpolated (linear in energy here: exact)
    ok = observation(counts, dims=("energy", "y", "x"), response=response,
                     effective_area=_edges_da(100.0 + 10.0 * _centres(fine), fine), **KW)
    np.testing.assert_allclose(ok["effective_area"].values, 100.0 + 10.0 * _centres(et))
    short = np.linspace(1.5, 3.0, 31)  # misses 1.0-1.5 keV, which the response sends into channels 0-1
    with pytest.raises(ValueError, match=r"covers 1.5-3 keV but the response maps true energies 1.025-1.475 keV"):
        observation(counts, dims=("energy", "y", "x"), response=response,
                    effective_area=_edges_da(np.full(30, 100.0), short), **KW)
    quiet = rmf.copy()
    quiet[:10] = 0.0  # the response sends nothing from 1.0-1.5 keV: allowed, with no area there
    got = observation(counts, dims=("energy", "y", "x"), response=response.copy(data=quiet),
                      effective_area=_edges_da(np.full(30, 100.0), short), **KW)
    assert np.all(got["effective_area"].values[:10] == 0) and np.allclose(got["effective_area"].values[10:], 100.0)



def test_arf_finer_than_the_rmf_is_averaged_over_each_row():
    """Session 30: an ARF on finer true-energy bins than the RMF was sampled at each row's centre (an ARF of 1 eV bins
    with 100 cm2 on the first 3 eV of every 10 eV row gave 0 cm2 there, not the row's mean, 30). OGIP's SPECRESP is a
    bin's mean area, so each row gets the overlap-weighted mean; a vignetted (x, y, energy_true) area likewise."""
    et = np.round(np.linspace(1.0, 2.0, 21), 9)       # RMF rows of 50 eV
    rmf = np.zeros((20, 4))
    rmf[np.arange(20), np.arange(20) // 5] = 1.0
    response = xr.DataArray(rmf, dims=("energy_true", "energy"), coords={
        "energy_true": _centres(et), "energy_true_lo": ("energy_true", et[:-1]), "energy_true_hi": ("energy_true", et[1:]),
        "energy": _centres(EDGES), "energy_lo": ("energy", EDGES[:-1]), "energy_hi": ("energy", EDGES[1:])})
    fine = np.round(np.linspace(1.0, 2.0, 201), 9)    # ARF bins of 5 eV: 100 cm2 on the first 3 of every 10
    step = np.where(np.arange(200) % 10 < 3, 100.0, 0.0)
    counts = np.ones((4, 3, 2))
    got = observation(counts, dims=("energy", "y", "x"), response=response, effective_area=_edges_da(step, fine), **KW)
    np.testing.assert_allclose(got["effective_area"].values, 30.0, rtol=1e-12)
    assert "averaged" in got["effective_area"].attrs["note"]
    vign = xr.DataArray(np.arange(1.0, 4.0)[None, :, None] * np.ones((2, 1, 1)) * step, dims=("x", "y", "energy_true"),
                        coords=_edges_da(step, fine).coords)
    gotv = observation(counts, dims=("energy", "y", "x"), response=response, effective_area=vign, **KW)
    np.testing.assert_allclose(gotv["effective_area"].values, 30.0 * np.arange(1.0, 4.0)[None, :, None]
                               * np.ones((2, 1, 20)), rtol=1e-12)

def test_validate_refuses_non_finite_tile_geometry():
    """Session 28 (second red-team pass): a NaN roll or array centre passed validate, then fuse said a detector pixel
    had 0% of its area inside the field."""
    from xfusion import scenes_mosaic

    obs, _ = scenes_mosaic.make_small(seed=3)
    tile = next(o for k, o in obs.items() if k.startswith("tile"))
    assert validate(tile) is tile
    for var in ("roll", "array_x", "array_y"):
        with pytest.raises(ValueError, match=f"'{var}' is not finite"):
            validate(tile.assign({var: tile[var].copy(data=np.nan)}))
    with pytest.raises(ValueError, match="coordinate det_x has non-finite values"):
        validate(tile.assign_coords(det_x=tile["det_x"].copy(data=np.where(np.arange(tile.sizes["pixel"]) == 0, np.nan,
                                                                          tile["det_x"].values))))


def test_unlabelled_full_response_is_refused():
    """Session 30: a response matrix labelled (or defaulting to) units '1' whose rows sum to hundreds (an RMF x ARF in
    cm2 without its label) was taken as a probability, multiplying the expected counts by the area. Rows summing
    above PROBABILITY_ROW_MAX are refused, pointing at the cm2 label; labelled cm2, the same matrix is split."""
    et = np.linspace(1.0, 2.0, 21)
    rmf = np.zeros((20, 4))
    rmf[np.arange(20), np.arange(20) // 5] = 250.0  # cm2 in every row
    response = xr.DataArray(rmf, dims=("energy_true", "energy"), coords={
        "energy_true": _centres(et), "energy_true_lo": ("energy_true", et[:-1]), "energy_true_hi": ("energy_true", et[1:]),
        "energy": _centres(EDGES), "energy_lo": ("energy", EDGES[:-1]), "energy_hi": ("energy", EDGES[1:])})
    counts = np.ones((4, 3, 2))
    with pytest.raises(ValueError, match=r"sums to 250 over the counts' channels.*units'\] = 'cm2'"):
        observation(counts, dims=("energy", "y", "x"), response=response, **KW)
    ok = observation(counts, dims=("energy", "y", "x"), response=response.assign_attrs(units="cm2"), **KW)
    np.testing.assert_allclose(ok["effective_area"].values, 250.0)
    np.testing.assert_allclose(ok["response"].values.sum(axis=1), 1.0)


# ----------------------------------------------------------------------------- session 30 red team (options)
def _kernel_da(offsets, units="keV"):
    k = np.exp(-0.5 * (np.arange(offsets.size) - offsets.size // 2) ** 2 / 4.0)
    attrs = {} if units is None else {"units": units}
    return xr.DataArray(k / k.sum(), dims="energy_offset", coords={"energy_offset": ("energy_offset", offsets, attrs)})


def test_kernel_energy_offset_units_are_converted():
    counts = np.ones((3, 2, 4))
    off_ev = np.arange(-4, 5) * 5.0
    ds = observation(counts, dims=("x", "y", "energy"), response=_kernel_da(off_ev, "eV"), **KW)
    assert np.isclose(ds["energy_offset"].attrs["spacing"], 0.005)
    np.testing.assert_allclose(ds["energy_offset"].values, off_ev / 1000.0)
    with pytest.raises(ValueError, match="looks like eV"):
        observation(counts, dims=("x", "y", "energy"), response=_kernel_da(off_ev, None), **KW)
    with pytest.raises(ValueError, match="cannot be converted to keV"):
        observation(counts, dims=("x", "y", "energy"), response=_kernel_da(off_ev, "arcsec"), **KW)


def test_kernel_placed_by_its_offsets_and_validate_refuses_shifted_offsets():
    counts = np.ones((3, 2, 4))
    off = np.arange(-4, 5) * 0.01
    centred = observation(counts, dims=("x", "y", "energy"), response=_kernel_da(off), **KW)
    shifted = observation(counts, dims=("x", "y", "energy"), response=_kernel_da(off + 0.02), **KW)
    # offset 0 is sample 2 of 9: padded with 4 zeros below to 13 samples centred on it (peak at offset +0.02 keV)
    assert shifted.sizes["energy_offset"] == 13
    np.testing.assert_allclose(shifted["response"].values[4:], centred["response"].values)
    np.testing.assert_allclose(shifted["response"].values[:4], 0.0)
    assert np.isclose(float(shifted["energy_offset"][int(np.argmax(shifted["response"].values))]), 0.02)
    with pytest.raises(ValueError, match="no sample at offset 0"):
        observation(counts, dims=("x", "y", "energy"), response=_kernel_da(off + 0.005), **KW)
    with pytest.raises(ValueError, match="not uniformly spaced"):
        observation(counts, dims=("x", "y", "energy"), response=_kernel_da(off * (1 + np.abs(off))), **KW)
    with pytest.raises(ValueError, match="not the odd, centred grid"):
        validate(centred.assign_coords(energy_offset=centred.energy_offset + 0.02))


def test_validate_refuses_non_uniform_xy_and_a_stale_pixel_size():
    ds = observation(np.ones((6, 2, 4)), dims=("x", "y", "energy"), **KW)
    edited = ds.assign_coords(x=("x", np.r_[ds.x.values[:3], ds.x.values[3:] + 5.0], ds.x.attrs))
    with pytest.raises(ValueError, match="coordinate x .* not uniformly spaced"):
        validate(edited)
    stale = ds.copy()
    stale["y"].attrs["pixel_size"] = 20.0
    with pytest.raises(ValueError, match=r"pixel_size attribute 20 arcsec but its values are 10 arcsec apart"):
        validate(stale)
    validate(ds)


def test_observation_never_aliases_the_callers_arrays():
    """Session 30 (red team): float64 (x, y, energy) counts, a 1D effective_area, a PSF DataArray and an RMF
    DataArray were stored as views: editing them afterwards changed the observation."""
    counts, area = np.ones((3, 2, 4)), np.full(4, 250.0)
    psf = xr.DataArray(np.pad([[1.0]], 1), dims=("psf_x", "psf_y"))
    rmf = xr.DataArray(np.eye(4), dims=("energy_true", "energy"), coords={
        "energy_true_lo": ("energy_true", EDGES[:-1], {"units": "keV"}),
        "energy_true_hi": ("energy_true", EDGES[1:], {"units": "keV"}),
        "energy_lo": ("energy", EDGES[:-1], {"units": "keV"}), "energy_hi": ("energy", EDGES[1:], {"units": "keV"})})
    for cts in (counts, xr.DataArray(counts, dims=("x", "y", "energy"))):
        ds = observation(cts, dims=("x", "y", "energy"), effective_area=area, psf=psf, psf_pixel_size=10.0,
                         response=rmf, **KW)
        before = {v: ds[v].values.copy() for v in ("counts", "effective_area", "psf", "response")}
        counts[0, 0, 0] += 1000.0
        area[:] = 1.0
        psf.values[1, 1] = 5.0
        rmf.values[0, 0] = 0.0
        for v, b in before.items():
            np.testing.assert_array_equal(ds[v].values, b, err_msg=v)
        counts[0, 0, 0], area[:], psf.values[1, 1], rmf.values[0, 0] = 1.0, 250.0, 1.0, 1.0


def test_validate_checks_the_dims_of_mask_and_effective_area():
    """Session 30 (red team): a mask over (x, y) or (energy) only and an effective_area over 'energy' passed
    validate; fuse then failed deep inside numpy/xarray."""
    ds = observation(np.ones((3, 2, 4)), dims=("x", "y", "energy"), **KW)
    for dims, shape in ((("x", "y"), (3, 2)), (("energy",), (4,))):
        bad = ds.copy()
        bad["mask"] = (dims, np.ones(shape, bool))
        with pytest.raises(ValueError, match=r"mask of .* must have the dims of counts"):
            validate(bad)
    bad = ds.copy()
    bad["effective_area"] = (("energy",), np.full(4, 100.0), {"units": "cm2"})
    with pytest.raises(ValueError, match=r"effective_area of .* has dims \('energy',\); allowed"):
        validate(bad)
    bad["effective_area"] = (("energy_true",), np.full(4, 100.0), {"units": "cm2"})
    with pytest.raises(ValueError, match="energy_true_lo/energy_true_hi .* are missing"):
        validate(bad)


def test_arf_and_rmf_energy_true_in_ev_are_converted():
    """Session 30 (red team): an ARF with energy_true edges in eV was stored in eV (fuse then said it covers
    300-2000 keV), an RMF's were relabelled keV (500-1400 'keV')."""
    ev = EDGES * 1000.0
    c = lambda v: ("energy_true", v, {"units": "eV"})  # noqa: E731
    arf = xr.DataArray(np.full(4, 250.0), dims="energy_true", attrs={"units": "cm2"},
                       coords={"energy_true_lo": c(ev[:-1]), "energy_true_hi": c(ev[1:])})
    rmf = xr.DataArray(np.eye(4), dims=("energy_true", "energy"), coords={
        "energy_true_lo": c(ev[:-1]), "energy_true_hi": c(ev[1:]),
        "energy_lo": ("energy", EDGES[:-1], {"units": "keV"}), "energy_hi": ("energy", EDGES[1:], {"units": "keV"})})
    for kw in (dict(effective_area=arf), dict(response=rmf)):
        ds = observation(np.ones((3, 2, 4)), dims=("x", "y", "energy"), **kw, **KW)
        np.testing.assert_allclose(ds["energy_true_lo"].values, EDGES[:-1])
        assert ds["energy_true_lo"].attrs["units"] == "keV"
    with pytest.raises(ValueError, match="is in 'arcsec', which cannot be converted to keV"):
        observation(np.ones((3, 2, 4)), dims=("x", "y", "energy"), effective_area=arf.assign_coords(
            energy_true_lo=("energy_true", ev[:-1], {"units": "arcsec"})), **KW)


def test_validate_refuses_a_non_scalar_exposure_and_an_impossible_center():
    """Session 30 (red team): a 1-D exposure gave numpy's TypeError in validate; center_dec=120 set by hand passed."""
    ds = observation(np.ones((3, 2, 4)), dims=("x", "y", "energy"), center=(10.0, 20.0), **KW)
    bad = ds.drop_vars("exposure").assign(exposure=(("x",), np.full(3, 1e4), {"units": "s"}))
    with pytest.raises(ValueError, match=r"exposure of .* has dims \('x',\); it is one number"):
        validate(bad)
    for target in ("ds", "x"):
        bad = ds.copy()
        (bad.attrs if target == "ds" else bad["x"].attrs).update(center_dec=120.0)
        with pytest.raises(ValueError, match=r"\|Dec\| <= 90"):
            validate(bad)
    validate(ds)
