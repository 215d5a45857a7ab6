"""Every relative link in README.md and docs/ points at a file of the repository, and every
`#anchor` into a Markdown file at one of its headings (GitHub's heading ids)."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")  # [text](target), not images
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)


def heading_ids(markdown: str) -> set[str]:
    """GitHub's ids: lower case, punctuation but `-` and `_` dropped, spaces to `-`; a
    repeated heading gets `-1`, `-2`, ..."""
    ids: set[str] = set()
    for heading in HEADING.findall(FENCE.sub("", markdown)):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        candidate, count = slug, 0
        while candidate in ids:
            count += 1
            candidate = f"{slug}-{count}"
        ids.add(candidate)
    return ids


def broken_links(doc: Path, root: Path = ROOT) -> list[str]:
    broken = []
    for target in LINK.findall(FENCE.sub("", doc.read_text())):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path_part, _, anchor = target.partition("#")
        path = (doc.parent / path_part).resolve() if path_part else doc
        if not path.is_relative_to(root) or not path.exists():
            broken.append(f"{target}: no such file in the repository")
        elif anchor and path.suffix == ".md" and anchor not in heading_ids(path.read_text()):
            broken.append(f"{target}: no heading #{anchor} in {path.relative_to(root)}")
    return broken


@pytest.mark.parametrize("doc", DOCS, ids=lambda doc: str(doc.relative_to(ROOT)))
def test_every_relative_link_resolves(doc: Path) -> None:
    assert broken_links(doc) == []


def test_heading_ids_follow_github() -> None:
    text = "# Deploying a ticket: `ticket deploy`\n## 10, 100, 1,000 devices\n## A b\n## A b\n"
    assert heading_ids(text) == {
        "deploying-a-ticket-ticket-deploy",
        "10-100-1000-devices",
        "a-b",
        "a-b-1",
    }


def test_a_broken_link_and_a_missing_anchor_are_found(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "scale.md").write_text("# Scale\n## The engine\n")
    (tmp_path / "outside.md").write_text("# Out\n")
    doc = tmp_path / "docs" / "index.md"
    doc.write_text(
        "[a](nowhere.md) [b](scale.md#no-such-heading) [c](scale.md#the-engine) "
        "[d](https://flower.ai) [e](#here) ![f](missing.png)\n## Here\n"
        "```\n[g](in-a-fence.md)\n```\n[h](../../etc/passwd)\n"
    )
    assert broken_links(doc, root=tmp_path) == [
        "nowhere.md: no such file in the repository",
        "scale.md#no-such-heading: no heading #no-such-heading in docs/scale.md",
        "../../etc/passwd: no such file in the repository",
    ]
