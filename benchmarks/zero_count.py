"""Session 61: the zeroed 2D-1D prior's count on all counts, ``n_full = F x n_half``, probed per suite scene.

When thinning chooses the ladder's candidate with its null space zeroed, the default stops it on all counts at
``xfusion.tuning.zero_transfer(n_half)`` = ``round(ZERO_FACTOR n_half)`` (``ZERO_FACTOR`` = 1.25, fitted in session 8
on 24 small tuning seeds), clipped to [4, ``ZERO_MAX_ITER`` = 50]; ``n_half`` is the best iterate of the candidate's
held-out deviance on half the counts. Session 60 made the default threshold the spectral bands 8 times harder on
continuum skies, which changes how fast that prior sharpens, after the factor was fitted.

Per scene this runs the default ``fuse(x, y)`` once, reading ``n_half`` from the tuning's own record (the function
``tuning._zero_iterations`` is wrapped to keep its output: instrumentation only, the same code runs), then, where the
choice is the zeroed prior with thinning's count, refits the default's own settings (``xfusion.settings_of``) with
``max_iter = clip(round(F n_half), 4, 50)`` for each factor F asked for. The default's count (``default_count``:
``ZERO_FACTOR``'s, or 50 where session 61's bottom-rung rule, ``tuning.bottom_rung_count``, applied) must be among
them, and its refit must give the default's cube to the bit (``same_cube``). The shape prior, the spectral-band
factor and every other setting are the default's: only the count moves, as a changed factor would move it (the shape
prior is scored on the half-data iterate, which the factor does not change). One JSON line per scene (resumable): NMSE (dB), total-flux bias (%),
velocity- and width-map RMS errors (km/s, brighter half, scenes with lines) and the four metrics (aSAM, acSSIM,
ERGAS besides NMSE) per factor, the two naive baselines' metrics, the line richness, n_half.

    python benchmarks/zero_count.py --split tune --n 96 --size small --indices 0-95 --factors 1.5,2,3 --out t.jsonl
    python benchmarks/zero_count.py --split tune --n 96 --indices 0-95 --continuum-only --factors 2 --out f.jsonl
    python benchmarks/zero_count.py --summary t.jsonl [--continuum-only]
"""
import argparse

import numpy as np

import xfusion
from bench_cli import line_map_changes, probe_options, run_probe  # benchmarks/bench_cli.py
from delivery_probes import _scorer  # benchmarks/delivery_probes.py
from xfusion import baselines, metrics, scenes, tuning
from xfusion.grid import assign_roles

def _default_with_record(x, y):
    """The default ``fuse(x, y)`` and the output of the tuning's ``_zero_iterations`` (None if it did not run)."""
    seen = []
    orig = tuning._zero_iterations

    def wrapped(*a, **kw):
        out = orig(*a, **kw)
        seen.append(dict(out))
        return out

    tuning._zero_iterations = wrapped
    try:
        r = xfusion.fuse(x, y, progress=False)
    finally:
        tuning._zero_iterations = orig
    return r, (seen[-1] if seen else None)


def measure(spec, size, factors, continuum_only):
    x, y, truth = scenes.from_spec(spec, size=None if size == "default" else "small")
    rich = float(tuning.line_richness(assign_roles(x, y)[1]["counts"]))
    rec = {"scene": spec["name"], "line_richness": rich, "continuum": rich < tuning.SPECTRAL_BAND_RICHNESS,
           "result": None}
    if continuum_only and not rec["continuum"]:
        return rec
    r0, zero = _default_with_record(x, y)
    s0 = xfusion.settings_of(r0)
    rec["settings"] = {k: s0.get(k) for k in ("regularization", "k", "null_space", "max_iter",
                                              "spectral_band_factor", "source_iter")}
    if (zero is None or s0.get("regularization") != "wavelet2d1d" or s0.get("null_space") != "zero"
            or s0.get("max_iter") not in (zero["max_iter"], tuning.ZERO_MAX_ITER) or zero.get("capped")):
        rec["zero"] = zero
        return rec  # not the zeroed prior at thinning's count (or its count already the cap)
    n_half = int(zero["half_data_iteration"])
    rec["n_half"] = n_half
    science = _scorer(truth)
    ratio = float(r0.attrs["spatial_factor"])

    def score(flux):  # the issue's four metrics, the flux bias and the line maps' errors
        return {**metrics.report(flux, truth["flux"], ratio=ratio), **science(flux)}

    rec["baselines"] = {key: metrics.report(fn(x, y), truth["flux"], ratio=ratio)
                        for key, fn in (("x_up", baselines.upsample_spatial), ("y_up", baselines.upsample_spectral))}
    rec["result"], rec["counts"] = {}, {}
    fits = {}
    for f in (tuning.ZERO_FACTOR,) + tuple(factors):
        n = tuning.zero_transfer(n_half, factor=f)
        if n not in fits:
            kw = dict(s0, max_iter=n)
            # the default's delivery: sources run on to the cap only while the field stops before it (tuning.run_on)
            if kw.get("source_iter") and n >= tuning.ZERO_MAX_ITER:
                kw["source_iter"] = None
            r = xfusion.fuse(x, y, progress=False, **kw)
            fits[n] = (score(r.flux), r)
        rec["result"][f"{f:g}"] = fits[n][0]
        rec["counts"][f"{f:g}"] = n
    # the default's count (ZERO_FACTOR's, or fuse's stop where session 61's bottom-rung rule applied), refitted from
    # its settings: its cube again
    n0 = int(s0["max_iter"])
    rec["default_count"] = n0
    rec["same_cube"] = bool(n0 in fits and np.array_equal(fits[n0][1].flux.values, r0.flux.values))
    return rec


def _beats(m, base):
    """All four metrics better than both naive baselines' (``suite.py``'s test)."""
    return all(m["nmse_db"] > b["nmse_db"] and m["asam_rad"] < b["asam_rad"] and m["acssim"] < b["acssim"]
               and m["ergas"] < b["ergas"] for b in base.values())


def summary(recs, continuum_only=False):
    """Printed lines: per factor, over the scenes measured (continuum ones only with ``continuum_only``), the mean
    NMSE change against ZERO_FACTOR, the worst, the rows below -0.5 dB, median relative velocity and width changes
    (scenes with lines), the largest |flux bias|."""
    recs = [r for r in recs if r.get("result") and (r["continuum"] or not continuum_only)]
    if not recs:
        return ["no measured scene"]
    ref = f"{tuning.ZERO_FACTOR:g}"
    out = [f"{len(recs)} scenes with the zeroed prior at thinning's count (reference factor {ref}); mean NMSE at "
           f"{ref}: {np.mean([r['result'][ref]['nmse'] for r in recs]):.3f} dB"]
    for f in [k for k in recs[0]["result"] if k != ref]:
        dn = np.array([r["result"][f]["nmse"] - r["result"][ref]["nmse"] for r in recs])
        lines = [r for r in recs if "v" in r["result"][ref] and np.isfinite(r["result"][ref]["v"])]
        dv = np.array([r["result"][f]["v"] / r["result"][ref]["v"] - 1 for r in lines])
        dw = np.array([r["result"][f]["w"] / r["result"][ref]["w"] - 1 for r in lines])
        flux = max(abs(r["result"][f]["flux"]) for r in recs)
        beat = [sum(_beats(r["result"][g], r["baselines"]) for r in recs if "baselines" in r) for g in (ref, f)]
        out.append(f"factor {f}: mean NMSE change {dn.mean():+.3f} dB (median {np.median(dn):+.3f}, worst "
                   f"{dn.min():+.3f}, best {dn.max():+.3f}; {int((dn < -0.5).sum())} below -0.5, {int((dn > 0).sum())} "
                   f"better), largest |flux bias| {flux:.3f} %; beat both baselines on all four metrics {beat[1]} (at "
                   f"{ref}: {beat[0]})" + line_map_changes(dv, dw))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    probe_options(ap, "comma-separated factors besides ZERO_FACTOR")
    ap.add_argument("--continuum-only", action="store_true",
                    help="fit only skies whose summed sharp-spectral counts read as a continuum (line richness below "
                         "xfusion.tuning.SPECTRAL_BAND_RICHNESS); with --summary: summarize only those")
    a = ap.parse_args(argv)
    run_probe(ap, a, "zero_count.py", lambda spec, factors: measure(spec, a.size, factors, a.continuum_only),
              lambda recs: summary(recs, a.continuum_only))


if __name__ == "__main__":
    main()
