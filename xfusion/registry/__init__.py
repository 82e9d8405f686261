"""The registry of regularizations and methods of :func:`xfusion.fuse`.

Each regularization and each method is one file of this package declaring ``SPEC`` (a
:class:`~xfusion.registry.base.Regularization` or :class:`~xfusion.registry.base.Method`): its
name, an options dataclass (defaults, validation, the documentation ``help()``, ``xfusion fuse
--help`` and the docs' options table show), its family (full cube or subspace), halo and memory
per voxel on the Dask path, default iteration cap and a builder. Adding a regularizer is one new
file plus one line in ``REGULARIZATIONS`` below.
"""
from __future__ import annotations

import importlib

from .base import FULL, SUBSPACE, Method, OptionSet, Regularization  # noqa: F401

#: the registered regularizations (module names in this package; the default of ``fuse`` is "auto": the first, tuned, or "none", chosen by thinning)
REGULARIZATIONS = ("wavelet2d1d", "lowrank", "lowrank_sobolev", "lowrank_wavelet2d", "none", "anscombe2d1d",
                   "lowrank_local")
#: the registered methods; per family the first is the default
METHODS = ("em", "ista", "fista")

_REG = {n: importlib.import_module(f"{__name__}.{n}").SPEC for n in REGULARIZATIONS}
_MET = {n: importlib.import_module(f"{__name__}.{n}").SPEC for n in METHODS}


def regularization(name) -> Regularization:
    """The spec of a regularization (``ValueError`` listing the registered ones if unknown)."""
    try:
        return _REG[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown regularization {name!r}; choose one of {', '.join(REGULARIZATIONS)}") from None


def method(name) -> Method:
    try:
        return _MET[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}") from None


def methods_for(family) -> tuple:
    """Names of the methods of a family, the default first."""
    return tuple(n for n in METHODS if _MET[n].family == family)


def option_docs(name) -> dict:
    """``{option: (default, unit, doc)}`` of a regularization, or of a method as ``"method:NAME"``."""
    if str(name).startswith("method:"):
        return method(name.split(":", 1)[1]).options.docs()
    return regularization(name).options.docs()


def help_text(width=100) -> str:
    """Plain-text summary of every regularization and method with its options and defaults (``xfusion fuse
    --help``)."""
    import textwrap

    lines = ["regularizations (--regularization NAME; options: --option KEY=VALUE, default in brackets):"]
    for kind, names, get in (("", REGULARIZATIONS, regularization), ("method ", METHODS, method)):
        if kind:
            lines.append("methods (--method NAME):")
        for n in names:
            spec = get(n)
            family = "full cube" if spec.family == FULL else "subspace"
            extra = f" [{spec.family}-cube family]" if kind else \
                f" [{family}; methods {', '.join(methods_for(spec.family))}]"
            lines += textwrap.wrap(f"{n}: {spec.summary}{extra}", width, initial_indent="  ",
                                   subsequent_indent="      ")
            opts = ", ".join(f"{k} [{d!r}]" for k, (d, _, _) in spec.options.docs().items())
            if opts:
                lines += textwrap.wrap(f"options: {opts}", width, initial_indent="      ",
                                       subsequent_indent="        ")
    return "\n".join(lines)
