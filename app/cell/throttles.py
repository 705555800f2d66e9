"""Throttles: how on-call slows one hot system of a cell, on every instance, without a deploy.

RECORDLINE_THROTTLES names a JSON file (the cell's throttles secret, at its latest
version): each throttled system's `Throttle`, its pushes' pace, its export's, or both. The
cell's instances and its exporter pool's read it every READ_SECONDS, and log each throttle
taken up or lifted; a push past its pace is refused 429 with `Retry-After`, an export past
its pace waits before its next batch. What cannot be used keeps what was read last, said
in `/readyz` (the pool's logs).

Design: docs/cells.md#throttles
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable, Collection
from typing import Annotated, Final

import msgspec
from msgspec import Meta

from app.errors import Throttled
from app.settings import SECRET_MOST_BYTES, read_secret
from app.threads import DaemonThreads

log = logging.getLogger(__name__)

# How often each instance reads the file: a throttle set (or lifted) holds on every
# instance within this and a read's deadline. Each read of a mounted secret is an access
# of Secret Manager ($0.03 for 10,000): every 10 s is 259,200 a month, $0.78 an instance.
READ_SECONDS: Final = 10.0
# A read of a mounted secret is a call to Secret Manager; one that has not returned by
# then is a failed read (the file's thread is left to it, and no other is started).
READ_DEADLINE_SECONDS: Final = 2.0
# A vCPU takes at most about 500 pushes a second (docs/cells.md#capacity): a throttle of
# more slows nothing, and is a slip of the keyboard.
MOST_PUSHES_PER_SECOND: Final = 10_000.0
# One push in 100 s, at least: a slower throttle is a system stopped, which its backlog
# would page for; a refusal then asks Pub/Sub to come back within the minute, at most.
LEAST_PUSHES_PER_SECOND: Final = 0.01
MOST_RETRY_AFTER_SECONDS: Final = 60
# An export of a row a second, at least: 86,400 rows a day, a system stopped for any that
# is sent more, which its export's lag pages for; and so no pause before a batch is longer
# than a second (a lease is renewed every 5 s, between batches). An instance exports
# thousands of rows a second (docs/operations.md#the-exporter-service): a throttle of more
# than 100,000 slows nothing, and is a slip of the keyboard.
LEAST_EXPORT_ROWS_PER_SECOND: Final = 1.0
MOST_EXPORT_ROWS_PER_SECOND: Final = 100_000.0
# A read not done for three intervals says so in /readyz whatever the last one found:
# the loop that reads is not running.
STALE_SECONDS: Final = 3 * READ_SECONDS


class Throttle(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """One system's throttle, as on-call wrote it: its pushes' pace, its export's, or both
    (one that names neither slows nothing, and is refused). Unknown fields are refused (a
    misspelt field would otherwise throttle nothing, unsaid)."""

    # Pushes of the system each instance admits a second, in bursts of at most one
    # second's: the cell admits this times its instances. Unset: its pushes are not slowed.
    instance_pushes_per_second: (
        Annotated[float, Meta(ge=LEAST_PUSHES_PER_SECOND, le=MOST_PUSHES_PER_SECOND)] | None
    ) = None
    # Rows of the system's export (records and rejections) a second, in batches of at
    # most one second's: one instance of the pool exports a system at a time (its
    # lease's holder), so this is the system's. Unset: its export is not slowed.
    export_rows_per_second: (
        Annotated[float, Meta(ge=LEAST_EXPORT_ROWS_PER_SECOND, le=MOST_EXPORT_ROWS_PER_SECOND)]
        | None
    ) = None
    # Who set it (an e-mail), and why: logged by every instance that takes it up.
    by: Annotated[str, Meta(min_length=1, max_length=254)]
    reason: Annotated[str, Meta(min_length=1, max_length=1000)]

    def __post_init__(self) -> None:
        # Raised in a decode, msgspec says it as the entry's ValidationError.
        if self.instance_pushes_per_second is None and self.export_rows_per_second is None:
            raise ValueError(
                "a throttle names instance_pushes_per_second, export_rows_per_second or both"
            )

    def says(self) -> str:
        paces = []
        if self.instance_pushes_per_second is not None:
            paces.append(f"{self.instance_pushes_per_second:g} pushes a second an instance")
        if self.export_rows_per_second is not None:
            paces.append(f"its export at {self.export_rows_per_second:g} rows a second")
        return f"{' and '.join(paces)}, set by {self.by}: {self.reason}"


_decode_file = msgspec.json.Decoder(dict[str, msgspec.Raw]).decode
_decode_throttle = msgspec.json.Decoder(Throttle).decode


class Pace:
    """Pushes (or an export's rows) admitted at `rate` a second, in bursts of at most one
    second's (one at least): a token bucket."""

    def __init__(self, rate: float, now: float) -> None:
        self.rate = rate
        self._most = max(1.0, rate)
        self._tokens = self._most
        self._at = now

    def wait(self, now: float, *, spend: bool = True) -> float:
        """0, a push admitted (and, if `spend`, counted); or how long until the next one is."""
        self._fill(now)
        if self._tokens >= 1.0:
            if spend:
                self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) / self.rate

    def batch(self, now: float, rows: int) -> tuple[int, float]:
        """How many of `rows` an export's next batch may take now, and 0; or 0 and how long
        until it may start: once a whole batch's rows are due (`rows`, or one second's if
        fewer), so that a pace refilling never cuts a batch to a row or two."""
        self._fill(now)
        whole = min(float(rows), self._most)
        if self._tokens >= whole:
            return min(rows, math.floor(self._tokens)), 0.0
        return 0, (whole - self._tokens) / self.rate

    def spend(self, rows: int) -> None:
        """A batch took `rows`. No debt below nothing: a batch that began under a faster
        pace (or none) is not charged to the next second's, so no wait is longer than one
        second's rows."""
        self._tokens = max(0.0, self._tokens - rows)

    def _fill(self, now: float) -> None:
        self._tokens = min(self._most, self._tokens + max(0.0, now - self._at) * self.rate)
        self._at = now


def named_twice(content: bytes) -> list[str]:
    """The names the file's object gives more than once (a hand edit that added where it
    meant to change): a JSON decoder keeps the last of each, and says nothing. Called on a
    file msgspec has read as one object."""
    objects: list[list[tuple[str, object]]] = []

    def pairs(found: list[tuple[str, object]]) -> dict[str, object]:
        objects.append(found)
        return dict(found)

    if not content.strip():
        return []
    json.loads(content, object_pairs_hook=pairs)
    # The file's own object is the last a decoder completes.
    counts = collections.Counter(name for name, _ in objects[-1])
    return sorted(name for name, count in counts.items() if count > 1)


class Throttles:
    """The throttles of a cell's systems, as last read from `path` (see the module notes)."""

    def __init__(
        self,
        path: str,
        systems: Collection[str],
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        read: Callable[[str], bytes] = read_secret,
        deadline: float = READ_DEADLINE_SECONDS,
        every: float = READ_SECONDS,
    ) -> None:
        self._path = path
        self._every = every
        self._systems = frozenset(systems)
        self._clock = clock
        self._sleep = sleep
        self._read = read
        self._deadline = deadline
        self._in_force: dict[str, Throttle] = {}
        # Each throttled system's pace of pushes, and of its export's rows.
        self._paces: dict[str, Pace] = {}
        self._export_paces: dict[str, Pace] = {}
        # What the last read found wrong with the file as a whole, and with each entry.
        self._problem = ""
        self._ignored: list[str] = []
        self._faults: dict[str, str] = {}
        # When a read was last tried; the read in progress, if one outlived its deadline.
        self._tried_at: float | None = None
        self._reading: asyncio.Future[bytes] | None = None
        # One daemon thread: a read that never returns (a mounted secret Secret Manager
        # does not answer for) holds it, and never the process at its stop.
        self._thread = DaemonThreads(1, prefix="throttles")

    def refused(self, system: str, *, spend: bool = True) -> Throttled | None:
        """Why a push of `system` is refused now, if it is: past its throttle's pace. A
        push is counted (`spend`) once it is known to be its system's, past its token's
        check: on its head the pace is only looked at, so that a request anyone can send
        to the path spends nothing of what Pub/Sub's pushes are admitted."""
        pace = self._paces.get(system)
        if pace is None:
            return None
        wait = pace.wait(self._clock(), spend=spend)
        if wait == 0.0:
            return None
        return Throttled(
            f"system {system!r} is throttled by on-call: each instance admits "
            f"{pace.rate:g} of its pushes a second",
            retry_after=min(MOST_RETRY_AFTER_SECONDS, max(1, math.ceil(wait))),
        )

    def export_pace(self, system: str) -> ExportPace:
        """`system`'s export as its throttle paces it, whatever the file says later."""
        return ExportPace(self, system)

    async def export_batch(self, system: str, rows: int) -> int:
        """How many of `rows` the next batch of `system`'s export may take, once it may
        start: waited for here (at most a second at a time, its throttle looked at again
        after each wait: one changed or lifted meanwhile holds at once)."""
        while (pace := self._export_paces.get(system)) is not None:
            allowed, wait = pace.batch(self._clock(), rows)
            if allowed:
                return allowed
            await self._sleep(wait)
        return rows

    def exported(self, system: str, rows: int) -> None:
        """A batch of `system`'s export took `rows`."""
        pace = self._export_paces.get(system)
        if pace is not None:
            pace.spend(rows)

    def in_force(self) -> dict[str, str]:
        """Each throttled system, and its throttle."""
        return {name: self._in_force[name].says() for name in sorted(self._in_force)}

    def problems(self) -> list[str]:
        """What keeps the file from saying what it should: for the cell's /readyz."""
        found = [self._problem] if self._problem else []
        found += self._ignored
        for name, why in sorted(self._faults.items()):
            kept = self._in_force.get(name)
            keeps = f"kept: {kept.says()}" if kept is not None else "it is not throttled"
            found.append(f"the throttle of {name!r} cannot be used ({why}); {keeps}")
        if self._tried_at is not None:
            since = self._clock() - self._tried_at
            if since > STALE_SECONDS * self._every / READ_SECONDS:
                found.append(f"{self._path} not read for {since:.0f} s")
        return found

    def close(self) -> None:
        """Let go of the read's thread, whatever it is doing."""
        self._thread.shutdown(wait=False, cancel_futures=True)

    async def watch(self) -> None:
        """Read the file every READ_SECONDS, until cancelled."""
        while True:
            await self.read()
            await asyncio.sleep(self._every)

    async def read(self) -> None:
        """Read the file once, within its deadline, and take up what it says."""
        self._tried_at = self._clock()
        if self._reading is None:
            # A read that outlived its deadline is waited on again, never doubled: one
            # thread at most is held by a file that hangs.
            loop = asyncio.get_running_loop()
            self._reading = loop.run_in_executor(self._thread, self._read, self._path)
        try:
            async with asyncio.timeout(self._deadline):
                content = await asyncio.shield(self._reading)
        except TimeoutError:
            self._failed(f"{self._path} was not read within {self._deadline:g} s")
            return
        except OSError as exc:
            self._reading = None
            self._failed(f"{self._path} cannot be read: {exc.strerror or exc}")
            return
        self._reading = None
        self._take(content)

    def _failed(self, why: str) -> None:
        problem = f"{why}; the throttles last read are kept"
        if problem != self._problem:
            log.warning("throttles: %s", problem)
        self._problem = problem

    def _take(self, content: bytes) -> None:
        if len(content) > SECRET_MOST_BYTES:
            self._failed(f"{self._path} is over {SECRET_MOST_BYTES} bytes, which no secret holds")
            return
        try:
            entries = _decode_file(content) if content.strip() else {}
        except (msgspec.DecodeError, msgspec.ValidationError, RecursionError) as exc:
            # RecursionError: arrays or objects nested deeper than msgspec follows
            # (a thousand, in 2 KiB), raised as itself rather than a DecodeError.
            self._failed(f"{self._path} is no JSON object of throttles ({exc})")
            return
        throttles: dict[str, Throttle] = {}
        ignored: list[str] = []
        faults = {name: "it is named twice in the file" for name in named_twice(content)}
        for name, entry in entries.items():
            if name in faults:
                kept = self._in_force.get(name)
                if kept is not None:
                    throttles[name] = kept
                continue
            if name not in self._systems:
                ignored.append(f"{name!r} is no system of the cell: its throttle is ignored")
                continue
            try:
                throttles[name] = _decode_throttle(entry)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                faults[name] = str(exc)
                kept = self._in_force.get(name)
                if kept is not None:
                    throttles[name] = kept
        if faults != self._faults or ignored != self._ignored or self._problem:
            for why in ignored:
                log.warning("throttles: %s", why)
            for name, why in faults.items():
                log.warning("throttles: the throttle of %r cannot be used: %s", name, why)
        self._problem = ""
        self._ignored = ignored
        self._faults = faults
        self._take_up(throttles)

    def _take_up(self, throttles: dict[str, Throttle]) -> None:
        now = self._clock()
        for name, throttle in throttles.items():
            before = self._in_force.get(name)
            if before == throttle:
                continue
            _pace(self._paces, name, throttle.instance_pushes_per_second, now)
            _pace(self._export_paces, name, throttle.export_rows_per_second, now)
            log.warning(
                "system %s throttled: %s",
                name,
                throttle.says(),
                extra={"fields": _fields(name, throttle)},
            )
        for name in self._in_force.keys() - throttles.keys():
            lifted = self._in_force[name]
            self._paces.pop(name, None)
            self._export_paces.pop(name, None)
            log.warning(
                "system %s no longer throttled (it was %s)",
                name,
                lifted.says(),
                extra={"fields": _fields(name, lifted)},
            )
        self._in_force = throttles


class ExportPace:
    """One system's export as its throttle paces it (`app.store.tiered.exporter.ExportThrottle`):
    asked before each batch, told what the batch took."""

    def __init__(self, throttles: Throttles, system: str) -> None:
        self._throttles = throttles
        self._system = system

    async def batch(self, rows: int) -> int:
        return await self._throttles.export_batch(self._system, rows)

    def exported(self, rows: int) -> None:
        self._throttles.exported(self._system, rows)


def _pace(paces: dict[str, Pace], system: str, rate: float | None, now: float) -> None:
    """`system`'s pace in `paces` at `rate`: kept as it is at the same rate, a new one
    (one second's burst) at another, none if unset."""
    if rate is None:
        paces.pop(system, None)
    elif system not in paces or paces[system].rate != rate:
        paces[system] = Pace(rate, now)


def _fields(system: str, throttle: Throttle) -> dict[str, object]:
    """A throttle's log line's fields, for a query of who throttled what and why (a pace
    not set is null)."""
    return {
        "system": system,
        "instance_pushes_per_second": throttle.instance_pushes_per_second,
        "export_rows_per_second": throttle.export_rows_per_second,
        "throttled_by": throttle.by,
        "reason": throttle.reason,
    }
