"""Measure truth-free selection by Poisson thinning against the truth (prints what it measured).

    python benchmarks/tuning.py rl        # RL: best half-data iteration vs oracle full-data iteration
    python benchmarks/tuning.py wavelet   # wavelet2d1d: old default, tuned choice, oracle over the same grid, RL oracle
    python benchmarks/tuning.py kgrid 7 default          # k above 3 on a full-size suite scene (deviance and NMSE)
    python benchmarks/tuning.py rl_rule 2,3,7,8 small    # RL iteration rule against the oracle on suite scenes
    python benchmarks/tuning.py wave_iters 6,16,21,0 small   # is the chosen wavelet fit under-converged?
    python benchmarks/tuning.py null_iters 1,6,11 small  # null space zero vs threshold (iterations by thinning) vs RL
    python benchmarks/tuning.py hindsight 0,1,6 heldout small  # 'auto' choice vs best visited candidate in hindsight
    python benchmarks/tuning.py hindsight 73,78 heldout small auto 96 science  # + each candidate's line-map errors
    python benchmarks/tuning.py hindsight 0-191 heldout default auto table  # the README table's 192 held-out rows
    python benchmarks/tuning.py --ladder-score last hindsight 0-23 tune default auto 24  # rungs by their last deviance
    python benchmarks/tuning.py --threshold-max-iter 157 hindsight 0-47 tune small auto 48  # session 48's longer cap
    python benchmarks/tuning.py hindsight_csv out.csv full=a.log small=b.log  # hindsight logs as one CSV
    python benchmarks/tuning.py ladder_scores 0-143 full out.jsonl  # k rungs: deviance by fraction, split, iteration
    python benchmarks/tuning.py ladder_scores_table full out.jsonl  # ... against the best rung on all counts
    python benchmarks/tuning.py shaped_family 73,78 heldout small 96  # families ranked before / after the shape prior
    python benchmarks/tuning.py guard_data 0,1,2 tune 48 out.jsonl 0,1,2  # curves + paired SEs per scene (JSON lines)
    python benchmarks/tuning.py guard_rules out.jsonl 0 25     # selection / transfer rules compared offline on them
    python benchmarks/tuning.py asam 0,2,5 heldout 24          # where the spectral angle loses to Y upsampled
    python benchmarks/tuning.py family_data 0,1,2 tune 48 out.jsonl  # every candidate's NMSE/velocity per iteration
    python benchmarks/tuning.py ladder_data 0,1 tune 48 out.jsonl default  # every k rung: deviance + squared error
    python benchmarks/tuning.py ladder_rules a.jsonl,b.jsonl 0,1,3  # k / zeroed-count / family rules offline (fit set)
    python benchmarks/tuning.py null_factor 0,1,2 tune 48 small      # null bands at f x the threshold vs zeroed
    python benchmarks/tuning.py ladder_top 1,9 heldout 24 out.jsonl  # k rungs 12, 16 above 8: steps and outcomes
    python benchmarks/tuning.py ladder_beyond 1130 heldout auto out.jsonl  # k rungs 24, 32 above 16 (session 68)
    python benchmarks/tuning.py ladder_beyond_summary results/ladder_beyond_s68.jsonl  # what they changed
    python benchmarks/tuning.py patience_data 0,1,2 tune 48 default out.jsonl  # thresholded runs, session-24 wait
    python benchmarks/tuning.py patience_rules a.jsonl,b.jsonl   # shorter waits replayed exactly on those runs
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

import xfusion
from bench_cli import done_records  # benchmarks/bench_cli.py
from xfusion import analysis, metrics, scenes, toy, tuning
from xfusion.grid import SPATIAL, SPECTRAL, assign_roles, fusion_grid
from xfusion.likelihood import PoissonLikelihood, PoissonTerm
from xfusion.operators.model import build_model
from xfusion.solvers.em import EMProx

SCENES = [("small", 1.0), ("small", 0.1), ("gaussian_rebin", 1.0), ("gaussian_rebin", 0.1), ("gaussian_rebin", 10.0),
          ("realistic_rebin", 1.0)]


def _by_index(path):
    """JSON-lines rows of ``path`` by their suite index (a later row replaces an earlier one)."""
    with open(path) as fh:
        return {r["index"]: r for r in map(json.loads, fh)}


def scene(name, factor, seed=0):
    cfg = toy.load_config(name)
    over = {"x": {"counts": cfg["x"]["counts"] * factor}, "y": {"counts": cfg["y"]["counts"] * factor}}
    return toy.make(name, seed=seed, **over)


def rl_nmse_curve(x, y, t, n_max):
    """NMSE (dB) of plain two-instrument RL on all counts at iterations 0..n_max."""
    x_obs, y_obs, _ = assign_roles(x, y)
    grid = fusion_grid(x_obs, y_obs)
    mx, my = build_model(grid, x_obs, SPATIAL), build_model(grid, y_obs, SPECTRAL)
    scale = float(np.mean(mx.weights))
    mx, my = mx.scaled(scale), my.scaled(scale)
    terms = [PoissonTerm(mx, x_obs.counts.values), PoissonTerm(my, y_obs.counts.values)]
    em = EMProx(PoissonLikelihood(terms))
    shape = mx.fused_shape
    flat = float(mx.reduced(np.ones((1, shape[2])))[1].sum()) * shape[0] * shape[1]
    z = np.full(shape, float(x_obs.counts.sum()) / flat, np.float32)
    st = em.init(z)
    tv = t.values
    out = [metrics.nmse(tv, st["z"] / scale)]
    for _ in range(n_max):
        st = em.step(st)
        out.append(metrics.nmse(tv, st["z"] / scale))
    return np.array(out)


def rl(cases=None):
    """Best half-data RL iteration (thinning) vs the oracle full-data iteration, and the NMSE lost by rules."""
    cases = cases or [(f"{n} x{f} seed {s}", (lambda n=n, f=f, s=s: scene(n, f, s))) for n, f in SCENES[:2]
                      for s in (0, 1)]
    rows = []
    for label, build in cases:
        x, y, t = build()
        t0 = time.perf_counter()
        cur = tuning.tune(x, y, regularization="none", seed=0, max_iter=120)
        el = time.perf_counter() - t0
        n_half = json.loads(cur.attrs["choice"])["half_data_iteration"]
        curve = rl_nmse_curve(x, y, t, min(150, max(40, 6 * n_half)))
        n_best = int(np.argmax(curve[1:]) + 1)
        at = {r: curve[min(int(round(r * n_half)), len(curve) - 1)] for r in (1.0, 1.41, 2.0)}
        rows.append((n_half, n_best, curve[n_best], at))
        print(f"{label:40s}: half-data best it {n_half:3d}, oracle full it {n_best:3d} ({curve[n_best]:.2f} dB); "
              + ", ".join(f"x{r}: {v - curve[n_best]:+.2f} dB" for r, v in at.items()) + f"; tune {el:.1f} s", flush=True)
    r = np.array([(a[0], a[1]) for a in rows], float)
    print("median ratio n_full/n_half = %.3f" % np.median(r[:, 1] / r[:, 0]))
    for k in (1.0, 1.41, 2.0):
        loss = np.array([a[3][k] - a[2] for a in rows])
        print(f"rule n_full = {k} n_half: mean loss {loss.mean():+.2f} dB, worst {loss.min():+.2f} dB, "
              f"within 0.5 dB {np.mean(loss >= -0.5):.0%}")


def treatments(cases):
    """NMSE of the null-space treatments at k = 1 (default stopping rule, and 20 iterations)."""
    for label, build in cases:
        x, y, t = build()
        out = []
        for ns, n1 in tuning.NULL_SPACE_CANDIDATES:
            for mi in (20, 50):
                out.append(f"{ns}/{n1}@{mi}: {fit_nmse(x, y, t, k=1.0, null_space=ns, n_scales_1d=n1, max_iter=mi)[0]:.2f}")
        rl = rl_nmse_curve(x, y, t, 40)
        print(f"{label:40s}: " + "  ".join(out) + f"  RL oracle {rl[1:].max():.2f} at {int(rl[1:].argmax()) + 1}", flush=True)


def old_default(x, y):
    """The pre-thinning rule (counts per Y voxel split at 15): k, n_scales_1d."""
    _, y_obs, _ = assign_roles(x, y)
    bright = float(y_obs.counts.sum()) / y_obs.counts.size >= 15.0
    return {"k": 0.5 if bright else 1.0, "n_scales_1d": 2 if bright else 5, "null_space": "zero"}


def fit_nmse(x, y, t, **kw):
    r = xfusion.fuse(x, y, progress=False, **kw)
    return metrics.nmse(t, r.flux), r


def suite_scenes(split="tune", n=10, size="small", start=0):
    from xfusion import scenes as sc

    out = []
    for spec in sc.suite(split, n=24)[start:start + n]:
        def build(spec=spec):
            x, y, truth = sc.from_spec(spec, size=size)
            return x, y, truth["flux"]
        out.append((spec["name"], build))
    return out


def wavelet(scenes=None):
    scenes = scenes or [(f"{n} x{f}", (lambda n=n, f=f: scene(n, f, 0))) for n, f in SCENES]
    summary = []
    for label, build in scenes:
        x, y, t = build()
        name, f = label, ""
        t0 = time.perf_counter()
        cur = tuning.tune(x, y, regularization="wavelet2d1d", seed=0)
        t_tune = time.perf_counter() - t0
        ch = tuning.choice(cur)
        t0 = time.perf_counter()
        n_tuned, r = fit_nmse(x, y, t, **ch)
        t_fit = time.perf_counter() - t0
        n_old, _ = fit_nmse(x, y, t, **old_default(x, y))
        ns, n1 = tuning.NULL_SPACE_DEFAULT
        grid = {json.dumps({"null_space": ns, "n_scales_1d": n1, "k": k}, sort_keys=True) for k in tuning.K_LADDER}
        oracle = {}
        for g in sorted(grid):
            oracle[g] = fit_nmse(x, y, t, **json.loads(g))[0]
        best = max(oracle, key=oracle.get)
        rl = rl_nmse_curve(x, y, t, 60)
        t0 = time.perf_counter()
        r_rl = xfusion.fuse(x, y, regularization="none", progress=False)
        t_rl = time.perf_counter() - t0
        n_rl = metrics.nmse(t, r_rl.flux)
        print(f"{name}: old default {n_old:.2f} dB | tuned {n_tuned:.2f} dB ({json.dumps(ch)}) | "
              f"oracle {oracle[best]:.2f} dB ({best}) | RL oracle {rl[1:].max():.2f} dB at it {int(rl[1:].argmax()) + 1} | "
              f"RL auto {n_rl:.2f} dB at it {r_rl.attrs['iterations']} ({t_rl:.1f} s) | "
              f"tune {t_tune:.1f} s + fit {t_fit:.1f} s ({r.attrs['iterations']} it)", flush=True)
        print("   evaluated: " + "; ".join(f"{s}: dev {d:.1f}" for s, d in zip(cur.setting.values, cur.mean_deviance.values)))
        print("   oracle grid: " + "; ".join(f"{g}: {v:.2f}" for g, v in oracle.items()), flush=True)
        summary.append((name, f, n_old, n_tuned, oracle[best], rl[1:].max()))
        print(f"   ratio (tune + fit) / fit = {(t_tune + t_fit) / t_fit:.2f}", flush=True)
    gap = np.array([s[4] - s[3] for s in summary])
    print(f"within 0.5 dB of oracle: {(gap <= 0.5).sum()}/{len(gap)}; within 1 dB: {(gap <= 1).sum()}/{len(gap)}")


def _suite_full(i, size, split="tune", n=24):
    """Suite scene ``i`` of ``xfusion.scenes.suite(split, n=n)``: ``(spec, x, y, truth Dataset)``."""
    from xfusion import scenes as sc

    spec = sc.suite(split, n=n)[i]
    x, y, truth = sc.from_spec(spec, size=size)
    return spec, x, y, truth


#: rows of the README table per size (session 50: 216; session 49: 192; 144 before)
TABLE_ROWS = 216


def table_n(i):
    """The suite size whose scene ``i`` is row ``i`` of the README table (``results/suite_heldout.csv``): rows 0-23,
    24-47, 48-71, 72-95 come from ``suite("heldout", n=24 | 48 | 72 | 96)``, rows 96-143 from ``n=144``, rows 144-167
    and 168-191 (session 49) from ``n=168`` and ``n=192``, rows 192-215 (session 50) from ``n=216`` (a suite's draws
    depend on its size: ``suite(n=96)[0]`` is another scene than row 0)."""
    if not 0 <= i < TABLE_ROWS:
        raise ValueError(f"the table has rows 0-{TABLE_ROWS - 1}; got {i}")
    return row_n(i)


def row_n(i):
    """The suite size whose scene ``i`` is held-out row ``i``: :func:`table_n`'s rule, which the fresh sets beyond the
    table (rows 216 on, ``results/suite_fresh_*.csv``: rows 408-431 from ``n=432``, ...) follow too."""
    return 144 if 96 <= i < 144 else 24 * (i // 24 + 1)


def suite_sizes(indices, split, n_suite):
    """The suite size of each index: ``n_suite`` for all, or with "table" each held-out row's own (:func:`table_n`);
    ``ValueError`` for "table" with another split or an index outside the table."""
    if n_suite != "table":
        return [int(n_suite)] * len(indices)
    if split != "heldout":
        raise ValueError("N 'table' names the held-out rows of the README table; give the split 'heldout'")
    return [table_n(i) for i in indices]


def _suite_scene(i, size, split="tune", n=24):
    spec, x, y, truth = _suite_full(i, size, split, n)
    return spec["name"], x, y, truth["flux"]


def kgrid(indices, size="default", ks=(2.0, 3.0, 4.5, 6.0, 8.0)):
    """Wavelet k above the old ladder top: held-out deviance of each k (same warm start, 12 iterations, no
    abandonment) and NMSE of the full fit at each k (python benchmarks/tuning.py kgrid 7 default)."""
    for i in indices:
        name, x, y, t = _suite_scene(i, size)
        sp = tuning._splits([x, y], 0.5, 1, 0, "float32")[0]
        z0 = tuning._run_em(sp, None, sp.start(), 3, None)[0]
        dev = {k: tuning._run_em(sp, tuning._wavelet_reg({}, {"k": k, "null_space": "zero", "n_scales_1d": 2}), z0,
                                 tuning.CANDIDATE_ITER, 1e-4)[1][-1] for k in ks}
        m = min(dev.values())
        out = [(k, round(fit_nmse(x, y, t, k=k, null_space="zero", n_scales_1d=2)[0], 2), round(dev[k] - m, 1))
               for k in ks]
        print(f"{name}: (k, NMSE dB, held-out deviance - min): {out}", flush=True)


def rl_rule(indices, size="small", n_max=150):
    """Plain RL: oracle full-data iteration vs the best half-data iteration of the joint held-out deviance and of
    each instrument's own (python benchmarks/tuning.py rl_rule 2,3,7,8 small); NMSE lost by xfusion's rule."""
    losses = []
    for i in indices:
        name, x, y, t = _suite_scene(i, size)
        curve = rl_nmse_curve(x, y, t, n_max)
        cur = tuning.tune(x, y, regularization="none", seed=0, max_iter=n_max)
        ch = json.loads(cur.attrs["choice"])  # with the diagnostics (tuning.choice keeps the fuse options only)
        best = int(np.argmax(curve[1:]) + 1)
        n = min(ch["max_iter"], len(curve) - 1)
        losses.append(curve[n] - curve[best])
        print(f"{name}: oracle it {best} ({curve[best]:.2f} dB); half-data best {ch['half_data_iteration']} (sharp-"
              f"spatial {ch['spatial_iteration']}, sharp-spectral {ch['spectral_iteration']}) -> {ch['max_iter']}: "
              f"{losses[-1]:+.2f} dB", flush=True)
    loss = np.array(losses)
    print(f"rule: mean loss {loss.mean():+.2f} dB, worst {loss.min():+.2f} dB, within 0.5 dB {np.sum(loss >= -0.5)}/"
          f"{loss.size}")


def _nmse_curve_fit(x, y, t, n, changes=None, **kw):
    """NMSE (dB) of ``xfusion.fuse(x, y, max_iter=n, tol=None, **kw)`` at iterations 1..n (callback on the iterate);
    ``changes`` (a list, optional) receives the relative change of the iterate at each iteration."""
    import math

    x_sp, _, _ = assign_roles(x, y)
    scale = float(np.mean(build_model(fusion_grid(x, y), x_sp, SPATIAL).weights))
    t32 = t.values.astype(np.float32).ravel()
    tn = float(np.dot(t.values.astype(np.float64).ravel(), t.values.astype(np.float64).ravel()))
    curve = []

    def cb(it, state):
        d = (state["z"] / np.float32(scale)).ravel() - t32
        curve.append(10.0 * math.log10(tn / max(float(np.dot(d, d)), 1e-300)))
        if changes is not None:
            changes.append(float(state.get("iterate_change", np.nan)))
        return False

    r = xfusion.fuse(x, y, max_iter=n, tol=None, progress=False, callback=cb, **kw)
    last = metrics.nmse(t.values, r.flux.values)
    if abs(last - curve[-1]) > 0.02:
        raise RuntimeError(f"iterate scale mismatch: {last:.3f} vs {curve[-1]:.3f} dB")
    return np.array(curve)


def wave_iters(indices, size="small", n_max=200):
    """Is the chosen wavelet fit under-converged? For each suite scene (tuning seeds): the 'auto' choice, the
    wavelet fit with the chosen k (or k of the wavelet candidates' best) at 50/100/200 iterations (tol=None),
    null_space zero vs threshold, the default stopping rule (tol 1e-4, 50 it), the RL oracle, and the best
    half-data iteration of the held-out deviance along the chosen wavelet candidate (truth-free)."""
    for i in indices:
        name, x, y, t = _suite_scene(i, size)
        t0 = time.perf_counter()
        cur = tuning.select(x, y, complete=True)
        ch = tuning.choice(cur)
        wch = tuning.ladder_choice(cur)
        t_sel = time.perf_counter() - t0
        d = xfusion.fuse(x, y, progress=False, regularization="wavelet2d1d", **wch)
        n_def = metrics.nmse(t.values, d.flux.values)
        out = {}
        for ns in ("zero", "threshold"):
            c = _nmse_curve_fit(x, y, t, n_max, regularization="wavelet2d1d", **dict(wch, null_space=ns))
            out[ns] = c
        rl = rl_nmse_curve(x, y, t, 150)
        # truth-free: held-out deviance along the chosen candidate (half data), from the same warm start
        sp = tuning._splits([x, y], 0.5, 1, 0, "float32")[0]
        z0 = tuning._run_em(sp, None, sp.start(), 3, None)[0]
        _, hc, _, _ = tuning._run_em(sp, tuning._wavelet_reg({}, wch), z0, n_max, None)
        n_h = int(np.argmin(hc[1:]) + 1)
        z = out["zero"]
        th = out["threshold"]
        print(f"{name}: auto {ch} (select {t_sel:.0f} s); wavelet {wch}: default stop {n_def:.2f} dB "
              f"({d.attrs['iterations']} it) | zero @50/100/200 {z[49]:.2f}/{z[99]:.2f}/{z[n_max - 1]:.2f} best "
              f"{z.max():.2f}@{int(z.argmax()) + 1} | threshold @50/100/200 {th[49]:.2f}/{th[99]:.2f}/"
              f"{th[n_max - 1]:.2f} best {th.max():.2f}@{int(th.argmax()) + 1} | RL oracle {rl[1:].max():.2f}@"
              f"{int(rl[1:].argmax()) + 1} | half-data held-out best it {n_h} (+3 warm) of {len(hc) - 1}; "
              f"deviance at 12/50/100/min: {hc[12]:.1f}/{hc[min(50, len(hc) - 1)]:.1f}/{hc[min(100, len(hc) - 1)]:.1f}/"
              f"{min(hc):.1f}", flush=True)


def null_iters(indices, size="small", n_max=100, n_suite=24):
    """Null-space zeroing vs thresholding with a thinning-chosen iteration count (suite scenes, tuning seeds).

    Per scene: the 'auto' choice; the wavelet candidates' best k fitted with null_space "zero" (fuse's default
    stopping rule) and "threshold" (NMSE at every iteration to ``n_max``); the held-out deviance along the
    "threshold" candidate on the half-data split (joint and per instrument) and the iteration it transfers to
    (:func:`xfusion.tuning.rl_transfer`, as for plain RL); the RL oracle and RL at its truth-free pick."""
    rows = []
    for i in indices:
        name, x, y, t = _suite_scene(i, size, n=n_suite)
        t0 = time.perf_counter()
        cur = tuning.select(x, y, complete=True)
        ch = tuning.choice(cur)
        wch = tuning.ladder_choice(cur)
        rl_pick = json.loads(cur.attrs["details"])["rl"]["max_iter"]
        d = xfusion.fuse(x, y, progress=False, regularization="wavelet2d1d", **wch)
        n_zero = metrics.nmse(t.values, d.flux.values)
        th = _nmse_curve_fit(x, y, t, n_max, regularization="wavelet2d1d", **dict(wch, null_space="threshold"))
        rl = rl_nmse_curve(x, y, t, 150)
        sp = tuning._splits([x, y], 0.5, 1, 0, "float32")[0]
        z0 = tuning._run_em(sp, None, sp.start(), 3, None)[0]
        pp = []
        _, hc, _, _ = tuning._run_em(sp, tuning._wavelet_reg({}, dict(wch, null_space="threshold")), z0, n_max, None,
                                     past_min=10, parts=pp)
        pp = np.asarray(pp)
        n_h = int(np.argmin(hc[1:]) + 1)
        n_sp, n_se = int(np.argmin(pp[1:, 0]) + 1), int(np.argmin(pp[1:, 1]) + 1)
        n_t = min(tuning.rl_transfer(n_h + 3, n_sp + 3, n_se + 3), n_max)
        auto = rl[min(ch["max_iter"], 150)] if ch["regularization"] == "none" else n_zero
        row = dict(name=name, k=wch["k"], zero=n_zero, th_pick=th[n_t - 1], th_pick_it=n_t,
                   th_x1=th[min(n_h + 3, n_max) - 1], th_half_it=n_h + 3, th_sp_se=(n_sp + 3, n_se + 3), th_best=th.max(),
                   th_best_it=int(th.argmax()) + 1, th50=th[49], rl_best=rl[1:].max(), rl_best_it=int(rl[1:].argmax()) + 1,
                   rl_pick=rl[min(rl_pick, 150)], rl_pick_it=rl_pick, auto=auto, auto_choice=ch["regularization"],
                   dev_zero=float(min(v for s_, v in zip(cur["setting"].values, cur["mean_deviance"].values)
                                      if "regularization" not in json.loads(s_))), dev_th=float(min(hc)),
                   dev_rl=float(cur["mean_deviance"].values[-1]), t=time.perf_counter() - t0)
        rows.append(row)
        print(json.dumps({k: (round(v, 2) if isinstance(v, float) else v) for k, v in row.items()}), flush=True)
    for key in ("zero", "th_pick", "th50", "th_best", "rl_pick", "rl_best", "auto"):
        v = np.array([r[key] for r in rows])
        print(f"{key}: mean {v.mean():.2f} dB; vs RL oracle mean {np.mean(v - [r['rl_best'] for r in rows]):+.2f}, "
              f">= oracle - 0.5 in {np.sum(v >= np.array([r['rl_best'] for r in rows]) - 0.5)}/{len(rows)}", flush=True)


def _reusable(reuse, size, name, ch, cur):
    """The candidates of the :func:`hindsight_csv` row of ``reuse`` (a CSV path or None) for this scene when the
    selection visited the same candidates and made the same choice (so every all-count fit, shape prior included,
    is the same as then): (its candidates, the choice's NMSE, the best NMSE, the loss); else None."""
    import csv

    if reuse is None:
        return None
    label = "full" if size == "default" else size
    with open(reuse, newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["size"] == label and r["scene"] == name]
    if len(rows) != 1 or rows[0]["choice"] != json.dumps(ch, sort_keys=True):
        return None
    old = json.loads(rows[0]["candidate_scores"])
    now = [json.loads(str(st)) for st in cur["setting"].values]
    if [c["setting"] for c in old if not c["setting"].get("chosen")] != now:
        return None
    return old, float(rows[0]["nmse_choice_db"]), float(rows[0]["nmse_best_db"]), float(rows[0]["loss_db"])


def _delivery(x, y, ch, half):
    """The shape prior ``fuse``'s default delivers for the choice ``ch`` (:func:`xfusion.tuning.floor_off_sources`:
    thinning's pseudo-counts, level 0 >= the floor, and thinning's own level 0 in the footprints of line-free sources
    for a wavelet fit), its ``source_iter`` and the field's count (:func:`xfusion.tuning.run_on`: a zeroed fit
    stopped early by thinning runs on at its compact sources, session 53; a thresholded one whose sources hold
    enough of the counts stops its field earlier while they run on, session 59), as a function of a candidate's
    fuse options: the options to add to (and override in) them."""
    from suite import line_free_peaks, sources_and_share, takes_sources

    tuned = tuning.tune_shape(x, y, settings={k: v for k, v in ch.items() if k not in tuning.DIAG_KEYS},
                              half_fit=half)[0]
    pair, triple = tuning.with_pixel_floor(tuned), tuning.floor_off_sources(tuned, peaks=line_free_peaks(x, y))
    peaks, share = sources_and_share(x, y)

    def extra(kw):
        out = {"shape_prior": triple if takes_sources(kw) else pair}
        if kw.get("regularization", "wavelet2d1d") == "wavelet2d1d":
            n, run = tuning.run_on(kw, kw.get("max_iter"), peaks, share)
            out["source_iter"] = run or "none"
            if n != kw.get("max_iter"):
                out["max_iter"] = n
        return out
    return extra


def hindsight(indices, split="heldout", size="small", shape="auto", n_suite=24, science=False, reuse=None):
    """Issue 13 target "the truth-free choice lands within 0.5 dB of the best setting in hindsight (same candidate
    grid)": for each suite scene, every candidate the 'auto' selection visited (the k rungs at the default null
    space, the thresholded candidate, plain RL at its transferred iteration count) is fitted on ALL counts
    (python benchmarks/tuning.py hindsight 0,1,6,11 heldout small); prints the NMSE of each, the choice's loss
    against the best, and the fraction within 0.5 dB. ``shape``: "auto" delivers every candidate through the
    spectral-shape prior as the default fuse delivers its choice (``shape_prior``: AUTO_PSEUDO_COUNTS until session
    19; since session 20 the pseudo-counts ``tuning.tune_shape`` picks for the choice, the same for every candidate;
    since session 21 scored on the choice's own half-data iterate);
    "none": off (the session-7 measure). ``n_suite``: the suite's size (``xfusion.scenes.suite(split, n=n_suite)``; 48 gives 24
    more scenes, 24-47, that the 24-scene suite does not hold; "table": each held-out index from the suite size that
    gives the README table's row, :func:`table_n`, session 45). ``science`` (session 40): also the velocity- and
    line-width-map RMS errors (km/s, brighter half, as ``benchmarks/suite.py`` measures them) of every candidate, on
    scenes with lines. ``reuse`` (session 47; a :func:`hindsight_csv` file, not with ``science``): where the
    selection made the same choice among the same candidates as that file's row, the all-count NMSEs are taken from
    it (the selection's own deviances printed) instead of fitting every candidate again; only valid when the
    delivery (:func:`_delivery`) has not changed since that file was written (session 53 changed it: the sources'
    run on of a zeroed choice; session 59 again: the thresholded field stopped early where sources hold the counts)."""
    import os

    losses = []
    for i, n in zip(indices, suite_sizes(indices, split, n_suite)):  # every index checked before any work
        spec, x, y, truth = _suite_full(i, size, split, n)
        name, t = spec["name"], truth["flux"]
        lm = scenes.line_map_args(truth) if science else None
        lsf = float(truth.attrs["lsf_sigma_kev"])
        truth_maps = analysis.line_map(t, lsf_sigma=lsf, **lm) if lm else None

        def vel(flux):
            if truth_maps is None:
                return ""
            e = analysis.map_errors(truth_maps, analysis.line_map(flux, lsf_sigma=lsf, **lm), fraction=0.5)
            return f", v {e['velocity_rms_kms']:.1f} w {e['width_rms_kms']:.1f} km/s"
        t0 = time.perf_counter()
        half = {}
        cur = tuning.select(x, y, complete=True, half_fit=half)
        ch = tuning.choice(cur)
        old = _reusable(reuse, size, name, ch, cur) if not science else None
        if old is not None:  # the row's own numbers (its loss unrounded), the selection's deviances; no fit
            devs = list(cur["mean_deviance"].values)
            res = [(c["setting"], float(devs[j]) if j < len(devs) else math.nan, c["nmse_db"], "")
                   for j, c in enumerate(old[0])]
            chosen, best, loss = old[1:]
        else:
            extra = _delivery(x, y, ch, half) if shape == "auto" else (lambda kw: {})
            res = []
            for st, dev in zip(cur["setting"].values, cur["mean_deviance"].values):
                cand = json.loads(str(st))
                kw = dict(cand)
                kw.setdefault("regularization", "wavelet2d1d")
                r = xfusion.fuse(x, y, progress=False, **{**kw, **extra(kw)})
                res.append((cand, float(dev), metrics.nmse(t.values, r.flux.values), vel(r.flux)))
            found = [v for c, _, v, _ in res
                     if {"regularization": "wavelet2d1d", **c} == {"regularization": "wavelet2d1d", **ch}]
            if not found:  # the zeroed ladder candidate with its iteration count by thinning (session 8): one more fit
                r = xfusion.fuse(x, y, progress=False, **{**ch, **extra(ch)})
                res.append((dict(ch, chosen=True), math.nan, metrics.nmse(t.values, r.flux.values), vel(r.flux)))
                found = [res[-1][2]]
            chosen, best = found[0], max(v for _, _, v, _ in res)
            loss = chosen - best
        losses.append(loss)
        print(f"{name}: choice {ch} -> {chosen:.2f} dB, best in hindsight {best:.2f} dB, loss {loss:+.2f} dB; "
              + "; ".join(f"{json.dumps(c, sort_keys=True)}: dev {d:.0f}, {v:.2f} dB{sv}" for c, d, v, sv in res)
              + f" ({time.perf_counter() - t0:.0f} s, load {os.getloadavg()[0]:.1f})", flush=True)
        if old is not None:
            print(f"reused: {name}", flush=True)
    loss = np.array(losses)
    print(f"within 0.5 dB of the best candidate in hindsight: {np.sum(loss >= -0.5)}/{loss.size}; mean loss "
          f"{loss.mean():+.2f} dB, worst {loss.min():+.2f} dB")


def hindsight_csv(out, *logs):
    """One CSV row per scene of :func:`hindsight` logs (``SIZE=LOG``, e.g. ``full=a.log small=b.log``): size, scene,
    the choice and the best candidate (JSON), their NMSE (dB), the loss and whether it is within 0.5 dB, the number of
    candidates and (session 46) every candidate's setting, held-out deviance on half the counts (null for the chosen
    zeroed candidate at its transferred count, an extra fit) and NMSE on all counts (dB), a JSON list; then prints
    the count within 0.5 dB per size (session 45: ``results/hindsight_heldout.csv``). From a ``science`` log each
    candidate also carries its velocity- and width-map RMS errors (``velocity_rms_kms``, ``width_rms_kms``; session
    73)."""
    import ast
    import csv
    import re

    line_re = re.compile(r"^(.+?): choice (\{.*?\}) -> (\S+) dB, best in hindsight (\S+) dB, loss (\S+) dB; (.*) "
                         r"\(\d+ s, load \S+\)$")
    sci_re = re.compile(r"v (\S+) w (\S+) km/s")
    rows = []
    for item in logs:
        size, _, path = item.partition("=")
        if not path:
            raise ValueError(f"give each log as SIZE=PATH (e.g. full=a.log); got {item!r}")
        for line in open(path):
            m = line_re.match(line.rstrip("\n"))
            if not m:
                continue
            cands, maps = [], []
            for part in m.group(6).split("; "):
                js, rest = part.split(": dev ", 1)
                dev, nmse = rest.split(", ")[:2]
                cands.append((json.loads(js), float(nmse.split(" dB")[0]), None if dev == "nan" else float(dev)))
                sci = sci_re.search(rest)  # a `science` log (session 40): the candidate's line-map errors
                maps.append({} if sci is None else {"velocity_rms_kms": float(sci.group(1)),
                                                    "width_rms_kms": float(sci.group(2))})
            best = max(cands, key=lambda c: c[1])[0]
            loss = float(m.group(5))
            rows.append({"size": size, "scene": m.group(1), "choice": json.dumps(ast.literal_eval(m.group(2)),
                                                                                sort_keys=True),
                         "nmse_choice_db": m.group(3), "nmse_best_db": m.group(4), "loss_db": m.group(5),
                         "within_0_5_db": loss >= -0.5, "best_candidate": json.dumps(best, sort_keys=True),
                         "candidates": len(cands),
                         "candidate_scores": json.dumps([{"setting": c, "heldout_deviance": d, "nmse_db": v, **e}
                                                         for (c, v, d), e in zip(cands, maps)])})
    if not rows:
        raise ValueError(f"no hindsight result line in {', '.join(logs)}: not logs of `tuning.py hindsight`")
    with open(out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    for size in dict.fromkeys(r["size"] for r in rows):
        rs = [r for r in rows if r["size"] == size]
        print(f"{size}: {sum(r['within_0_5_db'] for r in rs)}/{len(rs)} within 0.5 dB of the best candidate in "
              f"hindsight; mean loss {np.mean([float(r['loss_db']) for r in rs]):+.3f} dB")


#: the held-out hindsight rows with every candidate's scores, beside this script: the rungs scored by their last
#: deviance, as ladder_scores probed them in session 46 (``results/hindsight_heldout.csv`` holds today's default since
#: session 47, whose ladder visits other rungs on some rows)
HINDSIGHT_CSV = str(Path(__file__).resolve().parent / "results" / "hindsight_heldout_last.csv")
#: ladder_scores variants: (label, thinning fraction, split index, prior iterations after the warm start)
SCORE_RUNS = (("f0.5", 0.5, 0, 24), ("f0.5 split1", 0.5, 1, 12), ("f0.7", 0.7, 0, 12), ("f0.8", 0.8, 0, 12))


def _hindsight_rows(path, size):
    """The held-out rows of a :func:`hindsight_csv` file for one size (``full`` or ``small``), table order."""
    import csv

    rows = [r for r in csv.DictReader(open(path)) if r["size"] == size]
    if len(rows) != 144 or "candidate_scores" not in rows[0]:
        raise ValueError(f"{path}: expected the 144 {size} rows of hindsight_csv with candidate_scores (session 46)")
    return rows


def _zeroed_rungs(row, what="nmse_db"):
    """{k: all-count NMSE (dB)} of the zeroed rungs a hindsight row visited (each at fuse's default stop); ``what``
    ``heldout_deviance``: the deviance the ladder scored each rung by (at iteration 12, or earlier where the run
    stopped because its deviance rose twice above the best rung's)."""
    return {c["setting"]["k"]: c[what] for c in json.loads(row["candidate_scores"])
            if c["setting"].get("null_space") == "zero" and "regularization" not in c["setting"]}


def ladder_scores(indices, size, out, hind=HINDSIGHT_CSV):
    """Session 46 probe: is the k rung that the held-out deviance picks (half the counts, 12 prior iterations) off
    the all-count best rung because of the split's noise, of fitting on half the counts, or of scoring after 12
    iterations? Per held-out table row (``size`` ``full`` or ``small``): every zeroed rung the hindsight run visited
    (``hind``: its CSV), run from the tuning's warm start (3 EM iterations on the fitted part) without abandonment;
    the held-out deviance at every prior iterate for each of :data:`SCORE_RUNS` (fraction 0.5 on the tuning's split
    0 to 24 iterations, on split 1, and fractions 0.7 and 0.8, to 12). One JSON line per row (resumable);
    :func:`ladder_scores_table` compares the picks (python benchmarks/tuning.py ladder_scores 0-143 full out.jsonl)."""
    rows = _hindsight_rows(hind, size)
    done = set(done_records(out))
    for i in indices:
        if i in done:
            continue
        t0 = time.perf_counter()
        spec, x, y, _ = _suite_full(i, "default" if size == "full" else "small", "heldout", table_n(i))
        if spec["name"] != rows[i]["scene"]:
            raise ValueError(f"row {i}: scene {spec['name']!r} is not the CSV's {rows[i]['scene']!r}")
        curves = {}
        for label, frac, s, n in SCORE_RUNS:
            sp = tuning._splits([x, y], frac, s + 1, 0, "float32")[s]
            z0 = tuning._run_em(sp, None, sp.start(), 3, None)[0]
            curves[label] = {str(k): [round(float(c), 3) for c in tuning._run_em(
                sp, tuning._wavelet_reg({}, {"k": k, "null_space": "zero", "n_scales_1d": 2}), z0, n, None)[1]]
                for k in sorted(_zeroed_rungs(rows[i]))}
        with open(out, "a") as fh:
            fh.write(json.dumps({"index": i, "scene": spec["name"], "curves": curves}) + "\n")
        print(f"{i} {spec['name']} {time.perf_counter() - t0:.0f} s", flush=True)


def ladder_scores_table(size, path, hind=HINDSIGHT_CSV, csv_out=None):
    """Summarise :func:`ladder_scores` rows: per scoring variant, the rung of least held-out deviance (at iteration H
    or the least over iterations 1..H; "ladder as run": the deviances the hindsight run recorded) against the rung of
    best all-count NMSE (each at fuse's default stop, from the hindsight CSV): within 0.5 dB of it, mean loss, exact
    hits. ``csv_out``: one row per scene with every pick (session 46: ``results/ladder_scores_{full,small}.csv``)."""
    import csv

    rows = _hindsight_rows(hind, size)
    recs = {r["index"]: r for r in map(json.loads, open(path))}
    variants = [("ladder as run", None, 12, False)] + [(f"{lab} H12", lab, 12, False) for lab, *_ in SCORE_RUNS] + \
        [(f"f0.5 H{h}{' min' if m else ''}", "f0.5", h, m) for h in (6, 8, 12, 24) for m in (False, True)
         if (h, m) != (12, False)]
    table, per_scene = {v[0]: [] for v in variants}, []
    for i in sorted(recs):
        nm = _zeroed_rungs(rows[i])
        top = max(nm.values())
        line = {"size": size, "row": i, "scene": rows[i]["scene"], "hindsight_loss_db": rows[i]["loss_db"],
                "rungs": json.dumps(nm), "best_k": max(nm, key=nm.get)}
        for name, lab, h, use_min in variants:
            if lab is None:
                score = _zeroed_rungs(rows[i], "heldout_deviance")
            else:
                score = {float(k): (min(v[1:h + 1]) if use_min else v[h]) for k, v in recs[i]["curves"][lab].items()}
            k = min(score, key=score.get)
            table[name].append(nm[k] - top)
            line[name] = k
        per_scene.append(line)
    print(f"{size}: {len(recs)} rows; the rung of least held-out deviance against the best rung on all counts")
    for name, loss in table.items():
        a = np.array(loss)
        print(f"  {name:18s} within 0.5 dB {np.sum(a >= -0.5)}/{a.size}, mean loss {a.mean():+.3f} dB, "
              f"exact {np.sum(a == 0)}")
    if csv_out:
        with open(csv_out, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(per_scene[0]))
            w.writeheader()
            w.writerows(per_scene)


def shaped_family(indices, split="heldout", size="small", n_suite=24):
    """Session 40 probe: would comparing the families AFTER the spectral-shape prior rank them as the truth does?
    Per suite scene, on the split 'auto' uses: each family's half-data iterate as :func:`family_data` finds it
    (zeroed ladder k: best of its first CANDIDATE_ITER; the thresholded candidate at NULL_FACTOR and plain RL: best
    of their runs) scored by the held-out deviance as it is, and through every rung of SHAPE_LADDER (the best
    rung kept). Prints both rankings and the 'auto' choice; the truth is read from ``hindsight ... science``."""
    from xfusion.regularizers.shape import shrink_ladder

    for i in indices:
        spec, x, y, _ = _suite_full(i, size, split, n_suite)
        t0 = time.perf_counter()
        ch, wch, _, _ = _auto_record(x, y)
        sp = tuning._splits([x, y], 0.5, 1, 0, "float32")[0]
        z0 = tuning._run_em(sp, None, sp.start(), 3, None)[0]
        counts = float(sum(np.sum(t.data, dtype=np.float64) for t in sp.terms))
        th = dict(wch, null_space="threshold", null_factor=tuning.NULL_FACTOR)
        rows = {}
        for fam, reg, start, n_max, pm in (("zero", tuning._wavelet_reg({}, wch), z0, 47, None),
                                           ("th", tuning._wavelet_reg({}, th), z0, tuning.THRESHOLD_MAX_ITER, 10),
                                           ("rl", None, sp.start(), 100, 10)):
            zs, c, _ = _half_run(sp, reg, start, n_max, past_min=pm)
            lim = tuning.CANDIDATE_ITER if fam == "zero" else len(c) - 1
            jb = int(np.argmin(c[1:lim + 1]) + 1)
            z = np.asarray(zs[jb], dtype=np.float64)
            del zs
            raw = sp.score(z.astype(sp.dtype))
            shaped = {json.dumps(n0): sp.score_models(tuning._predicted(sp, cube.astype(sp.dtype)))
                      for n0, cube in shrink_ladder(z, counts, tuning.SHAPE_LADDER)}
            best = min(shaped, key=shaped.get)
            rows[fam] = (jb, raw, best, shaped[best])
        lo_raw = min(r[1] for r in rows.values())
        lo_sh = min(r[3] for r in rows.values())
        fam_of = "rl" if ch.get("regularization") == "none" else "th" if ch.get("null_space") == "threshold" else "zero"
        print(f"{spec['name']} ({size}): auto chose {fam_of}; "
              + "; ".join(f"{f}: it {r[0]}, deviance {r[1] - lo_raw:+.0f} raw, {r[3] - lo_sh:+.0f} shaped (n0 {r[2]})"
                          for f, r in rows.items())
              + f" ({time.perf_counter() - t0:.0f} s)", flush=True)


def _half_run(sp, reg, z0, n_max, past_min=10):
    """Scored EM(+prox) on part A of split ``sp`` from ``z0`` (no stopping rule but ``past_min``), keeping every
    iterate: (iterates, joint held-out curve, per-observation curves (iterate, observation))."""
    solver = tuning._ScoredEM(sp, reg)
    st = solver.init(np.array(z0, dtype=sp.dtype, copy=True))
    zs, curve, parts = [st["z"].copy()], [st["heldout"]], [list(st["heldout_parts"])]
    for it in range(1, n_max + 1):
        st = solver.step(st)
        zs.append(st["z"].copy())
        curve.append(st["heldout"])
        parts.append(list(st["heldout_parts"]))
        i_min = int(np.argmin(curve))
        if past_min is not None and it - i_min >= max(past_min, i_min):
            break
    return zs, np.array(curve), np.array(parts)


def _paired(sp, za, zb):
    """Held-out deviance difference D(za) - D(zb) on part B of split ``sp`` and its Poisson standard error
    ``2 sqrt(sum m (log ma/mb)^2)`` (m = mean of the two predictions: the variance of the held-out counts)."""
    diff, var = 0.0, 0.0
    for t, h, k in zip(sp.terms, sp.held, sp.masks):
        ma = sp.ratio * t._plus_background(t.model.forward(za)).astype(np.float64)
        mb = sp.ratio * t._plus_background(t.model.forward(zb)).astype(np.float64)
        if k is not None:
            ma, mb, hh = ma[k], mb[k], h[k]
        else:
            hh = h
        lr = np.log(np.maximum(ma, 1e-30) / np.maximum(mb, 1e-30))
        diff += float(2.0 * np.sum(ma - mb - hh * lr))
        var += float(4.0 * np.sum(0.5 * (ma + mb) * lr * lr))
    return diff, math.sqrt(var)


def _auto_record(x, y):
    """The 'auto' selection of a scene as the data collectors record it: ``(choice, ladder choice, details,
    {setting: mean held-out deviance})``."""
    cur = tuning.select(x, y, complete=True)
    devs = {str(s): float(v) for s, v in zip(cur["setting"].values, cur["mean_deviance"].values)}
    return tuning.choice(cur), tuning.ladder_choice(cur), json.loads(cur.attrs["details"]), devs


def guard_data(indices, split="tune", n_suite=48, size="small", seeds=(0, 1, 2), out=None, n_max=100):
    """Data for rules against over-running candidates (issue 13, session 7): per suite scene, the 'auto' choice and
    deviances; full-data NMSE curves of the thresholded candidate (ladder k) and of plain RL, the zeroed ladder
    fit's NMSE; on each thinning split (``seeds``): the half-data held-out curves (joint and per instrument) of the
    thresholded candidate from the warm start and of RL from the flat start, the zeroed candidate's deviance at
    tuning.CANDIDATE_ITER, and the paired Poisson standard errors of the deviance differences (each iterate of the
    thresholded curve against its minimum; zero vs thresholded best; RL best vs thresholded best). One JSON line
    per scene (``out`` file, appended)."""
    for i in indices:
        name, x, y, t = _suite_scene(i, size, split, n=n_suite)
        t0 = time.perf_counter()
        ch, wch, det, devs = _auto_record(x, y)
        th_full = _nmse_curve_fit(x, y, t, n_max, regularization="wavelet2d1d", **dict(wch, null_space="threshold"))
        d = xfusion.fuse(x, y, progress=False, regularization="wavelet2d1d", **wch)
        zero_full = metrics.nmse(t.values, d.flux.values)
        rl_full = rl_nmse_curve(x, y, t, 150)
        splits = []
        for s in seeds:
            sp = tuning._splits([x, y], 0.5, 1, s, "float32")[0]
            z0 = tuning._run_em(sp, None, sp.start(), 3, None)[0]
            zz, zc, _, _ = tuning._run_em(sp, tuning._wavelet_reg({}, wch), z0, tuning.CANDIDATE_ITER, 1e-4)
            zs, tc, tp = _half_run(sp, tuning._wavelet_reg({}, dict(wch, null_space="threshold")), z0, n_max)
            jb = int(np.argmin(tc[1:]) + 1)
            se_iter = [_paired(sp, zs[j], zs[jb]) for j in range(len(zs))]
            rs, rc, rp = _half_run(sp, None, sp.start(), n_max)
            rb = int(np.argmin(rc[1:]) + 1)
            spec_idx = sp.spectral
            tp_sp = tp.sum(axis=1) - tp[:, spec_idx].sum(axis=1)
            rp_sp = rp.sum(axis=1) - rp[:, spec_idx].sum(axis=1)
            splits.append(dict(
                seed=s, zero_dev=float(zc[-1]), th_curve=tc.tolist(), th_spatial=tp_sp.tolist(),
                th_spectral=tp[:, spec_idx].sum(axis=1).tolist(), th_best=jb,
                th_se_vs_best=[[round(a, 2), round(b, 2)] for a, b in se_iter],
                zero_vs_th=list(_paired(sp, zz, zs[jb])), rl_curve=rc.tolist(), rl_spatial=rp_sp.tolist(),
                rl_spectral=rp[:, spec_idx].sum(axis=1).tolist(), rl_best=rb,
                rl_vs_th=list(_paired(sp, rs[rb], zs[jb])), zero_vs_rl=list(_paired(sp, zz, rs[rb]))))
            del zs, rs
        row = dict(name=name, index=i, choice=ch, ladder=wch, details=det, devs=devs, th_full=th_full.tolist(),
                   zero_full=zero_full, zero_full_iter=int(d.attrs["iterations"]), rl_full=rl_full.tolist(),
                   splits=splits, t=time.perf_counter() - t0)
        print(f"{name}: choice {ch}; zero {zero_full:.2f} dB; th best {th_full.max():.2f}@{int(th_full.argmax()) + 1}; "
              f"RL best {rl_full[1:].max():.2f}@{int(rl_full[1:].argmax()) + 1}; th half best "
              f"{[sp_['th_best'] for sp_ in splits]}; {row['t']:.0f} s", flush=True)
        if out:
            with open(out, "a") as fh:
                fh.write(json.dumps(row) + "\n")


def zero_data(indices, split="tune", n_suite=48, size="small", seeds=(0, 1, 2), out=None, n_max=100):
    """Data for the zeroed prior's iteration count (issue 13, session 8): per suite scene, the 'auto' choice, the
    k ladder's best setting (null space zeroed) and its full-data NMSE at every iteration 1..n_max (tol=None) with
    the relative iterate change (where fuse's default stop, IterateChange tol 1e-4 patience 5, max_iter 50, ends);
    on each thinning split (``seeds``): the half-data held-out deviance (joint, sharp-spatial, sharp-spectral) of
    the same setting from the tuning warm start (3 EM iterations) at every iteration to ``n_max``, and the paired
    Poisson standard error of each iterate's deviance against the curve's minimum. One JSON line per scene
    (``out``, appended)."""
    from xfusion.solvers.loop import IterateChange

    for i in indices:
        name, x, y, t = _suite_scene(i, size, split, n=n_suite)
        t0 = time.perf_counter()
        ch, wch, det, devs = _auto_record(x, y)
        changes = []
        full = _nmse_curve_fit(x, y, t, n_max, changes=changes, regularization="wavelet2d1d", **wch).tolist()
        stop = IterateChange(1e-4)
        n_def = 50
        for n in range(1, min(50, len(changes)) + 1):
            if stop({IterateChange.key: [np.nan] + changes[:n]}):
                n_def = n
                break
        splits = []
        for s in seeds:
            sp = tuning._splits([x, y], 0.5, 1, s, "float32")[0]
            z0 = tuning._run_em(sp, None, sp.start(), 3, None)[0]
            zs, zc, zp = _half_run(sp, tuning._wavelet_reg({}, wch), z0, n_max, past_min=None)
            jb = int(np.argmin(zc[1:]) + 1)
            se = [round(_paired(sp, zs[j], zs[jb])[1], 2) for j in range(len(zs))]
            spec = zp[:, sp.spectral].sum(axis=1)
            splits.append(dict(seed=s, curve=zc.tolist(), spatial=(zp.sum(axis=1) - spec).tolist(),
                               spectral=spec.tolist(), best=jb, se_vs_best=se))
            del zs
        row = dict(name=name, index=i, choice=ch, ladder=wch, details=det, devs=devs, zero_full=full,
                   iterate_change=changes, default_iter=n_def, splits=splits, t=time.perf_counter() - t0)
        f = np.array(full)
        print(f"{name}: choice {ch.get('regularization')} {ch.get('null_space', '')}; ladder k {wch['k']}; zero NMSE "
              f"default stop ({n_def} it) {f[n_def - 1]:.2f} dB, best {f.max():.2f}@{int(f.argmax()) + 1}, @10/20/30/50/100 "
              + "/".join(f"{f[j - 1]:.2f}" for j in (10, 20, 30, 50, 100) if j <= len(f))
              + f"; half-data best it (+3 warm) {[sp_['best'] + 3 for sp_ in splits]}; {row['t']:.0f} s", flush=True)
        if out:
            with open(out, "a") as fh:
                fh.write(json.dumps(row) + "\n")


def _zero_pick(sp, factor=1.0, cap=50, past_min=10, warm=3, cand_iter=12, se_mult=None):
    """Offline replay of tuning._zero_iterations on one zero_data split: (n_half, n_full, prior iterations run)."""
    c = np.asarray(sp["curve"], dtype=np.float64)
    limit = cap - warm
    it = min(cand_iter, len(c) - 1)
    while it < min(limit, len(c) - 1):
        i_min = int(np.argmin(c[1:it + 1]) + 1)
        if it - i_min >= max(past_min, i_min):
            break
        it += 1
    best = int(np.argmin(c[1:it + 1]) + 1)
    if se_mult is not None:  # earliest iterate within se_mult paired SE of the minimum (SEs are against the full run's)
        se = np.asarray(sp["se_vs_best"], dtype=np.float64)
        ok = [j for j in range(1, best + 1) if c[j] - c[best] <= se_mult * se[j]]
        best = ok[0] if ok else best
    n_half = best + warm
    return n_half, int(min(max(round(factor * n_half), warm + 1), cap)), it


def zero_rules(path, lo=0, hi=48, seed=0):
    """Offline comparison of iteration rules for the zeroed prior on zero_data rows (lo <= index < hi): NMSE lost
    against the best iteration in hindsight (1..50 and 1..100), against the best of 10/20/30/50/100, and the prior
    iterations the half-data runs needed (python benchmarks/tuning.py zero_rules s8_quality_zero_data.jsonl 0 24)."""
    seen = _by_index(path)
    rows = [seen[i] for i in sorted(seen) if lo <= i < hi]
    print(f"{len(rows)} scenes ({sum(r['choice'].get('null_space') == 'zero' for r in rows)} where 'auto' chose the "
          f"zeroed prior: marked *)")
    rules = {"default (tol 1e-4, max 50)": None}
    for n in (10, 15, 20, 30):
        rules[f"fixed {n}"] = ("fixed", n)
    for f in (0.75, 1.0, 1.25, 1.5, 2.0):
        rules[f"x{f:g} n_half"] = ("factor", f)
    rules["x1 n_half, cap 100"] = ("factor", 1.0, 100)
    rules["x1.25 n_half, cap 100"] = ("factor", 1.25, 100)
    rules["x1 n_half 1SE"] = ("se", 1.0, 1.0)
    rules["x1.5 n_half 1SE"] = ("se", 1.5, 1.0)
    for label, rule in rules.items():
        loss50, loss100, lossg, its, picks = [], [], [], [], []
        for r in rows:
            f = np.asarray(r["zero_full"], dtype=np.float64)
            sp = [s for s in r["splits"] if s["seed"] == seed][0]
            if rule is None:
                n = r["default_iter"]
                it = 0
            elif rule[0] == "fixed":
                n, it = rule[1], 0
            elif rule[0] == "factor":
                cap = rule[2] if len(rule) > 2 else 50
                _, n, it = _zero_pick(sp, rule[1], cap=cap)
            else:
                _, n, it = _zero_pick(sp, rule[1], se_mult=rule[2])
            v = f[min(n, len(f)) - 1]
            picks.append(n)
            its.append(it)
            loss50.append(v - f[:50].max())
            loss100.append(v - f.max())
            lossg.append(v - max(f[j - 1] for j in (10, 20, 30, 50, 100) if j <= len(f)))
        l50, l100, lg = (np.array(a) for a in (loss50, loss100, lossg))
        z = np.array([r["choice"].get("null_space") == "zero" for r in rows])
        print(f"{label:28s} vs best<=50: mean {l50.mean():+.2f} worst {l50.min():+.2f} within 0.5 {np.sum(l50 >= -0.5)}/"
              f"{len(l50)} [* mean {l50[z].mean() if z.any() else float('nan'):+.2f}]; vs best<=100 mean {l100.mean():+.2f}; "
              f"vs best of 10/20/30/50/100 mean {lg.mean():+.2f} worst {lg.min():+.2f}; half iters run mean "
              f"{np.mean(its):.0f}; picks {picks}", flush=True)
    for r in rows:
        f = np.asarray(r["zero_full"])
        print(f"  {r['name']:22s}{'*' if r['choice'].get('null_space') == 'zero' else ' '} k {r['ladder']['k']:<5g} full best "
              f"{f.max():.2f}@{int(f.argmax()) + 1} (<=50: @{int(f[:50].argmax()) + 1}), default {f[r['default_iter'] - 1]:.2f}@"
              f"{r['default_iter']}; half best (+3) " + ", ".join(f"s{s['seed']}:{s['best'] + 3}" for s in r["splits"])
              + f"; x1 pick {_zero_pick([s for s in r['splits'] if s['seed'] == seed][0])[1]}")


def zero_family(zero_path, guard_path, lo=0, hi=48, factor=None, seed=0):
    """Offline: 'auto' NMSE per scene with the zeroed prior's iteration count by thinning (tuning.zero_transfer,
    or ``factor`` x n_half) against the session 7 behaviour (fuse's stop, 50 iterations), and with the zeroed candidate
    scored for the family choice at its best half-data iterate (of the ladder's first CANDIDATE_ITER, free; or of the
    continued run) instead of its last. zero_data rows (this session) + guard_data rows (session 7: full-data NMSE
    curves of the thresholded candidate and plain RL), joined on the suite index (python benchmarks/tuning.py
    zero_family s8_quality_zero_data.jsonl s7_quality_guard_data.jsonl 0 24)."""
    zr, gr = _by_index(zero_path), _by_index(guard_path)
    idx = [i for i in sorted(zr) if lo <= i < hi and i in gr]
    fac = tuning.ZERO_FACTOR if factor is None else factor
    out = {k: [] for k in ("s7", "rule", "rule_b12", "rule_bcont", "oracle3", "rl_oracle")}
    for i in idx:
        r, g = zr[i], gr[i]
        if r["ladder"] != g["ladder"]:
            print(f"  {r['name']}: ladder differs between the runs; skipped")
            continue
        f = np.asarray(r["zero_full"])
        sp = [s for s in r["splits"] if s["seed"] == seed][0]
        _, n_zero, it = _zero_pick(sp, fac)
        c = np.asarray(sp["curve"])
        lad = json.dumps(r["ladder"], sort_keys=True)
        devs = r["devs"]
        d_zero = devs[lad]
        th_key = [k for k in devs if '"threshold"' in k]
        rl_key = [k for k in devs if '"none"' in k]
        det = r["details"]
        n_th = det["threshold"]["max_iter"] if "threshold" in det else None
        n_rl = det["rl"]["max_iter"]
        val_th = g["th_full"][min(n_th, len(g["th_full"])) - 1] if n_th else -np.inf
        val_rl = g["rl_full"][min(n_rl, len(g["rl_full"]) - 1)]
        d = {"zero": d_zero, "th": devs[th_key[0]] if th_key else np.inf, "rl": devs[rl_key[0]]}
        v_s7 = {"zero": f[r["default_iter"] - 1], "th": val_th, "rl": val_rl}
        v_new = dict(v_s7, zero=f[n_zero - 1])
        pick = min(d, key=d.get)
        d12 = dict(d, zero=float(np.min(c[1:tuning.CANDIDATE_ITER + 1])))
        dc = dict(d, zero=float(np.min(c[1:it + 1])))
        p12, pc = min(d12, key=d12.get), min(dc, key=dc.get)
        out["s7"].append(v_s7[pick])
        out["rule"].append(v_new[pick])
        out["rule_b12"].append(v_new[p12])
        out["rule_bcont"].append(v_new[pc])
        out["oracle3"].append(max(v_new.values()))
        out["rl_oracle"].append(max(g["rl_full"][1:]))
        print(f"  {r['name']:40s} picks s7/b12/bcont {pick}/{p12}/{pc}; NMSE zero {v_s7['zero']:.2f}->{v_new['zero']:.2f} "
              f"(n {n_zero}), th {val_th:.2f} (n {n_th}), RL {val_rl:.2f} (n {n_rl}); dev zero@12 - th "
              f"{d['zero'] - d['th']:+.0f}, zero@best12 - th {d12['zero'] - d['th']:+.0f}, - RL {d12['zero'] - d['rl']:+.0f}")
    rl = np.array(out["rl_oracle"])
    best3 = np.array(out["oracle3"])
    for k in ("s7", "rule", "rule_b12", "rule_bcont"):
        v = np.array(out[k])
        print(f"{k:10s}: mean NMSE {v.mean():.2f} dB (RL oracle {rl.mean():.2f}); >= RL oracle {np.sum(v >= rl - 1e-9)}/"
              f"{len(v)}; family within 0.5 dB of the best of the three {np.sum(v >= best3 - 0.5)}/{len(v)}; worst vs "
              f"best of three {np.min(v - best3):+.2f}", flush=True)


def _curves_fit(x, y, t, n, shape, tmaps, lm_args, lsf, **kw):
    """Per iteration 1..n of ``xfusion.fuse(x, y, max_iter=n, tol=None, **kw)``: NMSE (dB) of the iterate and of the
    iterate delivered through the spectral-shape prior ``shape`` (xfusion.regularizers.shape.SpectralShape), and the
    velocity RMS (km/s, brighter half) of both (NaN without lines)."""
    from xfusion import analysis

    x_sp, _, _ = assign_roles(x, y)
    scale = float(np.mean(build_model(fusion_grid(x, y), x_sp, SPATIAL).weights))
    t64 = t.values.astype(np.float64)
    out = {"raw": [], "shaped": [], "v_raw": [], "v_shaped": []}

    def vel(z):
        if tmaps is None:
            return float("nan")
        return float(analysis.map_errors(tmaps, analysis.line_map(t.copy(data=z), lsf_sigma=lsf, **lm_args),
                                         fraction=0.5)["velocity_rms_kms"])

    def cb(it, state):
        z = (state["z"] / np.float32(scale)).astype(np.float32)
        zs = shape.prox(z).astype(np.float32)
        out["raw"].append(metrics.nmse(t64, z))
        out["shaped"].append(metrics.nmse(t64, zs))
        out["v_raw"].append(vel(z))
        out["v_shaped"].append(vel(zs))
        return False

    r = xfusion.fuse(x, y, max_iter=n, tol=None, progress=False, callback=cb, **kw)
    last = metrics.nmse(t64, r.flux.values)
    if abs(last - out["raw"][-1]) > 0.02:
        raise RuntimeError(f"iterate scale mismatch: {last:.3f} vs {out['raw'][-1]:.3f} dB")
    return {k: [round(v, 4) for v in vals] for k, vals in out.items()}


def family_data(indices, split="tune", n_suite=48, size="small", out=None):
    """Data for the family choice and the iteration transfers with the delivered shape prior (issue 13, session 9).
    Per suite scene: the 'auto' choice, candidate deviances and details; on thinning split 0 (the one 'auto' uses):
    the half-data held-out curves (joint, sharp-spatial, sharp-spectral) of the zeroed ladder candidate (to 47 prior
    iterations), the thresholded candidate and plain RL (each to its minimum well behind), and the paired Poisson
    SEs of the deviance differences between the three at their best iterates (zeroed: best of its first
    CANDIDATE_ITER, as scored by 'auto'); on all counts: NMSE and velocity RMS of every iterate, raw and through the
    spectral-shape prior (zeroed 1..50, thresholded 1..120, RL 1..200). One JSON line per scene (``out``)."""
    from xfusion import analysis
    from xfusion import scenes as sc
    from xfusion.regularizers.shape import AUTO_PSEUDO_COUNTS, SpectralShape

    for i in indices:
        spec, x, y, truth = _suite_full(i, size, split, n_suite)
        name, t = spec["name"], truth["flux"]
        lm_args = sc.line_map_args(truth)
        lsf = float(truth.attrs["lsf_sigma_kev"])
        tmaps = analysis.line_map(t, lsf_sigma=lsf, **lm_args) if lm_args else None
        t0 = time.perf_counter()
        ch, wch, det, devs = _auto_record(x, y)
        t_sel = time.perf_counter() - t0
        sp = tuning._splits([x, y], 0.5, 1, 0, "float32")[0]
        z0 = tuning._run_em(sp, None, sp.start(), 3, None)[0]
        half = {}
        keep = {}
        for fam, reg, start, n_max, pm in (("zero", tuning._wavelet_reg({}, wch), z0, 47, None),
                                           ("th", tuning._wavelet_reg({}, dict(wch, null_space="threshold")), z0,
                                            tuning.THRESHOLD_MAX_ITER, 10),
                                           ("rl", None, sp.start(), 100, 10)):
            zs, c, p = _half_run(sp, reg, start, n_max, past_min=pm)
            spec_i = sp.spectral
            sc_ = p[:, spec_i].sum(axis=1)
            lim = tuning.CANDIDATE_ITER if fam == "zero" else len(c) - 1
            jb = int(np.argmin(c[1:lim + 1]) + 1)
            keep[fam] = zs[jb]
            half[fam] = dict(curve=c.tolist(), spatial=(p.sum(axis=1) - sc_).tolist(), spectral=sc_.tolist(), best=jb)
            del zs
        pairs = {f"{a}_vs_{b}": list(_paired(sp, keep[a], keep[b])) for a, b in (("zero", "th"), ("zero", "rl"),
                                                                                 ("th", "rl"))}
        held_counts = [float(np.sum(h)) for h in sp.held]
        del keep
        shape = SpectralShape(AUTO_PSEUDO_COUNTS, float(x.counts.sum()) + float(y.counts.sum()))
        full = {"zero": _curves_fit(x, y, t, 50, shape, tmaps, lm_args, lsf, regularization="wavelet2d1d", **wch),
                "th": _curves_fit(x, y, t, 120, shape, tmaps, lm_args, lsf, regularization="wavelet2d1d",
                                  **dict(wch, null_space="threshold")),
                "rl": _curves_fit(x, y, t, 200, shape, tmaps, lm_args, lsf, regularization="none", method="em")}
        row = dict(name=name, index=i, spec=spec, choice=ch, ladder=wch, details=det, devs=devs, half=half,
                   pairs=pairs, held_counts=held_counts, counts=[float(x.counts.sum()), float(y.counts.sum())],
                   shape=list(t.shape), full=full, t_select=t_sel, t=time.perf_counter() - t0)
        f = full
        print(f"{name}: choice {ch}; best shaped zero {max(f['zero']['shaped']):.2f}, th {max(f['th']['shaped']):.2f}"
              f"@{int(np.argmax(f['th']['shaped'])) + 1}, RL {max(f['rl']['shaped']):.2f}@"
              f"{int(np.argmax(f['rl']['shaped'])) + 1} (raw RL* {max(f['rl']['raw'][:100]):.2f}@"
              f"{int(np.argmax(f['rl']['raw'][:100])) + 1}); half best {[half[k]['best'] for k in half]}; "
              f"{row['t']:.0f} s", flush=True)
        if out:
            with open(out, "a") as fh:
                fh.write(json.dumps(row) + "\n")


def _ladder_half(sp, reg, z0, n_max, past_min=10, early=tuning.CANDIDATE_ITER):
    """Scored EM(+prox) on part A of ``sp`` from ``z0`` recording, at every iterate, the held-out deviance of each
    observation and the summed sharp-spectral held-out squared error (``tuning._ScoredEM(sq=True)``); stops once both
    minima are ``max(past_min, i_min)`` iterations behind or after ``n_max``. Keeps the iterates at the deviance's
    and the squared error's best within the first ``early`` iterations and overall (for paired differences).
    Returns (record, {name: iterate})."""
    solver = tuning._ScoredEM(sp, reg, sq=True)
    st = solver.init(np.array(z0, dtype=sp.dtype, copy=True))
    dev, sq = [list(st["heldout_parts"])], [st["heldout_sq"]]
    keep, best = {}, {}
    for it in range(1, n_max + 1):
        st = solver.step(st)
        dev.append(list(st["heldout_parts"]))
        sq.append(st["heldout_sq"])
        for name, val, lim in (("dev_early", sum(dev[-1]), early), ("sq_early", sq[-1], early),
                               ("dev", sum(dev[-1]), n_max), ("sq", sq[-1], n_max)):
            if it <= lim and val < best.get(name, math.inf):
                best[name] = val
                keep[name] = np.array(st["z"], copy=True)
        i_min = max(int(np.argmin(np.sum(dev, axis=1)[1:]) + 1), int(np.argmin(sq[1:]) + 1))
        if past_min is not None and it - i_min >= max(past_min, i_min):
            break
    return {"dev": dev, "sq": sq}, keep


def _paired_sq(sp, za, zb):
    """Sharp-spectral held-out squared-error difference SE(za) - SE(zb) on part B of ``sp`` and its Poisson standard
    error (d ~ Poisson of mean (ma + mb) / 2: var = sum 4 (ma - mb)^2 (ma + mb) / 2)."""
    diff, var = 0.0, 0.0
    for j in sp.spectral:
        t, h, k = sp.terms[j], sp.held[j], sp.masks[j]
        ma = sp.ratio * t._plus_background(t.model.forward(za)).astype(np.float64)
        mb = sp.ratio * t._plus_background(t.model.forward(zb)).astype(np.float64)
        hh = np.asarray(h, dtype=np.float64)
        if k is not None:
            ma, mb, hh = ma[k], mb[k], hh[k]
        diff += float(np.sum((hh - ma) ** 2 - (hh - mb) ** 2))
        var += float(np.sum(4.0 * (ma - mb) ** 2 * 0.5 * (ma + mb)))
    return diff, math.sqrt(var)


def _full_curve(x, y, t, n, shape, **kw):
    """Per iteration 1..n of ``xfusion.fuse(x, y, max_iter=n, tol=None, **kw)``: NMSE (dB) of the iterate through the
    spectral-shape prior ``shape`` (as delivered) and the iterate's relative change (fuse's stop rule statistic)."""
    x_sp, _, _ = assign_roles(x, y)
    scale = float(np.mean(build_model(fusion_grid(x, y), x_sp, SPATIAL).weights))
    t64 = t.values.astype(np.float64)
    out = {"shaped": [], "change": []}
    prev = {}

    def cb(it, state):
        z = np.asarray(state["z"], dtype=np.float32)
        zp = prev.get("z")
        out["change"].append(float(np.linalg.norm(z - zp) / max(np.linalg.norm(z), 1e-30)) if zp is not None
                             else float("nan"))
        prev["z"] = z.copy()
        out["shaped"].append(metrics.nmse(t64, shape.prox((z / np.float32(scale)).astype(np.float32))))
        return False

    xfusion.fuse(x, y, max_iter=n, tol=None, progress=False, callback=cb, **kw)
    return {k: [round(v, 5) for v in vals] for k, vals in out.items()}


def ladder_data(indices, split="tune", n_suite=48, size="default", out=None):
    """Data for the k-ladder, family and zeroed-iteration rules with the held-out squared error (issue 13, session 11).
    Per suite scene: the 'auto' choice, candidate deviances and details; on thinning split 0 (the one 'auto' uses),
    for every zeroed k rung the ladder visited, from the tuning warm start: per-observation held-out deviance and the
    sharp-spectral held-out squared error at every iterate (to 47 prior iterations or both minima well behind), the
    same for the thresholded candidate (ladder k, to 100); paired differences and Poisson SEs (deviance and squared
    error) between the ladder's zeroed candidate and the thresholded one at their best iterates; on all counts: every
    visited zeroed rung's NMSE through the shape prior at iterations 1..50 (and the iterate change, for fuse's default
    stop), the thresholded candidate's and plain RL's NMSE at their chosen counts (fuse with shape_prior, as
    hindsight). One JSON line per scene (python benchmarks/tuning.py ladder_data 0,1 tune 48 out.jsonl default)."""
    from xfusion.regularizers.shape import AUTO_PSEUDO_COUNTS, SpectralShape

    for i in indices:
        spec, x, y, truth = _suite_full(i, size, split, n_suite)
        name, t = spec["name"], truth["flux"]
        t0 = time.perf_counter()
        ch, wch, det, devs = _auto_record(x, y)
        t_sel = time.perf_counter() - t0
        sp = tuning._splits([x, y], 0.5, 1, 0, "float32")[0]
        z0 = tuning._run_em(sp, None, sp.start(), 3, None)[0]
        rungs = [json.loads(s) for s in devs if "regularization" not in json.loads(s)]
        half, keeps = {}, {}
        for cand in rungs:
            key = json.dumps(cand, sort_keys=True)
            rec, kp = _ladder_half(sp, tuning._wavelet_reg({}, cand), z0, tuning.ZERO_MAX_ITER - 3)
            half[key] = rec
            if cand == {k: v for k, v in wch.items() if k != "regularization"}:
                keeps["zero"] = kp
        th_cand = dict({k: v for k, v in wch.items() if k != "regularization"}, null_space="threshold")
        rec, kp = _ladder_half(sp, tuning._wavelet_reg({}, th_cand), z0, tuning.THRESHOLD_MAX_ITER)
        half["th"] = rec
        keeps["th"] = kp
        pairs = {}
        if "zero" in keeps:
            z, th = keeps["zero"], keeps["th"]
            pairs = {"dev_early_vs_dev": list(_paired(sp, z["dev_early"], th["dev"])),
                     "sq_early_vs_sq": list(_paired_sq(sp, z["sq_early"], th["sq"])),
                     "sq_vs_sq": list(_paired_sq(sp, z["sq"], th["sq"])),
                     "dev_early_vs_dev_sq": list(_paired_sq(sp, z["dev_early"], th["dev"]))}
        del keeps
        t_half = time.perf_counter() - t0 - t_sel
        shape = SpectralShape(AUTO_PSEUDO_COUNTS, float(x.counts.sum()) + float(y.counts.sum()))
        full = {}
        for cand in rungs:
            full[json.dumps(cand, sort_keys=True)] = _full_curve(x, y, t, tuning.ZERO_MAX_ITER, shape,
                                                                 regularization="wavelet2d1d", **cand)
        other = {}
        for s in devs:
            c = json.loads(s)
            if "regularization" in c:
                r = xfusion.fuse(x, y, progress=False, shape_prior=AUTO_PSEUDO_COUNTS, **c)
                other[s] = metrics.nmse(t.values, r.flux.values)
        row = dict(name=name, index=i, spec=spec, choice=ch, ladder=wch, details=det, devs=devs, half=half,
                   pairs=pairs, spectral=sp.spectral, held_counts=[float(np.sum(h)) for h in sp.held],
                   counts=[float(x.counts.sum()), float(y.counts.sum())], shape=list(t.shape), full=full,
                   other=other, t_select=t_sel, t_half=t_half, t=time.perf_counter() - t0)
        best_rung = {k: max(v["shaped"]) for k, v in full.items()}
        print(f"{name}: choice {ch}; rungs best-over-its {best_rung}; other {other}; pairs {pairs}; "
              f"{row['t']:.0f} s (select {t_sel:.0f}, half {t_half:.0f})", flush=True)
        if out:
            with open(out, "a") as fh:
                fh.write(json.dumps(row) + "\n")


def _default_stop(change, tol=1e-4, patience=5, cap=50):
    """Iteration at which fuse's default rule stops (relative iterate change <= tol for ``patience`` iterations)."""
    for n in range(patience, min(len(change), cap) + 1):
        if all(c <= tol for c in change[n - patience:n]):
            return n
    return min(len(change), cap)


def _zero_count_dev(c, warm=3, cap=tuning.ZERO_MAX_ITER, past_min=tuning.ZERO_PAST_MIN, start=tuning.CANDIDATE_ITER):
    """tuning._zero_iterations on a recorded held-out curve ``c`` (iterate 0 = warm start): (n_full, n_half, run)."""
    c = list(c)
    it = min(start, len(c) - 1)
    while it < min(cap - warm, len(c) - 1):
        i_min = int(np.argmin(c[1:it + 1]) + 1)
        if it - i_min >= max(past_min, i_min):
            break
        it += 1
    best = int(np.argmin(c[1:it + 1]) + 1)
    return tuning.zero_transfer(best + warm, warm), best + warm, it


def _ladder_eval(r, kpick="dev", zcount="dev", fam="current", f_sq=1.25, m_sq=None, bright_only=True, kw_check=True):
    """Replay 'auto' on a ladder_data row with the given rules; returns (family, rung key, count, NMSE, hindsight best
    NMSE over the grid, details)."""
    w = 3
    rungs = list(r["full"])
    dev12 = {k: float(r["devs"][k]) for k in rungs}
    half = r["half"]
    dsum = {k: np.sum(np.asarray(half[k]["dev"], dtype=np.float64), axis=1) for k in rungs}
    sq = {k: np.asarray(half[k]["sq"], dtype=np.float64) for k in rungs}
    cpv = sum(r["counts"]) / float(np.prod(r["shape"]))
    bright = cpv >= tuning.FAMILY_COUNTS_SPLIT
    fp = r["details"].get("family_prior") or {}
    lines = bool(fp.get("lines", True))
    use_sq_k = kpick != "dev" and (bright or not bright_only)
    if not use_sq_k:
        score = dev12
    elif kpick == "sq12":
        score = {k: sq[k][min(tuning.CANDIDATE_ITER, len(sq[k]) - 1)] if np.isfinite(dev12[k]) else math.inf
                 for k in rungs}
    elif kpick == "sqmin12":
        score = {k: float(np.min(sq[k][1:tuning.CANDIDATE_ITER + 1])) if np.isfinite(dev12[k]) else math.inf
                 for k in rungs}
    elif kpick == "sqmin":
        score = {k: float(np.min(sq[k][1:])) if np.isfinite(dev12[k]) else math.inf for k in rungs}
    else:
        raise ValueError(kpick)
    key = min(rungs, key=lambda k: score[k])  # first of equal scores: the walk's order
    n_dev, n_half, run = _zero_count_dev(dsum[key])
    n_sq = int(np.argmin(sq[key][1:]) + 1) + w
    if zcount == "dev":
        n_zero = n_dev
    elif zcount == "sq":  # continued until both minima are behind (the recorded run): the deviance's may move
        n_dj = int(np.argmin(dsum[key][1:]) + 1) + w
        n_zero = int(min(max(tuning.zero_transfer(n_dj, w), round(f_sq * n_sq)), tuning.ZERO_MAX_ITER))
    elif zcount == "sqonly":
        n_zero = int(min(max(round(f_sq * n_sq), w + 1), tuning.ZERO_MAX_ITER))
    elif zcount == "default":
        n_zero = _default_stop(r["full"][key]["change"])
    else:
        raise ValueError(zcount)
    ch = r["choice"]
    cur_fam = "rl" if ch.get("regularization") == "none" else ("th" if ch.get("null_space") == "threshold" else "zero")
    th_key = [s for s in r["other"] if json.loads(s).get("null_space") == "threshold"]
    rl_key = [s for s in r["other"] if json.loads(s).get("regularization") == "none"]
    family = cur_fam
    if fam == "current" and key != json.dumps({k: v for k, v in r["ladder"].items() if k != "regularization"},
                                              sort_keys=True) and lines and th_key:
        # the zeroed candidate changed: the family prior on its best early deviance (same SE)
        se = fp.get("se")
        zd = float(np.min(dsum[key][1:tuning.CANDIDATE_ITER + 1]))
        thd = float(np.min(np.sum(np.asarray(half["th"]["dev"]), axis=1)[1:]))
        margin = fp.get("margin") or 0.0
        if cur_fam in ("zero", "th") and se is not None:
            family = "zero" if zd + margin * se < thd else "th"
    if fam == "sq" and lines and th_key and bright and r["pairs"] and cur_fam in ("zero", "th"):
        d, se = r["pairs"]["sq_vs_sq"]
        family = "zero" if d + (m_sq or 0.0) * se < 0 else "th"
    if family == "zero":
        val = r["full"][key]["shaped"][n_zero - 1]
    elif family == "th":
        val = r["other"][th_key[0]]
    else:
        val = r["other"][rl_key[0]]
    grid = [r["full"][k]["shaped"][_default_stop(r["full"][k]["change"]) - 1] for k in rungs] + list(r["other"].values())
    best = max(grid + [val])
    if kw_check and family == "zero" and cur_fam == "zero" and zcount == "dev" and kpick == "dev" \
            and n_zero != ch.get("max_iter"):
        print(f"  replay mismatch {r['name']}: count {n_zero} vs recorded {ch.get('max_iter')}")
    return family, key, n_zero, val, best, dict(n_dev=n_dev, n_sq=n_sq, cur=cur_fam, cpv=cpv)


RULES = {"current": {}, "H1 f1": dict(zcount="sq", f_sq=1.0), "H1 f1.25": dict(zcount="sq", f_sq=1.25),
         "H1 f1.5": dict(zcount="sq", f_sq=1.5), "H1 f2": dict(zcount="sq", f_sq=2.0),
         "sqonly 1.25": dict(zcount="sqonly", f_sq=1.25), "default stop": dict(zcount="default"),
         "H1+H2 sq12": dict(zcount="sq", kpick="sq12"), "H1+H2 sqmin12": dict(zcount="sq", kpick="sqmin12"),
         "H1+H2 sqmin": dict(zcount="sq", kpick="sqmin"),
         "H1+H2 sq12 all": dict(zcount="sq", kpick="sq12", bright_only=False),
         "H1+H2 sqmin12 all": dict(zcount="sq", kpick="sqmin12", bright_only=False),
         "H1+H3 m0": dict(zcount="sq", fam="sq", m_sq=0.0), "H1+H3 m2": dict(zcount="sq", fam="sq", m_sq=2.0),
         "H1+H2+H3 m0": dict(zcount="sq", kpick="sqmin12", fam="sq", m_sq=0.0)}


def ladder_rules(paths, fit=None, verbose=True):
    """Offline replay of k-ladder / zeroed-count / family rules on ladder_data rows (``paths``: JSONL; ``fit``: the
    indices fitted on, the rest reported apart). Prints per rule: within 0.5 dB of the best in hindsight (grid: every
    visited rung at fuse's default stop, the thresholded and RL candidates at their counts, the choice), mean and
    worst loss, mean NMSE; with ``verbose`` every scene where a rule's loss is below -0.5 dB.

    Session 11 (tuning rows 0-20, 24, 28, 35 at full size; logs s11_fullsq_* of the development notes): the zeroed
    count max(1.25 n_dev, 1.25 n_sq) (n_sq: best half-data iterate of the sharp-spectral held-out squared error) gave
    fitted 11 -> 12/14 within 0.5 dB, not fitted 6/6 both; measured held out at full size after freezing: hindsight
    16 -> 18/24 and mean NMSE 20.02 -> 20.13 dB, but velocity RMS <= RL oracle 18 -> 17/19 (longer runs sharpen
    the lines and roughen the velocity maps: worse on 7 of the 9 line scenes whose count changed) and up to 20 s more
    tuning. Not adopted. Picking the k rung or the bright-scene family by the squared error lost 2.6 dB
    (point_sources/1028) and 3.9 dB (point_sources/1013) on tuning rows; not adopted either."""
    rows = {}
    for path in paths:
        rows.update(_by_index(path))
    groups = {"all": sorted(rows)}
    if fit is not None:
        groups = {"fit": [i for i in sorted(rows) if i in fit], "check": [i for i in sorted(rows) if i not in fit]}
    for gname, idx in groups.items():
        print(f"== {gname}: {len(idx)} scenes {idx}")
        for rname, kw in RULES.items():
            res = [(_ladder_eval(rows[i], **kw), rows[i]["name"]) for i in idx]
            loss = np.array([e[3] - e[4] for e, _ in res])
            val = np.array([e[3] for e, _ in res])
            miss = [f"{n.split()[0]} {e[3] - e[4]:+.2f} ({e[0]}, {json.loads(e[1])['k'] if e[0] != 'rl' else ''}, "
                    f"n{e[2]})" for e, n in res if e[3] - e[4] < -0.5]
            print(f"{rname:18s}: within 0.5 dB {np.sum(loss >= -0.5)}/{len(loss)}, mean loss {loss.mean():+.2f}, worst "
                  f"{loss.min():+.2f}, mean NMSE {val.mean():.2f}" + (f"; misses {'; '.join(miss)}" if verbose else ""),
                  flush=True)


def family_rules(paths):
    """Offline replay of the family choice of 'auto' on family_data rows (``paths``: JSONL files; rows keyed by
    (shape, index), the last one kept): the session-9 prior (with lines: the zeroed ladder must win by 9 paired SE)
    and the current one (tuning._family_prior: FAMILY_MARGIN / FAMILY_MARGIN_BRIGHT split at FAMILY_COUNTS_SPLIT
    counts per fused voxel; without lines the zeroed ladder), each family at the iteration count the current transfer
    rules give (zero_transfer, threshold_transfer, rl_transfer on the recorded half-data curves), delivered through the
    shape prior. Prints per size and index range (small 24x24x600: 0-23, 24-47; full: 0-9, 10-47): mean NMSE (RL oracle = best raw RL iterate <= 100),
    NMSE >= RL oracle, velocity RMS <= RL oracle's, the family within 0.5 dB of the best of the three, the picks, and
    every changed choice (python benchmarks/tuning.py family_rules a.jsonl b.jsonl)."""
    from xfusion import scenes as sc

    rows = {}
    for path in paths:
        with open(path) as fh:
            rows.update({(tuple(r["shape"]), r["index"]): r for r in map(json.loads, fh)})
    w = 3
    out = {}
    for key in sorted(rows):
        r = rows[key]
        h = r["half"]
        fp = r["details"].get("family_prior") or {}
        rich = fp.get("line_richness")
        if rich is None:  # rows recorded before session 9's prior: from the sharp-spectral counts
            _, y, _ = sc.from_spec(r["spec"], size="small" if list(r["shape"][:2]) == [24, 24] else "default")
            rich = tuning.line_richness(y["counts"])
        cpv = sum(r["counts"]) / float(np.prod(r["shape"]))
        dz = float(np.min(h["zero"]["curve"][1:tuning.CANDIDATE_ITER + 1]))
        n = {"zero": tuning.zero_transfer(_zero_pick({"curve": h["zero"]["curve"]}, cap=tuning.ZERO_MAX_ITER)[0], w)}
        best = {f: int(np.argmin(h[f]["curve"][1:]) + 1) for f in ("th", "rl")}
        nsp = {f: int(np.argmin(np.asarray(h[f]["spatial"][1:])) + 1) for f in ("th", "rl")}
        nse = {f: int(np.argmin(np.asarray(h[f]["spectral"][1:])) + 1) for f in ("th", "rl")}
        n["th"] = tuning.threshold_transfer(best["th"] + w, nsp["th"] + w, nse["th"] + w, w)
        n["rl"] = tuning.rl_transfer(best["rl"], nsp["rl"], nse["rl"], r["details"]["rl"]["line_roughness"])
        dev = {"zero": dz, "th": float(np.min(h["th"]["curve"][1:])), "rl": float(np.min(h["rl"]["curve"][1:]))}
        se = r["pairs"]["zero_vs_th"][1]
        lines = rich >= tuning.LINE_RICHNESS
        s9 = dict(dev, zero=dz + (9.0 * se if lines else 0.0))
        m = tuning._family_margin(cpv)
        s10 = dict(dev, zero=dz + m * se) if lines else {"zero": dz, "th": math.inf, "rl": math.inf}
        f = r["full"]
        val = {k: f[k]["shaped"][min(n[k], len(f[k]["shaped"])) - 1] for k in n}
        vel = {k: f[k]["v_shaped"][min(n[k], len(f[k]["v_shaped"])) - 1] for k in n}
        j = int(np.argmax(f["rl"]["raw"][:100]))
        small = list(r["shape"][:2]) == [24, 24]  # session 10 fitted on small 0-23 and full 0-9
        group = (f"small {'0-23' if r['index'] < 24 else '24-47'}" if small else
                 f"full {'0-9' if r['index'] < 10 else '10-47'}")
        out.setdefault(group, []).append(dict(name=r["name"], picks=(min(s9, key=s9.get), min(s10, key=s10.get)),
                                              val=val, vel=vel, orc=f["rl"]["raw"][j], vorc=f["rl"]["v_raw"][j],
                                              cpv=cpv, z=(dz - dev["th"]) / se))
    for group, res in out.items():
        orc = np.array([o["orc"] for o in res])
        vo = np.array([o["vorc"] for o in res], dtype=np.float64)
        lined = np.isfinite(vo)
        best3 = np.array([max(o["val"].values()) for o in res])
        for i, label in enumerate(("session 9", "session 10")):
            v = np.array([o["val"][o["picks"][i]] for o in res])
            vel = np.array([o["vel"][o["picks"][i]] for o in res], dtype=np.float64)
            print(f"{group:11s} {label:10s} ({len(v)} scenes): mean NMSE {v.mean():.2f} dB (RL oracle {orc.mean():.2f}); "
                  f">= RL oracle {np.sum(v >= orc)}; velocity <= RL oracle's {np.sum(vel[lined] <= vo[lined])}/"
                  f"{lined.sum()}; within 0.5 dB of the best family {np.sum(v >= best3 - 0.5)}; picks "
                  + "".join(o["picks"][i][0] for o in res), flush=True)
        for o in res:
            a, b = o["picks"]
            if a != b:
                print(f"    {o['name']}: {a} -> {b}, {o['val'][a]:.2f} -> {o['val'][b]:.2f} dB (RL oracle {o['orc']:.2f}); "
                      f"{o['cpv']:.2f} counts per fused voxel, zeroed - thresholded deviance {o['z']:+.1f} SE")


def null_factor(indices, split="tune", n_suite=48, size="small", factors=(1.0, 2.0, 3.0, 5.0, 8.0, 12.0, 20.0, 40.0),
                n_max=60, out=None):
    """Session 14: the thresholded prior with its null bands at ``f`` times the other bands' threshold (option
    ``null_factor``), against the zeroed prior, at the k the ladder chooses (python benchmarks/tuning.py null_factor
    0,1,2 tune 48 small). One fit of ``n_max`` iterations per variant (tol=None), NMSE at every iterate; prints each
    variant's best-iterate NMSE against the best variant, and the mean / worst loss and the count within 0.5 dB per
    variant. ``out``: JSON lines with the curves."""
    keys = [f"f{f:g}" for f in factors] + ["zero"]
    loss = {k: [] for k in keys}
    fh = open(out, "a") if out else None
    for i in indices:
        t0 = time.perf_counter()
        name, x, y, t = _suite_scene(i, size, split, n=n_suite)
        lch = tuning.ladder_choice(tuning.select(x, y))
        k, n1 = float(lch.get("k", 1.0)), lch.get("n_scales_1d", 2)
        kw = dict(regularization="wavelet2d1d", k=k, n_scales_1d=n1)
        curves = {f"f{f:g}": _nmse_curve_fit(x, y, t, n_max, null_space="threshold", null_factor=f, **kw)
                  for f in factors}
        curves["zero"] = _nmse_curve_fit(x, y, t, n_max, null_space="zero", **kw)
        best = {key: float(c.max()) for key, c in curves.items()}
        top = max(best.values())
        for key in keys:
            loss[key].append(best[key] - top)
        if fh:
            fh.write(json.dumps({"index": i, "name": name, "k": k, **{key: c.tolist() for key, c in curves.items()}})
                     + "\n")
            fh.flush()
        print(f"{name}: k {k:g}, best variant {top:.2f} dB; " + ", ".join(
            f"{key} {best[key] - top:+.2f}@{int(np.argmax(curves[key])) + 1}" for key in keys)
            + f" ({time.perf_counter() - t0:.0f} s)", flush=True)
    for key in keys:
        v = np.array(loss[key])
        print(f"{key}: loss against the best variant mean {v.mean():+.2f} dB, worst {v.min():+.2f}, within 0.5 dB "
              f"{np.sum(v >= -0.5)}/{v.size}")


def asam_breakdown(indices, split="heldout", n_suite=24, size="small"):
    """Where does the 'auto' fuse lose the aSAM (mean spectral angle) test against the Y-upsampled baseline?
    Per suite scene: aSAM of the 'auto' fit, the k-ladder (zeroed) fit, Y upsampled and the 'auto' fit averaged
    over each Y pixel's block of fused pixels (spectral shape without the fine spatial noise), per quartile of
    true pixel brightness, and the mean counts per Y pixel per channel (python benchmarks/tuning.py asam
    0,2,5,8,9,10,13 heldout 24)."""
    from xfusion import baselines

    for i in indices:
        name, x, y, t = _suite_scene(i, size, split, n=n_suite)
        cur = tuning.select(x, y, complete=True)
        ch = tuning.choice(cur)
        wch = tuning.ladder_choice(cur)
        auto = xfusion.fuse(x, y, progress=False, **ch).flux.values.astype(np.float64)
        wav = xfusion.fuse(x, y, progress=False, regularization="wavelet2d1d", **wch).flux.values.astype(np.float64)
        yu = baselines.upsample_spectral(x, y).values.astype(np.float64)
        tv = t.values.astype(np.float64)
        v = int(fusion_grid(x, y).attrs["spatial_factor"])
        nx, ny, nl = auto.shape
        blk = auto.reshape(nx // v, v, ny // v, v, nl).mean(axis=(1, 3))
        blk = np.repeat(np.repeat(blk, v, axis=0), v, axis=1)
        _, y_obs, _ = assign_roles(x, y)
        cy = float(y_obs.counts.values.mean())
        bright = tv.sum(axis=-1)
        q = np.quantile(bright, [0.25, 0.5, 0.75])
        bins = np.digitize(bright, q)
        out = {}
        for key, e in (("auto", auto), ("ladder", wav), ("y_up", yu), ("auto_blk", blk)):
            m = metrics.sam_map(tv, e)
            out[key] = [float(np.nanmean(m))] + [float(np.nanmean(np.where(bins == b, m, np.nan))) for b in range(4)]
        print(f"{name}: choice {ch}; Y counts/pixel/channel {cy:.2f}, block {v}x{v}; aSAM [all, faintest .. brightest "
              f"quartile]: " + "; ".join(f"{k} " + "/".join(f"{a:.3f}" for a in val) for k, val in out.items()),
              flush=True)


def _rule_eval(row, rule, seeds=(0,)):
    """NMSE (dB) of the candidate a selection ``rule`` picks on one guard_data ``row`` (offline: the full-data NMSE
    curves are in the row). ``rule``: dict with
    ``th_se`` (1-SE rule along the thresholded curve: earliest iterate within th_se x SE of the minimum; None: argmin),
    ``line`` ("always": rl_transfer's line factor (session 6); "s7": tuning.threshold_transfer; "never"; "const" (x
    ``factor``); "spguard" (``factor`` unless the sharp-spatial minimum is the first iterate after the warm
    start); "se": only when the sharp-spectral deviance falls by more
    than line_se x SE from the sharp-spatial minimum to its own), ``margin_th`` / ``margin_rl`` (a candidate with more
    free structure than the zeroed ladder must beat it by this many SE of the paired difference).
    Returns (label, nmse, chosen iterations)."""
    sps = [sp for sp in row["splits"] if sp["seed"] in seeds]
    th_curve = np.mean([sp["th_curve"] for sp in sps if len(sp["th_curve"])], axis=0) if len(sps) == 1 else None
    if th_curve is None:
        n = min(len(sp["th_curve"]) for sp in sps)
        th_curve = np.mean([sp["th_curve"][:n] for sp in sps], axis=0)
    n = len(th_curve)
    se = np.sqrt(np.mean([np.array(sp["th_se_vs_best"])[:n, 1] ** 2 for sp in sps], axis=0) / len(sps))
    best = int(np.argmin(th_curve[1:]) + 1)
    if rule.get("th_se") is not None:
        d = th_curve - th_curve[best]
        ok = [j for j in range(1, best + 1) if d[j] <= rule["th_se"] * se[j]]
        jb = ok[0] if ok else best
    else:
        jb = best
    spat = np.mean([sp["th_spatial"][:n] for sp in sps], axis=0)
    spec = np.mean([sp["th_spectral"][:n] for sp in sps], axis=0)
    n_sp, n_se = int(np.argmin(spat[1:]) + 1), int(np.argmin(spec[1:]) + 1)
    line = rule.get("line", "always")
    w = 3
    if line == "s7":
        n_th = tuning.threshold_transfer(jb + w, n_sp + w, n_se + w, w)
    elif jb <= 1:
        n_th = jb + w
    elif line == "const":
        n_th = int(round((jb + w) * rule["factor"]))
    elif line == "never" or n_se <= n_sp:
        n_th = jb + w
    elif line == "se":
        drop = spec[n_sp] - spec[n_se]
        n_th = int(round((jb + w) * (tuning.RL_LINE_FACTOR if drop > rule.get("line_se", 1.0) * se[n_sp] else 1)))
    elif line == "ratio":  # factor only when the sharp-spectral minimum is clearly later
        n_th = int(round((jb + w) * (tuning.RL_LINE_FACTOR if n_se >= rule.get("line_ratio", 2) * n_sp else 1)))
    elif line == "spguard":  # no line factor when the sharp-spatial held-out minimum is the first iterate after warm
        n_th = int(round((jb + w) * (rule.get("factor", tuning.RL_LINE_FACTOR) if n_sp > 1 else 1)))
    else:
        n_th = tuning.rl_transfer(jb + w, n_sp + w, n_se + w)
    n_th = min(max(n_th, 1), tuning.RL_MAX_ITER)
    rl_n = row["details"]["rl"]["max_iter"]
    dz = np.mean([sp["zero_dev"] for sp in sps])
    dt = float(th_curve[best])
    dr = np.mean([min(sp["rl_curve"][1:]) for sp in sps])
    se_zt = math.sqrt(np.mean([sp["zero_vs_th"][1] ** 2 for sp in sps]) / len(sps))
    se_zr = math.sqrt(np.mean([sp["zero_vs_rl"][1] ** 2 for sp in sps]) / len(sps))
    se_rt = math.sqrt(np.mean([sp["rl_vs_th"][1] ** 2 for sp in sps]) / len(sps))
    mt, mr = rule.get("margin_th", 0.0), rule.get("margin_rl", 0.0)
    # the zeroed ladder is the default; a candidate must beat it by its margin; between th and RL the smaller deviance
    score = {"zero": dz, "th": dt + mt * se_zt, "rl": dr + mr * se_zr}
    pick = min(score, key=score.get)
    th_full, rl_full = row["th_full"], row["rl_full"]
    val = {"zero": row["zero_full"], "th": th_full[min(n_th, len(th_full)) - 1],
           "rl": rl_full[min(rl_n, len(rl_full) - 1)]}
    return pick, val[pick], {"n_th": n_th, "n_rl": rl_n, "val": val, "se": (se_zt, se_zr, se_rt), "dev": (dz, dt, dr)}


def guard_rules(path, lo=0, hi=48):
    """Offline comparison of selection rules on guard_data rows (indices lo <= index < hi)."""
    rows = [json.loads(line) for line in open(path)]
    rows = [r for r in rows if lo <= r["index"] < hi]
    rules = {"session 6": {}, "session 7": {"line": "s7"}, "x1": {"line": "never"},
             "x1.5": {"line": "const", "factor": 1.5}, "x2": {"line": "const", "factor": 2.0},
             "spguard x3": {"line": "spguard"}, "spguard x2": {"line": "spguard", "factor": 2.0},
             "spguard x2 +m1": {"line": "spguard", "factor": 2.0, "margin_th": 1.0},
             "th 1SE": {"th_se": 1.0}, "line se1": {"line": "se", "line_se": 1.0},
             "line se2": {"line": "se", "line_se": 2.0}, "line never": {"line": "never"},
             "margin th 1": {"margin_th": 1.0}, "margin th 2": {"margin_th": 2.0},
             "margin th1 rl1": {"margin_th": 1.0, "margin_rl": 1.0}, "margin 2/2": {"margin_th": 2.0, "margin_rl": 2.0},
             "1SE + margin1": {"th_se": 1.0, "margin_th": 1.0}, "line se1 + margin1": {"line": "se", "margin_th": 1.0}}
    print(f"{len(rows)} scenes")
    res = {}
    for label, rule in rules.items():
        out = [_rule_eval(r, rule) for r in rows]
        v = np.array([o[1] for o in out])
        orc = np.array([max(r["rl_full"][1:]) for r in rows])
        hind = np.array([max(o[2]["val"].values()) for o in out])
        res[label] = v
        print(f"{label:22s}: mean {v.mean():.2f} dB (RL* {orc.mean():.2f}); >= RL* {np.sum(v >= orc - 1e-9)}/{len(v)}; "
              f">= RL* - 0.5 {np.sum(v >= orc - 0.5)}; within 0.5 of best of its 3 {np.sum(v >= hind - 0.5)}; worst vs "
              f"best of 3 {np.min(v - hind):+.2f}; picks " + "".join(o[0][0] for o in out), flush=True)
    return rows, res


def _ladder_fuse(x, y, truth, top, extra=()):
    """Default ``fuse`` with the k ladder cut at ``top``, or (``extra``) extended by those rungs above its top: NMSE,
    velocity and width RMS (km/s), the chosen k, the guarded steps above 8 (:data:`xfusion.tuning.K_GUARDED_ABOVE`)
    and the wall time."""
    from suite import _science

    saved = tuning.K_LADDER
    tuning.K_LADDER = saved[:saved.index(top) + 1] + tuple(float(k) for k in extra)
    try:
        t0 = time.perf_counter()
        res = xfusion.fuse(x, y, progress=False)
        wall = time.perf_counter() - t0
    finally:
        tuning.K_LADDER = saved
    lm_args = scenes.line_map_args(truth)
    lsf = float(truth.attrs["lsf_sigma_kev"])
    tm = analysis.line_map(truth["flux"], lsf_sigma=lsf, **lm_args) if lm_args else None
    sci = _science(res, tm, lm_args, lsf)
    rec = res.attrs.get("parameters", {})
    rec = json.loads(rec) if isinstance(rec, str) else rec
    return {"top": float(max((top,) + tuple(extra))),
            "nmse": metrics.nmse(truth["flux"].values, res["flux"].values),
            "velocity": sci["velocity_rms_kms"], "width": sci["width_rms_kms"], "wall_s": wall,
            "k": rec.get("k"), "steps": rec.get("auto_tuning", {}).get("k_above"),
            "iterations": int(res.attrs.get("iterations", -1))}


def ladder_top(indices, split="heldout", n_suite=24, out=None, old=True):
    """k ladder above 8 (session 19): per full-size suite scene, the default (rungs 12 and 16, guarded: a step up
    from 8 counts only if the sharp-spectral held-out squared error falls too; the record of each step: deviance
    gain, its Poisson SE, squared-error gain) and, where the walk took a rung above 8, the old ladder (top 8; with
    ``old``). JSON lines to ``out``. Session 19 measured the unguarded ladder the same way (every step taken while
    the deviance fell) plus each step's gains (notes s19/stepprobe.py) and derived the guard's outcome from them."""
    for i in indices:
        spec = scenes.suite(split, n=n_suite)[i]
        x, y, truth = scenes.from_spec(spec, size="default")
        row = {"index": i, "split": split, "n": n_suite, "name": spec["name"],
               "runs": [_ladder_fuse(x, y, truth, tuning.K_LADDER[-1])]}
        steps = (row["runs"][0]["steps"] or {}).get("steps", [])
        if row["runs"][0]["k"] is not None and float(row["runs"][0]["k"]) > tuning.K_GUARDED_ABOVE and old:
            row["runs"].append(_ladder_fuse(x, y, truth, tuning.K_GUARDED_ABOVE))
        for r in row["runs"]:
            print(f"{i:3d} {spec['name'][:40]:40s} top {r['top']:4g}: k {r['k']} {r['nmse']:6.2f} dB "
                  f"v {r['velocity']:6.1f} w {r['width']:6.1f} km/s {r['wall_s']:5.1f} s", flush=True)
        print("    steps (k, deviance gain, SE, sharp-spectral squared-error gain) "
              f"{[(s['k'], round(s['gain'], 1), round(s['se'], 1), round(s['sq_gain_spectral'], 1)) for s in steps]}",
              flush=True)
        if out:
            with open(out, "a") as fh:
                fh.write(json.dumps(row) + "\n")


def ladder_beyond(indices, split="heldout", n_suite=None, out=None, extra=(24.0, 32.0)):
    """k rungs above 16 (session 68): per full-size suite scene, the default ``fuse`` with ``extra`` rungs added on top
    of :data:`xfusion.tuning.K_LADDER` (the same walk and guard as above 8); where the walk took a rung above 16 (a
    recorded step up with the sharp-spectral squared error falling), today's default too. Row ``i`` is
    ``scenes.suite(split, n)[i]`` with ``n = n_suite``, or ``24 (i // 24 + 1)`` when ``n_suite`` is None (the suite
    CSVs' rows). JSON lines to ``out``: each run's NMSE, velocity and width RMS, chosen k, steps above 8 and wall."""
    top = tuning.K_LADDER[-1]
    for i in indices:
        n = n_suite or 24 * (i // 24 + 1)
        spec = scenes.suite(split, n=n)[i]
        x, y, truth = scenes.from_spec(spec, size="default")
        wide = _ladder_fuse(x, y, truth, top, extra)
        steps = (wide["steps"] or {}).get("steps", [])
        taken = any(s["k"] > top and s["sq_gain_spectral"] > 0 for s in steps)
        row = {"index": i, "split": split, "n": n, "name": spec["name"], "taken": taken, "runs": [wide]}
        if taken:
            row["runs"].append(_ladder_fuse(x, y, truth, top))
        for r in row["runs"]:
            print(f"{i:4d} {spec['name'][:40]:40s} top {r['top']:4g}: k {r['k']} {r['nmse']:6.2f} dB "
                  f"v {r['velocity']} w {r['width']} km/s {r['wall_s']:5.1f} s", flush=True)
        print(f"     steps {[(s['k'], round(s['gain'], 1), round(s['se'], 1), round(s['sq_gain_spectral'], 1)) for s in steps]}",
              flush=True)
        if out:
            with open(out, "a") as fh:
                fh.write(json.dumps(row) + "\n")


def ladder_beyond_summary(path):
    """Print what :func:`ladder_beyond`'s rows (``path``, JSON lines) show per split: the rows the extra rungs
    changed (a rung above 16 taken), their NMSE change (extended minus today's ladder, dB), velocity- and width-RMS
    changes (median, %), the k they took, and each changed row."""
    import statistics

    with open(path) as fh:
        rows = [json.loads(line) for line in fh]
    for split in dict.fromkeys(r["split"] for r in rows):
        mine = [r for r in rows if r["split"] == split]
        changed = [r for r in mine if r["taken"]]
        print(f"{split}: {len(changed)} of {len(mine)} rows changed")
        if not changed:
            continue
        d = [r["runs"][0]["nmse"] - r["runs"][1]["nmse"] for r in changed]

        def rel(key):
            pairs = [(r["runs"][0][key], r["runs"][1][key]) for r in changed]
            return [a / b - 1 for a, b in pairs if a is not None and b and np.isfinite(a) and np.isfinite(b)]

        v, w = rel("velocity"), rel("width")
        print(f"  NMSE change mean {statistics.mean(d):+.2f} dB, median {statistics.median(d):+.2f}, better on "
              f"{sum(x > 0 for x in d)}, worse on {sum(x < 0 for x in d)}, from {min(d):+.2f} to {max(d):+.2f}")
        if v:
            print(f"  velocity RMS median change {100 * statistics.median(v):+.1f} %, higher on {sum(x > 0 for x in v)} "
                  f"of {len(v)}; width RMS {100 * statistics.median(w):+.1f} %")
        for r, x in sorted(zip(changed, d), key=lambda t: t[1]):
            new, old = r["runs"]
            print(f"  {r['name'][:44]:44s} k {old['k']} -> {new['k']}: {old['nmse']:6.2f} -> {new['nmse']:6.2f} dB "
                  f"({x:+.2f})")


def patience_data(indices, split="tune", n_suite=48, size="default", out=None):
    """Record every thresholded half-data run of the default tuning (session 25, ``THRESHOLD_PATIENCE``) with the
    session-24 wait (patience 1, i.e. ``max(10, i)`` past the later minimum ``i``): held-out deviance and
    sharp-spectral squared error at every iterate, and the hopeless test's answer for EVERY best deviance iterate
    (it depends on that iterate only), so that :func:`patience_rules` can cut the same runs by shorter waits exactly.
    One JSON line per scene: the run(s), the chosen settings."""
    orig_run, orig_step = tuning._run_em, tuning._ScoredEM.step
    runs = []

    def run_em(split_, reg, z0, max_iter, tol, *a, patience=1.0, hopeless=None, sq=None, **kw):
        if sq is None or reg is None or kw.get("past_min") is None:  # the ladder, plain RL, warm starts
            return orig_run(split_, reg, z0, max_iter, tol, *a, patience=patience, hopeless=hopeless, sq=sq, **kw)
        rec = {"max_iter": max_iter, "past_min": kw["past_min"], "has_hopeless": hopeless is not None,
               "hopeless": {}}
        seen = {"best": math.inf, "it": 0}

        def step(solver, state):
            state = orig_step(solver, state)
            seen["it"] += 1
            if hopeless is not None and state["heldout"] < seen["best"]:
                seen["best"] = state["heldout"]
                rec["hopeless"][str(seen["it"])] = bool(hopeless({"z": state["z"], "score": state["heldout"],
                                                                   "i": seen["it"]}))
            return state

        tuning._ScoredEM.step = step
        try:
            z, curve, it, ab = orig_run(split_, reg, z0, max_iter, tol, *a, patience=1.0, hopeless=hopeless, sq=sq,
                                        **kw)
        finally:
            tuning._ScoredEM.step = orig_step
        rec.update(curve=[float(v) for v in curve], sq=[float(v) for v in sq], it=it, abandoned=bool(ab))
        runs.append(rec)
        return z, curve, it, ab

    specs = scenes.suite(split, n=n_suite)
    tuning._run_em = run_em
    try:
        for i in indices:
            x, y, _ = scenes.from_spec(specs[i], size=size)
            runs.clear()
            reg, ch, _ = tuning.resolve_auto(x, y, half_fit={})
            row = {"index": i, "name": specs[i]["name"], "size": size, "regularization": reg, "choice": ch,
                   "runs": list(runs)}
            print(i, specs[i]["name"], reg, ch.get("null_space"), ch.get("max_iter"), [r["it"] for r in runs],
                  flush=True)
            if out:
                with open(out, "a") as fh:
                    fh.write(json.dumps(row) + "\n")
    finally:
        tuning._run_em = orig_run


def _patience_cut(rec, floor, c):
    """Where :func:`xfusion.tuning._run_em` would stop the recorded run ``rec`` waiting ``max(floor, c i)`` past the
    later minimum ``i`` (and asking the hopeless test on the same schedule): ``(iterate, why)``."""
    curve, sq, checked = rec["curve"], rec["sq"], None
    for it in range(1, len(curve)):
        i_dev = int(np.argmin(curve[:it + 1]))
        i_min = max(i_dev, int(np.argmin(sq[:it + 1])))
        if it - i_min >= max(floor, c * i_min):
            return it, "past_min"
        b = int(np.argmin(curve[1:it + 1]) + 1)
        if rec["has_hopeless"] and it - i_dev >= max(floor, c * i_dev) and b != checked:
            checked = b
            if rec["hopeless"][str(b)]:
                return it, "hopeless"
    return len(curve) - 1, "end of the recorded run"


def patience_rules(paths, rules=((10, 1.0), (10, 0.5), (10, 0.35), (10, 0.25), (10, 0.0), (5, 0.35))):
    """Replay :func:`patience_data` recordings under each wait ``max(floor, c i)``: the stage's steps saved and the
    scenes whose fit would change (the run's best deviance iterate moves: its score and the family prior's standard
    error; or, when the thresholded candidate is chosen, its squared-error iterate: its count)."""
    rows = [json.loads(line) for p in paths for line in open(p)]
    print(f"{len(rows)} scenes from {', '.join(paths)}")
    for floor, c in rules:
        total = saved = 0
        changed = []
        for r in rows:
            for rec in r["runs"]:
                if (floor, c) == (10, 1.0) and _patience_cut(rec, 10, 1.0)[0] != rec["it"]:
                    raise RuntimeError(f"{r['name']}: the replay does not reproduce the recorded run")
                it, _ = _patience_cut(rec, floor, c)
                total, saved = total + rec["it"], saved + rec["it"] - it
                old = (int(np.argmin(rec["curve"][1:]) + 1), int(np.argmin(rec["sq"][1:]) + 1))
                new = (int(np.argmin(rec["curve"][1:it + 1]) + 1), int(np.argmin(rec["sq"][1:it + 1]) + 1))
                if old[0] != new[0] or (old[1] != new[1] and r["choice"].get("null_space") == "threshold"):
                    changed.append(f"{r['name'].split()[0]} {old}->{new}")
        print(f"  wait max({floor}, {c:g} i): {total} steps, {saved} saved ({100 * saved / max(total, 1):.0f}%), "
              f"fits changed: {len(changed)} {changed}")

def _ints(text):
    """``0,3,5`` or ranges ``0-23,96-143`` -> the list of indices."""
    out = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        out += list(range(int(lo), int(hi) + 1)) if hi else [int(lo)]
    return out


def _opt(a, i, default=None, conv=str):
    return conv(a[i]) if len(a) > i else default


#: sub-command -> (its arguments, a function of the argument list returning the run). Session 30: the old if/elif
#: chain on sys.argv printed nothing and exited 0 for --help or an unknown sub-command (an IndexError for none).
COMMANDS = {
    "rl": ("", lambda a: lambda: rl()),
    "rl_suite": ("SPLIT N SIZE", lambda a: (lambda s=a[0], n=int(a[1]), z=a[2]: rl(suite_scenes(s, n, z)))),
    "treatments": ("SPLIT N SIZE", lambda a: (lambda s=a[0], n=int(a[1]), z=a[2]: treatments(suite_scenes(s, n, z)))),
    "ladder_beyond": ("INDICES SPLIT N|auto OUT", lambda a: (
        lambda i=_ints(a[0]), s=a[1], n=None if a[2] == "auto" else int(a[2]), o=a[3]:
        ladder_beyond(i, s, n, out=o))),
    "ladder_beyond_summary": ("FILE", lambda a: (lambda f=a[0]: ladder_beyond_summary(f))),
    "ladder_top": ("INDICES SPLIT N OUT [noold]", lambda a: (
        lambda i=_ints(a[0]), s=a[1], n=int(a[2]), o=a[3], old=_opt(a, 4) != "noold":
        ladder_top(i, s, n, out=o, old=old))),
    "kgrid": ("INDICES SIZE [KS]", lambda a: (
        lambda i=_ints(a[0]), z=a[1], ks=_opt(a, 2, None, lambda v: tuple(float(u) for u in v.split(","))):
        kgrid(i, z, *([ks] if ks else [])))),
    "rl_rule": ("INDICES [SIZE]", lambda a: (lambda i=_ints(a[0]), z=_opt(a, 1, "small"): rl_rule(i, z))),
    "wave_iters": ("INDICES [SIZE]", lambda a: (lambda i=_ints(a[0]), z=_opt(a, 1, "small"): wave_iters(i, z))),
    # null_iters 25,32,37 small 48: indices into suite("tune", n=48) (fresh tuning seeds 1024-1047 for indices >= 24)
    "null_iters": ("INDICES [SIZE] [N]", lambda a: (
        lambda i=_ints(a[0]), z=_opt(a, 1, "small"), n=_opt(a, 2, 24, int): null_iters(i, z, n_suite=n))),
    "null_factor": ("INDICES SPLIT N SIZE [OUT]", lambda a: (
        lambda i=_ints(a[0]), s=a[1], n=int(a[2]), z=a[3], o=_opt(a, 4): null_factor(i, s, n, z, out=o))),
    "shaped_family": ("INDICES [SPLIT] [SIZE] [N]", lambda a: (
        lambda i=_ints(a[0]), sp=_opt(a, 1, "heldout"), z=_opt(a, 2, "small"), n=_opt(a, 3, 24, int):
        shaped_family(i, sp, z, n))),
    # a sixth argument "science" adds each candidate's velocity- and width-map RMS errors (session 40)
    # "reuse=CSV" instead: rows of that hindsight_csv file with the same choice and candidates are not refitted
    "hindsight": ("INDICES [SPLIT] [SIZE] [SHAPE] [N] [science|reuse=CSV]", lambda a: (
        lambda i=_ints(a[0]), rest=a[1:4], n=_opt(a, 4, None, lambda v: v if v == "table" else int(v)),
        sc=_opt(a, 5) == "science", ru=(_opt(a, 5) or "").partition("reuse=")[2] or None,
        _=_opt(a, 4) and suite_sizes(_ints(a[0]), _opt(a, 1, "heldout"), a[4]):
        hindsight(i, *rest, *([n] if n else []), science=sc, reuse=ru))),
    "hindsight_csv": ("OUT SIZE=LOG ...", lambda a: (lambda: hindsight_csv(a[0], *a[1:]))),
    "ladder_scores": ("INDICES SIZE OUT [HINDSIGHT_CSV]", lambda a: (
        lambda i=_ints(a[0]), z=a[1], o=a[2], h=_opt(a, 3): ladder_scores(i, z, o, *([h] if h else [])))),
    "ladder_scores_table": ("SIZE PATH [HINDSIGHT_CSV] [CSV_OUT]", lambda a: (
        lambda z=a[0], p=a[1], h=_opt(a, 2), c=_opt(a, 3):
        ladder_scores_table(z, p, *([h] if h else []), csv_out=c))),
    "guard_data": ("INDICES SPLIT N OUT [SEEDS]", lambda a: (
        lambda i=_ints(a[0]), s=a[1], n=int(a[2]), o=a[3], sd=tuple(_opt(a, 4, [0, 1, 2], _ints)):
        guard_data(i, s, n, out=o, seeds=sd))),
    "zero_data": ("INDICES SPLIT N OUT [SEEDS]", lambda a: (
        lambda i=_ints(a[0]), s=a[1], n=int(a[2]), o=a[3], sd=tuple(_opt(a, 4, [0, 1, 2], _ints)):
        zero_data(i, s, n, out=o, seeds=sd))),
    "zero_rules": ("PATH [LO] [HI]", lambda a: (lambda p=a[0], r=[int(v) for v in a[1:3]]: zero_rules(p, *r))),
    "zero_family": ("ZERO_PATH GUARD_PATH LO HI [FACTOR]", lambda a: (
        lambda z=a[0], g=a[1], lo=int(a[2]), hi=int(a[3]), f=_opt(a, 4, None, float): zero_family(z, g, lo, hi, f))),
    "family_data": ("INDICES SPLIT N OUT [SIZE]", lambda a: (
        lambda i=_ints(a[0]), s=a[1], n=int(a[2]), o=a[3], z=_opt(a, 4, "small"): family_data(i, s, n, out=o, size=z))),
    "ladder_data": ("INDICES SPLIT N OUT [SIZE]", lambda a: (
        lambda i=_ints(a[0]), s=a[1], n=int(a[2]), o=a[3], z=_opt(a, 4, "default"):
        ladder_data(i, s, n, out=o, size=z))),
    "ladder_rules": ("PATHS [FIT_INDICES]", lambda a: (
        lambda p=a[0].split(","), f=_opt(a, 1, None, _ints): ladder_rules(p, fit=f))),
    "family_rules": ("PATH ...", lambda a: (lambda p=list(a): family_rules(p))),
    "asam": ("INDICES SPLIT N", lambda a: (lambda i=_ints(a[0]), s=a[1], n=int(a[2]): asam_breakdown(i, s, n))),
    "patience_data": ("INDICES SPLIT N SIZE [OUT]", lambda a: (
        lambda i=_ints(a[0]), s=a[1], n=int(a[2]), z=a[3], o=_opt(a, 4): patience_data(i, s, n, z, out=o))),
    "patience_rules": ("PATHS", lambda a: (lambda p=a[0].split(","): patience_rules(p))),
    "guard_rules": ("PATH [LO] [HI]", lambda a: (lambda p=a[0], r=[int(v) for v in a[1:3]]: guard_rules(p, *r))),
    "wavelet": ("", lambda a: lambda: wavelet()),
    "suite": ("SPLIT N SIZE [START]", lambda a: (
        lambda s=a[0], n=int(a[1]), z=a[2], st=_opt(a, 3, 0, int): wavelet(suite_scenes(s, n, z, st)))),
}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="sub-commands and their arguments:\n" + "\n".join(
                                    f"  {k} {v[0]}" for k, v in COMMANDS.items()))
    p.add_argument("command", choices=tuple(COMMANDS), metavar="COMMAND", help="one of the sub-commands below")
    p.add_argument("--ladder-score", choices=("last", "least"), default=tuning.LADDER_SCORE,
                   help="how each k rung's held-out curve scores it (xfusion.tuning.LADDER_SCORE; session 47)")
    p.add_argument("--threshold-max-iter", type=int, default=tuning.THRESHOLD_MAX_ITER,
                   help="half-data iterations of the thresholded candidate's run at most (xfusion.tuning."
                        "THRESHOLD_MAX_ITER; session 48 measured 157)")
    p.add_argument("args", nargs=argparse.REMAINDER, help="the sub-command's arguments")
    a = p.parse_args(argv)
    usage, build = COMMANDS[a.command]
    words = usage.split()
    n_req = sum(not w.startswith("[") and w != "..." for w in words)
    n_max = None if "..." in words else len(words)
    if len(a.args) < n_req or (n_max is not None and len(a.args) > n_max):
        p.error(f"{a.command} takes {usage or 'no arguments'}; got {' '.join(a.args) or 'none'}")
    try:
        run = build(a.args)
    except (IndexError, ValueError) as exc:
        p.error(f"{a.command} {usage}: bad argument ({exc}); got {' '.join(a.args)}")
    if a.threshold_max_iter < 1:
        p.error(f"--threshold-max-iter must be >= 1; got {a.threshold_max_iter}")
    before = tuning.LADDER_SCORE, tuning.THRESHOLD_MAX_ITER
    tuning.LADDER_SCORE, tuning.THRESHOLD_MAX_ITER = a.ladder_score, a.threshold_max_iter
    try:
        run()
    finally:  # in-process callers (the tests) keep the library's values
        tuning.LADDER_SCORE, tuning.THRESHOLD_MAX_ITER = before
    return 0


if __name__ == "__main__":
    sys.exit(main())
