"""Convert a "percent"-format Python script into a Jupyter notebook (nbformat 4).

Cells start at lines ``# %%`` (code) or ``# %% [markdown]`` (markdown, whose lines are
comments: the leading ``# `` is removed). Anything before the first marker (e.g. a
jupytext YAML header) is skipped. Cell ids are deterministic, so regenerating an unchanged
script gives an identical file.

Usage::

    python examples/make_notebook.py                       # quickstart.py -> quickstart.ipynb
    python examples/make_notebook.py SCRIPT.py [OUT.ipynb]
    python examples/make_notebook.py --check               # exit 1 if the notebook is out of date
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
MARKER = re.compile(r"^# %%(?P<rest>.*)$")
KERNELSPEC = {"name": "python3", "display_name": "Python 3", "language": "python"}


def _strip_blank(lines):
    while lines and not lines[0].strip():
        lines = lines[1:]
    while lines and not lines[-1].strip():
        lines = lines[:-1]
    return lines


def _uncomment(line):
    if line.startswith("# "):
        return line[2:]
    if line.strip() == "#":
        return ""
    return line


def parse(text):
    """List of ``(kind, source)`` with kind "code" or "markdown"."""
    cells, kind, buf = [], None, []

    def flush():
        if kind is not None:
            lines = _strip_blank(buf)
            if kind == "markdown":
                lines = [_uncomment(s) for s in lines]
            if lines:
                cells.append((kind, "\n".join(lines)))

    for line in text.splitlines():
        m = MARKER.match(line)
        if m:
            flush()
            kind, buf = ("markdown" if "[markdown]" in m.group("rest") else "code"), []
        else:
            buf.append(line)
    flush()
    return cells


def build(script):
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.metadata = {"kernelspec": dict(KERNELSPEC), "language_info": {"name": "python"}}
    stem = Path(script).stem
    for i, (kind, source) in enumerate(parse(Path(script).read_text())):
        new = nbformat.v4.new_markdown_cell if kind == "markdown" else nbformat.v4.new_code_cell
        cell = new(source)
        cell["id"] = f"{stem}-{i:02d}"
        nb.cells.append(cell)
    nbformat.validate(nb)
    return nb


def render(script):
    import nbformat

    return nbformat.writes(build(script)) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description="percent-format script -> .ipynb (no outputs)")
    p.add_argument("script", nargs="?", default=str(HERE / "quickstart.py"))
    p.add_argument("output", nargs="?", default=None, help="default: the script's name with .ipynb")
    p.add_argument("--check", action="store_true", help="only check that the notebook is up to date")
    args = p.parse_args(argv)
    out = Path(args.output) if args.output else Path(args.script).with_suffix(".ipynb")
    text = render(args.script)
    if args.check:
        if not out.is_file() or out.read_text() != text:
            print(f"{out} is out of date: run python {Path(__file__).name} {args.script}", file=sys.stderr)
            return 1
        print(f"{out} is up to date")
        return 0
    out.write_text(text)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
