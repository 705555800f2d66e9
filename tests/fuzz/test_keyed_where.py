"""A filter on a keyed hash under generated input: written out again, an expression
parses back to itself; loosened (`where.relaxed`), it keeps every row it kept; and the
service's answer, the store's loose filter then the keyed matcher, keeps exactly the
rows a masked reader finds by what each row shows (the matcher run on the masked view,
its hashes as plain text), for every expression the mask lets a reader ask."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from app.errors import BadParameter
from app.query.mask import Mask, Pseudonyms
from app.records import Record
from app.store.where import conditions, matches, parse, relaxed, text
from tests.fuzz.budget import EXAMPLES
from tests.fuzz.test_where import expressions as plain_expressions
from tests.fuzz.test_where import texts
from tests.rows import shown_record

KEYS = Pseudonyms("a-mask-key")
MASK = Mask(["a:hash", "b.c:hash"], ["k:hash"], KEYS)
VALUES = ["x", "y", "", "é", 1, 2.5, True, None, {"z": 1}, [1]]
HASHES = [KEYS.of(v) for v in VALUES]

values = st.sampled_from(VALUES)
payloads = st.dictionaries(
    st.sampled_from(["a", "b", "d"]),
    values | st.dictionaries(st.sampled_from(["a", "c", "d"]), values, max_size=3),
    max_size=3,
)
operands = st.sampled_from(
    ["data.a", "data.b.c", "data.b.a", "data.d.a", "attributes.k", "data.b", "data.a.z"]
)
hashes = st.sampled_from(HASHES)


@st.composite
def keyed_conditions(draw: st.DrawFn) -> str:
    name = draw(operands)
    op = draw(st.sampled_from(["=", "!=", "in"]))
    if op == "in":
        chosen = draw(st.lists(hashes, min_size=1, max_size=3))
        return f"{name} IN ({', '.join(repr(h) for h in chosen)})"
    return f"{name} {op} '{draw(hashes)}'"


@st.composite
def others(draw: st.DrawFn) -> str:
    return draw(
        st.sampled_from(
            ["data.d = 'x'", "EXISTS data.d", "data.d.d > 1", "id = '1'", "attributes.j = 'x'"]
        )
    )


expressions = st.recursive(
    keyed_conditions() | others(),
    lambda inner: (
        st.builds(lambda e: f"NOT ({e})", inner)
        | st.builds(lambda a, b: f"({a} AND {b})", inner, inner)
        | st.builds(lambda a, b: f"({a} OR {b})", inner, inner)
    ),
    max_leaves=5,
)


@settings(max_examples=EXAMPLES * 8, deadline=None)
@given(said=texts | plain_expressions | expressions)
def test_an_expression_written_out_parses_back_to_itself(said: str) -> None:
    try:
        expression = parse(said)
    except BadParameter:
        return
    assert parse(text(expression)) == expression


@settings(max_examples=EXAMPLES * 8, deadline=None)
@given(
    said=plain_expressions | expressions,
    payload=payloads,
    loose=st.sets(st.integers(0, 7)),
)
def test_a_loosened_expression_keeps_every_row_it_kept(
    said: str, payload: Any, loose: set[int]
) -> None:
    expression = parse(said, "records")
    found = list(conditions(expression))
    chosen = {found[n] for n in loose if n < len(found)}
    looser = relaxed(expression, chosen.__contains__)
    row = Record(message_id="m", publish_time=0, ingest_time=0, id="1", data=json.dumps(payload))
    if looser is not None:
        assert not any(c in chosen for c in conditions(looser))
    if matches(expression, row):
        assert looser is None or matches(looser, row)


@settings(max_examples=EXAMPLES * 8, deadline=None)
@given(
    said=expressions,
    payload=payloads,
    attributes=st.dictionaries(st.sampled_from(["k", "j"]), st.sampled_from(["x", "y"])),
)
def test_the_service_keeps_what_a_reader_finds_by_what_each_row_shows(
    said: str, payload: Any, attributes: dict[str, str]
) -> None:
    if MASK.told_by(said) is not None:
        return  # refused (403): a reader cannot ask it
    expression = parse(said, "records")
    data, sent = json.dumps(payload), json.dumps(attributes)
    row = Record(message_id="m", publish_time=0, ingest_time=0, id="1", data=data, attributes=sent)
    keyed = MASK.keyed(expression)
    looser = relaxed(expression, keyed.conditions.__contains__) if keyed else expression
    served = (looser is None or matches(looser, row)) and matches(expression, row, keyed)
    # What the reader is shown of the row, its hashes read as plain values.
    view = MASK.view(shown_record(data.encode(), attributes=sent.encode()))
    shown = Record(
        message_id="m",
        publish_time=0,
        ingest_time=0,
        id="1",
        data=bytes(view.data).decode(),
        attributes=bytes(view.attributes).decode(),
    )
    assert served == matches(expression, shown), (said, payload, attributes)
