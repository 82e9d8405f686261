"""docs/checking.rst: its Python blocks run as written, in order, in one namespace (the page tells users what to
read in a result, so a renamed record key or attribute must fail here, not on a user's screen)."""
import re
from pathlib import Path

import matplotlib

DOC = Path(__file__).resolve().parents[1] / "docs" / "checking.rst"


def _blocks(text):
    """The bodies of the ``.. code-block:: python`` directives of a reST page, dedented."""
    out = []
    for m in re.finditer(r"^\.\. code-block:: python\n\n((?:(?:   .*)?\n)+)", text, flags=re.M):
        out.append("\n".join(line[3:] for line in m.group(1).splitlines()))
    return out


def test_the_checking_page_runs_as_written(capsys):
    matplotlib.use("Agg")
    blocks = _blocks(DOC.read_text())
    assert len(blocks) == 2 and "auto_tuning" in blocks[0] and 'regularization="none"' in blocks[1]
    ns = {}
    for code in blocks:
        exec(compile(code, str(DOC), "exec"), ns)  # noqa: S102 - the page's own code
    rec, r, rl = ns["rec"], ns["r"], ns["rl"]
    assert rec["chosen"] in ("wavelet2d1d", "none") and len(rec["candidates"]) == len(rec["heldout_deviance"]) >= 3
    assert rec["shape_prior"]["delivered"] == ns["xfusion"].settings_of(r)["shape_prior"]
    assert rl.attrs["regularization"] == "none"
    out = capsys.readouterr().out
    assert '"ratio"' in out and str(rec["choice"]) in out
