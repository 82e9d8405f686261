"""Sphinx configuration of the xfusion documentation (build: ``python -m sphinx -W -b html docs docs/_build/html``).

The ``xfusion-options`` directive renders the table of every option of a regularization
(or method) from the registry (``xfusion/registry/``: each option's dataclass field declares
its default, unit and meaning), so the defaults shown are the code's; an option without a unit
or meaning, and a registered regularization or method whose table no page renders, are build
warnings, hence errors under ``-W``: the documentation cannot fall behind the code.
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

from xfusion import registry  # noqa: E402

#: unit and meaning of every option, read from the registry (each option's dataclass field declares its default,
#: unit and documentation: xfusion/registry/)
OPTION_DOCS = {opt: (unit, doc) for name in registry.REGULARIZATIONS + tuple(f"method:{m}" for m in registry.METHODS)
               for opt, (_, unit, doc) in registry.option_docs(name).items()}
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
        env = self.state.document.settings.env  # per page, kept across incremental builds (checked at the end)
        if not hasattr(env, "xfusion_rendered"):
            env.xfusion_rendered = {}
        env.xfusion_rendered.setdefault(env.docname, set()).add(name)
        table = registry.option_docs(name)
        lines = [".. list-table::", "   :header-rows: 1", "   :widths: 14 14 22 50", "",
                 "   * - option", "     - default", "     - unit", "     - meaning"]
        for opt, (default, unit, text) in table.items():
            if not unit or not text:
                logger.warning(f"option {opt!r} of {name} is not documented: give its field a unit and a doc in "
                               "xfusion/registry/", location=(self.state.document.current_source, self.lineno))
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


def _check_all_rendered(app, env):
    """Every registered regularization and method with options has its table in the documentation."""
    wanted = set(registry.REGULARIZATIONS) | {f"method:{m}" for m in registry.METHODS
                                              if registry.option_docs(f"method:{m}")}
    rendered = set().union(*getattr(env, "xfusion_rendered", {}).values())
    for name in sorted(wanted - rendered):
        logger.warning(f"{name} is registered but no page renders its options: add `.. xfusion-options:: {name}` "
                       "to docs/options.rst")


def _purge(app, env, docname):
    getattr(env, "xfusion_rendered", {}).pop(docname, None)


def setup(app):
    app.add_directive("xfusion-options", OptionsDirective)
    app.connect("env-purge-doc", _purge)
    app.connect("env-updated", _check_all_rendered)
    app.add_directive("xfusion-cli-help", CliHelpDirective)
    return {"parallel_read_safe": False}  # env.xfusion_rendered is not merged across parallel readers
