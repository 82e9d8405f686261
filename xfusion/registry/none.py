"""``none``: plain two-instrument Richardson-Lucy, regularized by early stopping."""
from __future__ import annotations

from dataclasses import dataclass

from . import options as o
from .base import FULL, OptionSet, Regularization, describe


@dataclass
class Options(OptionSet):
    shape_prior: object = o.SHAPE_PRIOR()
    shape_loop: object = o.SHAPE_LOOP()
    chunks: object = o.CHUNKS()
    layout: object = o.LAYOUT()


Options.__doc__ = describe(Options, "Options of regularization='none'.")

#: plain RL peaks at iteration 4-5 on gaussian_rebin (15.5 dB), then falls to 9.3 dB at 30; since thinning
#: (xfusion.tuning) the default is max_iter="auto" and 5 is only the fallback on Dask-backed data too large to tune in
#: memory (xfusion.tuning.IN_MEMORY_BYTES)
SPEC = Regularization(
    name="none", summary="no prior: two-instrument Richardson-Lucy with early stopping (max_iter 'auto' by thinning)",
    options=Options, family=FULL, build=lambda params, level: None, copies=lambda p: 6, max_iter="auto",
    early_stop=5)
