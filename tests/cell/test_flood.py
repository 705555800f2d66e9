"""One system of a cell flooded at ten times its cap: its pushes past its share are
refused at once (503, Retry-After) and nothing of it reaches the others' stores, while
the other systems' pushes keep their latency (p99 within twice what it is unloaded)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import random
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from app.cell.app import create_cell
from app.cli import quiet_garbage_collector
from app.settings import Settings
from app.store.duckdb.store import DuckDBStore
from tests.conftest import envelope, served
from tests.fakes import FaultyStore
from tests.waiting import until

# Alpha's queue: this many bytes of pushes (its share, set in its entry).
CAP_BYTES = 64 * 1024
# A push of about this many bytes of data: its row's size in the queue.
DATA = "x" * 16 * 1024
# The quiet systems' pushes, one at a time, this far apart, SAMPLES a phase; phases
# without the flood's traffic and with it alternate, so that what else runs on the
# machine meanwhile falls on both alike.
SAMPLES = 40
PACE_SECONDS = 0.02
PHASES = 6
QUEUE_FULL = "/problems/queue-full"


@contextlib.contextmanager
def collector_as_served() -> Iterator[None]:
    """The garbage collector as `recordline serve` keeps it (what exists frozen, the
    first generation larger), then as it was: a full collection of everything the
    test process holds would stall a server for a tenth of a second now and then."""
    thresholds = gc.get_threshold()
    quiet_garbage_collector()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)


def p99(seconds: list[float]) -> float:
    ordered = sorted(seconds)
    return ordered[int(len(ordered) * 0.99) - 1]


async def latencies(client: httpx.AsyncClient, system: str, label: str) -> list[float]:
    """The answer times of SAMPLES pushes, one every PACE_SECONDS (a system's steady
    traffic), each answered 204."""
    took = []
    for n in range(SAMPLES):
        body = envelope({"id": f"{label}-{n}", "data": "quiet"}, message_id=f"{label}-{n}")
        started = time.perf_counter()
        answer = await client.post(f"/systems/{system}/pubsub/push", json=body)
        took.append(time.perf_counter() - started)
        assert answer.status_code == 204, answer.text
        await asyncio.sleep(PACE_SECONDS)  # the pace of the quiet system's own traffic
    return took


async def both(client: httpx.AsyncClient, label: str) -> dict[str, list[float]]:
    """Beta's and gamma's answer times, side by side."""
    beta, gamma = await asyncio.gather(
        latencies(client, "beta", f"beta-{label}"), latencies(client, "gamma", f"gamma-{label}")
    )
    return {"beta": beta, "gamma": gamma}


class Flood:
    """Ten times alpha's cap in pushes, each delivered again while refused, as Pub/Sub
    does, after a backoff of its own (0.5 to 1.5 s here; a subscription's retry policy
    waits 10 s at least), while `on` is set."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client
        # Encoded once: the flood's cost is the server's to bear, not this client's.
        self.bodies = [
            json.dumps(envelope({"id": f"f-{n}", "data": DATA}, message_id=f"flood-{n}")).encode()
            for n in range(10 * CAP_BYTES // len(DATA))
        ]
        self.answers: list[int] = []
        # Why each 503 was answered (its problem type).
        self.refusals: list[str] = []
        self.on = asyncio.Event()
        self.on.set()
        self.stop = asyncio.Event()
        self._jitter = random.Random(7)

    async def _backoff(self) -> None:
        """A redelivery's backoff; then, while the flood is held, until it is not (and
        a moment more, each its own: not every message at once)."""
        for pause in (0.5 + self._jitter.random(), self._jitter.random()):
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(pause):
                    await self.stop.wait()  # the backoff, or the flood's end
            if self.on.is_set() or self.stop.is_set():
                return
            await self.on.wait()

    async def deliver(self, body: bytes) -> None:
        headers = {"content-type": "application/json"}
        while not self.stop.is_set():
            path = "/systems/alpha/pubsub/push"
            answer = await self.client.post(path, content=body, headers=headers)
            self.answers.append(answer.status_code)
            if answer.status_code != 503:
                return
            self.refusals.append(answer.json()["type"])
            await self._backoff()

    def refused_first(self) -> bool:
        """Every first delivery past alpha's cap answered: refused at once, its queue full."""
        return self.refusals.count(QUEUE_FULL) >= len(self.bodies) - CAP_BYTES // len(DATA)


@pytest.mark.slow
# Latency beside the suite's other worker: a miss is measured once more.
@pytest.mark.flaky(reruns=1)
async def test_a_flood_of_one_system_is_refused_for_it_alone_and_the_others_keep_latency() -> None:
    stores = {name: FaultyStore(DuckDBStore(":memory:")) for name in ("alpha", "beta", "gamma")}
    systems: dict[str, dict[str, Any]] = {name: {"store": "memory:"} for name in stores}
    systems["alpha"]["queue_bytes"] = CAP_BYTES
    settings = Settings.load(
        {
            "RECORDLINE_CELL": "cell-1",
            "RECORDLINE_SYSTEMS": json.dumps(systems),
            "RECORDLINE_WRITE_DEADLINE_SECONDS": "3",
        }
    )
    cell = create_cell(settings, stores={name: (lambda s=s: s) for name, s in stores.items()})
    async with served(cell) as client:  # type: ignore[arg-type]
        with collector_as_served():
            # Alpha's store stops taking appends: its queue fills to its cap and stays
            # full, past it the flood is refused, and delivered again while `on`.
            stores["alpha"].release.clear()
            flood = Flood(client)
            flooding = asyncio.gather(*(flood.deliver(body) for body in flood.bodies))
            await until(flood.refused_first, what="the flood's first deliveries refused")
            quiet: dict[str, list[float]] = {"beta": [], "gamma": []}
            loud: dict[str, list[float]] = {"beta": [], "gamma": []}
            for phase in range(PHASES):
                flooded = phase % 2 == 1
                if flooded:
                    flood.on.set()
                else:
                    flood.on.clear()
                taken = await both(client, f"{phase}")
                for name, seconds in taken.items():
                    (loud if flooded else quiet)[name].extend(seconds)
            refused_while_flooded = flood.refusals.count(QUEUE_FULL)
            flood.stop.set()
            flood.on.set()
            stores["alpha"].release.set()
            await flooding

    # Alpha: what its share holds was taken; the rest refused at once (its queue full,
    # not a write that timed out), and refused again as delivered again.
    assert set(flood.answers) <= {204, 503}
    assert refused_while_flooded > len(flood.bodies)
    # Beta and gamma stored every push of theirs, nothing of alpha's, at their latency.
    for name in ("beta", "gamma"):
        assert sum(stores[name].appends) == PHASES * SAMPLES
        before, during = p99(quiet[name]), p99(loud[name])
        print(f"\n{name}: p99 {before * 1000:.1f} ms unloaded, {during * 1000:.1f} ms flooded")
        # Twice as slow at most, and 50 ms for the machine's own noise: a flood that
        # reached them would cost seconds (the write deadline), not milliseconds.
        assert during <= 2 * before + 0.05, (name, before, during)
