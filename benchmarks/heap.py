"""What keeping freed memory in the process (``xfusion.solvers.heap``) saves, on suite scenes.

Each (scene, mode, fit) runs in a fresh Python process, the environment variable ``XFUSION_RETAIN_MEMORY`` set to
1 (the default: freed memory kept while xfusion fits) or 0 (glibc's own rule). Printed and written (JSON lines)
per run: wall seconds, user and kernel CPU seconds, minor page faults, peak resident memory, iterations and the
md5 of the delivered cube (the two modes must give the same cube: the setting changes no arithmetic).
``--fit dask``: the fixed fit for 20 iterations on a fresh 2-worker LocalCluster, the workers keeping freed memory
(``heap.retained(client=client)``) or not; CPU, faults and peak memory are the workers'.

    python benchmarks/heap.py                          # point_sources/500018 (held out, 45x45x2400), fixed fit
    python benchmarks/heap.py --fit default --indices 18,23 --json heap.jsonl
    python benchmarks/heap.py --fit dask
"""
import argparse
import json
import os
import subprocess
import sys

from bench_cli import append_record, check_output, parse_indices  # benchmarks/bench_cli.py

SCRIPT = "heap.py"

CHILD = r"""
import hashlib, json, os, resource, sys, time
import numpy as np
import xfusion
from xfusion import scenes
split, n, index, size, fit = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
spec = scenes.suite(split, n)[index]
x, y, _ = scenes.from_spec(spec, size=size)
kw = {} if fit == "default" else {"regularization": "wavelet2d1d", "k": 1.0, "null_space": "zero"}
def usage():
    u = resource.getrusage(resource.RUSAGE_SELF)
    return u.ru_utime, u.ru_stime, u.ru_minflt, u.ru_maxrss
if fit == "dask":  # 20 iterations on a fresh 2-worker LocalCluster; the workers keep freed memory when asked
    import contextlib
    from distributed import Client, LocalCluster
    from xfusion.solvers import heap
    kw.update(max_iter=20, tol=None)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cl, \
            Client(cl) as client:
        keep = os.environ["XFUSION_RETAIN_MEMORY"] == "1"
        u0, w0 = client.run(usage), time.perf_counter()
        with heap.retained(client=client) if keep else contextlib.nullcontext():
            r = xfusion.fuse(x, y, progress=False, client=client, **kw)
            flux = np.ascontiguousarray(r["flux"].values)
        wall, u1 = time.perf_counter() - w0, client.run(usage)
    d = [[b - a for a, b in zip(u0[w][:3], u1[w][:3])] + [u1[w][3]] for w in u0]
    print(json.dumps({"name": spec["name"], "index": index, "fit": fit, "wall": round(wall, 2),
                      "loop_s": round(float(r.attrs["loop_elapsed_s"]), 2),
                      "user": round(sum(v[0] for v in d), 2), "sys": round(sum(v[1] for v in d), 2),
                      "minflt": sum(v[2] for v in d), "maxrss_mb": round(max(v[3] for v in d) / 1024),
                      "iterations": int(r.attrs["iterations"]), "md5": hashlib.md5(flux.tobytes()).hexdigest()}))
    raise SystemExit
r0, w0 = usage(), time.perf_counter()
r = xfusion.fuse(x, y, progress=False, **kw)
wall, r1 = time.perf_counter() - w0, usage()
print(json.dumps({"name": spec["name"], "index": index, "fit": fit, "wall": round(wall, 2),
                  "user": round(r1[0] - r0[0], 2), "sys": round(r1[1] - r0[1], 2),
                  "minflt": r1[2] - r0[2], "maxrss_mb": round(r1[3] / 1024),
                  "iterations": int(r.attrs["iterations"]),
                  "md5": hashlib.md5(np.ascontiguousarray(r["flux"].values).tobytes()).hexdigest()}))
"""


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--split", default="heldout", choices=("tune", "heldout"))
    ap.add_argument("--n", type=int, default=24)
    ap.add_argument("--indices", default="18")
    ap.add_argument("--size", default="default")
    ap.add_argument("--fit", default="fixed", choices=("fixed", "default", "dask"))
    ap.add_argument("--json", default=None, help="append one JSON line per run (a file this script did not write is "
                    "refused before computing)")
    args = ap.parse_args(argv)
    check_output(ap, args.json, SCRIPT)
    for index in parse_indices(ap, args.indices, args.n):
        runs = {}
        for mode in ("0", "1"):
            env = {**os.environ, "XFUSION_RETAIN_MEMORY": mode}
            out = subprocess.run([sys.executable, "-c", CHILD, args.split, str(args.n), str(index), args.size,
                                  args.fit], env=env, capture_output=True, text=True, check=True)
            row = {**json.loads(out.stdout.strip().splitlines()[-1]), "retain": mode == "1",
                   "load_after": round(os.getloadavg()[0], 2)}
            runs[mode] = row
            print(f"{row['name']:<45} {args.fit:<7} retain={mode}  wall {row['wall']:6.1f} s  user {row['user']:6.1f}"
                  f"  sys {row['sys']:5.1f}  faults {row['minflt']:>8}  peak {row['maxrss_mb']:5d} MB"
                  f"  {row['iterations']} it  md5 {row['md5'][:8]}", flush=True)
            if args.json:
                append_record(args.json, row, SCRIPT)
        same = runs["0"]["md5"] == runs["1"]["md5"]
        print(f"  wall saved {100 * (1 - runs['1']['wall'] / runs['0']['wall']):.0f}%, same cube: {same}", flush=True)
        if not same:
            raise SystemExit("the two modes gave different cubes")


if __name__ == "__main__":
    main()
