"""An independent forward simulator for tests (no code shared with ``xfusion.operators``).

Written from the equations (DESIGN.md section 2, paper eq. 9), not from the operator code:

    X counts  = R_L( S_X( t_X A_X(E) Z ) )     A_X on the fused bins, S_X the X response, R_L energy rebinning
    Y counts  = R_MN( B_Y( t_Y A_Y(E) Z ) )    B_Y the Y PSF (possibly varying with energy), R_MN spatial rebinning

Deliberately different implementations from the library's:

* effective area: linear interpolation of the ARF (given at its ``energy_true`` bin centres) at
  the fused bin centres, written as an explicit bracket search per bin; vignetted areas per pixel;
* spectral response as photon redistribution: a stationary kernel sampled every ``spacing``
  keV is a piecewise-constant density (sample i covers ``[off_i - spacing/2, off_i + spacing/2]``);
  a photon at the centre ``E_k`` of fused bin k lands in channel ``[lo_c, hi_c]`` with the
  integral of that density over ``[lo_c - E_k, hi_c - E_k]``: interval overlaps in explicit
  loops over bins and kernel samples. An RMF is applied row by row: fused bin k uses the row of
  the true-energy bin containing ``E_k`` (explicit loop), accumulated channel by channel;
* PSF: ``scipy.signal.convolve2d`` (direct, zero boundary, 'full' output cropped to the
  field) of every energy slice; an energy-dependent PSF is interpolated linearly between its
  band energies (constant beyond the ends) at each fused channel centre, then applied;
* rebinning: explicit loops summing v x v pixel blocks / v_L channel groups.

Only the cases the tests use are supported; the PSF must be sampled at the fused pixel size.
Everything is float64.
"""
from __future__ import annotations

import numpy as np
import scipy.signal


def edges(ds, dim="energy"):
    lo = np.asarray(ds[f"{dim}_lo"].values, dtype=np.float64)
    hi = np.asarray(ds[f"{dim}_hi"].values, dtype=np.float64)
    return np.append(lo, hi[-1])


def _linear_interp(xs, xp, fp):
    """Linear interpolation of (xp, fp) at xs, constant beyond the ends: explicit bracket search."""
    out = np.empty(len(xs))
    for n, x in enumerate(xs):
        if x <= xp[0]:
            out[n] = fp[0]
            continue
        if x >= xp[-1]:
            out[n] = fp[-1]
            continue
        j = 0
        while xp[j + 1] < x:
            j += 1
        t = (x - xp[j]) / (xp[j + 1] - xp[j])
        out[n] = (1 - t) * fp[j] + t * fp[j + 1]
    return out


def area_on_fused(obs, fused_edges):
    """Effective area (cm2): (L,) per fused bin, or (nx, ny, L) for a vignetted ARF on obs' own pixels."""
    a = obs["effective_area"]
    centres = 0.5 * (fused_edges[1:] + fused_edges[:-1])
    if a.ndim == 0:
        return np.full(centres.size, float(a.values))
    et = np.asarray(obs["energy_true"].values, dtype=np.float64)
    if a.ndim == 1:
        return _linear_interp(centres, et, np.asarray(a.values, dtype=np.float64))
    vals = np.asarray(a.transpose("x", "y", "energy_true").values, dtype=np.float64)
    out = np.empty(vals.shape[:2] + (centres.size,))
    for i in range(vals.shape[0]):
        for j in range(vals.shape[1]):
            out[i, j] = np.interp(centres, et, vals[i, j])
    return out


def kernel_redistribution(kernel, spacing, fused_edges, channel_edges):
    """P[k, c]: probability that a photon at fused bin centre E_k is detected in channel c."""
    kernel = np.asarray(kernel, dtype=np.float64) / np.sum(kernel)
    h = kernel.size // 2
    centres = 0.5 * (fused_edges[1:] + fused_edges[:-1])
    lo_c, hi_c = channel_edges[:-1], channel_edges[1:]
    P = np.zeros((centres.size, lo_c.size))
    for k, e in enumerate(centres):
        for i, w in enumerate(kernel):
            if w == 0:
                continue
            a = e + (i - h) * spacing - spacing / 2
            b = a + spacing
            overlap = np.clip(np.minimum(hi_c, b) - np.maximum(lo_c, a), 0.0, None)
            P[k] += w * overlap / spacing
    return P


def rmf_redistribution(obs, fused_edges):
    """P[k, c] from an RMF (energy_true, energy): the row of the true bin containing each fused centre."""
    mat = np.asarray(obs["response"].transpose("energy_true", "energy").values, dtype=np.float64)
    tedges = edges(obs, "energy_true")
    centres = 0.5 * (fused_edges[1:] + fused_edges[:-1])
    P = np.zeros((centres.size, mat.shape[1]))
    for k, e in enumerate(centres):
        row = None
        for t in range(tedges.size - 1):
            if tedges[t] <= e < tedges[t + 1]:
                row = t
                break
        if row is None:
            raise ValueError(f"fused bin centre {e} keV outside the RMF")
        P[k] = mat[row]
    return P


def rebin_energy(cube, factor):
    out = np.zeros(cube.shape[:2] + (cube.shape[2] // factor,))
    for c in range(out.shape[2]):
        for k in range(factor):
            out[:, :, c] += cube[:, :, c * factor + k]
    return out


def rebin_space(cube, factor):
    M, N = cube.shape[:2]
    out = np.zeros((M // factor, N // factor) + cube.shape[2:])
    for s in range(M // factor):
        for t in range(N // factor):
            for p in range(factor):
                for q in range(factor):
                    out[s, t] += cube[s * factor + p, t * factor + q]
    return out


def convolve_same(image, psf):
    """Zero-boundary convolution cropped to the field: out[i, j] = sum_pq psf[p, q] image[i - p + hx, j - q + hy]."""
    full = scipy.signal.convolve2d(image, psf, mode="full", boundary="fill", fillvalue=0.0)
    hx, hy = psf.shape[0] // 2, psf.shape[1] // 2
    return full[hx:hx + image.shape[0], hy:hy + image.shape[1]]


def psf_per_channel(obs, centres):
    """Function k -> the PSF (2D, float64) of fused channel k (linear interpolation between bands)."""
    psf = obs["psf"]
    if "psf_energy" not in psf.dims:
        k = np.asarray(psf.transpose("psf_x", "psf_y").values, dtype=np.float64)
        return lambda _: k
    stack = np.asarray(psf.transpose("psf_energy", "psf_x", "psf_y").values, dtype=np.float64)
    eb = np.asarray(psf["psf_energy"].values, dtype=np.float64)

    def at(k):
        e = centres[k]
        if e <= eb[0]:
            return stack[0]
        if e >= eb[-1]:
            return stack[-1]
        j = int(np.searchsorted(eb, e) - 1)
        t = (e - eb[j]) / (eb[j + 1] - eb[j])
        return (1 - t) * stack[j] + t * stack[j + 1]

    return at


def simulate_x(flux, x_obs, fused_edges):
    """Expected counts of the sharp-spatial instrument for ``flux`` (M, N, L) on the fused grid."""
    z = np.asarray(flux, dtype=np.float64)
    t = float(x_obs["exposure"].values)
    area = area_on_fused(x_obs, fused_edges)
    photons = t * area * z  # counts per fused voxel before redistribution
    chan = edges(x_obs)
    if "response" not in x_obs:
        factor = (fused_edges.size - 1) // (chan.size - 1)
        return rebin_energy(photons, factor)
    resp = x_obs["response"]
    if resp.attrs.get("kind") == "matrix":
        P = rmf_redistribution(x_obs, fused_edges)
    else:
        P = kernel_redistribution(resp.values, float(x_obs["energy_offset"].attrs["spacing"]), fused_edges, chan)
    out = np.zeros(z.shape[:2] + (P.shape[1],))
    for k in range(P.shape[0]):
        out += photons[:, :, k:k + 1] * P[k][None, None, :]
    return out


def simulate_y(flux, y_obs, fused_edges, fused_pixel):
    """Expected counts of the sharp-spectral instrument for ``flux`` (M, N, L) on the fused grid."""
    z = np.asarray(flux, dtype=np.float64)
    t = float(y_obs["exposure"].values)
    factor = int(round(float(y_obs["x"].attrs["pixel_size"]) / fused_pixel))
    area = area_on_fused(y_obs, fused_edges)
    if area.ndim == 3:
        area = np.repeat(np.repeat(area, factor, axis=0), factor, axis=1)
    photons = t * area * z
    if "psf" in y_obs:
        psf_pix = float(y_obs["psf_x"].attrs.get("pixel_size", np.diff(y_obs["psf_x"].values).mean()))
        if not np.isclose(psf_pix, fused_pixel, rtol=1e-6):
            raise NotImplementedError("the test simulator needs the PSF sampled at the fused pixel size")
        centres = 0.5 * (fused_edges[1:] + fused_edges[:-1])
        at = psf_per_channel(y_obs, centres)
        blurred = np.empty_like(photons)
        for k in range(photons.shape[2]):
            blurred[:, :, k] = convolve_same(photons[:, :, k], at(k))
        photons = blurred
    return rebin_space(photons, factor)


def simulate(flux, x_obs, y_obs, rng=None):
    """(expected X counts, expected Y counts) for a flux DataArray on the fused grid (x, y, energy);
    with ``rng`` also Poisson draws: returns (x_counts, y_counts) drawn from those expectations."""
    f = flux.transpose("x", "y", "energy")
    fe = edges(f)
    px = float(f["x"].attrs["pixel_size"])
    mx = simulate_x(f.values, x_obs, fe)
    my = simulate_y(f.values, y_obs, fe, px)
    if rng is None:
        return mx, my
    return rng.poisson(mx).astype(np.float32), rng.poisson(my).astype(np.float32)
