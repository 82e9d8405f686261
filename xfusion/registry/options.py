"""Option fields shared by several regularizations (one definition: default, unit, documentation, check)."""
from __future__ import annotations

from .base import is_int, is_real, option

#: Dask layout of the PSF operators on the full-cube path (xfusion.parallel_em): halos on the pixel blocks, the
#: only one since session 4 (the measurements below chose it over the removed "rechunk" slabs).
#: Measured per wavelet2d1d iteration (benchmarks/layouts.py --full, 64-pixel blocks, 2 cores), halo vs
#: rechunk: 256x256x4096 threads 17.1 vs 16.5 s and 19.0 vs 15.2 s (two runs), LocalCluster 1 worker
#: 42.5 vs 43.7 s, 2 workers 28.9 vs 31.4 s; 256x256x2048 threads 8.1 vs 8.4 s, 2 workers 14.7 vs 16.4 s.
#: Halos win on the cluster and tie on threads, where slabs take 40-50% more peak memory.
DEFAULT_LAYOUT = "halo"


def nonneg_number(auto=False, none=False):
    def check(name, v):
        if not (none and v is None) and not (auto and v == "auto") and not (is_real(v) and v >= 0):
            raise ValueError(f"option {name} must be a number >= 0 (finite, not a bool); got {v!r}")
    return check


def positive_number(name, v):
    if not (is_real(v) and v > 0):
        raise ValueError(f"option {name} must be a number > 0 (finite, not a bool); got {v!r}")


def positive_int(auto=False):
    def check(name, v):
        if not (auto and v == "auto") and not (is_int(v) and v >= 1):
            raise ValueError(f"option {name} must be an integer >= 1 (not a bool or float); got {v!r}")
    return check


def boolean(name, v):
    if not isinstance(v, bool):
        import numpy as np

        if not isinstance(v, np.bool_):
            raise ValueError(f"option {name} must be True or False; got {v!r}")


def one_of(*choices):
    def check(name, v):
        if v not in choices:
            raise ValueError(f"option {name} must be one of {', '.join(map(repr, choices))}; got {v!r}")
    return check


def _explained(name, v):
    if v is not None and not (is_real(v) and 0 < v <= 1):
        raise ValueError(f"option explained must be a fraction of the spectral variance in (0, 1] (e.g. 0.999) or "
                         f"None; got {v!r}")


def _chunks(name, v):
    if v is not None and not (isinstance(v, (tuple, list)) and len(v) == 2 and all(is_int(c) and c >= 1 for c in v)):
        raise ValueError(f"option chunks must be two positive integers (pixel block along x and y); got {v!r}")


def _layout(name, v):
    if v == "rechunk":
        raise ValueError("option layout='rechunk' was removed in session 4 (the full-field channel slabs): the PSF "
                         "operators run on pixel blocks with their halos, at any chunk size; use layout='halo' (the "
                         "default) or drop the option")
    if v != "halo":
        raise ValueError(f"option layout must be 'halo' (Dask path: PSF operators on pixel blocks with halos); "
                         f"got {v!r}")


def n_scales_2d(default):
    return option(default, "integer", "Number of 2D (spatial) starlet scales J2. Scales finer than J2 are "
                  "thresholded; the coarsest spatial band is kept. 1 resolves the finest spatial detail with the "
                  "least smoothing.", positive_int())


def n_scales_1d(default):
    return option(default, "integer or \"auto\"", "Number of 1D (spectral) starlet scales J1 of the 2D-1D "
                  "transform. Bands with 2D scale < ``n_scales_2d`` and 1D scale < ``n_scales_1d`` are invisible "
                  "to both instruments (see ``null_space``). ``\"auto\"``: chosen from the data without the "
                  "truth.", positive_int(auto=True))


def k(default, auto=True, what="the starlet coefficients", sigmoid=False):
    """``sigmoid``: the prior also has ``k_rule``; with ``k_rule="sigmoid"`` k is unused (None)."""
    return option(default, "noise sigmas (dimensionless)" + (", or \"auto\"" if auto else "") + (
                  ", or None with ``k_rule=\"sigmoid\"``" if sigmoid else ""),
                  f"Soft threshold ``rho = k * sigma`` of {what}, ``sigma`` the MAD noise estimate of each band "
                  "(``per_band``). Larger k: smoother cube, fewer faint features." + (
                      " ``\"auto\"``: truth-free selection by Poisson thinning (the counts are split binomially "
                      "into two independent halves; the value whose fit on one half best predicts the other is "
                      "kept)." if auto else "") + (
                      " Unused with ``k_rule=\"sigmoid\"`` (the threshold goes from ``k_min`` to ``k_max``): then "
                      "it is not tuned and is recorded as None, and a number other than the default is refused."
                      if sigmoid else ""), nonneg_number(auto=auto, none=sigmoid))


K_RULE = lambda: option("constant", "\"constant\" or \"sigmoid\"", "``\"constant\"``: the same k everywhere. "
                "``\"sigmoid\"``: paper eq. 21, k goes from ``k_min`` on faint voxels to ``k_max`` on bright ones "
                "with the coarse-scale brightness.", one_of("constant", "sigmoid"))
K_MIN = lambda: option(0.5, "noise sigmas", "Smallest threshold of ``k_rule=\"sigmoid\"`` (faint voxels); ignored "
               "otherwise.", nonneg_number())
K_MAX = lambda: option(3.0, "noise sigmas", "Largest threshold of ``k_rule=\"sigmoid\"`` (bright voxels); ignored "
               "otherwise.", nonneg_number())


def null_space(default, auto=True):
    choices = ("zero", "threshold", "auto") if auto else ("zero", "threshold")
    return option(default, " or ".join(f"\"{c}\"" for c in choices),
                  "What to do with the bands that neither instrument sees (fine in space and in energy): "
                  "``\"zero\"`` removes them (an infinite l1 weight; prevents their slow growth over iterations), "
                  "``\"threshold\"`` treats them like the other bands (the paper)" + (
                      "; ``\"auto\"`` chooses, together with ``n_scales_1d``, by Poisson thinning." if auto else "."),
                  one_of(*choices))


def shape_auto(v):
    """``(auto, floor)`` of a ``shape_prior`` value: ``"auto"`` -> ``(True, None)``; ``["auto", N]`` -> ``(True, N)``
    (thinning picks the pseudo-counts, then level 0 gets at least ``N``); ``["auto", None]`` and its spelling for
    TOML, which has no null, ``["auto", "none"]`` -> ``(True, None)``; anything else ``(False, None)``."""
    if isinstance(v, str):
        return v == "auto", None
    if isinstance(v, (list, tuple)) and len(v) == 2 and isinstance(v[0], str) and v[0] == "auto":
        return True, None if isinstance(v[1], str) and v[1].lower() == "none" else v[1]
    return False, None


def _shape_prior(name, v):
    from ..regularizers.shape import levels_of  # the prior's own check of a number, a pair or a triple

    auto, floor = shape_auto(v)
    try:
        if floor is not None:
            levels_of(floor)
        elif v is not None and not auto:
            levels_of(v, sources=True)
    except ValueError:
        raise ValueError(f"option shape_prior must be None (off), a number of pseudo-counts > 0 (photons, e.g. "
                         f"1e4), a pair [n0, n0_pixel] of them, a triple [n0, n0_pixel, n0_sources] (wavelet2d1d with "
                         f"source_lines), \"auto\" (chosen by Poisson thinning: the default "
                         f"of regularization=\"auto\") or [\"auto\", N] (chosen by thinning, level 0 at >= N, "
                         f"e.g. 3e5; [\"auto\", None], in TOML [\"auto\", \"none\"]: no floor, the default's is 1e5); "
                         f"got {v!r}") from None


SHAPE_PRIOR = lambda: option(None, "pseudo-counts (photons), a pair or triple of them, \"auto\", [\"auto\", N] or None",
                             "Spectral-shape prior of the delivered cube: each pixel's spectrum is shrunk toward its "
                             "starlet neighbourhood's shape with weight n_p / (n_p + shape_prior), n_p the pixel's "
                             "photons, keeping every pixel's total (:mod:`xfusion.regularizers.shape`). None: off. "
                             "A pair ``[n0, n0_pixel]`` gives level 0 (a pixel against its nearest neighbours) its "
                             "own pseudo-counts. ``regularization=\"auto\"`` chooses it by Poisson thinning "
                             "(``\"auto\"``, its default there: n0 among 1e3-3e7, then level 0, "
                             ":func:`xfusion.tuning.tune_shape`), then gives level 0 at least "
                             ":data:`xfusion.tuning.PIXEL_FLOOR` = 1e5 pseudo-counts (session 44, for the velocity "
                             "maps) except in the 3x3 footprints of the line-free compact sources that "
                             "``source_lines`` found, which keep thinning's own level 0 (session 52): the delivered "
                             "value is then a triple ``[n0, n0_pixel, n0_sources]``; ``[\"auto\", N]`` does the same "
                             "with the floor N, ``[\"auto\", None]`` "
                             "(in a TOML file ``[\"auto\", \"none\"]``) without one. With a named "
                             "regularization (or wavelet options given) ``\"auto\"`` "
                             "is chosen the same way for that fit, with no floor unless N is given (session 40; "
                             "e.g. ``regularization=\"none\", "
                             "max_iter=\"auto\", shape_prior=\"auto\"``: plain RL for line maps).", _shape_prior)


def _shape_loop(name, v):
    from ..regularizers.shape import levels_of

    if v is None:
        return
    try:
        levels_of(v)
    except ValueError:
        raise ValueError(f"option shape_loop must be None (off), a number of pseudo-counts > 0 (photons, e.g. 3e3) or "
                         f"a pair [n0, n0_pixel] of them; got {v!r}") from None


SHAPE_LOOP = lambda: option(None, "pseudo-counts (photons), a pair of them, or None",
                            "The spectral-shape prior (as ``shape_prior``) applied to the iterate before every EM "
                            "step and to the last one, not only to the delivered cube (session 43, "
                            ":mod:`xfusion.solvers.em`). None (the default): off. Measured on the suite's line-free "
                            "(synchrotron) skies at 0.3 times the ``shape_prior`` thinning chose: +0.8 dB mean NMSE "
                            "on 19 held-out full-size skies, but it broadens lines and can move the total flux by ~1 "
                            "% at low counts (``benchmarks/QUALITY_HISTORY.md``); not part of any default. "
                            "Method ``em`` only.", _shape_loop)


NOISE = lambda: option("mad", '"mad", "poisson" or "propagated"',
                       "Noise model of the thresholds: ``\"mad\"`` one robust (MAD) sigma per band of the EM step; "
                       "``\"poisson\"`` that MAD scaled by the square root of the local intensity; "
                       "``\"propagated\"`` the Poisson variance of the EM step propagated to each band, a map per "
                       "band with a per-band correlation factor from a noise probe (:mod:`xfusion.regularizers."
                       "sparsity`; EM only; helps with several sharp-spatial cameras, mixed on single pairs).",
                       one_of("mad", "poisson", "propagated"))
NULL_FACTOR = lambda: option(1.0, "number > 0", "With ``null_space=\"threshold\"``: the thresholds of the bands "
                             "neither instrument sees (fine in space and in energy) are ``null_factor`` times those of "
                             "the other bands (1: every band alike, the paper; large: close to ``\"zero\"``, but a "
                             "coefficient far above the noise is kept). Ignored with ``null_space=\"zero\"``.",
                             positive_number)


SPECTRAL_BAND_FACTOR = lambda: option(1.0, "number > 0", "The thresholds of the bands coarsest in space and fine in "
                                 "energy (2D scale ``n_scales_2d``, 1D scale < ``n_scales_1d``: line structure on the "
                                 "scales the sharp-spectral instrument resolves) are ``spectral_band_factor`` times those "
                                 "of the other bands (1: every band alike, the paper). Given with "
                                 "``regularization=\"auto\"``, every wavelet candidate of the tuning uses it (RL still "
                                 "competes); not given, \"auto\" uses ``xfusion.tuning.SPECTRAL_BAND_FACTOR`` (8) where "
                                 "the sharp-spectral counts read as a continuum and 1 elsewhere (session 60, recorded "
                                 "in ``parameters[\"auto_tuning\"][\"spectral_band\"]``).", positive_number)


def _source_lines(name, v):
    ok = v in ("auto", "none", None) or (isinstance(v, (list, tuple)) and all(
        isinstance(p, (list, tuple)) and len(p) == 2 and all(is_int(c) and c >= 0 for c in p) for p in v))
    if not ok:
        raise ValueError(f"option {name} must be \"auto\" (find the compact sources with line-free spectra in the "
                         f"sharp-spatial counts), \"none\" (off) or a list of [i, j] fused-pixel indices of line-free "
                         f"sources' peaks, e.g. [[12, 30], [40, 7]]; got {v!r}")


def _line_sigma(name, v):
    if v is not None and v != "auto" and not (is_real(v) and v > 0):
        raise ValueError(f"option {name} must be \"auto\" (the sharp-spatial instrument's line spread) or a number of "
                         f"fused channels > 0 (None: unused, no source); got {v!r}")


SOURCE_LINES = lambda: option("auto", '"auto", "none" or [[i, j], ...] fused pixels',
                              "Compact sources whose own spectra are line-free (power laws): in the 3x3 pixels around "
                              "each peak the prior thresholds the line structure of the fine spatial scale like the "
                              "diffuse gas's, so that the gas's line flux does not move onto the sources "
                              "(:mod:`xfusion.sources`; final fit only, not the tuning's candidates). ``\"auto\"``: "
                              "found in the sharp-spatial counts (compact peaks whose excess over the local gas a "
                              "folded power law fits); the result's parameters record the peaks used. Not with "
                              "``stabilize=\"anscombe\"`` or ``noise=\"propagated\"`` (\"auto\" is then off).",
                              _source_lines)
SOURCE_LINE_SIGMA = lambda: option("auto", 'fused channels, "auto" or None',
                                   "Gaussian standard deviation along energy that separates line structure from "
                                   "continuum in ``source_lines``' step; ``\"auto\"``: the sharp-spatial "
                                   "instrument's spread of a narrow line (:func:`xfusion.sources.line_sigma`) over "
                                   "the fused channel width (None once resolved without a source).", _line_sigma)


def _source_iter(name, v):
    ok = v in ("auto", "none", None) or (
        isinstance(v, (list, tuple)) and len(v) == 2 and is_int(v[0]) and v[0] >= 0 and isinstance(v[1], (list, tuple))
        and all(isinstance(p, (list, tuple)) and len(p) == 2 and all(is_int(c) and c >= 0 for c in p) for p in v[1]))
    if not ok:
        raise ValueError(f"option {name} must be \"auto\" (thinning's zeroed 2D-1D fit: its compact sources run on to "
                         f"50 iterations), \"none\" (off) or [n, [[i, j], ...]]: an iteration count and the fused-pixel "
                         f"peaks whose 3x3 footprints run on to it, e.g. [50, [[12, 30]]]; got {v!r}")


SOURCE_ITER = lambda: option("auto", '"auto", "none" or [iterations, [[i, j], ...]]',
                             "Compact sources deconvolved for longer than the diffuse emission (session 53): the "
                             "delivered cube is the iterate at ``max_iter`` except in the 3x3 fused pixels around each "
                             "peak, which take the same run continued to ``iterations``, while the rest of each "
                             "source's 5x5 gives up the flux they gained (the total is kept; EM; the prior's step "
                             "unchanged; not seen by ``callback``). Why: an early stop keeps the gas's line maps "
                             "smooth, while a bright compact source's peak needs more iterations to sharpen. "
                             "``\"auto\"`` (``regularization=\"auto\"``, :func:`xfusion.tuning.run_on`): where "
                             "thinning chose the zeroed 2D-1D prior and stopped it before "
                             ":data:`xfusion.tuning.ZERO_MAX_ITER`, ``[ZERO_MAX_ITER, peaks]``, the peaks of every "
                             "compact source in the sharp-spatial counts (:func:`xfusion.sources.compact_peaks`); "
                             "where it chose the thresholded prior with count N and those sources hold at least "
                             ":data:`xfusion.tuning.RUN_ON_SHARE` of the counts (:func:`xfusion.sources.excess_share`), "
                             "``[N, peaks]`` with the field stopped at ``round(0.75 N)``; off elsewhere. The result's "
                             "parameters record what was used.", _source_iter)


PER_BAND = lambda: option(True, "boolean", "True: a MAD noise estimate per 2D-1D band. False: the paper's rule, the "
                          "MAD of "
                  "the finest band for every band.", boolean)
RANK = lambda: option(10, "integer (number of components) or \"auto\"",
                      "Dimension r of the spectral subspace: ``Z = W V`` "
              "with V the mean and the leading principal components of the sharp-spectral spectra. Must not exceed "
              "the number of channels or of sharp-spectral pixels. ``\"auto\"``: chosen by Poisson thinning among a "
              "few ranks.", positive_int(auto=True))
EXPLAINED = lambda: option(None, "fraction in (0, 1], or None", "If set, choose the rank as the smallest number of "
                   "components explaining this fraction of the spectral variance (at most 64) instead of "
                   "``rank`` (which is then unused; the result's parameters record the chosen count as ``rank``).",
                   _explained)
PRECONDITION = lambda: option(True, "boolean", "Scale the FISTA steps per pixel by the sharp-spatial brightness (a "
                      "diagonal preconditioner): faster convergence on fields with a large dynamic range.", boolean)
MU = lambda: option(0.01, "dimensionless, or \"auto\"", "Strength of the Sobolev smoothness penalty ``(mu / level) "
            "||D W||^2`` on the subspace maps W (``level`` the mean flux per voxel, which makes mu independent of "
            "exposure and flux units; the paper advises 0.01-0.1). ``\"auto\"``: chosen by Poisson thinning.",
            nonneg_number(auto=True))
CHUNKS = lambda: option(None, "(bx, by) fused pixels, or None",
                        "Dask path only: pixel block of the fused grid (each block "
                "holds the whole energy axis). None: chosen from the cube shape, the PSF and starlet halos and the "
                "memory per worker thread.", _chunks)
LAYOUT = lambda: option(DEFAULT_LAYOUT, "\"halo\"", "Dask path, full-cube regularizations: run the PSF "
                "operators on the pixel blocks with halos of the PSF radius (``\"halo\"``, the only layout: the "
                "full-field channel slabs of ``\"rechunk\"`` were removed in session 4 and are refused).", _layout)


def _step(name, v):
    if v is not None and not (is_real(v) and v > 0):
        raise ValueError(f"option step must be > 0 (a finite number); got {v!r}")


STEP = lambda: option(None, "internal units (None = automatic)", "Fixed step of ``method=\"ista\"`` (the paper's "
              "algorithm). None: 1/50 of the smallest EM step at the start; a step that diverges stops the run "
              "with a message asking for a smaller one.", _step)
