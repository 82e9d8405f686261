"""Toy models: deterministic, Table 1 photon counts, SNR-like structure."""
import numpy as np
import pytest

from xfusion import fusion_grid, predict, toy


def test_deterministic_and_seeded():
    a = toy.make("small", seed=1)
    b = toy.make("small", seed=1)
    c = toy.make("small", seed=2)
    np.testing.assert_array_equal(a[0].counts.values, b[0].counts.values)
    assert not np.array_equal(a[0].counts.values, c[0].counts.values)


@pytest.mark.parametrize("name,nx,ny,shapes", [
    ("gaussian_rebin", 2.7e6, 2.5e6, ((45, 45, 60), (15, 15, 2400), (45, 45, 2400))),
    ("realistic_rebin", 4.5e7, 3.0e7, ((45, 45, 60), (15, 15, 2400), (45, 45, 2400))),
])
def test_table1_counts_and_shapes(name, nx, ny, shapes, request):
    x_obs, y_obs, truth = request.getfixturevalue("gaussian_rebin_toy") if name == "gaussian_rebin" else toy.make(name)
    assert (x_obs.counts.shape, y_obs.counts.shape, truth.shape) == shapes
    assert x_obs.counts.sum() == pytest.approx(nx, rel=0.01)
    assert y_obs.counts.sum() == pytest.approx(ny, rel=0.01)
    g = fusion_grid(x_obs, y_obs)
    assert (g.attrs["spatial_factor"], g.attrs["spectral_factor"]) == (3, 40)
    assert truth.attrs["units"] == "ph cm-2 s-1"


def test_data_are_poisson_draws_of_the_model(small_toy):
    x_obs, y_obs, truth = small_toy
    for obs in (x_obs, y_obs):
        m = predict(truth, obs).values.astype(np.float64)
        d = obs.counts.values
        assert d.sum() == pytest.approx(m.sum(), rel=5 * np.sqrt(m.sum()) / m.sum())
        chi2 = np.sum((d - m) ** 2 / np.maximum(m, 1)) / d.size
        assert 0.8 < chi2 < 1.2


def test_snr_structure(gaussian_rebin_toy):
    x_obs, y_obs, truth = gaussian_rebin_toy
    amp = truth.sum("energy").values
    # a shell: brighter at the rim than at the centre, nearly empty in the corners
    c = amp[20:25, 20:25].mean()
    assert amp[:, :].max() > 3 * c and amp[:3, :3].mean() < 0.05 * c
    # red/blue split of O VIII Ly-a (0.6536 keV) near the centre, single line at the limb
    e = truth.energy.values
    band = (e > 0.63) & (e < 0.68)

    def peaks(spec):
        s = spec[band] - spec[band].min()
        return [i for i in range(1, s.size - 1) if s[i] > s[i - 1] and s[i] >= s[i + 1] and s[i] > 0.3 * s.max()]

    centre = truth.values[20:25, 20:25].sum(axis=(0, 1))
    assert len(peaks(centre)) == 2
    split = np.diff(e[band][peaks(centre)])[0] * 1e3
    assert 10 < split < 22  # eV, ~2 v_exp/c E = 17 eV
    limb = truth.values[22, 38]  # 160 arcsec north of centre
    assert len(peaks(limb)) == 1
    # temperature varies: continuum slope differs east vs west
    lo, hi = (e > 0.5) & (e < 0.55), (e > 1.2) & (e < 1.3)
    ratio = lambda sp: sp[hi].sum() / sp[lo].sum()  # noqa: E731
    assert ratio(truth.values[6, 22]) < 0.8 * ratio(truth.values[38, 22])


def test_misspelled_override_keys_are_refused():
    """Session 28 (fifth red-team pass): make("small", x={"count": 1e6}) ignored the misspelled key silently."""
    with pytest.raises(ValueError, match=r"'x.count' is not a configuration key; keys here: .*'counts'"):
        toy.make("small", x={"count": 1e6})
    with pytest.raises(ValueError, match="'sorce' is not a configuration key"):
        toy.make("small", sorce={"radius_arcsec": 10.0})


@pytest.mark.parametrize("kwargs, message", [
    ({"seed": None}, r"seed must be an integer >= 0.*got None"),
    ({"seed": -1}, r"seed must be an integer >= 0.*got -1"),
    ({"seed": 1.5}, r"seed must be an integer >= 0.*got 1.5"),
    ({"x": {"counts": 0}}, r"toy x.counts must be .* in \(0, 1e15\); got 0"),
    ({"y": {"counts": -5.0}}, r"toy y.counts must be .*; got -5.0"),
    ({"x": {"n_channels": 0}}, r"toy x.n_channels must be an integer >= 1; got 0"),
    ({"x": {"n_channels": 7}}, r"toy y.n_channels \(240\) must be a multiple of x.n_channels \(7\)"),
    ({"x": {"psf": {"kind": "airy"}}}, r"toy x.psf.kind must be 'gaussian' .* or 'king'.*got 'airy'"),
    # session 30 (red team): these failed deep inside (KeyError, ZeroDivisionError, 'lam value too large')
    ({"x": {"psf": {"kind": "king"}}}, r"toy x.psf.core_arcsec .* is required when x.psf.kind is 'king'"),
    ({"y": {"pixel_size": 5.0}}, r"toy y.pixel_size \(5 arcsec\) must be a whole multiple .* of x.pixel_size"),
    ({"y": {"pixel_size": 20.0}}, r"toy y.pixel_size \(20 arcsec\) .* divides x.shape \[15, 15\]"),
    ({"x": {"response": {"sigma_ev": 0.0}}}, r"toy x.response.sigma_ev must be .* in \(0, inf\); got 0.0"),
    ({"x": {"psf": {"sigma_arcsec": 0.0}}}, r"toy x.psf.sigma_arcsec must be .* in \(0, inf\); got 0.0"),
    ({"source": {"thickness_arcsec": 0.0}}, r"toy source.thickness_arcsec must be .*; got 0.0"),
    ({"source": {"kT_keV": [1.0, 0.5]}}, r"toy source.kT_keV\[1\] must be .* in \[1, inf\); got 0.5"),
    ({"lines": "foo"}, r"toy lines must be one of \['fe_k', 'soft'\]; got 'foo'"),
    ({"x": 5}, r"toy x must be a table .*; got 5"),
    ({"x": {"psf": {"kind": "king", "core_arcsec": 6.0, "beta": 0.8}}}, r"toy x.psf.beta must be .*beta > 1"),
    ({"x": {"response": {"kind": "ccd", "sigma_ev_at_1kev": 50.0, "tail_fraction": 1.0}}},
     r"toy x.response.tail_fraction must be .* in \[0, 1\); got 1.0"),
    ({"y": {"area": {"kind": "tophat"}}}, r"toy y.area.kind must be one of \('flat', 'pn_like', 'resolve_like'\)"),
])
def test_generator_arguments_are_checked_by_name(kwargs, message):
    """Session 29 (leftover of the session-28 red team): seed=None, counts=0, n_channels=0 or an unknown PSF kind
    failed inside NumPy ('lam value too large', ZeroDivisionError, KeyError 'core_arcsec') without naming the key."""
    with pytest.raises(ValueError, match=message):
        toy.make("small", **kwargs)
    x, y, _ = toy.make("small", seed=np.int64(3), x={"counts": np.float32(2e4)})  # NumPy scalars are fine
    assert x.attrs["seed"] == 3 and 0 < float(x["counts"].sum()) < 4e4


def test_velocity_sign_is_the_analysis_convention():
    """Session 29 (red team): the toy put lines at E0 (1 + v/c), so its "receding" knot (v_kms > 0) was blueshifted
    and xfusion.analysis.line_map (positive = receding) measured -2003 km/s for +2000. Now E0 / (1 + v/c)."""
    from xfusion.analysis import line_map

    for v in (-2000.0, 2000.0):
        _, _, truth = toy.make("small", source={"knot": {"v_kms": v, "brightness": 400.0}})
        knot = truth.sel(x=[20.0], y=[-30.0], method="nearest")
        m = line_map(knot, 1.0220, window=(1.000, 1.045), continuum=[(0.975, 0.995), (1.07, 1.09)],
                     method="gaussian")
        assert float(m.velocity[0, 0]) == pytest.approx(v, abs=60.0)


@pytest.mark.parametrize("kwargs, message", [
    ({"y": {"response": {"kind": "ccd"}}}, r"toy y.response.kind must be 'gaussian' .*; got 'ccd'"),
    ({"x": {"response": {"kind": "foo", "sigma_ev_at_1kev": 50.0}}},
     r"toy x.response.kind must be 'gaussian' .* or 'ccd' .*; got 'foo'"),
    ({"x": {"psf": {"beta": 3.0}}}, r"toy x.psf.beta is not read by a 'gaussian' psf .*set x.psf.kind to 'king'"),
    ({"x": {"response": {"tail_fraction": 0.1}}}, r"toy x.response.tail_fraction is not read by a 'gaussian'"),
    ({"x": {"psf": {"kind": "king", "core_arcsec": 6.0, "sigma_arcsec": 3.0}}},
     r"toy x.psf.sigma_arcsec is not read by a 'king' psf"),
])
def test_overrides_the_generator_would_not_read_are_refused(kwargs, message):
    """Session 30 (red team): y.response.kind="ccd" and x.psf.beta on a Gaussian PSF were accepted and changed nothing
    (identical toy), and x.response.kind="foo" was built as the CCD RMF. Each is refused naming the key."""
    with pytest.raises(ValueError, match=message):
        toy.make("small", **kwargs)
    # switching kind with the keys of the new kind is fine (the base's sigma_arcsec is simply not used)
    x, _, _ = toy.make("small", x={"psf": {"kind": "king", "core_arcsec": 6.0, "beta": 1.5},
                                   "response": {"kind": "ccd", "sigma_ev_at_1kev": 51.0}})
    assert x["response"].dims == ("energy_true", "energy")


def test_knot_velocity_beyond_the_shell_grid_is_refused():
    """Session 30 (red team): source.knot.v_kms = 6000 or 9000 km/s (v_exp 4000) was moved silently to the end of the
    shell's velocity grid (4400 km/s). It is refused naming the allowed range; the range's ends are accepted."""
    for v in (6000.0, -4500.0):
        with pytest.raises(ValueError, match=r"toy source.knot.v_kms must be .*\+-1.1 x source.v_exp_kms \(4000 "
                                             r"km/s\).* in \[-4400, 4400\]; got"):
            toy.make("small", source={"knot": {"v_kms": v}})
    with pytest.raises(ValueError, match=r"\[-6600, 6600\]; got 9000.0"):
        toy.make("small", source={"knot": {"v_kms": 9000.0}, "v_exp_kms": 6000.0})
    toy.make("small", source={"knot": {"v_kms": 4400.0}})
    toy.make("small", source={"knot": {"v_kms": 6500.0}, "v_exp_kms": 6000.0})
