"""`too_deep` reads the nesting of any valid JSON right, slice by slice, in bounded memory.

It reads a payload's structure 64 KiB at a time (a 12 MB payload of empty strings,
split whole, was 200 MB of pieces): a string, an escape or a bracket across the edge
of a slice must not change its answer, which is checked here against the nesting
Python's own decoder reads.
"""

from __future__ import annotations

import json
import tracemalloc
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.ingest.limits import too_deep

# Text that looks like structure: brackets, quotes and backslashes inside strings.
TEXT = st.text(alphabet='[]{}"\\ax,:', max_size=20)
LEAVES = st.one_of(st.none(), st.integers(), TEXT)


def depth(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max(map(depth, value), default=0)
    if isinstance(value, dict):
        return 1 + max(map(depth, value.values()), default=0)
    return 0


def nested(levels: int, inner: Any) -> Any:
    for n in range(levels):
        inner = [inner] if n % 2 else {"k": inner}
    return inner


@settings(max_examples=60, deadline=None)
@given(
    # Around a slice's edge (64 KiB of structure), or well within one.
    padding=st.integers(min_value=65_000, max_value=66_100) | st.integers(0, 100),
    filler=TEXT,
    levels=st.integers(min_value=0, max_value=12),
    inner=st.recursive(
        LEAVES, lambda c: st.lists(c, max_size=3) | st.dictionaries(TEXT, c, max_size=3)
    ),
    limit=st.integers(min_value=1, max_value=16),
)
def test_nesting_is_read_as_json_has_it_across_slices(
    padding: int, filler: str, levels: int, inner: Any, limit: int
) -> None:
    # A long string first, of structure-like text, puts the rest across a slice's edge.
    value = ["[{" * (padding // 2) + filler, nested(levels, inner), "]" * 3]
    text = json.dumps(value)
    assert too_deep(text, limit) == (depth(json.loads(text)) > limit)


@pytest.mark.slow
def test_a_payload_of_many_strings_is_read_in_little_memory() -> None:
    text = json.dumps(["["] * 600 + [""] * 3_000_000)  # 12 MB, 3 million strings
    tracemalloc.start()
    try:
        assert not too_deep(text)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # The text once as bytes, once as its structure, and a slice's pieces: split whole,
    # it was 200 MB.
    assert peak < 3 * len(text)
