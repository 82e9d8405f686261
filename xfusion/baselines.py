"""Naive reference reconstructions on the fused grid (flux in ph cm-2 s-1 per voxel).

* ``upsample_spatial(x_obs, y_obs)``: the sharp-spatial data spread evenly over the fine
  channels of each of its channels and divided by exposure x area ("X upsampled in energy");
* ``upsample_spectral(x_obs, y_obs)``: the sharp-spectral data spread evenly over the
  fine pixels of each of its pixels ("Y upsampled in space");
* ``richardson_lucy(x_obs, y_obs, n_iter)``: plain two-instrument EM, no regularization.

Both upsampling baselines treat an observation's optional ``background_rate`` and ``mask`` alike, on pixel grids and
on detector pixels (session 30: the pixel-grid paths ignored both):

* the background's expected counts ``background_rate x exposure`` are subtracted from the counts, clipped at 0;
* masked voxels (``mask`` False) carry no data: their counts are left out, and the fused voxels that no valid voxel
  covers take the mean flux of the covered fused voxels of the same channel (0 if none), so that invalid counts
  are not spread as flux and the masked area neither adds to nor pulls down the field's flux. (Detector pixels:
  a fused pixel under several detector pixels takes the overlap-weighted mean of the valid ones.)

Without ``background_rate`` and ``mask`` the arithmetic is unchanged (bit-identical to earlier versions).
"""
from __future__ import annotations

import numpy as np
import xarray as xr

from .fuse import FLUX_UNITS, fuse
from .grid import SPATIAL, SPECTRAL, assign_roles, fusion_grid
from .observation import CUBE_DIMS, energy_edges
from .operators.model import build_model


def _label(grid, values, name):
    coords = {c: grid[c] for c in ("x", "y", "energy", "energy_lo", "energy_hi")}
    return xr.DataArray(values.astype(np.float32), dims=CUBE_DIMS, coords=coords, name=name,
                        attrs={"units": FLUX_UNITS, "long_name": name})


def _source_counts(obs, c):
    """Counts ``c`` minus the known background's expected counts ``background_rate x exposure``, clipped at 0."""
    if "background_rate" in obs:
        c = np.maximum(c - obs["background_rate"].transpose(*obs["counts"].dims).values * float(obs["exposure"].values),
                       0.0)
    return c


def _valid(obs):
    """The ``mask`` (True where a voxel is valid) in the counts' dim order, or None."""
    return None if "mask" not in obs else np.asarray(obs["mask"].transpose(*obs["counts"].dims).values, bool)


def _fill_masked(z, seen):
    """Fused voxels no valid datum covers (``seen`` False) set to the mean of the covered ones in their channel (0 if
    none): the masked area takes the field's mean spectrum instead of its invalid counts or zeros."""
    seen = np.broadcast_to(seen, z.shape)
    n = seen.sum(axis=(0, 1))
    mean = np.where(seen, z, 0.0).sum(axis=(0, 1)) / np.where(n > 0, n, 1)
    return np.where(seen, z, mean)


def _channel_spread(coarse, fine):
    """(coarse channels, fine channels) matrix: the fraction of each coarse channel's energy range in each fine
    channel, ``|[lo_i, hi_i] & [lo_j, hi_j]| / (hi_i - lo_i)`` (a coarse channel partly outside the fine band spreads
    only the part inside)."""
    lo = np.maximum(coarse[:-1, None], fine[None, :-1])
    hi = np.minimum(coarse[1:, None], fine[None, 1:])
    return np.clip(hi - lo, 0.0, None) / np.diff(coarse)[:, None]


def upsample_spatial(obs_a, obs_b):
    """X upsampled in energy: its counts spread evenly over the ``v`` fine channels of each channel, divided by
    exposure x area, ``z = repeat(c - B, v) / v / w`` (ph cm-2 s-1 per voxel; background and mask: module notes).
    Channels that are no integer grouping of the fused ones (``spectral_model`` "rmf", :func:`xfusion.fusion_grid`)
    are spread by their overlap with each fused channel (:func:`_channel_spread`), the same rule in general form."""
    grid = fusion_grid(obs_a, obs_b)
    x_obs, _, _ = assign_roles(obs_a, obs_b)
    v = grid.attrs["spectral_factor"]
    w = np.broadcast_to(build_model(grid, x_obs, SPATIAL).weights, (grid.sizes["x"], grid.sizes["y"], grid.sizes["energy"]))
    c = _source_counts(x_obs, x_obs["counts"].values.astype(np.float64))
    valid = _valid(x_obs)
    if valid is not None:
        c = np.where(valid, c, 0.0)
    if grid.attrs.get("spectral_model") == "rmf":
        S = _channel_spread(energy_edges(x_obs), energy_edges(grid))
        z = (c @ S) / w
        if valid is not None:
            z = _fill_masked(z, (valid.astype(np.float64) @ (S > 0)) > 0)
        return _label(grid, z, "X upsampled in energy")
    z = np.repeat(c, v, axis=-1) / v / w
    if valid is not None:
        z = _fill_masked(z, np.repeat(valid, v, axis=-1))
    return _label(grid, z, "X upsampled in energy")


def upsample_spectral(obs_a, obs_b):
    """Y upsampled in space: its counts spread evenly over the ``v x v`` fused pixels of each pixel (detector pixels:
    by their overlap fractions, :func:`_spread_pixels`), divided by exposure x area, ``z = repeat(c - B) / v^2 / w``
    (ph cm-2 s-1 per voxel; background and mask: module notes)."""
    grid = fusion_grid(obs_a, obs_b)
    _, y_obs, _ = assign_roles(obs_a, obs_b)
    v = grid.attrs["spatial_factor"]
    w = np.broadcast_to(build_model(grid, y_obs, SPECTRAL).weights, (grid.sizes["x"], grid.sizes["y"], grid.sizes["energy"]))
    c = y_obs["counts"].values.astype(np.float64)
    if grid.attrs.get("spatial_model") == "footprint":  # detector pixels: spread by the exact overlap fractions
        z = _spread_pixels(grid, y_obs, c) / w
        return _label(grid, z, "Y upsampled in space")
    c = _source_counts(y_obs, c)
    valid = _valid(y_obs)
    if valid is not None:
        c = np.where(valid, c, 0.0)
    z = np.repeat(np.repeat(c, v, axis=0), v, axis=1) / v ** 2 / w
    if valid is not None:
        z = _fill_masked(z, np.repeat(np.repeat(valid, v, axis=0), v, axis=1))
    return _label(grid, z, "Y upsampled in space")


def _spread_pixels(grid, y_obs, c):
    """Counts (P, L) of detector pixels spread over the fused pixels they overlap (flat within each
    pixel; fused pixels under several detector pixels get the overlap-weighted mean, background
    subtracted and clipped at 0): ``sum_p F[p, j] c_p / A_p / sum_p F[p, j]``
    with ``A_p = sum_j F[p, j]`` (0 where no detector pixel sees the sky). Masked voxels (``mask`` False) are left
    out channel by channel, ``sum_p F[p, j] m_pk c_pk / A_p / sum_p F[p, j] m_pk``, and fused voxels no valid
    detector pixel covers (but some detector pixel sees) take the mean of the covered ones in their channel."""
    from .grid import footprint_geometry
    from .observation import pixel_size
    from .operators.footprint import footprint_matrix

    (cx, cy), roll = footprint_geometry(grid, y_obs)
    F = footprint_matrix(grid["x"].values, grid["y"].values, pixel_size(grid), y_obs["det_x"].values,
                         y_obs["det_y"].values, pixel_size(y_obs), roll, (cx, cy))
    if "exposure_fraction" in y_obs:
        c = c / y_obs["exposure_fraction"].values[:, None]
    c = _source_counts(y_obs, c)
    area = np.asarray(F.sum(axis=1)).ravel()
    cover = np.asarray(F.sum(axis=0)).ravel()
    valid = _valid(y_obs)
    if valid is None:
        per = c / np.where(area > 0, area, np.inf)[:, None]
        z = (F.T @ per) / np.where(cover > 0, cover, np.inf)[:, None]
        return z.reshape(grid.sizes["x"], grid.sizes["y"], -1)
    per = np.where(valid, c, 0.0) / np.where(area > 0, area, np.inf)[:, None]
    cover_k = np.asarray(F.T @ valid.astype(np.float64))  # (J, L): overlap with the valid detector pixels
    z = (F.T @ per) / np.where(cover_k > 0, cover_k, np.inf)
    shape = (grid.sizes["x"], grid.sizes["y"], -1)
    seen = (cover_k > 0) | (cover == 0)[:, None]  # outside every detector pixel: 0, as without a mask
    return _fill_masked(z.reshape(shape), seen.reshape(shape))


def richardson_lucy(obs_a, obs_b, n_iter=10, **kw):
    """Plain two-instrument Richardson-Lucy: ``fuse(..., regularization="none", method="em")`` for ``n_iter``
    iterations (no early stop); ``kw`` are :func:`xfusion.fuse`'s other keywords (``progress``, ``dtype``,
    ``callback``, ``client``, ...)."""
    return fuse(obs_a, obs_b, regularization="none", method="em", max_iter=n_iter, tol=None, **kw)
