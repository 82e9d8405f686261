"""Gaussian data terms at the API level: data fission (truth-free tuning) and Gaussian bootstrap replicas.

The Gaussian analogue of Poisson thinning (:mod:`xfusion.tuning`) for instruments whose data
carry a per-voxel ``variance`` (JWST imager + IFU, :mod:`xfusion.jwst`): :func:`fission` splits
one observation into two independent ones, :func:`tune` fits candidates on one and scores the
chi-square of the other, :func:`auto_settings` is the hook of ``fuse(..., mu="auto")``, and
:func:`bootstrap_draw` / :func:`bootstrap_models` draw the parametric-bootstrap replicas of
:func:`xfusion.uncertainty`. The data term itself is :class:`xfusion.gaussian.GaussianTerm`
(a lower layer: it must not import :func:`xfusion.fuse`; this module does).
"""
from __future__ import annotations

import numpy as np

from .gaussian import _data_name, _float_dtype, _is_gaussian  # noqa: F401


def fission(obs, tau=1.0, seed=None):
    r"""Split one observation with Gaussian errors into two independent ones (data fission, Leiner et al. 2023,
    "Data fission: splitting a single data point", JASA).

    With ``X ~ N(mu, var)`` per voxel (``var`` the ``variance`` variable) and an independent
    ``eps ~ N(0, var)``:

    .. math:: X_1 = X + \tau \varepsilon, \qquad X_2 = X - \varepsilon / \tau

    are independent (``cov = var - var = 0``; jointly Gaussian), ``X_1 ~ N(mu, (1 + tau^2) var)``,
    ``X_2 ~ N(mu, (1 + tau^-2) var)``: the Gaussian analogue of Poisson thinning
    (:func:`xfusion.tuning.thin`), exact when the variance is known. ``tau = 1`` splits the
    information in halves. Returns ``(fit, test)``: copies of ``obs`` (xfusion schema
    ``counts``, or the JWST layout ``data``) with the new data and variances; the input is not
    modified. ``seed``: anything ``numpy.random.default_rng`` takes.
    """
    tau = float(tau)
    if not (np.isfinite(tau) and tau > 0):
        raise ValueError(f"tau must be finite and > 0; got {tau!r}")
    if "variance" not in obs:
        raise ValueError(f"observation '{obs.attrs.get('name', '?')}' has no 'variance': data fission needs the "
                         "known per-voxel variance of Gaussian data (Poisson counts: use xfusion.tuning.thin)")
    name = _data_name(obs)
    d = np.asarray(obs[name].values, dtype=np.float64)
    var = np.asarray(obs["variance"].transpose(*obs[name].dims).values, dtype=np.float64)
    valid = np.isfinite(d) & np.isfinite(var) & (var > 0)
    if "mask" in obs:
        valid &= np.asarray(obs["mask"].transpose(*obs[name].dims).values, bool)
    eps = np.random.default_rng(seed).standard_normal(d.shape) * np.sqrt(np.where(valid, var, 0.0))
    out = []
    for data, factor in ((d + tau * eps, 1.0 + tau * tau), (d - eps / tau, 1.0 + 1.0 / (tau * tau))):
        o = obs.copy(deep=False)
        o[name] = obs[name].copy(data=np.where(valid, data, d).astype(_float_dtype(obs[name]), copy=False))
        o["variance"] = obs["variance"].copy(data=np.asarray(obs["variance"].values, np.float64) * factor)
        o.attrs = dict(obs.attrs, fission_tau=tau)
        out.append(o)
    return out[0], out[1]


def _model_as_data(obs, model):
    """A result's predicted data (``model_spatial`` / ``model_spectral``) as an array in the order of ``obs``'s
    data, and the observation's matching part (a margin the result was cropped by is cropped here too)."""
    name = _data_name(obs)
    ren = {"energy_spatial": "energy", "energy_spatial_lo": "energy_lo", "energy_spatial_hi": "energy_hi",
           "x_spectral": "x", "y_spectral": "y"}
    m = model.rename({k: v for k, v in ren.items() if k in model.dims or k in model.coords})
    dims = obs[name].dims
    m = m.transpose(*dims)
    sub = obs
    for ax, n in zip(dims, m.shape):
        extra = obs.sizes[ax] - n
        if extra < 0 or extra % 2:
            raise ValueError(f"the result's model ({dict(m.sizes)}) does not match observation "
                             f"'{obs.attrs.get('name', '?')}' ({dict(obs[name].sizes)})")
        if extra:
            sub = sub.isel({ax: slice(extra // 2, obs.sizes[ax] - extra // 2)})
    return np.asarray(m.values, dtype=np.float64), sub


def heldout_chi2(result, x_test, y_test):
    r"""Held-out Gaussian deviance of a fit: ``sum_i sum_v w_v (X_{2,v} - m_v)^2 / var_{2,v}`` over both
    instruments' test parts (:func:`fission`), ``m`` the fit's predicted data (``model_spatial``,
    ``model_spectral``); dimensionless, lower is better (its expectation is the number of valid voxels plus
    the fit's squared prediction error in units of the test variance)."""
    total = 0.0
    for obs, key in ((x_test, "model_spatial"), (y_test, "model_spectral")):
        m, sub = _model_as_data(obs, result[key])
        name = _data_name(sub)
        d = np.asarray(sub[name].values, np.float64)
        var = np.asarray(sub["variance"].transpose(*sub[name].dims).values, np.float64)
        w = np.isfinite(d) & (var > 0)
        if "mask" in sub:
            w &= np.asarray(sub["mask"].transpose(*sub[name].dims).values, bool)
        r = np.where(w, d - m, 0.0)
        total += float(np.sum(r * r / np.where(w, var, 1.0), dtype=np.float64))
    return total


#: candidate values of the Gaussian tuning's Sobolev strength mu (:func:`tune`; a candidate may also set the IFU's
#: relative weight ``gamma``)
MU_CANDIDATES = (0.0003, 0.001, 0.003, 0.01, 0.03, 0.1)


def tune(obs_a, obs_b, grid, *, tau=1.0, seed=0, mu_transfer="relative", **fixed):
    r"""Choose fusion settings of Gaussian observations without a truth, by data fission.

    Both observations are split by :func:`fission` (``tau``, ``seed``); each candidate of ``grid``
    (a list of dicts of :func:`xfusion.fuse` options, plus optionally ``gamma``: the relative weight
    of the sharp-spectral (IFU) data term, set on its ``attrs["gamma"]``) is fitted on the ``fit``
    parts with ``fixed`` options and scored by :func:`heldout_chi2` on the ``test`` parts. Returns
    ``(choice, scores)``: the best candidate *transferred to the full data* and the list of held-out
    deviances (same order as ``grid``).

    Transfer (``mu_transfer``): the fit parts have ``(1 + tau^2)`` times the variance. ``"relative"``
    (default) keeps the chosen options as they are -- on a wavelength (imager + IFU) grid ``mu`` is
    relative to the imager's mean precision (:func:`xfusion.jwst.sobolev_level`), so the penalty
    follows the data's precision; ``"absolute"`` keeps the absolute Sobolev penalty instead (a
    Gaussian-prior argument: the penalty of a posterior mean does not depend on the noise level), i.e.
    divides ``mu`` by ``1 + tau^2`` on a wavelength grid. Measured on the JWST toy (seeds 0-2, rank 5,
    docs/jwst.rst): "relative" lands on the hindsight-best ``mu``, "absolute" a factor 2 below it
    (-1 dB). ``gamma`` and ``rank`` are kept.
    """
    from .fuse import fuse

    if mu_transfer not in ("relative", "absolute"):
        raise ValueError(f"mu_transfer must be 'relative' or 'absolute'; got {mu_transfer!r}")
    if not grid:
        raise ValueError("grid must list at least one candidate (a dict of fuse options)")
    if not all(_is_gaussian(o) for o in (obs_a, obs_b)):
        raise ValueError("data fission needs Gaussian data terms (a 'variance' variable) in both observations; "
                         "Poisson counts are tuned by thinning (xfusion.tuning)")
    pair = _as_observations(obs_a, obs_b)
    rng = np.random.default_rng(seed)
    fits, tests = zip(*(fission(o, tau, rng) for o in pair))
    wavelength = any(o.attrs.get("spectral_unit") == "um" for o in pair)
    scores = []
    for cand in grid:
        cand = dict(cand)
        gamma = cand.pop("gamma", None)
        fa = list(fits)
        if gamma is not None:
            i = _spectral_index(pair)
            fa[i] = fa[i].copy(deep=False)
            fa[i].attrs = dict(fa[i].attrs, gamma=float(gamma))
        r = fuse(*fa, progress=False, **{**fixed, **cand})
        scores.append(heldout_chi2(r, *_ordered(tests, r, pair)))
    best = dict(grid[int(np.argmin(scores))])
    if wavelength and "mu" in best and mu_transfer == "absolute":
        best["mu"] = float(best["mu"]) / (1.0 + float(tau) ** 2)
    return best, scores


def _as_observations(obs_a, obs_b):
    """xfusion observations of the pair (the JWST layout is converted by :func:`xfusion.jwst.observations`)."""
    from .fuse import _wavelength_inputs

    return tuple(_wavelength_inputs((obs_a, obs_b)))


def _spectral_index(pair):
    """Position of the sharp-spectral (IFU) observation in ``pair``."""
    for i, o in enumerate(pair):
        if o.attrs.get("jwst_role") == "ifu":
            return i
    from .grid import assign_roles

    x, _, _ = assign_roles(*pair)
    return 1 if pair[0] is x else 0


def _ordered(tests, result, pair):
    """The test parts as (sharp-spatial, sharp-spectral) in the result's order."""
    i = _spectral_index(pair)
    return tests[1 - i], tests[i]


# --------------------------------------------------------------------------- parametric bootstrap (uncertainty)
def bootstrap_draw(obs, model, rng):
    r"""One parametric-bootstrap replica of a Gaussian observation: ``d* = m + sqrt(var) N(0, 1)`` with ``m``
    the fit's predicted data (array in the order of the observation's data; a smaller array -- a result cropped
    by a margin -- is placed in the centre, the rest keeps the observed values, which a mask excludes) and
    ``var`` its ``variance``. Returns a copy of ``obs`` with the new data; masked voxels keep their values."""
    name = _data_name(obs)
    d = np.asarray(obs[name].values, dtype=np.float64)
    m = np.asarray(model, dtype=np.float64)
    full = d.copy()
    sl = tuple(slice((a - b) // 2, (a - b) // 2 + b) for a, b in zip(d.shape, m.shape))
    full[sl] = m
    var = np.asarray(obs["variance"].transpose(*obs[name].dims).values, dtype=np.float64)
    valid = np.isfinite(var) & (var > 0)
    if "mask" in obs:
        valid &= np.asarray(obs["mask"].transpose(*obs[name].dims).values, bool)
    new = np.where(valid, full + rng.standard_normal(d.shape) * np.sqrt(np.where(valid, var, 0.0)), d)
    o = obs.copy(deep=False)
    o[name] = obs[name].copy(data=new.astype(_float_dtype(obs[name]), copy=False))
    return o


#: ranks compared when ``rank="auto"`` with Gaussian data terms
RANK_CANDIDATES = (3, 4, 5, 6, 8, 10)


def auto_settings(obs_a, obs_b, regularization, params, max_iter, tol, dtype, seed=0, tau=1.0):
    """``fuse(..., rank="auto" / mu="auto")`` with Gaussian data terms: the hook of
    :func:`xfusion.tuning.auto_settings`. Resolves ``params`` in place by :func:`tune` (rank first, over
    ``RANK_CANDIDATES`` at the given or default mu, then mu over ``MU_CANDIDATES`` at that rank) and
    returns the record (JSON-able), or None when something "auto" is not handled here (the caller then
    applies its fallbacks): only ``rank`` and ``mu`` of the low-rank family, a fixed iteration count."""
    keys = [k for k in ("rank", "mu") if params.get(k) == "auto"]
    others = [k for k in ("k", "n_scales_1d", "null_space") if params.get(k) == "auto"]
    if not keys or others or max_iter == "auto" or regularization not in ("lowrank", "lowrank_sobolev") \
            or not all(_is_gaussian(o) for o in (obs_a, obs_b)):
        return None
    fixed = {k: params[k] for k in ("rank", "mu", "explained", "precondition")
             if k in params and params[k] is not None and params[k] != "auto"}
    if regularization == "lowrank":
        fixed.pop("mu", None)
    fit = dict(regularization=regularization, max_iter=int(max_iter), tol=tol, dtype=dtype)
    rows = []
    n_channels = None
    if "rank" in keys:
        pair = _as_observations(obs_a, obs_b)
        n_channels = min(int(o.sizes["energy"]) for o in pair if "energy" in o["counts"].dims)
        base = {} if regularization == "lowrank" else {"mu": fixed.get("mu", 0.01)}
        grid = [{"rank": r, **base} for r in RANK_CANDIDATES if r <= n_channels]
        ch, sc = tune(obs_a, obs_b, grid, tau=tau, seed=seed, **{**fit, **{k: v for k, v in fixed.items()
                                                                           if k not in ("rank", "mu")}})
        rows += list(zip(grid, sc))
        params["rank"] = fixed["rank"] = int(grid[int(np.argmin(sc))]["rank"])
    if "mu" in keys and regularization == "lowrank_sobolev":
        grid = [{"rank": fixed["rank"], "mu": m} for m in MU_CANDIDATES]
        ch, sc = tune(obs_a, obs_b, grid, tau=tau, seed=seed, **{**fit, **{k: v for k, v in fixed.items()
                                                                           if k not in ("rank", "mu")}})
        rows += list(zip(grid, sc))
        params["mu"] = float(ch["mu"])
    return {"method": "gaussian data fission", "tau": float(tau), "seed": seed,
            "choice": {k: params[k] for k in keys},
            "transfer": "the chosen rank and mu as they are (mu relative to the data's precision)",
            "candidates": [c for c, _ in rows], "heldout_chi2": [round(float(s), 3) for _, s in rows]}


def bootstrap_models(result, observations):
    """Predicted data of an imager + IFU pair (:func:`xfusion.jwst.observations`, in the order given) from a
    result of :func:`xfusion.fuse`: arrays in the order of each observation's data, the imager's cropped by the
    result's margin (:func:`bootstrap_draw` puts them back in the centre)."""
    out = []
    for o in observations:
        role = o.attrs.get("jwst_role")
        if role not in ("imager", "ifu"):
            raise ValueError("an imager + IFU result needs the two observations it was fitted on (the JWST Datasets "
                             "or xfusion.jwst.observations of them)")
        m, _ = _model_as_data(o, result["model_spatial" if role == "imager" else "model_spectral"])
        out.append(m)
    return out
