"""When the starlet kernels are compiled: the default ``fuse`` in fresh processes under each compile rule.

Since session 63 a process runs the NumPy starlet passes until :data:`xfusion.regularizers.starlet_kernels.
COMPILE_AFTER` elements of a dtype went through them, then compiles the Numba kernels on a thread of their own (the
same numbers either way). Per scene and mode this starts one new Python process that builds the scene, then times
``xfusion.fuse(x, y)`` (wall seconds; building the scene and importing are not timed):

* ``rule``: today's default (since session 66 a fused cube of at least ``COMPILE_NOW_VOXELS`` voxels starts compiling
  before its first pass, :func:`xfusion.regularizers.starlet_kernels.expect`);
* ``lazy``: the rule of sessions 63-65, ``COMPILE_NOW_VOXELS`` infinite (compiling only after ``COMPILE_AFTER``
  elements);
* ``numpy``: ``XFUSION_NUMBA=0`` (never compiled);
* ``first``: ``COMPILE_AFTER = 1``, compiling from the first block on (the kernels' use as early as the
  background thread allows; until session 63 compilation blocked the first call instead);
* ``warm``: ``starlet_kernels.warm()`` before the timed call (compiled beforehand, its seconds not counted).

Modes alternate within each repeat (the machine's speed drifts). Prints one line per run and the median per mode.

    python benchmarks/compile_rule.py --indices 83 --n 96 --split heldout --repeat 2 --json runs.jsonl
    python benchmarks/compile_rule.py --toy gaussian_rebin --repeat 3       # the demo's toy
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

from bench_cli import append_record, check_output, parse_indices  # benchmarks/bench_cli.py

SCRIPT = "compile_rule.py"
MODES = ("rule", "lazy", "numpy", "first", "warm")

_CHILD = r"""
import json, sys, time
from xfusion.regularizers import starlet_kernels as sk
import xfusion
from xfusion import scenes, toy
what, mode = json.loads(sys.argv[1]), sys.argv[2]
if what.get("toy"):
    x, y, _ = toy.make(what["toy"], seed=0)
else:
    spec = scenes.suite(what["split"], n=what["n"])[what["index"]]
    x, y, _ = scenes.make(**{k: v for k, v in spec.items() if k != "name"}, size=what["size"])
if mode == "first":
    sk.COMPILE_AFTER = 1
if mode == "lazy":
    sk.COMPILE_NOW_VOXELS = float("inf")
if mode == "warm":
    sk.warm()
t0 = time.perf_counter()
fused = xfusion.fuse(x, y, progress=False)
wall = time.perf_counter() - t0
for job in list(sk._jobs.values()):  # a compile still running at the end is part of the process's cost
    if job is not None:
        job.join()
print(json.dumps({"wall": wall, "wall_with_compile_end": time.perf_counter() - t0,
                  "compiled": sorted(sk._ready), "work": {k: float(v) for k, v in sk._work.items()},
                  "shape": list(fused.flux.shape)}))
"""


def run_one(what, mode):
    env = dict(os.environ)
    if mode == "numpy":
        env["XFUSION_NUMBA"] = "0"
    out = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(what), mode], env=env, capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--toy", default=None, help="a toy of xfusion.toy instead of suite scenes")
    ap.add_argument("--split", choices=("tune", "heldout"), default="heldout")
    ap.add_argument("--n", type=int, default=96, help="suite size the indices refer to")
    ap.add_argument("--indices", default=None, help="suite scenes, e.g. 83 or 3,10")
    ap.add_argument("--size", choices=("small", "default"), default="default")
    ap.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, of {', '.join(MODES)}")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--json", default=None, help="append one JSON line per run to this file (this script's own)")
    args = ap.parse_args()
    modes = [m.strip() for m in args.modes.split(",")]
    if any(m not in MODES for m in modes):
        ap.error(f"--modes: each of {', '.join(MODES)}; got {args.modes!r}")
    if not args.toy and args.indices is None:
        ap.error("give --toy NAME or --indices")
    check_output(ap, args.json, SCRIPT)
    if args.toy:
        targets = [{"toy": args.toy}]
    else:
        targets = [{"split": args.split, "n": args.n, "index": i, "size": args.size}
                   for i in parse_indices(ap, args.indices, args.n)]
    walls = {}
    for what in targets:
        label = what.get("toy") or f"{what['split']}[{what['index']}] {what['size']}"
        for rep in range(args.repeat):
            for mode in modes:
                rec = run_one(what, mode)
                rec.update(what=what, mode=mode, repeat=rep)
                walls.setdefault((label, mode), []).append(rec["wall"])
                print(f"{label:24s} {mode:6s} fuse {rec['wall']:6.1f} s (to the end of compiling "
                      f"{rec['wall_with_compile_end']:6.1f} s) compiled {rec['compiled']} "
                      f"NumPy-pass elements {rec['work']}", flush=True)
                if args.json:
                    append_record(args.json, rec, SCRIPT)
    for (label, mode), w in walls.items():
        print(f"median {label:24s} {mode:6s} {statistics.median(w):6.1f} s over {len(w)} "
              f"({', '.join(f'{v:.1f}' for v in w)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
