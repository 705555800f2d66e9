"""The console's Dead letters page: `recordline serve` on BigQuery (the stand-in, in a
process of its own, whose `dead_letters` the dead letters are appended to as Pub/Sub's
subscription appends them), opened by an operator. Every dead letter is listed, what it
holds shown as text (markup, bytes that are no UTF-8, attributes that are no JSON, NULL
columns, a payload of 300 KB); one that cannot be replayed as it stands cannot be
selected; those selected are replayed with a note under their own message ids, each
outcome shown (stored, rejected again with why, already stored) and the note kept in
the access record; 500 selected go in requests of 100, each once, and a redrive an
outage stops part way shows what it replayed before and why it stopped. The view is
fuzzed with Hypothesis too: whatever a row holds, the
page shows it as text, and no script of it runs."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from playwright.sync_api import expect

from app.query.dead_letters import DeadLettersPage, view
from app.store.dead_letters import (
    SOURCE_DELIVERY_COUNT,
    SOURCE_PROJECT,
    SOURCE_PUBLISH_TIME,
    SOURCE_SUBSCRIPTION,
    DeadLetter,
)
from recordline_dev.serving import BigQueryStandIn
from tests.bigquery.conftest import DATASET, PROJECT
from tests.bigquery.dead_letters import append, row_of
from tests.console.browser import served, shot
from tests.fuzz.budget import EXAMPLES
from tests.waiting import until_blocking

pytestmark = pytest.mark.browser

NOW = time.time_ns() // 1000
TABLE = f"projects/{PROJECT}/datasets/{DATASET}/tables/dead_letters"
SOURCE = {
    SOURCE_SUBSCRIPTION: "orders-push",
    SOURCE_PROJECT: "shop-prod",
    SOURCE_DELIVERY_COUNT: "32",
    SOURCE_PUBLISH_TIME: "2026-01-02T03:04:05Z",
}
MARKUP = '<img src=x onerror="document.title=1">'
NOTE = "the store was down from 02:00 to 07:00; fixed"


def letter(message_id: str | None, payload: bytes | None, ago: int, **columns: Any) -> DeadLetter:
    return DeadLetter(
        publish_time=NOW - ago * 1_000_000,
        message_id=message_id,
        subscription_name="projects/shop-prod/subscriptions/orders-dead-letters-bigquery",
        data=payload,
        **{"attributes": json.dumps(SOURCE), **columns},
    )


def record(n: str) -> bytes:
    return json.dumps({"id": f"dead-{n}", "data": {"n": n}}).encode()


# What the table holds, newest first: each kind of dead letter the page must show.
LETTERS = [
    letter("dl-ok", record("ok"), 1),
    letter("dl-invalid", b'{"data": "no id"}', 2),
    letter("m-1", json.dumps({"id": "r-1", "data": {"n": 1}}).encode(), 3),
    letter("dl-bytes", b"\xff\xfe\x00 not utf-8", 4),
    letter("dl-no-json", record("x"), 5, attributes="not json {"),
    letter(f"dl-{MARKUP}", MARKUP.encode(), 6, attributes=json.dumps({MARKUP: MARKUP})),
    DeadLetter(publish_time=NOW - 7_000_000),
    letter("dl-large", record("y" * 300_000), 8),
]


@pytest.fixture(scope="module")
def service(browser: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("dead-letters")
    with BigQueryStandIn(PROJECT, DATASET, log_path=folder / "bigquery.log") as fakes:
        # In a thread of its own: Playwright's loop runs in this one.
        with ThreadPoolExecutor(1) as thread:
            rows = [row_of(x) for x in LETTERS]
            thread.submit(asyncio.run, append(fakes.write, TABLE, rows)).result()
        with served(
            folder,
            3,
            store=fakes.url,
            RECORDLINE_BIGQUERY_WRITE_ENDPOINT=fakes.write,
            BIGQUERY_EMULATOR_HOST=fakes.jobs,
        ) as url:
            yield url


def row_of_id(page: Any, message_id: str) -> Any:
    return page.locator("#letters tbody tr.row").filter(
        has=page.get_by_role("cell", name=message_id, exact=True)
    )


def test_dead_letters_are_listed_as_text_and_redriven_with_a_note(page: Any, service: str) -> None:
    page.goto(f"{service}/console/dead-letters")
    expect(page.locator("#letters")).not_to_have_attribute("aria-busy", "true")
    rows = page.locator("#letters tbody tr.row")
    expect(rows).to_have_count(len(LETTERS))
    expect(page.locator("header nav a[aria-current]")).to_have_text("Dead letters")
    # Shown as text: the markup of an id, a payload and an attribute is read, never run.
    expect(row_of_id(page, f"dl-{MARKUP}")).to_have_count(1)
    expect(page.locator("#letters tbody img")).to_have_count(0)
    assert page.title() != "1"
    # What Pub/Sub added, beside.
    ok = row_of_id(page, "dl-ok")
    expect(ok.locator("td").nth(3)).to_have_text("projects/shop-prod/subscriptions/orders-push")
    expect(ok.locator("td").nth(4)).to_have_text("32")
    expect(row_of_id(page, "dl-bytes").locator("td.payload")).to_have_text(
        "base64: " + base64.b64encode(b"\xff\xfe\x00 not utf-8").decode()
    )
    # Attributes that are no JSON, and a row of NULLs: listed, not selectable, saying why.
    no_json = row_of_id(page, "dl-no-json")
    expect(no_json.locator("input.pick")).to_be_disabled()
    expect(no_json.locator("td.state")).to_contain_text("cannot be replayed")
    nulls = page.locator("#letters tbody tr.row").nth(6)
    expect(nulls.locator("input.pick")).to_be_disabled()
    expect(nulls.locator("td.state")).to_contain_text("no message id")
    # Opened, a row shows everything; the large payload cut for the page.
    no_json.click()
    expect(page.locator("tr.detail .letter-attributes")).to_have_text(
        "not a JSON object of strings: not json {"
    )
    no_json.click()
    large = row_of_id(page, "dl-large")
    large.click()
    expect(page.locator("tr.detail .letter-data")).to_contain_text("characters more")
    large.click()
    page.evaluate("window.scrollTo(0, 0)")
    shot(page, "dead-letters")

    # Selected, replayed once a note says why: each outcome shown.
    for message_id in ("dl-ok", "dl-invalid", "m-1", "dl-bytes"):
        row_of_id(page, message_id).locator("input.pick").check()
    expect(page.locator("#chosen")).to_have_text("4 selected")
    expect(page.locator("#replay")).to_be_disabled()
    page.locator("#note").fill(NOTE)
    expect(page.locator("#replay")).to_be_enabled()
    page.locator("#replay").click()
    outcomes = page.locator("#outcomes tbody tr")
    expect(outcomes).to_have_count(4)
    found = {
        outcomes.nth(i).locator("td").nth(0).inner_text(): (
            outcomes.nth(i).get_attribute("data-outcome"),
            outcomes.nth(i).locator("td").nth(2).inner_text(),
        )
        for i in range(4)
    }
    assert found["dl-ok"] == ("stored", "")
    assert found["m-1"] == ("already_stored", "")
    assert found["dl-invalid"][0] == "rejected"
    assert "id" in found["dl-invalid"][1]
    assert found["dl-bytes"][0] == "rejected"
    expect(page.locator("#outcomes tbody")).to_contain_text("rejected again")
    # Read again: the one stored is stored since; the access record keeps the note.
    expect(row_of_id(page, "dl-ok").locator("td.state")).to_have_text("stored since")
    assert httpx.get(f"{service}/v1/messages/dl-ok").json()["status"] == "stored"

    def noted() -> list[Any]:
        lines = httpx.get(f"{service}/v1/access", params={"action": "replay"}).json()["lines"]
        return [x["line"] for x in lines if x["line"].get("note") == NOTE]

    (line,) = until_blocking(noted, timeout=20, what="the replay's line in the access record")
    assert sorted(line["messages"]) == sorted(
        [["dl-ok", "stored"], ["dl-invalid", "rejected"], ["m-1", "already_stored"],
         ["dl-bytes", "rejected"]]
    )  # fmt: skip


# -- the view, fuzzed --------------------------------------------------------------

_TEXT = st.text(st.characters(codec="utf-8"), max_size=30) | st.sampled_from(
    [MARKUP, "<script>document.title=2</script>", "&amp;", "\u202e", "\x00"]
)
_ATTRIBUTES = st.one_of(
    st.none(),
    _TEXT,
    st.dictionaries(_TEXT | st.sampled_from(list(SOURCE)), _TEXT, max_size=3).map(json.dumps),
    st.lists(st.integers(), max_size=2).map(json.dumps),
)
_LETTERS = st.lists(
    st.builds(
        DeadLetter,
        publish_time=st.integers(0, NOW),
        message_id=st.none() | _TEXT,
        subscription_name=st.none() | _TEXT,
        data=st.none() | st.binary(max_size=40) | _TEXT.map(str.encode),
        attributes=_ATTRIBUTES,
    ),
    max_size=5,
)


@settings(
    max_examples=min(EXAMPLES, 15),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(letters=_LETTERS, stored=st.booleans())
def test_nothing_a_dead_letter_holds_breaks_the_page(
    page: Any, service: str, letters: list[DeadLetter], stored: bool
) -> None:
    # The API's own views of the rows drawn, answered to the page in its place.
    views = [view(x, stored=stored) for x in letters]
    answer = msgspec.json.encode(DeadLettersPage(dead_letters=views, next_page_token=None))
    page.unroute("**/v1/dead-letters**")
    page.route(
        "**/v1/dead-letters**",
        lambda route: route.fulfill(status=200, content_type="application/json", body=answer),
    )
    page.goto(f"{service}/console/dead-letters")
    expect(page.locator("#letters")).not_to_have_attribute("aria-busy", "true")
    rows = page.locator("#letters tbody tr.row")
    expect(rows).to_have_count(len(views))
    for i, shown in enumerate(views):
        cells = rows.nth(i).locator("td")
        assert cells.nth(1).inner_text() == shown.publish_time
        expected_id = "—" if shown.message_id is None else shown.message_id
        assert cells.nth(2).text_content() == expected_id
        pick = rows.nth(i).locator("input.pick")
        assert pick.is_disabled() == (shown.unreplayable is not None)
        rows.nth(i).click()
    expect(page.locator("tr.detail")).to_have_count(len(views))
    expect(page.locator("#letters tbody img, #letters tbody script")).to_have_count(0)
    assert page.title().endswith("dead-letters")


# -- a bulk redrive ------------------------------------------------------------------


def _bulk(page: Any, service: str, answer_replay: Any) -> tuple[list[list[str]], list[str]]:
    """The page over 500 dead letters (the API's views of them, answered in its place),
    each selected and replayed with a note; `answer_replay(n, messages)` answers the
    n-th replay request. The message ids of each request, and every list read's query."""
    letters = [letter(f"bulk-{n:03d}", record(f"b{n}"), 10 + n) for n in range(500)]
    listing = msgspec.json.encode(
        DeadLettersPage(dead_letters=[view(x, stored=False) for x in letters], next_page_token=None)
    )
    sent: list[list[str]] = []
    reads: list[str] = []

    def dead_letters(route: Any) -> None:
        reads.append(route.request.url)
        route.fulfill(status=200, content_type="application/json", body=listing)

    def replay(route: Any) -> None:
        messages = json.loads(route.request.post_data)["messages"]
        sent.append([m["message_id"] for m in messages])
        status, body = answer_replay(len(sent), messages)
        route.fulfill(status=status, content_type="application/json", body=json.dumps(body))

    page.route("**/v1/dead-letters**", dead_letters)
    page.route("**/v1/replay", replay)
    page.goto(f"{service}/console/dead-letters")
    expect(page.locator("#letters")).not_to_have_attribute("aria-busy", "true")
    expect(page.locator("#letters tbody tr.row")).to_have_count(500)
    page.locator("#all").check()
    expect(page.locator("#chosen")).to_have_text("500 selected")
    page.locator("#note").fill(NOTE)
    page.locator("#replay").click()
    return sent, reads


def _stored(messages: list[dict[str, Any]]) -> list[dict[str, str]]:
    return [{"message_id": m["message_id"], "outcome": "stored"} for m in messages]


def test_500_selected_are_replayed_in_requests_of_100_each_once(page: Any, service: str) -> None:
    sent, _ = _bulk(page, service, lambda n, m: (200, {"results": _stored(m), "dry_run": False}))
    expect(page.locator("#outcomes tbody tr")).to_have_count(500)
    expect(page.locator("#status")).to_have_text("Replayed 500: 500 stored.")
    assert [len(x) for x in sent] == [100] * 5
    assert sorted(i for x in sent for i in x) == [f"bulk-{n:03d}" for n in range(500)]


def test_a_redrive_refused_part_way_shows_what_was_replayed_before(page: Any, service: str) -> None:
    # The third request meets an outage: the 200 replayed before it are shown as they
    # went, the status says how far it got and why it stopped, and the list is read
    # again (what was stored says so); nothing more is sent.
    unavailable = {"status": 503, "title": "Store unavailable", "detail": "store down"}

    def answer(n: int, messages: list[dict[str, Any]]) -> tuple[int, Any]:
        return (503, unavailable) if n == 3 else (200, {"results": _stored(messages)})

    sent, reads = _bulk(page, service, answer)
    expect(page.locator("#outcomes tbody tr")).to_have_count(200)
    expect(page.locator("#status")).to_contain_text("Replayed 200 of 500: 200 stored")
    expect(page.locator("#status")).to_contain_text("503: store down")
    expect(page.locator("#letters")).not_to_have_attribute("aria-busy", "true")
    assert len(reads) == 2
    assert [len(x) for x in sent] == [100, 100, 100]
