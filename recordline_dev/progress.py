"""What `publish`, `replay` and `dev` show while they work, and what the service says
it did with the messages.

On a terminal, one status line on stderr, redrawn as the work goes (rich): the
rate, what was sent and acknowledged, what the service stored and rejected. On a
pipe or in a log, nothing until the end. Either way each command ends with a
one-line summary, on completion and on Ctrl-C alike.

What the service did is read from it as it goes, in a thread: the ledger of the
producer sequences `publish` numbers its messages with (`GET /v1/producers/{id}`,
one epoch's counts and gaps), or the push outcomes it counts (`GET /metrics`).
"""

from __future__ import annotations

import collections
import contextlib
import threading
import time
import urllib.parse
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Self

import msgspec

if TYPE_CHECKING:
    from rich.console import Console, RenderableType

# Redraws a second: more is flicker, not information.
REDRAWS_PER_SECOND = 5
# How often the service is asked what it did: a read of the ledger or of /metrics is
# a few milliseconds of the service's time.
POLL_SECONDS = 0.5
# Each request to the service, at most (it is local, or a Cloud Run service).
REQUEST_SECONDS = 5.0
# The rate is the messages of this many recent seconds, per second.
RATE_SECONDS = 5.0


class Rate:
    """Messages a second over the last RATE_SECONDS, from a running count."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._seen: collections.deque[tuple[float, int]] = collections.deque()

    def __call__(self, count: int) -> float:
        now = self._clock()
        self._seen.append((now, count))
        while len(self._seen) > 2 and now - self._seen[1][0] >= RATE_SECONDS:
            self._seen.popleft()
        first_time, first_count = self._seen[0]
        return (count - first_count) / (now - first_time) if now > first_time else 0.0


class StatusLine:
    """`render()` redrawn on stderr while the block runs, on a terminal only (and taken
    away at its end, for the summary line to take its place)."""

    def __init__(self, render: Callable[[], RenderableType], *, console: Console | None = None):
        from rich.console import Console
        from rich.live import Live

        self.console = console if console is not None else Console(stderr=True)
        self._live: Live | None = None
        if self.console.is_terminal:
            self._live = Live(
                get_renderable=render,
                console=self.console,
                refresh_per_second=REDRAWS_PER_SECOND,
                transient=True,
                redirect_stdout=False,
                redirect_stderr=False,
            )

    @property
    def shown(self) -> bool:
        return self._live is not None

    def __enter__(self) -> Self:
        if self._live is not None:
            self._live.start()
        return self

    def __exit__(self, *_: object) -> None:
        if self._live is not None:
            # The terminal may be gone (SIGHUP): what stops the work must still run.
            with contextlib.suppress(OSError):
                self._live.stop()

    def print(self, text: str) -> None:
        """A line above the status line (or, elsewhere, on stderr)."""
        self.console.print(text, markup=False, highlight=False)


def bar(done: int, total: int | None, text: str) -> RenderableType:
    """A progress bar (when the total is known) followed by `text`, on one line."""
    from rich.progress_bar import ProgressBar
    from rich.table import Table
    from rich.text import Text

    line = Table.grid(padding=(0, 1))
    said = Text(text, no_wrap=True, overflow="ellipsis")
    if total:
        line.add_row(ProgressBar(total=total, completed=done, width=20), said)
    else:
        line.add_row(said)
    return line


class _Gap(msgspec.Struct):
    first: int
    last: int


class _Epoch(msgspec.Struct):
    epoch: int
    highest: int = -1
    stored: int = 0
    rejected: int = 0
    duplicates: int = 0
    gaps: list[_Gap] = msgspec.field(default_factory=list)


class _Producer(msgspec.Struct):
    epochs: list[_Epoch] = msgspec.field(default_factory=list)


class Polled:
    """Reads the service every POLL_SECONDS in a daemon thread while the block runs;
    `read` once more at will. What it read last stays when a read fails (the
    service restarting, a ledger not there yet), and `error` says why."""

    def __init__(self, url: str, path: str, *, token: str | None = None) -> None:
        self.url = url.rstrip("/")
        self.error: str | None = None
        self.answered = False
        self._path = path
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="service-counts", daemon=True)
        self._lock = threading.Lock()

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()

    def _poll(self) -> None:
        while not self._stop.wait(POLL_SECONDS):
            self.read()

    def read(self) -> None:
        import httpx

        try:
            answer = httpx.get(self.url + self._path, headers=self.headers, timeout=REQUEST_SECONDS)
        except httpx.HTTPError as exc:
            self.error = f"{self.url} did not answer ({type(exc).__name__})"
            return
        with self._lock:
            try:
                self.answered |= self.take(answer.status_code, answer.content)
            except msgspec.DecodeError:
                self.error = f"{self.url}{self._path} answered what is not understood here"

    def take(self, status: int, body: bytes) -> bool:
        """Keep what an answer says; whether it was one."""
        raise NotImplementedError


class Ledger(Polled):
    """What the service stored, rejected and dropped as copies of one producer epoch's
    messages, and the sequences it has not seen, from its ledger."""

    def __init__(self, url: str, producer: str, epoch: int, *, token: str | None = None):
        super().__init__(url, f"/v1/producers/{urllib.parse.quote(producer, safe='')}", token=token)
        self.epoch = epoch
        self.stored = self.rejected = self.duplicates = 0
        self.highest = -1
        self.gaps: list[tuple[int, int]] = []

    def take(self, status: int, body: bytes) -> bool:
        if status == 404:
            # No message of the producer arrived yet, or a store that keeps no ledger.
            return False
        if status != 200:
            self.error = f"{self.url}{self._path} answered {status}"
            return False
        producer = msgspec.json.decode(body, type=_Producer)
        for epoch in producer.epochs:
            if epoch.epoch == self.epoch:
                self.stored, self.rejected = epoch.stored, epoch.rejected
                self.duplicates, self.highest = epoch.duplicates, epoch.highest
                self.gaps = [(gap.first, gap.last) for gap in epoch.gaps]
        self.error = None
        return True

    @property
    def accounted(self) -> int:
        """Messages the service answered for: stored, rejected, or a copy not stored."""
        return self.stored + self.rejected + self.duplicates

    def not_seen(self, published: int) -> list[int]:
        """Sequences below `published` the ledger has not seen: its gaps, and those past
        the highest it saw."""
        gaps = [n for first, last in self.gaps for n in range(first, last + 1)]
        return [n for n in gaps if n < published] + list(range(self.highest + 1, published))


class PushCounts(Polled):
    """How many pushes the service stored, rejected, refused and answered 503, and the
    later copies of stored messages that differed, from its /metrics."""

    def __init__(self, url: str) -> None:
        super().__init__(url, "/metrics")
        self.outcomes: collections.Counter[str] = collections.Counter()
        self.conflicts = 0

    def take(self, status: int, body: bytes) -> bool:
        from prometheus_client.parser import text_string_to_metric_families

        if status != 200:
            self.error = f"{self.url}/metrics answered {status} (OTEL_METRICS_EXPORTER?)"
            return False
        outcomes: collections.Counter[str] = collections.Counter()
        conflicts = 0
        for family in text_string_to_metric_families(body.decode(errors="replace")):
            for sample in family.samples:
                if sample.name == "recordline_messages_total":
                    outcomes[sample.labels.get("outcome", "?")] += int(sample.value)
                elif sample.name == "recordline_conflicts_total":
                    conflicts += int(sample.value)
        self.outcomes, self.conflicts = outcomes, conflicts
        self.error = None
        return True


def count(value: Any) -> str:
    """A count as the status lines show it."""
    return f"{value:,}"
