"""Mutation check: does the test suite turn red for deliberate faults in the code? (issue 19)

For each fault below (a string patch ``old -> new`` on one source line or block), the script

1. copies the repository to a temporary directory (``shutil.copytree``, without ``.git``; the copy sits
   next to a link ``shared -> <repo>/../shared`` so the real-file tests find ``../shared/data``);
2. applies the patch to the COPY -- never to the working tree -- and fails loudly if ``old`` does not occur
   exactly once (the code drifted: update the fault);
3. runs the fault's mapped test subset in the copy, ``python -m pytest -x -q <tests>`` from the copy's root
   with ``PYTHONPATH`` = the copy, after checking that ``import xfusion`` resolves to the copy;
4. records caught (pytest exit code 1: a test failed) or MISSED (exit 0), the first failing test, the time,
   then restores the file from the pristine text.

A baseline run of every subset on the unpatched copy comes first: a subset that fails without a fault
would catch nothing, so the script stops there. Output: a table (fault, caught?, first failing test,
seconds) and an exit code 1 if any fault was missed.

    nice -n 10 python benchmarks/mutations.py            # all faults
    python benchmarks/mutations.py --list                # the faults and their test subsets
    python benchmarks/mutations.py --only dottest_uniform --only arf_dropped
    python benchmarks/mutations.py --check               # only verify that every patch applies
    python benchmarks/mutations.py --all --only arf_dropped   # every failing test, not only the first
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
IGNORE = shutil.ignore_patterns(".git", "__pycache__", "*.egg-info", ".pytest_cache", "*.zarr", ".ipynb_checkpoints")
TIMEOUT_S = 300


@dataclass
class Fault:
    name: str
    path: str  # relative to the repository root
    old: str
    new: str
    tests: list  # pytest arguments (files, node ids, -k expressions)
    what: str = ""
    extra: list = field(default_factory=list)  # more (path, old, new) patches applied together


#: the resume test that observes the resume (callback log: starts at checkpoint + 1, runs only the rest);
#: add "or resume_uses_the_stored_state" (perturbed stored state) once that test passes on main
RESUME_TESTS = ["tests/test_fuse.py", "-k", "resume_after_interruption"]

FAULTS = [
    # ---- the bullets of issue 19
    Fault("resume_restarts_at_0", "xfusion/solvers/loop.py",
          "        state, history, start = stored\n",
          "        state, history, start = stored\n        start = 0  # MUTANT: resume restarts the count\n",
          RESUME_TESTS, "resume reads the checkpoint but restarts from iteration 0"),
    Fault("resume_ignores_state", "xfusion/solvers/loop.py",
          "        state, history, start = stored\n",
          "        state, history, start = stored\n        state = method.init(x0)  # MUTANT: stored state ignored\n",
          RESUME_TESTS, "resume reads the checkpoint but iterates from a fresh start state"),
    Fault("x_exposure_dropped", "xfusion/operators/model.py",
          "        vl = _spectral_factor(obs, grid)\n        w = _area_on_grid(obs, fine, hw, 1, t)\n",
          "        vl = _spectral_factor(obs, grid)\n        w = _area_on_grid(obs, fine, hw, 1)  # MUTANT: X exposure dropped\n",
          ["tests/test_independent_model.py"],
          "X's exposure missing from its model"),
    Fault("stacked_adjoint_shift", "xfusion/operators/psf.py",
          "        return sum(op.adjoint(np.ascontiguousarray(g[..., b * r:(b + 1) * r])) for b, op in enumerate(self.ops))",
          "        return np.roll(sum(op.adjoint(np.ascontiguousarray(g[..., b * r:(b + 1) * r]))"
          " for b, op in enumerate(self.ops)), 1, axis=0)  # MUTANT",
          ["tests/test_adjoints.py"],
          "StackedSpatial.adjoint shifted by one pixel"),
    Fault("dottest_uniform", "xfusion/operators/dottest.py",
          "    x = rng.standard_normal(in_shape).astype(dtype)\n",
          "    x = rng.random(in_shape).astype(dtype)  # MUTANT: U(0,1)\n",
          ["tests/test_adjoints.py"],
          "dottest draws U(0,1) vectors",
          extra=[("xfusion/operators/dottest.py", "    y = rng.standard_normal(ax.shape).astype(dtype)\n",
                  "    y = rng.random(ax.shape).astype(dtype)  # MUTANT: U(0,1)\n")]),
    Fault("auto_rule_swapped", "xfusion/registry/wavelet2d1d.py",
          '        params["k"] = 0.5 if bright else 1.0\n',
          '        params["k"] = 1.0 if bright else 0.5  # MUTANT\n',
          ["tests/test_behaviour.py", "-k", "auto"],
          "automatic k / scales rule swapped (bright <-> dim)",
          extra=[("xfusion/registry/wavelet2d1d.py", '        params["n_scales_1d"] = 2 if bright else 5\n',
                  '        params["n_scales_1d"] = 5 if bright else 2  # MUTANT\n')]),
    # ---- our own
    Fault("poisson_grad_sign", "xfusion/likelihood.py",
          "        r = 1.0 - self.data / np.maximum(m, tiny)\n",
          "        r = self.data / np.maximum(m, tiny) - 1.0  # MUTANT: sign\n",
          ["tests/test_gradients.py"],
          "sign flip in the Poisson gradient"),
    Fault("subspace_grad_sign", "xfusion/likelihood.py",
          "        out[:, :, :r] = v.sum(axis=1) - q @ v.T\n",
          "        out[:, :, :r] = q @ v.T - v.sum(axis=1)  # MUTANT: sign\n",
          ["tests/test_gradients.py"],
          "sign flip in the subspace block gradient"),
    Fault("masked_gradient_unweighted", "xfusion/likelihood.py",
          "        return r if self.weight is None else np.where(self.weight > 0, r * self.weight, 0)",
          "        return r if self.weight is None else r + 0 * np.where(self.weight > 0, r * self.weight, 0)",
          ["tests/test_gradients.py"],
          "the masked branch of the gradient ignores the mask"),
    Fault("em_ratio_inverted", "xfusion/likelihood.py",
          "        q = d / np.maximum(m, tiny)\n",
          "        q = np.maximum(m, tiny) / np.maximum(d, 1.0)  # MUTANT: m / d\n",
          ["tests/test_gradients.py"],
          "EM ratio inverted (m/d instead of d/m)"),
    Fault("rebin_space_off_by_one", "xfusion/operators/rebin.py",
          "            out = out.reshape(M // fx, fx, N // fy, fy, -1).sum(axis=(1, 3))\n",
          "            out = np.roll(out, 1, axis=0).reshape(M // fx, fx, N // fy, fy, -1).sum(axis=(1, 3))  # MUTANT\n",
          ["tests/test_adjoints.py", "tests/test_independent_model.py"],
          "spatial rebinning groups shifted by one pixel"),
    Fault("rebin_energy_off_by_one", "xfusion/operators/model.py",
          "        R[np.arange(R.shape[0]), np.arange(R.shape[0]) // factor] = 1.0\n",
          "        R[np.arange(R.shape[0]), np.minimum((np.arange(R.shape[0]) + 1) // factor, R.shape[1] - 1)] = 1.0"
          "  # MUTANT\n",
          ["tests/test_independent_model.py"],
          "energy rebinning (no response) groups shifted by one channel"),
    Fault("psf_axes_swapped", "xfusion/operators/model.py",
          "        return SpatialMatrix.from_psf(psf.values, (M, N), factor)\n",
          "        return SpatialMatrix.from_psf(psf.values.T, (M, N), factor)  # MUTANT: x <-> y\n",
          ["tests/test_independent_model.py", "tests/test_behaviour.py", "-k", "psf"],
          "PSF x/y axes swapped in the Y model"),
    Fault("arf_dropped", "xfusion/operators/model.py",
          "        return exposure * np.interp(e, centres, a.values)\n",
          "        return exposure * np.ones_like(e)  # MUTANT: ARF dropped\n",
          ["tests/test_independent_model.py"],
          "effective area (ARF) dropped"),
    Fault("y_exposure_dropped", "xfusion/operators/model.py",
          "        w = _area_on_grid(obs, fine, hw, vs, t)\n",
          "        w = _area_on_grid(obs, fine, hw, vs)  # MUTANT: Y exposure dropped\n",
          ["tests/test_independent_model.py"],
          "Y's exposure missing from its model"),
    Fault("prox_skipped", "xfusion/solvers/em.py",
          "            z, pen = self.B.prox(self.reg, zh, self.reg.stats_from_scalars(state))\n",
          "            z, pen = zh, 0.0  # MUTANT: prox skipped\n",
          ["tests/test_fuse.py::test_beats_naive_baselines", "tests/test_parallel_em.py::test_small_whole_field_variants"],
          "the proximal (wavelet) step of EM skipped"),
    Fault("conv1d_adjoint_off_by_one", "xfusion/operators/response.py",
          "            return np.ascontiguousarray(np.roll(c, self.h, axis=-1)[..., : self.n])\n",
          "            return np.ascontiguousarray(np.roll(c, self.h + 1, axis=-1)[..., : self.n])  # MUTANT\n",
          ["tests/test_adjoints.py"],
          "Convolve1D adjoint off by one channel"),
    Fault("rmf_row_off_by_one", "xfusion/operators/response.py",
          '    idx = np.clip(np.searchsorted(true_edges, e, side="right") - 1, 0, true_edges.size - 2)\n',
          '    idx = np.clip(np.searchsorted(true_edges, e, side="right"), 0, true_edges.size - 2)  # MUTANT\n',
          ["tests/test_independent_model.py"],
          "RMF row of the next true-energy bin"),
    Fault("psf_bands_reversed", "xfusion/operators/psf.py",
          "    return np.stack([np.interp(energies, e, eye[b]) for b in range(e.size)])\n",
          "    return np.stack([np.interp(energies, e, eye[b]) for b in range(e.size)])[::-1]  # MUTANT\n",
          ["tests/test_independent_model.py", "-k", "energy_dependent"],
          "energy-dependent PSF bands applied in reverse order"),
    Fault("sobolev_gradient_halved", "xfusion/regularizers/sobolev.py",
          "        return (2 * self._c) * self.D.adjoint(self.D.forward(w))\n",
          "        return self._c * self.D.adjoint(self.D.forward(w))  # MUTANT: factor 2 lost\n",
          ["tests/test_gradients.py"],
          "Sobolev gradient missing its factor 2"),
    Fault("vignetting_ignored", "xfusion/operators/model.py",
          "    out = AreaMap(a.transpose(\"x\", \"y\", \"energy_true\").values, centres, e, factor, exposure)\n",
          "    vals = np.asarray(a.transpose(\"x\", \"y\", \"energy_true\").values)\n"
          "    vals = np.broadcast_to(vals.mean(axis=(0, 1)), vals.shape)  # MUTANT: vignetting averaged out\n"
          "    out = AreaMap(vals, centres, e, factor, exposure)\n",
          ["tests/test_independent_model.py", "-k", "vignetting"],
          "vignetting averaged over the field"),
    Fault("psf_flipped", "xfusion/operators/model.py",
          "        return SpatialMatrix.from_psf(psf.values, (M, N), factor)\n",
          "        return SpatialMatrix.from_psf(psf.values[::-1, ::-1], (M, N), factor)  # MUTANT: correlation\n",
          ["tests/test_behaviour.py", "-k", "asymmetric"],
          "PSF applied as a correlation (kernel flipped)"),
    Fault("blockwise_psf_adjoint_unflipped", "xfusion/operators/psf.py",
          "        return _conv_valid(u, self.kernel, flipped=True)\n",
          "        return _conv_valid(u, self.kernel, flipped=False)  # MUTANT\n",
          ["tests/test_adjoints.py", "-k", "blockwise"],
          "block (valid) PSF adjoint, shared by NumPy and Dask, uses the unflipped PSF"),
    Fault("auto_rule_boundary", "xfusion/registry/wavelet2d1d.py",
          "    bright = per_voxel >= AUTO_COUNTS_SPLIT\n",
          "    bright = per_voxel > AUTO_COUNTS_SPLIT  # MUTANT\n",
          ["tests/test_behaviour.py", "-k", "auto"],
          "automatic rule: boundary case 15 counts per voxel moved"),
    Fault("y_mask_dropped", "xfusion/likelihood.py",
          '    return PoissonTerm(model, obs["counts"].values, obs["mask"].values if "mask" in obs else None, dtype)\n',
          '    return PoissonTerm(model, obs["counts"].values, None, dtype)  # MUTANT: masks dropped\n',
          ["tests/test_behaviour.py", "-k", "mask"],
          "fuse ignores the sharp-spectral observation's mask"),
    Fault("randomized_pca_wrong_components", "xfusion/regularizers/lowrank.py",
          "    return _orthonormal(mean, vt[: int(rank) - 1])\n",
          "    return _orthonormal(mean, vt[1: int(rank)])  # MUTANT: leading component skipped\n",
          ["tests/test_behaviour.py", "-k", "randomized"],
          "randomized PCA keeps the wrong components"),
]


def _patch(root: Path, path: str, old: str, new: str, fault: str):
    p = root / path
    text = p.read_text()
    n = text.count(old)
    if n != 1:
        raise SystemExit(f"fault {fault!r}: the patch does not apply to {path} ({n} matches of the line "
                         f"{old.strip()[:80]!r}); the code drifted -- update the fault in benchmarks/mutations.py")
    p.write_text(text.replace(old, new))
    return p, text


def _make_copy(tmp: Path) -> Path:
    root = tmp / REPO.name
    shutil.copytree(REPO, root, ignore=IGNORE)
    shared = REPO.parent / "shared"
    if shared.exists():
        os.symlink(shared, tmp / "shared")  # keeps ../shared/data valid for the copy
    return root


def _env(root: Path):
    env = dict(os.environ, PYTHONPATH=str(root), MPLBACKEND="Agg", PYTHONDONTWRITEBYTECODE="1")
    if not (REPO.parent / "shared").exists():
        env.setdefault("XFUSION_ALLOW_MISSING_DATA", "1")
    return env


def _check_import(root: Path):
    out = subprocess.run([sys.executable, "-c", "import xfusion; print(xfusion.__file__)"], cwd=root,
                         env=_env(root), capture_output=True, text=True, check=True).stdout.strip()
    if not Path(out).resolve().is_relative_to(root.resolve()):
        raise SystemExit(f"in the copy, import xfusion resolves to {out}, not to the copy {root}; aborting")
    return out


FAILED_RE = re.compile(r"^(?:FAILED|ERROR) (\S+)", re.M)


def _run_tests(root: Path, tests, stop_first=True):
    cmd = [sys.executable, "-m", "pytest", *(["-x"] if stop_first else []), "-q", "-p", "no:cacheprovider", "-rfE",
           *tests]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=root, env=_env(root), capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return "timeout", None, time.perf_counter() - t0, ""
    dt = time.perf_counter() - t0
    failed = FAILED_RE.findall(proc.stdout)
    status = {0: "pass", 1: "fail"}.get(proc.returncode, f"rc={proc.returncode}")
    first = failed[0] if failed else None
    if not stop_first and failed:
        first = f"{first} (+{len(failed) - 1} more: {', '.join(t.split('::')[-1] for t in failed[1:])})"
    return status, first, dt, proc.stdout[-3000:] + proc.stderr[-2000:]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", action="append", help="run only these faults (repeatable)")
    ap.add_argument("--list", action="store_true", help="list the faults and their test subsets")
    ap.add_argument("--check", action="store_true", help="only check that every patch applies")
    ap.add_argument("--no-baseline", action="store_true", help="skip the unpatched baseline run")
    ap.add_argument("--all", action="store_true",
                    help="run each subset to the end (no -x) and list every failing test (slower)")
    args = ap.parse_args()
    faults = [f for f in FAULTS if not args.only or f.name in args.only]
    if args.only and len(faults) != len(set(args.only)):
        raise SystemExit(f"unknown fault(s): {sorted(set(args.only) - {f.name for f in FAULTS})}")
    if args.list:
        for f in faults:
            print(f"{f.name:28s} {f.what:60s} {' '.join(f.tests)}")
        return 0
    with tempfile.TemporaryDirectory(prefix="xfusion-mutants-") as tmp:
        root = _make_copy(Path(tmp))
        print(f"copy: {root}; import xfusion -> {_check_import(root)}", flush=True)
        for f in faults:  # every patch must apply before anything runs
            patched = [_patch(root, p, o, n, f.name) for p, o, n in [(f.path, f.old, f.new)] + f.extra]
            for p, text in reversed(patched):
                p.write_text(text)
        if args.check:
            print(f"all {len(faults)} patches apply")
            return 0
        if not args.no_baseline:
            subsets = []
            for f in faults:
                if f.tests not in subsets:
                    subsets.append(f.tests)
            for tests in subsets:
                status, first, dt, log = _run_tests(root, tests)
                print(f"baseline {' '.join(tests)}: {status} ({dt:.1f} s)", flush=True)
                if status != "pass":
                    print(log)
                    raise SystemExit("a test subset fails WITHOUT any fault: fix the suite before the mutation check")
        rows = []
        for f in faults:
            patched = [_patch(root, p, o, n, f.name) for p, o, n in [(f.path, f.old, f.new)] + f.extra]
            try:
                status, first, dt, log = _run_tests(root, f.tests, stop_first=not args.all)
            finally:
                for p, text in reversed(patched):
                    p.write_text(text)
            caught = "caught" if status == "fail" else ("MISSED" if status == "pass" else status)
            rows.append((f.name, f.what, caught, first or "-", dt))
            print(f"{f.name}: {caught} by {first or '-'} ({dt:.1f} s)", flush=True)
            if status not in ("pass", "fail"):
                print(log)
    w = max(len(r[0]) for r in rows)
    print()
    print(f"| {'fault':{w}s} | result | first failing test | s |")
    print(f"|{'-' * (w + 2)}|--------|--------------------|---|")
    for name, what, caught, first, dt in rows:
        print(f"| {name:{w}s} | {caught} | {first} | {dt:.0f} |")
    missed = [r[0] for r in rows if r[2] != "caught"]
    print(f"\n{len(rows) - len(missed)}/{len(rows)} faults caught" + (f"; not caught: {missed}" if missed else ""))
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
