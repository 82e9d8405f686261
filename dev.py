#!/usr/bin/env python3
"""The two set-up-and-run commands of xfusion, for a fresh machine with only Python >= 3.11.

    python3 dev.py demo [DEMO ARGS]     # venv + install + `xfusion demo` (writes ./xfusion-demo/)
    python3 dev.py test [PYTEST ARGS]   # venv + install with the test and docs extras,
                                        # build the docs with warnings as errors, run the tests

Both create (or reuse) a virtual environment in ``.venv/`` next to this file (override with
the environment variable ``XFUSION_VENV``), install this checkout into it with pip, and run
inside it; nothing outside the environment and the output folders is touched. An existing
environment is reused when it was made from the same ``pyproject.toml`` and extras (a
stamp file inside it records them), so a second run skips the install. ``make demo`` and
``make test`` call the same commands; ``.ci/run`` calls ``python3 dev.py test``.

Extra arguments go to the demo (e.g. ``--toy small``) or to pytest (e.g. ``-k units``; the tests run
in two processes, one file per process at a time, with pytest-xdist: ``-n 0`` runs them in one);
``test --no-docs`` skips the documentation build, ``test --no-tests`` only builds it
(``make docs``). ``test`` leaves out the heavy tier (``tests/conftest.py`` ``HEAVY``: the default end to end on
full-size scenes, and the tests that kill, interrupt or wait on other processes and clusters); ``test --heavy`` runs
only that tier (without the docs build), ``test --all`` both; ``.ci/run`` runs ``test`` and then ``test --heavy``.
A ``-m`` of your own replaces the tier's.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
MIN_PYTHON = (3, 11)


def _say(msg):
    print(f"[dev.py] {msg}", flush=True)


def _venv_dir():
    return Path(os.environ.get("XFUSION_VENV", ROOT / ".venv")).resolve()


def _venv_python(venv):
    win = venv / "Scripts" / "python.exe"
    return win if win.exists() else venv / "bin" / "python"


def _run(cmd, **kw):
    _say("$ " + " ".join(str(c) for c in cmd))
    return subprocess.run([str(c) for c in cmd], cwd=ROOT, **kw).returncode


#: optional extras tried after an extra is installed (extra -> (optional extra, what it serves and why it can fail));
#: their failure is reported, not fatal. PyPI has no Sherpa wheel for this platform (seen on 2026-11-30: sherpa 4.19.0,
#: source only); its source build needs tools a bare machine lacks.
OPTIONAL = {"test": ("sherpa", "the Sherpa fit of tests/test_export_fit.py (skipped without it); its source build "
                               "needs a C compiler, bison, flex and the FFTW headers (Debian: apt-get install "
                               "bison flex libfftw3-dev)")}


def _optional(py, extra):
    name, why = OPTIONAL[extra]
    if _run([py, "-m", "pip", "install", "--quiet", "-e", f".[{name}]"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) != 0:
        _say(f"NOTE: the optional extra '{name}' could not be installed; it serves {why}. Everything else is "
             f"installed; install it later with: pip install -e '.[{name}]'")
    else:
        _say(f"installed the optional extra '{name}'")


def ensure_env(extras):
    """Create the virtual environment if needed and install this checkout with ``extras``."""
    if sys.version_info < MIN_PYTHON:
        sys.exit(f"xfusion needs Python >= {'.'.join(map(str, MIN_PYTHON))}; this is {sys.version.split()[0]} "
                 f"({sys.executable}). Run dev.py with a newer python3.")
    venv = _venv_dir()
    py = _venv_python(venv)
    if not py.exists():
        _say(f"creating the virtual environment {venv}")
        if _run([sys.executable, "-m", "venv", venv]) != 0:
            sys.exit("`python -m venv` failed; on Debian/Ubuntu install the python3-venv package first")
        py = _venv_python(venv)
    spec = ".[" + ",".join(extras) + "]" if extras else "."
    stamp_text = hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + spec.encode()).hexdigest()
    stamp = venv / f"xfusion-install-{'-'.join(extras) or 'base'}.stamp"
    if stamp.exists() and stamp.read_text() == stamp_text:
        _say(f"reusing {venv} (already installed: {spec})")
        return py
    t0 = time.perf_counter()
    if _run([py, "-m", "pip", "install", "--quiet", "--upgrade", "pip"]) != 0:
        sys.exit("could not upgrade pip in the virtual environment (is the package index reachable?)")
    if _run([py, "-m", "pip", "install", "--quiet", "-e", spec]) != 0:
        sys.exit(f"pip install -e '{spec}' failed (see above)")
    for extra in set(extras) & set(OPTIONAL):
        _optional(py, extra)
    stamp.write_text(stamp_text)
    _say(f"installed {spec} in {time.perf_counter() - t0:.0f} s")
    return py


def cmd_demo(args):
    py = ensure_env([])
    # a second run replaces the demo's own outputs (--overwrite replaces only what xfusion wrote and marked)
    extra = [] if "--overwrite" in args else ["--overwrite"]
    return _run([py, "-m", "xfusion.cli", "demo", *extra, *args], env=dict(os.environ, MPLBACKEND="Agg"))


def test_plan(args, cpus=None):
    """``(build_docs, run_tests, pytest_args)`` for ``dev.py test ARGS``: the suite leaves out the heavy tier
    (``-m "not heavy"``, tests/conftest.py ``HEAVY``); ``--heavy`` runs only that tier and no docs build, ``--all``
    both tiers; a ``-m`` of the caller's replaces the tier's; ``--no-docs`` / ``--no-tests`` skip a part. On 2 or more
    cores the tests run in two processes, whole files to each, in the order tests/conftest.py gives them (226 s instead
    of 342 s on 2 cores, session 14; the longest files first, session 67); a later ``-n`` in ``args`` overrides."""
    args = list(args)
    heavy, everything = "--heavy" in args, "--all" in args
    own = [a for a in args if a not in ("--heavy", "--all", "--no-docs", "--no-tests")]
    tier = ["-m", "heavy"] if heavy else [] if everything else ["-m", "not heavy"]
    if any(a == "-m" or (a.startswith("-m") and not a.startswith("--")) for a in own):
        tier = []
    cpus = (os.cpu_count() or 1) if cpus is None else cpus
    workers = ["-n", "2", "--dist", "loadfile", "--no-loadscope-reorder"] if cpus >= 2 else []
    return ("--no-docs" not in args and not heavy, "--no-tests" not in args, ["-q", *workers, *tier, *own])


def cmd_test(args):
    py = ensure_env(["test", "docs"])
    env = dict(os.environ, MPLBACKEND="Agg")
    docs, tests, pytest_args = test_plan(args)
    if docs:
        t0 = time.perf_counter()
        rc = _run([py, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html", "docs", "docs/_build/html"],
                  env=env)
        if rc != 0:
            _say("the documentation build failed (warnings are errors); fix the messages above")
            return rc
        _say(f"docs built in {time.perf_counter() - t0:.1f} s: {ROOT / 'docs/_build/html/index.html'}")
    if not tests:
        return 0
    return _run([py, "-m", "pytest", *pytest_args], env=env)


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {"demo": cmd_demo, "test": cmd_test}
    if not argv or argv[0] not in commands:
        print(__doc__)
        return 2
    t0 = time.perf_counter()
    rc = commands[argv[0]](argv[1:])
    _say(f"{argv[0]} finished with exit code {rc} in {time.perf_counter() - t0:.0f} s")
    return rc


if __name__ == "__main__":
    sys.exit(main())
