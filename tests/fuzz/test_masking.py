"""No payload or attributes a producer sends let a masked value through to a reader: a
masked member's value is gone at every depth whatever the JSON's spelling (escapes,
spacing, repeated keys), and everything else reads as it was sent."""

from __future__ import annotations

import json
import unicodedata
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.query.mask import MASKED, WITHHELD, Mask
from tests.fuzz.budget import EXAMPLES
from tests.rows import shown_record, shown_rejection

MASKED_NAMES = ["email", "card", "é"]
names = st.sampled_from([*MASKED_NAMES, "emails", "Email", "x", ""]) | st.text(max_size=6)
scalars = st.none() | st.booleans() | st.integers() | st.text(max_size=8)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(names, inner, max_size=4),
    max_leaves=20,
)


def masked(value: Any, masks: frozenset[str]) -> Any:
    """What a reader must see of `value`: every member `masks` names, at any depth, MASKED."""
    if isinstance(value, dict):
        return {k: MASKED if k in masks else masked(v, masks) for k, v in value.items()}
    if isinstance(value, list):
        return [masked(v, masks) for v in value]
    return value


def masked_attributes(attributes: dict[str, str], masks: frozenset[str]) -> dict[str, str]:
    """What a reader must see of a message's attributes: each that `masks` names in any
    case (an attribute of an unwrapped push arrives as a header, whose case HTTP does not
    keep), MASKED."""
    lowered = {name.lower() for name in masks}
    return {k: MASKED if k.lower() in lowered else v for k, v in attributes.items()}


@st.composite
def spelled(draw: st.DrawFn, value: Any) -> bytes:
    """`value` as JSON a producer may send: ASCII-escaped or not, spaced or not, and a
    key spelled with `\\u` escapes."""
    text = json.dumps(value, ensure_ascii=draw(st.booleans()), indent=draw(st.none() | st.just(1)))
    if draw(st.booleans()):
        # Every character of every masked name's key escaped: the same key to a decoder.
        for name in MASKED_NAMES:
            escaped = "".join(f"\\u{ord(c):04x}" for c in name)
            text = text.replace(json.dumps(name), f'"{escaped}"')
    return text.encode()


@pytest.mark.slow
@settings(max_examples=EXAMPLES * 4, deadline=None)
@given(
    data=st.dictionaries(names, values, max_size=5).flatmap(
        lambda v: st.tuples(st.just(v), spelled(v))
    ),
    attributes=st.dictionaries(names, st.text(max_size=8), max_size=4).flatmap(
        lambda v: st.tuples(st.just(v), spelled(v))
    ),
)
def test_a_masked_value_never_reaches_a_reader_however_it_is_spelled(
    data: tuple[Any, bytes], attributes: tuple[dict[str, str], bytes]
) -> None:
    mask = Mask(MASKED_NAMES, MASKED_NAMES)
    masks = frozenset(MASKED_NAMES)
    (value, text), (attrs, attrs_text) = data, attributes
    record = shown_record(text, attributes=attrs_text)
    seen = mask.view(record)
    assert json.loads(bytes(seen.data)) == masked(value, masks)
    assert json.loads(bytes(seen.attributes)) == masked_attributes(attrs, masks)
    # A rejection's payload, as received: masked the same where it is JSON.
    rejection = shown_rejection(text, attributes=attrs_text)
    assert json.loads(mask.view(rejection).data) == masked(value, masks)


@settings(max_examples=EXAMPLES, deadline=None)
@given(depth=st.integers(1, 3000), lists=st.booleans())
def test_a_payload_nested_however_deep_is_masked_or_withheld_never_an_error(
    depth: int, lists: bool
) -> None:
    # Nested objects (or lists) around a masked member and an escape, which makes the
    # payload be decoded; as deep as the contract lets a record be (< 500) or deeper.
    opening, closing = (b"[", b"]") if lists else (b'{"x":', b"}")
    text = opening * depth + b'{"email":"a@b","note":"a\\nb"}' + closing * depth
    wanted = text.replace(b'"a@b"', b'"[masked]"')
    mask = Mask(MASKED_NAMES, MASKED_NAMES)
    record = shown_record(text)
    seen = bytes(mask.view(record).data)
    assert seen == wanted if depth < 500 else seen in (wanted, msgspec.json.encode(WITHHELD))
    rejection = shown_rejection(text)
    received = mask.view(rejection).data
    assert received == wanted if depth < 500 else received in (wanted, b"")


# Paths over names that nest: `a.b` masks b under a at the root, `b` itself nowhere else.
PATHS = ["a.b", "a.é.c", "x"]
path_names = st.sampled_from(["a", "b", "c", "é", "e\u0301", "x", "a.b", "é.c", "y"])
# Text that is no JSON and names nothing as a key: what is passed on unread. Never half
# a character (a lone surrogate): no stored payload holds one, ingest refuses it
# (tests/test_push.py), and it is no JSON text the mask could read.
plain = st.text(st.characters(exclude_categories=["Cs"], exclude_characters='{["\\:=<'), max_size=8)
path_values = st.recursive(
    st.none() | st.integers() | plain,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(path_names, inner, max_size=3),
    max_leaves=20,
)


def along_paths(value: Any, pending: list[tuple[tuple[str, ...], int]]) -> Any:
    """What a reader must see of `value` reached with `pending` paths (each the step it
    waits for): a member ending one, or named with its dots from where it is, MASKED."""
    if isinstance(value, list):
        return [along_paths(v, pending) for v in value]
    if not isinstance(value, dict):
        return value
    shown = {}
    for key, member in value.items():
        name = unicodedata.normalize("NFC", key)
        ends = any(
            (name == steps[i] and i == len(steps) - 1) or name == ".".join(steps[i:])
            for steps, i in pending
        )
        below = [(s, i + 1) for s, i in pending if name == s[i] and i + 1 < len(s)]
        shown[key] = MASKED if ends else along_paths(member, below)
    return shown


@settings(max_examples=EXAMPLES * 4, deadline=None)
@given(data=st.dictionaries(path_names, path_values, max_size=4), bare=st.booleans())
def test_a_path_masks_exactly_its_members_from_the_root(data: dict[str, Any], bare: bool) -> None:
    # With `x` a name (any depth) or one more path from the root.
    rules = PATHS if bare else [*PATHS[:2], "z.x"]
    steps = [tuple(unicodedata.normalize("NFC", r).split(".")) for r in rules]
    mask = Mask(rules)
    seen = json.loads(bytes(mask.view(shown_record(json.dumps(data).encode())).data))
    wanted = along_paths(data, [(s, 0) for s in steps if len(s) > 1])
    if bare:
        wanted = masked(wanted, frozenset({"x"}))
    assert seen == wanted
