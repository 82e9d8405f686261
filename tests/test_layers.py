"""The package's imports go one way (DESIGN.md section 5): a module imports only from its own
layer or lower ones, and ``io/`` only from the core. Checked on the source with ``ast`` (every
``import`` statement, including those inside functions), so a lazy import cannot hide a cycle.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "xfusion"

#: lowest first; a module may import modules of its own layer or of lower layers
LAYERS = [
    ("core", ["observation", "grid", "axes", "units", "psf_sampling", "threads"]),
    ("operators", ["operators"]),
    ("terms", ["likelihood", "gaussian", "regularizers", "metrics", "analysis", "consistency", "sources"]),
    ("solvers", ["solvers"]),
    ("backends", ["parallel", "parallel_em", "backends", "checkpoints"]),
    ("api", ["registry", "start", "fuse", "tuning", "baselines", "toy", "scenes", "scenes_mosaic", "uncertainty", "plot",
             "cli", "toy_models", "jwst", "syfu", "gaussian_fission"]),
]
#: io reads and writes files: it may use the core (to build observations) and nothing above it
IO_ALLOWED = {"core", "io"}


def _layer_of(module: str) -> str:
    """Layer name of a dotted module path relative to the package (e.g. ``solvers.loop``)."""
    head = module.split(".")[0]
    if head == "io":
        return "io"
    for name, heads in LAYERS:
        if head in heads:
            return name
    raise AssertionError(f"module xfusion.{module} is in no layer: add it to LAYERS in {__file__}")


def _rank(layer: str) -> int:
    return [n for n, _ in LAYERS].index(layer)


def _imports(path: Path, module: str):
    """Yield (lineno, imported module relative to the package) for every xfusion import in ``path``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module.split(".")[:-1] if path.name != "__init__.py" else module.split(".")
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1] if node.level > 1 else list(package)
                target = base + (node.module.split(".") if node.module else [])
            elif node.module and node.module.split(".")[0] == "xfusion":
                target = node.module.split(".")[1:]
            else:
                continue
            if not target or target == [""]:
                # ``from . import a, b``: each name is a module (or the package's __version__)
                for alias in node.names:
                    if alias.name != "__version__":
                        yield node.lineno, ".".join(base + [alias.name] if node.level else [alias.name])
                continue
            if len(target) == 1 and node.module is None:
                continue
            # ``from .pkg import mod``: the names may be submodules of the target package
            yield node.lineno, ".".join(target)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "xfusion" and len(parts) > 1:
                    yield node.lineno, ".".join(parts[1:])


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).with_suffix("")
        parts = list(rel.parts)
        if parts == ["__init__"] or parts[-1] == "__main__":
            continue  # the package root re-exports the public surface
        if parts[-1] == "__init__":
            parts = parts[:-1]
        yield path, ".".join(parts)


def test_every_module_has_a_layer():
    for _, module in _modules():
        _layer_of(module)


def test_imports_go_one_way():
    bad = []
    for path, module in _modules():
        own = _layer_of(module)
        for lineno, target in _imports(path, module):
            other = _layer_of(target)
            if own == "io":
                ok = other in IO_ALLOWED
            elif other == "io":
                ok = own in ("api", "backends")
            else:
                ok = _rank(other) <= _rank(own)
            if not ok:
                bad.append(f"xfusion/{path.relative_to(PACKAGE)}:{lineno} ({own}) imports xfusion.{target} ({other})")
    assert not bad, "imports against the layer order (DESIGN.md section 5):\n" + "\n".join(bad)


@pytest.mark.parametrize("source, module, expected", [
    ("from ..io.zarr import write\n", "solvers.loop", ["io.zarr"]),
    ("from .parallel import f\n", "likelihood", ["parallel"]),
    ("def f():\n    from .io.psf import resample_psf\n", "grid", ["io.psf"]),
    ("from . import metrics, plot\n", "cli", ["metrics", "plot"]),
    ("import xfusion.fuse\n", "io.observation_files", ["fuse"]),
])
def test_import_parser_sees_relative_lazy_and_absolute_imports(tmp_path, source, module, expected):
    path = tmp_path / "m.py"
    path.write_text(source)
    assert [t for _, t in _imports(path, module)] == expected


def test_the_package_loads_its_parts_on_first_use():
    """``import xfusion`` loads no submodule (PEP 562): each public name, and any other submodule, loads on first
    use; ``fuse`` and ``uncertainty`` stay the functions after their modules were imported; unknown names fail; Numba
    is not imported with them (only when the starlet kernels are compiled)."""
    import subprocess
    import sys

    code = (
        "import sys, importlib, xfusion\n"
        "heavy = [m for m in ('xarray', 'dask', 'numba', 'astropy', 'scipy', 'xfusion.fuse') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "import xfusion.tuning, xfusion.uncertainty\n"  # the modules named like functions, imported first
        "assert callable(xfusion.fuse) and xfusion.fuse.__module__ == 'xfusion.fuse', xfusion.fuse\n"
        "assert callable(xfusion.uncertainty) and xfusion.uncertainty.__module__ == 'xfusion.uncertainty'\n"
        "assert importlib.import_module('xfusion.fuse').fuse is xfusion.fuse\n"
        "from xfusion import fuse, toy, tune\n"
        "assert fuse is xfusion.fuse and toy.__name__ == 'xfusion.toy' and tune.__module__ == 'xfusion.tuning'\n"
        "assert xfusion.registry.__name__ == 'xfusion.registry'\n"
        # Numba loads only when the starlet kernels are compiled (session 68: ~0.3 s of every process's start)
        "import xfusion.regularizers.starlet_kernels as sk\n"
        "assert 'xfusion.fuse' in sys.modules and 'numba' not in sys.modules and not sk._defined\n"
        "assert all(hasattr(xfusion, n) for n in xfusion.__all__)\n"
        "try:\n    xfusion.no_such_name\nexcept AttributeError as e:\n    assert 'no_such_name' in str(e)\n"
        "else:\n    raise SystemExit('no AttributeError')\n"
        "print('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
