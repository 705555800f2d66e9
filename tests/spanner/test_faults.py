"""The serving tier while Spanner fails, and while its own background work does.

Spanner refusing connections (its emulator killed) and Spanner hanging (its
emulator stopped with SIGSTOP), under two `recordline serve` processes sharing
one database and one BigQuery (the stand-in): pushes are answered within
15 s, `/readyz` says not ready within 5 s, an idle instance takes less than a
tenth of a core, SIGTERM ends one within 8 s, and once Spanner answers again
every acknowledged message is in the API and in BigQuery exactly once. Each
test has an emulator of its own, since it kills or stops it.

And a background loop that raises what nobody expects: started again,
counted, named by readiness, and `close` still closes every client.
"""

from __future__ import annotations

import asyncio
import collections
import os
import re
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.asgi import create_app
from app.errors import StoreUnavailable
from app.settings import Settings
from app.store.observers import StoreObservers
from app.store.open import open_store
from app.store.tiered import store as tiered_store
from app.store.tiered.exporter import Exporter
from app.store.tiered.store import TieredStore
from app.telemetry import Telemetry
from recordline_dev.processes import free_port
from recordline_dev.serving import BigQueryStandIn
from tests import rawhttp
from tests.bigquery.conftest import DATASET, PROJECT
from tests.conftest import delivered, envelope, served
from tests.e2e.conftest import PUSH_TOKEN, ServiceProcess
from tests.e2e.test_serving_emulator import held_by_bigquery
from tests.spanner.emulator import SpannerEmulator, find_emulator
from tests.waiting import until

pytestmark = pytest.mark.emulator

# What the service must do while Spanner fails (the figures: Cloud Run
# kills 10 s after SIGTERM, and Pub/Sub's push deadline is longer than 15 s).
PUSH_ANSWERED_SECONDS = 15.0
READY_HONEST_SECONDS = 5.0
IDLE_CORES = 0.1
STOP_SECONDS = 8.0
# How long an idle instance's CPU is measured during the outage.
MEASURE_SECONDS = 8.0


def cpu_seconds(pid: int) -> float:
    """The process's CPU time so far (user and system), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def push(n: int, prefix: str) -> dict[str, Any]:
    return envelope({"id": f"r-{n}", "data": n}, message_id=f"{prefix}-{n}")


async def deliver(client: httpx.AsyncClient, body: dict[str, Any]) -> tuple[int, float]:
    """One push as Pub/Sub sends it: its status and how long its answer took."""
    started = time.monotonic()
    try:
        answer = await client.post(f"/pubsub/push?token={PUSH_TOKEN}", json=body)
    except httpx.TimeoutException:
        return 0, time.monotonic() - started
    return answer.status_code, time.monotonic() - started


async def listed(client: httpx.AsyncClient) -> collections.Counter[str]:
    """Message ids the API lists, and how often each."""
    seen: collections.Counter[str] = collections.Counter()
    params: dict[str, Any] = {"limit": 1000}
    while True:
        page = (await client.get("/v1/records", params=params)).json()
        seen.update(r["message_id"] for r in page["records"])
        if not page["records"]:
            return seen
        params = {"limit": 1000, "page_token": page["next_page_token"]}


@pytest.mark.parametrize("fault", ["refuses", "hangs"])
async def test_spanner_failing_under_two_instances(fault: str, tmp_path: Path) -> None:
    emulator = SpannerEmulator(find_emulator(), tmp_path / "spanner.log")
    services: list[ServiceProcess] = []
    try:
        database = emulator.database()
        with BigQueryStandIn(PROJECT, DATASET, log_path=tmp_path / "bigquery.log") as fakes:
            environment = {
                **fakes.settings,
                "RECORDLINE_SERVING": database,
                "SPANNER_EMULATOR_HOST": emulator.host,
                # Each instance exports too, as one process does (the dev stack).
                "RECORDLINE_EXPORT_IN_SERVICE": "true",
                "RECORDLINE_WRITE_DEADLINE_SECONDS": "5",
            }
            # The second keeps the default write deadline (8 s): a push in flight
            # when it is stopped must still be answered within the stop's budget.
            second = {
                k: v for k, v in environment.items() if k != "RECORDLINE_WRITE_DEADLINE_SECONDS"
            }
            services = [
                ServiceProcess(port=free_port(), store="", log=tmp_path / f"{name}.log", env=env)
                for name, env in (("one", environment), ("two", second))
            ]
            await asyncio.gather(*(asyncio.to_thread(s.start) for s in services))
            async with (
                httpx.AsyncClient(base_url=services[0].url, timeout=30) as one,
                httpx.AsyncClient(base_url=services[1].url, timeout=30) as two,
            ):
                clients = (one, two)
                before = [push(n, "before") for n in range(20)]
                # Pub/Sub delivers a push refused before the fault again (see `delivered`).
                path = f"/pubsub/push?token={PUSH_TOKEN}"
                answers = await asyncio.gather(
                    *(delivered(clients[n % 2], b, path=path) for n, b in enumerate(before))
                )
                assert [a.status_code for a in answers] == [204] * len(before)
                acknowledged = {body["message"]["messageId"] for body in before}
                # Exported before the fault: what a killed emulator forgets is in BigQuery.
                await until(
                    lambda: _held(fakes.jobs, acknowledged),
                    timeout=60,
                    interval=0.5,
                    what="the export of the first pushes",
                )

                if fault == "refuses":
                    os.killpg(emulator.process.pid, signal.SIGKILL)
                    emulator.process.wait(10)
                else:
                    emulator.pause()
                failed_at = time.monotonic()

                # Readiness honest within 5 s, on both instances.
                async def unready() -> bool:
                    statuses = [(await c.get("/readyz")).status_code for c in clients]
                    return statuses == [503, 503]

                await until(unready, timeout=READY_HONEST_SECONDS + 5, what="readiness")
                assert time.monotonic() - failed_at < READY_HONEST_SECONDS

                # Pushes answered (503, Pub/Sub delivers again) within 15 s.
                during = [push(n, "during") for n in range(6)]
                answers = await asyncio.gather(
                    *(deliver(clients[n % 2], body) for n, body in enumerate(during))
                )
                assert all(status == 503 for status, _ in answers), answers
                assert max(seconds for _, seconds in answers) < PUSH_ANSWERED_SECONDS, answers

                # Idle instances take next to no CPU while Spanner fails.
                pids = [s.process.pid for s in services if s.process is not None]
                spent = [cpu_seconds(pid) for pid in pids]
                await asyncio.sleep(MEASURE_SECONDS)  # the CPU over this time is the measure
                cores = [
                    (cpu_seconds(p) - s) / MEASURE_SECONDS for p, s in zip(pids, spent, strict=True)
                ]
                assert max(cores) < IDLE_CORES, cores

                # SIGTERM stops an instance within 8 s, whatever Spanner does, with
                # a push in flight: answered (not acknowledged) before the exit.
                last = push(99, "stopping")
                reader, writer = await asyncio.open_connection("127.0.0.1", services[1].port)
                writer.write(rawhttp.request(f"/pubsub/push?token={PUSH_TOKEN}", last))
                await writer.drain()
                client_port = writer.get_extra_info("sockname")[1]
                await until(
                    lambda: rawhttp.read_by_server(services[1].port, client_port),
                    what="the instance to read the last push",
                )
                stopping = time.monotonic()
                services[1].signal(signal.SIGTERM)
                assert services[1].process is not None
                async with asyncio.timeout(STOP_SECONDS + 5):
                    assert await rawhttp.status(reader) == 503
                writer.close()
                await asyncio.to_thread(services[1].process.wait, STOP_SECONDS + 5)
                assert time.monotonic() - stopping < STOP_SECONDS
                during.append(last)

                if fault == "refuses":
                    return  # the killed emulator forgot its rows: nothing to recover
                emulator.resume()
                # Pub/Sub delivers again what was not acknowledged, until it is.
                for body in during:

                    async def stored(body: dict[str, Any] = body) -> bool:
                        return (await deliver(one, body))[0] == 204

                    await until(stored, timeout=60, interval=0.5, what="a push after recovery")
                    acknowledged.add(body["message"]["messageId"])
                api = await until(
                    lambda: _all_listed(one, acknowledged), timeout=30, what="the API"
                )
                assert api == dict.fromkeys(acknowledged, 1)
                held = await until(
                    lambda: _held(fakes.jobs, acknowledged),
                    timeout=90,
                    interval=0.5,
                    what="BigQuery to hold every acknowledged message",
                )
                assert {m: copies for m, (copies, _) in held.items()} == dict.fromkeys(
                    acknowledged, 1
                )
    finally:
        for service in services:
            service.close()
        emulator.stop()


async def _held(jobs: str, ids: set[str]) -> dict[str, tuple[int, int]] | None:
    held = await asyncio.to_thread(held_by_bigquery, jobs)
    return held if ids <= held.keys() else None


async def _all_listed(client: httpx.AsyncClient, ids: set[str]) -> dict[str, int] | None:
    seen = await listed(client)
    return dict(seen) if ids <= seen.keys() else None


def _restarts(metrics: str, loop: str) -> float:
    line = re.compile(
        rf'^recordline_loop_restarts_total\{{[^}}]*loop="{loop}"[^}}]*\}} (\S+)$', re.M
    )
    found = line.search(metrics)
    return float(found[1]) if found else 0.0


async def test_a_loop_that_fails_is_restarted_counted_and_named_and_close_still_closes(
    serving_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Down for longer than this (instead of a lease, 15 s), readiness names it.
    monkeypatch.setattr(tiered_store, "LEASE_SECONDS", 1.0)

    async def fails(self: Exporter) -> bool:
        raise RuntimeError("injected: a bug in the exporter")

    monkeypatch.setattr(Exporter, "step", fails)
    settings = serving_settings()
    telemetry = Telemetry(prometheus=True)
    store = open_store(settings, observers=StoreObservers(loops=telemetry.loop_observer()))
    assert isinstance(store, TieredStore)
    async with served(create_app(settings, store=store, telemetry=telemetry)) as client:

        async def restarted_twice() -> bool:
            return _restarts((await client.get("/metrics")).text, "exporter") >= 2

        await until(restarted_twice, what="the exporter restarted twice")

        async def named() -> str | None:
            answer = await client.get("/readyz")
            detail = str(answer.json().get("detail", "")) if answer.status_code == 503 else ""
            return detail if "exporter" in detail else None

        detail = await until(named, what="readiness to name the exporter")
        assert "injected: a bug in the exporter" in detail
        # The other loops and the push path go on meanwhile.
        assert (await client.post("/pubsub/push", json=push(1, "m"))).status_code == 204
        assert store.supervisor.restarts("tail") == 0
    # The app stopped: every client is closed, though a loop never stopped failing.
    with pytest.raises(StoreUnavailable, match="closed"):
        await store.serving.ping()
    with pytest.raises(StoreUnavailable, match="not started"):
        await store.analytics.check()
