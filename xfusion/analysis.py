r"""Line maps from a cube: per-pixel line flux, centroid velocity and width (km/s).

``line_map(cube, line_energy, window=..., continuum=...)`` measures one emission line in
every pixel of a photon-flux cube (a fusion result, a toy/scene truth, a baseline), all
pixels at once with NumPy (no Python loop over pixels).

Model (per pixel; ``z_k`` the flux in channel ``k`` with edges ``[lo_k, hi_k]``, centre
``E_k``, width ``dE_k``)::

    z_k = c_k + r_k          c_k = (a + b (E_k - Ebar) + q (E_k - Ebar)^2) dE_k     (local continuum)

* **Continuum**: the flux *density* ``z_k / dE_k`` in the channels of the side bands
  (``continuum``: energy ranges in keV, line-free) is fitted by least squares with a
  quadratic ``a + b (E - Ebar) + q (E - Ebar)^2`` (``Ebar`` the mean side-band energy); it is
  integrated over each window channel. Thermal continua are curved: a straight line leaves a bowl
  under the window that pulls the second moment to zero. Two side bands with fewer than 3 channels
  each give a straight line (``q = 0``), one side band a flat continuum. The curvature, extrapolated
  from the side bands, costs noise: the farther the bands from a wide window, the more (in the
  errors below).
* **Line** (``method="moments"``): over the window channels (centres inside ``window``)
  ``F = sum r_k`` (line flux, ph cm-2 s-1 for a flux cube), ``Ec = sum E_k r_k / F``,
  ``s2 = sum (E_k - Ec)^2 r_k / F - sum dE_k^2 r_k / (12 F)`` (Sheppard's correction for binning,
  flux-weighted like the moment itself)
  ``- lsf_sigma^2`` (an instrumental line spread to remove, keV).
  ``method="gaussian"`` then refines ``(F, Ec, s)`` by a least-squares fit of a Gaussian
  integrated over the channels, ``r_k = F [Phi((hi_k - Ec)/s) - Phi((lo_k - Ec)/s)]``
  (Levenberg-Marquardt, all pixels at once, started from the moments; the Gaussian
  width has ``lsf_sigma`` removed in quadrature afterwards; where the fitted centre leaves
  the window the moments are kept). Moments are robust for any
  line shape (e.g. two Doppler-split halves: the centroid is their flux-weighted mean,
  the width includes the splitting); the Gaussian fit is not biased by the truncation of
  wide lines by the window.
* **Velocity** (km/s, positive = receding / redshifted): the Doppler shift of the rest
  energy ``E0`` to the centroid, ``Ec = E0 / (1 + v/c)``, i.e. ``v = c (E0/Ec - 1)``;
  **width** ``sigma_v = c s / Ec`` (km/s, Gaussian sigma, not FWHM).

**Wavelength cubes** (JWST: :mod:`xfusion.jwst`; the ``energy`` dimension holds wavelength in um,
``attrs["spectral_unit"] = "um"`` or ``units="um"`` on the ``energy``/``energy_lo`` coordinates) are
measured on their own axis: every ``E`` above is then a wavelength ``lambda`` in um (``line_energy`` is
the rest wavelength ``lambda0``; ``window``, ``continuum`` and ``lsf_sigma`` are in um) and the Doppler
shift is ``lambda_c = lambda0 (1 + v/c)``, i.e. ``v = c (lambda_c/lambda0 - 1)`` (still positive =
receding), width ``sigma_v = c s / lambda_c``. Plain arrays (with ``energy_edges``) are keV.

Pixels where the line flux is not positive (``F <= min_flux``) or the centroid falls outside
the window (noise, not a line) are marked ``valid = False``;
there ``velocity`` and ``line_width`` are NaN (NaN is produced nowhere else). Where the
variance is not positive (``s2 <= 0``: the line is no wider than the instrumental spread,
within noise) the width is 0 and ``resolved = False``.

Errors: give ``replicas`` (replica cubes of ``cube``, e.g. ``xfusion.uncertainty(...)
["flux_replicas"]``, or use :func:`line_map_errors`): the same measurement is made on every
replica and the errors of ``flux``, ``velocity`` and ``line_width`` (km/s) are the spread of
the replica values -- this keeps the correlations between voxels and the continuum noise.
Or give ``variance`` (a cube of per-voxel flux variances like ``cube``) for first-order errors,
treating voxels as independent: the delta method of the moments, or for ``method="gaussian"`` the
fit's own covariance ``(J^T J)^-1 J^T diag(var) J (J^T J)^-1`` (``J`` the Jacobian of the
channel-integrated Gaussian at the fitted parameters); the side-band noise enters through the
continuum fit (linear in the data) subtracted from the window.

Channels are the cube's own ``energy_lo``/``energy_hi``: uneven widths and gaps (channels
dropped) are allowed. With a gap inside the window, or a window that runs past the cube's band by more
than half a channel, the moments miss the line flux there (a warning says so); the Gaussian fit uses the
channels that are present.

``map_errors(truth_maps, estimate_maps, fraction=0.5)`` compares two sets of maps over the
brighter part of the field (the pixels whose *true* line flux is in the top ``fraction``).
"""
from __future__ import annotations

import warnings

import numpy as np
import xarray as xr
from scipy.special import ndtr

from .observation import SPECTRAL_UNITS, _is_quantity, _to_unit, spectral_unit

__all__ = ["line_map", "line_map_errors", "map_errors", "brighter_region", "C_KMS"]

#: speed of light, km/s
C_KMS = 299792.458
_CUBE_DIMS = ("x", "y", "energy")
_SQRT2PI = np.sqrt(2.0 * np.pi)


def _as_cube(cube, energy_edges, what="cube", like=None):
    """(values float64 (x, y, energy), channel bounds ``(lo, hi)`` (L,) keV or um, coords for 2D outputs); ``what``
    names it in errors. A DataArray's channels are its ``energy_lo``/``energy_hi`` (increasing, not overlapping;
    gaps allowed, e.g. a cube with bad channels dropped); ``energy_edges`` gives contiguous channels. ``like``:
    ``(shape, bounds)`` of the cube this one goes with (a variance): it must have that shape, and its channels (if
    it has its own coordinates) those bounds; without coordinates it takes them."""
    if isinstance(cube, xr.Dataset):
        if "flux" not in cube.data_vars:
            raise ValueError("line_map needs a cube: a Dataset with a 'flux' variable (x, y, energy), a DataArray "
                             "or an array with energy_edges=")
        cube = cube["flux"]
    own = False  # channels from the DataArray's own coordinates
    if isinstance(cube, xr.DataArray):
        missing = set(_CUBE_DIMS) - set(cube.dims)
        if missing or cube.ndim != 3:
            raise ValueError(f"{what} must have dims {_CUBE_DIMS} (any order); got {cube.dims}")
        da = cube.transpose(*_CUBE_DIMS)
        own = energy_edges is None and "energy_lo" in da.coords and "energy_hi" in da.coords
        if own:
            lo = np.asarray(da["energy_lo"].values, dtype=np.float64)
            hi = np.asarray(da["energy_hi"].values, dtype=np.float64)
        elif energy_edges is None and like is None:
            raise ValueError(f"{what} has no energy_lo/energy_hi coordinates; pass energy_edges= (keV)")
        coords = {d: da[d] for d in ("x", "y") if d in da.coords}
        values = np.asarray(da.values, dtype=np.float64)
    else:
        values = np.asarray(cube, dtype=np.float64)
        if values.ndim != 3:
            raise ValueError(f"{what} must be 3D (x, y, energy); got shape {values.shape}")
        if energy_edges is None and like is None:
            raise ValueError(f"a plain-array {what} needs energy_edges= (keV, n_energy + 1 values)")
        coords = {}
    if like is not None:
        shape, (lo0, hi0) = like
        if values.shape != tuple(shape):
            raise ValueError(f"{what} has shape {values.shape} (x, y, energy), the cube {tuple(shape)}: give one "
                             f"{what} per voxel of the cube")
        if own and (lo.shape != lo0.shape or not (np.allclose(lo, lo0, rtol=1e-9, atol=0)
                                                  and np.allclose(hi, hi0, rtol=1e-9, atol=0))):
            raise ValueError(f"{what} energy_lo/energy_hi differ from the cube's channels: give the {what} of this "
                             f"cube (on its channels), or an array / a DataArray without channel coordinates")
        if not own:
            lo, hi = lo0, hi0
    elif not own:
        edges = np.asarray(energy_edges, dtype=np.float64)
        if edges.shape != (values.shape[-1] + 1,) or np.any(np.diff(edges) <= 0):
            raise ValueError(f"energy edges must be {values.shape[-1] + 1} strictly increasing values (keV)")
        lo, hi = edges[:-1], edges[1:]
    if own and not (np.all(hi > lo) and np.all(lo[1:] >= hi[:-1] - 1e-9 * (hi[:-1] - lo[:-1]))):
        raise ValueError(f"{what} channels must increase in energy without overlapping (energy_lo < energy_hi <= the "
                         "next energy_lo); sort the cube by energy (cube.sortby('energy'))")
    if not np.all(np.isfinite(values)):
        raise ValueError(f"{what} contains NaN or inf; line_map does not patch them -- fix or mask the {what} first")
    return values, (lo, hi), coords


def _channels(centres, rng, what, bounds, unit):
    lo, hi = (float(v) for v in rng)
    if not hi > lo:
        raise ValueError(f"{what} range must be (low, high) {unit} with high > low; got {rng}")
    idx = np.flatnonzero((centres >= lo) & (centres < hi))
    if idx.size == 0:
        raise ValueError(f"{what} {lo:.6g}-{hi:.6g} {unit} contains no channel centre of the cube "
                         f"({bounds[0][0]:.6g}-{bounds[1][-1]:.6g} {unit}); choose a range inside the band")
    return idx


def _continuum(centres, widths, bands, win, degree=2):
    """Side-band continuum as a linear map: ``(side, H)``, the side-band channel indices and ``H`` (n_win, n_side),
    so that the continuum (flux per channel) in the window channels ``win`` is ``z[:, side] @ H.T`` for spectra
    ``z`` (P, L).

    The flux density in the side-band channels is fitted by least squares with a polynomial in ``E - Ebar``
    (``Ebar`` the mean side-band energy) and integrated over each window channel: quadratic with two side bands of at
    least 3 channels each (a thermal continuum is curved: the bowl a straight line leaves under the window collapsed
    the second moment, session 32), straight with two smaller ones, flat with one."""
    side = np.concatenate(bands)
    e = centres[side]
    ebar = e.mean()
    scale = max(float(np.ptp(e)), float(np.abs(centres[win] - ebar).max()))  # well-conditioned powers
    if degree >= 2 and len(bands) > 1 and min(b.size for b in bands) >= 3:
        deg = 2
    else:
        deg = min(degree, 1 if len(bands) > 1 and np.ptp(e) > 0 else 0)
    A = np.vander((e - ebar) / scale, deg + 1, increasing=True)  # (n_side, deg + 1)
    B = np.vander((centres[win] - ebar) / scale, deg + 1, increasing=True)  # (n_win, deg + 1)
    return side, widths[win][:, None] * (B @ np.linalg.pinv(A)) / widths[side][None, :]


def _gauss_fit(r, lo, hi, F0, mu0, s0, smin, smax, n_iter=30):
    """Levenberg-Marquardt fit of F [Phi((hi-mu)/s) - Phi((lo-mu)/s)] to r (P, K), all pixels at once."""
    p = np.stack([F0, mu0, np.log(s0)], axis=1)
    lam = np.full(p.shape[0], 1e-2)

    def model(p):
        return _gauss_model(p[:, 0:1], p[:, 1:2], np.exp(p[:, 2:3]), lo, hi)

    m, J = model(p)
    cost = np.sum((r - m) ** 2, axis=1)
    eye = np.eye(3)
    for _ in range(n_iter):
        JtJ = np.einsum("pki,pkj->pij", J, J)
        g = np.einsum("pki,pk->pi", J, r - m)
        A = JtJ + lam[:, None, None] * (np.einsum("pii->pi", JtJ)[:, :, None] * eye + 1e-12 * eye)
        step = np.linalg.solve(A, g[..., None])[..., 0]
        pn = p + step
        pn[:, 1] = np.clip(pn[:, 1], lo[0] - smax, hi[-1] + smax)  # keep the centre near the window
        pn[:, 2] = np.clip(pn[:, 2], np.log(smin), np.log(smax))
        mn, Jn = model(pn)
        cn = np.sum((r - mn) ** 2, axis=1)
        ok = np.isfinite(cn) & (cn < cost)
        p[ok], m[ok], J[ok], cost[ok] = pn[ok], mn[ok], Jn[ok], cn[ok]
        lam = np.where(ok, lam / 3, lam * 4)
    return p[:, 0], p[:, 1], np.exp(p[:, 2])


def _gauss_model(F, mu, s, lo, hi):
    """Channel-integrated Gaussian ``F [Phi((hi-mu)/s) - Phi((lo-mu)/s)]`` (P, K) and its Jacobian (P, K, 3) with
    respect to ``(F, mu, ln s)``; ``F, mu, s`` (P, 1), ``lo, hi`` (K,)."""
    a, b = (lo[None] - mu) / s, (hi[None] - mu) / s
    pa, pb = np.exp(-0.5 * a * a) / _SQRT2PI, np.exp(-0.5 * b * b) / _SQRT2PI
    g = ndtr(b) - ndtr(a)
    return F * g, np.stack([g, F * (pa - pb) / s, F * (a * pa - b * pb)], axis=-1)


def _gauss_cov(F, mu, s, lo, hi, var, H, var_side):
    """Covariance (P, 3, 3) of the least-squares Gaussian parameters ``(F, mu, ln s)`` for independent channel
    variances ``var`` (P, K) in the window and ``var_side`` (P, n_side) in the side bands, whose noise enters through
    the continuum ``H`` (K, n_side) subtracted from the window: the sandwich ``(J^T J)^-1 S (J^T J)^-1``,
    ``S = J^T diag(var) J + (H^T J)^T diag(var_side) H^T J`` (first order)."""
    _, J = _gauss_model(F[:, None], mu[:, None], s[:, None], lo, hi)
    A = np.linalg.pinv(np.einsum("pki,pkj->pij", J, J))
    HJ = np.einsum("kj,pki->pji", H, J)
    B = np.einsum("pki,pk,pkj->pij", J, var, J) + np.einsum("pji,pj,pjk->pik", HJ, var_side, HJ)
    return A @ B @ A


def _measure(z, centres, widths, bounds, win, bands, E0, method, lsf_sigma, min_flux, degree=2):
    """Line parameters of the spectra ``z`` (P, L): ``(F, Ec, s2, ok, continuum (P, n_win), r, e, sheppard, fitted)``
    (see the module docstring; ``s2`` has the instrumental spread removed; ``sheppard`` the binning correction,
    per pixel; ``fitted`` marks the pixels whose values come from the Gaussian fit)."""
    side, H = _continuum(centres, widths, bands, win, degree)
    cont = z[:, side] @ H.T
    r = z[:, win] - cont
    e = centres[win]
    F = r.sum(axis=1)
    ok = np.isfinite(F) & (F > min_flux)
    Fs = np.where(ok, F, 1.0)
    Ec = np.where(ok, r @ e / Fs, E0)
    ok &= (Ec >= e[0]) & (Ec <= e[-1])  # a centroid outside the window is noise, not a line
    Ec = np.where(ok, Ec, E0)
    d = e[None, :] - Ec[:, None]
    w2 = widths[win] ** 2
    if np.ptp(w2) == 0:
        sheppard = np.full(F.shape, w2[0] / 12.0)
    else:  # flux-weighted like the second moment (session 29: the plain mean biased widths on uneven channels)
        sheppard = np.where(ok, r @ w2 / (12.0 * Fs), 0.0)
    s2 = np.where(ok, np.sum(d * d * r, axis=1) / Fs - sheppard, 0.0)
    fitted = np.zeros(F.shape, bool)
    if method == "gaussian":
        smin, smax = 0.25 * widths[win].min(), float(e[-1] - e[0])
        s0 = np.clip(np.sqrt(np.maximum(s2, 0.0)), smin, smax)
        Fg, Eg, sg = F.copy(), Ec.copy(), s0.copy()
        idx = np.flatnonzero(ok)
        if idx.size:
            Fg[idx], Eg[idx], sg[idx] = _gauss_fit(r[idx], bounds[0][win], bounds[1][win], F[idx], Ec[idx], s0[idx],
                                                   smin, smax)
        fitted = ok & (Eg > e[0]) & (Eg < e[-1]) & (Fg > min_flux)
        F, Ec = np.where(fitted, Fg, F), np.where(fitted, Eg, Ec)
        s2 = np.where(fitted, sg ** 2, s2)  # elsewhere (fit left the window): the moments are kept
    s2 = s2 - float(lsf_sigma) ** 2
    return F, Ec, s2, ok, cont, r, e, sheppard, fitted


def _in_unit(v, unit, what):
    """Values on the cube's spectral axis (``unit``: keV or um): numbers as given, astropy Quantities (also inside a
    tuple or list) converted (energy to wavelength is not: the cube's axis decides)."""
    if _is_quantity(v) or isinstance(v, xr.DataArray):
        return _to_unit(v, unit, what)[0]
    if isinstance(v, (tuple, list)):
        return type(v)(_in_unit(e, unit, what) for e in v)
    return v


def _axis_unit(cube):
    """``"keV"`` or ``"um"``: the spectral unit of a Dataset / DataArray cube (``attrs["spectral_unit"]``, else the
    ``units`` of its ``energy`` or ``energy_lo`` coordinate; none: keV); a plain array is keV."""
    if not isinstance(cube, (xr.Dataset, xr.DataArray)):
        return "keV"
    unit = spectral_unit(cube)  # refuses a unit xfusion does not know
    if unit is None and "energy_lo" in cube.coords:
        unit = cube["energy_lo"].attrs.get("units")
        if unit is not None and str(unit) not in SPECTRAL_UNITS:
            raise ValueError(f"the cube's energy_lo is in {unit!r}; line_map measures cubes in keV (X-ray energy) or "
                             "um (wavelength): convert the channel edges first")
    return str(unit) if unit is not None else "keV"


def _velocity(Ec, E0, wavelength):
    """Centroid velocity (km/s, + receding): ``c (E0/Ec - 1)`` on an energy axis, ``c (Ec/E0 - 1)`` on a wavelength
    axis; and ``|dv/dEc|`` (km/s per axis unit) for the error propagation."""
    if wavelength:
        return C_KMS * (Ec / E0 - 1.0), C_KMS / E0
    return C_KMS * (E0 / Ec - 1.0), C_KMS * E0 / Ec ** 2


def line_map(cube, line_energy, *, window, continuum, method="moments", lsf_sigma=0.0, min_flux=0.0,
             variance=None, replicas=None, error="std", energy_edges=None, name=None,
             continuum_degree=2) -> xr.Dataset:
    """Line flux, centroid velocity and width of one line in every pixel (see module docstring).

    Parameters
    ----------
    cube : Dataset with ``flux``, DataArray (x, y, energy) with ``energy_lo``/``energy_hi``
        coords (keV, or um for a wavelength cube: see the module docstring), or an ndarray
        (x, y, energy) with ``energy_edges`` (keV). Flux per voxel (e.g. ph cm-2 s-1, or MJy/sr);
        the line flux comes out in the same unit per pixel.
    line_energy : float, keV (um on a wavelength cube: the rest wavelength)
        Rest energy ``E0`` of the line (velocity zero). This and the other energies (``window``,
        ``continuum``, ``lsf_sigma``) are in the cube's spectral unit; they may be astropy Quantities
        (converted to it; energy is not converted to wavelength).
    window : (low, high) keV (um)
        Channels whose centres lie inside are the line window.
    continuum : sequence of (low, high) keV (um) ranges (1 or 2, line-free)
        Side bands for the local continuum (quadratic; see the module docstring).
    method : "moments" (default) or "gaussian".
    continuum_degree : 2 (default), 1 or 0
        Highest power of the side-band continuum: 2 a quadratic (two side bands of >= 3 channels each, else a
        straight line), 1 a straight line (the rule before session 32), 0 flat. The straight line leaves a bowl
        under the window on a curved (thermal) continuum that biases the width low -- on noise-free held-out
        scenes 94-100 % of point-source pixels came out unresolved (true 130-140 km/s), 141 km/s with the
        quadratic -- and the line flux by -0.2 to -2.5 %; the quadratic costs noise: flux scatter x1.25-1.4
        (x2.2 with side bands far from a wide window on a straight continuum), velocity unchanged (session 32,
        ``s32/width/`` of the project notes). Low-count maps on nearly straight continua may prefer 1.
    lsf_sigma : float, keV (um)
        Instrumental Gaussian spread removed in quadrature from the width (0 keeps it).
    min_flux : float
        Pixels with line flux ``<= min_flux`` are not valid.
    variance : (x, y, energy) array or DataArray with the cube's shape, optional
        Per-voxel flux variances (on the cube's channels: a DataArray's own ``energy_lo``/``energy_hi``, if any,
        must be the cube's); adds ``flux_err``, ``velocity_err``, ``line_width_err``
        (delta method, voxels independent).
    replicas : (replica, x, y, energy) array or DataArray, optional
        Replica cubes of ``cube`` (``xfusion.uncertainty(...)["flux_replicas"]``): the same
        measurement is made on every replica and ``flux_err``, ``velocity_err`` (km/s),
        ``line_width_err`` (km/s) are their spread (``error="std"``: standard deviation,
        ddof=1; ``"quantile"``: half the 16-84% range), over the replicas where the line is
        valid; also ``velocity_replica_mean`` (km/s) and ``n_valid_replicas``. The errors are
        NaN where the estimate is not valid or fewer than half the replicas (and fewer than 2)
        are. Unlike ``variance``, this keeps the correlations between voxels.
    error : "std" or "quantile" (with ``replicas``).

    Returns
    -------
    Dataset on (x, y): ``flux`` (line flux), ``velocity`` (km/s, + = receding),
    ``line_width`` (km/s, Gaussian sigma), ``continuum`` (continuum flux under the window),
    ``valid`` and ``resolved`` (bool), optionally the ``*_err`` maps (NaN where the width is
    not resolved); attrs record every setting (``spectral_unit``; the energies as ``line_energy_kev``,
    ``window_kev``, ... on a keV cube, ``line_wavelength_um``, ``window_um``, ... on a um cube).
    """
    if method not in ("moments", "gaussian"):
        raise ValueError(f"method must be 'moments' or 'gaussian'; got {method!r}")
    if isinstance(continuum_degree, bool) or continuum_degree not in (0, 1, 2):
        raise ValueError(f"continuum_degree must be 0, 1 or 2 (flat, straight, quadratic side-band continuum); got "
                         f"{continuum_degree!r}")
    if replicas is not None and variance is not None:
        raise ValueError("give variance= (delta-method errors) or replicas= (replica spread), not both")
    unit = _axis_unit(cube)
    wavelength = unit == "um"
    line_energy, lsf_sigma = _in_unit(line_energy, unit, "line_energy"), _in_unit(lsf_sigma, unit, "lsf_sigma")
    window, continuum = _in_unit(window, unit, "window"), _in_unit(continuum, unit, "continuum")
    continuum = continuum.tolist() if isinstance(continuum, np.ndarray) else continuum
    E0 = float(line_energy)
    if not np.isfinite(E0) or E0 <= 0:
        raise ValueError(f"line_energy must be a positive {'wavelength' if wavelength else 'energy'} in {unit}; got "
                         f"{line_energy!r}")
    if lsf_sigma < 0:
        raise ValueError(f"lsf_sigma must be >= 0 {unit}; got {lsf_sigma}")
    values, bounds, coords = _as_cube(cube, energy_edges)
    M, N, L = values.shape
    lo, hi = bounds
    centres, widths = 0.5 * (lo + hi), hi - lo
    win = _channels(centres, window, "window", bounds, unit)
    if method == "gaussian" and win.size < 4:
        raise ValueError(f"window {tuple(window)} {unit} holds {win.size} channel(s); method='gaussian' fits 3 "
                         "parameters (flux, centre, width) and needs at least 4 channels: widen the window or use "
                         "method='moments'")
    if isinstance(continuum, (tuple, list)) and len(continuum) == 2 and np.isscalar(continuum[0]):
        continuum = [continuum]
    if not continuum or len(continuum) > 2:
        raise ValueError(f"continuum must be one or two (low, high) {unit} side bands")
    bands = [_channels(centres, b, "continuum band", bounds, unit) for b in continuum]
    if np.intersect1d(np.concatenate(bands), win).size:
        raise ValueError(f"continuum bands {continuum} overlap the line window {tuple(window)}; keep them apart")
    gap = win[:-1][lo[win[1:]] - hi[win[:-1]] > 1e-6 * widths[win[:-1]]]
    if method == "moments" and gap.size:
        warnings.warn(f"the line window has missing channels ({gap.size} gap(s), the first at "
                      f"{hi[gap[0]]:.6g}-{lo[gap[0] + 1]:.6g} {unit}): the moments do not count the line flux "
                      "there, so flux, centroid and width are biased; method='gaussian' fits the channels that are "
                      "present", UserWarning, stacklevel=2)
    # the window past the band edge (by more than the half channel a window edge inside the band may also cut): the
    # same loss as a gap (session 31: a line at the band edge lost 11 % of its flux without a word)
    past = [f"{w:.6g}-{b:.6g} {unit}" for w, b, out in ((window[0], lo[0], window[0] < lo[0] - 0.5 * widths[0]),
                                                     (hi[-1], window[1], window[1] > hi[-1] + 0.5 * widths[-1])) if out]
    if method == "moments" and past:
        warnings.warn(f"the line window {float(window[0]):.6g}-{float(window[1]):.6g} {unit} runs past the cube's "
                      f"band ({lo[0]:.6g}-{hi[-1]:.6g} {unit}; missing: {', '.join(past)}): the moments do not "
                      "count the line flux there, so flux, centroid and width are biased; keep the window inside the "
                      "band, or use method='gaussian' (fits the channels that are present)", UserWarning, stacklevel=2)

    z = values.reshape(M * N, L)
    F, Ec, s2, ok, cont, r, e, sheppard, fitted = _measure(z, centres, widths, bounds, win, bands, E0, method,
                                                           lsf_sigma, min_flux, continuum_degree)
    v, dv_dec = _velocity(Ec, E0, wavelength)
    velocity = np.where(ok, v, np.nan)
    width = np.where(ok, C_KMS * np.sqrt(np.maximum(s2, 0.0)) / Ec, np.nan)
    valid, resolved = ok, ok & (s2 > 0)

    shape2 = (M, N)
    out = xr.Dataset(coords=coords)
    out["flux"] = (("x", "y"), F.reshape(shape2), {"long_name": "line flux (continuum subtracted)"})
    out["velocity"] = (("x", "y"), velocity.reshape(shape2),
                       {"units": "km/s", "long_name": "line-centroid velocity (+ receding)"})
    out["line_width"] = (("x", "y"), width.reshape(shape2), {"units": "km/s", "long_name": "line width (sigma)"})
    out["continuum"] = (("x", "y"), cont.sum(axis=1).reshape(shape2), {"long_name": "continuum under the window"})
    out["valid"] = (("x", "y"), valid.reshape(shape2), {"long_name": "line flux > min_flux"})
    out["resolved"] = (("x", "y"), resolved.reshape(shape2), {"long_name": "width above the removed spread"})

    if variance is not None:
        var, _, _ = _as_cube(variance, None, "variance", like=(values.shape, bounds))
        if np.any(var < 0):
            raise ValueError(f"variance contains negative values (min {var.min():.3g}); variances are >= 0 (give the "
                             "variance of each voxel, e.g. uncertainty(...)['flux_std'] ** 2, not a difference of "
                             "cubes)")
        vw = var.reshape(M * N, L)[:, win]
        side, H = _continuum(centres, widths, bands, win, continuum_degree)
        vs = var.reshape(M * N, L)[:, side]

        def spread(g):  # std of sum_k g_k r_k, r = z_win - H z_side: window and side-band noise
            return np.sqrt(np.sum(g * g * vw, axis=1) + np.sum((g @ H) ** 2 * vs, axis=1))

        Fs = np.where(ok, F, 1.0)
        # delta method: dF/dr_k = 1, dEc/dr_k = (E_k - Ec)/F, ds2/dr_k = ((E_k - Ec)^2 - s2_raw)/F
        s2raw = s2 + float(lsf_sigma) ** 2 + sheppard
        d = e[None, :] - Ec[:, None]
        f_err = spread(np.ones_like(d))
        e_err = spread(d) / np.abs(Fs)
        s2_err = spread(d * d - s2raw[:, None]) / np.abs(Fs)
        s = np.sqrt(np.maximum(s2, 0.0))
        with np.errstate(divide="ignore", invalid="ignore"):
            w_err = np.where(s > 0, s2_err / (2 * np.where(s > 0, s, 1.0)), np.nan)
        idx = np.flatnonzero(fitted)
        if idx.size:  # the Gaussian fit's own errors where its values are used (session 29: the moments' were given)
            s_fit = np.sqrt(s2[idx] + float(lsf_sigma) ** 2)
            C = _gauss_cov(F[idx], Ec[idx], s_fit, lo[win], hi[win], vw[idx], H, vs[idx])
            f_err[idx], e_err[idx] = np.sqrt(C[:, 0, 0]), np.sqrt(C[:, 1, 1])
            with np.errstate(divide="ignore", invalid="ignore"):
                w_err[idx] = np.where(s[idx] > 0, s_fit ** 2 * np.sqrt(C[:, 2, 2]) / np.where(s[idx] > 0, s[idx], 1.0),
                                      np.nan)
        out["flux_err"] = (("x", "y"), f_err.reshape(shape2))
        out["velocity_err"] = (("x", "y"), np.where(ok, dv_dec * e_err, np.nan).reshape(shape2),
                               {"units": "km/s"})
        out["line_width_err"] = (("x", "y"), np.where(resolved, C_KMS * w_err / Ec, np.nan).reshape(shape2),
                                 {"units": "km/s"})
    if replicas is not None:
        _replica_errors(out, replicas, values.shape, (centres, widths, bounds, win, bands, E0, method, lsf_sigma,
                                                      min_flux, wavelength, continuum_degree), ok, resolved, error)
    sfx, line = ("um", "line_wavelength_um") if wavelength else ("kev", "line_energy_kev")
    out.attrs.update({line: E0, f"window_{sfx}": [float(v) for v in window],
                      f"continuum_{sfx}": [[float(v) for v in b] for b in continuum], "method": method,
                      f"lsf_sigma_{sfx}": float(lsf_sigma), "min_flux": float(min_flux), "spectral_unit": unit,
                      "velocity_convention": ("v = c (lambda_c / lambda0 - 1)" if wavelength else "v = c (E0 / Ec - 1)")
                      + ", positive = receding",
                      "name": name or f"line {E0:.4f} {unit}"})
    return out


def _replica_errors(out, replicas, shape, ctx, ok, resolved, error):
    """Add the replica spread of flux, velocity and width to the maps ``out`` (see :func:`line_map`)."""
    if error not in ("std", "quantile"):
        raise ValueError(f"error must be 'std' or 'quantile'; got {error!r}")
    if isinstance(replicas, xr.DataArray):
        if "replica" not in replicas.dims or set(replicas.dims) != {"replica", *_CUBE_DIMS}:
            raise ValueError(f"replicas must have dims ('replica', 'x', 'y', 'energy'); got {replicas.dims}")
        replicas = replicas.transpose("replica", *_CUBE_DIMS).data
    n = int(replicas.shape[0]) if hasattr(replicas, "shape") and len(replicas.shape) == 4 else 0
    if n < 2 or tuple(replicas.shape[1:]) != tuple(shape):
        raise ValueError(f"replicas must be (replica >= 2, x, y, energy) with the cube's shape {tuple(shape)}; got "
                         f"{getattr(replicas, 'shape', None)}")
    centres, widths, bounds, win, bands, E0, method, lsf_sigma, min_flux, wavelength, continuum_degree = ctx
    P = shape[0] * shape[1]
    F, V, W = (np.empty((n, P)) for _ in range(3))
    OK = np.empty((n, P), bool)
    for i in range(n):
        z = np.asarray(replicas[i], dtype=np.float64).reshape(P, shape[2])
        if not np.all(np.isfinite(z)):
            raise ValueError(f"replica {i} contains NaN or inf")
        f, ec, s2, v_ok, *_ = _measure(z, centres, widths, bounds, win, bands, E0, method, lsf_sigma, min_flux,
                                       continuum_degree)
        F[i], OK[i] = f, v_ok
        V[i] = np.where(v_ok, _velocity(ec, E0, wavelength)[0], np.nan)
        W[i] = np.where(v_ok, C_KMS * np.sqrt(np.maximum(s2, 0.0)) / ec, np.nan)
    nv = OK.sum(axis=0)
    enough = ok & (nv >= max(2, (n + 1) // 2))

    def spread(a):
        a = np.where(OK, a, np.nan)[:, enough]
        res = np.full(P, np.nan)
        if a.size:
            with np.errstate(invalid="ignore"):
                if error == "std":
                    res[enough] = np.nanstd(a, axis=0, ddof=1)
                else:
                    q16, q84 = np.nanquantile(a, [0.16, 0.84], axis=0)
                    res[enough] = 0.5 * (q84 - q16)
        return res

    shape2 = shape[:2]
    fs = F.std(axis=0, ddof=1) if error == "std" else 0.5 * np.subtract(*np.quantile(F, [0.84, 0.16], axis=0))
    vmean = np.full(P, np.nan)
    if enough.any():
        vmean[enough] = np.nanmean(np.where(OK, V, np.nan)[:, enough], axis=0)
    out["flux_err"] = (("x", "y"), fs.reshape(shape2), {"long_name": f"line flux error (replica {error})"})
    out["velocity_err"] = (("x", "y"), spread(V).reshape(shape2),
                           {"units": "km/s", "long_name": f"velocity error (replica {error}); NaN: estimate not "
                                                          "valid or too few valid replicas"})
    out["line_width_err"] = (("x", "y"), np.where(resolved, spread(W), np.nan).reshape(shape2),
                             {"units": "km/s", "long_name": f"width error (replica {error}); NaN where unresolved"})
    out["velocity_replica_mean"] = (("x", "y"), vmean.reshape(shape2),
                                    {"units": "km/s", "long_name": "mean replica velocity (minus velocity: bootstrap "
                                                                   "bias estimate)"})
    out["n_valid_replicas"] = (("x", "y"), nv.reshape(shape2).astype(np.int32))
    out.attrs.update({"n_replicas": n, "error": error})


def line_map_errors(uncertainty, line_energy, **kwargs) -> xr.Dataset:
    """Line maps of the result in an :func:`xfusion.uncertainty` Dataset with errors from its replicas:
    ``line_map(uncertainty["flux"], line_energy, replicas=uncertainty["flux_replicas"], **kwargs)``.

    These are the noise-only errors of the tuned cube. For bias-aware velocity errors pass
    ``bias_aware_view(u)`` (``from xfusion.uncertainty import bias_aware_view``; ``u`` from
    ``uncertainty(..., bias_aware=True)``): the maps of the unregularized maximum-likelihood refit with
    its replicas' spread; multiply the errors by
    ``u.attrs["interval_factor"]`` (Student t, n-1 dof) for a 68% interval."""
    if not isinstance(uncertainty, xr.Dataset) or not {"flux", "flux_replicas"} <= set(uncertainty.data_vars):
        raise ValueError("line_map_errors needs the Dataset returned by xfusion.uncertainty (flux and flux_replicas)")
    return line_map(uncertainty["flux"], line_energy, replicas=uncertainty["flux_replicas"], **kwargs)


def brighter_region(truth_maps, fraction=0.5):
    """Boolean (x, y): the pixels valid in ``truth_maps`` whose true line flux is at or above its ``1 - fraction``
    quantile -- the region :func:`map_errors` scores."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1]; got {fraction}")
    tf = np.asarray(truth_maps["flux"].values, dtype=np.float64)
    return np.asarray(truth_maps["valid"].values) & (tf >= np.quantile(tf, 1 - fraction))


def map_errors(truth_maps, estimate_maps, fraction=0.5):
    """RMS errors (km/s) of ``velocity`` and ``line_width`` over the brighter part of the field.

    The region is the pixels whose true line flux is at or above its ``1 - fraction``
    quantile and that are ``valid`` in the truth maps. Pixels in the region that are not
    valid in the estimate are counted (``n_invalid``) and left out of the RMS.

    Returns ``{"velocity_rms_kms", "width_rms_kms", "n_pixels", "n_invalid",
    "line_flux_rel_rms"}`` (the last: RMS of (estimate - truth)/truth of the line flux).
    """
    region = brighter_region(truth_maps, fraction)
    tf = np.asarray(truth_maps["flux"].values, dtype=np.float64)
    ev = np.asarray(estimate_maps["valid"].values)
    use = region & ev
    n_invalid = int(np.sum(region & ~ev))
    if not use.any():
        return {"velocity_rms_kms": float("nan"), "width_rms_kms": float("nan"), "n_pixels": 0,
                "n_invalid": n_invalid, "line_flux_rel_rms": float("nan")}

    def rms(name):
        t = np.asarray(truth_maps[name].values, dtype=np.float64)[use]
        e = np.asarray(estimate_maps[name].values, dtype=np.float64)[use]
        return float(np.sqrt(np.mean((e - t) ** 2)))

    ef = np.asarray(estimate_maps["flux"].values, dtype=np.float64)[use]
    return {"velocity_rms_kms": rms("velocity"), "width_rms_kms": rms("line_width"), "n_pixels": int(use.sum()),
            "n_invalid": n_invalid, "line_flux_rel_rms": float(np.sqrt(np.mean((ef / tf[use] - 1) ** 2)))}
