"""The documentation's relative links resolve: every ``[text](target)`` in README.md and
docs/**/*.md that is not a URL names a file or folder of the repository, and a ``#anchor`` names
a heading of the Markdown file it points to (GitHub's heading slugs). The model cards state what
the product is now, not when each part was done."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = sorted([ROOT / "README.md", *(ROOT / "docs").rglob("*.md")])
MODEL_CARDS = sorted([ROOT / "docs" / "model_card.md", *(ROOT / "docs" / "models").glob("*.md"),
                      *(ROOT / "ultrares_stream" / "models" / "weights").glob("*.md")])

_FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
_CODE = re.compile(r"`[^`\n]*`")
_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+(?:\"[^\"]*\"|'[^']*'))?\s*\)")
_HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$", re.M)
_EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:", re.I)  # http:, https:, mailto: ...


def _prose(text: str) -> str:
    """The text without fenced code blocks and inline code, where links are not links."""
    return _CODE.sub("", _FENCE.sub("", text))


def links(path: Path) -> list[str]:
    return _LINK.findall(_prose(path.read_text(encoding="utf-8")))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading keeps its text
    text = re.sub(r"[^\w\- ]", "", text.lower().replace("`", ""))
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every anchor a Markdown file defines (repeated headings get -1, -2 ... as on GitHub)."""
    seen: dict[str, int] = {}
    out: set[str] = set()
    for heading in _HEADING.findall(re.sub(_FENCE, "", path.read_text(encoding="utf-8"))):
        base = slug(heading)
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    out |= set(re.findall(r"<a\s+(?:name|id)=\"([^\"]+)\"", path.read_text(encoding="utf-8")))
    return out


def broken_links(path: Path) -> list[str]:
    problems = []
    for target in links(path):
        if _EXTERNAL.match(target):
            continue
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        if not dest.exists():
            problems.append(f"{target}: no such file {dest.relative_to(ROOT) if dest.is_relative_to(ROOT) else dest}")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            problems.append(f"{target}: no heading with anchor #{anchor} in {dest.relative_to(ROOT)}")
    return problems


def test_slugs_follow_github():
    assert slug("Self-ensemble (`--ensemble`)") == "self-ensemble---ensemble"
    assert slug("Degradations (`ultrares_stream/train/degradations.py`)") == \
        "degradations-ultrares_streamtraindegradationspy"
    assert slug("Defaults, and why") == "defaults-and-why"


def test_links_outside_code_are_found_and_code_is_skipped(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("See [a](a.md) and ![pic](img/p.png 'x').\n\n```\n[not](b.md)\n```\n"
                    "and `[no](c.md)` and [site](https://example.com).\n")
    assert links(page) == ["a.md", "img/p.png", "https://example.com"]


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(path):
    assert broken_links(path) == []


_DIARY = re.compile(r"\b(first|second|third|fourth|fifth|sixth|seventh|eighth|ninth|tenth|this|"
                    r"earlier|previous|last|next|same|one)\s+session|\bsessions?\b|\(issue \d+\)|"
                    r"\bbefore the fix\b|\bafter the fix\b", re.I)


@pytest.mark.parametrize("path", MODEL_CARDS, ids=lambda p: str(p.relative_to(ROOT)))
def test_model_cards_carry_no_diary(path):
    hits = [line for line in path.read_text(encoding="utf-8").splitlines() if _DIARY.search(line)]
    assert hits == []


#: which period of work did what: git history keeps that, the repository states what is
_PERIOD = re.compile(r"\b(first|second|third|fourth|fifth|sixth|seventh|eighth|ninth|tenth|earlier|this|one)"
                     r"\s+session\b|\bissues?\s+#?\d+", re.I)
_SCANNED = ("docs", "README.md", "ultrares_stream", "tests", "scripts", "configs")
_TEXT = {".md", ".py", ".sh", ".yaml", ".yml", ".toml", ".txt", ".cfg", ".js", ".html", ".css", ""}


def _scanned_files() -> list[Path]:
    files = []
    for name in _SCANNED:
        top = ROOT / name
        for path in [top] if top.is_file() else sorted(top.rglob("*")):
            if path.is_file() and path.suffix in _TEXT and "__pycache__" not in path.parts:
                files.append(path)
    return files


def test_the_period_vocabulary_is_caught():
    def said(*words: str) -> str:  # the phrases are put together here, so this file never says them
        return " ".join(words)

    assert _PERIOD.search(said("measured in the", "ninth", "session")) and _PERIOD.search(said("(issue", "16, item 2)"))
    assert _PERIOD.search(said("see", "issues #3")) and _PERIOD.search(said("in one", "session"))
    assert not _PERIOD.search("the RTSP session name") and not _PERIOD.search("a browser tab's session")


def _period_lines(path: Path) -> list[str]:
    return [f"{path.relative_to(ROOT)}:{number}: {line.strip()[:100]}"
            for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1)
            if _PERIOD.search(line)]


def test_no_file_says_which_period_of_work_did_what():
    me = Path(__file__).resolve()
    hits = [hit for path in _scanned_files() if path.resolve() != me  # this file: its own pattern
            for hit in _period_lines(path)]
    assert hits == []
