"""Out-of-core / distributed fusion of a large SNR-like field written straight to Zarr.

Writes the two observations chunk by chunk (never holding a cube in memory), fuses them from
Zarr for a fixed number of iterations on a dask.distributed LocalCluster, and reports: peak
resident memory of all processes (client + workers + nannies, sampled every 0.2 s), seconds
per iteration, voxel-iterations per second (fused voxels x iterations / loop time) next to the
in-memory path on gaussian_rebin, the speed-up from 1 to 2 workers, and (with --write) the
time to write the fused cube to Zarr chunk by chunk.

    python benchmarks/scale.py --reg lowrank_sobolev --size 512 --channels 8192 --factor 4 --iters 10
    python benchmarks/scale.py --reg lowrank_sobolev --size 128 --channels 2048   # quick look
"""
import argparse
import os
import platform
import shutil
import tempfile
import threading
import time
from pathlib import Path

import dask.array as da
import numpy as np
import psutil
import xarray as xr
from distributed import Client, LocalCluster
from scipy import ndimage

import xfusion
from xfusion.operators.response import kernel_matrix


class PeakRSS:
    """Peak of the summed RSS of this process and all its descendants."""

    def __init__(self):
        self.peak, self._stop = 0, threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _total(self):
        p = psutil.Process()
        procs = [p] + p.children(recursive=True)
        tot = 0
        for q in procs:
            try:
                tot += q.memory_info().rss
            except psutil.Error:
                pass
        return tot

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._total())
            time.sleep(0.2)

    def __enter__(self):
        self.peak = self._total()
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()


def make_field(root, size, channels, factor, efactor, seed=0, n_comp=6):
    """SNR-like field: n_comp spatial maps (shells, clumps) x spectra (continuum + shifted lines)."""
    rng = np.random.default_rng(seed)
    M = N = size
    px = 10.0
    e = np.linspace(0.5, 0.5 + channels * 0.0005, channels + 1)
    ec = 0.5 * (e[1:] + e[:-1])
    lines = rng.uniform(e[0] + 0.05, e[-1] - 0.05, 12)
    spectra = []
    for k in range(n_comp):
        sp = np.exp(-ec / rng.uniform(0.5, 2.0)) * 0.02
        shift = 1 + rng.uniform(-0.01, 0.01)
        for el in lines:
            sp += rng.uniform(0.0, 1.0) * np.exp(-0.5 * ((ec - el * shift) / 0.002) ** 2) * 0.01
        spectra.append(sp)
    S = np.array(spectra)  # (k, L) expected counts per fused voxel at unit area x exposure
    yy, xx = np.meshgrid(np.arange(N) - N / 2, np.arange(M) - N / 2)
    r = np.hypot(xx, yy)
    maps = []
    for k in range(n_comp):
        R = size * rng.uniform(0.25, 0.42)
        shell = np.exp(-0.5 * ((r - R) / (size * 0.03)) ** 2)
        clump = np.exp(0.7 * ndimage.gaussian_filter(rng.standard_normal((M, N)), size / 64))
        maps.append(shell * clump)
    A = np.stack(maps, axis=-1).astype(np.float64)  # (M, N, k)
    A /= A.mean()
    # X: Gaussian response (sigma 40 eV) folded with the energy rebinning; Y: Gaussian PSF sigma 2 fine px
    kern = np.exp(-0.5 * (np.arange(-400, 401) * 0.0005 / 0.040) ** 2)
    R_x = kernel_matrix(kern / kern.sum(), 0.0005, e, e[::efactor])
    SX = (S * 1.0) @ R_x  # (k, l)
    Ay = ndimage.gaussian_filter(A, (2, 2, 0), mode="constant")
    Ay = Ay.reshape(M // factor, factor, N // factor, factor, n_comp).sum(axis=(1, 3))  # (m, n, k)
    b = xfusion.parallel.pixel_block((M, N, channels), 4, factor)

    def draw(amap, spec, chunks):
        am = da.from_array(amap.astype(np.float32), chunks=chunks + (n_comp,))

        def block(a, block_info=None):
            loc = block_info[0]["chunk-location"]
            g = np.random.default_rng([seed, loc[0], loc[1], spec.shape[1]])
            return g.poisson(np.maximum(a @ spec.astype(np.float32), 0)).astype(np.float32)

        return da.map_blocks(block, am, dtype=np.float32, chunks=(am.chunks[0], am.chunks[1], (spec.shape[1],)))

    xc = draw(A, SX, b)
    yc = draw(Ay, S, (b[0] // factor, b[1] // factor))
    psf = np.exp(-0.5 * (np.arange(-8, 9)[:, None] ** 2 + np.arange(-8, 9)[None, :] ** 2) / 4.0)
    x_obs = xfusion.observation(xr.DataArray(xc, dims=("x", "y", "energy")), energy_edges=e[::efactor], pixel_size=px,
                                exposure=1.0, response=kern / kern.sum(), response_spacing=0.0005, name="X (big)")
    y_obs = xfusion.observation(xr.DataArray(yc, dims=("x", "y", "energy")), energy_edges=e, pixel_size=px * factor,
                                exposure=1.0, psf=psf / psf.sum(), psf_pixel_size=px, name="Y (big)")
    t0 = time.perf_counter()
    xfusion.io.zarr.write(x_obs, root / "x.zarr")
    xfusion.io.zarr.write(y_obs, root / "y.zarr")
    return time.perf_counter() - t0


def in_memory_rate(reg):
    x, y, _ = xfusion.toy.make("gaussian_rebin")
    r = xfusion.fuse(x, y, regularization=reg, progress=False, max_iter=20, tol=None)
    return r.flux.size * r.attrs["iterations"] / r.attrs["loop_elapsed_s"], r.attrs["seconds_per_iteration"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reg", default="lowrank_sobolev")
    ap.add_argument("--size", type=int, default=512, help="fused pixels a side")
    ap.add_argument("--channels", type=int, default=8192, help="fused channels")
    ap.add_argument("--factor", type=int, default=4, help="spatial rebinning factor")
    ap.add_argument("--efactor", type=int, default=32, help="spectral rebinning factor")
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--memory-limit", default="3GB", help="per worker")
    ap.add_argument("--write", action="store_true", help="also write the fused cube to Zarr")
    ap.add_argument("--dir", default=None, help="scratch folder (default: a temporary one)")
    a = ap.parse_args()
    print(f"machine: {platform.machine()} cpus={os.cpu_count()} mem={psutil.virtual_memory().total / 2**30:.0f} GiB "
          f"python={platform.python_version()}")
    root = Path(a.dir or tempfile.mkdtemp(prefix="xfusion-scale-"))
    root.mkdir(parents=True, exist_ok=True)
    vox = a.size * a.size * a.channels
    print(f"field: fused {a.size}x{a.size}x{a.channels} = {vox:.3g} voxels ({vox * 4 / 2**30:.1f} GiB per float32 copy)")
    try:
        with PeakRSS() as mem:
            t_gen = make_field(root, a.size, a.channels, a.factor, a.efactor)
        print(f"wrote the two observations to Zarr in {t_gen:.1f} s, peak RSS {mem.peak / 2**30:.2f} GiB")
        rate_mem, spi_mem = in_memory_rate(a.reg)
        print(f"in-memory path on gaussian_rebin ({a.reg}): {spi_mem:.4f} s/it, {rate_mem:.3g} voxel-it/s")
        per = {}
        for nw in [int(w) for w in a.workers.split(",")]:
            with LocalCluster(n_workers=nw, threads_per_worker=1, memory_limit=a.memory_limit, dashboard_address=None,
                              silence_logs=40) as cl, Client(cl) as client:
                x = xfusion.io.zarr.open(root / "x.zarr", chunks={})
                y = xfusion.io.zarr.open(root / "y.zarr", chunks={})
                with PeakRSS() as mem:
                    t0 = time.perf_counter()
                    r = xfusion.fuse(x, y, regularization=a.reg, max_iter=a.iters, tol=None, client=client,
                                     progress=False)
                    setup_and_loop = time.perf_counter() - t0
                    t_write = None
                    if a.write:
                        t1 = time.perf_counter()
                        out = root / f"fused_{nw}.zarr"
                        xfusion.io.zarr.write(r[["flux"]], out, client=client)
                        t_write = time.perf_counter() - t1
                spi = r.attrs["seconds_per_iteration"]
                per[nw] = spi
                print(f"{nw} worker(s): total {setup_and_loop:.1f} s (setup {setup_and_loop - r.attrs['loop_elapsed_s']:.1f} s: persisting the data, PCA for the low rank, fingerprint), "
                      f"{spi:.3f} s/it, {vox / spi:.3g} voxel-it/s ({vox / spi / rate_mem:.2f}x the in-memory rate), "
                      f"peak RSS all processes {mem.peak / 2**30:.2f} GiB"
                      + (f", fused cube written to Zarr in {t_write:.1f} s" if t_write else ""))
        if 1 in per and 2 in per:
            print(f"speed-up 1 -> 2 workers: {per[1] / per[2]:.2f}x")
    finally:
        if a.dir is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
