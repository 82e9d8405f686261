"""``xfusion.fuse``: validate, build the grid and the operators, solve, label the result."""
from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass
import json
import math
import time
import warnings

import numpy as np
import xarray as xr

from . import __version__
from .grid import SPATIAL, SPECTRAL, fusion_grid, input_positions, require_datasets
from .io.zarr import require_live, same_store_counts
from .likelihood import (FREE_FLOOR, ZERO_SUPPORT, PoissonLikelihood, free_voxels, make_term, support_by_channel,
                         support_in_memory)
from .observation import CUBE_DIMS, check_count_values, energy_edges, is_pixel_observation
from .operators.blocks import factor as block_factor
from .operators.model import build_model
from . import parallel
from . import start as start_mod
from .regularizers import lowrank as lowrank_mod
from .regularizers import starlet_kernels
from .solvers.backend import fitting
from .solvers.em import EMProx
from .solvers.ista import ISTA
from .solvers.loop import run
from .solvers.subspace import SubspaceFISTA

from . import registry
from .registry.options import DEFAULT_LAYOUT  # noqa: F401  (re-exported: the Dask layout default)
from .registry.options import shape_auto
from .registry.wavelet2d1d import AUTO_COUNTS_SPLIT, auto_wavelet_params as _auto_wavelet_params  # noqa: F401

FLUX_UNITS = "ph cm-2 s-1"

# Views of the registry (xfusion/registry/: one file per regularization and method) for the code and the tests
# that read tables: the names, the families' methods, the options with their defaults, the iteration caps.
REGULARIZATIONS = registry.REGULARIZATIONS
FULL_METHODS, SUBSPACE_METHODS = registry.methods_for(registry.FULL), registry.methods_for(registry.SUBSPACE)
#: options accepted per regularization, with defaults (the paper's where it gives one)
OPTION_DEFAULTS = {n: registry.regularization(n).options.defaults() for n in REGULARIZATIONS}
METHOD_OPTIONS = {n: registry.method(n).options.defaults() for n in registry.METHODS}
MAX_ITER = {n: registry.method(n).max_iter for n in registry.METHODS}
#: the unregularized options are regularized by early stopping (measured on gaussian_rebin: plain RL
#: peaks at iteration 4-5, 15.5 dB, then falls to 9.3 dB at 30; plain low rank peaks at ~40 on
#: gaussian_rebin, 17.1 dB, and falls to 6.8 dB after 300 on small). Since thinning (xfusion.tuning), the
#: default for "none" is max_iter="auto" and these counts are only the fallback on Dask-backed data too large to
#: tune in memory (xfusion.tuning.IN_MEMORY_BYTES).
EARLY_STOP = {n: registry.regularization(n).early_stop for n in REGULARIZATIONS
              if registry.regularization(n).early_stop is not None}


def _is_real(v):
    """A finite real number that is not a bool (``True`` is an ``int`` in Python)."""
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_)) \
        and bool(np.isfinite(v))


def _is_int(v):
    """An integer that is not a bool (``2.0`` and ``2.7`` are refused, never truncated)."""
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _max_scales(n):
    """Largest number of starlet scales on an axis of ``n`` samples: the coarsest dilation
    ``2^(J-1)`` stays within half the axis (beyond it the kernel wraps by repeated reflection and
    the extra scales carry no new information)."""
    return max(int(np.floor(np.log2(max(n // 2, 1)))) + 1, 1)


def _resolve(regularization, method, options):
    """Look the regularization and method up in the registry, merge and validate the options; return
    ``(method, params, lowrank)`` (``lowrank``: the subspace family)."""
    spec = registry.regularization(regularization)
    allowed = registry.methods_for(spec.family)
    method = method or allowed[0]
    if method not in allowed:
        raise ValueError(f"method {method!r} does not apply to regularization {regularization!r}; use one of {allowed}")
    mspec = registry.method(method)
    params = spec.options.defaults()
    params.update(mspec.options.defaults())
    unknown = set(options) - set(params)
    if unknown:
        raise TypeError(f"unknown option(s) {sorted(unknown)} for regularization={regularization!r}, "
                        f"method={method!r}; valid options: {sorted(params)}")
    params.update(options)
    spec.options.validate(params)
    mspec.options.validate(params)
    if params.get("k_rule") == "sigmoid":  # k unused (validated "auto" or None): neither tuned nor recorded
        params["k"] = None
    return method, params, spec.family == registry.SUBSPACE


def _block_factors(grid, observations, names, models):
    """``{name: (f_x, f_y)}``: the spatial factors (fused pixels per input pixel) of the inputs whose counts are pixel
    cubes coarser than the fused grid -- the sharp-spectral one (the grid's ``spatial_factor``) and any further one on
    coarser pixels (its model's rebinning) -- as :class:`xfusion.parallel_em.DaskEMProx` requires them: the Dask
    pixel blocks must be multiples of each, so of their least common multiple (detector-pixel tiles: none)."""
    out = {}
    for i, (o, n, m) in enumerate(zip(observations, names, models)):
        if i == 0 or o["counts"].ndim != 3:
            continue
        f = (grid.attrs["spatial_factor"],) * 2 if i == 1 else block_factor(m.spatial if m.spatial is not None
                                                                             else [])
        if max(f) > 1:
            out[n] = tuple(int(c) for c in f)
    return out


def _auto_chunks(grid, shape, dt, regularization, params, client, factor=None):
    """Pixel block of the Dask path from the cube shape, the kernels and the memory per task; a multiple of
    ``factor`` (default the grid's ``spatial_factor``; :func:`_build_problem` passes the least common multiple of
    every input's, :func:`_block_factors`).

    Temporaries per task, in chunk-sized float32 copies, and the prior's halo come from the registry
    (``copies``, ``halo``): the low-rank block term works in float64 (model, ratio, masked copies:
    ~10); the EM + 2D-1D starlet block holds the (J2+1)(J1+1) coefficient cubes plus the iterate
    and FFT buffers (~(J2+1)(J1+2)+4; J1=5 when automatic); plain EM ~6. Halos: the PSF radius
    (full cube, ``layout="halo"``) and the prior's (2D starlet: 2 (2^J2 - 1) pixels) set
    ``min_block = 4 * halo``.
    """
    spec = registry.regularization(regularization)
    copies, halo = spec.copies(params), spec.halo(params)
    if spec.family == registry.FULL and params.get("layout", "halo") == "halo" and "psf" in grid:
        halo = max(halo, max(grid["psf"].sizes["psf_x"], grid["psf"].sizes["psf_y"]) // 2)
    factor = grid.attrs["spatial_factor"] if factor is None else factor
    return parallel.pixel_block(shape, dt.itemsize, factor, min_block=4 * halo, copies=copies,
                                memory=parallel.task_memory(client))


def _checkpoint(path, every, resume, observations):
    """The checkpoint store of a run (None without ``path``), checked before any computing: a
    positive integer ``every``, ``resume`` in (False, True, "auto") with a path, and a path that
    is neither an input store nor inside/around one nor anything not written by xfusion's
    checkpoint writer (:class:`xfusion.checkpoints.ZarrCheckpoint`)."""
    from .checkpoints import ZarrCheckpoint
    from .io.zarr import sources

    if isinstance(every, bool) or not isinstance(every, (int, np.integer)) or every < 1:
        raise ValueError(f"checkpoint_every must be a positive integer (iterations between checkpoints); got {every!r}")
    if resume is not False and resume is not True and resume != "auto":
        raise ValueError(f"resume must be False, True or 'auto' (continue if a checkpoint exists, else start); "
                         f"got {resume!r}")
    if path is None:
        if resume:
            raise ValueError("resume needs checkpoint=PATH (the store written by the interrupted run)")
        return None
    return ZarrCheckpoint(path, protect=sources(*observations))


class _Request:
    """Identity of a :func:`fuse` request as given: the observations (every variable, the counts included) and the
    arguments with "auto" unresolved, except ``max_iter`` (a resumed run may raise it to extend the run) and the
    warm start (not used by the tuning). Hashed once, on first use (:func:`_fingerprint`). :meth:`inputs`: the
    observations without the counts' values (their dims, shape and dtype only): no pass over the data, and the
    same whether the counts are NumPy or Dask (chunked any way)."""

    def __init__(self, observations, regularization, method, tol, dtype, options, client):
        self._args = (observations, regularization, method, tol, dtype, dict(options), client)
        self._digest = self._inputs = None

    def checkable(self):
        """True if every observation is a Dataset (others are refused by the run's checks, with their reasons)."""
        return all(isinstance(o, xr.Dataset) for o in self._args[0])

    def inputs(self):
        if self._inputs is None:
            observations = self._args[0]
            counts = [[list(o["counts"].dims), list(o["counts"].shape), o["counts"].dtype.str]
                      for o in observations if isinstance(o, xr.Dataset) and "counts" in o]
            self._inputs = _fingerprint(observations, [], {"counts": counts})
        return self._inputs

    def digest(self):
        if self._digest is None:
            observations, regularization, method, tol, dtype, options, client = self._args
            arrays = [o["counts"].data for o in observations if isinstance(o, xr.Dataset) and "counts" in o]
            args = {"request": {"regularization": regularization, "method": method, "tol": tol, "dtype": dtype,
                                "options": options}}
            self._digest = _fingerprint(observations, arrays, args, client)
        return self._digest


def _json(value):
    """``value`` as it reads back from JSON (tuples as lists, numpy scalars as numbers; others as text)."""
    return json.loads(json.dumps(value, default=_json_default))


def _stored_settings(settings):
    """The settings a checkpoint records for :func:`_check_resume`: those of the fingerprint, as JSON."""
    return _json({k: v for k, v in settings.items() if k not in ("max_iter", "auto_tuning", "init")})


def _check_resume(ckpt, resume, request, regularization, method, tol, dtype, options):
    """Before any computing (the "auto" tuning included), what a resume can tell from the checkpoint's manifest
    alone: ``resume=True`` needs a committed checkpoint; a damaged one is refused
    (:meth:`xfusion.checkpoints.ZarrCheckpoint.committed_manifest`); one written for other observations (digest
    of every variable as given, the counts' dims, shape and dtype; their values are checked by the fingerprint)
    or with other settings (those given here that "auto" does not choose: tol, dtype, an explicit regularization,
    the method and the options given) is refused, naming the difference.
    What depends on the tuning is checked by the fingerprint when the run starts (as before)."""
    from .checkpoints import CheckpointError

    manifest = ckpt.committed_manifest()
    if manifest is None:
        if resume is True:
            raise FileNotFoundError(f"resume=True but there is no checkpoint at {ckpt} to continue from; run "
                                    "without resume (or with resume='auto', CLI --resume-or-start) to start one")
        return
    where = f"checkpoint {str(ckpt)!r}"
    if manifest.get("inputs") and request.checkable() and manifest["inputs"] != request.inputs():
        raise CheckpointError(f"{where} was written by a run with different inputs or parameters: the inputs "
                              "differ (counts, masks, exposures, areas, PSFs, responses or their attributes); delete "
                              "it or use the same inputs to resume")
    stored = manifest.get("settings")
    if not isinstance(stored, dict):
        return  # an older checkpoint: the fingerprint decides
    now = {"tol": tol, "dtype": dtype}

    def given(k, v):  # a value given as such, not one "auto" chooses
        return not (isinstance(v, str) and v == "auto") and not (k == "shape_prior" and shape_auto(v)[0])

    if regularization != "auto":
        try:
            method, params, _ = _resolve(regularization, method, options)
        except (ValueError, TypeError):
            params = {}  # reported by the run's own checks
        now.update({"regularization": regularization, "method": method},
                   **{k: v for k, v in params.items() if given(k, v)})
    else:  # the options given explicitly are used as given by whichever regularization "auto" picks
        now.update({k: v for k, v in options.items() if given(k, v)})
        if method is not None:
            now["method"] = method
    diff = [(k, stored[k], v) for k, v in _json(now).items() if k in stored and stored[k] != v]
    if diff:
        shown = "; ".join(f"{k}={a!r} there, {k}={b!r} now" for k, a, b in diff)
        raise CheckpointError(f"{where} was written by a run with different inputs or parameters: {shown}; use "
                              "the same settings to resume (only max_iter may change), or start a new run (without "
                              "resume, or another checkpoint path)")

def _json_default(value):
    """JSON form of what ``json.dumps`` cannot write: NumPy scalars as numbers (an ``np.float32(1e-3)`` tol was
    recorded as the string ``'0.001'``, which ``fuse(..., settings=result)`` then refused), arrays as lists,
    anything else as its ``str``."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def _digest(h, name, value):
    """Add a named array or JSON value to the hash ``h`` (arrays: dtype, shape and bytes)."""
    h.update(name.encode())
    if isinstance(value, np.ndarray) and not value.dtype.hasobject:
        v = np.ascontiguousarray(value)
        h.update(f"{v.dtype.str}{v.shape}".encode())
        h.update(memoryview(v).cast("B") if v.size else b"")
    else:
        h.update(json.dumps(value.tolist() if isinstance(value, np.ndarray) else value, sort_keys=True,
                            default=str).encode())


def _fingerprint(observations, arrays, settings, client=None):
    """Identity of a run for checkpoints: everything that defines the problem.

    The settings except ``max_iter`` (a finished run can be extended), every variable and
    coordinate of both observations except the counts (masks, exposures, effective areas,
    PSFs, responses, energy edges, pixel grids; lazy ones are read) with their attributes and
    the observations' attributes, and the counts cubes as used by the solver: SHA-256 of the
    bytes (NumPy) or of each block (Dask, hashed where the blocks live, see
    :func:`xfusion.checkpoints.array_digest`).
    """
    return _fingerprints(observations, arrays, [settings], client)[0]


def _fingerprints(observations, arrays, settings_list, client=None, counts=None):
    """:func:`_fingerprint` of the same data with each settings dict of ``settings_list`` (the data read and the
    counts hashed once; ``counts``: their :func:`xfusion.checkpoints.array_digest` if already computed)."""
    from .checkpoints import array_digest

    parts = []
    for i, obs in enumerate(observations):
        parts.append((f"obs{i}.attrs", dict(obs.attrs)))
        for name in sorted(map(str, obs.variables)):
            if name == "counts":
                continue
            var = obs.variables[name]
            parts.append((f"obs{i}.{name}", [list(var.dims), dict(var.attrs)]))
            parts.append((f"obs{i}.{name}.values", np.asarray(var.values)))
    counts = [array_digest(c, client) for c in arrays] if counts is None else counts
    parts += [(f"counts{i}", d) for i, d in enumerate(counts)]
    out = []
    for settings in settings_list:
        h = hashlib.sha256()
        # max_iter: a run may be extended; auto_tuning: diagnostics of the automatic choice (held-out deviances,
        # which depend on max_iter), whose chosen values are already in the settings
        _digest(h, "settings", {k: v for k, v in settings.items() if k not in ("max_iter", "auto_tuning")})
        for name, value in parts:
            _digest(h, name, value)
        out.append(h.hexdigest())
    return out


def _int_options():
    """Names of the options whose values are integers (their unit says so), and ``max_iter``."""
    names = {"max_iter"}
    for spec in [registry.regularization(n) for n in registry.REGULARIZATIONS] + [
            registry.method(n) for n in registry.METHODS]:
        names |= {k for k, (_, unit, _) in spec.options.docs().items() if str(unit).startswith("integer")}
    return names


def _canonical(settings):
    """The settings as the run's fingerprint hashes them: NumPy scalars as Python scalars (also inside tuples and
    lists) and an integer given for an option that is not an integer (``k=1``, ``null_factor=1``,
    ``shape_prior=10000``) as a float, so that equal settings give equal fingerprints (``json.dumps`` writes 1 and
    1.0 differently, and ``np.int64(5)`` as the text "5"). Values already in this form are returned unchanged, so
    their fingerprint is the one earlier versions computed."""
    def plain(v):
        if isinstance(v, np.generic):
            return v.item()
        if isinstance(v, (list, tuple)):
            return type(v)(plain(x) for x in v)
        return v

    ints = _int_options()
    out = {}
    for k, v in settings.items():
        v = plain(v)
        if isinstance(v, int) and not isinstance(v, bool) and k not in ints:
            v = float(v)
        out[k] = v
    return out


def _layout(arrays):
    """How the counts were held (their digests are per Dask block): ``[["numpy", shape] | ["dask", chunks]]``."""
    return [["dask", [list(c) for c in a.chunks]] if parallel.is_dask(a) else ["numpy", list(np.shape(a))]
            for a in arrays]


def _renamed(da, mapping):
    return da.rename({k: v for k, v in mapping.items() if k in da.dims or k in da.coords})


#: plausible range of exposure x effective area (s cm2) at its peak over the fused band: outside it the flux
#: (ph cm-2 s-1, stored in float32) of one count would underflow or overflow, and the values are far beyond
#: any instrument (e.g. 1e6 s x 1e4 cm2 = 1e10) -- the usual cause is a unit mistake
EXPOSURE_AREA_RANGE = (1e-20, 1e20)

#: history variables of a result: (units, long_name)
HISTORY_ATTRS = {
    "objective": ("1", "objective = data_term + penalty (data term in nats; the penalty's scale: see penalty)"),
    "data_term": ("1", "Poisson data term sum(m - d + d ln(d/m)) over both data sets, 0 ln 0 = 0 (half the "
                       "Poisson deviance, >= 0, 0 at a perfect fit; nats)"),
    "penalty": ("1", "regularization penalty added to the data term (in the solver's internal units: it does not "
                     "scale like the data term -- the sparsity penalty grows with the counts squared -- so it is for "
                     "following one fit, not for comparing fits of different data)"),
    "iterate_change": ("1", "relative change of the iterate ||Z_k - Z_(k-1)|| / ||Z_k|| (EM with a prior: what tol "
                            "stops on; NaN at iteration 0)"),
}


def _same_counts(a, b):
    """Whether observations ``a`` and ``b`` hold the same counts, without reading Dask-backed ones: equal NumPy values,
    the same Dask array name (Dask names a collection by its content: the same store opened twice with the same
    chunks gets the same name), or one store's counts read unchanged on the same grid
    (:func:`xfusion.io.zarr.same_store_counts`: other chunks, or once in memory and once lazily)."""
    ca, cb = a["counts"], b["counts"]
    if ca.shape != cb.shape:
        return False
    if isinstance(ca.data, np.ndarray) and isinstance(cb.data, np.ndarray) and np.array_equal(ca.values, cb.values):
        return True
    if parallel.is_dask(ca) and parallel.is_dask(cb) and ca.data.name == cb.data.name:
        return True
    return same_store_counts(a, b)


def _check_inputs_given(observations):
    """Refuse what is not an observation Dataset (e.g. a store's path) with the fix, or one whose lazy data cannot be
    read (:func:`xfusion.io.zarr.require_live`: its store deleted, its cluster gone); warn when one observation is
    given twice (the same object, or the same name and counts: equal values in memory, the same Dask array on
    Dask, :func:`_same_counts`): its photons would count twice."""
    require_datasets(observations)
    for i, a in enumerate(observations):
        require_live(a, f"observation {i + 1} ('{a.attrs.get('name', '?')}')")
        for j in range(i):
            b = observations[j]
            same = a is b or (a.attrs.get("name") == b.attrs.get("name") and "counts" in a and "counts" in b
                              and _same_counts(a, b))
            if same:
                warnings.warn(f"observations {j + 1} and {i + 1} ('{a.attrs.get('name', '?')}') are the same data: "
                              "their photons count twice in the likelihood. Pass each observation once",
                              UserWarning, stacklevel=3)


def _wavelength_inputs(observations, result=None):
    """JWST imager + IFU Datasets in their own layout (wavelength in um, ``data``/``variance``; e.g.
    :func:`xfusion.jwst.imager_dataset`, :mod:`xfusion.io.jwst`'s readers) become xfusion observations
    (:func:`xfusion.jwst.observations` with its defaults, or with the options ``result`` was fitted with:
    :func:`xfusion.jwst.observations_for`); anything else is returned unchanged."""
    if not any(isinstance(o, xr.Dataset) and o.attrs.get("spectral_unit") == "um" and "data" in o
               and "counts" not in o for o in observations):
        return observations
    from .jwst import observations as jwst_observations

    if len(observations) != 2 or not all(isinstance(o, xr.Dataset) for o in observations):
        raise ValueError("wavelength (um) data are fused as one imager + one IFU Dataset; got "
                         f"{len(observations)} inputs")
    a, b = observations
    imager, ifu = (a, b) if "filter" in a.dims else (b, a)
    if result is not None:
        from .jwst import observations_for

        return observations_for(result, imager, ifu)
    return jwst_observations(imager, ifu)


def _channel_edges(obs):
    """Channel edges of an observation for messages: energy edges, or filter numbers for an imager."""
    return energy_edges(obs) if "energy" in obs["counts"].dims else np.arange(obs["counts"].shape[-1] + 1.0)


def _precheck_wavelength(observations, params):
    """:func:`_precheck` of an imager + IFU pair on a wavelength grid (:func:`xfusion.jwst.problem`)."""
    from .jwst import problem

    if len(observations) != 2:
        raise NotImplementedError("wavelength (imager + IFU) fusion takes exactly two observations")
    grid, obs, names, models = problem(*observations)
    _check_scales(params, models[0].fused_shape)
    sums = []
    for name, o, model in zip(names, obs, models):
        term = make_term(o, model, np.float64)
        support_in_memory(term, name, _channel_edges(o))
        sums.append(float(np.sum(term.data if term.weight is None else term.data * term.weight, dtype=np.float64)))
    return grid, obs, names, models, sums


def _expect_kernels(grid, dtype):
    """A large fused cube has the compiled starlet passes built now (:func:`~xfusion.regularizers.starlet_kernels.expect`)."""
    starlet_kernels.expect(dtype, math.prod(int(grid.sizes.get(d, 1)) for d in CUBE_DIMS))


def _precheck(observations, params, lowrank):
    """Checks of the problem that need only the observations, run before any work: plausible exposure x area,
    starlet scales that fit the grid, instruments that see something, and (in memory) counts that some flux can
    explain. Returns the problem it built, ``(grid, obs, names, models, sums)`` as lists (sharp-spatial first, then
    sharp-spectral, then any further inputs in their order, :func:`xfusion.grid.input_positions`; unscaled models;
    ``sums``: total counts of in-memory data, None for Dask-backed data, checked in ``_fuse``), so it is built once.
    :func:`xfusion.fusion_grid` picks the pair that sets the fused grid (the finest pixels, the finest channels);
    each further one lies on its pixels, its channels, or is a detector-pixel tile (:func:`_extra_model`)."""
    if any(isinstance(o, xr.Dataset) and o.attrs.get("spectral_unit") == "um" for o in observations):
        return _precheck_wavelength(observations, params)  # imager + IFU (xfusion.jwst)
    grid = fusion_grid(*observations)
    pos = input_positions(grid)
    obs = [observations[i] for i in pos]
    x_obs, y_obs = obs[:2]
    names = [grid.attrs["spatial_obs"], grid.attrs["spectral_obs"]] + [
        str(o.attrs.get("name", f"input {i}")) for i, o in zip(pos[2:], obs[2:])]
    _check_exposure(names, obs)
    roles = {r["input"]: r["role"] for r in json.loads(grid.attrs["roles"])}
    models = [build_model(grid, x_obs, SPATIAL), build_model(grid, y_obs, SPECTRAL)] + [
        _extra_model(grid, o, n, roles[i]) for i, o, n in zip(pos[2:], obs[2:], names[2:])]
    _check_scales(params, models[0].fused_shape)
    _check_sees(names, models)
    if lowrank and any(m.vignetted for m in models):  # before any tuning
        raise ValueError("low-rank regularizations need effective areas that do not vary with position; "
                         "use regularization='wavelet2d1d' for vignetted data")
    if any(parallel.is_dask(o["counts"]) for o in obs):
        return grid, obs, names, models, None
    sums = []
    for name, o, model in zip(names, obs, models):
        term = make_term(o, model, np.float64)
        support_in_memory(term, name, energy_edges(o))
        sums.append(float(np.sum(term.data if term.weight is None else term.data * term.weight, dtype=np.float64)))
    if lowrank and sums[0] > 0:
        _check_basis_counts(names, sums, _sharp_spectral(grid, len(models)))
    return grid, obs, names, models, sums


def _extra_model(grid, obs, name, role):
    """Instrument model of an observation beyond the two that set the fused grid (role from
    :func:`xfusion.fusion_grid`, which refused anything else with what to change):

    - ``"pixels"`` (same x, y, e.g. MOS1 and MOS2 beside pn): like the sharp-spatial one, its own response and
      area; a ``psf`` it carries is applied on the fused pixels as the blur RELATIVE to the fused resolution
      (the sharp-spatial instrument's, the target: e.g. the kernel taking pn's PSF to MOS's);
    - ``"channels"`` (same energy edges): like the sharp-spectral one, its own PSF, pixel grouping and area;
    - ``"footprint"`` (a detector-pixel tile on the fused channels, e.g. one pointing of a Resolve mosaic): its
      PSF on the fused grid, then the exact footprint of its pixels at its own pointing and roll
      (:mod:`xfusion.operators.footprint`); it constrains only the fused pixels it sees."""
    from .grid import CHANNELS, FOOTPRINT, PIXELS, psf_on_grid
    from .observation import pixel_size
    from .operators.model import pixels_model

    if role == PIXELS:
        return pixels_model(grid, obs)
    if role in (CHANNELS, FOOTPRINT):
        g = grid.drop_vars("psf") if "psf" in grid else grid
        if "psf" in obs:
            g = g.assign(psf=psf_on_grid(obs["psf"], pixel_size(grid)))
        return build_model(g, obs, SPECTRAL)
    raise ValueError(f"'{name}': unknown role {role!r} of a further input")


def _check_scales(params, shape):
    """Refuse starlet scale counts that do not fit the fused grid (``shape`` = (M, N, L))."""
    n2 = params.get("n_scales_2d")
    if _is_int(n2) and n2 > _max_scales(min(shape[:2])):
        raise ValueError(f"option n_scales_2d={n2} is too large for the {shape[0]}x{shape[1]}-pixel fused grid: at "
                         f"most {_max_scales(min(shape[:2]))} scales fit (coarsest dilation within half the field)")
    n1 = params.get("n_scales_1d")
    if _is_int(n1) and n1 > _max_scales(shape[2]):
        raise ValueError(f"option n_scales_1d={n1} is too large for the {shape[2]} fused channels: at most "
                         f"{_max_scales(shape[2])} scales fit")


def _check_sees(names, models):
    """Refuse an instrument that sees nothing: t A = 0 at every energy of the fused grid."""
    for name, m in zip(names, models):
        if not m.sees():
            raise ValueError(f"observation '{name}' predicts zero counts for any flux: its exposure x effective area "
                             "is 0 at every energy of the fused grid; check effective_area (cm2) and exposure (s)")


def _check_exposure(names, observations):
    """Refuse an implausible exposure x effective area (a unit mistake), before any operator is built."""
    lo, hi = EXPOSURE_AREA_RANGE
    for name, o in zip(names, observations):
        area = o["effective_area"].values if "effective_area" in o else 1.0
        peak = float(o["exposure"].values) * float(np.max(area, initial=0.0))
        if peak > 0 and not lo <= peak <= hi:
            raise ValueError(f"observation '{name}': exposure x effective area peaks at {peak:.3g} s cm2, outside the "
                             f"plausible range {lo:g}-{hi:g} (e.g. 1e5 s x 1e3 cm2 = 1e8); check that exposure is in "
                             "seconds and effective_area in cm2 (fluxes of one count would not be representable)")


def _flat_level(model, total, shape, dt, used=None):
    """Level c (internal units per voxel) such that the flat cube c predicts ``total`` counts of ``model`` on its
    used data; ``used``: the fraction of the input's pixels used (mask > 0) per data channel, or None (all)."""
    # exact for X (no spatial operator; linear in the weights, so a vignetted area enters through its mean over
    # the pixels); Y: its spatial operator conserves flux
    per_channel = model.per_channel().reduced(np.ones((1, shape[2])))[1]
    flat = float((per_channel * (1.0 if used is None else used)).sum()) * shape[0] * shape[1]
    return total / max(flat, 1e-300)


def _check_finite(sol, history, client=None):
    """The final guard: never return NaN/inf quietly."""
    if parallel.is_dask(sol):
        import dask.array as da

        ok = bool(parallel.compute(da.isfinite(sol).all(), client))
    else:
        ok = bool(np.all(np.isfinite(sol)))
    last = history["objective"][-1] if history.get("objective") else 0.0
    if not ok or not np.isfinite(last):
        raise FloatingPointError(
            f"the solution {'contains NaN/inf' if not ok else 'has a non-finite objective'} ({last}) -- refusing to "
            "return it. Likely causes: a fixed step too large (method='ista': pass a smaller step=), counts no flux "
            "can explain, or extreme exposures/areas; report it with the inputs if none applies")


def _mark_unconstrained(ds, free, client=None):
    """Hold the voxels no data constrain at 0 in ``flux`` and report them (attr ``unconstrained_voxels``; with
    any, a ``constrained`` mask variable). ``free``: per voxel or per channel, or the Dask solver's lazy per-voxel
    mask (counted on ``client``, where it was persisted)."""
    shape = tuple(ds.sizes[d] for d in CUBE_DIMS)
    if parallel.is_dask(free):  # the Dask solver's per-voxel mask: counted there, kept lazy
        n_free = int(parallel.compute(free.sum(), client))
        ds.attrs["unconstrained_voxels"] = int(np.prod(shape)) - n_free
        if n_free == int(np.prod(shape)):
            return ds
        mask = xr.DataArray(free.rechunk(ds["flux"].data.chunks) if parallel.is_dask(ds["flux"]) else free,
                            dims=CUBE_DIMS)
        return _held_and_reported(ds, mask)
    free = np.asarray(free, bool)
    n_free = int(np.broadcast_to(free, shape).sum())
    n_out = int(np.prod(shape)) - n_free
    ds.attrs["unconstrained_voxels"] = n_out
    if n_out == 0:
        return ds
    if free.shape == shape:
        mask = xr.DataArray(free, dims=CUBE_DIMS)
    else:  # per channel (Dask path): broadcast lazily
        import dask.array as da

        chunks = ds["flux"].data.chunks if parallel.is_dask(ds["flux"]) else "auto"
        mask = xr.DataArray(da.broadcast_to(da.from_array(free), shape, chunks=chunks), dims=CUBE_DIMS)
    return _held_and_reported(ds, mask)


def _held_and_reported(ds, mask):
    """``ds`` with ``flux`` 0 where ``mask`` (x, y, energy) is False, and the ``constrained`` variable."""
    ds["flux"] = ds["flux"].where(mask, 0).astype(np.float32).assign_attrs(ds["flux"].attrs)
    ds["constrained"] = mask.assign_attrs(
        units="1", long_name="True where some data constrain the flux; False voxels (zero sensitivity: zero area, "
                             "zero response or masked in both observations) are held at 0")
    return ds


def _zero_result(problem, params, lowrank, elapsed):
    """Both observations have no counts: the maximum-likelihood flux is 0 everywhere (exactly, no iteration)."""
    grid, (x_obs, y_obs), (xd, yd) = problem.grid, problem.observations[:2], problem.data[:2]
    shape = problem.shape
    if problem.use_dask:
        import dask.array as da

        def zeros(sh, like):
            return da.zeros(sh, dtype=np.float32, chunks=like.chunks[:2] + (-1,))
        flux, mod_x, mod_y = zeros(shape, xd), zeros(xd.shape, xd), zeros(yd.shape, yd)
    else:
        flux, mod_x, mod_y = (np.zeros(sh, np.float32) for sh in (shape, xd.shape, yd.shape))
    history = {k: [0.0] for k in ("objective", "data_term", "penalty")}
    basis = coeffs = None
    if lowrank:  # one flat component, zero maps
        basis = np.full((1, shape[2]), 1 / np.sqrt(shape[2]))
        coeffs = np.zeros(shape[:2] + (1,), np.float32)
    pos = input_positions(grid)
    extras = [(pos[i], o, np.zeros(d.shape, np.float32), d) for i, (o, d) in
              enumerate(zip(problem.observations, problem.data)) if i >= 2]
    ds = _assemble(grid, x_obs, y_obs, flux, mod_x, mod_y, xd.astype(np.float32), yd.astype(np.float32), history,
                   basis, coeffs, problem.scale, params, 0, True, elapsed, 0.0, 0,
                   backend="dask" if problem.use_dask else "numpy", negative_fraction=0.0, extras=extras)
    ds.attrs["note"] = "both observations have zero counts: the maximum-likelihood flux is 0 everywhere"
    ds.attrs["unconstrained_voxels"] = 0
    return ds


@fitting
def fuse(*observations, regularization="auto", method=None, max_iter=None, tol=1e-4, checkpoint=None,
         checkpoint_every=10, resume=False, progress=True, callback=None, dtype="float32", client=None,
         init=None, settings=None, **options) -> xr.Dataset:
    """Fuse observations (two in any order, or more) into one cube on the fused grid.

    Parameters
    ----------
    *observations : xarray.Dataset
        Observations (:func:`xfusion.observation`), in any order (explicit settings give the same cube in
        any order; "auto" draws each input's thinning by its position, so another order is another random
        split: docs/mosaic.rst). :func:`xfusion.fusion_grid`
        picks the pair that sets the fused grid -- the image with the smallest pixels (x, y) and
        the input with the narrowest channels (energy) -- and says why (result attribute
        ``grid_explanation``). Further observations (e.g. MOS1 and MOS2 beside pn, the other
        pointings of a Resolve mosaic) join the same likelihood -- their Poisson terms add -- and
        lie on the fused pixels, on the fused channels, or are detector-pixel tiles with their own
        pointing and roll that constrain only the fused pixels they see; their predicted and
        observed counts are returned as ``model_obsI`` / ``counts_obsI`` (I their position, from
        0). More than two: "auto" options are tuned with every input thinned and scored; on Dask
        with the full-cube regularizations (wavelet2d1d, none), in memory for the low-rank family.
        Wavelength data: a JWST imager + IFU pair (their Datasets, ``spectral_unit="um"``, or
        :func:`xfusion.jwst.observations` of them) with Gaussian data terms, the low-rank family,
        ``flux`` in the data units over wavelength (um); "auto" rank/mu by data fission
        (:mod:`xfusion.gaussian`). See docs/jwst.rst.
    regularization : {"wavelet2d1d", "lowrank", "lowrank_sobolev", "lowrank_wavelet2d", "none", "anscombe2d1d",
                      "lowrank_local", "auto"}
        The prior phi(Z), one of the registry's (:mod:`xfusion.registry`: one file each, with
        its options), or ``"auto"``: tuned ``wavelet2d1d`` (null space zeroed, or thresholded and
        stopped early) or ``none`` (RL stopped early), whichever predicts held-out counts best
        (:func:`xfusion.tuning.resolve_auto`; the choice is the recorded ``regularization``, with
        ``max_iter`` when stopped early; the curve ``parameters["auto_tuning"]``). ``"auto"`` is
        the default (held-out scene suite, 24 small scenes, session 6: mean NMSE 19.6 dB against 17.0
        for the tuned ``wavelet2d1d``, worse on 2 scenes; benchmarks/MEASUREMENTS.md). Since sessions 9-10 the family is
        chosen under a prior fitted on the tuning suite (:func:`xfusion.tuning._family_prior`): when the summed
        sharp-spectral counts show lines the zeroed candidates must predict the held-out counts better by 9 paired
        standard errors (18 with >= 1.7 counts per fused voxel); without lines the zeroed prior is taken. Held-out suite
        (48 scenes per size, code of session 14): mean NMSE 22.27 dB at 24x24x600 and 20.91 dB at full size (RL oracle
        20.96 and 18.11 dB; benchmarks/MEASUREMENTS.md; the current numbers: README,
        benchmarks/results/suite_heldout.csv). Any wavelet option given explicitly (``k``, ``n_scales_1d``,
        ``null_space``, ...) selects ``wavelet2d1d`` without the comparison;
        Gaussian or count-free data, and Dask-backed data whose tuning would not fit
        ``xfusion.tuning.IN_MEMORY_BYTES``, fall back to ``wavelet2d1d`` (recorded); smaller Dask-backed data are
        tuned on in-memory copies and fitted on Dask (the record's ``in_memory`` says so). ``"auto"`` delivers the
        cube of the family thinning chose through the spectral-shape prior (option ``shape_prior``: None for off,
        pseudo-counts, or ``"auto"``, the default: chosen by thinning too, :func:`xfusion.tuning.tune_shape`, then
        level 0 (each pixel against its nearest neighbours) at no fewer than :data:`xfusion.tuning.PIXEL_FLOOR` = 1e5
        pseudo-counts, which thinning cannot judge and which keeps the pixel-to-pixel scatter of line centroids down
        (session 44), except in the 3x3 footprints of the line-free compact sources the 2D-1D fit found
        (``source_lines``), which keep thinning's own level 0: a source is a spectrum of its own, which the
        sharp-spatial instrument measures in its own pixels (session 52: small held-out NMSE >= RL oracle 193 -> 195 of
        216; the delivered value is then a triple ``[n0, n0_pixel, n0_sources]``); ``["auto", N]``: the same with the
        floor N, ``["auto", None]``: thinning alone;
        :mod:`xfusion.regularizers.shape`): faint pixels take their neighbourhood's spectral shape, every pixel keeps
        its total (held-out small suite, session 8: beats both naive baselines on 23/24 scenes against 18, mean NMSE
        20.16 against 19.73 dB). A named regularization (or wavelet options given) takes the prior only when asked:
        ``shape_prior="auto"`` (or ``["auto", N]``) is then chosen by thinning for that fit, after its other settings,
        with no floor unless N is given (session 40; ``regularization="none", max_iter="auto", shape_prior="auto"`` is
        plain RL for line maps, README). ``shape_loop`` (pseudo-counts, a pair, or None, the default): the same prior
        applied to the iterate before every EM step as well (session 43; off in every default; measured on line-free
        skies at 0.3 times the chosen ``shape_prior``, benchmarks/DEFAULT_RULES.md).
        ``wavelet2d1d``: l1 norm of the 2D-1D starlet coefficients (2D on each channel, then 1D along each spectrum), soft-thresholded at k
        noise sigmas. ``lowrank``: Z = W V with V the mean and leading principal components of
        the sharp-spectral spectra (regularized by early stopping). ``lowrank_sobolev``: plus
        a spatial smoothness penalty on W. ``lowrank_wavelet2d``: plus a 2D starlet l1 penalty
        on W. ``none``: plain two-instrument Richardson-Lucy with early stopping.
        ``anscombe2d1d``: the 2D-1D starlet prior on the variance-stabilized cube
        ``2 sqrt(z + 3/8)`` (in memory only; the same with every setting tuned: option ``stabilize="anscombe"``,
        also under "auto"). ``lowrank_local``: each overlapping patch of the field keeps its own rank-r spectral
        subspace (:mod:`xfusion.regularizers.local_rank`; rank and count by thinning; in memory only). Both
        measured against the default on the suite in session 23 (benchmarks/MEASUREMENTS.md): neither replaces it.
    method : {"em", "ista"} for full-cube regularizations (default "em"); "fista" for the
        low-rank family. See :mod:`xfusion.solvers`. The early-stopping iteration counts of
        ``none`` and ``lowrank`` apply to EM and FISTA, not to fixed-step ISTA (its own cap).
    max_iter, tol : iteration cap (default per method: em 50, ista 2000, fista 300; for the
        unregularized options: ``none`` "auto" (the early-stopping iteration chosen by Poisson
        thinning, see :mod:`xfusion.tuning`), ``lowrank`` 30 ("auto" accepted)) and the relative
        change (> 0) at which to stop, held for 5 iterations: of the iterate, ``||Z_k - Z_{k-1}|| / ||Z_k||``,
        for EM with a prior (its objective's two parts can cancel: :mod:`xfusion.solvers.em`; history
        ``iterate_change``), else of the objective; ``tol=None`` runs all ``max_iter`` iterations.
    checkpoint, checkpoint_every, resume : Zarr store path written every k iterations;
        ``resume=True`` continues an interrupted run from it (same result as uninterrupted).
        The settings "auto" chose are kept in the checkpoint: resuming with the same observations
        and arguments reuses them (no tuning again; also when ``max_iter`` is raised to extend the
        run) and reports the same ``auto_tuning`` record.
    init : optional warm start: a previous result (Dataset with ``flux``, ph cm-2 s-1) or a flux
        DataArray (x, y, energy) on the fused grid of these observations (same sizes and
        coordinates; a different grid raises ``ValueError``). The iteration starts there instead of
        from a flat cube: full-cube methods from its flux (EM is multiplicative, so voxels at exactly
        0 start at ``xfusion.start.INIT_FLOOR`` x the mean level instead); the low-rank family from its
        ``coefficients`` when its ``basis`` equals the one estimated now, else from the projection
        of its cube (``coefficients @ basis``, or ``flux``) onto the new basis. Never modified or
        aliased; recorded in ``parameters`` (key ``init``: source and SHA-256 of the flux) and in
        the checkpoint's manifest. ``resume`` from a checkpoint takes precedence: a warm-started run resumes
        with or without ``init`` (it only set iterate 0), and its result records the checkpoint's warm start.
    settings : optional previous result (or the dict :func:`settings_of` returns): fuse with all the
        settings it recorded -- regularization, method, dtype, tol, max_iter and every option, with
        the values "auto" chose (no re-tuning). Options passed here, and ``max_iter``, ``tol``,
        ``dtype`` when given with non-default values, override the recorded ones; a different
        ``regularization`` or ``method`` raises ``ValueError``.
    progress : True or False: show a tqdm bar (iteration, objective, relative change).
    callback : ``f(iteration, state) -> bool`` called every iteration (True stops).
    dtype : "float32" (default) or "float64" for the iterate (the solver's arithmetic); the delivered ``flux`` is
        stored in float32 either way.
    client : optional ``dask.distributed.Client``. With Dask-backed observations (e.g.
        ``xfusion.io.zarr.open(path, chunks={})``) or a client, fusion runs block-wise on
        Dask -- the low-rank family in the subspace (:mod:`xfusion.parallel`), the full-cube
        EM + starlet iteration with halos (:mod:`xfusion.parallel_em`) -- and the returned
        cube is lazy (write it with ``xfusion.io.zarr.write``); option ``chunks=(bx, by)``
        sets the pixel block of the fused grid (default: from the cube shape, the PSF and
        starlet halos and the memory per worker thread, ``_auto_chunks``); the PSF operators of the
        full-cube path run on the pixel blocks with their halos (option ``layout``, only "halo": the
        full-field "rechunk" layout was removed).
        The workers give freed memory back to the system (distributed's setting); to have
        them keep it for a faster fit, run the call inside
        ``xfusion.solvers.heap.retained(client=client)`` (opt-in: the memory kept counts
        against each worker's ``memory_limit``).
    **options
        Options of the regularization and method; their defaults are in ``OPTION_DEFAULTS``
        and ``METHOD_OPTIONS``, unknown ones raise ``TypeError`` listing the valid ones. A
        value ``"auto"`` is chosen from the data without a truth (Poisson thinning: the counts
        are split binomially into two independent halves and the value whose fit on one half
        best predicts the other is used); the value used is recorded in ``parameters``.

        wavelet2d1d:

        - ``k`` (noise sigmas, default "auto"): soft threshold ``rho = k * sigma`` of each
          band's starlet coefficients, sigma its MAD noise estimate; larger k, smoother cube.
        - ``k_rule`` ("constant" or "sigmoid", default "constant"): "sigmoid" is paper eq. 21,
          k from ``k_min`` (faint voxels) to ``k_max`` (bright voxels, noise sigmas, defaults
          0.5 and 3.0) with the coarse-scale brightness; both are ignored with "constant". With
          "sigmoid", ``k`` is unused: an explicit number is refused, "auto" is not tuned and
          ``k`` is recorded as None.
        - ``n_scales_2d`` (integer, default 1): spatial starlet scales J2.
        - ``n_scales_1d`` (integer or "auto"): spectral starlet scales J1.
        - ``null_space`` ("zero", "threshold" or "auto", default "auto"): bands finer than both
          instruments see (2D scale < J2 and 1D scale < J1) are removed, or thresholded like
          the others as in the paper; "auto" (with ``n_scales_1d`` "auto") is ("zero", J1=2),
          the scene suite's choice for the k ladder, and with ``regularization="auto"`` the
          chosen k is also scored with the null space thresholded and stopped early like RL
          (:func:`xfusion.tuning.select`; ``xfusion.tuning.tune(select_null_space=True)`` compares
          the treatments at k = 1).
        - ``null_factor`` (number > 0, default 1): with ``null_space="threshold"`` those bands are
          thresholded at ``null_factor`` times the other bands' rule (1: the paper); the thresholded
          candidate of ``regularization="auto"`` uses 20 (``xfusion.tuning.NULL_FACTOR``): only
          null-band structure far above the noise survives.
        - ``spectral_band_factor`` (number > 0, default 1): the bands coarsest in space and fine in energy
          (2D scale J2, 1D scale < J1: line structure on the sharp-spectral instrument's scales) are
          thresholded at ``spectral_band_factor`` times the other bands' rule; given with
          ``regularization="auto"``, every wavelet candidate uses it. Not given, "auto" uses 8
          (``xfusion.tuning.SPECTRAL_BAND_FACTOR``) where the sharp-spectral counts read as a continuum
          (no lines: those bands then hold noise only) and 1 elsewhere (session 60; the record's
          ``spectral_band`` says which and why).
        - ``per_band`` (bool, default True): a MAD per band; False uses the finest band's MAD
          for all (the paper).
        - ``noise`` ("mad", "poisson" or "propagated", default "mad"): the noise model of sigma.
          "propagated" (EM only): the Poisson variance of the EM step ``z / s`` carried through
          each band's filter, a map per band, times a per-band factor from a noise probe
          (:mod:`xfusion.regularizers.sparsity`). Measured (session 7): with pn + MOS1 + MOS2 +
          a Resolve mosaic it lets MOS help (benchmarks/mosaic.py, "auto" at 3e5 pn counts 17.64
          -> 21.48 dB); on the 24 held-out small scenes mean NMSE +0.17 dB but 7 scenes lose
          > 0.5 dB (worst -2.3), so it is not the default. With ``regularization="auto"`` every
          starlet candidate is tuned and scored with it (RL still competes).
        - ``stabilize`` ("none" or "anscombe", default "none"): "anscombe" thresholds the
          variance-stabilized cube ``2 sqrt(z + 3/8)`` (:mod:`xfusion.regularizers.stabilized`; in memory
          only, not with "propagated"); with ``regularization="auto"`` every starlet candidate is tuned with it
          (RL still competes). Measured (session 23, benchmarks/MEASUREMENTS.md): +0.26 dB NMSE over 48 held-out
          full-size scenes but velocity maps +6.2 km/s worse, so it is not the default.
        - ``source_lines`` ("auto", "none" or a list of ``[i, j]`` fused-pixel indices, default "auto"): compact
          sources whose own spectra are line-free (e.g. AGN, power laws). In the 3x3 pixels around each peak the
          final fit thresholds the line structure of the finest spatial scale at 3 k times its MAD, as the diffuse
          gas's is: without it the prior moves the gas's line flux onto bright sources (which neither instrument
          can see). "auto": found in the sharp-spatial counts, a source being line-free when a folded power law
          fits its excess over the local gas (:mod:`xfusion.sources`); sources with lines of their own (stars,
          coronal spectra) are left alone. The tuning's candidates run without it. Recorded in ``parameters`` as
          the list of peaks used ([] if none). Measured (session 51; benchmarks/QUALITY_HISTORY.md) on 26 fresh
          held-out scenes with such sources: +0.16 dB (full size) and +0.24 dB (small) mean NMSE, none worse,
          velocity maps better on most. Not with ``stabilize="anscombe"`` or ``noise="propagated"``.
        - ``source_line_sigma`` ("auto" or fused channels): the Gaussian width along energy that separates line
          structure from continuum there; "auto": the sharp-spatial instrument's spread of a narrow line
          (:func:`xfusion.sources.line_sigma`) over the fused channel width (None when no source is used).
        - ``source_iter`` ("auto", "none" or ``[n, [[i, j], ...]]``, default "auto"): compact sources deconvolved
          for longer than the diffuse emission. The delivered cube is the iterate at ``max_iter`` except in the 3x3
          fused pixels around each peak, which take the same run continued to iteration ``n``, and in the rest of
          each source's 5x5, which gives up the flux the 3x3 gained (each 5x5 keeps its total, so the cube's total
          is unchanged). EM; the shape prior is then applied to the whole cube; ``callback`` does not see the extra
          iterations, and a checkpoint holds the run at ``max_iter``, from which a resumed run runs on again. "auto": on only where
          ``regularization="auto"`` chose the 2D-1D prior with thinning's count and the sharp-spatial counts show
          compact sources (:func:`xfusion.sources.compact_peaks`), by :func:`xfusion.tuning.run_on`: the zeroed
          prior stopped before :data:`xfusion.tuning.ZERO_MAX_ITER` (50) gets ``[50, peaks]`` (session 53); the
          thresholded prior with count N, where the sources hold at least
          :data:`xfusion.tuning.RUN_ON_SHARE` (2.5 %) of the counts above their surroundings
          (:func:`xfusion.sources.excess_share`), gets ``[N, peaks]`` and its field stops at
          ``max_iter = round(0.75 N)`` (session 59). Recorded in ``parameters``. Why: an early stop keeps the
          gas's velocity maps smooth, while a bright source's peak needs more iterations
          (benchmarks/QUALITY_HISTORY.md).

        lowrank_local:

        - ``rank`` (spectral vectors per patch, default "auto": 2, 3 or 5 by thinning, with the
          iteration count) and ``patch`` (fused pixels, default 6): each overlapping ``patch`` x ``patch``
          patch keeps its rank-r part after every EM step.

        lowrank, lowrank_sobolev, lowrank_wavelet2d:

        - ``rank`` (number of components, default 10; "auto": 3, 5, 10 or 20 by thinning, costly:
          one fit of half the counts per candidate): dimension r of the spectral subspace.
        - ``explained`` (fraction of variance in (0, 1], default None): choose r as the
          smallest number of components explaining this fraction instead of ``rank``.
        - ``precondition`` (bool, default True): per-pixel FISTA step scaled by the
          sharp-spatial brightness.
        - ``mu`` (dimensionless, lowrank_sobolev, default 0.01; "auto": 0.001-0.1 by thinning): strength of the Sobolev
          penalty ``(mu / level) ||D W||^2``, level = mean flux per voxel (the paper advises
          0.01-0.1).
        - ``n_scales_2d``, ``k`` (lowrank_wavelet2d, defaults 2 and 1.0 noise sigmas): 2D
          starlet scales and threshold on each map of W.

        Dask path (any regularization): ``chunks`` ((bx, by) fused pixels, default None =
        automatic) and ``layout`` ("halo" only, full cube; see ``client``).
        method="ista": ``step`` (internal units, default None = 1/50 of the smallest EM step
        at the start). The documentation lists every option with its unit and default.

    Returns
    -------
    xarray.Dataset with ``flux`` (x, y, energy) in ph cm-2 s-1 per voxel (photons per cm2 per
    second in each fused pixel and energy bin), ``model_spatial`` / ``counts_spatial``
    (x, y, energy_spatial) and ``model_spectral`` / ``counts_spectral``
    (x_spectral, y_spectral, energy): predicted and observed counts of both instruments (of every voxel, masked
    ones included; further inputs: ``model_obsI`` / ``counts_obsI``), an input's ``mask`` as ``mask_spatial`` /
    ``mask_spectral`` / ``mask_obsI`` (True where its counts were used; :func:`counts_of` gives NaN elsewhere),
    ``objective``, ``data_term``, ``penalty`` over ``iteration``; for the low-rank family also
    ``basis`` (component, energy) and ``coefficients`` (x, y, component). Attributes record
    every parameter (``parameters`` as JSON), the method, iterations, convergence flag, timing
    (``elapsed_s``: this call, s; ``loop_elapsed_s``: its iterations, s; ``seconds_per_iteration`` =
    ``loop_elapsed_s`` over the iterations this call ran, which for a resumed or extended run are
    ``iterations - resumed_from_iteration``) and the xfusion version. History: ``data_term`` = sum(m - d + d ln(d/m)) over both data
    sets (0 ln 0 = 0; half the Poisson deviance, >= 0), ``penalty`` = what the regularization
    adds (Sobolev and/or sparsity), ``objective`` = their sum (nats, ``units="1"``).

    Degenerate inputs (checked before any work): an instrument whose exposure x effective area or
    response is zero everywhere, counts in channels no flux can produce (fix: ``mask=`` them),
    implausible exposure x area (outside ``EXPOSURE_AREA_RANGE`` s cm2) and ill-typed options raise
    ``ValueError``. Fused voxels no data constrain (zero sensitivity: zero area/response or masked
    in both) are held at 0 and reported (attribute ``unconstrained_voxels``; with any, a bool
    ``constrained`` variable). All counts zero: ``flux`` is 0 (the exact maximum-likelihood
    solution, ``iterations=0``, ``converged=1``, attribute ``note``). A NaN/inf solution is never
    returned (``FloatingPointError``). Each Poisson input's predicted and observed total counts (over
    its unmasked data) are recorded (attribute ``count_totals``, JSON: a row per input in the order given, ``input``
    its position as in the ``input`` coordinate and :func:`counts_of`) and a ``RuntimeWarning`` names
    the inputs whose total the cube cannot reproduce (off by more than ``TOTALS_REL_TOL`` = 5% and
    ``TOTALS_SIGMA`` = 5 sigma): inputs that disagree on the source's brightness (exposure, area,
    background or cross-calibration), whose compromise no single sky explains.
    """
    # The Dask path keeps client-side BLAS at one thread: with the threaded scheduler, blocks run in
    # parallel threads and BLAS threads inside them oversubscribe the cores (gaussian_rebin, 2 cores:
    # 1.3 -> 0.53 s/it); with a cluster, the client's small subspace/eigen computations then give the
    # same bits whatever BLAS threading the client process has (FISTA amplifies 1-ulp differences
    # to ~3e-5 in 30 iterations). distributed workers already start with one BLAS thread.
    if len(observations) < 2:
        raise TypeError(f"fuse needs at least two observations (one sharp in space, one sharp in energy); got "
                        f"{len(observations)}")
    _check_inputs_given(observations)
    observations = _wavelength_inputs(observations)
    if settings is not None:
        regularization, method, max_iter, tol, dtype, options = _apply_settings(
            settings, regularization, method, max_iter, tol, dtype, options)
    return _fuse(*observations, regularization=regularization, method=method, max_iter=max_iter, tol=tol,
                 checkpoint=checkpoint, checkpoint_every=checkpoint_every, resume=resume, progress=progress,
                 callback=callback, dtype=dtype, client=client, init=init, **options)


#: keyword arguments of :func:`fuse` that :func:`settings_of` returns besides the options
SETTING_KEYS = ("regularization", "method", "dtype", "tol", "max_iter")


def settings_of(result) -> dict:
    """Every setting a result of :func:`fuse` was computed with, as keyword arguments of :func:`fuse`.

    ``result``: a Dataset returned by :func:`fuse` (or read back from its Zarr store). Returns
    ``{"regularization", "method", "dtype", "tol", "max_iter", <options>}`` with the values used --
    those "auto" chose (``k``, ``n_scales_1d``, ``null_space``, ``rank``, ``mu``, the early-stopping
    ``max_iter``), ISTA's step -- so ``fuse(a, b, **settings_of(result))`` (or ``settings=result``)
    refits other data (e.g. bootstrap replicas) with the same tuned settings and no re-tuning. A fit that
    a ``callback`` stopped before ``max_iter`` (``converged`` 0) gives its iteration count as ``max_iter``.
    Diagnostics (``auto_tuning``, the warm start ``init``) are not settings and are left out.
    """
    if isinstance(result, dict):
        rec = dict(result)
    elif isinstance(result, xr.Dataset) and "parameters" in result.attrs:
        rec = json.loads(result.attrs["parameters"])
    else:
        raise ValueError("settings_of needs a result of xfusion.fuse (a Dataset with a 'parameters' attribute) or "
                         f"the dict settings_of returned; got {type(result).__name__}")
    missing = [k for k in ("regularization", "method") if k not in rec]
    if missing:
        raise ValueError(f"the recorded settings lack {missing}: not a result of xfusion.fuse")
    reg, method = rec["regularization"], rec["method"]
    method, params, _ = _resolve(reg, method, {})
    if isinstance(result, dict):  # written by hand or edited: a key this fit does not take would be dropped silently
        unknown = sorted(set(rec) - set(SETTING_KEYS) - set(params) - {"auto_tuning", "init", "step"})
        if unknown:
            raise ValueError(f"settings: unknown key(s) {unknown} for regularization={reg!r}, method={method!r}; "
                             f"valid: {sorted(set(SETTING_KEYS) | set(params))}")
    out = {"regularization": reg, "method": method}
    for k in ("dtype", "tol", "max_iter"):
        if k in rec:
            out[k] = rec[k]
    # a fit stopped by its callback before max_iter (not converged) is the estimator of its iteration count:
    # refits (uncertainty's replicas) run that count (session 29: they ran to the cap, another estimator)
    if isinstance(result, xr.Dataset) and _is_int(out.get("max_iter")) and not int(result.attrs.get("converged", 1)) \
            and _is_int(result.attrs.get("iterations")) and int(result.attrs["iterations"]) < out["max_iter"]:
        out["max_iter"] = int(result.attrs["iterations"])
    for k in params:
        if k in rec:
            v = rec[k]
            out[k] = tuple(v) if k == "chunks" and isinstance(v, list) else v
    return out


def _apply_settings(settings, regularization, method, max_iter, tol, dtype, options):
    """Merge the recorded ``settings`` with the explicit arguments of :func:`fuse` (see its docstring)."""
    rec = settings_of(settings)
    for key, given, default in (("regularization", regularization, "auto"), ("method", method, None)):
        if given != default and given != rec[key]:
            raise ValueError(f"settings= records {key}={rec[key]!r} but {key}={given!r} was passed; drop one of them")
    max_iter = rec.get("max_iter") if max_iter is None else max_iter
    tol = rec.get("tol", tol) if tol == 1e-4 else tol
    dtype = rec.get("dtype", dtype) if dtype == "float32" else dtype
    opts = {k: v for k, v in rec.items() if k not in SETTING_KEYS}
    opts.update(options)
    return rec["regularization"], rec["method"], max_iter, tol, dtype, opts


def _check_dtype(dtype):
    """``dtype`` as a NumPy dtype, float32 or float64; anything else refused (also by :func:`xfusion.tuning.tune`)."""
    if dtype is None:  # np.dtype(None) is float64: not the default float32, so refused rather than guessed
        raise ValueError("dtype must be 'float32' (the default) or 'float64'; got None")
    try:
        dt = np.dtype(dtype)
    except TypeError:  # e.g. dtype = 64 in a config file: numpy's "Cannot interpret '64' as a data type"
        dt = None
    if dt is None or dt not in (np.dtype(np.float32), np.dtype(np.float64)):  # (np.dtype == None is float64's)
        raise ValueError(f"dtype must be float32 or float64; got {dtype!r}")
    return dt


def _fuse(*observations, regularization="auto", method=None, max_iter=None, tol=1e-4, checkpoint=None,
         checkpoint_every=10, resume=False, progress=True, callback=None, dtype="float32", client=None, init=None,
         **options) -> xr.Dataset:
    """:func:`fuse` (BLAS threading already set)."""
    t_start = time.perf_counter()
    dt = _check_dtype(dtype)
    if not isinstance(progress, (bool, np.bool_)):  # a truthy string such as 'no' showed the bar
        raise TypeError(f"progress must be True or False; got {progress!r}")
    if client is not None:
        parallel.check_workers(client)
    if tol is not None and not (_is_real(tol) and tol > 0):
        raise ValueError(f"tol must be > 0 (relative change of the iterate or objective, a finite number); "
                         f"got {tol!r}. Use tol=None to run all max_iter iterations")
    for i, o in enumerate(observations):
        if isinstance(o, xr.Dataset) and "counts" in o and 0 in o["counts"].shape:
            label = "ab"[i] if i < 2 else i + 1
            raise ValueError(f"observation {label} ('{o.attrs.get('name', '?')}') has an empty counts cube (sizes "
                             f"{dict(o['counts'].sizes)}); select a region and band that contain pixels and channels")
    auto_record = checked = None
    # the checkpoint path is checked before any work; a resumed run reuses what "auto" chose in the interrupted one
    ckpt = _checkpoint(checkpoint, checkpoint_every, resume, observations)
    request = _Request(observations, regularization, method, tol, dt.name, options, client)
    if ckpt is not None and resume:  # a missing, damaged or mismatched checkpoint refused before any computing
        _check_resume(ckpt, resume, request, regularization, method, tol, dt.name, options)
    reuse = ckpt.stored_choice(request.digest) if ckpt is not None and resume else None
    if reuse is not None:
        rec = settings_of(reuse)
        regularization, method = rec["regularization"], rec["method"]
        max_iter = rec["max_iter"] if max_iter is None or max_iter == "auto" else max_iter
        options = {k: v for k, v in rec.items() if k not in SETTING_KEYS}
    if regularization == "auto":
        # degenerate inputs refused before any tuning; the problem built here is reused below unless the choice
        # is a low-rank prior (its own checks)
        checked = _precheck(observations, options, False)
        _expect_kernels(checked[0], dt)
        with _left_to_thinning("regularization", options, max_iter):
            regularization, max_iter, options, auto_record = _choose_regularization(observations, max_iter, tol,
                                                                                    dtype, client, options, method)
    method, params, lowrank = _resolve(regularization, method, options)
    # a named regularization with shape_prior "auto" (["auto", N]): chosen by thinning below, after its other settings
    shape_tuned = shape_auto(params.get("shape_prior"))[0]
    spec, mspec = registry.regularization(regularization), registry.method(method)
    # priors regularized by early stopping (none, lowrank) set the cap of the methods whose early iterates are
    # the smooth ones (EM, FISTA; not fixed-step ISTA): thinning picks the RL iteration ("auto"), low rank keeps
    # its measured count ("auto" opt-in: see xfusion.tuning)
    early = mspec.early_stopping and spec.early_stop is not None
    if max_iter is None:
        max_iter = spec.max_iter if early and spec.max_iter is not None else mspec.max_iter
    if not (max_iter == "auto" and early) and not (_is_int(max_iter) and max_iter >= 0):
        auto_ok = ", ".join(f"'{n}'" for n in EARLY_STOP)
        raise ValueError(f"max_iter must be an integer >= 0 (not a bool or float, never truncated) or 'auto' (for "
                         f"regularization {auto_ok} with method em/fista); got {max_iter!r}")
    # "auto" settings: chosen by Poisson thinning (xfusion.tuning), recorded in the parameters
    from .tuning import AUTO_KEYS, auto_settings, in_memory_copies

    on_dask = client is not None or any(parallel.is_dask(o["counts"]) for o in observations
                                        if isinstance(o, xr.Dataset) and "counts" in o)
    if on_dask and len(observations) > 2 and lowrank:
        raise NotImplementedError("more than two observations on Dask run with the full-cube regularizations "
                                  "(wavelet2d1d, none); for a low-rank one load them (.load()) and fuse without a "
                                  "client")
    # degenerate inputs refused before any work (tuning included); the grid and models are built once, here
    grid, obs, names, models, sums = (checked if checked is not None and not lowrank else
                                      _precheck(observations, params, lowrank))
    if not on_dask:  # (the auto path told it above: its tuning runs in memory)
        _expect_kernels(grid, dt)
    start = None if init is None else start_mod.check_init(init, grid, client)
    no_counts = sums is not None and 0.0 in sums[:2]  # nothing to thin: the fallbacks of the Dask path apply
    # more inputs: the pair that sets the grid first, every further input thinned and scored too
    pair = observations if len(observations) == 2 else obs
    copies = note = None
    if on_dask and not no_counts and (max_iter == "auto" or shape_tuned or any(params.get(k) == "auto"
                                                                                for k in AUTO_KEYS)):
        copies, note = in_memory_copies(pair, client)  # thinning in memory when it fits, the fit on Dask
        no_counts = copies is not None and any("counts" in c and not np.any(c["counts"].values) for c in copies[:2])
    tune_on = pair if copies is None else copies
    with _left_to_thinning(None, params, max_iter):
        max_iter, tuned = auto_settings(tune_on[0], tune_on[1], regularization, method, params, max_iter, tol,
                                        dt.name, (on_dask and copies is None) or no_counts, extra=tuple(tune_on[2:]))
    if no_counts and tuned is not None:
        tuned["method"] = "fallback (an observation has no counts: nothing to thin)"
    elif tuned is not None and copies is not None:
        tuned["in_memory"] = note
    elif tuned is not None and note is not None:
        tuned["method"] = f"fallback ({note})"
    if shape_tuned:  # the fit's own settings are known now: its shape prior by thinning
        gaussian = any("variance" in o or str(o.attrs.get("data_term", "poisson")).lower() != "poisson"
                       for o in tune_on if isinstance(o, xr.Dataset))
        why_not = ("an observation has no counts" if no_counts else "a Gaussian data term" if gaussian else
                   note if on_dask and copies is None else None)
        with _left_to_thinning(None, params, max_iter):
            params["shape_prior"], shape_record = _named_shape_prior(tune_on, regularization, method, params,
                                                                     max_iter, tol, dt.name, why_not)
    if auto_record is not None:  # regularization="auto": its choice is the record (nothing else was tuned)
        tuned = auto_record if tuned is None else dict(auto_record, options=tuned)
    if shape_tuned:
        tuned = dict(tuned or {}, shape_prior=shape_record)
    if reuse is not None:
        tuned = reuse.get("auto_tuning")
    if tuned is not None:
        params["auto_tuning"] = tuned
        if ckpt is not None:  # kept in the checkpoint: resuming does not tune again (and cannot choose otherwise)
            ckpt.request = request.digest()
            ckpt.choice = reuse if reuse is not None else json.loads(json.dumps(
                {"regularization": regularization, "method": method, "max_iter": max_iter, **params}, default=_json_default))
    _check_scales(params, models[0].fused_shape)  # again: tuning may have chosen the scales
    _resolve_source_lines(regularization, params, grid, obs)
    _floor_off_sources(regularization, params)
    max_iter = _resolve_source_iter(regularization, method, params, max_iter, grid, obs)
    settings = {"regularization": regularization, "method": method, "dtype": dt.name, "max_iter": max_iter,
                "tol": tol, **{k: v for k, v in params.items()}}
    if start is not None:
        settings["init"] = start["record"]
    # stage 1: the problem (scaled models, data and their terms, support, flux level)
    problem = _build_problem(grid, obs, names, models, regularization, params, dt, client)
    if not any(problem.sums):
        return _zero_result(problem, dict(settings, **params), lowrank, time.perf_counter() - t_start)
    # stages 2-3: the solver and its initial point
    if lowrank:
        solver, x0, basis = _subspace_solver(problem, spec, params, start, settings.get("init"))
    else:
        (solver, x0), basis = _full_solver(problem, spec, method, params, start, settings.get("init")), None
    # stage 4: run
    if ckpt is not None:
        # init only set iterate 0 and a resume takes precedence over it: left out of the fingerprint (recorded in the
        # manifest); options canonical (k=1 as 1.0). Accepted too: the fingerprint of earlier versions (settings as
        # given, init included), so that their checkpoints still resume
        from .checkpoints import array_digest

        counts = [array_digest(c, client) for c in problem.data]
        ckpt.fingerprint, legacy = _fingerprints(problem.observations, problem.data, [_canonical(
            {k: v for k, v in settings.items() if k != "init"}), settings], client, counts)
        ckpt.accepted = {legacy}
        ckpt.inputs, ckpt.settings = request.inputs(), _stored_settings(settings)
        ckpt.layout, ckpt.counts, ckpt.init = _layout(problem.data), counts, settings.get("init")
    state, history, n_iter, converged = run(
        solver, x0, max_iter=max_iter, tol=tol, callback=callback, progress=progress, checkpoint=ckpt,
        checkpoint_every=checkpoint_every, resume=resume)
    if not lowrank and isinstance(params.get("source_iter"), list):  # the sources run on (not checkpointed: a
        state = _run_on_at_sources(solver, state, params["source_iter"], n_iter, progress)  # resume runs it again)
    # stage 5: the result
    if ckpt is not None and ckpt.init is not None:  # resumed from a warm-started run: its warm start
        settings["init"] = ckpt.init
    if method == "ista" and "step" in params:
        params["step"] = float(state.get("alpha", np.nan))
    return _result(problem, solver, state, history, basis, dict(settings, **params), n_iter, converged,
                   time.perf_counter() - t_start)


@contextlib.contextmanager
def _left_to_thinning(regularization, options, max_iter):
    """Re-raise :class:`xfusion.tuning.NotPhotonCounts` naming the settings of this call that were left to thinning
    (``regularization`` "auto", options "auto", ``max_iter`` "auto", a tuned ``shape_prior``), so that the user knows
    which to give explicitly: counts that cannot be thinned need every one of them."""
    from .tuning import AUTO_KEYS, NotPhotonCounts

    try:
        yield
    except NotPhotonCounts as err:
        left = ["regularization (e.g. 'wavelet2d1d' or 'none') and its 'auto' options"] if regularization else []
        left += [k for k in AUTO_KEYS if options.get(k) == "auto"]
        left += ["max_iter"] if max_iter == "auto" or (regularization and max_iter is None) else []
        sp = options.get("shape_prior", "auto" if regularization else None)
        left += ["shape_prior (None: no spectral-shape prior)"] if shape_auto(sp)[0] else []
        raise NotPhotonCounts(f"{err}. Left to thinning in this call: {', '.join(left) or 'nothing named'}; give "
                              f"each a value.") from None


def _choose_regularization(observations, max_iter, tol, dtype, client, options, method=None):
    """``regularization="auto"``: the tuned 2D-1D starlet prior or plain Richardson-Lucy stopped early, whichever
    predicts held-out counts best (:func:`xfusion.tuning.resolve_auto`, Poisson thinning of every
    observation, in memory). Returns ``(regularization, max_iter, options, record)`` with nothing left "auto" but what
    the fit's own path resolves (with wavelet options given: the other wavelet settings and a shape prior asked for as
    "auto", which :func:`_named_shape_prior` tunes for that fit).
    On Dask-backed data thinning runs on in-memory copies when it fits (:func:`xfusion.tuning.in_memory_copies`;
    the fit then runs on Dask), else ``wavelet2d1d`` with its fallbacks (recorded); with a Gaussian
    data term (no counts to thin, no EM): ``lowrank_sobolev`` (its ``mu`` by data fission when "auto")."""
    from .tuning import PIXEL_FLOOR, WAVELET_KEYS, in_memory_copies, resolve_auto

    on_dask = client is not None or any(parallel.is_dask(o["counts"]) for o in observations
                                        if isinstance(o, xr.Dataset) and "counts" in o)
    wopts = {k: v for k, v in options.items() if k in WAVELET_KEYS}
    rest = {k: v for k, v in options.items() if k not in WAVELET_KEYS}
    asked = rest.get("shape_prior", "auto")  # "auto" here: tuned, then level 0 at >= PIXEL_FLOOR (session 44)
    default = isinstance(asked, str) and asked == "auto"
    shape_tuned, shape_floor = shape_auto(["auto", PIXEL_FLOOR] if default else asked)
    # where nothing is tuned (the fallbacks below) an "auto" shape prior is what the default does there: off
    plain = {k: v for k, v in options.items() if not (k == "shape_prior" and shape_tuned)}

    def fallback(why, **rec):  # the record of a path that tunes nothing here, saying so of a shape prior asked for
        off = {"shape_prior": "off (not tuned on this path)"} if len(plain) < len(options) else {}
        return {"regularization": "auto", **rec, "method": why, **off}
    gaussian = any("variance" in o or str(o.attrs.get("data_term", "poisson")).lower() != "poisson"
                   for o in observations if isinstance(o, xr.Dataset))
    # a wavelet setting given explicitly names the family (no comparison with plain RL); the noise model of the
    # thresholds, the variance stabilization and the spectral bands' factor do not: every wavelet candidate is tuned
    # and scored with them
    fixed = sorted(k for k, v in wopts.items() if v != "auto" and k not in ("noise", "stabilize",
                                                                           "spectral_band_factor"))
    note = None
    if not gaussian:  # the two families "auto" chooses between take these options: checked before any work
        try:
            _resolve("wavelet2d1d", method, options)
        except TypeError as exc:
            raise TypeError(f"{exc}. regularization='auto' chooses between 'wavelet2d1d' and plain RL ('none'); an "
                            "option of another regularization (e.g. rank, mu) needs it named, e.g. "
                            "regularization='lowrank'") from None
    if on_dask and not fixed:  # thinning on in-memory copies when they fit (nothing is loaded when nothing is tuned)
        copies, note = (None, "Dask-backed data with a Gaussian data term") if gaussian else \
            in_memory_copies(observations, client)
        if copies is None:
            return "wavelet2d1d", max_iter, plain, fallback(f"fallback ({note})", chosen="wavelet2d1d")
        observations = copies
    # counts are read in memory only (on Dask: the copies; with wavelet options given nothing is loaded)
    empty = (not on_dask or note is not None) and any(
        isinstance(o, xr.Dataset) and "counts" in o and not np.any(o["counts"].values) for o in observations)
    if gaussian and not any(v != "auto" for v in wopts.values()):  # EM needs Poisson terms: the low-rank + Sobolev prior (SyFu's; mu by data fission if "auto")
        return "lowrank_sobolev", max_iter, {k: v for k, v in rest.items() if k in plain}, fallback(
            "fallback (a Gaussian data term: Poisson thinning and EM do not apply)", chosen="lowrank_sobolev")
    if empty:  # nothing to thin: the wavelet prior with its own fallbacks (xfusion.tuning.auto_settings)
        return "wavelet2d1d", max_iter, plain, fallback(
            "fallback (an observation without counts: Poisson thinning does not apply)", chosen="wavelet2d1d")
    if fixed:  # a shape prior asked for as "auto" is tuned for the fit these options define (fuse, session 40)
        return "wavelet2d1d", max_iter, options, {"regularization": "auto", "chosen": "wavelet2d1d",
                                                  "method": f"wavelet2d1d option(s) given ({', '.join(fixed)})"}
    ordered = observations if len(observations) == 2 else [observations[i] for i in
                                                           input_positions(fusion_grid(*observations))]
    half = {}  # the chosen candidate's half-data iterate, which the shape prior's tuning scores
    reg, chosen, record = resolve_auto(*ordered, dtype=dtype, tol=tol or 1e-4, half_fit=half, **wopts)
    if reg != "wavelet2d1d":  # options of the 2D-1D prior's final fit only (not tuned), moot for plain RL
        rest = {k: v for k, v in rest.items() if k not in ("source_lines", "source_line_sigma", "source_iter")}
    if note is not None:
        record["in_memory"] = note
    n_tuned = chosen.pop("max_iter", None)  # the count by thinning (RL, or the wavelet prior stopped early)
    max_iter = n_tuned if max_iter is None else max_iter
    if shape_tuned:  # its pseudo-counts by thinning too (session 20)
        rest = {k: v for k, v in rest.items() if k != "shape_prior"}
        _resolve(reg, method, {**rest, **chosen})  # an invalid option is refused before that fit
        if max_iter is None or (_is_int(max_iter) and max_iter >= 0):  # else refused below, before any fit
            from .tuning import tune_shape

            fit = {"regularization": reg, **chosen, "max_iter": max_iter, **({"method": method} if method else {})}
            own = max_iter == n_tuned and method in (None, "em")  # the fit whose half-data iterate the tuning kept
            rest["shape_prior"], record["shape_prior"] = _floored(shape_floor, *tune_shape(
                *ordered, settings=fit, dtype=dtype, tol=tol or 1e-4, half_fit=half if own else None))
    return reg, max_iter, {**rest, **chosen}, record


def source_lines_auto_applies(regularization, params, grid=None):
    """Whether ``source_lines="auto"`` looks for line-free compact sources in a fit with ``regularization`` and fuse
    options ``params``: a ``wavelet2d1d`` fit whose ``source_lines`` is "auto" (its default), on the plain cube
    (``stabilize`` "none") with a MAD or Poisson noise model (not ``noise="propagated"``), and (``grid`` given) a
    fused grid with energy edges. The one rule :func:`fuse` applies and benchmarks that replay its delivery read."""
    return (regularization == "wavelet2d1d" and params.get("source_lines", "auto") == "auto"
            and params.get("stabilize", "none") == "none" and params.get("noise") != "propagated"
            and (grid is None or "energy_lo" in grid.coords))


def _resolve_source_lines(regularization, params, grid, obs):
    """``source_lines="auto"`` of the 2D-1D prior: the peaks of the compact sources with line-free spectra in the
    sharp-spatial counts ``obs[0]`` (:func:`xfusion.sources.source_lines`; a list, maybe empty), and
    ``source_line_sigma="auto"``: that instrument's line spread in fused channels. In place; off ("none") where the
    step does not apply (``anscombe2d1d`` or a stabilized cube, the propagated noise model, a grid without an energy
    axis)."""
    if "source_lines" not in params:
        return
    sl = params["source_lines"]
    if regularization != "wavelet2d1d" or sl is None or sl == "none" or (
            sl == "auto" and not source_lines_auto_applies(regularization, params, grid)):
        params["source_lines"], params["source_line_sigma"] = "none", None
        return
    from . import sources

    x_obs = obs[0]
    if sl == "auto":
        params["source_lines"], sigma_kev, _ = sources.source_lines(x_obs, grid)
    else:
        shape = (grid.sizes["x"], grid.sizes["y"])
        bad = [list(p) for p in sl if not (p[0] < shape[0] and p[1] < shape[1])]
        if bad:
            raise ValueError(f"source_lines pixel(s) {bad} lie outside the fused grid of {shape[0]}x{shape[1]} "
                             "pixels; give [i, j] indices along x and y from 0")
        params["source_lines"] = [[int(p[0]), int(p[1])] for p in sl]
        sigma_kev = sources.line_sigma(x_obs, grid, sl[0]) if sl and params.get("source_line_sigma") == "auto" else None
    if not params["source_lines"]:
        params["source_line_sigma"] = None  # no source: nothing uses it
    elif params.get("source_line_sigma") == "auto":
        width = float(np.median(grid["energy_hi"].values - grid["energy_lo"].values))
        params["source_line_sigma"] = float(sigma_kev) / width


def _floor_off_sources(regularization, params):
    """The level-0 floor kept off the line-free compact sources (session 52; in place). Where thinning chose the
    shape prior and ``fuse`` raised its level 0 to a floor (``shape_prior`` "auto" or ``["auto", N]``), the 3x3
    footprints of the 2D-1D prior's ``source_lines`` peaks take thinning's own level-0 pseudo-counts: the delivered
    prior becomes ``[n0, floored n0_pixel, n0_pixel]`` (:class:`xfusion.regularizers.shape.SpectralShape`).

    Why: the floor ties a pixel's spectral shape to its neighbours' because a gas line's centroid is measured only by
    the sharp-spectral instrument's wide pixels; a compact source is a different spectrum that the sharp-spatial
    instrument does measure in its own pixels, and its neighbourhood's shape mixes in the gas around it. A given
    triple is checked here: it needs those peaks (a ``wavelet2d1d`` fit with ``source_lines`` found or given)."""
    sp = params.get("shape_prior")
    peaks = params.get("source_lines") if regularization == "wavelet2d1d" else None
    if isinstance(sp, (list, tuple)) and len(sp) == 3:
        if not (isinstance(peaks, list) and peaks):
            raise ValueError(f"shape_prior {list(sp)!r}: its third value is level 0's pseudo-counts in the 3x3 "
                             "footprints of the line-free compact sources, which only regularization='wavelet2d1d' "
                             "with source_lines found or given has (here: none); give a pair [n0, n0_pixel]")
        return
    record = (params.get("auto_tuning") or {}).get("shape_prior")
    if not (isinstance(peaks, list) and peaks and isinstance(record, dict) and "pixel_floor" in record
            and isinstance(sp, (list, tuple)) and len(sp) == 2):
        return
    from .tuning import floor_off_sources

    out = floor_off_sources(record["choice"], record["pixel_floor"], peaks)
    if len(out) == 3:
        params["shape_prior"] = out
        params["auto_tuning"] = dict(params["auto_tuning"], shape_prior=dict(
            record, delivered=out, at_sources="level 0 at thinning's own value in the 3x3 footprints of "
            "source_lines (session 52)"))


def _resolve_source_iter(regularization, method, params, max_iter, grid, obs):
    """``source_iter`` of the 2D-1D prior (in place) and the field's iteration count (returned): ``"auto"`` resolves
    by :func:`xfusion.tuning.run_on` from thinning's choice (``regularization="auto"``), the compact sources of the
    sharp-spatial counts ``obs[0]`` and their share of those counts (:func:`xfusion.sources.peaks_and_share`):
    ``[ZERO_MAX_ITER, peaks]`` where the zeroed prior stopped before :data:`xfusion.tuning.ZERO_MAX_ITER`
    (session 53); ``[N, peaks]`` with the field stopped at ``round(RUN_ON_FRACTION N)`` where the thresholded prior
    has thinning's count ``N`` and the sources hold at least :data:`xfusion.tuning.RUN_ON_SHARE` of the counts
    (session 59); else None and ``max_iter`` unchanged. A given ``[n, peaks]`` is checked against the grid.

    Why: thinning's count stops where the held-out deviance, summed over every voxel, stops improving. On skies
    with bright compact sources the NMSE, weighted by those sources' peaks, wants more than the gas's line maps do:
    on full-size tuning skies the zeroed prior run to 50 iterations everywhere gained +0.53 dB but the velocity
    maps lost a median 36 %; in the sources' 3x3 footprints alone it kept most of the gain and little of the loss.
    The thresholded prior's count is already the sources' (session 58: half of it gave the gas's velocity maps
    up to 30 % less error on faint point-source skies); its field stops earlier instead
    (``benchmarks/QUALITY_HISTORY.md``)."""
    if "source_iter" not in params:
        return max_iter
    v = params["source_iter"]
    if v is None or v == "none" or regularization != "wavelet2d1d" or method != "em":
        params["source_iter"] = None
        return max_iter
    if v == "auto":
        from . import sources
        from .tuning import run_on

        rec = params.get("auto_tuning") or {}
        ch = rec.get("choice") if rec.get("regularization") == "auto" else None
        peaks, share = sources.peaks_and_share(obs[0]) if isinstance(ch, dict) and ch.get("null_space") in (
            "zero", "threshold") else ([], 0.0)
        max_iter, params["source_iter"] = run_on(ch, max_iter, peaks, share)
        return max_iter
    n, peaks = v
    shape = (grid.sizes["x"], grid.sizes["y"])
    bad = [list(p) for p in peaks if not (p[0] < shape[0] and p[1] < shape[1])]
    if bad:
        raise ValueError(f"source_iter peak(s) {bad} lie outside the fused grid of {shape[0]}x{shape[1]} pixels; "
                         "give [i, j] indices along x and y from 0")
    params["source_iter"] = [int(n), [[int(p[0]), int(p[1])] for p in peaks]]
    return max_iter


def _run_on_at_sources(solver, state, source_iter, n_iter, progress=False):
    """The state whose iterate takes, in the 3x3 footprints of ``source_iter``'s peaks (the cores), the same run
    continued from ``state`` (iteration ``n_iter``) to iteration ``source_iter[0]`` (nothing to do when the run is
    already there), and elsewhere ``state``'s iterate ``z``, except that around each source the rest of its 5x5
    (the ring) is scaled so that the source's 5x5 keeps the total of ``z``: what the run on moved from the wings
    into the core is taken from the ring (each connected 5x5 region alike; a scale below 0 is held at 0). So the
    cube's total stays that of the iteration-``n_iter`` fit (session 53: without the ring, up to +1 % total flux on
    a faint point-source sky). Either backend: per-pixel totals (small 2D maps) are computed, the rest is
    element-wise (``numpy.where`` dispatches to Dask). Returns the state with that iterate (a shape prior in the
    loop recomputes its total from it)."""
    n, peaks = source_iter
    if not peaks or int(n) <= int(n_iter):
        return state
    from scipy import ndimage as ndi

    from .sources import footprint_mask

    z0 = state["z"]
    z0 = np.array(z0, copy=True) if isinstance(z0, np.ndarray) else z0
    on = dict(state)
    steps = range(int(n) - int(n_iter))
    if progress:
        from tqdm.auto import tqdm

        steps = tqdm(steps, desc="xfusion compact sources", unit="it", leave=True)
    for _ in steps:
        on = solver.step(on)
    z1 = on["z"]
    shape = tuple(z0.shape[:2])
    core, wide = footprint_mask(peaks, shape, 1), footprint_mask(peaks, shape, 2)
    t0 = np.asarray(z0.sum(axis=2, dtype=np.float64))  # per-pixel totals (computed on Dask: small maps)
    t1 = np.asarray(z1.sum(axis=2, dtype=np.float64))
    scale = np.ones(shape)
    labels, n_regions = ndi.label(wide)
    for k in range(1, n_regions + 1):
        region = labels == k
        c, ring = region & core, region & ~core
        ring_total = float(t0[ring].sum())
        if ring_total > 0:
            scale[ring] = max(float(t0[region].sum()) - float(t1[c].sum()), 0.0) / ring_total
    out = {k: v for k, v in state.items() if k != "post_total"}
    out["z"] = np.where(core[:, :, None], z1, z0 * scale[:, :, None].astype(z0.dtype)).astype(z0.dtype)
    return out


def _floored(floor, choice, record):
    """``shape_prior=["auto", N]``: the tuned pseudo-counts ``choice`` with level 0 at no fewer than ``N`` (velocity
    maps; ``floor`` None: unchanged). Returns ``(delivered, record)``, the record saying what was delivered."""
    if floor is None:
        return choice, record
    from .tuning import with_pixel_floor

    out = with_pixel_floor(choice, floor)
    return out, dict(record, pixel_floor=float(floor), delivered=out)


def _named_shape_prior(observations, regularization, method, params, max_iter, tol, dtype, why_not):
    """``shape_prior="auto"`` or ``["auto", N]`` with a named regularization (session 40): the pseudo-counts chosen by
    Poisson thinning for the fit about to run (:func:`xfusion.tuning.tune_shape` on its settings, ``max_iter`` its
    resolved count; half the counts fitted for a proportional count), then the floor. ``observations`` in the order
    the other settings were tuned in. ``why_not``: the reason nothing can be thinned here (Dask data too large for
    memory, no counts, a Gaussian data term), or None. Returns ``(shape_prior, record)``; where nothing is thinned the
    prior is off and the record says why."""
    floor = shape_auto(params["shape_prior"])[1]
    if why_not is not None:
        return None, {"choice": None, "method": f"off (not tuned on this path: {why_not})"}
    from .tuning import tune_shape

    fit = {"regularization": regularization, "method": method, "max_iter": max_iter,
           **{k: v for k, v in params.items() if k != "shape_prior"}}
    return _floored(floor, *tune_shape(*observations, settings=fit, dtype=dtype, tol=tol or 1e-4))


@dataclass
class _Problem:
    """Stage 1 of :func:`fuse`: everything that defines the problem, one entry per observation in each list
    (the sharp-spatial observation first, then the sharp-spectral one).

    ``models``: instrument models scaled to internal units (expected sharp-spatial counts per fused voxel:
    ``flux = z / scale``); ``data``: the counts as the solver reads them (NumPy, or persisted Dask blocks);
    ``terms``: their data terms (:func:`xfusion.likelihood.make_term`; Dask: the block-wise Poisson terms of the
    low-rank path, None for the full cube, whose Dask solver holds its own); ``sums``: total counts;
    ``free``: voxels some data constrain (fused shape or per channel); ``level``: the flat cube's value
    (internal units per voxel) that reproduces the counts.
    """
    grid: xr.Dataset
    observations: list
    names: list
    models: list
    data: list
    terms: list
    scale: float
    dtype: np.dtype
    use_dask: bool
    client: object
    sums: list
    free: np.ndarray
    level: float
    coverage: list = None

    @property
    def shape(self):
        return self.models[0].fused_shape


def _build_problem(grid, observations, names, models, regularization, params, dt, client):
    """Stage 1: scale the models, load (or block) the data, make their terms, find the support and the level."""
    x_obs, y_obs = observations[:2]
    # internal units: expected X counts per fused voxel (keeps float32 well scaled)
    scale = models[0].mean_weight()
    models = [m.scaled(scale) for m in models]
    mx, my = models[:2]
    use_dask = parallel.is_dask(x_obs["counts"]) or parallel.is_dask(y_obs["counts"]) or client is not None
    shape = mx.fused_shape
    masks = [o["mask"].data if "mask" in o else None for o in observations]
    if use_dask:
        if any("variance" in o or str(o.attrs.get("data_term", "poisson")).lower() != "poisson" for o in observations):
            raise NotImplementedError("Gaussian data terms (a 'variance' variable) are not supported on the Dask path "
                                      "yet; load the observations into memory (.load()) and fuse without a client")
        import dask.array as da

        v = grid.attrs["spatial_factor"]
        # each block holds whole pixels of every input: blocks are multiples of all their spatial factors
        factors = _block_factors(grid, observations, names, models)
        f = math.lcm(1, *(c for fs in factors.values() for c in fs))
        bx, by = params.get("chunks") or _auto_chunks(grid, shape, dt, regularization, params, client, f)
        if params.get("chunks") and (bx % f or by % f):
            fix = tuple(-(-b // f) * f for b in (bx, by))
            shown = {n: fs[0] if fs[0] == fs[1] else fs for n, fs in factors.items()}
            what = (f"the spatial factor {f} (fused pixels per '{next(iter(shown))}' pixel, so that each block holds "
                    "whole Y pixels)" if len(shown) == 1 else
                    f"{f}, the least common multiple of the inputs' spatial factors (fused pixels per input pixel: "
                    f"{', '.join(f'{n!r} {s}' for n, s in shown.items())}; so that each block holds whole pixels of "
                    "every input)")
            raise ValueError(f"chunks={(bx, by)} must be multiples of {what}: e.g. chunks={fix}, or chunks=None to "
                             "choose them")
        xd = da.asarray(x_obs["counts"].data).rechunk((bx, by, -1))
        yd = da.asarray(y_obs["counts"].data)  # a detector-pixel tile (pixel, energy): one chunk
        yd = yd.rechunk((-1, -1) if yd.ndim == 2 else (bx // v, by // v, -1))
        if registry.regularization(regularization).family == registry.SUBSPACE:  # (masks refused there)
            if yd.ndim == 2:
                raise NotImplementedError(
                    f"the low-rank family ({regularization!r}) on Dask does not take a detector-pixel input "
                    f"('{names[1]}'): use regularization='wavelet2d1d' or 'none' on Dask, or load the observations "
                    "into memory (.load()) and fuse without a client")
            terms = [parallel.DaskPoissonTerm(mx, xd, dt, client, mask=masks[0]),
                     parallel.DaskPoissonTerm(my, yd, dt, client, mask=masks[1])]
            xd, yd = terms[0].data, terms[1].data  # persisted: later passes do not re-read the stores
        else:
            terms = [None, None]
            xd, yd = parallel.persist_many([xd.astype(dt), yd.astype(dt)], client)
    else:
        xd, yd = x_obs["counts"].values, y_obs["counts"].values
        terms = [make_term(obs, m, dt) for obs, m in zip(observations, models)]
    # voxels no flux can change the data of leave the problem (held at 0, reported); counts no flux can
    # explain, or an instrument that sees nothing, are refused (xfusion.likelihood.support_*)
    edges = [_channel_edges(o) for o in observations]
    data = [xd, yd] + [da.asarray(o["counts"].data) if use_dask else o["counts"].values for o in observations[2:]]
    if not use_dask:  # Gaussian data may hold NaN where masked (their terms checked it): 0 in the totals and spectra
        data = [d if np.all(np.isfinite(d)) else np.where(np.isfinite(d), d, 0.0) for d in data]
    # per channel: the totals of the used (unmasked) counts and the used fraction of each input's pixels (the checks
    # and the level: a masked hot pixel's counts must not set the start)
    if use_dask:
        import dask.array as da

        used = [d if k is None else da.where(da.asarray(k).rechunk(d.chunks) > 0, d, 0) for d, k in zip(data, masks)]
        n = len(data)  # in the same pass: the value checks validate leaves to the first read of Dask counts
        voxel = _unexplained_by_voxel(models, data, masks, xd.chunks[:2], client)
        n_mask = sum(k is not None for k in masks)
        got = [np.asarray(c, np.float64) for c in parallel.compute_many(
            [d.sum(axis=tuple(range(d.ndim - 1)), dtype=np.float64) for d in used]
            + [(~da.isfinite(d)).sum() for d in data] + [da.where(da.isfinite(d), d, 0).min() for d in data]
            + [(da.asarray(k) > 0).mean(axis=tuple(range(k.ndim - 1))) for k in masks if k is not None]
            + [c for c in voxel if c is not None], client)]
        used, fractions, voxel_got = got[:n], iter(got[3 * n:3 * n + n_mask]), iter(got[3 * n + n_mask:])
        fractions = [None if k is None else next(fractions) for k in masks]
        voxel = [None if c is None else next(voxel_got) for c in voxel]
        for o, name, bad, low in zip(observations, names, got[n:2 * n], got[2 * n:3 * n]):  # (Gaussian: refused)
            check_count_values(name, int(bad), float(low), source=o.encoding.get("source"))
        # per channel (the checks): vignetted weights enter through their mean over the pixels (> 0 where any pixel
        # sees the channel), per-pixel ARFs through theirs, and counts in voxels where a position-dependent
        # sensitivity is 0 through ``voxel``; the EM solver finds the voxels no input sees in its own sensitivity
        # (free="sensitivity": held at 0 and reported, as in memory); counts a known background explains are allowed
        sens = sum(support_by_channel(m.per_channel(), n, e, c if m.background is None else np.where(
            m.background.sum(axis=tuple(range(m.background.ndim - 1))) > 0, 0.0, c), v)
            for m, n, e, c, v in zip(models, names, edges, used, voxel))
        sums = [float(c.sum()) for c in used]
    else:
        sens, coverage = None, []
        for t, n, e in zip(terms, names, edges):  # the same sum as before, keeping each input's share over energy
            s_i = support_in_memory(t, n, e)
            sens = s_i if sens is None else sens + s_i
            coverage.append(s_i.sum(axis=-1))
        sums = [float((d if k is None else np.where(np.asarray(k) > 0, d, 0)).sum(dtype=np.float64))
                for d, k in zip(data, masks)]
        fractions = [None if k is None else (np.asarray(k) > 0).mean(axis=tuple(range(np.ndim(k) - 1)))
                     for k in masks]
    # mean level (internal units per voxel) that reproduces the used X counts (the Y counts if X has none): from the
    # model of a flat cube
    level = (_flat_level(mx, sums[0], shape, dt, fractions[0]) if sums[0] > 0 else
             _flat_level(my, sums[1], shape, dt, fractions[1]))
    # Gaussian sharp-spatial term on a wavelength grid (xfusion.jwst), or Gaussian data whose total is <= 0: mu
    # relative to the term's curvature (its mean precision) instead of the flux level
    if grid.attrs.get("spectral_unit") == "um" or (not level > 0 and terms and hasattr(terms[0], "precision")):
        from .jwst import sobolev_level

        level = sobolev_level(terms[0])
    return _Problem(grid, list(observations), list(names), models, data, terms, scale, dt, use_dask, client, sums,
                    free_voxels(sens), level, None if use_dask else coverage)


def _unexplained_by_voxel(models, data, masks, chunks, client):
    """Dask path: per input, None or the lazy counts per data channel (l,) in the used data voxels whose model
    predicts zero counts for any flux -- the per-voxel rule of :func:`xfusion.likelihood.support_in_memory`
    (``H 1 <= ZERO_SUPPORT`` x its largest value over the used voxels, no known background there) -- for the models
    whose sensitivity varies with position, so that the per-channel check cannot see it: vignetted weights (an
    effective area or exposure map that is 0 on some pixels) and detector-pixel tiles (per-pixel ARFs and exposure
    fractions). ``H 1`` is the model applied on the Dask backend to a lazy cube of ones in the fused pixel blocks
    ``chunks`` (float64, as in memory); :func:`_build_problem` computes these with the counts checks, in its one
    pass over the data (``H 1`` of such an input is held until its largest value is known)."""
    from .backends.blockwise import DaskBackend
    import dask.array as da

    backend = DaskBackend(tuple(chunks) + ((models[0].fused_shape[-1],),), client)
    out = []
    for m, d, k in zip(models, data, masks):
        if not (m.vignetted or d.ndim == 2) or not backend.supports(m):  # unsupported: refused by the solver
            out.append(None)
            continue
        h1 = backend.forward(m, da.ones(m.fused_shape, chunks=backend.chunks, dtype=np.float64))
        d = da.asarray(d).rechunk(h1.chunks)
        valid = None if k is None else da.asarray(k).rechunk(h1.chunks) > 0
        peak = (h1 if valid is None else da.where(valid, h1, 0.0)).max()
        bad = h1 <= ZERO_SUPPORT * peak
        if valid is not None:
            bad = bad & valid
        if m.background is not None:
            bad = bad & da.from_array(m.background <= 0, chunks=h1.chunks)
        out.append(da.where(bad, d, 0).sum(axis=tuple(range(d.ndim - 1)), dtype=np.float64))
    return out


def _sharp_spectral(grid, n):
    """Model indices (model order, ``n`` models) of the sharp-spectral inputs, whose spectra give the low-rank basis:
    the input that set the fused channels and the further inputs on them (images on the fused channels,
    detector-pixel tiles) -- the same set whichever of them is given first."""
    groups = _role_groups(grid, n)
    return [1] if groups is None else [j for j, g in enumerate(groups) if g == "spectral"]


def _check_basis_counts(names, sums, sharp):
    """Refuse a low-rank fit whose sharp-spectral inputs (model indices ``sharp``) have no counts; returns their
    names for messages ("'A' and 'B'")."""
    said = " and ".join(f"'{names[j]}'" for j in sharp)
    if not any(sums[j] for j in sharp):
        raise ValueError(f"{said} {'has' if len(sharp) == 1 else 'have'} no counts: the low-rank basis is estimated "
                         "from the sharp-spectral spectra, so there is no spectral subspace; use "
                         "regularization='wavelet2d1d'")
    return said


def _subspace_solver(problem, spec, params, start, init_record):
    """Stages 2-3, low-rank family: the spectral basis from the spectra of every sharp-spectral input (the one that
    set the fused channels and the further inputs on them: :func:`_sharp_spectral`), the solver and W0."""
    grid, mx, xd = problem.grid, problem.models[0], problem.data[0]
    shape, dt, level, client, use_dask = problem.shape, problem.dtype, problem.level, problem.client, problem.use_dask
    sharp = _sharp_spectral(grid, len(problem.models))
    said = _check_basis_counts(problem.names, problem.sums, sharp)
    wys = [np.broadcast_to(problem.models[j].weights, shape)[0, 0] for j in sharp]  # not vignetted: _precheck
    blind = (np.max(wys, axis=0) <= 0) & (np.broadcast_to(mx.weights, shape)[0, 0] > 0)
    if blind.any():  # the basis (the sharp-spectral spectra) is 0 there: the cube could hold no flux where X sees some
        e = grid["energy"].values[blind]
        raise ValueError(
            f"{said} {'has' if len(sharp) == 1 else 'have'} no effective area in {int(blind.sum())} fused channel(s) "
            f"({e.min():.4g}-{e.max():.4g} keV) where '{problem.names[0]}' sees: the low-rank basis comes from the "
            "sharp-spectral spectra, so the cube could hold no flux there (it would be 0 and the missing counts put in "
            "the other channels). Use regularization='wavelet2d1d' or 'none', or fuse only the band both instruments "
            "see")
    # masked counts (e.g. a hot pixel) enter neither the basis nor the start (masks are refused here on Dask)
    kx = np.asarray(problem.observations[0]["mask"].values) > 0 \
        if "mask" in problem.observations[0] and not use_dask else None
    # flux spectra (n, L) of every sharp-spectral input, in model order; channels an input cannot see (zero area: no
    # counts there) are 0, not 0/0. The cube does not depend on which of them set the grid (to float round-off)
    parts = []
    for j, wy in zip(sharp, wys):
        o, yd = problem.observations[j], problem.data[j]
        if "mask" in o and not use_dask:
            yd = np.where(np.asarray(o["mask"].values) > 0, yd, 0)
        parts.append(yd.reshape(-1, yd.shape[-1]) / np.where(wy > 0, wy, np.inf))
    spectra = parts[0] if len(parts) == 1 else np.concatenate(parts)  # (several: in memory only)
    n_spectra = sum(problem.data[j].shape[0] * problem.data[j].shape[1] for j in sharp)
    if not params["explained"] and params["rank"] > min(shape[2], n_spectra):  # rank unused else
        raise ValueError(f"rank={params['rank']} exceeds the {shape[2]} channels or the {n_spectra} spectra of "
                         f"{said}; use a smaller rank")
    if use_dask and shape[2] > lowrank_mod.COVARIANCE_MAX_CHANNELS:
        basis = lowrank_mod.pca_basis_randomized(spectra, rank=None if params["explained"] else params["rank"],
                                                 explained=params["explained"],
                                                 compute=lambda c: parallel.compute_many(c, client))
        s = parallel.compute(spectra.sum(axis=0, dtype=np.float64), client)
    else:
        moments = lowrank_mod.spectral_moments(spectra, compute=lambda c: parallel.compute_many(c, client))
        basis = lowrank_mod.pca_basis(moments=moments, rank=None if params["explained"] else params["rank"],
                                      explained=params["explained"] or 0.999)
        s = moments[1]
    if params["explained"]:  # record the basis size explained= chose, not the unused rank option
        params["rank"] = int(basis.shape[0])
    vb = basis.astype(dt)
    # start: X amplitude per pixel times the mean sharp-spectral spectrum (positive, in the subspace)
    s = s / s.sum()
    per_pix = mx.reduced(s[None])[1].sum()
    if kx is None:
        amp = xd.sum(axis=-1, dtype=np.float64)
        amp = (parallel.compute(amp, client) if use_dask else amp) / per_pix
    else:  # per pixel: its used counts over its used fraction; a pixel masked whole: the others' mean
        frac = kx.mean(axis=-1)
        amp = np.where(kx, xd, 0).sum(axis=-1, dtype=np.float64) / np.where(frac > 0, frac, 1.0) / per_pix
        amp[frac == 0] = amp[frac > 0].mean() if (frac > 0).any() else 0.0
    amp = np.maximum(amp, 0.0)  # Gaussian data may sum to < 0 in a pixel: no negative start or preconditioner
    if not amp.any():  # no X counts: a flat start at the level of the Y counts
        amp = np.full(amp.shape, level * shape[2])
    amp = amp + 1e-3 * amp.mean()
    w0 = (amp[:, :, None] * (s @ basis.T)[None, None, :]).astype(dt)
    smooth, prox = spec.build(params, level)
    precond = (amp / amp.mean())[:, :, None] if params.get("precondition", True) else None
    solver = SubspaceFISTA(problem.terms, [m.reduced(vb) for m in problem.models], smooth=smooth, prox=prox,
                           precond=precond)
    x0 = w0 if start is None else start_mod.subspace_start(start, basis, problem.scale, w0, solver, init_record, client)
    return solver, x0, basis


def _role_groups(grid, n):
    """Per model (model order), "spatial" (the sharp-spatial input and inputs on its pixels) or "spectral" (the
    others), for the balanced EM step of several sharp-spatial inputs (:mod:`xfusion.solvers.em`); None for two
    inputs or a grid without roles."""
    if n <= 2 or "roles" not in grid.attrs:
        return None
    from .grid import PIXELS

    roles = {r["input"]: r["role"] for r in json.loads(grid.attrs["roles"])}
    pos = input_positions(grid)
    return ["spatial" if j == 0 or roles.get(pos[j]) == PIXELS else "spectral" for j in range(n)]


def _full_solver(problem, spec, method, params, start, init_record):
    """Stages 2-3, full-cube family: the prior, the solver (EM or ISTA; Dask: block-wise EM) and Z0."""
    grid, (mx, my), (xd, yd) = problem.grid, problem.models[:2], problem.data[:2]
    use_dask, client, level, dt, scale = problem.use_dask, problem.client, problem.level, problem.dtype, problem.scale
    if spec.prepare is not None:  # options left "auto" (Dask-backed data) resolved from the counts
        o = problem.observations[1]
        spec.prepare(params, yd, client if use_dask else None, mask=o["mask"].data if "mask" in o else None)
    reg = spec.build(params, level)
    if use_dask:
        if method != "em":
            raise NotImplementedError(f"on Dask-backed data the full-cube regularizations run with method='em' (got "
                                      f"{method!r}): use method='em' (the default), or load the data (.load()) and "
                                      "fuse without a client for the paper's fixed-step ISTA")
        if not spec.dask:
            raise NotImplementedError(f"regularization {spec.name!r} runs in memory only; load the data "
                                      "(without chunks=) or use regularization='wavelet2d1d' on Dask")
        if params.get("stabilize", "none") != "none":  # the stabilized prox has no block form
            raise NotImplementedError(f"stabilize={params['stabilize']!r} runs in memory only; load the data (without "
                                      "chunks=) or leave stabilize='none' on Dask")
        from .parallel_em import DaskEMProx

        psf = None
        if "psf" in grid:
            p = grid["psf"]
            psf = (p.transpose("psf_energy", "psf_x", "psf_y") if "psf_energy" in p.dims else p).values
        masks = [o["mask"].data if "mask" in o else None for o in problem.observations]
        solver = DaskEMProx(xd, yd, mx, my, psf, grid.attrs["spatial_factor"], reg, client,
                            layout=params["layout"], masks=masks[:2],
                            extras=[(d, m, w) for d, m, w in zip(problem.data[2:], problem.models[2:], masks[2:])],
                            roles=_role_groups(grid, len(problem.models)), free="sensitivity")
        x0 = level if start is None else start_mod.cube_start(start, scale, level, method, dt, init_record)
    else:
        lik = PoissonLikelihood(problem.terms)
        free = problem.free
        solver = EMProx(lik, reg, free=free, roles=_role_groups(grid, len(problem.models))) if method == "em" \
            else ISTA(lik, reg, step=params.get("step"), free=free)
        x0 = np.full(problem.shape, level, dtype=dt) if start is None else \
            start_mod.cube_start(start, scale, level, method, dt, init_record)
    if params.get("shape_loop") is not None:  # the spectral-shape prior before every EM step too (session 43)
        if method != "em":
            raise ValueError(f"option shape_loop runs with method='em' (it shrinks the iterate each EM step reads); "
                             f"got method={method!r}: use method='em' or shape_loop=None")
        from .regularizers.shape import SpectralShape

        solver.post = SpectralShape(params["shape_loop"], float(sum(problem.sums)))
    return solver, x0


def _result(problem, solver, state, history, basis, params, n_iter, converged, elapsed):
    """Stage 5, the one result builder: the solution in physical units, both instruments' predicted counts
    (low rank: models of the unclipped W V, as in the solver) on the problem's backend (NumPy, or lazy Dask
    blocks never materialized), labelled by :func:`_assemble`; unconstrained voxels held at 0 and reported;
    FISTA's failed line searches reported (attribute ``backtrack_failures``, and a warning)."""
    grid, (x_obs, y_obs) = problem.grid, problem.observations[:2]
    (mx, my), (xd, yd) = problem.models[:2], problem.data[:2]
    scale, client, free = problem.scale, problem.client, problem.free
    if problem.use_dask and basis is None and getattr(solver, "free", None) is not None:
        free = solver.free  # per voxel (a lazy bool cube), as in memory: voxels no input sees
    sol = solver.solution(state)
    _check_finite(sol, history, client)
    coeffs = sol if basis is not None else None
    if basis is None and params.get("shape_prior") is not None:  # the spectral-shape prior of the delivered cube
        sol = _shape_prior(problem, solver, sol, params["shape_prior"], params.get("source_lines"))
    extras = []
    if problem.use_dask and basis is not None:
        vb = basis.astype(sol.dtype)
        sp_y, v_y = my.reduced(vb)
        a_y = sol if sp_y is None else sp_y.forward(sol)
        blocks = (xd.chunks[0][0], xd.chunks[1][0])
        flux = parallel.lazy_product(sol, basis, blocks, scale=scale)
        mod_x = parallel.lazy_product(sol, mx.reduced(vb)[1], blocks, clip=False)
        mod_y = parallel.lazy_product(a_y, v_y, (yd.chunks[0][0], yd.chunks[1][0]), clip=False)
        counts, negative_fraction = (xd.astype(np.float32), yd.astype(np.float32)), float("nan")
    elif problem.use_dask:
        flux, mod_x, mod_y = (sol / scale).astype(np.float32), solver.model_x(sol), solver.model_y(sol)
        counts, negative_fraction = (xd, yd), 0.0
        pos = input_positions(grid)  # further inputs (issue 18): lazy models and the observed counts (unmasked)
        extras = [(pos[i], problem.observations[i], solver.model(i, sol), problem.data[i])
                  for i in range(2, len(problem.observations))]
        problem.coverage = _dask_coverage(solver, client)
    else:
        if basis is not None:
            zz = np.ascontiguousarray(sol @ basis.astype(sol.dtype))
            z = zz.copy()
            negative_fraction = float(np.mean(z < 0))
            np.maximum(z, 0, out=z)
            z[~np.broadcast_to(free, z.shape)] = 0  # unconstrained voxels leave the problem: held at 0
        else:
            z = zz = np.ascontiguousarray(sol)
            negative_fraction = 0.0
        flux = (z / scale).astype(np.float32)
        mod_x, mod_y = mx.expected(zz).astype(np.float32), my.expected(zz).astype(np.float32)
        counts = (x_obs["counts"].values, y_obs["counts"].values)
        pos = input_positions(grid)
        extras = [(pos[i], o, m.expected(zz).astype(np.float32), o["counts"].values) for i, (o, m) in
                  enumerate(zip(problem.observations, problem.models)) if i >= 2]
    ds = _assemble(grid, x_obs, y_obs, flux, mod_x, mod_y, *counts, history, basis, coeffs, scale, params, n_iter,
                   converged, elapsed, state.get("elapsed_loop_s", np.nan), state.get("iterations_run", n_iter),
                   backend="dask" if problem.use_dask else "numpy", negative_fraction=negative_fraction,
                   extras=extras)
    ds.attrs["count_totals"] = json.dumps(_count_totals(problem, [mod_x, mod_y] + [e[2] for e in extras],
                                                          None if converged or "auto_tuning" in params else n_iter))
    if problem.coverage is not None:
        ds = _add_coverage(ds, grid, problem)
    if "backtrack_failures" in state:
        failures = int(state["backtrack_failures"])
        ds.attrs["backtrack_failures"] = failures
        if failures:
            warnings.warn(f"FISTA's line search found no step satisfying its bound in {failures} of {n_iter} "
                          "iterations; the iterate was kept there (see the result attribute backtrack_failures). "
                          "Check the result, or use tol=None with fewer iterations", RuntimeWarning, stacklevel=5)
    ds = _mark_unconstrained(ds, free, client)
    if grid.attrs.get("spectral_unit") == "um":  # imager + IFU: data units, wavelength, margin cropped
        from .jwst import finish_result

        ds = finish_result(ds, grid, x_obs)
    return ds


#: the fused cube's predicted total counts of an input may differ from its observed total by this fraction...
TOTALS_REL_TOL = 0.05
#: ...or by this many Poisson standard deviations (sqrt of the observed total) before :func:`fuse` warns
TOTALS_SIGMA = 5.0
#: how that warning begins (:func:`xfusion.tuning` silences it in its fits on thinned halves)
TOTALS_WARNING = "the fused cube does not reproduce every input's total counts"


def _count_totals(problem, predicted, stopped_at=None):
    """Per input: predicted and observed counts summed over its used data (mask > 0), their ratio, and a warning
    when the fused cube cannot reproduce an input's total (off by more than :data:`TOTALS_REL_TOL` and
    :data:`TOTALS_SIGMA` Poisson sigmas).

    On consistent data a fit reproduces every input's total within noise (``benchmarks/count_totals.py``, session 31:
    the 5 scene kinds x 2 response sets x 1e5 / 3e6 counts of :mod:`xfusion.scenes`, seed 7: ratios 0.991-1.009,
    within 2.9 sigma; held-out seed 3: within 0.81 %, 3.0 sigma; none warned). A calibration offset between two
    inputs splits about evenly between them: one input's exposure 10 % off gives ratios ~1.05 / 0.95 (7 of 20
    scenes warned), 30 % off ~1.14 / 0.86 (20 of 20); smaller offsets stay quiet. 5 %, not less: fits stopped after
    1-3 iterations on consistent data are still 3-4 % off (the small toy: 1.039 / 0.961 after one EM iteration;
    a 3 % threshold warned in two tests of the suite);
    inputs that disagree on the source's brightness (a wrong exposure, effective area or background, or a
    cross-calibration offset) cannot both be matched and the cube is a compromise between them (100x the
    counts of one input: ratios 46 and 0.46, a cube ~46x too bright, reported as converged). ``predicted``:
    each input's expected counts (data shape, NumPy or Dask; one pass on Dask). Gaussian (JWST) inputs are
    skipped: their cross-calibration is fitted. ``stopped_at``: the iteration count of a fit that stopped at a
    ``max_iter`` the user gave before its tolerance was met, named in the warning as a cause (one EM iteration on the
    small toy: 1.04 / 0.96); None for a converged fit or one whose count the tuning chose. Returns ``[{"input",
    "name", "predicted", "observed", "ratio"}]`` (the result attribute ``count_totals``, JSON), in the order the
    inputs were given to :func:`fuse`; ``input`` is that position, as the result's ``input`` coordinate and
    :func:`counts_of` number them."""
    parts, rows, sums = [], [], []
    pos = input_positions(problem.grid)  # model order -> position in the fuse call
    for i in sorted(range(len(predicted)), key=pos.__getitem__):
        o, m = problem.observations[i], predicted[i]
        if "variance" in o or str(o.attrs.get("data_term", "poisson")).lower() != "poisson":
            continue
        # np.where dispatches to Dask for a lazy model or mask; the observed totals are the problem's (used counts)
        parts.append((np.where(o["mask"].data > 0, m, 0) if "mask" in o else m).sum(dtype=np.float64))
        rows.append({"input": pos[i], "name": problem.names[i]})
        sums.append(problem.sums[i])
    if problem.use_dask and parts:
        parts = parallel.compute_many(parts, problem.client)
    off = []
    for row, pred, obs in zip(rows, parts, sums):
        pred, obs = float(pred), float(obs)
        row.update(predicted=pred, observed=obs, ratio=pred / obs if obs > 0 else None)
        if obs > 0 and abs(pred - obs) > max(TOTALS_REL_TOL * obs, TOTALS_SIGMA * np.sqrt(obs)):
            off.append(row)
    if off:
        said = ", ".join(f"{r['ratio']:.3g}x the counts of '{r['name']}' ({r['predicted']:.4g} for {r['observed']:.4g})"
                         for r in off)
        warnings.warn(f"{TOTALS_WARNING}: it predicts {said}, more than {TOTALS_REL_TOL:.0%} and {TOTALS_SIGMA:g} "
                      "sigma off. The inputs disagree on the source's brightness, and the cube is a compromise between "
                      "them: check each input's exposure, effective area (ARF) and background, and the instruments' "
                      "cross-calibration. A band much narrower than a CCD's ~100 eV resolution does it too: photons "
                      "from true energies outside the fused band land in the band's channels, and the model, which "
                      "covers only the band, cannot explain them; fuse a band wider than the region of interest by a "
                      "few resolution widths (result attribute count_totals)"
                      + ("" if stopped_at is None else f". Or the fit stopped before converging ({stopped_at} "
                         "iterations, max_iter): fit longer before judging the inputs"), RuntimeWarning, stacklevel=6)
    return rows


def _shape_prior(problem, solver, z, pseudo_counts, sources=None):
    """``z`` with each pixel's spectral shape shrunk toward its neighbourhood's (:mod:`xfusion.regularizers.shape`;
    every input's counts), on the solver's backend (Dask: blocks with the starlet halo, one pass for the total); a
    triple ``pseudo_counts`` sets level 0 in the footprints of ``sources`` (the resolved ``source_lines``)."""
    from .regularizers.shape import SpectralShape

    prior = SpectralShape(pseudo_counts, float(sum(problem.sums)),
                          sources=sources if isinstance(sources, list) else ())
    if not problem.use_dask:
        return prior.prox(z)
    return solver.B.prox(prior, z, solver.B.combined(prior, z))[0]


def counts_of(result, input):  # noqa: A002 - the position of an input, as in the result's ``input`` coordinate
    """``(predicted, observed)`` counts (DataArrays, the input's own axes) of input number ``input`` (its position
    among the observations given to :func:`fuse`, from 0) in a fusion ``result``: ``model_spatial`` /
    ``counts_spatial`` or ``model_spectral`` / ``counts_spectral`` for the pair that set the grid, else
    ``model_obsI`` / ``counts_obsI``. Voxels the input's ``mask`` excluded (result variable ``mask_spatial`` /
    ``mask_spectral`` / ``mask_obsI``) are NaN in both, so sums (which skip NaN) compare the counts the fit used, as
    the attribute ``count_totals`` does. Needs the result attribute ``inputs`` (results of more than one input
    written since the mosaic release)."""
    if "inputs" not in result.attrs:
        raise ValueError("this result has no 'inputs' attribute (written by an older xfusion): use model_spatial / "
                         "model_spectral / model_obsI directly")
    roles = {int(r["input"]): r["role"] for r in json.loads(result.attrs["inputs"])}
    if input not in roles:
        raise ValueError(f"input must be one of {sorted(roles)} (positions of the observations given to fuse); "
                         f"got {input!r}")
    key = {SPATIAL: "spatial", SPECTRAL: "spectral"}.get(roles[input], f"obs{input}")
    model, counts = result[f"model_{key}"], result[f"counts_{key}"]
    if f"mask_{key}" in result:  # voxels the fit did not use are no data: NaN in both (sums skip them)
        mask = result[f"mask_{key}"]
        model, counts = model.where(mask), counts.where(mask)
    return model, counts


def _dask_coverage(solver, client):
    """Per-input ``sum_k (A_i^T w_i)[x, y, k]`` (internal units, (M, N) NumPy) on the Dask path, one adjoint per input
    on the blocks (as the EM sensitivity), all computed together: what :func:`_add_coverage` reads."""
    from .solvers.em import _ones

    B = solver.B
    parts = [B.adjoint(t.model, t.weight if t.weight is not None else B.map(_ones, t.data)).sum(
        axis=-1, dtype=np.float64) for t in solver.lik.terms]
    return [np.asarray(c, np.float64) for c in parallel.compute_many(parts, client)]


#: coverage below this fraction of an input's peak is round-off (PSF convolution by FFT), reported as 0; the same
#: floor as the free voxels' (:data:`xfusion.likelihood.FREE_FLOOR`)
COVERAGE_FLOOR = FREE_FLOOR


def _add_coverage(ds, grid, problem):
    """Per-input coverage map: ``coverage[input, x, y] = sum_k (A_i^T w_i)[x, y, k]``, the exposure-weighted
    sensitivity of input i (its forward model's adjoint applied to its valid-data mask ``w_i``, 1 where used),
    summed over the fused channels: the expected counts of input i per unit photon flux (ph cm-2 s-1) in every
    fused voxel of pixel (x, y), units ``s cm2`` (exposure x effective area x the fraction of the pixel's flux
    that reaches the input's data: PSF spill-over out of the field and footprint gaps reduce it, masked data do
    not count). Zero where the input does not see (outside a mosaic tile; values below ``COVERAGE_FLOOR`` of the
    input's peak are round-off of the FFT PSF adjoint and set to 0). Inputs in the order given to
    :func:`fuse`. Computed once: in memory from the support check, on Dask by one adjoint per input on the blocks
    (:func:`_dask_coverage`)."""
    pos = input_positions(grid)
    shape = (len(pos),) + tuple(problem.shape[:2])
    cov = np.zeros(shape, np.float32)
    for k, p in enumerate(pos):
        c = problem.scale * problem.coverage[k]  # internal units -> counts per (ph cm-2 s-1)
        # FFT round-off of the PSF adjoint (~1e-16 of the peak per tap, either sign) is not coverage
        cov[p] = np.where(c > COVERAGE_FLOOR * max(float(c.max()), 0.0), c, 0.0)
    names = [None] * len(pos)
    for p, n in zip(pos, problem.names):
        names[p] = str(n)
    coverage = xr.DataArray(cov, dims=("input", "x", "y"), attrs={
        "units": "s cm2", "long_name": "exposure-weighted sensitivity A^T 1 of each input, summed over the fused "
                                       "channels: expected counts per unit flux (ph cm-2 s-1) in each voxel of the "
                                       "pixel; 0 where the input does not see",
        "input_names": json.dumps(names)})  # an attribute: Zarr v3 has no stable string dtype for a coordinate
    seen = (cov > 0).sum(axis=0)
    ds = ds.assign(coverage=coverage, n_inputs_seeing=xr.DataArray(seen.astype(np.int16), dims=("x", "y"), attrs={
        "units": "1", "long_name": "number of inputs with nonzero coverage in the pixel (0: unconstrained)"}))
    ds = ds.assign_coords(input=("input", np.arange(len(pos)), {"long_name": "position of the input given to fuse"}))
    ds.attrs["coverage_fraction"] = json.dumps([float(np.mean(c > 0)) for c in cov])  # per input, as given
    return ds


def _mask_of(mask, name):
    """An input's ``mask`` as a result variable (a copy: the result never aliases the inputs)."""
    return mask.copy(deep=True).assign_attrs(
        units="1", long_name=f"valid-data mask of {name} (True where its counts were used; False: masked, the predicted "
                             "and observed counts there are not compared, counts_of gives NaN)")


def _assemble(grid, x_obs, y_obs, flux, mod_x, mod_y, cnt_x, cnt_y, history, basis, coeffs, scale, params, n_iter,
              converged, elapsed, loop_elapsed, n_run, backend, negative_fraction, extras=()):
    """Label a solution: coordinates, units, the instruments' predicted and observed counts (``extras``: ``(i,
    obs, model, counts)`` of observations beyond the first two, as ``model_obsI`` / ``counts_obsI`` with their
    own axes named ``x_obsI``, ``energy_obsI``... where they differ from the fused grid), history, attributes."""
    # the variables in order, then a few merges: each ``ds[name] = ...`` aligned and merged the whole result again
    # (session 64: a small fit's result took 31 ms less to build)
    coords = {c: grid[c] for c in ("x", "y", "energy", "energy_lo", "energy_hi")}
    flux_attrs = {"units": FLUX_UNITS, "long_name": "fused photon flux per voxel"}
    if "roles" in grid.attrs:  # how each input entered the model, by name: xfusion.predict(result.flux, obs) reads it
        flux_attrs["inputs"] = grid.attrs["roles"]
    dv = {"flux": xr.Variable(CUBE_DIMS, flux, flux_attrs)}
    mxs = {"energy": "energy_spatial", "energy_lo": "energy_spatial_lo", "energy_hi": "energy_spatial_hi"}
    mys = {"x": "x_spectral", "y": "y_spectral"}
    dv["model_spatial"] = _renamed(x_obs["counts"].copy(data=mod_x), mxs).assign_attrs(
        units="count", long_name=f"predicted counts of {grid.attrs['spatial_obs']}")
    dv["counts_spatial"] = _renamed(x_obs["counts"].copy(data=cnt_x), mxs).astype(np.float32)
    dv["model_spectral"] = _renamed(y_obs["counts"].copy(data=mod_y), mys).assign_attrs(
        units="count", long_name=f"predicted counts of {grid.attrs['spectral_obs']}")
    dv["counts_spectral"] = _renamed(y_obs["counts"].copy(data=cnt_y), mys).astype(np.float32)
    for key, o, names in (("spatial", x_obs, mxs), ("spectral", y_obs, mys)):
        if "mask" in o:
            dv[f"mask_{key}"] = _mask_of(_renamed(o["mask"], names), grid.attrs[f"{key}_obs"])
    attrs = {}
    for i, o, mod, cnt in extras:
        same = lambda a, b: a.shape == b.shape and np.allclose(a, b, rtol=1e-6, atol=0)  # noqa: E731
        if is_pixel_observation(o):  # a mosaic tile: its own detector pixels
            own = [d for d in ("pixel", "det_x", "det_y") if d in o["counts"].coords or d in o["counts"].dims]
        else:
            own = [d for d in ("x", "y") if not same(o[d].values, grid[d].values)]
        if not same(energy_edges(o), energy_edges(grid)):
            own += ["energy", "energy_lo", "energy_hi"]
        names = {d: f"{d}_obs{i}" for d in own}
        name = o.attrs.get("name", f"input {i}")
        # axes shared with the fused grid carry the grid's coordinates exactly (equal within 1e-6 of a channel or
        # pixel: never an outer join of nearly equal labels)
        shared = {c: grid[c] for c in ("x", "y", "energy", "energy_lo", "energy_hi")
                  if c in o["counts"].coords and c not in own}
        for var, data in ((f"model_obs{i}", mod), (f"counts_obs{i}", cnt)):
            da_ = _renamed(o["counts"].copy(data=data), names).assign_coords(shared)
            dv[var] = da_.assign_attrs(units="count", long_name=f"predicted counts of {name}") \
                if var.startswith("model") else da_.astype(np.float32)
        if "mask" in o:
            dv[f"mask_obs{i}"] = _mask_of(_renamed(o["mask"], names).assign_coords(shared), name)
    if extras:
        attrs["extra_observations"] = json.dumps([o.attrs.get("name", f"input {i}") for i, o, _, _ in extras])
    for k in ("explanation", "roles"):
        if k in grid.attrs:
            attrs["grid_" + k if k == "explanation" else "inputs"] = grid.attrs[k]
    for k, v in history.items():
        units, long_name = HISTORY_ATTRS.get(k, ("1", k))
        dv[k] = xr.Variable(("iteration",), np.asarray(v, dtype=np.float64), {"units": units, "long_name": long_name})
    # three merges, so that the coordinates keep the order of the variables that bring them: the grid's first
    ds = xr.Dataset(coords=coords).assign(dv)
    if history:
        ds = ds.assign_coords(iteration=np.arange(len(next(iter(history.values())))))
    dv = {}
    if basis is not None:
        dv["basis"] = xr.Variable(("component", "energy"), basis.astype(np.float32),
                                  {"long_name": "orthonormal spectral basis V"})
        dv["coefficients"] = xr.Variable(("x", "y", "component"), (coeffs / scale).astype(np.float32),
                                         {"units": FLUX_UNITS,
                                          "long_name": "subspace maps W (flux = W @ basis, clipped at 0)"})
    if "psf" in grid:
        dv["psf_spectral"] = grid["psf"].copy(deep=True)  # a copy: the result never aliases the inputs
    ds = ds.assign(dv).assign_attrs(attrs)
    ds.attrs.update({
        "xfusion_version": __version__,
        "backend": backend,
        "regularization": params["regularization"],
        "method": params["method"],
        "iterations": int(n_iter),
        "converged": int(converged),
        "tol": "none" if params["tol"] is None else float(params["tol"]),
        "max_iter": int(params["max_iter"]),
        "parameters": json.dumps(params, default=_json_default),
        "flux_units": FLUX_UNITS,
        "negative_fraction_clipped": negative_fraction,
        "elapsed_s": float(elapsed),
        "loop_elapsed_s": float(loop_elapsed),
        # of this call: a resumed run's loop time over the iterations it ran, not over all n_iter
        "seconds_per_iteration": float(loop_elapsed) / int(n_run) if int(n_run) > 0 else 0.0,
        "resumed_from_iteration": int(n_iter) - int(n_run),
        **{k: grid.attrs[k] for k in ("spatial_factor", "spectral_factor", "spatial_obs", "spectral_obs", "order",
                                       "pixel_size")},
        "spectral_model": grid.attrs.get("spectral_model", "rebin"),
    })
    return ds
