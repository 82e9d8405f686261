"""``lowrank_sobolev``: low rank plus a spatial smoothness (Sobolev) penalty on the maps W (paper eq. 13)."""
from __future__ import annotations

from dataclasses import dataclass

from . import options as o
from .base import SUBSPACE, OptionSet, Regularization, describe


@dataclass
class Options(OptionSet):
    rank: object = o.RANK()
    explained: object = o.EXPLAINED()
    mu: object = o.MU()
    precondition: object = o.PRECONDITION()
    chunks: object = o.CHUNKS()


Options.__doc__ = describe(Options, "Options of regularization='lowrank_sobolev'.")


def build(params, level):
    from ..regularizers.sobolev import Sobolev

    return Sobolev(params["mu"], level), None


SPEC = Regularization(name="lowrank_sobolev", summary="low rank plus a spatial smoothness penalty (mu / level) "
                                                      "||D W||^2 on the maps W",
                      options=Options, family=SUBSPACE, build=build, copies=lambda p: 10)
