"""Every relative link in README.md and docs/ points at a file of the repository.

The README links the reports in docs/results/ and the history moved out of it; a moved or renamed
report would otherwise leave a dead link that no other test reads.
"""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\]\(([^)\s]+)\)")  # [text](target) and ![alt](target)
FENCE = re.compile(r"```.*?```", re.S)


def markdown_files():
    return [ROOT / "README.md"] + sorted((ROOT / "docs").rglob("*.md"))


def relative_links(text: str):
    for match in LINK.finditer(FENCE.sub("", text)):
        target = match.group(1)
        if not re.match(r"[a-zA-Z][a-zA-Z+.-]*:", target) and not target.startswith("#"):
            yield target


def dead_links(path: Path):
    return [target for target in relative_links(path.read_text(encoding="utf-8"))
            if not (path.parent / target.split("#")[0]).exists()]


def test_every_relative_link_resolves():
    files = markdown_files()
    assert len(files) > 5 and (ROOT / "docs" / "results" / "history.md") in files
    dead = {str(path.relative_to(ROOT)): links for path in files if (links := dead_links(path))}
    assert not dead, f"dead links (file: targets): {dead}"


def test_a_dead_link_is_found(tmp_path):
    page = tmp_path / "page.md"
    (tmp_path / "there.png").write_bytes(b"")
    page.write_text("[ok](there.png) ![pic](there.png#x) [web](https://example.org/a) [anchor](#top)\n"
                    "[gone](missing/results.md) [also gone](../nowhere.md#part)\n"
                    "```\n[in code](not/checked.md)\n```\n", encoding="utf-8")
    assert dead_links(page) == ["missing/results.md", "../nowhere.md#part"]
