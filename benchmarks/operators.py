"""Time one full Poisson likelihood gradient (both instruments, forward + adjoint) on gaussian_rebin.

Prints the machine, the time per gradient in float32 and float64, the split per operator,
and the memory-traffic / FFT-flop floors for comparison; then the energy-dependent PSF's cost; then (``threads``,
session 56) the work that runs on xfusion's thread pool, on the slowest held-out suite scene, with one thread and
with two, and whether the two give the same numbers to the bit.
Run: python benchmarks/operators.py [--only gradient|energy_psf|threads] [--repeat N]
"""
import argparse
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


def energy_dependent_psf():
    """Cost of an energy-dependent PSF (3 King bands, linear interpolation) vs the stationary one, realistic_rebin."""
    import xarray as xr

    from xfusion.toy import psf_image

    x_obs, y_obs, truth = toy.make("realistic_rebin")
    e = [0.6, 0.95, 1.3]
    psfs = [psf_image({"kind": "king", "core_arcsec": c, "beta": 1.5}, 10.0, n_max=22) for c in (16.0, 20.0, 24.0)]
    n = max(p.shape[0] for p in psfs)
    psfs = [np.pad(p, (n - p.shape[0]) // 2) for p in psfs]
    c = (np.arange(n) - n // 2) * 10.0
    stack = xr.DataArray(np.stack(psfs), dims=("psf_energy", "psf_x", "psf_y"),
                         coords={"psf_energy": ("psf_energy", e, {"units": "keV"}),
                                 "psf_x": ("psf_x", c, {"units": "arcsec"}), "psf_y": ("psf_y", c, {"units": "arcsec"})})
    y_e = y_obs.drop_vars(["psf", "psf_x", "psf_y"]).assign(psf=stack)
    for label, y in (("stationary PSF", y_obs), ("energy-dependent PSF (3 bands)", y_e)):
        grid = fusion_grid(x_obs, y)
        lik = PoissonLikelihood([PoissonTerm(build_model(grid, x_obs, SPATIAL), x_obs.counts.values),
                                 PoissonTerm(build_model(grid, y, SPECTRAL), y.counts.values)])
        z = np.ascontiguousarray(truth.values.astype(np.float32))
        best, med = best_of(lambda: lik.value_and_grad(z))
        print(f"realistic_rebin, {label}: likelihood value+gradient best {best*1e3:.1f} ms, median {med*1e3:.1f} ms")


def threads(repeat=7):
    """The thread pool's work (:mod:`xfusion.threads`) on suite scene point_sources/500083 (45x45x2400, realistic
    responses: five dense PSF bands), ``XFUSION_NUM_THREADS`` 1 then 2: best time of ``repeat`` calls each, and
    whether the outputs are equal to the bit. BLAS runs one thread, as in a fit (``BLAS_THREADS``)."""
    from threadpoolctl import threadpool_limits

    from xfusion import scenes
    from xfusion.regularizers.sparsity import Wavelet2D1D, gaussian_nearest
    from xfusion.solvers.backend import BLAS_THREADS

    spec = scenes.suite("heldout", 96)[83]
    x, y, _ = scenes.from_spec(spec, size="default")
    grid = fusion_grid(x, y)
    mx, my = build_model(grid, x, SPATIAL), build_model(grid, y, SPECTRAL)
    rng = np.random.default_rng(0)
    z = rng.gamma(2.0, 1.0, mx.fused_shape).astype(np.float32)
    u = rng.gamma(2.0, 1.0, my.data_shape).astype(np.float32)
    ux = rng.gamma(2.0, 1.0, mx.data_shape).astype(np.float32)
    reg = Wavelet2D1D(n_scales_2d=1, n_scales_1d=2, noise="poisson")
    work = [("sharp-spectral model forward (energy-dependent PSF)", lambda: my.forward(z)),
            ("sharp-spectral model adjoint", lambda: my.adjoint(u)),
            ("sharp-spatial model forward (dense response)", lambda: mx.forward(z)),
            ("sharp-spatial model adjoint", lambda: mx.adjoint(ux)),
            ("line step's Gaussian smoothing (160 channels)", lambda: gaussian_nearest(z, 160.0)),
            ("2D-1D prior statistics (band medians)", lambda: reg.statistics(z))]
    print(f"{spec['name']}: fused cube {mx.fused_shape}, {type(my.spatial).__name__} of "
          f"{len(getattr(my.spatial, 'ops', []))} bands; best of {repeat}")
    old = os.environ.get("XFUSION_NUM_THREADS")
    blas = threadpool_limits(limits=BLAS_THREADS, user_api="blas")
    try:
        for label, f in work:
            out, t = {}, {}
            for n in ("1", "2"):
                os.environ["XFUSION_NUM_THREADS"] = n
                out[n] = f()
                t[n] = best_of(f, repeat)[0]
            same = (out["1"] == out["2"]) if isinstance(out["1"], dict) else np.array_equal(out["1"], out["2"])
            print(f"  {label}: 1 thread {t['1'] * 1e3:.1f} ms, 2 threads {t['2'] * 1e3:.1f} ms "
                  f"({t['1'] / t['2']:.2f}x); the same to the bit: {bool(same)}")
    finally:
        blas.restore_original_limits()
        if old is None:
            os.environ.pop("XFUSION_NUM_THREADS", None)
        else:
            os.environ["XFUSION_NUM_THREADS"] = old


def cli(argv=None):
    """All measurements, or one (``--only``); session 30: --help (or any argument) was ignored and the benchmark
    started."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", choices=("gradient", "energy_psf", "threads"), default=None, help="one measurement")
    p.add_argument("--repeat", type=int, default=7, help="calls per timing of the threads section (best of)")
    a = p.parse_args(argv)
    if a.repeat < 1:
        p.error(f"--repeat must be >= 1; got {a.repeat}")
    if a.only in (None, "gradient"):
        main()
    if a.only in (None, "energy_psf"):
        energy_dependent_psf()
    if a.only in (None, "threads"):
        threads(a.repeat)


if __name__ == "__main__":
    cli()
