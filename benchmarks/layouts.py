"""Spatial PSF convolution on a Dask cube: map_overlap halos on pixel blocks vs a rechunk to energy slices.

The fused cube lives in pixel blocks that hold the whole energy axis (best for the spectral
operators). A spatial operator can either (A) run on those blocks with a halo of the PSF
radius (``map_overlap``), or (B) rechunk the cube to full-field energy slices, convolve, and
rechunk back. This prints the wall time of one forward convolution of the whole cube for
both, on the threaded scheduler and on a 2-worker LocalCluster.

    python benchmarks/layouts.py --size 256 --channels 1024 --block 64 --radius 8
"""
import argparse
import os
import platform
import time

import dask
import dask.array as da
import numpy as np
from distributed import Client, LocalCluster

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


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--channels", type=int, default=1024)
    ap.add_argument("--block", type=int, default=64)
    ap.add_argument("--radius", type=int, default=8)
    a = ap.parse_args()
    print(f"machine: {platform.machine()} cpus={os.cpu_count()} dask={dask.__version__}")
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
