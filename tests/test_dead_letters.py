"""`GET /v1/dead-letters`: a store's dead letters newest first, each shown whatever it
holds, redriven through `POST /v1/replay` under its own message id as the view says to;
a store that reads none answers 404 saying where they are; parameters it does not take
are refused 400. The store here reads dead letters as the contract's oracle does
(`tests.fakes.DeadLetteredStore`), which BigQuery's store is held to."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from litestar.testing import TestClient

from app.asgi import create_app
from app.http.head import Recordline
from app.query.page_token import PageToken, PageTokens
from app.records import moment, rfc3339
from app.settings import DEFAULT_PAGE_TOKEN_SECRET
from app.store.dead_letters import (
    PAGE_BYTES,
    SOURCE_DELIVERY_COUNT,
    SOURCE_PROJECT,
    SOURCE_PUBLISH_TIME,
    SOURCE_SUBSCRIPTION,
    DeadLetter,
    DeadLetterQuery,
    page_of,
)
from app.store.duckdb.store import DuckDBStore
from tests.auth.fake_google import FakeGoogle
from tests.auth.test_export_permission import ANALYST, OPERATOR, token
from tests.conftest import settings as app_settings
from tests.fakes import DeadLetteredStore
from tests.fuzz.budget import EXAMPLES
from tests.test_access_record import settings as operators_only

DAY = 86_400_000_000
NOW = time.time_ns() // 1000
D = "/v1/dead-letters"
SOURCE = {
    SOURCE_SUBSCRIPTION: "orders-push",
    SOURCE_PROJECT: "shop-prod",
    SOURCE_DELIVERY_COUNT: "32",
    SOURCE_PUBLISH_TIME: "2026-01-02T03:04:05.678Z",
}


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[TestClient[Recordline], DeadLetteredStore]]:
    """The service on loopback (every caller an operator), on a store with dead letters,
    its records' ids read from `id` as a push's are."""
    store = DeadLetteredStore(DuckDBStore(":memory:"))
    with TestClient(create_app(app_settings(), store=store)) as client:
        yield client, store


def letter(n: int, *, time: int = NOW - 1_000_000, **columns: Any) -> DeadLetter:
    values: dict[str, Any] = {
        "message_id": f"dl-{n}",
        "subscription_name": "projects/shop-prod/subscriptions/orders-dead-letters-bigquery",
        "data": json.dumps({"id": f"r-{n}", "data": {"n": n}}).encode(),
        "attributes": json.dumps(SOURCE),
        **columns,
    }
    return DeadLetter(publish_time=time, **values)


def replayed(view: dict[str, Any]) -> dict[str, Any]:
    """A dead letter as the view says to replay it (as the console does)."""
    message = {
        "message_id": view["message_id"],
        "publish_time": view["source_publish_time"] or view["publish_time"],
        "data": view["data"],
        "attributes": view["attributes"] or {},
    }
    if view["source_subscription"]:
        message["subscription"] = view["source_subscription"]
    return message


def test_a_store_without_dead_letters_answers_404_saying_where_they_are() -> None:
    with TestClient(create_app(app_settings())) as client:
        answer = client.get(D)
    assert answer.status_code == 404, answer.text
    detail = answer.json()["detail"]
    assert "<system>-dead-letter-replay" in detail
    assert "recordline replay dead-letters" in detail


@pytest.fixture(scope="module")
def google() -> Iterator[FakeGoogle]:
    fake = FakeGoogle().start()
    yield fake
    fake.stop()


def test_a_reader_refused_is_told_it_is_the_dead_letters_they_may_not_read(
    google: FakeGoogle,
) -> None:
    # Not an operator: refused 403 (no token: 401), told of what they asked, not of a
    # replay they never tried.
    with TestClient(create_app(operators_only(google))) as client:
        read = client.get(D, headers=token(google, ANALYST))
        anonymous = client.get(D)
        operator = client.get(D, headers=token(google, OPERATOR))
    assert (read.status_code, anonymous.status_code, operator.status_code) == (403, 401, 404)
    assert "dead letters" in read.json()["detail"]
    assert "replay" not in read.json()["detail"]


def access_token() -> str:
    token = PageToken(after_time=0, after_message_id="", until=NOW, listing="access", newest=True)
    return PageTokens(DEFAULT_PAGE_TOKEN_SECRET).encode(token)


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"limt": "5"}, "limt"),
        ({"limit": "0"}, "limit"),
        ({"limit": "501"}, "limit"),
        ({"since": "yesterday"}, "since"),
        ({"since": "1h", "until": "2h"}, "until"),
        ({"page_token": "junk"}, "page_token"),
        ({"page_token": "x" * 3000}, "page_token"),
        ({"page_token": "access"}, "page_token"),
        ([("since", "1h"), ("since", "2h")], "since"),
    ],
)
def test_parameters_it_does_not_take_are_refused_400_naming_them(
    served: tuple[TestClient[Recordline], DeadLetteredStore],
    params: dict[str, str] | list[tuple[str, str]],
    named: str,
) -> None:
    client, _ = served
    if isinstance(params, dict) and params.get("page_token") == "access":
        params = {"page_token": access_token()}
    answer = client.get(D, params=params)
    assert answer.status_code == 400, answer.text
    assert named in answer.json()["detail"]


@pytest.mark.parametrize(
    ("since", "until"),
    [
        ("2099-01-01T00:00:00Z", "2099-01-02T00:00:00Z"),
        ("1960-01-01T00:00:00Z", "1965-01-01T00:00:00Z"),
        ("9999-12-31T23:59:58Z", "9999-12-31T23:59:59Z"),
    ],
)
def test_a_range_wholly_in_the_future_or_before_the_epoch_holds_none(
    served: tuple[TestClient[Recordline], DeadLetteredStore], since: str, until: str
) -> None:
    # `until` is later than `since`: the range is not refused, it holds no dead letter.
    client, store = served
    store.dead_letters = [letter(1), letter(2, time=0)]
    answer = client.get(D, params={"since": since, "until": until})
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"dead_letters": [], "next_page_token": None}


def test_each_dead_letter_is_shown_whatever_it_holds(
    served: tuple[TestClient[Recordline], DeadLetteredStore],
) -> None:
    client, store = served
    store.dead_letters = [
        letter(1, time=NOW - 1),
        letter(2, time=NOW - 2, data=b"\xff\xfe not utf-8"),
        letter(3, time=NOW - 3, attributes="not json {"),
        letter(4, time=NOW - 4, attributes='{"n": 1}'),
        DeadLetter(publish_time=NOW - 5),
        letter(6, time=NOW - 6, attributes=json.dumps({SOURCE_DELIVERY_COUNT: "many"})),
        letter(7, time=NOW - 7, attributes=json.dumps({**SOURCE, SOURCE_PUBLISH_TIME: "soon"})),
        letter(8, time=NOW - 8, message_id="//"),
        letter(9, time=NOW - 9, attributes=json.dumps({SOURCE_DELIVERY_COUNT: "9" * 40})),
        letter(10, time=NOW - 10, message_id="x" * 5000),
    ]
    answer = client.get(D)
    assert answer.status_code == 200, answer.text
    page = answer.json()
    shown = {v["message_id"]: v for v in page["dead_letters"]}
    assert [v["message_id"] for v in page["dead_letters"]] == [
        "dl-1", "dl-2", "dl-3", "dl-4", None, "dl-6", "dl-7", "//", "dl-9", "x" * 5000,
    ]  # fmt: skip
    first = shown["dl-1"]
    assert base64.b64decode(first["data"]) == store.dead_letters[0].data
    assert json.loads(first["text"]) == {"id": "r-1", "data": {"n": 1}}
    assert first["attributes"] == SOURCE
    assert first["attributes_text"] is None
    assert first["source_subscription"] == "projects/shop-prod/subscriptions/orders-push"
    assert first["delivery_count"] == 32
    assert first["source_publish_time"] == "2026-01-02T03:04:05.678Z"
    assert first["subscription_name"].endswith("orders-dead-letters-bigquery")
    assert first["stored"] is False
    assert first["unreplayable"] is None
    # Bytes that are no UTF-8: base64 alone, replayable as they are.
    assert base64.b64decode(shown["dl-2"]["data"]) == b"\xff\xfe not utf-8"
    assert shown["dl-2"]["text"] is None
    assert shown["dl-2"]["unreplayable"] is None
    # Attributes that are no JSON object of strings: as the text they are, not replayed.
    assert shown["dl-3"]["attributes"] is None
    assert shown["dl-3"]["attributes_text"] == "not json {"
    assert "attributes" in shown["dl-3"]["unreplayable"]
    assert shown["dl-4"]["attributes_text"] == '{"n": 1}'
    # Every column NULL (but its time).
    empty = shown[None]
    assert (empty["data"], empty["text"], empty["attributes"], empty["attributes_text"]) == (
        None, None, None, None,
    )  # fmt: skip
    assert "message id" in empty["unreplayable"]
    assert empty["delivery_count"] is None
    # A count that is no number is none; a publish time that is none, refused as replay
    # would refuse it; an id no look-up can take, likewise.
    assert shown["dl-6"]["delivery_count"] is None
    assert shown["dl-7"]["unreplayable"].startswith("publish_time")
    assert shown["//"]["unreplayable"].startswith("message_id")
    # A count past any number a reader takes whole, and an id past any a look-up takes.
    assert shown["dl-9"]["delivery_count"] is None
    assert shown["x" * 5000]["unreplayable"].startswith("message_id")
    assert page["next_page_token"] is None


def test_a_dead_letter_redriven_is_stored_under_its_id_once(
    served: tuple[TestClient[Recordline], DeadLetteredStore],
) -> None:
    client, store = served
    store.dead_letters = [letter(20), letter(21, time=NOW - 2_000_000)]
    views = client.get(D).json()["dead_letters"]
    body = {"messages": [replayed(v) for v in views], "note": "store was down; fixed"}
    answer = client.post("/v1/replay", json=body)
    assert answer.status_code == 200, answer.text
    assert [r["outcome"] for r in answer.json()["results"]] == ["stored", "stored"]
    # Stored under its own message id, with the original's publish time and subscription.
    stored = client.get("/v1/messages/dl-20").json()
    assert stored["status"] == "stored"
    assert stored["record"]["publish_time"] == "2026-01-02T03:04:05.678000Z"
    assert stored["record"]["subscription"] == "projects/shop-prod/subscriptions/orders-push"
    assert [v["stored"] for v in client.get(D).json()["dead_letters"]] == [True, True]
    again = client.post("/v1/replay", json=body).json()["results"]
    assert [r["outcome"] for r in again] == ["already_stored", "already_stored"]


def walk(client: TestClient[Recordline], params: dict[str, str]) -> tuple[list[Any], int]:
    """Every dead letter the pages give, following their tokens; and how many pages."""
    found: list[Any] = []
    pages = 0
    while True:
        answer = client.get(D, params=params)
        assert answer.status_code == 200, answer.text
        page = answer.json()
        pages += 1
        found += page["dead_letters"]
        if page["next_page_token"] is None:
            return found, pages
        params = {"page_token": page["next_page_token"], "limit": params.get("limit", "100")}


def test_pages_walk_every_dead_letter_newest_first_a_day_at_a_time(
    served: tuple[TestClient[Recordline], DeadLetteredStore],
) -> None:
    client, store = served
    # Days of dead letters with empty days between, and a day of a hundred.
    store.dead_letters = [
        letter(n, time=NOW - days * DAY - n * 1_000_000, message_id=f"{days}-{n:04d}")
        for days, many in ((0, 30), (3, 100), (4, 1), (40, 5))
        for n in range(many)
    ]
    everything = page_of(DeadLetterQuery(since=0, until=NOW + 1, limit=10_000), store.dead_letters)
    found, pages = walk(client, {"limit": "40"})
    assert [v["message_id"] for v in found] == [x.message_id for x in everything]
    # Each day's pages, and a page that ends a day is followed by the next day holding
    # any: no page for the days between (the day that held the last hour aside).
    assert pages <= 1 + 1 + 3 + 1 + 1 + 2
    # `since` ends the walk there; `until` starts it there.
    since = NOW - 3 * DAY - 50 * 1_000_000
    found, _ = walk(client, {"since": rfc3339(moment(since)), "limit": "40"})
    kept = page_of(DeadLetterQuery(since=since, until=NOW + 1, limit=10_000), store.dead_letters)
    assert [v["message_id"] for v in found] == [x.message_id for x in kept]
    assert len(kept) == 30 + 51
    # A day that holds none is a page that holds none, going on to the day that does.
    first = client.get(D, params={"since": "3.5d", "until": "1d"}).json()
    assert first["dead_letters"] == []
    assert first["next_page_token"] is not None
    found, _ = walk(client, {"since": "3.5d", "until": "1d", "limit": "500"})
    assert sorted(v["message_id"] for v in found) == [f"3-{n:04d}" for n in range(100)]


def test_pages_walk_on_past_dead_letters_of_long_ids_of_any_characters(
    served: tuple[TestClient[Recordline], DeadLetteredStore],
) -> None:
    client, store = served
    # Ids no look-up takes, of up to four bytes a character: each page ends at one, and
    # its token still reads on (no token longer than a page token may be).
    ids = ["é" * 1000, "\U0001f600" * 1024, "x" * 5000, "ü" * 2000 + "a", "dl-last"]
    store.dead_letters = [
        letter(n, time=NOW - n - 1, message_id=message_id) for n, message_id in enumerate(ids)
    ]
    found, _ = walk(client, {"limit": "1"})
    assert [v["message_id"] for v in found] == ids


def test_a_page_stops_at_4_mib_of_dead_letters(
    served: tuple[TestClient[Recordline], DeadLetteredStore],
) -> None:
    client, store = served
    big = b"x" * (PAGE_BYTES // 2 + 1)
    store.dead_letters = [letter(n, time=NOW - n - 1, data=big) for n in range(5)]
    page = client.get(D).json()
    # The second takes it past 4 MiB: the page ends there, a token going on.
    assert [v["message_id"] for v in page["dead_letters"]] == ["dl-0", "dl-1"]
    assert page["next_page_token"] is not None
    found, _ = walk(client, {"limit": "100"})
    assert [v["message_id"] for v in found] == [f"dl-{n}" for n in range(5)]


# -- hostile dead letters -------------------------------------------------------------

_TEXT = st.text(st.characters(codec="utf-8"), max_size=40)
_ATTRIBUTE_VALUES = st.one_of(
    _TEXT,
    st.sampled_from(
        ["32", "-1", "1e3", "٣", "2026-01-02T03:04:05Z", "soon", "0001-01-01T00:00:00Z"]
    ),
)
_ATTRIBUTES = st.one_of(
    st.none(),
    _TEXT,
    st.dictionaries(
        st.one_of(_TEXT, st.sampled_from([SOURCE_DELIVERY_COUNT, SOURCE_PUBLISH_TIME])),
        _ATTRIBUTE_VALUES,
        max_size=4,
    ).map(json.dumps),
    st.recursive(
        st.none() | st.booleans() | st.integers() | _TEXT,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_TEXT, inner, max_size=3),
        max_leaves=8,
    ).map(json.dumps),
)
_LETTERS = st.lists(
    st.builds(
        DeadLetter,
        publish_time=st.integers(NOW - 2 * DAY, NOW),
        message_id=st.one_of(st.none(), _TEXT, st.from_regex(r"[0-9]{1,20}", fullmatch=True)),
        subscription_name=st.one_of(st.none(), _TEXT),
        data=st.one_of(st.none(), st.binary(max_size=64), _TEXT.map(str.encode)),
        attributes=_ATTRIBUTES,
    ),
    max_size=6,
)


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(letters=_LETTERS)
def test_nothing_a_dead_letter_holds_breaks_a_page(
    served: tuple[TestClient[Recordline], DeadLetteredStore], letters: list[DeadLetter]
) -> None:
    client, store = served
    store.dead_letters = letters
    views, _ = walk(client, {"since": "3d", "limit": "500"})
    expected = page_of(DeadLetterQuery(since=0, until=NOW + DAY, limit=500), letters)
    assert len(views) == len(expected)
    for view, dead in zip(views, expected, strict=True):
        assert view["message_id"] == dead.message_id
        assert (None if view["data"] is None else base64.b64decode(view["data"])) == dead.data
        if view["text"] is not None:
            assert view["text"].encode() == dead.data
        if view["attributes"] is not None:
            assert json.loads(dead.attributes or "") == view["attributes"]
        else:
            assert view["attributes_text"] == dead.attributes
        # What the view says of a replay is what the replay says: taken (a dry run
        # answers 200), or refused (400) where it says it would be.
        if view["message_id"] is None or view["data"] is None:
            assert view["unreplayable"] is not None
            continue
        if view["attributes"] is None and view["attributes_text"] is not None:
            assert view["unreplayable"] is not None
            continue
        tried = client.post("/v1/replay", json={"messages": [replayed(view)], "dry_run": True})
        assert tried.status_code == (200 if view["unreplayable"] is None else 400), (
            view,
            tried.text,
        )
