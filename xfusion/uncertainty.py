r"""Error bars of a fused cube from replicas: ``xfusion.uncertainty(result, obs_a, obs_b, ...)``.

A fused cube is a regularized, deconvolved estimate: its voxels are correlated and their
scatter is not Poisson. Its uncertainty is measured by refitting replicas of the data with
exactly the settings the result recorded (:func:`xfusion.settings_of`: no re-tuning).

Methods
-------
``"bootstrap"`` (parametric bootstrap, default)
    Replica ``i`` draws new counts of both instruments from the fitted model,
    ``d*_X ~ Poisson(model_spatial)`` and ``d*_Y ~ Poisson(model_spectral)`` (the
    result's predicted counts), and refits them: ``z*_i = fuse(d*_X, d*_Y, settings)``.
    The spread of ``z*`` around its mean estimates the spread of the estimator around its
    expectation; the bias of the regularization (e.g. a line peak flattened by the
    prior) is NOT in it -- ``flux_replica_mean - flux`` is the bootstrap estimate of that
    bias (it is reported, not subtracted).
``"thinning"``
    Replica ``i`` splits the observed counts binomially, ``A ~ Binomial(d, 1/2)``,
    ``B = d - A`` (two independent Poisson halves of the data), fits each half with half
    the exposure, and forms ``z*_i = z + (z_A - z_B) / 2``: for an estimator whose
    variance scales as 1/exposure, ``var((z_A - z_B)/2) = var(z_A)/2 = var(z)``. It uses
    no model (robust to a wrong fit) at twice the cost per replica, and it is only
    approximate where the estimator is far from linear (very low counts, thresholding).
    Observations with a known background are refused.

Warm starts. When the fit converged (stopped by ``tol`` at a fixed point of its
objective), replicas start from the result (``fuse(..., init=result)``): they reach the
fixed point of the replica data in a few iterations. When the iteration count is the
regularizer (early-stopped Richardson-Lucy ``"none"``, low rank stopped at ``max_iter``,
any fit that did not converge), a warm start would run a different estimator (more
iterations from a better start), so those replicas start cold with the same count
(``warm="auto"``; the choice is recorded per replica).

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
  channels it is singular -- see the README on fitting correlated channels);
  ``region_mask`` (region, x, y).
* Per replica: ``replica_seed``, ``replica_iterations``, ``replica_converged``,
  ``replica_warm``, ``replica_elapsed_s``. Attributes: ``method``, ``n``, ``seed``, the
  ``settings`` used (JSON), ``store`` (or "none").

Resuming. With ``store=PATH`` every finished replica is written to ``PATH/replica_NNNNN``
(a Zarr store written to a temporary sibling and renamed when complete, so a replica on
disk is complete). ``PATH`` is created by xfusion with its marker attribute and a
fingerprint of the problem (result flux and models, settings, method, seed); a rerun with
the same problem skips the replicas already there (``n`` may grow), a different problem is
refused, and a path xfusion did not create is never written into.

Parallel. With ``client`` (a ``dask.distributed.Client``) the replicas are independent
tasks (``client.submit`` of a function of plain arrays and observations), results written
to the store as they finish.

Replica ``i`` draws from ``numpy.random.default_rng([seed, i])``: reruns and resumed runs
are reproducible replica by replica.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np
import xarray as xr

from .grid import assign_roles
from .io import zarr as xzarr

__all__ = ["uncertainty", "METHODS", "QUANTILES"]

METHODS = ("bootstrap", "thinning")
#: the replica quantiles reported (a 68% central interval and the median)
QUANTILES = (0.16, 0.5, 0.84)
#: root attribute of a replica store (with the fingerprint of the problem)
STORE_ATTR = "xfusion_uncertainty"
_CUBE = ("x", "y", "energy")


# ------------------------------------------------------------------------------------------- inputs
def _as_int(v, what, low):
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)) or v < low:
        raise ValueError(f"{what} must be an integer >= {low} (not a bool or float); got {v!r}")
    return int(v)


def _obs_counts(obs, model, rename):
    """Model counts of one instrument as an array in the order of ``obs['counts'].dims``."""
    m = model.rename({k: v for k, v in rename.items() if k in model.dims})
    m = m.drop_vars([c for c in m.coords if c not in m.dims], errors="ignore")
    dims = obs["counts"].dims
    if set(m.dims) != set(dims) or m.transpose(*dims).shape != obs["counts"].shape:
        raise ValueError(f"the result's predicted counts {dict(model.sizes)} do not match the observation's counts "
                         f"{dict(obs['counts'].sizes)}: pass the observations the result was fitted on")
    v = np.asarray(m.transpose(*dims).values, dtype=np.float64)
    if not np.all(np.isfinite(v)) or np.any(v < 0):
        raise ValueError("the result's predicted counts contain NaN, inf or negative values: not a usable fit")
    return v


def _box(region):
    if isinstance(region, dict) and set(region) == {"x", "y"}:
        try:
            (x0, x1), (y0, y1) = region["x"], region["y"]
            return slice(int(x0), int(x1)), slice(int(y0), int(y1))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"a box region is {{'x': (x0, x1), 'y': (y0, y1)}} in pixel indices; got {region!r}") \
                from exc
    return region


def region_masks(regions, shape):
    """``(names, masks (R, x, y) bool)`` from ``regions`` (see the module docstring)."""
    from .io.export import region_mask

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
    masks = []
    for name, r in items:
        m = region_mask(_box(r), shape)
        if not m.any():
            raise ValueError(f"region {name!r} selects no pixel of the {shape[0]}x{shape[1]} field")
        masks.append(m)
    return [str(k) for k, _ in items], np.stack(masks)


# ----------------------------------------------------------------------------------- one replica
def _with_counts(obs, counts, exposure_factor=1.0):
    """A copy of ``obs`` with new counts (and exposure scaled); the input is never modified."""
    out = obs.copy(deep=False)
    out["counts"] = obs["counts"].copy(data=counts.astype(obs["counts"].dtype, copy=False))
    if exposure_factor != 1.0:
        out["exposure"] = obs["exposure"] * exposure_factor
    return out


def _fit(x_obs, y_obs, settings, init):
    from .fuse import fuse

    r = fuse(x_obs, y_obs, progress=False, init=init, **settings)
    return (np.asarray(r["flux"].transpose(*_CUBE).values, dtype=np.float32), int(r.attrs["iterations"]),
            bool(r.attrs["converged"]))


def replica(index, seed, method, x_obs, y_obs, model_x, model_y, start, settings, warm):
    """Replica ``index``: ``(flux (x, y, energy) float32, metadata dict)``; arrays and observations in, arrays
    out (runs on a Dask worker as is). ``model_x``/``model_y``: expected counts in the order of each
    observation's counts; ``start``: the result's flux DataArray (x, y, energy) on the fused grid (the warm
    start, and the centre of thinning replicas)."""
    t0 = time.perf_counter()
    rng = np.random.default_rng([int(seed), int(index)])
    flux = np.asarray(start.values, dtype=np.float32)
    init = start if warm else None
    if method == "bootstrap":
        xo = _with_counts(x_obs, rng.poisson(model_x).astype(np.float32))
        yo = _with_counts(y_obs, rng.poisson(model_y).astype(np.float32))
        z, it, conv = _fit(xo, yo, settings, init)
    else:
        halves = []
        for obs in (x_obs, y_obs):
            d = np.asarray(obs["counts"].values)
            a = rng.binomial(np.rint(d).astype(np.int64), 0.5).astype(np.float32)
            halves.append((_with_counts(obs, a, 0.5), _with_counts(obs, d - a, 0.5)))
        za, ia, ca = _fit(halves[0][0], halves[1][0], settings, init)
        zb, ib, cb = _fit(halves[0][1], halves[1][1], settings, init)
        z = (flux.astype(np.float64) + 0.5 * (za.astype(np.float64) - zb)).astype(np.float32)
        it, conv = ia + ib, ca and cb
    meta = {"index": int(index), "iterations": it, "converged": bool(conv), "warm": bool(warm),
            "elapsed_s": time.perf_counter() - t0}
    return z, meta


# ------------------------------------------------------------------------------------- the store
class ReplicaStore:
    """Replicas on disk: ``PATH`` (a Zarr group xfusion created, marked and fingerprinted) holding one
    complete Zarr store ``replica_NNNNN`` per finished replica."""

    def __init__(self, path, fingerprint, inputs=()):
        self.path = Path(os.fspath(path))
        self.fingerprint = fingerprint
        p = self.path
        if p.exists() or p.is_symlink():
            if not xzarr.is_zarr_store(p) or not xzarr.written_by_xfusion(p):
                raise xzarr.OutputError(f"store {str(path)!r} exists and was not created by xfusion.uncertainty; "
                                        "refusing to write into it: choose another path")
            attrs = json.loads((p / "zarr.json").read_text()).get("attributes") or {}
            rec = attrs.get(STORE_ATTR)
            if not isinstance(rec, dict):
                raise xzarr.OutputError(f"store {str(path)!r} is an xfusion store but not a replica store of "
                                        "xfusion.uncertainty; choose another path")
            if rec.get("fingerprint") != fingerprint:
                raise xzarr.OutputError(f"store {str(path)!r} holds replicas of a different problem (result, "
                                        "observations, settings, method or seed differ); choose another path, or "
                                        "remove that store yourself if it is no longer needed")
        else:
            root = xr.Dataset(attrs={STORE_ATTR: {"fingerprint": fingerprint, "format": 1}})
            xzarr.write(root, p, inputs=list(inputs))

    def _name(self, i):
        return self.path / f"replica_{i:05d}"

    def done(self, i):
        q = self._name(i)
        return xzarr.is_zarr_store(q) and xzarr.written_by_xfusion(q)

    def write(self, z, meta):
        ds = xr.Dataset({"flux": (_CUBE, z)}, attrs={"replica": json.dumps(meta)})
        xzarr.write(ds, self._name(meta["index"]), inputs=[])

    def read(self, i, lazy=True):
        ds = xr.open_zarr(os.fspath(self._name(i)), consolidated=False, chunks={} if lazy else None)
        return ds["flux"].data if lazy else np.asarray(ds["flux"].values), json.loads(ds.attrs["replica"])


def _fingerprint(flux, model_x, model_y, counts, settings, method, seed, warm):
    h = hashlib.sha256()
    for a in (flux, model_x, model_y, *counts):
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(memoryview(a).cast("B") if a.size else b"")
    h.update(json.dumps([settings, method, int(seed), bool(warm)], sort_keys=True, default=str).encode())
    return h.hexdigest()


# ------------------------------------------------------------------------------------------ main
def uncertainty(result, obs_a, obs_b, *, n=20, method="bootstrap", client=None, store=None, seed=0, regions=None,
                warm="auto", covariance=True, progress=False) -> xr.Dataset:
    """Per-voxel and region errors of a fused cube from ``n`` refitted replicas (see the module docstring).

    Parameters
    ----------
    result : Dataset returned by :func:`xfusion.fuse` (in memory) on ``obs_a``, ``obs_b``.
    obs_a, obs_b : the observations it was fitted on (any order).
    n : number of replicas (>= 2).
    method : "bootstrap" (parametric, from the fitted model) or "thinning" (binomial halves of the data).
    client : optional ``dask.distributed.Client``: replicas run as independent tasks on its workers.
    store : optional path of a Zarr store for the replicas: a killed run resumes there.
    seed : replica ``i`` draws from ``default_rng([seed, i])``.
    regions : dict name -> region or list of regions (masks, pixel lists, slice pairs, boxes); default the
        whole field.
    warm : "auto" (warm start when the fit converged), True or False.
    covariance : compute ``region_covariance`` (region, energy, energy2) (float32, L^2 values per region).
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
    seed = _as_int(seed, "seed", 0)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}; got {method!r}")
    if warm not in ("auto", True, False):
        raise ValueError(f"warm must be 'auto', True or False; got {warm!r}")
    from .fuse import settings_of

    settings = settings_of(result)
    x_obs, y_obs, _ = assign_roles(obs_a, obs_b)
    for o in (x_obs, y_obs):
        if hasattr(o["counts"].data, "dask"):
            raise NotImplementedError("uncertainty() needs observations in memory (.load() them); the replicas "
                                      "themselves run in parallel with client=")
    if any("variance" in o or str(o.attrs.get("data_term", "poisson")).lower() != "poisson" for o in (x_obs, y_obs)):
        raise NotImplementedError("uncertainty() draws Poisson replicas (bootstrap) or splits counts (thinning); "
                                  "replicas of a Gaussian data term (a 'variance' variable) are not implemented yet")
    if method == "thinning" and ("background" in x_obs or "background" in y_obs):
        raise NotImplementedError("method='thinning' halves the exposure, which does not apply to a known "
                                  "background; use method='bootstrap'")
    model_x = _obs_counts(x_obs, result["model_spatial"],
                          {"energy_spatial": "energy", "energy_spatial_lo": "energy_lo",
                           "energy_spatial_hi": "energy_hi"})
    model_y = _obs_counts(y_obs, result["model_spectral"], {"x_spectral": "x", "y_spectral": "y"})
    flux = np.asarray(result["flux"].transpose(*_CUBE).values, dtype=np.float32)
    if not np.all(np.isfinite(flux)):
        raise ValueError("the result's flux contains NaN or inf")
    if warm == "auto":  # a fixed point (stopped by tol): warm; an iteration count as regularizer: cold
        warm = bool(int(result.attrs.get("converged", 0)))
    names, masks = region_masks(regions, flux.shape[:2])

    counts = [np.asarray(o["counts"].values) for o in (x_obs, y_obs)]
    fp = _fingerprint(flux, model_x, model_y, counts, settings, method, seed, warm)
    rstore = None
    if store is not None:
        rstore = ReplicaStore(store, fp, inputs=xzarr.sources(obs_a, obs_b, result))
    todo = [i for i in range(n) if rstore is None or not rstore.done(i)]
    cubes, metas = {}, {}

    def finish(z, meta):
        if rstore is not None:
            rstore.write(z, meta)
        cubes[meta["index"]], metas[meta["index"]] = z, meta
        if progress:
            print(f"replica {meta['index']}: {meta['iterations']} iterations, {meta['elapsed_s']:.1f} s", flush=True)

    start = result["flux"].transpose(*_CUBE).astype(np.float32).copy(deep=True)
    start = start.drop_vars([c for c in start.coords if c not in ("x", "y", "energy", "energy_lo", "energy_hi")])
    args = (method, x_obs, y_obs, model_x, model_y, start, settings, warm)
    if client is None:
        for i in todo:
            finish(*replica(i, seed, *args))
    elif todo:
        from distributed import as_completed

        shared = client.scatter(list(args[1:6]), broadcast=True)
        futures = [client.submit(replica, i, seed, method, *shared, settings, warm, pure=False,
                                 key=f"xfusion-replica-{fp[:12]}-{seed}-{i}") for i in todo]
        for fut in as_completed(futures):
            finish(*fut.result())
            fut.release()
    # replicas finished earlier (resumed run) come from the store
    lazy = {}
    for i in range(n):
        if i not in cubes:
            lazy[i], metas[i] = rstore.read(i, lazy=True)
    return _summarize(result, flux, cubes, lazy, metas, n, names, masks, settings, method, seed, warm, covariance,
                      store)


def _summarize(result, flux, cubes, lazy, metas, n, names, masks, settings, method, seed, warm, covariance, store):
    import dask.array as da

    if lazy:
        parts = [da.from_array(cubes[i], chunks=cubes[i].shape) if i in cubes else lazy[i] for i in range(n)]
        stack = da.stack(parts)
        reps = np.asarray(stack.compute(), dtype=np.float32)
    else:
        stack = None
        reps = np.stack([cubes[i] for i in range(n)])
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
    out.attrs.update({k: result.attrs[k] for k in ("spatial_factor", "spectral_factor", "spatial_obs",
                                                    "spectral_obs") if k in result.attrs})
    out.attrs.update({"method": method, "n": n, "seed": seed, "warm": int(bool(warm)),
                      "settings": json.dumps(settings, default=str), "store": "none" if store is None else
                      os.fspath(store), "quantiles": list(map(float, q)),
                      "interval": "68%: flux +- flux_std (or flux_quantile 0.16-0.84); replica i drew from "
                                  "numpy default_rng([seed, i])"})
    return out
