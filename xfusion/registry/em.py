"""``em``: EM (Richardson-Lucy) steps with the prior's proximal step (:mod:`xfusion.solvers.em`)."""
from __future__ import annotations

from dataclasses import dataclass

from .base import FULL, Method, OptionSet


@dataclass
class Options(OptionSet):
    """method='em' has no options."""


SPEC = Method(name="em", summary="EM (Richardson-Lucy) step then the prior's proximal step", options=Options,
              family=FULL, max_iter=50)
