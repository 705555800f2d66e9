"""A throttle as a careless operator, a hostile publisher and a hostile connection try it.

The cell's throttles (`app.cell.throttles`, docs/cells.md#throttles) behind the server
`recordline serve` runs: a push of a throttled system reaches its route by one path
alone; a file no JSON decoder can follow is refused like any other, never the cell's
start; what on-call reads in the runbook of a long throttle is what Pub/Sub does.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from app.cell.app import create_cell
from app.settings import Settings
from app.store.duckdb.store import DuckDBStore
from tests.auth.fake_google import FakeGoogle
from tests.cell.test_cell import Stores, cell_of
from tests.cell.test_throttles import (
    RECORD,
    SYSTEMS,
    new_cell,
    push,
    stored,
    throttle,
    throttles_of,
    write,
)
from tests.conftest import envelope, served
from tests.fakes import FaultyStore
from tests.processes import free_port
from tests.waiting import until, until_blocking

DOCS = Path(__file__).parents[2] / "docs"


# --- the file ------------------------------------------------------------------------


def nested(depth: int) -> bytes:
    """A throttles file of 2 * depth bytes and more: alpha's entry, arrays `depth` deep."""
    return b'{"alpha": ' + b"[" * depth + b"]" * depth + b"}"


async def test_a_file_nested_too_deep_to_follow_is_refused_and_the_last_throttles_kept(
    tmp_path: Path,
) -> None:
    path = tmp_path / "throttles.json"
    throttles = throttles_of(path)
    write(path, {"alpha": throttle(2)})
    await throttles.read()
    # Well under a secret's 64 KiB: deeper than the decoder follows.
    path.write_bytes(nested(20_000))
    await throttles.read()
    assert throttles.in_force()["alpha"].startswith("2 pushes a second an instance")
    (problem,) = throttles.problems()
    assert "is no JSON object of throttles" in problem, problem
    assert problem.endswith("the throttles last read are kept")


async def test_a_cell_whose_throttles_file_is_nested_too_deep_starts_and_says_so(
    tmp_path: Path,
) -> None:
    path = tmp_path / "throttles.json"
    path.write_bytes(nested(20_000))
    cell = new_cell(path)
    async with served(cell, bounded=True) as client:  # type: ignore[arg-type]
        assert (await push(client, "alpha", "a-0")).status_code == 204
        health = await client.get("/readyz")
        assert health.status_code == 200
        (problem,) = health.json()["throttle_problems"]
        assert "is no JSON object of throttles" in problem, problem


async def test_a_system_named_twice_in_the_file_is_said(tmp_path: Path) -> None:
    path = tmp_path / "throttles.json"
    throttles = throttles_of(path)
    first = msgspec.json.encode(throttle(0.5)).decode()
    second = msgspec.json.encode(throttle(500)).decode()
    path.write_text(f'{{"alpha": {first}, "alpha": {second}}}')
    await throttles.read()
    assert any("'alpha'" in problem and "twice" in problem for problem in throttles.problems())


# --- the push's path -----------------------------------------------------------------

# What the server and Litestar's router make of each: the push route, as `/pubsub/push`.
ALIASES = (
    "/pubsub/push/",
    "//pubsub/push",
    "/pubsub//push",
    "/pubsub/push%2F",
    "/pubsub/push//",
)


async def test_a_push_at_any_spelling_of_its_path_is_throttled(tmp_path: Path) -> None:
    path = tmp_path / "throttles.json"
    write(path, {"alpha": throttle(0.01)})
    cell = new_cell(path)
    async with served(cell, bounded=True) as client:  # type: ignore[arg-type]
        assert (await push(client, "alpha", "a-0")).status_code == 204
        for n, alias in enumerate(ALIASES):
            refused = await client.post(
                f"/systems/alpha{alias}", json=envelope(RECORD, message_id=f"alias-{n}")
            )
            assert refused.status_code == 429, (alias, refused.status_code, refused.text)
            assert refused.json()["type"] == "/problems/system-throttled"
        assert await stored(client, "alpha") == {"a-0"}
        # The spellings still reach the route of a system not throttled.
        for n, alias in enumerate(ALIASES):
            answer = await client.post(
                f"/systems/beta{alias}", json=envelope(RECORD, message_id=f"beta-{n}")
            )
            assert answer.status_code == 204, (alias, answer.text)


async def test_a_throttle_holds_on_a_system_started_again_by_the_supervisor(
    tmp_path: Path,
) -> None:
    path = tmp_path / "throttles.json"
    write(path, {"alpha": throttle(0.01)})
    stores = Stores()
    # Alpha's first start fails: the supervisor starts it again, with a new app.
    stores.refused_starts["alpha"] = 1
    systems = {name: {"store": "memory:"} for name in SYSTEMS}
    cell = cell_of(stores, systems, RECORDLINE_THROTTLES=str(path))
    async with served(cell, bounded=True) as client:  # type: ignore[arg-type]
        unavailable = await push(client, "alpha", "a-0")
        assert unavailable.json()["type"] == "/problems/system-unavailable"

        async def started_again() -> bool:
            return (await push(client, "alpha", "a-1")).status_code == 204

        await until(started_again, timeout=15, what="alpha started again")
        refused = await push(client, "alpha", "a-2")
        assert refused.status_code == 429, refused.text
        assert await stored(client, "alpha") == {"a-1"}
        assert list((await client.get("/readyz")).json()["throttled"]) == ["alpha"]


# --- who spends a throttled system's pace --------------------------------------------

CELL_URL = "https://cell-1.example"


def audience(system: str) -> str:
    return f"{CELL_URL}/systems/{system}/pubsub/push"


def pusher(system: str) -> str:
    return f"push-{system}@cell-1.iam.gserviceaccount.com"


async def test_a_push_refused_for_its_token_spends_nothing_of_its_systems_pace(
    tmp_path: Path,
) -> None:
    path = tmp_path / "throttles.json"
    write(path, {"alpha": throttle(0.01)})
    google = FakeGoogle().start()
    try:
        systems: dict[str, Any] = {
            name: {
                "store": "memory:",
                "push_audience": audience(name),
                "push_service_accounts": pusher(name),
            }
            for name in SYSTEMS
        }
        settings = Settings.load(
            {
                "RECORDLINE_CELL": "cell-1",
                "RECORDLINE_SYSTEMS": json.dumps(systems),
                "RECORDLINE_THROTTLES": str(path),
                "RECORDLINE_OIDC_CERTS_URL": google.certs_url,
            }
        )
        cell = create_cell(
            settings,
            stores={name: (lambda: FaultyStore(DuckDBStore(":memory:"))) for name in SYSTEMS},
        )
        async with served(cell, bounded=True) as client:  # type: ignore[arg-type]
            # Anyone's request at alpha's push path: no token, then beta's.
            betas = google.mint(aud=audience("beta"), email=pusher("beta"))
            strangers: list[dict[str, str]] = [{}, {"Authorization": f"Bearer {betas}"}]
            for n, headers in enumerate(strangers):
                answer = await client.post(
                    "/systems/alpha/pubsub/push",
                    json=envelope(RECORD, message_id=f"stranger-{n}"),
                    headers=headers,
                )
                assert answer.status_code in (401, 403, 429), answer.text
            # Pub/Sub's push, with alpha's own token: its second's worth is still there.
            token = google.mint(aud=audience("alpha"), email=pusher("alpha"))
            answer = await client.post(
                "/systems/alpha/pubsub/push",
                json=envelope(RECORD, message_id="pubsub-0"),
                headers={"Authorization": f"Bearer {token}"},
            )
            assert answer.status_code == 204, answer.text
    finally:
        google.stop()


# --- what the runbook says of a long throttle ----------------------------------------


def section(doc: str, heading: str) -> str:
    text = (DOCS / doc).read_text()
    start = text.index(f"\n{heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end]


def test_the_runbook_says_a_throttles_refusals_send_messages_to_the_dead_letters() -> None:
    # Each 429 is a delivery attempt: after max_delivery_attempts of them a message is
    # a dead letter, replayed by hand, not kept for 7 days in the subscription.
    for doc, heading in (
        ("operations.md", "## A hot system"),
        ("cells.md", "## Throttles"),
    ):
        text = " ".join(section(doc, heading).split())
        assert "dead letter" in text, doc
        assert "max_delivery_attempts" in text, doc
    dead = " ".join(section("operations.md", "### Dead letters").split())
    assert re.search(r"429.{0,40}throttle", dead), "the dead letters' causes omit a throttle"


# --- a stop while a read hangs -------------------------------------------------------


@pytest.mark.slow
def test_recordline_serve_stops_within_its_grace_while_its_throttles_read_hangs(
    tmp_path: Path,
) -> None:
    # A FIFO no one writes: its open never returns, as a mounted secret's read whose
    # Secret Manager does not answer.
    throttles = tmp_path / "throttles.json"
    os.mkfifo(throttles)
    port = free_port()
    env = {
        **os.environ,
        "RECORDLINE_CELL": "cell-1",
        "RECORDLINE_SYSTEMS": json.dumps({name: {"store": "memory:"} for name in SYSTEMS}),
        "RECORDLINE_THROTTLES": str(throttles),
    }
    log = tmp_path / "serve.log"
    with log.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:

            def ready() -> bool:
                assert process.poll() is None, log.read_text()[-3000:]
                try:
                    return client.get("/readyz").status_code == 200
                except httpx.TransportError:
                    return False

            until_blocking(ready, timeout=60, what="the cell ready")
            (problem,) = client.get("/readyz").json()["throttle_problems"]
            assert "was not read within 2 s" in problem, problem
            body = envelope(RECORD, message_id="a-1")
            assert client.post("/systems/alpha/pubsub/push", json=body).status_code == 204
        stopped = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) in (0, -signal.SIGTERM), log.read_text()[-3000:]
        # Cloud Run kills at 10 s.
        assert time.monotonic() - stopped < 10
    finally:
        if process.poll() is None:
            process.kill()
        # Let the read's thread go, should the process still hold it.
        with contextlib.suppress(OSError):
            os.close(os.open(throttles, os.O_WRONLY | os.O_NONBLOCK))
