"""Low-rank spectral subspace from the sharp-spectral data (paper section 3.3.2)."""
from __future__ import annotations

import numpy as np


def pca_basis(spectra, rank=None, explained=0.999):
    """Orthonormal spectral basis V (r, L) for ``Z = W V``.

    ``spectra`` (n_spectra, L): the sharp-spectral observation's spectra converted to flux
    (counts / (t A)). The basis is the mean spectrum followed by the leading principal
    components of the centred spectra (eigenvectors sorted by DECREASING eigenvalue -- the
    reference code's unsorted cut is a known defect), orthonormalized together. ``rank``
    fixes r; otherwise r is the smallest number of components reaching ``explained`` of the
    variance (plus the mean), capped at the number of spectra.
    """
    s = np.asarray(spectra, dtype=np.float64)
    mean = s.mean(axis=0)
    _, sv, vt = np.linalg.svd(s - mean, full_matrices=False)  # singular values sorted decreasing
    var = sv ** 2
    if rank is None:
        frac = np.cumsum(var) / max(var.sum(), 1e-300)
        n_pc = int(np.searchsorted(frac, explained) + 1)
    else:
        n_pc = int(rank) - 1
    n_pc = max(0, min(n_pc, vt.shape[0]))
    q, _ = np.linalg.qr(np.vstack([mean, vt[:n_pc]]).T)
    v = q.T
    if v[0] @ mean < 0:
        v[0] = -v[0]
    return v
