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
    z = np.repeat(np.repeat(c, v, axis=0), v, axis=1) / v ** 2 / w
    return _label(grid, z, "Y upsampled in space")


def richardson_lucy(obs_a, obs_b, n_iter=10, **kw):
    """Plain two-instrument Richardson-Lucy: ``fuse(..., regularization="none", method="em")``."""
    return fuse(obs_a, obs_b, regularization="none", method="em", max_iter=n_iter, tol=None, **kw)
