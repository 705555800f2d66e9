"""Publishing a test message from the console: `recordline serve` on DuckDB, its topic
and push subscription on the Pub/Sub emulator. The operator writes a payload, checks it
against today's validation, publishes it, and is shown what became of it once its push
was answered; the service has it stored under the id Pub/Sub gave it, its markup kept
as text."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from playwright.sync_api import expect

from recordline_dev.devstack import Emulator, PubSubAdmin, wire
from tests.console.browser import served
from tests.e2e.conftest import emulator  # noqa: F401 - the session's emulator

pytestmark = [pytest.mark.browser, pytest.mark.emulator]

MARKUP = "<img src=x onerror=\"document.title='run'\">"


@pytest.fixture
def wired(
    emulator: Emulator,  # noqa: F811 - the fixture imported above
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[str]:
    """A service whose topic is a fresh one on the emulator, pushing to it: its URL."""
    admin = PubSubAdmin(emulator.host)
    topic = f"console-{uuid.uuid4().hex[:12]}"
    folder = tmp_path_factory.mktemp("publish")
    with served(
        folder,
        0,
        RECORDLINE_TOPIC=admin.topic_path(topic),
        PUBSUB_EMULATOR_HOST=emulator.host,
    ) as url:

        async def connect() -> None:
            async with PubSubAdmin(emulator.host) as opened:
                await wire(opened, topic=topic, service_url=url, push_token=None)

        async def disconnect() -> None:
            async with PubSubAdmin(emulator.host) as opened:
                await opened.delete_subscription(f"{topic}-push")
                await opened.delete_subscription(f"{topic}-dead-letter-kept")
                await opened.delete_topic(topic)
                await opened.delete_topic(f"{topic}-dead-letter")

        # In a thread of its own: Playwright's loop runs in this one.
        with ThreadPoolExecutor(1) as thread:
            thread.submit(asyncio.run, connect()).result()
            try:
                yield url
            finally:
                thread.submit(asyncio.run, disconnect()).result()


def test_a_test_message_is_checked_published_and_shown_stored(wired: str, page: Any) -> None:
    page.goto(f"{wired}/console/records")
    publish = page.locator("#publish")
    publish.locator("summary").click()
    publish.locator("[name=data]").fill(json.dumps({"id": "t-1", "data": {"note": MARKUP}}))
    publish.locator("[name=attributes]").fill('{"region": "eu"}')
    publish.locator("[name=note]").fill("after the deploy")
    said = page.locator("#publish-said")
    page.locator("#publish-check").click()
    expect(said).to_contain_text("today's validation would store it")
    page.locator("#publish-send").click()
    expect(said).to_contain_text("stored as record t-1", timeout=30_000)
    message_id = said.inner_text().split("Published as ", 1)[1].split(":", 1)[0]
    found = httpx.get(f"{wired}/v1/messages/{message_id}").json()
    assert found["status"] == "stored"
    assert found["record"]["attributes"] == {"region": "eu"}
    assert found["record"]["data"] == {"note": MARKUP}
    assert page.title() != "run"
    # Not valid JSON: checked, said, and nothing sent unless published anyway.
    publish.locator("[name=data]").fill("not json")
    page.locator("#publish-check").click()
    expect(said).to_contain_text("would reject it")
