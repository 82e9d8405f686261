"""Does the held-out deviance margin tell when plain RL beats the thresholded 2D-1D prior? (session 73, offline)

On the small rows of stored ``tuning.py hindsight`` files where the selection chose the thresholded prior, this reads
the thresholded candidate and plain RL's candidate (both fitted on all counts, NMSE against the truth, and both
scored on the same held-out half) and prints, per k of the chosen rung: the rows, how many of them plain RL beats by
more than 0.5 dB, and the mean NMSE of plain RL minus the thresholded one. With ``--rung K`` it lists that rung's
rows in order of the deviance margin ``(D_RL - D_thr) / D_thr`` (percent; > 0: the held-out half prefers the
thresholded fit), so one can see whether a margin separates the rows where plain RL is better.

    python benchmarks/threshold_or_rl.py                  # the fresh small sets 1200-1583 and 2544-2639
    python benchmarks/threshold_or_rl.py --rung 0.125
"""
import argparse
import csv
import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
#: the fresh small sets whose hindsight files hold the thresholded and plain-RL candidates of every row
FILES = ("hindsight_fresh_1200_1343_small.csv", "hindsight_fresh_1344_1391_small.csv",
         "hindsight_fresh_1392_1439_small.csv", "hindsight_fresh_1440_1487_small.csv",
         "hindsight_fresh_1488_1535_small.csv", "hindsight_fresh_1536_1583_small.csv",
         "hindsight_fresh_2544_2591_small.csv", "hindsight_fresh_2592_2639_small.csv")


def rows(files=FILES):
    """``[(k, margin %, NMSE of plain RL - thresholded (dB), scene)]`` over the small rows that chose the thresholded
    prior and scored plain RL on the held-out half, and the number of small rows read."""
    out, n = [], 0
    for name in files:
        with open(RESULTS / name) as fh:
            for r in csv.DictReader(fh):
                if r["size"] != "small":
                    continue
                n += 1
                choice = json.loads(r["choice"]) if r["choice"].startswith("{") else {}
                if choice.get("null_space") != "threshold":
                    continue
                cands = json.loads(r["candidate_scores"])
                thr = [c for c in cands if c["setting"].get("null_space") == "threshold"]
                rl = [c for c in cands if c["setting"].get("regularization") == "none"
                      and c["heldout_deviance"] is not None]
                if len(thr) != 1 or len(rl) != 1:
                    continue
                t, p = thr[0], rl[0]
                margin = 100.0 * (p["heldout_deviance"] - t["heldout_deviance"]) / t["heldout_deviance"]
                out.append((float(choice["k"]), margin, p["nmse_db"] - t["nmse_db"], r["scene"].split()[0]))
    return out, n


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rung", type=float, default=None, help="list this k rung's rows by deviance margin")
    a = p.parse_args(argv)
    recs, n = rows()
    print(f"{n} small rows read; {len(recs)} chose the thresholded prior (plain RL scored on the held-out half)")
    for k in sorted({r[0] for r in recs}):
        d = [r[2] for r in recs if r[0] == k]
        print(f"k = {k:g}: {len(d)} rows; plain RL better by > 0.5 dB on {sum(v > 0.5 for v in d)}; "
              f"plain RL - thresholded NMSE {sum(d) / len(d):+.2f} dB on average")
    if a.rung is not None:
        sel = sorted(r for r in recs if r[0] == a.rung)
        better = [r[1] for r in sel if r[2] > 0.5]
        if better:
            print(f"k = {a.rung:g}: the rows where plain RL is better by > 0.5 dB have margins {min(better):.2f}-"
                  f"{max(better):.2f} %; all rows {sel[0][1]:.2f}-{sel[-1][1]:.2f} %")
        for k, m, d, s in sel:
            print(f"  {m:6.2f} %  {d:+.2f} dB  {s}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
