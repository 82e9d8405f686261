r"""Error bars of a fused cube from replicas: ``xfusion.uncertainty(result, *observations, ...)``.

A fused cube is a regularized, deconvolved estimate: its voxels are correlated and their
scatter is not Poisson. Its uncertainty is measured by refitting replicas of the data with
exactly the settings the result recorded (:func:`xfusion.settings_of`: no re-tuning).

Methods
-------
``"bootstrap"`` (parametric bootstrap, default)
    Replica ``i`` draws new counts of every instrument from the fitted model,
    ``d*_X ~ Poisson(model_spatial)``, ``d*_Y ~ Poisson(model_spectral)`` (the result's
    predicted counts; Gaussian data terms: model + N(0, variance)), and refits them:
    ``z*_i = fuse(d*_X, d*_Y, settings)``. The spread of ``z*`` around its mean estimates the
    spread of the estimator around its expectation; the bias of the regularization is NOT in
    it (see "What the intervals mean" below).
``"thinning"``
    Replica ``i`` splits the observed counts binomially, ``A ~ Binomial(d, 1/2)``,
    ``B = d - A`` (two independent Poisson halves of the data), fits each half with half
    the exposure, and forms ``z*_i = z + (z_A - z_B) / 2``: for an estimator whose
    variance scales as 1/exposure, ``var((z_A - z_B)/2) = var(z_A)/2 = var(z)``. It uses
    no model (robust to a wrong fit) at twice the cost per replica, and it is only
    approximate where the estimator is far from linear (very low counts, thresholding).
    Observations with a known background are refused.

Warm starts. When the fit converged (stopped by ``tol``), or is an EM fit with a prior that
sets the estimator (its penalized fixed point; stopped at ``max_iter`` it is a truncation of
it), replicas start from the result (``fuse(..., init=result)``). When the iteration count is
the regularizer (early-stopped Richardson-Lucy ``"none"``, low rank stopped at ``max_iter``,
the starlet with ``null_space="threshold"`` stopped early, any method other than EM that did
not converge), a warm start would run a different estimator (more iterations from a better
start), so those replicas start cold with the same count (``warm="auto"``; the choice is
recorded per replica).

Capped warm replicas (``max_iter="auto"``). A warm replica runs a fixed number of iterations
(no ``tol`` stop: started on the plateau, a relative-change rule stops it after ~8 iterations
on a 45x45x2400 shell, before its deviation has grown). That deviation grows slowly as EM
iterates (measured on a 45x45x2400 shell: RMS of the replica spread after 10, 15, 20, 25, 30
iterations = 0.80, 0.87, 0.91, 0.94, 0.97 of its value after 40; its pattern is set
early, correlation with the 40-iteration deviation 0.95 at 10 and 0.99 at 20). So replicas
stop after half the fit's iterations, and replica 0 -- the control -- runs as many as the fit
did and gives ``control_ratio`` = RMS(deviation at the end) / RMS(deviation at the cap); every
capped replica is reported as ``flux + control_ratio * (z_capped - flux)``. ``max_iter=None``
runs every replica to the stopping rule.

Spectral-shape prior (``shape_prior``, on with ``regularization="auto"``; recorded, so every replica is delivered
through it as the fit was). The control compares delivered cubes: its deviation at the cap is that of its capped fit
through the prior (one extra capped fit), not of the raw iterate (which also carries the prior's own correction:
control_ratio 0.90 instead of 1.03, replica std 0.88 of the real scatter on cluster_core/500007, session 8).
Thinning refits each half with half the pseudo-counts (a half has half the photons: each pixel keeps its shrinkage
weight n_p / (n_p + n0)); with the full n0 the replica std was 0.90 of the real scatter there, 0.98 with n0 / 2.

What the intervals mean -- two kinds
------------------------------------
* **Noise-only** (always): ``flux +- flux_std`` (or the 16-84% quantiles): the spread of the
  *regularized* estimator under photon noise. It covers the estimator's expectation, not the
  truth: the prior's bias (lines flattened, the finest spatial x spectral bands the instruments
  cannot see removed: ``null_space="zero"``) is not in it. ``flux_replica_mean - flux`` is the
  bootstrap estimate of that bias at the fitted model, which underestimates the bias at the
  truth (the fitted model is already smooth), so it is reported, not subtracted.
* **Bias-aware** (``bias_aware=True``): ``[flux_lo, flux_hi] = ml_flux -+ t ml_flux_std``, from
  the unregularized maximum-likelihood refit of the same data (``ML_SETTINGS``: multi-instrument
  Richardson-Lucy with no prior, 1000 iterations or a relative change of 1e-5) and ``n``
  bootstrap replicas of it; ``t`` (attribute ``interval_factor``) is the 84.1% quantile of
  Student's t with n-1 degrees of freedom, because the std is estimated from ``n`` replicas
  (1.06 for n=10, 1.03 for n=20; multiply line-map errors of the view by it too). Without a
  prior the estimate is nearly unbiased (voxel bias / noise 0.23-0.34 on the held-out scenes vs
  0.6-4.9 for the tuned fit), so this interval covers the truth close to 68% of the time (measured:
  benchmarks/MEASUREMENTS.md); it is wider, and centred on the ML cube rather than on the tuned one (the tuned cube
  is the better image; the ML interval is the honest error bar). The ``ml_*`` variables hold the
  ML cube, its spread, replicas and region spectra;
  :func:`bias_aware_view` returns them in the layout of this output (for
  :func:`xfusion.analysis.line_map_errors` and the PHA exports). ``bias_aware={"max_iter": K}``
  (or ``"tol"``) overrides ``ML_SETTINGS`` (recorded in the attribute ``ml_settings``).
  Tried and not kept (session 7): ML replicas warm from the ML fit, capped at K iterations and
  scaled by a control replica's ratio (as capped EM replicas are) are 3-7x cheaper but NOT
  calibrated -- one global ratio cannot serve every scale (RL's fine-scale noise keeps growing
  while region sums have converged): on held-out seed 500007 (12x240, 20 x 20) cluster_core
  voxels / regions / velocity were covered 0.54 / 0.92 / 0.75 at K=100 and 0.57 / 0.82 / 0.74 at
  K=300, against 0.64 / 0.69 / 0.71 with cold 1000-iteration replicas.

  Why 1000 iterations: Richardson-Lucy without a prior is still regularized by its iteration
  count. It converges slowly in the directions the data constrain weakly -- the spectral shape
  of a fused pixel inside the sharp-spectral instrument's PSF -- and what is left there is a
  bias that no bootstrap sees (the replicas are drawn from the already-smooth fit). Measured on
  the expected (noise-free) counts of a held-out Fe-K ``mixed`` scene (12x240): line-centroid
  bias 33 km/s RMS after 200 iterations, 25 after 1000, 18 after 3000, against a velocity noise
  of 30 km/s at 200 (bootstrap bias estimate: 4 km/s); velocity pulls had std 1.58 at 200 and
  1.04 at 1000. More iterations trade that bias for noise (the noise grows to 55 km/s at 1000:
  wider, honest error bars); the cost is one fit and ``n`` replicas of 1000 RL iterations
  (replicas start cold: an unconverged RL count is the regularizer).

Outputs (a Dataset; flux unit ph cm-2 s-1 per voxel as in the result)
--------------------------------------------------------------------
* ``flux`` (x, y, energy): the result's cube (a copy); ``flux_std``: standard deviation
  over the replicas (ddof=1); ``flux_quantile`` (quantile, x, y, energy): the 16, 50 and
  84% replica quantiles; ``flux_replica_mean``. A 68% interval is ``flux +- flux_std``.
* ``flux_replicas`` (replica, x, y, energy): every replica cube (read lazily from the
  store when ``store=`` is given) -- :func:`xfusion.analysis.line_map` takes them
  (``replicas=``) for line-map errors.
* Regions (``regions``: a dict name -> region, or a list; a region is a boolean (x, y)
  mask, a list of (ix, iy) pixels, a pair of slices or a box ``{"x": (x0, x1), "y": (y0,
  y1)}`` in pixel indices, end excluded; default one region ``"all"``, the whole field):
  ``region_spectrum`` (region, energy), summed flux; ``region_std``; ``region_quantile``;
  ``region_replicas`` (replica, region, energy); ``region_covariance`` (region, energy,
  energy2): covariance across replicas (ddof=1; rank <= n-1, so with fewer replicas than
  channels it is singular -- see the README, "Fitting exported spectra");
  ``region_mask`` (region, x, y).
* Per replica: ``replica_seed``, ``replica_iterations``, ``replica_converged``,
  ``replica_warm``, ``replica_elapsed_s``, ``replica_capped``. Attributes: ``method``, ``n``,
  ``seed``, the ``settings`` used (JSON), ``store`` (or "none"), ``control_ratio``,
  ``capped_replicas``.
* With ``bias_aware=True``: ``flux_lo``/``flux_hi`` (x, y, energy) and ``region_lo``/
  ``region_hi`` (region, energy), the bias-aware 68% interval; ``ml_flux``, ``ml_flux_std``,
  ``ml_flux_replicas``, ``ml_region_spectrum``... (the ML refit and its replicas); attributes
  ``bias_aware``, ``ml_settings``, ``ml_iterations``, ``ml_converged``.

Resuming. With ``store=PATH`` every finished replica is written to ``PATH/replica_NNNNN``
(a Zarr store written to a temporary sibling and renamed when complete, so a replica on
disk is complete). ``PATH`` is created by xfusion with its marker attribute and a
fingerprint of the problem (result flux and models, settings, method, seed); a rerun with
the same problem skips the replicas already there (``n`` may grow), a different problem is
refused, and a path xfusion did not create is never written into. Each replica records the
SHA-256 of its cube (dtype, shape, bytes) and of its record, checked when a rerun reads it: a
missing, truncated or altered replica raises :class:`ReplicaStoreError` naming it (delete that
replica folder and rerun to recompute it), as does a store written before replicas carried
checksums (format 1: its replicas cannot be verified). One run at a time: the call holds the
writer's lock ``PATH.lock`` (pid and host, as the checkpoints'; a killed run's lock is
recovered, a live holder is named in the error) until its replicas are written and summarized.

Parallel. With ``client`` (a ``dask.distributed.Client``) the observations, their models and
the start are scattered once to every worker (one object); each replica is then a small task
(``client.submit`` with its index), written to the store as it finishes.

Observations. Any number (issue 18: pn + MOS1 + MOS2 + Resolve tiles...): pass them in the
order given to :func:`xfusion.fuse`; every one is resampled from its own predicted counts
(``model_spatial``, ``model_spectral``, ``model_obsI``) and checked against the counts the
result recorded.

Replica ``i`` draws from ``numpy.random.default_rng([seed, i])``: reruns and resumed runs
are reproducible replica by replica.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from pathlib import Path

import numpy as np
import xarray as xr

from .checkpoints import _block_sha
from .io import zarr as xzarr
from .io.safe_files import writable_folder
from .io.writer_lock import WriterLock
from .solvers import heap

__all__ = ["uncertainty", "bias_aware_view", "METHODS", "QUANTILES", "ML_SETTINGS"]

METHODS = ("bootstrap", "thinning")
#: the replica quantiles reported (a 68% central interval and the median)
QUANTILES = (0.16, 0.5, 0.84)
#: root attribute of a replica store (with the fingerprint of the problem)
STORE_ATTR = "xfusion_uncertainty"
_CUBE = ("x", "y", "energy")
#: the unregularized maximum-likelihood refit behind the bias-aware intervals (``bias_aware=True``): two- (or
#: more-) instrument Richardson-Lucy with no prior, run to a tight relative change (or the cap)
ML_SETTINGS = {"regularization": "none", "method": "em", "max_iter": 1000, "tol": 1e-5}
#: the keys of ML_SETTINGS a dict ``bias_aware={...}`` may override
_ML_OVERRIDES = ("max_iter", "tol")
#: variables of the bias-aware part (prefix ``ml_``) that :func:`bias_aware_view` returns without the prefix
_ML_VARS = ("flux", "flux_std", "flux_quantile", "flux_replica_mean", "flux_replicas", "region_spectrum",
            "region_std", "region_quantile", "region_replicas", "region_covariance", "replica_iterations",
            "replica_converged", "replica_warm", "replica_elapsed_s", "replica_capped")


# ------------------------------------------------------------------------------------------- inputs
def _as_int(v, what, low):
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)) or v < low:
        raise ValueError(f"{what} must be an integer >= {low} (not a bool or float); got {v!r}")
    return int(v)


def _on_obs_axes(obs, da, rename, what="predicted counts"):
    """A result variable of one input (``model_*``, ``counts_*``, ``mask_*``) as an array in the order of
    ``obs['counts'].dims`` (its axes renamed back by ``rename``); refused if its shape is not the observation's."""
    dims = obs["counts"].dims
    m = da.rename({k: v for k, v in rename.items() if k in da.dims or k in da.coords})
    m = m.drop_vars([c for c in m.coords if c not in m.dims], errors="ignore")
    if set(m.dims) != set(dims) or m.transpose(*dims).shape != obs["counts"].shape:
        raise ValueError(f"the result's {what} {dict(da.sizes)} do not match the observation's counts "
                         f"{dict(obs['counts'].sizes)}: pass the observations the result was fitted on, in the same "
                         "order")
    return m.transpose(*dims).values


def _check_mask(obs, recorded, rename):
    """Refuse an observation whose ``mask`` is not the one the result records for its position (``recorded``: the
    result's ``mask_*`` variable, None when the input had no mask, i.e. every voxel used). Session 33 (red team s32):
    the instrument check compares predicted counts, which a mask does not change, so the same observation without
    its mask passed and its replicas were fitted on voxels the result never used (flux_std x0.23)."""
    given = np.asarray(obs["mask"].transpose(*obs["counts"].dims).values, bool) if "mask" in obs else None
    used = np.asarray(_on_obs_axes(obs, recorded, rename, "mask"), bool) if recorded is not None else None
    if given is None and used is None:
        return
    given = np.ones(obs["counts"].shape, bool) if given is None else given
    used = np.ones(obs["counts"].shape, bool) if used is None else used
    n = int(np.count_nonzero(given != used))
    if n:
        raise ValueError(
            f"observation '{obs.attrs.get('name', '?')}' has a different mask from the one the result was fitted "
            f"with ({n} voxels differ; the result used {int(used.sum())} of {used.size} voxels, this observation "
            f"marks {int(given.sum())} valid): pass the observations the result was fitted on, unchanged (with their "
            "mask) and in the same order")


def _obs_counts(obs, model, rename, recorded=None, subspace=False):
    """Model counts of one instrument as an array in the order of ``obs['counts'].dims``; ``recorded``: the counts
    the result says it was fitted on (checked against the observation's). ``subspace``: a low-rank result, whose
    predicted counts are those of the unclipped ``W V`` (the delivered flux is clipped at 0): where they are negative
    the Poisson mean of a replica is 0 (session 28: such results were refused as "not a usable fit")."""
    def arr(da, what="predicted counts"):
        return np.asarray(_on_obs_axes(obs, da, rename, what), dtype=np.float64)

    v = arr(model)
    if recorded is not None and not np.allclose(arr(recorded, "recorded counts"),
                                                np.asarray(obs["counts"].values, np.float64), rtol=1e-6, atol=0):
        raise ValueError(f"observation '{obs.attrs.get('name', '?')}' is not the one the result was fitted on in "
                         "that position (its counts differ from the result's recorded counts): pass the observations "
                         "the result was fitted on, in the same order")
    if subspace and "variance" not in obs:
        v = np.maximum(v, 0.0)
    if not np.all(np.isfinite(v)) or (np.any(v < 0) and "variance" not in obs):  # Gaussian data may be < 0
        raise ValueError("the result's predicted counts contain NaN, inf or negative values: not a usable fit")
    return v


_SPATIAL_RENAME = {"energy_spatial": "energy", "energy_spatial_lo": "energy_lo", "energy_spatial_hi": "energy_hi"}
_SPECTRAL_RENAME = {"x_spectral": "x", "y_spectral": "y"}


def _models_of(result, observations):
    """Expected counts of every observation (in the order given, as arrays in the order of its counts' dims) from
    the result's predicted counts: ``model_spatial`` / ``model_spectral`` for the pair that sets the fused grid,
    ``model_obsI`` (I = position in the call of :func:`xfusion.fuse`) for any further input."""
    from .grid import fusion_grid, input_positions

    pos = input_positions(fusion_grid(*observations))
    extra = json.loads(result.attrs.get("extra_observations", "[]"))
    if len(extra) != len(observations) - 2:
        raise ValueError(f"the result was fitted on {2 + len(extra)} observations but {len(observations)} were given: "
                         "pass the observations the result was fitted on, in the same order")
    from . import registry

    reg = str(result.attrs.get("regularization", ""))
    sub = reg in registry.REGULARIZATIONS and registry.regularization(reg).family == registry.SUBSPACE
    models = [None] * len(observations)
    models[pos[0]] = _obs_counts(observations[pos[0]], result["model_spatial"], _SPATIAL_RENAME,
                                 result.get("counts_spatial"), sub)
    _check_mask(observations[pos[0]], result.get("mask_spatial"), _SPATIAL_RENAME)
    models[pos[1]] = _obs_counts(observations[pos[1]], result["model_spectral"], _SPECTRAL_RENAME,
                                 result.get("counts_spectral"), sub)
    _check_mask(observations[pos[1]], result.get("mask_spectral"), _SPECTRAL_RENAME)
    for p in pos[2:]:
        name = f"model_obs{p}"
        if name not in result:
            raise ValueError(f"the result has no {name} (predicted counts of input {p}): pass the observations the "
                             "result was fitted on, in the same order")
        mod = result[name]
        rename = {d: d[: -len(f"_obs{p}")] for d in list(mod.dims) + list(mod.coords) if d.endswith(f"_obs{p}")}
        models[p] = _obs_counts(observations[p], mod, rename, result.get(f"counts_obs{p}"), sub)
        _check_mask(observations[p], result.get(f"mask_obs{p}"), rename)
    _check_instruments(result, observations, models, sub)
    return models


#: largest relative L1 difference between the result's predicted counts of an input and the counts the given
#: observation predicts from the result's flux (measured: 2e-8 - 2e-7 for matching inputs, float32 flux)
MODEL_MISMATCH = 1e-4


def _check_instruments(result, observations, models, subspace):
    """Refuse observations whose instrument (exposure, area, PSF, response, mask, background) is not the one the
    result was fitted with: their expected counts from the result's flux (a low-rank result's unclipped cube) must
    be the result's predicted counts (session 29: only the counts were compared, so the same counts with twice the
    exposure gave replicas of another problem and a -50% "bias"). Each observation is modelled in the role the result
    records for its position (session 32: roles were looked up by name, so unnamed inputs, or inputs sharing a name,
    were refused: an image with a psf could be the sharp-spatial input or a further one on its pixels)."""
    from .grid import PIXELS, SPATIAL, SPECTRAL
    from .operators.model import _predict

    # the role of each position as fuse gave it; further inputs on the fused channels and detector-pixel tiles are
    # modelled as the sharp-spectral one (no record, an older result: predict's rule, by name)
    roles = {int(r["input"]): r["role"] if r["role"] in (SPATIAL, PIXELS) else SPECTRAL
             for r in json.loads(result.attrs.get("inputs", "[]"))}
    flux = result["flux"].transpose(*_CUBE)
    if subspace and "coefficients" in result and "basis" in result:
        values = np.asarray(result["coefficients"].transpose("x", "y", "component").values, np.float64) @ \
            np.asarray(result["basis"].transpose("component", "energy").values, np.float64)
    else:
        values = np.asarray(flux.values, np.float64)
    for i, (o, m) in enumerate(zip(observations, models)):
        if "variance" in o:  # Gaussian data terms (JWST): no counts model to compare here
            continue
        pred = np.asarray(_predict(flux, values, o, roles.get(i)).transpose(*o["counts"].dims).values, np.float64)
        if subspace:
            pred = np.maximum(pred, 0.0)
        diff = float(np.sum(np.abs(pred - m))) / max(float(np.sum(m)), 1e-300)
        if diff > MODEL_MISMATCH:
            raise ValueError(
                f"observation '{o.attrs.get('name', '?')}' does not predict the result's counts from the result's flux "
                f"(relative difference {diff:.3g}; its exposure, effective area, PSF, response, mask or background "
                "differ from those the result was fitted with): pass the observations the result was fitted on, "
                "unchanged and in the same order")


def _box(region, shape):
    """A ``{'x': (x0, x1), 'y': (y0, y1)}`` box as slices, its bounds integers with ``0 <= lo < hi <= size`` (session
    29: negative, fractional and out-of-field bounds were cut silently, e.g. x (-2, 15) gave the last 2 columns)."""
    if isinstance(region, dict) and set(region) == {"x", "y"}:
        try:
            (x0, x1), (y0, y1) = region["x"], region["y"]
        except (TypeError, ValueError) as exc:
            raise ValueError(f"a box region is {{'x': (x0, x1), 'y': (y0, y1)}} in pixel indices; got {region!r}") \
                from exc
        out = []
        for d, (lo, hi), size in (("x", (x0, x1), shape[0]), ("y", (y0, y1), shape[1])):
            ok = all(isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)) for v in (lo, hi))
            if not ok or not 0 <= lo < hi <= size:
                raise ValueError(f"box region {d} {(lo, hi)!r}: bounds must be integers with 0 <= low < high <= {size} "
                                 f"(pixel indices of the {shape[0]}x{shape[1]} field, high excluded)")
            out.append(slice(int(lo), int(hi)))
        return tuple(out)
    return region


def region_masks(regions, shape, coords=None):
    """``(names, masks (R, x, y) bool)`` from ``regions`` (see the module docstring); ``coords``: the cube's ``(x, y)``
    coordinate values, by which a DataArray mask with coordinates is read (:func:`~xfusion.io.ogip_write.region_mask`)."""
    from .io.ogip_write import region_mask

    if regions is None:
        return ["all"], np.ones((1,) + tuple(shape), bool)
    if isinstance(regions, dict):
        items = list(regions.items())
    elif isinstance(regions, (list, tuple)):
        items = [(f"region{i}", r) for i, r in enumerate(regions)]
    else:
        raise ValueError("regions must be a dict name -> region or a list of regions (boolean (x, y) masks, (ix, iy) "
                         f"pixel lists, slice pairs or {{'x': (x0, x1), 'y': (y0, y1)}} boxes); got "
                         f"{type(regions).__name__}")
    if not items:
        raise ValueError("regions is empty; pass None for the whole field")
    labels = [str(k) for k, _ in items]
    if len(set(labels)) != len(labels):
        raise ValueError(f"region names must be distinct as text (they label the output); got {[k for k, _ in items]}")
    masks = []
    for name, r in items:
        m = region_mask(_box(r, shape), shape, coords)
        if not m.any():
            raise ValueError(f"region {name!r} selects no pixel of the {shape[0]}x{shape[1]} field")
        masks.append(m)
    return labels, np.stack(masks)


# ----------------------------------------------------------------------------------- one replica
def _with_counts(obs, counts, exposure_factor=1.0):
    """A copy of ``obs`` with new counts (and exposure scaled); the input is never modified."""
    out = obs.copy(deep=False)
    out["counts"] = obs["counts"].copy(data=counts.astype(obs["counts"].dtype, copy=False))
    if exposure_factor != 1.0:
        out["exposure"] = obs["exposure"] * exposure_factor
    return out


def _fit(observations, settings, init, callback=None):
    from .fuse import fuse

    r = fuse(*observations, progress=False, init=init, callback=callback, **settings)
    return (np.asarray(r["flux"].transpose(*_CUBE).values, dtype=np.float32), int(r.attrs["iterations"]),
            bool(r.attrs["converged"]))


def replica(index, seed, method, observations, models, start, settings, warm, cap=None, control=False):
    """Replica ``index``: ``(flux (x, y, energy) float32, metadata dict)``; arrays and observations in, arrays
    out (runs on a Dask worker as is). ``observations``: in the order given to :func:`xfusion.fuse`;
    ``models``: their expected counts (arrays in the order of each observation's counts); ``start``: the
    result's flux DataArray (x, y, energy) on the fused grid (the warm start, and the centre of thinning
    replicas). Every observation is resampled, each from its own model (or split).

    ``cap`` (bootstrap, warm starts): ``(cap, full)`` iterations, run exactly (no ``tol`` stop: a warm start sits
    near the plateau, where a relative-change rule stops before the replica's deviation has grown). A replica
    stops after ``cap`` iterations; the ``control`` replica runs ``full`` (the fit's own count) and records
    ``control_ratio`` = RMS(z_full - start) / RMS(z_cap - start), with which :func:`uncertainty` scales the
    capped replicas' deviations. ``cap >= full``: every replica runs ``full``, nothing is scaled."""
    t0 = time.perf_counter()
    rng = np.random.default_rng([int(seed), int(index)])
    init = start if warm else None
    if method == "bootstrap":
        from .gaussian_fission import bootstrap_draw  # Gaussian terms: model + N(0, variance)

        drawn = [bootstrap_draw(o, m, rng) if "variance" in o else _with_counts(o, rng.poisson(m).astype(np.float32))
                 for o, m in zip(observations, models)]
        extra = {}
        if cap is None:
            z, it, conv = _fit(drawn, settings, init)
        elif cap[0] >= cap[1]:
            z, it, conv = _fit(drawn, dict(settings, max_iter=int(cap[1]), tol=None), init)
        elif not control:
            z, it, conv = _fit(drawn, dict(settings, max_iter=int(cap[0]), tol=None), init)
            extra["capped"] = True
        else:
            seen = {}

            def watch(i, state):  # the iterate after `cap` iterations, and the last one (internal units)
                seen["last"] = state["z"]
                if i == cap[0]:
                    seen["cap"] = np.array(state["z"], dtype=np.float64)
                return False

            z, it, conv = _fit(drawn, dict(settings, max_iter=int(cap[1]), tol=None), init, callback=watch)
            f0 = np.asarray(start.values, dtype=np.float64)
            if "cap" in seen and float(np.sum(z, dtype=np.float64)) > 0:
                if settings.get("shape_prior") is not None:
                    # fuse delivers its cube through the spectral-shape prior, so do the capped replicas and the
                    # start: the raw iterate at the cap is not comparable with them (its deviation from the start
                    # includes the prior's own correction). The capped fit itself, delivered like theirs.
                    d_cap = _fit(drawn, dict(settings, max_iter=int(cap[0]), tol=None), init)[0].astype(
                        np.float64) - f0
                else:
                    internal = float(np.sum(seen["last"], dtype=np.float64)) / float(np.sum(z, dtype=np.float64))
                    d_cap = seen["cap"] / internal - f0
                d_full = z.astype(np.float64) - f0
                extra["control_ratio"] = float(np.sqrt(np.mean(d_full ** 2) / max(np.mean(d_cap ** 2), 1e-300)))
            else:  # no flux (all counts zero): nothing to scale
                extra["control_ratio"] = 1.0
    else:
        first, second = [], []
        for obs in observations:
            d = np.asarray(obs["counts"].values)
            a = rng.binomial(np.rint(d).astype(np.int64), 0.5).astype(np.float32)
            first.append(_with_counts(obs, a, 0.5))
            second.append(_with_counts(obs, d - a, 0.5))
        half = settings
        if settings.get("shape_prior") is not None:  # a half has half the photons: half the pseudo-counts give
            # every pixel the shrinkage weight n_p / (n_p + n0) it has in the full-data fit
            sp = settings["shape_prior"]
            half = dict(settings, shape_prior=[0.5 * float(v) for v in sp] if isinstance(sp, (list, tuple))
                        else 0.5 * float(sp))
        za, ia, ca = _fit(first, half, init)
        zb, ib, cb = _fit(second, half, init)
        flux = np.asarray(start.values, dtype=np.float64)
        z = (flux + 0.5 * (za.astype(np.float64) - zb)).astype(np.float32)
        it, conv = ia + ib, ca and cb
    meta = {"index": int(index), "iterations": it, "converged": bool(conv), "warm": bool(warm),
            "elapsed_s": time.perf_counter() - t0}
    if method == "bootstrap":
        meta.update(extra)
    return z, meta


def _replica_packed(index, seed, method, packed, settings, warm, cap, control):
    """:func:`replica` with ``(observations, models, start)`` as one object (scattered once to every worker)."""
    observations, models, start = packed
    return replica(index, seed, method, observations, models, start, settings, warm, cap, control)


# ------------------------------------------------------------------------------------- the store
#: format of a replica store: 2 = every replica carries the SHA-256 of its cube and of its record (format 1: none)
STORE_FORMAT = 2


class ReplicaStoreError(xzarr.OutputError):
    """A replica store xfusion refuses to use: in use by another run, written before replicas were verified, or a
    replica that fails verification (missing, truncated or altered data)."""


class ReplicaStore:
    """Replicas on disk: ``PATH`` (a Zarr group xfusion created, marked and fingerprinted) holding one
    complete Zarr store ``replica_NNNNN`` per finished replica, with the SHA-256 digests of its cube
    (dtype, shape and bytes, as the checkpoints' ``_block_sha``) and of its record, checked on every read.

    The constructor takes the writer's lock ``PATH.lock`` (:class:`xfusion.io.writer_lock.WriterLock`, as the
    checkpoints) before it creates or checks the store, and holds it until :meth:`close` (also a context manager;
    a store dropped without ``close`` releases it when collected)."""

    def __init__(self, path, fingerprint, inputs=()):
        self._lock = None
        self.path = Path(os.fspath(path))
        self.given = os.fspath(path)
        self.fingerprint = fingerprint
        self._check()  # a path that is not ours is refused before anything is written (the lock included)
        parent = self.path.absolute().parent
        try:
            writable_folder(parent, self.path.name + ".")
        except OSError as exc:
            raise xzarr.OutputError(f"cannot write store {self.given!r}: folder {str(parent)!r} is not writable "
                                    f"({exc.strerror or exc})") from exc
        self._lock = WriterLock(parent / f"{self.path.name}.lock", f"replica store {self.given!r}", ReplicaStoreError)
        try:
            self._lock.acquire()
            if not self._check():  # again under the lock: another run may have created it meanwhile
                root = xr.Dataset(attrs={STORE_ATTR: {"fingerprint": fingerprint, "format": STORE_FORMAT}})
                xzarr.write(root, self.path, inputs=list(inputs))
        except BaseException:
            self.close()
            raise

    def _check(self):
        """False if there is no store yet; True if ``PATH`` is a replica store of this problem; else raises."""
        p, path = self.path, self.given
        if not (p.exists() or p.is_symlink()):
            return False
        if not xzarr.is_zarr_store(p) or not xzarr.written_by_xfusion(p):
            raise xzarr.OutputError(f"store {str(path)!r} exists and was not created by xfusion.uncertainty; "
                                    "refusing to write into it: choose another path")
        attrs = json.loads((p / "zarr.json").read_text()).get("attributes") or {}
        rec = attrs.get(STORE_ATTR)
        if not isinstance(rec, dict):
            raise xzarr.OutputError(f"store {str(path)!r} is an xfusion store but not a replica store of "
                                    "xfusion.uncertainty; choose another path")
        if rec.get("format") != STORE_FORMAT:
            raise ReplicaStoreError(f"replica store {str(path)!r} was written by an older xfusion, before replicas "
                                    "carried checksums: its replicas cannot be verified (a damaged one would "
                                    "silently change the error bars); delete that store (it was written by xfusion) "
                                    "and rerun to recompute the replicas, or use a new store")
        if rec.get("fingerprint") != self.fingerprint:
            raise xzarr.OutputError(f"store {str(path)!r} holds replicas of a different problem (result, "
                                    "observations, settings, method or seed differ); choose another path, or "
                                    "remove that store yourself if it is no longer needed")
        return True

    def close(self):
        """Release the lock (if this object holds it)."""
        if getattr(self, "_lock", None) is not None:
            self._lock.release()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 - e.g. at interpreter exit; a dead run's lock is recovered anyway
            pass

    def _name(self, i):
        return self.path / f"replica_{i:05d}"

    def _damaged(self, i, what):
        return ReplicaStoreError(f"replica store {self.given!r}: replica {i} ({str(self._name(i))!r}) {what}; it "
                                 "was written by xfusion: delete that replica folder and rerun to recompute it, or "
                                 "use a new store")

    def done(self, i):
        """True if replica ``i`` is in the store (verified when read); a folder in its place that is not a
        replica xfusion wrote is an error (it would be in the way of writing it)."""
        q = self._name(i)
        if xzarr.is_zarr_store(q) and xzarr.written_by_xfusion(q):
            return True
        if q.exists() or q.is_symlink():
            raise self._damaged(i, "is not a complete replica (missing or unreadable zarr.json)")
        return False

    def write(self, z, meta):
        rec = json.dumps(meta)
        ds = xr.Dataset({"flux": (_CUBE, z)}, attrs={"replica": rec, "flux_sha256": _block_sha(z),
                                                     "replica_sha256": hashlib.sha256(rec.encode()).hexdigest()})
        xzarr.write(ds, self._name(meta["index"]), inputs=[])

    def read(self, i, lazy=True):
        """Replica ``i``'s cube (a Dask array over the store if ``lazy``, else NumPy) and record, after checking
        them against their digests (the cube is read once for that)."""
        try:
            ds = xr.open_zarr(os.fspath(self._name(i)), consolidated=False, chunks={} if lazy else None)
            rec, digests = ds.attrs["replica"], (ds.attrs.get("flux_sha256"), ds.attrs.get("replica_sha256"))
            values = np.ascontiguousarray(ds["flux"].values)
            meta = json.loads(rec)
        except Exception as exc:  # noqa: BLE001 - any reader failure means a damaged replica
            raise self._damaged(i, f"cannot be read ({type(exc).__name__}: {exc})") from exc
        if not all(isinstance(d, str) for d in digests):
            raise self._damaged(i, "has no checksum (flux_sha256, replica_sha256)")
        if _block_sha(values) != digests[0]:
            raise self._damaged(i, "fails its checksum (missing, truncated or altered data)")
        if hashlib.sha256(rec.encode()).hexdigest() != digests[1] or not isinstance(meta, dict):
            raise self._damaged(i, "has an altered record (checksum mismatch)")
        return (ds["flux"].data if lazy else values), meta


def _fingerprint(flux, models, counts, settings, method, seed, warm):
    h = hashlib.sha256()
    for a in (flux, *models, *counts):
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(memoryview(a).cast("B") if a.size else b"")
    h.update(json.dumps([settings, method, int(seed), bool(warm)], sort_keys=True, default=str).encode())
    return h.hexdigest()


# ------------------------------------------------------------------------------------------ main
@heap.retained()
def uncertainty(result, *observations, n=20, method="bootstrap", client=None, store=None, seed=0, regions=None,
                warm="auto", max_iter="auto", covariance=True, bias_aware=False, progress=False) -> xr.Dataset:
    """Per-voxel and region errors of a fused cube from ``n`` refitted replicas (see the module docstring).

    Parameters
    ----------
    result : Dataset returned by :func:`xfusion.fuse` (in memory) on ``observations``.
    *observations : the observations it was fitted on, two or more, in the order given to :func:`xfusion.fuse`
        (e.g. pn, Resolve, MOS1, MOS2): every one is resampled from its own predicted counts
        (``model_spatial``, ``model_spectral``, ``model_obsI``) or split, and the replica is refitted on all.
    n : number of replicas (>= 2).
    method : "bootstrap" (parametric, from the fitted model) or "thinning" (binomial halves of the data).
    client : optional ``dask.distributed.Client``: replicas run as independent tasks on its workers.
    store : optional path of a Zarr store for the replicas: a killed run resumes there.
    seed : replica ``i`` draws from ``default_rng([seed, i])``.
    regions : dict name -> region or list of regions (masks, pixel lists, slice pairs, boxes); default the
        whole field.
    warm : "auto" (warm start when the fit converged or is an EM fit with a prior whose count is not its
        regularizer: module notes), True or False.
    max_iter : iterations of a warm-started bootstrap replica (EM fit), run exactly (no ``tol`` stop). "auto":
        half the fit's iteration count (at least 10) when the fit ran more than 20, else the fit's count; an
        integer: that cap (at most the fit's count); None: each replica runs the settings' own stopping rule
        (``tol``). With a cap below the fit's count, replica 0 is a control that runs the fit's count: the capped
        replicas' deviations from the fit are scaled by its ratio (attribute ``control_ratio``; module notes).
        Cold replicas always run the settings' count. With ``bias_aware``, an integer cap applies to the
        result's replicas only; the maximum-likelihood refit's replicas take "auto" (session 29: the cap was
        passed on and refused there, after all the work).
    covariance : compute ``region_covariance`` (region, energy, energy2) (float32, L^2 values per region).
    bias_aware : False, True or a dict of ``ML_SETTINGS`` overrides (``{"max_iter": K, "tol": t}``): also
        compute the bias-aware intervals (module notes): the unregularized maximum-likelihood
        refit of the same observations (``ML_SETTINGS``) and ``n`` replicas of it (same method, seeds, client;
        with ``store`` in its sub-store ``PATH/ml``), returned as the ``ml_*`` variables and ``flux_lo`` /
        ``flux_hi``, ``region_lo`` / ``region_hi``; :func:`bias_aware_view` gives them in the layout of this
        function's output (for line maps and exports). Costs a fit and ``n`` replicas of RL at ``ML_SETTINGS``.
    progress : print one line per finished replica.

    Returns
    -------
    xarray.Dataset (see the module docstring). Memory: the statistics hold all replicas, n x (cube size).
    """
    if not isinstance(result, xr.Dataset) or not {"flux", "model_spatial", "model_spectral"} <= set(result.data_vars):
        raise ValueError("result must be a Dataset returned by xfusion.fuse (with flux, model_spatial and "
                         "model_spectral)")
    if "parameters" not in result.attrs:
        raise ValueError("result has no recorded 'parameters': pass a result of xfusion.fuse (or its Zarr store)")
    n = _as_int(n, "n (replicas)", 2)
    ml_settings = _ml_settings(bias_aware)  # checked before any work
    seed = _as_int(seed, "seed", 0)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}; got {method!r}")
    if warm not in ("auto", True, False):
        raise ValueError(f"warm must be 'auto', True or False; got {warm!r}")
    from .fuse import settings_of

    settings = settings_of(result)
    if len(observations) < 2:
        raise TypeError(f"uncertainty needs the observations the result was fitted on (two or more, in the order "
                        f"given to xfusion.fuse); got {len(observations)}")
    from .fuse import _wavelength_inputs

    raw = tuple(observations)
    observations = tuple(_wavelength_inputs(raw, result))  # JWST imager + IFU layout -> observations (as the fit)
    wavelength = any(o.attrs.get("spectral_unit") == "um" for o in observations)
    if wavelength and len(observations) == 2 and all(isinstance(o, xr.Dataset) for o in observations):
        from .jwst import check_observations_match

        pair = {o.attrs.get("jwst_role"): o for o in observations}
        if set(pair) == {"imager", "ifu"}:  # the filters and options the result was fitted with
            check_observations_match(result, pair["imager"], pair["ifu"])
    for o in observations:
        if not isinstance(o, xr.Dataset) or "counts" not in o:
            raise ValueError("every observation must be an xfusion observation (a Dataset with 'counts'); got "
                             f"{type(o).__name__}")
        if hasattr(o["counts"].data, "dask"):
            raise NotImplementedError("uncertainty() needs observations in memory (.load() them); the replicas "
                                      "themselves run in parallel with client=")
    gaussian = any("variance" in o or str(o.attrs.get("data_term", "poisson")).lower() != "poisson"
                   for o in observations)
    if gaussian and method == "thinning":
        raise NotImplementedError("method='thinning' splits Poisson counts; with a Gaussian data term (a 'variance' "
                                  "variable) use method='bootstrap' (Gaussian replicas of the given variance)")
    if method == "thinning" and any("background" in o for o in observations):
        raise NotImplementedError("method='thinning' halves the exposure, which does not apply to a known "
                                  "background; use method='bootstrap'")
    if wavelength:  # imager + IFU (xfusion.jwst): the result is cropped by the margin; cold replicas
        from .gaussian_fission import bootstrap_models

        models = bootstrap_models(result, observations)
        if warm is True:
            raise ValueError("warm=True is not available for an imager + IFU result (its field is cropped by the "
                             "margin, the replicas' unknown is not); use warm='auto' or False")
        warm = False
    else:
        models = _models_of(result, observations)
    flux = np.asarray(result["flux"].transpose(*_CUBE).values, dtype=np.float32)
    if not np.all(np.isfinite(flux)):
        raise ValueError("the result's flux contains NaN or inf")
    if warm == "auto":  # the prior sets the estimator: warm; an iteration count as regularizer: cold
        warm = bool(int(result.attrs.get("converged", 0))) or not _count_regularizes(settings)
    cap = _replica_cap(max_iter, result, settings, method, warm)
    names, masks = region_masks(regions, flux.shape[:2], (result["x"].values, result["y"].values))

    counts = [np.asarray(o["counts"].values) for o in observations]
    fp = _fingerprint(flux, models, counts, dict(settings, replica_cap=cap), method, seed, warm)
    rstore = None
    if store is not None:
        rstore = ReplicaStore(store, fp, inputs=xzarr.sources(*observations, result))
    try:  # the store's lock (held from ReplicaStore()) is released on every exit: errors, Ctrl-C
        todo = [i for i in range(n) if rstore is None or not rstore.done(i)]
        cubes, metas, lazy = {}, {}, {}
        for i in range(n):  # replicas finished earlier (resumed run): from the store, verified before new work
            if i not in todo:
                lazy[i], metas[i] = rstore.read(i, lazy=True)

        def finish(z, meta):
            if rstore is not None:
                rstore.write(z, meta)
            cubes[meta["index"]], metas[meta["index"]] = z, meta
            if progress:
                print(f"replica {meta['index']}: {meta['iterations']} iterations, {meta['elapsed_s']:.1f} s",
                      flush=True)

        start = result["flux"].transpose(*_CUBE).astype(np.float32).copy(deep=True)
        start = start.drop_vars([c for c in start.coords if c not in ("x", "y", "energy", "energy_lo", "energy_hi")])
        observations = list(observations)
        if client is None:
            for i in todo:
                finish(*replica(i, seed, method, observations, models, start, settings, warm, cap, i == 0))
        elif todo:
            from distributed import as_completed

            # the data go to every worker once (one object), then one small task per replica
            [packed] = client.scatter([(observations, models, start)], broadcast=True, hash=False)
            futures = [client.submit(_replica_packed, i, seed, method, packed, settings, warm, cap, i == 0, pure=False,
                                     key=f"xfusion-replica-{fp[:12]}-{seed}-{i}") for i in todo]
            for fut in as_completed(futures):
                finish(*fut.result())
                fut.release()
            packed.release()
        out = _summarize(result, flux, cubes, lazy, metas, n, names, masks, settings, method, seed, warm, covariance,
                         store)
    finally:
        if rstore is not None:
            rstore.close()
    if ml_settings is not None:
        out = _add_bias_aware(out, observations, ml_settings, n=n, method=method, client=client, store=store, seed=seed,
                              regions=regions, max_iter=max_iter if max_iter is None else "auto", covariance=covariance,
                              progress=progress)
    return out


def _ml_settings(bias_aware):
    """The settings of the maximum-likelihood refit for ``bias_aware`` (False/None: no refit -> None)."""
    if bias_aware is None or isinstance(bias_aware, (bool, np.bool_)):
        return dict(ML_SETTINGS) if bias_aware else None
    if not isinstance(bias_aware, dict):
        raise ValueError(f"bias_aware must be False, True or a dict of ML_SETTINGS overrides (keys {_ML_OVERRIDES}); "
                         f"got {type(bias_aware).__name__}")
    bad = sorted(set(bias_aware) - set(_ML_OVERRIDES))
    if bad:
        raise ValueError(f"bias_aware overrides {bad} are not allowed: only {_ML_OVERRIDES} of the maximum-likelihood "
                         "refit can be changed (it has no prior by design)")
    out = dict(ML_SETTINGS)
    if "max_iter" in bias_aware:
        out["max_iter"] = _as_int(bias_aware["max_iter"], "bias_aware max_iter", 1)
    if "tol" in bias_aware:
        tol = bias_aware["tol"]
        if tol is not None and (isinstance(tol, (bool, np.bool_)) or not isinstance(tol, (int, float, np.floating))
                                or not np.isfinite(tol) or tol < 0):
            raise ValueError(f"bias_aware tol must be None or a finite number >= 0 (relative change); got {tol!r}")
        out["tol"] = None if tol is None else float(tol)
    return out


def _add_bias_aware(out, observations, ml_settings, *, store, progress, **kwargs):
    """The bias-aware part: the maximum-likelihood refit and its replicas (``ml_*``) and the intervals."""
    from .fuse import fuse

    dtype = json.loads(out.attrs["settings"]).get("dtype", "float32")
    ml = fuse(*observations, progress=False, dtype=dtype, **ml_settings)
    sub = None if store is None else Path(os.fspath(store)) / "ml"
    um = uncertainty(ml, *observations, store=sub, progress=progress, warm="auto", **kwargs)
    for v in _ML_VARS:
        if v in um:
            out[f"ml_{v}"] = um[v].assign_attrs(um[v].attrs, long_name=f"maximum-likelihood refit: "
                                                                         f"{um[v].attrs.get('long_name', v)}")
    from scipy.stats import t as student_t

    f, s = um["flux"], um["flux_std"]
    tf = float(student_t.ppf(0.841345, kwargs["n"] - 1))  # the std is estimated from n replicas: n-1 dof
    units = out["flux"].attrs.get("units", "ph cm-2 s-1")
    out["flux_lo"] = (f - tf * s).assign_attrs(units=units, long_name="bias-aware 68% interval, lower end (ml_flux - "
                                                                       "t * ml_flux_std)")
    out["flux_hi"] = (f + tf * s).assign_attrs(units=units, long_name="bias-aware 68% interval, upper end")
    # where the maximum-likelihood refit is exactly 0 (voxels whose counts are all 0: a multiplicative EM fit never
    # leaves 0), every replica drawn from it is 0 too and the interval has zero width: it says nothing there
    # (session 29: such intervals looked certain and never held the truth)
    degenerate = (s == 0) & (f == 0)
    # a new variable, not degenerate.assign_attrs: the comparison keeps ml_flux_std's units (session 31: a True/False
    # mask labelled 'ph cm-2 s-1')
    out["interval_degenerate"] = (degenerate.dims, degenerate.data, {
        "long_name": "bias-aware interval of zero width: the ML refit and all its replicas are 0 (no counts there); "
                     "flux_lo/flux_hi carry no information in these voxels"})
    n_deg = int(degenerate.sum())
    if n_deg:
        warnings.warn(f"{n_deg} of {degenerate.size} voxels have bias-aware intervals of zero width: the maximum-"
                      "likelihood refit is 0 there (no counts), so its replicas are too; those intervals carry no "
                      "information (variable interval_degenerate marks them)", UserWarning, stacklevel=4)
    out["region_lo"] = (um["region_spectrum"] - tf * um["region_std"]).assign_attrs(units=units)
    out["region_hi"] = (um["region_spectrum"] + tf * um["region_std"]).assign_attrs(units=units)
    out.attrs.update({"bias_aware": 1, "interval_factor": tf, "ml_settings": json.dumps(ml_settings),
                      "ml_iterations": int(
        ml.attrs["iterations"]), "ml_converged": int(ml.attrs["converged"]), "ml_control_ratio": um.attrs[
        "control_ratio"]})
    return out


def bias_aware_view(u) -> xr.Dataset:
    """The bias-aware part of an :func:`uncertainty` output (computed with ``bias_aware=True``) in the layout of
    that output: ``flux`` (the maximum-likelihood refit), ``flux_std``, ``flux_replicas``, ``region_*``... -- pass
    it wherever an uncertainty Dataset (or a result's ``flux``) goes: ``analysis.line_map_errors(view, ...)``,
    ``io.write_pha_from_result(view, region, ..., uncertainty=view)``."""
    if not isinstance(u, xr.Dataset) or "ml_flux" not in u:
        raise ValueError("bias_aware_view needs the Dataset of xfusion.uncertainty(..., bias_aware=True) (with "
                         "ml_flux); rerun with bias_aware=True")
    view = xr.Dataset({v: u[f"ml_{v}"] for v in _ML_VARS if f"ml_{v}" in u},
                      coords={c: u[c] for c in u.coords if c != "replica"} | {"replica": u["replica"]})
    if "region_mask" in u:
        view["region_mask"] = u["region_mask"]
    view.attrs.update({k: u.attrs[k] for k in ("spatial_factor", "spectral_factor", "spatial_obs", "spectral_obs")
                       if k in u.attrs})
    view.attrs.update({"interval": "bias-aware: the unregularized maximum-likelihood refit +- its replica std",
                       "settings": u.attrs.get("ml_settings", json.dumps(ML_SETTINGS)), "method": u.attrs.get(
                           "method", "bootstrap"), "n": u.attrs.get("n")})
    return view


def _count_regularizes(settings):
    """True when the fit's iteration count is part of its estimator (replicas must start cold and run the same
    count): plain Richardson-Lucy and low rank stopped early (their ``early_stop`` role in the registry), the
    2D-1D starlet with ``null_space="threshold"`` (stopped early like RL, its count chosen by thinning: see
    :mod:`xfusion.tuning`), and any method other than EM. An EM fit with a prior otherwise approaches the
    penalized fixed point; stopped at ``max_iter`` it is a truncation, not a different estimator, so its
    replicas start warm from it (their drift past the fit is what the control replica measures)."""
    from .fuse import EARLY_STOP

    return (settings.get("method") != "em" or settings.get("regularization") in EARLY_STOP
            or settings.get("null_space") == "threshold")


def _replica_cap(max_iter, result, settings, method, warm):
    """The iteration cap of warm bootstrap replicas (None: no cap), from ``max_iter`` (see :func:`uncertainty`)."""
    if max_iter is None:
        return None
    if max_iter != "auto" and (isinstance(max_iter, (bool, np.bool_)) or not isinstance(max_iter, (int, np.integer))
                               or max_iter < 1):
        raise ValueError(f"max_iter must be 'auto', None or an integer >= 1 (iterations of a warm replica); got "
                         f"{max_iter!r}")
    capable = method == "bootstrap" and warm and settings.get("method") == "em"
    fit_it = max(1, int(result.attrs.get("iterations", 0)))
    if max_iter == "auto":
        if not capable:
            return None
        return (max(10, -(-fit_it // 2)) if fit_it > 20 else fit_it, fit_it)
    if not capable:
        raise ValueError("max_iter (a cap) applies to warm-started bootstrap replicas of an EM fit; this result's "
                         "replicas run cold (the iteration count is the regularizer) or by thinning: use "
                         "max_iter='auto' or None")
    return (min(int(max_iter), fit_it), fit_it)


def _summarize(result, flux, cubes, lazy, metas, n, names, masks, settings, method, seed, warm, covariance, store):
    import dask.array as da

    if lazy:
        parts = [da.from_array(cubes[i], chunks=cubes[i].shape) if i in cubes else lazy[i] for i in range(n)]
        stack = da.stack(parts)
        reps = np.asarray(stack.compute(), dtype=np.float32)
    else:
        stack = None
        reps = np.stack([cubes[i] for i in range(n)])
    # capped replicas: their deviation from the fit scaled by the control replica's ratio (full / capped)
    control = [metas[i]["control_ratio"] for i in range(n) if "control_ratio" in metas[i]]
    capped = [i for i in range(n) if metas[i].get("capped")]
    ratio = float(control[0]) if control else 1.0
    if capped and ratio != 1.0:
        stack = None
        f64 = flux.astype(np.float64)
        for i in capped:
            reps[i] = (f64 + ratio * (reps[i].astype(np.float64) - f64)).astype(np.float32)
    M, N, L = flux.shape
    q = np.asarray(QUANTILES)
    std = np.empty(flux.shape, np.float32)
    mean = np.empty(flux.shape, np.float32)
    quant = np.empty((q.size,) + flux.shape, np.float32)
    for a in range(0, M, max(1, M // 8)):  # x blocks: bounded float64 temporaries
        b = min(M, a + max(1, M // 8))
        blk = reps[:, a:b].astype(np.float64)
        std[a:b] = blk.std(axis=0, ddof=1)
        mean[a:b] = blk.mean(axis=0)
        quant[:, a:b] = np.quantile(blk, q, axis=0)
    mk = masks.astype(np.float64)
    regspec = np.stack([np.einsum("rxy,xye->re", mk, reps[i].astype(np.float64)) for i in range(n)])
    est_reg = np.einsum("rxy,xye->re", masks.astype(np.float64), flux.astype(np.float64))
    coords = {c: result[c] for c in ("x", "y", "energy", "energy_lo", "energy_hi") if c in result.coords}
    out = xr.Dataset(coords=coords)
    units = result["flux"].attrs.get("units", "ph cm-2 s-1")
    out = out.assign_coords(quantile=("quantile", q), region=("region", names), replica=("replica", np.arange(n)))
    out["flux"] = (_CUBE, flux.copy(), {"units": units, "long_name": "fused flux (the result's)"})
    out["flux_std"] = (_CUBE, std, {"units": units, "long_name": "standard deviation over replicas (ddof=1)"})
    out["flux_replica_mean"] = (_CUBE, mean, {"units": units, "long_name": "mean of the replicas (mean - flux: "
                                                                           "bootstrap estimate of the bias)"})
    out["flux_quantile"] = (("quantile",) + _CUBE, quant, {"units": units, "long_name": "replica quantiles"})
    out["flux_replicas"] = (("replica",) + _CUBE, stack.astype(np.float32) if stack is not None else reps,
                            {"units": units, "long_name": f"replica cubes ({method})"})
    out["region_mask"] = (("region", "x", "y"), masks)
    out["region_spectrum"] = (("region", "energy"), est_reg, {"units": units, "long_name": "summed flux of the region"})
    out["region_std"] = (("region", "energy"), regspec.std(axis=0, ddof=1), {"units": units})
    out["region_quantile"] = (("quantile", "region", "energy"), np.quantile(regspec, q, axis=0), {"units": units})
    out["region_replicas"] = (("replica", "region", "energy"), regspec, {"units": units})
    if covariance:
        dev = regspec - regspec.mean(axis=0)
        cov = np.einsum("nre,nrf->ref", dev, dev) / (n - 1)
        out["region_covariance"] = (("region", "energy", "energy2"), cov.astype(np.float32),
                                    {"units": f"({units})2", "long_name": "covariance of the region spectrum across "
                                     f"replicas (ddof=1, rank <= {n - 1})"})
    for key, dtype in (("seed", np.int64), ("iterations", np.int64), ("converged", bool), ("warm", bool),
                       ("elapsed_s", np.float64)):
        vals = [seed if key == "seed" else metas[i][key] for i in range(n)]
        out[f"replica_{key}"] = (("replica",), np.asarray(vals, dtype=dtype))
    out["replica_capped"] = (("replica",), np.asarray([bool(metas[i].get("capped")) for i in range(n)]),
                             {"long_name": "stopped at the iteration cap; deviation from flux scaled by control_ratio"})
    out.attrs.update({k: result.attrs[k] for k in ("spatial_factor", "spectral_factor", "spatial_obs",
                                                    "spectral_obs") if k in result.attrs})
    out.attrs.update({"method": method, "n": n, "seed": seed, "warm": int(bool(warm)),
                      "control_ratio": ratio, "capped_replicas": len(capped),
                      "settings": json.dumps(settings, default=str), "store": "none" if store is None else
                      os.fspath(store), "quantiles": list(map(float, q)),
                      "interval": "68%: flux +- flux_std (or flux_quantile 0.16-0.84); replica i drew from "
                                  "numpy default_rng([seed, i])"})
    return out
