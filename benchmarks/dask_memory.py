"""Memory estimates of the Dask path against measured peaks (session 30).

Two estimates decide what a Dask-backed :func:`xfusion.fuse` does:

* **in-memory tuning** (:func:`xfusion.tuning.in_memory_copies`, estimate :func:`xfusion.tuning._need`): whether
  Poisson thinning of ``"auto"`` settings runs on in-memory copies in the calling process (at most
  ``xfusion.tuning.IN_MEMORY_BYTES``), on a central sub-field, or not at all (the fallback rules). Measured: the
  calling process's peak resident memory (Linux ``VmHWM``, reset through ``/proc/self/clear_refs``) above its
  resident memory before, over ``in_memory_copies`` and :func:`xfusion.tuning.resolve_auto` as ``fuse`` runs them.
* **task memory** (``xfusion.fuse._auto_chunks``: the registry's chunk-sized ``copies`` per task against
  :func:`xfusion.parallel.task_memory`, half the memory per worker thread): the pixel block of the fit. Measured: the
  worker's peak resident memory during a fixed-setting fit above its resident memory before, against ``copies`` x
  the haloed block in float32; "cold" on a fresh worker (imports, Numba compiling), "warm" the same fit again.

Each size runs in a fresh process (the toy ``gaussian_rebin`` scaled: X n x n pixels, L/40 channels; Y n/3 x n/3
pixels, L channels) on a ``LocalCluster`` of one worker with one thread (memory_limit 3GB); the tuning is
``regularization="auto"`` in full (``--quick``: 3 k candidates, 4-8 iterations each: the same arrays, a shorter run),
the fit ``wavelet2d1d`` with fixed settings, 3 iterations.

    python benchmarks/dask_memory.py                                # 48x48x400, 96x96x800, 126x126x1200
    python benchmarks/dask_memory.py --sizes 96x96x800 --part fit

Measured (session 30, 2-core VM shared with other jobs, load 4-6). In-memory tuning, MiB (estimate / peak):

=============  ============  ====================  =================================
fused voxels   peak          before (no fixed      after (+ ``OVERHEAD_BYTES``
                             part)                 = 72 MiB)
=============  ============  ====================  =================================
18x18x80       71            2 (0.03)              74 (1.04)
48x48x400      139           86 (0.62)             158 (1.14)
96x96x800      711           687 (0.97)            759 (1.07)
126x126x1200   1425 (quick)  1774 (1.24)           1846 (1.30)
=============  ============  ====================  =================================

(With ``--quick``: 96x96x800 700 MiB, 48x48x400 140 MiB. Run again after the fix, in full: 48x48x400 146 MiB
against 158 (1.08), 96x96x800 708 against 759 (1.07).) Task memory of the fit (unchanged), MiB: 48x48x400 one
48x48 block, estimate 63, worker peak cold 242 / warm 83 (0.26 / 0.77); 96x96x800 one 96x96 block, 506, 716 / 555
(0.71 / 0.91); 126x126x1200 63x63 blocks with 12-pixel halos, 624, 778 / 612 (0.80 / 1.02). The cold excess (about
160 MiB: xfusion's imports and the starlet's Numba compiling on the worker) and the persisted data are what the other
half of the worker's memory per thread (:func:`xfusion.parallel.task_memory`) is left for.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

MIB = 2 ** 20


def _status(key):
    """A ``/proc/self/status`` field in bytes (VmRSS, VmHWM)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def _reset_peak():
    """Reset this process's peak resident memory (VmHWM) to its current resident memory; return the latter."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _status("VmRSS")


def _peak():
    return _status("VmHWM")


def _toy(n, L):
    from xfusion import toy

    return toy.make("gaussian_rebin", seed=0, x={"shape": [n, n], "n_channels": max(L // 40, 4)},
                    y={"n_channels": L})[:2]


def one(size, part, workers, threads, memory_limit, iters, quick):
    """Measure one size in this process; print one JSON line."""
    import dask
    from distributed import Client, LocalCluster

    import importlib

    import numpy as np

    import xfusion
    from xfusion import parallel, registry, tuning

    fuse_mod = importlib.import_module("xfusion.fuse")  # the module (xfusion.fuse is the function)

    n, _, L = (int(v) for v in size.split("x"))
    x, y = _toy(n, L)
    out = {"size": size}
    with tempfile.TemporaryDirectory() as tmp, dask.config.set({"distributed.worker.memory.spill": False}):
        xfusion.io.zarr.write(x, os.path.join(tmp, "x.zarr"), chunks={"x": n // 2, "y": n // 2})
        xfusion.io.zarr.write(y, os.path.join(tmp, "y.zarr"))
        xl = xfusion.io.zarr.open(os.path.join(tmp, "x.zarr"), chunks={})
        yl = xfusion.io.zarr.open(os.path.join(tmp, "y.zarr"), chunks={})
        with LocalCluster(n_workers=workers, threads_per_worker=threads, memory_limit=memory_limit,
                          dashboard_address=None) as cluster, Client(cluster) as client:
            if part in ("tune", "both"):
                out["tune_estimate"] = tuning._need([xl, yl])[0]
                if quick:  # fewer candidates and iterations: the same arrays, a shorter run
                    tuning.CANDIDATE_ITER, tuning.RL_MAX_ITER, tuning.ZERO_MAX_ITER = 4, 8, 8
                    tuning.THRESHOLD_MAX_ITER, tuning.K_LADDER = 8, (0.5, 1.0, 2.0)
                base = _reset_peak()
                t0 = time.perf_counter()
                # as fuse(regularization="auto") on Dask-backed data: in-memory copies, thinning in this process
                copies, note = tuning.in_memory_copies([xl, yl], client)
                reg, _, _ = tuning.resolve_auto(*copies)
                out["tune_seconds"] = time.perf_counter() - t0
                out["tune_peak"] = _peak() - base
                out["tune_base"] = base
                out["tune_choice"] = reg
                del copies
            if part in ("fit", "both"):
                params = {"k": 1.0, "n_scales_1d": 5, "null_space": "zero"}
                _, full, _ = fuse_mod._resolve("wavelet2d1d", None, params)
                grid = xfusion.grid.fusion_grid(xl, yl)
                shape = (grid.sizes["x"], grid.sizes["y"], grid.sizes["energy"])
                bx, by = fuse_mod._auto_chunks(grid, shape, np.dtype("float32"), "wavelet2d1d",
                                               full, client)
                spec = registry.regularization("wavelet2d1d")
                halo = max(spec.halo(full), max(grid["psf"].sizes["psf_x"], grid["psf"].sizes["psf_y"]) // 2) \
                    if "psf" in grid else spec.halo(full)
                hx, hy = (min(halo, shape[0] - bx), min(halo, shape[1] - by))
                task = spec.copies(full) * 4 * (bx + 2 * hx) * (by + 2 * hy) * shape[2]
                out.update(block=[bx, by], halo=halo, copies=spec.copies(full), task_estimate=task,
                           task_memory=parallel.task_memory(client))
                for run in ("cold", "warm"):  # a fresh worker (imports, Numba compiling), then the same fit again
                    before = client.run(_reset_peak)
                    t0 = time.perf_counter()
                    r = xfusion.fuse(xl, yl, client=client, progress=False, regularization="wavelet2d1d",
                                     max_iter=iters, **params)
                    client.compute(r.flux).result()
                    del r
                    out[f"fit_seconds_{run}"] = time.perf_counter() - t0
                    peaks = client.run(_peak)
                    out[f"fit_peak_{run}"] = max(peaks[a] - before[a] for a in peaks)
                    out[f"fit_base_{run}"] = max(before.values())
    print(json.dumps(out), flush=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="48x48x400,96x96x800,126x126x1200", help="fused sizes NxNxL, comma-separated")
    p.add_argument("--part", choices=("tune", "fit", "both"), default="both")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--memory-limit", default="3GB", help="per worker (LocalCluster)")
    p.add_argument("--iters", type=int, default=3, help="iterations of the fixed-setting fit")
    p.add_argument("--quick", action="store_true", help="tuning with 3 k candidates and at most 4-8 iterations each "
                   "(the same arrays; for the large sizes)")
    p.add_argument("--one", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.one:
        return one(a.one, a.part, a.workers, a.threads, a.memory_limit, a.iters, a.quick)
    import psutil

    import xfusion

    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores, "
          f"{psutil.virtual_memory().total / 2 ** 30:.1f} GiB RAM, Python {platform.python_version()}, "
          f"xfusion {xfusion.__version__}; LocalCluster {a.workers} worker(s) x {a.threads} thread(s), "
          f"memory_limit {a.memory_limit}", flush=True)
    for size in a.sizes.split(","):
        cmd = [sys.executable, __file__, "--one", size, "--part", a.part, "--workers", str(a.workers), "--threads",
               str(a.threads), "--memory-limit", a.memory_limit, "--iters", str(a.iters)] + ["--quick"] * a.quick
        res = subprocess.run(cmd, capture_output=True, text=True)
        lines = [ln for ln in res.stdout.splitlines() if ln.startswith("{")]
        if res.returncode or not lines:
            print(f"{size}: failed ({res.returncode})\n{res.stderr[-2000:]}", flush=True)
            continue
        r = json.loads(lines[-1])
        if "tune_estimate" in r:
            print(f"{size} tuning in memory: estimate {r['tune_estimate'] / MIB:.0f} MiB, measured peak "
                  f"{r['tune_peak'] / MIB:.0f} MiB above {r['tune_base'] / MIB:.0f} MiB at rest "
                  f"(estimate / measured {r['tune_estimate'] / max(r['tune_peak'], 1):.2f}), "
                  f"{r['tune_seconds']:.0f} s, chose {r['tune_choice']}", flush=True)
        if "task_estimate" in r:
            print(f"{size} fit on Dask: block {r['block'][0]}x{r['block'][1]} (halo {r['halo']}, {r['copies']} "
                  f"copies; task memory {r['task_memory'] / MIB:.0f} MiB): task estimate "
                  f"{r['task_estimate'] / MIB:.0f} MiB; worker peak above its resident memory before the fit: "
                  + ", ".join(f"{run} {r[f'fit_peak_{run}'] / MIB:.0f} MiB above {r[f'fit_base_{run}'] / MIB:.0f} "
                              f"(estimate / measured {r['task_estimate'] / max(r[f'fit_peak_{run}'], 1):.2f}, "
                              f"{r[f'fit_seconds_{run}']:.0f} s)" for run in ("cold", "warm")), flush=True)


if __name__ == "__main__":
    main()
