"""`select=`: what a read keeps of each row (docs/reading.md#choosing-fields).

A projection changes which fields a row shows, never which rows, their order or the
cursors: every answer here is held to the in-memory projection (`project`, written
apart from the service's) of the same read without it."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import httpx
import msgspec
import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from app.asgi import create_app
from app.http.head import Recordline
from app.query.events import ENCODED_BYTES, Encodings
from app.query.select import MAX_ENTRIES, selection_of
from app.query.service import RecordsPage, RecordView, shown_of
from app.records import moment
from app.routes.follow import page_body
from app.store import UNSHOWN_COLUMNS
from tests.conftest import served, settings
from tests.fakes import FaultyStore
from tests.rows import shown_record
from tests.test_follow import until_waiting

FIELDS = [f.name for f in msgspec.structs.fields(RecordView)]
MIB = 1024 * 1024


def push_body(n: int, data: Any, attributes: dict[str, str] | None = None) -> dict[str, Any]:
    payload = json.dumps({"id": f"r-{n}", "data": data}).encode()
    return {
        "message": {
            "data": base64.b64encode(payload).decode(),
            "messageId": f"m-{n:03}",
            "publishTime": "2024-04-27T12:00:01Z",
            "attributes": attributes or {},
        },
        "subscription": "projects/p/subscriptions/s",
    }


# Payloads of several shapes: nested, missing members, not objects, odd member names.
PAYLOADS: list[Any] = [
    {"amount": 10, "customer": {"id": "c-1", "email": "a@b"}, "x y": 1},
    {"amount": 2.5, "customer": {"id": "c-2"}},
    {"customer": "not an object", "amount": None},
    [1, 2, 3],
    "text",
    None,
    {"amount": 12345678901234567890, "customer": {"id": {"deep": [1, {"x": 2}]}}},
    {"x y": {"z": True}, "é": "☃"},
]


def attributes_of(n: int) -> dict[str, str]:
    return {"origin": f"o-{n}", "region": "eu"} if n % 3 else {"other": "x"}


def project(row: dict[str, Any], entries: list[tuple[str, tuple[str, ...]]]) -> dict[str, Any]:
    """`row` (decoded JSON) with only what `entries` name: the test's own projection. A
    path inside another entry is shown by that one (`covering`)."""
    kept: dict[str, Any] = {}
    for name, path in covering(entries):
        if name not in row:
            continue
        value = row[name]
        for step in path:
            if not isinstance(value, dict) or step not in value:
                break
            value = value[step]
        else:
            if not path:
                kept[name] = value
                continue
            at = kept.setdefault(name, {})
            for step in path[:-1]:
                at = at.setdefault(step, {})
            at[path[-1]] = value
    # Fields in the row's order, as every answer writes them.
    return {name: kept[name] for name in row if name in kept}


def covering(entries: list[tuple[str, tuple[str, ...]]]) -> list[tuple[str, tuple[str, ...]]]:
    """`entries` without those inside another (which the other shows whole)."""
    steps = [(name, *path) for name, path in entries]
    kept = [s for s in steps if not any(o != s and s[: len(o)] == o for o in steps)]
    return [(s[0], tuple(s[1:])) for s in kept]


@pytest.fixture
def app(store: FaultyStore) -> Recordline:
    return create_app(settings(RECORDLINE_STREAM_SECONDS="1"), store=store)


@pytest.fixture
async def client(app: Recordline) -> AsyncIterator[httpx.AsyncClient]:
    async with served(app) as client:
        for n, data in enumerate(PAYLOADS):
            answer = await client.post("/pubsub/push", json=push_body(n, data, attributes_of(n)))
            assert answer.status_code == 204, answer.text
        yield client


SHAPES = [
    ("id", [("id", ())]),
    ("message_id,ingest_time", [("message_id", ()), ("ingest_time", ())]),
    ("id,data.amount", [("id", ()), ("data", ("amount",))]),
    (
        'data.customer.id,data["x y"],attributes.origin',
        [("data", ("customer", "id")), ("data", ("x y",)), ("attributes", ("origin",))],
    ),
    ("data,attributes.region", [("data", ()), ("attributes", ("region",))]),
    ("attributes", [("attributes", ())]),
    ("data.customer,data.customer.id", [("data", ("customer",))]),
]


@pytest.mark.parametrize(("text", "entries"), SHAPES, ids=[s for s, _ in SHAPES])
async def test_a_page_keeps_what_is_selected_and_the_same_rows_and_cursors(
    client: httpx.AsyncClient, text: str, entries: list[tuple[str, tuple[str, ...]]]
) -> None:
    # Pages of 3, each walk following its own tokens (sealed: each one's bytes differ):
    # the same rows, page by page, and a projection's token reads on without it as the
    # other's does.
    whole = await client.get("/v1/records", params={"limit": 3})
    chosen = await client.get("/v1/records", params={"limit": 3, "select": text})
    for _ in range(10):
        assert chosen.status_code == 200, chosen.text
        full, projected = whole.json(), chosen.json()
        assert projected["records"] == [project(r, entries) for r in full["records"]]
        assert (projected["next_page_token"] is None) == (full["next_page_token"] is None)
        if not full["records"]:
            break
        whole = await client.get("/v1/records", params={"page_token": full["next_page_token"]})
        crossed = await client.get(
            "/v1/records", params={"page_token": projected["next_page_token"]}
        )
        assert crossed.json()["records"] == whole.json()["records"]
        chosen = await client.get(
            "/v1/records", params={"page_token": projected["next_page_token"], "select": text}
        )
    else:
        raise AssertionError("the walk did not end")
    # A path a row lacks is absent from it, never an error nor a null.
    rows = (await client.get("/v1/records", params={"select": "id,data.customer.id"})).json()
    by_id = {r["id"]: r for r in rows["records"]}
    assert by_id["r-0"] == {"id": "r-0", "data": {"customer": {"id": "c-1"}}}
    assert by_id["r-2"] == {"id": "r-2"}
    assert by_id["r-3"] == {"id": "r-3"}


async def test_a_full_page_s_etag_is_its_projection_s_own(client: httpx.AsyncClient) -> None:
    whole = await client.get("/v1/records", params={"limit": 2})
    chosen = await client.get("/v1/records", params={"limit": 2, "select": "id"})
    assert whole.headers["etag"] != chosen.headers["etag"]
    assert whole.headers["cache-control"] == chosen.headers["cache-control"]
    again = await client.get(
        "/v1/records",
        params={"limit": 2, "select": "id"},
        headers={"If-None-Match": chosen.headers["etag"]},
    )
    assert again.status_code == 304
    other = await client.get(
        "/v1/records",
        params={"limit": 2, "select": "message_id"},
        headers={"If-None-Match": chosen.headers["etag"]},
    )
    assert other.status_code == 200
    assert other.json()["records"] == [{"message_id": "m-000"}, {"message_id": "m-001"}]


async def test_look_ups_and_rejections_take_a_selection(client: httpx.AsyncClient) -> None:
    record = await client.get("/v1/records/r-0", params={"select": "id,data.customer.email"})
    assert record.json() == {"id": "r-0", "data": {"customer": {"email": "a@b"}}}
    message = (await client.get("/v1/messages/m-001", params={"select": "data.amount"})).json()
    assert message["status"] == "stored"
    assert message["message_id"] == "m-001"
    assert message["record"] == {"data": {"amount": 2.5}}
    # A rejection's fields, its data the bytes received.
    refused = push_body(99, None)
    refused["message"]["data"] = base64.b64encode(b"not json").decode()
    assert (await client.post("/pubsub/push", json=refused)).status_code == 204
    page = await client.get("/v1/rejections", params={"select": "message_id,data"})
    assert page.json()["rejections"] == [
        {"message_id": "m-099", "data": base64.b64encode(b"not json").decode()}
    ]
    # Its token reads on as the whole page's does: to nothing more.
    after = await client.get(
        "/v1/rejections", params={"page_token": page.json()["next_page_token"]}
    )
    assert after.json()["rejections"] == []


async def test_the_rows_of_a_stream_keep_what_is_selected(client: httpx.AsyncClient) -> None:
    whole = await client.get("/v1/streams/records", params={"offset": "-1"})
    chosen = await client.get(
        "/v1/streams/records", params={"offset": "-1", "select": "id,data.amount"}
    )
    entries = [("id", ()), ("data", ("amount",))]
    assert chosen.json() == [project(r, entries) for r in whole.json()]
    # Offsets are the stream's, whatever is selected; the tag is the projection's own.
    assert chosen.headers["stream-next-offset"] == whole.headers["stream-next-offset"]
    assert chosen.headers["etag"] != whole.headers["etag"]


def events_of(text: str, kind: str) -> list[Any]:
    found = []
    for block in text.split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if lines.get("event") == kind:
            found.append(json.loads(lines["data"]))
    return found


async def test_followers_with_other_selections_each_get_their_own_shape(
    app: Recordline, client: httpx.AsyncClient
) -> None:
    # Followers of one page, woken by one push (one read, where they wake together): each
    # gets its projection.
    now = datetime.now(UTC).isoformat()

    async def follow(select: str | None) -> httpx.Response:
        params = {"since": now, "wait": "10"} | ({"select": select} if select else {})
        return await client.get("/v1/records", params=params)

    async def stream(select: str) -> str:
        params = {"since": now, "select": select}
        answer = await client.get(
            "/v1/records", params=params, headers={"Accept": "text/event-stream"}
        )
        return answer.text

    waiting = [asyncio.ensure_future(follow(s)) for s in ("id", "data.amount", "message_id", None)]
    streaming = [asyncio.ensure_future(stream(s)) for s in ("id", "message_id")]
    # Every follower waiting before the push, woken by it.
    await until_waiting(app, len(waiting) + len(streaming))
    answer = await client.post("/pubsub/push", json=push_body(50, {"amount": 7}))
    assert answer.status_code == 204
    pages = [(await w).json() for w in waiting]
    assert [p["records"] for p in pages[:3]] == [
        [{"id": "r-50"}],
        [{"data": {"amount": 7}}],
        [{"message_id": "m-050"}],
    ]
    assert pages[3]["records"][0]["data"] == {"amount": 7}
    # Each stream (ended after RECORDLINE_STREAM_SECONDS) sent its own shape.
    texts = [await s for s in streaming]
    assert [e["records"] for e in events_of(texts[0], "page")] == [[{"id": "r-50"}]]
    assert [e["records"] for e in events_of(texts[1], "page")] == [[{"message_id": "m-050"}]]
    # Each goes on right after it, whether its read was shared (woken within
    # SHARED_READ_SECONDS of the others) or its own (later, on a busy machine).
    answer = await client.post("/pubsub/push", json=push_body(51, {"amount": 8}))
    assert answer.status_code == 204
    for page in pages:
        after = await client.get("/v1/records", params={"page_token": page["next_page_token"]})
        assert [r["message_id"] for r in after.json()["records"]] == ["m-051"], after.text


@pytest.mark.parametrize(
    ("path", "text", "said"),
    [
        ("/v1/records", "nope", "entry 1 ('nope', at character 1): no operand 'nope'"),
        ("/v1/records", "id,nope", "entry 2 ('nope', at character 4)"),
        ("/v1/records", "id,,data", "at character 4"),
        ("/v1/records", "id,", "an empty entry"),
        ("/v1/records", ",id", "an empty entry"),
        ("/v1/records", "id data", "a syntax error at character 4"),
        ("/v1/records", "data[", "ends early"),
        ("/v1/records", "id,id", "entry 2 ('id', at character 4): named twice"),
        ("/v1/records", "id.x", "id has no members"),
        ("/v1/records", "attributes.a.b", "name one attribute"),
        ("/v1/records", "reason", "no operand 'reason'"),
        ("/v1/records", "data." + ".".join(["a"] * 16), "16 members deep; 15 at most"),
        ("/v1/records", ",".join(f"data.m{i}" for i in range(MAX_ENTRIES + 1)), "33 entries"),
        ("/v1/records", "data." + "a" * 1100, "length <= 1024"),
        ("/v1/records", "data." + "é" * 600, "1,205 bytes; 1,024 at most"),
        ("/v1/rejections", "id", "no operand 'id'"),
        ("/v1/rejections", "data.x", "a rejection's `data` is the bytes received"),
        ("/v1/records/r-0", "nope", "no operand 'nope'"),
        ("/v1/messages/m-000", "nope", "no operand 'nope'"),
        ("/v1/streams/records", "nope", "no operand 'nope'"),
    ],
)
async def test_a_selection_that_cannot_be_read_is_a_400_naming_it(
    client: httpx.AsyncClient, path: str, text: str, said: str
) -> None:
    answer = await client.get(path, params={"select": text})
    assert answer.status_code == 400, answer.text
    problem = answer.json()
    assert problem["parameter"] == "select"
    assert said in problem["detail"], problem["detail"]


async def test_a_stream_of_pages_is_refused_before_it_begins(client: httpx.AsyncClient) -> None:
    answer = await client.get(
        "/v1/records", params={"select": "nope"}, headers={"Accept": "text/event-stream"}
    )
    assert answer.status_code == 400
    assert answer.json()["parameter"] == "select"


# Rows for the property test: views of records whose payloads and attributes vary.
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=3),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(["a", "b", "x y", "é"]), inner, max_size=3)
    ),
    max_leaves=8,
)
_names = st.sampled_from(["a", "b", "x y", "é"])
_entries = st.lists(
    st.one_of(
        st.sampled_from([(f, ()) for f in FIELDS]),
        st.tuples(st.just("data"), st.lists(_names, min_size=1, max_size=3).map(tuple)),
        st.tuples(st.just("attributes"), st.sampled_from(["origin", "region"]).map(lambda k: (k,))),
    ),
    min_size=1,
    max_size=6,
    unique=True,
)


def _written(name: str, path: tuple[str, ...]) -> str:
    return name + "".join(f".{m}" if m.isidentifier() and m.isascii() else f'["{m}"]' for m in path)


def _view(n: int, data: Any, attributes: dict[str, str]) -> RecordView:
    at = datetime(2024, 4, 27, tzinfo=UTC)
    return RecordView(
        message_id=f"m-{n}",
        id=f"r-{n}",
        timestamp=None,
        data=msgspec.Raw(json.dumps(data).encode()),
        attributes=msgspec.Raw(json.dumps(attributes).encode()),
        publish_time=at,
        ingest_time=at,
        subscription="s",
        delivery_attempt=None,
        trace_id=None,
        schema=None,
    )


@hypothesis_settings(max_examples=300, deadline=None)
@given(
    entries=_entries,
    rows=st.lists(
        st.tuples(
            _json, st.dictionaries(st.sampled_from(["origin", "region", "x"]), st.text(max_size=2))
        ),
        max_size=4,
    ),
)
def test_a_projected_page_is_the_projection_of_the_whole_page(
    entries: list[tuple[str, tuple[str, ...]]], rows: list[tuple[Any, dict[str, str]]]
) -> None:
    text = ",".join(_written(name, path) for name, path in entries)
    selection = selection_of(text, FIELDS)  # `unique`: no entry named twice
    assert selection is not None
    views = [_view(n, data, attributes) for n, (data, attributes) in enumerate(rows)]
    page = RecordsPage(views, "t", datetime(2024, 4, 27, tzinfo=UTC))
    whole = json.loads(msgspec.json.encode(page))
    projected = json.loads(selection.encoded(selection.page(page)))
    assert projected["next_page_token"] == whole["next_page_token"]
    assert projected["records"] == [project(r, entries) for r in whole["records"]]
    # A stream's chunk (a JSON array of encoded rows) projects alike.
    assert (
        json.loads(selection.encoded(selection.rows(msgspec.json.encode(views))))
        == (projected["records"])
    )
    # A page read for the fields it shows (`shown_of`) may hold what the store left
    # unread empty: it projects alike.
    shown = shown_of(selection.fields)
    unread = {name: msgspec.Raw(b"") for name in UNSHOWN_COLUMNS if shown and name not in shown}
    assert not unread or set(unread).isdisjoint(name for name, _ in entries)
    narrowed = [msgspec.structs.replace(v, **unread) for v in views]
    narrowed_page = RecordsPage(narrowed, "t", datetime(2024, 4, 27, tzinfo=UTC))
    assert json.loads(selection.encoded(selection.page(narrowed_page))) == projected


async def test_every_read_of_rows_documents_select(client: httpx.AsyncClient) -> None:
    document = (await client.get("/docs/openapi.json")).json()
    for path in (
        "/v1/records",
        "/v1/rejections",
        "/v1/records/{record_id}",
        "/v1/messages/{message_id}",
        "/v1/streams/{name}",
        "/v1/export/{name}",
    ):
        (found,) = [
            p for p in document["paths"][path]["get"]["parameters"] if p["name"] == "select"
        ]
        assert "absent" in found["description"], path
        assert found["examples"], path
    # A projected row is a row of its view: no field of one is required, each said to be
    # present unless `select` leaves it out.
    for view in ("RecordView", "RejectionView"):
        schema = document["components"]["schemas"][view]
        assert "required" not in schema, view
        assert "unless `select` leaves it out" in schema["description"], view


def test_every_projection_of_a_page_counts_in_the_bytes_its_encodings_keep() -> None:
    # The encodings of what followers share are kept within ENCODED_BYTES, each object
    # weighed by what was made of it. A page whose first encoding was a small
    # projection weighed that alone: its whole JSON, its events and every other
    # projection made after it were kept uncounted, past the bound.
    at = moment(1_700_000_000_000_000)
    encodings = Encodings()
    first = selection_of("message_id", FIELDS)
    assert first is not None
    held = [
        RecordsPage([shown_record(b'"' + b"x" * (MIB - 2) + b'"', at=at)], "token", at)
        for _ in range(2 * ENCODED_BYTES // MIB)
    ]
    made = 0
    for page in held:
        small = page_body(encodings, page, first)
        made += len(small) + len(page_body(encodings, page))
        assert encodings.bytes <= ENCODED_BYTES
    # What is kept is counted: the last page's whole JSON and its projection both.
    whole, small = page_body(encodings, held[-1]), page_body(encodings, held[-1], first)
    assert encodings.bytes >= len(whole) + len(small)
    assert made > ENCODED_BYTES  # the pages held more than the bound: some were let go


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/v1/records", {}),
        ("/v1/records/r-0", {}),
        ("/v1/messages/m-000", {}),
        ("/v1/streams/records", {"offset": "-1"}),
        ("/v1/export/records", {"format": "jsonl"}),
    ],
)
async def test_a_selection_given_twice_is_a_400_on_every_read(
    client: httpx.AsyncClient, path: str, params: dict[str, str]
) -> None:
    # Taken as one of the two, it would drop what the other names without a word.
    query = [*params.items(), ("select", "id"), ("select", "data.amount")]
    answer = await client.get(path, params=query)
    assert answer.status_code == 400, answer.text
    assert answer.json()["parameter"] == "select"
    assert "more than once" in answer.json()["detail"]
