"""Every read-write transaction of the service runs through one helper, bounded.

`app.store.spanner.calls.in_transaction` gives the library's `run_in_transaction`
the call's deadline; a copy of that call elsewhere could leave it out, and the
client would then retry a commit for up to an hour. Read from the code with
`ast`, like tests/test_layering.py.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

APP = Path(__file__).resolve().parent.parent.parent / "app"
HELPER = Path("store/spanner/calls.py")


def transactions_outside_the_helper(app: Path = APP) -> list[str]:
    """Where a module of `app` calls `run_in_transaction` itself (`path:line`)."""
    found = []
    for path in sorted(app.rglob("*.py")):
        if path.relative_to(app) == HELPER:
            continue
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "run_in_transaction"
            ):
                found.append(f"{path.relative_to(app)}:{node.lineno}")
    return found


@pytest.mark.slow
def test_every_transaction_runs_through_the_bounded_helper() -> None:
    assert transactions_outside_the_helper() == []


def test_the_check_finds_a_transaction_run_by_hand(tmp_path: Path) -> None:
    (tmp_path / "store" / "spanner").mkdir(parents=True)
    (tmp_path / HELPER).write_text("database.run_in_transaction(work, timeout_secs=1)\n")
    (tmp_path / "store" / "mine.py").write_text("x = 1\ndb.run_in_transaction(work)\n")
    assert transactions_outside_the_helper(tmp_path) == ["store/mine.py:2"]


async def test_a_commit_that_waited_its_turn_says_its_whole_deadline() -> None:
    # On the emulator, commits take turns; one whose turn came late had the rest of the
    # deadline and said "Spanner did not answer within 0.005 s".
    import asyncio
    import threading

    import pytest

    from app.errors import StoreUnavailable
    from app.store.open import spanner_database
    from app.store.spanner.calls import Accommodations, Deadline, SpannerCalls

    calls = SpannerCalls(
        spanner_database("spanner://projects/recordline-test/instances/inst/databases/db"),
        accommodations=Accommodations(commit_turns=True),
    )
    calls.clients.reserve()  # the database's threads, as `start` takes them
    release = threading.Event()
    holding = asyncio.Event()
    loop = asyncio.get_running_loop()

    def hold(deadline: Deadline) -> None:
        deadline.left()  # as the client does before each request
        loop.call_soon_threadsafe(holding.set)
        release.wait()

    try:
        # The first holds the turn to its deadline; the second, started just after it,
        # gets the turn with less left than a request is sent with.
        first = asyncio.create_task(calls.transact(hold, within=0.3))
        async with asyncio.timeout(10):
            await holding.wait()
        with pytest.raises(StoreUnavailable) as raised:
            await calls.transact(hold, within=0.3)
        with pytest.raises(StoreUnavailable):
            await first
    finally:
        release.set()
    said = str(raised.value)
    assert said.startswith("Spanner did not answer within 0.3 s, "), said
    assert "waiting for the transaction before it" in said


class _Recording:
    """A database as `in_transaction` uses one: runs the work once and keeps what it
    was asked with."""

    def __init__(self) -> None:
        self.asked: dict[str, object] = {}

    def run_in_transaction(self, work: object, **options: object) -> object:
        import datetime
        from types import SimpleNamespace

        self.asked = options
        transaction = SimpleNamespace(committed=datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC))
        return work(transaction)  # type: ignore[operator]


def test_a_commit_waits_to_be_batched_only_where_asked() -> None:
    # Throughput-optimized writes: Spanner may hold the group commit up to COMMIT_DELAY
    # to batch it, what the instance's CPU is sized by (infra/terraform/spanner.tf); the
    # lease's, the progress's and a restore's transactions are not held.
    import datetime

    from app.store.spanner.calls import COMMIT_DELAY, Deadline, in_transaction

    database = _Recording()
    done, _ = in_transaction(database, Deadline(5), lambda t: "done")
    assert done == "done"
    assert "max_commit_delay" not in database.asked
    in_transaction(database, Deadline(5), lambda t: None, commit_delay=COMMIT_DELAY)
    assert database.asked["max_commit_delay"] == COMMIT_DELAY
    # Spanner takes 0 to 500 ms; its published throughput is for 100 ms.
    assert datetime.timedelta(milliseconds=100) == COMMIT_DELAY


def test_the_group_commit_alone_is_held_to_be_batched() -> None:
    held = []
    for path in sorted(APP.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id == "in_transaction"
                and any(k.arg == "commit_delay" for k in node.keywords)
            ):
                held.append(str(path.relative_to(APP)))
    assert held == ["store/spanner/serving.py"]
