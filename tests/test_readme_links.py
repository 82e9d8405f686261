"""The README and the measurement notes in benchmarks/ link to files of the repository (figures, CSVs, the notes the
README's history was moved to): every relative link must name a file that exists, so that moving text between them
(sessions 77-78) cannot leave a reader at a dead link."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _relative_links(md):
    for target in LINK.findall(md.read_text(encoding="utf-8")):
        if target.startswith(("http://", "https://", "#", "mailto:")):
            continue
        yield target.split("#", 1)[0]


def test_every_relative_link_of_the_readme_and_the_notes_exists():
    files = [ROOT / "README.md", *sorted((ROOT / "benchmarks").glob("*.md"))]
    checked, dead = 0, []
    for md in files:
        for target in _relative_links(md):
            checked += 1
            if not (md.parent / target).exists():
                dead.append(f"{md.relative_to(ROOT)} -> {target}")
    assert checked >= 10, f"only {checked} relative links found: the link pattern no longer matches the notes"
    assert not dead, "dead links:\n" + "\n".join(dead)


def test_the_link_check_sees_a_dead_link(tmp_path):
    md = tmp_path / "note.md"
    md.write_text("[a figure](results/missing.png) and [the web](https://example.org) and [here](#top)\n")
    assert list(_relative_links(md)) == ["results/missing.png"]
    assert not (md.parent / "results/missing.png").exists()
