"""What `recordline publish` says of a run: what Pub/Sub acknowledged, what the service
stored and rejected (its ledger of the run's producer sequences), and the messages it
took for later copies of ones stored before under the same ids."""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import itertools
from typing import Any

import httpx

from app.asgi import create_app
from app.ingest.publisher import SequencedPublisher
from recordline_dev.client import PublishRun, publish
from recordline_dev.progress import Ledger
from tests.conftest import envelope, served, settings


class FreshEmulator:
    """Pub/Sub as an emulator started again: message ids from 1, each pushed at once."""

    def __init__(self, url: str) -> None:
        self.http = httpx.Client(base_url=url, timeout=30)
        self.ids = itertools.count(1)

    def publish(self, topic: str, data: bytes, **attributes: str) -> concurrent.futures.Future[str]:
        message_id = str(next(self.ids))
        body = {
            "message": {
                "data": base64.b64encode(data).decode(),
                "messageId": message_id,
                "publishTime": "2024-04-27T12:00:01Z",
                "attributes": attributes,
            },
            "subscription": "projects/recordline-dev/subscriptions/records-push",
        }
        future: concurrent.futures.Future[str] = concurrent.futures.Future()
        answer = self.http.post("/pubsub/push", json=body)
        if answer.status_code == 204:
            future.set_result(message_id)
        else:
            future.set_exception(RuntimeError(answer.text))
        return future


async def test_publish_says_what_the_service_stored_and_what_it_took_for_earlier_messages() -> None:
    # "published 2 of 2", and nothing else: the new message 1 was a later copy of the old
    # one, acknowledged and dropped, and /v1/records/new0 was a 404.
    async with served(create_app(settings())) as http:
        url = str(http.base_url).rstrip("/")
        stored = await http.post("/pubsub/push", json=envelope({"id": "old"}, message_id="1"))
        assert stored.status_code == 204
        client = SequencedPublisher(FreshEmulator(url), "P", epoch=5)
        run = PublishRun(
            topic="projects/recordline-dev/topics/records",
            total=2,
            sequenced=client,
            ledger=Ledger(url, "P", 5),
            wait=5,
        )

        def published() -> Any:
            payloads = [b'{"id": "new0"}', b'{"id": "new1"}']
            publish(client, [run.topic], payloads, keep_ids=True, result=run.result)
            run.wait_for_the_service()

        await asyncio.to_thread(published)
        said = run.summary()
        assert (await http.get("/v1/records/new0")).status_code == 404
    assert said.startswith("published 2 of 2 messages to projects/recordline-dev/topics/records")
    assert "the service stored" in said
    assert "1 of 2 message ids looked up were taken for later copies" in said
    assert f"curl {url}/v1/messages/1" in said
