"""The threads a cell's Spanner calls share: a pool sized for every database's calls at
once starts a thread only as calls need one, and ends it once idle."""

from __future__ import annotations

import threading
from concurrent.futures import wait

from app.threads import DaemonThreads
from tests.waiting import until_blocking


def test_threads_idle_past_their_time_end_and_work_still_runs() -> None:
    threads = DaemonThreads(0, prefix="test", idle_seconds=0.05)
    threads.grow(8)
    release = threading.Event()
    running = [threads.submit(release.wait, 10) for _ in range(8)]
    until_blocking(lambda: threads.busy == 8, what="eight calls in flight")
    assert threads.alive == 8
    release.set()
    wait(running, timeout=10)
    # Idle, they end; a pool sized for many databases keeps none of them.
    until_blocking(lambda: threads.alive == 0, what="the idle threads to end")
    assert threads.submit(lambda: 42).result(timeout=10) == 42
    threads.shutdown(wait=True)


def test_without_an_idle_time_threads_are_kept() -> None:
    threads = DaemonThreads(2, prefix="test")
    assert threads.submit(lambda: 1).result(timeout=10) == 1
    assert threads.alive == 1
    threads.shutdown(wait=True)
