"""An exporter pool's leases shared out: each instance holds about its fair share.

What an instance knows of the others it learns from the leases at its claims: who
holds each, and who asked for one (the row beside it: `ledger.wanted_name`). Each
claims up to `ceil(systems / live instances)`: one below its share takes a free
lease and asks for one held by an instance above its share; a holder above its
share hands an asked-for lease back between two batches, and the asker takes it at
its next claim (its progress in Spanner: no row exported twice).

Design: docs/cells.md#the-exporter-pool
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

from app.store.spanner.ledger import LeaseClaim


class Asks(NamedTuple):
    """What a claim asks: whether to take a lease nobody holds, and whether to ask
    for one another instance holds."""

    take_free: bool
    want: bool


@dataclass(slots=True)
class Seen:
    """A system's lease as this instance's last claim of it found it (monotonic times)."""

    holder: str | None = None
    until: float = -math.inf
    wanted_by: str | None = None
    wanted_until: float = -math.inf
    # Since when it has been seen free, while it is.
    free_since: float | None = None
    # When this instance handed it back last, and when it last asked for it.
    handed_back: float = -math.inf
    asked: float = -math.inf


class Balance:
    """One exporter instance's view of its pool (see the module notes): `me` is its
    name in the leases, `systems` how many systems the pool exports."""

    def __init__(
        self,
        me: str,
        systems: int,
        *,
        lease_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.me = me
        self.systems = systems
        self.lease_seconds = lease_seconds
        self._clock = clock
        self._seen: dict[str, Seen] = {}

    def share(self, system: str) -> Share:
        """System `system`'s place in the pool, as its exporter claims it."""
        return Share(self, system)

    # -- what the pool looks like from here ---------------------------------

    def live(self) -> set[str]:
        """The instances holding or asking for a lease that has not expired, and this one."""
        now = self._clock()
        found = {self.me}
        for seen in self._seen.values():
            if seen.holder is not None and seen.until > now:
                found.add(seen.holder)
            if seen.wanted_by is not None and seen.wanted_until > now:
                found.add(seen.wanted_by)
        return found

    def fair(self) -> int:
        """The most leases an instance holds once the pool is balanced."""
        return math.ceil(self.systems / len(self.live()))

    def held(self, instance: str | None = None) -> int:
        """How many live leases `instance` (by default this one) holds."""
        who = self.me if instance is None else instance
        now = self._clock()
        return sum(s.holder == who and s.until > now for s in self._seen.values())

    def seen_of(self, system: str) -> Seen:
        """What the last claim of `system`'s lease found."""
        return self._seen.setdefault(system, Seen())

    def now(self) -> float:
        return self._clock()


class Share:
    """One system's lease as the pool shares it (`Balance`), for its exporter."""

    def __init__(self, balance: Balance, system: str) -> None:
        self._balance = balance
        self.system = system

    @property
    def holder(self) -> str:
        """This instance's name in the leases (each of its systems' alike)."""
        return self._balance.me

    def asks(self) -> Asks:
        """What this instance's next claim of the lease asks."""
        balance = self._balance
        seen, now = balance.seen_of(self.system), balance.now()
        held, fair = balance.held(), balance.fair()
        free_for = None if seen.free_since is None else now - seen.free_since
        unclaimed = free_for is not None and free_for >= balance.lease_seconds / 3
        # Asked for within the last lease: its holder may have handed it back for this one.
        asked = now - seen.asked < balance.lease_seconds
        take = (
            held < fair or asked or (unclaimed and now - seen.handed_back >= balance.lease_seconds)
        )
        holder = seen.holder if seen.until > now else None
        want = (
            holder is not None
            and holder != balance.me
            and held < fair
            and balance.held(holder) > fair
        )
        if want:
            seen.asked = now
        return Asks(take_free=take, want=want)

    def found(self, claim: LeaseClaim) -> None:
        """What a claim of the lease found."""
        balance = self._balance
        seen, now = balance.seen_of(self.system), balance.now()
        holder = balance.me if claim.held else claim.holder
        seen.holder = holder
        if claim.held:
            seen.until = now + balance.lease_seconds
        elif claim.expires_in is not None:
            seen.until = now + claim.expires_in / 1_000_000
        else:
            seen.until = now + balance.lease_seconds if holder is not None else -math.inf
        if holder is None:
            seen.free_since = now if seen.free_since is None else seen.free_since
        else:
            seen.free_since = None
        if claim.held:
            seen.asked = -math.inf
        seen.wanted_by = claim.wanted_by
        seen.wanted_until = (
            -math.inf if claim.wanted_in is None else now + claim.wanted_in / 1_000_000
        )

    def hands_back(self) -> bool:
        """Whether this instance, holding the lease, should hand it back now: it holds
        more than its share, and another live instance asked for this one."""
        balance = self._balance
        seen, now = balance.seen_of(self.system), balance.now()
        wanter = seen.wanted_by
        if seen.holder != balance.me or wanter is None or seen.wanted_until <= now:
            return False
        fair = balance.fair()
        # Only to one still below its share (as far as this instance has seen).
        return balance.held() > fair and balance.held(wanter) < fair

    def handed_back(self) -> None:
        """This instance handed the lease back."""
        balance = self._balance
        seen, now = balance.seen_of(self.system), balance.now()
        seen.holder, seen.until, seen.free_since, seen.handed_back = None, -math.inf, now, now
