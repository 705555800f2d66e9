"""The Store contract for `select=`: on every store, a projected read is the in-memory
projection of the same read without one (tests/test_select.py's `project`), page by
page, the same rows behind the same cursors, over payloads of every JSON shape the
filter language's contract stores (tests/store_contract/test_where.py)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import msgspec
import pytest

from app.query.page_token import PageTokens
from app.query.select import selection_of
from app.query.service import RECORDS, Reader, RecordView
from app.store import Store
from tests.store_contract.test_where import stored
from tests.test_select import project

FIELDS = [f.name for f in msgspec.structs.fields(RecordView)]
SHAPES: dict[str, list[tuple[str, tuple[str, ...]]]] = {
    "id": [("id", ())],
    "message_id,ingest_time,timestamp": [
        ("message_id", ()),
        ("ingest_time", ()),
        ("timestamp", ()),
    ],
    "id,data.n,data.deep.er": [("id", ()), ("data", ("n",)), ("data", ("deep", "er"))],
    'data["deep"]["a b"],attributes["k it"],attributes.region': [
        ("data", ("deep", "a b")),
        ("attributes", ("k it",)),
        ("attributes", ("region",)),
    ],
    "data,attributes": [("data", ()), ("attributes", ())],
    "data.s,data.flag,data.missing": [
        ("data", ("s",)),
        ("data", ("flag",)),
        ("data", ("missing",)),
    ],
}


@pytest.mark.slow
@pytest.mark.parametrize("text", list(SHAPES))
async def test_select_projects_every_store_s_pages_as_memory_projects_them(
    store: Store, text: str
) -> None:
    rows, since, until = await stored(store)
    reader = Reader(store, pending_horizon=lambda: 2**62, tokens=PageTokens("s"))
    selection = selection_of(text, FIELDS)
    assert selection is not None
    start, end = (datetime.fromtimestamp(t / 1e6, UTC) for t in (since, until))
    token: str | None = None
    seen: list[str] = []
    shown: list[dict[str, object]] = []
    for _ in range(100):
        bounds = {"since": None, "until": None} if token else {"since": start, "until": end}
        page = await reader.page(RECORDS, limit=7, page_token=token, **bounds)
        whole = json.loads(msgspec.json.encode(page))
        projected = json.loads(selection.encoded(selection.page(page)))
        assert projected["records"] == [project(r, SHAPES[text]) for r in whole["records"]]
        assert projected["next_page_token"] == whole["next_page_token"]
        assert projected["complete_until"] == whole["complete_until"]
        seen += [r["message_id"] for r in whole["records"]]
        shown += projected["records"]
        token = page.next_page_token
        if token is None:
            break
    assert seen == [r.message_id for r in rows]
    # Paths into the payload tell rows apart: some hold what others lack.
    if "data." in text:
        assert 0 < sum("data" in row for row in shown) < len(shown)
