"""Module docstrings say what a module is for and link to docs/ for the design.

Read with `ast`, like tests/test_layering.py: a docstring over ten lines is
design that belongs in docs/ (or a comment at the line it explains), and every
`docs/page.md#anchor` a docstring names must be a page and heading that exist.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
APP = ROOT / "app"
DOCS = ROOT / "docs"
MOST_LINES = 10
LINK = re.compile(r"docs/([\w-]+\.md)(?:#([\w-]+))?")


def module_docstring(path: Path) -> str:
    return ast.get_docstring(ast.parse(path.read_text()), clean=False) or ""


def long_docstrings(app: Path = APP) -> list[str]:
    found = []
    for path in sorted(app.rglob("*.py")):
        lines = len(module_docstring(path).strip().splitlines())
        if lines > MOST_LINES:
            found.append(f"{path.relative_to(app.parent)}: {lines} lines")
    return found


def anchors(page: Path) -> set[str]:
    # Explicit `<a id="...">` anchors, and the slugs the docs build's `toc`
    # extension gives headings: lower case, punctuation dropped, spaces as hyphens.
    text = page.read_text()
    slugs = set(re.findall(r'id="([\w-]+)"', text))
    for line in text.splitlines():
        if line.startswith("#"):
            title = re.sub(r"[^\w\s-]", "", line.lstrip("#").strip().lower())
            slugs.add(re.sub(r"[-\s]+", "-", title.strip()))
    return slugs


def broken_links(app: Path = APP, docs: Path = DOCS) -> list[str]:
    found = []
    for path in sorted(app.rglob("*.py")):
        for page, anchor in LINK.findall(module_docstring(path)):
            target = docs / page
            if not target.is_file() or (anchor and anchor not in anchors(target)):
                found.append(f"{path.relative_to(app.parent)}: docs/{page}#{anchor}")
    return found


def test_no_module_docstring_is_longer_than_ten_lines() -> None:
    assert long_docstrings() == []


@pytest.mark.slow
def test_every_docs_link_in_a_module_docstring_resolves() -> None:
    assert broken_links() == []


def test_the_checks_find_a_long_docstring_and_a_broken_link(tmp_path: Path) -> None:
    app = tmp_path / "app"
    docs = tmp_path / "docs"
    app.mkdir()
    docs.mkdir()
    (docs / "stores.md").write_text(
        '# Stores\n\n## The export, in short\n\n- <a id="keys"></a>Keys\n'
    )
    body = "\n".join(f"Line {n}." for n in range(11))
    (app / "long.py").write_text(f'"""{body}\n"""\n')
    ten = "\n".join(f"Line {n}." for n in range(9))
    (app / "short.py").write_text(
        f'"""{ten}\nDesign: docs/stores.md#the-export-in-short, docs/stores.md#keys\n"""\n'
    )
    (app / "broken.py").write_text('"""See docs/stores.md#export and docs/gone.md."""\n')
    assert long_docstrings(app) == ["app/long.py: 11 lines"]
    assert broken_links(app, docs) == [
        "app/broken.py: docs/stores.md#export",
        "app/broken.py: docs/gone.md#",
    ]
