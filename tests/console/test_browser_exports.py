"""The console where exporting is a permission of its own (RECORDLINE_EXPORT_PRINCIPALS):
`recordline serve` checking Google ID tokens (a fake Google's keys), the browser sending
a reader's token or an exporter's. The reader reads and is offered no export, and an
export its page asks for anyway is refused; the exporter downloads one. A chart with
nothing to draw says so."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.auth.fake_google import READ_AUDIENCE, FakeGoogle
from tests.console.browser import served

pytestmark = pytest.mark.browser

READER = "analyst@example.org"
EXPORTER = "exporter@example.org"


@pytest.fixture(scope="module")
def google() -> Iterator[FakeGoogle]:
    fake = FakeGoogle().start()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def service(
    browser: Any, google: FakeGoogle, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("exports")
    with served(
        folder,
        2,
        RECORDLINE_READ_AUDIENCE=READ_AUDIENCE,
        RECORDLINE_READ_PRINCIPALS=READER,
        RECORDLINE_EXPORT_PRINCIPALS=EXPORTER,
        RECORDLINE_OIDC_CERTS_URL=google.certs_url,
    ) as url:
        yield url


@pytest.fixture
def as_who(browser: Any, google: FakeGoogle) -> Iterator[Any]:
    """A page of a browser context sending `who`'s token with every request; the test
    fails on any uncaught error in the page's script (as `page` does)."""
    contexts, errors = [], []

    def opened(who: str) -> Any:
        token = google.mint(aud=READ_AUDIENCE, email=who)
        context = browser.new_context(
            accept_downloads=True, extra_http_headers={"Authorization": f"Bearer {token}"}
        )
        contexts.append(context)
        page = context.new_page()
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.set_default_timeout(10_000)
        return page

    yield opened
    for context in contexts:
        context.close()
    assert not errors, errors


def test_a_reader_reads_and_is_offered_no_export(service: str, as_who: Any) -> None:
    page = as_who(READER)
    page.goto(f"{service}/console/records")
    expect(page.locator("#rows tbody tr.row")).to_have_count(2)
    expect(page.locator("#export")).to_have_count(0)
    expect(page.locator("button", has_text="Export")).to_have_count(0)
    expect(page.locator("main")).to_contain_text("Exporting is for exporters")
    # And the export itself, asked for from the page, is refused.
    refused = page.evaluate(
        "fetch('../v1/export/records').then(async r => [r.status, (await r.json()).type])"
    )
    assert refused == [403, "/problems/export-forbidden"]


def test_an_exporter_downloads_an_export(service: str, as_who: Any, tmp_path: Path) -> None:
    page = as_who(EXPORTER)
    page.goto(f"{service}/console/records")
    expect(page.locator("#rows tbody tr.row")).to_have_count(2)
    page.fill("input[name=columns]", "id,message_id")
    with page.expect_download() as started:
        page.click("#export button[value=csv]")
    saved = tmp_path / "export.csv"
    started.value.save_as(saved)
    rows = list(csv.reader(io.StringIO(saved.read_text())))
    assert rows == [["id", "message_id"], ["r-0", "m-0"], ["r-1", "m-1"]]


def test_a_chart_with_nothing_to_draw_says_so(service: str, as_who: Any) -> None:
    """No message here has a producer sequence: the producers' chart says it has nothing
    to draw. The health charts say so until their first point (two scrapes of /metrics:
    the second held here), and no more once they have one."""
    page = as_who(READER)
    page.goto(f"{service}/console/producers")
    expect(page.locator("#chart canvas")).to_have_count(1)
    expect(page.locator("#chart .empty")).to_have_text(
        "no data yet: no message with a producer sequence in the last 24 hours"
    )
    scrapes: list[Any] = []
    page.route("**/metrics", lambda route: scrapes.append(route))
    page.goto(f"{service}/console/health")
    expect(page.locator("#ready")).to_have_text("ready")
    expect(page.locator("figure .empty")).to_have_count(5)
    expect(page.locator("figure .empty").first).to_have_text("no value yet")
    expect(page.locator("figure canvas")).to_have_count(0)
    assert len(scrapes) == 1
    scrapes[0].continue_()
    page.unroute("**/metrics")
    expect(page.locator("#pushes canvas")).to_have_count(1)
    expect(page.locator("#pushes").locator("xpath=..").locator(".empty")).to_have_count(0)
