"""The fusion grid, derived from the coordinates of two observations.

The fused cube Z takes its spatial grid (x, y) from the sharp-spatial observation X and its
energy grid from the sharp-spectral observation Y (paper section 3.2). Rebinning factors
must be integers and the bin edges must line up:

* spatial: ``v = pixel_Y / pixel_X`` integer, ``M = v m``, ``N = v n`` and the first pixel
  edges coincide (both grids cover the same field);
* spectral: every X channel is exactly ``v_L`` consecutive Y channels
  (``edges_Y[::v_L] == edges_X`` within :func:`xfusion.observation.edge_tolerance`: 0.1 % of
  the narrowest Y channel plus float32 rounding, so float32 EBOUNDS edges match); channel
  widths may vary along energy.

Anything else is a ``ValueError`` naming the coordinate, both values and the fix.
"""
from __future__ import annotations

import numpy as np
import xarray as xr

from .psf_sampling import resample_psf
from .observation import REL_TOL, edge_tolerance, energy_edges, pixel_size, validate

SPATIAL, SPECTRAL = "spatial", "spectral"


def _name(ds, default):
    return ds.attrs.get("name", default)


def assign_roles(obs_a, obs_b):
    """Return (x_obs, y_obs, order) with order "ab" if obs_a is the sharp-spatial one.

    Sharp in space = smaller pixel; sharp in energy = narrower median channel. When both
    grids are equal (e.g. the paper's Gaussian toys without rebinning) the observation
    carrying only a spectral ``response`` is X and the one carrying only a ``psf`` is Y.
    """
    pa, pb = pixel_size(obs_a), pixel_size(obs_b)
    ea, eb = (float(np.median(np.diff(energy_edges(o)))) for o in (obs_a, obs_b))
    close = lambda u, v: np.isclose(u, v, rtol=REL_TOL, atol=0)  # noqa: E731
    sp = None if close(pa, pb) else ("a" if pa < pb else "b")
    se = None if close(ea, eb) else ("a" if ea < eb else "b")
    na, nb = _name(obs_a, "obs_a"), _name(obs_b, "obs_b")
    if sp is not None and sp == se:
        raise ValueError(
            f"neither observation is sharper in one dimension only: '{na if sp == 'a' else nb}' has both the smaller "
            f"pixel (x: {pa} vs {pb} arcsec) and the narrower channels (energy: {ea} vs {eb} keV). Fusion needs one "
            "sharp-spatial and one sharp-spectral observation; rebin one of them."
        )
    if sp is None and se is None:
        def kind(o):
            return ("psf" in o) - ("response" in o)  # +1: only psf -> Y ; -1: only response -> X
        ka, kb = kind(obs_a), kind(obs_b)
        if ka == -1 and kb == 1:
            sp = "a"
        elif ka == 1 and kb == -1:
            sp = "b"
        else:
            raise ValueError(
                f"cannot tell which observation is sharp in space: same pixel size ({pa} arcsec) and same channel "
                f"width ({ea} keV). Give the sharp-spatial one only a spectral 'response' and the sharp-spectral one "
                "only a 'psf' (the other instrument's own responses define the target resolution)."
            )
    if sp is None:
        sp = "b" if se == "a" else "a"
    return (obs_a, obs_b, "ab") if sp == "a" else (obs_b, obs_a, "ba")


def _spatial_factor(x_obs, y_obs):
    px, py = pixel_size(x_obs), pixel_size(y_obs)
    for d in ("x", "y"):
        if pixel_size(x_obs, d) != px or pixel_size(y_obs, d) != py:
            raise ValueError(f"non-square pixels are not supported (coordinate {d})")
    v = py / px
    if not np.isclose(v, round(v), rtol=REL_TOL, atol=0) or round(v) < 1:
        raise ValueError(
            f"coordinate x: pixel sizes {py} arcsec ('{_name(y_obs, 'Y')}') and {px} arcsec ('{_name(x_obs, 'X')}') "
            f"have a non-integer ratio {v:.6g}; regrid the sharp-spatial cube to {py / max(round(v), 1):.6g} arcsec pixels"
        )
    v = int(round(v))
    for d in ("x", "y"):
        nX, nY = x_obs.sizes[d], y_obs.sizes[d]
        if nX != v * nY:
            raise ValueError(
                f"coordinate {d}: '{_name(x_obs, 'X')}' has {nX} pixels but '{_name(y_obs, 'Y')}' has {nY} pixels "
                f"of {v}x the size ({v * nY} needed); crop both to the common field"
            )
        eX = float(x_obs[d].values[0]) - px / 2
        eY = float(y_obs[d].values[0]) - py / 2
        if not np.isclose(eX, eY, rtol=0, atol=REL_TOL * px + 1e-9):
            raise ValueError(
                f"coordinate {d}: first pixel edges differ: {eX} arcsec ('{_name(x_obs, 'X')}') vs {eY} arcsec "
                f"('{_name(y_obs, 'Y')}'); shift or crop so the pixel grids are aligned"
            )
    return v


def _spectral_factor(x_obs, y_obs):
    eX, eY = energy_edges(x_obs), energy_edges(y_obs)
    lX, lY = eX.size - 1, eY.size - 1
    if lY % lX != 0:
        raise ValueError(
            f"coordinate energy: '{_name(y_obs, 'Y')}' has {lY} channels, not a multiple of the {lX} channels of "
            f"'{_name(x_obs, 'X')}' (ratio {lY / lX:.6g}); regroup the channels so each coarse channel holds an "
            "integer number of fine ones"
        )
    v = lY // lX
    tol = edge_tolerance(eX, np.min(np.diff(eY)))  # 0.1% of a fine channel + float32 rounding
    bad = np.flatnonzero(np.abs(eY[::v] - eX) > tol)
    if bad.size:
        i = int(bad[0])
        raise ValueError(
            f"coordinate energy: edge {i} of '{_name(x_obs, 'X')}' is {eX[i]} keV but the matching edge of "
            f"'{_name(y_obs, 'Y')}' (fine edge {i * v}) is {eY[i * v]} keV; the channel edges must line up "
            f"(factor {v}; off by {abs(eX[i] - eY[i * v]) / np.diff(eY)[min(i * v, eY.size - 2)]:.3g} fine channel, "
            f"tolerance {float(tol[i]):.3g} keV). Use xfusion.io.align to crop both to their common aligned band, or "
            "rebuild the coarse observation with observation_from_files(..., energy_edges=<edges of the fine grid "
            "that are also channel edges of its RMF>)."
        )
    return v


def fusion_grid(obs_a, obs_b) -> xr.Dataset:
    """The fused grid of two observations, in either order.

    Returns a Dataset with coords ``x``, ``y`` (arcsec, from the sharp-spatial
    observation), ``energy``, ``energy_lo``, ``energy_hi`` (keV, from the sharp-spectral
    one), the sharp-spectral instrument's PSF resampled to the fused pixel scale as
    variable ``psf`` (when it has one), and attrs ``spatial_factor`` (v_M = v_N),
    ``spectral_factor`` (v_L), ``spatial_obs`` / ``spectral_obs`` (names), ``order``
    ("ab" if ``obs_a`` is the sharp-spatial one) and ``pixel_size``.
    """
    validate(obs_a)
    validate(obs_b)
    x_obs, y_obs, order = assign_roles(obs_a, obs_b)
    vs = _spatial_factor(x_obs, y_obs)
    vl = _spectral_factor(x_obs, y_obs)
    grid = xr.Dataset(
        coords={
            "x": x_obs["x"].variable.copy(),
            "y": x_obs["y"].variable.copy(),
            "energy": y_obs["energy"].variable.copy(),
            "energy_lo": y_obs["energy_lo"].variable.copy(),
            "energy_hi": y_obs["energy_hi"].variable.copy(),
        },
        attrs={
            "spatial_factor": vs,
            "spectral_factor": vl,
            "spatial_obs": _name(x_obs, "X"),
            "spectral_obs": _name(y_obs, "Y"),
            "order": order,
            "pixel_size": pixel_size(x_obs),
        },
    )
    if "psf" in y_obs:
        grid["psf"] = psf_on_grid(y_obs["psf"], pixel_size(x_obs))
    return grid


def psf_on_grid(psf: xr.DataArray, target_pixel: float) -> xr.DataArray:
    """PSF sampled at ``target_pixel`` arcsec (flux-conserving resampling when it differs)."""
    src = float(psf["psf_x"].attrs.get("pixel_size", np.diff(psf["psf_x"].values).mean()))
    if np.isclose(src, target_pixel, rtol=REL_TOL):
        return psf
    if "psf_energy" in psf.dims:
        bands = [resample_psf(psf.isel(psf_energy=i).drop_vars("psf_energy"), target_pixel)
                 for i in range(psf.sizes["psf_energy"])]
        n = max(max(b.sizes["psf_x"], b.sizes["psf_y"]) for b in bands)  # odd: pad all bands to n x n
        c = (np.arange(n) - n // 2) * float(target_pixel)
        attrs = {"units": "arcsec", "pixel_size": float(target_pixel)}
        stack = np.stack([np.pad(b.values, [((n - k) // 2,) * 2 for k in b.shape]) for b in bands])
        return xr.DataArray(stack, dims=("psf_energy", "psf_x", "psf_y"), attrs={"units": "1"},
                            coords={"psf_energy": psf["psf_energy"], "psf_x": ("psf_x", c, attrs),
                                    "psf_y": ("psf_y", c, attrs)})
    return resample_psf(psf, target_pixel)
