"""The fusion grid, derived from the coordinates of two observations.

The fused cube Z takes its spatial grid (x, y) from the sharp-spatial observation X and its
energy grid from the sharp-spectral observation Y (paper section 3.2). Rebinning factors
must be integers and the bin edges must line up:

* spatial: ``v = pixel_Y / pixel_X`` integer, ``M = v m``, ``N = v n`` and the first pixel
  edges coincide (both grids cover the same field);
* spectral: every X channel is exactly ``v_L`` consecutive Y channels
  (``edges_Y[::v_L] == edges_X`` within :func:`xfusion.observation.edge_tolerance` with
  ``NEST_TOL``: 1 % of the narrowest Y channel plus float32 rounding, so float32 EBOUNDS and
  EBOUNDS a few meV off round values match; :data:`xfusion.observation.NEST_TOL` gives the
  flux cost); channel widths may vary along energy.

Anything else is a ``ValueError`` naming the coordinate, both values and the fix.
"""
from __future__ import annotations

import json

import numpy as np
import xarray as xr

from .psf_sampling import resample_psf
from .observation import (NEST_TOL, REL_TOL, check_spectral_units, edge_tolerance, energy_edges, is_pixel_observation,
                          pixel_size, validate)

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


def _radec_of(ra0, dec0, x, y):
    """RA, Dec (deg) of tangent-plane offsets ``x`` (west), ``y`` (north) arcsec about (ra0, dec0) deg."""
    xi, eta = np.deg2rad(-x / 3600.0), np.deg2rad(y / 3600.0)
    a0, d0 = np.deg2rad(ra0), np.deg2rad(dec0)
    rho = np.hypot(xi, eta)
    if rho == 0:
        return ra0, dec0
    c = np.arctan(rho)
    dec = np.arcsin(np.cos(c) * np.sin(d0) + eta * np.sin(c) * np.cos(d0) / rho)
    ra = a0 + np.arctan2(xi * np.sin(c), rho * np.cos(d0) * np.cos(c) - eta * np.sin(d0) * np.sin(c))
    return float(np.rad2deg(ra)), float(np.rad2deg(dec))


def _offsets_of(ra0, dec0, ra, dec):
    """Gnomonic offsets (x west, y north; arcsec) of (ra, dec) about (ra0, dec0), all deg."""
    a0, d0, a, d = (np.deg2rad(v) for v in (ra0, dec0, ra, dec))
    cosc = np.sin(d0) * np.sin(d) + np.cos(d0) * np.cos(d) * np.cos(a - a0)
    xi = np.cos(d) * np.sin(a - a0) / cosc
    eta = (np.cos(d0) * np.sin(d) - np.sin(d0) * np.cos(d) * np.cos(a - a0)) / cosc
    return -float(np.rad2deg(xi)) * 3600.0, float(np.rad2deg(eta)) * 3600.0


def north_angle(ra0, dec0, ra, dec):
    """Angle (deg, counter-clockwise: from +y towards -x, i.e. towards the east) of the local north at (ra, dec)
    in the gnomonic frame (x west, y north) about (ra0, dec0), all deg: 0 at the tangent point itself.

    A position angle ``pa`` measured at (ra, dec) (east of the local north there, e.g. ``PA_NOM`` at the
    pointing) is the rotation ``pa + north_angle(ra0, dec0, ra, dec)`` in that frame. Exact (the derivative of
    the projection along the meridian), so valid up to the poles of the frame, not at a celestial pole itself.
    """
    a0, d0, a, d = (np.deg2rad(float(v)) for v in (ra0, dec0, ra, dec))
    da = a - a0
    cosc = np.sin(d0) * np.sin(d) + np.cos(d0) * np.cos(d) * np.cos(da)
    dcosc = np.sin(d0) * np.cos(d) - np.cos(d0) * np.sin(d) * np.cos(da)  # d(cosc)/d(dec)
    num_xi, num_eta = np.cos(d) * np.sin(da), np.cos(d0) * np.sin(d) - np.sin(d0) * np.cos(d) * np.cos(da)
    dxi = (-np.sin(d) * np.sin(da) * cosc - num_xi * dcosc) / cosc ** 2     # d(xi)/d(dec), xi = -x (east)
    deta = ((np.cos(d0) * np.cos(d) + np.sin(d0) * np.sin(d) * np.cos(da)) * cosc - num_eta * dcosc) / cosc ** 2
    return float(np.rad2deg(np.arctan2(dxi, deta)))


def _tangent_point(ds):
    """(RA, Dec) deg of the x/y (or det_x/det_y) offsets of ``ds``, or None."""
    for attrs in [ds.attrs] + [ds[d].attrs for d in ("x", "det_x") if d in ds.coords]:
        if attrs.get("center_ra") is not None and attrs.get("center_dec") is not None:
            return float(attrs["center_ra"]), float(attrs["center_dec"])
    return None


def check_tangent_points(a, b, what, fix):
    """Refuse two inputs whose x/y offsets are about tangent points more than 1e-3 of the smaller pixel apart
    (either without one: not checked). ``what`` names the pair, ``fix`` says what to do."""
    ca, cb = _tangent_point(a), _tangent_point(b)
    if ca is None or cb is None:
        return
    ra0, dec0 = np.deg2rad(ca)
    ra1, dec1 = np.deg2rad(cb)
    sep = np.arccos(np.clip(np.sin(dec0) * np.sin(dec1) + np.cos(dec0) * np.cos(dec1) * np.cos(ra1 - ra0), -1, 1))
    sep_as = float(np.rad2deg(sep) * 3600)
    if sep_as > 1e-3 * min(pixel_size(a), pixel_size(b)):
        raise ValueError(
            f"{what} use different tangent points ({ca[0]:.6f}, {ca[1]:.6f}) and ({cb[0]:.6f}, {cb[1]:.6f}) deg, "
            f"{sep_as:.3g} arcsec apart: their x/y offsets are not in one frame. {fix}")


def _fusion_center_fix(ca):
    return (f"The fused cube would be labelled with the first and model the wrong sky. Re-bin both event lists "
            f"about one center= (e.g. {ca}) and crop them with xfusion.io.align, or rebuild the image on the other "
            "tangent point (reproject it); a detector-pixel tile (counts over pixel, energy) may keep its own, it is "
            "re-projected")


def footprint_geometry(grid, y_obs):
    """(array centre (x, y) arcsec, roll deg) of a detector-pixel observation in the frame of ``grid``.

    Convention: the observation's ``roll`` is the position angle of the detector +y axis at the array
    centre, east of the local north there (``PA_NOM`` of XRISM Resolve), and ``array_x``/``array_y`` the
    gnomonic offsets of the array centre about the observation's tangent point (``center_ra``/
    ``center_dec`` on ``y_obs.det_x``). The returned roll is the rotation of the detector axes in the
    grid's tangent-plane frame (counter-clockwise, from +x west towards +y north): the position angle plus
    the angle of the local north at the array centre in that frame (:func:`north_angle`), so the same
    pointing lands on the same sky whatever tangent point the events were binned about. The array centre
    is re-projected into the grid's frame when the tangent points differ. Without a tangent point on the
    observation, ``roll`` and ``array_x``/``array_y`` are taken as given in the grid's frame; without one on
    the grid, the observation's own frame is used.
    """
    ax, ay, roll = (float(y_obs[v].values) for v in ("array_x", "array_y", "roll"))
    g, o = grid["x"].attrs, y_obs["det_x"].attrs
    if not all(k in o for k in ("center_ra", "center_dec")):
        return (ax, ay), roll
    o0 = (float(o["center_ra"]), float(o["center_dec"]))
    g0 = (float(g["center_ra"]), float(g["center_dec"])) if all(k in g for k in ("center_ra", "center_dec")) else o0
    a_radec = _radec_of(*o0, ax, ay)
    c = (ax, ay) if np.allclose(g0, o0, rtol=0, atol=1e-10) else _offsets_of(*g0, *a_radec)
    return c, roll + north_angle(*g0, *a_radec)


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
            f"'{_name(x_obs, 'X')}' (ratio {lY / lX:.6g}); every coarse channel must hold the SAME whole number of fine "
            "channels (one grouping factor for the band): regroup the channels so they do"
        )
    v = lY // lX
    tol = edge_tolerance(eX, np.min(np.diff(eY)), NEST_TOL)  # 1% of a fine channel + float32 rounding
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


def has_matrix_response(obs) -> bool:
    """Whether ``obs`` carries a full redistribution matrix (``response`` of kind "matrix": an RMF over
    ``energy_true`` x its channels), which maps any fused channels onto its own."""
    return "response" in obs and obs["response"].attrs.get("kind") == "matrix"


def _spectral_grouping(x_obs, y_obs):
    """``(factor, model)`` of a coarse observation's channels on the fine grid of ``y_obs``.

    ``(v, "rebin")`` when every coarse channel holds ``v`` whole fine channels (:func:`_spectral_factor`). Else,
    when ``x_obs`` carries a full RMF (:func:`has_matrix_response`), ``(nominal, "rmf")``: its model is that RMF
    applied to the fused channels (rows picked at their centres, :func:`xfusion.operators.response.rmf_on_grid`),
    which needs no edge to line up -- e.g. EPIC-pn's EBOUNDS below ~2.3 keV, irregular and up to half a
    microcalorimeter channel off a 1 eV grid; ``nominal`` = the ratio of the median channel widths (plots and the
    upsampled-X baseline's labels only). Anything else raises :func:`_spectral_factor`'s error."""
    try:
        return _spectral_factor(x_obs, y_obs), "rebin"
    except ValueError:
        if not has_matrix_response(x_obs):
            raise
    eX, eY = energy_edges(x_obs), energy_edges(y_obs)
    if eX[-1] <= eY[0] or eX[0] >= eY[-1]:
        raise ValueError(f"coordinate energy: the channels of '{_name(x_obs, 'X')}' ({eX[0]:.6g}-{eX[-1]:.6g} keV) "
                         f"do not overlap the fused band of '{_name(y_obs, 'Y')}' ({eY[0]:.6g}-{eY[-1]:.6g} keV): "
                         "give observations of one band (xfusion.io.align crops both to their common band)")
    tol = float(edge_tolerance(eY, np.min(np.diff(eY)), NEST_TOL).max())
    if eX[0] < eY[0] - tol or eX[-1] > eY[-1] + tol:  # counts from energies the model lacks would land in the band
        raise ValueError(f"coordinate energy: the channels of '{_name(x_obs, 'X')}' ({eX[0]:.6g}-{eX[-1]:.6g} keV) "
                         f"reach outside the fused band of '{_name(y_obs, 'Y')}' ({eY[0]:.6g}-{eY[-1]:.6g} keV): "
                         "their counts from outside the band would be put into its edge channels. Crop both to "
                         "their common band with xfusion.io.align (it keeps the channels inside)")
    return max(1, int(round(float(np.median(np.diff(eX))) / float(np.median(np.diff(eY)))))), "rmf"


def require_datasets(observations):
    """Refuse an input that is not an observation Dataset (e.g. a store's path), saying how to get one."""
    import os

    for i, o in enumerate(observations):
        if not isinstance(o, xr.Dataset):
            hint = ("open a stored observation with xfusion.io.zarr.open(path) (or xfusion.io.observation_from_files "
                    "for event files)" if isinstance(o, (str, os.PathLike)) else "build one with xfusion.observation(...)")
            raise TypeError(f"observation {i + 1} is a {type(o).__name__}, not an xarray.Dataset: {hint}")


def fusion_grid(*observations) -> xr.Dataset:
    """The fused grid of two or more observations, in any order.

    Returns a Dataset with coords ``x``, ``y`` (arcsec, from the sharp-spatial
    observation), ``energy``, ``energy_lo``, ``energy_hi`` (keV, from the sharp-spectral
    one), the sharp-spectral instrument's PSF resampled to the fused pixel scale as
    variable ``psf`` (when it has one), and attrs ``spatial_factor`` (v_M = v_N),
    ``spectral_factor`` (v_L), ``spectral_model`` ("rebin": every sharp-spatial channel is ``v_L``
    whole fused channels; "rmf": it is not, and its full RMF maps the fused channels onto its own,
    ``spectral_factor`` then being the nominal ratio of the median widths, :func:`_spectral_grouping`),
    ``spatial_obs`` / ``spectral_obs`` (names), ``order``
    ("ab" if the first observation is the sharp-spatial one, with two inputs), ``pixel_size``,
    ``roles`` (JSON: per input, in the order given, its ``name`` and how it enters the model:
    ``"spatial"``/``"spectral"`` for the pair that sets the grid, and for further inputs
    ``"pixels"`` -- on the fused pixels, its own response, area and optional PSF relative to the
    fused resolution --, ``"channels"`` -- on the fused channels, its own PSF and integer pixel
    grouping --, or ``"footprint"`` -- a detector-pixel tile, its own pointing and roll) and
    ``explanation`` (which input sets which axis, and why; the same text as
    :func:`explain_grid`).

    Which inputs set the grid: with two inputs, :func:`assign_roles` (the smaller pixel is
    sharp in space, the narrower median channel sharp in energy). With more, the image input
    (x, y, energy) with the smallest pixels sets ``x``/``y`` and the input with the narrowest
    median channel sets ``energy`` (ties: the first given; for the pixels, an image without a
    ``psf`` first, as its resolution is the target); every further input must lie on
    the fused pixels, on the fused channels, or be a detector-pixel tile on the fused
    channels whose pixels lie inside the fused field (a mosaic tile: it constrains only the
    fused pixels it sees). Anything else is a ``ValueError`` naming the input and the fix.

    A detector-pixel sharp-spectral observation (counts over ``("pixel", "energy")``, e.g.
    XRISM Resolve) is not an integer grouping of the fused pixels: ``spatial_model`` is then
    ``"footprint"`` (else ``"rebin"``), ``spatial_factor`` is only the nominal ratio of the pixel
    sizes (for ERGAS and plots), and ``footprint_center_x``/``_y`` (arcsec, in the fused frame)
    and ``footprint_roll`` (deg) place the array (:func:`footprint_geometry`); the model is the
    exact overlap matrix of :mod:`xfusion.operators.footprint`, after the PSF.
    """
    if len(observations) < 2:
        raise TypeError(f"fusion_grid needs at least two observations (one sharp in space, one sharp in energy); got "
                        f"{len(observations)}")
    require_datasets(observations)
    if len(observations) == 2:
        obs_a, obs_b = observations
        grid = _pair_grid(obs_a, obs_b)
        ix, iy = (0, 1) if grid.attrs["order"] == "ab" else (1, 0)
        roles = [None, None]
        roles[ix], roles[iy] = SPATIAL, SPECTRAL
    else:
        check_spectral_units(*observations)
        for o in observations:
            validate(o)
        ix, iy = _pick_pair(observations)
        grid = _pair_grid(observations[ix], observations[iy])
        if grid.attrs["order"] == "ba":  # equal grids: assign_roles told them apart by psf / response
            ix, iy = iy, ix
        grid.attrs["order"] = "ab" if ix < iy else "ba"
        grid.attrs["spatial_obs"] = _name(observations[ix], f"input {ix}")  # named so in _extra_role's messages
        grid.attrs["spectral_obs"] = _name(observations[iy], f"input {iy}")
        roles = [SPATIAL if i == ix else SPECTRAL if i == iy else _extra_role(grid, o, _name(o, f"input {i}"))
                 for i, o in enumerate(observations)]
    names = [_name(o, f"input {i}") for i, o in enumerate(observations)]
    # an input without a name is 'input i' (its position given) in every record of the result
    grid.attrs["spatial_obs"], grid.attrs["spectral_obs"] = names[ix], names[iy]
    grid.attrs["roles"] = json.dumps([{"input": i, "name": n, "role": r} for i, (n, r) in enumerate(zip(names, roles))])
    grid.attrs["explanation"] = _explain(grid, observations, roles)
    return grid


def explain_grid(*observations) -> str:
    """Which input sets which axis of the fused grid, and how every input enters the model (the
    ``explanation`` attribute of :func:`fusion_grid`; printed by ``xfusion fuse``)."""
    return fusion_grid(*observations).attrs["explanation"]


def input_positions(grid) -> list:
    """Input positions (0-based, in the order given to :func:`fusion_grid`) in the order the models
    are built: the sharp-spatial input, the sharp-spectral one, then the others as given."""
    roles = json.loads(grid.attrs["roles"])
    first = [next(r["input"] for r in roles if r["role"] == role) for role in (SPATIAL, SPECTRAL)]
    return first + [r["input"] for r in roles if r["input"] not in first]


#: roles of further inputs (beyond the pair that sets the grid)
PIXELS, CHANNELS, FOOTPRINT = "pixels", "channels", "footprint"


def _median_width(o):
    return float(np.median(np.diff(energy_edges(o))))


def _pick_pair(observations):
    """(ix, iy): the image input with the smallest pixels and the input with the narrowest median channel
    (ties within ``REL_TOL``: for the pixels the first image without a ``psf``, else the first given; for the
    channels the first given other than the sharp-spatial one), refused when one input is the finest in both."""
    images = [i for i, o in enumerate(observations) if not is_pixel_observation(o)]
    if not images:
        raise ValueError("no input is an image (counts over x, y, energy): one must be the sharp-spatial instrument "
                         "that sets the fused pixels (e.g. EPIC-pn); detector-pixel tiles (pixel, energy) cannot")
    px = [pixel_size(observations[i]) for i in images]
    best = min(px)
    finest = [i for i, p in zip(images, px) if np.isclose(p, best, rtol=REL_TOL, atol=0)]
    # among equal pixels, the image without a PSF (its resolution is the target; a PSF on a further image on the
    # fused pixels is the blur relative to it), else the first given
    ix = next((i for i in finest if "psf" not in observations[i]), finest[0])
    widths = [_median_width(o) for o in observations]
    w0 = min(widths)
    tied = [i for i, w in enumerate(widths) if np.isclose(w, w0, rtol=REL_TOL, atol=0)]
    others = [i for i in tied if i != ix]
    if not others:
        sharper = [i for i, o in enumerate(observations) if i != ix]
        iy = min(sharper, key=lambda i: widths[i])
        if not np.isclose(pixel_size(observations[iy]), best, rtol=REL_TOL, atol=0):
            raise ValueError(f"'{_name(observations[ix], 'input ' + str(ix))}' has both the smallest pixels "
                             f"({best} arcsec) and the narrowest channels ({w0} keV median) of all inputs: fusion "
                             "needs one sharp-spatial and one sharp-spectral observation; rebin one of them")
    else:
        iy = others[0]
    return ix, iy


def _same(a, b):
    return a.shape == b.shape and np.allclose(a, b, rtol=1e-6, atol=0)


def _same_channels(o, grid):
    a, b = energy_edges(o), energy_edges(grid)
    return a.shape == b.shape and bool(np.all(np.abs(a - b) <= edge_tolerance(b, np.min(np.diff(b)))))


def _extra_role(grid, o, name):
    """How a further input enters the model (:data:`PIXELS`, :data:`CHANNELS` or :data:`FOOTPRINT`), or a
    ``ValueError`` saying what to change."""
    fused = (f"the fused pixels ({grid.sizes['x']}x{grid.sizes['y']} of {grid.attrs['pixel_size']} arcsec from "
             f"'{grid.attrs['spatial_obs']}')")
    chans = f"the fused channels ({grid.sizes['energy']} from '{grid.attrs['spectral_obs']}')"
    if is_pixel_observation(o):
        if not _same_channels(o, grid):
            raise ValueError(f"'{name}' is a detector-pixel tile but its {o.sizes['energy']} channels are not "
                             f"{chans}: give every tile the channels of the sharp-spectral input (regroup them)")
        return FOOTPRINT
    check_tangent_points(grid, o, f"the fused grid (from '{grid.attrs['spatial_obs']}') and '{name}'",
                         _fusion_center_fix(_tangent_point(grid)))
    if _same(o["x"].values, grid["x"].values) and _same(o["y"].values, grid["y"].values):
        try:
            _spectral_grouping(o.assign_attrs(name=name), grid.assign_attrs(name="the fused grid"))
        except ValueError as exc:
            raise ValueError(f"'{name}' lies on the fused pixels but its channels are not an integer grouping of "
                             f"{chans}: {exc}") from None
        return PIXELS
    if _same_channels(o, grid):
        try:
            _spatial_factor(grid.assign_attrs(name="the fused grid"), o.assign_attrs(name=name))
        except ValueError as exc:
            raise ValueError(f"'{name}' is on the fused channels but its pixels are not an integer grouping of "
                             f"{fused}: {exc}") from None
        return CHANNELS
    raise ValueError(f"'{name}' shares neither {fused} nor {chans}: put it on the same pixel grid or the same "
                     "channels (reproject or regroup it), or give it as a detector-pixel tile on the fused channels")


def _explain(grid, observations, roles):
    a = grid.attrs
    sy = next(o for o, r in zip(observations, roles) if r == SPECTRAL)
    lines = [f"fused grid {grid.sizes['x']}x{grid.sizes['y']} pixels x {grid.sizes['energy']} channels "
             f"({grid['energy_lo'].values[0]:.6g}-{grid['energy_hi'].values[-1]:.6g} keV)",
             f"x, y: from '{a['spatial_obs']}' ({a['pixel_size']:g} arcsec pixels, the smallest"
             f"{' of the image inputs' if len(observations) > 2 else ''})",
             f"energy: from '{a['spectral_obs']}' ({grid.sizes['energy']} channels, median "
             f"{_median_width(sy) * 1e3:.4g} eV, the narrowest)" + (
                 f"; a detector-pixel tile (centre ({a['footprint_center_x']:.4g}, {a['footprint_center_y']:.4g}) "
                 f"arcsec, roll {a['footprint_roll']:.4g} deg)" if a.get("spatial_model") == "footprint" else "")
             + ("" if a.get("spectral_model", "rebin") == "rebin" else
                f"; the channels of '{a['spatial_obs']}' are no integer grouping of them: its RMF maps the fused "
                "channels onto its own")]
    how = {PIXELS: "on the fused pixels: its own response, area (and PSF relative to the fused resolution, if given)",
           CHANNELS: "on the fused channels: its own PSF, pixel grouping and area",
           FOOTPRINT: "detector-pixel tile: exact footprint of its pixels (own pointing and roll) after its PSF; "
                      "constrains only the fused pixels it sees"}
    for i, (o, r) in enumerate(zip(observations, roles)):
        if r in how:
            extra = ""
            if r == FOOTPRINT:
                (cx, cy), roll = footprint_geometry(grid, o)
                extra = f" (centre ({cx:.4g}, {cy:.4g}) arcsec, roll {roll:.4g} deg)"
            lines.append(f"input {i} '{_name(o, 'input ' + str(i))}': {how[r]}{extra}")
    return "\n".join(lines)


def _pair_grid(obs_a, obs_b) -> xr.Dataset:
    """The grid of the pair that sets it (see :func:`fusion_grid`)."""
    check_spectral_units(obs_a, obs_b)  # keV with um is refused before anything else
    validate(obs_a)
    validate(obs_b)
    x_obs, y_obs, order = assign_roles(obs_a, obs_b)
    if is_pixel_observation(x_obs):
        raise ValueError(f"'{_name(x_obs, 'X')}' is a detector-pixel observation but has the smaller pixels: the "
                         "sharp-spatial instrument must be an image (x, y, energy)")
    footprint = is_pixel_observation(y_obs)
    if not footprint:  # a detector-pixel tile is re-projected (footprint_geometry); images must share the frame
        check_tangent_points(x_obs, y_obs, f"'{_name(x_obs, 'X')}' and '{_name(y_obs, 'Y')}'",
                             _fusion_center_fix(_tangent_point(x_obs)))
    if footprint:  # nominal ratio of the pixel sizes (ERGAS, plots); the model uses the exact footprint
        vs = max(int(round(pixel_size(y_obs) / pixel_size(x_obs))), 1)
    else:
        vs = _spatial_factor(x_obs, y_obs)
    vl, spectral_model = _spectral_grouping(x_obs, y_obs)
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
            "spatial_model": "footprint" if footprint else "rebin",
            "spectral_model": spectral_model,
        },
    )
    if footprint:
        (cx, cy), roll = footprint_geometry(grid, y_obs)
        grid.attrs.update(footprint_center_x=cx, footprint_center_y=cy, footprint_roll=roll)
    if "psf" in y_obs:
        grid["psf"] = psf_on_grid(y_obs["psf"], pixel_size(x_obs))
    return grid


def psf_on_grid(psf: xr.DataArray, target_pixel: float) -> xr.DataArray:
    """PSF sampled at ``target_pixel`` arcsec (flux-conserving resampling when it differs)."""
    stored = psf["psf_x"].attrs.get("pixel_size")  # (np.diff of a one-pixel PSF is empty: only when not stored)
    src = float(stored) if stored is not None else float(np.diff(psf["psf_x"].values).mean())
    if np.isclose(src, target_pixel, rtol=REL_TOL):
        return psf
    if psf.sizes["psf_x"] < 2 or psf.sizes["psf_y"] < 2:
        raise ValueError(
            f"the PSF is {psf.sizes['psf_x']}x{psf.sizes['psf_y']} pixel(s) of {src:g} arcsec: a one-pixel PSF (a "
            f"delta) cannot be resampled to the fused pixels of {target_pixel:g} arcsec (its shape inside the pixel is "
            f"unknown). Give it at the fused pixel size (psf_pixel_size={target_pixel:g}) for no blur beyond the fused "
            "pixel, pass psf=None, or give a PSF image of several pixels")
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
