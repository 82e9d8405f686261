"""Scene suite (xfusion.scenes): valid data with the requested counts, deterministic, an independent
simulator that agrees with xfusion.predict in expectation, truth maps that match the cube."""
import numpy as np
import pytest

from xfusion import analysis, fusion_grid, predict, scenes


@pytest.mark.parametrize("kind", scenes.KINDS)
def test_each_kind_valid_with_requested_counts(kind):
    cx, cy = 2.0e5, 1.3e5
    x, y, truth = scenes.make(kind, seed=7, counts=(cx, cy), size="small", psf_pixels=2.0)
    for obs, c in ((x, cx), (y, cy)):
        d = obs.counts.values
        assert np.all(np.isfinite(d)) and d.min() >= 0 and np.all(d == np.round(d))
        assert abs(d.sum() - c) < 5 * np.sqrt(c)
    f = truth.flux.values
    assert np.all(np.isfinite(f)) and f.min() >= 0 and f.sum() > 0
    assert truth.flux.attrs["units"] == "ph cm-2 s-1"
    g = fusion_grid(x, y)
    assert (g.sizes["x"], g.sizes["energy"]) == f.shape[1:] and g.attrs["spectral_factor"] == 40
    # truth maps: defined where the matching emission is, named reference line
    assert set(truth.data_vars) >= {"velocity", "line_width", "line_flux"}
    assert ("temperature" in truth) or ("index" in truth)
    if kind == "synchrotron":
        assert truth.attrs["has_lines"] == 0 and np.all(np.isnan(truth.velocity)) and "temperature" not in truth
    else:
        bright = truth.line_flux.values >= np.quantile(truth.line_flux.values, 0.5)
        assert np.all(np.isfinite(truth.velocity.values[bright]))
        assert np.all(truth.line_width.values[bright] > 0)
        assert scenes.line_map_args(truth)["line_energy"] == truth.attrs["line_energy_kev"]


def test_deterministic_seeds_and_sky_independent_of_counts():
    a = scenes.make("cluster_core", seed=3, size="small")
    b = scenes.make("cluster_core", seed=3, size="small")
    c = scenes.make("cluster_core", seed=4, size="small")
    np.testing.assert_array_equal(a[0].counts.values, b[0].counts.values)
    np.testing.assert_array_equal(a[1].counts.values, b[1].counts.values)
    assert not np.array_equal(a[2].flux.values, c[2].flux.values)
    d = scenes.make("cluster_core", seed=3, size="small", counts=3e7)
    ratio = d[2].flux.values.astype(np.float64) / np.maximum(a[2].flux.values, 1e-30)
    sel = a[2].flux.values > 1e-3 * a[2].flux.values.max()
    np.testing.assert_allclose(ratio[sel], 10.0, rtol=1e-4)  # same sky, 10x the photons


def test_suite_deterministic_disjoint_and_spanning():
    tune, held = scenes.suite("tune"), scenes.suite("heldout")
    assert tune == scenes.suite("tune") and len(tune) == 24
    assert not {s["seed"] for s in tune} & {s["seed"] for s in held}
    for specs in (tune, held):
        assert {s["kind"] for s in specs} == set(scenes.KINDS)
        assert {s["response"] for s in specs} == set(scenes.RESPONSES)
        assert {s["geometry"] for s in specs} == set(scenes.GEOMETRIES)
        counts = np.array([s["counts"] for s in specs])
        assert counts.min() >= 1e5 * 0.999 and counts[:, 0].max() < 1e8 and counts[:, 0].max() > 1e7
        psf = np.array([s["psf_pixels"] for s in specs])
        assert psf.min() >= 1 and psf.max() <= 5 and psf.max() - psf.min() > 3
        assert len({s["name"] for s in specs}) == len(specs)
    with pytest.raises(ValueError, match="split"):
        scenes.suite("train")


@pytest.mark.parametrize("geometry,response,kind,tol", [
    ("table1", "gaussian", "snr_shell", 1e-4),
    ("table1", "realistic", "point_sources", 5e-3),
    ("xmm_resolve", "gaussian", "synchrotron", 1e-4),
    ("xmm_resolve", "realistic", "cluster_core", 5e-3),
])
def test_independent_simulator_agrees_with_predict(geometry, response, kind, tol):
    """Expected counts of the scene simulator (scipy FFT convolutions, reshape sums, analytic response
    matrices) vs xfusion.predict on the same truth. Gaussian: the same instrument, two codes; realistic:
    also a small calibration mismatch on purpose (17-band vs 5-band PSF, RMF rows and ARF steps on a
    coarser true-energy grid)."""
    x, y, truth = scenes.make(kind, seed=11, size="small", geometry=geometry, response=response,
                              noise=False, psf_pixels=2.5)
    for obs in (x, y):
        m = predict(truth.flux, obs).values.astype(np.float64)
        d = obs.counts.values.astype(np.float64)
        assert np.abs(m - d).sum() / d.sum() < tol
        assert abs(m.sum() / d.sum() - 1) < tol


def test_counts_are_poisson_draws_of_the_expectation():
    x, y, _ = scenes.make("mixed", seed=5, size="small", counts=2e6)
    xe, ye, _ = scenes.make("mixed", seed=5, size="small", counts=2e6, noise=False)
    for obs, exp in ((x, xe), (y, ye)):
        d, m = obs.counts.values.astype(np.float64), exp.counts.values.astype(np.float64)
        chi2 = np.sum((d - m) ** 2 / np.maximum(m, 1)) / d.size
        assert 0.85 < chi2 < 1.15


def test_truth_maps_match_line_map_of_the_truth_cube():
    """The physical truth maps (moments of the sky model) agree with line_map measured on the cube."""
    _, _, truth = scenes.make("snr_shell", seed=2, size=(30, 1200), noise=False)
    m = analysis.line_map(truth, lsf_sigma=truth.attrs["lsf_sigma_kev"], **scenes.line_map_args(truth))
    bright = truth.line_flux.values >= np.quantile(truth.line_flux.values, 0.5)
    dv = m.velocity.values[bright] - truth.velocity.values[bright]
    assert np.sqrt(np.mean(dv ** 2)) < 60.0
    assert np.ptp(truth.velocity.values[bright]) > 500  # a real velocity field, not a constant
    np.testing.assert_allclose(m.flux.values[bright], truth.line_flux.values[bright], rtol=0.05)


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown scene kind"):
        scenes.make("galaxy")
    with pytest.raises(ValueError, match="multiple of"):
        scenes.make("snr_shell", size=(25, 600))
    with pytest.raises(TypeError, match="unknown physics"):
        scenes.make("snr_shell", size="small", v_gradient=3.0)
    with pytest.raises(ValueError, match="counts"):
        scenes.make("snr_shell", size="small", counts=-1)
    with pytest.raises(ValueError, match="psf_pixels"):
        scenes.make("snr_shell", size="small", psf_pixels=0)
