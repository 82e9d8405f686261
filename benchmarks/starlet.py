"""Timings of the starlet transforms in :mod:`xfusion.regularizers.starlet`.

Run with ``python benchmarks/starlet.py [--repeat N]``.  Prints the machine,
then the best and median wall time of the 1D, 2D and 2D-1D transforms on a
``(45, 45, 2400)`` cube in float32 and float64, plus one smoothing pass of
the shifted-slice kernel against ``scipy.ndimage.correlate1d``. Each transform runs with the compiled
passes (:mod:`xfusion.regularizers.starlet_kernels`, when Numba is installed; compiled before any timing) and with
NumPy's, inside :func:`xfusion.solvers.heap.retained` as in a fit.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
from scipy import ndimage

from xfusion.regularizers import starlet as st
from xfusion.regularizers import starlet_kernels
from xfusion.solvers import heap

SHAPE = (45, 45, 2400)
N2D, N1D = 2, 3


def timeit(fn, repeat: int) -> tuple[float, float]:
    fn()  # warm-up (thread pool, allocator)
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return min(ts), float(np.median(ts))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=7)
    args = p.parse_args()

    try:
        ncpu_aff = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover
        ncpu_aff = os.cpu_count()
    print(f"platform : {platform.platform()}")
    print(f"cpu      : {platform.processor() or platform.machine()}, "
          f"os.cpu_count()={os.cpu_count()}, usable={ncpu_aff}, "
          f"starlet threads={st._num_threads()}")
    print(f"numpy {np.__version__}, python {platform.python_version()}")
    print(f"cube shape {SHAPE}, n_scales_2d={N2D}, n_scales_1d={N1D}, repeat={args.repeat}")
    # compiled now: since session 63 a process compiles them only after enough NumPy passes, so without this the
    # [numba] rows ran the NumPy passes (sessions 63-65 of this script)
    print(f"compiled the kernels for float32 and float64 in {starlet_kernels.warm():.1f} s")
    print()
    print(f"{'transform':<42}{'dtype':<9}{'best [ms]':>10}{'median [ms]':>13}{'out [MB]':>10}")

    rng = np.random.default_rng(0)
    for dtype in (np.float32, np.float64):
        cube = rng.random(SHAPE).astype(dtype)
        cases = [
            (f"starlet1d(J={N1D}, axis=-1)", lambda: st.starlet1d(cube, N1D), N1D + 1),
            (f"starlet2d(J={N2D})", lambda: st.starlet2d(cube, N2D), N2D + 1),
            (f"starlet2d1d({N2D}, {N1D})", lambda: st.starlet2d1d(cube, N2D, N1D),
             (N2D + 1) * (N1D + 1)),
            ("starlet2d(J=2) on (45, 45, 10)",
             lambda: st.starlet2d(cube[:, :, :10], N2D), None),
        ]
        for name, fn, ncopies in cases:
            for compiled in ([True, False] if starlet_kernels.available else [False]):
                starlet_kernels.available = compiled
                with heap.retained():
                    best, med = timeit(fn, args.repeat)
                mb = f"{ncopies * cube.nbytes / 1e6:10.0f}" if ncopies else f"{'':10}"
                label = f"{name} [{'numba' if compiled else 'numpy'}]"
                print(f"{label:<42}{np.dtype(dtype).name:<9}{best * 1e3:10.2f}{med * 1e3:13.2f}{mb}")
            starlet_kernels.available = starlet_kernels._enabled()

    # one smoothing pass (taps 1 apart) along energy: kernel choice
    print()
    print("single B3 smoothing pass along energy (float32, one thread):")
    cube = rng.random(SHAPE).astype(np.float32)
    out = np.empty_like(cube)
    scratch = np.empty_like(cube)
    h = st.B3_FILTER.astype(np.float32)
    best, med = timeit(lambda: st._smooth1(cube, 1, 2, out, scratch), args.repeat)
    print(f"  shifted slices (xfusion)        best {best * 1e3:7.2f} ms  median {med * 1e3:7.2f} ms")
    best, med = timeit(
        lambda: ndimage.correlate1d(cube, h, axis=2, mode="reflect", output=out), args.repeat
    )
    print(f"  scipy.ndimage.correlate1d       best {best * 1e3:7.2f} ms  median {med * 1e3:7.2f} ms")


if __name__ == "__main__":
    main()
