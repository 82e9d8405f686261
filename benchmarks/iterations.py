"""Iteration counts of the early-stopped candidates of ``regularization="auto"`` (issue 13, session 10): data and
offline replays of the half-to-full-counts transfer rules (prints what it measured).

    python benchmarks/iterations.py curves 0,1,2 tune 48 out.jsonl [family_data.jsonl]   # half-data curves
    python benchmarks/iterations.py replay family_data.jsonl curves.jsonl 0 24 [1,1.25,1.5]   # rules offline
    python benchmarks/iterations.py fullcheck family_data_full.jsonl 0,1,2   # counts now vs recorded, full size

``curves``: per suite scene (size small), on the thinning split ``select`` uses (seed 0, fraction 0.5), plain RL
from the flat start and the thresholded wavelet candidate (the k ladder's best k, null space thresholded) from the
tuning warm start (3 EM iterations), and plain RL fitted on a quarter of the counts (fraction 0.25, the other three
quarters held out): at every iterate and for every instrument, three proper scores of the held-out part (the
Poisson deviance, the squared error and the Tweedie deviance of power 1/2, which weighs residuals between the
two). Runs stop once every criterion's minimum is ``max(20, i_min)`` iterations behind. One JSON line per scene.
The k of the thresholded candidate is read from a ``benchmarks/tuning.py family_data`` row of the same scene when
given (the same selection), else from ``xfusion.tuning.select``.

``replay``: on ``benchmarks/tuning.py family_data`` rows (every candidate's full-data NMSE at every iteration, the
half-data held-out deviance curves of the split ``select`` uses) and ``curves`` rows of the same scenes, the NMSE
that "auto" (family choice and prior as shipped: the transfer does not change it) delivers with the session-10
iteration transfer (xfusion.tuning.sq_transfer, factor RL_SQ_FACTOR or the given ones) against the session-9 rules
(rl_transfer, threshold_transfer), and each family's loss against its own best full-data iteration. Data of session
10: /work/notes/s10_iters_curves.jsonl with s9_quality_family_data.jsonl (suite("tune", n=48), all 48).
"""
from __future__ import annotations

import json
import sys
import time

import numpy as np

from xfusion import scenes as sc
from xfusion import tuning


def _by_index(path):
    """JSON-lines rows of ``path`` by their suite index (a later row replaces an earlier one)."""
    with open(path) as fh:
        return {r["index"]: r for r in map(json.loads, fh)}


def _tweedie(d, m, p=0.5):
    """Tweedie deviance of power ``p`` (0 < p < 1; p -> 1 Poisson, p = 0 squared error) summed over voxels."""
    d = np.asarray(d, dtype=np.float64)
    m = np.maximum(np.asarray(m, dtype=np.float64), 1e-12)
    return float(2.0 * np.sum(d ** (2 - p) / ((1 - p) * (2 - p)) - d * m ** (1 - p) / (1 - p) + m ** (2 - p) / (2 - p)))


class _MultiScoredEM(tuning._ScoredEM):
    """Scored EM that also records the squared error and the Tweedie(1/2) deviance of each held-out part."""

    def _eval(self, z):
        val, corr, models = self._models_and_correction(z)
        models = [t._plus_background(m) for t, m in zip(self.lik.terms, models)]
        sp = self.split
        self.parts = sp.score_parts(models)
        self.heldout = float(sum(self.parts))
        self.sse, self.tw = [], []
        for h, m, k in zip(sp.held, models, sp.masks):
            mm = sp.ratio * np.asarray(m, dtype=np.float64)
            hh = np.asarray(h, dtype=np.float64)
            if k is not None:
                mm, hh = mm[k], hh[k]
            self.sse.append(float(np.sum((hh - mm) ** 2)))
            self.tw.append(_tweedie(hh, mm))
        self._expected = models if self.noise_maps else None
        return val, corr


def _run(sp, reg, z0, n_max, window=20):
    solver = _MultiScoredEM(sp, reg)
    st = solver.init(np.array(z0, dtype=sp.dtype, copy=True))
    dev, sse, tw = [list(solver.parts)], [list(solver.sse)], [list(solver.tw)]
    for it in range(1, n_max + 1):
        st = solver.step(st)
        dev.append(list(solver.parts))
        sse.append(list(solver.sse))
        tw.append(list(solver.tw))
        mins = [int(np.argmin(np.sum(np.asarray(a)[1:], axis=1)) + 1) for a in (dev, sse, tw)]
        mins += [int(np.argmin(np.asarray(a)[1:, j]) + 1) for a in (dev, sse, tw) for j in range(len(sp.held))]
        i_min = max(mins)
        if it - i_min >= max(window, i_min):
            break
    return {"dev": dev, "sse": sse, "tw": tw}, st["z"]


def curves(indices, split="tune", n_suite=48, out=None, family=None, rl_max=150, th_max=100, quarter=True):
    rows = _by_index(family) if family else {}
    specs = sc.suite(split, n=n_suite)
    for i in indices:
        spec = specs[i]
        x, y, _ = sc.from_spec(spec, size="small")
        t0 = time.perf_counter()
        if i in rows:
            wch = rows[i]["ladder"]
        else:
            wch = tuning.ladder_choice(tuning.select(x, y, complete=True))
        sp = tuning._splits([x, y], 0.5, 1, 0, "float32")[0]
        rl, _ = _run(sp, None, sp.start(), rl_max)
        z0 = tuning._run_em(sp, None, sp.start(), 3, None)[0]
        th, _ = _run(sp, tuning._wavelet_reg({}, dict(wch, null_space="threshold")), z0, th_max)
        row = dict(name=spec["name"], index=i, spec=spec, ladder=wch, spectral=sp.spectral, rl=rl, th=th,
                   counts=[float(x.counts.sum()), float(y.counts.sum())],
                   held_counts=[float(np.sum(h)) for h in sp.held])
        if quarter:
            sq = tuning._splits([x, y], 0.25, 1, 0, "float32")[0]
            row["rl_quarter"], _ = _run(sq, None, sq.start(), rl_max)
        row["t"] = time.perf_counter() - t0
        am = lambda a: int(np.argmin(np.sum(np.asarray(a)[1:], axis=1)) + 1)  # noqa: E731
        print(f"{spec['name']}: RL half-data minima dev/sse/tweedie {am(rl['dev'])}/{am(rl['sse'])}/{am(rl['tw'])}; "
              f"th (+3 warm) {am(th['dev'])}/{am(th['sse'])}/{am(th['tw'])}"
              + (f"; RL quarter {am(row['rl_quarter']['dev'])}/{am(row['rl_quarter']['sse'])}" if quarter else "")
              + f"; {row['t']:.0f} s", flush=True)
        if out:
            with open(out, "a") as fh:
                fh.write(json.dumps(row) + "\n")


WARM = 3  # warm-start EM iterations of the wavelet candidates (tuning._tune_wavelet / _tune_threshold)


def _argmin1(c):
    return int(np.argmin(np.asarray(c)[1:]) + 1)


def _spectral_sq(run, spectral, n_max):
    a = np.asarray(run["sse"], dtype=np.float64)[:n_max + 1]
    return a[:, list(spectral)].sum(axis=1)


def _n_zero(row):
    """The zeroed candidate's count (tuning._zero_iterations on the ladder curve, zero_transfer), family_data row."""
    c = np.asarray(row["half"]["zero"]["curve"])
    cap = tuning.ZERO_MAX_ITER - WARM
    it = min(tuning.CANDIDATE_ITER, len(c) - 1)
    while it < min(cap, len(c) - 1):
        i_min = _argmin1(c[:it + 1])
        if it - i_min >= max(tuning.ZERO_PAST_MIN, i_min):
            break
        it += 1
    return tuning.zero_transfer(_argmin1(c[:it + 1]) + WARM, WARM)


def _n_s9(row):
    """Session-9 counts of plain RL (rl_transfer) and of the thresholded candidate (threshold_transfer)."""
    out = {}
    for fam, off in (("rl", 0), ("th", WARM)):
        h = row["half"][fam]
        nh, nsp, nse = (_argmin1(h["curve"]) + off, _argmin1(h["spatial"]) + off, _argmin1(h["spectral"]) + off)
        out[fam] = (tuning.rl_transfer(nh, nsp, nse, row["details"]["rl"]["line_roughness"]) if fam == "rl" else
                    tuning.threshold_transfer(nh, nsp, nse, WARM))
    return out


def _n_s10(row, cur, factor=None):
    """Session-10 counts (tuning.sq_transfer on the sharp-spectral held-out squared error of a ``curves`` row; the
    half-data runs of "auto" stop at 100 iterations: the curves are cut there)."""
    f = tuning.RL_SQ_FACTOR if factor is None else factor
    n_rl = _argmin1(_spectral_sq(cur["rl"], cur["spectral"], 100))
    n_th = _argmin1(_spectral_sq(cur["th"], cur["spectral"], tuning.THRESHOLD_MAX_ITER)) + WARM
    clip = lambda n: int(min(max(n, 1), tuning.RL_MAX_ITER))  # noqa: E731
    return {"rl": clip(max(round(f * n_rl), _n_s9(row)["rl"])), "th": clip(round(f * n_th))}


def _family(row, richness):
    """The family "auto" picks (deviance at each family's best half-data iterate, the family prior as shipped)."""
    h = row["half"]
    score = {"zero": float(np.min(h["zero"]["curve"][1:tuning.CANDIDATE_ITER + 1])),
             "th": float(np.min(h["th"]["curve"][1:])), "rl": float(np.min(h["rl"]["curve"][1:]))}
    if richness >= tuning.LINE_RICHNESS:
        score["zero"] += tuning.FAMILY_MARGIN * row["pairs"]["zero_vs_th"][1]
    return min(score, key=score.get)


def replay(family_path, curves_path, lo=0, hi=48, factors=None, verbose=True):
    """Offline "auto" with the session-9 and session-10 iteration transfers (same family choice) on tuning scenes
    lo <= index < hi present in both files; ``factors``: RL_SQ_FACTOR values to compare (default: the shipped one)."""
    fam_rows, cur_rows = _by_index(family_path), _by_index(curves_path)
    idx = [i for i in sorted(set(fam_rows) & set(cur_rows)) if lo <= i < hi]
    specs = sc.suite("tune", n=48)
    rich = {}
    for i in idx:
        _, y, _ = sc.from_spec(specs[i], size="small")
        rich[i] = tuning.line_richness(y["counts"])
    rules = {"session 9": lambda r, c: dict(_n_s9(r), zero=_n_zero(r))}
    for f in factors or [tuning.RL_SQ_FACTOR]:
        rules[f"session 10 (x{f:g})"] = lambda r, c, f=f: dict(_n_s10(r, c, f), zero=_n_zero(r))
    print(f"tuning scenes {lo}-{hi - 1} ({len(idx)}), 24x24x600; NMSE through the shape prior (family_data 'shaped')")
    for label, rule in rules.items():
        res = []
        for i in idx:
            r = fam_rows[i]
            n = rule(r, cur_rows[i])
            fam = _family(r, rich[i])
            vals = {k: r["full"][k]["shaped"][min(n[k], len(r["full"][k]["shaped"])) - 1] for k in n}
            best = {k: float(np.max(r["full"][k]["shaped"])) for k in n}
            raw = np.asarray(r["full"]["rl"]["raw"])
            orc = float(raw[:max(100, n["rl"])].max())  # the suite's RL oracle (raw, up to max(100, RL pick))
            res.append(dict(i=i, name=r["name"], fam=fam, n=n, v=vals[fam], vals=vals, best=best, orc=orc))
            if verbose:
                print(f"  {i:2d} {r['name'][:40]:40s} {fam:4s} {n[fam]:3d} it {vals[fam]:6.2f} dB (its best "
                      f"{best[fam]:.2f}; RL* {orc:.2f}); RL {n['rl']} it, th {n['th']} it")
        v = np.array([o["v"] for o in res])
        orc = np.array([o["orc"] for o in res])
        hind = np.array([o["v"] - max(o["vals"].values()) for o in res])
        fails = ", ".join(o["name"].split()[0] for o, a, b in zip(res, v, orc) if a < b)
        print(f"{label}: mean NMSE {v.mean():.2f} dB (RL oracle {orc.mean():.2f}); >= RL oracle {np.sum(v >= orc)}/"
              f"{len(v)}; within 0.5 dB of the best of the three candidates (at their counts) {np.sum(hind >= -0.5)}/"
              f"{len(v)}; failing >= RL oracle: {fails}")
        for fam in ("rl", "th"):
            loss = np.array([o["vals"][fam] - o["best"][fam] for o in res])
            print(f"   {fam}: NMSE lost against its own best full-data iteration: mean {loss.mean():+.3f} dB, worst "
                  f"{loss.min():+.2f}, within 0.5 dB {np.sum(loss >= -0.5)}/{len(loss)}", flush=True)


def fullcheck(family_path, indices=None):
    """Full-size tuning scenes: the counts the current ``xfusion.tuning.select`` transfers (plain RL and the
    thresholded candidate) against those recorded in ``benchmarks/tuning.py family_data`` rows (taken with the code of
    their session), each with its full-data NMSE (through the shape prior) from the row, and the choice; the time of
    ``select``. (python benchmarks/iterations.py fullcheck s9_lead_family_data_full.jsonl 0,1,2)"""
    rows = [json.loads(line) for line in open(family_path)]
    specs = sc.suite("tune", n=48)
    for r in rows:
        i = r["index"]
        if indices is not None and i not in indices:
            continue
        x, y, truth = sc.from_spec(specs[i], size="default")
        if list(truth["flux"].shape) != list(r["shape"]):
            raise ValueError(f"{r['name']}: the row is of a {r['shape']} cube, the suite scene {truth['flux'].shape}")
        t0 = time.perf_counter()
        cur = tuning.select(x, y, complete=True)
        el = time.perf_counter() - t0
        det = json.loads(cur.attrs["details"])
        ch = tuning.choice(cur)
        out = []
        for fam, key in (("rl", "rl"), ("th", "threshold")):
            curve = r["full"][fam]["shaped"]
            a = r["details"].get(key, {}).get("max_iter")
            b = det.get(key, {}).get("max_iter")
            best = int(np.argmax(curve)) + 1
            fmt = lambda n: f"{n} it {curve[min(n, len(curve)) - 1]:.2f} dB" if n else "-"  # noqa: E731
            out.append(f"{fam}: recorded {fmt(a)} -> now {fmt(b)} (best {best} it {max(curve):.2f} dB)")
        print(f"{r['name']}: choice then {r['choice']} now {ch}; " + "; ".join(out) + f"; select {el:.0f} s",
              flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "curves":  # python benchmarks/iterations.py curves 0,1,2 tune 48 out.jsonl [family.jsonl]
        curves([int(v) for v in sys.argv[2].split(",")], sys.argv[3], int(sys.argv[4]), out=sys.argv[5],
               family=sys.argv[6] if len(sys.argv) > 6 else None)
    elif sys.argv[1] == "replay":  # python benchmarks/iterations.py replay family.jsonl curves.jsonl 0 24 [1,1.25,1.5]
        replay(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]),
               [float(v) for v in sys.argv[6].split(",")] if len(sys.argv) > 6 else None)
    elif sys.argv[1] == "fullcheck":  # python benchmarks/iterations.py fullcheck family_full.jsonl [0,1,2]
        fullcheck(sys.argv[2], [int(v) for v in sys.argv[3].split(",")] if len(sys.argv) > 3 else None)
    else:
        sys.exit(__doc__)
