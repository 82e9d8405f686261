"""xfusion: hyperspectral image fusion for X-ray astronomy (HIFReD, Lascar, Bobin & Acero 2025).

``import xfusion`` gives the whole public surface: :func:`fuse`, :func:`observation`,
:func:`validate`, :func:`fusion_grid`, :func:`predict`, :func:`celestial_wcs` and the
modules :mod:`xfusion.toy`, :mod:`xfusion.io`, :mod:`xfusion.metrics`, :mod:`xfusion.plot`
:mod:`xfusion.baselines`, :mod:`xfusion.scenes` (randomized scenes with truth maps),
:func:`xfusion.tune`, :mod:`xfusion.analysis` (line maps) and :mod:`xfusion.consistency` (does the result predict
each input's counts) (``matplotlib.pyplot`` is imported only when a figure is made), and :mod:`xfusion.gaussian`,
:mod:`xfusion.jwst`, :mod:`xfusion.syfu` (JWST imager + IFU fusion: docs/jwst.rst).

Each name is imported on first use (PEP 562), so ``import xfusion`` and ``xfusion --version`` do not load xarray,
Dask, astropy and Numba before they are needed (``import xfusion`` alone: about 0.1 s instead of 2-4 s).
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
import types

__version__ = "0.1.0"

#: public name -> (submodule, attribute; None for the submodule itself)
_PUBLIC = {
    "observation": ("observation", "observation"), "validate": ("observation", "validate"),
    "celestial_wcs": ("observation", "celestial_wcs"), "fusion_grid": ("grid", "fusion_grid"),
    "predict": ("operators.model", "predict"), "fuse": ("fuse", "fuse"), "settings_of": ("fuse", "settings_of"),
    "tune": ("tuning", "tune"), "uncertainty": ("uncertainty", "uncertainty"),
    **{m: (m, None) for m in ("io", "toy", "metrics", "plot", "baselines", "scenes", "analysis", "consistency",
                              "gaussian", "jwst", "syfu")},
}
#: functions named like the module that holds them: importing the module must not replace the function
_SHADOWED = frozenset(n for n, (m, a) in _PUBLIC.items() if a == n == m)

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name):
    module, attr = _PUBLIC.get(name, (name, None))
    # any other submodule (xfusion.tuning, xfusion.registry, ...) loads on first use too, as it did when this
    # package imported everything
    if name not in _PUBLIC and (name.startswith("_") or importlib.util.find_spec(f"{__name__}.{name}") is None):
        raise AttributeError(f"module 'xfusion' has no attribute {name!r}")
    mod = importlib.import_module("." + module, __name__)
    value = mod if attr is None else getattr(mod, attr)
    globals()[name] = value  # later look-ups are plain attribute reads
    return value


def __dir__():
    return sorted(set(globals()) | set(_PUBLIC))


class _Package(types.ModuleType):
    """The package module: the import system records each loaded submodule as an attribute of its package, which
    would make ``xfusion.fuse`` the module ``xfusion.fuse`` once anything imported it. For the names in
    :data:`_SHADOWED` the function is the public attribute (as when this package imported everything eagerly); the
    module stays reachable as ``sys.modules["xfusion.fuse"]`` or ``importlib.import_module("xfusion.fuse")``."""

    def __setattr__(self, name, value):
        if name in _SHADOWED and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
