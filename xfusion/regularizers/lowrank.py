"""Low-rank spectral subspace from the sharp-spectral data (paper section 3.3.2)."""
from __future__ import annotations

import numpy as np
import scipy.linalg


#: largest number of principal components considered when choosing r by explained variance
MAX_COMPONENTS = 64


def _dask_compute(colls):
    import dask

    return dask.compute(*colls)


def spectral_moments(spectra, compute=None):
    """``(n, sum_i s_i, sum_i s_i s_i^T)`` of spectra (n, L), NumPy or Dask (one pass, float64).

    ``compute(collections) -> values`` evaluates Dask collections (the backend passes one bound
    to its client); default: the active Dask scheduler."""
    s = spectra.astype(np.float64)
    moments = (s.shape[0], s.sum(axis=0), s.T @ s)
    if hasattr(s, "dask"):
        moments = (moments[0],) + tuple((compute or _dask_compute)(moments[1:]))
    return moments


def pca_basis(spectra=None, rank=None, explained=0.999, moments=None):
    """Orthonormal spectral basis V (r, L) for ``Z = W V``.

    ``spectra`` (n_spectra, L): the sharp-spectral observations' spectra converted to flux
    (counts / (t A)), NumPy or Dask (or pass ``moments`` from :func:`spectral_moments`). The
    basis is the mean spectrum followed by the leading principal components of the centred
    spectra -- eigenvectors of their covariance sorted by DECREASING eigenvalue (the
    reference code's unsorted cut is a known defect) -- orthonormalized together, each
    vector signed so its largest-magnitude element is positive (deterministic). ``rank``
    fixes r; otherwise r - 1 is the smallest number of components reaching ``explained`` of
    the variance (at most 64). The covariance route makes the NumPy and Dask paths give the
    same basis; it costs O(L^2) memory (0.5 GB at L = 8192).
    """
    if not (isinstance(explained, (int, float)) and not isinstance(explained, bool) and 0 < explained <= 1):
        raise ValueError(f"explained must be a fraction of the variance in (0, 1]; got {explained!r}")
    n, s1, s2 = moments if moments is not None else spectral_moments(spectra)
    if n < 1 or not np.all(np.isfinite(s1)) or not np.all(np.isfinite(s2)):
        raise ValueError("the spectra for the low-rank basis are empty or contain NaN/inf (zero effective area "
                         "where there are counts?)")
    if not np.any(s1):
        raise ValueError("the spectra for the low-rank basis are all zero: the sharp-spectral observation has no "
                         "counts, so there is no spectral subspace to estimate; use regularization='wavelet2d1d'")
    mean = s1 / n
    cov = s2 / n - np.outer(mean, mean)
    L = cov.shape[0]
    n_max = min(MAX_COMPONENTS if rank is None else int(rank) - 1, L - 1, max(n - 1, 0))
    if n_max > 0:
        vals, vecs = scipy.linalg.eigh(cov, subset_by_index=[L - n_max, L - 1])
        order = np.argsort(vals)[::-1]
        vals, vecs = np.clip(vals[order], 0, None), vecs[:, order]
        if rank is None:
            total = max(float(np.trace(cov)), 1e-300)
            n_pc = int(min(np.searchsorted(np.cumsum(vals) / total, explained) + 1, n_max))
        else:
            n_pc = n_max
        pcs = vecs[:, :n_pc].T
    else:
        pcs = np.empty((0, L))
    return _orthonormal(mean, pcs)


def _orthonormal(mean, pcs):
    """QR of [mean, pcs]; each vector signed so its largest-magnitude element is positive."""
    q, _ = np.linalg.qr(np.vstack([mean, pcs]).T)
    v = q.T
    idx = np.argmax(np.abs(v), axis=1)
    v *= np.sign(v[np.arange(v.shape[0]), idx])[:, None]
    return np.ascontiguousarray(v)


#: above this many channels the Dask path uses a randomized SVD instead of the L x L covariance
COVARIANCE_MAX_CHANNELS = 4096


def pca_basis_randomized(spectra, rank=None, seed=0, n_power_iter=3, compute=None, explained=None):
    """Same basis as :func:`pca_basis` (mean + leading components), by a randomized SVD of the
    centred spectra (Halko et al. 2011; ``dask.array.linalg.svd_compressed``) -- for Dask
    spectra with many channels, where the L x L covariance (0.5 GB at L = 8192, 2 TFlop to
    form) is too costly. Approximate: the leading components agree with the exact ones to
    the accuracy of ``n_power_iter`` power iterations. ``rank`` fixes r; otherwise (``rank=None``)
    r - 1 is the smallest number of components reaching ``explained`` of the variance, as in
    :func:`pca_basis`: the variances of the leading components are ``sigma_k^2 / n`` (singular
    values of the centred spectra, at most 64 computed) and the total is the trace of the
    covariance, the summed channel variances (same pass). ``compute``: as in
    :func:`spectral_moments`.
    """
    import dask.array as da

    if rank is None and explained is None:
        raise ValueError("pca_basis_randomized needs rank= or explained=")
    if explained is not None and not (isinstance(explained, (int, float)) and not isinstance(explained, bool)
                                      and 0 < explained <= 1):
        raise ValueError(f"explained must be a fraction of the variance in (0, 1]; got {explained!r}")
    s = spectra.astype(np.float64)
    n, L = s.shape
    mean = s.mean(axis=0)
    k = max(int(rank) - 1, 1) if rank is not None else max(min(MAX_COMPONENTS, L - 1, n - 1), 1)
    c = s - mean
    _, sv, vt = da.linalg.svd_compressed(c, k=k, n_power_iter=n_power_iter, seed=seed)
    total = (c * c).sum() / n
    mean, sv, vt, total = (compute or _dask_compute)((mean, sv, vt, total))
    if rank is not None:
        return _orthonormal(mean, vt[: int(rank) - 1])
    vals = np.asarray(sv, dtype=np.float64) ** 2 / n
    n_pc = int(min(np.searchsorted(np.cumsum(vals) / max(float(total), 1e-300), explained) + 1, k))
    return _orthonormal(mean, vt[:n_pc])
