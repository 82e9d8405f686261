"""Plain RL for line maps: RL at its thinning count, delivered through a shape prior tuned by thinning, per suite scene.

Session 40 (``benchmarks/QUALITY_HISTORY.md``): on five of the seven fresh hindsight misses plain RL at its
truth-free count gave better velocity and width maps than the default's choice, which the held-out deviance ranked
above it. This measures that recipe on whole suite sets, with nothing fitted: per scene

* ``rl_auto``: ``fuse(x, y, regularization="none", max_iter="auto")`` (the count by thinning, no shape prior);
* ``rl_shape``: the same count, delivered through the spectral-shape prior whose pseudo-counts
  :func:`xfusion.tuning.tune_shape` picks by thinning for that fit (what ``regularization="auto"`` does when it
  chooses plain RL);
* on the tuning seeds also the default ``fuse`` and RL's oracle (best-NMSE iterate, as ``benchmarks/suite.py``);
  held out (``--split heldout``) both come from ``results/suite_heldout.csv``;

each scored as ``benchmarks/shape_floor.py`` scores a cube (NMSE, aSAM, acSSIM, ERGAS, velocity- and width-map RMS
errors, flux bias) with the two naive baselines. ``--floor N`` adds ``rl_floor``: ``rl_shape`` with level 0 floored at
N pseudo-counts (as ``shape_prior=["auto", N]``); ``--no-default`` skips the default and RL's oracle on the tuning
seeds. ``--summary`` prints the issue-13 counts per size and variant (rows of one scene from several files merged).

    python benchmarks/rl_lines.py --split tune --size small --n 48 --indices 0-47 --json a.jsonl
    python benchmarks/rl_lines.py --split heldout --n 24 --indices 0-23 --json b.jsonl      # full size
    python benchmarks/rl_lines.py --summary a.jsonl b.jsonl

Held out, the CSV's rows 0-23, 24-47, 48-71 and 72-95 are the scenes of ``--n 24``, ``--n 48``, ``--n 72`` and
``--n 96`` (a suite's draws depend on its size: index 0 of ``--n 96`` is another scene than the CSV's row 0; the
summary refuses a row the CSV does not hold). One thread per job (``OMP_NUM_THREADS=1 XFUSION_NUM_THREADS=1``); about
1-5 s per small scene, 5-30 s per full-size one held out, and 25-60 s per full-size tuning scene (the default and the
RL oracle included). Session 40's numbers: ``benchmarks/QUALITY_HISTORY.md``.
"""
import argparse
import csv
import json
import math
import sys
import time

import numpy as np

import xfusion
from bench_cli import add_suite_options, suite_rows  # benchmarks/bench_cli.py
from shape_floor import CSV, Scene  # benchmarks/shape_floor.py
from suite import _beats  # benchmarks/suite.py
from xfusion import tuning
from xfusion.regularizers.shape import levels_of

SCRIPT = "rl_lines.py"
VARIANTS = ("default", "rl_auto", "rl_shape")


def run_scene(spec, size, with_default, floor=None, oracle_count=False):
    t0 = time.perf_counter()
    sc = Scene(spec, size)
    x, y, score = sc.x, sc.y, sc.score
    row = {"name": spec["name"], "size": size or "full"}
    r = xfusion.fuse(x, y, progress=False, regularization="none", max_iter="auto")
    n = int(xfusion.settings_of(r)["max_iter"])
    row["rl_auto"], row["rl_iterations"] = score(r["flux"]), n
    fit = {"regularization": "none", "method": "em", "max_iter": n}
    n0, rec = tuning.tune_shape(x, y, settings=fit)
    row["rl_shape_prior"] = n0
    row["rl_shape"] = score(xfusion.fuse(x, y, progress=False, regularization="none", max_iter=n, shape_prior=n0)["flux"])
    if floor is not None:  # level 0 floored as shape_prior=["auto", floor] does (fuse._floored)
        n0_all, n0_pixel = levels_of(n0)
        row["rl_floor"] = score(xfusion.fuse(x, y, progress=False, regularization="none", max_iter=n,
                                             shape_prior=[n0_all, max(n0_pixel, float(floor))])["flux"])
        row["floor"] = float(floor)
    row.update(sc.baselines())
    if with_default:
        d = xfusion.fuse(x, y, progress=False)
        row["default"], row["settings"] = score(d["flux"]), xfusion.settings_of(d)
        row["rl_best"] = sc.rl_oracle()
        if oracle_count:  # diagnostic: the route's ceiling, RL stopped at the oracle's (truth-chosen) iteration
            it = int(row["rl_best"]["iteration"])
            n0o, _ = tuning.tune_shape(x, y, settings={**fit, "max_iter": it})
            row["rl_shape_oracle_count"] = score(xfusion.fuse(x, y, progress=False, regularization="none", max_iter=it,
                                                              tol=None, shape_prior=n0o)["flux"])
    row["t_s"] = time.perf_counter() - t0
    return row


def summary(files):
    merged = {}  # rows of one scene from several files (e.g. a --floor run added with --no-default) in one
    for line in (line for f in files for line in open(f) if line.strip()):
        r = json.loads(line)
        merged.setdefault((r["name"], r["size"]), {}).update(r)
    rows = list(merged.values())
    with open(CSV) as f:
        heldout = {(c["size"], c["scene"]): c for c in csv.DictReader(f)}
    for size in ("small", "full"):
        rs = [r for r in rows if r["size"] == size]
        if not rs:
            continue
        for r in rs:
            if "default" not in r:  # held out: the default and RL's oracle from the suite CSV
                c = heldout.get(("small" if size == "small" else "full size", r["name"]))
                if c is None:
                    raise SystemExit(f"{r['name']} (index {r.get('index')}) is not a scene of {CSV.name}: run held-out "
                                     "indices 0-23, 24-47, 48-71, 72-95 with --n 24, 48, 72, 96")
                r["rl_best"] = {"nmse_db": float(c["nmse_rl_oracle_db"]),
                                "velocity_rms_kms": float(c["velocity_rms_rl_oracle_kms"] or "nan"),
                                "width_rms_kms": float(c["width_rms_rl_oracle_kms"] or "nan")}
                r["default"] = {"nmse_db": float(c["nmse_default_db"]),
                                "velocity_rms_kms": float(c["velocity_rms_default_kms"] or "nan"),
                                "width_rms_kms": float(c["width_rms_default_kms"] or "nan"),
                                "flux_bias_pct": float(c["flux_bias_pct"]),
                                "baselines": c["beats_both_baselines"] == "True"}
        lined = [r for r in rs if math.isfinite(r["rl_best"]["velocity_rms_kms"])]
        variants = [v for v in VARIANTS + ("rl_floor", "rl_shape_oracle_count") if all(v in r for r in rs)]
        print(f"== {size}: {len(rs)} scenes, {len(lined)} with lines")
        for v in variants:
            def base(r):
                d = r[v]
                return d["baselines"] if "baselines" in d else _beats(d, r["x_up"]) and _beats(d, r["y_up"])

            vel = [r[v]["velocity_rms_kms"] for r in lined]
            wid = [r[v]["width_rms_kms"] for r in lined]
            print(f"   {v:9s} velocity <= RL oracle "
                  f"{sum(r[v]['velocity_rms_kms'] <= r['rl_best']['velocity_rms_kms'] for r in lined)}/{len(lined)}"
                  f"  width <= RL oracle {sum(r[v]['width_rms_kms'] <= r['rl_best']['width_rms_kms'] for r in lined)}"
                  f"/{len(lined)}  NMSE >= RL oracle {sum(r[v]['nmse_db'] >= r['rl_best']['nmse_db'] for r in rs)}"
                  f"/{len(rs)}  baselines {sum(base(r) for r in rs)}/{len(rs)}  flux "
                  f"{sum(abs(r[v]['flux_bias_pct']) <= 1 for r in rs)}/{len(rs)}  mean NMSE "
                  f"{np.mean([r[v]['nmse_db'] for r in rs]):.2f} dB  velocity RMS mean / median "
                  f"{np.mean(vel):.1f} / {np.median(vel):.1f}  width {np.mean(wid):.1f} / {np.median(wid):.1f} km/s")
        for v in variants[1:]:
            off = [r["name"].split()[0] for r in rs if abs(r[v]["flux_bias_pct"]) > 1]
            if off:
                print(f"   {v} flux bias above 1 %: {', '.join(off)}")
            bv = sum(r[v]["velocity_rms_kms"] < r["default"]["velocity_rms_kms"] for r in lined)
            bw = sum(r[v]["width_rms_kms"] < r["default"]["width_rms_kms"] for r in lined)
            dn = [r[v]["nmse_db"] - r["default"]["nmse_db"] for r in rs]
            print(f"   {v} against the default: velocity better on {bv}/{len(lined)}, width better on "
                  f"{bw}/{len(lined)}, NMSE change mean {np.mean(dn):+.2f} dB (median {np.median(dn):+.2f})")
            kinds = sorted({r["name"].split("/")[0] for r in lined})
            print("      velocity better per kind: " + ", ".join(
                f"{k} {sum(r[v]['velocity_rms_kms'] < r['default']['velocity_rms_kms'] for r in lined if r['name'].startswith(k))}"  # noqa: E501
                f"/{sum(r['name'].startswith(k) for r in lined)}" for k in kinds))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_suite_options(ap, split="tune", size="full")
    ap.add_argument("--floor", type=float, default=None,
                    help="also rl_floor: the same fit with level 0 floored at this many pseudo-counts")
    ap.add_argument("--oracle-count", action="store_true",
                    help="tuning seeds: also rl_shape_oracle_count, RL stopped at RL's oracle iteration (uses the "
                         "truth: a diagnostic of the route's ceiling) through the shape prior tuned for that fit")
    ap.add_argument("--no-default", action="store_true",
                    help="tuning seeds: skip the default and RL's oracle (a --summary merges them from another file)")
    args = ap.parse_args(argv)
    if args.summary:
        return summary(args.summary)
    default = args.split == "tune" and not args.no_default
    for row in suite_rows(ap, args, SCRIPT,
                          lambda spec, size: run_scene(spec, size, default, args.floor, args.oracle_count)):
        d = row.get("default", {})
        print(f"{row['index']} {row['name']}: RL {row['rl_iterations']} it, shape {row['rl_shape_prior']}: "
              + "; ".join(f"{v} {row[v]['nmse_db']:.2f} dB v {row[v]['velocity_rms_kms']:.1f} "
                          f"w {row[v]['width_rms_kms']:.1f}" for v in VARIANTS + ("rl_floor", "rl_shape_oracle_count") if v in row)
              + (f"; RL oracle v {row['rl_best']['velocity_rms_kms']:.1f}" if d else "")
              + f" ({row['t_s']:.0f} s)", flush=True)


if __name__ == "__main__":
    sys.exit(main())
