"""Spatial PSF operators on a Dask cube: map_overlap halos on pixel blocks vs a rechunk to energy slices.

The fused cube lives in pixel blocks that hold the whole energy axis (best for the spectral
operators). A spatial operator can either (A) run on those blocks with a halo of the PSF
radius (``map_overlap``), or (B) rechunk the cube to full-field energy slices, convolve, and
rechunk back.

Default mode: the wall time of one forward convolution of the whole cube for both, on the
threaded scheduler and on a 2-worker LocalCluster.

``--full``: whole ``wavelet2d1d`` iterations of ``xfusion.fuse`` (EM step with the PSF forward
and adjoint, starlet prox, thresholds) from Zarr, with ``layout="halo"`` and
``layout="rechunk"``, on the threaded scheduler and on LocalClusters of 1 and 2 workers:
seconds per iteration, peak RSS of all processes, and the difference between the two results.

    python benchmarks/layouts.py --size 256 --channels 1024 --block 64 --radius 8
    python benchmarks/layouts.py --full --size 256 --channels 1024 --iters 3
"""
import argparse
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import dask
import dask.array as da
import numpy as np
from distributed import Client, LocalCluster

import xfusion
from xfusion.operators.psf import Convolve2D


def psf(radius):
    r = np.arange(-radius, radius + 1)
    g = np.exp(-0.5 * (r[:, None] ** 2 + r[None, :] ** 2) / (radius / 3) ** 2)
    return g / g.sum()


def halo(z, k, r):
    def block(b):
        return Convolve2D(k, b.shape[:2], workers=1).forward(b)

    return z.map_overlap(block, depth=(r, r, 0), boundary=0, trim=True, dtype=z.dtype, meta=np.empty((0, 0, 0), z.dtype))


def rechunked(z, k, slab):
    M, N, L = z.shape
    s = z.rechunk((M, N, slab))
    c = s.map_blocks(lambda b: Convolve2D(k, b.shape[:2], workers=1).forward(b), dtype=z.dtype,
                     meta=np.empty((0, 0, 0), z.dtype))
    return c.rechunk(z.chunks)


def timeit(f, n=3):
    best = np.inf
    for _ in range(n):
        t = time.perf_counter()
        f()
        best = min(best, time.perf_counter() - t)
    return best


def full(a):
    """Whole fuse() iterations in both layouts (field of benchmarks/scale.py, PSF sigma 2 px, radius 8)."""
    from scale import PeakRSS, make_field  # benchmarks/scale.py, beside this file

    root = Path(a.dir or tempfile.mkdtemp(prefix="xfusion-layouts-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        t = make_field(root, a.size, a.channels, a.factor, a.efactor)
        print(f"field {a.size}x{a.size}x{a.channels} (factor {a.factor}, energy factor {a.efactor}) written in {t:.1f} s")
        chunks = (a.block, a.block) if a.block else None
        results, table = {}, []
        for sched in a.schedulers.split(","):
            for layout in ("halo", "rechunk"):
                cl = client = None
                if sched != "threads":
                    cl = LocalCluster(n_workers=int(sched), threads_per_worker=1, memory_limit=a.memory_limit,
                                      dashboard_address=None, silence_logs=40)
                    client = Client(cl)
                try:
                    x = xfusion.io.zarr.open(root / "x.zarr", chunks={})
                    y = xfusion.io.zarr.open(root / "y.zarr", chunks={})
                    with PeakRSS() as mem:
                        r = xfusion.fuse(x, y, regularization="wavelet2d1d", max_iter=a.iters, tol=None,
                                         client=client, progress=False, layout=layout, chunks=chunks)
                        f = r.flux.data
                        f = client.compute(f).result() if client is not None else f.compute()
                finally:
                    if client is not None:
                        client.close()
                        cl.close()
                spi = r.attrs["seconds_per_iteration"]
                label = "threads" if sched == "threads" else f"LocalCluster {sched} worker(s)"
                table.append((label, layout, spi, mem.peak / 2 ** 30))
                print(f"{label:24s} {layout:8s} {spi:7.2f} s/it  peak RSS {mem.peak / 2**30:5.2f} GiB", flush=True)
                if layout == "halo":
                    results[sched] = f
                else:
                    ref = results.pop(sched)
                    print(f"{'':24s} max |rechunk - halo| / max|halo| = {np.abs(f - ref).max() / np.abs(ref).max():.2e}")
        print("\nsummary (s/it, halo vs rechunk):")
        for i in range(0, len(table), 2):
            (lab, _, th, mh), (_, _, tr, mr) = table[i], table[i + 1]
            print(f"  {lab:24s} halo {th:.2f} ({mh:.2f} GiB)  rechunk {tr:.2f} ({mr:.2f} GiB) -> "
                  f"{'halo' if th < tr else 'rechunk'} faster by {max(th, tr) / min(th, tr):.2f}x")
    finally:
        if a.dir is None:
            shutil.rmtree(root, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--channels", type=int, default=1024)
    ap.add_argument("--block", type=int, default=None,
                    help="pixel block (default: 64 for the convolution, the automatic policy with --full)")
    ap.add_argument("--radius", type=int, default=8)
    ap.add_argument("--full", action="store_true", help="whole fuse() iterations instead of one convolution")
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--factor", type=int, default=4)
    ap.add_argument("--efactor", type=int, default=32)
    ap.add_argument("--schedulers", default="threads,1,2", help="'threads' and/or numbers of LocalCluster workers")
    ap.add_argument("--memory-limit", default="4GB", help="per worker")
    ap.add_argument("--dir", default=None)
    a = ap.parse_args()
    print(f"machine: {platform.machine()} cpus={os.cpu_count()} dask={dask.__version__}")
    if a.full:
        return full(a)
    a.block = a.block or 64
    M, L, b, r = a.size, a.channels, a.block, a.radius
    slab = max(1, int(64 * 2 ** 20 / (M * M * 4)))
    z = da.random.default_rng(0).random((M, M, L), chunks=(b, b, L), dtype=np.float32)
    k = psf(r)
    print(f"cube {M}x{M}x{L} float32 ({z.nbytes / 2**30:.2f} GiB), pixel blocks {b}x{b}x{L}, PSF radius {r}, "
          f"energy slabs of {slab} channels for the rechunk layout")
    for label, ctx in (("threads", None), ("LocalCluster 2 workers", 2)):
        if ctx is None:
            zp = z.persist()
            ta = timeit(lambda: halo(zp, k, r).sum().compute())
            tb = timeit(lambda: rechunked(zp, k, slab).sum().compute())
        else:
            with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None, silence_logs=40) as cl, \
                    Client(cl) as client:
                zp = client.persist(z)
                ta = timeit(lambda: client.compute(halo(zp, k, r).sum()).result())
                tb = timeit(lambda: client.compute(rechunked(zp, k, slab).sum()).result())
        print(f"{label}: map_overlap halo {ta:.2f} s, rechunk to slabs and back {tb:.2f} s -> "
              f"{'halo' if ta < tb else 'rechunk'} faster by {max(ta, tb) / min(ta, tb):.2f}x")


if __name__ == "__main__":
    main()
