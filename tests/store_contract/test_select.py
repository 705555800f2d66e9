"""The Store contract for `select=`: on every store, a projected walk of pages holds the
rows of the walk without one, each as the in-memory projection of it (tests/test_select.py's
`project`), over payloads of every JSON shape the filter language's contract stores
(tests/store_contract/test_where.py).

A projected page is read with the fields it shows (`Reader.page`'s `fields`): a store may
leave a record's `data` or `attributes` unread where none of it is shown, and count its
rows without it, so that a page cut by its bytes may end elsewhere than without one. Its
cursor resumes after its last row all the same: no row is skipped or met twice, and where
no byte bound cuts a page (the default budget here), the pages and tokens are the same."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest

from app.query.mask import MASKED, Mask
from app.query.page_token import PageTokens
from app.query.select import Selection, refuse_masked, selection_of
from app.query.service import PAGE_BYTES, RECORDS, Reader, RecordView
from app.store import Store
from app.store.filters import AttributeIs, RowFilter
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
    "id,attributes.region": [("id", ()), ("attributes", ("region",))],
}
# A page's bytes small enough that pages of whole rows (about 430 bytes each here) end
# on their bytes, before `limit`, where those of a projection without `data` or
# `attributes` may not.
SMALL_PAGE_BYTES = 2_000
# Filters that read what a projection leaves out (the attributes, the payload) or not.
KEEPS = {
    "attribute=region:eu": RowFilter(attributes=(AttributeIs("region", "eu"),)),
    "where=data.n > 0": RowFilter(where="data.n > 0"),
    "where=id = 'id-1' OR attributes.region = 'us'": RowFilter(
        where="id = 'id-1' OR attributes.region = 'us'"
    ),
}


async def walk(
    reader: Reader,
    selection: Selection | None,
    since: int,
    until: int,
    keep: RowFilter | None = None,
) -> list[dict[str, Any]]:
    """Each page of a walk from `since` to `until` by its tokens, as the JSON it is
    answered with: projected by `selection`, whose fields alone the read is told of."""
    start, end = (datetime.fromtimestamp(t / 1e6, UTC) for t in (since, until))
    token: str | None = None
    pages = []
    for _ in range(100):
        bounds = {"since": None, "until": None} if token else {"since": start, "until": end}
        page = await reader.page(
            RECORDS,
            limit=7,
            page_token=token,
            filter=None if token else keep,
            fields=None if selection is None else selection.fields,
            **bounds,
        )
        answer = page if selection is None else selection.page(page)
        pages.append(json.loads(msgspec.json.encode(answer)))
        token = page.next_page_token
        if token is None:
            return pages
    raise AssertionError("the walk did not end")


def rows_of(pages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [row for page in pages for row in page["records"]]


@pytest.mark.slow
@pytest.mark.parametrize("text", list(SHAPES))
async def test_a_projected_walk_holds_the_rows_of_the_walk_without_it(
    store: Store, text: str
) -> None:
    rows, since, until = await stored(store)
    selection = selection_of(text, FIELDS)
    assert selection is not None
    for page_bytes in (PAGE_BYTES, SMALL_PAGE_BYTES):
        reader = Reader(
            store, pending_horizon=lambda: 2**62, tokens=PageTokens("s"), page_bytes=page_bytes
        )
        whole = await walk(reader, None, since, until)
        projected = await walk(reader, selection, since, until)
        assert [r["message_id"] for r in rows_of(whole)] == [r.message_id for r in rows]
        # Every row once, in order, each the projection of the row read whole.
        assert rows_of(projected) == [project(r, SHAPES[text]) for r in rows_of(whole)]
        if page_bytes == PAGE_BYTES:
            # No page ends on its bytes: the same pages and tokens, and the same times
            # but the last's (complete up to the read horizon, a later one the later read).
            assert [p["records"] for p in projected] == [
                [project(r, SHAPES[text]) for r in p["records"]] for p in whole
            ]
            assert [p["next_page_token"] for p in projected] == [
                p["next_page_token"] for p in whole
            ]
            assert [p["complete_until"] for p in projected[:-1]] == [
                p["complete_until"] for p in whole[:-1]
            ]
        else:
            assert len(whole) > len(rows) // 7 + 1, "no page of whole rows ended on its bytes"
    # Paths into the payload tell rows apart: some hold what others lack.
    if "data." in text:
        shown = rows_of(projected)
        assert 0 < sum("data" in row for row in shown) < len(shown)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(KEEPS))
async def test_a_filter_keeps_the_same_rows_whatever_the_projection_leaves_out(
    store: Store, name: str
) -> None:
    # The filter reads what a projection of `id` alone leaves out: a store that leaves
    # it unread for the page's rows must still read it for the filter.
    rows, since, until = await stored(store)
    keep = KEEPS[name]
    kept = [r.message_id for r in rows if keep.matches(r)]
    assert 0 < len(kept) < len(rows)
    for text in ("id", "id,data.n", "attributes.region"):
        selection = selection_of(text, FIELDS)
        assert selection is not None
        entries = [(e.field, e.path) for e in selection.entries]
        for page_bytes in (PAGE_BYTES, SMALL_PAGE_BYTES):
            reader = Reader(
                store, pending_horizon=lambda: 2**62, tokens=PageTokens("s"), page_bytes=page_bytes
            )
            whole = rows_of(await walk(reader, None, since, until, keep))
            projected = rows_of(await walk(reader, selection, since, until, keep))
            assert [r["message_id"] for r in whole] == kept
            assert projected == [project(r, entries) for r in whole]


@pytest.mark.slow
async def test_a_masked_reader_s_projection_is_that_of_its_masked_walk(store: Store) -> None:
    # What a projection shows around a masked member is masked inside, whatever the
    # store left unread of what it does not show.
    rows, since, until = await stored(store)
    mask = Mask(fields=["er"], attributes=["region"])
    reader = Reader(
        store,
        pending_horizon=lambda: 2**62,
        tokens=PageTokens("s"),
        page_bytes=SMALL_PAGE_BYTES,
        mask=mask,
    )
    whole = rows_of(await walk(reader, None, since, until))
    assert [r["message_id"] for r in whole] == [r.message_id for r in rows]
    assert {json.dumps(r["attributes"].get("region")) for r in whole} == {json.dumps(MASKED)}
    deep = [r["data"].get("deep") for r in whole if isinstance(r["data"], dict)]
    held = [d for d in deep if isinstance(d, dict) and "er" in d]
    assert held
    assert all(d["er"] == MASKED for d in held)
    for text in ("id", "id,data.deep", "attributes", 'data.n,attributes["k it"]'):
        selection = selection_of(text, FIELDS)
        assert selection is not None
        refuse_masked(selection, mask)
        entries = [(e.field, e.path) for e in selection.entries]
        projected = rows_of(await walk(reader, selection, since, until))
        assert projected == [project(r, entries) for r in whole], text


@pytest.mark.slow
async def test_a_projected_walk_newest_first_holds_the_rows_of_the_walk_without_it(
    store: Store,
) -> None:
    rows, since, until = await stored(store)
    selection = selection_of("id,message_id", FIELDS)
    assert selection is not None
    start, end = (datetime.fromtimestamp(t / 1e6, UTC) for t in (since, until))
    reader = Reader(
        store, pending_horizon=lambda: 2**62, tokens=PageTokens("s"), page_bytes=SMALL_PAGE_BYTES
    )
    walks = []
    for fields in (None, selection.fields):
        token: str | None = None
        seen: list[dict[str, Any]] = []
        for _ in range(100):
            bounds = {"since": None, "until": None} if token else {"since": start, "until": end}
            page = await reader.newest_page(
                RECORDS, limit=7, page_token=token, fields=fields, **bounds
            )
            seen += [selection.row(view) for view in page.records]
            token = page.next_page_token
            if token is None:
                break
        walks.append(seen)
    whole, projected = walks
    assert [r["message_id"] for r in whole] == [r.message_id for r in reversed(rows)]
    assert projected == whole
