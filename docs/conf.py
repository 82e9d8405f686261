"""Sphinx configuration of the xfusion documentation (build: ``python -m sphinx -W -b html docs docs/_build/html``).

The ``xfusion-options`` directive renders the table of every option of a regularization
from the live ``xfusion.fuse.OPTION_DEFAULTS`` (so the defaults shown are the code's) with
the unit and meaning given in ``OPTION_DOCS`` below; an option without an entry there is a
build warning, hence an error under ``-W``: the documentation cannot fall behind the code.
"""
from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

from docutils.parsers.rst import Directive, directives
from sphinx.util import logging

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import xfusion  # noqa: E402
fuse_module = importlib.import_module("xfusion.fuse")  # the module (xfusion.fuse is the function)

project = "xfusion"
author = "the xfusion developers"
release = version = xfusion.__version__
extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon", "sphinx.ext.viewcode", "sphinx.ext.mathjax"]
exclude_patterns = ["_build"]
html_theme = "alabaster"
html_theme_options = {"description": "Hyperspectral fusion for X-ray astronomy", "fixed_sidebar": True}
html_static_path: list[str] = []
autodoc_member_order = "bysource"
autodoc_default_options = {"members": True, "undoc-members": False}
autodoc_typehints = "none"
napoleon_numpy_docstring = True
napoleon_google_docstring = False
napoleon_use_rtype = False
napoleon_use_ivar = True  # "Attributes" sections as field lists (no duplicate attribute entries for dataclasses)
default_role = "code"
suppress_warnings = ["ref.python"]  # ambiguous cross-references between re-exported names

#: unit and meaning of every option of xfusion.fuse's regularizations and methods
OPTION_DOCS = {
    "n_scales_2d": (
        "integer", "Number of 2D (spatial) starlet scales J2. Scales finer than J2 are thresholded; the "
        "coarsest spatial band is kept. 1 resolves the finest spatial detail with the least smoothing."),
    "n_scales_1d": (
        "integer or \"auto\"", "Number of 1D (spectral) starlet scales J1 of the 2D-1D transform. Bands with "
        "2D scale < ``n_scales_2d`` and 1D scale < ``n_scales_1d`` are invisible to both instruments (see "
        "``null_space``). ``\"auto\"``: chosen from the data without the truth."),
    "k": (
        "noise sigmas (dimensionless)", "Soft threshold ``rho = k * sigma`` of the starlet coefficients, "
        "``sigma`` the MAD noise estimate of each band (``per_band``). Larger k: smoother cube, fewer faint "
        "features. ``\"auto\"``: truth-free selection by Poisson thinning (the counts are split binomially "
        "into two independent halves; the value whose fit on one half best predicts the other is kept)."),
    "k_rule": (
        "\"constant\" or \"sigmoid\"", "``\"constant\"``: the same k everywhere. ``\"sigmoid\"``: paper eq. 21, "
        "k goes from ``k_min`` on faint voxels to ``k_max`` on bright ones with the coarse-scale brightness."),
    "k_min": ("noise sigmas", "Smallest threshold of ``k_rule=\"sigmoid\"`` (faint voxels); ignored otherwise."),
    "k_max": ("noise sigmas", "Largest threshold of ``k_rule=\"sigmoid\"`` (bright voxels); ignored otherwise."),
    "null_space": (
        "\"zero\", \"threshold\" or \"auto\"", "What to do with the bands that neither instrument sees (fine "
        "in space and in energy): ``\"zero\"`` removes them (an infinite l1 weight; prevents their slow growth "
        "over iterations), ``\"threshold\"`` treats them like the other bands (the paper); ``\"auto\"`` "
        "chooses, together with ``n_scales_1d``, by Poisson thinning."),
    "per_band": (
        "boolean", "True: a MAD noise estimate per 2D-1D band. False: the paper's rule, the MAD of the finest "
        "band for every band."),
    "rank": (
        "integer (number of components) or \"auto\"", "Dimension r of the spectral subspace: ``Z = W V`` with V the mean "
        "and the leading principal components of the sharp-spectral spectra. Must not exceed the number of "
        "channels or of sharp-spectral pixels. ``\"auto\"``: chosen by Poisson thinning among a few ranks."),
    "explained": (
        "fraction in (0, 1], or None", "If set, choose the rank as the smallest number of components "
        "explaining this fraction of the spectral variance (at most 64) instead of ``rank``."),
    "precondition": (
        "boolean", "Scale the FISTA steps per pixel by the sharp-spatial brightness (a diagonal "
        "preconditioner): faster convergence on fields with a large dynamic range."),
    "mu": (
        "dimensionless, or \"auto\"", "Strength of the Sobolev smoothness penalty ``(mu / level) ||D W||^2`` on the subspace "
        "maps W (``level`` the mean flux per voxel, which makes mu independent of exposure and flux units; "
        "the paper advises 0.01-0.1). ``\"auto\"``: chosen by Poisson thinning."),
    "chunks": (
        "(bx, by) fused pixels, or None", "Dask path only: pixel block of the fused grid (each block holds the "
        "whole energy axis). None: chosen from the cube shape, the PSF and starlet halos and the memory per "
        "worker thread."),
    "layout": (
        "\"halo\" or \"rechunk\"", "Dask path, full-cube regularizations: run the PSF operators on the pixel "
        "blocks with halos of the PSF radius (``\"halo\"``) or on full-field channel slabs (``\"rechunk\"``, "
        "allows blocks smaller than the PSF)."),
    "step": (
        "internal units (None = automatic)", "Fixed step of ``method=\"ista\"`` (the paper's algorithm). "
        "None: 1/50 of the smallest EM step at the start; a step that diverges stops the run with a message "
        "asking for a smaller one."),
}

logger = logging.getLogger(__name__)


def _fmt_default(v):
    if isinstance(v, str):
        return f'``"{v}"``'
    return f"``{v!r}``"


class OptionsDirective(Directive):
    """``.. xfusion-options:: REGULARIZATION`` (or ``method:NAME``): a table of its options."""

    required_arguments = 1
    has_content = False
    option_spec = {"caption": directives.unchanged}

    def run(self):
        name = self.arguments[0]
        if name.startswith("method:"):
            table = fuse_module.METHOD_OPTIONS[name.split(":", 1)[1]]
        else:
            table = fuse_module.OPTION_DEFAULTS[name]
        lines = [".. list-table::", "   :header-rows: 1", "   :widths: 14 14 22 50", "",
                 "   * - option", "     - default", "     - unit", "     - meaning"]
        for opt, default in table.items():
            unit, text = OPTION_DOCS.get(opt, (None, None))
            if unit is None:
                logger.warning(f"option {opt!r} of {name} is not documented: add it to OPTION_DOCS in docs/conf.py",
                               location=(self.state.document.current_source, self.lineno))
                unit, text = "?", "undocumented"
            lines += [f"   * - ``{opt}``", f"     - {_fmt_default(default)}", f"     - {unit}", f"     - {text}"]
        self.state_machine.insert_input(lines, self.state.document.current_source)
        return []


class CliHelpDirective(Directive):
    """``.. xfusion-cli-help:: [COMMAND]``: the live ``xfusion [COMMAND] --help`` text as a literal block."""

    optional_arguments = 1
    has_content = False

    def run(self):
        from docutils import nodes

        from xfusion.cli import build_parser

        os.environ["COLUMNS"] = "100"  # argparse wraps at the terminal width: make it fixed
        parser = build_parser()
        if self.arguments:
            sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
            parser = sub.choices[self.arguments[0]]
        text = parser.format_help()
        return [nodes.literal_block(text, text)]


def setup(app):
    app.add_directive("xfusion-options", OptionsDirective)
    app.add_directive("xfusion-cli-help", CliHelpDirective)
    return {"parallel_read_safe": True}
