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
from .likelihood import PoissonLikelihood, PoissonTerm
from .observation import CUBE_DIMS
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
                    "k_max": 3.0, "null_space": "zero", "per_band": True, "chunks": None,
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
#: gaussian_rebin, 17.1 dB, and falls to 6.8 dB after 300 on small)
EARLY_STOP = {"none": 5, "lowrank": 30}


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
        if key in params and params[key] != "auto" and not (isinstance(params[key], (int, float)) and params[key] >= 0):
            raise ValueError(f"option {key} must be a number >= 0; got {params[key]!r}")
    for key in ("rank", "n_scales_2d", "n_scales_1d"):
        if key in params and params[key] != "auto" and not (isinstance(params[key], int) and params[key] >= 1):
            raise ValueError(f"option {key} must be an integer >= 1; got {params[key]!r}")
    if params.get("step") is not None and not params["step"] > 0:
        raise ValueError(f"option step must be > 0; got {params['step']!r}")
    if "layout" in params and params["layout"] not in ("halo", "rechunk"):
        raise ValueError(f"option layout must be 'halo' or 'rechunk' (Dask path: PSF operators on pixel blocks "
                         f"with halos, or on full-field channel slabs); got {params['layout']!r}")
    return method, params, lowrank


#: photon statistics that separate the two automatic wavelet settings (mean counts per
#: sharp-spectral voxel; gaussian_rebin has 4.6, realistic_rebin 56, gaussian_rebin x10 46)
AUTO_COUNTS_SPLIT = 15.0


def _auto_wavelet_params(params, yd, client):
    """Resolve ``k="auto"`` / ``n_scales_1d="auto"`` from the photon statistics of Y, in place.

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


def _fingerprint(arrays, settings, client=None):
    """Identity of a run for checkpoints: settings + a checksum of both counts cubes.

    Dask cubes (already persisted by ``fuse``) contribute their sum and a channel-weighted sum
    in one pass instead of their bytes.
    """
    h = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    for c in arrays:
        if parallel.is_dask(c):
            import dask.array as da

            w = (c * (1 + np.arange(c.shape[-1]) % 7)).sum(dtype=np.float64)
            h.update(np.asarray(parallel.compute(da.stack([c.sum(dtype=np.float64), w]), client)).tobytes())
        else:
            h.update(np.ascontiguousarray(c).tobytes())
    return h.hexdigest()


def _renamed(da, mapping):
    return da.rename({k: v for k, v in mapping.items() if k in da.dims or k in da.coords})


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
    method : {"em", "ista"} for full-cube regularizations (default "em"); "fista" for the
        low-rank family. See :mod:`xfusion.solvers`.
    max_iter, tol : iteration cap (default per method: em 50, ista 2000, fista 300; early
        stopping for the unregularized options: none 5, lowrank 30) and the relative objective
        change (> 0) at which to stop; ``tol=None`` runs all ``max_iter`` iterations.
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
    **options : regularization / method options, e.g. ``k``, ``n_scales_2d``, ``n_scales_1d``,
        ``k_rule``, ``null_space`` (wavelet2d1d), ``rank``, ``explained``, ``mu`` (low rank),
        ``step`` (ista). Unknown options raise ``TypeError``.

    Returns
    -------
    xarray.Dataset with ``flux`` (x, y, energy) in ph cm-2 s-1 per voxel (photons per cm2 per
    second in each fused pixel and energy bin), ``model_spatial`` / ``counts_spatial``
    (x, y, energy_spatial) and ``model_spectral`` / ``counts_spectral``
    (x_spectral, y_spectral, energy): predicted and observed counts of both instruments,
    ``objective``, ``data_term``, ``penalty`` over ``iteration``; for the low-rank family also
    ``basis`` (component, energy) and ``coefficients`` (x, y, component). Attributes record
    every parameter (``parameters`` as JSON), the method, iterations, convergence flag, timing
    and the xfusion version.
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
    if tol is not None and not (isinstance(tol, (int, float)) and tol > 0):
        raise ValueError(f"tol must be > 0 (relative objective change); got {tol!r}. Use tol=None to run all "
                         "max_iter iterations")
    if max_iter is None:
        max_iter = EARLY_STOP.get(regularization, MAX_ITER[method])
    max_iter = int(max_iter)
    if max_iter < 0:
        raise ValueError(f"max_iter must be >= 0; got {max_iter}")
    grid = fusion_grid(obs_a, obs_b)
    x_obs, y_obs, _ = assign_roles(obs_a, obs_b)
    mx, my = build_model(grid, x_obs, SPATIAL), build_model(grid, y_obs, SPECTRAL)
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
    xsum = float(parallel.compute(xd.sum(dtype=np.float64), client) if use_dask else xd.sum(dtype=np.float64))
    # mean level (internal units per voxel) that reproduces the X counts: from the model of a flat spectrum
    if mx.weights.ndim == 1:
        flat_total = float(mx.reduced(np.ones((1, shape[2])))[1].sum()) * shape[0] * shape[1]
    else:  # vignetted: in-memory path only
        flat_total = float(mx.forward(np.ones(shape, dt)).sum())
    level = xsum / max(flat_total, 1e-300)

    basis = None
    if lowrank:
        if mx.weights.ndim > 1 or my.weights.ndim > 1:
            raise ValueError("low-rank regularizations need effective areas that do not vary with position; "
                             "use regularization='wavelet2d1d' for vignetted data")
        wy = np.broadcast_to(my.weights, shape)[0, 0]
        spectra = yd.reshape(-1, yd.shape[-1]) / wy
        if params["rank"] > min(shape[2], yd.shape[0] * yd.shape[1]):
            raise ValueError(f"rank={params['rank']} exceeds the {shape[2]} channels or the "
                             f"{yd.shape[0] * yd.shape[1]} spectra of '{grid.attrs['spectral_obs']}'; use a smaller rank")
        if use_dask and shape[2] > lowrank_mod.COVARIANCE_MAX_CHANNELS:
            basis = lowrank_mod.pca_basis_randomized(spectra, rank=params["rank"], client=client)
            s = parallel.compute(spectra.sum(axis=0, dtype=np.float64), client)
        else:
            moments = lowrank_mod.spectral_moments(spectra, client=client if use_dask else None)
            basis = lowrank_mod.pca_basis(moments=moments, rank=None if params["explained"] else params["rank"],
                                          explained=params["explained"] or 0.999)
            s = moments[1]
        vb = basis.astype(dt)
        # start: X amplitude per pixel times the mean Y spectrum (positive, in the subspace)
        s = s / s.sum()
        per_pix = mx.reduced(s[None])[1].sum()
        amp = xd.sum(axis=-1, dtype=np.float64)
        amp = (parallel.compute(amp, client) if use_dask else amp) / per_pix
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
            solver = EMProx(lik, reg) if method == "em" else ISTA(lik, reg, step=params.get("step"))
            x0 = np.full(shape, level, dtype=dt)

    fp = _fingerprint((xd, yd), settings, client)
    state, history, n_iter, converged = run(
        solver, x0, max_iter=max_iter, tol=tol, callback=callback, progress=progress, checkpoint=checkpoint,
        checkpoint_every=checkpoint_every, resume=resume, fingerprint=fp)

    sol = solver.solution(state)
    if use_dask:
        z, negative_fraction = None, float("nan")
    elif lowrank:
        z = sol @ basis.astype(sol.dtype)
        negative_fraction = float(np.mean(z < 0))
        np.maximum(z, 0, out=z)
    else:
        z, negative_fraction = sol, 0.0
    if method == "ista" and "step" in params:
        params["step"] = float(state.get("alpha", np.nan))
    args = (dict(settings, **params), n_iter, converged, time.perf_counter() - t_start,
            state.get("elapsed_loop_s", np.nan))
    if use_dask and lowrank:
        return _lazy_result(grid, x_obs, y_obs, sol, basis, scale, mx, my, xd, yd, history, *args)
    if use_dask:
        return _assemble(grid, x_obs, y_obs, (sol / scale).astype(np.float32), solver.model_x(sol),
                         solver.model_y(sol), xd, yd, history, None, None, scale, *args, backend="dask",
                         negative_fraction=0.0)
    return _result(grid, x_obs, y_obs, z, scale, mx, my, history, basis, sol if lowrank else None,
                   negative_fraction, *args)


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
        ds[k] = (("iteration",), np.asarray(v, dtype=np.float64))
    ds = ds.assign_coords(iteration=np.arange(ds.sizes["iteration"]))
    if basis is not None:
        ds["basis"] = (("component", "energy"), basis.astype(np.float32), {"long_name": "orthonormal spectral basis V"})
        ds["coefficients"] = (("x", "y", "component"), (coeffs / scale).astype(np.float32),
                              {"units": FLUX_UNITS, "long_name": "subspace maps W (flux = W @ basis, clipped at 0)"})
    if "psf" in grid:
        ds["psf_spectral"] = grid["psf"]
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
