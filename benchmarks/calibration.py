"""Are xfusion.uncertainty's error bars right?  Calibration, cost and parallel speed-up (issue 16).

Parts (``--part``, default all):

calib    For each scene kind (xfusion.scenes.make, size ``--size``, scene seed ``--seed``: 7 was used to choose
         the method, 500007 is held out): tune once on the scene's own noise draw (``fuse`` default, thinning),
         then for ``--real`` independent Poisson realizations of the scene's expected counts: fit with the tuned
         settings (``settings=``), run ``uncertainty`` with ``--rep`` replicas (``--bias-aware``: also the
         bias-aware part), and check 68% intervals against the truth, per level and variant:
           levels   vox (every voxel), reg (4 quadrant spectra + the whole field), vel (velocity of the
                    reference line over the bright half of the field -- true line flux >= its median --
                    against line_map of the true cube; pulls (estimate - truth) / error: their std);
           variants noise (flux +- flux_std), bc (2 flux - replica mean +- std), infl (flux +- sqrt(std^2 +
                    (mean - flux)^2)), aware (flux_lo..flux_hi: the ML refit +- t std; ``--ml-iter K``: K RL
                    iterations instead of ML_SETTINGS'); ``--weak JSON``: the same from a refit with those
                    options (weak_*).
         Also the replica std / real scatter of the fits over realizations (tuned and ML), the bias / noise.
cost     One default fit (tuning included) of a table1 scene at full size vs ``--cost-rep`` replicas
         (warm starts where the fit converged; ``--cost-cap``: the replicas' max_iter), serial; the time of
         20 replicas (1 control + 19 capped) estimated from the measured ones.
cluster  ``--cl-rep`` replicas on a 1-worker and a 2-worker LocalCluster (1 thread each; xfusion imported on the
         workers before the clock starts).
gammapy  Cluster-core scenes (small size, seeds ``--seed``...): fuse, ``uncertainty(bias_aware=True)`` with
         ``--gp-rep`` replicas, the core's PHA with STAT_ERR fitted by gammapy (chi2, flux points) with a
         Gaussian line + constant, for the tuned cube (noise-only errors) and the bias-aware view; the truth's
         spectrum fitted the same way (same model, band, STAT_ERR weights and starts; the lowest chi2 of 5 starts,
         because a double line has several minima) gives the reference centroid; pull = difference / (t x the
         fit's error), t the Student factor of the replicas.

Run bounded: ``nice -n 15 timeout 3000 python benchmarks/calibration.py --part calib``.
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
from xfusion.uncertainty import _with_counts, bias_aware_view


def _quadrants(n):
    h = n // 2
    return {"q00": {"x": (0, h), "y": (0, h)}, "q01": {"x": (0, h), "y": (h, n)},
            "q10": {"x": (h, n), "y": (0, h)}, "q11": {"x": (h, n), "y": (h, n)}, "all": {"x": (0, n), "y": (0, n)}}


def _cover(est, lo, hi, truth):
    return float(np.mean((truth >= lo) & (truth <= hi)))


def _intervals(u, largs, bias_aware):
    """68% intervals of one uncertainty Dataset at three levels: voxels (x, y, energy), region spectra
    (region, energy), velocity pixels (x, y): {variant: (centre, half-width)} per level. Variants: "noise"
    (flux +- flux_std), "bc" (bootstrap bias-corrected: 2 flux - replica mean +- std), "infl" (flux +- sqrt(std^2 +
    bias^2)); with ``bias_aware`` also xfusion's own bias-aware interval (flux_lo/flux_hi...)."""
    f = u["flux"].values.astype(np.float64)
    s = u["flux_std"].values.astype(np.float64)
    m = u["flux_replica_mean"].values.astype(np.float64)
    rf = u["region_spectrum"].values.astype(np.float64)
    rs = u["region_std"].values.astype(np.float64)
    rm = u["region_replicas"].values.astype(np.float64).mean(axis=0)
    out = {"vox": {"noise": (f, s), "bc": (2 * f - m, s), "infl": (f, np.sqrt(s ** 2 + (m - f) ** 2))},
           "reg": {"noise": (rf, rs), "bc": (2 * rf - rm, rs), "infl": (rf, np.sqrt(rs ** 2 + (rm - rf) ** 2))}}
    if bias_aware and "flux_lo" in u:
        lo, hi = u["flux_lo"].values.astype(np.float64), u["flux_hi"].values.astype(np.float64)
        out["vox"]["aware"] = (0.5 * (lo + hi), 0.5 * (hi - lo))
        lo, hi = u["region_lo"].values.astype(np.float64), u["region_hi"].values.astype(np.float64)
        out["reg"]["aware"] = (0.5 * (lo + hi), 0.5 * (hi - lo))
    if largs:
        lm = analysis.line_map(u["flux"], replicas=u["flux_replicas"], **largs)
        v, e, vm = (lm[k].values.astype(np.float64) for k in ("velocity", "velocity_err", "velocity_replica_mean"))
        out["vel"] = {"noise": (v, e), "bc": (2 * v - vm, e), "infl": (v, np.sqrt(e ** 2 + (vm - v) ** 2))}
        if bias_aware and "flux_lo" in u:
            la = analysis.line_map_errors(bias_aware_view(u), **largs)
            out["vel"]["aware"] = (la["velocity"].values.astype(np.float64),
                                   u.attrs["interval_factor"] * la["velocity_err"].values.astype(np.float64))
    return out


def _bias_aware(args, on):
    """``bias_aware=`` of uncertainty(): False, True (ML_SETTINGS) or ``{"max_iter": --ml-iter}``."""
    return {"max_iter": args.ml_iter} if on and args.ml_iter else bool(on)


def calib(args):
    """Coverage of the truth by the 68% intervals (see the module docstring), per scene kind and variant."""
    size = tuple(int(v) for v in args.size.split("x"))
    kinds = args.kinds.split(",")
    weak = json.loads(args.weak) if args.weak else None
    print(f"calibration: size {size[0]}x{size[0]}x{size[1]}, counts {args.counts:g} per instrument, "
          f"{args.real} realizations x {args.rep} replicas, method {args.method}, scene seed {args.seed}, "
          f"bias-aware {_bias_aware(args, args.bias_aware)}, weak {weak}; load {os.getloadavg()}", flush=True)
    summary = {}
    for kind in kinds:
        t_kind = time.perf_counter()
        x0, y0, truth = scenes.make(kind, seed=args.seed, counts=args.counts, size=size)
        xe, ye, _ = scenes.make(kind, seed=args.seed, counts=args.counts, size=size, noise=False)
        settings = xfusion.settings_of(xfusion.fuse(x0, y0, progress=False))
        tf = truth["flux"].transpose("x", "y", "energy").values.astype(np.float64)
        regions = _quadrants(size[0])
        largs = scenes.line_map_args(truth)
        bright = None
        if largs:
            lt = analysis.line_map(truth["flux"], **largs)
            tflux = truth["line_flux"].values
            bright = lt["valid"].values & (tflux >= np.nanmedian(np.where(lt["valid"].values, tflux, np.nan)))
            tv = lt["velocity"].values
        cover, pulls, fits, stds, vels, verrs, iters, mlfits, mlstds = {}, {}, [], [], [], [], [], [], []
        for j in range(args.real):
            rng = np.random.default_rng([args.seed, scenes.KINDS.index(kind), 100 + j])
            xo = _with_counts(x0, rng.poisson(xe["counts"].values.astype(np.float64)).astype(np.float32))
            yo = _with_counts(y0, rng.poisson(ye["counts"].values.astype(np.float64)).astype(np.float32))
            r = xfusion.fuse(xo, yo, progress=False, settings=settings)
            u = xfusion.uncertainty(r, xo, yo, n=args.rep, seed=j, regions=regions, method=args.method,
                                    bias_aware=_bias_aware(args, args.bias_aware))
            treg = np.stack([tf[mk].sum(axis=0) for mk in u["region_mask"].values])
            sets = {"": _intervals(u, largs, bool(args.bias_aware))}
            if weak:
                rw = xfusion.fuse(xo, yo, progress=False, settings=settings, **weak)
                uw = xfusion.uncertainty(rw, xo, yo, n=args.rep, seed=j, regions=regions, method=args.method)
                sets["weak_"] = _intervals(uw, largs, False)
            for pre, iv in sets.items():
                for level, truth_l in (("vox", tf), ("reg", treg), ("vel", None)):
                    for var, (c, h) in iv.get(level, {}).items():
                        key = f"{level}_{pre}{var}"
                        if level == "vel":
                            use = bright & np.isfinite(c) & np.isfinite(h) & (h > 0)
                            p = (c[use] - tv[use]) / h[use]
                            pulls.setdefault(key, []).extend(p.tolist())
                            cover.setdefault(key, []).append(float(np.mean(np.abs(p) <= 1)) if p.size else np.nan)
                        else:
                            cover.setdefault(key, []).append(_cover(c, c - h, c + h, truth_l))
            if args.bias_aware:
                mlfits.append(u["ml_flux"].values.astype(np.float32))
                mlstds.append(u["ml_flux_std"].values.astype(np.float32))
            f, sd = sets[""]["vox"]["noise"]
            fits.append(f.astype(np.float32))
            stds.append(sd.astype(np.float32))
            iters += list(u["replica_iterations"].values)
            if largs:
                v, e = sets[""]["vel"]["noise"]
                vels.append(np.where(bright, v, np.nan))
                verrs.append(np.where(bright, e, np.nan))
        res = {k: round(float(np.nanmean(v)), 3) for k, v in cover.items()}
        res.update({k.replace("vel_", "vel_pull_std_"): round(float(np.std(v)), 2) for k, v in pulls.items() if v})
        # the noise part alone: replica std vs the spread of the fits over the independent realizations
        fits, stds = np.stack(fits), np.stack(stds)
        emp = fits.std(axis=0, ddof=1)
        res["noise_std_ratio"] = round(float(np.sqrt(np.mean(stds ** 2)) / np.sqrt(np.mean(emp ** 2))), 3)
        res["noise_cov_vox"] = round(float(np.mean(np.abs(fits - fits.mean(axis=0)) <= stds)), 3)
        res["bias_over_noise"] = round(float(np.sqrt(np.mean((fits.mean(axis=0) - tf) ** 2))
                                             / np.sqrt(np.mean(emp ** 2))), 2)
        if mlfits:  # the ML replicas' spread vs the real scatter of the ML fits, and the ML bias
            mlfits, mlstds = np.stack(mlfits), np.stack(mlstds)
            memp = mlfits.std(axis=0, ddof=1)
            res["ml_noise_std_ratio"] = round(float(np.sqrt(np.mean(mlstds ** 2)) / np.sqrt(np.mean(memp ** 2))), 3)
            res["ml_bias_over_noise"] = round(float(np.sqrt(np.mean((mlfits.mean(axis=0) - tf) ** 2))
                                                    / np.sqrt(np.mean(memp ** 2))), 2)
        if largs and vels:
            vels, verrs = np.stack(vels), np.stack(verrs)
            ok = (np.sum(np.isfinite(vels), axis=0) > len(vels) // 2)
            ve = np.nanstd(vels[:, ok], axis=0, ddof=1)
            res["vel_err_ratio"] = round(float(np.sqrt(np.nanmean(verrs[:, ok] ** 2)) / np.sqrt(np.mean(ve ** 2))), 3)
            res["vel_noise_pull_std"] = round(float(np.nanstd((vels[:, ok] - np.nanmean(vels[:, ok], axis=0))
                                                              / verrs[:, ok])), 3)
        res.update({"tuned": {k: settings[k] for k in settings if k in ("k", "n_scales_1d", "null_space",
                                                                         "max_iter")},
                    "replica_iterations_mean": round(float(np.mean(iters)), 1),
                    "minutes": round((time.perf_counter() - t_kind) / 60, 1)})
        summary[kind] = res
        print(f"{kind}: {json.dumps(res)}", flush=True)
    return summary


def cost(args):
    x, y, truth = scenes.make(args.cost_kind, seed=args.seed, counts=args.cost_counts)
    print(f"cost: {args.cost_kind} {truth.attrs['size']} counts {args.cost_counts:g}; load {os.getloadavg()}",
          flush=True)
    t0 = time.perf_counter()
    r = xfusion.fuse(x, y, progress=False)
    t_fit = time.perf_counter() - t0
    print(f"one default fit (thinning included): {t_fit:.1f} s, {r.attrs['iterations']} iterations, converged "
          f"{r.attrs['converged']}, loop {r.attrs['loop_elapsed_s']:.1f} s; load {os.getloadavg()}", flush=True)
    caps = {"auto": "auto", "None": None}
    for cap in args.cost_cap.split(","):
        cap = caps.get(cap, cap if cap in caps else int(cap) if cap.isdigit() else cap)
        t0 = time.perf_counter()
        u = xfusion.uncertainty(r, x, y, n=args.cost_rep, max_iter=cap, progress=True)
        t_rep = time.perf_counter() - t0
        el, capped = u["replica_elapsed_s"].values, u["replica_capped"].values
        over = t_rep - el.sum()  # statistics, store, summary
        t20 = (el[~capped].mean() * (1 if capped.any() else 20) + (19 * el[capped].mean() if capped.any() else 0)
               + over * 20 / args.cost_rep)
        print(f"replica times: control/uncapped {el[~capped].round(1).tolist()} s, capped mean "
              f"{el[capped].mean() if capped.any() else float('nan'):.1f} s, summary {over:.1f} s; 20 replicas "
              f"(1 control + 19 capped) estimated {t20:.1f} s = {t20 / t_fit:.2f} x one fit", flush=True)
        print(f"{args.cost_rep} replicas (warm={u.attrs['warm']}, max_iter={cap!r}, control_ratio "
              f"{u.attrs['control_ratio']:.3f}): {t_rep:.1f} s = {t_rep / t_fit:.2f} x one fit; iterations per "
              f"replica {u['replica_iterations'].values.tolist()}; extrapolated to 20 replicas: "
              f"{t_rep * 20 / args.cost_rep / t_fit:.2f} x; load {os.getloadavg()}", flush=True)


def cluster(args):
    from distributed import Client, LocalCluster

    x, y, truth = scenes.make("cluster_core", seed=args.seed, counts=args.counts, size="small")
    r = xfusion.fuse(x, y, progress=False)
    print(f"cluster: small scene {truth.attrs['size']}, {args.cl_rep} replicas", flush=True)
    times = {}
    for workers in (1, 2):
        with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0",
                          memory_limit="1.5GB") as lc, Client(lc) as client:
            client.run(lambda: __import__("xfusion.fuse"))  # workers import xfusion before the clock starts
            with tempfile.TemporaryDirectory() as tmp:
                t0 = time.perf_counter()
                u = xfusion.uncertainty(r, x, y, n=args.cl_rep, client=client, store=os.path.join(tmp, "rep"))
                times[workers] = time.perf_counter() - t0
        print(f"{workers} worker(s): {times[workers]:.1f} s (replica iterations "
              f"{u['replica_iterations'].values.tolist()}); load {os.getloadavg()}", flush=True)
    print(f"speed-up 2 workers vs 1: {times[1] / times[2]:.2f}x", flush=True)


def _gammapy_line_fit(pha_path, band, mean0, sigma0, starts=(-0.006, -0.003, 0.0, 0.003, 0.006)):
    """chi2 fit (gammapy, flux points with the PHA's STAT_ERR) of a Gaussian line + constant in ``band`` keV:
    (centre, its error, sigma, success, chi2/dof) in keV. The fit is started from ``mean0 + starts`` (keV) and the
    lowest chi2 is kept: a blended or double line has several local minima, and the truth and the fused spectrum
    must be compared at the same (global) minimum of the same model."""
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
    best = None
    for d0 in starts:
        line = GaussianSpectralModel(amplitude=float(np.sum(data[sel])) * u.Unit("cm-2 s-1"),
                                     mean=(mean0 + d0) * u.keV, sigma=sigma0 * u.keV)
        cont = ConstantSpectralModel(const=float(np.min(t["dnde"].value)) * u.Unit("cm-2 s-1 keV-1"))
        ds = FluxPointsDataset(models=SkyModel(spectral_model=line + cont, name="src"),
                               data=FluxPoints.from_table(t, sed_type="dnde"))
        res = Fit().run(datasets=[ds])
        stat = float(ds.stat_sum())
        # the lowest chi2 wins even where the optimizer's success flag is False (on the 1e-4-scale spectra of
        # held-out seed 500012 four of five starts reported False at the line; the one "successful" start had
        # locked onto a one-channel feature with chi2/dof 21.6); the flag of the kept fit is reported
        if np.isfinite(stat) and np.isfinite(line.mean.value) and (best is None or stat < best[-1]):
            best = (line.mean.value, line.mean.error, line.sigma.value, bool(res.success),
                    stat / max(sel.sum() - 4, 1), stat)
    if best is None:
        return float("nan"), float("nan"), float("nan"), False, float("nan")
    return best[:5]


def gammapy_check(args):
    """scene -> fuse -> uncertainty(bias_aware=True) -> region PHA with STAT_ERR -> gammapy chi2 fit, for the tuned
    cube with its noise-only errors and for the bias-aware view (the ML refit with its replica errors); the truth's
    spectrum fitted the same way gives the reference centroid."""
    import xarray as xr

    from xfusion.io import write_pha_from_result

    pulls = {"noise-only": [], "bias-aware": []}
    seeds = list(range(args.seed, args.seed + args.gp_seeds))
    print(f"gammapy: cluster_core seeds {seeds} (declared before running), {args.gp_rep} replicas, core "
          f"{2 * args.gp_half}x{2 * args.gp_half} px; a pull is (fused centre - truth centre) / (t * gammapy error), "
          "both spectra fitted with the same model from the same starts (lowest chi2 kept)", flush=True)
    for seed in seeds:
        x, y, truth = scenes.make("cluster_core", seed=seed, counts=args.gp_counts, size="small")
        r = xfusion.fuse(x, y, progress=False)
        n = x.sizes["x"]
        h = args.gp_half
        region = {"x": (n // 2 - h, n // 2 + h), "y": (n // 2 - h, n // 2 + h)}
        u = xfusion.uncertainty(r, x, y, n=args.gp_rep, regions={"core": region}, bias_aware=_bias_aware(args, True))
        view = bias_aware_view(u)
        box = (slice(*region["x"]), slice(*region["y"]))
        e0 = truth.attrs["line_energy_kev"]
        band = (e0 - 0.009, e0 + 0.012)  # Fe XXV w alone (x is 18 eV below)
        with tempfile.TemporaryDirectory() as tmp:
            out = {}
            tcube = xr.Dataset({"flux": truth["flux"]})
            # the truth is fitted with the same STAT_ERR (chi2 weights) as the spectrum it is compared with
            for name, cube, unc in (("noise-only", r, u), ("bias-aware", view, view), ("truth/noise-only", tcube, u),
                                    ("truth/bias-aware", tcube, view)):
                prefix = os.path.join(tmp, name.replace("-", "_").replace("/", "_"))
                pha, _, _ = write_pha_from_result(cube, box, prefix, exposure=1e9, area=1.0, uncertainty=unc)
                out[name] = _gammapy_line_fit(pha, band, e0, 0.003)
        tfac = float(u.attrs["interval_factor"])  # Student t of n-1 dof: STAT_ERR is the std of n replicas
        for name in ("noise-only", "bias-aware"):
            m, e, sg, ok, chi = out[name]
            mt, st = out[f"truth/{name}"][0], out[f"truth/{name}"][2]
            e = tfac * e
            pulls[name].append((m - mt) / e)
            print(f"seed {seed} {name}: gammapy chi2 fit of the core spectrum (Fe XXV w, {band[0]:.4f}-{band[1]:.4f} "
                  f"keV; STAT_ERR from {args.gp_rep} replicas, {2 * h}x{2 * h} px, {args.gp_counts:g} counts): centre "
                  f"{m:.5f} +- {e:.5f} keV (t={tfac:.3f} x fit error), sigma {sg:.4f} keV, chi2/dof {chi:.2f}, success "
                  f"{ok}; subcluster {truth.attrs.get('subcluster')}; truth's spectrum fitted the same way: {mt:.5f} "
                  f"keV (sigma {st:.4f}); difference {(m - mt) * 1e3:+.2f} eV = {(m - mt) / e:+.2f} sigma "
                  f"({'within' if abs(m - mt) <= e else 'NOT within'} its error)", flush=True)
    for name, pl in pulls.items():
        pl = np.asarray(pl)
        print(f"gammapy centroid pulls, {name}: {np.round(pl, 2).tolist()}; within 1 sigma "
              f"{int(np.sum(np.abs(pl) <= 1))}/{pl.size}, within 2 sigma {int(np.sum(np.abs(pl) <= 2))}/{pl.size}",
              flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", default="calib,cost,cluster,gammapy")
    ap.add_argument("--size", default="12x240", help="fused pixels x channels of the calibration scenes")
    ap.add_argument("--kinds", default=",".join(scenes.KINDS))
    ap.add_argument("--counts", type=float, default=3e5)
    ap.add_argument("--real", type=int, default=20)
    ap.add_argument("--rep", type=int, default=10)
    ap.add_argument("--method", default="bootstrap")
    ap.add_argument("--bias-aware", action="store_true", help="also the bias-aware intervals (variant 'aware')")
    ap.add_argument("--ml-iter", type=int, default=0, help="RL iterations of the bias-aware ML refit (0: the "
                    "default, xfusion.uncertainty.ML_SETTINGS)")
    ap.add_argument("--weak", default="", help='JSON options of a weaker refit, e.g. \'{"k": 0}\' (variant weak_*)')
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--cost-kind", default="snr_shell")
    ap.add_argument("--cost-counts", type=float, default=3e6)
    ap.add_argument("--cost-rep", type=int, default=20)
    ap.add_argument("--cost-cap", default="auto", help="replica max_iter: auto, None or an integer (comma list)")
    ap.add_argument("--cl-rep", type=int, default=8)
    ap.add_argument("--gp-rep", type=int, default=10)
    ap.add_argument("--gp-counts", type=float, default=1e6)
    ap.add_argument("--gp-seeds", type=int, default=6)
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
