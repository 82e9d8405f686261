"""The two instrument models of eq. 9, composed from the elementary operators.

For the sharp-spatial instrument X:  ``Z_X = R_L S_X (t_X A_X Z)``  (its PSF is NOT applied:
X's spatial resolution is the target). For the sharp-spectral instrument Y:
``Z_Y = R_MN B_Y (t_Y A_Y Z)`` (its spectral response is NOT applied). Each model is
``spatial( spectral( w * Z ) )`` with ``w`` = exposure x effective area on the fused grid,
``spectral`` acting on the last (energy) axis and ``spatial`` on axes (0, 1); both are
optional. Because spatial and spectral operators commute with each other and with
right-multiplication by a spectral basis, the low-rank solvers can use
:meth:`InstrumentModel.reduced` and never form the full cube.
"""
from __future__ import annotations

import json

import numpy as np
import scipy.sparse as sps
import xarray as xr

from ..grid import PIXELS, SPATIAL, SPECTRAL, _spatial_factor, _spectral_grouping, footprint_geometry, psf_on_grid
from ..observation import (CUBE_DIMS, check_background_values, edge_tolerance, energy_edges, is_pixel_observation,
                           pixel_size, validate)
from .area import AreaMap, Scale
from .footprint import Footprint, footprint_matrix
from .psf import Convolve2D, EnergyDependentSpatial, SpatialMatrix, StackedSpatial, band_weights
from .rebin import Rebin
from .response import Convolve1D, ResponseMatrix, kernel_matrix, kernel_on_spacing, rmf_on_grid

#: largest dense spatial matrix (elements) used instead of FFT convolution + rebinning
DENSE_SPATIAL_MAX = 2.5e7


class Chain:
    """Composition ``ops[-1] o ... o ops[0]``; adjoint in reverse order."""

    def __init__(self, ops):
        self.ops = [op for op in ops if op is not None]

    def forward(self, z):
        for op in self.ops:
            z = op.forward(z)
        return z

    def adjoint(self, u):
        for op in reversed(self.ops):
            u = op.adjoint(u)
        return u


class InstrumentModel(Chain):
    """``post * spatial(spectral(weights * Z))`` for one instrument on the fused grid.

    Attributes: ``area`` (t*A on the fused grid, s cm2: an (L,) array, or for a vignetted area an
    :class:`~xfusion.operators.area.AreaMap` (M, N, L) kept at the observation's resolution),
    ``weights`` (the same as an array; an AreaMap is built whole: in-memory use only),
    ``spectral`` (last-axis operator or None), ``spatial`` (axes-(0,1) operator or None),
    ``data_shape`` (shape of the counts),
    ``post`` (None, or data-side factors (P, L): per-pixel ARF / reference ARF of a
    detector-pixel instrument) and ``background`` (None, or the known expected background
    counts B of the data, shape ``data_shape``: NOT part of the linear operator; the
    likelihood adds it, expected counts = forward(Z) + B, see :meth:`expected`).
    """

    def __init__(self, weights, spectral, spatial, fused_shape, data_shape, post=None, background=None):
        self.area = weights if isinstance(weights, AreaMap) else np.asarray(weights, dtype=np.float64)
        self.spectral, self.spatial = spectral, spatial
        self.fused_shape, self.data_shape = tuple(fused_shape), tuple(data_shape)
        self.post = None if post is None else np.asarray(post, dtype=np.float64)
        self.background = None if background is None else np.asarray(background, dtype=np.float64)
        self._scale = Scale(self.area)
        super().__init__(_ordered(self._scale, spectral, spatial, None if post is None else Scale(self.post)))

    @property
    def weights(self):
        return self._scale.weights

    @property
    def vignetted(self):
        """Whether the weights vary with position ((M, N, L) rather than (L,))."""
        return self.area.ndim > 1

    def mean_weight(self):
        """Mean of t*A over the fused voxels (exact, without building a vignetted cube)."""
        return self.area.mean() if isinstance(self.area, AreaMap) else float(np.mean(self.area))

    def sees(self):
        """Whether t*A > 0 somewhere on the fused grid (without building a vignetted cube)."""
        return self.area.any_positive() if isinstance(self.area, AreaMap) else bool(np.max(self.area) > 0)

    def per_channel(self):
        """The model with one effective area per channel: vignetted weights averaged over the fused pixels ((L,)),
        per-detector-pixel factors ``post`` (per-pixel ARF / their mean over the pixels, so of mean 1 where that
        mean is > 0 and the weights 0 elsewhere) left out, i.e. the pixel-mean ARF; the same model if neither."""
        if not self.vignetted and self.post is None:
            return self
        w = (self.area if not self.vignetted else self.area.channel_mean() if isinstance(self.area, AreaMap)
             else self.area.mean(axis=(0, 1)))
        return InstrumentModel(w, self.spectral, self.spatial, self.fused_shape, self.data_shape, None,
                               self.background)

    def scaled(self, factor):
        """The same model with weights divided by ``factor`` (solving for ``factor * Z``); the
        background (counts) is unchanged."""
        w = self.area.scaled(1.0 / factor) if isinstance(self.area, AreaMap) else self.area / factor
        return InstrumentModel(w, self.spectral, self.spatial, self.fused_shape, self.data_shape, self.post,
                               self.background)

    def expected(self, z):
        """Expected counts ``forward(z) + background`` (data shape)."""
        m = self.forward(z)
        return m if self.background is None else m + self.background.astype(m.dtype)

    def reduced(self, basis):
        """Model on subspace coefficients: Z = W @ basis, basis (r, L), W (M, N, r).

        Returns ``(spatial, V_eff)`` with ``V_eff = spectral(basis * weights)`` of shape
        (r, l) so that ``model(W @ basis) == spatial(W) @ V_eff``. Needs a non-vignetted
        area (weights over energy only).
        """
        if self.vignetted:
            raise ValueError("the low-rank path needs an effective area that does not vary with position")
        if self.post is not None:
            raise ValueError("the low-rank path needs one effective area for all detector pixels (per-pixel ARFs "
                             "given); use regularization='wavelet2d1d' or 'none'")
        v = np.asarray(basis, dtype=np.float64) * self.area
        if isinstance(self.spatial, EnergyDependentSpatial):
            # the blur acts after the response, so its band weights are over the response's output channels:
            # sum_b op_b(spectral(w Z) a_b) = sum_b op_b(W) (spectral(w basis) a_b) (session 29: the weights were
            # applied before the response, which fails to broadcast for a MOS-like input and is not the model)
            if self.spectral is not None:
                v = self.spectral.forward(v)
            return StackedSpatial(self.spatial.ops), np.vstack([v * wb for wb in self.spatial.weights])
        if self.spectral is not None:
            v = self.spectral.forward(v)
        return self.spatial, v


def _ordered(scale, spectral, spatial, post):
    """The operators of ``post * spatial(spectral(w * Z))``, first applied first, with the per-energy weights ``w``
    where they cost least (issue 18: the cost of an input should follow its data, not the fused cube).

    Weights over energy only ((L,) array) commute with every spatial operator (which acts on each energy channel
    alike) and fold into a response matrix (``(w Z) R = Z (diag(w) R)``). So:

    * spectral is a :class:`~xfusion.operators.response.ResponseMatrix`: ``diag(w) R`` replaces both (no pass over
      the fused cube for the weights; pn, MOS);
    * no spectral operator: the weights act after the spatial operator, on the data's (P, L) or (m, n, L) array; a
      footprint that sees part of the field starts with the :class:`Gather` of its pixels
      (:meth:`Footprint.restricted`; a Resolve tile: gather -> footprint x PSF -> weights, all in proportion to the
      pixels it sees or to its data);
    * otherwise (a convolution over energy, or weights varying with position): ``w`` first, as written.

    The same operator up to float rounding (products in another order; bit-identical before session 7)."""
    if scale.area.ndim == 1 and isinstance(spectral, ResponseMatrix):
        m = spectral.matrix
        folded = ResponseMatrix(sps.diags(scale.area) @ m if spectral.sparse else scale.area[:, None] * m)
        return [folded, spatial, post]
    if scale.area.ndim == 1 and spectral is None and spatial is not None:
        split = spatial.restricted() if isinstance(spatial, Footprint) else None
        return (list(split) if split is not None else [spatial]) + [scale, post]
    return [scale, spectral, spatial, post]


#: what to do when an input's ARF or RMF does not cover the fused band (session 33: "use an ARF that covers the band"
#: was all it said, to a user who had passed the full ARF and whose observation_from_files(band=) had kept it for
#: that band only)
BAND_ADVICE = ("An observation from xfusion.io.observation_from_files(band=...) keeps its ARF and RMF for that band "
               "only: build it with a band= covering the fused band, or crop the inputs to their common band with "
               "xfusion.io.align; otherwise pass an ARF and RMF that cover the fused band")


def _covers(true_edges, fine_edges):
    """Whether an ARF on ``true_edges`` covers the fused bins ``fine_edges`` (keV) up to float32 rounding and 0.1% of
    the narrowest fused bin (:func:`xfusion.observation.edge_tolerance`)."""
    tol = edge_tolerance(fine_edges[[0, -1]], np.min(np.diff(fine_edges)))
    return bool(fine_edges[0] >= true_edges[0] - tol[0] and fine_edges[-1] <= true_edges[-1] + tol[1])


def _area_on_grid(obs, fine_edges, fused_hw, factor, exposure=1.0):
    """Exposure x effective area (s cm2) of ``obs`` on the fused energy bins: (L,), or for a vignetted area an
    :class:`~xfusion.operators.area.AreaMap` over the fused pixels (kept on the observation's pixels)."""
    a = obs["effective_area"]
    if a.ndim == 0:
        return exposure * np.full(fine_edges.size - 1, float(a.values))
    et = energy_edges(obs, "energy_true")
    e = 0.5 * (fine_edges[1:] + fine_edges[:-1])
    # the fused bins' edges, not their centres (session 29: a first bin 40% below the ARF's start was accepted with
    # the ARF's end value held), the same check as the per-pixel ARFs'
    if not _covers(et, fine_edges):
        raise ValueError(
            f"effective_area of '{obs.attrs.get('name')}' covers {et[0]:.4g}-{et[-1]:.4g} keV but the fused grid "
            f"needs {fine_edges[0]:.4g}-{fine_edges[-1]:.4g} keV. {BAND_ADVICE}"
        )
    centres = obs["energy_true"].values
    if a.ndim == 1:
        return exposure * np.interp(e, centres, a.values)
    out = AreaMap(a.transpose("x", "y", "energy_true").values, centres, e, factor, exposure)
    if out.shape[:2] != tuple(fused_hw):
        raise ValueError("vignetted effective_area does not match the fused pixel grid")
    return out


def _spectral_op(obs, fine_edges, factor):
    coarse = energy_edges(obs)
    if "response" not in obs:
        if factor == 1:
            return None
        R = np.zeros((fine_edges.size - 1, coarse.size - 1))
        R[np.arange(R.shape[0]), np.arange(R.shape[0]) // factor] = 1.0
        return ResponseMatrix(R)
    resp = obs["response"]
    if resp.attrs.get("kind") == "matrix":
        return ResponseMatrix(rmf_on_grid(resp.values, energy_edges(obs, "energy_true"), fine_edges))
    spacing = float(obs["energy_offset"].attrs["spacing"])
    widths = np.diff(fine_edges)
    if factor == 1 and np.allclose(widths, widths[0], rtol=1e-6):
        return Convolve1D(kernel_on_spacing(resp.values, spacing, float(widths[0])), widths.size)
    return ResponseMatrix(kernel_matrix(resp.values, spacing, fine_edges, coarse))


def _spatial_op(obs, fused_hw, factor, psf=None, energies=None):
    if psf is None and "psf" in obs:
        psf = psf_on_grid(obs["psf"], pixel_size(obs) / factor)
    if psf is None:
        return Rebin((factor, factor, 1)) if factor > 1 else None
    if "psf_energy" in psf.dims:
        ops = [_spatial_op(obs, fused_hw, factor, psf.isel(psf_energy=i)) for i in range(psf.sizes["psf_energy"])]
        return EnergyDependentSpatial(ops, band_weights(psf["psf_energy"].values, energies))
    M, N = fused_hw
    if M * N * (M // factor) * (N // factor) <= DENSE_SPATIAL_MAX:
        return SpatialMatrix.from_psf(psf.values, (M, N), factor)
    conv = Convolve2D(psf.values, (M, N))
    return Chain([conv, Rebin((factor, factor, 1))]) if factor > 1 else conv


#: a detector pixel must see at least this fraction of its area inside the fused field
FOOTPRINT_COVERAGE = 0.999


def _footprint_op(grid, obs, psf, energies):
    """Spatial operator of a detector-pixel observation: PSF on the fused grid, then the footprint."""
    hw = (grid.sizes["x"], grid.sizes["y"])
    px, det = pixel_size(grid), pixel_size(obs)
    (cx, cy), roll = footprint_geometry(grid, obs)
    F = footprint_matrix(grid["x"].values, grid["y"].values, px, obs["det_x"].values, obs["det_y"].values, det,
                         roll, (cx, cy))
    cover = np.asarray(F.sum(axis=1)).ravel() / (det / px) ** 2
    used = np.asarray(obs["mask"].values.any(axis=1)) if "mask" in obs else np.ones(cover.size, bool)
    bad = np.flatnonzero(used & (cover < FOOTPRINT_COVERAGE))
    if bad.size:
        k = int(bad[0])
        raise ValueError(
            f"detector pixel {obs['pixel'].values[k]} of '{obs.attrs.get('name', 'Y')}' has only {cover[k]:.1%} of its "
            f"area inside the fused field ({bad.size} pixel(s) so): flux from outside the field would be missing from "
            "its model. Use a sharp-spatial image covering the whole array, or mask those pixels (mask=False)")
    if "exposure_fraction" in obs:
        F = sps.diags(np.asarray(obs["exposure_fraction"].values, np.float64)) @ F
    op = Footprint(F, hw)
    if psf is None:
        return op
    if "psf_energy" in psf.dims:
        ops = [_footprint_with_psf(op, psf.isel(psf_energy=i).values, hw) for i in range(psf.sizes["psf_energy"])]
        return EnergyDependentSpatial(ops, band_weights(psf["psf_energy"].values, energies))
    return _footprint_with_psf(op, psf.values, hw)


def _footprint_with_psf(op, kernel, hw):
    conv = Convolve2D(kernel, hw)
    if op.n_pixels * hw[0] * hw[1] <= DENSE_SPATIAL_MAX:
        return op.with_psf(conv)  # one dense (P, M N) product instead of two FFTs per iteration
    return Chain([conv, op])


def _pixel_area(obs, fine_edges):
    """Per-pixel effective area (P, L) cm2 on the fused energy bins, or None if one ARF for all."""
    a = obs["effective_area"]
    if "pixel" not in a.dims:
        return None
    centres = obs["energy_true"].values
    et = energy_edges(obs, "energy_true")
    if not _covers(et, fine_edges):
        raise ValueError(f"per-pixel effective_area covers {et[0]:.4g}-{et[-1]:.4g} keV, the fused grid needs "
                         f"{fine_edges[0]:.4g}-{fine_edges[-1]:.4g} keV")
    e = 0.5 * (fine_edges[1:] + fine_edges[:-1])
    return np.stack([np.interp(e, centres, row) for row in np.asarray(a.transpose("pixel", "energy_true").values)])


def _background(obs):
    """Expected background counts per data voxel (data shape) or None."""
    if "background_rate" not in obs:
        return None
    rate = np.asarray(obs["background_rate"].values, np.float64)  # (a Dask-backed one is read here: check it)
    check_background_values(obs.attrs.get("name", "?"), rate)
    t = float(obs["exposure"].values)
    if "exposure_fraction" in obs:
        t = t * obs["exposure_fraction"].values[:, None]
    return rate * t


def build_model(grid, obs, role) -> InstrumentModel:
    """Forward model of ``obs`` (role "spatial" = X, "spectral" = Y) on the fused ``grid``.

    A detector-pixel observation (counts over ``("pixel", "energy")``) as Y: the PSF on the
    fused grid, then the exact footprint of its pixels (rows scaled by ``exposure_fraction``;
    per-pixel ARFs as data-side factors ``post`` relative to their mean); never the integer
    rebinning. The observation's ``background_rate`` becomes ``model.background`` (counts).
    """
    fine = energy_edges(grid)
    hw = (grid.sizes["x"], grid.sizes["y"])
    t = float(obs["exposure"].values)
    post = None
    if role == SPECTRAL and is_pixel_observation(obs):
        pa = _pixel_area(obs, fine)
        if pa is None:
            w = _area_on_grid(obs, fine, hw, 1, t)
        else:
            ref = pa.mean(axis=0)
            w = t * ref
            post = np.where(ref > 0, pa / np.where(ref > 0, ref, 1.0), 0.0)
        psf = grid["psf"] if "psf" in grid else (psf_on_grid(obs["psf"], pixel_size(grid)) if "psf" in obs else None)
        spatial = _footprint_op(grid, obs, psf, grid["energy"].values)
        return InstrumentModel(w, None, spatial, hw + (fine.size - 1,), obs["counts"].shape, post,
                               _background(obs))
    if is_pixel_observation(obs):
        raise ValueError("a detector-pixel observation can only be the sharp-spectral instrument (role 'spectral')")
    if role == SPATIAL:
        vl = _spectral_grouping(obs, grid)[0]  # not used with a full RMF (its rows on the fused channels)
        w = _area_on_grid(obs, fine, hw, 1, t)
        spectral, spatial = _spectral_op(obs, fine, vl), None
    elif role == SPECTRAL:
        vs = _spatial_factor(grid, obs)
        w = _area_on_grid(obs, fine, hw, vs, t)
        spectral = None
        spatial = _spatial_op(obs, hw, vs, grid["psf"] if "psf" in grid else None, grid["energy"].values)
    else:
        raise ValueError(f"role must be '{SPATIAL}' or '{SPECTRAL}'; got {role!r}")
    return InstrumentModel(w, spectral, spatial, hw + (fine.size - 1,), obs["counts"].shape, None,
                           _background(obs))


def pixels_model(grid, obs) -> InstrumentModel:
    """Model of an observation on the fused PIXELS (same x, y as the grid; e.g. MOS1/MOS2 beside EPIC-pn): its own
    response and area (as the sharp-spatial instrument), and a ``psf`` it carries applied on the fused pixels as
    the blur RELATIVE to the fused resolution (e.g. the kernel taking pn's PSF to MOS's): ``H = R_spec B_rel W``."""
    m = build_model(grid, obs, SPATIAL)
    if "psf" not in obs:
        return m
    hw = (grid.sizes["x"], grid.sizes["y"])
    # the blur acts after the response, on the observation's own channels: an energy-dependent psf is weighted at
    # their energies (session 29: at the fused channels', which failed to broadcast)
    e = energy_edges(obs)
    spatial = _spatial_op(obs, hw, 1, psf_on_grid(obs["psf"], pixel_size(grid)), 0.5 * (e[1:] + e[:-1]))
    return InstrumentModel(m.area, m.spectral, spatial, m.fused_shape, m.data_shape, None, m.background)


def _infer_role(flux, obs):
    px, po = pixel_size(flux), pixel_size(obs)
    ef, eo = np.diff(energy_edges(flux)), np.diff(energy_edges(obs))
    if po > px * (1 + 1e-6):
        return SPECTRAL
    if eo.size < ef.size:
        return SPATIAL
    has_psf, has_resp = "psf" in obs, "response" in obs
    if has_resp and not has_psf:
        return SPATIAL
    if has_psf and not has_resp:
        return SPECTRAL
    raise ValueError("cannot infer whether obs is the sharp-spatial or sharp-spectral instrument; pass role=")


def _check_placement(f, obs):
    """Refuse a flux cube whose pixels are not where ``obs``'s image pixels are (session 28: predict used the cube by
    position, so a shifted or flipped cube gave wrong counts silently), by the fused grid's own rule
    (:func:`xfusion.grid._spatial_factor`: an integer pixel-size ratio, whole pixels, the first pixel edges equal).
    Detector-pixel observations are placed by their own geometry (the footprint), not checked here."""
    if "x" not in obs["counts"].dims:
        return
    for d in ("x", "y"):
        c = np.asarray(f[d].values, np.float64)
        if c.size > 1 and np.any(np.diff(c) <= 0):
            raise ValueError(f"flux coordinate {d} is not increasing; sort the cube by it first (flux.sortby('{d}'))")
    _spatial_factor(f.assign_attrs(name="flux"), obs)


def _check_channels(grid, obs):
    """Refuse a flux cube whose channels are not the sharp-spectral observation's own (the fused energy grid is
    that observation's channels, :func:`xfusion.grid.fusion_grid`)."""
    a, b = energy_edges(obs), energy_edges(grid)
    if a.shape != b.shape or np.any(np.abs(a - b) > edge_tolerance(a, np.min(np.diff(a)))):
        i = 0 if a.shape != b.shape else int(np.flatnonzero(np.abs(a - b) > edge_tolerance(a, np.min(np.diff(a))))[0])
        raise ValueError(
            f"flux channels ({b.size - 1}, {b[0]:.6g}-{b[-1]:.6g} keV) are not the channels of "
            f"'{obs.attrs.get('name', 'the observation')}' ({a.size - 1}, {a[0]:.6g}-{a[-1]:.6g} keV"
            + (f"; edge {i}: {b[i]:.6g} vs {a[i]:.6g} keV" if a.shape == b.shape else "") + "): the sharp-spectral "
            "instrument sees the fused channels one to one, so predict it from a cube on its channels (a fusion "
            "result or truth on the same fused grid)")


def predict(flux: xr.DataArray, obs: xr.Dataset, role=None) -> xr.DataArray:
    """Expected counts of ``obs`` for a photon-flux cube on the fused grid.

    ``flux``: DataArray (x, y, energy) in ph cm-2 s-1 per voxel with coords ``x``/``y``
    (arcsec, ``pixel_size`` attr) and ``energy_lo``/``energy_hi`` (keV), e.g. the ``flux``
    of a fusion result or a toy ``truth``. Returns a DataArray labelled like ``obs.counts``.
    ``role`` is inferred from the grids when omitted: ``"spectral"`` (the sharp-spectral input, or any input on
    the fused channels or a detector-pixel tile: its PSF, pixel grouping or footprint), ``"spatial"`` (the input
    that sets the fused pixels: its own response and area and NO blur, its PSF being the fused resolution) or
    ``"pixels"`` (a further image on the fused pixels, e.g. MOS beside pn: its ``psf`` is applied as the blur
    relative to the fused resolution, :func:`pixels_model`) -- each as :func:`xfusion.fuse` models it.

    Which of "spatial" and "pixels" an image on the fused pixels is depends on the other inputs of the fusion
    (:func:`xfusion.fusion_grid`), so predict takes it, in this order, from ``role``; from the record of a fusion
    result's ``flux`` (attribute ``inputs``: each input's ``name`` and role; ``obs`` is found by its ``name``);
    else an image without a ``psf`` is "spatial" (both models are then the same) and an image carrying a ``psf``
    is refused, as its meaning (the fused resolution or a relative blur) is unknown: pass ``role``.
    """
    validate(obs)
    if isinstance(flux, xr.Dataset) and "flux" in flux:
        flux = flux["flux"]
    if not isinstance(flux, xr.DataArray) or set(flux.dims) != set(CUBE_DIMS):
        raise TypeError(f"flux must be a DataArray with dims {CUBE_DIMS} and their coordinates (e.g. a fusion "
                        f"result's 'flux' or a toy truth); got {type(flux).__name__}")
    f = flux.transpose(*CUBE_DIMS)
    missing = [c for c in ("x", "y", "energy_lo", "energy_hi") if c not in f.coords]
    if missing:
        raise ValueError(f"flux has no {missing} coordinate(s): predict places the cube by them (arcsec, keV)")
    values = np.asarray(f.values)
    if not np.issubdtype(values.dtype, np.floating):
        values = values.astype(np.float64)
    if not np.all(np.isfinite(values)) or np.any(values < 0):  # (session 28: NaN and negative counts came out)
        raise ValueError("flux contains NaN, inf or negative values; a photon flux cube is finite and >= 0")
    return _predict(f, values, obs, role)


def _recorded_role(f, obs):
    """The role fuse gave ``obs`` (found by its ``name``) in the record ``inputs`` of a result's flux, or None."""
    try:
        rec = json.loads(f.attrs["inputs"])
    except (KeyError, TypeError, ValueError):
        return None
    name = obs.attrs.get("name")
    roles = {r.get("role") for r in rec if isinstance(r, dict) and name is not None and r.get("name") == name}
    return roles.pop() if len(roles) == 1 else None


def _image_role(f, obs, role):
    """"spatial" (the input that sets the fused pixels: no blur) or "pixels" (a further image on them: its psf
    relative to the fused resolution) for an image modelled on the fused pixels; see :func:`predict`."""
    if role == PIXELS:
        return PIXELS
    if role is not None:
        return SPATIAL
    rec = _recorded_role(f, obs)
    if rec in (SPATIAL, PIXELS):
        return rec
    if "psf" not in obs:
        return SPATIAL
    name = obs.attrs.get("name", "the observation")
    raise ValueError(
        f"cannot tell how '{name}' enters the fusion: an image on the fused pixels that carries a psf is either the "
        "input that sets the fused pixels (fuse applies no blur: its psf is the fused resolution) or a further image "
        "on them (e.g. MOS beside pn: its psf is the blur relative to the fused resolution), depending on the other "
        "inputs (xfusion.fusion_grid). Pass role='spatial' or role='pixels', or predict from a fusion result's flux "
        "(it records each input's role by name)")


def _predict(f, values, obs, role=None):
    """:func:`predict` of the (x, y, energy) array ``values`` placed by the coordinates of the DataArray ``f``
    (checked there; here also a low-rank result's unclipped cube, for :func:`xfusion.uncertainty`)."""
    if role not in (None, SPATIAL, SPECTRAL, PIXELS):
        raise ValueError(f"role must be '{SPATIAL}', '{PIXELS}' or '{SPECTRAL}'; got {role!r}")
    grid = xr.Dataset(coords={c: f[c] for c in ("x", "y", "energy", "energy_lo", "energy_hi")})
    explicit = role
    role = SPATIAL if role == PIXELS else (role or _infer_role(grid, obs))
    _check_placement(f, obs)
    if role == SPECTRAL:  # its channels are the fused channels (session 29: they were matched by index)
        _check_channels(grid, obs)
    # an image on the fused pixels: the input that sets them without a blur (its psf is the fused resolution), a
    # further one (MOS beside pn) with its psf relative to the fused resolution, as fuse models them (session 29:
    # every image carrying a psf was blurred, also the one that sets the pixels, which fuse models without it)
    if role == SPATIAL and _image_role(f, obs, explicit) == PIXELS:
        model = pixels_model(grid, obs)
    else:
        model = build_model(grid, obs, role)
    out = model.expected(values)
    return obs["counts"].copy(data=out).assign_attrs(
        units="count", long_name="expected counts" + (" (including the known background)" if model.background
                                                      is not None else ""))
