"""The console's "Publish a test message" against what could go wrong in the page:
whatever Pub/Sub, the service or a stored record says is shown as text, the poll for
what became of a message ends after its minute (and with a newer publish), and a
reader's page has no form and no error. `recordline serve` with a push token (the
operator's), its topic on tests/fake_publisher.py."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import pytest
from playwright.sync_api import expect

from recordline_dev.processes import free_port, stop_group
from tests.console.browser import envelope, serve
from tests.fake_publisher import FakePublisher, in_thread

pytestmark = pytest.mark.browser

SECRET = "a-push-secret-long-enough"
OPERATOR = {"Authorization": f"Bearer {SECRET}"}
TOPIC = "projects/demo-project/topics/orders"
MARKUP = "<img src=x onerror=\"document.title='run'\">"
# The page's timers a hundred times as fast: its minute of polling in under a second.
FAST_TIMERS = """
const realTimeout = window.setTimeout.bind(window);
window.setTimeout = (f, delay, ...rest) => realTimeout(f, (delay || 0) / 100, ...rest);
"""


@pytest.fixture(scope="module")
def pubsub() -> Iterator[FakePublisher]:
    with in_thread() as fake:
        yield fake


@pytest.fixture(scope="module")
def service(
    browser: Any, pubsub: FakePublisher, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("publish-hostile")
    port = free_port()
    process = serve(
        folder,
        port,
        RECORDLINE_PUSH_TOKEN=SECRET,
        RECORDLINE_TOPIC=TOPIC,
        PUBSUB_EMULATOR_HOST=pubsub.address,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=url, params={"token": SECRET}) as client:
            push = envelope("m-1", {"id": "r-1", "data": {"n": 1}}, {})
            assert client.post("/pubsub/push", json=push).status_code == 204
        yield url
    finally:
        stop_group(process, timeout=15)


@pytest.fixture
def operator_page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(extra_http_headers=OPERATOR)
    opened = context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda error: errors.append(str(error)))
    opened.set_default_timeout(10_000)
    opened.add_init_script(FAST_TIMERS)
    yield opened
    context.close()
    assert not errors, errors


def deliver(url: str, message_id: str, payload: Any) -> None:
    """The push Pub/Sub would make of a published message."""
    with httpx.Client(base_url=url, params={"token": SECRET}) as client:
        answer = client.post("/pubsub/push", json=envelope(message_id, payload, {}))
        assert answer.status_code == 204, answer.text


def opened(page: Any, url: str) -> Any:
    page.goto(f"{url}/console/records")
    publish = page.locator("#publish")
    publish.locator("summary").click()
    return publish


def test_what_pubsub_and_a_stored_record_say_is_shown_as_text(
    service: str, pubsub: FakePublisher, operator_page: Any
) -> None:
    page = operator_page
    said = page.locator("#publish-said")
    opened(page, service)
    for code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.UNAVAILABLE):
        pubsub.failing = (code, MARKUP)
        page.locator("#publish-check").click()
        expect(said).to_contain_text("would store it")
        page.locator("#publish-send").click()
        expect(said).to_contain_text(MARKUP)
        assert said.locator("img").count() == 0
    pubsub.failing = None
    page.locator("#publish-check").click()
    expect(said).to_contain_text("would store it")
    page.locator("#publish-send").click()
    expect(said).to_contain_text("waiting for its push")
    message_id = said.inner_text().split("Published as ", 1)[1].split(" ", 1)[0]
    deliver(service, message_id, {"id": MARKUP, "data": {"note": MARKUP}})
    expect(said).to_contain_text(f"stored as record {MARKUP}", timeout=20_000)
    assert said.locator("img").count() == 0
    assert page.title() != "run"


def test_the_poll_ends_after_its_minute_and_asks_no_more(
    service: str, pubsub: FakePublisher, operator_page: Any
) -> None:
    page = operator_page
    asked: list[str] = []
    page.on("request", lambda r: asked.append(r.url) if "/v1/messages/" in r.url else None)
    said = page.locator("#publish-said")
    opened(page, service)
    page.locator("#publish-check").click()
    expect(said).to_contain_text("would store it")
    page.locator("#publish-send").click()
    expect(said).to_contain_text("not delivered within a minute", timeout=60_000)
    assert len(asked) == 60, len(asked)
    # Two more of the page's minutes (its own timers, sped up as the poll's were).
    page.evaluate("() => new Promise((done) => setTimeout(done, 120000))")
    assert len(asked) == 60, len(asked)


def test_a_newer_publish_is_what_the_page_says_last(
    service: str, pubsub: FakePublisher, operator_page: Any
) -> None:
    """The first message is never delivered; the second is, at once. The page says what
    became of the second, and the first's poll does not write over it."""
    page = operator_page
    said = page.locator("#publish-said")
    opened(page, service)
    page.locator("#publish-check").click()
    expect(said).to_contain_text("would store it")
    page.locator("#publish-send").click()
    expect(said).to_contain_text("waiting for its push")
    first = said.inner_text().split("Published as ", 1)[1].split(" ", 1)[0]
    page.locator("#publish-check").click()
    expect(said).to_contain_text("would store it")
    page.locator("#publish-send").click()
    expect(said).not_to_contain_text(f"Published as {first} ")
    expect(said).to_contain_text("waiting for its push")
    second = said.inner_text().split("Published as ", 1)[1].split(" ", 1)[0]
    assert second != first
    deliver(service, second, {"id": "second", "data": {}})
    expect(said).to_contain_text(f"Published as {second}: stored as record second")
    # The first's poll would have ended by now (its minute, sped up).
    page.evaluate("() => new Promise((done) => setTimeout(done, 120000))")
    expect(said).to_have_text(f"Published as {second}: stored as record second.")


def test_a_readers_page_has_no_form_and_no_error(
    service: str, pubsub: FakePublisher, page: Any
) -> None:
    calls = pubsub.calls
    page.goto(f"{service}/console/records")
    expect(page.locator("header .who")).to_have_text("reader")
    expect(page.locator("#rows tbody tr.row[data-message-id=m-1]")).to_be_visible()
    assert page.locator("#publish").count() == 0
    # Asked from the reader's page all the same: refused, nothing published.
    status = page.evaluate(
        """async () => (await fetch("/v1/publish", {method: "POST",
            headers: {"content-type": "application/json"},
            body: JSON.stringify({data: "e30="})})).status"""
    )
    assert status == 401
    assert pubsub.calls == calls
