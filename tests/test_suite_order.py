"""The suite hands its workers the longest modules first (tests/conftest.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests import conftest


@dataclass
class Item:
    nodeid: str
    marks: tuple[str, ...] = ()

    def get_closest_marker(self, name: str) -> Any:
        return name if name in self.marks else None


def test_modules_go_longest_first_by_what_they_took_each_kept_whole_in_its_order(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    durations = tmp_path / "durations.json"
    durations.write_text('{"tests/a.py": 1.0, "tests/b.py": 90.0, "tests/c.py::C": 30.0}')
    monkeypatch.setattr(conftest, "DURATIONS", durations)
    items = [
        Item("tests/a.py::one"),
        Item("tests/a.py::two"),
        Item("tests/b.py::one[x]"),
        Item("tests/c.py::C::one"),
        Item("tests/b.py::two"),
        # Not in the file: weighed by its marks, a test needing a server 3 s.
        Item("tests/d.py::one", marks=("emulator",)),
        Item("tests/d.py::two", marks=("slow",)),
    ]
    conftest.heaviest_first(items)  # type: ignore[arg-type]
    assert [i.nodeid for i in items] == [
        "tests/b.py::one[x]",
        "tests/b.py::two",
        "tests/c.py::C::one",
        "tests/d.py::one",
        "tests/d.py::two",
        "tests/a.py::one",
        "tests/a.py::two",
    ]


def test_without_the_file_modules_are_weighed_by_their_marks(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(conftest, "DURATIONS", tmp_path / "absent.json")
    # Fifty quick tests (2.5 s) against one that needs a server (3 s).
    items = [Item(f"tests/many.py::t{n}") for n in range(50)]
    items.append(Item("tests/one.py::tour", marks=("emulator",)))
    conftest.heaviest_first(items)  # type: ignore[arg-type]
    assert items[0].nodeid == "tests/one.py::tour"
