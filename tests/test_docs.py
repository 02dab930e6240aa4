"""Every relative link in README.md and docs/*.md resolves: the file exists in the repository and, for a `#anchor`,
that file has a heading with that anchor (GitHub's rule). External links (http, https, mailto) are not checked.

Links are Markdown `[text](target)` and HTML `<img src="target">`, outside code blocks and inline code.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

FENCE = re.compile(r"^(```|~~~)")
INLINE_CODE = re.compile(r"(`+)(?:(?!\1).)+?\1")
MD_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
IMG_SRC = re.compile(r"<img\b[^>]*\bsrc\s*=\s*[\"']([^\"']+)[\"']", re.IGNORECASE)
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) of the lines outside fenced code blocks."""
    lines, fenced = [], False
    for number, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line.lstrip()):
            fenced = not fenced
            continue
        if not fenced:
            lines.append((number, line))
    return lines


def github_anchor(heading: str) -> str:
    """GitHub's heading anchor: inline markup dropped, lowercase, punctuation other than '-' and '_' removed,
    spaces to '-'."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text only
    text = text.replace("`", "").replace("*", "")
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a Markdown file, repeats numbered as GitHub does (-1, -2, ...)."""
    seen: dict[str, int] = {}
    found = set()
    for _, line in prose_lines(path.read_text(encoding="utf-8")):
        match = HEADING.match(line)
        if not match:
            continue
        anchor = github_anchor(match.group(2))
        count = seen.get(anchor, 0)
        seen[anchor] = count + 1
        found.add(anchor if count == 0 else f"{anchor}-{count}")
    return found


def links(path: Path) -> list[tuple[int, str]]:
    """(line number, target) of every link in a Markdown file."""
    found = []
    for number, line in prose_lines(path.read_text(encoding="utf-8")):
        line = INLINE_CODE.sub("", line)
        found += [(number, target) for target in MD_LINK.findall(line)]
        found += [(number, target) for target in IMG_SRC.findall(line)]
    return found


def broken_links(page: Path) -> list[str]:
    problems = []
    for number, target in links(page):
        if SCHEME.match(target) or target.startswith("//"):
            continue  # external: not checked
        file_part, _, anchor = target.partition("#")
        file_part = unquote(file_part)
        where = f"{page.relative_to(ROOT)}:{number}: {target}"
        resolved = (page.parent / file_part).resolve() if file_part else page
        if file_part.startswith("/") or not resolved.is_relative_to(ROOT):
            problems.append(f"{where}: points outside the repository")
            continue
        if not resolved.exists():
            problems.append(f"{where}: no such file")
            continue
        if anchor and (resolved.is_dir() or resolved.suffix.lower() != ".md" or anchor not in anchors(resolved)):
            problems.append(f"{where}: no heading with anchor #{anchor}")
    return problems


def test_anchor_rule() -> None:
    assert github_anchor("Nexus at scale") == "nexus-at-scale"
    assert github_anchor("The study (make study)") == "the-study-make-study"
    assert github_anchor("Several GPUs (torchrun)") == "several-gpus-torchrun"
    assert github_anchor("Your own corpora and tokenizer (data specs)") == "your-own-corpora-and-tokenizer-data-specs"
    assert github_anchor("`compare` at equal_loss!") == "compare-at-equal_loss"


def test_link_extraction_skips_code(tmp_path: Path) -> None:
    page = tmp_path / "x.md"
    page.write_text(
        '[a](b.md) `[c](d.md)` <img src="e.png">\n```\n[f](g.md)\n# not a heading\n```\n# Real heading\n',
        encoding="utf-8",
    )
    assert links(page) == [(1, "b.md"), (1, "e.png")]
    assert anchors(page) == {"real-heading"}


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_relative_links_resolve(page: Path) -> None:
    assert broken_links(page) == []


def test_docs_pages_are_linked_from_readme() -> None:
    readme_targets = {target.partition("#")[0] for _, target in links(ROOT / "README.md")}
    unlinked = [page.name for page in PAGES[1:] if f"docs/{page.name}" not in readme_targets]
    assert unlinked == []
