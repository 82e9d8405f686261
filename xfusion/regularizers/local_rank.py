r"""Low rank with a spectral subspace that adapts locally: each small patch of the field keeps its own rank-r part.

Maths
-----
The cube ``z`` (M, N, L) (x, y, energy; internal units) is covered by square patches of ``p x p`` fused pixels
whose corners lie on a lattice of stride ``s`` (the last patch of each axis is moved back to end on the edge, so
every pixel is covered; an axis shorter than ``p`` is one patch of its length). For patch ``P`` the Casorati matrix
``X_P`` (p^2, L) holds its pixels' spectra; its rank-r part is

.. math:: \Pi_r(X_P) = U_r U_r^T X_P,

``U_r`` the leading r eigenvectors of ``X_P X_P^T`` (the best rank-r approximation in the Frobenius norm,
Eckart-Young; uncentred, so the patch's mean spectrum lies in it). The operator returns, at each voxel, the mean of
the rank-r parts of every patch that covers it:

.. math:: \Pi(z)_v = \frac{1}{|\{P \ni v\}|} \sum_{P \ni v} \Pi_r(X_P)_v .

A global low-rank basis (``lowrank``: the sharp-spectral data's principal components) must spend one component per
spectral shape anywhere in the field; a line whose centroid moves across the field (a velocity gradient) needs many.
Within a patch of a few fused pixels the same line is about a shape and its derivative (rank 2-3), so a small r per
patch keeps Doppler shifts and widths that a global basis of that rank would average away, while each pixel's spectrum
still borrows the noise reduction of its neighbours' (all L channels of a patch share r spectral vectors).

Used as the "prox" of EM (:mod:`xfusion.solvers.em`): the iterate after each EM step is replaced by ``Pi(z)`` (then
clipped at 0 by the method). ``Pi`` is a projection onto a non-convex set averaged over overlapping patches, not the
proximal operator of a convex penalty: like plain RL and ``lowrank``, the fit is regularized by its rank and by early
stopping. The monitored penalty is 0 (an indicator of the set is 0 on it).

Cost per application: per patch one (p^2, p^2) Gram matrix (p^2 L multiply-adds per pixel), a symmetric eigensolve
and the projection (2 r L per pixel), batched over patches; with stride ``p / 2`` every pixel is in about 4 patches.
"""
from __future__ import annotations

import numpy as np

__all__ = ["LocalLowRank", "patch_starts"]


def patch_starts(n, patch, stride):
    """First indices of the patches along an axis of length ``n``: ``0, s, 2s, ...`` with the last moved back to
    ``n - p`` (every index covered); ``[0]`` when ``n <= p`` (one patch of length ``n``)."""
    if n <= patch:
        return [0]
    starts = list(range(0, n - patch + 1, stride))
    if starts[-1] != n - patch:
        starts.append(n - patch)
    return starts


class LocalLowRank:
    """``Pi(z)``: the mean of the rank-``rank`` parts of the ``patch`` x ``patch`` pixel patches covering each voxel
    (module notes). ``stride``: lattice step of the patches' corners (default ``patch // 2``, at least 1)."""

    def __init__(self, rank=3, patch=6, stride=None):
        for name, v in (("rank", rank), ("patch", patch)):
            if not (isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1):
                raise ValueError(f"{name} must be an integer >= 1; got {v!r}")
        self.rank, self.patch = int(rank), int(patch)
        if stride is not None and not (isinstance(stride, (int, np.integer)) and not isinstance(stride, bool)
                                       and 1 <= stride <= self.patch):
            raise ValueError(f"stride must be an integer in [1, patch={self.patch}] (larger leaves gaps); got {stride!r}")
        self.stride = max(self.patch // 2, 1) if stride is None else int(stride)

    def project(self, z):
        """``Pi(z)`` for a cube (M, N, L): a new array of ``z``'s float dtype (``z`` is not modified)."""
        z = np.asarray(z)
        if z.ndim != 3:
            raise ValueError(f"LocalLowRank needs a cube (x, y, energy); got shape {z.shape}")
        dt = z.dtype if z.dtype in (np.float32, np.float64) else np.dtype(np.float64)
        z = z.astype(dt, copy=False)
        M, N, L = z.shape
        px, py = min(self.patch, M), min(self.patch, N)
        xs, ys = patch_starts(M, px, self.stride), patch_starts(N, py, self.stride)
        r = min(self.rank, px * py, L)
        out = np.zeros_like(z)
        cover = np.zeros((M, N), dtype=dt)
        for i in xs:  # one row of patches at a time: (n_patches, p^2, L) batches of a few MB
            X = np.stack([z[i:i + px, j:j + py].reshape(px * py, L) for j in ys])
            G = np.matmul(X, np.swapaxes(X, 1, 2)).astype(np.float64)
            _, vecs = np.linalg.eigh(G)  # ascending eigenvalues: the last r columns span the rank-r part
            U = vecs[:, :, -r:].astype(dt)
            proj = np.matmul(U, np.matmul(np.swapaxes(U, 1, 2), X))
            for j, part in zip(ys, proj):
                out[i:i + px, j:j + py] += part.reshape(px, py, L)
                cover[i:i + px, j:j + py] += 1
        out /= cover[:, :, None]
        return out

    def prox(self, z, step=1.0, with_penalty=False):
        """``Pi(z)`` (``step`` is ignored: a projection does not scale with the step); with ``with_penalty``,
        ``(Pi(z), 0.0)``."""
        out = self.project(z)
        return (out, 0.0) if with_penalty else out

    def value(self, z):
        """0: the penalty of a constraint set, monitored as nothing added to the data term."""
        return 0.0

    def stats_from_scalars(self, state):
        """No statistics in the solver state (in memory only: the Dask path does not run this prior)."""
        return None
