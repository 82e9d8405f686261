r"""A mosaic scene: EPIC-pn + MOS1 + MOS2 on one sky and a 2x2 mosaic of Resolve pointings.

``make_mosaic(kind="cluster_core", seed=0, *, size=(72, 400), counts=(3e6, 2e6), tiles=4, mos=True,
noise=True, psf_pixels=3.0) -> (observations, truth)``

``observations`` is a dict ``{"pn", "mos1", "mos2", "tile1", ..., "tile4"}`` of
:func:`xfusion.observation` Datasets (MOS left out with ``mos=False``), ready for
``xfusion.fuse(*observations.values())``; ``truth`` is the Dataset of :func:`xfusion.scenes.make`
(``flux`` (x, y, energy) in ph cm-2 s-1 per voxel at the target resolution, ``velocity``,
``line_width``, ``line_flux`` maps) with the tiles' geometry added as attributes.

The sky, the pn observation and the truth are those of :func:`xfusion.scenes.make` with
``geometry="xmm_resolve"`` and ``response="gaussian"`` (5" fused pixels, pn channels 10 fine
channels wide, a Gaussian pn line spread of 59 eV sigma at 6.2-7.0 keV (33 eV at 0.5-1.4 keV) and 1000 cm2), reused
through its public function. This module adds, simulated here with NumPy/SciPy only (no
:mod:`xfusion.operators`):

* **MOS1, MOS2**: the same sky on pn's pixels and channels, with their own areas (``MOS_AREA``:
  0.42 and 0.44 of pn's), line spreads (``MOS_SIGMA_EV_BY_BAND``: 52 and 55 eV sigma at Fe K, 29 and
  31 eV in the soft band of the other skies; analytic Gaussian integrated over each coarse channel;
  handed to xfusion sampled every 1/8 fine channel) and PSFs: a Gaussian blur RELATIVE to pn's
  (``MOS_REL_PSF_PX``, sigma in fused pixels) applied with ``scipy.signal.fftconvolve`` (zero boundary)
  and handed to xfusion as each MOS's ``psf`` (the blur beyond the fused resolution; see
  :func:`xfusion.fuse`).
* **A 2x2 Resolve mosaic**: ``tiles`` pointings (1-4) of a 6 x 6 array of 30" pixels (6 fused
  pixels) on the fine channels, each with its own array centre (``TILE_CENTERS``, arcsec,
  overlapping by about half an array) and roll (``TILE_ROLLS``, deg), calibration pixel
  ``CAL_PIXEL`` masked, a Gaussian PSF of ``psf_pixels`` fused pixels (sigma), 250 cm2, and a
  common exposure chosen so the tiles' pixels INCLUDING the calibration pixel would hold
  ``counts[1]`` expected counts in total; the calibration pixel's counts are then set to 0, so the
  tiles deliver a little less than ``counts[1]`` (1.934e6 expected of 2e6 at the defaults, -3.3 %;
  kept so, as every published mosaic measurement used these data; :func:`make_small`'s 3 x 3
  tiles have no pixel 12 and deliver ``counts[1]``). The counts each input is
  expected to hold are in the truth's attrs ``expected_counts_<input>`` (``counts_x``: pn,
  ``counts_y``: all tiles together, as delivered; ``resolve_counts_requested``: ``counts[1]``). Each
  tile's counts are the PSF-blurred sky integrated over its rotated pixels by **supersampling**
  every fused pixel with ``SUPERSAMPLE`` x ``SUPERSAMPLE`` points (xfusion models them with the
  exact overlap areas: the difference is the simulator's own quadrature error, < 0.3 % of a
  pixel's counts, a small model mismatch on purpose).

Checked against xfusion's forward model of the same inputs (the models :func:`xfusion.fuse` builds, applied to
``truth["flux"]``; tests/test_scenes_mosaic.py, session 8): noise-free counts of the 72x72x400 scene at 3e6 pn
counts agree within 1.3e-6 in total and 2e-5 per voxel for pn (MOS 1.6e-6 per voxel), 4e-5 in total and 8e-4 per
voxel for the tiles ((data - model) / sqrt(model) at most 0.015); ``make_small`` within 0.1% per voxel for MOS,
0.5% for pn and the tiles. (:func:`xfusion.predict` of a single MOS observation applies its relative ``psf`` as
fuse does when given ``role="pixels"`` or a fusion result's flux; from a truth cube without ``role`` it is refused,
as an image carrying a psf may also be the input that sets the fused pixels, modelled without it.)

Sizes: ``size=(n, L)`` fused pixels and channels (``n`` a multiple of 6, ``L`` of 10); the
mosaic needs ``n >= 72`` (360") so every tile lies inside the field (checked). ``size=(24, 40)``
with ``tiles_small=True``-like geometry is what :func:`make_small` builds for tests and the
docs: a 24x24 field and two 3x3-pixel tiles of 20".
"""
from __future__ import annotations

import numpy as np
import xarray as xr
from scipy.special import ndtr

from . import scenes
from .observation import observation

__all__ = ["make_mosaic", "make_small", "tile_corners", "tile_masks"]

#: area of MOS1/MOS2 relative to pn, Gaussian line spreads (eV sigma; Fe K band) and PSF blur relative to pn (fused
#: px sigma)
MOS_AREA = (0.42, 0.44)
MOS_SIGMA_EV = (52.0, 55.0)
#: MOS line spreads (eV sigma) per band of :data:`xfusion.scenes.BANDS`: Fe K as above (pn 59 eV); at 0.5-1.4 keV
#: the same ratio to pn's 33 eV (MOS resolves lines better than pn at every energy)
MOS_SIGMA_EV_BY_BAND = {"fe_k": MOS_SIGMA_EV, "soft": (29.0, 31.0)}
MOS_REL_PSF_PX = (0.6, 0.75)
PN_AREA = 1000.0          # cm2, scenes' gaussian X area
RESOLVE_AREA = 250.0      # cm2, scenes' gaussian Y area
DET_PIXEL = 30.0          # arcsec
DET_N = 6                 # 6 x 6 array
CAL_PIXEL = 12            # masked in every tile (numbering: row * 6 + col)
#: array centres (arcsec, fused frame) and rolls (deg) of the 2x2 mosaic; about half an array overlaps
TILE_CENTERS = ((-48.0, -46.0), (47.0, -49.0), (-45.0, 50.0), (49.0, 47.0))
TILE_ROLLS = (0.0, 12.0, 27.0, 38.0)
SUPERSAMPLE = 10


def _detector_layout(n_side=DET_N, pitch=DET_PIXEL):
    """Pixel ids (row * n + col), detector-frame centres det_x, det_y (arcsec) of an n x n array."""
    col, row = np.meshgrid(np.arange(n_side), np.arange(n_side), indexing="xy")
    ids = (row * n_side + col).ravel()
    det_x = ((col.ravel() - (n_side - 1) / 2) * pitch).astype(np.float64)
    det_y = ((row.ravel() - (n_side - 1) / 2) * pitch).astype(np.float64)
    return ids, det_x, det_y


def tile_corners(center, roll, n_side=DET_N, pitch=DET_PIXEL):
    """Sky corners (4, 2) arcsec of a whole n x n array at ``center`` rotated by ``roll`` deg."""
    h = 0.5 * n_side * pitch
    a = np.deg2rad(roll)
    R = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    return np.array([[-h, -h], [h, -h], [h, h], [-h, h]]) @ R.T + np.asarray(center, float)


def _supersampled_footprint(xc, yc, pixel, center, roll, det_x, det_y, pitch, s=SUPERSAMPLE):
    """(P, M N) weights: the fraction of each fused pixel's points (s x s per pixel, midpoint rule) that fall
    on each detector pixel; independent of xfusion's exact polygon clipping."""
    M, N = xc.size, yc.size
    off = (np.arange(s) + 0.5) / s - 0.5
    px = (xc[:, None] + off[None, :] * pixel).ravel()        # (M s,)
    py = (yc[:, None] + off[None, :] * pixel).ravel()        # (N s,)
    gx, gy = np.meshgrid(px, py, indexing="ij")
    a = np.deg2rad(roll)
    dx, dy = gx - center[0], gy - center[1]
    u = np.cos(a) * dx + np.sin(a) * dy                       # detector frame: R^T (sky - centre)
    v = -np.sin(a) * dx + np.cos(a) * dy
    n_side = int(round(np.sqrt(det_x.size)))
    x0, y0 = det_x.min() - pitch / 2, det_y.min() - pitch / 2
    ci = np.floor((u - x0) / pitch).astype(int)
    ri = np.floor((v - y0) / pitch).astype(int)
    ok = (ci >= 0) & (ci < n_side) & (ri >= 0) & (ri < n_side)
    fused = (np.arange(M * s) // s)[:, None] * N + (np.arange(N * s) // s)[None, :]
    det = ri * n_side + ci
    W = np.zeros((det_x.size, M * N))
    np.add.at(W, (det[ok], fused[ok]), 1.0 / (s * s))
    return W


def _gauss_channel_matrix(e_fine, coarse_edges, sigma_kev):
    """(L, l) analytic Gaussian line spread at each fine centre integrated over each coarse channel."""
    return ndtr((coarse_edges[None, 1:] - e_fine[:, None]) / sigma_kev) - \
        ndtr((coarse_edges[None, :-1] - e_fine[:, None]) / sigma_kev)


def _gauss_kernel(sigma_kev, spacing):
    h = int(np.ceil(6 * sigma_kev / spacing))
    k = np.exp(-0.5 * (np.arange(-h, h + 1) * spacing / sigma_kev) ** 2)
    return k / k.sum()


def _psf_stamp(sigma_px, half=None):
    half = int(np.ceil(4 * sigma_px)) + 1 if half is None else half
    r = np.arange(-half, half + 1)
    g = np.exp(-0.5 * (r[:, None] ** 2 + r[None, :] ** 2) / sigma_px ** 2)
    return g / g.sum()


def _blur(cube, psf):
    from scipy.signal import fftconvolve  # here: scipy.signal costs ~1 s to import (xfusion.scenes._blur)

    return np.stack([fftconvolve(cube[:, :, k], psf, mode="same") for k in range(cube.shape[2])], axis=-1)


def make_mosaic(kind="cluster_core", seed=0, *, size=(72, 400), counts=(3e6, 2e6), tiles=4, mos=True, noise=True,
                psf_pixels=3.0, centers=TILE_CENTERS, rolls=TILE_ROLLS, det_pixel=DET_PIXEL, det_n=DET_N):
    """pn (+ MOS1 + MOS2) and ``tiles`` Resolve pointings of one sky; see the module docstring.

    Parameters
    ----------
    kind, seed : sky of :func:`xfusion.scenes.make` (``geometry="xmm_resolve"``).
    size : (n pixels, L fine channels) of the fused grid; n a multiple of 6, L of 10.
    counts : expected counts (pn, all Resolve tiles together); MOS1/MOS2 get their share of pn's by area. The
        tiles' exposure is normalized with the calibration pixel counted, which is then zeroed: the tiles deliver
        a few per cent less than ``counts[1]`` (truth attrs ``counts_y`` and ``expected_counts_tile<k>``).
    tiles : number of Resolve pointings, 1-4 (the first ``tiles`` of ``centers`` / ``rolls``).
    mos : include MOS1 and MOS2.
    noise : Poisson draws (False: expected counts).
    psf_pixels : Resolve PSF Gaussian sigma in fused pixels.
    centers, rolls, det_pixel, det_n : tile geometry (arcsec, deg, arcsec, pixels per side).

    Returns
    -------
    (observations, truth) : a dict of observation Datasets (pn first) and the truth Dataset.
    """
    if not 1 <= int(tiles) <= len(centers) or len(rolls) < int(tiles):
        raise ValueError(f"tiles must be 1..{min(len(centers), len(rolls))} (one per centre and roll); got {tiles!r}")
    try:
        c_pn, c_res = (float(c) for c in counts)
    except (TypeError, ValueError):
        raise ValueError(f"counts must be a pair (pn, all Resolve tiles) of expected counts; got {counts!r}") from None
    if not (np.isfinite(c_pn) and np.isfinite(c_res) and c_pn > 0 and c_res > 0):
        raise ValueError(f"counts must be positive and finite; got {counts!r}")
    pn, _, truth = scenes.make(kind, seed, counts=(c_pn, c_pn), psf_pixels=psf_pixels, response="gaussian",
                               geometry="xmm_resolve", size=size, noise=noise)
    pn = pn.assign_attrs(name="EPIC-pn")
    flux = truth["flux"].values.astype(np.float64)
    n = flux.shape[0]
    px = float(pn["x"].attrs["pixel_size"])
    xc, yc = pn["x"].values.astype(np.float64), pn["y"].values.astype(np.float64)
    fine = np.concatenate([truth["energy_lo"].values, truth["energy_hi"].values[-1:]]).astype(np.float64)
    coarse = np.concatenate([pn["energy_lo"].values, pn["energy_hi"].values[-1:]]).astype(np.float64)
    e = 0.5 * (fine[1:] + fine[:-1])
    t_pn = float(pn["exposure"].values)
    nrng = np.random.default_rng([int(seed), 77, 1])
    draw = (lambda lam: nrng.poisson(lam).astype(np.float32)) if noise else (lambda lam: lam.astype(np.float32))
    obs = {"pn": pn}
    expected = {"pn": c_pn}  # expected counts each input holds (truth attrs; session 30)
    if mos:
        # the kernel handed to xfusion is a piecewise-constant density (bins of ``spacing``): a Gaussian convolved
        # with that box; 1/8 of a fine channel keeps its extra width (spacing^2 / 12) below 1e-3 of sigma^2
        spacing = float(np.diff(fine)[0]) / 8
        for k in range(2):
            area = MOS_AREA[k] * PN_AREA
            sig = MOS_SIGMA_EV_BY_BAND[truth.attrs["band"]][k] * 1e-3
            psf = _psf_stamp(MOS_REL_PSF_PX[k])
            lam = _blur(flux * (t_pn * area), psf) @ _gauss_channel_matrix(e, coarse, sig)
            expected[f"mos{k + 1}"] = float(np.maximum(lam, 0).sum())
            obs[f"mos{k + 1}"] = observation(
                draw(np.maximum(lam, 0)), dims=("x", "y", "energy"), energy_edges=coarse, pixel_size=px,
                exposure=t_pn, effective_area=area, response=_gauss_kernel(sig, spacing), response_spacing=spacing,
                psf=psf, psf_pixel_size=px, name=f"EPIC-MOS{k + 1}")
    ids, det_x, det_y = _detector_layout(det_n, det_pixel)
    psf = _psf_stamp(psf_pixels)
    blurred = _blur(flux * RESOLVE_AREA, psf)                 # per second of exposure
    half_field = n * px / 2
    lam1 = []
    for k in range(int(tiles)):
        corners = tile_corners(centers[k], rolls[k], det_n, det_pixel)
        if np.abs(corners - [xc.mean(), yc.mean()]).max() > half_field:
            raise ValueError(f"tile {k + 1} (centre {centers[k]} arcsec, roll {rolls[k]} deg) reaches "
                             f"{np.abs(corners).max():.1f} arcsec from the centre but the field is +-{half_field:g}; "
                             "use a larger size (n pixels) or move the tile")
        W = _supersampled_footprint(xc, yc, px, centers[k], rolls[k], det_x, det_y, det_pixel)
        lam1.append(W @ blurred.reshape(n * n, -1))
    t_res = c_res / sum(float(lm.sum()) for lm in lam1)
    mask = np.ones((ids.size, fine.size - 1), bool)
    mask[ids == CAL_PIXEL] = False
    for k, lm in enumerate(lam1):
        cnt = draw(np.maximum(lm * t_res, 0))
        cnt[ids == CAL_PIXEL] = 0.0
        expected[f"tile{k + 1}"] = float(np.maximum(lm[ids != CAL_PIXEL] * t_res, 0).sum())
        obs[f"tile{k + 1}"] = observation(
            cnt, dims=("pixel", "energy"), energy_edges=fine, pixel_size=det_pixel, exposure=t_res,
            effective_area=RESOLVE_AREA, psf=psf, psf_pixel_size=px, det_x=det_x, det_y=det_y, roll=rolls[k],
            array_center=centers[k], mask=mask, name=f"Resolve tile {k + 1}")
    truth = truth.copy()
    truth.attrs.update({"mosaic_tiles": int(tiles), "tile_centers_arcsec": [list(map(float, c)) for c in
                                                                            centers[:int(tiles)]],
                        "tile_rolls_deg": [float(r) for r in rolls[:int(tiles)]], "resolve_exposure_s": t_res,
                        "mos": int(bool(mos)), "det_pixel": float(det_pixel), "det_n": int(det_n)})
    # scenes.make's counts_y was the counts of its own (discarded) Y observation, pn's: the tiles' here (session 30)
    truth.attrs.update({"counts_x": c_pn, "resolve_counts_requested": c_res,
                        "counts_y": float(sum(v for k, v in expected.items() if k.startswith("tile"))),
                        **{f"expected_counts_{k}": v for k, v in expected.items()}})
    return obs, truth


def make_small(seed=0, noise=True, kind="cluster_core"):
    """A tiny mosaic for tests and the docs (a fraction of a second): a 24x24 field of 5" pixels x 40 channels,
    pn + MOS1 + MOS2 and two 3x3 tiles of 20" pixels at different pointings and rolls (each sees part of the
    field); ``kind`` the sky of :func:`xfusion.scenes.make` (cluster_core: 6.2-7.0 keV; snr_shell,
    point_sources: 0.5-1.4 keV). Returns ``(observations, truth)`` like :func:`make_mosaic`."""
    return make_mosaic(kind, seed, size=(24, 40), counts=(2e5, 1e5), tiles=2, noise=noise,
                       psf_pixels=1.0, centers=((-17.0, -14.0), (16.0, 18.0)), rolls=(8.0, 31.0), det_pixel=20.0,
                       det_n=3)


def tile_masks(truth, grid_x, grid_y):
    """Boolean (tiles, M, N): fused pixels whose centre lies inside each tile of a scene's ``truth``."""
    out = []
    gx, gy = np.meshgrid(np.asarray(grid_x, float), np.asarray(grid_y, float), indexing="ij")
    n_side = truth.attrs.get("det_n", DET_N)
    for c, r in zip(truth.attrs["tile_centers_arcsec"], truth.attrs["tile_rolls_deg"]):
        a = np.deg2rad(r)
        dx, dy = gx - c[0], gy - c[1]
        u = np.cos(a) * dx + np.sin(a) * dy
        v = -np.sin(a) * dx + np.cos(a) * dy
        h = 0.5 * n_side * truth.attrs.get("det_pixel", DET_PIXEL)
        out.append((np.abs(u) < h) & (np.abs(v) < h))
    return xr.DataArray(np.stack(out), dims=("tile", "x", "y"))
