"""An exporter pool's leases shared out, simulated: the lease table's real claim and
release (`app.store.spanner.ledger`) on a table in memory, each instance's view of
the pool (`Balance`), and a clock that moves a renewal at a time. Instances come and
go; every system keeps one holder, each instance about its fair share."""

from __future__ import annotations

import math
import random
from datetime import datetime
from typing import Any

import pytest

from app.records import micros, moment
from app.store.spanner import ledger
from app.store.spanner.ledger import Standing, lease_holder, standing_of
from app.store.tiered.balance import Balance, Share

LEASE = 15.0
RENEW = LEASE / 3
START = 1_800_000_000_000_000  # µs: any fixed time


class LeaseTable:
    """`export_lease` of one system's database, as the claim and release statements
    read and write it."""

    def __init__(self, clock: Clock) -> None:
        self.rows: dict[str, tuple[str, datetime]] = {}
        self.clock = clock

    def query(self, _: Any, sql: str, **options: Any) -> list[tuple[Any, ...]]:
        now = moment(self.clock.micros())
        if sql == "SELECT CURRENT_TIMESTAMP()":
            return [(now,)]
        params = options["params"]
        if sql.startswith("SELECT name, holder, expires"):
            names = (params["name"], params["wanted"])
            return [(n, *self.rows[n]) for n in names if n in self.rows]
        if sql.startswith("SELECT holder FROM"):  # `holds`
            row = self.rows.get(params["name"])
            return [(row[0],)] if row and row[1] > now else []
        raise AssertionError(f"unexpected statement: {sql}")

    # What a transaction writes.
    def insert_or_update(self, table: str, columns: list[str], values: list[list[Any]]) -> None:
        for name, holder, expires in values:
            self.rows[name] = (holder, expires)

    def update(self, table: str, columns: list[str], values: list[list[Any]]) -> None:
        for name, expires in values:
            self.rows[name] = (self.rows[name][0], expires)

    def delete(self, table: str, keys: Any) -> None:
        for (name,) in keys.keys:
            self.rows.pop(name, None)

    def holder(self) -> str | None:
        row = self.rows.get("bigquery")
        if row is None or row[1] <= moment(self.clock.micros()):
            return None
        return standing_of(row[0])[1]


class Clock:
    def __init__(self) -> None:
        self.seconds = 0.0

    def __call__(self) -> float:
        return self.seconds

    def micros(self) -> int:
        return START + int(self.seconds * 1_000_000)


class Instance:
    """One exporter instance of the pool: each system's lease claimed once a renewal."""

    def __init__(self, name: str, systems: list[str], clock: Clock) -> None:
        self.name = name
        self.holder = lease_holder(Standing(7, 1), name)
        self.balance = Balance(name, len(systems), lease_seconds=LEASE, clock=clock)
        self.shares: dict[str, Share] = {s: self.balance.share(s) for s in systems}

    def claim(self, system: str, table: LeaseTable) -> None:
        share = self.shares[system]
        asks = share.asks()
        found = ledger.claim(
            table,
            table.query,
            "bigquery",
            self.holder,
            int(LEASE * 1_000_000),
            take_free=asks.take_free,
            want=asks.want,
        )
        share.found(found)
        if found.held and share.hands_back():
            assert ledger.release(table, table.query, "bigquery", self.holder)
            share.handed_back()


class Pool:
    def __init__(self, systems: int, *, seed: int = 1) -> None:
        self.clock = Clock()
        self.systems = [f"s{n}" for n in range(systems)]
        self.tables = {s: LeaseTable(self.clock) for s in self.systems}
        self.instances: dict[str, Instance] = {}
        self.random = random.Random(seed)
        # The longest any system went without a holder (s).
        self.unheld: dict[str, float] = {}
        self.longest_unheld = 0.0

    def start(self, name: str) -> None:
        self.instances[name] = Instance(name, self.systems, self.clock)

    def kill(self, name: str) -> None:
        del self.instances[name]  # no release: its leases expire

    def renewal(self) -> None:
        """Every live instance claims every system once, in some order, over a renewal."""
        claims = [(i, s) for i in self.instances.values() for s in self.systems]
        self.random.shuffle(claims)
        step = RENEW / len(claims)
        for instance, system in claims:
            self.clock.seconds += step
            instance.claim(system, self.tables[system])
            self.watch()

    def watch(self) -> None:
        now = self.clock.seconds
        for system, table in self.tables.items():
            if table.holder() is None:
                since = self.unheld.setdefault(system, now)
                self.longest_unheld = max(self.longest_unheld, now - since)
            else:
                self.unheld.pop(system, None)

    def holdings(self) -> dict[str, int]:
        held = {name: 0 for name in self.instances}
        for table in self.tables.values():
            holder = table.holder()
            assert holder is not None, "a system with no holder"
            held[holder] += 1
        return held

    def settle(self, renewals: int) -> dict[str, int]:
        for _ in range(renewals):
            self.renewal()
        return self.holdings()


def test_two_instances_share_three_systems_and_a_third_takes_its_share() -> None:
    pool = Pool(3)
    pool.start("a")
    pool.start("b")
    assert sorted(pool.settle(6).values()) == [1, 2]
    # One dies: the other takes its systems within a lease of its last renewal.
    busiest = max(pool.holdings(), key=lambda name: pool.holdings()[name])
    pool.kill(busiest)
    pool.longest_unheld = 0.0
    (survivor,) = pool.instances
    assert pool.settle(5) == {survivor: 3}
    assert pool.longest_unheld <= LEASE + RENEW
    # A third joins: the survivor hands over what is above its share.
    pool.longest_unheld = 0.0
    pool.start("c")
    assert sorted(pool.settle(6).values()) == [1, 2]
    # Handed over, never left: the next claim of the one that asked takes it.
    assert pool.longest_unheld <= 2 * RENEW


@pytest.mark.slow
def test_a_hundred_systems_are_shared_evenly_and_stay_so() -> None:
    pool = Pool(100, seed=7)
    for name in "abc":
        pool.start(name)
    held = pool.settle(12)
    assert max(held.values()) <= math.ceil(100 / 3)
    assert sum(held.values()) == 100
    # Settled: nothing moves any more.
    before = {s: t.holder() for s, t in pool.tables.items()}
    pool.settle(3)
    assert {s: t.holder() for s, t in pool.tables.items()} == before
    # Two more instances: each gets its share, no system ever unheld for more than
    # the asking instance's next claim.
    pool.longest_unheld = 0.0
    pool.start("d")
    pool.start("e")
    held = pool.settle(15)
    assert max(held.values()) <= 20
    assert min(held.values()) >= 15
    # Claims come in a different order each renewal here: the asking instance's next
    # claim of a lease handed back may be up to two renewals away.
    assert pool.longest_unheld <= 2 * RENEW


def test_an_instance_alone_holds_everything_and_gives_back_nothing_unasked() -> None:
    pool = Pool(4)
    pool.start("a")
    assert pool.settle(2) == {"a": 4}
    # Nobody asks: the holder keeps every lease, however many it holds.
    assert all(not pool.instances["a"].shares[s].hands_back() for s in pool.systems)
    assert micros(moment(START)) == START
