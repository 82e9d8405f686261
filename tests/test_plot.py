"""Plot functions: Figures with labelled axes (units) on the small toy; summary writes a PNG."""
import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

import xfusion  # noqa: E402
from xfusion import plot  # noqa: E402


@pytest.fixture(scope="module")
def fused(small_toy):
    x, y, truth = small_toy
    # explicit settings: "auto" ones would be tuned by thinning, which these figures are not about
    return xfusion.fuse(x, y, progress=False, k=1.0, n_scales_1d=2, null_space="zero"), truth


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _labelled(fig, xunit, yunit):
    axes = [a for a in fig.axes if a.get_label() != "<colorbar>" and a.get_visible()]
    assert axes
    for a in axes:
        assert xunit in a.get_xlabel(), a.get_xlabel()
        assert yunit in a.get_ylabel(), a.get_ylabel()
        assert a.get_title()
    return axes


def _colorbar_labels(fig):
    return [a.get_ylabel() for a in fig.axes if a.get_label() == "<colorbar>"]


def test_amplitude_maps(fused, small_toy):
    res, truth = fused
    fig = plot.amplitude_maps(res, truth)
    assert isinstance(fig, Figure)
    axes = _labelled(fig, "arcsec", "arcsec")
    assert len(axes) == 4
    titles = " ".join(a.get_title() for a in axes)
    assert res.attrs["spatial_obs"] in titles and res.attrs["spectral_obs"] in titles
    cbs = _colorbar_labels(fig)
    assert len(cbs) == 3  # X counts, Y counts, one shared for fused + truth
    assert sum("counts" in c for c in cbs) == 2 and any("cm$^{-2}$" in c for c in cbs)
    # fused and truth share one colour scale
    ims = [a.images[0] for a in axes[2:]]
    assert ims[0].get_clim() == ims[1].get_clim()
    # extent: pixel edges in arcsec, y up
    x = res["x"].values
    assert np.allclose(axes[2].images[0].get_extent(), [x[0] - 5, x[-1] + 5, x[0] - 5, x[-1] + 5])
    # inputs from the observations themselves also work
    x_obs, y_obs, _ = small_toy
    fig = plot.amplitude_maps(x_obs=x_obs, y_obs=y_obs)
    assert [a.get_title().split("\n")[0] for a in _labelled(fig, "arcsec", "arcsec")] == [
        x_obs.attrs["name"], y_obs.attrs["name"]]


def test_spectra(fused):
    res, truth = fused
    fig = plot.spectra(res, truth, pixels=[(7, 7), (0, 0)])
    axes = _labelled(fig, "keV", "keV$^{-1}$")
    assert len(axes) == 2
    labels = [t.get_text() for t in axes[0].get_legend().get_texts()]
    assert "fused" in labels and "truth" in labels and any("rescaled" in s for s in labels)
    fig = plot.spectra(res, regions=[(slice(0, 3), slice(0, 3)), (slice(-20.0, 20.0), slice(-20.0, 20.0))])
    axes = _labelled(fig, "keV", "ph cm")
    assert "9 px" in axes[0].get_title() and "25 px" in axes[1].get_title()
    fig = plot.spectra(res)  # automatic bright + typical pixel
    assert len(_labelled(fig, "keV", "ph cm")) == 2
    with pytest.raises(ValueError, match="outside"):
        plot.spectra(res, pixels=[(99, 0)])


def test_auto_pixels(fused):
    res, _ = fused
    (bx, by), (fx, fy) = plot.auto_pixels(res)
    amp = res["flux"].sum("energy").values
    assert amp[bx, by] == amp.max()
    assert 0 < amp[fx, fy] < amp.max()


def test_error_maps(fused):
    res, truth = fused
    fig = plot.error_maps(res, truth)
    _labelled(fig, "arcsec", "arcsec")
    cbs = _colorbar_labels(fig)
    assert any("rad" in c for c in cbs) and any("%" in c for c in cbs)


def test_objective_history(fused):
    res, _ = fused
    fig = plot.objective_history(res)
    (ax,) = _labelled(fig, "iteration", "dimensionless")
    assert ax.get_yscale() == "log"
    assert len(ax.get_lines()) == 3


def test_line_band_is_a_line_without_truth(fused, small_toy):
    res, truth = fused
    x_obs, _, _ = small_toy
    lo, hi = plot.line_band(res, x_obs=x_obs)
    # one sharp-spatial channel ...
    xe = np.append(x_obs["energy_lo"].values, x_obs["energy_hi"].values[-1])
    assert np.isclose(xe, lo).any() and np.isclose(xe, hi).any() and np.isclose(hi - lo, xe[1] - xe[0])
    # ... holding the strongest line of the true field spectrum above its continuum
    spec = truth.sum(("x", "y")).values
    e = truth["energy"].values
    inside = (e >= lo) & (e <= hi)
    assert spec[inside].max() > 1.5 * np.median(spec)
    lo2, hi2 = plot.line_band(res, width=0.02)
    # the same line: the 20 eV band's centre (the line) lies in the sharp-spatial channel found above (session 29:
    # was "that channel's centre lies in the 20 eV band", true only for a line near the channel's centre)
    assert 0.015 <= hi2 - lo2 <= 0.03 and lo <= 0.5 * (lo2 + hi2) <= hi


def test_line_maps_state_the_band(fused, small_toy):
    res, truth = fused
    x_obs, y_obs, _ = small_toy
    fig = plot.line_maps(res, truth, x_obs, y_obs, band=(0.65, 0.725))
    axes = _labelled(fig, "arcsec", "arcsec")
    assert len(axes) == 4 and all("0.65-0.725 keV" in a.get_title() for a in axes)
    # the fused map is the fused flux summed over the band's channels
    sel = (res["energy"] >= 0.65) & (res["energy"] <= 0.725)
    img = axes[2].images[0].get_array()
    np.testing.assert_allclose(img, res["flux"].isel(energy=np.flatnonzero(sel.values)).sum("energy").T.values,
                               rtol=1e-5)
    assert axes[2].images[0].get_clim() == axes[3].images[0].get_clim()


def test_summary_png(fused, small_toy, tmp_path):
    res, truth = fused
    x_obs, y_obs, _ = small_toy
    path = tmp_path / "summary.png"
    fig = plot.summary(res, truth, path=path, x_obs=x_obs, y_obs=y_obs)
    assert isinstance(fig, Figure)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 50_000
    head = fig.get_suptitle()
    lo, hi = plot.line_band(res, x_obs=x_obs)
    assert "NMSE" in head and f"line maps in {lo:.4g}-{hi:.4g} keV" in head
    assert "X upsampled in energy" in head and "Y upsampled in space" in head  # the baselines' metrics
    axes = [a for a in fig.axes if a.get_label() != "<colorbar>"]
    assert len(axes) == 8  # 4 line maps + 2 spectra + history + SAM map
    assert all(f"{lo:.4g}-{hi:.4g} keV" in a.get_title() for a in axes[:4])
    # spectra: fused, truth and both baselines in the legend; the fused/true line ratio in the title
    labels = [t.get_text() for t in axes[4].get_legend().get_texts()]
    assert {"fused", "truth", "baseline: X upsampled in energy", "baseline: Y upsampled in space"} <= set(labels)
    assert "fused/true flux in the line band" in axes[4].get_title()
    # SAM map: NaN (grey) where the true flux is below half the field mean, the mean over the rest
    sam_img = np.ma.getdata(axes[7].images[0].get_array()).astype(float)
    amp = truth.sum("energy").transpose("y", "x").values
    no_signal = amp < 0.5 * amp.mean()
    assert no_signal.any() and np.all(np.isnan(sam_img[no_signal])) and np.all(np.isfinite(sam_img[~no_signal]))
    sam = xfusion.metrics.sam_map(truth, res["flux"]).T
    assert f"mean {np.mean(sam[~no_signal]):.3f} rad over {int((~no_signal).sum())} px" in axes[7].get_title()
    fig = plot.summary(res, pixels=[(3, 3), (7, 7), (10, 2)])  # no truth: 3 maps, 3 spectra, history
    assert len([a for a in fig.axes if a.get_label() != "<colorbar>"]) == 7
    # session 28: the PNG is marked as xfusion's; saving again replaces it, a user's own file at the path is refused
    assert plot.is_xfusion_png(path) and plot.png_software(path).startswith("xfusion ")
    plot.summary(res, path=path, pixels=[(3, 3), (7, 7)])
    mine = tmp_path / "mine.png"
    mine.write_bytes(b"\x89PNG\r\n\x1a\n my own figure")
    with pytest.raises(ValueError, match="not a figure xfusion wrote"):
        plot.summary(res, path=mine, pixels=[(3, 3), (7, 7)])
    assert mine.read_bytes().endswith(b"my own figure")


def test_plot_and_io_are_importable_from_the_package():
    import subprocess
    import sys

    code = "import xfusion, sys; xfusion.plot.summary; xfusion.io.read_events; print('matplotlib.pyplot' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"  # importing xfusion does not start pyplot


def _velocity_line_maps(n=6):
    import xarray as xr

    rng = np.random.default_rng(0)
    v = np.linspace(-400, 400, n * n).reshape(n, n)
    v[0, 0] = np.nan  # no line there: drawn grey
    coords = {"x": np.arange(n) * 10.0, "y": np.arange(n) * 10.0}
    maps = xr.Dataset({"velocity": (("x", "y"), v + rng.normal(0, 30, v.shape)),
                       "velocity_err": (("x", "y"), np.where(np.isnan(v), np.nan, 30.0))}, coords=coords,
                      attrs={"n_replicas": 20, "name": "Fe XXV"})
    return maps, xr.Dataset({"velocity": (("x", "y"), v)}, coords=coords)


def test_velocity_maps_in_kms(fused):
    maps, truth = _velocity_line_maps()
    fig = plot.velocity_maps(maps, truth)
    axes = _labelled(fig, "arcsec", "arcsec")
    assert len(axes) == 3 and "error" in axes[1].get_title() and "20 replicas" in axes[1].get_title()
    assert all("km/s" in c for c in _colorbar_labels(fig))
    # velocity and truth share one symmetric scale; the error has its own, from 0
    assert axes[0].images[0].get_clim() == axes[2].images[0].get_clim()
    lo, hi = axes[0].images[0].get_clim()
    assert lo == -hi and axes[1].images[0].get_clim()[0] == 0
    assert np.ma.getmaskarray(axes[1].images[0].get_array())[0, 0] or np.isnan(axes[1].images[0].get_array()[0, 0])
    with pytest.raises(ValueError, match="velocity_err"):
        plot.velocity_maps(maps.drop_vars("velocity_err"))
    # the summary's third row: velocity, error, truth
    res, _ = fused
    n = res.sizes["x"]
    maps, truth = _velocity_line_maps(n)
    maps, truth = (m.assign_coords(x=res["x"].values, y=res["y"].values) for m in (maps, truth))
    fig = plot.summary(res, velocity=maps, velocity_truth=truth, pixels=[(3, 3)])
    labels = _colorbar_labels(fig)
    assert sum("km/s" in c for c in labels) == 3


def test_error_maps_place_the_maps_by_dim_name(fused):
    """Session 30: an (energy, y, x) result had its SAM and relative-error maps pasted into an (y, x) template:
    drawn transposed (square field) or failed (non-square)."""
    result, truth = fused
    flux = result.flux.isel(y=slice(0, 12))  # non-square: 15 x 12
    tr = truth.isel(y=slice(0, 12))
    fig = plot.error_maps(flux.transpose("energy", "y", "x"), tr)
    drawn = np.asarray(fig.axes[0].get_images()[0].get_array())
    np.testing.assert_allclose(drawn, xfusion.metrics.sam_map(tr, flux).T, equal_nan=True)


def test_spectra_refuse_a_truth_on_another_grid(fused):
    """Session 30: plot.spectra took the truth by position: a reversed or cropped truth was drawn for the wrong pixel."""
    result, truth = fused
    with pytest.raises(ValueError, match=r"different grids.*sortby\('x'\)"):
        plot.spectra(result, truth.isel(x=slice(None, None, -1)), pixels=[(2, 11)])
    with pytest.raises(ValueError, match="truth has 14 values along x but the fused cube has 15"):
        plot.spectra(result, truth.isel(x=slice(1, None)), pixels=[(2, 11)])


def test_swapped_observations_take_their_roles(fused, small_toy):
    """Session 30: x_obs / y_obs were taken by position; swapped, spectra drew the X counts of pixel (0, 3) for
    pixel (2, 11) and the line band came from a fine Y channel."""
    result, _ = fused
    x, y, truth = small_toy
    ax = plot.spectra(result, None, pixels=[(2, 11)], x_obs=y, y_obs=x, rebin=1).axes[0]
    xs = x.counts.values.astype(float)[2, 11]
    [p] = [p for p in ax.patches if p.get_label().startswith("X")]
    d = p.get_data()
    shape = d.values * np.diff(d.edges)
    np.testing.assert_allclose(shape / shape.sum(), xs / xs.sum(), rtol=1e-4)
    assert plot.line_band(result, x_obs=y) == plot.line_band(result, x_obs=x)
    fig = plot.line_maps(result, truth, y, x)
    assert fig.axes[0].get_title().startswith(x.attrs["name"])


@pytest.mark.parametrize("band,why", [((875, 950), "in eV"), ((2.0, 3.0), "outside"), ((0.95, 0.875), "lo > hi"),
                                      ((0.9001, 0.9002), "narrower")])
def test_a_band_selecting_no_channel_is_refused(fused, small_toy, band, why):
    """Session 30: such bands drew all-zero maps titled with the band, without an error."""
    result, truth = fused
    x, y, _ = small_toy
    with pytest.raises(ValueError, match=rf"selects no channel.*{why}.*0\.5-1\.4 keV"):
        plot.line_maps(result, truth, x, y, band=band)
    if band == (875, 950):
        with pytest.raises(ValueError, match="selects no channel"):
            plot.summary(result, truth, band=band)


@pytest.fixture(scope="module")
def resolve_pixels():
    """A result fused with a detector-pixel (Resolve binned by PIXEL) sharp-spectral observation."""
    import xarray as xr

    rng = np.random.default_rng(0)
    n, ef = 24, np.linspace(6.0, 6.4, 21)
    truth = np.full((n, n, 20), 0.02)
    truth[8:14, 10:16, 8:12] += 0.5
    x = xfusion.observation(rng.poisson(truth.reshape(n, n, 5, 4).sum(-1) * 50.0), energy_edges=ef[::4],
                            pixel_size=4.0, exposure=50.0, dims=("x", "y", "energy"), name="X")
    g = (np.arange(3) - 1) * 12.0
    dx, dy = (a.ravel() for a in np.meshgrid(g, g, indexing="ij"))
    geo = dict(energy_edges=ef, pixel_size=12.0, exposure=100.0, dims=("pixel", "energy"), det_x=dx, det_y=dy,
               roll=17.0, array_center=(1.3, -2.1), name="Y (Resolve pixels)")
    empty = xfusion.observation(np.zeros((9, 20)), **geo)
    grid = xfusion.fusion_grid(x, empty)
    t = xr.DataArray(truth, dims=("x", "y", "energy"),
                     coords={c: grid[c] for c in ("x", "y", "energy", "energy_lo", "energy_hi")})
    y = xfusion.observation(rng.poisson(xfusion.predict(t, empty).values), **geo)
    return xfusion.fuse(x, y, regularization="none", method="em", max_iter=3, progress=False), t, x, y


def test_results_with_detector_pixels_are_plotted_with_a_note(resolve_pixels):
    """Session 30: every figure failed with "Dimensions {'x_spectral', 'y_spectral'} do not exist" (or "cannot rename
    'x'" with y_obs=); the Y map is now a note panel and the Y spectrum a note in the legend."""
    r, t, x, y = resolve_pixels
    for fig in (plot.amplitude_maps(r, t), plot.line_maps(r, t), plot.line_maps(r, t, x, y)):
        texts = [tx.get_text() for a in fig.axes for tx in a.texts]
        assert any("9 detector pixels" in tx for tx in texts), texts
    ax = plot.spectra(r, t, pixels=[(10, 12)]).axes[0]
    assert any("detector pixels, counts not drawn" in tx.get_text() for tx in ax.get_legend().get_texts())
    plot.summary(r, t)
    plot.summary(r, t, x_obs=y, y_obs=x)
