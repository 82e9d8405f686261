"""What a regularization or a method declares: its options (a dataclass whose fields carry default,
unit, documentation and validation), its family and what the backends need to know about it.

A regularization file defines ``SPEC = Regularization(...)``; a method file ``SPEC = Method(...)``.
``xfusion.registry`` lists the files; :func:`xfusion.fuse`, the CLI (``xfusion fuse --help``) and the
documentation's options table read everything from these objects.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np

FULL, SUBSPACE = "full", "subspace"


def is_real(v):
    """A finite real number that is not a bool (``True`` is an ``int`` in Python)."""
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_)) \
        and bool(np.isfinite(v))


def is_int(v):
    """An integer that is not a bool (``2.0`` and ``2.7`` are refused, never truncated)."""
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def option(default, unit, doc, check=None):
    """A dataclass field of an options class: ``default``, ``unit`` and ``doc`` (shown by ``help()``,
    ``xfusion fuse --help`` and the documentation's options table) and ``check(name, value)``, which
    raises ``ValueError`` saying what is wrong and how to fix it."""
    return field(default=default, metadata={"unit": unit, "doc": doc, "check": check})


class OptionSet:
    """Base of the options dataclasses: validates every field (its ``check``) and then :meth:`cross_check`."""

    def __post_init__(self):
        for f in dataclasses.fields(self):
            check = f.metadata.get("check")
            if check is not None:
                check(f.name, getattr(self, f.name))
        self.cross_check()

    def cross_check(self):
        """Checks that involve several options (override)."""

    @classmethod
    def defaults(cls) -> dict:
        return {f.name: f.default for f in dataclasses.fields(cls)}

    @classmethod
    def docs(cls) -> dict:
        """``{name: (default, unit, doc)}`` in declaration order."""
        return {f.name: (f.default, f.metadata["unit"], f.metadata["doc"]) for f in dataclasses.fields(cls)}

    @classmethod
    def validate(cls, params: dict):
        """Validate the entries of ``params`` that are this class's options (raises ``ValueError``)."""
        cls(**{f.name: params[f.name] for f in dataclasses.fields(cls) if f.name in params})


def describe(options_cls, title):
    """A docstring listing the options (``help()`` of an options class shows it)."""
    lines = [title, "", "Options (default; unit): meaning", ""]
    for name, (default, unit, doc) in options_cls.docs().items():
        lines.append(f"- ``{name}`` ({default!r}; {unit}): {doc}")
    return "\n".join(lines)


@dataclass(frozen=True)
class Regularization:
    """A prior phi(Z) of :func:`xfusion.fuse`.

    ``family``: ``"full"`` (the iterate is the cube Z; methods em, ista) or ``"subspace"`` (Z = W V;
    method fista). ``build(params, level) -> object``: full family, a regularizer with
    ``prox(z, with_penalty=...)`` and ``value(z)`` (or None); subspace family, a pair
    ``(smooth, prox)`` (either None). ``level``: mean intensity per voxel in internal units.
    ``halo(params)``: pixels a block of the Dask path needs from its neighbours for the prior;
    ``copies(params)``: cube-sized float32 temporaries per voxel of a Dask task (memory).
    ``max_iter``: default iteration cap (None: the method's; ``"auto"``: chosen by thinning);
    ``early_stop``: iterations used when "auto" cannot be resolved (Dask-backed data), set for the
    priors regularized by early stopping only. ``prepare(params, y_counts, client, mask=None)``: resolves
    options left "auto" on Dask-backed data (from the used counts: ``mask`` > 0) (None: nothing to do). ``dask``: whether the Dask path
    (:mod:`xfusion.parallel_em`, 2D-1D starlet priors) runs it; False refuses Dask-backed data.
    """
    name: str
    summary: str
    options: type
    family: str
    build: Callable[[dict, float], Any]
    halo: Callable[[dict], int] = lambda p: 0
    copies: Callable[[dict], int] = lambda p: 6
    max_iter: Any = None
    early_stop: Optional[int] = None
    prepare: Optional[Callable] = None
    dask: bool = True


@dataclass(frozen=True)
class Method:
    """A solver of :func:`xfusion.fuse`: its ``family`` (as :class:`Regularization`), its options, its
    default iteration cap and whether a prior's early-stopping count applies to it (it does for EM and
    FISTA, whose early iterates are the smooth ones; not for fixed-step ISTA, which moves slowly)."""
    name: str
    summary: str
    options: type
    family: str
    max_iter: int
    early_stopping: bool = True
