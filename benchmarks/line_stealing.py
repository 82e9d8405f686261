"""Do bright compact sources take the line flux of the diffuse gas around them? (session 50; the fix, session 51)

Session 51 made ``source_lines="auto"`` the default (:mod:`xfusion.sources`): the fused cube is the default's, so the
numbers below describe it; the session-50 numbers in QUALITY_HISTORY are those of ``source_lines="none"``.
On point-source skies most of the default's squared error sat on a few pixels around the bright sources, and
mostly at line scales along energy (2-11 eV, the sharp-spectral LSF and a few times it), not in their images.
This script measures that truth against the fused cube, per scene:

* **compact sources**, found without the truth in the sharp-spatial image (``xfusion.sources.compact_sources``, rule
  in that module's notes); each source's footprint is the 3x3 fused pixels around its peak (the sky's point sources
  are split over 2x2 pixels);
* the **line flux** (``xfusion.analysis.line_map`` in the scene's line window, above its side-band continuum) of the
  fused cube against the truth's, summed inside the footprints and outside them (ratio 1: right);
* at each source's peak pixel, the line flux per unit total flux, truth against fused (a power-law source has
  almost none of its own: what the truth shows there is the gas in front of it);
* the share of the cube's squared error inside the footprints, and the share of that at line scales (the error
  minus its Gaussian smoothing along energy at 6 LSF sigmas);
* the control: the same line-flux ratios for plain RL stopped at the count the tuning chose for it (its "none"
  candidate), which has no prior to move flux.

    python benchmarks/line_stealing.py --size full --indices 3,8,13,18,23       # tuning seeds, point-source skies
    python benchmarks/line_stealing.py --size small --n 48 --indices 3,8,13,18,23,28,33,38,43 --json a.jsonl
    python benchmarks/line_stealing.py --summary a.jsonl b.jsonl        # the medians and counts of those runs

Each scene runs the default ``xfusion.fuse(x, y)`` (tuning included): 15-60 s at full size, 2-5 s small.
"""
import argparse
import json
import sys
import time

import numpy as np
from bench_cli import add_suite_options, parse_records, suite_rows
from scipy import ndimage as ndi

# the detection rule moved to the library in session 51, where the 2D-1D prior's line step uses it
from xfusion.sources import compact_sources, footprint_mask, psf_image

SCRIPT = "line_stealing.py"


def run_scene(spec, size):
    import xfusion
    from xfusion import analysis, metrics, scenes
    from xfusion.grid import assign_roles, fusion_grid

    x, y, truth = scenes.from_spec(spec, size=size)
    lm = scenes.line_map_args(truth)
    if not lm:
        print(f"{spec['name']}: no lines in this scene, skipped", flush=True)
        return None
    sharp, _, _ = assign_roles(x, y)
    t0 = time.perf_counter()
    res = xfusion.fuse(x, y, progress=False)
    t_fuse = time.perf_counter() - t0
    T = truth["flux"]
    Z = np.asarray(res["flux"].values, dtype=np.float64)
    T64 = np.asarray(T.values, dtype=np.float64)
    peaks = compact_sources(sharp["counts"].sum("energy").values, psf_image(sharp))
    mask = footprint_mask(peaks, Z.shape[:2])
    lsf = float(truth.attrs["lsf_sigma_kev"])
    lt = np.asarray(analysis.line_map(T, lsf_sigma=lsf, **lm)["flux"].values, dtype=np.float64)
    lf = np.asarray(analysis.line_map(res["flux"], lsf_sigma=lsf, **lm)["flux"].values, dtype=np.float64)
    tuning = json.loads(res.attrs["parameters"]).get("auto_tuning", {})
    rl_iter = next((c["max_iter"] for c in tuning.get("candidates", []) if c.get("regularization") == "none"), None)
    rl = {}
    if rl_iter is not None:
        r = xfusion.fuse(x, y, regularization="none", max_iter=int(rl_iter), tol=None, progress=False)
        lr = np.asarray(analysis.line_map(r["flux"], lsf_sigma=lsf, **lm)["flux"].values, dtype=np.float64)
        rl = {"rl_iterations": int(rl_iter), "rl_line_flux_ratio_in": float(lr[mask].sum() / lt[mask].sum())
              if mask.any() else float("nan"), "rl_line_flux_ratio_out": float(lr[~mask].sum() / lt[~mask].sum())}
    tot = T64.sum(axis=2)
    err = np.square(Z - T64)
    step = float(np.median(np.diff(T.energy.values)))
    smooth_err = ndi.gaussian_filter1d(Z - T64, 6 * lsf / step, axis=2, mode="nearest")
    fine = err - np.square(smooth_err)  # the part of each voxel's error that the smoothing removes (may be < 0)
    ratio = float(fusion_grid(x, y).attrs["spatial_factor"])

    def share(a, m):
        return float(a[m].sum() / a.sum()) if a.sum() > 0 else float("nan")

    return {"name": spec["name"], "size": truth.attrs["size"], "suite_size": "small" if size == "small" else "full",
            "t_fuse_s": round(t_fuse, 1),
            "nmse_db": round(metrics.report(res, T, ratio=ratio)["nmse_db"], 3),
            "sources": len(peaks), "footprint_pixels": int(mask.sum()),
            "flux_share_in_footprints": share(tot, mask),
            "line_flux_ratio_in": float(lf[mask].sum() / lt[mask].sum()) if mask.any() else float("nan"),
            "line_flux_ratio_out": float(lf[~mask].sum() / lt[~mask].sum()),
            "error_share_in_footprints": share(err.sum(axis=2), mask),
            "line_scale_share_of_footprint_error": float(fine[mask].sum() / err[mask].sum()) if mask.any()
            else float("nan"),
            "peaks": [{"pixel": p, "line_per_flux_truth": float(lt[p] / tot[p]), "line_per_flux_fused":
                       float(lf[p] / tot[p])} for p in peaks], **rl}


def summary(paths):
    """Print, per suite size (small, full) and for all, the scenes with sources, the median (range) of the footprint line-flux ratio of the default
    and of plain RL, on how many the default's is the larger, and the median share of the squared error in the
    footprints. Returns ``{size: {...}}``."""
    rows = {}
    for path in paths:
        for rec in parse_records(open(path).read()) or []:
            if rec.get("sources"):
                size = rec.get("suite_size", "small" if rec["size"] == "24x24x600" else "full")
                rows[(rec["name"], size)] = rec  # a scene run twice: its last record
    out = {}
    for size in sorted({k[1] for k in rows}, reverse=True) + ["all"]:
        rs = [r for k, r in rows.items() if size in (k[1], "all")]
        d = np.array([r["line_flux_ratio_in"] for r in rs])
        rl = np.array([r.get("rl_line_flux_ratio_in", np.nan) for r in rs])
        err = np.array([r["error_share_in_footprints"] for r in rs])
        both = np.isfinite(rl)
        out[size] = {"scenes": len(rs), "default_median": float(np.median(d)), "default_range": (d.min(), d.max()),
                     "rl_median": float(np.median(rl[both])) if both.any() else float("nan"),
                     "default_above_rl": int(np.sum(d[both] > rl[both])), "with_rl": int(both.sum()),
                     "error_share_median": float(np.median(err))}
        o = out[size]
        print(f"{size}: {o['scenes']} scenes with compact sources; footprint line flux / truth: default median "
              f"{o['default_median']:.3f} ({d.min():.2f}-{d.max():.2f}), plain RL median {o['rl_median']:.3f}; "
              f"default above RL on {o['default_above_rl']}/{o['with_rl']}; median share of the squared error in the "
              f"footprints {100 * o['error_share_median']:.0f} %")
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_suite_options(ap, split="tune", size="full")
    args = ap.parse_args(argv)
    if args.summary:
        summary(args.summary)
        return 0
    for row in suite_rows(ap, args, SCRIPT, run_scene):
        pk = row["peaks"]
        more = sum(p["line_per_flux_fused"] > 1.5 * p["line_per_flux_truth"] for p in pk)
        print(f"{row['index']} {row['name']}: {row['nmse_db']:.2f} dB; {row['sources']} sources "
              f"({100 * row['flux_share_in_footprints']:.0f} % of the flux in their footprints); line flux "
              f"fused/truth {row['line_flux_ratio_in']:.3f} in the footprints, {row['line_flux_ratio_out']:.3f} "
              f"outside; {100 * row['error_share_in_footprints']:.0f} % of the squared error in the footprints, "
              f"{100 * row['line_scale_share_of_footprint_error']:.0f} % of that at line scales; peaks with 1.5x "
              f"the truth's line per flux or more: {more}/{len(pk)}; plain RL at {row.get('rl_iterations', '-')} "
              f"iterations: {row.get('rl_line_flux_ratio_in', float('nan')):.3f} in, "
              f"{row.get('rl_line_flux_ratio_out', float('nan')):.3f} out ({row['t_fuse_s']:.0f} s)", flush=True)
        print("   peaks (truth, fused line per flux): " + json.dumps(
            [(round(p["line_per_flux_truth"], 4), round(p["line_per_flux_fused"], 4)) for p in pk]), flush=True)


if __name__ == "__main__":
    sys.exit(main())
