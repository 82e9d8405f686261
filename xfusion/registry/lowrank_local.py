"""``lowrank_local``: the full cube kept locally low rank (a spectral subspace per patch of the field), with early
stopping. The maths is in :mod:`xfusion.regularizers.local_rank`."""
from __future__ import annotations

from dataclasses import dataclass

from . import options as o
from .base import FULL, OptionSet, Regularization, describe


@dataclass
class Options(OptionSet):
    rank: object = o.option("auto", "integer (spectral vectors per patch), or \"auto\"",
                            "Rank r kept in each patch: every pixel spectrum of a patch is a combination of r "
                            "spectral vectors of that patch (uncentred, so the mean shape is one of them). "
                            "``\"auto\"``: chosen by Poisson thinning among 2, 3 and 5 "
                            "(:data:`xfusion.tuning.LOCAL_RANK_LADDER`).", o.positive_int(auto=True))
    patch: object = o.option(6, "integer (fused pixels)",
                             "Side of the square patches (overlapping by half a patch); each voxel is the mean of its "
                             "patches' rank-r parts. Not tuned: 6 was the first value tried (session 23; 15 did "
                             "better on three full-size scenes).", o.positive_int())
    shape_prior: object = o.SHAPE_PRIOR()


Options.__doc__ = describe(Options, "Options of regularization='lowrank_local'.")


def build(params, level):
    from ..regularizers.local_rank import LocalLowRank

    return LocalLowRank(rank=params["rank"], patch=params["patch"])


#: regularized by its rank and by early stopping like plain RL: max_iter "auto" (by thinning with the rank,
#: :func:`xfusion.tuning._tune_local_rank`); ``early_stop`` is only the count where thinning cannot run
SPEC = Regularization(
    name="lowrank_local",
    summary="each patch of the field keeps its own rank-r spectral subspace (EM; rank and max_iter 'auto' by "
            "thinning)",
    options=Options, family=FULL, build=build, copies=lambda p: 8, max_iter="auto", early_stop=20, dask=False)
