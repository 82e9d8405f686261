"""``wavelet2d1d``: l1 sparsity of the 2D-1D starlet coefficients of the full cube (paper Alg. 2).

One of the two families of the default ``regularization="auto"`` (:func:`xfusion.tuning.select`), and what
"auto" becomes when a wavelet option is given explicitly or the data cannot be thinned."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from . import options as o
from .base import FULL, OptionSet, Regularization, describe
from ..regularizers.starlet import reach

#: photon statistics that separate the two automatic wavelet settings (mean counts per
#: sharp-spectral voxel; gaussian_rebin has 4.6, realistic_rebin 56, gaussian_rebin x10 46)
AUTO_COUNTS_SPLIT = 15.0
#: options passed to :class:`xfusion.regularizers.sparsity.Wavelet2D1D`
PRIOR_KEYS = ("n_scales_2d", "n_scales_1d", "k", "k_rule", "k_min", "k_max", "null_space", "per_band", "noise",
              "null_factor", "spectral_band_factor")


@dataclass
class Options(OptionSet):
    n_scales_2d: object = o.n_scales_2d(1)
    n_scales_1d: object = o.n_scales_1d("auto")
    k: object = o.k("auto", sigmoid=True)
    k_rule: object = o.K_RULE()
    k_min: object = o.K_MIN()
    k_max: object = o.K_MAX()
    null_space: object = o.null_space("auto")
    null_factor: object = o.NULL_FACTOR()
    spectral_band_factor: object = o.SPECTRAL_BAND_FACTOR()
    per_band: object = o.PER_BAND()
    noise: object = o.NOISE()
    stabilize: object = o.option("none", '"none" or "anscombe"',
                                 "``\"anscombe\"``: the prior works on the variance-stabilized cube 2 sqrt(z + 3/8) "
                                 "(:mod:`xfusion.regularizers.stabilized`: Poisson noise grows with the intensity, so "
                                 "one MAD per band under-smooths bright voxels and over-smooths faint ones); with "
                                 "``regularization=\"auto\"`` every wavelet candidate of the tuning is stabilized. "
                                 "In memory only; not with ``noise=\"propagated\"``.", o.one_of("none", "anscombe"))
    source_lines: object = o.SOURCE_LINES()
    source_line_sigma: object = o.SOURCE_LINE_SIGMA()
    source_iter: object = o.SOURCE_ITER()
    shape_prior: object = o.SHAPE_PRIOR()
    shape_loop: object = o.SHAPE_LOOP()
    chunks: object = o.CHUNKS()
    layout: object = o.LAYOUT()

    def cross_check(self):
        if self.stabilize == "anscombe" and self.noise == "propagated":
            raise ValueError('stabilize="anscombe" cannot use noise="propagated" (it needs the EM step\'s variance, '
                             'which the transform changes); use noise="mad" or "poisson"')
        default_k = {f.name: f.default for f in dataclasses.fields(self)}["k"]
        if self.k_rule == "sigmoid" and self.k is not None and self.k != default_k:
            raise ValueError(f"option k={self.k!r} is unused with k_rule='sigmoid' (the threshold goes from "
                             f"k_min={self.k_min!r} to k_max={self.k_max!r}); drop k, or use k_rule='constant'")
        if self.k_rule != "sigmoid" and self.k is None:
            raise ValueError("option k=None is only for k_rule='sigmoid'; give k (noise sigmas) or 'auto'")
        if isinstance(self.source_lines, (list, tuple)) and self.source_lines and (
                self.stabilize == "anscombe" or self.noise == "propagated"):
            raise ValueError("source_lines (the line step at line-free sources) works on the plain cube with "
                             "noise='mad' or 'poisson'; drop source_lines (or set it to 'none') with "
                             "stabilize='anscombe' or noise='propagated'")
        if self.k_rule == "sigmoid" and self.k_min > self.k_max:  # ignored by the constant rule
            raise ValueError(f"option k_min={self.k_min!r} exceeds k_max={self.k_max!r}; the sigmoid rule "
                             "needs k_min <= k_max")


Options.__doc__ = describe(Options, "Options of regularization='wavelet2d1d'.")


def auto_wavelet_params(params, yd, client, mask=None):
    """Resolve ``k="auto"`` / ``n_scales_1d="auto"`` from the photon statistics of Y (its counts per used voxel:
    ``mask`` > 0, all if None), in place.

    Since thinning this rule is only the fallback on Dask-backed data too large to tune in memory
    (``xfusion.tuning.IN_MEMORY_BYTES``; ``xfusion.tuning.auto_settings`` resolves "auto" by thinning otherwise;
    ``null_space="auto"`` becomes "zero" here). It was fitted on three toys
    and fails on unseen scenes (issue 13: 5.6 dB on an SNR shell where plain RL reaches 11 dB).

    Measured on the toys (NMSE, dB): at Table 1 counts (4.6 counts per Y voxel) k=1 with
    5 energy scales in the zeroed null-space bands gives 16.1 (k=0.5 with 3 scales: 15.4);
    at ~50 counts per voxel k=0.5 with 2 scales gives 21.7 on gaussian_rebin x10 (3 scales:
    20.5; k=1, 5 scales: 18.2) and 19.1 on realistic_rebin (3 scales: 17.1; k=1, 5 scales:
    14.9). Brighter data carry information at finer spectral scales, so fewer bands are
    treated as invisible and the threshold is lower.
    """
    from .. import parallel

    if "auto" not in (params["k"], params["n_scales_1d"]):
        return
    if mask is None:
        sums = [yd.sum(dtype=np.float64), yd.size]
    else:
        used = mask > 0  # (np.where dispatches to Dask for Dask arrays: nothing read here)
        sums = [np.where(used, yd, 0).sum(dtype=np.float64), used.sum()]
    if any(parallel.is_dask(v) for v in sums):
        sums = parallel.compute_many(sums, client)
    per_voxel = float(sums[0]) / max(float(sums[1]), 1.0)
    bright = per_voxel >= AUTO_COUNTS_SPLIT
    params["auto_counts_per_voxel"] = per_voxel
    if params["k"] == "auto":
        params["k"] = 0.5 if bright else 1.0
    if params["n_scales_1d"] == "auto":
        params["n_scales_1d"] = 2 if bright else 5


def line_options(params):
    """The :class:`~xfusion.regularizers.sparsity.Wavelet2D1D` arguments of ``source_lines`` once resolved (a list of
    peaks and a number of channels, :func:`xfusion.fuse` resolves "auto"); none while "auto", "none" or empty."""
    peaks, sigma = params.get("source_lines"), params.get("source_line_sigma")
    if not isinstance(peaks, (list, tuple)) or not peaks or sigma in (None, "auto"):
        return {}
    return {"line_peaks": [tuple(p) for p in peaks], "line_sigma": float(sigma)}


def build(params, level):
    from ..regularizers.sparsity import Wavelet2D1D

    reg = Wavelet2D1D(**{k: params[k] for k in PRIOR_KEYS}, **line_options(params))
    if params.get("stabilize", "none") == "anscombe":
        from ..regularizers.stabilized import AnscombeStabilized

        return AnscombeStabilized(reg)
    return reg


def _copies(params):
    n1 = 5 if params["n_scales_1d"] == "auto" else params["n_scales_1d"]
    return (params["n_scales_2d"] + 1) * (n1 + 2) + 4


SPEC = Regularization(
    name="wavelet2d1d",
    summary="l1 norm of the 2D-1D starlet coefficients (2D on each channel, then 1D along each spectrum), "
            "soft-thresholded at k noise sigmas",
    options=Options, family=FULL, build=build,
    halo=lambda p: reach(p["n_scales_2d"]), copies=_copies, prepare=auto_wavelet_params)
