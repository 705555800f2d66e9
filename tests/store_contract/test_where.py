"""The Store contract for the filter language: every store keeps, for an expression,
exactly the rows the in-memory matcher (`app.store.where.matches`) keeps.

Payloads of every JSON shape an expression can meet (numbers whole and not, large and
negative, strings with escapes and non-ASCII, booleans, null, objects, arrays, members
missing) are stored half an hour ago (read by a store's SQL) and now (from its tail in
memory, where it keeps one; the serving tier's is emptied, so that Spanner's SQL reads
them); expressions drawn from a seeded generator, with every operator and operand, and a
few written by hand, are each walked in pages and compared with the matcher on the rows
stored. Payloads a hostile publisher may send as they are (duplicate members, numbers
beyond a double, escaped surrogate pairs, members named by digits beside arrays) are held
to the matcher as well.
"""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from app.records import Record, Rejection
from app.store import Store
from app.store.filters import RowFilter
from app.store.producers import PRODUCER_ATTRIBUTE
from app.store.tiered.store import TieredStore
from app.store.where import matches, parse
from tests.store_contract.test_contract import HOUR, horizon, record, rejection, stamp, stored_time
from tests.store_contract.test_filters import filtered_walk

# Values a member may hold, of every JSON type.
VALUES: list[Any] = [
    0,
    1,
    -1,
    2.5,
    100,
    1e15,
    -3.25,
    12345678901234567,
    "",
    "a",
    "abc",
    "b",
    "é",
    "é☃",
    'q"uote',
    "back\\slash",
    "line\nbreak",
    "eu",
    True,
    False,
    None,
    {"x": 1},
    [1, 2],
]
MEMBERS = ["n", "s", "flag", "deep"]
STRINGS = ["a", "ab", "abc", "b", "é", "eu", "", 'q"uote', "line\nbreak", "back\\slash"]
NUMBERS = ["0", "1", "-1", "2.5", "100", "1e15", "-3.25", "12345678901234567", "99.5"]
TIMES = ["1970-01-01T00:00:00Z", "2100-01-01T00:00:00+02:00"]


def payload(i: int) -> str:
    pick = random.Random(i)
    data: dict[str, Any] = {}
    for member in MEMBERS:
        if pick.random() < 0.8:
            data[member] = pick.choice(VALUES)
    if pick.random() < 0.5:
        data["deep"] = {"er": pick.choice(VALUES), "a b": pick.choice(VALUES)}
    return json.dumps(data) if i % 9 else json.dumps(pick.choice(VALUES))


def attributes(i: int) -> str:
    found = {PRODUCER_ATTRIBUTE: f"p{i % 3}", "region": ["eu", "us", "é"][i % 3]}
    if i % 4:
        found["k it"] = str(i % 5)
    return json.dumps(found)


def sql_only(store: Store) -> None:
    """The serving tier stamps its rows as it commits them, so its tail in memory holds
    every row a test stores: emptied, every page is read by Spanner's SQL (the embedded
    store's tail is read by the `memory` store, which keeps every row there)."""
    if isinstance(store, TieredStore):
        store.live.tail.max_rows = 0


async def stored(store: Store, count: int = 36) -> tuple[list[Record], int, int]:
    sql_only(store)
    old = stamp() - HOUR // 2
    rows = [
        record(
            f"w-{i:02}",
            old + i if i < count // 2 else None,
            id=f"id-{i % 6}",
            data=payload(i),
            attributes=attributes(i),
            timestamp=None if i % 7 == 0 else 1_700_000_000_000_000 + i,
        )
        for i in range(count)
    ]
    for start in range(0, count, 6):
        assert all(o is None for o in await store.append(rows[start : start + 6]))
    times = {r.message_id: await stored_time(store, r.message_id) for r in rows}
    until = await horizon(store, max(times.values()))
    firsts = sorted(rows, key=lambda r: (times[r.message_id], r.message_id))
    return firsts, min(times.values()) - 1, until


def literal(kind: str, pick: random.Random) -> str:
    match kind:
        case "string":
            return json.dumps(pick.choice(STRINGS))
        case "number":
            return pick.choice(NUMBERS)
        case "bool":
            return pick.choice(["true", "false"])
    return json.dumps(pick.choice(TIMES))


def operand(pick: random.Random) -> tuple[str, str]:
    """An operand's text and the kind of literal it compares with."""
    path = pick.choice([["n"], ["s"], ["flag"], ["deep"], ["deep", "er"], ["deep", "a b"], []])
    shown = "data" + "".join(f".{m}" if " " not in m else f'["{m}"]' for m in path)
    return pick.choice(
        [
            (shown, pick.choice(["string", "number", "bool"])),
            (shown, "number"),
            (shown, "string"),
            ("attributes.region", "string"),
            ('attributes["k it"]', "string"),
            ("producer", "string"),
            ("id", "string"),
            ("message_id", "string"),
            ("timestamp", "time"),
            ("ingest_time", "time"),
        ]
    )


def condition(pick: random.Random) -> str:
    name, kind = operand(pick)
    ops = ["=", "!=", "IN", "EXISTS"]
    if kind != "bool":
        ops += ["<", "<=", ">", ">="]
    if kind == "string":
        ops += ["STARTS WITH", "ENDS WITH", "CONTAINS"]
    op = pick.choice(ops)
    if op == "EXISTS":
        return f"EXISTS {name}"
    if op == "IN":
        return f"{name} IN ({', '.join(literal(kind, pick) for _ in range(pick.randint(1, 3)))})"
    if op in ("STARTS WITH", "ENDS WITH", "CONTAINS"):
        return f"{name} {op} {json.dumps(pick.choice([s for s in STRINGS if s]))}"
    return f"{name} {op} {literal(kind, pick)}"


def expression(pick: random.Random, depth: int = 0) -> str:
    roll = pick.random()
    if depth >= 3 or roll < 0.4:
        return condition(pick)
    if roll < 0.55:
        return f"NOT ({expression(pick, depth + 1)})"
    joiner = " AND " if roll < 0.8 else " OR "
    return "(" + joiner.join(expression(pick, depth + 1) for _ in range(pick.randint(2, 3))) + ")"


WRITTEN = [
    "data.n > 1",
    "data.n = 12345678901234567",
    'data.s = \'é☃\' OR data.s = "q\\"uote"',
    "data.s >= 'b'",
    "data.flag = true",
    "data.flag != false",
    "EXISTS data.deep.er",
    "NOT EXISTS data.n",
    "data.deep.er IN (1, 'a', true)",
    "data = 'abc' OR data = 0",
    "EXISTS data",
    "data.s CONTAINS '\\n'",
    "data.s STARTS WITH 'é'",
    "data.s ENDS WITH 'c' OR data.deep.er ENDS WITH '☃'",
    "attributes.region = 'é' AND NOT data.n < 0",
    "timestamp >= '2023-11-14T22:13:20.000010Z'",
    "NOT timestamp > '1970-01-01T00:00:00Z'",
]


def expressions() -> list[str]:
    pick = random.Random(87)
    return WRITTEN + [expression(pick) for _ in range(40)]


@pytest.mark.slow
async def test_every_store_keeps_what_the_matcher_keeps(store: Store) -> None:
    rows, since, until = await stored(store)
    kept_any = 0
    for at, text in enumerate(expressions()):
        parsed = parse(text, "records")
        want = [r.message_id for r in rows if matches(parsed, r)]
        kept_any += 0 < len(want) < len(rows)
        keep = RowFilter(where=text)
        # Pages of one row for a few: a walk resumes under the expression exactly.
        limit = 3 if at % 8 == 0 else 100
        seen = await filtered_walk(store, Record, keep, since=since, before=until, limit=limit)
        assert seen == want, text
    # The expressions tell rows apart: many keep some rows and leave others.
    assert kept_any > len(expressions()) // 3


@pytest.mark.slow
async def test_rejections_filter_by_reason_and_attribute(store: Store) -> None:
    old = stamp() - HOUR // 2
    refused = [
        rejection(
            f"wj-{i}",
            old + i if i < 3 else None,
            reason=["payload is not JSON", "amount: expected an integer"][i % 2],
            attributes=json.dumps({PRODUCER_ATTRIBUTE: f"p{i % 3}"}),
        )
        for i in range(6)
    ]
    await store.append(refused)
    times = [await stored_time(store, r.message_id) for r in refused]
    until = await horizon(store, max(times))
    bounds = {"since": min(times) - 1, "before": until}
    for text, want in [
        ("reason CONTAINS 'amount'", ["wj-1", "wj-3", "wj-5"]),
        ("reason STARTS WITH 'payload' AND producer != 'p0'", ["wj-2", "wj-4"]),
        (
            "NOT reason = 'payload is not JSON' OR message_id = 'wj-0'",
            ["wj-0", "wj-1", "wj-3", "wj-5"],
        ),
    ]:
        keep = RowFilter(where=text)
        assert [r.message_id for r in refused if keep.matches(r)] == want, text
        for limit in (1, 100):
            assert await filtered_walk(store, Rejection, keep, **bounds, limit=limit) == want


# Payloads as a publisher may send them, stored as sent (the contract's `data` is not
# encoded again), each member named `n`, `s`, `d` or by digits where an expression reads it.
HOSTILE = [
    '{"n":1' + "0" * 400 + "}",  # an integer beyond a double
    '{"n":1e400}',  # a number beyond a double, which msgspec does not read
    '{"n":-1e400,"s":"x"}',
    '{"n":12345678901234567890123}',
    '{"n":2.2412421353246235436}',  # more digits than a double holds
    '{"n":-0.0}',
    '{"n":1E2}',
    '{"n":1e-400}',
    '{"n":1,"n":2}',  # a member sent twice: every store reads the first
    '{"n":"1","n":2}',
    '{"d":{"n":1},"d":{"s":"b"}}',
    '{"s":"\\ud83d\\ude00"}',  # a character beyond the BMP, escaped as JSON escapes it
    '{"s":"\U0001f600"}',
    '{"s":"\\u00e9\\u0000"}',
    '{"s":"a\\"b","s2":"\\/"}',
    '[5,{"n":6}]',  # an array: a member named by digits names no element of it
    '{"d":[5,{"n":6}]}',
    '{"d":{"0":5,"1":{"n":6}}}',
    '{"0":5,"1":{"n":6}}',
    ' {"0" : 5 } ',
    ' {"n" : 1 } ',
    # (`*` too, which BigQuery reads as a name in `$."*"`, and its fake, DuckDB, as a
    # wildcard: held to the matcher by DuckDB's pointer and Spanner's path alone.)
    '{"a.b":1,"a":{"b":2},"$":4,"~":5,"/":6,"~1":7}',
    '{"e\u0301":1,"\u00e9":2}',
]
HOSTILE_WHERE = [
    "data.n > 1",
    "data.n < 0",
    "data.n = 0",
    "data.n >= 1e22",
    "data.n = 2.2412421353246237",
    "data.n IN (1, 100)",
    "data.n = 1",
    "data.n = 2",
    "data.n = '1'",
    "EXISTS data.n",
    "NOT EXISTS data.n",
    "data.d.n = 1",
    "EXISTS data.d.s",
    "data.s = '\U0001f600'",
    "data.s STARTS WITH '\U0001f600'",
    "data.s > '\uffff'",
    'data.s = "\\u00e9\\u0000"',
    'data.s CONTAINS "\\u0000"',
    "data.s = 'a\"b' OR data.s2 = '/'",
    'data["0"] = 5',
    'EXISTS data["0"]',
    'data["1"].n = 6',
    'data.d["0"] = 5',
    'data.d["1"].n = 6',
    'EXISTS data.d["1"]',
    'data["a.b"] = 1',
    "data.a.b = 2",
    'data["$"] = 4',
    'data["~"] = 5',
    'data["/"] = 6',
    'data["~1"] = 7',
    "data['e\u0301'] = 1",
    "data['\u00e9'] = 2",
    "EXISTS data",
    "data > 1",
]


@pytest.mark.slow
async def test_every_store_keeps_what_the_matcher_keeps_of_hostile_payloads(store: Store) -> None:
    sql_only(store)
    old = stamp() - HOUR // 2
    rows = [
        record(f"h-{i:02}", old + i if i % 2 else None, data=text) for i, text in enumerate(HOSTILE)
    ]
    assert all(o is None for o in await store.append(rows))
    times = {r.message_id: await stored_time(store, r.message_id) for r in rows}
    until = await horizon(store, max(times.values()))
    rows.sort(key=lambda r: (times[r.message_id], r.message_id))
    bounds = {"since": min(times.values()) - 1, "before": until, "limit": 100}
    for text in HOSTILE_WHERE:
        parsed = parse(text, "records")
        want = [r.data for r in rows if matches(parsed, r)]
        seen = await filtered_walk(store, Record, RowFilter(where=text), **bounds)
        assert [r.data for r in rows if r.message_id in seen] == want, text
