"""What requests and answers hold in flight, for the whole process: a budget of bytes.

A request's head and body as they are read, a read's rows and what is made of them,
and an answer until the connection has taken it, are charged here while held (`Charge`).
Reads leave pushes their reserve and wait a moment at most (503 TooMuchInFlight); a
push never waits. In a cell each system draws on a `Share`: its own bytes, and what
quiet systems leave while half the budget is free and no other system's read waits;
its reads wait in a line of their own. Reads, followers and exports in flight are
`Places`, shared alike. docs/security.md#memory-bound
"""

from __future__ import annotations

import asyncio
import weakref
from collections import deque
from typing import Any, Final

from app.errors import TooMuchInFlight

# A request that takes more than this (a push of a message of more than about 16 KB)
# leaves LARGE_ROOM of the budget to the requests that take less.
SMALL_BYTES: Final = 64 * 1024
LARGE_ROOM: Final = 1 / 16
# How long a read waits for room before it is refused: a page of the largest rows is
# sent in well under this to a client that reads, and a client that does not is cut
# off at the send timeout (SEND_TIMEOUT_SECONDS).
READ_WAIT_SECONDS: Final = 1.0
# Reads take more than the least they need only while this share of the room they
# have is left: a thousand followers woken at once find room for their least each,
# not the first few all of it for the most each might bring.
READ_LEAST_ROOM: Final = 1 / 2
# The wait after which a refused request is asked to try again.
RETRY_SECONDS: Final = 1
# Reads charged less than the most they may bring that are in the store at once: each
# holds, for a moment, the row that took it past its charge (the store stops once past
# it), which may be the largest a store keeps; so a few such rows at most, whatever
# the number of readers. A read at the tail takes a few milliseconds.
SHORT_READS: Final = 4
# A system beyond its share borrows only while this much of the budget stays free, so
# that the systems whose shares it borrows find theirs when they come back.
LENT_ROOM: Final = 1 / 2


class Share:
    """What one system of a cell may hold of a Budget: `most` bytes its own, and beyond
    them what the others leave (`Budget.take`). `held` now; `waiting`, its reads waiting
    for room."""

    __slots__ = ("budget", "held", "most", "promised", "waiting")

    def __init__(self, budget: Budget, most: int) -> None:
        self.budget = budget
        self.most = most
        self.held = 0
        # What its requests' bodies being read will take yet (`Budget.promise`).
        self.promised = 0
        self.waiting = 0

    def room(self) -> int:
        """What it may take now besides the budget's own bounds: what is left of its own,
        or what it may borrow, whichever is more."""
        own = self.most - self.held
        budget = self.budget
        if budget.waiting_reads > self.waiting:
            return max(0, own)  # another system's reads wait: it lends, never borrows
        return max(own, budget.lent_ceiling - budget.held)


class _Waiting:
    __slots__ = ("future", "share", "size")

    def __init__(self, size: int, share: Share | None, future: asyncio.Future[None]) -> None:
        self.size = size
        self.share = share
        self.future = future


class Budget:
    """The bytes requests and answers hold at once, at most `most` of them: `held` now,
    never below 0 nor above `most`. Reads (`read_ceiling`) leave `read_room`; they wait
    for room in the order they asked, `read_wait` seconds at most, and nothing else waits."""

    def __init__(
        self, most: int, *, read_room: int = 0, read_wait: float = READ_WAIT_SECONDS
    ) -> None:
        self.most = most
        self.held = 0
        self.read_wait = read_wait
        # What reads may bring `held` to while no more than the room they leave is
        # promised (`read_ceiling`), and a request larger than SMALL_BYTES.
        self.reads_most = max(0, most - read_room)
        # What a read may bring `held` to beyond its least (`Charge.read_up_to`).
        self.read_most = self.reads_most - int(self.reads_most * READ_LEAST_ROOM)
        self.large_ceiling = most - int(most * LARGE_ROOM)
        # The room reads leave large bodies (`promise`).
        self.large_room = max(0, self.large_ceiling - self.reads_most)
        # What a system beyond its share may bring `held` to (LENT_ROOM).
        self.lent_ceiling = most - int(most * LENT_ROOM)
        # What the large bodies being read will take yet, as they are read (`promise`).
        self.promised = 0
        self._waiting: deque[_Waiting] = deque()
        # Reads waiting for room now, of every share, and the shares (this budget for
        # reads of none) that have some.
        self.waiting_reads = 0
        self._lines: dict[Share | Budget, int] = {}
        # Taken by a read charged short of its most while the store reads it (SHORT_READS).
        self.short_reads = asyncio.Semaphore(SHORT_READS)

    @property
    def read_ceiling(self) -> int:
        """What reads may bring `held` to now: what they leave pushes, and less while
        bodies promised to systems within their own shares take more than that
        (`promise`), so that every body promised is read whole."""
        beyond = self.promised - self.large_room
        return self.reads_most - beyond if beyond > 0 else self.reads_most

    def ceiling(self, size: int) -> int:
        """What a request (not a read) of `size` bytes may bring `held` to."""
        return self.most if size <= SMALL_BYTES else self.large_ceiling

    def take(self, size: int, ceiling: int, share: Share | None = None) -> bool:
        """Take `size` bytes now if `held` stays within `ceiling` (and `share`, if any,
        within its own or what it may borrow); whether it did."""
        held = self.held + size
        if held > ceiling:
            return False
        if share is not None:
            own = share.held + size
            if own > share.most and (
                held > self.lent_ceiling or self.waiting_reads > share.waiting
            ):
                return False
            share.held = own
        self.held = held
        return True

    def promise(self, size: int, share: Share | None = None) -> bool:
        """Keep `size` bytes for a large body to be read (BODY_COPIES of what its head
        says), if there is room for it beside the bodies promised before: in what reads
        leave (the room kept for pushes, which reads never take, so a body promised is
        read whole), and, for `share`, in its own or what it may borrow. Within its own,
        a system's body is kept wherever the budget has room now, what reads may take
        shrinking by what it takes beyond the room they leave (`read_ceiling`): that
        room is one pool of the process's, which one system's slow large push (or any
        chunked one) would fill for every other's. Nothing is held yet: a body is
        charged as it is read (`Charge.take_request`), and what it does not send is
        given back with its request. So of large bodies arriving at once, those there
        is room for are read whole, and the others refused on their heads, rather than
        every one charged as it comes until none can finish."""
        promised = self.promised + size
        if self.held + promised > self.large_ceiling:
            return False
        pooled = promised <= self.large_room
        if share is not None:
            own = share.held + share.promised + size
            if own > share.most and (
                not pooled
                or self.held + promised > self.lent_ceiling
                or self.waiting_reads > share.waiting
            ):
                return False
            share.promised += size
        elif not pooled:
            return False
        self.promised = promised
        return True

    def fulfil(self, size: int, share: Share | None = None) -> None:
        """Hold `size` bytes that `promise` kept: they were room no one else may take."""
        self.promised -= size
        self.held += size
        if share is not None:
            share.promised -= size
            share.held += size

    def unpromise(self, size: int, share: Share | None = None) -> None:
        """Give back what `promise` kept, and the body did not take."""
        self.promised -= size
        if share is not None:
            share.promised -= size
        if self._waiting:
            self._wake()  # reads may take what it kept beyond their room

    def take_read(self, size: int, share: Share | None = None) -> bool:
        """Take `size` bytes for a read now, if there is room and no read of its share
        waits for it (a read does not go ahead of those waiting)."""
        waiting = self._waiting if share is None else share.waiting
        return not waiting and self.take(size, self.read_ceiling, share)

    def read_room(self, share: Share | None = None) -> int:
        """What a read may take now: nothing while reads of its share wait for room (a
        read does not go ahead of them)."""
        room = self.read_ceiling - self.held
        if share is None:
            return 0 if self._waiting or room < 0 else room
        return 0 if share.waiting or room < 0 else min(room, share.room())

    async def wait_read(self, size: int, share: Share | None = None) -> None:
        """Take `size` bytes for a read once there is room, after the reads of its share
        that waited before. A wait cancelled (or out of time, `asyncio.timeout`) takes
        nothing."""
        if self.take_read(size, share):
            return
        waiting = _Waiting(size, share, asyncio.get_running_loop().create_future())
        self._waiting.append(waiting)
        self._lined(share, 1)
        try:
            await waiting.future
        except BaseException:
            if waiting.future.done() and not waiting.future.cancelled():
                # Given the room, then cancelled before it ran.
                self.give(size, share)
            else:
                waiting.future.cancel()
                self._lined(share, -1)
                self._wake()  # those behind it may fit now
            raise

    def give(self, size: int, share: Share | None = None) -> None:
        """Give back `size` bytes taken before (for `share`, if any)."""
        held = self.held - size
        if held < 0:
            raise ValueError(f"gave back {size} bytes of {self.held} held")
        self.held = held
        if share is not None:
            share.held -= size
        if self._waiting:
            self._wake()

    def _lined(self, share: Share | None, more: int) -> None:
        """Count a read of `share` into the line of those waiting (`more` 1), or out (-1)."""
        self.waiting_reads += more
        line = self if share is None else share
        if share is not None:
            share.waiting += more
        count = self._lines.get(line, 0) + more
        if count:
            self._lines[line] = count
        else:
            del self._lines[line]

    def _wake(self) -> None:
        """Hand room to the reads waiting, in order, while the first of each share fits:
        one that does not holds back those of its share behind it, and no other's."""
        waiting = self._waiting
        blocked: set[Share | None] = set()
        kept: deque[_Waiting] = deque()
        while waiting:
            first = waiting.popleft()
            if first.future.done():  # gave up
                continue
            share = first.share
            if share not in blocked and self.take(first.size, self.read_ceiling, share):
                self._lined(share, -1)
                first.future.set_result(None)
                continue
            kept.append(first)
            blocked.add(share)
            if len(blocked) >= len(self._lines):
                break  # every share's first waits: the rest keep their places
        kept.extend(waiting)
        self._waiting = kept

    @property
    def waiting(self) -> int:
        """Reads waiting for room now."""
        return self.waiting_reads

    def refusal(self) -> TooMuchInFlight:
        return TooMuchInFlight(
            f"this instance holds {self.held} bytes for requests and answers in flight, as "
            "many as it keeps room for here (RECORDLINE_MEMORY_BUDGET_BYTES); retry",
            retry_after=RETRY_SECONDS,
        )


# A charge released when the last of its holders is gone, by the id of the weak reference
# to each holder: a module's dict holds the references, so that they outlive the charge's
# other referrers (a reference collected with its charge would never call back).
_holding: dict[int, tuple[weakref.ref[Any], Charge]] = {}


def _gone(ref: weakref.ref[Any]) -> None:
    _, charge = _holding.pop(id(ref))
    charge._holders -= 1
    if not charge._holders:
        charge.release()


class Charge:
    """What one thing holds of a Budget (a request, or one read's rows and what is made
    of them), for a system's `share` in a cell: taken as it needs more, and given back at
    once (`release`), or once every object that holds what was charged is gone
    (`until_gone`)."""

    __slots__ = ("_holders", "_kept", "budget", "declared", "promise", "share", "size")

    def __init__(self, budget: Budget, share: Share | None = None) -> None:
        self.budget = budget
        self.share = share
        self.size = 0
        # A request's body as its head declares it (its Content-Length; the largest
        # taken when chunked), and what the budget keeps for it yet (`vow`).
        self.declared = 0
        self.promise = 0
        self._holders = 0
        # What must live until the charge is released (`keep`).
        self._kept: list[Any] | None = None

    def join(self, share: Share) -> None:
        """Count what it holds, and all it takes from now on, in `share`: a request's
        charge, made before its system was known."""
        if self.share is None:
            self.share = share
            share.held += self.size
            share.promised += self.promise

    def vow(self, size: int) -> bool:
        """Have the budget keep `size` bytes more for what this request is yet to read
        (`Budget.promise`); whether it did."""
        if not self.budget.promise(size, self.share):
            return False
        self.promise += size
        return True

    def take(self, size: int, ceiling: int) -> bool:
        """Take `size` bytes more, if the budget stays within `ceiling`; whether it did."""
        if size <= 0:
            return True
        if not self.budget.take(size, ceiling, self.share):
            return False
        self.size += size
        return True

    def take_request(self, size: int) -> bool:
        """Grow to `size` bytes for a request (not a read), now or never: for each read of
        a request's head or body, so `Budget.ceiling` is written out here."""
        more = size - self.size
        if more <= 0:
            return True
        budget = self.budget
        if more <= self.promise:
            # Kept for it (`vow`): its own, whatever else was taken since.
            self.promise -= more
            budget.fulfil(more, self.share)
            self.size = size
            return True
        # What was promised to it is its own; what was promised to others is not.
        kept = self.promise
        ceiling = budget.most if size <= SMALL_BYTES else budget.large_ceiling
        if not budget.take(more, ceiling - budget.promised + kept, self.share):
            return False
        if kept:
            self.promise = 0
            budget.unpromise(kept, self.share)
        self.size = size
        return True

    async def read(self, size: int) -> None:
        """Grow to `size` bytes for a read, waiting a moment for room (the budget's
        `read_wait`); TooMuchInFlight if there is none by then."""
        more = size - self.size
        if more <= 0:
            return
        budget, share = self.budget, self.share
        if not budget.take_read(more, share):
            if more > budget.read_ceiling:
                raise budget.refusal()  # no wait makes room for it
            try:
                async with asyncio.timeout(budget.read_wait):
                    await budget.wait_read(more, share)
            except TimeoutError:
                raise budget.refusal() from None
        self.size += more

    async def read_up_to(self, least: int, most: int) -> int:
        """Grow to `most` bytes for a read, or to as many as the budget has room for now
        short of its `read_most`, and to `least` at the very least, waiting for that as
        `read` does (TooMuchInFlight if it cannot); what it holds then. A read that may
        bring `most` bytes, and usually brings far fewer, reads what it was given room
        for, and the rest later."""
        if least > most:
            least = most
        budget, share = self.budget, self.share
        more, beyond = most - self.size, budget.read_most - budget.held
        if more > beyond:
            more = beyond
        if share is not None and more > (room := share.room()):
            more = room
        if self.size + more < least:
            more = least - self.size
        if more > 0:
            if more <= budget.read_room(share) and budget.take(more, budget.read_ceiling, share):
                self.size += more
            else:
                await self.read(least)
        return self.size

    def fits(self, size: int) -> bool:
        """Whether `size` bytes are within what is charged, or can be charged for a read
        now (taken if so)."""
        more = size - self.size
        if more <= 0:
            return True
        if not self.budget.take_read(more, self.share):
            return False
        self.size += more
        return True

    def shrink(self, size: int) -> None:
        """Give back all but `size` bytes."""
        if size < self.size:
            self.budget.give(self.size - size, self.share)
            self.size = size

    def release(self) -> None:
        """Give back all of it, and let go of what was kept."""
        if self.size:
            self.budget.give(self.size, self.share)
            self.size = 0
        if self.promise:
            self.budget.unpromise(self.promise, self.share)
            self.promise = 0
        self._kept = None

    def keep(self, thing: object) -> None:
        """Hold `thing` until the charge is released: a page whose answer is being sent,
        whose own charge lasts as long as it does."""
        if self._kept is None:
            self._kept = [thing]
        else:
            self._kept.append(thing)

    def until_gone(self, holder: object) -> None:
        """Release once `holder` is gone, and every other holder given (a read's rows,
        the page made of them, a chunk encoded from them)."""
        if not self.size:
            return
        self._holders += 1
        ref = weakref.ref(holder, _gone)
        _holding[id(ref)] = (ref, self)


class Places:
    """Places held at once (reads, followers or exports in flight): `most` of them, or, as
    a system's share of a cell's `pool`, `most` its own and beyond them what quiet
    systems leave, while half the pool's places are free (LENT_ROOM). A place borrowed
    comes back as its holder leaves; borrowing stops once the pool is half full. A pool
    that `keeps_own` (followers, who hold their places for minutes) admits a share within
    its own whatever the others borrowed: it holds its `most` and what it lent (`lent`,
    half of `most` at most) until the borrowers leave, rather than keep an owner out of
    its own share meanwhile."""

    __slots__ = ("borrows", "keeps_own", "lent", "most", "open", "pool")

    def __init__(
        self,
        most: int,
        pool: Places | None = None,
        *,
        borrows: bool = True,
        keeps_own: bool = False,
    ) -> None:
        self.most = most
        self.open = 0
        self.pool = pool
        # Whether it may hold more than `most` while the pool has room to lend.
        self.borrows = borrows
        # As a pool: whether a share within its own is admitted past `most` while places
        # are lent, and how many of its shares' places are beyond their own now.
        self.keeps_own = keeps_own
        self.lent = 0

    def share(self, most: int, *, borrows: bool = True) -> Places:
        """A system's share of these places: `most` its own (one at least), and what it
        may borrow beyond them unless `borrows` is False (a bound set for that system)."""
        return Places(max(1, most), self, borrows=borrows)

    def full(self) -> bool:
        """Whether one more place would be more than may be held now."""
        pool = self.pool
        if pool is None:
            return self.open >= self.most
        if self.open < self.most:
            if pool.open < pool.most:
                return False
            # Its own, where the others borrowed: if the pool keeps them for their owners.
            return not pool.keeps_own or pool.open - pool.lent >= pool.most
        if pool.open >= pool.most:
            return True
        return not self.borrows or pool.open >= pool.most - int(pool.most * LENT_ROOM)

    def take(self) -> None:
        """Hold one more place (`full` said there is room)."""
        self.open += 1
        if self.pool is not None:
            self.pool.open += 1
            if self.open > self.most:
                self.pool.lent += 1

    def give(self) -> None:
        """Give back a place taken before."""
        if self.pool is not None:
            self.pool.open -= 1
            if self.open > self.most:
                self.pool.lent -= 1
        self.open -= 1
