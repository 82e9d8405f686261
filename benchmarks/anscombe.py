"""NMSE of the registry's ``anscombe2d1d`` prior against ``wavelet2d1d`` on the toys (same explicit settings, and
the default with its thinning-tuned settings on ``small``). Prints one line per run:
``toy settings nmse_db asam_rad iterations seconds``.

    python benchmarks/anscombe.py [toy ...]      (default: small gaussian_rebin)
"""
from __future__ import annotations

import sys
import time
import warnings

import xfusion
from xfusion import metrics, toy

RUNS = [
    dict(regularization="wavelet2d1d", k=1.0, n_scales_1d=5, null_space="zero"),
    dict(regularization="anscombe2d1d", k=1.0),
    dict(regularization="wavelet2d1d", k=0.5, n_scales_1d=5, null_space="zero"),
    dict(regularization="anscombe2d1d", k=0.5),
]


def main(names):
    warnings.simplefilter("ignore")
    for name in names:
        x, y, t = toy.make(name, seed=0)
        runs = RUNS + ([dict()] if name == "small" else [])  # the tuned default: thinning costs minutes on larger toys
        for kw in runs:
            t0 = time.perf_counter()
            r = xfusion.fuse(x, y, progress=False, **kw)
            m = metrics.report(r, t)
            print(f"{name} {kw or 'default (tuned)'} nmse {m['nmse_db']:.2f} dB asam {m['asam_rad']:.4f} "
                  f"it {r.attrs['iterations']} {time.perf_counter() - t0:.1f} s", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:] or ["small", "gaussian_rebin"])
