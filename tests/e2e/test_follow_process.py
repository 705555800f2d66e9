"""A SIGTERM ends every waiting page and every stream at once, each telling the
follower where to resume, well within Cloud Run's grace period."""

from __future__ import annotations

import asyncio
import json
import signal
import time

import httpx

from tests.e2e.conftest import PUSH_TOKEN, ServiceProcess
from tests.test_follow import events, push_body, tail_token


async def test_sigterm_ends_every_wait_and_stream_at_once_with_where_to_resume(
    service_process: ServiceProcess,
) -> None:
    service_process.env = {"RECORDLINE_STREAM_SECONDS": "600"}
    service_process.start()
    async with httpx.AsyncClient(base_url=service_process.url, timeout=30) as client:
        await client.post(f"/pubsub/push?token={PUSH_TOKEN}", json=push_body(0))
        token = await tail_token(client)
        waiting = asyncio.create_task(
            client.get("/v1/records", params={"page_token": token, "wait": 60})
        )
        received: list[dict[str, str]] = []

        async def read_stream() -> None:
            async for event in events(client):
                received.append(event)

        streaming = asyncio.create_task(read_stream())
        for _ in range(500):
            if received:
                break
            await asyncio.sleep(0.01)  # until the stream has sent its first page
        assert received
        stopped_at = time.monotonic()
        service_process.signal(signal.SIGTERM)
        page = (await waiting).json()
        await asyncio.wait_for(streaming, timeout=8)
        took = time.monotonic() - stopped_at
    assert page["records"] == []
    assert page["next_page_token"] == token
    assert received[-1]["event"] == "end"
    assert json.loads(received[-1]["data"])["next_page_token"] == received[-1]["id"]
    assert took < 5, f"{took:.1f} s after SIGTERM"
    assert service_process.process is not None
    # uvicorn drains, then re-raises SIGTERM so the exit status says why.
    assert service_process.process.wait(timeout=10) in (0, -signal.SIGTERM)
