"""A pool of daemon threads for client libraries whose calls block.

`concurrent.futures.ThreadPoolExecutor` joins its threads at interpreter exit
whatever `shutdown` was told: one thread inside a call that never returns (a
Spanner commit retrying UNAVAILABLE for as long as its library allows, an RPC
to a host that stopped answering) keeps the process alive after its stop,
until Cloud Run kills it. Every call made here has a deadline of its own; this
pool is what makes a stop not depend on it. Its threads are daemons: a stop
cancels what has not started (`shutdown(wait=False, cancel_futures=True)`),
and the process exits with whatever is still running.
"""

from __future__ import annotations

import contextlib
import itertools
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any, ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")
_Work = tuple[Future[Any], Callable[..., Any], tuple[Any, ...], dict[str, Any]]


class DaemonThreads(Executor):
    """At most `workers` daemon threads, started as work arrives, named `prefix_N`;
    with `idle_seconds`, a thread that finds no work for that long ends (a pool sized
    for many databases keeps only the threads its recent calls needed)."""

    def __init__(self, workers: int, *, prefix: str, idle_seconds: float | None = None) -> None:
        self._workers = workers
        self._prefix = prefix
        self._idle_seconds = idle_seconds
        self._queue: queue.SimpleQueue[_Work | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._names = itertools.count()
        # Threads waiting for work that no submitted work counts on yet.
        self._idle = 0
        self._closed = False

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        with self._lock:
            if self._closed:
                raise RuntimeError("cannot schedule new futures after shutdown")
            future: Future[T] = Future()
            self._queue.put((future, fn, args, kwargs))
            if self._idle:
                self._idle -= 1
            elif len(self._threads) < self._workers:
                thread = threading.Thread(
                    target=self._work, name=f"{self._prefix}_{next(self._names)}", daemon=True
                )
                self._threads.append(thread)
                thread.start()
            return future

    def grow(self, workers: int) -> None:
        """Allow `workers` more threads (started, as ever, only as work arrives)."""
        with self._lock:
            self._workers += workers

    @property
    def alive(self) -> int:
        """Threads started and not ended (for tests and diagnostics)."""
        with self._lock:
            return len(self._threads)

    def _next(self) -> _Work | None:
        """The next work for this thread; None when it is to end (shut down, or idle
        for `idle_seconds` with no work counting on it)."""
        while True:
            try:
                return self._queue.get(timeout=self._idle_seconds)
            except queue.Empty:
                with self._lock:
                    # Work submitted meanwhile counted on an idle thread (`submit`
                    # took one off `_idle`): while none is left uncounted, this one
                    # waits on, for it.
                    if self._idle:
                        self._idle -= 1
                        self._threads.remove(threading.current_thread())
                        return None

    def _work(self) -> None:
        while (work := self._next()) is not None:
            future, fn, args, kwargs = work
            if future.set_running_or_notify_cancel():
                try:
                    result = fn(*args, **kwargs)
                except BaseException as exc:  # handed to whoever awaits the future
                    future.set_exception(exc)
                else:
                    future.set_result(result)
            with self._lock:
                self._idle += 1

    @property
    def busy(self) -> int:
        """Threads inside a call now (for tests and diagnostics)."""
        with self._lock:
            return len(self._threads) - self._idle

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Take no more work; with `cancel_futures`, drop what has not started; with
        `wait`, join the threads (only for a caller that knows every call ends)."""
        with self._lock:
            self._closed = True
            threads = list(self._threads)
        if cancel_futures:
            with contextlib.suppress(queue.Empty):
                while True:
                    work = self._queue.get_nowait()
                    if work is not None:
                        work[0].cancel()
        for _ in threads:
            self._queue.put(None)
        if wait:
            for thread in threads:
                thread.join()
