r"""Randomized test scenes of distinct kinds, simulated by code independent of xfusion's operators.

``make(kind, seed=0, *, counts=3e6, psf_pixels=3.0, response="gaussian", geometry="table1",
size="default", band=None, noise=True, **physics) -> (x_obs, y_obs, truth)``

``suite(split="tune" | "heldout", n=24) -> list of specs`` (deterministic; the two splits use
disjoint seeds) and ``from_spec(spec, size=None)`` build the benchmark suite.

Kinds
-----
``snr_shell``      a clumpy expanding shell (0.5-1.4 keV, O/Fe/Ne/Mg lines): the near and far
                   halves of the shell give two Doppler-split narrow lines per pixel (merging
                   at the limb), plus compact ejecta knots with their own velocities.
``cluster_core``   a galaxy-cluster core (6.2-7.0 keV, Fe XXV/XXVI): beta-model brightness
                   with sloshing, cool core, a bulk-velocity gradient, spatially varying
                   turbulent + thermal broadening, sometimes an infalling group at another
                   velocity (double lines where they overlap).
``synchrotron``    a pulsar-wind nebula: power law with a photon index that steepens outwards,
                   torus, jets and a point-like pulsar; no lines.
``point_sources``  4-25 point sources (power laws or coronal thermal spectra) on diffuse
                   thermal emission with lines.
``mixed``          thermal blobs (lines, own velocities) and non-thermal filaments (power law)
                   with different morphologies: line- and continuum-dominated regions.

Truth and conventions
---------------------
``truth`` is a Dataset on the fused grid with ``flux`` (x, y, energy): photon flux per voxel
(ph cm-2 s-1) at the TARGET resolution -- the sky blurred by the sharp-spatial instrument's
PSF and by the sharp-spectral instrument's line spread (Gaussian, sigma ``lsf_sigma_kev``),
exactly the convention of :mod:`xfusion.toy`; and (x, y) maps of the same blurred sky:

* ``velocity`` (km/s, + = receding, ``E = E0 / (1 + v/c)``): emission-weighted mean
  line-of-sight velocity of the reference line (attr ``line_energy_kev``);
* ``line_width`` (km/s): emission-weighted velocity dispersion of that line (thermal +
  turbulent + the spread of velocities along the line of sight and within the PSF; the
  instrumental spread ``lsf_sigma_kev`` is NOT included);
* ``line_flux`` (ph cm-2 s-1): flux of the reference line;
* ``temperature`` (keV, emission-weighted, thermal kinds) and/or ``index`` (photon index,
  emission-weighted, kinds with power laws).

Maps are NaN where the quantity is undefined (no line emission, no thermal or no
non-thermal component); ``synchrotron`` has no lines (attr ``has_lines = 0``, velocity and
width all NaN). The attrs also give ``line_window_kev`` and ``continuum_kev`` for
:func:`xfusion.analysis.line_map` (:func:`line_map_args`), and every setting (kind, seed, counts, ...).

The ``velocity``, ``line_width`` and ``line_flux`` maps are the physical parameters of the
reference line ALONE (its own emission measure, velocities and dispersions), not what
:func:`xfusion.analysis.line_map` measures in ``line_window_kev``. In the soft band (O VIII
Ly-alpha) the window holds no other line and the two agree (about 30 km/s RMS, flux within
5 %, tests/test_scenes.py). In the Fe K band the window around Fe XXV w (6.7004 keV, half-width
up to 30 eV) also takes in Fe XXV y (6.6823 keV) and the wing of x (6.6676 keV), which are in the
truth cube: ``line_map`` of the PERFECT cube then differs from these maps by 130-260 km/s RMS in
velocity and +20-35 % in line flux. Compare a fused cube's line maps with ``line_map`` of the
truth cube measured with the same arguments (what ``benchmarks/suite.py`` and
``benchmarks/mosaic_suite.py`` do), never with these maps directly. The rest energies (keV) of the
other lines whose Doppler-shifted and broadened profiles reach into the window are in the attr
``window_blends_kev`` of the truth and of each of the three maps (an empty list: none).

Instruments and the forward simulation (no inverse crime)
---------------------------------------------------------
Geometries: ``table1`` -- X 10" pixels, Y 30" (spatial factor 3), spectral factor 40
(45x45 fused pixels, 2400 channels of 0.375 eV in 0.5-1.4 keV or 2000 of 0.4 eV in 6.2-7.0
keV); ``xmm_resolve`` -- X 5" pixels (EPIC-pn-like), Y 30" (factor 6, a 6x6 Resolve-like
array), 0.5 eV fine channels, 5 eV pn channels (factor 10). ``size="small"`` gives 24x24
pixels x 600 channels (same factors); ``size=(n_pixels, n_channels)`` anything divisible.

``psf_pixels`` is the Y PSF width (Gaussian sigma, or the core sigma of the realistic PSF)
in fused pixels. ``response="gaussian"``: flat effective areas, Gaussian Y PSF, Gaussian X
line spread (kernel). ``response="realistic"``: shaped ARFs with edges (pn-like,
Resolve-like), an X RMF whose resolution follows Fano + read noise with an asymmetric
low-energy tail and shoulder, a Y PSF with a Gaussian core and King wings whose width and
wing fraction grow with energy (given to xfusion as a 5-band stack; the data are simulated
from a 17-band description -- a small calibration mismatch on purpose).

The data are simulated here with SciPy/NumPy only: FFT convolution (``fftconvolve``) of
each channel with the PSF at its energy, explicit reshape-sums for rebinning, and an
explicit response-matrix product whose rows are the analytic response at each fused bin
centre (error functions), never with :mod:`xfusion.operators`. ``tests/test_scenes.py``
checks that the simulator and ``xfusion.predict`` agree in expectation. ``noise=False``
returns the expected counts (not integers) instead of a Poisson draw.

Randomness: the sky is drawn from ``default_rng([seed, kind, 0])`` and the noise from
``default_rng([seed, kind, 1])``, so changing ``counts`` or ``psf_pixels`` keeps the sky.
"""
from __future__ import annotations

import functools
import numbers

import numpy as np
import xarray as xr
from scipy import ndimage
from scipy.special import ndtr

from .observation import observation

__all__ = ["KINDS", "GEOMETRIES", "RESPONSES", "make", "suite", "from_spec", "describe"]

KINDS = ("snr_shell", "cluster_core", "synchrotron", "point_sources", "mixed")
RESPONSES = ("gaussian", "realistic")
C_KMS = 299792.458
#: amu in keV (for thermal broadening)
AMU_KEV = 931494.1

#: pixel (arcsec), spatial factor, spectral factor, fused pixels, fine-channel width (keV) per band
GEOMETRIES = {
    "table1": {"pixel": 10.0, "vs": 3, "vl": 40, "n": 45, "channels": {"soft": 2400, "fe_k": 2000},
               "lsf_ev": 2.5, "x_sigma_ev": {"soft": 21.0, "fe_k": 50.0}, "x_psf_px": 1.0},
    "xmm_resolve": {"pixel": 5.0, "vs": 6, "vl": 10, "n": 36, "channels": {"soft": 1800, "fe_k": 1600},
                    "lsf_ev": 2.1, "x_sigma_ev": {"soft": 33.0, "fe_k": 59.0}, "x_psf_px": 1.3},
}
SMALL = (24, 600)
BANDS = {"soft": (0.5, 1.4), "fe_k": (6.2, 7.0)}
#: reference line per band: rest energy (keV), line-free continuum side bands, largest window half-width
REFERENCE = {
    "soft": {"name": "O VIII Ly-alpha", "energy": 0.6536, "continuum": [(0.600, 0.630), (0.677, 0.700)],
             "max_half": 0.0225},
    "fe_k": {"name": "Fe XXV w", "energy": 6.7004, "continuum": [(6.22, 6.36), (6.78, 6.90)],
             "max_half": 0.030},
}
#: lines: (energy keV, relative strength, temperature of peak emissivity keV, ion mass amu)
LINES = {
    "soft": [
        (0.5610, 0.45, 0.20, 16), (0.5687, 0.20, 0.20, 16), (0.5740, 0.75, 0.20, 16),
        (0.6536, 1.00, 0.35, 16), (0.7746, 0.15, 0.35, 16),
        (0.7252, 0.35, 0.50, 56), (0.7389, 0.30, 0.50, 56), (0.8124, 0.20, 0.50, 56), (0.8258, 0.55, 0.50, 56),
        (0.8728, 0.30, 0.70, 56), (0.9051, 0.30, 0.35, 20), (0.9149, 0.20, 0.35, 20), (0.9220, 0.70, 0.35, 20),
        (1.0218, 0.45, 0.65, 20), (1.0737, 0.10, 0.35, 20), (1.2109, 0.08, 0.65, 20),
        (1.3311, 0.12, 0.60, 24), (1.3431, 0.08, 0.60, 24), (1.3522, 0.35, 0.60, 24),
    ],
    "fe_k": [
        (6.6366, 0.35, 4.0, 56), (6.6676, 0.22, 4.0, 56), (6.6823, 0.18, 4.0, 56), (6.7004, 1.00, 4.0, 56),
        (6.5400, 0.15, 1.5, 56), (6.6100, 0.12, 2.2, 56),
        (6.9520, 0.18, 9.0, 56), (6.9732, 0.36, 9.0, 56),
    ],
}

#: sky parameters that ``make(**physics)`` can fix instead of drawing them (lengths in fused pixels unless
#: noted; velocities km/s; temperatures keV; ``line_ratio``: total line / total continuum flux in the band):
#: snr_shell ``radius`` (px), ``thickness`` (fraction of the radius), ``v_exp``, ``sigma_turb``, ``kT``
#: (low, high), ``line_ratio``, ``n_knots``, ``clumpiness`` (log-normal sigma); cluster_core ``core_radius``
#: (px), ``beta``, ``kT_in``, ``kT_out``, ``v_gradient`` (across half the field), ``sigma_turb``,
#: ``line_ratio``, ``subcluster`` (bool); synchrotron ``index_centre``, ``index_steepening`` (added at the
#: radius), ``radius`` (px); point_sources ``n_sources``, ``point_fraction`` (of the continuum flux), ``kT``
#: (low, high), ``v_gradient``, ``line_ratio``; mixed ``n_blobs``, ``thermal_fraction``, ``kT`` (low, high),
#: ``v_blob`` (blob velocities drawn in +-v_blob), ``line_ratio``.
#: valid values of each physics parameter (session 30: point_fraction=1.5 gave negative point-source fluxes, then a
#: mostly zero cube; n_blobs=0, thermal_fraction=0 or core_radius=0 failed as "counts contain NaN"; subcluster="no" was
#: taken as true): "pos" a finite number > 0, "nonneg" >= 0, "real" any finite number, "count" an integer >= 0,
#: "count1" an integer >= 1, "bool" True / False, "kT" a pair (low, high) 0 < low <= high keV, or (lo, hi, lo_open,
#: hi_open) bounds of a finite number.
PHYSICS_RANGES = {
    "radius": "pos", "thickness": "pos", "v_exp": "nonneg", "sigma_turb": "nonneg", "kT": "kT", "line_ratio": "nonneg",
    "n_knots": "count", "clumpiness": "nonneg", "core_radius": "pos", "beta": "pos", "kT_in": "pos", "kT_out": "pos",
    "v_gradient": "real", "subcluster": "bool", "index_centre": "real", "index_steepening": "real",
    "n_sources": "count1", "point_fraction": (0.0, 1.0, False, True), "n_blobs": "count1",
    "thermal_fraction": (0.0, 1.0, True, False), "v_blob": "nonneg",
}
_RANGE_TEXT = {"pos": "a finite number > 0", "nonneg": "a finite number >= 0", "real": "a finite number",
               "count": "an integer >= 0", "count1": "an integer >= 1", "bool": "True or False",
               "kT": "a pair (low, high) of temperatures in keV with 0 < low <= high"}


def _check_physics(kind, physics):
    """Refuse a physics override outside its meaning (:data:`PHYSICS_RANGES`), naming it and the valid range."""
    def real(v):
        return not isinstance(v, (bool, np.bool_)) and isinstance(v, numbers.Real) and bool(np.isfinite(v))

    for key, v in physics.items():
        rule = PHYSICS_RANGES[key]
        if isinstance(rule, tuple):
            lo, hi, lo_open, hi_open = rule
            ok = real(v) and (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
            text = f"a number in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
        else:
            text = _RANGE_TEXT[rule]
            if rule in ("count", "count1"):
                ok = isinstance(v, numbers.Integral) and not isinstance(v, (bool, np.bool_)) and v >= (rule == "count1")
            elif rule == "bool":
                ok = isinstance(v, (bool, np.bool_))
            elif rule == "kT":
                ok = (isinstance(v, (tuple, list)) and len(v) == 2 and all(real(t) and t > 0 for t in v)
                      and v[0] <= v[1])
            else:
                ok = real(v) and (rule == "real" or v > 0 or (rule == "nonneg" and v == 0))
        if not ok:
            raise ValueError(f"scene physics parameter {key!r} of kind {kind!r} must be {text}; got {v!r}")


PHYSICS = {
    "snr_shell": ("radius", "thickness", "v_exp", "sigma_turb", "kT", "line_ratio", "n_knots", "clumpiness"),
    "cluster_core": ("core_radius", "beta", "kT_in", "kT_out", "v_gradient", "sigma_turb", "line_ratio",
                     "subcluster"),
    "synchrotron": ("index_centre", "index_steepening", "radius"),
    "point_sources": ("n_sources", "point_fraction", "kT", "v_gradient", "line_ratio"),
    "mixed": ("n_blobs", "thermal_fraction", "kT", "v_blob", "line_ratio"),
}


# =============================================================================== helpers
def _smooth(rng, shape, sigma):
    g = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
    return g / max(float(g.std()), 1e-12)


def _grid(n):
    """Pixel coordinates (fused pixels) centred on the field, (n, n) each (x first)."""
    c = np.arange(n) - (n - 1) / 2.0
    return np.meshgrid(c, c, indexing="ij")


def _pick(physics, key, draw):
    return physics[key] if key in physics else draw


def _stamp(fn, half):
    """Odd (2 half + 1)^2 stamp of a radial profile integrated over pixels (5x5 sub-samples), sum 1."""
    sub = (np.arange(5) - 2) / 5.0
    r = np.arange(-half, half + 1)
    xx = (r[:, None] + sub[None, :]).reshape(-1)
    img = fn(xx[:, None] ** 2 + xx[None, :] ** 2)
    n = 2 * half + 1
    img = img.reshape(n, 5, n, 5).sum(axis=(1, 3))
    return img / img.sum()


def _gauss_profile(sigma):
    return lambda r2: np.exp(-0.5 * r2 / sigma ** 2)


def _realistic_profile(sigma, wing):
    """Gaussian core (sigma) + King wings (core radius 2 sigma, beta 1.5), wing fraction ``wing``."""
    def f(r2):
        g = np.exp(-0.5 * r2 / sigma ** 2) / (2 * np.pi * sigma ** 2)
        rc = 2.0 * sigma
        k = (1 + r2 / rc ** 2) ** -1.5 / (np.pi * rc ** 2 / 0.5)  # beta=1.5 King, normalized to 1 over the plane
        return (1 - wing) * g + wing * k
    return f


def _blur(arr, psf, chunk=300):
    """Same-size linear convolution (zero boundary) of every (x, y) slice with ``psf`` (scipy FFT)."""
    from scipy.signal import fftconvolve  # here: scipy.signal costs ~1 s to import, and ``import xfusion`` imports this

    if arr.ndim == 2:
        return fftconvolve(arr, psf, mode="same")
    out = np.empty_like(arr)
    k = psf[:, :, None]
    for s in range(0, arr.shape[2], chunk):
        out[:, :, s:s + chunk] = fftconvolve(arr[:, :, s:s + chunk], k, mode="same", axes=(0, 1))
    return out


def _rebin_xy(arr, v):
    M, N = arr.shape[:2]
    return arr.reshape(M // v, v, N // v, v, *arr.shape[2:]).sum(axis=(1, 3))


# =============================================================================== spectra
class _Spectra:
    """Accumulates the sky cube (P, L) and the moment maps of the reference line, per pixel."""

    def __init__(self, shape, edges, band, lsf_kev):
        self.shape = shape
        self.P = shape[0] * shape[1]
        self.edges = edges
        self.e = 0.5 * (edges[1:] + edges[:-1])
        self.band = band
        self.lsf = lsf_kev
        self.cont = np.zeros((self.P, self.e.size))
        self.lines = np.zeros((self.P, self.e.size))
        self.E0 = REFERENCE[band]["energy"]
        self.m = np.zeros((3, self.P))  # reference line: sum a, sum a v, sum a (v^2 + s^2)
        self.t = np.zeros((2, self.P))  # thermal continuum weight, weight * kT
        self.g = np.zeros((2, self.P))  # power-law weight, weight * index
        self.vmax, self.smax = 0.0, 0.0

    def thermal_spectrum(self, kT):
        """Unit-emission-measure photon spectra kT^-0.5 E^-1.2 exp(-E/kT), integrated over the bins: (n, L)."""
        kT = np.maximum(np.atleast_1d(np.asarray(kT, dtype=np.float64)).ravel(), 0.05)
        de = np.diff(self.edges)
        return kT[:, None] ** -0.5 * self.e[None, :] ** -1.2 * np.exp(-self.e[None, :] / kT[:, None]) * de

    def power_law_spectrum(self, index):
        """Unit-amplitude photon power laws E^-index (per keV) integrated over the bins: (n, L)."""
        index = np.atleast_1d(np.asarray(index, dtype=np.float64)).ravel()
        return self.e[None, :] ** -index[:, None] * np.diff(self.edges)

    def add(self, amp, spec, kT=None, index=None):
        """Add ``amp[:, None] * spec`` (amp (M, N) or (P,), spec (P, L) or (1, L)) to the continuum cube and
        its flux weight to the temperature (``kT``) or index (``index``) moment maps. Returns the flux map (P,)."""
        amp = np.asarray(amp, dtype=np.float64).ravel()
        c = amp[:, None] * spec
        self.cont += c
        w = c.sum(axis=1)
        if kT is not None:
            self.t += np.stack([w, w * np.broadcast_to(np.asarray(kT, dtype=np.float64).ravel(), w.shape)])
        if index is not None:
            self.g += np.stack([w, w * np.broadcast_to(np.asarray(index, dtype=np.float64).ravel(), w.shape)])
        return w

    def thermal_continuum(self, em, kT):
        return self.add(em, self.thermal_spectrum(kT), kT=np.maximum(np.asarray(kT).ravel(), 0.05))

    def power_law(self, amp, index):
        return self.add(amp, self.power_law_spectrum(index), index=index)

    def thermal_lines(self, em, kT, velocity, sigma_turb, strength):
        """Lines of a plasma at kT with LOS velocity (km/s) and turbulent sigma (km/s): adds Gaussians.

        Each line ``(E_l, s_l, T_l, A_l)`` gets flux ``em * strength * s_l * exp(-0.5 (ln(kT/T_l)/0.5)^2)``,
        centre ``E_l / (1 + v/c)`` and sigma ``E_l sqrt(sigma_turb^2 + kT/(A_l amu) c^2)/c`` (+ the LSF in
        quadrature), integrated over the channels with error functions, only where it matters.
        """
        em, kT = em.ravel(), np.maximum(kT.ravel(), 0.05)
        v, st, strength = velocity.ravel(), sigma_turb.ravel(), np.broadcast_to(strength, self.shape).ravel()
        active = np.flatnonzero(em > 1e-9 * max(em.max(), 1e-300))
        if active.size == 0:
            return
        for E_l, s_l, T_l, A_l in LINES[self.band]:
            amp = em * strength * s_l * np.exp(-0.5 * (np.log(kT / T_l) / 0.5) ** 2)
            sig_v = np.sqrt(st ** 2 + kT / (A_l * AMU_KEV) * C_KMS ** 2)
            centre = E_l / (1 + v / C_KMS)
            s = np.sqrt((E_l * sig_v / C_KMS) ** 2 + self.lsf ** 2)
            a = active
            lo = np.searchsorted(self.edges, (centre[a] - 7 * s[a]).min()) - 1
            hi = np.searchsorted(self.edges, (centre[a] + 7 * s[a]).max()) + 1
            lo, hi = max(lo, 0), min(hi, self.edges.size - 1)
            if hi <= lo:
                continue
            ed = self.edges[lo:hi + 1]
            u = (ed[None, :] - centre[a, None]) / s[a, None]
            prof = ndtr(u[:, 1:]) - ndtr(u[:, :-1])
            self.lines[a, lo:hi] += amp[a, None] * prof
            if E_l == self.E0:
                self.m += np.stack([amp, amp * v, amp * (v ** 2 + sig_v ** 2)])
                sel = amp > 1e-3 * amp.max()
                if sel.any():
                    self.vmax = max(self.vmax, float(np.abs(v[sel]).max()))
                    self.smax = max(self.smax, float(sig_v[sel].max()))

    def cube(self, line_ratio):
        """Sky cube (M, N, L): continuum + lines scaled so that total line / total continuum flux = line_ratio."""
        tc, tl = self.cont.sum(), self.lines.sum()
        f = line_ratio * tc / tl if (tl > 0 and line_ratio > 0) else 0.0
        self.m *= f
        return (self.cont + f * self.lines).reshape(self.shape + (self.e.size,))


# =============================================================================== skies
def _snr_shell(rng, sp, n, physics):
    X, Y = _grid(n)
    R = _pick(physics, "radius", rng.uniform(0.30, 0.40) * n)
    w = _pick(physics, "thickness", rng.uniform(0.08, 0.15)) * R
    vexp = _pick(physics, "v_exp", rng.uniform(1500.0, 5000.0))
    st = _pick(physics, "sigma_turb", rng.uniform(50.0, 300.0))
    t_lo, t_hi = _pick(physics, "kT", (rng.uniform(0.25, 0.4), rng.uniform(0.6, 1.2)))
    clump = _pick(physics, "clumpiness", rng.uniform(0.4, 0.9))
    cx, cy = rng.uniform(-0.05, 0.05, 2) * n
    rho = np.hypot(X - cx, Y - cy)
    phi = np.arctan2(Y - cy, X - cx)
    # asymmetric expansion: v_exp varies by +-20% with azimuth
    vmap = vexp * (1 + 0.2 * np.cos(phi - rng.uniform(0, 2 * np.pi)))
    z = np.linspace(0, R + 3 * w, 32)[None, None, :]
    r3 = np.sqrt(rho[:, :, None] ** 2 + z ** 2)
    e3 = np.exp(-0.5 * ((r3 - R) / w) ** 2)
    vz = vmap[:, :, None] * z / np.maximum(r3, 1e-9)
    A = e3.sum(axis=2) + 1e-12
    vm = (e3 * vz).sum(axis=2) / A
    vs = np.sqrt(np.maximum((e3 * vz ** 2).sum(axis=2) / A - vm ** 2, 0.0))
    kT = np.exp(np.log(t_lo) + (np.log(t_hi) - np.log(t_lo)) * np.clip(
        0.5 + 0.3 * (X - cx) / R + 0.2 * _smooth(rng, X.shape, n / 10), 0, 1))
    ab = np.exp(0.4 * _smooth(rng, X.shape, n / 15))
    sturb = st * np.exp(0.3 * _smooth(rng, X.shape, n / 12))
    for sign in (-1.0, 1.0):  # near half approaching (blue, v < 0), far half receding
        em = A * np.exp(clump * _smooth(rng, X.shape, n / 20) - 0.5 * clump ** 2)
        sp.thermal_continuum(em, kT)
        sp.thermal_lines(em, kT, sign * vm, np.sqrt(sturb ** 2 + vs ** 2), ab)
    n_knots = _pick(physics, "n_knots", int(rng.integers(1, 4)))
    for _ in range(n_knots):
        ang, rr = rng.uniform(0, 2 * np.pi), R * rng.uniform(0.5, 1.1)
        kx, ky, ks = cx + rr * np.cos(ang), cy + rr * np.sin(ang), rng.uniform(0.8, 2.0)
        em = rng.uniform(2, 6) * A.max() * np.exp(-0.5 * ((X - kx) ** 2 + (Y - ky) ** 2) / ks ** 2)
        tk = np.full(X.shape, rng.uniform(0.5, 1.5))
        sp.thermal_continuum(em, tk)
        sp.thermal_lines(em, tk, np.full(X.shape, rng.uniform(-3000, 3000)), np.full(X.shape, st), 2.0)
    return _pick(physics, "line_ratio", rng.uniform(0.5, 1.5)), {"v_exp_kms": vexp, "radius_px": R}


def _cluster_core(rng, sp, n, physics):
    X, Y = _grid(n)
    rc = _pick(physics, "core_radius", rng.uniform(0.10, 0.25) * n)
    beta = _pick(physics, "beta", rng.uniform(0.55, 0.75))
    t_in = _pick(physics, "kT_in", rng.uniform(2.5, 4.0))
    t_out = _pick(physics, "kT_out", rng.uniform(5.0, 8.0))
    grad = _pick(physics, "v_gradient", rng.uniform(150.0, 600.0))  # km/s across the half field
    st0 = _pick(physics, "sigma_turb", rng.uniform(100.0, 300.0))
    cx, cy = rng.uniform(-0.1, 0.1, 2) * n
    q, th = rng.uniform(0.75, 1.0), rng.uniform(0, np.pi)
    xr_ = (X - cx) * np.cos(th) + (Y - cy) * np.sin(th)
    yr_ = (-(X - cx) * np.sin(th) + (Y - cy) * np.cos(th)) / q
    rho = np.hypot(xr_, yr_)
    phi = np.arctan2(yr_, xr_)
    slosh = 1 + 0.25 * np.sin(phi + 2.0 * np.log1p(rho / rc))
    em = (1 + (rho / rc) ** 2) ** (-3 * beta) * slosh
    kT = (t_out - (t_out - t_in) / (1 + (rho / (1.5 * rc)) ** 2)) * np.exp(0.08 * _smooth(rng, X.shape, n / 8))
    ab = 0.3 + 0.5 * np.exp(-rho / (2 * rc))
    ang = rng.uniform(0, 2 * np.pi)
    v = rng.uniform(-150, 150) + grad * ((X * np.cos(ang) + Y * np.sin(ang)) / (n / 2)) \
        + 60.0 * _smooth(rng, X.shape, n / 6)
    st = st0 * np.exp(0.3 * _smooth(rng, X.shape, n / 8)) * (1 + 0.3 * np.exp(-rho / rc))
    sp.thermal_continuum(em, kT)
    sp.thermal_lines(em, kT, v, st, ab)
    sub = _pick(physics, "subcluster", bool(rng.uniform() < 0.5))
    if sub:
        gx, gy = rng.uniform(-0.3, 0.3, 2) * n + np.array([cx, cy])
        gs = rng.uniform(0.06, 0.12) * n
        emg = rng.uniform(0.3, 0.8) * em.max() * np.exp(-0.5 * ((X - gx) ** 2 + (Y - gy) ** 2) / gs ** 2)
        kg = np.full(X.shape, rng.uniform(2.0, 3.5))
        sp.thermal_continuum(emg, kg)
        sp.thermal_lines(emg, kg, np.full(X.shape, rng.choice([-1, 1]) * rng.uniform(600, 1200)),
                         np.full(X.shape, 150.0), 0.6)
    return _pick(physics, "line_ratio", rng.uniform(0.25, 0.6)), {"subcluster": int(sub), "core_radius_px": rc}


def _synchrotron(rng, sp, n, physics):
    X, Y = _grid(n)
    R = _pick(physics, "radius", rng.uniform(0.3, 0.42) * n)
    g0 = _pick(physics, "index_centre", rng.uniform(1.5, 2.0))
    dg = _pick(physics, "index_steepening", rng.uniform(0.3, 0.8))
    th, inc = rng.uniform(0, np.pi), rng.uniform(0.3, 0.7)
    xr_ = X * np.cos(th) + Y * np.sin(th)
    yr_ = -X * np.sin(th) + Y * np.cos(th)
    rho = np.hypot(X, Y)
    index = g0 + dg * (rho / R) ** 2 + 0.08 * _smooth(rng, X.shape, n / 10)
    neb = np.exp(-0.5 * (xr_ ** 2 / R ** 2 + yr_ ** 2 / (0.7 * R) ** 2) * 2.0)
    neb *= np.exp(0.5 * _smooth(rng, X.shape, n / 25) - 0.125)  # filaments
    torus = np.exp(-0.5 * ((np.hypot(xr_, yr_ / inc) - 0.35 * R) / (0.06 * R + 0.5)) ** 2)
    jets = np.exp(-0.5 * (xr_ ** 2 / (0.06 * R + 0.5) ** 2 + yr_ ** 2 / (0.6 * R) ** 2)) * (np.abs(yr_) > 1)
    amp = neb + 2.0 * torus + 1.2 * jets
    sp.power_law(amp, index)
    psr = np.zeros(X.shape)
    c = X.shape[0] // 2
    psr[c, c] = 0.2 * amp.sum() / 50
    sp.power_law(psr, np.full(X.shape, 1.5))
    return 0.0, {"radius_px": R}


def _diffuse_thermal(rng, sp, n, kT_rng, vgrad, strength=1.0, scale=1.0):
    X, Y = _grid(n)
    cx, cy = rng.uniform(-0.15, 0.15, 2) * n
    rc = rng.uniform(0.2, 0.4) * n
    em = scale * (1 + ((X - cx) ** 2 + (Y - cy) ** 2) / rc ** 2) ** -1.2 * np.exp(0.3 * _smooth(rng, X.shape, n / 10))
    kT = rng.uniform(*kT_rng) * np.exp(0.15 * _smooth(rng, X.shape, n / 6))
    ang = rng.uniform(0, 2 * np.pi)
    v = vgrad * (X * np.cos(ang) + Y * np.sin(ang)) / (n / 2)
    sp.thermal_continuum(em, kT)
    sp.thermal_lines(em, kT, v, np.full(X.shape, 120.0), strength)
    return em


def _point_sources(rng, sp, n, physics):
    X, _ = _grid(n)
    kT = _pick(physics, "kT", (0.3, 0.9))
    _diffuse_thermal(rng, sp, n, kT, _pick(physics, "v_gradient", rng.uniform(100, 400)))
    diffuse = sp.cont.sum()
    k = _pick(physics, "n_sources", int(rng.integers(4, 26)))
    frac = _pick(physics, "point_fraction", rng.uniform(0.2, 0.6))
    fl = 10 ** rng.uniform(0, 2, k)
    fl *= frac / (1 - frac) * diffuse / fl.sum()  # points hold `frac` of the continuum flux
    for i in range(k):
        px, py = rng.uniform(2, n - 3, 2)  # sub-pixel position: bilinear split over 4 pixels
        ix, iy = int(px), int(py)
        fx, fy = px - ix, py - iy
        m = np.zeros(X.shape)
        m[ix, iy], m[ix + 1, iy] = (1 - fx) * (1 - fy), fx * (1 - fy)
        m[ix, iy + 1], m[ix + 1, iy + 1] = (1 - fx) * fy, fx * fy
        if rng.uniform() < 0.7:
            g = rng.uniform(1.4, 2.4)
            spec = sp.power_law_spectrum(g)
            sp.add(m * fl[i] / spec.sum(), spec, index=g)
        else:
            t = rng.uniform(0.5, 1.0)  # a coronal source: thermal continuum and narrow lines at rest
            spec = sp.thermal_spectrum(t)
            em = m * fl[i] / spec.sum()
            sp.add(em, spec, kT=t)
            sp.thermal_lines(em, np.full(X.shape, t), np.zeros(X.shape), np.full(X.shape, 20.0), 1.0)
    return _pick(physics, "line_ratio", rng.uniform(0.3, 1.0)), {"n_sources": k, "point_fraction": frac}


def _mixed(rng, sp, n, physics):
    X, Y = _grid(n)
    k = _pick(physics, "n_blobs", int(rng.integers(2, 5)))
    fth = _pick(physics, "thermal_fraction", rng.uniform(0.3, 0.7))
    kT_rng = _pick(physics, "kT", (0.3, 1.0) if sp.band == "soft" else (2.0, 6.0))
    vb = _pick(physics, "v_blob", 1000.0 if sp.band == "soft" else 600.0)
    for _ in range(k):
        bx, by = rng.uniform(-0.3, 0.3, 2) * n
        bs = rng.uniform(0.06, 0.15) * n
        em = np.exp(-0.5 * ((X - bx) ** 2 + (Y - by) ** 2) / bs ** 2) * rng.uniform(0.5, 1.5)
        kT = np.full(X.shape, rng.uniform(*kT_rng)) * np.exp(0.1 * _smooth(rng, X.shape, n / 8))
        v = np.full(X.shape, rng.uniform(-vb, vb)) + 0.3 * vb * _smooth(rng, X.shape, n / 6)
        sp.thermal_continuum(em, kT)
        sp.thermal_lines(em, kT, v, np.full(X.shape, rng.uniform(100, 400)), 1.0)
    thermal = sp.cont.sum()
    # filaments: ridges of a smooth random field, power law with a varying index
    f = _smooth(rng, X.shape, n / 12)
    fil = np.exp(-0.5 * (f / 0.25) ** 2) * np.exp(-0.5 * (X ** 2 + Y ** 2) / (0.4 * n) ** 2)
    index = rng.uniform(1.6, 2.2) + 0.3 * _smooth(rng, X.shape, n / 8)
    spec = sp.power_law_spectrum(index)
    nonth = float((fil.ravel()[:, None] * spec).sum())
    sp.add(fil * (1 - fth) / fth * thermal / max(nonth, 1e-300), spec, index=index)
    return _pick(physics, "line_ratio", rng.uniform(0.3, 1.2)), {"n_blobs": k, "thermal_fraction": fth}


SKIES = {"snr_shell": _snr_shell, "cluster_core": _cluster_core, "synchrotron": _synchrotron,
         "point_sources": _point_sources, "mixed": _mixed}
DEFAULT_BAND = {"snr_shell": "soft", "cluster_core": "fe_k", "synchrotron": None, "point_sources": "soft",
                "mixed": None}


# =============================================================================== instruments
def _x_sigma(E, band, geom, response):
    """CCD line-spread sigma (keV) at true energy E: constant (gaussian) or Fano + read noise (realistic)."""
    if response == "gaussian":
        return np.full_like(np.asarray(E, dtype=np.float64), GEOMETRIES[geom]["x_sigma_ev"][band] * 1e-3)
    return np.sqrt(0.025 ** 2 + 0.12 * 3.65e-3 * np.asarray(E, dtype=np.float64))


def _x_rmf(E, chan_edges, band, geom, response):
    """Probability (len(E), n_chan) that a photon of true energy E lands in each X channel.

    gaussian: Gaussian of sigma ``_x_sigma``. realistic: 93-95% Gaussian core, a low-energy exponential
    tail (scale 2.5 sigma, 4-5%) and a flat shoulder from 0.3 E to E (1-2%): an asymmetric CCD response.
    Flux redistributed outside the channels is lost (rows sum to < 1 near the band edges).
    """
    E = np.asarray(E, dtype=np.float64)[:, None]
    s = _x_sigma(E, band, geom, response)
    lo, hi = chan_edges[None, :-1], chan_edges[None, 1:]
    core = ndtr((hi - E) / s) - ndtr((lo - E) / s)
    if response == "gaussian":
        return core
    f_tail, f_sh = (0.05, 0.02) if band == "soft" else (0.04, 0.01)
    lam = 2.5 * s

    def tail_cdf(x):  # density exp((x - E)/lam)/lam for x < E
        return np.exp(np.minimum(x - E, 0.0) / lam)

    tail = tail_cdf(hi) - tail_cdf(lo)
    a, b = 0.3 * E, E
    sh = np.clip(np.minimum(hi, b) - np.maximum(lo, a), 0, None) / (b - a)
    return (1 - f_tail - f_sh) * core + f_tail * tail + f_sh * sh


def _area(E, which, band, response):
    """Effective area (cm2) at energy E (keV). gaussian: flat. realistic: shaped, with edge-like steps."""
    E = np.asarray(E, dtype=np.float64)
    if response == "gaussian":
        return np.full_like(E, 1000.0 if which == "x" else 250.0)
    if which == "x":  # EPIC-pn-like
        if band == "soft":
            return 1000 * (0.6 + 0.4 * np.tanh((E - 0.6) / 0.3)) * np.where(E > 0.543, 0.85, 1.0) \
                * (1 - 0.05 * np.exp(-0.5 * ((E - 1.0) / 0.05) ** 2))
        return 900 * (E / 6.2) ** -1.5 * np.where(E > 6.55, 0.97, 1.0)
    if band == "soft":  # Resolve-like
        return 250 * (E / 1.4) ** 1.6 * np.where(E > 0.87, 0.93, 1.0)
    return 260 * (E / 6.2) ** -1.0 * (1 - 0.03 * np.exp(-0.5 * ((E - 6.75) / 0.04) ** 2))


def _y_psf_params(E, psf_px, e_mid, response):
    """(core sigma in fused pixels, wing fraction) of the Y PSF at energy E."""
    E = np.asarray(E, dtype=np.float64)
    if response == "gaussian":
        return np.full_like(E, psf_px), np.zeros_like(E)
    return psf_px * (E / e_mid) ** 0.15, np.clip(0.2 * (E / e_mid) ** 0.5, 0, 0.5)


def _y_psf_stamp(sigma, wing, half):
    if wing == 0:
        return _stamp(_gauss_profile(sigma), half)
    return _stamp(_realistic_profile(sigma, wing), half)


def _hat_weights(nodes, e):
    """(n_nodes, L) linear-interpolation weights of energies e between nodes (constant outside)."""
    w = np.zeros((nodes.size, e.size))
    if nodes.size == 1:
        w[0] = 1.0
        return w
    j = np.clip(np.searchsorted(nodes, e, side="right") - 1, 0, nodes.size - 2)
    t = np.clip((e - nodes[j]) / (nodes[j + 1] - nodes[j]), 0.0, 1.0)
    w[j, np.arange(e.size)] += 1 - t
    w[j + 1, np.arange(e.size)] += t
    return w


class _Instruments:
    """Everything that defines both instruments of one scene, and the independent simulator."""

    def __init__(self, geom, band, response, n, L, psf_px):
        g = GEOMETRIES[geom]
        self.geom, self.band, self.response = geom, band, response
        self.px, self.vs, self.vl, self.n, self.L = g["pixel"], g["vs"], g["vl"], n, L
        e0, e1 = BANDS[band]
        self.fine = np.linspace(e0, e1, L + 1)
        self.coarse = self.fine[:: self.vl]
        self.e = 0.5 * (self.fine[1:] + self.fine[:-1])
        self.e_mid = 0.5 * (e0 + e1)
        self.psf_px = float(psf_px)
        self.lsf = g["lsf_ev"] * 1e-3
        self.t_x = 5.0e4
        # sharp-spatial PSF (target resolution), applied to the truth
        sx = g["x_psf_px"]
        if response == "gaussian":
            self.x_psf = _stamp(_gauss_profile(sx), min(int(np.ceil(4 * sx)) + 1, n))
        else:
            self.x_psf = _stamp(_realistic_profile(0.8 * sx, 0.15), min(int(np.ceil(8 * sx)) + 3, n))
        smax = _y_psf_params(e1, self.psf_px, self.e_mid, response)[0]
        self.y_half = min(int(np.ceil((4 if response == "gaussian" else 6) * smax)) + 2, n)
        # true-energy grid of the ARFs/RMF handed to xfusion (coarser than the fused channels)
        step = 2.5 * (e1 - e0) / L
        self.et = np.arange(e0 - 0.02, e1 + 0.02 + step / 2, step)

    # ---------------------------------------------------------------- observations (public builder)
    def _et_da(self, values, units="cm2"):
        et = self.et
        return xr.DataArray(values, dims="energy_true", attrs={"units": units}, coords={
            "energy_true": ("energy_true", 0.5 * (et[1:] + et[:-1]), {"units": "keV"}),
            "energy_true_lo": ("energy_true", et[:-1], {"units": "keV"}),
            "energy_true_hi": ("energy_true", et[1:], {"units": "keV"})})

    def observations(self, x_counts, y_counts, t_y):
        etc = 0.5 * (self.et[1:] + self.et[:-1])
        if self.response == "gaussian":
            spacing = float(np.diff(self.fine)[0]) / 2
            s = GEOMETRIES[self.geom]["x_sigma_ev"][self.band] * 1e-3
            h = int(np.ceil(6 * s / spacing))
            k = np.exp(-0.5 * (np.arange(-h, h + 1) * spacing / s) ** 2)
            xkw = {"response": k / k.sum(), "response_spacing": spacing, "effective_area": 1000.0}
            ykw = {"effective_area": 250.0,
                   "psf": _y_psf_stamp(self.psf_px, 0.0, self.y_half)}
        else:
            rmf = _x_rmf(etc, self.coarse, self.band, self.geom, "realistic")
            et = self.et
            resp = xr.DataArray(rmf, dims=("energy_true", "energy"), attrs={"units": "1"}, coords={
                "energy_true": ("energy_true", etc, {"units": "keV"}),
                "energy_true_lo": ("energy_true", et[:-1], {"units": "keV"}),
                "energy_true_hi": ("energy_true", et[1:], {"units": "keV"}),
                "energy_lo": ("energy", self.coarse[:-1], {"units": "keV"}),
                "energy_hi": ("energy", self.coarse[1:], {"units": "keV"})})
            xkw = {"response": resp, "effective_area": self._et_da(_area(etc, "x", self.band, "realistic"))}
            nodes = np.linspace(self.fine[0], self.fine[-1], 5)
            sig, wing = _y_psf_params(nodes, self.psf_px, self.e_mid, "realistic")
            stack = np.stack([_y_psf_stamp(s_, w_, self.y_half) for s_, w_ in zip(sig, wing)])
            psf = xr.DataArray(stack, dims=("psf_energy", "psf_x", "psf_y"),
                               coords={"psf_energy": ("psf_energy", nodes, {"units": "keV"})})
            ykw = {"effective_area": self._et_da(_area(etc, "y", self.band, "realistic")), "psf": psf}
        names = {"table1": ("X (CCD-like)", "Y (microcalorimeter-like)"),
                 "xmm_resolve": ("X (EPIC-pn-like)", "Y (Resolve-like)")}[self.geom]
        x_obs = observation(x_counts, dims=("x", "y", "energy"), energy_edges=self.coarse, pixel_size=self.px,
                            exposure=self.t_x, name=names[0], **xkw)
        y_obs = observation(y_counts, dims=("x", "y", "energy"), energy_edges=self.fine,
                            pixel_size=self.px * self.vs, exposure=float(t_y), psf_pixel_size=self.px,
                            name=names[1], **ykw)
        return x_obs, y_obs

    # ---------------------------------------------------------------- the independent simulator
    def expected_x(self, flux):
        """Expected X counts (n, n, l): t_X A_X(E) flux, then the response matrix evaluated at the fused centres."""
        R = _x_rmf(self.e, self.coarse, self.band, self.geom, self.response)
        w = self.t_x * _area(self.e, "x", self.band, self.response)
        return np.einsum("xyk,kc->xyc", flux * w, R, optimize=True)

    def expected_y(self, flux, t_y=1.0):
        """Expected Y counts (n/v, n/v, L): t_Y A_Y(E) flux, PSF at each energy (FFT convolution, linear
        interpolation between 17 bands for the realistic PSF), then v x v pixel sums."""
        z = flux * (t_y * _area(self.e, "y", self.band, self.response))
        if self.response == "gaussian":
            blurred = _blur(z, _y_psf_stamp(self.psf_px, 0.0, self.y_half))
        else:
            nodes = np.linspace(self.fine[0], self.fine[-1], 17)
            wts = _hat_weights(nodes, self.e)
            sig, wing = _y_psf_params(nodes, self.psf_px, self.e_mid, "realistic")
            blurred = np.zeros_like(z)
            for b in range(nodes.size):
                ch = np.flatnonzero(wts[b] > 0)
                if ch.size:
                    sl = slice(ch[0], ch[-1] + 1)
                    blurred[:, :, sl] += _blur(z[:, :, sl] * wts[b, sl], _y_psf_stamp(sig[b], wing[b], self.y_half))
        return _rebin_xy(blurred, self.vs)


# =============================================================================== public
def _resolve_size(geometry, size, band):
    g = GEOMETRIES[geometry]
    if isinstance(size, str):
        if size == "default":
            n, L = g["n"], g["channels"][band]
        elif size == "small":
            n, L = SMALL
        else:
            raise ValueError(f"size must be 'default', 'small' or (n_pixels, n_channels); got {size!r}")
    else:
        try:
            n, L = (int(v) for v in size)
        except (TypeError, ValueError):
            raise ValueError(f"size must be 'default', 'small' or (n_pixels, n_channels); got {size!r}") from None
    if n < 2 * g["vs"] or n % g["vs"] or L < g["vl"] or L % g["vl"]:
        raise ValueError(f"geometry {geometry!r} needs n_pixels a multiple of {g['vs']} (>= {2 * g['vs']}) and "
                         f"n_channels a multiple of {g['vl']}; got ({n}, {L})")
    return n, L


def _counts_pair(counts):
    c = np.atleast_1d(np.asarray(counts, dtype=np.float64))
    if c.size == 1:
        c = np.repeat(c, 2)
    if c.size != 2 or not np.all(np.isfinite(c)) or np.any(c <= 0):
        raise ValueError(f"counts must be a positive number or a pair (X, Y) of expected counts; got {counts!r}")
    return float(c[0]), float(c[1])


def make(kind, seed=0, *, counts=3e6, psf_pixels=3.0, response="gaussian", geometry="table1", size="default",
         band=None, noise=True, **physics):
    """One randomized scene ``(x_obs, y_obs, truth)``; see the module docstring.

    Parameters
    ----------
    kind : one of ``KINDS``.
    seed : int >= 0; the sky and the noise are deterministic functions of (kind, seed).
    counts : expected photon counts of X and Y (one number for both, or a pair).
    psf_pixels : Y PSF width (sigma; core sigma for "realistic") in fused pixels, > 0.
    response : "gaussian" or "realistic".
    geometry : "table1" or "xmm_resolve".
    size : "default", "small" or (n_pixels, n_channels) of the fused grid.
    band : "soft" (0.5-1.4 keV) or "fe_k" (6.2-7.0 keV); default per kind (drawn from the seed for
        ``synchrotron`` and ``mixed``).
    noise : False returns the expected counts instead of a Poisson draw.
    **physics : overrides of the drawn sky parameters (names in ``PHYSICS[kind]``, valid values in
        ``PHYSICS_RANGES``; anything else is refused naming the parameter).
    """
    if kind not in KINDS:
        raise ValueError(f"unknown scene kind {kind!r}; choose one of {', '.join(KINDS)}")
    if response not in RESPONSES:
        raise ValueError(f"response must be one of {RESPONSES}; got {response!r}")
    if geometry not in GEOMETRIES:
        raise ValueError(f"geometry must be one of {tuple(GEOMETRIES)}; got {geometry!r}")
    unknown = set(physics) - set(PHYSICS[kind])
    if unknown:
        raise TypeError(f"unknown physics parameter(s) {sorted(unknown)} for kind {kind!r}; "
                        f"valid: {list(PHYSICS[kind])}")
    _check_physics(kind, physics)
    if not (isinstance(psf_pixels, (int, float)) and np.isfinite(psf_pixels) and psf_pixels > 0):
        raise ValueError(f"psf_pixels must be a positive number of fused pixels; got {psf_pixels!r}")
    cx, cy = _counts_pair(counts)
    # session 30: seed=2.7 was truncated to 2 silently, "3" and True accepted, -1 a bare NumPy error
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0 (the sky and the noise are deterministic functions of "
                         f"(kind, seed)); got {seed!r}")
    seed = int(seed)
    kid = KINDS.index(kind)
    rng = np.random.default_rng([seed, kid, 0])
    if band is None:
        band = DEFAULT_BAND[kind] or ("soft" if rng.uniform() < 0.5 else "fe_k")
    if band not in BANDS:
        raise ValueError(f"band must be one of {tuple(BANDS)}; got {band!r}")
    n, L = _resolve_size(geometry, size, band)
    ins = _Instruments(geometry, band, response, n, L, psf_pixels)

    sp = _Spectra((n, n), ins.fine, band, ins.lsf)
    line_ratio, info = SKIES[kind](rng, sp, n, physics)
    sky = sp.cube(line_ratio)
    flux = _blur(sky, ins.x_psf)
    np.maximum(flux, 0.0, out=flux)  # FFT round-off only (inputs are >= 0)
    scale = cx / ins.expected_x(flux).sum()
    flux = (flux * scale).astype(np.float32)
    f64 = flux.astype(np.float64)
    lam_x = ins.expected_x(f64)
    y1 = ins.expected_y(f64, 1.0)
    t_y = cy / y1.sum()
    lam_y = y1 * t_y
    if noise:
        nrng = np.random.default_rng([seed, kid, 1])
        x_counts = nrng.poisson(lam_x).astype(np.float32)
        y_counts = nrng.poisson(lam_y).astype(np.float32)
    else:
        x_counts, y_counts = lam_x, lam_y
    x_obs, y_obs = ins.observations(x_counts, y_counts, t_y)

    # truth maps of the blurred sky (moments blurred with the same PSF)
    shape2 = (n, n)
    m = np.stack([_blur(a.reshape(shape2), ins.x_psf) for a in sp.m])
    t = np.stack([_blur(a.reshape(shape2), ins.x_psf) for a in sp.t])
    g = np.stack([_blur(a.reshape(shape2), ins.x_psf) for a in sp.g])

    def ratio(num, den, floor):
        ok = den > floor
        return np.where(ok, num / np.where(ok, den, 1.0), np.nan)

    has_lines = kind != "synchrotron" and sp.m[0].max() > 0
    mfloor = 1e-6 * m[0].max() if has_lines else np.inf
    vel = ratio(m[1], m[0], mfloor)
    wid = np.sqrt(np.maximum(ratio(m[2], m[0], mfloor) - vel ** 2, 0.0))
    coords = {"x": x_obs["x"].variable.copy(), "y": x_obs["y"].variable.copy(),
              "energy": y_obs["energy"].variable.copy(), "energy_lo": y_obs["energy_lo"].variable.copy(),
              "energy_hi": y_obs["energy_hi"].variable.copy()}
    truth = xr.Dataset(coords=coords)
    truth["flux"] = (("x", "y", "energy"), flux,
                     {"units": "ph cm-2 s-1", "long_name": "true photon flux per voxel (target resolution)"})
    truth["velocity"] = (("x", "y"), vel.astype(np.float32),
                         {"units": "km/s", "long_name": "emission-weighted LOS velocity of the reference line "
                          "(+ receding); NaN where the line is absent"})
    truth["line_width"] = (("x", "y"), wid.astype(np.float32),
                           {"units": "km/s", "long_name": "emission-weighted velocity dispersion of the reference "
                            "line (no instrumental spread); NaN where the line is absent"})
    truth["line_flux"] = (("x", "y"), np.where(np.isfinite(vel), m[0] * scale, 0.0).astype(np.float32),
                          {"units": "ph cm-2 s-1", "long_name": "reference-line flux per pixel"})
    if sp.t[0].max() > 0:
        truth["temperature"] = (("x", "y"), ratio(t[1], t[0], 1e-6 * t[0].max()).astype(np.float32),
                                {"units": "keV", "long_name": "emission-weighted temperature (NaN: no thermal "
                                 "emission)"})
    if sp.g[0].max() > 0:
        truth["index"] = (("x", "y"), ratio(g[1], g[0], 1e-6 * g[0].max()).astype(np.float32),
                          {"units": "1", "long_name": "emission-weighted photon index (NaN: no power law)"})
    ref = REFERENCE[band]
    attrs = {"kind": kind, "seed": seed, "counts_x": cx, "counts_y": cy, "psf_pixels": float(psf_pixels),
             "response": response, "geometry": geometry, "band": band, "size": f"{n}x{n}x{L}",
             "lsf_sigma_kev": ins.lsf, "has_lines": int(bool(has_lines)), "noise": int(bool(noise)),
             "line_energy_kev": ref["energy"], "line_name": ref["name"],
             "continuum_kev": [list(b) for b in ref["continuum"]],
             "line_to_continuum": float(line_ratio), "units": "ph cm-2 s-1"}
    attrs.update({k: (float(v) if isinstance(v, (float, np.floating)) else int(v)) for k, v in info.items()})
    if has_lines:
        s_tot = np.hypot(sp.smax, ins.lsf * C_KMS / ref["energy"])
        half = ref["energy"] * (sp.vmax + 4.0 * s_tot) / C_KMS
        half = float(np.clip(half, 4 * ins.lsf, ref["max_half"]))
        attrs["line_window_kev"] = [ref["energy"] - half, ref["energy"] + half]
    # other lines whose shifted, broadened profiles (|v| <= vmax, 3 sigma) reach into the window: line_map of the
    # truth cube measures their blend, the maps above the reference line alone (module docstring)
    blends = []
    if has_lines:
        reach = (sp.vmax + 3.0 * s_tot) / C_KMS
        lo, hi = attrs["line_window_kev"]
        blends = sorted((float(E_l) for E_l, *_ in LINES[band]
                         if E_l != ref["energy"] and E_l * (1 - reach) < hi and E_l * (1 + reach) > lo),
                        key=lambda e_: abs(e_ - ref["energy"]))
    attrs["window_blends_kev"] = blends
    note = ("the reference line alone (physical parameters of the sky model); xfusion.analysis.line_map in "
            "line_window_kev also measures the lines of window_blends_kev: compare line_map of a cube with "
            "line_map of truth['flux'] (same arguments), not with this map")
    for name in ("velocity", "line_width", "line_flux"):
        truth[name].attrs.update({"line_energy_kev": ref["energy"], "line_name": ref["name"],
                                  "window_blends_kev": list(blends), "comment": note})
    truth.attrs.update(attrs)
    for o in (x_obs, y_obs):
        o.attrs.update({"scene": kind, "seed": seed})
    return x_obs, y_obs, truth


def line_map_args(truth):
    """Keyword arguments for :func:`xfusion.analysis.line_map` of a scene's reference line (None: no lines).

    The window (attr ``line_window_kev``) is wide enough for the scene's velocities and widths; in the Fe K band it
    also holds Fe XXV y and part of x (attr ``window_blends_kev``), so ``line_map`` measures their blend with w,
    on the truth cube as on a fused one. The truth's ``velocity``, ``line_width`` and ``line_flux`` maps are the
    reference line's own parameters: compare ``line_map(cube, **args)`` with ``line_map(truth["flux"], **args)``
    (as ``benchmarks/suite.py`` does), not with those maps.
    """
    if not truth.attrs.get("has_lines"):
        return None
    return {"line_energy": truth.attrs["line_energy_kev"], "window": tuple(truth.attrs["line_window_kev"]),
            "continuum": [tuple(b) for b in truth.attrs["continuum_kev"]]}


# =============================================================================== the suite
SPLIT_SEEDS = {"tune": 1000, "heldout": 500000}


def suite(split="tune", n=24):
    """Deterministic list of ``n`` scene specs (dicts of :func:`make` arguments plus ``name``).

    Kinds cycle through ``KINDS``; counts (1e5-1e8 per instrument, log-stratified, Y/X ratio 0.5-1.5
    within those bounds),
    Y PSF width (1-5 fused pixels, stratified), response (gaussian / realistic, alternating within each
    kind) and geometry (one scene in three ``xmm_resolve``) are spread over the set like a Latin
    hypercube drawn from a split-specific generator. Seeds: ``tune`` from 1000, ``heldout`` from 500000
    (disjoint for any n < 499000). Each call returns new dicts (the caller may change them); the list of a
    ``(split, n)`` is drawn once per process (the tests and benchmarks ask for one row of a list of ~1500 at a time).
    """
    if split not in SPLIT_SEEDS:
        raise ValueError(f"split must be 'tune' or 'heldout'; got {split!r}")
    n = int(n)
    if n < 1:
        raise ValueError(f"n must be >= 1; got {n}")
    return [dict(spec) for spec in _suite(split, n)]


@functools.lru_cache(maxsize=8)
def _suite(split, n):
    """:func:`suite`'s specs, drawn once per ``(split, n)`` (a tuple: callers get copies)."""
    rng = np.random.default_rng([SPLIT_SEEDS[split], n])
    lc = 5 + 3 * (rng.permutation(n) + rng.uniform(size=n)) / n        # log10 counts in [5, 8)
    psf = 1 + 4 * (rng.permutation(n) + rng.uniform(size=n)) / n       # [1, 5)
    ratio = 0.5 + rng.uniform(size=n)
    geo = rng.permutation(np.arange(n) % 3 == 0)
    specs = []
    for i in range(n):
        kind = KINDS[i % len(KINDS)]
        resp = RESPONSES[(i // len(KINDS) + i % len(KINDS)) % 2]  # alternates within each kind
        cx = float(f"{10 ** lc[i]:.3g}")
        cy = float(f"{np.clip(cx * ratio[i], 1e5, 1e8):.3g}")
        spec = {"kind": kind, "seed": SPLIT_SEEDS[split] + i, "counts": (cx, cy),
                "psf_pixels": round(float(psf[i]), 2), "response": resp,
                "geometry": "xmm_resolve" if geo[i] else "table1"}
        spec["name"] = describe(spec)
        specs.append(spec)
    return tuple(specs)


def describe(spec):
    """Short label of a spec, e.g. ``snr_shell/1003 t1 gauss 2.6e6 psf3.1``."""
    c = spec["counts"]
    c = c[0] if isinstance(c, (tuple, list)) else c
    return (f"{spec['kind']}/{spec['seed']} {'t1' if spec.get('geometry', 'table1') == 'table1' else 'xr'} "
            f"{'gauss' if spec.get('response', 'gaussian') == 'gaussian' else 'real'} {c:.1e} "
            f"psf{spec.get('psf_pixels', 3.0):.1f}")


def from_spec(spec, size=None, **overrides):
    """Build the scene of a :func:`suite` spec (``size`` / ``overrides`` replace spec entries)."""
    kw = {k: v for k, v in spec.items() if k != "name"}
    if size is not None:
        kw["size"] = size
    kw.update(overrides)
    return make(**kw)
