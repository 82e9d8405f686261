"""Does a fusion result predict its data? Per-input agreement of predicted and observed counts, no truth needed.

:func:`count_consistency` scores every input of a :func:`xfusion.fuse` result (the sharp-spatial, the sharp-spectral
and any further one, in that order) with :func:`xfusion.metrics.consistency`: PSNR and SSIM of the energy-summed count
images, relative error of the spatially averaged spectrum. Voxels an input's ``mask`` excluded (result variables
``mask_spatial`` / ``mask_spectral`` / ``mask_obsI``) were not fitted and are left out of both sides. This is the
table ``xfusion metrics`` prints and what a user runs on real data.
"""
from __future__ import annotations

import json

import numpy as np

from . import metrics


def _inputs(result):
    """``(name, counts variable, model variable, mask variable)`` of every input of a result, in the order they were
    given to :func:`xfusion.fuse` when the result records it (attribute ``inputs``, as ``count_totals``), else the
    sharp-spatial, the sharp-spectral and any further one (``counts_obsI`` / ``model_obsI``; session 30: a third
    input's row was left out)."""
    pairs = [(str(result.attrs.get("spatial_obs", "counts_spatial")), "spatial"),
             (str(result.attrs.get("spectral_obs", "counts_spectral")), "spectral")]
    extra = sorted((v for v in result.data_vars if v.startswith("model_obs") and v[len("model_obs"):].isdigit()),
                   key=lambda v: int(v[len("model_obs"):]))
    for mod in extra:
        name = str(result[mod].attrs.get("long_name", mod)).removeprefix("predicted counts of ")
        pairs.append((name, mod[len("model_"):]))
    if "inputs" in result.attrs:  # call order: position of the sharp-spatial and sharp-spectral inputs
        pos = {("spatial" if r["role"] == "spatial" else "spectral" if r["role"] == "spectral" else
                f"obs{int(r['input'])}"): int(r["input"]) for r in json.loads(result.attrs["inputs"])}
        pairs.sort(key=lambda p: pos.get(p[1], len(pos)))
    return [(n, f"counts_{k}", f"model_{k}", f"mask_{k}") for n, k in pairs
            if f"counts_{k}" in result and f"model_{k}" in result]


def _dim(da, prefix):
    """The dim of ``da`` called ``prefix`` or ``prefix_<suffix>`` (``x_spectral``, ``pixel_obs2``...), else None."""
    found = [d for d in da.dims if d == prefix or d.startswith(prefix + "_")]
    return found[0] if len(found) == 1 else None


def as_cube(da):
    """Counts as an ``(x, y, energy)`` array, whatever their axes are called (``x_spectral``, ``energy_obs2``...);
    detector pixels (``pixel``, ``energy``) as ``(pixel, 1, energy)``. None if the axes are not recognised."""
    e, p = _dim(da, "energy"), _dim(da, "pixel")
    if p is not None and e is not None and da.ndim == 2:
        return da.transpose(p, e).values[:, None, :]
    x, y = _dim(da, "x"), _dim(da, "y")
    if None in (x, y, e) or da.ndim != 3:
        return None
    return da.transpose(x, y, e).values


def count_consistency(result) -> dict:
    """``{input name: metrics.consistency row}`` for every input of a fusion ``result``, in the order given to
    :func:`xfusion.fuse` (an input whose counts have axes not recognised is left out). Masked voxels are NaN on both
    sides (no data, as :func:`xfusion.fuse.counts_of` gives them) and count as 0 in the sums. Detector-pixel inputs (``pixel`` or ``pixel_obsI``) are no image: their
    ``ssim`` is None. A name given twice gets its variable appended, ``"name (counts_obs2)"``."""
    rows = {}
    for name, obs, mod, mask in _inputs(result):
        o, m = as_cube(result[obs]), as_cube(result[mod])
        if o is None or m is None:
            continue
        if mask in result:  # voxels the fit did not use: no data on either side
            keep = as_cube(result[mask]).astype(bool)
            o, m = np.where(keep, o, np.nan), np.where(keep, m, np.nan)
        row = metrics.consistency(o, m)
        if _dim(result[obs], "pixel") is not None:  # detector pixels are no image: no structural similarity
            row["ssim"] = None
        rows[name if name not in rows else f"{name} ({obs})"] = row
    return rows
