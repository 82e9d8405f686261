"""Can ANY held-out-likelihood rule pick the better prior family? (session 74, diagnostic)

Thinning scores a fit by the Poisson deviance of held-out counts. Its expectation over a new draw is, up to a
constant that does not depend on the fit, the Poisson Kullback-Leibler divergence of the fit's predictions from the
EXPECTED counts of each instrument:

    KL(lam, mu) = 2 sum( mu - lam + lam log(lam / mu) )     (mu: the fit's predicted counts, lam: the truth's)

So the fit with the smaller KL is the one an ideal thinning (infinitely many splits, no half-to-all transfer) would
choose. For full-size held-out rows where the family choice matters (the zeroed 2D-1D prior against the thresholded
one), this fits on all counts the row's choice and the other family's best candidate in hindsight (the stored
``tuning.py hindsight`` CSVs name both settings) with ``xfusion.fuse(x, y, **setting)``, and records for each cube
its NMSE against the truth and its KL for the sharp-spatial (``kl_x``) and the sharp-spectral (``kl_y``) instrument,
from the scene's expected counts (``scenes.from_spec(spec, noise=False)``).

A row where the cube with the better NMSE has the LARGER total KL is one no deviance-based selection can get right:
the better cube predicts what the instruments see worse, and is better only in what neither instrument sees.

    python benchmarks/family_kl.py run results/family_kl_full_s74.jsonl point_sources/501433,point_sources/500123
    python benchmarks/family_kl.py summary results/family_kl_full_s74.jsonl

The fits here are ``fuse`` with the stored setting only (given settings: no spectral-shape prior and no compact-source
run-on), so their NMSE differs from the CSVs' delivered cubes by up to ~1.5 dB; each row's two cubes are made the
same way.
"""
import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np

from delivery_probes import family  # benchmarks/delivery_probes.py: a candidate setting's family

RESULTS = Path(__file__).resolve().parent / "results"
#: the full-size held-out hindsight tables (480 rows)
FILES = ("hindsight_heldout.csv", "hindsight_fresh_408_455.csv", "hindsight_fresh_456_503.csv",
         "hindsight_fresh_504_551.csv", "hindsight_fresh_1080_1127_full.csv", "hindsight_fresh_1128_1151_full.csv",
         "hindsight_fresh_1152_1175_full.csv", "hindsight_fresh_1416_1439_full.csv")


def full_rows():
    """``{short scene name: CSV row}`` over :data:`FILES`' full-size rows."""
    rows = {}
    for name in FILES:
        with open(RESULTS / name) as fh:
            for r in csv.DictReader(fh):
                if r["size"] == "full":
                    rows[r["scene"].split()[0]] = r
    return rows


def family_gaps(rows=None):
    """``[(gap dB, short name, chosen family)]`` for the full-size rows with lines (not synchrotron) that chose the
    zeroed or the thresholded prior: gap = the other family's best candidate NMSE minus the delivered choice's."""
    out = []
    for name, r in (rows or full_rows()).items():
        if name.startswith("synchrotron"):
            continue
        chosen = family(json.loads(r["choice"]))
        if chosen not in ("zero", "threshold"):
            continue
        other = [c["nmse_db"] for c in json.loads(r["candidate_scores"])
                 if family(c["setting"]) in ("zero", "threshold") and family(c["setting"]) != chosen]
        if other:
            out.append((max(other) - float(r["nmse_choice_db"]), name, chosen))
    return sorted(out, reverse=True)


def kl(lam, mu):
    """Poisson KL divergence (deviance units) of predictions ``mu`` from expected counts ``lam`` (any shape)."""
    lam = np.asarray(lam, np.float64).ravel()
    mu = np.maximum(np.asarray(mu, np.float64).ravel(), 1e-30)
    pos = lam > 0
    return float(2.0 * (np.sum(mu - lam) + np.sum(lam[pos] * np.log(lam[pos] / mu[pos]))))


def run(out, names):
    import xfusion
    from tuning import row_n  # benchmarks/tuning.py: the suite size whose scene i is held-out row i
    from xfusion import metrics, scenes

    rows = full_rows()
    with open(out, "a") as fh:
        for name in names:
            r = rows[name]
            i = int(name.split("/")[1]) - scenes.SPLIT_SEEDS["heldout"]  # held-out row i has seed base + i
            spec = scenes.suite("heldout", n=row_n(i))[i]
            if spec["name"] != r["scene"]:
                raise ValueError(f"row {i} is {spec['name']!r}, the CSV has {r['scene']!r}")
            x, y, truth = scenes.from_spec(spec)
            xe, ye, _ = scenes.from_spec(spec, noise=False)
            choice = json.loads(r["choice"])
            chosen = family(choice)
            cands = [c for c in json.loads(r["candidate_scores"]) if not c["setting"].get("chosen")]
            alt = max((c for c in cands if family(c["setting"]) in ("zero", "threshold")
                       and family(c["setting"]) != chosen), key=lambda c: c["nmse_db"])
            rec = {"name": r["scene"], "chosen_family": chosen, "csv_choice_nmse": float(r["nmse_choice_db"]),
                   "csv_alt_nmse": alt["nmse_db"]}
            for tag, setting in (("chosen", choice), ("alt", alt["setting"])):
                res = xfusion.fuse(x, y, progress=False, **setting)
                px, py = xfusion.predict(res.flux, x), xfusion.predict(res.flux, y)
                rec[tag] = {"setting": setting, "nmse": round(float(metrics.nmse(truth, res.flux)), 3),
                            "kl_x": round(kl(xe.counts.transpose(*px.dims).values, px.values), 1),
                            "kl_y": round(kl(ye.counts.transpose(*py.dims).values, py.values), 1)}
            fh.write(json.dumps(rec) + "\n")
            fh.flush()
            print(json.dumps(rec), flush=True)


def verdicts(records):
    """Per record ``(name, NMSE gap alt - chosen of these fits, KL gap alt - chosen, agrees)``: ``agrees`` when the
    cube with the better NMSE also has the smaller total KL (x + y)."""
    out = []
    for r in records:
        dn = r["alt"]["nmse"] - r["chosen"]["nmse"]
        dk = (r["alt"]["kl_x"] + r["alt"]["kl_y"]) - (r["chosen"]["kl_x"] + r["chosen"]["kl_y"])
        out.append((r["name"].split()[0], dn, dk, (dn > 0) == (dk < 0)))
    return out


def summary(path):
    records = [json.loads(line) for line in open(path)]
    chosen = {r["name"].split()[0]: r["chosen_family"] for r in records}
    v = verdicts(records)
    worse = [t for t in v if t[1] > 0.5]  # the other family better by > 0.5 dB in these fits: the choice misses
    right = [t for t in v if t[1] < -0.5]  # the choice better by > 0.5 dB
    print(f"{len(v)} rows; the other family better by > 0.5 dB on {len(worse)}, the choice better by > 0.5 dB on "
          f"{len(right)}")
    for label, group in (("other family better", worse), ("choice better", right)):
        for fam in ("zero", "threshold"):
            part = [t for t in group if chosen[t[0]] == fam]
            print(f"{label}, {fam} chosen: the expected held-out deviance (KL) ranks the two cubes as the NMSE does "
                  f"on {sum(t[3] for t in part)}/{len(part)}")
            for name, dn, dk, ok in part:
                print(f"  {name}: NMSE {dn:+.2f} dB, KL {dk:+.0f} ({'agrees' if ok else 'opposite'})")
    return 0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("run")
    a.add_argument("out")
    a.add_argument("names", help="short scene names (kind/seed), comma-separated")
    b = sub.add_parser("summary")
    b.add_argument("path")
    args = p.parse_args(argv)
    if args.cmd == "run":
        run(args.out, args.names.split(","))
        return 0
    return summary(args.path)


if __name__ == "__main__":
    sys.exit(main())
