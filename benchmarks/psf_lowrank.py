"""Would a low-rank separable form of a non-separable PSF make the 60 s scene's PSF products cheaper? (session 73)

The sharp-spectral model of point_sources/500083 (``suite("heldout", n=96)[83]``, 45x45x2400 to 15x15) applies five
PSF bands, each a dense matrix ``P`` (225 x 2025, :class:`xfusion.operators.psf.SpatialMatrix`: the kernel is not
separable, so ``factors`` is None), and every channel goes through two of them. This prints, for that scene, the
singular values of each band's kernel (relative to the first: the rank a separable sum ``sum_r kron(Px_r, Py_r)``
needs to stay at float32 round-off), then on one thread the time of the dense product on a slab of 600 float32
channels against the same product as a sum of ``r`` separable terms (random factors of the right shapes: the
arithmetic, not the values, sets the time).

    python benchmarks/psf_lowrank.py
"""
import time

import numpy as np
from threadpoolctl import threadpool_limits

from xfusion import scenes
from xfusion.fuse import _precheck


def _time(f, arg, repeat=20):
    f(arg)
    t0 = time.perf_counter()
    for _ in range(repeat):
        f(arg)
    return (time.perf_counter() - t0) / repeat * 1e3


def main():
    x, y, _ = scenes.from_spec(scenes.suite("heldout", n=96)[83])
    models = _precheck([x, y], {}, False)[3]
    spatial = models[1].ops[0]
    print(f"point_sources/500083: {type(spatial).__name__}, {len(spatial.ops)} bands, channel ranges {spatial.ranges}")
    for b, op in enumerate(spatial.ops):
        k = op.block_ops[0].kernel
        s = np.linalg.svd(k, compute_uv=False)
        print(f"band {b}: kernel {k.shape}, separable: {op.factors is not None}; singular values / first: "
              + " ".join(f"{v:.1e}" for v in (s / s[0])[1:10]))
    M = N = 45
    m = n = 15
    L = 600
    rng = np.random.default_rng(0)
    P = rng.random((m * n, M * N)).astype(np.float32)
    z = rng.random((M, N, L), dtype=np.float32)
    u = rng.random((m, n, L), dtype=np.float32)
    with threadpool_limits(1):
        print(f"one thread, {L} float32 channels: dense forward {_time(lambda a: P @ a.reshape(M * N, -1), z):.1f} ms, "
              f"adjoint {_time(lambda a: P.T @ a.reshape(m * n, -1), u):.1f} ms")
        for r in (4, 6, 8, 9):
            px = rng.random((r, m, M)).astype(np.float32)
            py = rng.random((r, n, N)).astype(np.float32)
            stacked = px.reshape(r * m, M)

            def forward(a):
                t = (stacked @ a.reshape(M, -1)).reshape(r, m, N, L)
                out = np.matmul(py[0], t[0])
                for i in range(1, r):
                    out += np.matmul(py[i], t[i])
                return out

            def adjoint(a):
                out = px[0].T @ np.matmul(py[0].T, a).reshape(m, -1)
                for i in range(1, r):
                    out += px[i].T @ np.matmul(py[i].T, a).reshape(m, -1)
                return out

            print(f"rank {r} separable: forward {_time(forward, z):.1f} ms, adjoint {_time(adjoint, u):.1f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
