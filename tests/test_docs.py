"""The README and the manual in docs/ cannot rot: every relative link points at a file that exists, every
``#anchor`` at a heading of its target (GitHub's slug rule), and the README links every page of docs/."""

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# [text](target) and ![alt](target); markdown allows no space between "]" and "(".
LINK = re.compile(r"\]\(([^)\s]+)\)")
HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
INLINE_CODE = re.compile(r"`[^`\n]*`")
EXTERNAL = ("http://", "https://", "mailto:")


def heading_slug(heading: str) -> str:
    """GitHub's anchor of a heading: lowercase, punctuation dropped except '-' and '_', each space a '-'."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def prose_lines(path: Path) -> list[tuple[int, str]]:
    """``(line number, text)`` of the lines of a markdown file outside fenced code blocks."""
    lines, fenced = [], False
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced:
            lines.append((number, line))
    return lines


def anchors(path: Path) -> set[str]:
    """The anchors of a markdown file's headings; a repeated slug gets "-1", "-2", ... as on GitHub."""
    found: set[str] = set()
    seen: dict[str, int] = {}
    for _, line in prose_lines(path):
        match = HEADING.match(line)
        if match:
            slug = heading_slug(match.group(2))
            count = seen.get(slug, 0)
            seen[slug] = count + 1
            found.add(slug if count == 0 else f"{slug}-{count}")
    return found


def links(path: Path) -> list[tuple[int, str]]:
    """``(line number, target)`` of every link and image outside code."""
    return [
        (number, target)
        for number, line in prose_lines(path)
        for target in LINK.findall(INLINE_CODE.sub("", line))
    ]


def broken_links(path: Path) -> list[str]:
    """One ``file:line: target: why`` message per relative link of ``path`` that does not resolve."""
    problems = []
    for number, target in links(path):
        if target.startswith(EXTERNAL):
            continue
        file_part, _, anchor = target.partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path
        where = f"{path.relative_to(REPO) if path.is_relative_to(REPO) else path.name}:{number}: {target}"
        if not linked.exists():
            problems.append(f"{where}: no file {file_part}")
        elif anchor and (linked.suffix != ".md" or anchor not in anchors(linked)):
            problems.append(f"{where}: no heading with the anchor #{anchor}")
    return problems


def documentation_files() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def test_heading_slug_follows_githubs_rule():
    # Worked out by hand from GitHub's rule (and as the README's own links used it).
    assert heading_slug("The network (`kldet.model`)") == "the-network-kldetmodel"
    assert heading_slug("5. Ali-TSM — adaptive online training sample mining") == (
        "5-ali-tsm--adaptive-online-training-sample-mining"
    )
    assert heading_slug("GPUs, AMP, multi-node, resume") == "gpus-amp-multi-node-resume"
    assert heading_slug("`kldet-data`") == "kldet-data"
    assert heading_slug("snake_case kept") == "snake_case-kept"


def test_broken_links_names_missing_files_and_anchors_and_nothing_else(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "page.md").write_text(
        "# Page\n\n## Part (one)\n\n## Part (one)\n\n```\n# not a heading\n```\n"
    )
    (tmp_path / "docs" / "plot.png").write_bytes(b"")
    readme = tmp_path / "README.md"
    readme.write_text(
        "# Top\n"
        "[ok](docs/page.md) [ok](docs/page.md#part-one) [ok](docs/page.md#part-one-1) [ok](#top)\n"
        "![ok](docs/plot.png) [ok](https://example.org/x.md#y) `[code](docs/none.md)` [0, 1] (%)\n"
        "[bad](docs/missing.md)\n"
        "[bad](docs/page.md#part-two)\n"
        "[bad](docs/page.md#not-a-heading)\n"
        "[bad](#nowhere) [bad](docs/plot.png#x)\n"
        "```\n[code](docs/none.md)\n```\n"
    )
    assert broken_links(readme) == [
        "README.md:4: docs/missing.md: no file docs/missing.md",
        "README.md:5: docs/page.md#part-two: no heading with the anchor #part-two",
        "README.md:6: docs/page.md#not-a-heading: no heading with the anchor #not-a-heading",
        "README.md:7: #nowhere: no heading with the anchor #nowhere",
        "README.md:7: docs/plot.png#x: no heading with the anchor #x",
    ]


def test_every_link_of_the_readme_and_the_manual_resolves():
    files = documentation_files()
    assert len(files) > 2
    problems = [problem for path in files for problem in broken_links(path)]
    assert problems == []


def test_the_readme_links_every_page_of_the_manual():
    linked = {
        (REPO / target.partition("#")[0]).resolve()
        for _, target in links(REPO / "README.md")
        if not target.startswith(("#", *EXTERNAL))
    }
    pages = set((REPO / "docs").glob("*.md"))
    assert pages, "docs/ holds no pages"
    assert sorted(path.name for path in pages if path.resolve() not in linked) == []
