"""``anscombe2d1d``: 2D-1D starlet sparsity on the Anscombe variance-stabilized cube.

The prox of ``wavelet2d1d`` thresholds each band at k times ONE noise level (its MAD over the
whole cube), but Poisson noise grows like the square root of the intensity: bright voxels are
under-smoothed and faint ones over-smoothed. Here the proximal step works on
``a = 2 sqrt(z + 3/8)`` (Anscombe 1948; z in internal units, about the sharp-spatial counts per
fused voxel), whose noise is close to 1 everywhere, and maps back with the algebraic inverse
``z = (a / 2)^2 - 3/8`` (clipped at 0 by the method). The monitored penalty is the weighted l1
norm of the stabilized cube's coefficients. Options as ``wavelet2d1d`` without "auto" (thinning
does not tune this prior yet): k 1.0, J1 5, null_space "zero" (the rule measured best at low counts).
"""
from __future__ import annotations

from dataclasses import dataclass

from . import options as o
from .base import FULL, Regularization, describe
from . import wavelet2d1d
from .wavelet2d1d import _copies
from ..regularizers.stabilized import AnscombeStabilized
from ..regularizers.starlet import reach


@dataclass
class Options(wavelet2d1d.Options):
    """The options of ``wavelet2d1d`` with fixed (not "auto") defaults: thinning does not tune this prior yet."""
    n_scales_1d: object = o.option(5, "integer", "Number of 1D (spectral) starlet scales J1 of the 2D-1D transform "
                                   "(bands finer than both instruments see: ``null_space``).", o.positive_int())
    k: object = o.k(1.0, auto=False, what="the starlet coefficients of the stabilized cube 2 sqrt(z + 3/8)",
                      sigmoid=True)
    null_space: object = o.null_space("zero", auto=False)
    noise: object = o.option("mad", '"mad" or "poisson"', "Noise model of the thresholds of the stabilized cube "
                             "(as ``wavelet2d1d``'s; ``\"propagated\"`` needs the EM step's variance, which the "
                             "transform changes, so it is not offered here).", o.one_of("mad", "poisson"))
    stabilize: object = o.option("anscombe", '"anscombe"', "Always the Anscombe transform here (this prior is "
                                 "``wavelet2d1d`` with ``stabilize=\"anscombe\"`` and fixed options).",
                                 o.one_of("anscombe"))


Options.__doc__ = describe(Options, "Options of regularization='anscombe2d1d'.")


#: the prior object (the name of session 4, when this file was the registry's example of a prior added as one
#: file; the maths now lives in :mod:`xfusion.regularizers.stabilized`, shared with ``wavelet2d1d``'s ``stabilize``)
AnscombeWavelet2D1D = AnscombeStabilized


def build(params, level):
    return wavelet2d1d.build(params, level)  # stabilize is always "anscombe" here


SPEC = Regularization(
    name="anscombe2d1d",
    summary="2D-1D starlet sparsity on the Anscombe-stabilized cube 2 sqrt(z + 3/8): thresholds follow the "
            "Poisson noise of bright and faint voxels",
    options=Options, family=FULL, build=build,
    halo=lambda p: reach(p["n_scales_2d"]), copies=lambda p: _copies(p) + 1, dask=False)
