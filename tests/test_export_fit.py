"""End-to-end check: files written by xfusion.io.ogip_write load and fit in gammapy.

A Gaussian line at a known energy is folded through a known ARF x RMF,
Poisson-sampled together with a flat background (on/off measurement), written
as OGIP PHA + BKG + RMF + ARF, read back with gammapy's OGIP reader and fitted
with a Gaussian line model (WSTAT): energy, width and flux recovered within 3 sigma.
The same files are loaded and fitted with Sherpa when it is importable (it is not a
dependency: sherpa 4.19 builds from source once bison, flex and FFTW3 are installed).
The gammapy test skips if gammapy is not installed.
"""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from scipy.special import erf

from xfusion.io.ogip_read import edges_coords
from xfusion.io.ogip_write import write_pha

LINE_E = 6.4        # keV
LINE_SIGMA = 0.03   # keV, intrinsic
LINE_FLUX = 1e-3    # photon / cm2 / s
EXPOSURE = 2e4      # s
RES_SIGMA = 0.06    # keV, detector resolution


def _need_gammapy():
    """Skip unless gammapy imports. Imported in the tests, not at collection: gammapy's import costs a test process
    ~2.5 s, which every process of `dev.py test` paid, also the one that never runs this file."""
    pytest.importorskip("gammapy.datasets", reason="gammapy (optional) not installed or not importable")


def _response():
    t_edges = np.linspace(0.5, 10.0, 951)            # 10 eV true bins
    e_edges = np.linspace(0.5, 10.0, 381)            # 25 eV channels
    et = 0.5 * (t_edges[1:] + t_edges[:-1])
    # exact Gaussian redistribution of each true-bin centre into channels
    cdf = 0.5 * (1 + erf((e_edges[None, :] - et[:, None]) / (np.sqrt(2) * RES_SIGMA)))
    m = np.diff(cdf, axis=1)
    m[m < 1e-7] = 0.0
    coords = edges_coords("energy_true", t_edges[:-1], t_edges[1:])
    coords.update(edges_coords("energy", e_edges[:-1], e_edges[1:]))
    coords["channel"] = xr.Variable("energy", np.arange(e_edges.size - 1))
    rmf = xr.DataArray(m, dims=("energy_true", "energy"), coords=coords,
                       attrs={"units": "1", "arf_folded": False})
    area = 300.0 + 200.0 * np.exp(-0.5 * ((et - 3.0) / 2.5) ** 2)
    arf = xr.DataArray(area, dims=("energy_true",),
                       coords=edges_coords("energy_true", t_edges[:-1], t_edges[1:]),
                       attrs={"units": "cm2"})
    return rmf, arf, t_edges, e_edges


def test_gammapy_fits_written_spectrum(tmp_path):
    _need_gammapy()
    import astropy.units as u
    from gammapy.datasets import OGIPDatasetReader
    from gammapy.modeling import Fit
    from gammapy.modeling.models import GaussianSpectralModel, SkyModel

    rmf, arf, t_edges, e_edges = _response()
    # photons per true bin: integral of the Gaussian line over each bin
    cdf = 0.5 * (1 + erf((t_edges - LINE_E) / (np.sqrt(2) * LINE_SIGMA)))
    photons = LINE_FLUX * np.diff(cdf) * arf.values * EXPOSURE
    mu_src = photons @ rmf.values
    n_chan = mu_src.size
    bkg_rate = 0.2                           # counts / channel in the source region
    alpha = 0.2                              # on-region area / off-region area
    rng = np.random.default_rng(20240601)
    counts_on = rng.poisson(mu_src + bkg_rate)
    counts_off = rng.poisson(np.full(n_chan, bkg_rate / alpha))

    # gammapy reads BACKSCAL as a column -> pass arrays (one value per channel)
    write_pha(counts_off, e_edges, EXPOSURE, tmp_path / "bkg.pha",
              backscal=np.full(n_chan, 1.0 / alpha), telescope="TOY", instrument="DET")
    write_pha(counts_on, e_edges, EXPOSURE, tmp_path / "src.pha", rmf=rmf, arf=arf,
              backfile="bkg.pha", backscal=np.ones(n_chan), obs_id=1,
              telescope="TOY", instrument="DET")

    dataset = OGIPDatasetReader(tmp_path / "src.pha").read()
    assert int(dataset.counts.data.sum()) == int(counts_on.sum())
    assert int(dataset.counts_off.data.sum()) == int(counts_off.sum())

    model = GaussianSpectralModel(
        amplitude=5e-4 * u.Unit("cm-2 s-1"), mean=6.2 * u.keV, sigma=0.05 * u.keV)
    dataset.models = SkyModel(spectral_model=model, name="line")
    # fit only where the line is; this also avoids the broad empty continuum
    dataset.mask_fit = dataset.counts.geom.energy_mask(5.5 * u.keV, 7.3 * u.keV)
    result = Fit().run(datasets=[dataset])
    assert result.success, result

    mean = model.mean.quantity.to_value("keV")
    err = model.mean.error * u.Unit(model.mean.unit).to("keV")
    amp = model.amplitude.quantity.to_value("cm-2 s-1")
    amp_err = model.amplitude.error
    print(f"gammapy fit: E = {mean:.4f} +- {err:.4f} keV (truth {LINE_E}); "
          f"flux = {amp:.3e} +- {amp_err:.1e} (truth {LINE_FLUX:.1e}); "
          f"sigma = {model.sigma.quantity.to_value('keV'):.4f} keV")
    sig = model.sigma.quantity.to_value("keV")
    sig_err = model.sigma.error * u.Unit(model.sigma.unit).to("keV")
    print(f"gammapy fit: sigma = {sig:.4f} +- {sig_err:.4f} keV (truth {LINE_SIGMA}, on a {RES_SIGMA} keV "
          "detector resolution)")
    assert 0 < err < 0.01
    assert abs(mean - LINE_E) < 3 * err
    assert abs(amp - LINE_FLUX) < 3 * amp_err
    # the intrinsic width, narrower than the detector resolution, is recovered through the written RMF
    assert 0 < sig_err < 0.5 * LINE_SIGMA
    assert abs(sig - LINE_SIGMA) < 3 * sig_err


def test_sherpa_fits_written_spectrum(tmp_path):
    """Sherpa fits the files as written (the optional ``sherpa`` extra: no wheel for this platform on PyPI, so it is
    built from source)."""
    ui = pytest.importorskip("sherpa.astro.ui", reason="sherpa not installed (dev.py test installs it when its source "
                             "build can run: it needs bison, flex and the FFTW headers); pip install -e '.[sherpa]'")
    rmf, arf, t_edges, e_edges = _response()
    cdf = 0.5 * (1 + erf((t_edges - LINE_E) / (np.sqrt(2) * LINE_SIGMA)))
    mu_src = (LINE_FLUX * np.diff(cdf) * arf.values * EXPOSURE) @ rmf.values
    n_chan = mu_src.size
    rng = np.random.default_rng(20240601)
    counts_on = rng.poisson(mu_src + 0.2)
    counts_off = rng.poisson(np.full(n_chan, 1.0))
    grouping = np.where(np.arange(n_chan) % 2 == 0, 1, -1)
    write_pha(counts_off, e_edges, EXPOSURE, tmp_path / "bkg.pha", backscal=5.0)
    write_pha(counts_on, e_edges, EXPOSURE, tmp_path / "src.pha", rmf=rmf, arf=arf, backfile="bkg.pha",
              backscal=1.0, grouping=grouping)
    ui.clean()
    ui.set_stat("wstat")
    ui.load_pha(str(tmp_path / "src.pha"))
    data = ui.get_data()
    assert int(data.counts.sum()) == int(counts_on.sum()) and int(ui.get_bkg().counts.sum()) == int(counts_off.sum())
    assert data.grouped and np.array_equal(data.grouping, grouping)
    # Sherpa's prediction for the true line equals ours (same files, same folding)
    ui.set_source(ui.normgauss1d.g)
    g = ui.get_model_component("g")
    g.pos, g.fwhm, g.ampl = LINE_E, LINE_SIGMA * np.sqrt(8 * np.log(2)), LINE_FLUX
    ui.ungroup()
    np.testing.assert_allclose(data.eval_model(ui.get_model()), mu_src, rtol=1e-6, atol=1e-9)
    g.pos, g.fwhm, g.ampl = 6.3, 0.1, 5e-4
    g.pos.min, g.pos.max = 5.5, 7.3
    ui.notice(5.5, 7.3)
    ui.set_method("neldermead")
    ui.fit()
    ui.set_method("levmar")
    ui.fit()
    ui.covar()
    r = ui.get_covar_results()
    val = dict(zip(r.parnames, zip(r.parvals, r.parmaxes)))
    (pos, pos_err), (fwhm, fwhm_err), (amp, amp_err) = val["g.pos"], val["g.fwhm"], val["g.ampl"]
    k = np.sqrt(8 * np.log(2))
    print(f"sherpa fit: E = {pos:.4f} +- {pos_err:.4f} keV, sigma = {fwhm / k:.4f} +- {fwhm_err / k:.4f} keV, "
          f"flux = {amp:.3e} +- {amp_err:.1e}")
    assert abs(pos - LINE_E) < 3 * pos_err and abs(fwhm / k - LINE_SIGMA) < 3 * fwhm_err / k
    assert abs(amp - LINE_FLUX) < 3 * amp_err
    ui.clean()


def _fit_pha_with_stat_err(pha_path, band, mean0, sigma0):
    """gammapy chi2 fit of a Gaussian line + constant to a PHA's data with its STAT_ERR (as flux points).

    gammapy's OGIP reader uses Poisson statistics only; a spectrum whose errors are given (POISSERR = F) is fitted
    here as flux points: dnde = data / (exposure x area x dE) with dnde_err from STAT_ERR, statistic chi2."""
    import astropy.units as u
    from astropy.io import fits
    from astropy.table import Table
    from gammapy.datasets import FluxPointsDataset
    from gammapy.estimators import FluxPoints
    from gammapy.modeling import Fit
    from gammapy.modeling.models import ConstantSpectralModel, GaussianSpectralModel, SkyModel

    from xfusion.io.ogip_read import read_arf

    with fits.open(pha_path) as h:
        sp, eb, hdr = h["SPECTRUM"].data, h["EBOUNDS"].data, h["SPECTRUM"].header
        assert hdr["POISSERR"] is False
        col = "RATE" if "RATE" in sp.columns.names else "COUNTS"
        t_exp = 1.0 if col == "RATE" else hdr["EXPOSURE"]
        data, err = np.asarray(sp[col], float) / t_exp, np.asarray(sp["STAT_ERR"], float) / t_exp
        lo, hi = np.asarray(eb["E_MIN"], float), np.asarray(eb["E_MAX"], float)
        arf_name = hdr["ANCRFILE"]
    area = read_arf(pha_path.parent / arf_name).values
    sel = (lo >= band[0]) & (hi <= band[1])
    de = hi - lo
    t = Table()
    t["e_ref"] = 0.5 * (lo + hi)[sel] * u.keV
    t["e_min"], t["e_max"] = lo[sel] * u.keV, hi[sel] * u.keV
    t["dnde"] = (data / area / de)[sel] * u.Unit("cm-2 s-1 keV-1")
    t["dnde_err"] = (err / area / de)[sel] * u.Unit("cm-2 s-1 keV-1")
    t.meta["SED_TYPE"] = "dnde"
    line = GaussianSpectralModel(amplitude=np.sum((data / area)[sel]) * u.Unit("cm-2 s-1"), mean=mean0 * u.keV,
                                 sigma=sigma0 * u.keV)
    cont = ConstantSpectralModel(const=float(np.median(t["dnde"].value)) * u.Unit("cm-2 s-1 keV-1"))
    ds = FluxPointsDataset(models=SkyModel(spectral_model=line + cont, name="src"),
                           data=FluxPoints.from_table(t, sed_type="dnde"))
    res = Fit().run(datasets=[ds])
    assert res.success, res
    return line.mean.value, line.mean.error, line.sigma.value, ds.stat_sum() / max(int(sel.sum()) - 4, 1)


def test_gammapy_fits_a_fused_region_spectrum_with_replica_errors(tmp_path):
    """A fused-like region spectrum (Gaussian line on a continuum, noise correlated between channels) written with
    STAT_ERR from replicas: gammapy's chi2 fit recovers the line centre within its error."""
    _need_gammapy()
    from scipy.ndimage import gaussian_filter1d

    from xfusion.io.ogip_write import write_pha_from_result

    rng = np.random.default_rng(7)
    edges = np.linspace(6.5, 6.9, 161)  # 2.5 eV channels
    e, de = 0.5 * (edges[1:] + edges[:-1]), np.diff(edges)
    centre, width = 6.6912, 0.006  # keV
    truth = 2e-4 * de + 2e-3 * (0.5 * (1 + erf((edges[1:] - centre) / (np.sqrt(2) * width)))
                                - 0.5 * (1 + erf((edges[:-1] - centre) / (np.sqrt(2) * width))))
    cube = np.broadcast_to(truth / 4, (2, 2, e.size))  # a 2x2-pixel region

    def noisy(k):  # correlated over ~2 channels, 4% of the peak
        nz = gaussian_filter1d(rng.normal(size=(k, 2, 2, e.size)), 1.0, axis=-1)
        return cube[None] + 0.04 * cube.max() * nz / nz.std()
    coords = {"energy_lo": ("energy", edges[:-1]), "energy_hi": ("energy", edges[1:])}
    res = xr.Dataset({"flux": (("x", "y", "energy"), noisy(1)[0])}, coords=coords)
    unc = xr.Dataset({"flux_replicas": (("replica", "x", "y", "energy"), noisy(30))}, coords=coords)
    pha, _, _ = write_pha_from_result(res, np.ones((2, 2), bool), tmp_path / "region", exposure=1e5, area=100.0,
                                      uncertainty=unc)
    mean, err, sigma, chi2_dof = _fit_pha_with_stat_err(pha, (6.62, 6.78), 6.69, 0.01)
    print(f"gammapy chi2 fit with STAT_ERR: E = {mean:.5f} +- {err:.5f} keV (truth {centre}), sigma {sigma:.4f} keV, "
          f"chi2/dof {chi2_dof:.2f}")
    assert 0 < err < 0.002
    assert abs(mean - centre) < 3 * err
    assert abs(sigma - width) < 0.002
