"""The scene suite's per-scene results as one table (CSV) and one figure (PNG), from ``benchmarks/suite.py --json``.

Issue 13 asks that the README's figures come from the suite. This reads the JSON files that
``python benchmarks/suite.py --heldout --select --json F`` writes (several files per size are merged: scenes run in
parallel jobs; a scene present twice keeps the last file's row), and writes

* ``--csv``: one row per scene and size: kind, seed, size, counts, the default's choice, and for the default, plain RL
  at its oracle iteration (the best NMSE over its iterations: uses the truth) and the two naive baselines
  (X upsampled in energy, Y upsampled in space): NMSE (dB), velocity-map and line-width RMS errors (km/s, brighter
  half of the field; empty without lines), total-flux bias (%);
* ``--png``: per size (one row of panels each), (a) the default's NMSE minus RL's oracle NMSE per scene, grouped by
  scene kind, with the better naive baseline's difference beside it; (b) the default's velocity-map RMS error against
  RL's oracle's (log-log; below the diagonal the default is better); (c) the total-flux bias. Each panel's title
  states the issue-13 target it shows and the count that meets it.

    python benchmarks/suite_figure.py --input full=a.json,b.json --input small=c.json,d.json \\
        --png benchmarks/results/suite_heldout.png --csv benchmarks/results/suite_heldout.csv
    python benchmarks/suite_figure.py --base-csv benchmarks/results/suite_heldout.csv --input "full size=e.json" \
        --png benchmarks/results/suite_heldout.png --csv benchmarks/results/suite_heldout.csv   # some scenes again
"""
import argparse
import csv
import json
import math
import re
from pathlib import Path

import numpy as np
from suite import _beats  # benchmarks/suite.py: the "beats a baseline on all four metrics" test

from xfusion.regularizers.shape import levels_of
from xfusion.scenes import KINDS

COLORS = dict(zip(KINDS, ("tab:red", "tab:blue", "tab:green", "tab:purple", "tab:orange")))
COLUMNS = ("size", "kind", "seed", "scene", "grid", "counts_x", "counts_y", "choice",
           "nmse_default_db", "nmse_rl_oracle_db", "nmse_x_up_db", "nmse_y_up_db",
           "velocity_rms_default_kms", "velocity_rms_rl_oracle_kms", "width_rms_default_kms",
           "width_rms_rl_oracle_kms", "flux_bias_pct", "beats_both_baselines")


def load(paths):
    """Rows of the suite JSON files ``paths`` merged by scene name (the last file wins), errors dropped."""
    rows = {}
    for p in paths:
        for r in json.loads(Path(p).read_text())["rows"]:
            if "error" not in r:
                rows[r["name"]] = r
    if not rows:
        raise SystemExit(f"no scene rows in {', '.join(map(str, paths))}: pass files written by "
                         "benchmarks/suite.py --json")
    return list(rows.values())


def _choice(sel, shape=None):
    """The default's choice in words; ``shape``: the spectral-shape prior's record of ``suite.py`` (session 20: its
    pseudo-counts chosen by thinning), appended as ``shape <n0>``, or ``shape <n0> pixel <n0_pixel>`` when its
    level 0 has its own (session 37; since session 44 what was delivered, level 0 at >= ``tuning.PIXEL_FLOOR``),
    then ``sources <n0_sources>`` when the footprints of line-free sources keep thinning's own level 0 (session 52)."""
    if sel is None:
        return ""
    n0 = ""
    if shape and shape.get("choice") is not None:
        a, b, c = levels_of(shape.get("delivered", shape["choice"]), sources=True)
        n0 = f" shape {a:g}" + (f" pixel {b:g}" if b != a else "") + (f" sources {c:g}" if c != b else "")
    if sel.get("regularization") == "none":
        return f"RL {sel.get('max_iter')} it{n0}"
    txt = f"starlet k={sel.get('k')} {sel.get('null_space', '')}"
    return txt + (f" {sel['max_iter']} it" if "max_iter" in sel else "") + n0


def _num(v):
    """Seven significant digits: with four, a scene 0.003 dB below RL's oracle (small mixed/500069 in session 44) read
    as a tie and was counted as reaching it."""
    return "" if v is None or not math.isfinite(v) else f"{v:.7g}"


def table(size, rows):
    """One CSV dict per scene (see the module docstring)."""
    out = []
    for r in rows:
        d, rb = r["default"], r["rl_best"]
        out.append({"size": size, "kind": r["spec"]["kind"], "seed": r["spec"]["seed"], "scene": r["name"],
                    "grid": r["size"], "counts_x": f"{r['counts_x']:.0f}", "counts_y": f"{r['counts_y']:.0f}",
                    "choice": _choice(r.get("selected"), r.get("shape_prior")),
                    "nmse_default_db": _num(d["nmse_db"]), "nmse_rl_oracle_db": _num(rb["nmse_db"]),
                    "nmse_x_up_db": _num(r["x_up"]["nmse_db"]), "nmse_y_up_db": _num(r["y_up"]["nmse_db"]),
                    "velocity_rms_default_kms": _num(d["velocity_rms_kms"]),
                    "velocity_rms_rl_oracle_kms": _num(rb["velocity_rms_kms"]),
                    "width_rms_default_kms": _num(d["width_rms_kms"]),
                    "width_rms_rl_oracle_kms": _num(rb["width_rms_kms"]),
                    "flux_bias_pct": _num(r["flux_bias_pct"]),
                    "beats_both_baselines": _beats(d, r["x_up"]) and _beats(d, r["y_up"])})
    return out


def _value(row, key):
    """A CSV row's number (NaN where the column is empty: no lines, no velocity map)."""
    return float(row[key]) if row[key] != "" else math.nan


def _csv_rows(paths):
    """The rows of the CSV files ``paths`` (comma-separated), one after the other: several tables pooled."""
    for path in paths.split(","):
        with open(path, newline="") as fh:
            yield from csv.DictReader(fh)


def rows_from_csv(paths):
    """{size label: rows} of the CSVs this script wrote (``paths`` comma-separated: pooled, in that order), as the rows
    :func:`figure` draws (the CSV holds every number the figure uses): to redraw the figure after some scenes were
    measured again, or to count the targets over several tables (``--base-csv``)."""
    groups = {}
    for c in _csv_rows(paths):
        c["beats_both_baselines"] = c["beats_both_baselines"] == "True"
        f = lambda key: _value(c, key)  # noqa: E731
        groups.setdefault(c["size"], []).append({
            "name": c["scene"], "spec": {"kind": c["kind"]}, "csv": c, "flux_bias_pct": f("flux_bias_pct"),
            "default": {"nmse_db": f("nmse_default_db"), "velocity_rms_kms": f("velocity_rms_default_kms")},
            "rl_best": {"nmse_db": f("nmse_rl_oracle_db"), "velocity_rms_kms": f("velocity_rms_rl_oracle_kms")},
            "x_up": {"nmse_db": f("nmse_x_up_db")}, "y_up": {"nmse_db": f("nmse_y_up_db")}})
    return groups


def wilson(k, n, z=1.96):
    """Wilson score interval (95 % for ``z`` = 1.96) of a pass rate ``k / n``: ``(low, high)``. A rate read from a
    few hundred scenes is itself uncertain (session 49): 129/144 = 89.6 % spans about 84-94 %."""
    if n <= 0:
        return math.nan, math.nan
    p = k / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return max(0.0, mid - half), min(1.0, mid + half)


#: the issue-13 targets of the suite table: (label, required pass rate)
TARGETS = (("beats both naive baselines", 0.95), ("NMSE >= RL oracle", 0.90), ("velocity RMS <= RL oracle", 0.90),
           ("|total-flux bias| <= 1 %", 1.0))


def targets(csv_rows, rows=None):
    """Issue-13 target counts of one size's CSV rows (``rows``: a subset of indices, e.g. the newest seeds):
    ``[(label, passed, scenes, target, (low, high))]`` with the Wilson 95 % interval of the pass rate. Velocity counts
    the scenes with lines only (both velocity errors present)."""
    rs = [csv_rows[i] for i in rows] if rows is not None else list(csv_rows)
    lined = [r for r in rs if math.isfinite(_value(r, "velocity_rms_default_kms"))
             and math.isfinite(_value(r, "velocity_rms_rl_oracle_kms"))]
    passed = (sum(str(r["beats_both_baselines"]) == "True" for r in rs),
              sum(_value(r, "nmse_default_db") >= _value(r, "nmse_rl_oracle_db") for r in rs),
              sum(_value(r, "velocity_rms_default_kms") <= _value(r, "velocity_rms_rl_oracle_kms") for r in lined),
              sum(abs(_value(r, "flux_bias_pct")) <= 1.0 for r in rs))
    return [(label, k, n, target, wilson(k, n)) for (label, target), k, n in
            zip(TARGETS, passed, (len(rs), len(rs), len(lined), len(rs)))]


def failures(csv_rows):
    """The scenes of one size's CSV rows that miss each target, with by how much: ``{label: [text]}`` (labels of
    :data:`TARGETS`; NMSE: default minus RL oracle in dB; velocity: default against RL oracle in km/s; flux: the bias)."""
    short = lambda r: r["scene"].split(" ")[0]  # noqa: E731
    out = {label: [] for label, _ in TARGETS}
    for r in csv_rows:
        nd = _value(r, "nmse_default_db") - _value(r, "nmse_rl_oracle_db")
        vd, vr = _value(r, "velocity_rms_default_kms"), _value(r, "velocity_rms_rl_oracle_kms")
        fb = _value(r, "flux_bias_pct")
        if str(r["beats_both_baselines"]) != "True":
            out[TARGETS[0][0]].append(short(r))
        if not nd >= 0:
            out[TARGETS[1][0]].append(f"{short(r)} {nd:+.{2 if abs(nd) >= 0.01 else 3}f} dB")
        if math.isfinite(vd) and math.isfinite(vr) and vd > vr:
            out[TARGETS[2][0]].append(f"{short(r)} {vd:.1f} vs {vr:.1f} km/s")
        if not abs(fb) <= 1.0:
            out[TARGETS[3][0]].append(f"{short(r)} {fb:+.2f} %")
    return out


def verdict(k, n, target, interval):
    """"met" / "not met", and whether the 95 % interval of the rate lies wholly on that side of ``target``."""
    met = n > 0 and k >= target * n - 1e-9
    if target >= 1.0:  # "in all": a statement about these scenes, not a rate
        return "met" if met else "not met"
    sure = interval[0] >= target if met else interval[1] < target
    return ("met" if met else "not met") + ("" if sure else " (the 95 % interval spans the target)")


def hindsight_target(paths):
    """{size: [within 0.5 dB of the best candidate, per row]} of ``benchmarks/tuning.py hindsight_csv`` files
    (``paths`` comma-separated: pooled, in that order), in table order per size (booleans, so that row ranges can be
    counted too)."""
    out = {}
    for r in _csv_rows(paths):
        out.setdefault(r["size"], []).append(r["within_0_5_db"] == "True")
    return out


#: the hindsight CSV's size labels against the suite table's
HINDSIGHT_SIZES = {"full size": "full", "small": "small"}


def print_targets(tables, ranges=(), hindsight=None, fails=False):
    """Print each size's target counts, rates, Wilson intervals and verdicts; ``ranges``: (label, first, last) row
    ranges to report on their own as well (e.g. the newest seeds); ``hindsight``: :func:`hindsight_target`'s dict,
    whose rows of the same size are counted against the 90 % hindsight target; ``fails``: name the scenes that miss
    each target (all rows only, :func:`failures`)."""
    for label, t in tables.items():
        missed = failures(t) if fails else {}
        for what, idx in [("all", None)] + [(f"rows {a}-{b} ({name})", range(a, min(b + 1, len(t))))
                                            for name, a, b in ranges if a < len(t)]:
            print(f"{label}, {what}:")
            found = targets(t, idx)
            h = (hindsight or {}).get(HINDSIGHT_SIZES.get(label, label))
            if h is not None:
                hs = h if idx is None else [h[i] for i in idx if i < len(h)]
                found.append(("choice within 0.5 dB of the best in hindsight", sum(hs), len(hs), 0.90,
                              wilson(sum(hs), len(hs))))
            for name, k, n, target, (lo, hi) in found:
                rate = k / n if n else math.nan
                print(f"  {name}: {k}/{n} = {100 * rate:.1f} % [95 %: {100 * lo:.1f}-{100 * hi:.1f}] against "
                      f"{100 * target:.0f} %: {verdict(k, n, target, (lo, hi))}")
                if idx is None and missed.get(name):
                    print(f"    miss: {', '.join(missed[name])}")


def _rate(k, n):
    """``k/n = p % [low-high]`` with the Wilson 95 % interval, for a panel title."""
    lo, hi = wilson(k, n)
    return f"{k}/{n} = {100 * k / n:.1f}% [{100 * lo:.0f}-{100 * hi:.0f}]" if n else f"{k}/{n}"


def figure(groups, path):
    """``groups``: {size label: rows}. One row of three panels per size (module docstring); saved to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    fig, axes = plt.subplots(len(groups), 3, figsize=(14, 4.2 * len(groups)), squeeze=False,
                             gridspec_kw={"width_ratios": [2.2, 1.3, 1.0]})
    for (label, rows), (a, b, c) in zip(groups.items(), axes):
        rows = sorted(rows, key=lambda r: (KINDS.index(r["spec"]["kind"]), r["default"]["nmse_db"]
                                           - r["rl_best"]["nmse_db"]))
        x = np.arange(len(rows))
        dd = np.array([r["default"]["nmse_db"] - r["rl_best"]["nmse_db"] for r in rows])
        db = np.array([max(r["x_up"]["nmse_db"], r["y_up"]["nmse_db"]) - r["rl_best"]["nmse_db"] for r in rows])
        col = [COLORS[r["spec"]["kind"]] for r in rows]
        a.bar(x, dd, color=col, width=0.8)
        a.plot(x, db, "k_", ms=7, label="better naive baseline - RL oracle (clipped at -15)")
        a.axhline(0, color="k", lw=0.8)
        a.set_xticks([])
        a.set_xlabel(f"{len(rows)} held-out scenes, grouped by kind")
        a.set_ylabel("NMSE: default - RL oracle (dB)")
        a.set_ylim(max(min(dd.min(), db.min()) - 1, -15), dd.max() + 1)
        handles, _ = a.get_legend_handles_labels()
        a.legend(handles=handles + [Patch(color=COLORS[k], label=k) for k in KINDS], fontsize=7, ncol=2,
                 loc="lower right")
        a.set_title(f"{label}: NMSE >= RL oracle in {_rate(int((dd >= 0).sum()), len(rows))} (target 90%)", fontsize=10)

        lined = [r for r in rows if math.isfinite(r["rl_best"]["velocity_rms_kms"])]
        vd = np.array([r["default"]["velocity_rms_kms"] for r in lined])
        vr = np.array([r["rl_best"]["velocity_rms_kms"] for r in lined])
        b.scatter(vr, vd, c=[COLORS[r["spec"]["kind"]] for r in lined], s=18)
        lo, hi = min(vd.min(), vr.min()) / 1.5, max(vd.max(), vr.max()) * 1.5
        b.plot([lo, hi], [lo, hi], "k-", lw=0.8)
        b.set_xscale("log")
        b.set_yscale("log")
        b.set_xlim(lo, hi)
        b.set_ylim(lo, hi)
        b.set_xlabel("velocity RMS, RL oracle (km/s)")
        b.set_ylabel("velocity RMS, default (km/s)")
        b.set_title(f"velocity <= RL oracle in {_rate(int((vd <= vr).sum()), len(lined))} (target 90%)", fontsize=10)

        fb = np.array([r["flux_bias_pct"] for r in rows])
        c.axhspan(-1, 1, color="0.9", zorder=0)
        c.scatter(x, fb, c=col, s=12, zorder=2)
        c.axhline(0, color="k", lw=0.8)
        c.set_xticks([])
        c.set_ylabel("total-flux bias (%)")
        c.set_title(f"|flux bias| <= 1% in {int((np.abs(fb) <= 1).sum())}/{len(rows)}", fontsize=10)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", action="append", default=[],
                   help="LABEL=FILE[,FILE...]: suite.py JSON files of one size (repeat for each size; none with "
                        "--base-csv: the figure redrawn from the CSV)")
    p.add_argument("--png", default=None, help="write the figure here")
    p.add_argument("--csv", default=None, help="write the per-scene table here")
    p.add_argument("--base-csv", default=None, help="start from this CSV's rows (all sizes; CSV,CSV,...: several "
                   "tables pooled, in that order); the --input rows replace the rows of the same size label and scene "
                   "(scenes measured again)")
    p.add_argument("--report-rows", action="append", default=[], metavar="NAME=A-B",
                   help="also report the targets on table rows A-B of each size (e.g. fresh=168-191)")
    p.add_argument("--hindsight-csv", default=None, help="a benchmarks/tuning.py hindsight_csv file (or CSV,CSV,...: "
                   "pooled): count its rows against the hindsight target too (sizes 'full' and 'small' stand for "
                   "'full size' and 'small')")
    p.add_argument("--fails", action="store_true", help="name the scenes that miss each target, with the margin")
    args = p.parse_args(argv)
    for r in args.report_rows:
        name, sep, span = r.partition("=")
        if not sep or not re.fullmatch(r"\d+-\d+", span):
            p.error(f"--report-rows: expected NAME=A-B (e.g. fresh=168-191); got {r!r}")
    if not args.input and not args.base_csv:
        p.error("give --input (suite.py JSON files) or --base-csv (redraw from a CSV this script wrote)")
    groups, tables = {}, {}
    if args.base_csv:
        groups = rows_from_csv(args.base_csv)
        tables = {label: [r["csv"] for r in rows] for label, rows in groups.items()}
    for item in args.input:
        label, sep, files = item.partition("=")
        if not sep or not files:
            raise SystemExit(f"--input {item!r}: expected LABEL=FILE[,FILE...]")
        new = load(files.split(","))
        if args.base_csv and label not in groups:
            raise SystemExit(f"--input {item!r}: no rows of size {label!r} in {args.base_csv} "
                             f"(labels there: {', '.join(groups)})")
        if label in groups:  # replace the scenes measured again, in place (the table keeps its order)
            by_name = {r["name"]: r for r in new}
            groups[label] = [by_name.pop(r["name"], r) for r in groups[label]] + list(by_name.values())
            tables[label] = [table(label, [r])[0] if "csv" not in r else r["csv"] for r in groups[label]]
        else:
            groups[label] = new
            tables[label] = table(label, new)
    if args.csv:
        Path(args.csv).parent.mkdir(parents=True, exist_ok=True)
        with open(args.csv, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=COLUMNS)
            w.writeheader()
            for t in tables.values():
                w.writerows(t)
    if args.png:
        figure(groups, args.png)
    print_targets(tables, [tuple([name] + [int(v) for v in span.split("-")]) for name, _, span in
                           (r.partition("=") for r in args.report_rows)],
                  hindsight_target(args.hindsight_csv) if args.hindsight_csv else None, fails=args.fails)


if __name__ == "__main__":
    main()
