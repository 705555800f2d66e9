"""The console's `where` box in a real Chromium against `recordline serve` on DuckDB:
an expression typed there narrows the records (and the rejections) to what the API
keeps for it, is kept in the page's address, offers the operands as it is typed, and
a refused one is said beside the filters, the rows shown kept."""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import httpx
import pytest
from playwright.sync_api import expect

from recordline_dev.processes import free_port, stop_group
from tests.console.browser import envelope, serve

pytestmark = pytest.mark.browser

# Records whose data differ: `n` a number above 2 or not, a string, missing; the
# region `eu`, another, none, or under another key.
RECORDS = [
    ("w-0", {"n": 0}, {"region": "eu", "client-tier": "gold"}),
    ("w-1", {"n": 1}, {"region": "us"}),
    ("w-2", {"n": 2}, {"region": "uk"}),
    ("w-3", {"n": 3}, {"region": "us"}),
    ("w-4", {"n": "4"}, {"region": "us"}),
    ("w-5", {"n": 2.5}, {"region": "eu-west"}),
    ("w-6", {"m": 9, "first name": "Ada"}, {}),
    ("w-7", {"n": 10, "sub": {"x": 1}}, {"region": "eu"}),
    ("w-8", {"n": 1}, {"Region": "eu"}),
]
EXPRESSION = "data.n > 2 OR attributes.region = 'eu'"
# Rejected, their record id missing (two regions), or their payload no object.
REJECTIONS = [
    ("bad-1", {"data": {}}, {"region": "eu"}),
    ("bad-2", {"data": {}}, {"region": "us"}),
    ("bad-3", [1, 2], {"region": "us"}),
]


@pytest.fixture(scope="module")
def service(browser: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`recordline serve` on a DuckDB file, on loopback with no authentication."""
    folder = tmp_path_factory.mktemp("where")
    port = free_port()
    process = serve(folder, port)
    url = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=url) as client:
            for message_id, data, attributes in RECORDS:
                push = envelope(message_id, {"id": message_id, "data": data}, attributes)
                assert client.post("/pubsub/push", json=push).status_code == 204
            for message_id, payload, attributes in REJECTIONS:
                push = envelope(message_id, payload, attributes)
                assert client.post("/pubsub/push", json=push).status_code == 204
        yield url
    finally:
        stop_group(process, timeout=15)


def message_ids(page: Any) -> list[str]:
    return page.eval_on_selector_all(
        "#rows tbody tr.row", "rows => rows.map(r => r.dataset.messageId)"
    )


def offered(page: Any) -> list[str]:
    return page.eval_on_selector_all("#where-operands option", "os => os.map(o => o.value)")


def test_an_expression_narrows_the_records_as_the_api_does(
    service: str, page: Any, tmp_path: Path
) -> None:
    """Typed in the box (OR, a range): the rows are exactly the API's for it, in the
    page's address, the same once reloaded and in an export; a syntax error is said
    with its character, the rows and the address kept."""
    with httpx.Client(base_url=service) as client:
        answer = client.get(
            "/v1/records", params={"where": EXPRESSION, "order": "newest", "limit": 100}
        )
        bad = client.get("/v1/records", params={"where": "data.n > > 2"})
    assert answer.status_code == 200, answer.text
    expected = [record["message_id"] for record in answer.json()["records"]]
    # Each side of the OR keeps a row the other does not; `n` of 2, "4" or none, none.
    assert expected == ["w-7", "w-5", "w-3", "w-0"]
    page.goto(f"{service}/console/records")
    rows = page.locator("#rows tbody tr.row")
    expect(rows).to_have_count(len(RECORDS))
    box = page.locator("input[name=where]")
    # The operands offered: the list's own, then the keys the rows shown have (a name
    # that is no plain word in ["…"]), each completing the word typed where an operand
    # may stand, and none where a value is to come.
    assert offered(page)[:8] == [
        "data.",
        "attributes.",
        "producer",
        "id",
        "message_id",
        "publish_time",
        "ingest_time",
        "timestamp",
    ]
    assert 'data["first name"]' in offered(page)
    box.press_sequentially("data.n > ")
    assert offered(page) == []
    box.press_sequentially("2 OR attr")
    assert offered(page) == [
        "data.n > 2 OR attributes.",
        "data.n > 2 OR attributes.Region",
        "data.n > 2 OR attributes.region",
        'data.n > 2 OR attributes["client-tier"]',
    ]
    box.press_sequentially("ibutes.region = 'eu'")
    box.press("Enter")
    expect(rows).to_have_count(len(expected))
    assert message_ids(page) == expected
    assert parse_qs(urlsplit(page.url).query) == {"where": [EXPRESSION]}
    # The address, reloaded (or shared), is the same view.
    page.reload()
    expect(box).to_have_value(EXPRESSION)
    expect(rows).to_have_count(len(expected))
    assert message_ids(page) == expected
    # An export takes what the view's filters keep (oldest first).
    with page.expect_download() as started:
        page.click("#export button[value=jsonl]")
    saved = tmp_path / "export.jsonl"
    started.value.save_as(saved)
    exported = [json.loads(line)["message_id"] for line in saved.read_text().splitlines()]
    assert exported == expected[::-1]
    # Refused: said beside the filters as the API says it, at its character; the rows,
    # the address and the text typed stay.
    assert bad.status_code == 400
    detail = bad.json()["detail"]
    assert "character 10" in detail, detail
    box.fill("data.n > > 2")
    box.press("Enter")
    refused = page.locator("#refused")
    expect(refused).to_have_text(f"400: {detail}")
    expect(refused).to_have_attribute("role", "alert")
    expect(box).to_have_attribute("aria-invalid", "true")
    assert message_ids(page) == expected
    assert parse_qs(urlsplit(page.url).query) == {"where": [EXPRESSION]}
    expect(box).to_have_value("data.n > > 2")
    # Put right, the refusal goes.
    box.fill("data.n >= 3")
    box.press("Enter")
    expect(refused).to_be_hidden()
    expect(box).not_to_have_attribute("aria-invalid", "true")
    expect(rows).to_have_count(2)
    assert message_ids(page) == ["w-7", "w-3"]


def test_the_fields_box_shows_what_select_keeps_of_each_row(service: str, page: Any) -> None:
    """Typed in `fields`: each row's payload is what the API's `select` keeps of it (a
    row without the path shows none), its time, id and message id still shown; kept in
    the address and the same once reloaded; the count unchanged by it; a name no row
    has is said beside the filters, the rows kept."""
    chosen = "data.n"
    with httpx.Client(base_url=service) as client:
        answer = client.get(
            "/v1/records",
            params={"select": f"{chosen},ingest_time,id,message_id", "order": "newest"},
        )
        bad = client.get("/v1/records", params={"select": "id,nope"})
    assert answer.status_code == 200, answer.text
    projected = answer.json()["records"]
    payloads = [
        json.dumps(record["data"], separators=(",", ":")) if "data" in record else "—"
        for record in projected
    ]
    # Rows with `n` show it alone; the row without it shows no payload.
    assert payloads[:3] == ['{"n":1}', '{"n":10}', "—"]
    page.goto(f"{service}/console/records")
    rows = page.locator("#rows tbody tr.row")
    expect(rows).to_have_count(len(RECORDS))
    count = page.locator("#count")
    expect(count).to_contain_text(str(len(RECORDS)))
    box = page.locator("input[name=select]")
    box.fill(chosen)
    box.press("Enter")
    cells = page.locator("#rows tbody tr.row td.payload")
    # The address is written as the rows are replaced (one step of the page's script).
    expect(page).to_have_url(re.compile(r"\?select=data\.n$"))
    assert cells.all_inner_texts() == payloads
    assert message_ids(page) == [record["message_id"] for record in projected]
    assert parse_qs(urlsplit(page.url).query) == {"select": [chosen]}
    expect(count).to_contain_text(str(len(RECORDS)))
    expect(page.locator("#count-refused")).to_be_hidden()
    page.reload()
    expect(box).to_have_value(chosen)
    expect(cells.first).to_have_text(payloads[0])
    assert cells.all_inner_texts() == payloads
    # Refused: said beside the filters as the API says it; the rows stay.
    assert bad.status_code == 400
    box.fill("id,nope")
    box.press("Enter")
    expect(page.locator("#refused")).to_have_text(f"400: {bad.json()['detail']}")
    expect(box).to_have_attribute("aria-invalid", "true")
    assert cells.all_inner_texts() == payloads


def test_an_expression_narrows_the_rejections_as_the_api_does(service: str, page: Any) -> None:
    """Opened from an address naming an expression: the reasons counted are the API's
    for it; an operand rejections have not is said, the view kept."""
    expression = "attributes.region = 'us' AND reason CONTAINS 'id'"
    with httpx.Client(base_url=service) as client:
        every = client.get("/v1/rejections").json()["rejections"]
        kept = client.get("/v1/rejections", params={"where": expression}).json()["rejections"]
    assert len(every) == len(REJECTIONS)
    assert [r["message_id"] for r in kept] == ["bad-2"]
    page.goto(f"{service}/console/rejections?where={quote(expression)}")
    expect(page.locator("input[name=where]")).to_have_value(expression)
    reasons = page.locator("#reasons tbody tr.row")
    expect(reasons).to_have_count(1)
    counted = {
        cells[0]: int(cells[1]) for cells in (r.inner_text().split("\t") for r in reasons.all())
    }
    assert counted == Counter(r["reason"] for r in kept)
    # Emptied, the box offers the operands rejections have, and the keys seen.
    page.fill("input[name=where]", "")
    assert offered(page) == [
        "reason",
        "attributes.",
        "producer",
        "message_id",
        "publish_time",
        "ingest_time",
        "attributes.region",
    ]
    page.fill("input[name=where]", "id = 'bad-1'")
    page.click("#filters button[type=submit]")
    expect(page.locator("#refused")).to_contain_text("400: where: /v1/rejections has no id")
    expect(reasons).to_have_count(1)
    assert parse_qs(urlsplit(page.url).query) == {"since": ["24h"], "where": [expression]}
