"""Time one full Poisson likelihood gradient (both instruments, forward + adjoint) on gaussian_rebin.

Prints the machine, the time per gradient in float32 and float64, the split per operator,
and the memory-traffic / FFT-flop floors for comparison.
Run: python benchmarks/operators.py
"""
import os
import platform
import time

import numpy as np

from xfusion import fusion_grid, toy
from xfusion.grid import SPATIAL, SPECTRAL
from xfusion.likelihood import PoissonLikelihood, PoissonTerm
from xfusion.operators import Convolve2D, Rebin, build_model


def best_of(f, n=7):
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t)
    return min(ts), float(np.median(ts))


def main():
    print(f"machine: {platform.machine()} {platform.processor() or ''} cpus={os.cpu_count()} "
          f"python={platform.python_version()} numpy={np.__version__}")
    x_obs, y_obs, truth = toy.make("gaussian_rebin")
    grid = fusion_grid(x_obs, y_obs)
    mx, my = build_model(grid, x_obs, SPATIAL), build_model(grid, y_obs, SPECTRAL)
    print(f"fused cube {truth.shape}; X spectral op: {type(mx.spectral).__name__}, Y spatial op: {type(my.spatial).__name__}")
    for dtype in (np.float32, np.float64):
        lik = PoissonLikelihood([PoissonTerm(mx, x_obs.counts.values, dtype=dtype),
                                 PoissonTerm(my, y_obs.counts.values, dtype=dtype)])
        z = np.ascontiguousarray(truth.values.astype(dtype))
        best, med = best_of(lambda: lik.value_and_grad(z))
        print(f"{np.dtype(dtype).name}: full likelihood value+gradient  best {best*1e3:7.1f} ms   median {med*1e3:7.1f} ms")
        for name, m in (("X", mx), ("Y", my)):
            fwd = best_of(lambda: m.forward(z))[0]
            u = m.forward(z)
            adj = best_of(lambda: m.adjoint(u))[0]
            print(f"   model {name}: forward {fwd*1e3:6.1f} ms  adjoint {adj*1e3:6.1f} ms")
    # the FFT alternative for the PSF, for the record
    z = np.ascontiguousarray(truth.values.astype(np.float32))
    conv = Convolve2D(grid.psf.values, (45, 45))
    reb = Rebin((3, 3, 1))
    t_fft = best_of(lambda: reb.forward(conv.forward(z)), 3)[0]
    print(f"float32: FFT PSF convolution + rebin (forward only, alternative path) {t_fft*1e3:6.1f} ms")
    # floors
    nbytes = z.nbytes
    t_copy = best_of(lambda: z * np.float32(2.0))[0]
    print(f"floor: one elementwise pass over the float32 cube ({nbytes/1e6:.0f} MB) takes {t_copy*1e3:.1f} ms "
          f"-> {nbytes*2/t_copy/1e9:.1f} GB/s read+write")


if __name__ == "__main__":
    main()
