"""The applier: fan-out does not wait for the store; a failed store write is retried whole."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest

from gateway.applier import Applier
from gateway.auth import Claims
from gateway.cache import StateCache
from gateway.fanout import Fanout, Subscription
from gateway.history import History
from gateway.known_keys import KnownKeys
from gateway.metrics import Metrics
from gateway.service import MemoryService, SeqTracker
from gateway.state_digest import RunningDigest
from gateway.store import StoreError
from gateway.streams import Streams
from gateway.testing import InMemoryStore
from replication.clock import HybridClock
from replication.digest import SetDigest
from replication.dvv import EMPTY, Dot, DotContext, context_of
from replication.events import make_event
from replication.merge import apply, join
from replication.schema import MemoryBody, MemoryEvent, Ops, Source, encode
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

    def note_known(self, key: str) -> None:
        pass


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


def _applier(
    metrics: Metrics | None = None,
) -> tuple[Applier, _Store, _Service, SeqTracker, list[list[MemoryEvent]]]:
    store, service, tracker = _Store(), _Service(), SeqTracker()
    seen: list[list[MemoryEvent]] = []

    async def listener(batch: list[tuple[MemoryEvent, bytes, MemoryState, Any]], _: Any) -> None:
        seen.append([e for e, _, _, _ in batch])

    applier = Applier(
        name="local", reader=cast(Any, None), store=store,
        service=cast(MemoryService, service), tracker=tracker, dead_letters=_Dlq(),
        metrics=metrics or Metrics("r"),
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


def _shared_then_private() -> tuple[MemoryEvent, MemoryEvent]:
    """A memory shared with its tenant, then made private with new content."""
    clock = HybridClock(lambda: 1_700_000_000_000, max_drift_ms=10**12)

    def event(n: int, *, shared: bool, content: str, context: DotContext) -> MemoryEvent:
        body = MemoryBody(
            id="m1", tenant_id="t1", user_id="alice", kind="fact", policy="lww",
            content=content, shared=shared,
        )  # fmt: skip
        return make_event(
            event_id=f"e{n}", event_type="create" if n == 1 else "update", memory=body,
            source=Source(agent_id="a", region="r"), context=context, dot=Dot("r1", n),
            seq=n, timestamp=clock.now(), ops=Ops(fields=True),
        )  # fmt: skip

    first = event(1, shared=True, content="team lunch friday", context=EMPTY)
    return first, event(2, shared=False, content="SECRET", context=apply(None, first).clock)


async def test_listeners_get_each_event_with_the_state_right_after_it() -> None:
    applier, _, _, _, _ = _applier()
    got: list[list[MemoryState]] = []

    async def listener(batch: list[tuple[MemoryEvent, bytes, MemoryState, Any]], _: Any) -> None:
        got.append([state for _, _, state, _ in batch])

    applier.batch_listeners.append(listener)
    shared, private = _shared_then_private()
    other = Replica("r2").write("m2", "fact", "create", user="u1", content="another")
    assert other is not None
    await applier.apply_batch([_Record(encode(e)) for e in (shared, other, private, shared)])
    after_shared = apply(None, shared)
    after_private = apply(after_shared, private)
    # The duplicate at the end gets the state it found: the one after the private update.
    assert got == [[after_shared, apply(None, other), after_private, after_private]]


async def test_a_lazy_tenant_subscriber_never_gets_a_state_made_private_later_in_the_batch(
    tmp_path: Path,
) -> None:
    """I7: the coalesced state with the shared event is the state after it, not the batch's;
    and the private update that follows replaces it with a content-free ``left``."""
    applier, _, _, _, _ = _applier()
    history = History(tmp_path / "h.sqlite3", "h1", b"k" * 32, max_events=1000)
    await history.open()
    fanout = Fanout(10)
    applier.batch_listeners.append(Streams(history, fanout).on_batch)
    claims = Claims(sub="b", tenant="t1", users=("bob",), scope=frozenset({"subscribe"}), exp=0)
    bob = Subscription(claims=claims, channels=("tenant:t1:shared",), mode="lazy")
    fanout.add(bob)
    try:
        await applier.apply_batch([_Record(encode(e)) for e in _shared_then_private()])
        ((message, _),) = bob.take(flush_lazy=True)
        assert b"SECRET" not in message
        assert b'"events":[],"states":[],"left":[{"id":"m1","key":"t1/m1"}]' in message
    finally:
        await history.close()


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


class _Reader:
    """Scripted reads (then nothing, forever); records what is committed."""

    def __init__(self, script: list[list[_Record]]) -> None:
        self.script = script
        self.commits: list[list[tuple[int, int]]] = []
        self.drained = asyncio.Event()

    async def read(self, max_records: int, timeout_ms: int) -> list[_Record]:
        if self.script:
            return self.script.pop(0)
        self.drained.set()
        await asyncio.sleep(timeout_ms / 1000)
        return []

    async def commit(self, records: list[_Record]) -> None:
        self.commits.append(sorted((r.partition, r.offset) for r in records))


def _make(
    store: InMemoryStore,
    service: _Service,
    tracker: SeqTracker,
    *,
    reader: Any = None,
    metrics: Metrics | None = None,
    **options: Any,
) -> Applier:
    return Applier(
        name="local", reader=reader, store=store, service=cast(MemoryService, service),
        tracker=tracker, dead_letters=_Dlq(), metrics=metrics or Metrics("r"), **options,
    )  # fmt: skip


async def _run_until_drained(applier: Applier, reader: _Reader) -> None:
    """Run the applier until its scripted reads are done and the quiet log was committed."""
    task = asyncio.create_task(applier.run())
    try:
        await asyncio.wait_for(reader.drained.wait(), 5)
        await asyncio.sleep(0.05)
    finally:
        task.cancel()


def _creates(replica: Replica, n: int) -> list[MemoryEvent]:
    out = []
    for i in range(n):
        event = replica.write(f"m{i}", "fact", "create", user="u1", content=str(i))
        assert event is not None
        out.append(event)
    return out


async def test_offsets_are_committed_once_for_several_batches_and_when_the_log_goes_quiet() -> None:
    replica = Replica("r1")
    records = [
        _Record(encode(e), partition=n % 2, offset=n // 2)
        for n, e in enumerate(_creates(replica, 6))
    ]
    reader = _Reader([records[0:2], records[2:4], records[4:6]])
    store = _Store()
    applier = _make(store, _Service(), SeqTracker(), reader=reader, poll_ms=10, commit_every=60)
    await _run_until_drained(applier, reader)
    # Three batches, one commit (the log went quiet): the last record of each partition.
    assert reader.commits == [[(0, 2), (1, 2)]]
    for key in replica.states:
        assert await store.get(key) is not None  # every batch applied before its commit


class _CountingStore(_Store):
    """Counts reads and metadata writes."""

    def __init__(self, calls: list[str] | None = None) -> None:
        super().__init__()
        self.reads: list[list[str]] = []
        self.calls = calls if calls is not None else []

    async def get_many(self, keys: list[str]) -> dict[str, MemoryState]:
        self.reads.append(list(keys))
        return await super().get_many(keys)

    async def put_many(self, states: list[MemoryState]) -> None:
        self.calls.append("put_many")
        await super().put_many(states)

    async def put_meta(self, name: str, value: bytes) -> None:
        self.calls.append("put_meta")
        await super().put_meta(name, value)


def _counted(metrics: Metrics, name: str) -> float:
    value = metrics.registry.get_sample_value(name)
    return 0.0 if value is None else value


async def test_a_written_through_event_is_applied_once_and_its_delivery_is_a_duplicate() -> None:
    metrics = Metrics("r")
    applier, store, service, tracker, seen = _applier(metrics)
    event = _event()
    raw = encode(event)
    await applier.apply_written([(event, raw)])
    state = service.cache.peek(event.key)
    assert state is not None and (await store.get(event.key)) == state
    assert tracker.covers(context_of([Dot("r1", event.seq)]))  # read-your-writes at once
    assert seen == [[event]]
    assert applier.applied_total == 0  # the log's delivery is what is counted
    assert _counted(metrics, "memsync_events_written_through_total") == 1
    assert await applier.apply_batch([_Record(raw)]) == []  # the delivery changes nothing
    assert service.cache.peek(event.key) is state
    assert applier.applied_total == 1
    assert _counted(metrics, "memsync_events_duplicate_total") == 1
    assert seen == [[event], [event]]  # listeners deduplicate (the history does)


async def test_keys_never_seen_are_not_read_from_the_store() -> None:
    store = _CountingStore()
    known = KnownKeys(capacity=1000)
    applier = _make(store, _Service(), SeqTracker(), known=known)
    replica = Replica("r1")
    new = replica.write("new", "fact", "create", user="u1", content="a")
    old = replica.write("old", "fact", "create", user="u1", content="b")
    assert new is not None and old is not None
    known.add(old.key)  # as the start-up scan of the store would
    await applier.apply_batch([_Record(encode(new)), _Record(encode(old))])
    assert store.reads == [[old.key]]  # only the key the store may hold
    assert (await store.get(new.key)) is not None and (await store.get(old.key)) is not None


async def test_a_batch_of_duplicates_writes_nothing_to_the_store() -> None:
    store = _CountingStore()
    applier = _make(store, _Service(), SeqTracker())
    record = _Record(encode(_event()))
    await applier.apply_batch([record])
    assert store.calls == ["put_many"]
    await applier.apply_batch([record])  # a duplicate
    assert store.calls == ["put_many"]


class _OrderedReader(_Reader):
    """A scripted reader whose commits are noted in a shared call log."""

    def __init__(self, script: list[list[_Record]], calls: list[str]) -> None:
        super().__init__(script)
        self.calls = calls

    async def commit(self, records: list[_Record]) -> None:
        self.calls.append("commit")
        await super().commit(records)


async def test_the_applied_set_is_written_once_before_each_commit_and_restored() -> None:
    records = [_Record(encode(e), offset=n) for n, e in enumerate(_creates(Replica("r1"), 4))]
    calls: list[str] = []
    reader = _OrderedReader([records[0:2], records[2:4]], calls)
    store, tracker = _CountingStore(calls), SeqTracker()
    applier = _make(store, _Service(), tracker, reader=reader, poll_ms=10, commit_every=60)
    await _run_until_drained(applier, reader)
    # Two batches, one commit when the log went quiet, the applied set just before it.
    assert calls == ["put_many", "put_many", "put_meta", "commit"]
    restarted = SeqTracker()
    await _make(store, _Service(), restarted).load_applied()
    assert restarted.applied == tracker.applied
    assert restarted.covers(context_of([Dot("r1", 4)]))


# -- the state digest across failed store writes -----------------------------------


class _FlakyStore(InMemoryStore):
    """A store whose writes fail on demand, after landing (``landed``) or before."""

    def __init__(self) -> None:
        super().__init__()
        self.fail: list[bool] = []  # per coming put_many: True lands then fails, False fails
        self.fail_scans = 0  # scans to fail after their first page

    async def scan(self, offset: str | None, limit: int) -> tuple[list[MemoryState], str | None]:
        if offset is not None and self.fail_scans:
            self.fail_scans -= 1
            raise StoreError("the store went away during a scan")
        return await super().scan(offset, limit)

    async def put_many(self, states: Sequence[MemoryState]) -> None:
        if self.fail:
            landed = self.fail.pop(0)
            if landed:
                await super().put_many(states)
            raise StoreError("the store timed out")
        await super().put_many(states)


async def _scanned(store: InMemoryStore) -> SetDigest:
    """The digest of what the store holds, from a full scan (the start-up build)."""
    digest, offset = RunningDigest(buckets=16), None
    while True:
        states, offset = await store.scan(offset, 7)
        digest.add_all(states)
        if offset is None:
            return digest.snapshot()


def _flaky(**options: Any) -> tuple[Applier, _FlakyStore, RunningDigest]:
    store, digest = _FlakyStore(), RunningDigest(buckets=16, **options)
    return _make(store, _Service(), SeqTracker(), digest=digest), store, digest


async def _apply_retrying(applier: Applier, records: list[_Record]) -> None:
    while True:  # as the applier's run loop does
        try:
            await applier.apply_batch(records)
        except StoreError:
            continue
        return


@pytest.mark.parametrize("landed", [True, False], ids=["write-landed", "write-lost"])
async def test_a_failed_store_write_leaves_the_digest_equal_to_the_store(landed: bool) -> None:
    applier, store, digest = _flaky()
    replica = Replica("r1")
    first = _creates(replica, 3)
    await applier.apply_batch([_Record(encode(e)) for e in first])
    update = replica.write("m1", "fact", "update", content="changed")
    assert update is not None
    store.fail = [landed]
    await _apply_retrying(applier, [_Record(encode(update)), _Record(encode(first[0]))])
    assert digest.snapshot() == await _scanned(store)
    assert not digest.has_doubts


async def test_a_failed_write_through_is_settled_when_the_log_is_quiet() -> None:
    applier, store, digest = _flaky()
    events = _creates(Replica("r1"), 4)
    store.fail = [True]  # landed, yet the write-through saw it fail and gave up
    with pytest.raises(StoreError):
        await applier.apply_written([(e, encode(e)) for e in events])
    assert sorted(digest.doubts) == sorted(e.key for e in events)
    assert digest.snapshot() != await _scanned(store)  # what the old code kept for good
    reader = _Reader([])
    await _run_until_drained(_make(store, _Service(), SeqTracker(), reader=reader,
                                   digest=digest, poll_ms=10), reader)  # fmt: skip
    assert digest.snapshot() == await _scanned(store)
    assert not digest.has_doubts


async def test_a_failed_state_repair_leaves_the_digest_equal_to_the_store() -> None:
    applier, store, digest = _flaky()
    replica = Replica("r1")
    events = _creates(replica, 3)
    await applier.apply_batch([_Record(encode(e)) for e in events[:1]])
    store.fail = [True]
    with pytest.raises(StoreError):
        await applier.merge_states([replica.states[e.key] for e in events])
    await applier.mend_digest()
    assert digest.snapshot() == await _scanned(store)
    store.fail = [False]  # a repair lost before the store: the digest counts no more
    more = [replica.write(f"n{i}", "fact", "create", content="new") for i in range(2)]
    with pytest.raises(StoreError):
        await applier.merge_states([replica.states[e.key] for e in more if e is not None])
    assert digest.snapshot() == await _scanned(store)
    await applier.mend_digest()
    assert digest.snapshot() == await _scanned(store) and not digest.has_doubts


async def test_too_many_doubts_make_the_digest_stale_and_a_scan_rebuilds_it() -> None:
    applier, store, digest = _flaky(max_doubts=2)
    store.fail = [True]
    with pytest.raises(StoreError):
        await applier.apply_written([(e, encode(e)) for e in _creates(Replica("r1"), 5)])
    assert digest.stale and not digest.has_doubts
    await applier.mend_digest()
    assert not digest.stale
    assert digest.snapshot() == await _scanned(store) and digest.count == 5


async def test_a_listener_failing_after_the_store_write_leaves_the_digest_right() -> None:
    applier, store, digest = _flaky()
    failures = [True]

    async def history(batch: Any, frontier: Any) -> None:
        await asyncio.sleep(0.01)  # the store write lands meanwhile
        if failures:
            failures.pop()
            raise StoreError("the history is away")

    applier.batch_listeners.append(history)
    records = [_Record(encode(e)) for e in _creates(Replica("r1"), 3)]
    await _apply_retrying(applier, records)
    assert digest.snapshot() == await _scanned(store)


async def test_random_store_failures_never_leave_the_digest_or_the_store_off() -> None:
    rng = random.Random(7)
    applier, store, digest = _flaky(max_doubts=8)
    replica, peer = Replica("r1"), Replica("r2")
    stale_seen, written = 0, []
    for round_ in range(120):
        source = peer if rng.random() < 0.2 else replica
        events = []
        for memory_id in (f"m{rng.randrange(40)}" for _ in range(rng.randint(1, 6))):
            op = "update" if f"t1/{memory_id}" in source.states else "create"
            event = source.write(memory_id, "fact", op, content=f"{round_}")
            if event is not None:
                events.append(event)
        if source is replica:
            written += events
        store.fail = [rng.random() < 0.5 for _ in range(rng.choice([0, 0, 1, 2]))]
        how = rng.random()
        with contextlib.suppress(StoreError):
            if source is peer:  # a state repair from a peer region
                await applier.merge_states([peer.states[e.key] for e in events])
            elif how < 0.3:
                await applier.apply_written([(e, encode(e)) for e in events])
            else:
                await _apply_retrying(applier, [_Record(encode(e)) for e in events])
        stale_seen += digest.stale
        if rng.random() < 0.2:
            with contextlib.suppress(StoreError):
                await applier.mend_digest()
    store.fail = []
    # What the log and anti-entropy bring again in the end: every event, every repair.
    await _apply_retrying(applier, [_Record(encode(e)) for e in written])
    await applier.merge_states(list(peer.states.values()))
    await applier.mend_digest()
    assert stale_seen, "the run should have gone stale at least once"
    assert digest.snapshot() == await _scanned(store)
    for key, state in replica.states.items():
        stored = await store.get(key)
        assert stored is not None
        assert join(stored, state) == stored  # nothing applied was lost by the store


@pytest.mark.parametrize("racing_read", [False, True], ids=["quiet", "racing-read"])
async def test_a_failed_repair_then_a_new_event_keeps_the_repair(racing_read: bool) -> None:
    applier, store, digest = _flaky()
    replica, peer = Replica("r1"), Replica("r2")
    created = replica.write("m1", "list", "create", items=["a"])
    assert created is not None
    await applier.apply_batch([_Record(encode(created))])
    before = await store.get(created.key)
    assert before is not None
    peer.receive(created)
    assert peer.write("m1", "list", "add", items=["b"]) is not None
    store.fail = [True]  # the repair lands, then fails
    with pytest.raises(StoreError):
        await applier.merge_states([peer.states[created.key]])
    if racing_read:  # a read that started before the repair landed refills the cache
        cast(_Service, applier._service).cache.put(before)
    await applier.mend_digest()
    more = replica.write("m1", "list", "add", items=["c"])
    assert more is not None
    await applier.apply_batch([_Record(encode(more))])
    stored = await store.get(created.key)
    assert stored is not None
    assert join(stored, peer.states[created.key]) == stored  # the repair is still there
    assert digest.snapshot() == await _scanned(store)


async def test_a_rebuild_that_fails_midway_stays_stale_and_is_done_again() -> None:
    applier, store, digest = _flaky(max_doubts=1)
    await applier.apply_batch([_Record(encode(e)) for e in _creates(Replica("r9"), 20)])
    store.fail = [True]
    with pytest.raises(StoreError):
        await applier.apply_written([(e, encode(e)) for e in _creates(Replica("r1"), 3)])
    assert digest.stale
    store.fail_scans = 1
    with pytest.raises(StoreError):
        await applier.mend_digest(page=5)
    assert digest.stale  # not half rebuilt, not taken for whole
    await applier.mend_digest(page=5)
    assert not digest.stale
    assert digest.snapshot() == await _scanned(store)


async def test_a_mend_while_the_store_still_fails_waits_and_then_settles() -> None:
    applier, store, digest = _flaky()
    store.fail = [True]
    with pytest.raises(StoreError):
        await applier.apply_written([(e, encode(e)) for e in _creates(Replica("r1"), 2)])
    reads = store.get_many

    async def away(keys: Sequence[str]) -> dict[str, MemoryState]:
        raise StoreError("the store is away")

    store.get_many = away  # type: ignore[method-assign]
    await applier._mend_digest_after_failures()  # logged, not raised
    assert digest.has_doubts
    store.get_many = reads  # type: ignore[method-assign]
    await applier._mend_digest_after_failures()  # within the second: not tried again
    assert digest.has_doubts
    applier._mend_after = 0.0
    await applier._mend_digest_after_failures()
    assert not digest.has_doubts and digest.snapshot() == await _scanned(store)


async def test_appliers_sharing_a_stale_digest_rebuild_it_once() -> None:
    applier, store, digest = _flaky(max_doubts=1)
    other = _make(store, _Service(), SeqTracker(), digest=digest, lock=applier.lock)
    store.fail = [True]
    with pytest.raises(StoreError):
        await applier.apply_written([(e, encode(e)) for e in _creates(Replica("r1"), 3)])
    assert digest.stale
    scans = 0
    scan = store.scan

    async def counted(offset: str | None, limit: int) -> tuple[list[MemoryState], str | None]:
        nonlocal scans
        scans += offset is None
        await asyncio.sleep(0.01)  # a real store answers later: the other applier runs
        return await scan(offset, limit)

    store.scan = counted  # type: ignore[method-assign]
    await asyncio.gather(applier.mend_digest(page=2), other.mend_digest(page=2))
    assert scans == 1 and not digest.stale
    assert digest.snapshot() == await _scanned(store)
