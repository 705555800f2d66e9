"""A SIGTERM (or a Ctrl-C) ends every waiting page and every stream at once, each
telling the follower where to resume, well within Cloud Run's grace period."""

from __future__ import annotations

import asyncio
import json
import signal
import time

import httpx
import pytest

from tests.e2e.conftest import PUSH_TOKEN, ServiceProcess
from tests.test_follow import events, push_body, tail_token
from tests.waiting import until


@pytest.mark.slow
@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
async def test_a_stop_ends_every_wait_and_stream_at_once_with_where_to_resume(
    service_process: ServiceProcess, stop: signal.Signals
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
        await until(lambda: received, what="the stream's first page")
        stopped_at = time.monotonic()
        service_process.signal(stop)
        page = (await waiting).json()
        await asyncio.wait_for(streaming, timeout=8)
        took = time.monotonic() - stopped_at
    assert page["records"] == []
    assert page["next_page_token"] == token
    assert received[-1]["event"] == "end"
    assert json.loads(received[-1]["data"])["next_page_token"] == received[-1]["id"]
    assert took < 5, f"{took:.1f} s after {stop.name}"
    assert service_process.process is not None
    # uvicorn drains, then re-raises the signal so the exit status says why (a
    # Ctrl-C is 130, as a shell says it).
    assert service_process.process.wait(timeout=10) in (0, -stop, 128 + stop)
    assert "Traceback" not in service_process.log.read_text()
