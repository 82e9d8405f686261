"""JWST toy: SyFu as published (LS + PCA + Sobolev + CG, xfusion.syfu) beside xfusion's choice (xfusion.jwst).

Measures, on ``xfusion.jwst.make_toy`` (48 x 48 fused pixels of 0.033", 128 channels over 1.66-2.30 um,
five NIRCam filters, NIRSpec 16 x 16 spaxels):

* NMSE (dB, higher better) and aSAM (rad) against the target -- the scene at NIRCam's resolution
  (``truth.flux``); for SyFu both its raw estimate of the unblurred scene X and ``W_m X`` (X at NIRCam's
  resolution, the comparable cube) are scored, and NMSE of X against the unblurred scene;
* consistency PSNR/SSIM per filter image (fused cube integrated over the cross-calibrated throughputs vs the
  imager), the mean-spectrum relative error vs the IFU (SyFu's Appendix D checks, xfusion.metrics);
* held-out-filter PSNR: F187N and F212N left out of the fusion, predicted from the fused cube (xfusion: with the
  default mu and with ``mu="auto"``, chosen by Gaussian data fission on the three-filter fusion -- no use of the
  held-out images);
* wall times;
* with ``--fission``: the Sobolev weight mu chosen without a truth by Gaussian data fission
  (:func:`xfusion.gaussian_fission.tune` over ``MU_CANDIDATES``) beside the hindsight-best one (NMSE of every candidate).

xfusion runs through the general API (``xfusion.fuse`` on the JWST Datasets, via ``xfusion.jwst.fuse_jwst``).

Run: ``python benchmarks/jwst.py [--seeds 0 1] [--size 48] [--channels 128] [--fission]``.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from xfusion import gaussian_fission as gaussian, jwst, metrics
from xfusion.syfu import syfu


def _kernels(fwhm, pixel):
    ks = [jwst.gaussian_kernel(f, pixel) for f in fwhm]
    n = max(k.shape[0] for k in ks)
    return np.stack([np.pad(k, (n - k.shape[0]) // 2) for k in ks])


def run_syfu(imager, ifu, filters, **kw):
    edges = jwst._edges(ifu)
    lam = 0.5 * (edges[1:] + edges[:-1])
    pixel = float(imager["x"].attrs["pixel_size"])
    ym = imager.sel(filter=filters)["data"].values
    yh = ifu["data"].values
    _, R = jwst.cross_calibrate(ym, yh, jwst.filter_response(filters, edges))
    return syfu(ym, yh, R, _kernels(jwst.nircam_fwhm(lam), pixel), _kernels(jwst.nirspec_fwhm(lam), pixel), **kw), R


def _consistency(imager, ifu, flux, filters):
    edges = jwst._edges(ifu)
    ym = imager.sel(filter=filters)["data"].values
    _, R = jwst.cross_calibrate(ym, ifu["data"].values, jwst.filter_response(filters, edges))
    return metrics.jwst_validation(ym, ifu["data"].values, flux, R, filters=filters, factor=jwst.FACTOR)


def fission(imager, ifu, target, rank):
    """mu chosen by data fission vs the hindsight-best candidate (NMSE of each fit on all data)."""
    r = rank or min(jwst.DEFAULT_RANK, imager.sizes["filter"] + 1)
    t = time.perf_counter()
    grid = [{"rank": r, "mu": m} for m in gaussian.MU_CANDIDATES]
    best, scores = gaussian.tune(imager, ifu, grid, regularization="lowrank_sobolev", max_iter=300, tol=1e-6,
                                 dtype="float64")
    tt = time.perf_counter() - t
    nmse = {m: metrics.nmse(target, jwst.fuse_jwst(imager, ifu, mu=m, rank=r)["flux"].values)
            for m in gaussian.MU_CANDIDATES}
    return dict(chosen=best["mu"], nmse_chosen=nmse[best["mu"]], hindsight=max(nmse, key=nmse.get),
                nmse_hindsight=max(nmse.values()), time=tt, nmse_by_mu={k: round(v, 2) for k, v in nmse.items()})


def one(seed, size, channels, mu, rank, syfu_iter):
    imager, ifu, truth = jwst.make_toy(seed=seed, size=size, n_channels=channels)
    target, scene = truth["flux"].values, truth["scene"].values
    names = [str(f) for f in imager["filter"].values]
    held = ["F187N", "F212N"]
    keep = [f for f in names if f not in held]
    rows = {}
    # xfusion
    t = time.perf_counter()
    res = jwst.fuse_jwst(imager, ifu, mu=mu, rank=rank)
    tx = time.perf_counter() - t
    z = res["flux"].values.astype(np.float64)
    v = _consistency(imager, ifu, z, names)
    _, ho = jwst.held_out_check(imager, ifu, held, mu=mu, rank=rank)
    t = time.perf_counter()
    ho_res, ho_auto = jwst.held_out_check(imager, ifu, held, mu="auto", rank=rank)  # mu by data fission (3 filters)
    t_auto = time.perf_counter() - t
    rows["xfusion"] = dict(nmse=metrics.nmse(target, z), sam=metrics.asam(target, z), time=tx, it=res.attrs["n_iter"],
                           psnr={f: v["filters"][f]["psnr_db"] for f in names},
                           ssim={f: v["filters"][f]["ssim"] for f in names},
                           spec=v["mean_spectrum_max_rel_error"], held={f: ho[f]["psnr_db"] for f in held},
                           cal=dict(zip(names, np.round(res["cross_calibration"].values, 4))),
                           held_auto={f: ho_auto[f]["psnr_db"] for f in held},
                           held_auto_mu=ho_res.attrs["mu"], held_auto_time=t_auto)
    # SyFu, automatic tuning (their Appendix B) and 1000 CG iterations
    for label, kw in (("syfu_auto", {}), ("syfu_k3", {"k": 3}), ("syfu_k4", {"k": 4})):
        t = time.perf_counter()
        out, _ = run_syfu(imager, ifu, names, n_iter=syfu_iter, **kw)
        ts = time.perf_counter() - t
        zs = out["at_imager_resolution"]
        v = _consistency(imager, ifu, zs, names)
        ho_out, _ = run_syfu(imager, ifu, keep, n_iter=syfu_iter, **kw)
        edges = jwst._edges(ifu)
        yh = ifu["data"].values
        ymh = imager.sel(filter=held)["data"].values
        _, Rh = jwst.cross_calibrate(ymh, yh, jwst.filter_response(held, edges))
        pred = ho_out["at_imager_resolution"] @ Rh
        rows[label] = dict(nmse=metrics.nmse(target, zs), sam=metrics.asam(target, zs), time=ts, it=out["n_iter"],
                           nmse_raw_vs_target=metrics.nmse(target, out["scene"]),
                           nmse_raw_vs_scene=metrics.nmse(scene, out["scene"]),
                           psnr={f: v["filters"][f]["psnr_db"] for f in names},
                           ssim={f: v["filters"][f]["ssim"] for f in names},
                           spec=v["mean_spectrum_max_rel_error"],
                           held={f: metrics.psnr(ymh[..., i], pred[..., i]) for i, f in enumerate(held)},
                           params=dict(k=out["k"], mu=round(out["mu"], 5), gamma=round(out["gamma"], 4)))
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--size", type=int, default=48)
    ap.add_argument("--channels", type=int, default=128)
    ap.add_argument("--mu", type=float, default=jwst.DEFAULT_MU)
    ap.add_argument("--rank", type=int, default=None, help="default: min(5, filters + 1)")
    ap.add_argument("--syfu-iter", type=int, default=1000)
    ap.add_argument("--fission", action="store_true", help="also choose mu by Gaussian data fission")
    a = ap.parse_args()
    for seed in a.seeds:
        rows = one(seed, a.size, a.channels, a.mu, a.rank, a.syfu_iter)
        print(f"== seed {seed}: {a.size}x{a.size} px, {a.channels} channels")
        if a.fission:
            imager, ifu, truth = jwst.make_toy(seed=seed, size=a.size, n_channels=a.channels)
            f = fission(imager, ifu, truth["flux"].values, a.rank)
            print(f"fission   mu chosen {f['chosen']} (NMSE {f['nmse_chosen']:.2f} dB, {f['time']:.1f} s) vs "
                  f"hindsight-best {f['hindsight']} ({f['nmse_hindsight']:.2f} dB); NMSE by mu {f['nmse_by_mu']}")
        for name, r in rows.items():
            extra = {k: r[k] for k in ("nmse_raw_vs_target", "nmse_raw_vs_scene", "params", "cal") if k in r}
            print(f"{name:10s} NMSE {r['nmse']:6.2f} dB  aSAM {r['sam']:.4f} rad  time {r['time']:6.2f} s  "
                  f"iter {r['it']}  mean-spectrum max rel err {r['spec']:.4f}")
            print("           PSNR " + " ".join(f"{f} {p:5.2f}" for f, p in r["psnr"].items()))
            print("           SSIM " + " ".join(f"{f} {p:5.3f}" for f, p in r["ssim"].items()))
            print("           held-out PSNR " + " ".join(f"{f} {p:5.2f}" for f, p in r["held"].items()))
            if "held_auto" in r:
                print(f"           held-out PSNR, mu by fission on the 3-filter fusion (mu={r['held_auto_mu']:g}, "
                      f"{r['held_auto_time']:.1f} s) " + " ".join(f"{f} {p:5.2f}" for f, p in r["held_auto"].items()))
            if extra:
                print(f"           {extra}")


if __name__ == "__main__":
    main()
