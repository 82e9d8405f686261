"""Initial points of :func:`xfusion.fuse` other than its default flat start: warm starts from a previous result.

A warm start (``fuse(..., init=result)``) is validated against the fused grid (:func:`check_init`), then turned
into the method's starting iterate in internal units: the full cube (:func:`cube_start`) or the low-rank
coefficients W (:func:`subspace_start`). The previous result is only read: every array returned is new.
"""
from __future__ import annotations

import numpy as np
import xarray as xr

from . import parallel
from .io.zarr import require_live
from .observation import CUBE_DIMS


#: EM warm starts: voxels of the start at exactly 0 (which a multiplicative EM step never leaves) start at this
#: fraction of the mean level instead
INIT_FLOOR = 1e-3


def check_init(init, grid, client=None):
    """Validate a warm start against the fused grid; return ``{"flux", "coefficients", "basis", "record"}``
    (flux in ph cm-2 s-1, (x, y, energy), NumPy or Dask; the low-rank pair when ``init`` is a low-rank result).
    Nothing of ``init`` is modified; the arrays returned are read, never written."""
    from .checkpoints import array_digest

    if isinstance(init, xr.Dataset):
        if "flux" not in init:
            raise ValueError("init= must be a result of xfusion.fuse (a Dataset with 'flux') or a flux DataArray "
                             f"(x, y, energy); this Dataset has variables {sorted(map(str, init.data_vars))}")
        flux, source = init["flux"], "result"
    elif isinstance(init, xr.DataArray):
        flux, source = init, "flux"
    else:
        raise ValueError(f"init= must be a result Dataset of xfusion.fuse or a flux DataArray (x, y, energy) on the "
                         f"fused grid; got {type(init).__name__}")
    if set(flux.dims) != set(CUBE_DIMS):
        raise ValueError(f"init= flux has dims {flux.dims}; a warm start needs dims {CUBE_DIMS} (the fused grid)")
    require_live(init if isinstance(init, xr.Dataset) else flux, "init=")
    flux = flux.transpose(*CUBE_DIMS)
    want = {d: grid.sizes[d] for d in CUBE_DIMS}
    if dict(flux.sizes) != want:
        raise ValueError(f"init= is on a {dict(flux.sizes)} grid but these observations fuse on {want}: a warm start "
                         "must come from a fusion of the same field and band (same fused grid)")
    for d in CUBE_DIMS:
        if d in flux.coords:
            a, b = np.asarray(flux[d].values, np.float64), np.asarray(grid[d].values, np.float64)
            step = float(np.min(np.abs(np.diff(b)))) if b.size > 1 else max(abs(float(b[0])), 1.0)
            if not np.allclose(a, b, rtol=0, atol=1e-3 * step):
                raise ValueError(f"init= coordinate '{d}' differs from the fused grid's (max difference "
                                 f"{float(np.max(np.abs(a - b))):.3g}): a warm start must be on the same fused grid")
    data = flux.data
    if parallel.is_dask(data):
        import dask.array as da

        ok, neg = parallel.compute_many([da.isfinite(data).all(), (data < 0).any()], client)
    else:
        data = np.asarray(data)
        ok, neg = bool(np.all(np.isfinite(data))), bool(np.any(data < 0))
    if not ok or neg:
        raise ValueError("init= flux must be finite and >= 0 (a photon flux, ph cm-2 s-1); it has "
                         f"{'NaN/inf' if not ok else 'negative'} values")
    record = {"from": source, "flux_sha256": array_digest(data, client)}
    out = {"flux": data, "coefficients": None, "basis": None, "record": record}
    if isinstance(init, xr.Dataset) and "coefficients" in init and "basis" in init:
        c = init["coefficients"].transpose("x", "y", "component")
        b = init["basis"].transpose("component", "energy")
        if c.sizes["component"] == b.sizes["component"] and b.sizes["energy"] == want["energy"]:
            out["coefficients"], out["basis"] = np.asarray(c.values), np.asarray(b.values)
            bad = [n for n in ("coefficients", "basis") if not np.all(np.isfinite(out[n]))]
            if bad:  # a low-rank warm start starts from them (a cold start was taken silently)
                raise ValueError(f"init= {' and '.join(bad)} must be finite (the low-rank warm start starts from "
                                 f"them); this result's {' and '.join(bad)} hold NaN/inf values (e.g. a damaged or "
                                 "incomplete store): fuse again, or pass only its flux (init=result['flux'])")
            record["coefficients_sha256"] = array_digest(out["coefficients"])
    if isinstance(init, xr.Dataset):
        record["regularization"] = init.attrs.get("regularization")
    return out


def cube_start(start, scale, level, method, dt, record):
    """Full-cube start (internal units) from a validated warm start: a new array (or lazy Dask cube)."""
    z = start["flux"] * scale
    if parallel.is_dask(z):
        z = z.astype(dt)
    else:
        z = np.array(z, dtype=dt, order="C", copy=True)
    if method == "em":  # multiplicative: exact zeros would stay zero
        floor = dt.type(INIT_FLOOR * level)
        z = np.maximum(z, floor) if not parallel.is_dask(z) else z.clip(min=floor)
        record["floor"] = float(floor / scale)
    return z


def subspace_start(start, basis, scale, w_default, solver, record, client=None):
    """Low-rank start W (internal units, (x, y, r)) from a validated warm start: its coefficients when its basis is
    the current one (to float32), else the projection of its cube onto the current basis. A start predicting no
    counts where there are data (objective +inf) is blended with the default start until finite (recorded); if no
    blend is finite, the default start is used and ``record["subspace"]`` says so."""
    dt = w_default.dtype
    c, b = start["coefficients"], start["basis"]
    if c is not None and b.shape == basis.shape and np.array_equal(b, basis.astype(np.float32)):
        w, record["subspace"] = np.array(c, np.float64) * scale, "coefficients"
    elif c is not None:  # Z = C B, projected: C (B V^T)
        w, record["subspace"] = (np.asarray(c, np.float64) * scale) @ (np.asarray(b, np.float64) @ basis.T), \
            "projected coefficients"
    else:
        f = start["flux"]
        proj = f.astype(np.float64) @ basis.T
        w = (parallel.compute(proj, client) if parallel.is_dask(proj) else proj) * scale
        record["subspace"] = "projected flux"
    w = np.ascontiguousarray(w, dtype=dt)
    for t in (0.0, 1e-3, 1e-2, 0.1, 0.5, 1.0):
        cand = w if t == 0 else ((1 - t) * w + t * w_default).astype(dt)
        if np.isfinite(solver.f(cand)):
            if t:
                record["blend_with_default"] = t
            return cand
    record["subspace"] = f"default start (no blend of the warm start from {record['subspace']} was finite)"
    return w_default
