"""Coarse-to-fine in energy: does the tuning choose the same settings on the sharp-spectral cube binned in energy?

Issue 13 asks for cheap tuning ("coarse-to-fine search"), and the 60 s target is missed on the slowest held-out
scene by the tuning's cost (``select`` is about half of the wall time, ``benchmarks/fuse_timeline.py``). The fused
channels of the scenes are about 6.7 channels per sigma of the sharp-spectral line spread (0.375 eV channels, 2.5 eV
sigma in the Table 1 geometry), so summing pairs of channels loses almost nothing the sharp-spectral instrument sees
and halves every pass over the cube. This probe runs :func:`xfusion.tuning.select` on each scene twice, on the
sharp-spectral observation as given and with its channels summed in groups of ``--factor`` (the fused grid follows
the sharp-spectral channels, so it is binned too), and prints both choices and the CPU seconds of each selection.
With ``--n-scales-1d N`` the binned selection uses N 1D starlet scales instead of the default (one scale fewer on a
grid binned by 2 keeps the same physical scales in the coarse band). Diagnostic only: nothing here is a default.

    python benchmarks/energy_binned_tuning.py tune 48 small 0-11 --factor 2 [--n-scales-1d 1] --jsonl F
    python benchmarks/energy_binned_tuning.py --summary benchmarks/results/energy_binned_tuning_small_ns1_s78.jsonl

Session 78 (``results/energy_binned_tuning_{small,full}_ns{1,2}_s78.jsonl``; ``ns2``: the default's 2 scales on the
binned grid, ``ns1``: one; small: the 48 small tuning scenes, full: the first 12 full-size ones; the full-size ``ns2``
rows were run with a first version of this script, the same functions): see ``benchmarks/QUALITY_HISTORY.md``.
"""
import argparse
import json
import sys
import time

from bench_cli import parse_indices  # benchmarks/bench_cli.py
from xfusion import scenes, tuning


def bin_energy(y, factor):
    """The observation ``y`` with its channels summed in groups of ``factor`` (a remainder is dropped): counts
    summed, ``energy_lo`` of each group's first channel and ``energy_hi`` of its last, every other variable kept. Only
    for an observation without a response matrix over its channels (the sharp-spectral scenes of
    :mod:`xfusion.scenes`)."""
    if "response" in y:
        raise ValueError("bin_energy: an observation with a channel response matrix would need its rows summed too")
    n = y.sizes["energy"] // factor * factor
    y = y.isel(energy=slice(0, n))
    counts = y["counts"].coarsen(energy=factor).sum()
    lo, hi = y["energy_lo"].values[::factor], y["energy_hi"].values[factor - 1::factor]
    out = y.drop_vars(["counts", "energy", "energy_lo", "energy_hi"])
    out = out.assign_coords(energy=("energy", 0.5 * (lo + hi)), energy_lo=("energy", lo), energy_hi=("energy", hi))
    for v in ("energy", "energy_lo", "energy_hi"):
        out[v].attrs = dict(y[v].attrs)
    out["counts"] = (counts.dims, counts.values.astype(y["counts"].dtype))
    out["counts"].attrs = dict(y["counts"].attrs)
    out["counts"] = out["counts"].transpose(*y["counts"].dims)
    out.attrs = dict(y.attrs)
    return out


KEYS = ("regularization", "k", "null_space", "max_iter")


def _choose(x, y, **fixed):
    t0, c0 = time.perf_counter(), time.process_time()
    ch = json.loads(tuning.select(x, y, **fixed).attrs["choice"])
    return {**{k: ch.get(k) for k in KEYS}, "wall_s": round(time.perf_counter() - t0, 2),
            "cpu_s": round(time.process_time() - c0, 2)}


def summary(rows):
    """Counts of equal choices and the CPU ratio over ``rows`` (the JSON lines this script prints)."""
    same = {k: sum(r["given"][k] == r["binned"][k] for r in rows) for k in KEYS}
    family = sum(all(r["given"][k] == r["binned"][k] for k in KEYS[:3:2]) for r in rows)
    lower_k = sum((r["binned"]["k"] or 0) < (r["given"]["k"] or 0) for r in rows)
    longer = sum((r["binned"]["max_iter"] or 0) > (r["given"]["max_iter"] or 0) for r in rows)
    cpu = (sum(r["binned"]["cpu_s"] for r in rows), sum(r["given"]["cpu_s"] for r in rows))
    return (f"{len(rows)} scenes: family {family} same, "
            f"k {same['k']} same ({lower_k} lower when binned), count {same['max_iter']} same ({longer} longer), "
            f"all four {sum(all(r['given'][k] == r['binned'][k] for k in KEYS) for r in rows)}; selection CPU "
            f"binned / given {cpu[0]:.1f} / {cpu[1]:.1f} s = {cpu[0] / max(cpu[1], 1e-9):.2f}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("split", nargs="?", choices=("tune", "heldout"))
    p.add_argument("n", nargs="?", type=int, help="the suite list's n (scenes.suite(split, n))")
    p.add_argument("size", nargs="?", help="scene size: default or small")
    p.add_argument("indices", nargs="?", help="e.g. 0-11 or 0,3,5")
    p.add_argument("--factor", type=int, default=2)
    p.add_argument("--n-scales-1d", type=int, default=None, help="1D scales of the binned selection")
    p.add_argument("--jsonl", default=None, help="append one JSON line per scene here")
    p.add_argument("--summary", nargs="*", default=None, help="only print the summary of these JSONL files")
    a = p.parse_args(argv)
    if a.summary is not None:
        rows = [json.loads(line) for f in a.summary for line in open(f) if line.strip()]
        print(summary(rows))
        return 0
    if a.indices is None:
        p.error("give SPLIT N SIZE INDICES, or --summary FILES")
    idx = parse_indices(p, a.indices, a.n, option="INDICES")
    specs = scenes.suite(a.split, n=a.n)
    fixed = {} if a.n_scales_1d is None else {"n_scales_1d": a.n_scales_1d}
    rows = []
    for i in idx:
        spec = dict(specs[i])
        name = spec.pop("name")
        x, y, _ = scenes.make(**spec, size=a.size)
        row = {"index": i, "name": name, "size": a.size, "factor": a.factor, "binned_fixed": fixed,
               "given": _choose(x, y), "binned": _choose(x, bin_energy(y, a.factor), **fixed)}
        rows.append(row)
        line = json.dumps(row)
        print(line, flush=True)
        if a.jsonl:
            with open(a.jsonl, "a") as f:
                f.write(line + "\n")
    print(summary(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
