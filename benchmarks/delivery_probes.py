"""Sessions 54 and 58: ways of delivering the default's cube differently, measured on suite scenes (none adopted).

Each probe takes the truth-free choice of ``regularization="auto"`` (``xfusion.tuning.select``) and its delivery
(the shape prior and the sources' run on, ``tuning.py``'s ``_delivery``), fits on ALL counts and compares with the
delivered cube: NMSE (dB), velocity- and line-width-map RMS errors (km/s, brighter half, scenes with lines), and the
total-flux bias (%). One JSON line per scene (``--out``, resumable), then a summary.

* ``average``: the delivered cube averaged with the cube of every other candidate the selection visited (each
  fitted and delivered as ``tuning.py hindsight`` fits it); the summary reads the average with the runner-up (least
  held-out deviance among the others) and with the best candidate of the other family. Model averaging: can it
  beat the single choice when the choice is uncertain?
* ``warm``: only where the choice has an iteration count (``max_iter``): the final fit started from the tuning's
  half-data fit (the chosen settings on thinning's part A, stopped at the half-data iteration the count came from),
  then ``m`` more iterations on all counts, ``m`` = the count minus the half-data iteration ("rest"), half the
  half-data iteration ("half") or all of it ("same"). A cheaper final fit (issue 13: tuning plus the final fit
  within 3x one fit)?
* ``count``: only where the choice is the zeroed prior stopped before 50 iterations and the sharp-spectral counts
  hold lines: the same settings run to 2x the count and to 50. Does a line sky want the zeroed prior run longer?
* ``runon`` (session 58): only where the choice is the thresholded prior with a count ``N`` and the sharp-spatial
  counts show compact sources (``xfusion.sources.compact_peaks``): the field stopped at ``round(f N)``, f = 0.5 and
  0.75, while the sources' 3x3 footprints run on to ``N`` (``source_iter=[N, peaks]``, session 53's delivery; each
  5x5 keeps its total). Do the gas's velocity maps want a shorter fit than the sources' peaks? The summary also
  splits the scenes by kind. Session 59: ``--fractions`` picks the fractions, ``--min-share`` skips (before any fit)
  the scenes whose compact sources hold less of the sharp-spatial counts (``xfusion.sources.excess_share``); each
  record keeps that share and how many sources are line-free; ``--n row`` takes each held-out row from its own suite
  size. The "count" fit is the default's delivery with the whole count and nothing run on (since session 59 the
  default itself runs on where the share is high enough).

    python benchmarks/delivery_probes.py average --split tune --n 48 --size small --indices 0-47 --out avg.jsonl
    python benchmarks/delivery_probes.py warm --split tune --n 48 --size small --indices 9-16 --out warm.jsonl
    python benchmarks/delivery_probes.py count --split tune --n 144 --indices 0-39 --out count.jsonl
    python benchmarks/delivery_probes.py warm --n 48 --indices 0-47 --family threshold --out warm_full.jsonl
    python benchmarks/delivery_probes.py runon --split tune --n 48 --size small --indices 0-47 --out runon.jsonl
    python benchmarks/delivery_probes.py runon --split heldout --n row --size small --indices 552-599 \
        --fractions 0.75 --min-share 0.025 --out runon_fresh.jsonl
"""
import argparse
import json
import time

import numpy as np

import xfusion
from bench_cli import done_records, pending_rows  # benchmarks/bench_cli.py
from suite import sources_and_share  # benchmarks/suite.py
from xfusion import analysis, metrics, scenes, tuning


def _scorer(truth):
    """A function of a flux DataArray: NMSE (dB), total-flux bias (%), and on scenes with lines the velocity- and
    width-map RMS errors (km/s, brighter half; ``suite.py``'s own measure)."""
    from suite import _science  # benchmarks/suite.py

    t = truth["flux"]
    lm = scenes.line_map_args(truth)
    lsf = float(truth.attrs["lsf_sigma_kev"])
    tm = analysis.line_map(t, lsf_sigma=lsf, **lm) if lm else None
    total = float(t.values.sum(dtype=np.float64))

    def score(flux):
        r = {"nmse": float(metrics.nmse(t.values, flux.values)),
             "flux": 100.0 * (float(flux.values.sum(dtype=np.float64)) / total - 1.0)}
        if tm is not None:
            e = _science(flux, tm, lm, lsf)
            r["v"], r["w"] = float(e["velocity_rms_kms"]), float(e["width_rms_kms"])
        return r
    return score


def family(setting):
    """"rl" (plain RL), "zero" or "threshold" (the 2D-1D prior's null space) for a hindsight candidate's setting."""
    return "rl" if setting.get("regularization") == "none" else setting.get("null_space", "zero")


def _same(a, b):
    return {"regularization": "wavelet2d1d", **a} == {"regularization": "wavelet2d1d", **b}


def probe_average(x, y, score, cur, ch, extra):
    cubes, cands = [], []
    for st, dev in zip(cur["setting"].values, cur["mean_deviance"].values):
        kw = dict(json.loads(str(st)))
        kw.setdefault("regularization", "wavelet2d1d")
        r = xfusion.fuse(x, y, progress=False, **{**kw, **extra(kw)})
        cubes.append(r.flux)
        cands.append({"setting": json.loads(str(st)), "dev": float(dev), **score(r.flux)})
    hit = [j for j, c in enumerate(cands) if _same(c["setting"], ch)]
    chosen = cubes[hit[0]] if hit else xfusion.fuse(x, y, progress=False, **{**ch, **extra(ch)}).flux
    others = [j for j, c in enumerate(cands) if not _same(c["setting"], ch) and np.isfinite(c["dev"])]
    runner = min(others, key=lambda j: cands[j]["dev"]) if others else None
    other_fam = [j for j in others if family(cands[j]["setting"]) != family(ch)]
    fam = min(other_fam, key=lambda j: cands[j]["dev"]) if other_fam else None
    mean = {j: score(0.5 * (chosen + cubes[j])) for j in (runner, fam) if j is not None}
    return {"chosen": score(chosen), "candidates": cands,
            "runner": None if runner is None else {"j": runner, **mean[runner]},
            "other_family": None if fam is None else {"j": fam, **mean[fam]}}


def probe_warm(x, y, score, cur, ch, extra, half):
    if "max_iter" not in ch or not half.get("split"):
        return None
    n_full, n_half, sp = int(ch["max_iter"]), int(half["iteration"]), half["split"]
    kw = {k: v for k, v in ch.items() if k != "max_iter"}
    t0 = time.perf_counter()
    cold = xfusion.fuse(x, y, progress=False, **{**ch, **extra(ch)})
    out = {"n_half": n_half, "cold": {**score(cold.flux), "m": n_full, "s": time.perf_counter() - t0}}
    start = tuning._half_fuse(sp.xa, sp.ya, progress=False, max_iter=n_half, shape_prior=None, source_iter="none",
                              **kw)
    for label, m in (("rest", max(n_full - n_half, 5)), ("half", max(round(0.5 * n_half), 5)), ("same", n_half)):
        t0 = time.perf_counter()
        w = xfusion.fuse(x, y, progress=False, init=start, **{**kw, **extra(ch), "max_iter": m})
        out[label] = {**score(w.flux), "m": m, "s": time.perf_counter() - t0}
    return out


def probe_count(x, y, score, cur, ch, extra):
    fp = json.loads(cur.attrs["details"]).get("family_prior") or {}
    if not (ch.get("null_space") == "zero" and ch.get("max_iter", 50) < 50 and fp.get("lines")):
        return None
    from suite import compact_peaks

    n = int(ch["max_iter"])
    out = {"peaks": len(compact_peaks(x, y))}
    for label, m in (("count", n), ("x2", min(2 * n, 50)), ("cap", 50)):
        kw = dict(ch, max_iter=m)
        out[label] = {**score(xfusion.fuse(x, y, progress=False, **{**kw, **extra(kw)}).flux), "m": m}
    return out


def probe_runon(x, y, score, cur, ch, extra, fractions=(0.5, 0.75)):
    if not (ch.get("null_space") == "threshold" and "max_iter" in ch):
        return None
    peaks, share = sources_and_share(x, y)
    if not peaks:
        return None
    n = int(ch["max_iter"])
    delivery = {**ch, **extra(ch), "max_iter": n, "source_iter": "none"}  # the whole count, nothing runs on
    from xfusion import sources
    from xfusion.grid import assign_roles, fusion_grid

    sharp = sources._unmasked(assign_roles(x, y)[0])
    line_free = sum(f["line_free"] for f in sources.line_free(sharp, fusion_grid(x, y), [tuple(p) for p in peaks]))
    out = {"peaks": len(peaks), "share": share, "line_free": int(line_free),
           "count": {**score(xfusion.fuse(x, y, progress=False, **delivery).flux), "m": n}}
    for f in fractions:
        label = f"f{f:g}"
        m = max(int(round(f * n)), 1)
        if m < n:
            kw = {**delivery, "max_iter": m, "source_iter": [n, peaks]}
            out[label] = {**score(xfusion.fuse(x, y, progress=False, **kw).flux), "m": m}
    return out


def _rel(a, b, key):
    return a[key] / b[key] - 1.0 if key in a and key in b and b[key] > 0 else None


def summary(probe, recs):
    """Printed lines: per variant the mean NMSE change against the delivered cube, the worst, and the median relative
    velocity- and width-RMS changes (scenes with lines)."""
    pairs = {}
    for r in recs:
        res = r.get("result")
        if not res:
            continue
        base = res["chosen"] if probe == "average" else res["cold"] if probe == "warm" else res["count"]
        for label in {"average": ("runner", "other_family"), "warm": ("rest", "half", "same"),
                      "count": ("x2", "cap"), "runon": sorted(k for k in res if k.startswith("f"))}[probe]:
            v = res.get(label)
            if v:
                entry = (v["nmse"] - base["nmse"], _rel(v, base, "v"), _rel(v, base, "w"))
                pairs.setdefault(label, []).append(entry)
                if probe == "runon":  # by kind too (the scene name's first part)
                    pairs.setdefault(f"{label} {r['scene'].split('/')[0]}", []).append(entry)
    lines = []
    for label, p in pairs.items():
        d = np.array([a for a, _, _ in p])
        v = [b for _, b, _ in p if b is not None]
        w = [c for _, _, c in p if c is not None]
        lines.append(f"{probe} {label}: {len(d)} scenes, NMSE change mean {d.mean():+.3f} dB (worst {d.min():+.2f}, "
                     f"best {d.max():+.2f}); velocity RMS median "
                     + (f"{100 * np.median(v):+.1f} % (lower on {sum(x < 0 for x in v)}/{len(v)})" if v else "-")
                     + ", width RMS median " + (f"{100 * np.median(w):+.1f} %" if w else "-"))
    return lines


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("probe", choices=("average", "warm", "count", "runon"))
    ap.add_argument("--split", default="tune", help="suite split (tune: the seeds rules may be fitted on)")
    ap.add_argument("--n", default="48", help="suite size (xfusion.scenes.suite(split, n)); 'row': each held-out "
                    "row's own (tuning.py row_n, the README table's and the fresh sets' rule)")
    ap.add_argument("--size", default="default", choices=("default", "small"))
    ap.add_argument("--indices", required=True, help="e.g. 0-23 or 0,4,9")
    ap.add_argument("--out", required=True, help="JSON lines, one per scene (resumable)")
    ap.add_argument("--family", choices=("zero", "threshold", "rl"),
                    help="probe only scenes whose choice is this family (the others are recorded as not applicable)")
    ap.add_argument("--fractions", default="0.5,0.75", help="runon: the field's fractions of the count")
    ap.add_argument("--min-share", type=float, default=0.0,
                    help="runon: only scenes whose compact sources hold at least this share of the sharp-spatial "
                    "counts (xfusion.sources.excess_share); the others are recorded as not applicable before any fit")
    a = ap.parse_args(argv)
    from tuning import _delivery  # benchmarks/tuning.py: the default's delivery of a choice

    done = done_records(a.out)
    fractions = tuple(float(f) for f in a.fractions.split(","))
    for i, spec in pending_rows(ap, a, done):
        t0 = time.perf_counter()
        x, y, truth = scenes.from_spec(spec, size=None if a.size == "default" else "small")
        if a.probe == "runon" and a.min_share > 0:
            peaks, share = sources_and_share(x, y)
            if not peaks or share < a.min_share:
                rec = {"index": i, "scene": spec["name"], "choice": None, "result": None, "share": share,
                       "seconds": time.perf_counter() - t0}
                done[i] = rec
                with open(a.out, "a") as f:
                    f.write(json.dumps(rec) + "\n")
                print(f"{spec['name']}: not applicable (share {share:.4f})", flush=True)
                continue
        half = {}
        cur = tuning.select(x, y, complete=(a.probe == "average"), half_fit=half)
        ch = tuning.choice(cur)
        extra = _delivery(x, y, ch, half)
        score = _scorer(truth)
        if a.family and family(ch) != a.family:
            res = None
        elif a.probe == "average":
            res = probe_average(x, y, score, cur, ch, extra)
        elif a.probe == "warm":
            res = probe_warm(x, y, score, cur, ch, extra, half)
        elif a.probe == "count":
            res = probe_count(x, y, score, cur, ch, extra)
        else:
            res = probe_runon(x, y, score, cur, ch, extra, fractions)
        rec = {"index": i, "scene": spec["name"], "choice": ch, "result": res,
               "seconds": time.perf_counter() - t0}
        done[i] = rec
        with open(a.out, "a") as f:
            f.write(json.dumps(rec) + "\n")
        print(f"{spec['name']}: {'measured' if res else 'not applicable'} "
              f"({rec['seconds']:.0f} s)", flush=True)
    for line in summary(a.probe, list(done.values())):
        print(line)


if __name__ == "__main__":
    main()
