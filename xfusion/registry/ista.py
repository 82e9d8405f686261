"""``ista``: fixed-step proximal gradient, the paper's Algorithm 1 (:mod:`xfusion.solvers.ista`)."""
from __future__ import annotations

from dataclasses import dataclass

from . import options as o
from .base import FULL, Method, OptionSet, describe


@dataclass
class Options(OptionSet):
    step: object = o.STEP()


Options.__doc__ = describe(Options, "Options of method='ista'.")

#: fixed-step ISTA moves slowly: the early-stopping counts of the unregularized priors (fitted for EM) do not
#: apply, its cap is its own
SPEC = Method(name="ista", summary="fixed-step ISTA, the paper's Algorithm 1 (for reproduction)", options=Options,
              family=FULL, max_iter=2000, early_stopping=False)
