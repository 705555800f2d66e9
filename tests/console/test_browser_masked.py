"""The console as a reader who is not an operator sees it: `recordline serve` with a
push token (operators send it) and a mask; the browser sends no token, so every page,
record and export it shows is masked, and it is offered no replay."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import expect

from recordline_dev.processes import free_port, stop_group
from tests.console.browser import envelope, serve

pytestmark = pytest.mark.browser

SECRET = "a-push-secret-long-enough"
HIDDEN = ("alice@example.com", "10.0.0.7")


@pytest.fixture(scope="module")
def service(browser: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("masked")
    port = free_port()
    process = serve(
        folder,
        port,
        RECORDLINE_PUSH_TOKEN=SECRET,
        RECORDLINE_MASK_FIELDS="email",
        RECORDLINE_MASK_ATTRIBUTES="client-ip",
    )
    url = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=url, params={"token": SECRET}) as client:
            for push in (
                envelope(
                    "m-1",
                    {"id": "r-1", "data": {"email": "alice@example.com", "plan": "gold"}},
                    {"client-ip": "10.0.0.7", "region": "eu"},
                ),
                envelope("bad-1", {"data": {"email": "alice@example.com"}}, {}),
            ):
                assert client.post("/pubsub/push", json=push).status_code == 204
        yield url
    finally:
        stop_group(process, timeout=15)


def test_a_reader_sees_masked_values_in_the_page_and_the_export(
    service: str, page: Any, tmp_path: Path
) -> None:
    page.goto(f"{service}/console/records")
    expect(page.locator("header .who")).to_have_text("reader")
    page.locator("#rows tbody tr.row[data-message-id=m-1]").click()
    detail = page.locator("tr.detail")
    expect(detail).to_contain_text('"email": "[masked]"')
    expect(detail).to_contain_text('"plan": "gold"')
    expect(detail).to_contain_text('"client-ip": "[masked]"')
    for value in HIDDEN:
        assert value not in page.content()
    page.fill("input[name=columns]", "id,data.email,attributes.client-ip,attributes.region")
    with page.expect_download() as started:
        page.click("#export button[value=csv]")
    saved = tmp_path / "export.csv"
    started.value.save_as(saved)
    rows = list(csv.reader(io.StringIO(saved.read_text())))
    assert rows == [
        ["id", "data.email", "attributes.client-ip", "attributes.region"],
        ["r-1", "[masked]", "[masked]", "eu"],
    ]
    page.goto(f"{service}/console/rejections")
    page.locator("#reasons tbody tr").first.click()
    expect(page.locator("#rows tbody tr")).to_have_count(1)
    expect(page.locator("#replay")).to_have_count(0)
    expect(page.locator("main")).to_contain_text("Replay is for operators")
    for value in HIDDEN:
        assert value not in page.content()


def test_an_expression_on_a_masked_member_is_refused_beside_the_filters(
    service: str, page: Any
) -> None:
    """A reader may filter by what they see, not by a masked member (what it kept would
    tell its value): the API's 403 is said in the page, the rows shown kept."""
    page.goto(f"{service}/console/records")
    rows = page.locator("#rows tbody tr.row")
    expect(rows).to_have_count(1)
    count, uncounted = page.locator("#count"), page.locator("#count-refused")
    expect(count).to_have_text("1 record matches since 1h")
    box = page.locator("input[name=where]")
    box.fill("data.email = 'alice@example.com'")
    box.press("Enter")
    refused = page.locator("#refused")
    expect(refused).to_contain_text("403: where:")
    expect(box).to_have_attribute("aria-invalid", "true")
    # Nor may it be counted (how many it keeps would tell the value): said beside the
    # count, quietly; the rows stay.
    expect(uncounted).to_contain_text("403: where:")
    expect(uncounted).to_be_visible()
    expect(count).to_have_text("Not counted")
    expect(rows).to_have_count(1)
    assert "where" not in page.url
    # What the reader sees, they may filter by (a payload's text whole; a part of it
    # might be a masked member's, inside it: a 403 too).
    box.fill("data.plan CONTAINS 'go'")
    box.press("Enter")
    expect(refused).to_contain_text("compared by a part")
    box.fill("data.plan = 'gold' AND attributes.region = 'eu'")
    box.press("Enter")
    expect(refused).to_be_hidden()
    expect(uncounted).to_be_hidden()
    expect(count).to_have_text("1 record matches since 1h")
    assert "where=" in page.url
    expect(rows).to_have_count(1)
    box.fill("data.plan = 'silver'")
    box.press("Enter")
    expect(rows).to_have_count(0)
