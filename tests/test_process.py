"""`recordline serve` as a real process: HTTP, SIGTERM under load, restart."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from recordline_dev.processes import free_port
from tests import rawhttp
from tests.conftest import envelope
from tests.waiting import until, until_blocking

RECORDLINE = str(Path(sys.executable).with_name("recordline"))


class Service:
    def __init__(self, store: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "RECORDLINE_LOG_FORMAT": "json"}
        self.process = subprocess.Popen(
            [RECORDLINE, "serve", "--port", str(self.port), "--store", store],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )

        def ready() -> bool:
            if self.process.poll() is not None:
                raise RuntimeError(self.process.stdout.read().decode())  # type: ignore[union-attr]
            try:
                return httpx.get(f"{self.url}/readyz").status_code == 200
            except httpx.TransportError:
                return False

        until_blocking(ready, timeout=60, interval=0.1, what="recordline serve to be ready")

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.assert_stopped_cleanly()

    def assert_stopped_cleanly(self) -> None:
        # uvicorn drains, then re-raises SIGTERM so the exit status says why.
        assert self.process.wait(timeout=30) in (0, -signal.SIGTERM)
        logs = self.process.stdout.read().decode()  # type: ignore[union-attr]
        assert "recordline stopped: accepted rows drained" in logs, logs[-2000:]


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    return f"duckdb://{tmp_path / 'records.duckdb'}"


@pytest.fixture
def service(store_url: str) -> Iterator[Service]:
    svc = Service(store_url)
    yield svc
    if svc.process.poll() is None:
        svc.process.kill()
        svc.process.wait()


def all_records(url: str) -> list[dict[str, object]]:
    records: list[dict[str, object]] = []
    params: dict[str, object] = {"limit": 1000}
    while True:
        page = httpx.get(f"{url}/v1/records", params=params).json()
        records += page["records"]
        if not page["records"]:
            return records
        params = {"limit": 1000, "page_token": page["next_page_token"]}


@pytest.mark.slow
def test_serve_round_trip_over_http(service: Service) -> None:
    data = base64.b64encode(json.dumps({"id": "p1", "data": [1, 2]}).encode()).decode()
    body = {
        "message": {"data": data, "messageId": "pm-1", "publishTime": "2024-04-27T12:00:01Z"},
        "subscription": "projects/demo/subscriptions/records-push",
    }
    assert httpx.post(f"{service.url}/pubsub/push", json=body).status_code == 204
    assert httpx.get(f"{service.url}/v1/records/p1").json()["data"] == [1, 2]
    assert httpx.get(f"{service.url}/docs/openapi.json").status_code == 200
    service.stop()


# Pushes answered 204 before the stop: by then all 64 pushers are under way.
LOAD_BEFORE_STOP = 500


def push_until_stopped(service: Service, stop: Callable[[], None]) -> tuple[set[str], Counter[str]]:
    """64 pushers at full speed; `stop` the service once 500 pushes were acknowledged;
    what was answered 204."""
    acknowledged: set[str] = set()
    answers: Counter[str] = Counter()
    counter = itertools.count()

    async def worker() -> None:
        while service.process.poll() is None:
            message_id = f"t{next(counter):06d}"
            raw = rawhttp.request(
                "/pubsub/push", envelope({"id": message_id}, message_id=message_id)
            )
            try:
                status = await rawhttp.send("127.0.0.1", service.port, raw)
            except (OSError, asyncio.IncompleteReadError) as exc:
                answers[type(exc).__name__] += 1
                # A pause before trying again, not a wait for anything: a
                # stopping service refuses connections until its process ends.
                await asyncio.sleep(0.01)
                continue
            answers[str(status)] += 1
            if status == 204:
                acknowledged.add(message_id)

    async def load() -> None:
        workers = [asyncio.create_task(worker()) for _ in range(64)]
        await until(
            lambda: len(acknowledged) >= LOAD_BEFORE_STOP or service.process.poll() is not None,
            timeout=60,
            what=lambda: f"{LOAD_BEFORE_STOP} pushes acknowledged ({answers})",
        )
        stop()
        await asyncio.wait_for(asyncio.gather(*workers), timeout=30)

    asyncio.run(load())
    assert len(acknowledged) > 100, answers
    return acknowledged, answers


def stored_after_restart(store_url: str) -> set[str]:
    restarted = Service(store_url)
    try:
        return {str(r["message_id"]) for r in all_records(restarted.url)}
    finally:
        restarted.stop()


@pytest.mark.slow
def test_sigterm_under_load_loses_nothing_acknowledged(service: Service, store_url: str) -> None:
    acknowledged, answers = push_until_stopped(
        service, lambda: service.process.send_signal(signal.SIGTERM)
    )
    service.assert_stopped_cleanly()
    lost = acknowledged - stored_after_restart(store_url)
    assert not lost, f"lost {len(lost)}; answers {answers}"


@pytest.mark.slow
def test_sigkill_under_load_loses_nothing_acknowledged(service: Service, store_url: str) -> None:
    """No drain at all: what was answered 204 must come back from the journal."""
    acknowledged, answers = push_until_stopped(service, service.process.kill)
    lost = acknowledged - stored_after_restart(store_url)
    assert not lost, f"lost {len(lost)}; answers {answers}"
