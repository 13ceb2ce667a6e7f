"""No Markdown file points outside the repository, and its links resolve (issue 20).

A clone has only the repository: a link to ``../`` or to an absolute path works on
one machine at best. So no Markdown file may contain ``../`` at all (in a link, in
code or in prose), nor link an absolute path; every relative link must name a file
of the repository, and its ``#anchor`` a heading of that file (GitHub's slugs). Links
to web sites are allowed (and not fetched).
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Directories of tools and installs, not of the repository's own files.
SKIPPED = {".git", ".meltano", ".mypy_cache", ".pytest_cache", ".ruff_cache", "output"}
FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"`[^`\n]*`")
INLINE_LINK = re.compile(r"!?\[[^\]\n]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
REFERENCE = re.compile(r"^\s*\[[^\]\n]+\]:\s*(\S+)", re.MULTILINE)
EXTERNAL = ("http://", "https://", "mailto:")


def markdown_files(root: Path) -> list[Path]:
    return sorted(
        path
        for path in root.rglob("*.md")
        if not any(
            part in SKIPPED or part.startswith(".venv") or part.endswith(".egg-info")
            for part in path.relative_to(root).parts[:-1]
        )
    )


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces -."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = FENCE.sub("", path.read_text())
    found: set[str] = set()
    for line in text.splitlines():
        if match := re.match(r"^#{1,6}\s+(.*?)\s*#*$", line):
            base = slug(match.group(1))
            name, n = base, 0
            while name in found:  # a repeated heading gets -1, -2, …
                n += 1
                name = f"{base}-{n}"
            found.add(name)
    return found


def link_targets(path: Path) -> list[str]:
    text = CODE_SPAN.sub("", FENCE.sub("", path.read_text()))
    return INLINE_LINK.findall(text) + REFERENCE.findall(text)


def problems(root: Path) -> list[str]:
    found = []
    for path in markdown_files(root):
        name = path.relative_to(root)
        if "../" in path.read_text():
            found.append(f"{name}: contains ../")
        for target in link_targets(path):
            if target.startswith(EXTERNAL):
                continue
            file_part, _, anchor = target.partition("#")
            if file_part.startswith("/") or ":" in file_part:
                found.append(f"{name}: {target} is not relative")
                continue
            linked = (path.parent / file_part).resolve() if file_part else path
            if not linked.is_relative_to(root):
                found.append(f"{name}: {target} leaves the repository")
            elif not linked.exists():
                found.append(f"{name}: {target} names no file")
            elif anchor and (linked.suffix != ".md" or anchor not in anchors(linked)):
                found.append(f"{name}: {target} names no heading")
    return found


def test_markdown_links_stay_in_the_repository_and_resolve():
    files = {str(path.relative_to(ROOT)) for path in markdown_files(ROOT)}
    assert {"README.md", "CHANGELOG.md", "docs/architecture.md"} <= files
    assert problems(ROOT) == []


def test_the_check_finds_each_kind_of_bad_link(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("# A title\n\n## Two words, here\n")
    (tmp_path / "README.md").write_text(
        "# Top\n\n```bash\n# not a heading\n```\n\n"
        "[ok](docs/a.md#two-words-here) [ok](#top) [web](https://example.com/x)\n"
        "[up](../elsewhere.md) [abs](/etc/hosts) [gone](docs/b.md)\n"
        "[no heading](docs/a.md#three) [code heading](#not-a-heading)\n"
        "[ref]: ./docs/missing.md\n"
    )
    assert problems(tmp_path) == [
        "README.md: contains ../",
        "README.md: ../elsewhere.md leaves the repository",
        "README.md: /etc/hosts is not relative",
        "README.md: docs/b.md names no file",
        "README.md: docs/a.md#three names no heading",
        "README.md: #not-a-heading names no heading",
        "README.md: ./docs/missing.md names no file",
    ]


def test_the_readme_stays_under_250_lines():
    # For users: the rest goes to docs/ (issue 20).
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) < 250, len(lines)
