"""A pool of daemon threads for calls that block (client libraries', mounted secrets').

`concurrent.futures.ThreadPoolExecutor` joins its threads at interpreter exit
whatever `shutdown` was told: one thread inside a call that never returns (a
Spanner commit retrying UNAVAILABLE, a read of a secret's mount that hangs) keeps
the process alive after its stop, until Cloud Run kills it. Every call made here has
a deadline of its own; this pool is what makes a stop not depend on it. Its threads
are daemons: a stop cancels what has not started (`shutdown(wait=False,
cancel_futures=True)`), and the process exits with whatever is still running.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any, ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")
_Work = tuple[Future[Any], Callable[..., Any], tuple[Any, ...], dict[str, Any]]


class _Worker:
    """One thread of the pool, and the work it is handed while it waits."""

    __slots__ = ("thread", "wake", "work")

    def __init__(self, work: _Work) -> None:
        self.work: _Work | None = work
        self.wake = threading.Event()
        self.thread: threading.Thread | None = None


class DaemonThreads(Executor):
    """At most `workers` daemon threads, started as work arrives, named `prefix_N`;
    with `idle_seconds`, a thread that finds no work for that long ends. Work goes to
    the thread idle the shortest time (the others stay idle, and end), so a pool sized
    for many databases keeps only the threads its recent calls needed at once."""

    def __init__(self, workers: int, *, prefix: str, idle_seconds: float | None = None) -> None:
        self._workers = workers
        self._prefix = prefix
        self._idle_seconds = idle_seconds
        self._lock = threading.Lock()
        # Work no thread has taken yet, in order; the threads waiting, the last idle last.
        self._pending: deque[_Work] = deque()
        self._idle: list[_Worker] = []
        self._threads: set[threading.Thread] = set()
        self._names = itertools.count()
        self._closed = False

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        with self._lock:
            if self._closed:
                raise RuntimeError("cannot schedule new futures after shutdown")
            future: Future[T] = Future()
            work: _Work = (future, fn, args, kwargs)
            if self._idle:
                worker = self._idle.pop()
                worker.work = work
                worker.wake.set()
            elif len(self._threads) < self._workers:
                worker = _Worker(work)
                thread = threading.Thread(
                    target=self._run,
                    args=(worker,),
                    name=f"{self._prefix}_{next(self._names)}",
                    daemon=True,
                )
                worker.thread = thread
                self._threads.add(thread)
                thread.start()
            else:
                self._pending.append(work)
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

    @property
    def busy(self) -> int:
        """Threads inside a call now (for tests and diagnostics)."""
        with self._lock:
            return len(self._threads) - len(self._idle)

    def _run(self, worker: _Worker) -> None:
        work = worker.work
        while work is not None:
            future, fn, args, kwargs = work
            if future.set_running_or_notify_cancel():
                try:
                    result = fn(*args, **kwargs)
                except BaseException as exc:  # handed to whoever awaits the future
                    future.set_exception(exc)
                else:
                    future.set_result(result)
            work = self._next(worker)

    def _next(self, worker: _Worker) -> _Work | None:
        """The next work for `worker`'s thread; None when it is to end (the pool shut
        down, or `idle_seconds` passed with no work handed to it)."""
        with self._lock:
            worker.work = None
            if self._pending:
                return self._pending.popleft()
            if not self._closed:
                worker.wake.clear()
                self._idle.append(worker)
        if not self._closed:
            worker.wake.wait(self._idle_seconds)
        with self._lock:
            if worker.work is not None:  # handed work, if only as the wait ended
                return worker.work
            if worker in self._idle:
                self._idle.remove(worker)
            if worker.thread is not None:
                self._threads.discard(worker.thread)
            return None

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Take no more work; with `cancel_futures`, drop what has not started; with
        `wait`, join the threads (only for a caller that knows every call ends)."""
        with self._lock:
            self._closed = True
            threads = list(self._threads)
            if cancel_futures:
                while self._pending:
                    self._pending.popleft()[0].cancel()
            idle, self._idle = self._idle, []
        for worker in idle:
            worker.wake.set()  # no work: it ends
        if wait:
            for thread in threads:
                with contextlib.suppress(RuntimeError):
                    thread.join()
