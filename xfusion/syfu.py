r"""SyFu (Marquis et al. 2026, "Fusion of JWST data"), written by us from the paper, as a baseline.

Problem (their eq. 9): with ``X = V Z + Upsilon`` (``V`` (L, k) the leading principal components
of the centred IFU spectra, ``Upsilon`` the IFU mean spectrum at every pixel),

.. math:: \min_Z \|Y_m - L_m W_m(VZ + \Upsilon)\|^2 + \gamma \|Y_h - S\,W_h(VZ + \Upsilon)\|^2
          + \mu \|Z D\|^2

``W_m``, ``W_h``: per-wavelength convolutions with the NIRCam and NIRSpec PSFs (both applied:
``X`` is the scene before any telescope blur); ``L_m``: the cross-calibrated NIRCam throughputs
(:func:`xfusion.jwst.cross_calibrate`); ``L_h`` = identity (the pipeline's flat field);
``S``: the 3 x 3 spatial degradation to NIRSpec pixels (we read it as the block mean of
surface brightnesses, the pixel footprint); ``D``: first differences. Quadratic, so the
normal equations ``(A^T A + mu D^T D) z = A^T b`` are solved by conjugate gradients
(scipy.sparse.linalg.cg; SyFu: 1000 iterations from the upsampled NIRSpec cube). Our
implementation is matrix-free with FFT convolutions (zero-padded, linear -- not the
periodic padding of the paper), so no sparse system is assembled.

Automatic tuning (their Appendix B): noise levels by Donoho's MAD of the finest diagonal
Haar coefficients, ``k`` = number of PCA eigenvalues above ``sigma_h^2``, ``gamma =
sigma_m^2 / sigma_h^2``, ``mu = sigma_m^2 / alpha^2`` with ``alpha^2`` the mean of ``(Z D)^2``
for the crude solution from the upsampled IFU. A noise estimate of 0 (exactly constant data, or data without
noise over most 2 x 2 blocks) leaves ``gamma`` undefined (``sigma_h = 0``) or zero (``sigma_m = 0``: the IFU and the
smoothing would get no weight), and ``alpha^2 = 0`` (an IFU with one spectrum everywhere) an infinite ``mu``;
the automatic rule is then refused, asking for ``gamma`` / ``mu``.
"""
from __future__ import annotations

import time

import numpy as np


def _mad_sigma(img):
    """Donoho's robust noise estimate on the finest diagonal Haar band of a 2D image (or the mean over a stack)."""
    a = np.asarray(img, dtype=np.float64)
    a = a[: a.shape[0] // 2 * 2, : a.shape[1] // 2 * 2]
    hh = (a[0::2, 0::2] - a[1::2, 0::2] - a[0::2, 1::2] + a[1::2, 1::2]) / 2.0
    return np.median(np.abs(hh), axis=(0, 1)) / 0.6745


class _PerChannelConv:
    """Linear ('same'-size, zero boundary) convolution of each channel with its own kernel, via FFT."""

    def __init__(self, kernels, shape):
        k = np.asarray(kernels, dtype=np.float64)  # (L, kx, ky), odd
        self.M, self.N = shape
        self.hx, self.hy = k.shape[1] // 2, k.shape[2] // 2
        self.P = (self.M + k.shape[1] - 1, self.N + k.shape[2] - 1)
        self.K = np.fft.rfft2(k, s=self.P, axes=(1, 2)).transpose(1, 2, 0)  # (Px, Py/2+1, L)

    def forward(self, x):
        f = np.fft.rfft2(x, s=self.P, axes=(0, 1)) * self.K
        full = np.fft.irfft2(f, s=self.P, axes=(0, 1))
        return full[self.hx:self.hx + self.M, self.hy:self.hy + self.N]

    def adjoint(self, u):
        # x*[m] = sum_i u[i] k[i + h - m]: embed u at offset h, circular correlation (no wrap: zero padding)
        full = np.zeros(self.P + u.shape[2:])
        full[self.hx:self.hx + self.M, self.hy:self.hy + self.N] = u
        f = np.fft.rfft2(full, axes=(0, 1)) * np.conj(self.K)
        return np.fft.irfft2(f, s=self.P, axes=(0, 1))[:self.M, :self.N]


def _block_mean(x, v):
    M, N = x.shape[:2]
    return x.reshape(M // v, v, N // v, v, *x.shape[2:]).mean(axis=(1, 3))


def _block_mean_adj(u, v):
    return np.repeat(np.repeat(u, v, 0), v, 1) / (v * v)


def _grad(z):
    gx = np.zeros_like(z)
    gy = np.zeros_like(z)
    gx[:-1] = z[1:] - z[:-1]
    gy[:, :-1] = z[:, 1:] - z[:, :-1]
    return gx, gy


def _grad_adj(gx, gy):
    out = np.zeros_like(gx)
    out[1:] += gx[:-1]
    out[:-1] -= gx[:-1]
    out[:, 1:] += gy[:, :-1]
    out[:, :-1] -= gy[:, :-1]
    return out


def _check_finite(a, what):
    """Refuse NaN or inf in ``a`` (M, N, C): SyFu has no mask. Names the channels (last axis) that are wholly
    non-finite (a detector gap or bad channel of the IFU) and the count of other bad values."""
    bad = ~np.isfinite(a)
    if not bad.any():
        return
    whole = np.flatnonzero(bad.all(axis=(0, 1)))
    part = int(bad.sum()) - whole.size * a.shape[0] * a.shape[1]
    text = []
    if whole.size:
        text.append(f"every pixel of channel(s) {whole[:8].tolist()}{' ...' if whole.size > 8 else ''} (a detector gap "
                    "or bad channel)")
    if part:
        text.append(f"{part} other value(s)")
    raise ValueError(f"{what} contain NaN or inf: {' and '.join(text)}. SyFu (a least-squares fit with no mask) "
                     "cannot use them: fuse a wavelength range without such channels (SyFu's gap-free ranges) and "
                     "replace isolated bad pixels first, or use xfusion.jwst.fuse_jwst, which takes a mask")


def _check_noise(gamma, mu, sig_m, sig_h):
    """Refuse SyFu's automatic ``gamma`` / ``mu`` when a MAD noise level they divide by or scale with is 0: ``gamma
    = sig_m^2 / sig_h^2`` is undefined for ``sig_h = 0`` and 0 for ``sig_m = 0`` (the IFU ignored), ``mu =
    sig_m^2 / alpha^2`` is 0 for ``sig_m = 0`` (no smoothing)."""
    zero = [name for name, sig, used in (("imager_data", sig_m, gamma is None or mu is None),
                                         ("ifu_data", sig_h, gamma is None)) if used and not sig > 0]
    if not zero:
        return
    auto = {n: (f, h) for n, a, f, h in (
        ("gamma", gamma, "gamma = sigma_m^2 / sigma_h^2", "gamma= (the IFU's weight relative to the imager, e.g. 1.0)"),
        ("mu", mu, "mu = sigma_m^2 / alpha^2", "mu= (the smoothing weight)")) if a is None}
    raise ValueError(f"SyFu's automatic {' and '.join(auto)} ({'; '.join(f for f, _ in auto.values())}) "
                     f"need{'s' if len(auto) == 1 else ''} the MAD noise level of {' and '.join(zero)}, which is 0: "
                     "the data are exactly constant, or noise-free over most 2 x 2 pixel blocks. Pass "
                     f"{' and '.join(h for _, h in auto.values())} yourself")


def syfu(imager_data, ifu_data, response, psf_imager, psf_ifu, *, factor=3, k=None, mu=None, gamma=None,
         n_iter=1000):
    """Run SyFu on arrays.

    ``imager_data`` (M, N, F) (on the fused grid, cross-calibrated response), ``ifu_data`` (m, n, L) with
    ``M = factor m``, ``N = factor n`` (``factor`` the integer pixel ratio; shapes checked first),
    ``response`` (L, F), ``psf_imager`` / ``psf_ifu`` (L, k, k) per-channel PSFs sampled on the fused
    grid. ``k``, ``mu``, ``gamma``: None = SyFu's automatic rules (module notes; ``gamma``/``mu`` are refused
    when a noise level or ``alpha^2`` they need is 0: pass them). Returns a dict with
    ``scene`` (the estimate of X, (M, N, L)), ``at_imager_resolution`` (``W_m X``), the parameters
    used, ``n_iter`` (CG stops early when the relative residual of the normal equations is below
    1e-12), ``cg_info`` (scipy's flag, 0 = converged), ``relative_residual`` and ``time_s``. NaN or inf in
    the data are refused (SyFu has no mask), naming the channels that are wholly non-finite.
    """
    from scipy.sparse.linalg import LinearOperator, cg

    t0 = time.perf_counter()
    ym = np.asarray(imager_data, dtype=np.float64)
    yh = np.asarray(ifu_data, dtype=np.float64)
    R = np.asarray(response, dtype=np.float64)
    v = int(factor)
    if ym.ndim != 3 or yh.ndim != 3 or R.shape != (yh.shape[-1], ym.shape[-1]):
        raise ValueError(f"imager_data {ym.shape}, ifu_data {yh.shape} and response {R.shape} must be (M, N, F), "
                         "(m, n, L) and (L, F)")
    if ym.shape[:2] != (v * yh.shape[0], v * yh.shape[1]):
        r = ym.shape[0] // max(yh.shape[0], 1)
        fix = (f"pass factor={r}" if r >= 1 and ym.shape[:2] == (r * yh.shape[0], r * yh.shape[1]) else
               "crop both to the common field of view")
        raise ValueError(f"the imager field {ym.shape[0]}x{ym.shape[1]} (imager_data {ym.shape}) is not factor={v} x "
                         f"the IFU field {yh.shape[0]}x{yh.shape[1]} (ifu_data {yh.shape}): {fix}")
    _check_finite(ym, "imager_data")
    _check_finite(yh, "ifu_data")
    M, N, F = ym.shape
    L = yh.shape[-1]
    # PCA of the centred IFU spectra
    spec = yh.reshape(-1, L)
    mean = spec.mean(axis=0)
    _, s, vt = np.linalg.svd(spec - mean, full_matrices=False)
    sig_m = float(np.mean(_mad_sigma(ym)))
    sig_h = float(np.mean(_mad_sigma(yh)))
    _check_noise(gamma, mu, sig_m, sig_h)
    if k is None:
        eig = s ** 2 / spec.shape[0]
        k = max(1, int(np.sum(eig > sig_h ** 2)))
    V = vt[:k].T  # (L, k)
    if gamma is None:
        gamma = sig_m ** 2 / sig_h ** 2
    Wm, Wh = _PerChannelConv(psf_imager, (M, N)), _PerChannelConv(psf_ifu, (M, N))

    def a_m(z):
        return Wm.forward(z @ V.T) @ R

    def a_m_adj(u):
        return Wm.adjoint(u @ R.T) @ V

    def a_h(z):
        return _block_mean(Wh.forward(z @ V.T), v)

    def a_h_adj(u):
        return Wh.adjoint(_block_mean_adj(u, v)) @ V

    ups = np.broadcast_to(mean, (M, N, L))
    bm = ym - Wm.forward(np.ascontiguousarray(ups)) @ R
    bh = yh - _block_mean(Wh.forward(np.ascontiguousarray(ups)), v)
    z0 = (np.repeat(np.repeat(yh, v, 0), v, 1) - mean) @ V
    if mu is None:
        gx, gy = _grad(z0)
        alpha2 = float(np.mean(np.concatenate([gx.ravel(), gy.ravel()]) ** 2))
        if not alpha2 > 0:
            raise ValueError("SyFu's automatic mu (mu = sigma_m^2 / alpha^2) needs alpha^2, the mean squared spatial "
                             "difference of the upsampled IFU in the PCA subspace, which is 0: the IFU cube is the "
                             "same spectrum in every spaxel. Pass mu= (the smoothing weight) yourself")
        mu = sig_m ** 2 / alpha2
    shape = (M, N, k)
    n = M * N * k

    def normal(x):
        z = x.reshape(shape)
        out = a_m_adj(a_m(z)) + gamma * a_h_adj(a_h(z)) + mu * _grad_adj(*_grad(z))
        return out.ravel()

    rhs = (a_m_adj(bm) + gamma * a_h_adj(bh)).ravel()
    op = LinearOperator((n, n), matvec=normal, dtype=np.float64)
    count = [0]

    def cb(_):
        count[0] += 1

    t1 = time.perf_counter()
    sol, info = cg(op, rhs, x0=z0.ravel(), rtol=1e-12, atol=0.0, maxiter=int(n_iter), callback=cb)
    residual = float(np.linalg.norm(normal(sol) - rhs) / max(np.linalg.norm(rhs), 1e-300))
    t_solve = time.perf_counter() - t1
    x = sol.reshape(shape) @ V.T + mean
    return {"scene": x, "at_imager_resolution": Wm.forward(x), "k": int(k), "mu": float(mu),
            "gamma": float(gamma), "sigma_imager": sig_m, "sigma_ifu": sig_h, "n_iter": count[0],
            "cg_info": int(info), "relative_residual": residual,
            "time_s": time.perf_counter() - t0, "time_cg_s": t_solve}
