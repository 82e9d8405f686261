"""Mosaic fusion (issue 18): EPIC-pn + MOS1 + MOS2 and a 2x2 Resolve mosaic in one likelihood.

Scene: :func:`xfusion.scenes_mosaic.make_mosaic` (a cluster core with a bulk-velocity gradient, 72x72 fused
pixels of 5" x 400 channels of 2 eV at 6.2-7.0 keV; pn 3e6 counts, MOS1/MOS2 ~1.3e6 each, four Resolve
pointings 2e6 counts together, rolls 0/12/27/38 deg, overlapping by about half an array). Prints:

1. **quality**: NMSE (dB, higher better) of the fused cube against the truth and the velocity-map RMS error
   (km/s, moments of the reference line over the bright half of the field, as benchmarks/suite.py) for
   pn + Resolve mosaic and pn + MOS1 + MOS2 + Resolve mosaic, same settings (the default ``fuse``, i.e.
   ``regularization="auto"``; wavelet2d1d with pinned options k=1, n_scales_1d=5, null_space=zero and
   tol=1e-4; plain RL at a fixed iteration; ``--converged N``: the pinned wavelet run for N iterations;
   ``--control``: also pn alone with the exposure giving it pn + MOS's counts, no MOS); the velocity
   RMS also inside the mosaic only (fused pixels whose centre lies in some tile); ``--rl-sweep``: plain RL
   at iterations 2, 4, 8, 16, 32 of one run per input set (and each set at its best-NMSE iteration);
2. **seams**: per tile, predicted vs observed total counts (chi = (obs - pred) / sqrt(pred)) and the
   per-detector-pixel chi2/dof (band-integrated); pn's band-integrated residual map (d - m)/sqrt(m), the
   fused map's relative error vs the truth (band-integrated) and the velocity-map error on strips of +-5"
   along the tile edges that lie inside another pointing (the seams) vs inside the tiles away from any
   edge, the outer edge of the mosaic and outside it (a seam shows as larger residuals or errors there);
3. **time vs data size**: wall and CPU seconds per iteration (RL, or ``--time-regularization wavelet2d1d``;
   ``--time-iter`` iterations, best of ``--repeat``
   interleaved runs, the machine's load printed), the total
   data size (voxels of all inputs' counts) and the fused voxels the inputs' models read per use (a tile reads
   only the fused pixels it sees after its PSF) for 2 (pn + tile 1), 3 (+ MOS1), 5 (pn + 4 tiles), 6 (+ MOS1)
   and 7 inputs, with the ratios time / data size and time / touched voxels relative to the 2-input case;
4. **profile** (not in the default sections): CPU ms per RL iteration per input, or per group of inputs evaluated
   together (:mod:`xfusion.operators.group`): forward, data term, adjoint, adding it to the EM correction, and the
   EM step, each piece timed in place, for 2, 5 and 7 inputs;
5. **factor** (not in the default sections): would the tiles be cheaper with their shared PSF applied once to the
   fused cube and only their bare footprints per tile? Multiply-adds, CPU ms per forward and adjoint, and the
   difference of the two forms, for tile 1 alone and the 4 tiles (:func:`factor`);
6. **dask** (not in the default sections): the pinned wavelet2d1d fit of pn + tile 1, pn + 4 tiles and the 7
   inputs in memory and on a LocalCluster (2 worker processes x 1 thread, ``--dask-chunks`` fused pixel blocks):
   wall ms per iteration and the largest flux difference (:func:`dask_section`);
7. ``--two-input-check``: two-input results (pn + tile 1, and an image + image small scene in both orders) and the
   5-input (pn + 4 tiles) and 7-input mosaic (wavelet2d1d 10 iterations and RL 5 iterations) computed with the
   committed code (``git archive HEAD`` unpacked in a temporary directory, run in a subprocess; or the package under
   ``--reference DIR``) and with the working tree: maximum absolute difference of the flux (0 = bit for bit).

    nice -n 15 python benchmarks/mosaic.py                 # all sections (~10-20 min on a loaded 2-core box)
    python benchmarks/mosaic.py --sections time --repeat 3
    python benchmarks/mosaic.py --two-input-check --sections none
    python benchmarks/mosaic.py --size 72 200 --counts 3e5 2e6 --rl-sweep --sections quality   # few pn counts
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import xfusion
from xfusion import analysis, scenes
from xfusion.fuse import counts_of
from xfusion.metrics import nmse
from xfusion.scenes_mosaic import make_mosaic, tile_masks

PINNED = {"k": 1.0, "n_scales_1d": 5, "null_space": "zero"}


def _vel(flux, truth, region=None):
    lm = scenes.line_map_args(truth)
    lsf = float(truth.attrs["lsf_sigma_kev"])
    tm = analysis.line_map(truth["flux"], lsf_sigma=lsf, **lm)
    em = analysis.line_map(flux, lsf_sigma=lsf, **lm)
    if region is not None:
        tm = tm.assign(valid=tm["valid"] & region)
    return analysis.map_errors(tm, em, fraction=0.5)["velocity_rms_kms"]


def quality(obs, truth, args):
    mosaic = truth.attrs["tile_centers_arcsec"]
    inside = tile_masks(truth, truth.x.values, truth.y.values).any("tile").values
    sets = {"pn + Resolve mosaic": ["pn"] + [f"tile{k + 1}" for k in range(len(mosaic))],
            "pn + MOS1 + MOS2 + Resolve mosaic": ["pn", "mos1", "mos2"] + [f"tile{k + 1}" for k in range(len(mosaic))]}
    runs = {"default (auto)": {},
            "wavelet2d1d": dict(regularization="wavelet2d1d", max_iter=args.max_iter, tol=1e-4, **PINNED),
            f"RL {args.rl_iter} it": dict(regularization="none", max_iter=args.rl_iter, tol=None)}
    if args.converged:
        runs[f"wavelet2d1d {args.converged} it"] = dict(regularization="wavelet2d1d", max_iter=args.converged,
                                                         tol=None, **PINNED)
    if args.rl_sweep:
        rl_sweep(obs, truth, sets, inside)
    sources = {k: (obs, truth) for k in sets}
    if args.control:  # pn alone with the counts pn + MOS1 + MOS2 have (no MOS at all), Resolve's counts unchanged:
        # the scene's flux scale follows pn's counts, so this is pn's exposure x ratio relative to Resolve's
        ratio = sum(float(obs[k]["counts"].sum()) for k in ("pn", "mos1", "mos2")) / float(obs["pn"]["counts"].sum())
        name = f"pn x{ratio:.2f} exposure + Resolve mosaic"
        sets[name] = sets["pn + Resolve mosaic"]
        sources[name] = make_mosaic(seed=args.seed, size=tuple(args.size),
                                    counts=(args.counts[0] * ratio, args.counts[1]), mos=False)
    print("\n== quality: NMSE (dB) and velocity RMS (km/s; bright half of the field | inside the mosaic) ==")
    out = {}
    for rname, kw in runs.items():
        for sname, keys in sets.items():
            t0 = time.perf_counter()
            o, t = sources[sname]
            r = xfusion.fuse(*[o[k] for k in keys], progress=False, **kw)
            dt = time.perf_counter() - t0
            q = {"nmse_db": nmse(t["flux"], r["flux"]), "vel_rms": _vel(r["flux"], t),
                 "vel_rms_mosaic": _vel(r["flux"], t, inside), "iterations": int(r.attrs["iterations"]),
                 "s_per_it": float(r.attrs["seconds_per_iteration"]), "wall_s": dt}
            out[(rname, sname)] = (q, r)
            print(f"{rname:18s} {sname:40s} NMSE {q['nmse_db']:6.2f} dB  vel {q['vel_rms']:6.1f} | "
                  f"{q['vel_rms_mosaic']:6.1f} km/s  ({q['iterations']} it, {q['s_per_it']:.2f} s/it, {dt:.0f} s)",
                  flush=True)
    return out


def rl_sweep(obs, truth, sets, inside, marks=(2, 4, 8, 16, 32)):
    """Plain RL (regularization="none") of each input set, NMSE and velocity RMS at several iterations of ONE
    run (the iterate read by the callback; internal units converted with the final flux): the curve, and each
    set at its own best iteration (an oracle: the truth chooses)."""
    print("\n== RL sweep: NMSE (dB) | velocity RMS (km/s, bright half; inside the mosaic) per iteration ==")
    for sname, keys in sets.items():
        rec = {}

        def cb(it, state):
            if it in marks:
                rec[it] = np.array(state["z"], dtype=np.float64, copy=True)
            return False

        r = xfusion.fuse(*[obs[k] for k in keys], regularization="none", max_iter=max(marks), tol=None,
                         progress=False, callback=cb)
        scale = float(rec[max(marks)].sum() / np.sum(r["flux"].values, dtype=np.float64))
        best = None
        for it in marks:
            f = truth["flux"].copy(data=(rec[it] / scale).astype(np.float32))
            q = (nmse(truth["flux"], f), _vel(f, truth), _vel(f, truth, inside))
            best = q if best is None or q[0] > best[0] else best
            print(f"RL it {it:2d}  {sname:36s} NMSE {q[0]:6.2f} dB  vel {q[1]:6.1f} | {q[2]:6.1f} km/s", flush=True)
        print(f"RL best-NMSE iteration, {sname}: NMSE {best[0]:.2f} dB, vel {best[1]:.1f} | {best[2]:.1f} km/s")


def _border_strips(truth, x, y, width=5.0):
    """(internal, outer): fused pixels within ``width`` arcsec of a tile edge that lies inside another tile (a
    seam between pointings) or inside no other tile (the outer boundary of the mosaic)."""
    gx, gy = np.meshgrid(x, y, indexing="ij")
    inside = tile_masks(truth, x, y).values
    internal, outer = np.zeros(gx.shape, bool), np.zeros(gx.shape, bool)
    n_side, pitch = truth.attrs["det_n"], truth.attrs["det_pixel"]
    h = 0.5 * n_side * pitch
    for k, (c, r) in enumerate(zip(truth.attrs["tile_centers_arcsec"], truth.attrs["tile_rolls_deg"])):
        a = np.deg2rad(r)
        dx, dy = gx - c[0], gy - c[1]
        u, v = np.cos(a) * dx + np.sin(a) * dy, -np.sin(a) * dx + np.cos(a) * dy
        near = ((np.abs(np.abs(u) - h) < width) & (np.abs(v) < h + width)) | \
               ((np.abs(np.abs(v) - h) < width) & (np.abs(u) < h + width))
        others = np.delete(inside, k, axis=0).any(axis=0)
        internal |= near & others
        outer |= near & ~others
    return internal, outer & ~internal


def seams(result, obs, truth, label):
    print(f"\n== seams ({label}) ==")
    inputs = json.loads(result.coverage.attrs["input_names"])
    pos = {n: i for i, n in enumerate(inputs)}
    rows = []
    for k in range(len(truth.attrs["tile_centers_arcsec"])):
        name = f"Resolve tile {k + 1}"
        m, d = (v.values for v in counts_of(result, pos[name]))
        w = obs[f"tile{k + 1}"]["mask"].values
        mp, dp = (np.where(w, m, 0).sum(axis=1), np.where(w, d, 0).sum(axis=1))
        use = mp > 0
        chi_tot = (dp.sum() - mp.sum()) / np.sqrt(mp.sum())
        chi2 = float(np.sum((dp[use] - mp[use]) ** 2 / mp[use]) / use.sum())
        rows.append((name, mp.sum(), dp.sum(), chi_tot, chi2))
        print(f"{name}: predicted {mp.sum():.6g}  observed {dp.sum():.6g}  chi {chi_tot:+.2f}  "
              f"per-pixel chi2/dof {chi2:.2f} ({int(use.sum())} pixels, band-integrated)")
    x, y = result.x.values, result.y.values
    internal, outer = _border_strips(truth, x, y)
    inside = tile_masks(truth, x, y).any("tile").values
    m = result["model_spatial"].values.sum(-1)
    d = result["counts_spatial"].values.sum(-1)
    res = (d - m) / np.sqrt(np.maximum(m, 1e-9))
    fe = result["flux"].values.sum(-1)
    ft = truth["flux"].values.sum(-1)
    rel = (fe - ft) / np.maximum(ft, 1e-30)
    lm, lsf = scenes.line_map_args(truth), float(truth.attrs["lsf_sigma_kev"])
    tv = analysis.line_map(truth["flux"], lsf_sigma=lsf, **lm)
    ev = analysis.line_map(result["flux"], lsf_sigma=lsf, **lm)
    dv = np.abs(ev["velocity"].values - tv["velocity"].values)
    vok = tv["valid"].values & ev["valid"].values
    bright = ft > np.quantile(ft, 0.25)
    print("  band-integrated: pn residual (d - m)/sqrt(m); fused map relative error vs truth; |velocity error|")
    for nm, sel in (("seams between pointings", internal & bright),
                    ("inside tiles, off the edges", inside & ~internal & ~outer & bright),
                    ("outer edge of the mosaic", outer & bright), ("outside every tile", ~inside & ~outer & bright)):
        vv = dv[sel & vok]
        print(f"  {nm:28s} pn residual mean {res[sel].mean():+.3f} rms {res[sel].std():.3f} | map rel. error mean "
              f"{rel[sel].mean():+.4f} rms {np.sqrt(np.mean(rel[sel] ** 2)):.4f} | |dv| median "
              f"{np.median(vv) if vv.size else np.nan:5.1f} km/s ({int(sel.sum())} px)")
    return rows


def _fused_voxels_touched(keys, obs):
    """Fused voxels each input's forward model reads per use, summed over the inputs: the whole cube for an image
    input, the fused pixels a tile sees (its footprint after its PSF: ``Gather`` columns) x channels for a tile; a
    group of inputs evaluated together (:mod:`xfusion.operators.group`) counts once (the cube, or the union of the
    pixels its tiles see)."""
    from xfusion.fuse import _precheck

    _, _, _, models, _ = _precheck([obs[k] for k in keys], {}, False)
    try:  # inputs evaluated together read the cube once (xfusion.operators.group; absent in older code)
        from xfusion.operators.group import SharedGather, group_models
    except ImportError:
        groups = [(None, [i]) for i in range(len(models))]
    else:
        groups = group_models(models)
    total = 0
    for g, idx in groups:
        M, N, L = models[idx[0]].fused_shape
        if g is None:
            m = models[idx[0]]
            cols = next((op.columns for op in m.ops if getattr(op, "columns", None) is not None), None)
        else:
            cols = g.columns if isinstance(g, SharedGather) else None
        total += (M * N if cols is None else cols.size) * L
    return total


def _per_iteration(keys, obs, n_iter, blas_threads, regularization="none"):
    """(wall, CPU) seconds per iteration of one fit (RL, or ``regularization="wavelet2d1d"`` with the pinned options
    :data:`PINNED`), from the clock readings of a callback at every iteration (the loop only: set-up, e.g. building
    the footprints, excluded). CPU time (``time.process_time``, this process) counts the work done, not the time
    spent waiting for a core on a loaded machine."""
    from threadpoolctl import threadpool_limits

    stamps = []

    def cb(it, state):
        stamps.append((time.perf_counter(), time.process_time()))
        return False

    with threadpool_limits(limits=blas_threads, user_api="blas"):
        xfusion.fuse(*[obs[k] for k in keys], regularization=regularization, max_iter=n_iter, tol=None,
                     progress=False, callback=cb, **(PINNED if regularization != "none" else {}))
    (w0, c0), (w1, c1) = stamps[0], stamps[-1]
    n = len(stamps) - 1
    return (w1 - w0) / n, (c1 - c0) / n


def timing(obs, args):
    label = "RL" if args.time_regularization == "none" else "wavelet2d1d " + ", ".join(
        f"{k}={v}" for k, v in PINNED.items())
    print("\n== time per iteration vs data size (%s, %d iterations, best of %d; BLAS threads: %s; load %s) ==" % (
        label, args.time_iter, args.repeat, args.blas_threads or "default",
        " ".join(f"{v:.1f}" for v in os.getloadavg())))
    print("   data = voxels of all inputs' counts; touched = fused voxels the inputs' models read per use (a group of\n"
          "   inputs evaluated together, xfusion.operators.group, reads them once);\n"
          "   wall and CPU (this process) ms per iteration between the first and last callback, minimum over the "
          "repeats;\n   ratios relative to 2 inputs (target: time ratio <= data ratio, i.e. time/data <= 1)")
    tiles = [k for k in obs if k.startswith("tile")]
    sets = [["pn", "tile1"], ["pn", "mos1", "tile1"], ["pn"] + tiles, ["pn", "mos1"] + tiles,
            ["pn", "mos1", "mos2"] + tiles]
    base = None
    rows = []
    runs = {tuple(k): [] for k in sets}
    for _ in range(args.repeat):  # interleaved: a change of the machine's load hits every set alike
        for keys in sets:
            runs[tuple(keys)].append(_per_iteration(keys, obs, args.time_iter, args.blas_threads,
                                                    args.time_regularization))
    for keys in sets:
        size = sum(int(obs[k]["counts"].size) for k in keys)
        work = _fused_voxels_touched(keys, obs)
        wall = min(r[0] for r in runs[tuple(keys)])
        cpu = min(r[1] for r in runs[tuple(keys)])
        base = base or (wall, cpu, size, work)
        rows.append((len(keys), size, work, wall, cpu))
        print(f"{len(keys)} inputs: data {size:8d} voxels ({size / base[2]:.2f}x)  touched {work / 1e6:6.2f} M "
              f"({work / base[3]:.2f}x)  wall {wall * 1e3:6.1f} ms/it ({wall / base[0]:.2f}x)  CPU {cpu * 1e3:6.1f} "
              f"ms/it ({cpu / base[1]:.2f}x)  CPU time/data {(cpu / size) / (base[1] / base[2]):.2f}x  "
              f"CPU time/touched {(cpu / work) / (base[1] / base[3]):.2f}x of 2 inputs", flush=True)
    print("   load after: " + " ".join(f"{v:.1f}" for v in os.getloadavg()))
    return rows


def profile(obs, n_iter=30):
    """Where the time of an RL iteration goes, per input or group of inputs evaluated together (the solver's
    :attr:`xfusion.solvers.em.EMProx.groups`): the EM sequence (forward, data term (value and ratio), adjoint, and
    adding the adjoint to the correction; then the EM step) run for ``n_iter`` iterations with each piece timed in
    place (process CPU time, one BLAS thread), for 2, 5 and 7 inputs; ms per iteration and share. The same operators,
    groups and likelihood terms as ``fuse`` (without its bookkeeping)."""
    from threadpoolctl import threadpool_limits

    from xfusion.fuse import _precheck
    from xfusion.likelihood import PoissonTerm

    try:
        from xfusion.operators.group import group_models
    except ImportError:  # older code: every input alone
        def group_models(models):
            return [(None, [i]) for i in range(len(models))]

    clock = time.process_time
    print("\n== profile: CPU ms per RL iteration, per input or group (in place; load %s) ==" % " ".join(
        f"{v:.1f}" for v in os.getloadavg()))
    totals = []
    for keys in (["pn", "tile1"], ["pn", "tile1", "tile2", "tile3", "tile4"],
                 ["pn", "mos1", "mos2", "tile1", "tile2", "tile3", "tile4"]):
        _, _, _, models, _ = _precheck([obs[k] for k in keys], {}, False)
        used, terms = set(), []
        for m in models:  # the models come in the order fuse uses; name them by their data
            k = next(k for k in keys if k not in used and obs[k]["counts"].shape == m.data_shape)
            used.add(k)
            mask = obs[k]["mask"].values if "mask" in obs[k] else None
            terms.append((k, m, PoissonTerm(m, obs[k]["counts"].values, mask)))
        groups = group_models(models)
        with threadpool_limits(limits=1, user_api="blas"):
            s = None
            for k, m, t in terms:
                q = m.adjoint(np.ones(m.data_shape, np.float32) if t.weight is None else t.weight)
                s = q if s is None else s + q
            s = np.where(s > 0, s, 1).astype(np.float32)
            z = np.full(models[0].fused_shape, 1e-3, np.float32)
            names = ["+".join(terms[i][0] for i in idx) for _, idx in groups]
            acc, em = {n: np.zeros(4) for n in names}, 0.0
            for it in range(n_iter + 2):  # 2 iterations to warm up
                corr = None
                for name, (g, idx) in zip(names, groups):
                    c0 = clock()
                    mo = [terms[idx[0]][1].forward(z)] if g is None else g.forward(z)
                    c1 = clock()
                    rs = []
                    for i, mi in zip(idx, mo):
                        terms[i][2].value_from_model(mi)
                        rs.append(terms[i][2].ratio(mi))
                    c2 = clock()
                    if g is None or corr is None or not hasattr(g, "adjoint_add"):
                        q = terms[idx[0]][1].adjoint(rs[0]) if g is None else g.adjoint(rs)
                    else:  # as EM: a group adds its adjoint into the running correction (timed as its adjoint)
                        q = g.adjoint_add(rs, corr)
                    c3 = clock()
                    corr = q if corr is None or q is corr else np.add(corr, q)
                    c4 = clock()
                    if it >= 2:
                        acc[name] += (c1 - c0, c2 - c1, c3 - c2, c4 - c3)
                c0 = clock()
                z = np.maximum(z * corr / s, 0)
                if it >= 2:
                    em += clock() - c0
        tot = (sum(a.sum() for a in acc.values()) + em) / n_iter * 1e3
        totals.append(tot)
        width = max(len(n) for n in names)
        print(f"{len(keys)} inputs: {tot:.2f} ms/it\n  {'input':{width}s} {'forward':>8s} {'data':>6s} {'adjoint':>8s} "
              f"{'add':>6s} {'total':>7s} {'share':>6s}")
        for k, a in acc.items():
            a = a / n_iter * 1e3
            print(f"  {k:{width}s} {a[0]:8.2f} {a[1]:6.2f} {a[2]:8.2f} {a[3]:6.2f} {a.sum():7.2f} {a.sum() / tot:6.1%}")
        print(f"  EM step {em / n_iter * 1e3:.2f} ms ({em / n_iter * 1e3 / tot:.1%})", flush=True)
    data = [sum(int(obs[k]["counts"].size) for k in keys) for keys in
            (("pn", "tile1"), ("pn", "tile1", "tile2", "tile3", "tile4"), tuple(obs))]
    for n, tot, d in zip((5, 7), totals[1:], data[1:]):
        print(f"{n} inputs / 2 inputs: {tot / totals[0]:.2f}x the time for {d / data[0]:.2f}x the data")


def factor(obs, n_iter=20):
    """Issue 18, session 11: would the tiles be cheaper with their PSF applied ONCE to the fused cube? All tiles of
    the mosaic share one PSF on the fused grid (checked), so ``F_i B z`` could be evaluated as ``F_i (B z)``: one
    convolution per use (:class:`~xfusion.operators.psf.Convolve2D`, separable here), then each tile's BARE
    footprint (~50 fused pixels per detector pixel instead of ~1100 after the PSF), stacked block-sparse on the
    union of the pixels they see as in :class:`~xfusion.operators.group.SharedGather`; the adjoint adds the
    footprints' transposes into one cube and makes one PSF transpose. Prints, for tile 1 alone and the 4 tiles (pn
    fixes the grid): multiply-adds per channel (the exact non-zeros of the stacked F B, the block-sparse product as
    evaluated, and the shared form's useful multiply-adds: a separable 'valid' convolution restricted to the pixels
    the footprints read, ``k_y |S| + k_x |S dilated along y|``, plus the bare footprints' blocks), CPU ms per
    forward and adjoint (best of 3 x ``n_iter``, one BLAS thread, float32, 400 channels) and the largest
    difference between the two forms (relative to the largest output)."""
    from scipy.ndimage import binary_dilation
    from threadpoolctl import threadpool_limits

    from xfusion.fuse import _precheck
    from xfusion.grid import psf_on_grid
    from xfusion.observation import pixel_size
    from xfusion.operators.footprint import BlockFootprint, _boxes
    from xfusion.operators.group import SharedGather, group_models
    from xfusion.operators.model import _footprint_op
    from xfusion.operators.psf import Convolve2D

    clock = time.process_time

    def best(f):
        f()
        out = []
        for _ in range(3):
            c0 = clock()
            for _ in range(n_iter):
                f()
            out.append((clock() - c0) / n_iter * 1e3)
        return min(out)

    print("\n== shared PSF (one convolution + bare footprints) vs footprint x PSF per tile (load %s) ==" % " ".join(
        f"{v:.1f}" for v in os.getloadavg()))
    grid = xfusion.fusion_grid(*obs.values())
    px = pixel_size(grid)
    for tiles in (["tile1"], [k for k in obs if k.startswith("tile")]):
        keys = ["pn"] + tiles
        _, _, _, models, _ = _precheck([obs[k] for k in keys], {}, False)
        g = next(g for g, _ in group_models(models) if isinstance(g, SharedGather))
        M, N, L = g.fused_shape
        kernels = [psf_on_grid(obs[k]["psf"], px).values for k in tiles]
        if any(k.shape != kernels[0].shape or not np.array_equal(k, kernels[0]) for k in kernels):
            print("  the tiles' PSFs differ on the fused grid: no shared convolution")
            continue
        conv = Convolve2D(kernels[0], (M, N))
        bare = np.vstack([_footprint_op(grid, obs[k], None, grid["energy"].values).matrix.toarray() for k in tiles])
        union = np.flatnonzero((bare != 0).any(axis=0))
        order, starts = _boxes(bare[:, union], union, N)
        fp = BlockFootprint(bare[:, union][:, order], starts)
        runs = fp.runs(union[order])
        S = np.zeros(M * N, bool)
        S[union] = True
        S = S.reshape(M, N)
        kx, ky = conv.kernel.shape
        Sy = binary_dilation(S, np.ones((1, ky), bool))
        dense = g.footprint.matrix
        macs = {"exact F B non-zeros": int(np.count_nonzero(dense)),
                "F B block-sparse (as run)": sum(r.size * (e - a) for a, e, r, *_ in g.footprint.blocks),
                "shared: PSF (useful) + bare blocks": int(ky * S.sum() + kx * Sy.sum())
                + sum(r.size * (e - a) for a, e, r, *_ in fp.blocks)}
        rng = np.random.default_rng(0)
        z = rng.random((M, N, L), dtype=np.float32)
        u = rng.random((dense.shape[0], L), dtype=np.float32)

        def shared_forward():
            return fp.forward_from(conv.forward(z).reshape(M * N, L), runs)

        def shared_adjoint():
            c = np.zeros((M * N, L), np.float32)
            fp.adjoint_add(u, c, runs)
            return conv.adjoint(c.reshape(M, N, L))

        def current_adjoint():
            return g.footprint.adjoint_add(u, np.zeros((M * N, L), np.float32), g._runs)

        with threadpool_limits(limits=1, user_api="blas"):
            ref = g.footprint.forward_from(z.reshape(M * N, L), g._runs)
            d_f = float(np.abs(shared_forward() - ref).max() / np.abs(ref).max())
            a_ref = current_adjoint().reshape(M, N, L)
            d_a = float(np.abs(shared_adjoint() - a_ref).max() / np.abs(a_ref).max())
            t = {"F B per tile (SharedGather)": (best(lambda: g.footprint.forward_from(z.reshape(M * N, L), g._runs)),
                                                 best(current_adjoint)),
                 "shared PSF + bare footprints": (best(shared_forward), best(shared_adjoint)),
                 "  of which the PSF": (best(lambda: conv.forward(z)), best(lambda: conv.adjoint(z)))}
        print(f"{' + '.join(tiles)}: {dense.shape[0]} detector pixels, {union.size} fused pixels in their footprints "
              f"(of {M * N}), PSF {kx}x{ky}{' separable' if conv.separable is not None else ''}; multiply-adds per "
              "channel: " + ", ".join(f"{k} {v}" for k, v in macs.items()))
        for k, (f, a) in t.items():
            print(f"  {k:30s} forward {f:6.2f} ms  adjoint {a:6.2f} ms  (CPU, {L} channels, float32)")
        print(f"  max |shared - per tile| / max: forward {d_f:.1e}, adjoint {d_a:.1e}", flush=True)


def dask_section(obs, args):
    """The mosaic on Dask (session 24: tiles run there, each pixel block adding its share of every tile's
    footprint): for pn + tile 1, pn + 4 tiles and the 7 inputs, the pinned wavelet2d1d fit for ``--time-iter``
    iterations in memory and on a LocalCluster (2 worker processes x 1 thread, fused blocks ``--dask-chunks``);
    wall ms per iteration (loop only, from the callbacks) and the largest flux difference relative to the
    largest flux."""
    from dask.distributed import Client, LocalCluster

    bx, by = args.dask_chunks
    print(f"\n== on Dask (LocalCluster 2 x 1 thread, blocks {bx}x{by}) vs in memory: wavelet2d1d "
          f"{args.time_iter} iterations (load {' '.join(f'{v:.1f}' for v in os.getloadavg())}) ==", flush=True)
    tiles = [k for k in obs if k.startswith("tile")]
    sets = [["pn", "tile1"], ["pn"] + tiles, ["pn", "mos1", "mos2"] + tiles]
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, memory_limit="4GB") as cluster, \
            Client(cluster) as client:
        for keys in sets:
            out = {}
            for label, kw in (("memory", {}), ("dask", {"client": client, "chunks": (bx, by)})):
                stamps = []

                def cb(it, state):
                    stamps.append(time.perf_counter())
                    return False

                r = xfusion.fuse(*[obs[k] for k in keys], regularization="wavelet2d1d", max_iter=args.time_iter,
                                 tol=None, progress=False, callback=cb, **PINNED, **kw)
                out[label] = (np.asarray(r.flux.values), (stamps[-1] - stamps[0]) / (len(stamps) - 1),
                              r.attrs["backend"])
            ref, got = out["memory"][0], out["dask"][0]
            d = float(np.max(np.abs(got.astype(np.float64) - ref)) / np.max(np.abs(ref)))
            print(f"{' + '.join(keys):45s} memory {out['memory'][1] * 1e3:7.1f} ms/it  dask ({out['dask'][2]}) "
                  f"{out['dask'][1] * 1e3:7.1f} ms/it  max |flux difference| / max {d:.1e}", flush=True)


def two_input_check(args):
    """Fuse pn + tile 1, an image + image pair (both orders), pn + 4 tiles and the 7 mosaic inputs with the committed
    code (or the package under ``--reference``) and with the working tree; print the max |difference| per case."""
    ref_label = "HEAD" if args.reference is None else f"reference {args.reference}"
    print(f"\n== {ref_label} vs working tree (pn + tile 1; image + image both orders; 5 and 7 inputs) ==")
    repo = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory() as tmp:
        if args.reference is None:
            tar = subprocess.run(["git", "-C", str(repo), "archive", "HEAD", "xfusion"], capture_output=True,
                                 check=True)
            subprocess.run(["tar", "-x", "-C", tmp], input=tar.stdout, check=True)
            ref_root = tmp
        else:
            ref_root = str(Path(args.reference).resolve())
        data = Path(tmp) / "data"
        data.mkdir()
        # the scenes from the working tree, stored as Zarr; both codes read the same stores
        from xfusion.io import zarr as xz

        obs, _ = make_mosaic(size=(args.size[0], args.size[1]))
        for k in obs:
            xz.write(obs[k], data / f"{k}.zarr")
        x, y, _ = scenes.make("snr_shell", 1, size="small", response="realistic")  # image + image (rebin, RMF)
        xz.write(x, data / "x.zarr")
        xz.write(y, data / "y.zarr")
        cases = [("pn", "tile1"), ("x", "y"), ("y", "x"), ("pn", "tile1", "tile2", "tile3", "tile4"),
                 ("pn", "mos1", "mos2", "tile1", "tile2", "tile3", "tile4")]
        code = ("import sys, json, numpy as np\nsys.path.insert(0, sys.argv[1])\nimport xfusion\n"
                "from xfusion.io import zarr as xz\n"
                "print('xfusion from', xfusion.__file__, file=sys.stderr)\n"
                "out = {}\n"
                "for case in json.loads(sys.argv[4]):\n"
                "    obs = [xz.open(sys.argv[2] + '/' + k + '.zarr').load() for k in case]\n"
                "    r = xfusion.fuse(*obs, regularization='wavelet2d1d', max_iter=10, tol=None, progress=False, "
                "k=1.0, n_scales_1d=5, null_space='zero')\n"
                "    out['+'.join(case) + ' wavelet2d1d 10 it'] = r.flux.values\n"
                "    r = xfusion.fuse(*obs, regularization='none', max_iter=5, tol=None, progress=False)\n"
                "    out['+'.join(case) + ' RL 5 it'] = r.flux.values\n"
                "np.savez(sys.argv[3], **out)\n")
        flux = {}
        for label, root in ((ref_label, ref_root), ("working tree", str(repo))):
            f = Path(tmp) / f"flux_{len(flux)}.npz"
            env = dict(os.environ, PYTHONPATH=root)
            p = subprocess.run([sys.executable, "-c", code, root, str(data), str(f), json.dumps(cases)],
                               capture_output=True, text=True, env=env)
            if p.returncode:
                print(f"{label}: failed\n{p.stderr[-2000:]}")
                return
            print(p.stderr.strip().splitlines()[-1])
            with np.load(f) as z:
                flux[label] = {k: z[k] for k in z.files}
        a, b = flux[ref_label], flux["working tree"]
        for k in a:
            d = float(np.max(np.abs(a[k].astype(np.float64) - b[k])))
            print(f"{k:60s} max |difference| {d:.3g} ph cm-2 s-1 = {d / float(np.abs(a[k]).max()):.2e} of the max "
                  f"flux; bit for bit: {bool(np.array_equal(a[k], b[k]))}")


SECTIONS = ("quality", "seams", "time", "profile", "factor", "dask")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sections", default="quality,seams,time",
                    help="comma list of quality, seams, time, profile, factor, dask, or none")
    ap.add_argument("--size", type=int, nargs=2, default=(72, 400), metavar=("N", "L"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-iter", type=int, default=50)
    ap.add_argument("--rl-iter", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--time-iter", type=int, default=20, help="iterations per timing run")
    ap.add_argument("--time-regularization", default="none", choices=("none", "wavelet2d1d"),
                    help="the fits timed: plain RL (the operators' cost; default) or the wavelet2d1d prior with the "
                         "pinned options (its prox works on the fused cube whatever the inputs)")
    ap.add_argument("--blas-threads", type=int, default=None, help="BLAS threads in the timing runs (default: the "
                    "library's; 1 avoids OpenBLAS's threaded small products stalling on a loaded machine)")
    ap.add_argument("--dask-chunks", type=int, nargs=2, default=(36, 36), metavar=("BX", "BY"),
                    help="fused pixel blocks of the dask section")
    ap.add_argument("--two-input-check", action="store_true")
    ap.add_argument("--reference", default=None, metavar="DIR", help="--two-input-check against the xfusion package "
                    "under DIR (a copy of an earlier tree) instead of git HEAD")
    ap.add_argument("--counts", type=float, nargs=2, default=(3e6, 2e6), metavar=("PN", "RESOLVE"),
                    help="expected counts of pn and of all Resolve tiles (MOS get their share of pn's by area)")
    ap.add_argument("--rl-sweep", action="store_true", help="also plain RL at iterations 2-32 of one run per set")
    ap.add_argument("--converged", type=int, default=0, metavar="N",
                    help="also the pinned wavelet2d1d run for N iterations without a stopping rule")
    ap.add_argument("--control", action="store_true",
                    help="also pn alone with the exposure giving it the counts of pn + MOS1 + MOS2 (no MOS): does more "
                         "sharp-spatial data of the SAME instrument help?")
    args = ap.parse_args(argv)
    sections = set(args.sections.split(","))
    unknown = sorted(sections - set(SECTIONS) - {"none"})
    if unknown or ("none" in sections and len(sections) > 1):  # session 30: a typo ran nothing and exited 0
        ap.error(f"--sections: unknown section(s) {unknown} (or 'none' mixed with others); choose a comma list of "
                 f"{', '.join(SECTIONS)}, or none")
    if sections == {"none"} and not args.two_input_check:
        ap.error("--sections none with no --two-input-check: nothing to run")
    t0 = time.perf_counter()
    if sections & set(SECTIONS):
        obs, truth = make_mosaic(seed=args.seed, size=tuple(args.size), counts=tuple(args.counts))
        print(f"scene built in {time.perf_counter() - t0:.1f} s: " + ", ".join(
            f"{o.attrs['name']} {float(o['counts'].sum()):.3g} counts" for o in obs.values()))
        print(xfusion.fusion_grid(*obs.values()).attrs["explanation"])
    res = None
    if "quality" in sections:
        res = quality(obs, truth, args)
    if "seams" in sections:
        if res is None:
            r = xfusion.fuse(*obs.values(), regularization="wavelet2d1d", max_iter=args.max_iter, tol=1e-4,
                             progress=False, **PINNED)
        else:
            r = res[("wavelet2d1d", "pn + MOS1 + MOS2 + Resolve mosaic")][1]
        seams(r, obs, truth, "pn + MOS1 + MOS2 + Resolve mosaic, wavelet2d1d")
        if res is not None:
            seams(res[(f"RL {args.rl_iter} it", "pn + MOS1 + MOS2 + Resolve mosaic")][1], obs, truth,
                  f"same inputs, RL {args.rl_iter} iterations")
    if "time" in sections:
        timing(obs, args)
    if "profile" in sections:
        profile(obs)
    if "factor" in sections:
        factor(obs)
    if "dask" in sections:
        dask_section(obs, args)
    if args.two_input_check:
        two_input_check(args)
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
