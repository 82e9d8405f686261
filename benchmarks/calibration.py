"""Are xfusion.uncertainty's error bars right?  Calibration, cost and parallel speed-up (issue 16).

Parts (``--part``, default all):

calib    For each scene kind (xfusion.scenes.make, size ``--size``): tune once on the scene's own noise
         draw (``fuse`` default, thinning), then for ``--real`` independent Poisson realizations of the
         scene's expected counts: fit with the tuned settings (``settings=``), run ``uncertainty`` with
         ``--rep`` replicas, and check the 68% intervals against the truth:
           voxels   |flux - truth| <= flux_std (also the replica 16-84% percentile interval and the
                    "basic" interval 2 flux - q84 .. 2 flux - q16);
           regions  the same for 4 quadrant spectra + the whole field;
           velocity line_map(..., replicas=) of the reference line over the bright half of the field
                    (true line flux >= its median), against line_map of the true cube (the same
                    measurement without noise) and against the physical truth map; pulls
                    (estimate - truth) / velocity_err, their standard deviation and |pull| <= 1 coverage.
cost     One default fit (tuning included) of a table1 scene at full size vs ``--cost-rep`` replicas
         (warm starts where the fit converged), serial.
cluster  ``--cl-rep`` replicas on a 1-worker and a 2-worker LocalCluster (1 thread each).
gammapy  A cluster-core scene (small size): fuse, ``--gp-rep`` replicas, the core's PHA with STAT_ERR fitted by
         gammapy (chi2, flux points) with a Gaussian line + constant; the truth's spectrum fitted the same way
         gives the reference centroid.

Run bounded: ``nice -n 10 timeout 3000 python benchmarks/calibration.py --part calib``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time

import numpy as np

import xfusion
from xfusion import analysis, scenes
from xfusion.uncertainty import _with_counts


def _quadrants(n):
    h = n // 2
    return {"q00": {"x": (0, h), "y": (0, h)}, "q01": {"x": (0, h), "y": (h, n)},
            "q10": {"x": (h, n), "y": (0, h)}, "q11": {"x": (h, n), "y": (h, n)}, "all": {"x": (0, n), "y": (0, n)}}


def _cover(est, lo, hi, truth):
    return float(np.mean((truth >= lo) & (truth <= hi)))


def calib(args):
    size = tuple(int(v) for v in args.size.split("x"))
    kinds = args.kinds.split(",")
    print(f"calibration: size {size[0]}x{size[0]}x{size[1]}, counts {args.counts:g} per instrument, "
          f"{args.real} realizations x {args.rep} replicas, method {args.method}", flush=True)
    summary = {}
    for kind in kinds:
        t_kind = time.perf_counter()
        x0, y0, truth = scenes.make(kind, seed=args.seed, counts=args.counts, size=size)
        xe, ye, _ = scenes.make(kind, seed=args.seed, counts=args.counts, size=size, noise=False)
        tuned = xfusion.fuse(x0, y0, progress=False)
        settings = xfusion.settings_of(tuned)
        tf = truth["flux"].transpose("x", "y", "energy").values.astype(np.float64)
        regions = _quadrants(size[0])
        largs = scenes.line_map_args(truth)
        if largs:
            lt = analysis.line_map(truth["flux"], **largs)
            tflux = truth["line_flux"].values
            lf = np.where(lt["valid"].values, tflux, np.nan)
            bright = lt["valid"].values & (tflux >= np.nanmedian(lf))
            vphys = truth["velocity"].values
        acc = {k: [] for k in ("vox_std", "vox_pct", "vox_basic", "vox_bc", "vox_infl", "reg_std", "reg_pct",
                               "reg_basic",
                               "vel_cov", "vel_cov_phys", "vel_cov_q")}
        pulls, pulls_phys, pulls_q, iters, warm, zbias, zstd = [], [], [], [], [], [], []
        fits, stds, vels, verrs = [], [], [], []
        for j in range(args.real):
            rng = np.random.default_rng([args.seed, scenes.KINDS.index(kind), 100 + j])
            xo = _with_counts(x0, rng.poisson(xe["counts"].values.astype(np.float64)).astype(np.float32))
            yo = _with_counts(y0, rng.poisson(ye["counts"].values.astype(np.float64)).astype(np.float32))
            r = xfusion.fuse(xo, yo, progress=False, settings=settings)
            u = xfusion.uncertainty(r, xo, yo, n=args.rep, seed=j, regions=regions, method=args.method)
            f = u["flux"].values.astype(np.float64)
            s = u["flux_std"].values.astype(np.float64)
            q16, q84 = (u["flux_quantile"].sel(quantile=q).values.astype(np.float64) for q in (0.16, 0.84))
            m = u["flux_replica_mean"].values.astype(np.float64)
            acc["vox_std"].append(_cover(f, f - s, f + s, tf))
            acc["vox_pct"].append(_cover(f, q16, q84, tf))
            acc["vox_basic"].append(_cover(f, 2 * f - q84, 2 * f - q16, tf))
            acc["vox_bc"].append(_cover(f, 2 * f - m - s, 2 * f - m + s, tf))
            si = np.sqrt(s ** 2 + (m - f) ** 2)
            acc["vox_infl"].append(_cover(f, f - si, f + si, tf))
            zbias.append(float(np.sqrt(np.mean((f - tf) ** 2))))
            zstd.append(float(np.sqrt(np.mean(s ** 2))))
            fits.append(f.astype(np.float32))
            stds.append(s.astype(np.float32))
            treg = np.stack([tf[mk].sum(axis=0) for mk in u["region_mask"].values])
            rf = u["region_spectrum"].values
            rs = u["region_std"].values
            rq16, rq84 = (u["region_quantile"].sel(quantile=q).values for q in (0.16, 0.84))
            acc["reg_std"].append(_cover(rf, rf - rs, rf + rs, treg))
            acc["reg_pct"].append(_cover(rf, rq16, rq84, treg))
            acc["reg_basic"].append(_cover(rf, 2 * rf - rq84, 2 * rf - rq16, treg))
            iters += list(u["replica_iterations"].values)
            warm += list(u["replica_warm"].values)
            if largs:
                lm = analysis.line_map(u["flux"], replicas=u["flux_replicas"], **largs)
                lq = analysis.line_map(u["flux"], replicas=u["flux_replicas"], error="quantile", **largs)
                v, e = lm["velocity"].values, lm["velocity_err"].values
                vels.append(np.where(bright, v, np.nan))
                verrs.append(np.where(bright, e, np.nan))
                use = bright & np.isfinite(v) & np.isfinite(e) & (e > 0)
                p = (v[use] - lt["velocity"].values[use]) / e[use]
                pulls += list(p)
                acc["vel_cov"].append(float(np.mean(np.abs(p) <= 1)) if p.size else np.nan)
                up = use & np.isfinite(vphys)
                pp = (v[up] - vphys[up]) / e[up]
                pulls_phys += list(pp)
                acc["vel_cov_phys"].append(float(np.mean(np.abs(pp) <= 1)) if pp.size else np.nan)
                eq = lq["velocity_err"].values
                uq = use & np.isfinite(eq) & (eq > 0)
                pq = (v[uq] - lt["velocity"].values[uq]) / eq[uq]
                pulls_q += list(pq)
                acc["vel_cov_q"].append(float(np.mean(np.abs(pq) <= 1)) if pq.size else np.nan)
        res = {k: (round(float(np.nanmean(v)), 3) if v else None) for k, v in acc.items()}
        # the noise part alone: replica std vs the spread of the fits over the independent realizations, and
        # coverage of the fits' mean over realizations (the estimator's expectation) by flux +- flux_std
        fits, stds = np.stack(fits), np.stack(stds)
        emp = fits.std(axis=0, ddof=1)
        res["noise_std_ratio"] = round(float(np.sqrt(np.mean(stds ** 2)) / np.sqrt(np.mean(emp ** 2))), 3)
        res["noise_cov_vox"] = round(float(np.mean(np.abs(fits - fits.mean(axis=0)) <= stds)), 3)
        res["bias_over_noise"] = round(float(np.sqrt(np.mean((fits.mean(axis=0) - tf) ** 2))
                                             / np.sqrt(np.mean(emp ** 2))), 2)
        if largs and vels:
            vels, verrs = np.stack(vels), np.stack(verrs)
            ve = np.nanstd(vels, axis=0, ddof=1)
            ok = np.isfinite(ve) & (np.sum(np.isfinite(vels), axis=0) > len(vels) // 2)
            res["vel_err_ratio"] = round(float(np.sqrt(np.nanmean(verrs[:, ok] ** 2))
                                               / np.sqrt(np.mean(ve[ok] ** 2))), 3)
            vm = np.nanmean(vels, axis=0)
            pn = (vels[:, ok] - vm[ok]) / verrs[:, ok]
            res["vel_noise_pull_std"] = round(float(np.nanstd(pn)), 3)
            res["vel_bias_over_noise"] = round(float(np.sqrt(np.mean((vm[ok] - lt["velocity"].values[ok]) ** 2))
                                                     / np.sqrt(np.mean(ve[ok] ** 2))), 2)
        res.update({"tuned": {k: settings[k] for k in settings if k in ("k", "n_scales_1d", "null_space",
                                                                         "max_iter")},
                    "replica_iterations_mean": round(float(np.mean(iters)), 1), "warm_fraction": float(np.mean(warm)),
                    "flux_rmse_over_rms_std": round(float(np.mean(zbias) / np.mean(zstd)), 2),
                    "minutes": round((time.perf_counter() - t_kind) / 60, 1)})
        if largs:
            for name, pl in (("vel_pull", pulls), ("vel_pull_phys", pulls_phys), ("vel_pull_q", pulls_q)):
                pl = np.asarray(pl)
                res[name + "_std"] = round(float(np.std(pl)), 3) if pl.size else None
                res[name + "_mean"] = round(float(np.mean(pl)), 3) if pl.size else None
                res[name + "_n"] = int(pl.size)
        summary[kind] = res
        print(f"{kind}: {json.dumps(res)}", flush=True)
    return summary


def cost(args):
    x, y, truth = scenes.make(args.cost_kind, seed=args.seed, counts=args.cost_counts)
    print(f"cost: {args.cost_kind} {truth.attrs['size']} counts {args.cost_counts:g}", flush=True)
    t0 = time.perf_counter()
    r = xfusion.fuse(x, y, progress=False)
    t_fit = time.perf_counter() - t0
    print(f"one default fit (thinning included): {t_fit:.1f} s, {r.attrs['iterations']} iterations, converged "
          f"{r.attrs['converged']}, loop {r.attrs['loop_elapsed_s']:.1f} s", flush=True)
    for warm in ([args.cost_warm] if args.cost_warm != "both" else ["auto", False]):
        warm = {"auto": "auto", "False": False, False: False, "True": True}[warm]
        t0 = time.perf_counter()
        u = xfusion.uncertainty(r, x, y, n=args.cost_rep, warm=warm, progress=True)
        t_rep = time.perf_counter() - t0
        print(f"{args.cost_rep} replicas (warm={u.attrs['warm']}): {t_rep:.1f} s = {t_rep / t_fit:.2f} x one fit; "
              f"iterations per replica {u['replica_iterations'].values.tolist()}; extrapolated to 20 replicas: "
              f"{t_rep * 20 / args.cost_rep / t_fit:.2f} x", flush=True)


def cluster(args):
    from distributed import Client, LocalCluster

    x, y, truth = scenes.make("cluster_core", seed=args.seed, counts=args.counts, size="small")
    r = xfusion.fuse(x, y, progress=False)
    print(f"cluster: small scene {truth.attrs['size']}, {args.cl_rep} replicas", flush=True)
    times = {}
    for workers in (1, 2):
        with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0",
                          memory_limit="1.5GB") as lc, Client(lc) as client:
            client.run(lambda: None)
            with tempfile.TemporaryDirectory() as tmp:
                t0 = time.perf_counter()
                u = xfusion.uncertainty(r, x, y, n=args.cl_rep, client=client, store=os.path.join(tmp, "rep"))
                times[workers] = time.perf_counter() - t0
        print(f"{workers} worker(s): {times[workers]:.1f} s (replica iterations "
              f"{u['replica_iterations'].values.tolist()})", flush=True)
    print(f"speed-up 2 workers vs 1: {times[1] / times[2]:.2f}x", flush=True)


def _gammapy_line_fit(pha_path, band, mean0, sigma0):
    """chi2 fit (gammapy, flux points with the PHA's STAT_ERR) of a Gaussian line + constant in ``band`` keV:
    (centre, its error, sigma) in keV."""
    import astropy.units as u
    from astropy.io import fits
    from astropy.table import Table
    from gammapy.datasets import FluxPointsDataset
    from gammapy.estimators import FluxPoints
    from gammapy.modeling import Fit
    from gammapy.modeling.models import ConstantSpectralModel, GaussianSpectralModel, SkyModel

    with fits.open(pha_path) as h:
        sp, eb, hdr = h["SPECTRUM"].data, h["EBOUNDS"].data, h["SPECTRUM"].header
        scale = hdr["EXPOSURE"] * 1.0  # flat ARF of 1 cm2 (written below)
        data, err = np.asarray(sp["COUNTS"], float) / scale, np.asarray(sp["STAT_ERR"], float) / scale
        lo, hi = np.asarray(eb["E_MIN"], float), np.asarray(eb["E_MAX"], float)
    sel = (lo >= band[0]) & (hi <= band[1])
    de = hi - lo
    t = Table()
    t["e_ref"] = 0.5 * (lo + hi)[sel] * u.keV
    t["e_min"], t["e_max"] = lo[sel] * u.keV, hi[sel] * u.keV
    t["dnde"] = (data / de)[sel] * u.Unit("cm-2 s-1 keV-1")
    t["dnde_err"] = (err / de)[sel] * u.Unit("cm-2 s-1 keV-1")
    t.meta["SED_TYPE"] = "dnde"
    line = GaussianSpectralModel(amplitude=float(np.sum(data[sel])) * u.Unit("cm-2 s-1"), mean=mean0 * u.keV,
                                 sigma=sigma0 * u.keV)
    cont = ConstantSpectralModel(const=float(np.min(t["dnde"].value)) * u.Unit("cm-2 s-1 keV-1"))
    ds = FluxPointsDataset(models=SkyModel(spectral_model=line + cont, name="src"),
                           data=FluxPoints.from_table(t, sed_type="dnde"))
    res = Fit().run(datasets=[ds])
    return line.mean.value, line.mean.error, line.sigma.value, bool(res.success), ds.stat_sum() / max(sel.sum() - 4, 1)


def gammapy_check(args):
    """scene -> fuse -> uncertainty -> region PHA with STAT_ERR -> gammapy chi2 fit; the truth's spectrum fitted the
    same way gives the reference centroid."""
    import xarray as xr

    from xfusion.io.export import write_pha_from_result

    pulls = []
    for seed in range(args.seed, args.seed + args.gp_seeds):
        x, y, truth = scenes.make("cluster_core", seed=seed, counts=args.gp_counts, size="small")
        r = xfusion.fuse(x, y, progress=False)
        n = x.sizes["x"]
        h = args.gp_half
        region = {"x": (n // 2 - h, n // 2 + h), "y": (n // 2 - h, n // 2 + h)}
        u = xfusion.uncertainty(r, x, y, n=args.gp_rep, regions={"core": region})
        box = (slice(*region["x"]), slice(*region["y"]))
        e0 = truth.attrs["line_energy_kev"]
        band = (e0 - 0.009, e0 + 0.012)  # Fe XXV w alone (x is 18 eV below)
        with tempfile.TemporaryDirectory() as tmp:
            out = {}
            for name, cube in (("fused", r), ("truth", xr.Dataset({"flux": truth["flux"]}))):
                pha, _, _ = write_pha_from_result(cube, box, os.path.join(tmp, name), exposure=1e9, area=1.0,
                                                  uncertainty=u)
                out[name] = _gammapy_line_fit(pha, band, e0, 0.003)
        (m, e, s, ok, chi), (mt, _, st, _, _) = out["fused"], out["truth"]
        pulls.append((m - mt) / e)
        # the replicas' own spread of the line centroid (moments in the same band, continuum from its edges):
        # what the diagonal chi2 error should match if the channels were independent
        lm_args = {"window": (band[0] + 0.003, band[1] - 0.003),
                   "continuum": [(band[0], band[0] + 0.003), (band[1] - 0.003, band[1])]}
        reg = u["region_replicas"].isel(region=0).values
        rep_cube = reg[:, None, None, :]
        lmr = analysis.line_map(u["region_spectrum"].isel(region=0).values[None, None, :], e0,
                                energy_edges=np.append(u["energy_lo"].values, u["energy_hi"].values[-1]),
                                replicas=rep_cube, **lm_args)
        ve = float(lmr["velocity_err"].values[0, 0])
        print(f"seed {seed}: replica spread of the centroid (moments, same band): {ve:.2f} km/s = "
              f"{ve / analysis.C_KMS * e0 * 1e3:.3f} eV; the diagonal-chi2 gammapy error: {e * 1e3:.3f} eV", flush=True)
        print(f"seed {seed}: gammapy chi2 fit of the fused core spectrum (Fe XXV w, {band[0]:.4f}-{band[1]:.4f} keV; "
              f"STAT_ERR from {args.gp_rep} replicas, {2 * h}x{2 * h} px, {args.gp_counts:g} counts): centre {m:.5f} +- {e:.5f} keV, sigma {s:.4f} keV, "
              f"chi2/dof {chi:.2f}, success {ok}; the truth's spectrum fitted the same way: {mt:.5f} keV (sigma "
              f"{st:.4f}); difference {(m - mt) * 1e3:+.2f} eV = {(m - mt) / e:+.2f} sigma "
              f"({'within' if abs(m - mt) <= e else 'NOT within'} its error)", flush=True)
    print(f"gammapy centroid pulls: {np.round(pulls, 2).tolist()}", flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", default="calib,cost,cluster,gammapy")
    ap.add_argument("--size", default="12x240", help="fused pixels x channels of the calibration scenes")
    ap.add_argument("--kinds", default=",".join(scenes.KINDS))
    ap.add_argument("--counts", type=float, default=3e5)
    ap.add_argument("--real", type=int, default=20)
    ap.add_argument("--rep", type=int, default=10)
    ap.add_argument("--method", default="bootstrap")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--cost-kind", default="snr_shell")
    ap.add_argument("--cost-counts", type=float, default=3e6)
    ap.add_argument("--cost-rep", type=int, default=20)
    ap.add_argument("--cost-warm", default="auto", help="auto, False or both")
    ap.add_argument("--cl-rep", type=int, default=4)
    ap.add_argument("--gp-rep", type=int, default=10)
    ap.add_argument("--gp-counts", type=float, default=1e6)
    ap.add_argument("--gp-seeds", type=int, default=3)
    ap.add_argument("--gp-half", type=int, default=4, help="half-size of the core region (fused pixels)")
    args = ap.parse_args(argv)
    print(f"machine: {platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"python {sys.version.split()[0]}, load {os.getloadavg()}", flush=True)
    parts = args.part.split(",")
    if "calib" in parts:
        calib(args)
    if "cost" in parts:
        cost(args)
    if "cluster" in parts:
        cluster(args)
    if "gammapy" in parts:
        gammapy_check(args)


if __name__ == "__main__":
    main()
