"""Write-through: own acknowledged writes applied at once, in batches, bounded."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence

import pytest

from gateway.store import StoreError
from gateway.write_through import WriteThrough
from replication.schema import MemoryEvent, encode
from replication.testing import Replica


def _events(n: int) -> list[tuple[MemoryEvent, bytes]]:
    replica = Replica("r1")
    out = []
    for i in range(n):
        event = replica.write(f"m{i}", "fact", "create", user="u1", content=str(i))
        assert event is not None
        out.append((event, encode(event)))
    return out


@contextlib.asynccontextmanager
async def _running(
    wt: WriteThrough, events: list[tuple[MemoryEvent, bytes]]
) -> AsyncIterator[None]:
    """The write-through loop running, with ``events`` offered together."""
    task = asyncio.create_task(wt.run())
    try:
        for event, raw in events:
            wt.offer(event, raw)
        yield
    finally:
        task.cancel()


async def test_events_offered_together_are_applied_in_one_batch_in_order() -> None:
    batches: list[list[str]] = []
    applied = asyncio.Event()

    async def apply(events: Sequence[tuple[MemoryEvent, bytes]]) -> None:
        batches.append([e.key for e, _ in events])
        applied.set()

    wt = WriteThrough(apply, limit=100, batch=10)
    events = _events(3)
    async with _running(wt, events):
        await asyncio.wait_for(applied.wait(), 5)
        assert batches == [[e.key for e, _ in events]]
        assert len(wt) == 0


async def test_a_full_queue_drops_and_counts_instead_of_growing() -> None:
    dropped: list[int] = []

    async def apply(_events: Sequence[tuple[MemoryEvent, bytes]]) -> None:
        pass

    wt = WriteThrough(apply, limit=2, batch=10, on_drop=dropped.append)
    for event, raw in _events(3):  # nothing runs the queue yet
        wt.offer(event, raw)
    assert len(wt) == 2 and dropped == [1]


async def test_a_failed_apply_is_counted_and_the_loop_carries_on() -> None:
    dropped: list[int] = []
    applied: list[int] = []
    all_seen = asyncio.Event()

    def drop(n: int) -> None:
        dropped.append(n)

    async def apply(events: Sequence[tuple[MemoryEvent, bytes]]) -> None:
        if not applied and not dropped:
            raise StoreError("the store is away")
        applied.append(len(events))
        all_seen.set()

    wt = WriteThrough(apply, limit=100, batch=2, on_drop=drop)
    async with _running(wt, _events(3)):
        await asyncio.wait_for(all_seen.wait(), 5)
        assert dropped == [2] and applied == [1]  # batches of at most 2; the first failed


def test_limits_must_be_positive() -> None:
    async def apply(_events: Sequence[tuple[MemoryEvent, bytes]]) -> None:
        pass

    with pytest.raises(ValueError, match="at least 1"):
        WriteThrough(apply, limit=0)
