"""Where the wall time of one default ``fuse`` goes: the start and end of each stage, and the process's CPU seconds.

Per stage, the CPU seconds of the whole process (all threads) while it ran, and the cores that kept busy (with
whatever ran beside it).

The issue-13 time target is the wall time of the default (tuning by thinning + final fit) on a 45x45x2400 scene. This
wraps the stage functions of ``xfusion.tuning`` and ``xfusion.fuse`` (instrumentation only: the same code runs) and
prints, in order of start, every stage call with its thread and its start and end (seconds from the call), then the
wall and CPU seconds of the whole call. On two cores the CPU seconds over 2 are the least wall time any overlap of the
same work could reach.

Stages: the prechecks, ``select`` (the tuning) and inside it the k ladder, plain RL's half-data run (on its own
thread), the thresholded candidate and the zeroed candidate's continuation; the shape prior's choice (``tune_shape``);
the final fit's solver loop (``run``) and the compact sources' run-on; the result builder. Per stage also the EM steps
its thread ran while it ran (its nested stages' included): how many iterations each part costs (session 70).

    python benchmarks/fuse_timeline.py --index 83            # point_sources/500083 of suite("heldout", n=96)
    python benchmarks/fuse_timeline.py --index 95 --warm     # kernels compiled before the call
"""
import argparse
import collections
import importlib
import os
import platform
import threading
import time

import xfusion
from xfusion import scenes

STAGES = {"xfusion.tuning": ("select", "_tune_wavelet", "_tune_none", "_tune_threshold", "_zero_iterations",
                             "tune_shape"),
          "xfusion.fuse": ("_precheck", "run", "_run_on_at_sources", "_result")}


def install(t0, events):
    """Wrap the stage functions and the EM step; each stage call appends ``(name, thread, start, end, cpu, steps)`` to
    ``events`` (``cpu``: the process's CPU seconds, every thread, between the stage's start and end; ``steps``: the
    EM steps (:meth:`xfusion.solvers.em.EMProx.step`) its thread ran meanwhile)."""
    from xfusion.solvers import em

    steps = collections.Counter()  # thread ident -> EM steps so far
    step = em.EMProx.step

    def counted(self, state, _step=step):
        steps[threading.get_ident()] += 1
        return _step(self, state)
    em.EMProx.step = counted
    undo = [(em.EMProx, "step", step)]
    for modname, names in STAGES.items():
        mod = importlib.import_module(modname)
        for name in names:
            orig = getattr(mod, name)

            def wrapped(*a, _orig=orig, _name=name, **kw):
                start, c, n = time.perf_counter(), time.process_time(), steps[threading.get_ident()]
                try:
                    return _orig(*a, **kw)
                finally:
                    events.append((_name, threading.current_thread().name, start - t0[0],
                                   time.perf_counter() - t0[0], time.process_time() - c,
                                   steps[threading.get_ident()] - n))
            setattr(mod, name, wrapped)
            undo.append((mod, name, orig))
    return undo


def timeline(x, y):
    """``(events, wall, cpu, result)`` of ``xfusion.fuse(x, y)`` with the stages wrapped (:func:`install`; unwrapped
    again on return): ``events`` as ``(name, thread, start, end, cpu, steps)`` sorted by start."""
    t0, events = [0.0], []
    undo = install(t0, events)
    try:
        t0[0] = time.perf_counter()
        c0 = time.process_time()
        r = xfusion.fuse(x, y, progress=False)
        wall, cpu = time.perf_counter() - t0[0], time.process_time() - c0
    finally:
        for mod, name, orig in undo:
            setattr(mod, name, orig)
    return sorted(events, key=lambda ev: ev[2]), wall, cpu, r


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--index", type=int, default=83, help="row of suite('heldout', n) (default 83)")
    p.add_argument("--n", type=int, default=96, help="n of suite('heldout', n) (default 96)")
    p.add_argument("--size", default="default", choices=("default", "small"))
    p.add_argument("--warm", action="store_true", help="compile the starlet kernels before the call")
    a = p.parse_args(argv)
    spec = scenes.suite("heldout", n=a.n)[a.index]
    x, y, _ = scenes.from_spec(spec, size=a.size)
    if a.warm:
        from xfusion.regularizers import starlet_kernels

        starlet_kernels.warm()
    events, wall, cpu, r = timeline(x, y)
    print(f"fuse timeline: {platform.machine()} {os.cpu_count()} CPUs, python {platform.python_version()}, xfusion "
          f"{xfusion.__version__}; {spec['name']} ({a.size}), kernels {'compiled first' if a.warm else 'compiled in the call'}")
    print(f"{'stage':20s} {'thread':22s} {'start':>8s} {'end':>8s} {'seconds':>8s} {'CPU':>7s} {'cores':>5s} "
          f"{'EM steps':>8s}")
    for name, thread, s, e, c, n in events:
        print(f"{name:20s} {thread:22s} {s:8.2f} {e:8.2f} {e - s:8.2f} {c:7.2f} {c / max(e - s, 1e-9):5.2f} {n:8d}")
    print(f"wall {wall:.2f} s, CPU {cpu:.2f} s (CPU / 2 = {cpu / 2:.2f} s); final fit {int(r.attrs['iterations'])} "
          f"iterations, choice {r.attrs['regularization']}")


if __name__ == "__main__":
    main()
