"""``lowrank_wavelet2d``: low rank plus a 2D starlet l1 penalty on the maps W."""
from __future__ import annotations

from dataclasses import dataclass

from . import lowrank
from . import options as o
from .base import SUBSPACE, Regularization, describe


@dataclass
class Options(lowrank.Options):
    """The low-rank options plus the 2D starlet penalty on the maps W."""
    n_scales_2d: object = o.n_scales_2d(2)
    k: object = o.k(1.0, what="the 2D starlet coefficients of each map of W")


Options.__doc__ = describe(Options, "Options of regularization='lowrank_wavelet2d'.")


def build(params, level):
    from ..regularizers.sparsity import Wavelet2D

    return None, Wavelet2D(params["n_scales_2d"], params["k"])


SPEC = Regularization(name="lowrank_wavelet2d", summary="low rank plus a 2D starlet l1 penalty on the maps W",
                      options=Options, family=SUBSPACE, build=build, copies=lambda p: 10)
