"""What one system of a cell can do to another through what they share: the room kept for
large bodies, the places shares lend, the settings file. Each test here is a way one
system, its publisher or its operator, changes what another system is answered.

A cell of three systems on DuckDB in memory, behind the server `recordline serve` runs
(`app.http.limits`, its budget the cell's), at the default bounds.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator

import httpx
import pytest

from app.cell.app import Cell, create_cell
from app.settings import Settings
from app.store.duckdb.store import DuckDBStore
from tests.conftest import envelope, served
from tests.fakes import FaultyStore
from tests.waiting import until

SYSTEMS = ("alpha", "beta", "gamma")
# The largest body a push may declare (RECORDLINE_MAX_BODY_BYTES at its default).
LARGEST = 14 * 1024 * 1024
# A message of 100 KB: its push's body (base 64, wrapped) is over 64 KiB, read only where
# the budget keeps room for all of it.
LARGE_DATA = "x" * 100_000


def cell_settings(**extra: str) -> Settings:
    return Settings.load(
        {
            "RECORDLINE_CELL": "cell-1",
            "RECORDLINE_SYSTEMS": json.dumps({name: {"store": "memory:"} for name in SYSTEMS}),
            **extra,
        }
    )


def new_cell(**extra: str) -> Cell:
    return create_cell(
        cell_settings(**extra),
        stores={name: (lambda: FaultyStore(DuckDBStore(":memory:"))) for name in SYSTEMS},
    )


@pytest.fixture
async def cell() -> AsyncIterator[tuple[Cell, httpx.AsyncClient]]:
    made = new_cell()
    async with served(made, bounded=True) as client:  # type: ignore[arg-type]
        yield made, client


async def slow_push(port: int, system: str, *, chunked: bool) -> asyncio.StreamWriter:
    """A push to `system` that sends its head and the first bytes of its body, then
    nothing more (a publisher sending slowly, within BODY_TIMEOUT_SECONDS):
    declaring the largest body, or chunked."""
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {LARGEST}"
    head = (
        f"POST /systems/{system}/pubsub/push HTTP/1.1\r\nHost: localhost\r\n"
        f"Content-Type: application/json\r\n{framing}\r\n\r\n"
    )
    start = b'{"message": '
    body = f"{len(start):x}\r\n".encode() + start + b"\r\n" if chunked else start
    writer.write(head.encode() + body)
    await writer.drain()
    return writer


@pytest.mark.parametrize("chunked", [False, True], ids=["declared", "chunked"])
async def test_one_systems_slow_large_push_refuses_no_other_systems_push(
    cell: tuple[Cell, httpx.AsyncClient], chunked: bool
) -> None:
    # What it proves: the room the budget keeps for large bodies being read
    # (`Budget.promise`, about one largest push at the defaults) is one pool for the whole
    # process, not shared out by system, and a body promised holds it until it is read
    # or times out (30 s). So one push of alpha's declaring the largest body (or any
    # chunked push of alpha's, which promises four times the largest body whatever it
    # sends), sent slowly, makes every other system's push over 64 KiB 503
    # `too-much-in-flight` until it ends: beta's 100 KB push, on an idle cell, with beta
    # holding nothing, is refused for what alpha's publisher does.
    made, client = cell
    budget = made.budget
    assert budget is not None
    port = client.base_url.port
    assert port is not None
    writer = await slow_push(port, "alpha", chunked=chunked)
    try:
        await until(lambda: budget.promised > 0, timeout=10, what="alpha's body to be promised")
        body = envelope({"id": "beta-large", "data": LARGE_DATA}, message_id="beta-large")
        answer = await client.post("/systems/beta/pubsub/push", json=body)
        assert answer.status_code == 204, (answer.status_code, answer.text)
    finally:
        writer.close()


def followers_open(metrics: str) -> int:
    """The followers the cell holds now, every system's (`recordline_followers`)."""
    found = re.findall(r"^recordline_followers(?:\{[^}]*\})? ([0-9.]+)$", metrics, re.M)
    return int(sum(float(value) for value in found))


@pytest.mark.slow
async def test_a_system_that_borrowed_followers_leaves_every_other_its_own_share() -> None:
    # What it proves: a system borrows places (followers here; reads and exports are the
    # same `Places`) until half the cell's are taken, but the others' own shares are the
    # whole of the cell's, so what it borrowed is taken from them and not given back
    # until its followers leave (an SSE stream holds its place 300 s). With six followers
    # in a cell of three (two each), alpha holds three, beta its two, and gamma, which
    # holds one, is refused its second (503 too-many-followers), within its own share.
    made = new_cell(RECORDLINE_MAX_FOLLOWERS="6")
    async with served(made, bounded=True) as client:  # type: ignore[arg-type]

        async def holds(count: int) -> bool:
            return followers_open((await client.get("/metrics")).text) == count

        async def follow(system: str, seconds: float) -> int:
            answer = await client.get(f"/systems/{system}/v1/records?wait={seconds}")
            return answer.status_code

        # Alpha's long-polls, more than its share: it holds what it may borrow.
        alphas = [asyncio.create_task(follow("alpha", 20)) for _ in range(4)]
        done, _ = await asyncio.wait(alphas, return_when=asyncio.FIRST_COMPLETED)
        assert [task.result() for task in done] == [503]  # past what it may borrow
        await until(lambda: holds(3), timeout=10, what="alpha to hold its two and one lent")
        betas = [asyncio.create_task(follow("beta", 20)) for _ in range(2)]
        await until(lambda: holds(5), timeout=10, what="beta to hold its own two")
        # Gamma asks for its own two, each waiting a second.
        gammas = await asyncio.gather(follow("gamma", 1), follow("gamma", 1))
        for task in [*alphas, *betas]:
            task.cancel()
        await asyncio.gather(*alphas, *betas, return_exceptions=True)
        assert gammas == [200, 200], gammas


def served_systems(systems: dict[str, dict[str, str]]) -> set[str]:
    """The systems a cell of `systems` (in this order) serves."""
    loaded = Settings.load({"RECORDLINE_CELL": "cell-1", "RECORDLINE_SYSTEMS": json.dumps(systems)})
    return set(loaded.systems())


def test_an_entry_naming_another_systems_store_is_never_served_on_it() -> None:
    # What it proves: of two entries naming one store, the one later in the file is the
    # fault and the earlier serves, so which system serves the store is the file's order,
    # not which system owns it. Terraform writes the file with its keys sorted
    # (`jsonencode`), so an operator's new entry "aardvark" copied from beta's, its store
    # left beta's, sorts first: aardvark serves beta's records (to aardvark's readers,
    # under aardvark's tokens) and beta, which served yesterday, is 503
    # system-unavailable. Whatever else is decided, the new entry must not serve a store
    # that another entry names, in either order.
    beta = {"store": "bigquery://recordline-prod/beta"}
    aardvark = {"store": beta["store"]}
    as_written = served_systems({"aardvark": aardvark, "beta": beta})
    assert "aardvark" not in as_written, as_written
    # And the same file in another order serves the same systems.
    assert served_systems({"beta": beta, "aardvark": aardvark}) == as_written
