"""The BigQuery store's read cache: identical reads within a TTL share one query.

A page whose `before_time` is behind the settle horizon is immutable (rows that
old have finished committing, and a first copy is decided by looking backwards),
so a cached page is never wrong, whatever the TTL; followers' pages rarely hit,
since their `before_time` moves with the clock. `latest` and `message` can change
as rows arrive: for them the TTL is the staleness the operator opted into.

Design: docs/stores.md#bigquery-bigqueryprojectdataset
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeVar

import cachetools

T = TypeVar("T")

# Identical reads kept at most; a page of 100 rows is ~50 KB, so this bounds the
# cache near 50 MB in the worst case.
_CACHE_ENTRIES: Final = 1024


class ReadCache:
    """A bounded TTL map from a read to the task answering it.

    Holding the task rather than the result means identical reads arriving
    together share one query; a failed read is forgotten at once.
    """

    def __init__(self, ttl_seconds: float, max_entries: int = _CACHE_ENTRIES) -> None:
        self._ttl = ttl_seconds
        self._entries: cachetools.TTLCache[object, asyncio.Task[Any]] = cachetools.TTLCache(
            max_entries, ttl=max(ttl_seconds, 0.0), timer=time.monotonic
        )

    async def get(self, key: object, load: Callable[[], Awaitable[T]]) -> T:
        if self._ttl <= 0:
            return await load()
        task: asyncio.Task[T] | None = self._entries.get(key)
        if task is None:
            task = asyncio.ensure_future(load())
            self._entries[key] = task
            task.add_done_callback(lambda done: self._forget_failure(key, done))
        # Shielded: one caller giving up must not cancel the query for the rest.
        return await asyncio.shield(task)

    def _forget_failure(self, key: object, task: asyncio.Task[Any]) -> None:
        if (task.cancelled() or task.exception() is not None) and self._entries.get(key) is task:
            del self._entries[key]
