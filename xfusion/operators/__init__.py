"""Linear operators of the forward model, each with forward and adjoint.

Every operator is an immutable object holding precomputed arrays (kernel transforms,
matrices); ``forward`` and ``adjoint`` are pure functions of their input array: they never
write to it, keep no state between calls and return the input's floating dtype. Cubes are
NumPy arrays with axes (x, y, energy), energy last and contiguous (measured: the spectral
operators are matrix products over the last axis and the spatial ones act on
``reshape(M*N, L)``, so neither needs a transpose).
"""
from .area import Scale
from .model import Chain, build_model, predict
from .psf import Convolve2D, SpatialMatrix
from .rebin import Rebin
from .response import Convolve1D, ResponseMatrix

__all__ = ["Scale", "Convolve2D", "SpatialMatrix", "Rebin", "Convolve1D", "ResponseMatrix", "Chain",
           "build_model", "predict"]
