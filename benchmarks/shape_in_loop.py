"""The spectral-shape prior inside the iterations, per suite scene: fixed strengths and a truth-free pick by thinning.

Session 43 (``benchmarks/QUALITY_HISTORY.md``). The default ``fuse`` applies the spectral-shape prior
(:mod:`xfusion.regularizers.shape`, pseudo-counts ``[n0, n0_pixel]`` tuned by thinning) once, to the last iterate.
Here the same prior at ``f [n0, n0_pixel]`` is also applied before every EM step of the fit (``fuse``'s option
``shape_loop``; the default's other settings and iteration count unchanged), and the result is delivered through the
default's own prior as before. (Session 43 ran it as a ``callback`` shrinking the state's iterate in place; the option
is the same algorithm to float32 round-off, ``tests/test_shape_loop.py``.) ``f = 0`` is the default (recorded as
``reproduced_db``). For each ``f`` the same is done on half of the counts (binomial thinning of both instruments,
``round(count / 1.25)`` iterations, as the tuning transfers a count) and the held-out half's Poisson deviance of the delivered half-data cube
is recorded per instrument, so ``--summary`` can score two truth-free picks beside each fixed ``f``: ``chosen``, the
smallest held-out deviance of both instruments, and ``chosen_y``, of the sharp-spectral instrument alone.
Per cube: NMSE, aSAM, acSSIM, ERGAS, velocity- and width-map RMS errors, flux bias (``shape_floor.Scene``); the two
naive baselines; with ``--rl-oracle`` plain RL at its best-NMSE iteration of up to 100 (as ``suite.py``).

    python benchmarks/shape_in_loop.py --split tune --size small --n 48 --indices 0-23 --rl-oracle --json a.jsonl
    python benchmarks/shape_in_loop.py --summary a.jsonl

One thread per job (``OMP_NUM_THREADS=1 XFUSION_NUM_THREADS=1``); about 25 s per small scene with five factors.
"""
import argparse
import json
import math
import time

import numpy as np

import xfusion
from bench_cli import add_suite_options, parse_numbers, suite_rows  # benchmarks/bench_cli.py
from shape_floor import Scene  # benchmarks/shape_floor.py
from suite import _beats  # benchmarks/suite.py
from xfusion import tuning
from xfusion.operators.model import predict
from xfusion.regularizers.shape import SpectralShape, levels_of

SCRIPT = "shape_in_loop.py"
TRANSFER = 1.25  # half-data count = round(count / TRANSFER) (xfusion.tuning.RL_SQ_FACTOR)


def _fit(x, y, settings, max_iter, loop):
    """The flux of ``fuse`` with ``settings`` (no delivery prior) for ``max_iter`` iterations, the spectral-shape
    prior at pseudo-counts ``loop`` (a pair, or None) before every EM step (``shape_loop``)."""
    return xfusion.fuse(x, y, progress=False, **dict(settings, shape_prior=None, shape_loop=loop, max_iter=max_iter,
                                                      tol=None))["flux"]


def run_scene(spec, size, factors, rl_oracle, seed=11):
    t0 = time.perf_counter()
    sc = Scene(spec, size)
    T = sc.T
    r = xfusion.fuse(sc.x, sc.y, progress=False)
    st = {k: v for k, v in xfusion.settings_of(r).items() if k not in ("chunks", "layout")}
    row = {"name": spec["name"], "size": size or "full", "settings": st, "default": sc.score(r["flux"])}
    row.update(sc.baselines())
    if rl_oracle:
        row["rl_best"] = sc.rl_oracle()
    if st.get("shape_prior") is None:  # nothing to move into the loop
        row["t_s"] = time.perf_counter() - t0
        return row
    n0, n0p = levels_of(st["shape_prior"])
    xa, xb = tuning.thin(sc.x, 0.5, [seed, 0])
    ya, yb = tuning.thin(sc.y, 0.5, [seed, 1])
    held = {"x": tuning._Deviance(xb["counts"].transpose("x", "y", "energy").values),
            "y": tuning._Deviance(yb["counts"].transpose("x", "y", "energy").values)}
    total = float(sum(o["counts"].values.sum(dtype=np.float64) for o in (sc.x, sc.y)))
    n_half = max(1, round(st["max_iter"] / TRANSFER))
    for f in factors:
        for half in (False, True):
            c = total / 2 if half else total
            loop = [f * n0, f * n0p] if f > 0 else None
            flux = _fit(xa, ya, st, n_half, loop) if half else _fit(sc.x, sc.y, st, st["max_iter"], loop)
            z = flux.transpose(*T.dims).values.astype(np.float64)
            cube = T.copy(data=SpectralShape([n0, n0p], c).prox(z).astype(np.float32))  # delivery (scale-free)
            if half:
                row[f"f{f:g}"]["deviance"] = {
                    "x": held["x"](predict(cube, xb, role="spatial").transpose("x", "y", "energy").values),
                    "y": held["y"](predict(cube, yb, role="spectral").transpose("x", "y", "energy").values)}
            else:
                row[f"f{f:g}"] = sc.score(cube)
    if 0.0 in factors:
        row["reproduced_db"] = row["f0"]["nmse_db"] - row["default"]["nmse_db"]
    row["t_s"] = time.perf_counter() - t0
    return row


def _factors(row):
    """The row's keys of the factors run (``f0``, ``f0.03``, ...), in increasing factor."""
    return sorted((k for k in row if k.startswith("f") and isinstance(row[k], dict)), key=lambda k: float(k[1:]))


def _pick(row, which=("x", "y")):
    """The factor whose delivered half-data cube has the smallest held-out deviance (summed over ``which``: both
    instruments, or ``("y",)`` the sharp-spectral one alone)."""
    keys = [k for k in _factors(row) if "deviance" in row[k]]
    return min(keys, key=lambda k: sum(row[k]["deviance"][w] for w in which)) if keys else None


def summary(files):
    rows = [json.loads(line) for f in files for line in open(f) if line.strip()]
    for size in ("small", "full"):
        rs = [r for r in rows if r["size"] == size and "rl_best" in r]
        if not rs:
            continue
        keys = sorted({k for r in rs for k in _factors(r)}, key=lambda k: float(k[1:]))
        print(f"== {size}: {len(rs)} scenes with RL's oracle")
        for r in rs:
            for v, which in (("chosen", ("x", "y")), ("chosen_y", ("y",))):
                p = _pick(r, which)
                r[v] = r[p] if p else r["default"]
                r[v + "_f"] = p
        lined = [r for r in rs if math.isfinite(r["rl_best"]["velocity_rms_kms"])]
        for v in ["default"] + keys + ["chosen", "chosen_y"]:
            def get(r):
                return r.get(v, r["default"])  # scenes without a prior: the default
            dn = [get(r)["nmse_db"] - r["default"]["nmse_db"] for r in rs]
            print(f"   {v:8s} velocity <= RL oracle "
                  f"{sum(get(r)['velocity_rms_kms'] <= r['rl_best']['velocity_rms_kms'] for r in lined)}/{len(lined)}"
                  f"  width <= RL {sum(get(r)['width_rms_kms'] <= r['rl_best']['width_rms_kms'] for r in lined)}"
                  f"/{len(lined)}  NMSE >= RL {sum(get(r)['nmse_db'] >= r['rl_best']['nmse_db'] for r in rs)}"
                  f"/{len(rs)}  baselines {sum(_beats(get(r), r['x_up']) and _beats(get(r), r['y_up']) for r in rs)}"
                  f"/{len(rs)}  flux {sum(abs(get(r)['flux_bias_pct']) <= 1 for r in rs)}/{len(rs)}  NMSE change "
                  f"mean {np.mean(dn):+.3f} dB (worst {min(dn):+.2f}, best {max(dn):+.2f})  mean velocity RMS "
                  f"{np.mean([get(r)['velocity_rms_kms'] for r in lined]):.1f} km/s")
        for v in ("chosen", "chosen_y"):
            picks = [r[v + "_f"] for r in rs if r[v + "_f"]]
            print(f"   picks ({v}): " + ", ".join(f"{k} {picks.count(k)}" for k in keys))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_suite_options(p)
    p.add_argument("--factors", default="0,0.01,0.03,0.1,0.3",
                   help="fractions f of the default's pseudo-counts applied in the loop (0: the default)")
    p.add_argument("--rl-oracle", action="store_true", help="also plain RL at its best iteration")
    a = p.parse_args(argv)
    if a.summary:
        summary(a.summary)
        return
    factors = parse_numbers(p, a.factors, "--factors", "fractions >= 0", "0,0.03,0.1")
    for row in suite_rows(p, a, SCRIPT, lambda spec, size: run_scene(spec, size, factors, a.rl_oracle)):
        print(f"{row['index']} {row['name']} default {row['default']['nmse_db']:.2f} dB "
              f"{row['default']['velocity_rms_kms']:.1f} km/s | " + " | ".join(
                  f"{k}: {row[k]['nmse_db']:.2f} {row[k]['velocity_rms_kms']:.1f}" for k in _factors(row))
              + f" | pick {_pick(row)}" + (f" | RL oracle {row['rl_best']['nmse_db']:.2f} "
                                         f"{row['rl_best']['velocity_rms_kms']:.1f}" if "rl_best" in row else "")
              + f" | {row['t_s']:.0f} s", flush=True)


if __name__ == "__main__":
    main()
