"""End-to-end check: files written by xfusion.io.export load and fit in gammapy.

A Gaussian line at a known energy is folded through a known ARF x RMF,
Poisson-sampled together with a flat background (on/off measurement), written
as OGIP PHA + BKG + RMF + ARF, read back with gammapy's OGIP reader and fitted
with a Gaussian line model (WSTAT).  Skipped if gammapy is not installed.
"""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from scipy.special import erf

gammapy = pytest.importorskip(
    "gammapy.datasets", reason="gammapy (optional) not installed or not importable")

import astropy.units as u  # noqa: E402
from gammapy.datasets import OGIPDatasetReader  # noqa: E402
from gammapy.modeling import Fit  # noqa: E402
from gammapy.modeling.models import GaussianSpectralModel, SkyModel  # noqa: E402

from xfusion.io.export import write_pha  # noqa: E402
from xfusion.io.ogip import edges_coords  # noqa: E402

LINE_E = 6.4        # keV
LINE_SIGMA = 0.03   # keV, intrinsic
LINE_FLUX = 1e-3    # photon / cm2 / s
EXPOSURE = 2e4      # s
RES_SIGMA = 0.06    # keV, detector resolution


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
    assert 0 < err < 0.01
    assert abs(mean - LINE_E) < 3 * err
    assert abs(amp - LINE_FLUX) < 3 * amp_err
