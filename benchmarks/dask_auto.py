"""The default ``fuse`` (``regularization="auto"``) on Dask-backed observations against the same call in memory
(session 17): on Dask, Poisson thinning runs on in-memory copies (``xfusion.tuning.in_memory_copies``) and the final
fit runs block-wise on Dask's threads. Prints, per scene: the choice of each path, the wall time of each, the
largest flux difference relative to the largest flux, and the NMSE against the truth of each. With ``--fallback``
also the Dask run without in-memory tuning (``xfusion.tuning.IN_MEMORY_BYTES = 0``: the counts rule that every
Dask-backed run took before session 17). With ``--subfield`` also the Dask run with the limit set to 0.3 of the
whole field's estimate, so that thinning runs on the central ~half of the field along each axis (a quarter of it)
and its settings are applied to the whole field.

    python benchmarks/dask_auto.py                       # the paper's gaussian_rebin toy (45x45x2400)
    python benchmarks/dask_auto.py --scene suite:3       # scene 3 of xfusion.scenes.suite("heldout", n=24), full size
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np

import xfusion
from xfusion import metrics, toy


def _scene(name):
    if name.startswith("suite:"):
        from xfusion import scenes

        spec = scenes.suite("heldout", n=24)[int(name.split(":")[1])]
        x, y, truth = scenes.from_spec(spec)
        return spec["name"], x, y, truth["flux"]
    x, y, t = toy.make(name, seed=0)
    return name, x, y, t


def _dask_fuse(x, y, chunk, limit=None):
    """Default ``fuse`` on chunked copies of ``x``, ``y`` (with ``xfusion.tuning.IN_MEMORY_BYTES`` set to ``limit``
    when given, restored after): ``(parameters, computed result, wall seconds)``."""
    from xfusion import tuning

    keep = tuning.IN_MEMORY_BYTES
    tuning.IN_MEMORY_BYTES = keep if limit is None else limit
    try:
        t0 = time.perf_counter()
        r = xfusion.fuse(x.chunk({"x": chunk, "y": chunk}), y.chunk(), progress=False)
        params, r = json.loads(r.attrs["parameters"]), r.compute()
        return params, r, time.perf_counter() - t0
    finally:
        tuning.IN_MEMORY_BYTES = keep


def main(argv=None):
    from xfusion import tuning

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scene", action="append", help="toy name or suite:INDEX (repeatable; default gaussian_rebin)")
    p.add_argument("--chunk", type=int, default=16, help="pixel chunk of the lazy sharp-spatial input (default 16)")
    p.add_argument("--fallback", action="store_true", help="also run Dask with IN_MEMORY_BYTES = 0 (the old fallback)")
    p.add_argument("--subfield", action="store_true", help="also run Dask with the limit at 0.3 of the whole field's "
                   "estimate (tuning on the central sub-field)")
    a = p.parse_args(argv)
    for name in a.scene or ["gaussian_rebin"]:
        label, x, y, t = _scene(name)
        t0 = time.perf_counter()
        ref = xfusion.fuse(x, y, progress=False)
        t_ref = time.perf_counter() - t0
        pr = json.loads(ref.attrs["parameters"])
        pd, out, t_dask = _dask_fuse(x, y, a.chunk)
        rec = pd["auto_tuning"]
        diff = float(np.abs(out.flux.values - ref.flux.values).max() / ref.flux.values.max())
        print(f"{label}: in memory {pr['regularization']} {pr['max_iter']} it, {t_ref:.1f} s, "
              f"{metrics.nmse(t, ref.flux):.3f} dB | Dask {pd['regularization']} {pd['max_iter']} it, {t_dask:.1f} s, "
              f"{metrics.nmse(t, out.flux):.3f} dB | same choice: {pr['auto_tuning']['choice'] == rec['choice']} | "
              f"max |difference| / max flux {diff:.1e} | {rec.get('in_memory', rec.get('method'))}", flush=True)
        if a.subfield:
            # 0.3 of the part of the estimate that scales with the field (session 30: a fixed part besides it)
            ps, sub, dt = _dask_fuse(x, y, a.chunk, tuning.OVERHEAD_BYTES +
                                     int(0.3 * (tuning._need([x, y])[0] - tuning.OVERHEAD_BYTES)))
            rec = ps["auto_tuning"]
            print(f"    sub-field: {ps['regularization']} {ps['max_iter']} it, choice {rec.get('choice')} "
                  f"(whole field: {pr['auto_tuning']['choice']}), {dt:.1f} s, {metrics.nmse(t, sub.flux):.3f} dB | "
                  f"{rec.get('in_memory', rec.get('method'))}", flush=True)
        if a.fallback:
            po, old, dt = _dask_fuse(x, y, a.chunk, 0)
            print(f"    fallback (limit 0): {po['regularization']} k={po.get('k')} {po['max_iter']} it, {dt:.1f} s, "
                  f"{metrics.nmse(t, old.flux):.3f} dB", flush=True)


if __name__ == "__main__":
    main()
