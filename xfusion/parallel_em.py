"""Dask execution of the full-cube EM (+ prox) solver: :class:`~xfusion.solvers.em.EMProx` on a
:class:`~xfusion.backends.blockwise.DaskBackend`, from chunked data.

No maths here: the models are the in-memory operators run on pixel blocks with their halos
(:mod:`xfusion.operators.blocks`), the data terms the likelihood's block kernels, the prox the
regularizer's ``block_statistics``/``combine``/``block_apply``. This module only chunks the data
so that the blocks of both instruments cover the same sky: the fused cube in ``(b_x, b_y, L)``
blocks, X counts ``(b_x, b_y, l)``, Y counts ``(b_x / v, b_y / v, L)``.

One rule for what runs on Dask: the EM method with any regularizer that has block forms
(``Wavelet2D1D`` without ``conserve_flux``, or none), operators that have block forms (not a
whole-field matrix such as a detector footprint), no mask and no known background; fixed-step
ISTA is in memory only. Anything else raises ``NotImplementedError`` saying so.
"""
from __future__ import annotations

import dask.array as da
import numpy as np

from .backends.blockwise import DaskBackend
from .likelihood import PoissonLikelihood
from .operators.blocks import has_block_form
from .parallel import DaskPoissonTerm
from .solvers.em import EMProx

#: PSF layouts: halos on the pixel blocks (the only one; the full-field channel slabs of "rechunk" are gone)
LAYOUTS = ("halo",)


class DaskEMProx(EMProx):
    """EM + prox on Dask arrays.

    ``x_data`` (M, N, l), ``y_data`` (M/v, N/v, L): Dask (or NumPy) counts; the X pixel chunks set the
    blocks (multiples of v; the energy axis is made whole). ``mx``, ``my``: the instrument models
    (:class:`~xfusion.operators.model.InstrumentModel`, internal units); ``factor``: v;
    ``regularizer``: ``Wavelet2D1D`` or None; ``client``: optional ``distributed.Client``;
    ``free``: as :class:`EMProx` (e.g. per channel, (L,)). ``psf_kernel`` is ignored (the PSF is
    ``my``'s) and kept for the callers' signature. Data keep their float dtype (float32 or float64).
    """

    def __init__(self, x_data, y_data, mx, my, psf_kernel=None, factor=1, regularizer=None, client=None,
                 layout="halo", free=None):
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}; got {layout!r} (the 'rechunk' layout was removed: "
                             "operators run on pixel blocks with their halos, any chunk size)")
        for name, m in (("X", mx), ("Y", my)):
            if not has_block_form(m.spatial if m.spatial is not None else []) or \
                    (m.spectral is not None and not has_block_form(m.spectral)):
                raise NotImplementedError(f"the {name} model has an operator without a block form (a whole-field "
                                          "matrix): run in memory")
            if getattr(m, "background", None) is not None:
                raise NotImplementedError("a known background is not supported on the Dask path: run in memory")
        if regularizer is not None and (getattr(regularizer, "conserve_flux", False)
                                        or not hasattr(regularizer, "block_apply")):
            raise NotImplementedError(f"{type(regularizer).__name__} has no block form here: run in memory")
        v = int(factor)
        xd, yd = da.asarray(x_data), da.asarray(y_data)
        dt = xd.dtype if xd.dtype in (np.float32, np.float64) else np.dtype(np.float32)
        xd = xd.rechunk({2: -1})
        M, N, _ = xd.shape
        L = yd.shape[2]
        if yd.shape[:2] != (M // v, N // v) or M % v or N % v:
            raise ValueError(f"Y counts {yd.shape} do not match X counts {xd.shape} with spatial factor {v}")
        self.chunks = (xd.chunks[0], xd.chunks[1], (L,))
        if any(c % v for c in self.chunks[0] + self.chunks[1]):
            raise ValueError(f"X pixel chunks {self.chunks[:2]} must be multiples of the spatial factor {v}")
        yd = yd.rechunk((tuple(c // v for c in self.chunks[0]), tuple(c // v for c in self.chunks[1]), -1))
        self.shape, self.layout = (M, N, L), layout
        backend = DaskBackend(self.chunks, client)
        terms = [DaskPoissonTerm(mx, xd, dt, client, backend), DaskPoissonTerm(my, yd, dt, client, backend)]
        self.xd, self.yd = terms[0].data, terms[1].data
        super().__init__(PoissonLikelihood(terms), regularizer, free, backend)

    def model_x(self, z):
        """Lazy predicted X counts (M, N, l), chunks (b_x, b_y, l)."""
        return self.B.forward(self.lik.terms[0].model, self.B.cube(z, self.shape, self.xd.dtype))

    def model_y(self, z):
        """Lazy predicted Y counts (M/v, N/v, L), chunks (b_x/v, b_y/v, L)."""
        return self.B.forward(self.lik.terms[1].model, self.B.cube(z, self.shape, self.xd.dtype))
