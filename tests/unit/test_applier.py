"""The applier: fan-out does not wait for the store; a failed store write is retried whole."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any, cast

from gateway.applier import Applier
from gateway.cache import StateCache
from gateway.metrics import Metrics
from gateway.service import MemoryService, SeqTracker
from gateway.store import StoreError
from gateway.testing import InMemoryStore
from replication.clock import HybridClock
from replication.dvv import Dot, context_of
from replication.merge import join
from replication.schema import MemoryEvent, encode
from replication.state import MemoryState
from replication.testing import Replica


@dataclass
class _Record:
    value: bytes
    topic: str = "memsync.events"
    partition: int = 0
    offset: int = 0
    headers: tuple[tuple[str, bytes], ...] = ()


class _Service:
    """What the applier uses of the memory service."""

    def __init__(self) -> None:
        self.cache = StateCache(1 << 20)
        self.clock = HybridClock(lambda: int(time.time() * 1000))

    def remember(self, state: MemoryState) -> None:
        old = self.cache.peek(state.key)
        self.cache.put(state if old is None else join(old, state))


class _Store(InMemoryStore):
    """The in-memory store, with a write that fails or waits on demand."""

    def __init__(self) -> None:
        super().__init__()
        self.fail_next = False
        self.gate: asyncio.Event | None = None

    async def put_many(self, states: list[MemoryState]) -> None:
        if self.gate is not None:
            await self.gate.wait()
        if self.fail_next:
            self.fail_next = False
            raise StoreError("the store is away")
        await super().put_many(states)


class _Dlq:
    async def send(self, record: Any, reason: str) -> None:
        raise AssertionError(f"dead-lettered: {reason}")


def _applier() -> tuple[Applier, _Store, _Service, SeqTracker, list[list[MemoryEvent]]]:
    store, service, tracker = _Store(), _Service(), SeqTracker()
    seen: list[list[MemoryEvent]] = []

    async def listener(batch: list[tuple[MemoryEvent, bytes, MemoryState]], _: Any) -> None:
        seen.append([e for e, _, _ in batch])

    applier = Applier(
        name="local", reader=cast(Any, None), store=store,
        service=cast(MemoryService, service), tracker=tracker, dead_letters=_Dlq(),
        metrics=Metrics("r"),
    )  # fmt: skip
    applier.batch_listeners.append(listener)
    return applier, store, service, tracker, seen


def _event() -> MemoryEvent:
    event = Replica("r1").write("m1", "fact", "create", user="u1", content="hello")
    assert event is not None
    return event


async def test_listeners_get_the_batch_before_the_store_write_completes() -> None:
    applier, store, service, tracker, seen = _applier()
    store.gate = asyncio.Event()
    event = _event()
    task = asyncio.create_task(applier.apply_batch([_Record(encode(event))]))
    await asyncio.sleep(0.05)
    assert seen == [[event]] and not task.done()  # fanned out, the store still writing
    assert service.cache.peek(event.key) is not None  # and reads see it
    assert not tracker.covers(context_of([Dot("r1", event.seq)]))  # read-your-writes waits
    store.gate.set()
    await asyncio.wait_for(task, 5)
    assert tracker.covers(context_of([Dot("r1", event.seq)]))
    assert (await store.get(event.key)) is not None


async def test_a_failed_store_write_leaves_the_cache_and_is_written_on_retry() -> None:
    applier, store, service, tracker, seen = _applier()
    store.fail_next = True
    event = _event()
    record = _Record(encode(event))
    try:
        await applier.apply_batch([record])
    except StoreError:
        pass
    else:
        raise AssertionError("the store failure was not raised")
    assert service.cache.peek(event.key) is None  # else the retry would find nothing to write
    assert not tracker.covers(context_of([Dot("r1", event.seq)]))
    await applier.apply_batch([record])
    stored = await store.get(event.key)
    assert stored is not None and stored == service.cache.peek(event.key)
    assert tracker.covers(context_of([Dot("r1", event.seq)]))
    assert seen == [[event], [event]]  # listeners deduplicate (the history does)
