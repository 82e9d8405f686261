r"""JWST imager + IFU fusion (the SyFu use case, Marquis et al. 2026): filters, PSFs, cross-calibration, a toy.

The problem
-----------
An imager (NIRCam, 0.031"/px, a few filters) and an integral-field spectrograph (NIRSpec
IFU, 0.1"/px, thousands of channels) observe the same field; we want a cube with the
imager's spatial and the IFU's spectral sampling. In xfusion's terms the imager is the
sharp-spatial instrument X and the IFU the sharp-spectral instrument Y:

* X: ``Y_m[x, y, f] = sum_l R[l, f] Z[x, y, l]`` -- an
  :class:`~xfusion.operators.model.InstrumentModel` whose spectral operator is the filter
  matrix ``R`` (fused channels -> filters; :func:`filter_response`), overlapping bands
  allowed (it is not an integer grouping of channels), no spatial operator;
* Y: ``Y_h = S_3 (K_lambda * Z_lambda)``, a PSF that varies with wavelength
  (:class:`~xfusion.operators.psf.EnergyDependentSpatial`, linear interpolation between
  PSF nodes) followed by a 3 x 3 block mean (the data are surface brightnesses, MJy/sr,
  so the rebinning averages: weights 1/9); the unknown extends one IFU spaxel beyond the
  field (``margin``) so that sky just outside can spill into the edge spaxels.

Data terms are Gaussian with the pipeline's per-voxel errors (:mod:`xfusion.gaussian`), the
spectral subspace and Sobolev penalty are xfusion's low-rank machinery
(:class:`~xfusion.solvers.subspace.SubspaceFISTA`); :mod:`xfusion.syfu` is SyFu itself, as a
baseline (``benchmarks/jwst.py`` compares the two).

What the fused cube is, and the PSF of X
----------------------------------------
SyFu applies *both* PSFs to the unknown (their eq. 4-5: ``L_m W_m(X)`` and
``L_h W_h(X) S``), so its X is the scene before any telescope blur -- a deconvolution of
NIRCam as well. xfusion keeps its rule "the sharp-spatial instrument's resolution is the
target": ``Z_lambda = P_m,lambda * X_lambda`` is the scene at NIRCam's resolution *at each
wavelength*. Then the imager model needs no PSF (``sum_l R_lf (P_m,l * X_l) = sum_l R_lf
Z_l`` exactly, whatever the PSF's wavelength dependence), and the IFU model needs only the
*matching kernel* ``K_lambda`` with ``P_h,lambda = K_lambda * P_m,lambda``; for
Gaussian-like PSFs ``K_lambda`` is Gaussian with ``FWHM_K^2 = FWHM_h^2 - FWHM_m^2``
(:func:`matching_kernel`). The problem is better conditioned (nothing below NIRCam's
resolution is asked for), and the result is directly comparable with the NIRCam images.

Units: the spectral axis is wavelength in micrometres. The internal dimension keeps the
name ``energy`` (so every operator and metric applies), but its coordinates carry
``units="um"`` and the Datasets ``attrs["spectral_unit"] = "um"``; mixing them with X-ray
(keV) observations is refused (:func:`xfusion.observation.check_spectral_units`).

Filters (JWST User Documentation, "NIRCam Filters" and "NIRCam Point Spread Functions"
pages, jwst-docs.stsci.edu; checked session 5, see docs/jwst.rst for the sources): pivot
wavelength / bandwidth (um) / PSF FWHM (arcsec):

=======  ======  =====  =====
filter   pivot   width  FWHM
=======  ======  =====  =====
F182M    1.845   0.238  0.062
F187N    1.874   0.024  0.064
F200W    1.990   0.461  0.066
F210M    2.093   0.205  0.071
F212N    2.120   0.027  0.072
=======  ======  =====  =====

The paper (Marquis et al. 2026) states the filters, the pixels (0.031" NIRCam SW, 0.1"
NIRSpec IFU) and the range (G235H/F170LP, fusion over 1.66-2.30 um; Table 3) but no
filter centres, widths or FWHMs: it uses STScI's throughput curves and WebbPSF PSFs.
The throughput curves here are smooth top-hats of those centres and widths (real curves
are tabulated by STScI; pass them as ``throughput_curves=`` to :func:`filter_response`). NIRCam's
PSF FWHM is modelled as ``0.0338" x lambda/um`` (least squares on the table: within 0.0013"
of every entry; ~lambda/D, D = 6.5 m), NIRSpec IFU's as ``0.06" x lambda/um`` (the IFU
undersamples the nearly diffraction-limited PSF and the cube resampling broadens it; 0.12"
at 2 um is an assumption of this toy, not a calibrated value), so the kernel matching the
two grows from 0.083" to 0.114" across 1.66-2.30 um.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import xarray as xr

from .gaussian import GaussianTerm
from .observation import check_spectral_units, pixel_step
from .operators.model import InstrumentModel
from .operators.psf import EnergyDependentSpatial, band_weights
from .operators.response import ResponseMatrix

#: NIRCam short-wavelength pixel (arcsec), NIRSpec IFU spaxel (arcsec); SyFu resamples NIRCam to 0.1/3
NIRCAM_SW_PIXEL = 0.031
NIRSPEC_IFU_PIXEL = 0.1
FACTOR = 3
#: G235H/F170LP range used for symmetric fusion (um; paper Table 3)
G235H_RANGE = (1.66, 2.30)
#: defaults of :func:`fuse_jwst` (measured on the toy: benchmarks/jwst.py)
DEFAULT_MU = 0.003
#: largest rank of the automatic choice ``min(DEFAULT_RANK, n_filters + 1)``
DEFAULT_RANK = 5
#: rest wavelengths (um, vacuum) of the lines of the toy
LINES = {"Pa-alpha": 1.8756, "H2 1-0 S(1)": 2.1218, "Br-gamma": 2.1661}


@dataclass(frozen=True)
class Filter:
    """A NIRCam filter: pivot wavelength and bandwidth (um), PSF FWHM (arcsec) -- JDox values (module docstring)."""

    name: str
    pivot: float
    width: float
    fwhm: float


#: the five NIRCam SW filters inside G235H/F170LP (JDox "NIRCam Filters", "NIRCam PSFs")
FILTERS = {f.name: f for f in (Filter("F182M", 1.845, 0.238, 0.062), Filter("F187N", 1.874, 0.024, 0.064),
                               Filter("F200W", 1.990, 0.461, 0.066), Filter("F210M", 2.093, 0.205, 0.071),
                               Filter("F212N", 2.120, 0.027, 0.072))}
#: NIRCam SW PSF FWHM per micrometre of wavelength (arcsec/um): least squares on the FWHMs of ``FILTERS``
NIRCAM_FWHM_PER_UM = 0.0338


def nircam_fwhm(wavelength_um):
    """NIRCam SW PSF FWHM (arcsec) at ``wavelength_um``: ``0.0338 lambda`` (diffraction-limited; fitted to the JDox
    table of ``FILTERS``, residuals <= 0.0013")."""
    return NIRCAM_FWHM_PER_UM * np.asarray(wavelength_um, dtype=np.float64)


def nirspec_fwhm(wavelength_um):
    """NIRSpec IFU PSF FWHM (arcsec): ``0.06 lambda`` (toy assumption, 0.12" at 2 um)."""
    return 0.06 * np.asarray(wavelength_um, dtype=np.float64)


# --------------------------------------------------------------------------- filters
def throughput(name, wavelength_um):
    """Model throughput (peak 1) of filter ``name`` at ``wavelength_um``: a top-hat of the JDox
    centre and width with error-function edges of width 5 % of the bandwidth."""
    from scipy.special import erf

    if name not in FILTERS:
        raise ValueError(f"unknown filter {name!r}; known: {', '.join(FILTERS)} (or pass throughput curves)")
    f = FILTERS[name]
    lam = np.asarray(wavelength_um, dtype=np.float64)
    lo, hi, s = f.pivot - f.width / 2, f.pivot + f.width / 2, 0.05 * f.width
    return 0.5 * (erf((lam - lo) / s) - erf((lam - hi) / s))


def _curve(name, wavelength_um, throughput_values):
    """A tabulated throughput curve as float arrays sorted by wavelength (a descending table is reversed); refuses
    non-finite values, repeated wavelengths and mismatched or too short tables, naming the filter."""
    wl, t = (np.asarray(a, dtype=np.float64) for a in (wavelength_um, throughput_values))
    if wl.ndim != 1 or wl.shape != t.shape or wl.size < 2:
        raise ValueError(f"throughput curve of {name}: give (wavelength_um, T) as two 1D arrays of one length >= 2; "
                         f"got shapes {wl.shape} and {t.shape}")
    bad = ~(np.isfinite(wl) & np.isfinite(t))
    if bad.any():
        raise ValueError(f"throughput curve of {name}: {int(bad.sum())} non-finite (NaN or inf) wavelength or "
                         f"throughput value(s), first at row {int(np.flatnonzero(bad)[0])}: remove those rows")
    order = np.argsort(wl, kind="stable")
    wl, t = wl[order], t[order]
    if np.any(np.diff(wl) <= 0):
        raise ValueError(f"throughput curve of {name}: the wavelength {wl[1:][np.diff(wl) <= 0][0]:.6g} appears "
                         "more than once: give each wavelength once")
    return wl, t


def filter_response(filters, edges_um, throughput_curves=None, coverage=0.99):
    r"""Filter matrix ``R`` (L, F): fused wavelength bins -> filter images (columns sum to 1).

    ``R[l, f] = T_f(lambda_l) dlambda_l / sum_l' T_f(lambda_l') dlambda_l'`` with ``T_f`` the
    throughput, ``lambda_l`` the bin centres and ``dlambda_l`` the widths (um) from
    ``edges_um`` (L + 1,): an image in MJy/sr is the throughput-weighted mean of the cube
    (the JWST pipeline's convention, ``L_f / ||L_f||_1`` in SyFu's notation). Bands may
    overlap. ``throughput_curves``: optional dict name -> (wavelength_um, T) tabulated
    curves (linearly interpolated, zero outside the table; sorted by wavelength, non-finite values
    refused), else the model curves of :func:`throughput`. A filter
    with less than ``coverage`` of its throughput inside the grid is refused (symmetric
    fusion needs each filter inside the IFU's range).
    """
    e = np.asarray(edges_um, dtype=np.float64)
    if e.ndim != 1 or e.size < 2 or np.any(np.diff(e) <= 0):
        raise ValueError("edges_um must be strictly increasing wavelength edges (um)")
    lam, dl = 0.5 * (e[1:] + e[:-1]), np.diff(e)
    cols = []
    for name in filters:
        if throughput_curves is not None and name in throughput_curves:
            wl, t = _curve(name, *throughput_curves[name])
            fine = np.linspace(min(wl[0], e[0]), max(wl[-1], e[-1]), 4000)
            inside = np.trapezoid(np.interp(fine, wl, t, 0, 0) * ((fine >= e[0]) & (fine <= e[-1])), fine)
            total = np.trapezoid(t, wl)
            col = np.interp(lam, wl, t, 0, 0) * dl
        else:
            f = FILTERS.get(name)
            if f is None:
                raise ValueError(f"unknown filter {name!r}; known: {', '.join(FILTERS)}, or pass throughput_curves")
            fine = np.linspace(f.pivot - f.width, f.pivot + f.width, 4001)
            t = throughput(name, fine)
            total = np.trapezoid(t, fine)
            inside = np.trapezoid(t * ((fine >= e[0]) & (fine <= e[-1])), fine)
            col = throughput(name, lam) * dl
        if not (total > 0 and inside / total >= coverage and col.sum() > 0):
            hint = ""
            if e[-1] > 100:
                hint = " (the grid looks like nm: give wavelengths in um, i.e. divide by 1000)"
            elif e[-1] < 1e-3:
                hint = " (the grid looks like m: give wavelengths in um, i.e. multiply by 1e6)"
            elif throughput_curves is not None and name in throughput_curves and (wl[-1] <= e[0] or wl[0] >= e[-1]):
                scale = {4: "Angstrom (divide by 1e4)", 3: "nm (divide by 1000)", -6: "m (multiply by 1e6)"}.get(
                    int(np.round(np.log10(np.median(wl) / np.median(e)))), "")
                hint = (f" (its throughput curve spans {wl[0]:.4g}-{wl[-1]:.4g}, outside the grid: give its "
                        f"wavelengths in um{'; they look like ' + scale if scale else ''})")
            raise ValueError(f"filter {name} has only {inside / max(total, 1e-300):.1%} of its throughput inside the "
                             f"wavelength grid {e[0]:.4g}-{e[-1]:.4g} um{hint}; symmetric fusion needs every filter "
                             "inside the IFU's range: drop it or extend the grid")
        cols.append(col / col.sum())
    return np.stack(cols, axis=1)


def cross_calibrate(imager_data, ifu_data, response, imager_mask=None, ifu_mask=None):
    r"""SyFu's cross-calibration (eq. 6-7): per-filter factors making the imager agree with the IFU on average.

    ``imager_data`` (M, N, F), ``ifu_data`` (m, n, L) over the same field of view (``M = k m``,
    ``N = k n`` with k the integer pixel ratio), ``response`` (L, F) normalized filter matrix
    (:func:`filter_response`). With bars the spatial means over the same field, the factor of filter f is

    .. math:: c_f = \overline{Y_{m,f}} \,/\, (\hat L_f \cdot \overline{Y_h})

    (eq. 7 with the pipeline-normalized throughput ``L_f / ||L_f||_1``); the calibrated
    response ``c_f R[:, f]`` then satisfies eq. 6, ``mean(Y_m,f) = L_f mean(Y_h)``. The field is
    the same for both means: with masks, filter f is compared over the IFU spaxels valid in
    every channel of its band (``R[:, f]`` above 1e-6 of its peak) whose k x k imager pixels are
    all valid in that filter (the imager over those pixels, the IFU over those spaxels).
    Returns ``(factors (F,), calibrated response (L, F))``; factors near 1 mean the two pipelines
    agree. The PSFs must conserve flux for the means to be comparable (they sum to 1).
    """
    ym = np.asarray(imager_data, dtype=np.float64)
    yh = np.asarray(ifu_data, dtype=np.float64)
    R = np.asarray(response, dtype=np.float64)
    if R.shape != (yh.shape[-1], ym.shape[-1]):
        raise ValueError(f"response shape {R.shape} must be (IFU channels {yh.shape[-1]}, filters {ym.shape[-1]})")
    (M, N, F), (m, n, L) = ym.shape, yh.shape
    k = M // m if m else 0
    if k < 1 or (M, N) != (k * m, k * n):
        raise ValueError(f"the imager field {M}x{N} is not an integer multiple of the IFU field {m}x{n}: crop both "
                         "to the common field of view (cross-calibration compares them over the same field)")
    vm = np.ones(ym.shape, bool) if imager_mask is None else np.asarray(imager_mask, bool)
    vh = np.ones(yh.shape, bool) if ifu_mask is None else np.asarray(ifu_mask, bool)
    cnt = vh.sum(axis=(0, 1))
    if np.any(cnt == 0):
        raise ValueError(f"the IFU has channels with no valid spaxel (indices {np.flatnonzero(cnt == 0)[:8].tolist()}"
                         f"{', ...' if np.sum(cnt == 0) > 8 else ''}): the mean spectrum is undefined there; "
                         "cross-calibrate over a wavelength range without them (crop the cube and the response)")
    mean_all = np.where(vh, yh, 0).sum(axis=(0, 1)) / cnt
    # imager pixels valid per spaxel: (m, n, F), True when all k x k pixels are valid
    block_ok = vm.reshape(m, k, n, k, F).all(axis=(1, 3))
    mean_m, pred = np.empty(F), np.empty(F)
    for f in range(F):
        band = R[:, f] > 1e-6 * np.abs(R[:, f]).max() if np.any(R[:, f]) else np.ones(L, bool)
        foot = block_ok[..., f] & vh[..., band].all(axis=-1)  # spaxels valid in both for this filter
        if not foot.any():
            raise ValueError(f"filter column {f}: no IFU spaxel is valid both in every channel of the filter's band and in "
                             "all its imager pixels, so the two cannot be compared over the same field (SyFu eq. "
                             "7). Check the masks (a fully masked filter image or IFU band?) or pass "
                             "cross_calibration=False")
        pix = np.repeat(np.repeat(foot, k, axis=0), k, axis=1)
        mean_m[f] = ym[..., f][pix].mean()
        c = (vh & foot[..., None]).sum(axis=(0, 1))
        with np.errstate(invalid="ignore", divide="ignore"):
            mh = np.where(c > 0, np.where(vh & foot[..., None], yh, 0).sum(axis=(0, 1)) / np.maximum(c, 1), mean_all)
        pred[f] = mh @ R[:, f]
    if np.any(pred == 0):
        raise ValueError("a filter integrates the mean IFU spectrum to 0: cross-calibration is undefined")
    factors = mean_m / pred
    return factors, R * factors[None, :]


# --------------------------------------------------------------------------- PSFs
def gaussian_kernel(fwhm_arcsec, pixel_arcsec, radius=None):
    """Odd-sized, centred, unit-sum 2D Gaussian of FWHM ``fwhm_arcsec`` sampled at ``pixel_arcsec``
    (pixel-integrated with the error function); radius 3 sigma by default."""
    from scipy.special import erf

    s = float(fwhm_arcsec) / (2 * np.sqrt(2 * np.log(2))) / float(pixel_arcsec)
    r = int(np.ceil(3 * s)) if radius is None else int(radius)
    r = max(r, 1)
    x = np.arange(-r, r + 1, dtype=np.float64)
    if s <= 0:
        k1 = (x == 0).astype(np.float64)
    else:
        k1 = 0.5 * (erf((x + 0.5) / (np.sqrt(2) * s)) - erf((x - 0.5) / (np.sqrt(2) * s)))
    k = np.outer(k1, k1)
    return k / k.sum()


def matching_kernel(wavelength_um, pixel_arcsec, target_fwhm=nircam_fwhm, ifu_fwhm=nirspec_fwhm):
    """Kernel taking the target (imager) resolution to the IFU's at one wavelength: Gaussian with
    ``FWHM^2 = FWHM_ifu^2 - FWHM_target^2`` (exact for Gaussian PSFs); refused if the IFU is sharper."""
    fh, fm = float(ifu_fwhm(wavelength_um)), float(target_fwhm(wavelength_um))
    if fh < fm:
        raise ValueError(f"at {wavelength_um:.4g} um the IFU PSF ({fh:.3g}\") is sharper than the imager's "
                         f"({fm:.3g}\"): the imager cannot be the sharp-spatial instrument there")
    return gaussian_kernel(np.sqrt(fh * fh - fm * fm), pixel_arcsec)


def ifu_psf_stack(nodes_um, pixel_arcsec, **kw):
    """Matching kernels at ``nodes_um`` as a DataArray (psf_energy, psf_x, psf_y), ``psf_energy`` in um,
    padded to a common odd size (the IFU PSF relative to the target resolution)."""
    ks = [matching_kernel(w, pixel_arcsec, **kw) for w in nodes_um]
    n = max(k.shape[0] for k in ks)
    stack = np.stack([np.pad(k, (n - k.shape[0]) // 2) for k in ks])
    c = (np.arange(n) - n // 2) * float(pixel_arcsec)
    attrs = {"units": "arcsec", "pixel_size": float(pixel_arcsec)}
    return xr.DataArray(stack, dims=("psf_energy", "psf_x", "psf_y"), attrs={"units": "1"},
                        coords={"psf_energy": ("psf_energy", np.asarray(nodes_um, float), {"units": "um"}),
                                "psf_x": ("psf_x", c, attrs), "psf_y": ("psf_y", c, attrs)})


# --------------------------------------------------------------------------- models
class Crop:
    """The central part of a field: ``(M + 2p, N + 2p, ...) -> (M, N, ...)``; adjoint: zero padding."""

    def __init__(self, pad):
        self.p = int(pad)

    def forward(self, z):
        p = self.p
        return np.ascontiguousarray(z[p:z.shape[0] - p, p:z.shape[1] - p]) if p else z

    def adjoint(self, u):
        p = self.p
        return np.pad(u, [(p, p), (p, p)] + [(0, 0)] * (u.ndim - 2)) if p else u


def imager_model(response, fused_shape, margin=0):
    """X model: ``Z (M, N, L) -> Z @ R (M, N, F)`` (filters as the spectral response, no PSF); with
    ``margin`` > 0 the fused field extends ``margin`` pixels beyond the image on every side (cropped)."""
    R = np.asarray(response, dtype=np.float64)
    M, N, L = fused_shape
    if R.shape[0] != L:
        raise ValueError(f"response has {R.shape[0]} rows but the fused grid has {L} channels")
    crop = Crop(margin) if margin else None
    return InstrumentModel(np.ones(L), ResponseMatrix(R), crop, fused_shape,
                           (M - 2 * margin, N - 2 * margin, R.shape[1]))


class BlurRebin:
    """One PSF band of the IFU: 'same'-size convolution with ``kernel`` (zero boundary), sum over
    ``factor x factor`` blocks, then the central spaxels (``margin`` dropped on every side).

    Acts on (M, N, ...) arrays (full cubes or subspace maps) with FFTs over axes (0, 1): on the
    few subspace maps of the solver this is much faster than a dense matrix. Adjoint: crop ->
    zero padding, block sum -> repetition, convolution -> correlation (odd, centred kernel).
    """

    def __init__(self, kernel, shape, factor, margin=0):
        self.k = np.asarray(kernel, dtype=np.float64)
        if self.k.ndim != 2 or self.k.shape[0] % 2 == 0 or self.k.shape[1] % 2 == 0:
            raise ValueError(f"kernel must be a 2D odd-sized array; got shape {self.k.shape}")
        self.M, self.N = shape
        self.v, self.b = int(factor), int(margin)

    def _conv(self, z, kernel):
        from scipy.signal import fftconvolve

        k = kernel.reshape(kernel.shape + (1,) * (z.ndim - 2)).astype(z.dtype)
        return fftconvolve(z, k, mode="same", axes=(0, 1)).astype(z.dtype, copy=False)

    def forward(self, z):
        v, b = self.v, self.b
        c = self._conv(z, self.k)
        c = c.reshape(self.M // v, v, self.N // v, v, *z.shape[2:]).sum(axis=(1, 3))
        return np.ascontiguousarray(c[b:c.shape[0] - b, b:c.shape[1] - b]) if b else c

    def adjoint(self, u):
        v, b = self.v, self.b
        if b:
            u = np.pad(u, [(b, b), (b, b)] + [(0, 0)] * (u.ndim - 2))
        up = np.repeat(np.repeat(u, v, axis=0), v, axis=1)
        return self._conv(up, self.k[::-1, ::-1])


class WavelengthPSF(EnergyDependentSpatial):
    """:class:`~xfusion.operators.psf.EnergyDependentSpatial` over :class:`BlurRebin` bands, applied in memory
    (``sum_b B_b(a_b z)``; adjoint ``sum_b a_b B_b^T u``); its subspace form is the base class's."""

    def _apply_bands(self, z, fwd):
        out = None
        for op, (lo, hi), wb in zip(self.ops, self.ranges, self.weights):
            if hi <= lo:
                continue
            w = wb[lo:hi].astype(z.dtype)
            part = op.forward(z[..., lo:hi] * w) if fwd else op.adjoint(z[..., lo:hi]) * w
            if out is None:
                out = np.zeros(part.shape[:-1] + (z.shape[-1],), dtype=part.dtype)
            out[..., lo:hi] += part
        return out

    def forward(self, z):
        return self._apply_bands(z, True)

    def adjoint(self, u):
        return self._apply_bands(u, False)


def ifu_model(psf_stack, wavelengths_um, fused_shape, factor=FACTOR, margin=0):
    """Y model: wavelength-dependent PSF (``psf_stack`` (nodes, k, k) DataArray with ``psf_energy``
    in um, linear interpolation between nodes), then the mean of ``factor x factor`` blocks.
    ``margin`` (IFU spaxels): the fused field extends that far beyond the IFU's, and only the
    IFU's spaxels are modelled -- flux just outside the field can then enter the edge spaxels
    through the PSF, as it does on the sky."""
    M, N, L = fused_shape
    if M % factor or N % factor:
        raise ValueError(f"the fused field {M}x{N} is not a multiple of the spatial factor {factor}")
    m, n, b = M // factor, N // factor, int(margin)
    p = psf_stack.transpose("psf_energy", "psf_x", "psf_y")
    ops = [BlurRebin(p.values[i], (M, N), factor, b) for i in range(p.sizes["psf_energy"])]
    spatial = WavelengthPSF(ops, band_weights(p["psf_energy"].values, wavelengths_um))
    return InstrumentModel(np.full(L, 1.0 / factor ** 2), None, spatial, fused_shape,
                           (m - 2 * b, n - 2 * b, L))


# --------------------------------------------------------------------------- data sets
def _edges_coords(edges_um):
    e = np.asarray(edges_um, dtype=np.float64)
    a = {"units": "um", "long_name": "wavelength"}
    return {"energy": ("energy", 0.5 * (e[1:] + e[:-1]), a), "energy_lo": ("energy", e[:-1], a),
            "energy_hi": ("energy", e[1:], a)}


def _xy(n, pixel):
    c = (np.arange(n) - (n - 1) / 2.0) * pixel
    a = {"units": "arcsec", "pixel_size": float(pixel)}
    return {"x": ("x", c, a), "y": ("y", c, a)}


def _gaussian_dataset(coords, third, data, variance, mask, bunit, attrs):
    """Dataset with ``data``/``variance`` (x, y, ``third``) in ``bunit`` / ``bunit**2`` and ``mask`` (True = valid);
    copies of the inputs, never views."""
    d = np.asarray(data, dtype=np.float64)
    dims = ("x", "y", third)
    ds = xr.Dataset(coords=coords)
    ds["data"] = (dims, d.copy(), {"units": bunit})
    ds["variance"] = (dims, np.broadcast_to(np.asarray(variance, np.float64), d.shape).copy(), {"units": f"({bunit})2"})
    ds["mask"] = (dims, np.ones(d.shape, bool) if mask is None else np.asarray(mask, bool).copy())
    ds.attrs.update(attrs, spectral_unit="um", data_term="gaussian")
    return ds


def imager_dataset(data, variance, filters, pixel_arcsec, mask=None, name="NIRCam", bunit="MJy/sr"):
    """Imager Dataset: ``data``/``variance`` (x, y, filter) in ``bunit`` / ``bunit**2``, ``mask`` (True = valid)."""
    coords = {**_xy(np.shape(data)[0], pixel_arcsec), "filter": ("filter", list(filters))}
    return _gaussian_dataset(coords, "filter", data, variance, mask, bunit, {"name": name, "instrument": "NIRCAM"})


def ifu_dataset(data, variance, edges_um, pixel_arcsec, mask=None, name="NIRSpec", bunit="MJy/sr"):
    """IFU Dataset: ``data``/``variance`` (x, y, energy) with ``energy`` = wavelength (um, explicit edges)."""
    coords = {**_xy(np.shape(data)[0], pixel_arcsec), **_edges_coords(edges_um)}
    return _gaussian_dataset(coords, "energy", data, variance, mask, bunit, {"name": name, "instrument": "NIRSPEC"})


def _edges(ds):
    return np.append(ds["energy_lo"].values, ds["energy_hi"].values[-1]).astype(np.float64)


# --------------------------------------------------------------------------- the toy
def _scene(size, pad, pixel, lam, rng):
    """Protoplanetary-disk scene (MJy/sr) on a padded field: nebula (Pa-alpha, Br-gamma) behind a dark lane
    whose extinction falls with wavelength, an H2 wind shell around the disk, a jet knot (Pa-alpha + H2)."""
    n = size + 2 * pad
    c = (np.arange(n) - (n - 1) / 2.0) * pixel
    x, y = np.meshgrid(c, c, indexing="ij")
    th = np.deg2rad(30.0)
    u, v = x * np.cos(th) + y * np.sin(th), -x * np.sin(th) + y * np.cos(th)

    def line(centre, sigma=0.004):
        return np.exp(-0.5 * ((lam - centre) / sigma) ** 2)

    neb_map = 1.0 + 0.4 * x / (n * pixel) + 0.3 * np.exp(-((x + 0.4) ** 2 + (y - 0.3) ** 2) / (2 * 0.35 ** 2))
    neb_spec = 1.0 * (lam / 2.0) ** -1.5 + 6.0 * line(LINES["Pa-alpha"]) + 1.5 * line(LINES["Br-gamma"]) \
        + 0.4 * line(LINES["H2 1-0 S(1)"])
    lane = np.exp(-0.5 * ((u / 0.30) ** 2 + (v / 0.06) ** 2))
    tau = 2.0 * (lam / 2.0) ** -1.7  # extinction falls with wavelength
    cube = neb_map[..., None] * neb_spec[None, None, :] * np.exp(-lane[..., None] * tau[None, None, :])
    r = np.sqrt((u / 0.36) ** 2 + (v / 0.16) ** 2)
    shell = np.exp(-0.5 * ((r - 1.0) / 0.18) ** 2) * (1 + 0.3 * np.sign(v))
    cube += shell[..., None] * (0.25 * (lam / 2.0) ** -1 + 5.0 * line(LINES["H2 1-0 S(1)"]))[None, None, :]
    knot = np.exp(-0.5 * ((u - 0.03) ** 2 + (v - 0.38) ** 2) / 0.035 ** 2)
    cube += knot[..., None] * (1.5 + 8.0 * line(LINES["Pa-alpha"]) + 4.0 * line(LINES["H2 1-0 S(1)"]))[None, None, :]
    return 20.0 * cube


def _blur(cube, fwhm, pixel):
    """Per-channel convolution with Gaussian kernels of FWHM ``fwhm[l]`` (zero boundary, 'same' size)."""
    from scipy.signal import fftconvolve

    out = np.empty_like(cube)
    for l_ in range(cube.shape[-1]):
        out[..., l_] = fftconvolve(cube[..., l_], gaussian_kernel(fwhm[l_], pixel), mode="same")
    return out


def make_toy(seed=0, size=48, n_channels=128, filters=tuple(FILTERS), snr_imager=80.0, snr_ifu=12.0,
             calibration=(1.06, 0.97, 1.03, 1.00, 0.95), n_psf_nodes=5):
    """JWST toy (d203-506-like disk): ``(imager, ifu, truth)``.

    Fused grid: ``size x size`` pixels of 0.1/3" (``size`` a multiple of 3) and ``n_channels``
    wavelength bins over 1.66-2.30 um. The scene (:func:`_scene`) is blurred channel by
    channel with NIRCam's PSF -- this is ``truth["flux"]``, the target -- and with NIRSpec's
    (then 3 x 3 block means) for the IFU; both on a field padded by 8 px and cropped, so the
    edges behave like a real sky. The imager sees ``calibration[f]`` times the
    filter-integrated target (an intensity mismatch between pipelines, recovered by
    :func:`cross_calibrate`). Noise is Gaussian: imager sigma = peak/``snr_imager`` per filter
    plus a signal-dependent part, IFU sigma = (mean spectrum level)/``snr_ifu`` per channel;
    ``variance`` holds the true variances (the ERR**2 of a pipeline product).
    ``truth`` also holds ``scene`` (unblurred), ``calibration`` and the ``psf`` stack of
    matching kernels at ``n_psf_nodes`` wavelengths (what :func:`fuse_jwst` uses).
    """
    if size % FACTOR:
        raise ValueError(f"size must be a multiple of {FACTOR}; got {size}")
    if len(calibration) < len(filters):
        raise ValueError("give one calibration factor per filter")
    rng = np.random.default_rng(seed)
    pixel = NIRSPEC_IFU_PIXEL / FACTOR
    edges = np.linspace(*G235H_RANGE, n_channels + 1)
    lam = 0.5 * (edges[1:] + edges[:-1])
    pad = 8
    scene = _scene(size, pad, pixel, lam, rng)
    target = _blur(scene, nircam_fwhm(lam), pixel)[pad:-pad, pad:-pad]
    ifu_fine = _blur(scene, nirspec_fwhm(lam), pixel)[pad:-pad, pad:-pad]
    m = size // FACTOR
    ifu_clean = ifu_fine.reshape(m, FACTOR, m, FACTOR, n_channels).mean(axis=(1, 3))
    R = filter_response(filters, edges)
    cal = np.asarray(calibration[:len(filters)], dtype=np.float64)
    img_clean = (target @ R) * cal
    peak = img_clean.max(axis=(0, 1))
    var_m = (peak / snr_imager) ** 2 * (0.5 + 0.5 * img_clean / peak)
    var_h = np.broadcast_to(((ifu_clean.mean(axis=(0, 1)) / snr_ifu) ** 2)[None, None, :], ifu_clean.shape)
    img = img_clean + rng.standard_normal(img_clean.shape) * np.sqrt(var_m)
    ifu = ifu_clean + rng.standard_normal(ifu_clean.shape) * np.sqrt(var_h)
    imager = imager_dataset(img, var_m, filters, pixel, name="NIRCam toy")
    ifu_ds = ifu_dataset(ifu, var_h, edges, NIRSPEC_IFU_PIXEL, name="NIRSpec toy")
    truth = xr.Dataset(coords={**_xy(size, pixel), **_edges_coords(edges)})
    truth["flux"] = (("x", "y", "energy"), target, {"units": "MJy/sr", "long_name": "scene at NIRCam resolution"})
    truth["scene"] = (("x", "y", "energy"), scene[pad:-pad, pad:-pad], {"units": "MJy/sr"})
    truth["calibration"] = (("filter",), cal)
    truth = truth.assign_coords(filter=("filter", list(filters)))
    truth["psf"] = ifu_psf_stack(np.linspace(*G235H_RANGE, n_psf_nodes), pixel)
    truth.attrs.update(spectral_unit="um", seed=seed)
    return imager, ifu_ds, truth


# --------------------------------------------------------------------------- fusion
def _psf_nodes(ifu, pixel, n_nodes):
    """The default PSF stack: matching kernels at ``n_nodes`` wavelengths spanning the IFU's band (its edges); one
    node is a wavelength-independent PSF, taken at the band's centre (it was the lower edge: the narrowest kernel
    used at every wavelength)."""
    e = _edges(ifu)
    nodes = np.linspace(e[0], e[-1], n_nodes) if n_nodes > 1 else np.array([0.5 * (e[0] + e[-1])])
    return ifu_psf_stack(nodes, pixel)


def _field_centre(ds):
    """Centre of the field (arcsec west, north) relative to the Dataset's tangent point, and that point."""
    return (float(ds["x"].values.mean()), float(ds["y"].values.mean()),
            ds.attrs.get("center_ra"), ds.attrs.get("center_dec"))


def _check_alignment(im, ifu, pixel):
    """Refuse an imager and a cube whose fields are not centred on the same sky position (within a quarter of an
    imager pixel). Offsets count from each Dataset's tangent point (``center_ra``/``center_dec``); without
    them both grids are taken as centred on the same point."""
    xm, ym, ram, decm = _field_centre(im)
    xh, yh, rah, dech = _field_centre(ifu)
    if None not in (ram, decm, rah, dech):  # move the IFU centre into the imager's frame (small field)
        xh -= (float(rah) - float(ram)) * np.cos(np.deg2rad(float(decm))) * 3600.0  # x grows west: RA decreases
        yh += (float(dech) - float(decm)) * 3600.0
    off = np.hypot(xm - xh, ym - yh)
    if off > 0.25 * pixel:
        raise ValueError(f"the imager and IFU fields are not co-registered: their centres differ by {off:.4g}\" "
                         f"({off / pixel:.2g} imager pixels). Crop and resample both onto one field first (SyFu: "
                         "rotate to a common orientation, resample NIRCam to 1/3 of the NIRSpec spaxel, align)")


def _check_ifu_channels(data, mask, edges):
    """Refuse an IFU cube with wavelength channels that hold no valid spaxel (every spaxel NaN or masked: a
    detector gap, a bad channel, the NaN end channels of an s3d cube).

    ``data``/``mask`` (m, n, L), ``edges`` (L + 1,) um. A channel counts as empty when no spaxel is both valid in
    ``mask`` and finite. Such a channel cannot be fused: the spectral subspace is learnt from the IFU's spectra,
    which say nothing there (the fused flux came out 0 instead of ~14 MJy/sr on the toy), and every filter must
    lie where the IFU has data (symmetric fusion; SyFu chooses gap-free ranges, their Appendix C). The message
    names the channels (index, wavelength) and the longest run of channels with data, to crop to. Channels
    with *some* valid spaxels are fine: their masked voxels leave the problem."""
    ok = (np.asarray(mask, bool) & np.isfinite(data)).any(axis=(0, 1))
    dead = np.flatnonzero(~ok)
    if not dead.size:
        return
    lam = 0.5 * (edges[1:] + edges[:-1])
    named = ", ".join(f"{int(i)} ({lam[i]:.4g} um)" for i in dead[:8]) + (f", ... ({dead.size} in all)"
                                                                        if dead.size > 8 else "")
    # longest run of channels with data: [a, b)
    best, a = (0, 0), None
    for i, good in enumerate(np.append(ok, False)):
        if good and a is None:
            a = i
        elif not good and a is not None:
            best, a = max(best, (a, i), key=lambda r: r[1] - r[0]), None
    fix = ("" if best[1] <= best[0] else
           f" The longest run with data is channels {best[0]}-{best[1] - 1} ({edges[best[0]]:.4g}-{edges[best[1]]:.4g} "
           f"um): ifu.isel(energy=slice({best[0]}, {best[1]})), with filters= those inside it.")
    raise ValueError(f"the IFU has {dead.size} wavelength channel(s) with no valid spaxel (every spaxel NaN or "
                     f"masked: a detector gap or a bad channel): channel {named}. The fused cube cannot be "
                     "estimated there (the spectral subspace comes from the IFU's spectra, and each filter must lie "
                     "where the IFU has data), so xfusion refuses rather than invent it: fuse a wavelength range "
                     f"without such channels, as SyFu does (gap-free ranges).{fix}")


def _parse_unit(text):
    """An astropy unit from a data ``units`` attribute (``MJy/str``, the JWST pipeline's spelling, read as MJy/sr);
    None when astropy cannot read it."""
    from astropy import units as u

    t = str(text).strip()
    try:
        return u.Unit(t[:-3] + "sr" if t.endswith("/str") else t)
    except (ValueError, TypeError):
        return None


def ifu_unit_factor(imager, ifu):
    """The factor taking the IFU's data to the imager's flux unit (its variance: the square), 1.0 when the units
    are the same (or the IFU states none: taken to be the imager's). Units astropy converts into each other (the
    same physical type, e.g. Jy/sr and MJy/sr) give the conversion factor; others are refused with both units."""
    um = str(imager["data"].attrs.get("units", "MJy/sr")).strip()
    uh = str(ifu["data"].attrs.get("units", um)).strip()
    if uh == um:
        return 1.0
    a, b = _parse_unit(um), _parse_unit(uh)
    if a is not None and b is not None:
        if a == b:
            return 1.0
        try:
            return float(b.to(a))
        except Exception:  # astropy's UnitConversionError: different physical types
            raise ValueError(f"the imager's data are in {um!r} ({a.physical_type}) but the IFU's in {uh!r} "
                             f"({b.physical_type}): these cannot be converted into each other. Give both as surface "
                             "brightness (e.g. MJy/sr; PIXAR_SR gives a pixel's solid angle)") from None
    raise ValueError(f"the imager's data are in {um!r} but the IFU's in {uh!r}, and astropy cannot read "
                     f"{um if a is None else uh!r} to convert them: give both in one unit (e.g. MJy/sr)")


def _pixel_size(ds, what):
    """The pixel size (arcsec) of ``ds``'s ``x``/``y`` grid, which must be square.

    Along each axis the size is the spacing of the coordinate where it has two or more values (increasing and even
    to 0.1 %: :func:`xfusion.observation.pixel_step`), else its ``pixel_size`` attribute. Pixels whose
    sizes along x and y differ by more than 0.01 % are refused, naming both: the models take one spatial factor
    for both axes and the PSF on square pixels, so rectangular pixels would be silently read as square."""
    size, source = {}, {}
    for c in ("x", "y"):
        if c not in ds.coords:
            raise ValueError(f"the {what} has no '{c}' coordinate (pixel centres in arcsec; see "
                             f"xfusion.jwst.{'imager' if what == 'imager' else 'ifu'}_dataset)")
        attr = ds[c].attrs.get("pixel_size")
        step = pixel_step(ds[c].values, c, who=f" of the {what}", rtol=1e-3)
        if step is None and attr is None:
            raise ValueError(f"the {what}'s {c} coordinate has one value and no pixel_size attribute: set "
                             f"{what}['{c}'].attrs['pixel_size'] (arcsec)")
        size[c], source[c] = (step, "coordinate spacing") if step is not None else (float(attr), "pixel_size")
    if not np.isclose(size["x"], size["y"], rtol=1e-4, atol=0):
        src = ("the x and y coordinates" if set(source.values()) == {"coordinate spacing"} else
               f"x: its {source['x']}, y: its {source['y']}")
        raise ValueError(f"the {what}'s pixels are not square: {size['x']:.6g}\" along x and {size['y']:.6g}\" along y "
                         f"(from {src}). The imager and IFU models use one "
                         "pixel size for both axes (the block factor, the PSF sampling), so they would be treated as "
                         f"square: resample the {what} onto square pixels first (e.g. reproject, or the JWST "
                         "pipeline's resample / cube_build with one pixel scale)")
    for c in ("x", "y"):
        attr = ds[c].attrs.get("pixel_size")
        if attr is not None and source[c] == "coordinate spacing" and not np.isclose(float(attr), size[c], rtol=1e-3):
            raise ValueError(f"the {what}'s {c} pixel_size attribute says {float(attr):.6g}\" but its coordinates are "
                             f"{size[c]:.6g}\" apart: make them agree (set the attribute to the spacing, or give the "
                             "coordinates of the pixel centres)")
    return size["x"]


def _check_inputs(imager, ifu, filters):
    """The checks of an imager + IFU pair (raw layout); returns the imager restricted to ``filters``."""
    check_spectral_units(imager, ifu)
    for ds, what in ((imager, "imager"), (ifu, "ifu")):
        for v in ("data", "variance"):
            if v not in ds:
                raise ValueError(f"the {what} Dataset has no '{v}' variable (see xfusion.jwst.{what}_dataset)")
    if "filter" not in imager.dims or "energy" not in ifu.dims:
        raise ValueError("pass the imager (dims x, y, filter) and the IFU cube (dims x, y, energy = wavelength), "
                         "e.g. from xfusion.jwst.imager_dataset / ifu_dataset or xfusion.io.jwst's readers")
    if ifu.attrs.get("spectral_unit", ifu["energy"].attrs.get("units")) != "um":
        raise ValueError("the IFU's spectral axis must be wavelength in um (attrs spectral_unit='um')")
    all_filters = [str(f) for f in imager["filter"].values]
    use = all_filters if filters is None else [str(f) for f in filters]
    for what, lst in (("the imager", all_filters), ("filters=", use)):
        twice = sorted({f for f in lst if lst.count(f) > 1})
        if twice:
            raise ValueError(f"{what} names filter(s) {twice} more than once ({lst}): give each filter once (the "
                             "same image twice would count twice in the fit)")
    missing = [f for f in use if f not in all_filters]
    if missing:
        raise ValueError(f"filters {missing} are not in the imager (it has {all_filters})")
    im = imager.sel(filter=use)
    px_m, px_h = _pixel_size(im, "imager"), _pixel_size(ifu, "IFU")
    factor = int(round(px_h / px_m))
    if factor < 1 or abs(factor * px_m - px_h) > 1e-6 * px_h:
        raise ValueError(f"the IFU pixel ({px_h}\") is not an integer multiple of the imager's ({px_m}\"); "
                         "resample the imager to IFU pixel / integer (SyFu: 0.1/3\")")
    M, N = im.sizes["x"], im.sizes["y"]
    if (M, N) != (ifu.sizes["x"] * factor, ifu.sizes["y"] * factor):
        raise ValueError(f"the imager field {M}x{N} is not {factor} x the IFU field "
                         f"{ifu.sizes['x']}x{ifu.sizes['y']}: crop both to the common field of view")
    _check_alignment(im, ifu, px_m)
    return im, use, factor


#: a user PSF's nodes may stop short of the fused channels by up to this fraction of the wavelength (warned of:
#: the nearest node's PSF is used there, and the PSF width scales with the wavelength); beyond it, refused
PSF_CLAMP_TOLERANCE = 0.01


def _check_psf_nodes(nodes, wavelengths, warn=True):
    """A user PSF's wavelength nodes (um) against the fused channel centres ``wavelengths`` (um).

    The IFU model interpolates the PSF linearly between nodes and uses the nearest node's PSF beyond them
    (:func:`xfusion.operators.psf.band_weights`). Nodes must be strictly increasing. With two or more nodes,
    channels beyond them by more than ``PSF_CLAMP_TOLERANCE`` (1 %) of their wavelength are refused, naming both
    ranges; by less (down to 1e-6), warned of (``warn``). A single node is a wavelength-independent PSF, used
    everywhere."""
    import warnings

    n = np.asarray(nodes, dtype=np.float64)
    lam = np.asarray(wavelengths, dtype=np.float64)
    if n.size > 1 and np.any(np.diff(n) <= 0):
        raise ValueError(f"the psf's wavelength nodes (psf_energy) must be strictly increasing; got "
                         f"{np.round(n, 5).tolist()} um: sort them (psf.sortby('psf_energy')) and drop repeats")
    if n.size < 2:
        return
    below, above = float(n[0] - lam[0]), float(lam[-1] - n[-1])
    rel = max(below / lam[0], above / lam[-1])
    if rel <= 1e-6:
        return
    text = (f"the psf is given at {n[0]:.4g}-{n[-1]:.4g} um (psf_energy) but the fused channels run from "
            f"{lam[0]:.4g} to {lam[-1]:.4g} um (centres): the PSF of the nearest node would be used beyond the nodes, "
            f"up to {max(below, above):.3g} um ({rel:.1%} of the wavelength) away")
    if rel > PSF_CLAMP_TOLERANCE:
        raise ValueError(f"{text}. Give PSFs at nodes spanning the channels (e.g. at both ends of the band; "
                         "xfusion.jwst.ifu_psf_stack(nodes, imager pixel) for the Gaussian model), or crop the IFU "
                         f"cube to the nodes' range (ifu.sel(energy=slice({n[0]:.4g}, {n[-1]:.4g}))) with the filters "
                         "inside it")
    if warn:
        warnings.warn(f"{text}; within {PSF_CLAMP_TOLERANCE:.0%}, accepted (the PSF width scales with the wavelength, "
                      "so by about that much): give nodes spanning the channels to silence this", UserWarning,
                      stacklevel=4)


def _check_psf(psf, pixel):
    """A user PSF stack: finite, each node summing to 1 (refused beyond 10 %, warned of beyond 1 %: the IFU model's
    block mean would scale the flux by the sum, which the cross-calibration and the fit then absorb), sampled on
    the imager's pixels (``psf_x``/``psf_y`` ``pixel_size`` or coordinate spacing, where known)."""
    import warnings

    for c in ("psf_x", "psf_y"):
        if c not in psf.dims:
            raise ValueError(f"psf has no {c} dimension: it must be (psf_energy [um], psf_x, psf_y) on the imager's "
                             "pixels (see xfusion.jwst.ifu_psf_stack)")
    v = np.asarray(psf.transpose("psf_energy", "psf_x", "psf_y").values, dtype=np.float64)
    bad = ~np.isfinite(v)
    if bad.any():
        raise ValueError(f"the psf has {int(bad.sum())} NaN or inf value(s) (at nodes "
                         f"{sorted(set(np.nonzero(bad)[0].tolist()))}): give a finite PSF (zero outside its support)")
    sums = v.sum(axis=(1, 2))
    nodes = psf["psf_energy"].values
    off = np.abs(sums - 1.0)
    text = ", ".join(f"{float(w):.4g} um: {float(t):.4g}" for w, t in zip(nodes, sums))
    if np.any(off > 0.1):
        raise ValueError(f"the psf does not sum to 1 at every node ({text}): the IFU model is the block mean of the "
                         "PSF-blurred cube, so a PSF summing to s scales the IFU's flux by s (the surface "
                         "brightness is not conserved). Normalize it: psf / psf.sum(('psf_x', 'psf_y'))")
    if np.any(off > 0.01):
        warnings.warn(f"the psf sums to {text} (not 1): the IFU model scales the flux by the sum; normalize it "
                      "(psf / psf.sum(('psf_x', 'psf_y'))) unless the missing flux is real (a truncated PSF)",
                      UserWarning, stacklevel=4)
    for c in ("psf_x", "psf_y"):
        size = psf[c].attrs.get("pixel_size") if c in psf.coords else None
        if size is None and c in psf.coords and psf.sizes[c] > 1 and np.issubdtype(psf[c].dtype, np.number):
            size = float(np.mean(np.diff(psf[c].values)))
        if size is not None and not np.isclose(float(size), pixel, rtol=1e-3):
            raise ValueError(f"the psf is sampled on {float(size):.6g}\" pixels ({c}) but the imager's pixels are "
                             f"{pixel:.6g}\": the IFU PSF acts on the fused cube at the imager's resolution. Resample "
                             "it onto the imager's pixels (xfusion.jwst.ifu_psf_stack(nodes, imager pixel))")


def observations(imager, ifu, *, filters=None, psf=None, margin=1, cross_calibration=True, response=None,
                 n_psf_nodes=5, gamma=1.0):
    r"""The imager and the IFU as xfusion observations, so that :func:`xfusion.fuse` fuses them.

    ``imager``/``ifu``: the JWST layout (:func:`imager_dataset`, :func:`ifu_dataset`, the readers of
    :mod:`xfusion.io.jwst`: ``data``/``variance``/``mask``, MJy/sr). Returns ``(x_obs, y_obs)``:

    * ``x_obs``: ``counts`` (x, y, filter) = the imager's data (not photon counts: the name is the
      schema's; the data term is Gaussian, ``attrs["data_term"] = "gaussian"``), ``variance``,
      ``mask``, and ``filter_response`` (energy, filter): the filter matrix ``R`` of
      :func:`filter_response` over the IFU's wavelength bins, cross-calibrated against the IFU
      (:func:`cross_calibrate`, factors in ``attrs["cross_calibration"]``, JSON) unless
      ``cross_calibration=False``. With ``margin`` > 0 the imager is padded by ``margin`` IFU
      spaxels (``margin * factor`` pixels) on every side, masked there (``mask`` False; the data
      repeat the edge so that the starting point is sensible): the fused field extends beyond the
      observed one, so that sky just outside can spill into the IFU's edge spaxels through its
      broader PSF; :func:`xfusion.fuse` crops the result back to the imager's field.
    * ``y_obs``: ``counts`` (x, y, energy) = the IFU cube, ``variance``, ``mask``, ``psf``
      (psf_energy in um, psf_x, psf_y on the imager's pixels: the IFU PSF *relative to the
      imager's resolution*, default the Gaussian matching kernels of :func:`matching_kernel` at
      ``n_psf_nodes`` wavelengths); ``attrs["gamma"]``: the relative weight of its data term.

    Both carry ``attrs["spectral_unit"] = "um"``; every spectral coordinate has ``units="um"``.
    Both are in the imager's flux unit: an IFU in another unit astropy converts (e.g. Jy/sr next to
    MJy/sr) is converted (:func:`ifu_unit_factor`), any other is refused.
    Pixels must be square, along x and y alike (from the coordinates' spacing and ``pixel_size``): others are
    refused with both sizes. An IFU channel with no valid spaxel (all NaN or masked: a detector gap) is refused,
    naming it and the longest run of channels with data to crop to.
    The inputs are never modified (copies).
    """
    im, use, factor = _check_inputs(imager, ifu, filters)
    b = margin
    if isinstance(b, bool) or not isinstance(b, (int, np.integer)) or b < 0:
        raise ValueError(f"margin must be an integer >= 0 (IFU spaxels); got {margin!r}")
    b, pad = int(b), int(margin) * factor
    gamma = float(gamma)
    if not (np.isfinite(gamma) and gamma > 0):
        raise ValueError(f"gamma (relative weight of the IFU data term) must be finite and > 0; got {gamma!r}")
    edges = _edges(ifu)
    px_m = _pixel_size(im, "imager")
    ym = im["data"].transpose("x", "y", "filter").values.astype(np.float64)
    vm = im["variance"].transpose("x", "y", "filter").values.astype(np.float64)
    mm = im["mask"].transpose("x", "y", "filter").values.astype(bool) if "mask" in im else np.ones(ym.shape, bool)
    unit_factor = ifu_unit_factor(im, ifu)  # e.g. Jy/sr -> MJy/sr: the IFU is converted to the imager's unit
    yh = ifu["data"].transpose("x", "y", "energy").values.astype(np.float64) * unit_factor
    vh = ifu["variance"].transpose("x", "y", "energy").values.astype(np.float64) * unit_factor ** 2
    mh = ifu["mask"].transpose("x", "y", "energy").values.astype(bool) if "mask" in ifu else np.ones(yh.shape, bool)
    R = filter_response(use, edges) if response is None else np.array(response, dtype=np.float64)
    if R.shape != (edges.size - 1, len(use)):
        raise ValueError(f"response must be (IFU channels {edges.size - 1}, filters {len(use)}); got {R.shape}")
    _check_ifu_channels(yh, mh, edges)  # a wholly NaN or masked channel: named, before the checks below
    for what, d, m in (("imager", ym, mm), ("IFU", yh, mh)):  # before the cross-calibration reads them
        bad = m & ~np.isfinite(d)
        if bad.any():
            raise ValueError(f"the {what} data contain {int(bad.sum())} non-finite values where the mask says valid; "
                             "pass mask=False there (e.g. from the DQ extension) -- xfusion never patches them silently")
    empty = [f for i, f in enumerate(use) if not mm[..., i].any()]
    if empty:
        raise ValueError(f"filter(s) {empty} have no valid pixel (all masked: DQ flags, NaN or ERR <= 0): leave "
                         f"them out (filters={[f for f in use if f not in empty]})")
    factors = np.ones(len(use))
    if cross_calibration:
        factors, R = cross_calibrate(ym, yh, R, mm, mh)
    psf_default = psf is None
    if psf is None and (isinstance(n_psf_nodes, bool) or not isinstance(n_psf_nodes, (int, np.integer))
                        or n_psf_nodes < 1):
        raise ValueError(f"n_psf_nodes must be an integer >= 1 (wavelengths of the default PSF stack); got "
                         f"{n_psf_nodes!r}")
    if psf is None:
        psf = _psf_nodes(ifu, px_m, n_psf_nodes)
    elif not (isinstance(psf, xr.DataArray) and "psf_energy" in psf.dims
              and psf["psf_energy"].attrs.get("units") == "um"):
        raise ValueError("psf must be a DataArray (psf_energy [um], psf_x, psf_y) on the imager's pixels (see "
                         "xfusion.jwst.ifu_psf_stack)")
    else:
        _check_psf(psf, px_m)
        _check_psf_nodes(psf["psf_energy"].values, 0.5 * (edges[1:] + edges[:-1]))
    pw = [(pad, pad), (pad, pad), (0, 0)]
    xs = im["x"].values.astype(np.float64)
    ys = im["y"].values.astype(np.float64)
    xa = {**im["x"].attrs, "units": "arcsec", "pixel_size": px_m}
    ya = {**im["y"].attrs, "units": "arcsec", "pixel_size": px_m}
    x_obs = xr.Dataset(coords={"x": ("x", np.concatenate([xs[0] + px_m * np.arange(-pad, 0), xs,
                                                         xs[-1] + px_m * np.arange(1, pad + 1)]), xa),
                               "y": ("y", np.concatenate([ys[0] + px_m * np.arange(-pad, 0), ys,
                                                         ys[-1] + px_m * np.arange(1, pad + 1)]), ya),
                               "filter": ("filter", np.array(use, dtype=object)), **_edges_coords(edges)})
    bunit = str(im["data"].attrs.get("units", "MJy/sr"))
    x_obs["counts"] = (("x", "y", "filter"), np.pad(ym, pw, mode="edge"),
                       {"units": bunit, "long_name": "imager surface brightness (Gaussian data term)"})
    x_obs["variance"] = (("x", "y", "filter"), np.pad(vm, pw, mode="edge"), {"units": f"({bunit})2"})
    x_obs["mask"] = (("x", "y", "filter"), np.pad(mm, pw, constant_values=False))
    x_obs["filter_response"] = (("energy", "filter"), R, {"units": "1", "long_name": "normalized throughput R[l, f] "
                                                          "(cross-calibrated)"})
    keep = {k: v for k, v in imager.attrs.items() if isinstance(v, (str, int, float))}
    x_obs.attrs.update(keep)
    x_obs.attrs.update(name=str(imager.attrs.get("name", "imager")), spectral_unit="um", data_term="gaussian",
                       jwst_role="imager", margin_pixels=pad, cross_calibration=json.dumps(
                           {f: float(c) for f, c in zip(use, factors)}), bunit=bunit,
                       jwst_options=json.dumps({"filters": use, "cross_calibration": bool(cross_calibration),
                                                "margin": b, "gamma": gamma, "n_psf_nodes": int(n_psf_nodes),
                                                "psf": "default" if psf_default else "given",
                                                "response": "default" if response is None else "given"}))
    y_obs = xr.Dataset(coords={c: ifu[c].variable.copy() for c in ("x", "y", "energy", "energy_lo", "energy_hi")})
    y_obs["counts"] = (("x", "y", "energy"), yh.copy(), {"units": bunit})
    y_obs["variance"] = (("x", "y", "energy"), vh.copy(), {"units": f"({bunit})2"})
    y_obs["mask"] = (("x", "y", "energy"), mh.copy())
    y_obs["psf"] = psf.copy(deep=True)
    keep = {k: v for k, v in ifu.attrs.items() if isinstance(v, (str, int, float))}
    y_obs.attrs.update(keep)
    y_obs.attrs.update(name=str(ifu.attrs.get("name", "IFU")), spectral_unit="um", data_term="gaussian",
                       jwst_role="ifu", margin_spaxels=b, gamma=gamma, bunit=bunit)
    if unit_factor != 1.0:
        y_obs.attrs.update(converted_from=str(ifu["data"].attrs.get("units")), unit_factor=unit_factor)
    return x_obs, y_obs


def problem(obs_a, obs_b):
    """The fused grid and the two instrument models of a pair from :func:`observations` (either order), for
    :func:`xfusion.fuse`: ``(grid, [x_obs, y_obs], [names], [imager model, IFU model])``.

    The grid: ``x``, ``y`` of the (padded) imager, ``energy`` (um) of the IFU, the IFU's ``psf``; attrs as
    :func:`xfusion.fusion_grid` plus ``spectral_unit="um"``, ``margin_pixels`` (cropped from the result) and
    ``flux_units`` (the data units). Imager model ``Z -> Z @ R`` (no PSF: the imager's resolution is the
    target); IFU model: wavelength-dependent PSF, block mean (:func:`ifu_model`)."""
    check_spectral_units(obs_a, obs_b)  # keV next to um: refused with the conversion to make
    pair = {o.attrs.get("jwst_role"): o for o in (obs_a, obs_b) if isinstance(o, xr.Dataset)}
    if set(pair) != {"imager", "ifu"}:
        raise ValueError("wavelength (um) observations are fused as an imager + IFU pair: build them with "
                         "xfusion.jwst.observations(imager, ifu) (or pass the JWST Datasets themselves to "
                         "xfusion.fuse); mixing them with X-ray (keV) observations is refused")
    x_obs, y_obs = pair["imager"], pair["ifu"]
    for o in (x_obs, y_obs):
        for v in ("counts", "variance", "mask"):
            if v not in o:
                raise ValueError(f"observation '{o.attrs.get('name')}' has no '{v}': build it with "
                                 "xfusion.jwst.observations")
    px = _pixel_size(x_obs, "imager")
    factor = int(round(_pixel_size(y_obs, "IFU") / px))
    pad, b = int(x_obs.attrs.get("margin_pixels", 0)), int(y_obs.attrs.get("margin_spaxels", 0))
    if pad != b * factor:
        raise ValueError(f"the imager is padded by {pad} pixels but the IFU margin is {b} spaxels of {factor} "
                         "pixels: build both with one call of xfusion.jwst.observations")
    edges = _edges(y_obs)
    if x_obs.sizes["energy"] != edges.size - 1 or not np.allclose(_edges(x_obs), edges, rtol=1e-9, atol=0):
        raise ValueError("the imager's filter_response is not on the IFU's wavelength bins: rebuild the pair with "
                         "xfusion.jwst.observations")
    _check_ifu_channels(y_obs["counts"].transpose("x", "y", "energy").values,
                        y_obs["mask"].transpose("x", "y", "energy").values, edges)
    if "psf" in y_obs and "psf_energy" in y_obs["psf"].dims:  # warned of once, by observations()
        _check_psf_nodes(y_obs["psf"]["psf_energy"].values, 0.5 * (edges[1:] + edges[:-1]), warn=False)
    M, N = x_obs.sizes["x"], x_obs.sizes["y"]
    L = edges.size - 1
    shape = (M, N, L)
    grid = xr.Dataset(coords={"x": x_obs["x"].variable.copy(), "y": x_obs["y"].variable.copy(),
                              **{c: y_obs[c].variable.copy() for c in ("energy", "energy_lo", "energy_hi")}})
    grid["psf"] = y_obs["psf"].copy(deep=True)
    names = [str(x_obs.attrs.get("name", "imager")), str(y_obs.attrs.get("name", "IFU"))]
    grid.attrs.update(spatial_factor=factor, spectral_factor=1, spatial_obs=names[0], spectral_obs=names[1],
                      order="ab" if obs_a is x_obs else "ba", pixel_size=px, spatial_model="jwst",
                      spectral_unit="um", margin_pixels=pad, flux_units=str(x_obs.attrs.get("bunit", "MJy/sr")))
    ix = 0 if obs_a is x_obs else 1
    grid.attrs["roles"] = json.dumps([{"input": ix, "name": names[0], "role": "spatial"},
                                      {"input": 1 - ix, "name": names[1], "role": "spectral"}])
    grid.attrs["explanation"] = (
        f"imager + IFU on a wavelength grid (xfusion.jwst): x, y from '{names[0]}' ({M}x{N} pixels of {px:g}\", "
        f"{pad} of them a masked margin on every side, cropped from the result); wavelength from '{names[1]}' ({L} "
        f"bins, {edges[0]:.4g}-{edges[-1]:.4g} um); imager model Z @ R (filters, no PSF), IFU model: "
        f"wavelength-dependent matching PSF then {factor}x{factor} block mean; Gaussian data terms")
    lam = 0.5 * (edges[1:] + edges[:-1])
    R = x_obs["filter_response"].transpose("energy", "filter").values
    models = [imager_model(R, shape, 0), ifu_model(y_obs["psf"], lam, shape, factor, b)]
    return grid, [x_obs, y_obs], names, models


def sobolev_level(term):
    """The ``level`` of :class:`~xfusion.regularizers.sobolev.Sobolev` for a Gaussian sharp-spatial term: the
    inverse of its mean precision over valid voxels, so the penalty ``(mu / level) ||D W||^2`` is ``mu`` times
    the data term's curvature -- as ``mu / level`` is for a Poisson term (curvature ``1 / m``)."""
    p = term.precision[term.precision > 0]
    return 1.0 / float(p.mean()) if p.size else 1.0


def finish_result(ds, grid, x_obs=None):
    """Label and crop a result of :func:`xfusion.fuse` on a wavelength grid: units from the data
    (``flux`` and the models in e.g. MJy/sr, ``energy`` in um), the margin cropped (every variable on
    ``x``/``y``), the cross-calibration recorded. Returns a new Dataset."""
    pad = int(grid.attrs.get("margin_pixels", 0))
    if pad:
        ds = ds.isel(x=slice(pad, ds.sizes["x"] - pad), y=slice(pad, ds.sizes["y"] - pad))
    units = str(grid.attrs.get("flux_units", ""))
    ds["flux"].attrs.update(units=units, long_name="fused cube at the imager's resolution (wavelength in um)")
    for v in ("model_spatial", "counts_spatial", "model_spectral", "counts_spectral", "coefficients"):
        if v in ds:
            ds[v].attrs["units"] = units
    for v in ("model_spatial", "model_spectral"):
        if v in ds:
            ds[v].attrs["long_name"] = ds[v].attrs.get("long_name", "").replace("counts", "data")
    for k in ("data_term", "objective"):
        if k in ds:
            ds[k].attrs["long_name"] = ("Gaussian data terms sum gamma w (d - m)^2 / (2 var) over both data sets"
                                        if k == "data_term" else "objective = data_term + penalty")
    ds.attrs.update(flux_units=units, spectral_unit="um", margin_pixels=pad)
    if x_obs is not None:
        for k in ("cross_calibration", "jwst_options"):
            if k in x_obs.attrs:
                ds.attrs[k] = x_obs.attrs[k]
    return ds


def _recorded_options(result):
    """The options of :func:`observations` a result was fitted with (``attrs["jwst_options"]``); for a result
    without them (older): the filters of ``model_spatial`` and ``cross_calibration`` False when every recorded
    factor is exactly 1."""
    if "jwst_options" in result.attrs:
        return json.loads(result.attrs["jwst_options"])
    opts = {}
    if "model_spatial" in result and "filter" in result["model_spatial"].coords:
        opts["filters"] = [str(f) for f in result["model_spatial"]["filter"].values]
    if "cross_calibration" in result.attrs:
        cal = json.loads(result.attrs["cross_calibration"])
        opts["cross_calibration"] = not all(float(c) == 1.0 for c in cal.values())
    return opts


def observations_for(result, imager, ifu):
    """:func:`observations` of ``imager`` and ``ifu`` (the JWST layout) with the options ``result`` was fitted
    with (filters, cross-calibration, margin, gamma, PSF nodes: ``attrs["jwst_options"]``), for
    :func:`xfusion.uncertainty`. A fit with a user PSF or response cannot be rebuilt from the raw Datasets:
    refused (pass the observations built for the fit)."""
    opts = _recorded_options(result)
    given = [k for k in ("psf", "response") if opts.get(k) == "given"]
    if given:
        raise ValueError(f"the result was fitted with a user {' and '.join(given)}, which it does not record: pass "
                         f"the observations it was fitted on, xfusion.jwst.observations(imager, ifu, "
                         f"{', '.join(f'{k}=...' for k in given)}, ...), instead of the raw imager and IFU")
    kw = {k: opts[k] for k in ("filters", "cross_calibration", "margin", "gamma", "n_psf_nodes") if k in opts}
    if "filters" in kw:
        have = [str(f) for f in imager["filter"].values]
        missing = [f for f in kw["filters"] if f not in have]
        if missing:
            raise ValueError(f"the result was fitted on the filters {kw['filters']} but the imager has no "
                             f"{missing} (it has {have}): pass the imager the result was fitted on")
    return observations(imager, ifu, **kw)


def check_observations_match(result, x_obs, y_obs):
    """Refuse imager + IFU observations that are not those ``result`` was fitted on: other filters, another
    cross-calibration (e.g. ``cross_calibration`` True against False), margin or IFU weight ``gamma``."""
    opts = _recorded_options(result)
    use = [str(f) for f in x_obs["filter"].values]
    fit = opts.get("filters")
    if fit is not None and list(fit) != use:
        raise ValueError(f"the result was fitted on the filters {list(fit)} but the observations hold {use}: pass "
                         f"the imager restricted to the fitted filters (imager.sel(filter={list(fit)})) or its "
                         "raw Datasets (rebuilt with the fit's options)")
    if "cross_calibration" in result.attrs and "cross_calibration" in x_obs.attrs:
        a, b = json.loads(result.attrs["cross_calibration"]), json.loads(x_obs.attrs["cross_calibration"])
        if set(a) == set(b) and any(not np.isclose(a[f], b[f], rtol=1e-9, atol=0) for f in a):
            raise ValueError(f"the result's cross-calibration factors {a} differ from the observations' {b}: they "
                             "were built with other options (cross_calibration=, response=) or other data. Pass the "
                             "observations the result was fitted on")
    pad = result.attrs.get("margin_pixels")
    if pad is not None and int(pad) != int(x_obs.attrs.get("margin_pixels", 0)):
        raise ValueError(f"the result was fitted with a margin of {int(pad)} imager pixels but the observations have "
                         f"{int(x_obs.attrs.get('margin_pixels', 0))}: build them with the fit's margin")
    g = opts.get("gamma")
    if g is not None and not np.isclose(float(g), float(y_obs.attrs.get("gamma", 1.0)), rtol=1e-12):
        raise ValueError(f"the result was fitted with gamma={g} but the IFU observation has gamma="
                         f"{y_obs.attrs.get('gamma', 1.0)}: build the observations with the fit's gamma")


def fuse_jwst(imager, ifu, *, psf=None, filters=None, rank=None, mu=DEFAULT_MU, gamma=1.0, max_iter=300, tol=1e-6,
              cross_calibration=True, response=None, n_psf_nodes=5, margin=1, dtype="float64", progress=False):
    r"""Fuse an imager and an IFU Dataset (:func:`imager_dataset`, :func:`ifu_dataset`, or the readers of
    :mod:`xfusion.io.jwst`) into a cube at the imager's resolution and the IFU's wavelengths: a thin
    convenience over :func:`xfusion.fuse` (``observations`` -> ``fuse(..., regularization="lowrank_sobolev")``)
    with the JWST defaults and SyFu's vocabulary.

    Objective (subspace ``Z = W V``, ``V`` the ``rank`` leading vectors of the IFU spectra:
    their mean and principal components, orthonormal):

    .. math:: \frac12 \sum \frac{(Y_m - R^T Z)^2}{\sigma_m^2}
              + \frac{\gamma}2 \sum \frac{(Y_h - S K Z)^2}{\sigma_h^2}
              + \mu\, \bar p_m \|D W\|^2

    -- Gaussian data terms with the per-voxel variances (:class:`xfusion.gaussian.GaussianTerm`),
    ``gamma`` the relative weight of the IFU (1 = maximum likelihood), a Sobolev penalty
    whose weight ``mu`` is relative to the imager's mean precision ``p_m`` (so ``mu`` does not
    depend on the flux units; ``mu="auto"``: chosen by Gaussian data fission,
    :func:`xfusion.gaussian_fission.fission`), solved by accelerated proximal gradient
    (:class:`~xfusion.solvers.subspace.SubspaceFISTA`, per-pixel preconditioning).
    ``psf``: the IFU PSF relative to the target resolution (psf_energy in um, nodes spanning the fused
    channels: refused beyond 1 % of the wavelength, warned of within); default the
    Gaussian matching kernels of :func:`matching_kernel` at ``n_psf_nodes`` wavelengths.
    ``filters``: the subset of imager filters to fuse (the others are held out).
    ``rank``: dimension of the spectral subspace; None = ``min(DEFAULT_RANK, F + 1)`` with F the
    number of filters fused -- the imager constrains F combinations per pixel, components beyond
    those are seen only at the IFU's resolution (measured on the toy without margin, 5 filters: rank 4/5/6 ->
    NMSE 27.7/30.5/29.7 dB; 3 filters: held-out F187N PSNR 36.7 dB at rank 4, 32.5 at rank 5).
    ``cross_calibration``: apply :func:`cross_calibrate` (factors reported in the result).
    ``margin``: IFU spaxels by which the unknown extends beyond the field on every side
    (constrained by the IFU's edge spaxels and the smoothness only, cropped from the result):
    the sky beyond the field spills into the edge spaxels through the broader IFU PSF, which a
    model ending at the field edge cannot explain (measured on the toy: reduced chi2 of the
    edge spaxels 4.8 at the truth without a margin).

    Returns :func:`xfusion.fuse`'s Dataset (``flux`` (x, y, energy) in the data units, ``energy`` =
    wavelength in um; ``model_spatial``/``counts_spatial`` (x, y, filter): the imager's model and data;
    ``model_spectral``/``counts_spectral``: the IFU's; ``basis``, ``coefficients``, histories) plus, in
    SyFu's vocabulary, ``model_imager``, ``model_ifu``, ``cross_calibration`` (filter), ``response``
    (energy, filter), and attrs ``chi2_imager``, ``chi2_ifu`` (reduced chi-square), ``rank``, ``mu``,
    ``gamma``, ``filters``, ``margin``.
    """
    from .fuse import fuse

    x_obs, y_obs = observations(imager, ifu, filters=filters, psf=psf, margin=margin,
                                cross_calibration=cross_calibration, response=response, n_psf_nodes=n_psf_nodes,
                                gamma=gamma)
    use = [str(f) for f in x_obs["filter"].values]
    if rank is None:
        rank = min(DEFAULT_RANK, len(use) + 1)
    res = fuse(x_obs, y_obs, regularization="lowrank_sobolev", rank=rank, mu=mu, max_iter=max_iter, tol=tol,
               dtype=dtype, progress=progress)
    pad = int(x_obs.attrs["margin_pixels"])
    inner = x_obs.isel(x=slice(pad, x_obs.sizes["x"] - pad), y=slice(pad, x_obs.sizes["y"] - pad))
    chi2 = {}
    for key, obs, mod in (("imager", inner, "model_spatial"), ("ifu", y_obs, "model_spectral")):
        dims = obs["counts"].dims
        m = res[mod].rename({"x_spectral": "x", "y_spectral": "y"} if key == "ifu" else {}).transpose(*dims).values
        t = GaussianTerm(_Shape(m.shape), obs["counts"].values, obs["variance"].values, obs["mask"].values,
                         float(obs.attrs.get("gamma", 1.0)))
        chi2[key] = t.chi2_reduced(m)
    res["model_imager"] = res["model_spatial"]
    res["model_ifu"] = res["model_spectral"].rename({"x_spectral": "x_ifu", "y_spectral": "y_ifu"})
    cal = json.loads(x_obs.attrs["cross_calibration"])
    res["cross_calibration"] = (("filter",), np.array([cal[f] for f in use]))
    res["response"] = (("energy", "filter"), x_obs["filter_response"].transpose("energy", "filter").values)
    res.attrs.update(rank=int(rank), mu=float(json.loads(res.attrs["parameters"])["mu"]), gamma=float(gamma),
                     filters=",".join(use), margin=int(margin), chi2_imager=chi2["imager"], chi2_ifu=chi2["ifu"],
                     n_iter=int(res.attrs["iterations"]))
    return res


class _Shape:
    """Stand-in model carrying only ``data_shape`` (a GaussianTerm used to evaluate chi2)."""

    def __init__(self, shape):
        self.data_shape = tuple(shape)


def held_out_check(imager, ifu, held_out, **options):
    """SyFu's held-out-filter test: fuse without the filters ``held_out``, integrate the fused cube over
    their throughputs (cross-calibrated against the IFU like the others) and compare with their images.

    Returns ``(result, {filter: {"psnr_db", "ssim"}})``. ``DEFAULT_MU`` was measured for five filters; with
    fewer, pass ``mu="auto"`` (data fission on the fused filters and the IFU only, never the held-out images):
    on the toy it picks 0.001 and lifts held-out F212N from 28.3 to 30.7 dB (seed 0; docs/jwst.rst).
    Masked imager pixels do not count (:func:`held_out_scores`).
    """
    names = [str(f) for f in imager["filter"].values]
    held = [held_out] if isinstance(held_out, str) else [str(f) for f in held_out]
    keep = check_held_out(names, held)
    res = fuse_jwst(imager, ifu, filters=keep, **options)
    return res, held_out_scores(imager, ifu, res["flux"].values, held, options.get("cross_calibration", True))


def check_held_out(names, held):
    """The filters to fuse when ``held`` (names) are held out of the imager's ``names``: refuses unknown or
    repeated names and holding out every filter (before any fusion)."""
    unknown = [f for f in held if f not in names]
    if unknown:
        raise ValueError(f"held-out filters {unknown} are not in the imager (it has {names}; names are "
                         "case-sensitive)")
    if len(set(held)) != len(held):
        raise ValueError(f"held-out filters {held} name a filter twice")
    keep = [f for f in names if f not in held]
    if not keep or not held:
        raise ValueError(f"held_out must name some, not all, of the imager's filters {names}; got {held}")
    return keep


def held_out_scores(imager, ifu, flux, held, cross_calibration=True):
    """PSNR and SSIM of the filters ``held`` (held out of the fit) against a fused cube ``flux`` (x, y, energy) on
    the imager's field: each integrated over its throughput, cross-calibrated against the IFU over the common
    valid field (:func:`cross_calibrate` with the masks); masked imager pixels do not count (replaced by the
    prediction, as :func:`xfusion.metrics.jwst_validation`). Returns ``{filter: {"psnr_db", "ssim"}}``."""
    from .metrics import psnr, ssim_image

    sel = imager.sel(filter=held)
    ym = sel["data"].transpose("x", "y", "filter").values.astype(np.float64)
    mm = sel["mask"].transpose("x", "y", "filter").values.astype(bool) if "mask" in sel else np.isfinite(ym)
    yh = ifu["data"].transpose("x", "y", "energy").values.astype(np.float64) * ifu_unit_factor(imager, ifu)
    mh = ifu["mask"].transpose("x", "y", "energy").values.astype(bool) if "mask" in ifu else np.isfinite(yh)
    R = filter_response(held, _edges(ifu))
    if cross_calibration:
        _, R = cross_calibrate(ym, yh, R, mm, mh)
    pred = np.asarray(flux, dtype=np.float64) @ R
    out = {}
    for i, f in enumerate(held):
        if not mm[..., i].any():
            raise ValueError(f"the held-out filter {f} has no valid pixel: it cannot be compared")
        obs = np.where(mm[..., i], ym[..., i], pred[..., i])
        out[f] = {"psnr_db": psnr(obs, pred[..., i]), "ssim": ssim_image(obs, pred[..., i])}
    return out
