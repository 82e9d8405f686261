"""``xfusion.fuse``: validate, build the grid and the operators, solve, label the result."""
from __future__ import annotations

import hashlib
from contextlib import nullcontext
import json
import time

import numpy as np
import xarray as xr
from threadpoolctl import threadpool_limits

from . import __version__
from .grid import SPATIAL, SPECTRAL, assign_roles, fusion_grid
from .likelihood import PoissonLikelihood, PoissonTerm, free_voxels, support_by_channel, support_in_memory
from .observation import CUBE_DIMS, energy_edges
from .operators.model import build_model
from . import parallel
from .regularizers import lowrank as lowrank_mod
from .regularizers.sobolev import Sobolev
from .regularizers.sparsity import Wavelet2D, Wavelet2D1D
from .solvers.em import EMProx
from .solvers.ista import ISTA
from .solvers.loop import run
from .solvers.subspace import SubspaceFISTA

#: Dask layout of the PSF operators on the full-cube path (xfusion.parallel_em): halos on the pixel blocks.
#: Measured per wavelet2d1d iteration (benchmarks/layouts.py --full, 64-pixel blocks, 2 cores), halo vs
#: rechunk: 256x256x4096 threads 17.1 vs 16.5 s and 19.0 vs 15.2 s (two runs), LocalCluster 1 worker
#: 42.5 vs 43.7 s, 2 workers 28.9 vs 31.4 s; 256x256x2048 threads 8.1 vs 8.4 s, 2 workers 14.7 vs 16.4 s.
#: Halos win on the cluster and tie on threads, where slabs take 40-50% more peak memory.
DEFAULT_LAYOUT = "halo"
REGULARIZATIONS = ("wavelet2d1d", "lowrank", "lowrank_sobolev", "lowrank_wavelet2d", "none")
FULL_METHODS, SUBSPACE_METHODS = ("em", "ista"), ("fista",)
FLUX_UNITS = "ph cm-2 s-1"

#: options accepted per regularization, with defaults (the paper's where it gives one)
OPTION_DEFAULTS = {
    "wavelet2d1d": {"n_scales_2d": 1, "n_scales_1d": "auto", "k": "auto", "k_rule": "constant", "k_min": 0.5,
                    "k_max": 3.0, "null_space": "auto", "per_band": True, "chunks": None,
                    "layout": DEFAULT_LAYOUT},
    "lowrank": {"rank": 10, "explained": None, "precondition": True, "chunks": None},
    "lowrank_sobolev": {"rank": 10, "explained": None, "mu": 0.01, "precondition": True, "chunks": None},
    "lowrank_wavelet2d": {"rank": 10, "explained": None, "n_scales_2d": 2, "k": 1.0, "precondition": True,
                          "chunks": None},
    "none": {"chunks": None, "layout": DEFAULT_LAYOUT},
}
METHOD_OPTIONS = {"ista": {"step": None}, "em": {}, "fista": {}}
MAX_ITER = {"em": 50, "ista": 2000, "fista": 300}
#: the unregularized options are regularized by early stopping (measured on gaussian_rebin: plain RL
#: peaks at iteration 4-5, 15.5 dB, then falls to 9.3 dB at 30; plain low rank peaks at ~40 on
#: gaussian_rebin, 17.1 dB, and falls to 6.8 dB after 300 on small). Since thinning (xfusion.tuning), the
#: default for "none" is max_iter="auto" and these counts are only the fallback on Dask-backed data.
EARLY_STOP = {"none": 5, "lowrank": 30}


def _is_real(v):
    """A finite real number that is not a bool (``True`` is an ``int`` in Python)."""
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_)) \
        and bool(np.isfinite(v))


def _is_int(v):
    """An integer that is not a bool (``2.0`` and ``2.7`` are refused, never truncated)."""
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _max_scales(n):
    """Largest number of starlet scales on an axis of ``n`` samples: the coarsest dilation
    ``2^(J-1)`` stays within half the axis (beyond it the kernel wraps by repeated reflection and
    the extra scales carry no new information)."""
    return max(int(np.floor(np.log2(max(n // 2, 1)))) + 1, 1)


def _resolve(regularization, method, options):
    if regularization not in REGULARIZATIONS:
        raise ValueError(f"unknown regularization {regularization!r}; choose one of {', '.join(REGULARIZATIONS)}")
    lowrank = regularization.startswith("lowrank")
    allowed = SUBSPACE_METHODS if lowrank else FULL_METHODS
    method = method or allowed[0]
    if method not in allowed:
        raise ValueError(f"method {method!r} does not apply to regularization {regularization!r}; use one of {allowed}")
    params = dict(OPTION_DEFAULTS[regularization])
    params.update(METHOD_OPTIONS[method])
    unknown = set(options) - set(params)
    if unknown:
        raise TypeError(f"unknown option(s) {sorted(unknown)} for regularization={regularization!r}, "
                        f"method={method!r}; valid options: {sorted(params)}")
    params.update(options)
    for key in ("mu", "k", "k_min", "k_max"):
        if key in params and params[key] != "auto" and not (_is_real(params[key]) and params[key] >= 0):
            raise ValueError(f"option {key} must be a number >= 0 (finite, not a bool); got {params[key]!r}")
    for key in ("rank", "n_scales_2d", "n_scales_1d"):
        if key in params and params[key] != "auto" and not (_is_int(params[key]) and params[key] >= 1):
            raise ValueError(f"option {key} must be an integer >= 1 (not a bool or float); got {params[key]!r}")
    if "k_min" in params and params["k_min"] > params["k_max"]:
        raise ValueError(f"option k_min={params['k_min']!r} exceeds k_max={params['k_max']!r}; the sigmoid rule "
                         "needs k_min <= k_max")
    for key in ("per_band", "precondition"):
        if key in params and not isinstance(params[key], (bool, np.bool_)):
            raise ValueError(f"option {key} must be True or False; got {params[key]!r}")
    if params.get("explained") is not None and not (_is_real(params["explained"]) and 0 < params["explained"] <= 1):
        raise ValueError(f"option explained must be a fraction of the spectral variance in (0, 1] (e.g. 0.999) or "
                         f"None; got {params['explained']!r}")
    if params.get("step") is not None and not (_is_real(params["step"]) and params["step"] > 0):
        raise ValueError(f"option step must be > 0 (a finite number); got {params['step']!r}")
    chunks = params.get("chunks")
    if chunks is not None and not (isinstance(chunks, (tuple, list)) and len(chunks) == 2
                                   and all(_is_int(c) and c >= 1 for c in chunks)):
        raise ValueError(f"option chunks must be two positive integers (pixel block along x and y); got {chunks!r}")
    if "layout" in params and params["layout"] not in ("halo", "rechunk"):
        raise ValueError(f"option layout must be 'halo' or 'rechunk' (Dask path: PSF operators on pixel blocks "
                         f"with halos, or on full-field channel slabs); got {params['layout']!r}")
    return method, params, lowrank


#: photon statistics that separate the two automatic wavelet settings (mean counts per
#: sharp-spectral voxel; gaussian_rebin has 4.6, realistic_rebin 56, gaussian_rebin x10 46)
AUTO_COUNTS_SPLIT = 15.0


def _auto_wavelet_params(params, yd, client):
    """Resolve ``k="auto"`` / ``n_scales_1d="auto"`` from the photon statistics of Y, in place.

    Since thinning this rule is only the fallback on Dask-backed data (``xfusion.tuning.auto_settings``
    resolves "auto" in memory; ``null_space="auto"`` becomes "zero" here). It was fitted on three toys
    and fails on unseen scenes (issue 13: 5.6 dB on an SNR shell where plain RL reaches 11 dB).

    Measured on the toys (NMSE, dB): at Table 1 counts (4.6 counts per Y voxel) k=1 with
    5 energy scales in the zeroed null-space bands gives 16.1 (k=0.5 with 3 scales: 15.4);
    at ~50 counts per voxel k=0.5 with 2 scales gives 21.7 on gaussian_rebin x10 (3 scales:
    20.5; k=1, 5 scales: 18.2) and 19.1 on realistic_rebin (3 scales: 17.1; k=1, 5 scales:
    14.9). Brighter data carry information at finer spectral scales, so fewer bands are
    treated as invisible and the threshold is lower.
    """
    if "auto" not in (params["k"], params["n_scales_1d"]):
        return
    total = parallel.compute(yd.sum(dtype=np.float64), client) if parallel.is_dask(yd) else yd.sum(dtype=np.float64)
    per_voxel = float(total) / yd.size
    bright = per_voxel >= AUTO_COUNTS_SPLIT
    params["auto_counts_per_voxel"] = per_voxel
    if params["k"] == "auto":
        params["k"] = 0.5 if bright else 1.0
    if params["n_scales_1d"] == "auto":
        params["n_scales_1d"] = 2 if bright else 5


def _auto_chunks(grid, shape, dt, regularization, params, client):
    """Pixel block of the Dask path from the cube shape, the kernels and the memory per task.

    Temporaries per task, in chunk-sized float32 copies: the low-rank block term works in
    float64 (model, ratio, masked copies: ~10); the EM + 2D-1D starlet block holds the
    (J2+1)(J1+1) coefficient cubes plus the iterate and FFT buffers (~(J2+1)(J1+2)+4; J1=5
    when automatic); plain EM ~6. Halos: the PSF radius (``layout="halo"``) and the 2D
    starlet's 2 (2^J2 - 1) pixels set ``min_block = 4 * halo``.
    """
    if regularization.startswith("lowrank"):
        copies, halo = 10, 0
    else:
        halo = 0
        if params.get("layout", "halo") == "halo" and "psf" in grid:
            halo = max(grid["psf"].sizes["psf_x"], grid["psf"].sizes["psf_y"]) // 2
        copies = 6
        if regularization == "wavelet2d1d":
            n2 = params["n_scales_2d"]
            n1 = 5 if params["n_scales_1d"] == "auto" else params["n_scales_1d"]
            copies = (n2 + 1) * (n1 + 2) + 4
            halo = max(halo, 2 * (2 ** n2 - 1))
    return parallel.pixel_block(shape, dt.itemsize, grid.attrs["spatial_factor"], min_block=4 * halo, copies=copies,
                                memory=parallel.task_memory(client))


def _checkpoint(path, every, resume, observations):
    """The checkpoint store of a run (None without ``path``), checked before any computing: a
    positive integer ``every``, ``resume`` in (False, True, "auto") with a path, and a path that
    is neither an input store nor inside/around one nor anything not written by xfusion's
    checkpoint writer (:class:`xfusion.checkpoints.ZarrCheckpoint`)."""
    from .checkpoints import ZarrCheckpoint
    from .io.zarr import sources

    if isinstance(every, bool) or not isinstance(every, (int, np.integer)) or every < 1:
        raise ValueError(f"checkpoint_every must be a positive integer (iterations between checkpoints); got {every!r}")
    if resume is not False and resume is not True and resume != "auto":
        raise ValueError(f"resume must be False, True or 'auto' (continue if a checkpoint exists, else start); "
                         f"got {resume!r}")
    if path is None:
        if resume:
            raise ValueError("resume needs checkpoint=PATH (the store written by the interrupted run)")
        return None
    return ZarrCheckpoint(path, protect=sources(*observations))


def _digest(h, name, value):
    """Add a named array or JSON value to the hash ``h`` (arrays: dtype, shape and bytes)."""
    h.update(name.encode())
    if isinstance(value, np.ndarray) and not value.dtype.hasobject:
        v = np.ascontiguousarray(value)
        h.update(f"{v.dtype.str}{v.shape}".encode())
        h.update(memoryview(v).cast("B") if v.size else b"")
    else:
        h.update(json.dumps(value.tolist() if isinstance(value, np.ndarray) else value, sort_keys=True,
                            default=str).encode())


def _fingerprint(observations, arrays, settings, client=None):
    """Identity of a run for checkpoints: everything that defines the problem.

    The settings except ``max_iter`` (a finished run can be extended), every variable and
    coordinate of both observations except the counts (masks, exposures, effective areas,
    PSFs, responses, energy edges, pixel grids; lazy ones are read) with their attributes and
    the observations' attributes, and the counts cubes as used by the solver: SHA-256 of the
    bytes (NumPy) or of each block (Dask, hashed where the blocks live, see
    :func:`xfusion.checkpoints.array_digest`).
    """
    from .checkpoints import array_digest

    h = hashlib.sha256()
    # max_iter: a run may be extended; auto_tuning: diagnostics of the automatic choice (held-out deviances,
    # which depend on max_iter), whose chosen values are already in the settings
    _digest(h, "settings", {k: v for k, v in settings.items() if k not in ("max_iter", "auto_tuning")})
    for i, obs in enumerate(observations):
        _digest(h, f"obs{i}.attrs", dict(obs.attrs))
        for name in sorted(map(str, obs.variables)):
            if name == "counts":
                continue
            var = obs.variables[name]
            _digest(h, f"obs{i}.{name}", [list(var.dims), dict(var.attrs)])
            _digest(h, f"obs{i}.{name}.values", np.asarray(var.values))
    for i, c in enumerate(arrays):
        _digest(h, f"counts{i}", array_digest(c, client))
    return h.hexdigest()


def _renamed(da, mapping):
    return da.rename({k: v for k, v in mapping.items() if k in da.dims or k in da.coords})


#: plausible range of exposure x effective area (s cm2) at its peak over the fused band: outside it the flux
#: (ph cm-2 s-1, stored in float32) of one count would underflow or overflow, and the values are far beyond
#: any instrument (e.g. 1e6 s x 1e4 cm2 = 1e10) -- the usual cause is a unit mistake
EXPOSURE_AREA_RANGE = (1e-20, 1e20)

#: history variables of a result: (units, long_name)
HISTORY_ATTRS = {
    "objective": ("1", "objective = data_term + penalty (negative log-likelihood in nats, up to a constant)"),
    "data_term": ("1", "Poisson data term sum(m - d + d ln(d/m)) over both data sets, 0 ln 0 = 0 (half the "
                       "Poisson deviance, >= 0, 0 at a perfect fit; nats)"),
    "penalty": ("1", "regularization penalty added to the data term (nats)"),
}


def _precheck(obs_a, obs_b, params, lowrank):
    """Checks of the problem that need only the observations, run before any work: plausible exposure x area,
    starlet scales that fit the grid, instruments that see something, and (in memory) counts that some flux can
    explain. Returns the problem it built, ``(grid, x_obs, y_obs, names, mx, my, sums)`` (unscaled models; ``sums``:
    total counts (X, Y) of in-memory data, None for Dask-backed data, checked in ``_fuse``), so it is built once."""
    grid = fusion_grid(obs_a, obs_b)
    x_obs, y_obs, _ = assign_roles(obs_a, obs_b)
    names = (grid.attrs["spatial_obs"], grid.attrs["spectral_obs"])
    _check_exposure(names, (x_obs, y_obs))
    mx, my = build_model(grid, x_obs, SPATIAL), build_model(grid, y_obs, SPECTRAL)
    _check_scales(params, mx.fused_shape)
    _check_sees(names, (mx, my))
    problem = (grid, x_obs, y_obs, names, mx, my)
    if parallel.is_dask(x_obs["counts"]) or parallel.is_dask(y_obs["counts"]):
        return (*problem, None)
    sums = []
    for name, obs, model in zip(names, (x_obs, y_obs), (mx, my)):
        term = PoissonTerm(model, obs["counts"].values, obs["mask"].values if "mask" in obs else None, np.float64)
        support_in_memory(term, name, energy_edges(obs))
        sums.append(float(np.sum(term.data if term.weight is None else term.data * term.weight, dtype=np.float64)))
    if lowrank and sums[1] == 0 and sums[0] > 0:
        raise ValueError(f"'{names[1]}' has no counts: the low-rank basis is estimated from its spectra, so there is "
                         "no spectral subspace; use regularization='wavelet2d1d'")
    return (*problem, tuple(sums))


def _check_scales(params, shape):
    """Refuse starlet scale counts that do not fit the fused grid (``shape`` = (M, N, L))."""
    n2 = params.get("n_scales_2d")
    if _is_int(n2) and n2 > _max_scales(min(shape[:2])):
        raise ValueError(f"option n_scales_2d={n2} is too large for the {shape[0]}x{shape[1]}-pixel fused grid: at "
                         f"most {_max_scales(min(shape[:2]))} scales fit (coarsest dilation within half the field)")
    n1 = params.get("n_scales_1d")
    if _is_int(n1) and n1 > _max_scales(shape[2]):
        raise ValueError(f"option n_scales_1d={n1} is too large for the {shape[2]} fused channels: at most "
                         f"{_max_scales(shape[2])} scales fit")


def _check_sees(names, models):
    """Refuse an instrument that sees nothing: t A = 0 at every energy of the fused grid."""
    for name, m in zip(names, models):
        if not float(np.max(m.weights)) > 0:
            raise ValueError(f"observation '{name}' predicts zero counts for any flux: its exposure x effective area "
                             "is 0 at every energy of the fused grid; check effective_area (cm2) and exposure (s)")


def _check_exposure(names, observations):
    """Refuse an implausible exposure x effective area (a unit mistake), before any operator is built."""
    lo, hi = EXPOSURE_AREA_RANGE
    for name, o in zip(names, observations):
        area = o["effective_area"].values if "effective_area" in o else 1.0
        peak = float(o["exposure"].values) * float(np.max(area, initial=0.0))
        if peak > 0 and not lo <= peak <= hi:
            raise ValueError(f"observation '{name}': exposure x effective area peaks at {peak:.3g} s cm2, outside the "
                             f"plausible range {lo:g}-{hi:g} (e.g. 1e5 s x 1e3 cm2 = 1e8); check that exposure is in "
                             "seconds and effective_area in cm2 (fluxes of one count would not be representable)")


def _flat_level(model, total, shape, dt):
    """Level c (internal units per voxel) such that the flat cube c predicts ``total`` counts of ``model``."""
    if model.weights.ndim == 1:  # exact for X (no spatial operator); Y: its spatial operator conserves flux
        flat = float(model.reduced(np.ones((1, shape[2])))[1].sum()) * shape[0] * shape[1]
    else:  # vignetted: in-memory path only
        flat = float(np.sum(model.forward(np.ones(shape, dt)), dtype=np.float64))
    return total / max(flat, 1e-300)


def _check_finite(sol, history, client=None):
    """The final guard: never return NaN/inf quietly."""
    if parallel.is_dask(sol):
        import dask.array as da

        ok = bool(parallel.compute(da.isfinite(sol).all(), client))
    else:
        ok = bool(np.all(np.isfinite(sol)))
    last = history["objective"][-1] if history.get("objective") else 0.0
    if not ok or not np.isfinite(last):
        raise FloatingPointError(
            f"the solution {'contains NaN/inf' if not ok else 'has a non-finite objective'} ({last}) -- refusing to "
            "return it. Likely causes: a fixed step too large (method='ista': pass a smaller step=), counts no flux "
            "can explain, or extreme exposures/areas; report it with the inputs if none applies")


def _mark_unconstrained(ds, free):
    """Hold the voxels no data constrain at 0 in ``flux`` and report them (attr ``unconstrained_voxels``; with
    any, a ``constrained`` mask variable)."""
    shape = tuple(ds.sizes[d] for d in CUBE_DIMS)
    free = np.asarray(free, bool)
    n_free = int(np.broadcast_to(free, shape).sum())
    n_out = int(np.prod(shape)) - n_free
    ds.attrs["unconstrained_voxels"] = n_out
    if n_out == 0:
        return ds
    if free.shape == shape:
        mask = xr.DataArray(free, dims=CUBE_DIMS)
    else:  # per channel (Dask path): broadcast lazily
        import dask.array as da

        chunks = ds["flux"].data.chunks if parallel.is_dask(ds["flux"]) else "auto"
        mask = xr.DataArray(da.broadcast_to(da.from_array(free), shape, chunks=chunks), dims=CUBE_DIMS)
    ds["flux"] = ds["flux"].where(mask, 0).astype(np.float32).assign_attrs(ds["flux"].attrs)
    ds["constrained"] = mask.assign_attrs(
        units="1", long_name="True where some data constrain the flux; False voxels (zero sensitivity: zero area, "
                             "zero response or masked in both observations) are held at 0")
    return ds


def _zero_result(grid, x_obs, y_obs, xd, yd, scale, params, lowrank, use_dask, elapsed):
    """Both observations have no counts: the maximum-likelihood flux is 0 everywhere (exactly, no iteration)."""
    shape = (grid.sizes["x"], grid.sizes["y"], grid.sizes["energy"])
    if use_dask:
        import dask.array as da

        def zeros(sh, like):
            return da.zeros(sh, dtype=np.float32, chunks=like.chunks[:2] + (-1,))
        flux, mod_x, mod_y = zeros(shape, xd), zeros(xd.shape, xd), zeros(yd.shape, yd)
    else:
        flux, mod_x, mod_y = (np.zeros(sh, np.float32) for sh in (shape, xd.shape, yd.shape))
    history = {k: [0.0] for k in HISTORY_ATTRS}
    basis = coeffs = None
    if lowrank:  # one flat component, zero maps
        basis = np.full((1, shape[2]), 1 / np.sqrt(shape[2]))
        coeffs = np.zeros(shape[:2] + (1,), np.float32)
    ds = _assemble(grid, x_obs, y_obs, flux, mod_x, mod_y, xd.astype(np.float32), yd.astype(np.float32), history,
                   basis, coeffs, scale, params, 0, True, elapsed, 0.0, backend="dask" if use_dask else "numpy",
                   negative_fraction=0.0)
    ds.attrs["note"] = "both observations have zero counts: the maximum-likelihood flux is 0 everywhere"
    ds.attrs["unconstrained_voxels"] = 0
    return ds


def fuse(obs_a, obs_b, *, regularization="wavelet2d1d", method=None, max_iter=None, tol=1e-4, checkpoint=None,
         checkpoint_every=10, resume=False, progress=True, callback=None, dtype="float32", client=None,
         **options) -> xr.Dataset:
    """Fuse two observations (any order) into one cube on the fused grid.

    Parameters
    ----------
    obs_a, obs_b : xarray.Dataset
        Observations (:func:`xfusion.observation`); which one is sharp in space and which in
        energy is read from their coordinates.
    regularization : {"wavelet2d1d", "lowrank", "lowrank_sobolev", "lowrank_wavelet2d", "none"}
        The prior phi(Z). ``wavelet2d1d`` (default): l1 norm of the 2D-1D starlet
        coefficients (2D on each channel, then 1D along each spectrum), soft-thresholded at k
        noise sigmas. ``lowrank``: Z = W V with V the mean and leading principal components of
        the sharp-spectral spectra (regularized by early stopping). ``lowrank_sobolev``: plus
        a spatial smoothness penalty on W. ``lowrank_wavelet2d``: plus a 2D starlet l1 penalty
        on W. ``none``: plain two-instrument Richardson-Lucy with early stopping.
    method : {"em", "ista"} for full-cube regularizations (default "em"); "fista" for the
        low-rank family. See :mod:`xfusion.solvers`.
    max_iter, tol : iteration cap (default per method: em 50, ista 2000, fista 300; for the
        unregularized options: ``none`` "auto" (the early-stopping iteration chosen by Poisson
        thinning, see :mod:`xfusion.tuning`), ``lowrank`` 30 ("auto" accepted)) and the relative
        objective change (> 0) at which to stop; ``tol=None`` runs all ``max_iter`` iterations.
    checkpoint, checkpoint_every, resume : Zarr store path written every k iterations;
        ``resume=True`` continues an interrupted run from it (same result as uninterrupted).
    progress : show a tqdm bar (iteration, objective, relative change).
    callback : ``f(iteration, state) -> bool`` called every iteration (True stops).
    dtype : "float32" (default) or "float64" for the iterate.
    client : optional ``dask.distributed.Client``. With Dask-backed observations (e.g.
        ``xfusion.io.zarr.open(path, chunks={})``) or a client, fusion runs block-wise on
        Dask -- the low-rank family in the subspace (:mod:`xfusion.parallel`), the full-cube
        EM + starlet iteration with halos (:mod:`xfusion.parallel_em`) -- and the returned
        cube is lazy (write it with ``xfusion.io.zarr.write``); option ``chunks=(bx, by)``
        sets the pixel block of the fused grid (default: from the cube shape, the PSF and
        starlet halos and the memory per worker thread, ``_auto_chunks``); option ``layout``
        ("halo", default, or "rechunk") places the PSF operators of the full-cube path on the
        pixel blocks with halos or on full-field channel slabs (see ``DEFAULT_LAYOUT``).
    **options
        Options of the regularization and method; their defaults are in ``OPTION_DEFAULTS``
        and ``METHOD_OPTIONS``, unknown ones raise ``TypeError`` listing the valid ones. A
        value ``"auto"`` is chosen from the data without a truth (Poisson thinning: the counts
        are split binomially into two independent halves and the value whose fit on one half
        best predicts the other is used); the value used is recorded in ``parameters``.

        wavelet2d1d:

        - ``k`` (noise sigmas, default "auto"): soft threshold ``rho = k * sigma`` of each
          band's starlet coefficients, sigma its MAD noise estimate; larger k, smoother cube.
        - ``k_rule`` ("constant" or "sigmoid", default "constant"): "sigmoid" is paper eq. 21,
          k from ``k_min`` (faint voxels) to ``k_max`` (bright voxels, noise sigmas, defaults
          0.5 and 3.0) with the coarse-scale brightness; both are ignored with "constant".
        - ``n_scales_2d`` (integer, default 1): spatial starlet scales J2.
        - ``n_scales_1d`` (integer or "auto"): spectral starlet scales J1.
        - ``null_space`` ("zero", "threshold" or "auto", default "auto"): bands finer than both
          instruments see (2D scale < J2 and 1D scale < J1) are removed, or thresholded like
          the others as in the paper; "auto" compares ("zero", J1=5), ("zero", J1=2) and
          ("threshold", J1=5) by thinning (with ``k`` and ``n_scales_1d`` "auto").
        - ``per_band`` (bool, default True): a MAD per band; False uses the finest band's MAD
          for all (the paper).

        lowrank, lowrank_sobolev, lowrank_wavelet2d:

        - ``rank`` (number of components, default 10; "auto": 3, 5, 10 or 20 by thinning, costly:
          one fit of half the counts per candidate): dimension r of the spectral subspace.
        - ``explained`` (fraction of variance in (0, 1], default None): choose r as the
          smallest number of components explaining this fraction instead of ``rank``.
        - ``precondition`` (bool, default True): per-pixel FISTA step scaled by the
          sharp-spatial brightness.
        - ``mu`` (dimensionless, lowrank_sobolev, default 0.01; "auto": 0.001-0.1 by thinning): strength of the Sobolev
          penalty ``(mu / level) ||D W||^2``, level = mean flux per voxel (the paper advises
          0.01-0.1).
        - ``n_scales_2d``, ``k`` (lowrank_wavelet2d, defaults 2 and 1.0 noise sigmas): 2D
          starlet scales and threshold on each map of W.

        Dask path (any regularization): ``chunks`` ((bx, by) fused pixels, default None =
        automatic) and ``layout`` ("halo" or "rechunk", full cube only; see ``client``).
        method="ista": ``step`` (internal units, default None = 1/50 of the smallest EM step
        at the start). The documentation lists every option with its unit and default.

    Returns
    -------
    xarray.Dataset with ``flux`` (x, y, energy) in ph cm-2 s-1 per voxel (photons per cm2 per
    second in each fused pixel and energy bin), ``model_spatial`` / ``counts_spatial``
    (x, y, energy_spatial) and ``model_spectral`` / ``counts_spectral``
    (x_spectral, y_spectral, energy): predicted and observed counts of both instruments,
    ``objective``, ``data_term``, ``penalty`` over ``iteration``; for the low-rank family also
    ``basis`` (component, energy) and ``coefficients`` (x, y, component). Attributes record
    every parameter (``parameters`` as JSON), the method, iterations, convergence flag, timing
    and the xfusion version. History: ``data_term`` = sum(m - d + d ln(d/m)) over both data
    sets (0 ln 0 = 0; half the Poisson deviance, >= 0), ``penalty`` = what the regularization
    adds (Sobolev and/or sparsity), ``objective`` = their sum (nats, ``units="1"``).

    Degenerate inputs (checked before any work): an instrument whose exposure x effective area or
    response is zero everywhere, counts in channels no flux can produce (fix: ``mask=`` them),
    implausible exposure x area (outside ``EXPOSURE_AREA_RANGE`` s cm2) and ill-typed options raise
    ``ValueError``. Fused voxels no data constrain (zero sensitivity: zero area/response or masked
    in both) are held at 0 and reported (attribute ``unconstrained_voxels``; with any, a bool
    ``constrained`` variable). All counts zero: ``flux`` is 0 (the exact maximum-likelihood
    solution, ``iterations=0``, ``converged=1``, attribute ``note``). A NaN/inf solution is never
    returned (``FloatingPointError``).
    """
    # The Dask path keeps client-side BLAS at one thread: with the threaded scheduler, blocks run in
    # parallel threads and BLAS threads inside them oversubscribe the cores (gaussian_rebin, 2 cores:
    # 1.3 -> 0.53 s/it); with a cluster, the client's small subspace/eigen computations then give the
    # same bits whatever BLAS threading the client process has (FISTA amplifies 1-ulp differences
    # to ~3e-5 in 30 iterations). distributed workers already start with one BLAS thread.
    on_dask = client is not None or any(
        isinstance(o, xr.Dataset) and "counts" in o and parallel.is_dask(o["counts"]) for o in (obs_a, obs_b))
    with threadpool_limits(limits=1, user_api="blas") if on_dask else nullcontext():
        return _fuse(obs_a, obs_b, regularization=regularization, method=method, max_iter=max_iter, tol=tol,
                     checkpoint=checkpoint, checkpoint_every=checkpoint_every, resume=resume, progress=progress,
                     callback=callback, dtype=dtype, client=client, **options)


def _fuse(obs_a, obs_b, *, regularization="wavelet2d1d", method=None, max_iter=None, tol=1e-4, checkpoint=None,
         checkpoint_every=10, resume=False, progress=True, callback=None, dtype="float32", client=None,
         **options) -> xr.Dataset:
    """:func:`fuse` (BLAS threading already set)."""
    t_start = time.perf_counter()
    method, params, lowrank = _resolve(regularization, method, options)
    dt = np.dtype(dtype)
    if dt not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise ValueError("dtype must be float32 or float64")
    if client is not None:
        parallel.check_workers(client)
    if tol is not None and not (_is_real(tol) and tol > 0):
        raise ValueError(f"tol must be > 0 (relative objective change, a finite number); got {tol!r}. Use tol=None "
                         "to run all max_iter iterations")
    if max_iter is None:
        # thinning picks the RL iteration; low rank keeps its measured count ("auto" opt-in: see xfusion.tuning)
        max_iter = "auto" if regularization == "none" else EARLY_STOP.get(regularization, MAX_ITER[method])
    if not (max_iter == "auto" and regularization in EARLY_STOP) and not (_is_int(max_iter) and max_iter >= 0):
        raise ValueError(f"max_iter must be an integer >= 0 (not a bool or float, never truncated) or 'auto' (for "
                         f"regularization 'none' or 'lowrank'); got {max_iter!r}")
    for i, o in enumerate((obs_a, obs_b)):
        if isinstance(o, xr.Dataset) and "counts" in o and 0 in o["counts"].shape:
            raise ValueError(f"observation {'ab'[i]} ('{o.attrs.get('name', '?')}') has an empty counts cube (sizes "
                             f"{dict(o['counts'].sizes)}); select a region and band that contain pixels and channels")
    # "auto" settings: chosen by Poisson thinning (xfusion.tuning), recorded in the parameters
    from .tuning import auto_settings

    on_dask = client is not None or any(parallel.is_dask(o["counts"]) for o in (obs_a, obs_b)
                                        if isinstance(o, xr.Dataset) and "counts" in o)
    # degenerate inputs refused before any work (tuning included); the grid and models are built once, here
    grid, x_obs, y_obs, names, mx, my, sums = _precheck(obs_a, obs_b, params, lowrank)
    no_counts = sums is not None and 0.0 in sums  # nothing to thin: the fallbacks of the Dask path apply
    max_iter, tuned = auto_settings(obs_a, obs_b, regularization, method, params, max_iter, tol, dt.name,
                                    on_dask or no_counts)
    if no_counts and tuned is not None:
        tuned["method"] = "fallback (an observation has no counts: nothing to thin)"
    if tuned is not None:
        params["auto_tuning"] = tuned
    ckpt = _checkpoint(checkpoint, checkpoint_every, resume, (obs_a, obs_b))
    _check_scales(params, mx.fused_shape)  # again: tuning may have chosen the scales
    # internal units: expected X counts per fused voxel (keeps float32 well scaled)
    scale = float(np.mean(mx.weights))
    mx, my = mx.scaled(scale), my.scaled(scale)
    use_dask = parallel.is_dask(x_obs["counts"]) or parallel.is_dask(y_obs["counts"]) or client is not None
    shape = mx.fused_shape
    settings = {"regularization": regularization, "method": method, "dtype": dt.name, "max_iter": max_iter,
                "tol": tol, **{k: v for k, v in params.items()}}
    if use_dask:
        if "mask" in x_obs or "mask" in y_obs:
            raise NotImplementedError("masks are not supported on the Dask path yet; load the data or drop the mask")
        import dask.array as da

        v = grid.attrs["spatial_factor"]
        bx, by = params.get("chunks") or _auto_chunks(grid, shape, dt, regularization, params, client)
        xd = da.asarray(x_obs["counts"].data).rechunk((bx, by, -1))
        yd = da.asarray(y_obs["counts"].data).rechunk((bx // v, by // v, -1))
        if lowrank:
            terms = [parallel.DaskPoissonTerm(mx, xd, dt, client), parallel.DaskPoissonTerm(my, yd, dt, client)]
            xd, yd = terms[0].data, terms[1].data  # persisted: later passes do not re-read the stores
        else:
            xd, yd = parallel.persist_many([xd.astype(dt), yd.astype(dt)], client)
    else:
        xd, yd = x_obs["counts"].values, y_obs["counts"].values
        xmask = x_obs["mask"].values if "mask" in x_obs else None
        ymask = y_obs["mask"].values if "mask" in y_obs else None
        terms = [PoissonTerm(mx, xd, xmask, dt), PoissonTerm(my, yd, ymask, dt)]
    # voxels no flux can change the data of leave the problem (held at 0, reported); counts no flux can
    # explain, or an instrument that sees nothing, are refused (xfusion.likelihood.support_*)
    edges = (energy_edges(x_obs), energy_edges(y_obs))
    if use_dask:
        cx, cy = (np.asarray(c, np.float64) for c in parallel.compute_many(
            [xd.sum(axis=(0, 1), dtype=np.float64), yd.sum(axis=(0, 1), dtype=np.float64)], client))
        sens = support_by_channel(mx, names[0], edges[0], cx) + support_by_channel(my, names[1], edges[1], cy)
        xsum, ysum = float(cx.sum()), float(cy.sum())
    else:
        sens = support_in_memory(terms[0], names[0], edges[0]) + support_in_memory(terms[1], names[1], edges[1])
        xsum, ysum = float(xd.sum(dtype=np.float64)), float(yd.sum(dtype=np.float64))
    free = free_voxels(sens)
    if xsum == 0 and ysum == 0:
        return _zero_result(grid, x_obs, y_obs, xd, yd, scale, dict(settings, **params), lowrank, use_dask,
                            time.perf_counter() - t_start)
    if lowrank and ysum == 0:
        raise ValueError(f"'{names[1]}' has no counts: the low-rank basis is estimated from its spectra, so there is "
                         "no spectral subspace; use regularization='wavelet2d1d'")
    # mean level (internal units per voxel) that reproduces the X counts (the Y counts if X has none): from the
    # model of a flat cube
    level = _flat_level(mx, xsum, shape, dt) if xsum > 0 else _flat_level(my, ysum, shape, dt)

    basis = None
    if lowrank:
        if mx.weights.ndim > 1 or my.weights.ndim > 1:
            raise ValueError("low-rank regularizations need effective areas that do not vary with position; "
                             "use regularization='wavelet2d1d' for vignetted data")
        wy = np.broadcast_to(my.weights, shape)[0, 0]
        # flux spectra; channels Y cannot see (zero area: no counts there, checked above) are 0, not 0/0
        spectra = yd.reshape(-1, yd.shape[-1]) / np.where(wy > 0, wy, np.inf)
        if params["rank"] > min(shape[2], yd.shape[0] * yd.shape[1]):
            raise ValueError(f"rank={params['rank']} exceeds the {shape[2]} channels or the "
                             f"{yd.shape[0] * yd.shape[1]} spectra of '{grid.attrs['spectral_obs']}'; use a smaller rank")
        if use_dask and shape[2] > lowrank_mod.COVARIANCE_MAX_CHANNELS:
            basis = lowrank_mod.pca_basis_randomized(spectra, rank=params["rank"],
                                                         compute=lambda c: parallel.compute_many(c, client))
            s = parallel.compute(spectra.sum(axis=0, dtype=np.float64), client)
        else:
            moments = lowrank_mod.spectral_moments(spectra, compute=lambda c: parallel.compute_many(c, client))
            basis = lowrank_mod.pca_basis(moments=moments, rank=None if params["explained"] else params["rank"],
                                          explained=params["explained"] or 0.999)
            s = moments[1]
        vb = basis.astype(dt)
        # start: X amplitude per pixel times the mean Y spectrum (positive, in the subspace)
        s = s / s.sum()
        per_pix = mx.reduced(s[None])[1].sum()
        amp = xd.sum(axis=-1, dtype=np.float64)
        amp = (parallel.compute(amp, client) if use_dask else amp) / per_pix
        if not amp.any():  # no X counts: a flat start at the level of the Y counts
            amp = np.full(amp.shape, level * shape[2])
        amp = amp + 1e-3 * amp.mean()
        w0 = (amp[:, :, None] * (s @ basis.T)[None, None, :]).astype(dt)
        smooth = Sobolev(params["mu"], level) if regularization == "lowrank_sobolev" else None
        prox = Wavelet2D(params["n_scales_2d"], params["k"]) if regularization == "lowrank_wavelet2d" else None
        precond = (amp / amp.mean())[:, :, None] if params.get("precondition", True) else None
        solver = SubspaceFISTA(terms, [mx.reduced(vb), my.reduced(vb)], smooth=smooth, prox=prox, precond=precond)
        x0 = w0
    else:
        reg = None
        if regularization == "wavelet2d1d":
            _auto_wavelet_params(params, yd, client if use_dask else None)
            names = [k for k in OPTION_DEFAULTS["wavelet2d1d"] if k not in ("chunks", "layout")]
            reg = Wavelet2D1D(**{k: params[k] for k in names})
        if use_dask:
            if method != "em":
                raise NotImplementedError("on Dask-backed data the full-cube regularizations run with method='em'")
            from .parallel_em import DaskEMProx

            psf = None
            if "psf" in grid:
                p = grid["psf"]
                psf = (p.transpose("psf_energy", "psf_x", "psf_y") if "psf_energy" in p.dims else p).values
            solver = DaskEMProx(xd, yd, mx, my, psf, grid.attrs["spatial_factor"], reg, client,
                                layout=params["layout"])
            x0 = level
        else:
            lik = PoissonLikelihood(terms)
            solver = EMProx(lik, reg, free=free) if method == "em" else ISTA(lik, reg, step=params.get("step"),
                                                                             free=free)
            x0 = np.full(shape, level, dtype=dt)

    if ckpt is not None:
        ckpt.fingerprint = _fingerprint((x_obs, y_obs), (xd, yd), settings, client)
    state, history, n_iter, converged = run(
        solver, x0, max_iter=max_iter, tol=tol, callback=callback, progress=progress, checkpoint=ckpt,
        checkpoint_every=checkpoint_every, resume=resume)

    sol = solver.solution(state)
    _check_finite(sol, history, client)
    if use_dask:
        z, negative_fraction = None, float("nan")
    elif lowrank:
        z = sol @ basis.astype(sol.dtype)
        negative_fraction = float(np.mean(z < 0))
        np.maximum(z, 0, out=z)
        z[~np.broadcast_to(free, z.shape)] = 0  # unconstrained voxels leave the problem: held at 0
    else:
        z, negative_fraction = sol, 0.0
    if method == "ista" and "step" in params:
        params["step"] = float(state.get("alpha", np.nan))
    args = (dict(settings, **params), n_iter, converged, time.perf_counter() - t_start,
            state.get("elapsed_loop_s", np.nan))
    if use_dask and lowrank:
        ds = _lazy_result(grid, x_obs, y_obs, sol, basis, scale, mx, my, xd, yd, history, *args)
    elif use_dask:
        ds = _assemble(grid, x_obs, y_obs, (sol / scale).astype(np.float32), solver.model_x(sol),
                       solver.model_y(sol), xd, yd, history, None, None, scale, *args, backend="dask",
                       negative_fraction=0.0)
    else:
        ds = _result(grid, x_obs, y_obs, z, scale, mx, my, history, basis, sol if lowrank else None,
                     negative_fraction, *args)
    return _mark_unconstrained(ds, free)


def _result(grid, x_obs, y_obs, z, scale, mx, my, history, basis, coeffs, negative_fraction, params, n_iter,
            converged, elapsed, loop_elapsed):
    """Label the in-memory solution (low rank: models of the unclipped W V, as in the solver and the Dask path)."""
    zz = np.ascontiguousarray(z if coeffs is None else coeffs @ basis.astype(coeffs.dtype))
    return _assemble(grid, x_obs, y_obs, (z / scale).astype(np.float32), mx.forward(zz).astype(np.float32),
                     my.forward(zz).astype(np.float32), x_obs["counts"].values, y_obs["counts"].values, history,
                     basis, coeffs, scale, params, n_iter, converged, elapsed, loop_elapsed,
                     backend="numpy", negative_fraction=negative_fraction)


def _lazy_result(grid, x_obs, y_obs, w, basis, scale, mx, my, xd, yd, history, params, n_iter, converged, elapsed,
                 loop_elapsed):
    """Result of the Dask low-rank path: flux and models defined block by block from W (never materialized)."""
    vb = basis.astype(w.dtype)
    sp_y, v_y = my.reduced(vb)
    a_y = w if sp_y is None else sp_y.forward(w)
    flux = parallel.lazy_product(w, basis, (xd.chunks[0][0], xd.chunks[1][0]), scale=scale)
    mod_x = parallel.lazy_product(w, mx.reduced(vb)[1], (xd.chunks[0][0], xd.chunks[1][0]), clip=False)
    mod_y = parallel.lazy_product(a_y, v_y, (yd.chunks[0][0], yd.chunks[1][0]), clip=False)
    return _assemble(grid, x_obs, y_obs, flux, mod_x, mod_y, xd.astype(np.float32), yd.astype(np.float32), history,
                     basis, w, scale, params, n_iter, converged, elapsed, loop_elapsed,
                     backend="dask", negative_fraction=float("nan"))


def _assemble(grid, x_obs, y_obs, flux, mod_x, mod_y, cnt_x, cnt_y, history, basis, coeffs, scale, params, n_iter,
              converged, elapsed, loop_elapsed, backend, negative_fraction):
    coords = {c: grid[c] for c in ("x", "y", "energy", "energy_lo", "energy_hi")}
    ds = xr.Dataset(coords=coords)
    ds["flux"] = (CUBE_DIMS, flux, {"units": FLUX_UNITS, "long_name": "fused photon flux per voxel"})
    mxs = {"energy": "energy_spatial", "energy_lo": "energy_spatial_lo", "energy_hi": "energy_spatial_hi"}
    mys = {"x": "x_spectral", "y": "y_spectral"}
    ds["model_spatial"] = _renamed(x_obs["counts"].copy(data=mod_x), mxs).assign_attrs(
        units="count", long_name=f"predicted counts of {grid.attrs['spatial_obs']}")
    ds["counts_spatial"] = _renamed(x_obs["counts"].copy(data=cnt_x), mxs).astype(np.float32)
    ds["model_spectral"] = _renamed(y_obs["counts"].copy(data=mod_y), mys).assign_attrs(
        units="count", long_name=f"predicted counts of {grid.attrs['spectral_obs']}")
    ds["counts_spectral"] = _renamed(y_obs["counts"].copy(data=cnt_y), mys).astype(np.float32)
    for k, v in history.items():
        units, long_name = HISTORY_ATTRS.get(k, ("1", k))
        ds[k] = (("iteration",), np.asarray(v, dtype=np.float64), {"units": units, "long_name": long_name})
    ds = ds.assign_coords(iteration=np.arange(ds.sizes["iteration"]))
    if basis is not None:
        ds["basis"] = (("component", "energy"), basis.astype(np.float32), {"long_name": "orthonormal spectral basis V"})
        ds["coefficients"] = (("x", "y", "component"), (coeffs / scale).astype(np.float32),
                              {"units": FLUX_UNITS, "long_name": "subspace maps W (flux = W @ basis, clipped at 0)"})
    if "psf" in grid:
        ds["psf_spectral"] = grid["psf"].copy(deep=True)  # a copy: the result never aliases the inputs
    ds.attrs.update({
        "xfusion_version": __version__,
        "backend": backend,
        "regularization": params["regularization"],
        "method": params["method"],
        "iterations": int(n_iter),
        "converged": int(converged),
        "tol": "none" if params["tol"] is None else float(params["tol"]),
        "max_iter": int(params["max_iter"]),
        "parameters": json.dumps(params, default=str),
        "flux_units": FLUX_UNITS,
        "negative_fraction_clipped": negative_fraction,
        "elapsed_s": float(elapsed),
        "loop_elapsed_s": float(loop_elapsed),
        "seconds_per_iteration": float(loop_elapsed) / max(int(n_iter), 1),
        **{k: grid.attrs[k] for k in ("spatial_factor", "spectral_factor", "spatial_obs", "spectral_obs", "order",
                                       "pixel_size")},
    })
    return ds
