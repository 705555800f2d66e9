"""The ledger's counts as replays and redeliveries of rejections meet it, on every store
that keeps one (docs/producers.md "The ledger": a rejection fixed and replayed under its
message id and sequence is counted stored, its epoch's `rejected` one less, never twice;
under another sequence, as any message is)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from app.store import Store
from app.store.producers import EpochEntry
from tests.store_contract.test_contract import epochs, sequenced


def entry_of(found: list[EpochEntry], epoch: int = 0) -> EpochEntry:
    (entry,) = [e for e in found if e.epoch == epoch]
    return entry


async def test_a_rejection_replayed_twice_in_one_batch_and_still_rejected_is_counted_once(
    store: Store,
) -> None:
    if store.completeness is None:
        return
    await store.append(
        [sequenced("r-0", 0), sequenced("r-1", 1, rejected=True), sequenced("r-2", 2)]
    )
    # Replayed unfixed (rejected again), then fixed twice over in one batch, with the
    # rejection redelivered between them.
    await store.append([sequenced("r-1", 1, rejected=True)])
    await store.append(
        [
            sequenced("r-1", 1),
            sequenced("r-1", 1, rejected=True),
            sequenced("r-1", 1),
            sequenced("r-3", 3),
        ]
    )
    await store.barrier()
    assert await store.seen(["r-1"]) == {"r-1": "stored"}
    entry = entry_of(await epochs(store))
    assert (entry.contiguous, entry.stored, entry.rejected) == (3, 4, 0)
    assert (entry.duplicates, entry.conflicts) == (0, 0)


async def test_a_rejection_fixed_into_another_epoch_takes_nothing_from_that_epochs_count(
    store: Store,
) -> None:
    """Fixed under a sequence of another epoch that another message holds: that epoch's
    own rejection stays counted (its `rejected` is not the replayed message's)."""
    if store.completeness is None:
        return
    await store.append([sequenced("e-0", 0), sequenced("e-1", 1, rejected=True)])
    await store.append([sequenced("n-0", 0, epoch=1), sequenced("n-1", 1, epoch=1, rejected=True)])
    await store.append([sequenced("e-1", 0, epoch=1)])
    await store.barrier()
    assert await store.seen(["e-1", "n-1"]) == {"e-1": "stored", "n-1": "rejected"}
    # n-1 is still a rejection of epoch 1.
    assert entry_of(await epochs(store), 1).rejected == 1


@pytest.mark.parametrize("concurrent", [False, True], ids=["one-after-another", "at-once"])
async def test_a_replay_on_two_instances_is_counted_once(
    make: Callable[[int], Store], request: pytest.FixtureRequest, concurrent: bool
) -> None:
    kind = request.node.callspec.params["make"]
    if kind not in ("duckdb", "serving") or (concurrent and kind != "serving"):
        return  # one process holds a DuckDB file; memory: is no file to share
    first = make(0)
    await first.start()
    try:
        if first.completeness is None:
            return
        await first.append(
            [sequenced("i-0", 0), sequenced("i-1", 1, rejected=True), sequenced("i-2", 2)]
        )
        if not concurrent:
            await first.append([sequenced("i-1", 1)])
            await first.barrier()
            await first.close()
        second = make(0)
        await second.start()
        try:
            if concurrent:
                await asyncio.gather(
                    first.append([sequenced("i-1", 1)]), second.append([sequenced("i-1", 1)])
                )
            else:
                await second.append([sequenced("i-1", 1)])
            await second.barrier()
            assert await second.seen(["i-1"]) == {"i-1": "stored"}
            entry = entry_of(await epochs(second))
            assert (entry.stored, entry.rejected) == (3, 0)
        finally:
            await second.close()
    finally:
        if concurrent:
            await first.close()
