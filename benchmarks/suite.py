"""The scene suite (issue 13): the default ``xfusion.fuse`` on many kinds of scenes, against the naive
baselines and plain two-instrument Richardson-Lucy.

Per scene (``xfusion.scenes.suite``; simulated by code independent of xfusion's operators) it prints:
NMSE (dB, higher better), aSAM (rad), acSSIM, ERGAS (lower better) of the default fuse and of the two
naive baselines (X upsampled in energy, Y upsampled in space); plain RL at its best iteration (an
oracle: NMSE against the truth at every iteration) and at the iteration chosen without the truth
(``xfusion.tuning.tune(..., regularization="none")`` when available, else n/a); the velocity- and
line-width-map RMS errors (km/s) of the reference line over the brighter half of the field for the
default and for the RL oracle (``xfusion.analysis.line_map`` moments of each cube, compared with the
same measurement on the true cube); the total-flux bias of the default (%); wall times. Then a
summary: the fractions of scenes where the default beats both baselines on all four metrics, reaches
the RL oracle's NMSE, has a velocity RMS <= the RL oracle's, and a flux bias within 1%, naming the
failures.

    python benchmarks/suite.py                        # 24 tuning scenes (45x45 x 2000-2400, XMM+Resolve 36x36)
    python benchmarks/suite.py --heldout              # the held-out seeds (never tune on them)
    python benchmarks/suite.py --quick                # 6 small scenes (24x24 x 600)
    python benchmarks/suite.py --size small --n 12    # 12 scenes, small cubes
    python benchmarks/suite.py --method-kwargs '{"k": 1.0, "null_space": "threshold"}' --json out.json
    python benchmarks/suite.py --indices 0,5,7        # a subset of the suite
    python benchmarks/suite.py --select               # "auto" via xfusion.tuning.select (wavelet or RL by thinning)
                                                      # and the tuned wavelet2d1d of the same split (W NMSE/vRMS)
    timeout -s INT 1200 python benchmarks/suite.py     # stops after 20 min and still prints what it measured

``--method-kwargs`` is JSON passed to ``xfusion.fuse`` (any option, e.g. ``"regularization": "lowrank"``).
"""
import argparse
import json
import math
import os
import platform
import sys
import time
import traceback

import numpy as np

import xfusion
from bench_cli import check_output, parse_indices, parse_json_dict, write_document  # benchmarks/bench_cli.py
from xfusion import analysis, baselines, metrics, scenes
from xfusion.grid import SPATIAL, assign_roles, fusion_grid
from xfusion.operators.model import build_model

SCRIPT = "suite.py"
METRICS = ("nmse_db", "asam_rad", "acssim", "ergas")
HIGHER_BETTER = {"nmse_db": True, "asam_rad": False, "acssim": False, "ergas": False}


def _pick_rl_iterations(x, y):
    """Truth-free RL iteration count from xfusion.tuning, or (None, reason)."""
    try:
        from xfusion import tuning
    except ImportError as exc:
        return None, f"no xfusion.tuning ({exc})"
    if not (hasattr(tuning, "tune") and hasattr(tuning, "choice")):
        return None, "xfusion.tuning has no tune/choice"
    try:
        ch = tuning.choice(tuning.tune(x, y, regularization="none"))
        return int(ch["max_iter"]), ""
    except Exception as exc:  # another helper's module in progress: report, do not stop the suite
        return None, f"tuning failed: {type(exc).__name__}: {exc}"


def line_free_peaks(x, y):
    """The line-free compact sources ``fuse`` finds for ``source_lines="auto"`` (:func:`xfusion.sources.source_lines`)."""
    from xfusion import sources
    from xfusion.grid import assign_roles, fusion_grid

    return sources.source_lines(assign_roles(x, y)[0], fusion_grid(x, y))[0]


def compact_peaks(x, y):
    """The compact sources ``fuse`` finds for ``source_iter="auto"`` (:func:`xfusion.sources.compact_peaks`)."""
    from xfusion import sources
    from xfusion.grid import assign_roles

    return sources.compact_peaks(assign_roles(x, y)[0])


def sources_and_share(x, y):
    """The compact sources ``fuse`` finds and the share of the sharp-spatial counts they hold above their
    surroundings, as ``source_iter="auto"`` reads them (:func:`xfusion.sources.peaks_and_share`, session 59)."""
    from xfusion import sources
    from xfusion.grid import assign_roles

    return sources.peaks_and_share(assign_roles(x, y)[0])


def takes_sources(kw):
    """Whether a fit with fuse options ``kw`` resolves ``source_lines="auto"`` (a 2D-1D fit that does not set them),
    so that its delivered shape prior keeps the floor off those sources (:func:`xfusion.tuning.floor_off_sources`); fuse
    turns "auto" off with a stabilized cube or the propagated noise model."""
    from xfusion.fuse import source_lines_auto_applies

    return source_lines_auto_applies(kw.get("regularization", "wavelet2d1d"), kw)


def _science(flux, truth_maps, lm_args, lsf):
    if truth_maps is None:
        return {"velocity_rms_kms": float("nan"), "width_rms_kms": float("nan")}
    est = analysis.line_map(flux, lsf_sigma=lsf, **lm_args)
    return analysis.map_errors(truth_maps, est, fraction=0.5)


def run_scene(spec, size, fuse_kwargs, rl_iter, use_tuning, select=False, continuum_degree=None):
    t_scene = time.perf_counter()
    x, y, truth = scenes.from_spec(spec, size=size)
    T = truth["flux"]
    T64 = T.values.astype(np.float64)
    grid = fusion_grid(x, y)
    ratio = float(grid.attrs["spatial_factor"])
    lm_args = scenes.line_map_args(truth)
    if lm_args and continuum_degree is not None:
        lm_args["continuum_degree"] = continuum_degree
    lsf = float(truth.attrs["lsf_sigma_kev"])
    truth_maps = analysis.line_map(T, lsf_sigma=lsf, **lm_args) if lm_args else None
    row = {"name": spec["name"], "spec": {k: v for k, v in spec.items()}, "size": truth.attrs["size"],
           "band": truth.attrs["band"], "counts_x": float(x.counts.sum()), "counts_y": float(y.counts.sum())}

    # default fuse (with --select: regularization "auto", xfusion.tuning.select, then fuse with its choice)
    t0 = time.perf_counter()
    rl_from_select = None
    if select:
        from xfusion import tuning

        half = {}  # the choice's half-data iterate (tune_shape scores it)
        cur = tuning.select(x, y, complete=True, half_fit=half,  # every family run: the RL pick below
                            **{k: v for k, v in fuse_kwargs.items() if k in tuning.WAVELET_KEYS})
        ch = tuning.choice(cur)
        row["t_select_s"] = time.perf_counter() - t0
        row["selected"] = ch
        row["select_deviance"] = {s_: float(v) for s_, v in zip(cur["setting"].values, cur["mean_deviance"].values)}
        rl_from_select = json.loads(cur.attrs["details"]).get("rl", {}).get("max_iter")
        kw = {k: v for k, v in fuse_kwargs.items() if ch["regularization"] == "wavelet2d1d" or k not in
              tuning.WAVELET_KEYS}
        kw.update(ch)
        if "shape_prior" not in kw:  # what fuse(regularization="auto") delivers through: its n0 by thinning, then
            n0, rec = tuning.tune_shape(  # level 0 at >= tuning.PIXEL_FLOOR (session 44), not at sources (52)
                x, y, settings={k: v for k, v in ch.items() if k not in tuning.DIAG_KEYS}, half_fit=half)
            kw["shape_prior"] = tuning.floor_off_sources(n0, peaks=line_free_peaks(x, y) if takes_sources(kw) else ())
            row["shape_prior"] = dict(rec, delivered=kw["shape_prior"])
        if kw.get("regularization") == "wavelet2d1d" and "source_iter" not in kw:  # as fuse delivers (sessions 53, 59)
            kw["max_iter"], run = tuning.run_on(ch, ch.get("max_iter"), *sources_and_share(x, y))
            kw["source_iter"] = run or "none"
        res = xfusion.fuse(x, y, progress=False, **kw)
        # the wavelet2d1d default on the same split: the best wavelet candidate of the same curve (tune(...,
        # "wavelet2d1d") walks the same ladder); fitted only when "auto" chose RL or the thresholded candidate
        # (else it is the same fit)
        wch = tuning.ladder_choice(cur)
        row["wavelet_choice"] = wch
        if ch != {"regularization": "wavelet2d1d", **wch}:  # RL, or the thresholded wavelet candidate
            t1 = time.perf_counter()
            wres = xfusion.fuse(x, y, progress=False, **{**fuse_kwargs, **wch})
            row["t_wavelet_s"] = time.perf_counter() - t1
            row["wavelet"] = metrics.report(wres, T, ratio=ratio)
            row["wavelet"].update(_science(wres, truth_maps, lm_args, lsf))
    else:
        res = xfusion.fuse(x, y, progress=False, **fuse_kwargs)
    row["t_fuse_s"] = time.perf_counter() - t0 - row.get("t_wavelet_s", 0.0)  # tuning + final fit of the default
    row["fuse_iterations"] = int(res.attrs.get("iterations", -1))
    row["default"] = metrics.report(res, T, ratio=ratio)
    row["default"].update(_science(res, truth_maps, lm_args, lsf))
    row["flux_bias_pct"] = 100.0 * (float(res["flux"].values.sum(dtype=np.float64)) / float(T64.sum()) - 1.0)
    if select and "wavelet" not in row:
        row["wavelet"] = dict(row["default"])

    # naive baselines
    for key, fn in (("x_up", baselines.upsample_spatial), ("y_up", baselines.upsample_spectral)):
        b = fn(x, y)
        row[key] = metrics.report(b, T, ratio=ratio)
        row[key].update(_science(b, truth_maps, lm_args, lsf))

    # truth-free RL iteration count
    t0 = time.perf_counter()
    if rl_from_select is not None:  # the same split and RL run as a separate tune(regularization="none")
        pick, why = int(rl_from_select), "from select"
    else:
        pick, why = _pick_rl_iterations(x, y) if use_tuning else (None, "disabled (--no-tuning)")
    row["t_tune_s"] = time.perf_counter() - t0
    row["rl_pick_iteration"], row["rl_pick_note"] = pick, why

    # plain RL, NMSE of every iterate (internal units: flux x mean(t_X A_X) on the fused grid)
    x_sp, _, _ = assign_roles(x, y)
    scale = float(np.mean(build_model(grid, x_sp, SPATIAL).weights))
    curve, best = [], {"nmse": -math.inf, "it": 0, "z": None}
    at_pick = {}
    n_max = max(rl_iter, pick or 0)

    t32 = T.values.astype(np.float32).ravel()
    t_norm = float(np.dot(T64.ravel(), T64.ravel()))

    def cb(it, state):
        z = state["z"] / np.float32(scale)
        d = z.ravel() - t32
        v = 10.0 * math.log10(t_norm / max(float(np.dot(d, d)), 1e-300))  # metrics.nmse, in float32 (fast)
        curve.append(v)
        if v > best["nmse"]:
            best.update(nmse=v, it=it, z=np.array(z, dtype=np.float32))
        if pick is not None and it == pick:
            at_pick["nmse"] = v
            at_pick.update(_science(T.copy(data=z.astype(np.float32)), truth_maps, lm_args, lsf))
        # oracle early stop: far past the best and well below it (and past the truth-free pick)
        return it - best["it"] >= 20 and v < best["nmse"] - 1.0 and it >= (pick or 0)

    t0 = time.perf_counter()
    r = xfusion.fuse(x, y, regularization="none", method="em", max_iter=n_max, tol=None, progress=False, callback=cb)
    row["t_rl_s"] = time.perf_counter() - t0
    last = np.asarray(r["flux"].values, dtype=np.float64)
    z_last = None if not curve else metrics.nmse(T64, last)
    if z_last is not None and abs(z_last - curve[-1]) > 1e-2:  # the scale must reproduce fuse's own result
        raise RuntimeError(f"RL iterate scale mismatch: {z_last:.4f} dB vs {curve[-1]:.4f} dB")
    row["rl_curve_db"] = [round(v, 3) for v in curve]
    row["rl_best"] = metrics.report(T.copy(data=best["z"]), T, ratio=ratio)
    row["rl_best"]["iteration"] = best["it"]
    row["rl_best"].update(_science(T.copy(data=best["z"]), truth_maps, lm_args, lsf))
    row["rl_pick"] = at_pick if pick is not None else {}
    if pick is not None and not at_pick:  # the run stopped before the pick (cannot happen: n_max >= pick)
        row["rl_pick"] = {"nmse": float("nan")}
    row["t_scene_s"] = time.perf_counter() - t_scene
    return row


def _f(v, fmt=".2f"):
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return format(v, fmt)


def _table(rows):
    table = {}
    for r in rows:
        if "error" in r:
            table[r["name"]] = {"error": r["error"][:60]}
            continue
        d, xu, yu, rb, rp = r["default"], r["x_up"], r["y_up"], r["rl_best"], r["rl_pick"]
        table[r["name"]] = {
            "NMSE def": _f(d["nmse_db"]), "Xup": _f(xu["nmse_db"]), "Yup": _f(yu["nmse_db"]),
            "RL*(it)": f"{_f(rb['nmse_db'])}({rb['iteration']})",
            "RLpick(it)": (f"{_f(rp.get('nmse'))}({r['rl_pick_iteration']})" if r["rl_pick_iteration"] else "n/a"),
            "aSAM d/X/Y": "/".join(_f(m["asam_rad"], ".3f") for m in (d, xu, yu)),
            "acSSIM d/X/Y": "/".join(_f(m["acssim"], ".3f") for m in (d, xu, yu)),
            "ERGAS d/X/Y": "/".join(_f(m["ergas"], ".3g") for m in (d, xu, yu)),
            "vRMS d/RL*": f"{_f(d['velocity_rms_kms'], '.0f')}/{_f(rb['velocity_rms_kms'], '.0f')}",
            "wRMS d/RL*": f"{_f(d['width_rms_kms'], '.0f')}/{_f(rb['width_rms_kms'], '.0f')}",
            "bias%": _f(r["flux_bias_pct"]),
            **({"sel": "RL" if r["selected"]["regularization"] == "none" else f"W k={r['selected'].get('k')}"
                + (f" th{r['selected'].get('max_iter')}" if r["selected"].get("null_space") == "threshold" else ""),
                "W NMSE/vRMS": f"{_f(r['wavelet']['nmse_db'])}/{_f(r['wavelet'].get('velocity_rms_kms'), '.0f')}"}
               if "selected" in r and "wavelet" in r else {}),
            "t_fuse": _f(r["t_fuse_s"], ".1f"), "t_scene": _f(r["t_scene_s"], ".0f"),
        }
    return metrics.format_report(table, name_header="scene")


def _beats(d, b):
    return all((d[m] > b[m]) if HIGHER_BETTER[m] else (d[m] < b[m]) for m in METRICS)


def summary(rows):
    ok = [r for r in rows if "error" not in r]
    lines = []

    def frac(name, test, pool):
        fails = [r["name"] for r in pool if not test(r)]
        n = len(pool)
        lines.append(f"{name}: {n - len(fails)}/{n}" + (f" ({100 * (n - len(fails)) / n:.0f}%)" if n else "")
                     + (f"; failing: {', '.join(fails)}" if fails else ""))

    frac("default beats both baselines on all four metrics", lambda r: _beats(r["default"], r["x_up"])
         and _beats(r["default"], r["y_up"]), ok)
    frac("default NMSE >= RL oracle (best iteration)", lambda r: r["default"]["nmse_db"] >= r["rl_best"]["nmse_db"], ok)
    lined = [r for r in ok if math.isfinite(r["rl_best"]["velocity_rms_kms"])]
    frac("default velocity RMS <= RL oracle's (scenes with lines)",
         lambda r: r["default"]["velocity_rms_kms"] <= r["rl_best"]["velocity_rms_kms"], lined)
    frac("default line-width RMS <= RL oracle's (scenes with lines)",
         lambda r: r["default"]["width_rms_kms"] <= r["rl_best"]["width_rms_kms"], lined)
    # the RMS errors skip bright-half pixels whose line map is not valid: a cube could look better by losing them
    for who, key in (("default", "default"), ("RL oracle", "rl_best")):
        lost = [(r, r[key].get("n_invalid", 0), r[key].get("n_pixels", 0)) for r in lined]
        lost = [(r["name"], n, n + m) for r, n, m in lost if n]
        lines.append(f"{who}: line-map pixels of the bright half left out of the RMS (not valid) in {len(lost)}/"
                     f"{len(lined)} line scenes" + (": " + ", ".join(f"{s} {n}/{t}" for s, n, t in lost) if lost else ""))
    frac("|total-flux bias| <= 1%", lambda r: abs(r["flux_bias_pct"]) <= 1.0, ok)
    picked = [r for r in ok if r["rl_pick_iteration"]]
    if picked:
        frac("truth-free RL pick within 0.5 dB of the RL oracle",
             lambda r: r["rl_pick"].get("nmse", -math.inf) >= r["rl_best"]["nmse_db"] - 0.5, picked)
    else:
        notes = {r["rl_pick_note"] for r in ok}
        lines.append(f"truth-free RL pick: n/a ({'; '.join(sorted(notes))})")
    sel = [r for r in ok if "selected" in r]
    wav = [r for r in sel if "wavelet" in r]
    if wav:
        dw = np.array([r["default"]["nmse_db"] - r["wavelet"]["nmse_db"] for r in wav])
        ma = np.mean([r["default"]["nmse_db"] for r in wav])
        mw = np.mean([r["wavelet"]["nmse_db"] for r in wav])
        lines.append(f"'auto' vs the wavelet2d1d default (same split): mean NMSE {ma:.2f} vs {mw:.2f} dB; better "
                     f"in {(dw > 0.005).sum()}, equal "
                     f"in {(np.abs(dw) <= 0.005).sum()}, worse in {(dw < -0.005).sum()} of {len(wav)} scenes; worst "
                     f"{dw.min():+.2f} dB, best {dw.max():+.2f} dB")
        wl = [r for r in wav if math.isfinite(r["wavelet"].get("velocity_rms_kms", float("nan")))]
        if wl:
            va = np.array([r["default"]["velocity_rms_kms"] for r in wl])
            vw = np.array([r["wavelet"]["velocity_rms_kms"] for r in wl])
            lines.append(f"velocity RMS (scenes with lines): 'auto' mean {va.mean():.0f} km/s, wavelet2d1d default "
                         f"{vw.mean():.0f} km/s; 'auto' <= wavelet in {(va <= vw + 1e-9).sum()}/{len(wl)}")
            frac("wavelet2d1d default velocity RMS <= RL oracle's",
                 lambda r: r["wavelet"]["velocity_rms_kms"] <= r["rl_best"]["velocity_rms_kms"], wl)
        frac("wavelet2d1d default NMSE >= RL oracle", lambda r: r["wavelet"]["nmse_db"] >= r["rl_best"]["nmse_db"], wav)
        # family choice against hindsight: the better of (wavelet choice fitted, RL at the truth-free pick)
        fam = [r for r in wav if r["rl_pick"].get("nmse") is not None]
        frac("'auto' family choice within 0.5 dB of the better of (wavelet choice, RL at its pick) in hindsight",
             lambda r: r["default"]["nmse_db"] >= max(r["wavelet"]["nmse_db"], r["rl_pick"]["nmse"]) - 0.5, fam)
    if sel:
        th = [r["name"] for r in sel if r["selected"].get("null_space") == "threshold"]
        lines.append(f"regularization 'auto' chose the thresholded wavelet candidate (iterations by thinning) in "
                     f"{len(th)}/{len(sel)} scenes" + (f" ({', '.join(th)})" if th else ""))
        n_rl = sum(r["selected"]["regularization"] == "none" for r in sel)
        lines.append(f"regularization 'auto' chose plain RL in {n_rl}/{len(sel)} scenes"
                     + (f" ({', '.join(r['name'] for r in sel if r['selected']['regularization'] == 'none')})"
                        if n_rl else ""))
    err = [r["name"] for r in rows if "error" in r]
    if err:
        lines.append(f"scenes that raised: {', '.join(err)}")
    if ok:
        d = np.array([r["default"]["nmse_db"] for r in ok])
        b = np.array([r["rl_best"]["nmse_db"] for r in ok])
        lines.append(f"mean NMSE: default {d.mean():.2f} dB, RL oracle {b.mean():.2f} dB; median default - RL "
                     f"{np.median(d - b):+.2f} dB; total wall {sum(r['t_scene_s'] for r in ok):.0f} s, "
                     f"default fuse {sum(r['t_fuse_s'] for r in ok):.0f} s")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--heldout", action="store_true", help="the held-out seeds (default: the tuning seeds)")
    p.add_argument("--quick", action="store_true", help="6 small scenes")
    p.add_argument("--n", type=int, default=24, help="number of scenes (default 24)")
    p.add_argument("--size", default=None, help="'default', 'small' or NxL (fused pixels x channels)")
    p.add_argument("--indices", default=None, help="comma-separated scene indices to run (a subset)")
    p.add_argument("--method-kwargs", default="{}", help="JSON dict of options passed to xfusion.fuse")
    p.add_argument("--rl-iter", type=int, default=100, help="most RL iterations for the oracle (default 100)")
    p.add_argument("--no-tuning", action="store_true", help="skip the truth-free RL iteration pick")
    p.add_argument("--continuum-degree", type=int, default=None, choices=(0, 1, 2),
                   help="line maps' side-band continuum (xfusion.analysis.line_map continuum_degree; default its "
                        "default, 2: quadratic; 1: the straight line used before session 32)")
    p.add_argument("--select", action="store_true", help="default = regularization 'auto' (xfusion.tuning.select: "
                   "tuned wavelet2d1d or plain RL by held-out deviance), timed with its fit")
    p.add_argument("--no-renormalize", action="store_true", help="ablation: EM+prox without the flux "
                   "renormalization (xfusion.solvers.em.EMProx.renormalize = False; the pre-fix behaviour)")
    p.add_argument("--json", default=None, help="write the per-scene rows (and the summary) to this JSON file "
                   "(rewritten after every scene; a file this script did not write is refused before computing)")
    a = p.parse_args(argv)
    fuse_kwargs = parse_json_dict(p, a.method_kwargs, "--method-kwargs")
    check_output(p, a.json, SCRIPT)
    if a.no_renormalize:
        from xfusion.solvers.em import EMProx

        EMProx.renormalize = False
    size = a.size
    if size is not None and size not in ("default", "small"):
        try:
            size = tuple(int(v) for v in size.lower().split("x"))
        except ValueError:
            p.error(f"--size must be 'default', 'small' or NxL; got {a.size!r}")
    split = "heldout" if a.heldout else "tune"
    specs = scenes.suite(split, n=a.n)
    if a.quick:
        specs, size = specs[:6], size or "small"
    if a.indices:
        specs = [specs[i] for i in parse_indices(p, a.indices, len(specs))]
    size = size or "default"
    print(f"machine: {platform.platform()} ({platform.machine()}), cpus={os.cpu_count()}, python="
          f"{platform.python_version()}, numpy={np.__version__}, xfusion={xfusion.__version__}")
    print(f"suite: split={split}, {len(specs)} scenes, size={size}, fuse options={fuse_kwargs or 'defaults'}"
          f"{', regularization auto (select)' if a.select else ''}"
          f"{', NO flux renormalization (ablation)' if a.no_renormalize else ''}, "
          f"RL oracle up to {a.rl_iter} iterations, line-map continuum degree "
          f"{'2 (default)' if a.continuum_degree is None else a.continuum_degree}")
    rows = []

    def save(summary_lines):
        if a.json:  # rewritten after every scene (temporary sibling renamed): an interrupted run keeps what it measured
            write_document(a.json, {"machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
                                    "split": split, "size": str(size), "fuse_kwargs": fuse_kwargs,
                                    "continuum_degree": a.continuum_degree, "rows": rows,
                                    "summary": summary_lines}, SCRIPT, indent=1, default=str)

    for i, spec in enumerate(specs):
        try:
            row = run_scene(spec, size, fuse_kwargs, a.rl_iter, not a.no_tuning, a.select, a.continuum_degree)
        except KeyboardInterrupt:  # Ctrl-C (or timeout -s INT): report the scenes already measured
            print(f"interrupted during scene {i + 1}/{len(specs)}; reporting {len(rows)} scenes", flush=True)
            break
        except Exception as exc:
            traceback.print_exc()
            row = {"name": spec["name"], "spec": spec, "error": f"{type(exc).__name__}: {exc}"}
        rows.append(row)
        if "error" in row:
            print(f"[{i + 1}/{len(specs)}] {spec['name']}: ERROR {row['error']}", flush=True)
        else:
            print(f"[{i + 1}/{len(specs)}] {spec['name']} ({row['size']}, {row['band']}): default "
                  f"{row['default']['nmse_db']:.2f} dB, RL* {row['rl_best']['nmse_db']:.2f} dB "
                  f"(it {row['rl_best']['iteration']}); wall {row['t_scene_s']:.0f} s (fuse {row['t_fuse_s']:.0f}, "
                  f"RL pick {row['t_tune_s']:.0f}, RL oracle {row['t_rl_s']:.0f} s)"
                  + (f"; selected {row['selected']} in {row['t_select_s']:.0f} s" if "selected" in row else "")
                  + f"; flux bias {row['flux_bias_pct']:+.2f}%", flush=True)
        save([])
    print()
    print(_table(rows))
    print()
    s = summary(rows)
    print(s)
    save(s.splitlines())
    return 0


if __name__ == "__main__":
    sys.exit(main())
