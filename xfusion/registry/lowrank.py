"""``lowrank``: Z = W V in the spectral subspace of the sharp-spectral data, regularized by early stopping."""
from __future__ import annotations

from dataclasses import dataclass

from . import options as o
from .base import SUBSPACE, OptionSet, Regularization, describe


@dataclass
class Options(OptionSet):
    rank: object = o.RANK()
    explained: object = o.EXPLAINED()
    precondition: object = o.PRECONDITION()
    chunks: object = o.CHUNKS()


Options.__doc__ = describe(Options, "Options of regularization='lowrank'.")

#: plain low rank peaks at ~40 iterations on gaussian_rebin (17.1 dB) and falls to 6.8 dB after 300 on small
SPEC = Regularization(
    name="lowrank", summary="Z = W V, V the mean and leading principal components of the sharp-spectral spectra "
                            "(regularized by early stopping)",
    options=Options, family=SUBSPACE, build=lambda params, level: (None, None), copies=lambda p: 10,
    max_iter=30, early_stop=30)
