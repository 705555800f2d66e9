"""`recordline serve` as a real process, stopped and paused while the emulator pushes.

The service keeps its port and its DuckDB file, so the subscription keeps
pushing to the same endpoint across a restart, as Cloud Run's does.
"""

from __future__ import annotations

import asyncio
import signal
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import Follower, ServiceProcess, Wiring, payloads, publish_all

pytestmark = pytest.mark.emulator

# Above the service's 8 s write deadline, below the 12 s pause: every push in
# flight when the service freezes outlives its acknowledgement deadline.
ACK_DEADLINE_SECONDS = 10
PAUSE_SECONDS = 12


def ids(prefix: str, count: int) -> set[str]:
    return {f"{prefix}-{n}" for n in range(count)}


async def test_sigterm_and_restart_mid_run_loses_and_repeats_nothing(
    wiring: Wiring, publisher: Any, service_process: ServiceProcess
) -> None:
    service_process.start()
    # No dead-letter policy: the emulator retries a refused connection at once,
    # so the restart would dead-letter what Pub/Sub delivers after it (see wire).
    await wiring.connect(service_process.url, dead_letters=False)
    async with (
        httpx.AsyncClient(base_url=service_process.url, timeout=30) as http,
        Follower(http) as follower,
    ):
        publishing = asyncio.create_task(
            publish_all(publisher, wiring.topic_path, payloads("restart", 1200), rate=150)
        )
        await follower.wait_count(300, timeout=30)
        # uvicorn drains in-flight requests, then re-raises SIGTERM.
        status = await asyncio.to_thread(service_process.terminate)
        assert status in (0, -signal.SIGTERM)
        stopped_at = len(follower.ids)
        await asyncio.to_thread(service_process.start)
        await publishing
        await follower.wait_for(ids("restart", 1200), timeout=90)
        await asyncio.sleep(1)  # a quiet second, for what it tests: no record shows twice
    assert stopped_at < 1200, "the service stopped after the run: nothing was redelivered"
    assert "accepted rows drained" in service_process.log.read_text()
    follower.assert_exactly_once(ids("restart", 1200))


async def test_a_pause_past_the_ack_deadline_loses_and_repeats_nothing(
    wiring: Wiring, publisher: Any, service_process: ServiceProcess
) -> None:
    service_process.start()
    await wiring.connect(
        service_process.url, ack_deadline_seconds=ACK_DEADLINE_SECONDS, dead_letters=False
    )
    async with (
        httpx.AsyncClient(base_url=service_process.url, timeout=30) as http,
        Follower(http) as follower,
    ):
        publishing = asyncio.create_task(
            publish_all(publisher, wiring.topic_path, payloads("pause", 800), rate=100)
        )
        await follower.wait_count(200, timeout=30)
        service_process.signal(signal.SIGSTOP)
        try:
            await asyncio.sleep(PAUSE_SECONDS)  # past the ack deadline: what is tested
            paused_at = len(follower.ids)
        finally:
            service_process.signal(signal.SIGCONT)
        await publishing
        await follower.wait_for(ids("pause", 800), timeout=90)
        await asyncio.sleep(1)  # a quiet second, for what it tests: no record shows twice
    assert paused_at < 800, "the pause came after the run: it tested nothing"
    follower.assert_exactly_once(ids("pause", 800))
