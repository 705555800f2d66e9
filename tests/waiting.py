"""Waiting for what a test waits for, not for a length of time.

A test that sleeps "long enough" for something to happen fails on a loaded
machine, where it takes longer, and wastes the time everywhere else. A test
waits for the event itself (a future, an `asyncio.Event` a fake sets), moves
an injected clock, or, where neither exists, polls the condition it needs with
`until`: the poll's interval is no guess at how long anything takes, and the
timeout is only how long to wait before calling it a failure, so it is generous.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar, overload

T = TypeVar("T")

# Long enough for a loaded machine; reached only when the test fails anyway.
TIMEOUT_SECONDS = 30.0


def _describe(what: str | Callable[[], str]) -> str:
    return what() if callable(what) else what


@overload
async def until(
    condition: Callable[[], Awaitable[T]],
    *,
    timeout: float = TIMEOUT_SECONDS,
    interval: float = 0.01,
    what: str | Callable[[], str] = "",
) -> T: ...


@overload
async def until(
    condition: Callable[[], T],
    *,
    timeout: float = TIMEOUT_SECONDS,
    interval: float = 0.01,
    what: str | Callable[[], str] = "",
) -> T: ...


async def until(
    condition: Callable[[], object],
    *,
    timeout: float = TIMEOUT_SECONDS,
    interval: float = 0.01,
    what: str | Callable[[], str] = "",
) -> object:
    """The first true value of `condition` (a function, or a coroutine function),
    checked every `interval` seconds; AssertionError, saying `what` was awaited,
    if it stays false for `timeout` seconds. An exception from `condition` ends the wait.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = condition()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if loop.time() >= deadline:
            raise AssertionError(f"waited {timeout:g} s in vain for {_describe(what)}")
        await asyncio.sleep(interval)  # the poll's interval: the condition is what is awaited


def until_blocking(
    condition: Callable[[], T],
    *,
    timeout: float = TIMEOUT_SECONDS,
    interval: float = 0.01,
    what: str | Callable[[], str] = "",
) -> T:
    """`until` for a test without an event loop: blocks the calling thread."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"waited {timeout:g} s in vain for {_describe(what)}")
        time.sleep(interval)  # the poll's interval: the condition is what is awaited
