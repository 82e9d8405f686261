"""Dask execution of the full-cube EM (+ prox) solver: :class:`~xfusion.solvers.em.EMProx` on a
:class:`~xfusion.backends.blockwise.DaskBackend`, from chunked data.

No maths here: the models are the in-memory operators run on pixel blocks with their halos
(:mod:`xfusion.operators.blocks`), the data terms the likelihood's block kernels, the prox the
regularizer's ``block_statistics``/``combine``/``block_apply``. This module only chunks the data
so that the blocks of both instruments cover the same sky: the fused cube in ``(b_x, b_y, L)``
blocks, X counts ``(b_x, b_y, l)``, Y counts ``(b_x / v, b_y / v, L)``; the counts of a detector-pixel tile
(P, L) are one chunk (its footprint reads every pixel block it sees: :mod:`xfusion.backends.blockwise`).

One rule for what runs on Dask: EM with a regularizer that has block forms (``Wavelet2D1D``
without ``conserve_flux``, or none) and operators that have block forms or are detector footprints
(not an energy-dependent PSF before a footprint); with masks, vignetted areas (weights built per block from an
:class:`~xfusion.operators.area.AreaMap`), known backgrounds and further inputs (``extras``;
``fuse`` passes every input beyond the first two here). Anything else raises ``NotImplementedError``.
"""
from __future__ import annotations

import dask.array as da
import numpy as np

from .backends.blockwise import DaskBackend
from .likelihood import PoissonLikelihood
from .operators.blocks import factor as factor_of
from .parallel import DaskPoissonTerm
from .solvers.em import EMProx

#: PSF layouts: halos on the pixel blocks (the only one; the full-field channel slabs of "rechunk" are gone)
LAYOUTS = ("halo",)


class DaskEMProx(EMProx):
    """EM + prox on Dask arrays.

    ``x_data`` (M, N, l), ``y_data`` (M/v, N/v, L) or (P, L) for detector pixels: Dask (or NumPy) counts; the X pixel chunks set the
    blocks (multiples of v; the energy axis is made whole). ``mx``, ``my``: the instrument models
    (:class:`~xfusion.operators.model.InstrumentModel`, internal units); ``factor``: v;
    ``regularizer``: ``Wavelet2D1D`` or None; ``client``: optional ``distributed.Client``;
    ``free``: as :class:`EMProx` (e.g. per channel, (L,)). ``psf_kernel`` is ignored (the PSF is
    ``my``'s) and kept for the callers' signature. Data keep their float dtype (float32 or float64).
    ``masks``: None or one mask (1 = use, 0 = ignore; shaped like the counts) or None per instrument;
    ``extras``: further ``(counts, model[, mask])`` (more observations in the same likelihood), each
    counts cube chunked to the blocks divided by its model's spatial factor. ``roles``: as :class:`EMProx`.
    """

    def __init__(self, x_data, y_data, mx, my, psf_kernel=None, factor=1, regularizer=None, client=None,
                 layout="halo", free=None, extras=(), masks=None, roles=None):
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}; got {layout!r} (the 'rechunk' layout was removed: "
                             "operators run on pixel blocks with their halos, any chunk size)")
        v = int(factor)
        xd, yd = da.asarray(x_data), da.asarray(y_data)
        dt = xd.dtype if xd.dtype in (np.float32, np.float64) else np.dtype(np.float32)
        xd = xd.rechunk({2: -1})
        M, N, _ = xd.shape
        L = yd.shape[-1]
        self.chunks = (xd.chunks[0], xd.chunks[1], (L,))
        backend = DaskBackend(self.chunks, client)
        for name, m in [("X", mx), ("Y", my)] + [(f"input {i + 3}", e[1]) for i, e in enumerate(extras)]:
            if not backend.supports(m):
                raise NotImplementedError(f"the {name} model has an operator that cannot run on pixel blocks (e.g. an "
                                          "energy-dependent PSF before a detector footprint): load the observations "
                                          "into memory (.load()) and fuse without a client")
        if regularizer is not None and (getattr(regularizer, "conserve_flux", False)
                                        or not hasattr(regularizer, "block_apply")):
            raise NotImplementedError(f"{type(regularizer).__name__} has no block form here: run in memory")
        if yd.ndim == 2:  # a detector-pixel tile (P, L): its model reads the whole field; one chunk
            yd = yd.rechunk((-1, -1))
        else:
            if yd.shape[:2] != (M // v, N // v) or M % v or N % v:
                raise ValueError(f"Y counts {yd.shape} do not match X counts {xd.shape} with spatial factor {v}")
            if any(c % v for c in self.chunks[0] + self.chunks[1]):
                raise ValueError(f"X pixel chunks {self.chunks[:2]} must be multiples of the spatial factor {v}")
            yd = yd.rechunk((tuple(c // v for c in self.chunks[0]), tuple(c // v for c in self.chunks[1]), -1))
        self.shape, self.layout = (M, N, L), layout
        mk = masks or (None, None)
        terms = [DaskPoissonTerm(mx, xd, dt, client, backend, mk[0]), DaskPoissonTerm(my, yd, dt, client, backend,
                                                                                       mk[1])]
        for i, (d, m, *w) in enumerate(extras):
            f = factor_of(m.spatial if m.spatial is not None else [])
            d = da.asarray(d)
            if d.ndim == 2:  # a detector-pixel tile (P, L): one chunk
                terms.append(DaskPoissonTerm(m, d.rechunk((-1, -1)), dt, client, backend, w[0] if w else None))
                continue
            if d.shape[:2] != (M // f[0], N // f[1]) or any(c % f[a] for a in range(2) for c in self.chunks[a]):
                raise ValueError(f"counts {d.shape} of input {i + 3} do not fit the fused {M}x{N} pixels in blocks "
                                 f"{self.chunks[:2]} with its spatial factor {f}: blocks must be multiples of it")
            d = d.rechunk(tuple(tuple(c // f[a] for c in self.chunks[a]) for a in range(2)) + (-1,))
            terms.append(DaskPoissonTerm(m, d, dt, client, backend, w[0] if w else None))
        self.xd, self.yd = terms[0].data, terms[1].data
        super().__init__(PoissonLikelihood(terms), regularizer, free, backend, roles)

    def model(self, i, z):
        """Lazy expected counts of input ``i`` (0 = X, 1 = Y, then the extras; known background included),
        chunked like its data."""
        t = self.lik.terms[i]
        return t._plus_background(self.B.forward(t.model, self.B.cube(z, self.shape, self.xd.dtype)))

    def model_x(self, z):
        """Lazy expected X counts (M, N, l) (known background included), chunks (b_x, b_y, l)."""
        return self.model(0, z)

    def model_y(self, z):
        """Lazy expected Y counts (M/v, N/v, L) (known background included), chunks (b_x/v, b_y/v, L)."""
        return self.model(1, z)
