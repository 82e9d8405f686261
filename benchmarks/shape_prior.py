"""Faint-pixel spectral angle (issue 13, session 8): where 'auto' loses aSAM to "Y upsampled in space", and the
spectral-shape prior (xfusion.regularizers.shape) measured on cached 'auto' fits. Prints what it measured.

    python benchmarks/shape_prior.py diag 10,15,17 tune 48     # aSAM per brightness quartile of every candidate the
                                                             # tuner visits, Y upsampled and shape swaps of 'auto'
    python benchmarks/shape_prior.py cache all tune 48 DIR     # 'auto' fits (fuse of tuning.select's choice, no shape
                                                             # prior) of suite scenes, npz files in DIR
    python benchmarks/shape_prior.py eval all DIR '{"n0=1e4": {"n0": 1e4, "J": 2}}'   # variants on the cached fits

Session 8 (logs s8_faint_*.log of the session notes): the diag on the 10 tuning scenes that lost aSAM; the eval of
n0 in 3e3..1e5 and J in 1..3 on all 48 small tuning scenes (the frozen n0 = 1e4, J = 2: baselines 36 -> 46/48,
mean NMSE 20.53 -> 20.93 dB, velocity RMS 158.5 -> 150.8 km/s).
"""
import json
import os
import sys
import time

import numpy as np
from scipy.ndimage import uniform_filter

import xfusion
from xfusion import analysis, baselines, metrics, tuning
from xfusion import scenes as sc
from xfusion.grid import assign_roles, fusion_grid
from xfusion.regularizers.shape import SpectralShape

M = ("nmse_db", "asam_rad", "acssim", "ergas")

def quart(tv, e):
    bright = tv.sum(axis=-1)
    q = np.quantile(bright, [0.25, 0.5, 0.75])
    bins = np.digitize(bright, q)
    m = metrics.sam_map(tv, e)
    return [float(np.nanmean(m))] + [float(np.nanmean(np.where(bins == b, m, np.nan))) for b in range(4)]


def blockmean(e, v):
    nx, ny, nl = e.shape
    b = e.reshape(nx // v, v, ny // v, v, nl).mean(axis=(1, 3))
    return np.repeat(np.repeat(b, v, axis=0), v, axis=1)


def shape_swap(e, ref, group):
    """e's totals over groups of `group` channels, distributed within each group like ref."""
    nx, ny, nl = e.shape
    g = nl // group
    et = e.reshape(nx, ny, g, group).sum(-1, keepdims=True)
    rt = ref.reshape(nx, ny, g, group)
    rs = rt.sum(-1, keepdims=True)
    w = np.where(rs > 0, rt / np.where(rs > 0, rs, 1), 1.0 / group)
    return (et * w).reshape(nx, ny, nl)


def diag(indices, split="tune", n=48, size="small"):
    specs = sc.suite(split, n=n)
    for i in indices:
        t0 = time.perf_counter()
        spec = specs[i]
        x, y, truth = sc.from_spec(spec, size=size)
        tv = truth["flux"].values.astype(np.float64)
        grid = fusion_grid(x, y)
        v = int(grid.attrs["spatial_factor"])
        gl = int(grid.attrs["spectral_factor"])
        cur = tuning.select(x, y, complete=True)
        ch = tuning.choice(cur)
        det = json.loads(cur.attrs["details"])
        rows = {}

        def add(label, e):
            rows[label] = (metrics.nmse(tv, e), quart(tv, e))

        def fit(**kw):
            return xfusion.fuse(x, y, progress=False, **kw).flux.values.astype(np.float64)

        auto = fit(**ch)
        add("auto " + json.dumps({k: v_ for k, v_ in ch.items() if k not in ("regularization", "n_scales_1d")}), auto)
        yu = baselines.upsample_spectral(x, y).values.astype(np.float64)
        add("Y_up", yu)
        add("auto_blk", blockmean(auto, v))
        add("auto pix-total x blk shape", auto.sum(-1, keepdims=True) * blockmean(auto, v) /
            np.maximum(blockmean(auto, v).sum(-1, keepdims=True), 1e-300))
        add("auto Xgrp-totals x blk shape", shape_swap(auto, blockmean(auto, v), gl))
        add("auto Xgrp-totals x 3x3 shape", shape_swap(auto, uniform_filter(auto, (3, 3, 1), mode="nearest"), gl))
        add("auto blk shape-of-groups", shape_swap(blockmean(auto, v), auto, gl))
        # candidates the tuner visits (full-data fits)
        for s in cur["setting"].values:
            c = json.loads(s)
            if c.get("regularization") == "none" or "max_iter" in c:
                continue
            add(f"ladder k={c['k']}", fit(regularization="wavelet2d1d", **c))
        th = det.get("threshold")
        if th:
            nf = th["max_iter"]
            for mult in (0.5, 1, 2):
                m = max(1, int(round(nf * mult)))
                add(f"thresh k={th['k']} it={m}", fit(regularization="wavelet2d1d", k=th["k"], n_scales_1d=th["n_scales_1d"],
                                                      null_space="threshold", max_iter=m))
        rl = det.get("rl")
        if rl:
            for m in sorted({max(1, rl["max_iter"] // 2), rl["max_iter"], 2 * rl["max_iter"], 3, 10}):
                add(f"RL it={m}", fit(regularization="none", max_iter=m))
        zf = float(np.mean(auto[tv.sum(-1) <= np.quantile(tv.sum(-1), 0.25)] <= 0))
        ycnt = float(y.counts.values.mean())
        print(f"== [{i}] {spec['name']}: choice {ch}; block {v}x{v}, X group {gl}; Y counts/pix/chan {ycnt:.2f}; "
              f"zero voxels in faint quartile {zf:.3f}; {time.perf_counter() - t0:.0f} s")
        yq = rows["Y_up"][1]
        for k, (nm, q) in rows.items():
            flag = "" if k == "Y_up" else (" BEATS_Y" if q[0] < yq[0] else "")
            print(f"   {k:45s} NMSE {nm:6.2f}  aSAM " + "/".join(f"{a:.3f}" for a in q) + flag, flush=True)


def cache(indices, split="tune", n=48, size="small", out="shape_cache"):
    os.makedirs(out, exist_ok=True)
    specs = sc.suite(split, n=n)
    for i in indices:
        path = os.path.join(out, f"{split}{n}_{i}.npz")
        if os.path.exists(path):
            continue
        spec = specs[i]
        x, y, truth = sc.from_spec(spec, size=size)
        cur = tuning.select(x, y, complete=True)
        ch = tuning.choice(cur)
        res = xfusion.fuse(x, y, progress=False, **ch)
        grid = fusion_grid(x, y)
        xo, yo, _ = assign_roles(x, y)
        np.savez_compressed(path, truth=truth["flux"].values, auto=res.flux.values,
                            yu=baselines.upsample_spectral(x, y).values, xu=baselines.upsample_spatial(x, y).values,
                            xcounts=xo.counts.values, ycounts=yo.counts.values,
                            v=int(grid.attrs["spatial_factor"]), gl=int(grid.attrs["spectral_factor"]),
                            name=spec["name"], choice=json.dumps(ch),
                            lm=json.dumps(sc.line_map_args(truth)),
                            lsf=float(truth.attrs["lsf_sigma_kev"]), energy=truth["energy"].values)
        print(i, spec["name"], ch, flush=True)


def load(i, split="tune", n=48, where="shape_cache"):
    d = np.load(os.path.join(where, f"{split}{n}_{i}.npz"))
    return {k: d[k] for k in d.files}


def evaluate(i, variants, split="tune", n=48, science=True, where="shape_cache"):
    d = load(i, split, n, where)
    spec = sc.suite(split, n=n)[i]
    _, _, truth = sc.from_spec(spec, size="small")
    T = truth["flux"]
    lm = sc.line_map_args(truth)
    lsf = float(truth.attrs["lsf_sigma_kev"])
    tmaps = analysis.line_map(T, lsf_sigma=lsf, **lm) if (lm and science) else None
    tv = T.values.astype(np.float64)
    ratio = float(d["v"])
    out = {}

    def rep(e):
        r = metrics.report(e, tv, ratio=ratio)
        if tmaps is not None:
            r["vel"] = analysis.map_errors(tmaps, analysis.line_map(T.copy(data=e.astype(np.float32)), lsf_sigma=lsf,
                                                                    **lm), fraction=0.5)["velocity_rms_kms"]
        return r

    out["x_up"] = metrics.report(d["xu"].astype(np.float64), tv, ratio=ratio)
    out["y_up"] = metrics.report(d["yu"].astype(np.float64), tv, ratio=ratio)
    auto = d["auto"].astype(np.float64)
    # counts per fused pixel: the pixel's share of the photons of both instruments
    ntot = float(d["xcounts"].sum() + d["ycounts"].sum())
    out["auto"] = rep(auto)
    for label, kw in variants.items():
        out[label] = rep(SpectralShape(kw["n0"], ntot, kw["J"]).prox(auto))
    return str(d["name"]), json.loads(str(d["choice"])), out


def beats(r, b):
    return all((r[m] > b[m]) if m == "nmse_db" else (r[m] < b[m]) for m in M)


def offline(idx, variants, where="shape_cache", split="tune", n=48):
    """aSAM / NMSE / velocity of the cached 'auto' fits through SpectralShape variants (dict label -> {n0, J})."""
    if idx is None:
        idx = [i for i in range(n) if os.path.exists(os.path.join(where, f"{split}{n}_{i}.npz"))]
    labels = ["auto"] + list(variants)
    agg = {k: {"base": 0, "nmse": [], "vel": [], "asam": []} for k in labels}
    for i in idx:
        name, ch, out = evaluate(i, variants, split, n, where=where)
        line = f"[{i}] {name[:40]:40s}"
        for k in labels:
            r = out[k]
            ok = beats(r, out["x_up"]) and beats(r, out["y_up"])
            agg[k]["base"] += ok
            agg[k]["nmse"].append(r["nmse_db"])
            agg[k]["asam"].append(r["asam_rad"])
            if "vel" in r and np.isfinite(r["vel"]):
                agg[k]["vel"].append(r["vel"])
            line += f" | {r['nmse_db']:.2f} {r['asam_rad']:.3f}{'' if ok else '*'}"
        print(line + f" | Yup aSAM {out['y_up']['asam_rad']:.3f}", flush=True)
    print("columns: NMSE aSAM per variant (* = does not beat both naive baselines on all four metrics):", labels)
    for k in labels:
        a = agg[k]
        print(f"{k:20s} baselines {a['base']}/{len(idx)}  mean NMSE {np.mean(a['nmse']):.3f}  mean aSAM "
              f"{np.mean(a['asam']):.4f}  mean vel {np.mean(a['vel']) if a['vel'] else float('nan'):.1f} "
              f"(n={len(a['vel'])})")


if __name__ == "__main__":
    what = sys.argv[1]

    def _idx(s, n=48):
        return list(range(n)) if s == "all" else [int(v) for v in s.split(",")]

    if what == "diag":
        diag(_idx(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else "tune", int(sys.argv[4]) if len(sys.argv) > 4 else 48)
    elif what == "cache":
        n = int(sys.argv[4]) if len(sys.argv) > 4 else 48
        cache(_idx(sys.argv[2], n), sys.argv[3] if len(sys.argv) > 3 else "tune", n,
              out=sys.argv[5] if len(sys.argv) > 5 else "shape_cache")
    elif what == "eval":
        offline(None if sys.argv[2] == "all" else _idx(sys.argv[2]), json.loads(sys.argv[4]) if len(sys.argv) > 4 else
                {f"n0={n0:g} J={J}": {"n0": n0, "J": J} for n0 in (3e3, 1e4, 3e4) for J in (1, 2)},
                where=sys.argv[3] if len(sys.argv) > 3 else "shape_cache")
    else:
        raise SystemExit(__doc__)
