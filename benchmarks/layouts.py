"""Spatial PSF operators on a Dask cube: map_overlap halos on pixel blocks vs a rechunk to energy slices.

The fused cube lives in pixel blocks that hold the whole energy axis (best for the spectral
operators). A spatial operator can either (A) run on those blocks with a halo of the PSF
radius (``map_overlap``), or (B) rechunk the cube to full-field energy slices, convolve, and
rechunk back.

Default mode: the wall time of one forward convolution of the whole cube for both, on the
threaded scheduler and on a 2-worker LocalCluster.

``--full``: whole ``wavelet2d1d`` iterations of ``xfusion.fuse`` (EM step with the PSF forward
and adjoint, starlet prox, thresholds) from Zarr, on the threaded scheduler and on LocalClusters
of 1 and 2 workers: seconds per iteration and peak RSS of all processes. Only the halo layout is
left in the package: the generic block backend (xfusion.backends.blockwise) runs every operator
with its halo and merges blocks smaller than a halo, so the slab layout (measured at most 20%
faster on threads, slower on clusters, 40-50% more peak memory; it had to know each operator's
channel ranges) was dropped.

``--toy NAME``: the EM + 2D-1D prox solver on a toy (e.g. gaussian_rebin) in memory
(``EMProx``), on Dask threads and on a 2-worker LocalCluster (``DaskEMProx``, blocks of
``--block`` pixels, default 15): wall and CPU seconds per iteration (CPU of this process and its
children, the cluster's workers included: comparable between runs on a loaded machine).

    python benchmarks/layouts.py --size 256 --channels 1024 --block 64 --radius 8
    python benchmarks/layouts.py --full --size 256 --channels 1024 --iters 3
    OPENBLAS_NUM_THREADS=1 python benchmarks/layouts.py --toy gaussian_rebin --iters 5
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
        for sched in a.schedulers.split(","):
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
                                     client=client, progress=False, chunks=chunks)
            finally:
                if client is not None:
                    client.close()
                    cl.close()
            label = "threads" if sched == "threads" else f"LocalCluster {sched} worker(s)"
            print(f"{label:24s} {r.attrs['seconds_per_iteration']:7.2f} s/it  peak RSS {mem.peak / 2**30:5.2f} GiB  "
                  f"blocks {r.flux.data.chunks[0][0]} px", flush=True)
    finally:
        if a.dir is None:
            shutil.rmtree(root, ignore_errors=True)


def cpu_seconds():
    import psutil

    p = psutil.Process()
    tot = sum(p.cpu_times()[:2])
    for c in p.children(recursive=True):
        try:
            tot += sum(c.cpu_times()[:2])
        except psutil.Error:
            pass
    return tot


def toy(a):
    """Per-iteration wall and CPU time of EMProx (memory) and DaskEMProx (threads, 2 workers) on a toy."""
    from xfusion.grid import SPATIAL, SPECTRAL, assign_roles, fusion_grid
    from xfusion.likelihood import PoissonLikelihood, PoissonTerm
    from xfusion.operators.model import build_model
    from xfusion.parallel_em import DaskEMProx
    from xfusion.regularizers.sparsity import Wavelet2D1D
    from xfusion.solvers.em import EMProx

    x, y, _ = xfusion.toy.make(a.toy)
    grid = fusion_grid(x, y)
    xo, yo, _ = assign_roles(x, y)
    mx, my = build_model(grid, xo, SPATIAL), build_model(grid, yo, SPECTRAL)
    scale = float(np.mean(mx.weights))
    mx, my = mx.scaled(scale), my.scaled(scale)
    xd, yd = xo["counts"].values.astype(np.float32), yo["counts"].values.astype(np.float32)
    level = float(xd.sum()) / float(mx.forward(np.ones(mx.fused_shape, np.float32)).sum())
    v, b = grid.attrs["spatial_factor"], a.block or 15

    def timed(label, solver, z0):
        st = solver.step(solver.init(z0))
        t, c = time.perf_counter(), cpu_seconds()
        for _ in range(a.iters):
            st = solver.step(st)
        print(f"{label:28s} {(time.perf_counter() - t) / a.iters:7.3f} s/it  {(cpu_seconds() - c) / a.iters:7.3f} "
              f"cpu-s/it", flush=True)

    terms = [PoissonTerm(mx, xd, None, np.float32), PoissonTerm(my, yd, None, np.float32)]
    timed("in memory (EMProx)", EMProx(PoissonLikelihood(terms), Wavelet2D1D()), np.full(mx.fused_shape, level, np.float32))
    xc, yc = da.from_array(xd, chunks=(b, b, -1)), da.from_array(yd, chunks=(b // v, b // v, -1))
    timed(f"Dask threads, {b}-px blocks", DaskEMProx(xc, yc, mx, my, None, v, Wavelet2D1D()), level)
    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None, silence_logs=40) as cl, \
            Client(cl) as client:
        timed("LocalCluster 2 workers", DaskEMProx(xc, yc, mx, my, None, v, Wavelet2D1D(), client), level)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--channels", type=int, default=1024)
    ap.add_argument("--block", type=int, default=None,
                    help="pixel block (default: 64 for the convolution, the automatic policy with --full)")
    ap.add_argument("--radius", type=int, default=8)
    ap.add_argument("--full", action="store_true", help="whole fuse() iterations instead of one convolution")
    ap.add_argument("--toy", default=None, help="EM + prox per iteration on this toy: memory, threads, 2 workers")
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--factor", type=int, default=4)
    ap.add_argument("--efactor", type=int, default=32)
    ap.add_argument("--schedulers", default="threads,1,2", help="'threads' and/or numbers of LocalCluster workers")
    ap.add_argument("--memory-limit", default="4GB", help="per worker")
    ap.add_argument("--dir", default=None)
    a = ap.parse_args()
    print(f"machine: {platform.machine()} cpus={os.cpu_count()} dask={dask.__version__}")
    if a.toy:
        return toy(a)
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
