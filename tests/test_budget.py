"""The process's budget for what requests and answers hold in flight (`app.budget`).

Whatever is taken, waited for, cancelled, shrunk or released, in any order, the
budget holds exactly what its charges hold, never below 0 nor above its bound; reads
leave pushes their room, take the room there is up to their most (beyond their least
while half of it is free), wait in turn for their least and take nothing once they
give up; and a charge held by objects is given back when the last of them is gone.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.budget import SMALL_BYTES, Budget, Charge, Places, Share
from app.errors import TooMuchInFlight
from tests.waiting import until

MIB = 1024 * 1024


class Holder:
    """An object a charge may be held by (a page, an excerpt, a chunk)."""


def test_requests_take_what_fits_and_large_ones_leave_room_for_small_ones() -> None:
    budget = Budget(16 * MIB, read_room=4 * MIB)
    large = Charge(budget)
    # A large request leaves a sixteenth of the budget to smaller ones.
    assert not large.take_request(16 * MIB)
    assert large.size == 0
    assert budget.held == 0
    assert large.take_request(15 * MIB)
    assert budget.held == 15 * MIB
    assert not Charge(budget).take_request(SMALL_BYTES + 1)
    # Small ones may take the last of it, and no more.
    small = [Charge(budget) for _ in range(MIB // SMALL_BYTES)]
    assert all(charge.take_request(SMALL_BYTES) for charge in small)
    assert budget.held == budget.most
    assert not Charge(budget).take_request(1)
    large.release()
    large.release()  # once only
    assert budget.held == MIB


async def test_reads_leave_the_room_kept_for_pushes() -> None:
    budget = Budget(16 * MIB, read_room=4 * MIB, read_wait=0.05)
    read = Charge(budget)
    await read.read(12 * MIB)
    assert budget.held == 12 * MIB
    with pytest.raises(TooMuchInFlight) as refused:
        await Charge(budget).read(1)
    assert refused.value.status == 503
    assert refused.value.headers == {"Retry-After": "1"}
    assert budget.held == 12 * MIB
    # Pushes still have their room: a large one up to what it leaves to small ones.
    assert Charge(budget).take_request(3 * MIB)
    assert not Charge(budget).take_request(SMALL_BYTES + 1)
    assert Charge(budget).take_request(SMALL_BYTES)
    # A read larger than reads may ever hold is refused at once.
    with pytest.raises(TooMuchInFlight):
        await Charge(Budget(16 * MIB, read_room=4 * MIB, read_wait=3600)).read(13 * MIB)


async def test_a_waiting_read_takes_room_once_given_back_in_the_order_reads_asked() -> None:
    budget = Budget(10 * MIB, read_room=0, read_wait=60)
    held = Charge(budget)
    assert held.take(10 * MIB, budget.most)
    first, second = Charge(budget), Charge(budget)
    order: list[str] = []

    async def read(charge: Charge, name: str, size: int) -> None:
        await charge.read(size)
        order.append(name)

    waiting = [
        asyncio.create_task(read(first, "first", 6 * MIB)),
        asyncio.create_task(read(second, "second", 1 * MIB)),
    ]
    await asyncio.sleep(0)
    assert budget.waiting == 2
    # A read asked now does not go ahead of them, though it would fit once room is made.
    assert not Charge(budget).fits(1)
    held.shrink(5 * MIB)  # room for the second, not yet for the first: it waits its turn
    await asyncio.sleep(0)
    assert order == []
    held.shrink(3 * MIB)
    await asyncio.gather(*waiting)
    assert order == ["first", "second"]
    assert budget.held == 3 * MIB + 6 * MIB + 1 * MIB
    for charge in (held, first, second):
        charge.release()
    assert budget.held == 0


async def test_a_read_that_gives_up_takes_nothing_and_lets_the_next_one_in() -> None:
    budget = Budget(10 * MIB, read_room=0, read_wait=60)
    held = Charge(budget)
    assert held.take(10 * MIB, budget.most)
    large, small = Charge(budget), Charge(budget)
    large_read = asyncio.create_task(large.read(8 * MIB))
    small_read = asyncio.create_task(small.read(2 * MIB))
    await asyncio.sleep(0)
    held.shrink(7 * MIB)  # 3 MiB free: the large one waits, the small one behind it too
    await asyncio.sleep(0)
    assert not small_read.done()
    large_read.cancel()  # its client left
    with pytest.raises(asyncio.CancelledError):
        await large_read
    await small_read  # next in line, and it fits
    assert large.size == 0
    assert budget.held == 7 * MIB + 2 * MIB
    assert budget.waiting == 0


async def test_a_read_given_room_then_cancelled_before_it_ran_gives_it_back() -> None:
    budget = Budget(10 * MIB, read_room=0, read_wait=60)
    held = Charge(budget)
    assert held.take(10 * MIB, budget.most)
    charge = Charge(budget)
    reading = asyncio.create_task(charge.read(4 * MIB))
    await asyncio.sleep(0)
    held.release()  # the room is handed to the waiting read...
    reading.cancel()  # ...which is cancelled before it runs again
    with pytest.raises(asyncio.CancelledError):
        await reading
    assert charge.size == 0
    assert budget.held == 0


async def test_a_read_takes_the_room_there_is_up_to_its_most_and_waits_for_its_least() -> None:
    budget = Budget(16 * MIB, read_room=0, read_wait=60)
    assert budget.read_most == 8 * MIB  # reads keep half their room for their least
    # Room for its most: it takes that, and no more.
    full = Charge(budget)
    assert await full.read_up_to(MIB, 6 * MIB) == 6 * MIB
    # Less room than its most short of half: what there is of that half, at once.
    short = Charge(budget)
    assert await short.read_up_to(MIB, 6 * MIB) == 2 * MIB
    # Past half: its least, so that many reads at once each have theirs.
    least = [Charge(budget) for _ in range(4)]
    for charge in least:
        assert await charge.read_up_to(MIB // 2, 6 * MIB) == MIB // 2
    assert budget.held == 10 * MIB
    held = Charge(budget)
    assert held.take(6 * MIB, budget.most)
    # Not even its least: it waits for that, in turn, and takes that alone.
    waiting = asyncio.create_task(Charge(budget).read_up_to(MIB, 4 * MIB))
    behind = asyncio.create_task(Charge(budget).read_up_to(MIB // 2, 4 * MIB))
    await asyncio.sleep(0)
    assert budget.waiting == 2
    full.release()  # 6 MiB free: the first in line is given its least, then the next
    assert await waiting == MIB
    assert await behind == MIB // 2
    assert budget.held == 16 * MIB - 6 * MIB + MIB + MIB // 2
    # A charge already holding its most takes nothing more; a least above the most is
    # its most.
    assert await short.read_up_to(MIB, 2 * MIB) == 2 * MIB
    assert budget.held == 11 * MIB + MIB // 2
    assert await Charge(budget).read_up_to(4 * MIB, 2 * MIB) == 2 * MIB
    # Out of time, or larger than reads may ever hold: refused, and nothing taken.
    with pytest.raises(TooMuchInFlight):
        await Charge(Budget(10 * MIB, read_wait=0.01)).read_up_to(11 * MIB, 12 * MIB)
    tight = Budget(10 * MIB, read_wait=0.01)
    assert Charge(tight).take(10 * MIB - 1, tight.most)
    late = Charge(tight)
    with pytest.raises(TooMuchInFlight):
        await late.read_up_to(2, 4 * MIB)
    assert late.size == 0
    assert tight.held == 10 * MIB - 1
    assert tight.waiting == 0


async def test_a_read_out_of_time_is_refused_and_takes_nothing() -> None:
    budget = Budget(10 * MIB, read_room=0, read_wait=0.01)
    held = Charge(budget)
    assert held.take(10 * MIB, budget.most)
    charge = Charge(budget)
    with pytest.raises(TooMuchInFlight):
        await charge.read(MIB)
    assert charge.size == 0
    assert budget.held == 10 * MIB
    assert budget.waiting == 0
    held.release()
    assert budget.held == 0


def test_nothing_gives_back_more_than_was_taken() -> None:
    budget = Budget(MIB)
    with pytest.raises(ValueError, match="gave back 1 bytes of 0 held"):
        budget.give(1)
    charge = Charge(budget)
    assert charge.take_request(100)
    charge.shrink(500)  # no more than it holds: nothing to give back
    assert budget.held == 100
    charge.shrink(40)
    assert budget.held == 40 == charge.size


def test_a_charge_held_by_objects_is_given_back_when_the_last_is_gone() -> None:
    budget = Budget(MIB)
    charge = Charge(budget)
    assert charge.take_request(1000)
    rows, page = Holder(), Holder()
    charge.until_gone(rows)
    charge.until_gone(page)
    del rows
    assert budget.held == 1000
    del page
    assert budget.held == 0
    # Kept things live until the charge is released.
    kept = Charge(budget)
    assert kept.take_request(10)
    thing = Holder()
    watched = Charge(budget)
    assert watched.take_request(5)
    watched.until_gone(thing)
    kept.keep(thing)
    del thing
    assert budget.held == 15
    kept.release()
    assert budget.held == 0


# What a sequence of operations does, by name and arguments.
Op = tuple[Any, ...]
# Whole MiB, so that one release often makes exactly the room a waiting read needs.
SIZES = st.integers(min_value=0, max_value=12).map(lambda n: n * MIB)
OPS = st.lists(
    st.one_of(
        st.tuples(st.just("request"), SIZES),
        st.tuples(st.just("read now"), SIZES),
        st.tuples(st.just("read"), SIZES),
        st.tuples(st.just("read up to"), SIZES, SIZES),
        st.tuples(st.just("release"), st.integers(0, 40)),
        st.tuples(st.just("shrink"), st.integers(0, 40), SIZES),
        st.tuples(st.just("cancel"), st.integers(0, 40)),
        st.tuples(st.just("hold"), st.integers(0, 40)),
        st.tuples(st.just("drop"), st.integers(0, 40)),
        st.just(("step",)),
        st.just(("step",)),
    ),
    max_size=60,
)


@pytest.mark.slow
@settings(max_examples=300, deadline=None)
@given(OPS)
def test_the_budget_holds_exactly_what_its_charges_hold_whatever_happens(ops: list[Op]) -> None:
    asyncio.run(_run(ops))


async def _run(ops: list[Op]) -> None:
    budget = Budget(16 * MIB, read_room=4 * MIB, read_wait=60)
    charges: list[Charge] = []
    reads: list[asyncio.Task[None]] = []
    holders: list[list[Holder]] = []

    sizes: dict[asyncio.Task[None], int] = {}

    def check() -> None:
        assert 0 <= budget.held <= budget.most
        assert budget.held == sum(c.size for c in charges)
        # The first read still waiting has no room: had it any, it would have taken it.
        waiting = [size for read, size in sizes.items() if not read.done()]
        assert len(waiting) == budget.waiting
        if waiting:
            assert budget.held + waiting[0] > budget.read_ceiling

    for op in ops:
        kind = op[0]
        if kind == "request":
            charge = Charge(budget)
            before = budget.held
            if charge.take_request(op[1]):
                assert budget.held <= budget.ceiling(op[1])
            else:
                assert budget.held == before
            charges.append(charge)
        elif kind == "read now":
            charge = Charge(budget)
            if charge.fits(op[1]) and op[1]:
                assert budget.held <= budget.read_ceiling
            charges.append(charge)
        elif kind == "read":
            charge = Charge(budget)
            charges.append(charge)
            reads.append(asyncio.create_task(_read(charge, op[1])))
            sizes[reads[-1]] = op[1]
        elif kind == "read up to":
            charge = Charge(budget)
            charges.append(charge)
            least, most = min(op[1:]), max(op[1:])
            reads.append(asyncio.create_task(_read_up_to(charge, least, most)))
            sizes[reads[-1]] = least
        elif charges and kind in ("release", "shrink", "hold", "drop"):
            charge = charges[op[1] % len(charges)]
            if kind == "release":
                charge.release()
            elif kind == "shrink":
                charge.shrink(op[2])
            elif kind == "hold":
                holder = Holder()
                charge.until_gone(holder)
                holders.append([holder])
            elif holders:
                holders[op[1] % len(holders)].clear()  # the holder is gone
        elif reads and kind == "cancel":
            reads[op[1] % len(reads)].cancel()
        elif kind == "step":
            # What the operations since woke runs (a read given room, one cancelled and
            # handing it on), link by link; until then room may be given and not yet
            # taken up, or cancelled as it is given.
            for _ in range(len(reads) + 1):
                await asyncio.sleep(0)
            check()
    for read in reads:
        read.cancel()
    await asyncio.gather(*reads, return_exceptions=True)
    check()
    for charge in charges:
        charge.release()
    holders.clear()
    assert budget.held == 0
    assert budget.waiting == 0


async def _read(charge: Charge, size: int) -> None:
    try:
        await charge.read(size)
    except TooMuchInFlight:
        assert charge.size == 0 or size == 0


async def _read_up_to(charge: Charge, least: int, most: int) -> None:
    try:
        got = await charge.read_up_to(least, most)
    except TooMuchInFlight:
        assert charge.size == 0 or least == 0
        return
    # What there was room for, up to its most, and never less than its least unless
    # released meanwhile.
    assert got <= most
    assert got >= least or least == 0


def test_a_system_takes_its_share_then_borrows_while_half_the_budget_is_free() -> None:
    budget = Budget(16 * MIB, read_room=0, read_wait=0.01)
    alpha, beta = Share(budget, 4 * MIB), Share(budget, 4 * MIB)
    loud = Charge(budget, alpha)
    assert loud.take(4 * MIB, budget.most)  # its own
    assert loud.take(4 * MIB, budget.most)  # borrowed: half the budget is still free
    assert not loud.take(1, budget.most)  # no more: the other half is kept
    assert (alpha.held, budget.held) == (8 * MIB, 8 * MIB)
    # Beta takes its own whatever alpha borrowed, and borrows no further.
    quiet = Charge(budget, beta)
    assert quiet.take(4 * MIB, budget.most)
    assert not quiet.take(1, budget.most)
    assert budget.held == 12 * MIB
    # Given back, and counted out of each share.
    loud.release()
    quiet.release()
    assert (alpha.held, beta.held, budget.held) == (0, 0, 0)


async def test_a_systems_waiting_reads_hold_back_its_own_and_stop_others_borrowing() -> None:
    budget = Budget(16 * MIB, read_room=0, read_wait=60)
    alpha, beta = Share(budget, 8 * MIB), Share(budget, 8 * MIB)
    # Alpha borrows all but the half the budget keeps free, beta holds its own.
    held = Charge(budget, alpha)
    assert held.take(8 * MIB, budget.most)
    own = Charge(budget, beta)
    assert own.take(7 * MIB, budget.most)
    # Alpha's read waits for room: beta's read that fits goes ahead of it, in its own line.
    waiting = asyncio.create_task(Charge(budget, alpha).read(2 * MIB))
    await until(lambda: budget.waiting == 1, what="alpha's read waiting")
    assert Charge(budget, beta).fits(MIB)
    # While a read of beta's waits, alpha lends and never borrows.
    behind = asyncio.create_task(Charge(budget, beta).read(4 * MIB))
    await until(lambda: budget.waiting == 2, what="beta's read waiting behind it")
    assert alpha.room() == 0
    own.release()  # room for beta's read, which alpha's does not hold back
    await behind
    assert not waiting.done()
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert budget.waiting == 0


def test_a_large_body_promised_is_read_whole_and_the_next_is_refused_on_its_head() -> None:
    # Twelve of the largest pushes at once, charged only as they were read, once each
    # took part of the room and none could finish: a body promised is read whole.
    budget = Budget(16 * MIB, read_room=8 * MIB)
    first, second = Charge(budget), Charge(budget)
    assert first.vow(6 * MIB)
    assert not second.vow(6 * MIB)  # refused on its head: the room is promised
    assert budget.held == 0  # nothing held for what was only declared
    # Others take the rest, not what was promised.
    other = Charge(budget)
    assert other.take_request(SMALL_BYTES)
    assert not Charge(budget).take_request(budget.most - budget.held - 6 * MIB + 1)
    for _ in range(6):  # read a MiB at a time: never refused
        assert first.take_request(first.size + MIB)
    assert (budget.held, budget.promised) == (6 * MIB + SMALL_BYTES, 0)
    # What a body did not send is given back with its request.
    short = Charge(budget)
    assert short.vow(5 * MIB)
    assert short.take_request(MIB)
    assert not Charge(budget).vow(6 * MIB)
    short.release()
    first.release()
    assert (budget.held, budget.promised) == (SMALL_BYTES, 0)
    assert second.vow(6 * MIB)


def test_places_are_a_systems_own_then_borrowed_while_half_the_pool_is_free() -> None:
    pool = Places(10)
    alpha, beta = pool.share(2), pool.share(2, borrows=False)
    for _ in range(5):  # its 2, and 3 more while half the pool is free
        assert not alpha.full()
        alpha.take()
    assert alpha.full()
    # Beta's own are there whatever alpha borrowed; beta set its bound, and keeps to it.
    beta.take()
    beta.take()
    assert beta.full()
    assert (pool.open, alpha.open, beta.open) == (7, 5, 2)
    alpha.give()
    assert (pool.open, alpha.open) == (6, 4)


# Operations on two systems' shares: requests and reads of either, large bodies promised
# and read a piece at a time, releases.
SHARED_OPS = st.lists(
    st.one_of(
        st.tuples(st.just("request"), st.integers(0, 1), SIZES),
        st.tuples(st.just("read now"), st.integers(0, 1), SIZES),
        st.tuples(st.just("vow"), st.integers(0, 1), SIZES),
        st.tuples(st.just("body"), st.integers(0, 40), st.integers(1, 4)),
        st.tuples(st.just("release"), st.integers(0, 40)),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(SHARED_OPS)
def test_shares_and_promises_hold_exactly_what_their_charges_hold(ops: list[Op]) -> None:
    budget = Budget(16 * MIB, read_room=4 * MIB)
    shares = [Share(budget, 6 * MIB), Share(budget, 6 * MIB)]
    charges: list[Charge] = []
    for op in ops:
        kind = op[0]
        if kind in ("request", "read now", "vow"):
            charge = Charge(budget, shares[op[1]])
            if kind == "request":
                charge.take_request(op[2])
            elif kind == "read now":
                charge.fits(op[2])
            else:
                charge.vow(op[2])
            charges.append(charge)
        elif charges and kind == "body":
            # A body read a piece at a time: what was promised it is always taken.
            charge = charges[op[1] % len(charges)]
            piece = op[2] * MIB // 4
            promised = charge.promise
            taken = charge.take_request(charge.size + piece)
            assert taken or piece > promised
        elif charges and kind == "release":
            charges[op[1] % len(charges)].release()
        assert 0 <= budget.held <= budget.most
        assert budget.held == sum(c.size for c in charges)
        assert budget.promised == sum(c.promise for c in charges)
        assert budget.held + budget.promised <= budget.most
        for share in shares:
            mine = [c for c in charges if c.share is share]
            assert share.held == sum(c.size for c in mine)
            assert share.promised == sum(c.promise for c in mine)
    for charge in charges:
        charge.release()
    assert (budget.held, budget.promised) == (0, 0)
    assert [(s.held, s.promised) for s in shares] == [(0, 0), (0, 0)]


def test_a_systems_large_body_within_its_own_share_is_kept_whatever_another_promised() -> None:
    # The room reads leave large bodies was one pool: alpha's one slow largest push
    # filled it, and beta's large push was refused on its idle share.
    budget = Budget(16 * MIB, read_room=4 * MIB)  # 3 MiB for large bodies beside reads
    alpha, beta = Share(budget, 6 * MIB), Share(budget, 6 * MIB)
    slow = Charge(budget, alpha)
    assert slow.vow(3 * MIB)
    assert not Charge(budget, alpha).vow(4 * MIB)  # past its own, the pool being full
    assert not Charge(budget).vow(MIB)  # of no system's: the pool alone
    body = Charge(budget, beta)
    assert body.vow(5 * MIB)
    # Reads leave what was promised beyond their room: each body is read whole.
    assert budget.read_ceiling == budget.large_ceiling - 8 * MIB
    assert not Charge(budget, beta).fits(budget.read_ceiling + 1)
    assert body.take_request(5 * MIB)
    body.release()
    slow.release()
    assert budget.read_ceiling == budget.reads_most


def test_a_pool_that_keeps_own_admits_a_share_within_its_own_whatever_was_lent() -> None:
    # Followers hold their places for minutes: a system whose share was lent was
    # refused its own until the borrower's followers left.
    pool = Places(6, keeps_own=True)
    alpha, beta, gamma = pool.share(2), pool.share(2), pool.share(2)
    for _ in range(3):  # its 2, and 1 lent while half the pool is free
        alpha.take()
    assert alpha.full()
    for share in (beta, beta, gamma):
        assert not share.full()
        share.take()
    assert (pool.open, pool.lent) == (6, 1)
    assert not gamma.full()  # its own, beyond the pool by what was lent
    gamma.take()
    assert all(share.full() for share in (alpha, beta, gamma))
    assert (pool.open, pool.lent) == (7, 1)
    alpha.give()  # the lent place comes back as its holder leaves
    assert (pool.open, pool.lent) == (6, 0)
    assert alpha.full()  # the pool is full of places their owners hold
    # A pool that does not keep them (reads, exports) stays within its most.
    strict = Places(2)
    one, two = strict.share(1), strict.share(1)
    one.take()
    one.take()
    assert two.full()
