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
                    iterations instead of ML_SETTINGS'); ``--weak JSON``: the same from a refit with
                    those options (weak_*).
         Also the replica std / real scatter of the fits over realizations (tuned and ML), the bias / noise.
cost     One default fit (tuning included) of a table1 scene at full size vs ``--cost-rep`` replicas
         (``warm="auto"``: warm starts where the fit converged or is an EM fit with a prior;
         ``--cost-cap``: the replicas' max_iter), serial; wall and CPU time (``time.process_time``: robust
         to other jobs on a loaded machine); the time of 20 replicas (1 control + 19 capped) estimated
         from the measured ones.
cluster  ``--cl-rep`` replicas on a 1-worker and a 2-worker LocalCluster (1 thread each; xfusion imported on the
         workers before the clock starts).
gammapy  Cluster-core scenes (``--gp-size``, default 12x600: 1.33 eV channels; seeds ``--gp-seeds``): the
         bias-aware refit (ML fit + ``--gp-rep`` replicas) of the core (``--gp-half``), exported as a PHA with
         STAT_ERR + COVFILE, the truth's spectrum exported the same way; the centroid of a Gaussian line + constant
         in the Fe XXV w band (e0-9..e0+12 eV) with three errors: (a) gammapy chi2 with STAT_ERR, (b) the scatter
         of the centroids refitted to every replica, (c) gammapy with a generalized chi2 (custom fit statistic)
         and the banded covariance from COVFILE; pull = (fused - truth centroid) / (t x error). See
         gammapy_check.

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
        if args.shape_prior != "auto":  # the spectral-shape prior of the delivered cube: off or another strength
            settings = dict(settings, shape_prior=None if args.shape_prior == "none" else float(args.shape_prior))
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
                                                                         "max_iter", "shape_prior")},
                    "replica_iterations_mean": round(float(np.mean(iters)), 1),
                    "minutes": round((time.perf_counter() - t_kind) / 60, 1)})
        summary[kind] = res
        print(f"{kind}: {json.dumps(res)}", flush=True)
    return summary


def cost(args):
    x, y, truth = scenes.make(args.cost_kind, seed=args.seed, counts=args.cost_counts)
    print(f"cost: {args.cost_kind} {truth.attrs['size']} counts {args.cost_counts:g}; load {os.getloadavg()}",
          flush=True)
    t0, c0 = time.perf_counter(), time.process_time()
    r = xfusion.fuse(x, y, progress=False)
    t_fit, c_fit = time.perf_counter() - t0, time.process_time() - c0
    print(f"one default fit (thinning included): {t_fit:.1f} s wall, {c_fit:.1f} s CPU, {r.attrs['iterations']} "
          f"iterations, converged {r.attrs['converged']}, loop {r.attrs['loop_elapsed_s']:.1f} s; settings "
          f"{json.dumps(xfusion.settings_of(r), default=str)}; load {os.getloadavg()}", flush=True)
    caps = {"auto": "auto", "None": None}
    for cap in args.cost_cap.split(","):
        cap = caps.get(cap, cap if cap in caps else int(cap) if cap.isdigit() else cap)
        t0, c0 = time.perf_counter(), time.process_time()
        u = xfusion.uncertainty(r, x, y, n=args.cost_rep, max_iter=cap, progress=True)
        t_rep, c_rep = time.perf_counter() - t0, time.process_time() - c0
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
              f"{t_rep * 20 / args.cost_rep / t_fit:.2f} x; CPU time {c_rep:.1f} s = {c_rep / c_fit:.2f} x the fit's "
              f"CPU time (extrapolated to 20: {c_rep * 20 / args.cost_rep / c_fit:.2f} x); load {os.getloadavg()}",
              flush=True)


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


_STARTS = (-0.006, -0.003, 0.0, 0.003, 0.006)  # keV offsets from the reference energy: a blend has several minima


def _line(p, e):
    """Gaussian line + constant in dnde (keV-1) at energies ``e``; p = (amplitude, mean, sigma, const)."""
    a, m, s, c = p
    return a / (np.sqrt(2 * np.pi) * s) * np.exp(-0.5 * ((e - m) / s) ** 2) + c


def _scipy_line_fit(lo, hi, data, e0, err=None, weight=None, p0=None):
    """The benchmark's line model (the one gammapy fits: GaussianSpectralModel + ConstantSpectralModel as dnde at the
    bin centres) fitted by scipy least squares with diagonal errors ``err`` or the inverse covariance ``weight`` (both
    for the bin-integrated flux); from ``p0`` only, or from the 5 starts around ``e0`` (lowest chi2 kept). Returns
    (params, chi2) or None. Used to find the global minimum before gammapy's fit, and for the replica refits (b)."""
    from scipy.optimize import least_squares

    de, e = hi - lo, 0.5 * (lo + hi)
    y = data / de
    lw = np.diag(de / err) if weight is None else np.linalg.cholesky(weight * np.outer(de, de)).T
    starts = [np.asarray(p0, float)] if p0 is not None else [np.array([np.sum(data), e0 + d, 0.003, np.min(y)])
                                                            for d in _STARTS]
    best = None
    for q0 in starts:
        sc = np.array([abs(q0[0]) or 1.0, 1e-3, 1e-3, max(abs(q0[3]), 1e-30)])
        off = np.array([0.0, q0[1], 0.0, 0.0])
        try:
            r = least_squares(lambda q: lw @ (_line(q * sc + off, e) - y), (q0 - off) / sc, method="lm", x_scale="jac")
        except (ValueError, np.linalg.LinAlgError):
            continue
        p, chi = r.x * sc + off, float(np.sum(r.fun ** 2))
        if np.isfinite(chi) and p[2] > 0 and (best is None or chi < best[1]):
            best = (p, chi)
    return best


def _gammapy_line_fit(lo, hi, data, e0, err=None, weight=None):
    """gammapy fit of a Gaussian line + constant to a spectrum (bin-integrated flux per channel, ph cm-2 s-1, channels
    ``lo``..``hi`` keV) as flux points: chi2 with the diagonal errors ``err`` (``stat_type="chi2"``), or -- ``weight``,
    the inverse channel covariance -- a dataset whose fit statistic is the generalized chi2 r^T W r (a subclass of
    FluxPointsDataset overriding ``stat_sum``; gammapy's Fit/iminuit then minimizes it and gives its errors). The global
    minimum is located first by :func:`_scipy_line_fit` from 5 starts (a blend has several minima), then gammapy
    fits from there. Returns (centre, its error, sigma, success, chi2/dof, params) in keV."""
    import astropy.units as u
    from astropy.table import Table
    from gammapy.datasets import FluxPointsDataset
    from gammapy.estimators import FluxPoints
    from gammapy.modeling import Fit
    from gammapy.modeling.models import ConstantSpectralModel, GaussianSpectralModel, SkyModel

    unit = u.Unit("cm-2 s-1 keV-1")

    class CovarianceFluxPointsDataset(FluxPointsDataset):
        """Flux points whose fit statistic is (data - model)^T W (data - model) with W the inverse covariance."""

        def __init__(self, *a, inv_cov=None, **k):
            super().__init__(*a, **k)
            self.inv_cov = inv_cov

        def stat_sum(self):
            r = (self.data.dnde.quantity - self.flux_pred()).to_value(unit).ravel()
            return float(r @ self.inv_cov @ r)

        _stat_sum_likelihood = stat_sum

    start = _scipy_line_fit(lo, hi, data, e0, err=err, weight=weight)
    if start is None:
        return (float("nan"),) * 2 + (float("nan"), False, float("nan"), None)
    de = hi - lo
    t = Table()
    t["e_ref"] = 0.5 * (lo + hi) * u.keV
    t["e_min"], t["e_max"] = lo * u.keV, hi * u.keV
    t["dnde"] = (data / de) * unit
    t["dnde_err"] = ((err if err is not None else np.sqrt(np.diag(np.linalg.inv(weight)))) / de) * unit
    t.meta["SED_TYPE"] = "dnde"
    a, m, s, c = start[0]
    line = GaussianSpectralModel(amplitude=a * u.Unit("cm-2 s-1"), mean=m * u.keV, sigma=s * u.keV)
    cont = ConstantSpectralModel(const=c * unit)
    model = SkyModel(spectral_model=line + cont, name="src")
    fp = FluxPoints.from_table(t, sed_type="dnde")
    ds = (FluxPointsDataset(models=model, data=fp) if weight is None else
          CovarianceFluxPointsDataset(models=model, data=fp, inv_cov=weight * np.outer(de, de)))
    res = Fit().run(datasets=[ds])
    stat = float(ds.stat_sum())
    p = (line.amplitude.value, line.mean.value, line.sigma.value, cont.const.value)
    return line.mean.value, line.mean.error, line.sigma.value, bool(res.success), stat / max(data.size - 4, 1), p


def _banded_covariance(cov_full, sel, max_lag=2):
    """A usable channel covariance for the band ``sel`` from the exported one (``cov_full``, all channels): the band's
    variances, and for |i - j| <= ``max_lag`` the correlation at that lag averaged over ALL channels (a fused
    spectrum's channels are alike, so the few replicas are pooled over hundreds of channels; the raw band block
    from n replicas is singular or, inverted, far too confident -- E[S^-1] = (n-1)/(n-p-2) Sigma^-1)."""
    sd_all = np.sqrt(np.clip(np.diag(cov_full), 0, None))
    ok = sd_all > 0
    corr = np.where(np.outer(ok, ok), cov_full / np.outer(np.where(ok, sd_all, 1), np.where(ok, sd_all, 1)), 0.0)
    rho = [1.0] + [float(np.mean(np.diagonal(corr, k)[ok[:-k] & ok[k:]])) for k in range(1, max_lag + 1)]
    s = sd_all[sel]
    p = s.size
    cb = np.diag(s ** 2)
    for k in range(1, max_lag + 1):
        i = np.arange(p - k)
        cb[i, i + k] = cb[i + k, i] = rho[k] * s[i] * s[i + k]
    return cb


def gammapy_check(args):
    """Does gammapy recover the truth's line centroid within its error from an exported region spectrum?  Per seed
    (cluster_core, ``--gp-size``): the bias-aware refit -- the maximum-likelihood fit (``ML_SETTINGS``) and
    ``--gp-rep`` bootstrap replicas of it, exactly what ``uncertainty(..., bias_aware=True)`` adds (its noise-only
    part is skipped here: ``--gp-full`` runs the whole call and exports ``bias_aware_view``) -- exported with
    ``write_pha_from_result(..., uncertainty=)`` (PHA with STAT_ERR + COVFILE, read back from the files), the truth's
    region spectrum exported the same way. Centroid errors compared:
      (a) gammapy chi2 with STAT_ERR (diagonal);
      (b) the std of the centroids fitted (scipy, same model and weights, from (a)'s solution) to every replica's
          region spectrum -- the bootstrap error, which includes any channel correlation;
      (c) gammapy with a custom fit statistic r^T W r, W the inverse of the banded covariance built from the exported
          COVFILE (_banded_covariance); (c_raw) W from the raw band block of COVFILE (Hartlap-scaled), for contrast.
    The truth's spectrum is fitted with the same weights and model (lowest chi2 of 5 starts); pull = (fused - truth
    centre) / (t x error), t = Student factor of the replicas. Seeds whose TRUE line is about as wide as the band's
    half-width (truth's fitted sigma >= 10 eV; half-width 10.5 eV: a Gaussian + constant in a 21 eV band is then
    degenerate -- on seeds 500024 and 500040 the fused fits jumped to a one-channel spike or a 50 eV width) are
    reported and left out of the statistics (a rule on the truth alone, set after those two seeds failed; frozen
    for the seeds run after it). Statistics over all seeds are printed too."""
    import xarray as xr
    from astropy.io import fits
    from scipy.stats import t as student_t

    from xfusion.io import write_pha_from_result
    from xfusion.uncertainty import ML_SETTINGS

    seeds = []
    for part in args.gp_seeds.split(","):
        a, _, b = part.partition("-")
        seeds += list(range(int(a), int(b) + 1)) if b else [int(a)]
    size = "small" if args.gp_size == "small" else tuple(int(v) for v in args.gp_size.split("x"))
    print(f"gammapy: cluster_core seeds {seeds} (declared before running), size {size}, {args.gp_counts:g} counts, "
          f"{args.gp_rep} replicas, core {2 * args.gp_half}x{2 * args.gp_half} px, band e0-9..e0+12 eV; "
          f"full uncertainty() call {bool(args.gp_full)}; load {os.getloadavg()}", flush=True)
    keys = ("a", "b", "c", "c_raw")
    rows = []
    for seed in seeds:
        t0 = time.perf_counter()
        x, y, truth = scenes.make("cluster_core", seed=seed, counts=args.gp_counts, size=size)
        n, h = x.sizes["x"], args.gp_half
        region = {"x": (n // 2 - h, n // 2 + h), "y": (n // 2 - h, n // 2 + h)}
        if args.gp_full:
            r = xfusion.fuse(x, y, progress=False)
            u = bias_aware_view(xfusion.uncertainty(r, x, y, n=args.gp_rep, seed=seed, regions={"core": region},
                                                    bias_aware=_bias_aware(args, True)))
        else:
            ml = xfusion.fuse(x, y, progress=False, **ML_SETTINGS)
            u = xfusion.uncertainty(ml, x, y, n=args.gp_rep, seed=seed, regions={"core": region})
        box = (slice(*region["x"]), slice(*region["y"]))
        e0 = truth.attrs["line_energy_kev"]
        with tempfile.TemporaryDirectory() as tmp:
            pha, _, _ = write_pha_from_result(u, box, os.path.join(tmp, "fused"), exposure=1e9, area=1.0,
                                              uncertainty=u)
            tpha, _, _ = write_pha_from_result(xr.Dataset({"flux": truth["flux"]}), box, os.path.join(tmp, "truth"),
                                               exposure=1e9, area=1.0)
            with fits.open(pha) as hd, fits.open(os.path.join(tmp, hd["SPECTRUM"].header["COVFILE"])) as hc, \
                    fits.open(tpha) as ht:
                hdr = hd["SPECTRUM"].header
                data = np.asarray(hd["SPECTRUM"].data["COUNTS"], float) / 1e9
                err = np.asarray(hd["SPECTRUM"].data["STAT_ERR"], float) / 1e9
                tdata = np.asarray(ht["SPECTRUM"].data["COUNTS"], float) / 1e9
                lo, hi = (np.asarray(hd["EBOUNDS"].data[k], float) for k in ("E_MIN", "E_MAX"))
                cov = np.asarray(hc["COVARIANCE"].data, float) / 1e18
                diag = {k: hdr[k] for k in ("CORRLAG1", "CORRLAG2", "ERRINFL", "GRPRECOM")}
        sel = (lo >= e0 - 0.009) & (hi <= e0 + 0.012)
        L, H, d, e = lo[sel], hi[sel], data[sel], err[sel]
        tfac = float(student_t.ppf(0.841345, args.gp_rep - 1))
        nrep, p = args.gp_rep, int(sel.sum())
        fits_ = {"a": dict(err=e), "c": dict(weight=np.linalg.inv(_banded_covariance(cov, sel))),
                 "c_raw": dict(weight=(nrep - p - 2) / (nrep - 1) * np.linalg.inv(cov[np.ix_(sel, sel)]))
                 if nrep - p - 2 > 0 else None}
        row = {"seed": seed, **diag}
        tr = _scipy_line_fit(L, H, tdata[sel], e0, err=e)
        row["truth_sigma_ev"] = tr[0][2] * 1e3
        row["ill_posed"] = bool(tr[0][2] >= 0.010)
        for k, kw in fits_.items():
            if kw is None:
                row[f"p_{k}"] = float("nan")
                continue
            m, me, sg, ok, chi, par = _gammapy_line_fit(L, H, d, e0, **kw)
            mt = _gammapy_line_fit(L, H, tdata[sel], e0, **kw)[0]
            row[f"p_{k}"], row[f"err_{k}_ev"], row[f"chi2dof_{k}"] = (m - mt) / (tfac * me), me * 1e3, chi
            if k == "a":
                reps = u["region_replicas"].values[:, 0].astype(np.float64)[:, sel]
                cen = [q[0][1] for q in (_scipy_line_fit(L, H, rr, e0, err=e, p0=par) for rr in reps) if q]
                sb = float(np.std(cen, ddof=1))
                row["p_b"], row["err_b_ev"], row["diff_ev"] = (m - mt) / (tfac * sb), sb * 1e3, (m - mt) * 1e3
        rows.append(row)
        print(f"seed {seed}: " + " ".join(f"{k}={v:+.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in
                                          row.items() if k != "seed") + f" ({time.perf_counter() - t0:.0f} s; "
              f"load {os.getloadavg()[0]:.1f})", flush=True)
    for label, use in (("well-posed seeds", [not r["ill_posed"] for r in rows]), ("all seeds", [True] * len(rows))):
        for k in keys:
            pl = np.asarray([r[f"p_{k}"] for r, ok in zip(rows, use) if ok], float)
            pl = pl[np.isfinite(pl)]
            m = pl.size
            if m < 2:
                continue
            sd = float(np.std(pl, ddof=1))
            print(f"{label}, ({k}): n={m}, pull std {sd:.2f} +- {sd / np.sqrt(2 * (m - 1)):.2f}, "
                  f"mean {pl.mean():+.2f}, "
                  f"within 1 sigma {int(np.sum(np.abs(pl) <= 1))}/{m} = {np.mean(np.abs(pl) <= 1):.2f} +- "
                  f"{np.sqrt(0.6827 * 0.3173 / m):.2f} (binomial, at 0.68), within 2 sigma "
                  f"{int(np.sum(np.abs(pl) <= 2))}/{m}", flush=True)


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
                    "default, ML_SETTINGS of the module xfusion.uncertainty)")
    ap.add_argument("--weak", default="", help='JSON options of a weaker refit, e.g. \'{"k": 0}\' (variant weak_*)')
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--shape-prior", default="auto", help="calib: the fits' shape_prior: 'auto' (as fuse chose), "
                    "'none' (off) or pseudo-counts")
    ap.add_argument("--cost-kind", default="snr_shell")
    ap.add_argument("--cost-counts", type=float, default=3e6)
    ap.add_argument("--cost-rep", type=int, default=20)
    ap.add_argument("--cost-cap", default="auto", help="replica max_iter: auto, None or an integer (comma list)")
    ap.add_argument("--cl-rep", type=int, default=8)
    ap.add_argument("--gp-rep", type=int, default=20)
    ap.add_argument("--gp-counts", type=float, default=1e6)
    ap.add_argument("--gp-seeds", default="500021-500044", help="scene seeds: 'a-b' ranges and/or a comma list "
                    "(session 7: 500013-500020 development, 500021-500044 measurement)")
    ap.add_argument("--gp-size", default="12x600", help="'small' (24x24x600) or PIXELSxCHANNELS")
    ap.add_argument("--gp-half", type=int, default=2, help="half-size of the core region (fused pixels)")
    ap.add_argument("--gp-full", action="store_true", help="run uncertainty(bias_aware=True) in full (tuned fit and "
                    "its noise-only replicas too) and export bias_aware_view; default: the ML refit + replicas only")
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
