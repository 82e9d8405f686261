"""Naive reference reconstructions on the fused grid (flux in ph cm-2 s-1 per voxel).

* ``upsample_spatial(x_obs, y_obs)``: the sharp-spatial data spread evenly over the fine
  channels of each of its channels and divided by exposure x area ("X upsampled in energy");
* ``upsample_spectral(x_obs, y_obs)``: the sharp-spectral data spread evenly over the
  fine pixels of each of its pixels ("Y upsampled in space");
* ``richardson_lucy(x_obs, y_obs, n_iter)``: plain two-instrument EM, no regularization.
"""
from __future__ import annotations

import numpy as np
import xarray as xr

from .fuse import FLUX_UNITS, fuse
from .grid import SPATIAL, SPECTRAL, assign_roles, fusion_grid
from .observation import CUBE_DIMS
from .operators.model import build_model


def _label(grid, values, name):
    coords = {c: grid[c] for c in ("x", "y", "energy", "energy_lo", "energy_hi")}
    return xr.DataArray(values.astype(np.float32), dims=CUBE_DIMS, coords=coords, name=name,
                        attrs={"units": FLUX_UNITS, "long_name": name})


def upsample_spatial(obs_a, obs_b):
    grid = fusion_grid(obs_a, obs_b)
    x_obs, _, _ = assign_roles(obs_a, obs_b)
    v = grid.attrs["spectral_factor"]
    w = np.broadcast_to(build_model(grid, x_obs, SPATIAL).weights, (grid.sizes["x"], grid.sizes["y"], grid.sizes["energy"]))
    z = np.repeat(x_obs["counts"].values.astype(np.float64), v, axis=-1) / v / w
    return _label(grid, z, "X upsampled in energy")


def upsample_spectral(obs_a, obs_b):
    grid = fusion_grid(obs_a, obs_b)
    _, y_obs, _ = assign_roles(obs_a, obs_b)
    v = grid.attrs["spatial_factor"]
    w = np.broadcast_to(build_model(grid, y_obs, SPECTRAL).weights, (grid.sizes["x"], grid.sizes["y"], grid.sizes["energy"]))
    c = y_obs["counts"].values.astype(np.float64)
    if grid.attrs.get("spatial_model") == "footprint":  # detector pixels: spread by the exact overlap fractions
        z = _spread_pixels(grid, y_obs, c) / w
        return _label(grid, z, "Y upsampled in space")
    z = np.repeat(np.repeat(c, v, axis=0), v, axis=1) / v ** 2 / w
    return _label(grid, z, "Y upsampled in space")


def _spread_pixels(grid, y_obs, c):
    """Counts (P, L) of detector pixels spread over the fused pixels they overlap (flat within each
    pixel; fused pixels under several detector pixels get the overlap-weighted mean, background
    subtracted and clipped at 0, masked pixels left out): ``sum_p F[p, j] c_p / A_p / sum_p F[p, j]``
    with ``A_p = sum_j F[p, j]`` (0 where no detector pixel sees the sky)."""
    from .grid import footprint_geometry
    from .observation import pixel_size
    from .operators.footprint import footprint_matrix

    (cx, cy), roll = footprint_geometry(grid, y_obs)
    F = footprint_matrix(grid["x"].values, grid["y"].values, pixel_size(grid), y_obs["det_x"].values,
                         y_obs["det_y"].values, pixel_size(y_obs), roll, (cx, cy))
    if "exposure_fraction" in y_obs:
        c = c / y_obs["exposure_fraction"].values[:, None]
    if "background_rate" in y_obs:
        c = np.maximum(c - y_obs["background_rate"].values * float(y_obs["exposure"].values), 0.0)
    if "mask" in y_obs:
        F = F.multiply(y_obs["mask"].values.any(axis=1)[:, None]).tocsr()
    area = np.asarray(F.sum(axis=1)).ravel()
    per = c / np.where(area > 0, area, np.inf)[:, None]
    cover = np.asarray(F.sum(axis=0)).ravel()
    z = (F.T @ per) / np.where(cover > 0, cover, np.inf)[:, None]
    return z.reshape(grid.sizes["x"], grid.sizes["y"], -1)


def richardson_lucy(obs_a, obs_b, n_iter=10, **kw):
    """Plain two-instrument Richardson-Lucy: ``fuse(..., regularization="none", method="em")`` for ``n_iter``
    iterations (no early stop); ``kw`` are :func:`xfusion.fuse`'s other keywords (``progress``, ``dtype``,
    ``callback``, ``client``, ...)."""
    return fuse(obs_a, obs_b, regularization="none", method="em", max_iter=n_iter, tol=None, **kw)
