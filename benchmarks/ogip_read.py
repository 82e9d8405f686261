"""Read times of the real OGIP responses (moved out of tests/test_io_ogip.py: no wall-clock asserts in unit tests).

Measures ``xfusion.io.ogip_read.read_rmf`` on the 12000 x 12000 microcalorimeter RMF (sparse, and the
1.15 GB dense matrix) and on the EPIC-pn RMF, best of ``--repeat`` runs, and prints the machine.
The previous unit test asserted sparse < 2 s and dense < 5 s; this script reports those targets.

    python benchmarks/ogip_read.py [--repeat 3] [--data ../shared/data]
"""
from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

from xfusion.io.ogip_read import read_rmf

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
TARGETS = {("xrs_mucal.rmf", True): 2.0, ("xrs_mucal.rmf", False): 5.0}


def best_of(fn, repeat):
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
        del out
    return min(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    args = ap.parse_args()
    print(f"machine: {platform.platform()}, {os.cpu_count()} CPUs, python {platform.python_version()}")
    for name in ("epn_ff20_dY9.rmf", "xrs_mucal.rmf"):
        path = args.data / name
        if not path.exists():
            print(f"{name}: not found in {args.data}")
            continue
        for sparse in (True, False):
            t = best_of(lambda: read_rmf(path, sparse=sparse), args.repeat)
            target = TARGETS.get((name, sparse))
            note = "" if target is None else f" (target < {target:.1f} s: {'ok' if t < target else 'SLOWER'})"
            print(f"{name:20s} {'sparse' if sparse else 'dense ':6s} best of {args.repeat}: {t:.3f} s{note}")


if __name__ == "__main__":
    main()
