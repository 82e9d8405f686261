"""Session 60: the 2D-1D bands coarsest in space and fine in energy thresholded harder (``spectral_band_factor``).

With the default ``n_scales_2d = 1``, ``n_scales_1d = 2`` those are bands (1, 0) and (1, 1): line structure on the
scales the sharp-spectral instrument resolves. ``fuse(x, y, spectral_band_factor=f)`` keeps ``regularization="auto"``
(RL still competes) and builds every wavelet candidate of the tuning, and the final fit, with the factor. Per suite
scene this runs the default with the factor 1 (every band alike) and with each factor asked for, and writes one JSON
line per scene (resumable): NMSE (dB), total-flux bias (%), velocity- and width-map RMS errors (km/s, brighter half,
``suite.py``'s measure, scenes with lines), the settings chosen, the line richness of the summed sharp-spectral counts
(``xfusion.tuning.line_richness``), then a summary per factor.

``--continuum-only``: fit only the scenes whose summed sharp-spectral counts read as a continuum (line richness below
``--max-richness``: by default ``xfusion.tuning.SPECTRAL_BAND_RICHNESS``, the default's own rule; session 60's first
continuum records used 100, the family prior's ``xfusion.tuning.LINE_RICHNESS``); the others are recorded as not
touched, before any fit.

    python benchmarks/spectral_bands.py --split tune --n 48 --size small --indices 0-47 --factors 2,3 --out t.jsonl
    python benchmarks/spectral_bands.py --split heldout --n row --indices 876-935 --factors 8 --continuum-only \\
        --out fresh.jsonl
    python benchmarks/spectral_bands.py --summary benchmarks/results/spectral_band_fresh_full.jsonl
"""
import argparse

import numpy as np

import xfusion
from bench_cli import line_map_changes, probe_options, run_probe  # benchmarks/bench_cli.py
from delivery_probes import _scorer  # benchmarks/delivery_probes.py
from xfusion import scenes, tuning
from xfusion.grid import assign_roles


def measure(spec, size, factors, continuum_only, max_richness=None):
    x, y, truth = scenes.from_spec(spec, size=None if size == "default" else "small")
    rich = float(tuning.line_richness(assign_roles(x, y)[1]["counts"]))
    rec = {"scene": spec["name"], "line_richness": rich, "result": None}
    if continuum_only and rich >= (tuning.SPECTRAL_BAND_RICHNESS if max_richness is None else max_richness):
        return rec
    score = _scorer(truth)
    rec["result"], rec["settings"] = {}, {}
    for f in (1.0,) + tuple(factors):
        r = xfusion.fuse(x, y, progress=False, spectral_band_factor=f)
        s = xfusion.settings_of(r)
        rec["result"][f"{f:g}"] = score(r.flux)
        rec["settings"][f"{f:g}"] = {k: s.get(k) for k in ("regularization", "k", "null_space", "max_iter")}
    return rec


def summary(recs):
    """Printed lines: per factor, over the fitted scenes, the mean NMSE change against factor 1, the worst, the rows
    below -0.5 dB, the median relative velocity- and width-RMS changes (scenes with lines) and the largest |flux
    bias|."""
    recs = [r for r in recs if r.get("result")]
    if not recs:
        return ["no fitted scene"]
    out = []
    for f in [k for k in recs[0]["result"] if k != "1"]:
        dn = np.array([r["result"][f]["nmse"] - r["result"]["1"]["nmse"] for r in recs])
        lines = [r for r in recs if "v" in r["result"]["1"]]
        dv = np.array([r["result"][f]["v"] / r["result"]["1"]["v"] - 1 for r in lines])
        dw = np.array([r["result"][f]["w"] / r["result"]["1"]["w"] - 1 for r in lines])
        flux = max(abs(r["result"][f]["flux"]) for r in recs)
        out.append(f"factor {f}: {len(dn)} scenes, mean NMSE change {dn.mean():+.3f} dB (worst {dn.min():+.3f}, "
                   f"{int((dn < -0.5).sum())} below -0.5), largest |flux bias| {flux:.3f} %" + line_map_changes(dv, dw))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    probe_options(ap, "comma-separated factors besides 1")
    ap.add_argument("--continuum-only", action="store_true")
    ap.add_argument("--max-richness", type=float, default=None,
                    help="with --continuum-only: the line richness below which a scene is fitted (default "
                    "xfusion.tuning.SPECTRAL_BAND_RICHNESS, the default's rule)")
    a = ap.parse_args(argv)
    run_probe(ap, a, "spectral_bands.py",
              lambda spec, factors: measure(spec, a.size, factors, a.continuum_only, a.max_richness), summary)


if __name__ == "__main__":
    main()
