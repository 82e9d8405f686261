"""Quality and speed of every regularization/method on a toy, next to naive baselines and plain RL.

Prints NMSE (dB), aSAM (rad), acSSIM, ERGAS, iterations, wall time (incl. setup) and time per
iteration; the RL curve (NMSE per iteration, its best iteration); and, with --ista N, fixed-step
ISTA run for N iterations against EM with the same prior (regularization wavelet2d1d, method em):
the loop time EM needs to reach ISTA's final objective.

    python benchmarks/quality.py                         # gaussian_rebin, Table 1 photons
    python benchmarks/quality.py --toy realistic_rebin
    python benchmarks/quality.py --photons 10            # 10x the photon counts
    python benchmarks/quality.py --ista 2000             # the 20x speed comparison (slow: ~10 min)
"""
import argparse
import json
import os
import platform
import time

import numpy as np

import xfusion
from xfusion import baselines, metrics, toy

RUNS = [("wavelet2d1d", "em"), ("wavelet2d1d", "ista"), ("lowrank", "fista"), ("lowrank_sobolev", "fista"),
        ("lowrank_wavelet2d", "fista")]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--toy", default="gaussian_rebin")
    p.add_argument("--photons", type=float, default=1.0, help="multiply both photon counts")
    p.add_argument("--ista", type=int, default=300, help="ISTA iterations (paper needs 30k-100k)")
    p.add_argument("--rl", type=int, default=30, help="RL iterations for its curve")
    a = p.parse_args(argv)
    print(f"machine: {platform.machine()} cpus={os.cpu_count()} python={platform.python_version()} "
          f"numpy={np.__version__} xfusion={xfusion.__version__}")
    cfg = toy.load_config(a.toy)
    over = {"x": {"counts": cfg["x"]["counts"] * a.photons}, "y": {"counts": cfg["y"]["counts"] * a.photons}}
    x, y, t = toy.make(a.toy, **over)
    print(f"toy {a.toy}: X {x.counts.shape} {float(x.counts.sum()):.3g} counts, Y {y.counts.shape} "
          f"{float(y.counts.sum()):.3g} counts, fused {t.shape}")
    ratio = xfusion.fusion_grid(x, y).attrs["spatial_factor"]
    rows = {}
    rows["X upsampled in energy"] = metrics.report(baselines.upsample_spatial(x, y), t, ratio=ratio)
    rows["Y upsampled in space"] = metrics.report(baselines.upsample_spectral(x, y), t, ratio=ratio)

    # RL: keep every iterate (internal units = flux x mean(t_X A_X)) to find its best iteration
    fluxes = []
    t0 = time.perf_counter()
    r = baselines.richardson_lucy(x, y, n_iter=a.rl, progress=False,
                                  callback=lambda it, state: fluxes.append(state["z"].copy()))
    wall = time.perf_counter() - t0
    s = float(np.mean(xfusion.operators.build_model(xfusion.fusion_grid(x, y), x, "spatial").weights))
    rl_nmse = [metrics.nmse(t, f / s) for f in fluxes]
    best_n = int(np.argmax(rl_nmse)) + 1
    rb = baselines.richardson_lucy(x, y, n_iter=best_n, progress=False)
    m = metrics.report(rb, t)
    m.update(iterations=best_n, wall_s=float("nan"), s_per_it=rb.attrs["seconds_per_iteration"])
    rows[f"RL at its best iteration ({best_n})"] = m
    m = metrics.report(r, t)
    m.update(iterations=a.rl, wall_s=wall, s_per_it=r.attrs["seconds_per_iteration"])
    rows[f"RL after {a.rl} iterations"] = m
    print("RL NMSE per iteration:", " ".join(f"{v:.2f}" for v in rl_nmse))

    results = {}
    for reg, method in RUNS:
        kw = {"max_iter": a.ista, "tol": None} if method == "ista" else {}
        t0 = time.perf_counter()
        try:
            res = xfusion.fuse(x, y, regularization=reg, method=method, progress=False, **kw)
        except FloatingPointError as exc:  # fixed-step ISTA with the default step can diverge
            print(f"{reg} / {method}: {exc}")
            continue
        wall = time.perf_counter() - t0
        m = metrics.report(res, t)
        m.update(iterations=res.attrs["iterations"], wall_s=wall, s_per_it=res.attrs["seconds_per_iteration"])
        rows[f"{reg} / {method}"] = m
        results[(reg, method)] = res
    print(metrics.format_report(rows))

    # default method vs ISTA: time for EM to reach ISTA's final objective (same regularization options)
    if ("wavelet2d1d", "ista") not in results:
        return
    ista = results[("wavelet2d1d", "ista")]
    target = float(ista.objective.values[-1])
    t_ista = ista.attrs["loop_elapsed_s"]
    # session 30: this timed fuse's default ("auto": the tuning fits counted, and plain RL may be chosen, whose
    # objective is not the wavelet one) from before the call. Now EM with the ISTA run's regularization and options
    # (regularization="wavelet2d1d", method="em"), stopped by its callback at the first iteration whose objective
    # reaches ISTA's final one; its loop_elapsed_s is the iterations' time only (no model building or delivery).
    em = xfusion.fuse(x, y, regularization="wavelet2d1d", method="em", max_iter=500, tol=None, progress=False,
                      callback=lambda it, state: state["objective"] <= target)
    hit = float(em.objective.values[-1]) <= target
    step = json.loads(ista.attrs["parameters"])["step"]
    print(f"ISTA ({ista.attrs['iterations']} it, step {step:.4g}) final objective {target:.6g} "
          f"in {t_ista:.3g} s loop time")
    if hit:
        t_em = em.attrs["loop_elapsed_s"]
        print(f"EM+wavelet (regularization wavelet2d1d, method em) reaches it at iteration {em.attrs['iterations']} "
              f"after {t_em:.3g} s loop time: {_ratio(t_ista, t_em)}")
    else:
        print(f"EM+wavelet (regularization wavelet2d1d, method em) did not reach ISTA's objective within "
              f"{em.attrs['iterations']} iterations (final {float(em.objective.values[-1]):.6g})")


def _ratio(t_ista, t_em):
    """'K.Kx faster' / 'K.Kx slower' with two significant digits (session 30: a ratio below 1 printed '0x faster')."""
    if t_em <= 0:
        return "loop time too short to compare"
    r = t_ista / t_em
    return f"{r:.2g}x faster" if r >= 1 else f"{1 / r:.2g}x slower"

if __name__ == "__main__":
    main()
