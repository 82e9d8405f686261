"""Quality and speed of every regularization/method on a toy, next to naive baselines and plain RL.

Prints NMSE (dB), aSAM (rad), acSSIM, ERGAS, iterations, wall time (incl. setup) and time per
iteration; the RL curve (NMSE per iteration, its best iteration); and, with --ista N, fixed-step
ISTA run for N iterations against the default method: how long the default needs to reach
ISTA's final objective.

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


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--toy", default="gaussian_rebin")
    p.add_argument("--photons", type=float, default=1.0, help="multiply both photon counts")
    p.add_argument("--ista", type=int, default=300, help="ISTA iterations (paper needs 30k-100k)")
    p.add_argument("--rl", type=int, default=30, help="RL iterations for its curve")
    a = p.parse_args()
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
    times = []
    t0 = time.perf_counter()
    def clock(it, state):
        times.append((time.perf_counter() - t0, state["objective"]))
        return state["objective"] <= target
    xfusion.fuse(x, y, max_iter=500, tol=None, progress=False, callback=clock)
    hit = next(((it + 1, tt) for it, (tt, f) in enumerate(times) if f <= target), None)
    step = json.loads(ista.attrs["parameters"])["step"]
    print(f"ISTA ({ista.attrs['iterations']} it, step {step:.4g}) final objective {target:.6g} "
          f"in {t_ista:.1f} s loop time")
    if hit:
        print(f"EM+wavelet reaches it at iteration {hit[0]} after {hit[1]:.2f} s loop time: {t_ista / hit[1]:.0f}x faster")
    else:
        print("EM+wavelet did not reach ISTA's objective within 500 iterations")


if __name__ == "__main__":
    main()
