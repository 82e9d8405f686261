"""Tasks and seconds per EM + 2D-1D starlet iteration on the Dask backend (threads and a LocalCluster).

For each scene: the in-memory EMProx (NumPy) and DaskEMProx on Dask's threads and on a
``distributed.LocalCluster(n_workers=2, threads_per_worker=1)`` run the same iterations from the same
start; printed per scheduler: tasks executed per iteration (threads: a ``dask.callbacks.Callback``
counting finished tasks; cluster: the scheduler's task stream), the size of the graph the backend
submits per iteration (``DaskBackend.graph_sizes``: keys of the graphs passed to persist/compute,
persisted inputs included), median seconds per iteration (after one warm-up iteration), median CPU seconds
per iteration of this process and its children (scheduler, workers: the overhead measure least sensitive to
other jobs), the load average, and the max relative difference of the final iterate from NumPy's.

    python benchmarks/dask_tasks.py                    # the cluster tests' scene (30x30x240, 15-pixel blocks)
    python benchmarks/dask_tasks.py --scene large      # 64x64x512, 32-pixel blocks
    python benchmarks/dask_tasks.py --scene all --iters 6
    python benchmarks/dask_tasks.py --scene large --rim-bytes 0   # neighbours read only the blocks' rims
"""
import argparse
import os
import platform
import time

import dask
import numpy as np
import psutil
from dask.callbacks import Callback

import xfusion
from xfusion.fuse import _flat_level
from xfusion.grid import SPATIAL, SPECTRAL, assign_roles, fusion_grid
from xfusion.likelihood import PoissonLikelihood, PoissonTerm
from xfusion.operators.model import build_model
from xfusion.regularizers.sparsity import Wavelet2D1D
from xfusion.solvers.em import EMProx

#: name -> (toy overrides, fused pixel block)
SCENES = {
    "wide": (dict(x={"shape": [30, 30]}, source={"radius_arcsec": 100.0}), 15),
    "large": (dict(x={"shape": [64, 64], "n_channels": 32}, y={"pixel_size": 20.0, "n_channels": 512},
                   source={"radius_arcsec": 200.0}), 32),
    "large16": (dict(x={"shape": [64, 64], "n_channels": 32}, y={"pixel_size": 20.0, "n_channels": 512},
                     source={"radius_arcsec": 200.0}), 16),
}


def setup(name, dtype=np.float32):
    over, block = SCENES[name]
    x, y, _ = xfusion.toy.make("small", seed=0, **over)
    grid = fusion_grid(x, y)
    xo, yo, _ = assign_roles(x, y)
    mx, my = build_model(grid, xo, SPATIAL), build_model(grid, yo, SPECTRAL)
    scale = mx.mean_weight()
    mx, my = mx.scaled(scale), my.scaled(scale)
    shape = mx.fused_shape
    xd, yd = xo["counts"].values.astype(dtype), yo["counts"].values.astype(dtype)
    level = _flat_level(mx, float(xd.sum(dtype=np.float64)), shape, dtype)  # fuse's start level
    return dict(mx=mx, my=my, xd=xd, yd=yd, z0=np.full(shape, level, dtype), v=grid.attrs["spatial_factor"],
                block=block, shape=shape)


def regularizer():
    return Wavelet2D1D(k=1.0, n_scales_1d=5, null_space="zero")


class Count(Callback):
    def __init__(self):
        super().__init__()
        self.n = 0

    def _posttask(self, key, result, dsk, state, id):
        self.n += 1


def cpu_seconds():
    """User + system CPU seconds of this process and its children (a LocalCluster's workers and nannies) so far:
    per-iteration CPU is much less sensitive to other jobs on the machine than wall time."""
    procs = [psutil.Process()]
    procs += procs[0].children(recursive=True)
    tot = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            tot += t.user + t.system
        except psutil.Error:
            pass
    return tot


def run_numpy(s, iters):
    terms = [PoissonTerm(s["mx"], s["xd"], None, s["xd"].dtype), PoissonTerm(s["my"], s["yd"], None, s["yd"].dtype)]
    solver = EMProx(PoissonLikelihood(terms), regularizer())
    st = solver.init(s["z0"])
    times, cpu = [], []
    for _ in range(iters):
        t, c0 = time.perf_counter(), cpu_seconds()
        st = solver.step(st)
        times.append(time.perf_counter() - t)
        cpu.append(cpu_seconds() - c0)
    return np.asarray(st["z"]), times, cpu


def run_dask(s, iters, client=None, rim_bytes=None):
    import dask.array as da

    from xfusion.parallel_em import DaskEMProx

    b, v = s["block"], s["v"]
    xd = da.from_array(s["xd"], chunks=(b, b, -1))
    yd = da.from_array(s["yd"], chunks=(b // v, b // v, -1))
    solver = DaskEMProx(xd, yd, s["mx"], s["my"], None, v, regularizer(), client)
    if rim_bytes is not None:  # blocks over this send only their rims to the neighbours' haloed tasks
        solver.B.rim_bytes = rim_bytes
    st = solver.init(s["z0"])
    st = solver.step(st)  # warm-up (probes, first sends)
    solver.B.record = True
    times, tasks, cpu = [], [], []
    for _ in range(iters):
        solver.B.graph_sizes.clear()
        t, c0 = time.perf_counter(), cpu_seconds()
        if client is None:
            with Count() as c:
                st = solver.step(st)
            n = c.n
        else:
            from distributed import get_task_stream

            with get_task_stream(client) as ts:
                st = solver.step(st)
            n = len(ts.data)
        times.append(time.perf_counter() - t)
        cpu.append(cpu_seconds() - c0)
        tasks.append((n, sum(solver.B.graph_sizes)))
    z = st["z"]
    z = client.compute(z).result() if client is not None else z.compute()
    return z, times, tasks, cpu


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--scene", default="wide", choices=list(SCENES) + ["all"])
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--no-cluster", action="store_true")
    ap.add_argument("--rim-bytes", type=int, default=None, help="DaskBackend.rim_bytes (0: always send rims)")
    a = ap.parse_args()
    print(f"machine: {platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"dask {dask.__version__}, xfusion {xfusion.__file__}")
    names = list(SCENES) if a.scene == "all" else [a.scene]
    cluster = client = None
    if not a.no_cluster:
        from distributed import Client, LocalCluster

        cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                               silence_logs=40)
        client = Client(cluster, set_as_default=False)
    try:
        for name in names:
            s = setup(name)
            nb = (s["shape"][0] // s["block"]) * (s["shape"][1] // s["block"])
            print(f"\nscene {name}: fused {s['shape']}, v={s['v']}, blocks {s['block']}x{s['block']} ({nb} blocks), "
                  f"{a.iters} timed iterations after 1 warm-up")
            ref, tn, cn = run_numpy(s, a.iters + 1)
            print(f"  numpy   : {np.median(tn[1:]):.3f} s/it  cpu {np.median(cn[1:]):.3f} s/it  "
                  f"load {os.getloadavg()[0]:.2f}")
            for label, cl in (("threads", None), ("cluster", client)):
                if label == "cluster" and client is None:
                    continue
                z, times, tasks, cpu = run_dask(s, a.iters, cl, a.rim_bytes)
                diff = float(np.abs(z - ref).max() / np.abs(ref).max())
                print(f"  {label:8s}: {np.median(times):.3f} s/it (min {min(times):.3f}, max {max(times):.3f})  "
                      f"cpu {np.median(cpu):.3f} s/it  "
                      f"tasks/it {tasks[-1][0]}  graph keys/it {tasks[-1][1]}  load {os.getloadavg()[0]:.2f}  "
                      f"max|dask-numpy|/max {diff:.2e}")
    finally:
        if client is not None:
            client.close()
            cluster.close()


if __name__ == "__main__":
    main()
