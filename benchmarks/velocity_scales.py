"""At what spatial scale does the default's velocity map lose to plain RL's oracle? (session 58; diagnostic)

Issue 13 counts, per line scene, whether the default ``fuse``'s velocity-map RMS error (km/s, over the brighter half
of the field, as ``benchmarks/suite.py``) is at most plain RL's at its best-NMSE iteration. This script splits both
errors ``e = v_est - v_true`` over that region into parts whose squares add up to the whole:

* ``offset``: the mean of ``e`` (a global velocity bias);
* ``block``: the mean of ``e`` over each pixel of the sharp-spectral instrument (``f x f`` fused pixels, ``f`` the
  grid's spatial factor): the velocity at the scale that instrument resolves;
* ``within``: ``e`` minus its block mean: structure inside one such pixel, which only the sharp-spatial instrument
  and the prior constrain.

``sum(e^2) = sum(block^2) + sum(within^2)`` over the region, exactly (the deviations from a block's mean sum to 0).
It also gives the share of ``sum(e^2)`` in the 3x3 footprints of the compact sources ``fuse`` finds
(:func:`xfusion.sources.compact_peaks`). ``--summary`` prints, over the scenes where the default misses, on how many
the default's block part and within part are larger than RL's, with the median ratios, and on how many the
default's excess (its mean squared error minus RL's) is larger in the block part than in the within part.

    python benchmarks/velocity_scales.py --split heldout --size small --n 48 --indices 28,38 --json v.jsonl
    python benchmarks/velocity_scales.py --summary v.jsonl

One thread per job (``OMP_NUM_THREADS=1 XFUSION_NUM_THREADS=1``); small scenes take 5-15 s. RL's oracle runs at most
100 iterations (as ``shape_floor.py``), so on bright plain-RL skies, where the suite's oracle runs on to the
truth-free pick (up to 200), it can differ from the suite CSV's: compare ``--summary``'s reproduction line. Numbers:
``benchmarks/QUALITY_HISTORY.md`` (session 58).
"""
import argparse
import json
import sys

import numpy as np

import xfusion
from bench_cli import add_suite_options, suite_rows  # benchmarks/bench_cli.py
from shape_floor import Scene  # benchmarks/shape_floor.py
from xfusion import analysis, sources
from xfusion.grid import assign_roles

SCRIPT = "velocity_scales.py"


def decompose(err, use, f, footprint=None):
    """Parts of a velocity error map ``err`` (M, N; km/s) over the pixels ``use`` (bool, M, N), blocks of ``f x f``
    pixels from the origin (a last partial block counts as its own block): ``{"n", "sse", "offset", "block_sse",
    "within_sse", "footprint_sse"}`` (sums of squares over ``use``; ``block_sse + within_sse == sse``)."""
    err, use = np.asarray(err, dtype=np.float64), np.asarray(use, dtype=bool)
    if err.shape != use.shape or err.ndim != 2:
        raise ValueError(f"err and use must be 2-D maps of one shape; got {err.shape} and {use.shape}")
    f = int(f)
    if f < 1:
        raise ValueError(f"f must be a whole number of pixels >= 1; got {f}")
    e = np.where(use, err, 0.0)
    lab = (np.arange(e.shape[0])[:, None] // f) * (-(-e.shape[1] // f)) + np.arange(e.shape[1])[None, :] // f
    n_b = np.bincount(lab.ravel(), weights=use.ravel().astype(np.float64))
    s_b = np.bincount(lab.ravel(), weights=e.ravel())
    mean_b = np.divide(s_b, n_b, out=np.zeros_like(s_b), where=n_b > 0)[lab]
    n = int(use.sum())
    return {"n": n, "sse": float(np.sum(e[use] ** 2)), "offset": float(e[use].mean()) if n else float("nan"),
            "block_sse": float(np.sum(mean_b[use] ** 2)), "within_sse": float(np.sum((e - mean_b)[use] ** 2)),
            "footprint_sse": float(np.sum(e[use & footprint] ** 2)) if footprint is not None else float("nan")}


def run_scene(spec, size):
    sc = Scene(spec, size)
    if not sc.lm:
        return None
    res = xfusion.fuse(sc.x, sc.y, progress=False)
    it, rl = sc.rl_oracle_cube()
    f = int(round(sc.ratio))
    tv = sc.tmaps["velocity"].values
    region = analysis.brighter_region(sc.tmaps)  # what analysis.map_errors scores
    fp = sources.footprint_mask(sources.compact_peaks(assign_roles(sc.x, sc.y)[0]), region.shape)
    row = {"name": spec["name"], "size": size or "full", "factor": f, "choice": res.attrs["regularization"],
           "rl_iteration": it}
    for key, cube in (("default", res["flux"]), ("rl_best", rl)):
        est = analysis.line_map(cube, lsf_sigma=sc.lsf, **sc.lm)
        use = region & est["valid"].values
        row[key] = decompose(est["velocity"].values - tv, use, f, fp)
        row[key]["velocity_rms_kms"] = float(np.sqrt(row[key]["sse"] / max(row[key]["n"], 1)))
    return row


def _rms(part, key):
    return float(np.sqrt(part[key] / max(part["n"], 1)))


def summary(files):
    rows = [json.loads(line) for f in files for line in open(f) if line.strip()]
    for size in ("small", "full"):
        rs = [r for r in rows if r["size"] == size]
        if not rs:
            continue
        miss = [r for r in rs if r["default"]["velocity_rms_kms"] > r["rl_best"]["velocity_rms_kms"]]
        print(f"== {size}: {len(rs)} line scenes; the default's velocity RMS above RL's oracle on {len(miss)}")
        if not miss:
            continue
        for r in miss:
            d, o = r["default"], r["rl_best"]
            print(f"   {r['name'][:40]:40s} {r['choice']:11s} f={r['factor']} | total {_rms(d, 'sse'):6.1f} "
                  f"{_rms(o, 'sse'):6.1f} | block {_rms(d, 'block_sse'):6.1f} {_rms(o, 'block_sse'):6.1f} | within "
                  f"{_rms(d, 'within_sse'):6.1f} {_rms(o, 'within_sse'):6.1f} | offset {d['offset']:+6.1f} "
                  f"{o['offset']:+6.1f} | footprints {d['footprint_sse'] / max(d['sse'], 1e-300):.2f} (default / RL)")

        def ratio(key):
            return np.array([_rms(r["default"], key) / max(_rms(r["rl_best"], key), 1e-300) for r in miss])

        b, w = ratio("block_sse"), ratio("within_sse")

        def excess(key):  # the default's mean squared error minus RL's, in one part
            return np.array([r["default"][key] / r["default"]["n"] - r["rl_best"][key] / r["rl_best"]["n"] for r in miss])

        more = int(np.sum(excess("block_sse") > excess("within_sse")))
        no_offset = sum(r["default"]["sse"] / r["default"]["n"] - r["default"]["offset"] ** 2
                        <= r["rl_best"]["sse"] / r["rl_best"]["n"] - r["rl_best"]["offset"] ** 2 for r in miss)
        share = np.array([r["default"]["footprint_sse"] / max(r["default"]["sse"], 1e-300) for r in miss])
        print(f"   over the {len(miss)} misses: block part larger than RL's on {int(np.sum(b > 1))} (median ratio "
              f"{np.median(b):.2f}), within part larger on {int(np.sum(w > 1))} (median {np.median(w):.2f}); more of "
              f"the default's excess squared error at the pixel scale than within on {more}; with "
              f"each map's offset removed the default would pass on {no_offset}; footprint share of the default's "
              f"squared error median {np.median(share):.3f} (largest {share.max():.2f})")
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_suite_options(ap, split="heldout", size="small")
    args = ap.parse_args(argv)
    if args.summary:
        return summary(args.summary)
    for row in suite_rows(ap, args, SCRIPT, run_scene):
        d, o = row["default"], row["rl_best"]
        print(f"{row['index']} {row['name']}: velocity {d['velocity_rms_kms']:.1f} / {o['velocity_rms_kms']:.1f} km/s "
              f"(default / RL oracle at {row['rl_iteration']}); block {_rms(d, 'block_sse'):.1f} / "
              f"{_rms(o, 'block_sse'):.1f}, within {_rms(d, 'within_sse'):.1f} / {_rms(o, 'within_sse'):.1f}",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
