"""Exports: a filtered list as CSV or JSON Lines, streamed within its row, byte and time
bounds, cut with a note and the token another export goes on from (nothing twice,
nothing skipped), and never held whole in the process."""

from __future__ import annotations

import base64
import csv
import io
import json
import time
import tracemalloc
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import httpx
import msgspec
import pytest
from litestar import Litestar

from app.asgi import create_app
from app.query.export import NOTE_KEY, Bounds, Column, Export, Format, Walk, columns_of
from app.query.service import RECORDS, RecordsPage
from app.records import Record, micros
from app.settings import Settings
from app.store.duckdb.store import DuckDBStore
from tests.conftest import served, settings
from tests.fakes import FaultyStore
from tests.rows import shown_record

PAYLOAD = "x" * 400


def push_body(n: int, *, valid: bool = True, text: str = PAYLOAD) -> dict[str, Any]:
    payload = {"id": f"r-{n}", "data": {"n": n, "text": text, "quote": 'a "b", c'}}
    data = json.dumps(payload if valid else {"no": "id", "n": n}).encode()
    return {
        "message": {
            "data": base64.b64encode(data).decode(),
            "messageId": f"m-{n:05}",
            "publishTime": "2024-04-27T12:00:01Z",
            "attributes": {"colour": ["red", "green"][n % 2], "a.b": "c"},
        },
        "subscription": "projects/p/subscriptions/s",
    }


def exporting(max_bytes: int) -> Settings:
    """The settings with an export's bytes bounded by `max_bytes` (EXPORT_MAX_BYTES in
    the service), built as create_app takes them."""
    own = settings()
    return msgspec.structs.replace(
        own, query=msgspec.structs.replace(own.query, export_max_bytes=max_bytes)
    )


@pytest.fixture
def app(store: FaultyStore) -> Litestar:
    return create_app(exporting(1024 * 1024), store=store)


@pytest.fixture
async def client(app: Litestar) -> AsyncIterator[httpx.AsyncClient]:
    async with served(app) as client:
        yield client


async def pushed(client: httpx.AsyncClient, numbers: range, **kwargs: Any) -> None:
    for n in numbers:
        answer = await client.post("/pubsub/push", json=push_body(n, **kwargs))
        assert answer.status_code == 204, answer.text


def csv_rows(text: str) -> list[dict[str, str]]:
    lines = [line for line in text.splitlines(keepends=True) if not line.startswith("#")]
    return list(csv.DictReader(io.StringIO("".join(lines))))


def note(text: str) -> dict[str, Any] | None:
    last = text.rstrip("\n").splitlines()[-1] if text.strip() else ""
    if last.startswith("{") and NOTE_KEY in last:
        found: dict[str, Any] = json.loads(last)[NOTE_KEY]
        return found
    return None


@pytest.mark.slow
async def test_a_filtered_set_exports_as_csv_with_the_columns_chosen(
    client: httpx.AsyncClient,
) -> None:
    await pushed(client, range(6))
    answer = await client.get(
        "/v1/export/records",
        params={
            "format": "csv",
            "attribute": "colour:green",
            "columns": "message_id,id,data.n,data.quote,attributes.a.b,data",
        },
    )
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/csv")
    assert answer.headers["content-disposition"].startswith('attachment; filename="records-')
    assert answer.headers["recordline-export-max-rows"] == "100000"
    rows = csv_rows(answer.text)
    assert [r["message_id"] for r in rows] == ["m-00001", "m-00003", "m-00005"]
    assert rows[0]["id"] == "r-1"
    assert rows[0]["data.n"] == "1"
    assert rows[0]["data.quote"] == 'a "b", c'
    assert rows[0]["attributes.a.b"] == "c"
    assert json.loads(rows[0]["data"]) == {"n": 1, "text": PAYLOAD, "quote": 'a "b", c'}
    assert answer.text.startswith("message_id,id,data.n,data.quote,attributes.a.b,data\r\n")


@pytest.mark.slow
async def test_json_lines_hold_every_field_by_default_and_rejections_export_too(
    client: httpx.AsyncClient,
) -> None:
    await pushed(client, range(3))
    await pushed(client, range(3, 5), valid=False)
    lines = (await client.get("/v1/export/records", params={"format": "jsonl"})).text
    rows = [json.loads(line) for line in lines.splitlines()]
    listed = (await client.get("/v1/records")).json()["records"]
    assert rows == listed
    refused = await client.get(
        "/v1/export/rejections", params={"format": "jsonl", "columns": "message_id,reason"}
    )
    assert [json.loads(line)["message_id"] for line in refused.text.splitlines()] == [
        "m-00003",
        "m-00004",
    ]


async def test_an_export_cut_at_its_row_bound_goes_on_from_its_token_exactly_once(
    client: httpx.AsyncClient,
) -> None:
    await pushed(client, range(25))
    seen: list[str] = []
    params: dict[str, Any] = {"format": "jsonl", "columns": "message_id", "max_rows": 7}
    for _ in range(10):
        text = (await client.get("/v1/export/records", params=params)).text
        rows = [json.loads(line) for line in text.splitlines() if NOTE_KEY not in line]
        seen += [r["message_id"] for r in rows]
        cut = note(text)
        if cut is None:
            break
        assert cut["complete"] is False
        assert cut["rows"] == len(rows) == 7
        assert "7-row bound" in cut["reason"]
        params = {"format": "jsonl", "columns": "message_id", "max_rows": 7}
        params["page_token"] = cut["next_page_token"]
    assert seen == [f"m-{n:05}" for n in range(25)]
    # A CSV says so in a last line starting `#`.
    text = (await client.get("/v1/export/records", params={"max_rows": 3})).text
    assert text.splitlines()[-1].startswith(f"# {NOTE_KEY}: incomplete after 3 rows")
    assert len(csv_rows(text)) == 3


@pytest.mark.slow
async def test_an_export_of_the_whole_store_is_cut_at_its_byte_bound_and_goes_on(
    client: httpx.AsyncClient,
) -> None:
    # 500 rows of ~4.2 KB: twice the 1 MiB bound, cut inside a page.
    await pushed(client, range(500), text="y" * 4000)
    seen: list[str] = []
    params: dict[str, Any] = {"format": "jsonl"}
    sizes = []
    for _ in range(5):
        async with client.stream("GET", "/v1/export/records", params=params) as answer:
            body = b"".join([chunk async for chunk in answer.aiter_bytes()])
        text = body.decode()
        cut = note(text)
        rows = [json.loads(line) for line in text.splitlines() if NOTE_KEY not in line]
        seen += [r["message_id"] for r in rows]
        if cut is None:
            break
        sizes.append(len(body) - len(text.splitlines()[-1]) - 1)
        assert "1,048,576-byte bound" in cut["reason"]
        params = {"format": "jsonl", "page_token": cut["next_page_token"]}
    assert sizes
    assert all(1024 * 1024 - 5000 < size <= 1024 * 1024 for size in sizes), sizes
    assert seen == [f"m-{n:05}" for n in range(500)]


async def export_peak(client: httpx.AsyncClient) -> tuple[int, int]:
    """The bytes an export of every record sends, and the most this process held
    meanwhile (it is the server and its client alike)."""
    tracemalloc.start()
    try:
        received = 0
        async with client.stream("GET", "/v1/export/records", params={"format": "jsonl"}) as got:
            async for chunk in got.aiter_bytes():
                received += len(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return received, peak


@pytest.mark.slow
async def test_an_export_is_streamed_never_held_whole() -> None:
    store = DuckDBStore(":memory:")
    app = create_app(exporting(64 * 1024 * 1024), store=store)
    now = time.time_ns() // 1000 - 60_000_000

    async def stored(numbers: range) -> None:
        for start in range(numbers.start, numbers.stop, 500):
            batch = [
                Record(
                    message_id=f"m-{n:05}",
                    publish_time=now + n,
                    ingest_time=now + n,
                    id=f"r-{n}",
                    data=json.dumps({"n": n, "text": PAYLOAD}),
                )
                for n in range(start, min(start + 500, numbers.stop))
            ]
            await store.append(batch)

    async with served(app) as client:
        await stored(range(3000))
        small, small_peak = await export_peak(client)
        await stored(range(3000, 12000))
        large, large_peak = await export_peak(client)
    assert large > 3.9 * small > 3_000_000
    # A page at a time (1,000 rows: the store's rows, their views and lines, the gzip
    # coding and its client's): four times the rows, about the same most held.
    assert large_peak < 1.3 * small_peak, (small_peak, large_peak)
    assert large_peak < 16 * 1024 * 1024


@pytest.mark.parametrize(
    ("path", "params", "parameter"),
    [
        ("/v1/export/records", {"format": "xml"}, "format"),
        ("/v1/export/records", {"columns": "nope"}, "columns"),
        ("/v1/export/records", {"columns": "id,id"}, "columns"),
        ("/v1/export/records", {"columns": "id,,data"}, "columns"),
        ("/v1/export/records", {"columns": ",".join(["id"] * 33)}, "columns"),
        ("/v1/export/rejections", {"columns": "data.n"}, "columns"),
        ("/v1/export/records", {"max_rows": "0"}, "max_rows"),
        ("/v1/export/records", {"max_rows": "1000001"}, "max_rows"),
        ("/v1/export/records", {"attribute": "nocolon"}, "attribute"),
        ("/v1/export/records", {"since": "yesterday"}, "since"),
        ("/v1/export/records", {"page_token": "garbage"}, "page_token"),
        ("/v1/export/records", {"whatever": "1"}, "whatever"),
        ("/v1/export/records", {"format": ["csv", "jsonl"]}, "format"),
        ("/v1/export/rejections", {"record_id": "r-1"}, "record_id"),
    ],
)
async def test_export_parameters_that_cannot_be_used_are_a_400_naming_them(
    client: httpx.AsyncClient, path: str, params: dict[str, Any], parameter: str
) -> None:
    answer = await client.get(path, params=params)
    assert answer.status_code == 400, answer.text
    assert answer.headers["content-type"].startswith("application/problem+json")
    assert answer.json()["parameter"] == parameter


@pytest.mark.slow
async def test_an_unknown_list_is_a_404_and_a_future_since_an_empty_export(
    client: httpx.AsyncClient,
) -> None:
    await pushed(client, range(2))
    assert (await client.get("/v1/export/nothing")).status_code == 404
    later = await client.get(
        "/v1/export/records", params={"since": "2999-01-01T00:00:00Z", "format": "jsonl"}
    )
    assert later.status_code == 200
    assert later.text == ""
    # Up to 2999, or from a list's own token (which no `until` bounds): the rows stored
    # by the time it was asked, and no waiting for more.
    far = await client.get(
        "/v1/export/records", params={"until": "2999-01-01T00:00:00Z", "format": "jsonl"}
    )
    assert [json.loads(line)["message_id"] for line in far.text.splitlines()] == [
        "m-00000",
        "m-00001",
    ]
    first = (await client.get("/v1/records", params={"limit": 1})).json()
    rest = await client.get(
        "/v1/export/records",
        params={"page_token": first["next_page_token"], "format": "jsonl", "columns": "id"},
    )
    assert rest.text == '{"id":"r-1"}\n'


async def test_an_export_that_fails_after_it_began_ends_with_its_note() -> None:
    # The first page's rows are sent; reading the next fails with no store's refusal.
    when = datetime(2024, 4, 27, 12, tzinfo=UTC)
    view = shown_record(b"1", at=when, message_id="m-1", record_id="r-1")
    first = RecordsPage(records=[view], next_page_token="t-2", complete_until=when)

    async def read(token: str, limit: int) -> RecordsPage:
        raise ValueError("not a store's refusal")

    export = Export(Format.JSONL, columns_of(RECORDS, "id"), Bounds(10, 1 << 20))
    walk = Walk(read, lambda token, view: token)
    asked = micros(when) + 1
    text = b"".join([chunk async for chunk in export.run("t-1", first, walk, asked)]).decode()
    assert text.splitlines()[0] == '{"id":"r-1"}'
    cut = note(text)
    assert cut == {
        "complete": False,
        "rows": 1,
        "reason": "a page could not be read",
        "next_page_token": "t-2",
    }


async def test_a_csv_cell_a_spreadsheet_would_run_is_sent_as_text(
    client: httpx.AsyncClient,
) -> None:
    formulas = [
        "=1+2",
        "+1",
        "-2+3",
        "@SUM(A1)",
        "\tx",
        "\rx",
        '=HYPERLINK("http://x")',
        # After whitespace, and in full-width forms.
        " =1+2",
        "\n=1+2",
        "\u3000=1+2",
        "\uff1dSUM(A1)",
        "\uff0b1",
        "\uff0d1",
        "\uff20SUM(A1)",
        # Small forms, and after an invisible character.
        "\ufe66SUM(A1)",
        "\ufe62 1",
        "\u200b=1+2",
        "\ufeff@SUM(A1)",
    ]
    count = len(formulas)
    payload = {"id": "f-1", "data": {"cells": formulas, "n": -5, "plain": "a=b"}}
    for n, text in enumerate(formulas):
        payload["data"][f"c{n}"] = text  # type: ignore[index]
    body = push_body(0)
    body["message"]["data"] = base64.b64encode(json.dumps(payload).encode()).decode()
    await client.post("/pubsub/push", json=body)
    columns = ",".join(["id", "data.n", "data.plain", *(f"data.c{n}" for n in range(count))])
    answer = await client.get("/v1/export/records", params={"columns": columns})
    (row,) = csv_rows(answer.text)
    assert [row[f"data.c{n}"] for n in range(count)] == ["'" + text for text in formulas]
    assert (row["data.n"], row["data.plain"]) == ("-5", "a=b")
    # JSON Lines are data, not cells: as they were sent.
    lines = await client.get("/v1/export/records", params={"columns": columns, "format": "jsonl"})
    assert [json.loads(lines.text)[f"data.c{n}"] for n in range(count)] == formulas


async def test_a_csv_header_a_spreadsheet_would_run_is_sent_as_text(
    client: httpx.AsyncClient,
) -> None:
    # A column's name is the caller's text, and a link another may be sent to.
    names = ["attributes.=1+2", "attributes.@x", "data.\uff1dx", "attributes. -1"]
    answer = await client.get("/v1/export/records", params={"columns": ",".join(names)})
    assert answer.status_code == 200, answer.text
    head = next(csv.reader(io.StringIO(answer.text)))
    assert head == ["attributes.=1+2", "attributes.@x", "data.\uff1dx", "attributes. -1"]
    # A name that starts as a formula names no column (each starts with a field's name).
    for name in ["=cmd|' /C calc'!A0", "\uff20SUM(A1)", " +1"]:
        answer = await client.get("/v1/export/records", params={"columns": f"id,{name}"})
        assert answer.status_code == 400, name
    # And the header is a row of cells like any other, whatever a name holds.
    columns = tuple(Column(name, "attributes", (name,)) for name in ("=1+2", " @x", "\uff0b1"))
    head = Export(Format.CSV, columns, Bounds.of(1, 1024 * 1024)).head()
    assert next(csv.reader(io.StringIO(head.decode()))) == ["'=1+2", "' @x", "'\uff0b1"]


@pytest.mark.parametrize("number", ["1e999", "9" * 5000], ids=["beyond-float", "beyond-int-digits"])
async def test_a_stored_number_no_decoder_here_holds_cuts_no_export(
    client: httpx.AsyncClient, number: str
) -> None:
    # The contract's `data` is stored as sent, unread: a row whose number this
    # decoder does not hold cut every CSV export at it, and the token to go on from
    # named the same row again, so no export of the list could ever pass it.
    await pushed(client, range(2))
    body = push_body(2)
    payload = b'{"id": "r-2", "data": {"n": %s, "text": "t"}}' % number.encode()
    body["message"]["data"] = base64.b64encode(payload).decode()
    assert (await client.post("/pubsub/push", json=body)).status_code == 204
    await pushed(client, range(3, 5))
    for params in [
        {"columns": "id,data.n,data.text"},
        {"format": "csv"},
        {"format": "jsonl", "columns": "id,data.text"},
    ]:
        answer = await client.get("/v1/export/records", params=params)
        assert answer.status_code == 200, answer.text
        assert note(answer.text) is None, answer.text[-300:]
        assert "# " + NOTE_KEY not in answer.text, answer.text[-300:]
        assert answer.text.count("r-") == 5, (params, answer.text[:300])


async def test_an_export_takes_select_as_every_read_writes_it(client: httpx.AsyncClient) -> None:
    await pushed(client, range(3))
    chosen = 'message_id,data.n,attributes["a.b"],attributes.colour'
    answer = await client.get("/v1/export/records", params={"select": chosen})
    assert answer.status_code == 200, answer.text
    rows = csv_rows(answer.text)
    assert answer.text.startswith('message_id,data.n,"attributes[""a.b""]",attributes.colour\r\n')
    assert [(r["data.n"], r['attributes["a.b"]'], r["attributes.colour"]) for r in rows] == [
        ("0", "c", "red"),
        ("1", "c", "green"),
        ("2", "c", "red"),
    ]
    # The same columns as `columns=` names them, the same values.
    same = await client.get("/v1/export/records", params={"columns": "message_id,data.n"})
    assert [r["data.n"] for r in csv_rows(same.text)] == [r["data.n"] for r in rows]
    # Refused as a read refuses it, and never beside `columns`.
    for params, said in [
        ({"select": "id,,n"}, "at character 4"),
        ({"select": "nope"}, "entry 1 ('nope'"),
        ({"select": "id", "columns": "id"}, "not both"),
    ]:
        refused = await client.get("/v1/export/records", params=params)
        assert refused.status_code == 400, refused.text
        assert refused.json()["parameter"] == "select"
        assert said in refused.json()["detail"]
