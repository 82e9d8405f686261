"""Toy supernova-remnant observations (paper section 4.1, Table 1).

``make(name, seed=0, **overrides) -> (x_obs, y_obs, truth)``

The sky is a clumpy, expanding spherical shell seen in projection, plus a bright compact
knot. Each 3D cell of the shell has a temperature (smoothly varying: continuum slope and
line ratios change across the remnant), an abundance factor and a line-of-sight velocity
``v_z = v_exp z / r`` (positive = receding, ``E = E0 / (1 + v/c)``: the convention of
:mod:`xfusion.analysis`; the knot's ``v_kms`` too), so lines are split into red- and blue-shifted halves where the
shell is seen face-on and merge at the limb. Spectra are thermal-like continua
``E^-0.3 exp(-E/kT)`` plus Gaussian emission lines whose emissivities peak at
ion-dependent temperatures (O VII/VIII, Fe XVII-XXIV, Ne IX/X, Mg XI at 0.5-1.4 keV;
Fe XXV/XXVI and low-ionisation Fe K at 6.2-6.9 keV).

``truth`` is the photon flux per voxel (ph cm-2 s-1) on the fused grid, already at the
target resolution: blurred by the sharp-spatial instrument's PSF and by the sharp-spectral
instrument's line spread (exactly what the fusion can recover). The data are Poisson draws
of the two instrument models of eq. 9 applied to ``truth``, scaled so the expected photon
counts are those of the configuration. Everything is seeded and deterministic.

Configurations are TOML files in ``xfusion/toy_models/`` (``toy_models/`` at the repository
root); ``overrides`` deep-merge into them, e.g. ``make("gaussian_rebin", x={"counts": 2.7e7},
y={"counts": 2.5e7})`` for ten times the photons.
"""
from __future__ import annotations

import copy
import numbers
import tomllib
from importlib import resources

import numpy as np
import xarray as xr
from scipy import ndimage

from .grid import SPATIAL, SPECTRAL
from .observation import observation
from .operators.model import build_model

NAMES = ("small", "gaussian_1kev", "gaussian_6kev", "gaussian_rebin", "realistic_rebin")
C_KMS = 299792.458

# (energy keV, relative amplitude, temperature of peak emissivity keV)
LINES = {
    "soft": [
        (0.5610, 0.5, 0.18), (0.5690, 0.25, 0.18), (0.5740, 0.8, 0.18),
        (0.6536, 1.0, 0.30), (0.7746, 0.15, 0.30),
        (0.7252, 0.35, 0.45), (0.7390, 0.30, 0.45), (0.8124, 0.2, 0.45), (0.8260, 0.6, 0.45),
        (0.8730, 0.35, 0.70), (0.9220, 0.8, 0.40), (0.9150, 0.25, 0.40), (0.9050, 0.35, 0.40),
        (1.0220, 0.6, 0.70), (1.0530, 0.2, 1.0), (1.1050, 0.25, 1.2), (1.1300, 0.15, 1.3),
        (1.3520, 0.4, 0.80), (1.3430, 0.1, 0.8), (1.3310, 0.12, 0.8),
    ],
    "fe_k": [
        (6.400, 0.6, 0.8), (6.445, 0.3, 1.2), (6.540, 0.35, 1.8), (6.610, 0.3, 2.3),
        (6.6366, 0.5, 3.0), (6.6681, 0.25, 3.0), (6.6823, 0.2, 3.0), (6.7004, 1.0, 3.0),
        (6.8800, 0.05, 5.0),
    ],
}


def load_config(name):
    if name not in NAMES:
        raise ValueError(f"unknown toy model {name!r}; choose one of {', '.join(NAMES)}")
    text = resources.files("xfusion").joinpath("toy_models", f"{name}.toml").read_text()
    return tomllib.loads(text)


def _known_keys():
    """Every key path (tuples) of the shipped configurations: what an override may name."""
    paths = set()

    def walk(d, prefix):
        for k, v in d.items():
            paths.add(prefix + (k,))
            if isinstance(v, dict):
                walk(v, prefix + (k,))

    for f in resources.files("xfusion").joinpath("toy_models").iterdir():
        if f.name.endswith(".toml"):
            walk(tomllib.loads(f.read_text()), ())
    return paths


def _check_overrides(over, known, prefix=()):
    """Refuse an override key no configuration has (session 28: a misspelled key was ignored silently)."""
    for k, v in over.items():
        path = prefix + (k,)
        if path not in known:
            near = sorted(p[-1] for p in known if p[:-1] == prefix)
            raise ValueError(f"toy override {'.'.join(path)!r} is not a configuration key; keys here: {near}")
        if isinstance(v, dict):
            _check_overrides(v, known, path)


def _merge(base, over):
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


# ----------------------------------------------------------------------------- responses
def _gaussian(x, s):
    return np.exp(-0.5 * (x / s) ** 2)


def psf_image(spec, pixel, n_max=None):
    """Odd, normalized PSF stamp (arcsec pixels) for a config entry (gaussian or king)."""
    if spec["kind"] == "gaussian":
        half = int(np.ceil(4 * spec["sigma_arcsec"] / pixel))
    else:
        half = int(np.ceil(6 * spec["core_arcsec"] / pixel)) + 3
    if n_max is not None:
        half = min(half, n_max)
    r = np.arange(-half, half + 1) * pixel
    # integrate over the pixel with 5x5 sub-samples
    sub = (np.arange(5) - 2) / 5 * pixel
    xx = (r[:, None] + sub[None, :]).reshape(-1)
    R2 = xx[:, None] ** 2 + xx[None, :] ** 2
    if spec["kind"] == "gaussian":
        img = np.exp(-0.5 * R2 / spec["sigma_arcsec"] ** 2)
    elif spec["kind"] == "king":
        img = (1 + R2 / spec["core_arcsec"] ** 2) ** (-spec.get("beta", 1.5))
    else:
        raise ValueError(f"unknown psf kind {spec['kind']}")
    n = 2 * half + 1
    img = img.reshape(n, 5, n, 5).sum(axis=(1, 3))
    return img / img.sum()


def _area(spec, e):
    kind, v = spec["kind"], spec["value"]
    if kind == "flat":
        return np.full_like(e, v)
    if kind == "pn_like":  # rising with an oxygen-edge dip and a gentle roll-over
        a = v * (0.45 + 0.55 * np.tanh((e - 0.3) / 0.6)) * np.where(e > 0.543, 0.9, 1.0)
        return a * (1 - 0.08 * np.exp(-0.5 * ((e - 1.0) / 0.08) ** 2))
    if kind == "resolve_like":  # steeper rise (filters, gate-valve-like absorption), a Ne-edge-like step
        return v * (e / 1.4) ** 1.8 * np.where(e > 0.87, 0.93, 1.0)
    raise ValueError(f"unknown area kind {kind}")


def _ccd_rmf(spec, true_edges, chan_edges):
    """Energy-dependent CCD redistribution: Gaussian core with sigma growing as sqrt(E), plus a low-energy shoulder."""
    et = 0.5 * (true_edges[1:] + true_edges[:-1])
    s = spec["sigma_ev_at_1kev"] * 1e-3 * np.sqrt(0.3 + 0.7 * et)  # keV; sigma(1 keV) = value
    from scipy.special import ndtr

    core = ndtr((chan_edges[None, 1:] - et[:, None]) / s[:, None]) - ndtr((chan_edges[None, :-1] - et[:, None]) / s[:, None])
    # shoulder: flat from 0.6 E to E
    lo, hi = 0.6 * et[:, None], et[:, None]
    ov = np.clip(np.minimum(chan_edges[None, 1:], hi) - np.maximum(chan_edges[None, :-1], lo), 0, None)
    tail = ov / (hi - lo)
    f = spec.get("tail_fraction", 0.0)
    return (1 - f) * core + f * tail


# ----------------------------------------------------------------------------- the sky
def _templates(cfg, edges, kT, vel, sigma_y_kev):
    """Continuum (nT, L) and line (nT, nV, L) templates integrated over the fused bins."""
    e = 0.5 * (edges[1:] + edges[:-1])
    de = np.diff(edges)
    cont = np.stack([e ** -0.3 * np.exp(-e / t) * de for t in kT])
    cont /= cont.sum(axis=1, keepdims=True).mean()
    from scipy.special import ndtr

    lines = np.zeros((kT.size, vel.size, e.size))
    for (el, amp, tpk) in LINES[cfg["lines"]]:
        emis = amp * np.exp(-0.5 * (np.log(kT / tpk) / 0.45) ** 2)  # (nT,)
        centre = el / (1 + vel / C_KMS)  # (nV,) positive = receding (session 29: was el (1 + v/c), a blueshift)
        s = np.sqrt(sigma_y_kev ** 2 + (el * 150.0 / C_KMS) ** 2)  # LSF + 150 km/s turbulence
        prof = ndtr((edges[None, 1:] - centre[:, None]) / s) - ndtr((edges[None, :-1] - centre[:, None]) / s)
        lines += emis[:, None, None] * prof[None]
    return cont, lines * 0.25 / max(lines.sum(axis=-1).mean(), 1e-30)


def _smooth_field(rng, shape, sigma):
    g = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
    return g / g.std()


def sky_weights(cfg, xc, yc, rng, n_t=5, n_v=49, n_z=64):
    """Per-pixel weights of (temperature, velocity) components of the shell + knot."""
    src = cfg["source"]
    R, w = src["radius_arcsec"], src["thickness_arcsec"] / 2.355
    vexp = src["v_exp_kms"]
    zc = np.linspace(-R - 3 * w, R + 3 * w, n_z)
    X, Y, Zc = np.meshgrid(xc, yc, zc, indexing="ij")
    r = np.sqrt(X ** 2 + Y ** 2 + Zc ** 2)
    shell = np.exp(-0.5 * ((r - R) / w) ** 2)
    clump = np.exp(src["clumpiness"] * _smooth_field(rng, shell.shape, 2.0) - 0.5 * src["clumpiness"] ** 2)
    emis = shell * clump
    tlo, thi = src["kT_keV"]
    tfield = np.clip(0.5 + 0.3 * X / R + 0.25 * _smooth_field(rng, shell.shape, 4.0), 0, 1)
    abund = np.exp(0.5 * _smooth_field(rng, shell.shape, 3.0))
    vz = vexp * Zc / np.maximum(r, 1e-9)
    kT = np.geomspace(tlo, thi, n_t)
    vel = np.linspace(-KNOT_V_RANGE * vexp, KNOT_V_RANGE * vexp, n_v)
    # linear interpolation weights onto the T and v nodes
    ti = tfield * (n_t - 1)
    t0 = np.clip(np.floor(ti).astype(int), 0, n_t - 2)
    ft = ti - t0
    vi = (vz - vel[0]) / (vel[1] - vel[0])
    v0 = np.clip(np.floor(vi).astype(int), 0, n_v - 2)
    fv = np.clip(vi - v0, 0, 1)
    npix = X.shape[0] * X.shape[1]
    pix = np.broadcast_to(np.arange(npix).reshape(X.shape[:2])[:, :, None], X.shape)
    wc = np.zeros((npix, n_t))
    wl = np.zeros((npix, n_t, n_v))
    for dt, ft_ in ((0, 1 - ft), (1, ft)):
        np.add.at(wc, (pix.ravel(), (t0 + dt).ravel()), (emis * ft_).ravel())
        for dv, fv_ in ((0, 1 - fv), (1, fv)):
            np.add.at(wl, (pix.ravel(), (t0 + dt).ravel(), (v0 + dv).ravel()), (emis * abund * ft_ * fv_).ravel())
    # the knot: compact, hot, receding
    k = src["knot"]
    Xp, Yp = np.meshgrid(xc, yc, indexing="ij")
    prof = np.exp(-0.5 * ((Xp - k["x_arcsec"]) ** 2 + (Yp - k["y_arcsec"]) ** 2) / k["sigma_arcsec"] ** 2).ravel()
    scale = k["brightness"] * emis.sum(axis=2).max()
    tk = np.clip(np.interp(np.log(k["kT_keV"]), np.log(kT), np.arange(n_t)), 0, n_t - 1)
    vk = np.interp(k["v_kms"], vel, np.arange(n_v))
    it, iv = int(round(tk)), int(round(vk))
    wc[:, it] += scale * prof
    wl[:, it, iv] += 2.0 * scale * prof
    shape2 = X.shape[:2]
    return wc.reshape(shape2 + (n_t,)), wl.reshape(shape2 + (n_t, n_v)), kT, vel


def _blur(weights, psf):
    """PSF blur of weight maps along the first two axes, zero boundary."""
    from scipy.signal import fftconvolve

    k = psf.reshape(psf.shape + (1,) * (weights.ndim - 2))
    return np.clip(fftconvolve(weights, k, mode="same", axes=(0, 1)), 0, None)


#: keys each kind of PSF / response / area reads (an override of a key the chosen kind does not read is refused:
#: it would change nothing; session 30)
PSF_KEYS = {"gaussian": ("sigma_arcsec",), "king": ("core_arcsec", "beta")}
X_RESPONSE_KEYS = {"gaussian": ("sigma_ev",), "ccd": ("sigma_ev_at_1kev", "tail_fraction")}
Y_RESPONSE_KEYS = {"gaussian": ("sigma_ev",)}
AREA_KINDS = ("flat", "pn_like", "resolve_like")
#: the knot's velocity lies on the shell's velocity grid, +-KNOT_V_RANGE * v_exp_kms (a knot faster than that was
#: moved to the grid's end silently before session 30; it is refused)
KNOT_V_RANGE = 1.1


def _number(value, key, lo=None, hi=None, lo_open=True, hi_open=False, what="a number"):
    """``value`` as a float if it is a finite real number within (lo, hi) (open or closed ends), else a ValueError
    naming the toy key ``key`` and the allowed range."""
    ok = not isinstance(value, bool) and isinstance(value, numbers.Real) and np.isfinite(float(value))
    if ok and lo is not None:
        ok = value > lo if lo_open else value >= lo
    if ok and hi is not None:
        ok = value < hi if hi_open else value <= hi
    if not ok:
        rng = ("" if lo is None and hi is None else
               f" in {'(' if lo_open else '['}{'-inf' if lo is None else f'{lo:g}'}, "
               f"{'inf' if hi is None else f'{hi:g}'}{')' if hi_open or hi is None else ']'}")
        raise ValueError(f"toy {key} must be {what}{rng}; got {value!r}")
    return float(value)


def _table(cfg, key):
    """The sub-table ``cfg[key]`` (dotted path), refused by name when an override replaced it by a non-table."""
    d = cfg
    for k in key.split("."):
        d = d.get(k) if isinstance(d, dict) else None
        if not isinstance(d, dict):
            raise ValueError(f"toy {key} must be a table (a dict of settings, e.g. {key.split('.')[-1]}={{...}}); "
                             f"got {d!r}")
    return d


def _check_psf(psf, key):
    kind = psf.get("kind")
    if kind not in PSF_KEYS:
        raise ValueError(f"toy {key}.kind must be 'gaussian' (with sigma_arcsec) or 'king' (with "
                         f"core_arcsec and beta); got {kind!r}")
    if kind == "gaussian":
        if "sigma_arcsec" not in psf:
            raise ValueError(f"toy {key}.sigma_arcsec (Gaussian sigma, arcsec) is required when {key}.kind is "
                             f"'gaussian'")
        _number(psf["sigma_arcsec"], f"{key}.sigma_arcsec", 0.0, what="the Gaussian sigma in arcsec, a number")
    else:
        if "core_arcsec" not in psf:
            raise ValueError(f"toy {key}.core_arcsec (King core radius, arcsec) is required when {key}.kind is "
                             f"'king'")
        _number(psf["core_arcsec"], f"{key}.core_arcsec", 0.0, what="the King core radius in arcsec, a number")
        _number(psf.get("beta", 1.5), f"{key}.beta", 1.0,
                what="the King slope (1 + r^2/r_c^2)^-beta, finite flux only for beta > 1: a number")


def _check_unread(overrides, cfg):
    """Refuse an override of a PSF / response key that the kind in force does not read (session 30: x.psf.beta on a
    Gaussian PSF or y.response.kind="ccd" were accepted and changed nothing)."""
    for side in ("x", "y"):
        over = overrides.get(side)
        if not isinstance(over, dict):
            continue
        for part, table in (("psf", PSF_KEYS), ("response", X_RESPONSE_KEYS if side == "x" else Y_RESPONSE_KEYS)):
            o = over.get(part)
            if not isinstance(o, dict):
                continue
            kind = cfg[side][part].get("kind")
            unread = sorted(set(o) - {"kind"} - set(table.get(kind, ())))
            if kind in table and unread:
                raise ValueError(f"toy {side}.{part}.{unread[0]} is not read by a {kind!r} {part} (it reads "
                                 f"{', '.join(table[kind])}); set {side}.{part}.kind to "
                                 f"{' or '.join(repr(k) for k in table if unread[0] in table[k]) or 'another kind'}"
                                 f" or drop the key")


def _check_config(cfg):
    """Refuse settings the generator cannot draw from, naming the key (session 29: counts=0, n_channels=0 or an
    unknown PSF kind failed deep inside NumPy with no hint of the key; session 30: a King PSF without core_arcsec,
    a Y pixel finer than X's, zero widths, an unknown line list or a table replaced by a number too)."""
    if cfg.get("lines") not in LINES:
        raise ValueError(f"toy lines must be one of {sorted(LINES)}; got {cfg.get('lines')!r}")
    er = cfg.get("energy_range")
    if not (isinstance(er, (list, tuple)) and len(er) == 2):
        raise ValueError(f"toy energy_range must be [low, high] in keV; got {er!r}")
    e0 = _number(er[0], "energy_range[0]", 0.0, what="the low end in keV, a number")
    _number(er[1], "energy_range[1]", e0, what="the high end in keV, a number")
    for side in ("x", "y"):
        c = _table(cfg, side)
        counts = c["counts"]
        if isinstance(counts, bool) or not isinstance(counts, numbers.Real) or not (0 < counts < 1e15):
            raise ValueError(f"toy {side}.counts must be the expected number of photons, a number in (0, 1e15); "
                             f"got {counts!r}")
        n = c["n_channels"]
        if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
            raise ValueError(f"toy {side}.n_channels must be an integer >= 1; got {n!r}")
        _number(c["pixel_size"], f"{side}.pixel_size", 0.0, what="the pixel size in arcsec, a number")
        _check_psf(_table(cfg, f"{side}.psf"), f"{side}.psf")
        area = _table(cfg, f"{side}.area")
        if area.get("kind") not in AREA_KINDS:
            raise ValueError(f"toy {side}.area.kind must be one of {AREA_KINDS}; got {area.get('kind')!r}")
        _number(area.get("value"), f"{side}.area.value", 0.0, what="the effective area in cm2, a number")
        resp = _table(cfg, f"{side}.response")
        kinds = X_RESPONSE_KEYS if side == "x" else Y_RESPONSE_KEYS
        if resp.get("kind") not in kinds:  # session 30: "foo" was built as the CCD RMF, y's kind never read
            what = ("'gaussian' (a Gaussian kernel of sigma_ev) or 'ccd' (an RMF: sigma_ev_at_1kev, tail_fraction)"
                    if side == "x" else "'gaussian' (the sharp-spectral line spread is a Gaussian of sigma_ev)")
            raise ValueError(f"toy {side}.response.kind must be {what}; got {resp.get('kind')!r}")
        for k in kinds[resp["kind"]]:
            if k == "tail_fraction":
                _number(resp.get(k, 0.0), f"{side}.response.{k}", 0.0, 1.0, lo_open=False, hi_open=True,
                        what="the fraction of photons in the low-energy shoulder, a number")
            elif k not in resp:
                raise ValueError(f"toy {side}.response.{k} is required when {side}.response.kind is "
                                 f"{resp['kind']!r}")
            else:
                _number(resp[k], f"{side}.response.{k}", 0.0, what="the line-spread sigma in eV, a number")
    cx = cfg["x"]
    _number(cx["exposure"], "x.exposure", 0.0, what="the exposure in s, a number")
    shape = cx["shape"]
    if not (isinstance(shape, (list, tuple)) and len(shape) == 2
            and all(isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= 1 for v in shape)):
        raise ValueError(f"toy x.shape must be [M, N], two integers >= 1 (X pixels); got {shape!r}")
    px, py = float(cx["pixel_size"]), float(cfg["y"]["pixel_size"])
    v = py / px
    if round(v) < 1 or abs(v - round(v)) > 1e-9 * v or any(int(s) % round(v) for s in shape):
        raise ValueError(f"toy y.pixel_size ({py:g} arcsec) must be a whole multiple (>= 1) of x.pixel_size "
                         f"({px:g} arcsec) that divides x.shape {list(shape)}: each Y pixel covers a whole block of "
                         f"X pixels")
    fine, coarse = cfg["y"]["n_channels"], cfg["x"]["n_channels"]
    if fine % coarse:
        raise ValueError(f"toy y.n_channels ({fine}) must be a multiple of x.n_channels ({coarse}): each coarse "
                         f"channel holds a whole number of fine ones")
    src = _table(cfg, "source")
    _number(src["radius_arcsec"], "source.radius_arcsec", 0.0, what="the shell radius in arcsec, a number")
    _number(src["thickness_arcsec"], "source.thickness_arcsec", 0.0, what="the shell FWHM in arcsec, a number")
    vexp = _number(src["v_exp_kms"], "source.v_exp_kms", 0.0, what="the expansion velocity in km/s, a number")
    _number(src["clumpiness"], "source.clumpiness", 0.0, lo_open=False, what="the log-normal sigma, a number")
    kt = src["kT_keV"]
    if not (isinstance(kt, (list, tuple)) and len(kt) == 2):
        raise ValueError(f"toy source.kT_keV must be [low, high] temperatures in keV; got {kt!r}")
    t0 = _number(kt[0], "source.kT_keV[0]", 0.0, what="the lowest temperature in keV, a number")
    _number(kt[1], "source.kT_keV[1]", t0, lo_open=False, what="the highest temperature in keV, a number")
    knot = _table(cfg, "source.knot")
    _number(knot["x_arcsec"], "source.knot.x_arcsec", what="the knot position in arcsec, a number")
    _number(knot["y_arcsec"], "source.knot.y_arcsec", what="the knot position in arcsec, a number")
    _number(knot["sigma_arcsec"], "source.knot.sigma_arcsec", 0.0, what="the knot's Gaussian sigma in arcsec, a number")
    _number(knot["brightness"], "source.knot.brightness", 0.0, lo_open=False, what="a number")
    _number(knot["kT_keV"], "source.knot.kT_keV", 0.0, what="the knot temperature in keV, a number")
    vmax = KNOT_V_RANGE * vexp
    _number(knot["v_kms"], "source.knot.v_kms", -vmax, vmax, lo_open=False,
            what=f"the knot's line-of-sight velocity in km/s within the shell's velocity grid, +-{KNOT_V_RANGE:g} x "
                 f"source.v_exp_kms ({vexp:g} km/s): a number")


# ----------------------------------------------------------------------------- public
def make(name, seed=0, **overrides):
    """Build a toy pair ``(x_obs, y_obs, truth)``; see the module docstring.

    ``x_obs`` is sharp in space (CCD-like), ``y_obs`` sharp in energy (microcalorimeter-like);
    ``truth`` is a DataArray (x, y, energy) of photon flux per voxel, ph cm-2 s-1, on the
    fused grid (x, y of ``x_obs``; energy of ``y_obs``).
    """
    _check_overrides(overrides, _known_keys())
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0 (the toy is deterministic: the same seed gives the same "
                         f"counts); got {seed!r}")
    cfg = _merge(load_config(name), overrides)
    _check_config(cfg)
    _check_unread(overrides, cfg)
    rng = np.random.default_rng(seed)
    cx, cy = cfg["x"], cfg["y"]
    e0, e1 = cfg["energy_range"]
    M, N = cx["shape"]
    px, py = float(cx["pixel_size"]), float(cy["pixel_size"])
    v = int(round(py / px))
    L, l = int(cy["n_channels"]), int(cx["n_channels"])
    fine = np.linspace(e0, e1, L + 1)
    coarse = fine[:: L // l]
    xc = (np.arange(M) - (M - 1) / 2) * px
    yc = (np.arange(N) - (N - 1) / 2) * px

    wc, wl, kT, vel = sky_weights(cfg, xc, yc, rng)
    psf_x = psf_image(cx["psf"], px, n_max=max(M, N))
    wc, wl = _blur(wc, psf_x), _blur(wl, psf_x)
    sig_y = cy["response"]["sigma_ev"] * 1e-3
    cont, lines = _templates(cfg, fine, kT, vel, sig_y)
    truth = wc.reshape(M * N, -1) @ cont + wl.reshape(M * N, -1) @ lines.reshape(-1, L)
    truth = truth.reshape(M, N, L)

    # instruments; X area/response on a fine true-energy grid like an ARF/RMF
    et = np.arange(e0 - 0.05, e1 + 0.05 + 1e-9, 0.001)
    et_da = lambda vals: xr.DataArray(  # noqa: E731
        vals, dims="energy_true",
        coords={"energy_true": ("energy_true", 0.5 * (et[1:] + et[:-1]), {"units": "keV"}),
                "energy_true_lo": ("energy_true", et[:-1], {"units": "keV"}),
                "energy_true_hi": ("energy_true", et[1:], {"units": "keV"})},
        attrs={"units": "cm2"})
    ecen = 0.5 * (et[1:] + et[:-1])
    area_x = et_da(_area(cx["area"], ecen)) if cx["area"]["kind"] != "flat" else cx["area"]["value"]
    area_y = et_da(_area(cy["area"], ecen)) if cy["area"]["kind"] != "flat" else cy["area"]["value"]
    if cx["response"]["kind"] == "gaussian":
        s = cx["response"]["sigma_ev"] * 1e-3
        spacing = min(s / 4, float(np.diff(fine)[0]))
        h = int(np.ceil(5 * s / spacing))
        kern = _gaussian(np.arange(-h, h + 1) * spacing, s)
        resp_x, resp_kw = kern / kern.sum(), {"response_spacing": spacing}
    else:
        mat = _ccd_rmf(cx["response"], et, coarse)
        resp_x = xr.DataArray(
            mat, dims=("energy_true", "energy"),
            coords={"energy_true": ("energy_true", ecen, {"units": "keV"}),
                    "energy_true_lo": ("energy_true", et[:-1], {"units": "keV"}),
                    "energy_true_hi": ("energy_true", et[1:], {"units": "keV"}),
                    "energy_lo": ("energy", coarse[:-1], {"units": "keV"}),
                    "energy_hi": ("energy", coarse[1:], {"units": "keV"})})
        resp_kw = {}
    psf_y = psf_image(cy["psf"], px, n_max=max(M, N))

    zeros_x, zeros_y = np.zeros((M, N, l)), np.zeros((M // v, N // v, L))
    x_obs = observation(zeros_x, dims=("x", "y", "energy"), energy_edges=coarse, pixel_size=px,
                        exposure=float(cx["exposure"]), effective_area=area_x, response=resp_x,
                        name=cx["name"], **resp_kw)
    y_obs = observation(zeros_y, dims=("x", "y", "energy"), energy_edges=fine, pixel_size=py, exposure=1.0,
                        effective_area=area_y, psf=psf_y, psf_pixel_size=px, name=cy["name"])
    from .grid import fusion_grid

    grid = fusion_grid(x_obs, y_obs)
    mx, my = build_model(grid, x_obs, SPATIAL), build_model(grid, y_obs, SPECTRAL)
    truth *= float(cx["counts"]) / mx.forward(truth).sum()
    t_y = float(cy["counts"]) / my.forward(truth).sum()
    x_counts = rng.poisson(mx.forward(truth)).astype(np.float32)
    y_counts = rng.poisson(t_y * my.forward(truth)).astype(np.float32)

    x_obs = x_obs.assign(counts=x_obs["counts"].copy(data=x_counts))
    y_obs = y_obs.assign(counts=y_obs["counts"].copy(data=y_counts), exposure=((), t_y, {"units": "s"}))
    for o in (x_obs, y_obs):
        o.attrs.update({"toy": name, "seed": int(seed)})
    truth_da = xr.DataArray(
        truth.astype(np.float32), dims=("x", "y", "energy"),
        coords={c: grid[c] for c in ("x", "y", "energy", "energy_lo", "energy_hi")},
        name="flux", attrs={"units": "ph cm-2 s-1", "long_name": "true photon flux per voxel", "toy": name},
    )
    return x_obs, y_obs, truth_da
