"""``fista``: accelerated proximal gradient in the spectral subspace (:mod:`xfusion.solvers.subspace`)."""
from __future__ import annotations

from dataclasses import dataclass

from .base import SUBSPACE, Method, OptionSet


@dataclass
class Options(OptionSet):
    """method='fista' has no options."""


SPEC = Method(name="fista", summary="FISTA with backtracking and adaptive restart on the subspace maps W",
              options=Options, family=SUBSPACE, max_iter=300)
