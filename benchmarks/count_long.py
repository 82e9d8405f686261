"""Session 72's probe of a rule for the zeroed prior's count (measured; not adopted): where thinning's count of the
zeroed 2D-1D prior (``xfusion.tuning.zero_transfer``) is ``LONG`` = 12 iterations or more, run that prior to fuse's
stop (``ZERO_MAX_ITER`` = 50) instead. ``--everywhere``: on every sky (the first form); by default only where
``fuse`` finds no compact sources (V2: with sources the field keeps the count while the sources run on, session 53).

For each held-out row ``i`` (``xfusion.scenes.suite("heldout", n=tuning.row_n(i))[i]`` at ``--size``): ``select``;
where the rule would change the delivered count, the default ``fuse`` with the rule (``xfusion.tuning.run_on``
replaced for the call by :func:`_run_on_long`) and without it, on the same data. One JSON line per row: the choice,
the zeroed count's record, the number of compact sources, and for changed rows each fit's NMSE (dB), total-flux bias
(%), iterations, wall time and the velocity and line-width RMS errors (km/s, brighter half) where the sky has lines.
Results: ``results/count_long_*_s72.jsonl``, ``benchmarks/QUALITY_HISTORY.md`` session 72.

    python benchmarks/count_long.py --size default --rows 1320-1367 --out results/count_long_full_1320_1367_s72.jsonl
"""
import argparse
import json
import time

import numpy as np

import xfusion
from xfusion import analysis, metrics, scenes, sources, tuning

from suite import _science  # benchmarks/suite.py
from tuning import row_n  # benchmarks/tuning.py


#: the probed threshold on thinning's zeroed count (set on the tuning seeds' hindsight records, session 72)
LONG = 12
_RUN_ON = tuning.run_on


def _long(choice, max_iter, peaks, everywhere):
    """True where the probed rule changes the delivered count of thinning's ``choice`` run to ``max_iter``."""
    return (isinstance(choice, dict) and choice.get("regularization", "wavelet2d1d") == "wavelet2d1d"
            and choice.get("null_space") == "zero" and choice.get("max_iter") == max_iter
            and LONG <= max_iter < tuning.ZERO_MAX_ITER and (everywhere or not peaks))


def _run_on_long(everywhere):
    """``xfusion.tuning.run_on`` with the probed rule: ``(ZERO_MAX_ITER, None)`` where :func:`_long`."""
    def run_on(choice, max_iter, peaks, share=0.0):
        if _long(choice, max_iter, peaks, everywhere):
            return tuning.ZERO_MAX_ITER, None
        return _RUN_ON(choice, max_iter, peaks, share)
    return run_on


def _fit(x, y, truth, rule, everywhere=False):
    """The default fuse with the probed rule (``rule``) or without: NMSE, flux bias, iterations, velocity/width RMS."""
    if rule:
        tuning.run_on = _run_on_long(everywhere)  # fuse imports run_on from xfusion.tuning at call time
    try:
        t0 = time.perf_counter()
        r = xfusion.fuse(x, y, progress=False)
        wall = time.perf_counter() - t0
    finally:
        tuning.run_on = _RUN_ON
    t = truth["flux"]
    out = {"nmse_db": round(float(metrics.nmse(t.values, r.flux.values)), 3),
           "flux_bias_pct": round(100.0 * (float(r.flux.values.sum(dtype=np.float64))
                                           / float(t.values.sum(dtype=np.float64)) - 1.0), 3),
           "max_iter": json.loads(r.attrs["parameters"])["max_iter"],
           "wall_s": round(wall, 1)}
    lm = scenes.line_map_args(truth)
    if lm:  # as benchmarks/suite.py measures them
        lsf = float(truth.attrs["lsf_sigma_kev"])
        e = _science(r.flux, analysis.line_map(t, lsf_sigma=lsf, **lm), lm, lsf)
        out.update({k: round(float(e[k]), 3) for k in ("velocity_rms_kms", "width_rms_kms")})
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", required=True, help="'small' or 'default' (full size)")
    p.add_argument("--rows", required=True, help="first-last held-out rows, inclusive (e.g. 1272-1319)")
    p.add_argument("--out", required=True, help="JSON-lines file to append to")
    p.add_argument("--everywhere", action="store_true", help="the rule on skies with compact sources too")
    a = p.parse_args(argv)
    lo, hi = (int(v) for v in a.rows.split("-"))
    for i in range(lo, hi + 1):
        spec = scenes.suite("heldout", n=row_n(i))[i]
        x, y, truth = scenes.from_spec(spec, size=a.size)
        t0 = time.perf_counter()
        cur = tuning.select(x, y)
        details = json.loads(cur.attrs.get("details", "{}"))
        row = {"i": i, "name": spec["name"], "size": a.size, "choice": tuning.choice(cur),
               "zero": details.get("zero"), "select_s": round(time.perf_counter() - t0, 1)}
        ch = row["choice"]
        peaks, share = sources.peaks_and_share(x)  # x: the sharp-spatial input of every suite scene
        row["peaks"] = len(peaks)
        if _long(ch, ch.get("max_iter"), peaks, a.everywhere):
            row["new"] = _fit(x, y, truth, True, a.everywhere)
            row["old"] = _fit(x, y, truth, False)
            assert row["new"]["max_iter"] == tuning.ZERO_MAX_ITER and row["old"]["max_iter"] == ch["max_iter"], row
            row["gain_db"] = round(row["new"]["nmse_db"] - row["old"]["nmse_db"], 3)
        with open(a.out, "a") as f:
            f.write(json.dumps(row) + "\n")
        print(i, spec["name"], "changed" if "gain_db" in row else "-", row.get("gain_db", ""), flush=True)


if __name__ == "__main__":
    main()
