"""``lowrank_sobolev``: low rank plus a spatial smoothness (Sobolev) penalty on the maps W (paper eq. 13)."""
from __future__ import annotations

from dataclasses import dataclass

from . import lowrank
from . import options as o
from .base import SUBSPACE, Regularization, describe


@dataclass
class Options(lowrank.Options):
    """The low-rank options plus the Sobolev weight ``mu``."""
    mu: object = o.MU()


Options.__doc__ = describe(Options, "Options of regularization='lowrank_sobolev'.")


def build(params, level):
    from ..regularizers.sobolev import Sobolev

    return Sobolev(params["mu"], level), None


SPEC = Regularization(name="lowrank_sobolev", summary="low rank plus a spatial smoothness penalty (mu / level) "
                                                      "||D W||^2 on the maps W",
                      options=Options, family=SUBSPACE, build=build, copies=lambda p: 10)
