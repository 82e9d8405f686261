"""Sharp-spatial channels that are no integer grouping of the fused channels, with a full RMF.

EPIC-pn's EBOUNDS below ~2.3 keV are irregular and sit up to half a 1 eV channel off a microcalorimeter's edges, so
no grouping of them nests in Resolve's channels (session 32: the events tutorial could not fuse 0.5-2 keV on the
real files). With a full RMF the model never needed the edges to line up (its rows are picked on the fused
channels): ``fusion_grid`` now says ``spectral_model="rmf"`` there, ``align`` keeps every channel of the common band,
and the upsampled-X baseline spreads each channel by its overlap."""
import numpy as np
import pytest
import xarray as xr
from scipy.stats import norm

import xfusion
from xfusion import metrics
from xfusion.baselines import upsample_spatial
from xfusion.observation import energy_edges


def _rmf(fine, edges, sigma=0.02):
    c = 0.5 * (fine[1:] + fine[:-1])
    m = norm.cdf((edges[None, 1:] - c[:, None]) / sigma) - norm.cdf((edges[None, :-1] - c[:, None]) / sigma)
    return xr.DataArray(m, dims=("energy_true", "energy"), attrs={"units": "1"},
                        coords={"energy_true_lo": ("energy_true", fine[:-1]), "energy_true_hi": ("energy_true", fine[1:]),
                                "energy_lo": ("energy", edges[:-1]), "energy_hi": ("energy", edges[1:])})


def _x_on(x, y, truth, edges, seed=1):
    ox = xfusion.observation(np.zeros((x.sizes["x"], x.sizes["y"], edges.size - 1)), dims=("x", "y", "energy"),
                             energy_edges=edges, pixel_size=float(x["x"].attrs["pixel_size"]),
                             exposure=float(x["exposure"]), effective_area=float(x["effective_area"]),
                             response=_rmf(energy_edges(y), edges), name="X (RMF)")
    lam = xfusion.predict(truth, ox)
    return ox.assign(counts=(lam.dims, np.random.default_rng(seed).poisson(lam.values).astype(np.float32)))


@pytest.fixture(scope="module")
def pair():
    x, y, truth = xfusion.toy.make("small")
    fine = energy_edges(y)
    nested = fine[::20]  # 12 channels of 20 fine ones
    rng = np.random.default_rng(3)
    irregular = nested.copy()
    irregular[1:-1] += rng.uniform(-0.3, 0.3, nested.size - 2) * np.diff(nested).mean()  # uneven, off the fine edges
    assert np.all(np.abs((irregular[1:-1, None] - fine[None, :])).min(axis=1) > 4e-5)  # > NEST_TOL
    return x, y, truth, _x_on(x, y, truth, nested), _x_on(x, y, truth, irregular)


def test_irregular_channels_with_an_rmf_fuse_as_well_as_nested_ones(pair):
    x, y, truth, xn, xi = pair
    assert xfusion.fusion_grid(xn, y).attrs["spectral_model"] == "rebin"
    grid = xfusion.fusion_grid(xi, y)
    assert grid.attrs["spectral_model"] == "rmf" and abs(grid.attrs["spectral_factor"] - 20) <= 2  # nominal
    assert "no integer grouping" in grid.attrs["explanation"]
    rn, ri = (xfusion.fuse(o, y, progress=False) for o in (xn, xi))
    assert ri.attrs["spectral_model"] == "rmf"
    qn, qi = metrics.nmse(rn.flux, truth), metrics.nmse(ri.flux, truth)
    assert qi > qn - 0.5, (qn, qi)  # the same information, other channels
    assert qi > metrics.nmse(upsample_spatial(xi, y), truth) + 3
    # the stored model of X is the RMF on the fused channels: predict gives the same counts
    np.testing.assert_allclose(xfusion.predict(ri.flux, xi).values, ri["model_spatial"].values, rtol=1e-3,
                               atol=1e-3 * float(ri["model_spatial"].max()))


def test_plots_tell_the_roles_of_rmf_channel_inputs_given_swapped(pair):
    """Session 33 (red team s32): with channels that are no grouping of the fused ones the plots could not tell the
    sharp-spatial input from its channel width, so x_obs / y_obs given swapped were drawn in each other's panels. The
    channels the result recorded for the sharp-spatial input decide."""
    import matplotlib

    matplotlib.use("Agg")
    from xfusion import plot

    x, y, truth, xn, xi = pair
    r = xfusion.fuse(xi, y, regularization="none", max_iter=2, tol=None, progress=False)
    assert plot._looks_spectral(r, xi) is False and plot._looks_spectral(r, y) is True
    fig = plot.line_maps(r, truth, y, xi)
    assert fig.axes[0].get_title().startswith(xi.attrs["name"])


def test_upsampled_x_spreads_each_channel_by_its_overlap(pair):
    x, y, truth, xn, xi = pair
    from xfusion.operators.model import build_model

    for o in (xn, xi):  # the spread keeps every pixel's counts
        z = upsample_spatial(o, y)
        weights = np.broadcast_to(build_model(xfusion.fusion_grid(o, y), o, "spatial").weights, z.shape)
        np.testing.assert_allclose((z.values * weights).sum(axis=-1), o["counts"].values.sum(axis=-1), rtol=1e-5)
    zn, zi = upsample_spatial(xn, y), upsample_spatial(xi, y)
    assert metrics.nmse(zi, truth) > metrics.nmse(zn, truth) - 1.0


def test_kernel_responses_still_need_nested_channels(pair):
    x, y, truth, xn, xi = pair
    k = xi.drop_vars(["response", "energy_true", "energy_true_lo", "energy_true_hi"], errors="ignore")
    k = xfusion.observation(k["counts"], energy_edges=energy_edges(xi), pixel_size=float(x["x"].attrs["pixel_size"]),
                            exposure=float(x["exposure"]), effective_area=float(x["effective_area"]),
                            response=x["response"], response_spacing=float(x["energy_offset"].attrs["spacing"]))
    with pytest.raises(ValueError, match="channel edges must line up"):
        xfusion.fusion_grid(k, y)


def test_align_keeps_every_channel_of_an_rmf_input_in_the_common_band(pair):
    x, y, truth, xn, xi = pair
    ysub = y.isel(energy=slice(7, 233))  # a fine band that starts and ends inside coarse channels
    a, b = xfusion.io.align(xi, ysub)
    ef, ec = energy_edges(b), energy_edges(a)
    inside = (energy_edges(xi)[:-1] >= ef[0]) & (energy_edges(xi)[1:] <= energy_edges(ysub)[-1])
    assert a.sizes["energy"] == int(inside.sum()) == 10
    assert ef[0] <= ec[0] < ef[1] and ef[-2] < ec[-1] <= ef[-1]  # the fine channels cover the kept ones, no more
    assert xfusion.fusion_grid(a, b).attrs["spectral_model"] == "rmf"


def test_rmf_channels_reaching_outside_the_fused_band_are_refused(pair):
    """Session 32 red team: X channels past the fused band fused silently, their out-of-band counts pushed into the
    edge channels (flux x1.21 there); refused with align as the fix."""
    x, y, truth, xn, xi = pair
    with pytest.raises(ValueError, match=r"reach outside the fused band.*xfusion.io.align"):
        xfusion.fusion_grid(xi, y.isel(energy=slice(7, 233)))
