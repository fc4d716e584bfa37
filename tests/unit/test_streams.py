"""Streams: batches reach subscribers in index order, and a failed history write is not lost."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from pathlib import Path
from typing import cast

import msgspec
import pytest

from gateway.errors import UnavailableError
from gateway.fanout import Delivery, Fanout, FanoutStats
from gateway.history import Cursor, History
from gateway.leaving import Leaving, routed
from gateway.streams import Streams
from replication import dvv
from replication.dvv import EMPTY, Dot
from replication.gaps import MAX_LOOSE_SEQS
from replication.merge import apply
from replication.routing import channels_for
from replication.schema import MemoryEvent, encode
from replication.state import MemoryState, materialize
from replication.testing import Replica
from tests.unit.sqlite_faults import fail_writes, heal

KEY = b"k" * 32

Batch = list[tuple[MemoryEvent, bytes, MemoryState, MemoryState | None]]


class _Published:
    """The fan-out's twin: what was published, in order."""

    def __init__(self) -> None:
        self.deliveries: list[Delivery] = []
        self.states: list[MemoryState] = []
        self.left: list[tuple[MemoryState, Leaving]] = []
        self.stats = FanoutStats()

    def publish(self, deliveries: Iterable[Delivery]) -> None:
        self.deliveries.extend(deliveries)

    def publish_states(
        self,
        items: Iterable[tuple[MemoryState, tuple[str, ...], bool, bytes]],
        left: Iterable[tuple[MemoryState, Leaving]] = (),
    ) -> None:
        self.states.extend(state for state, _, _, _ in items)
        self.left.extend(left)


def _batch(replica: Replica, first: int, n: int) -> Batch:
    out: Batch = []
    for i in range(first, first + n):
        event = replica.write(f"m{i}", "fact", "create", content=f"note {i}")
        assert event is not None
        out.append((event, encode(event), apply(None, event), None))
    return out


def _shared(event: MemoryEvent | None, shared: bool) -> MemoryEvent:
    """``event`` as if its writer had set ``shared`` (channels routed again)."""
    assert event is not None
    memory = msgspec.structs.replace(event.memory, shared=shared)
    channels = channels_for(tenant_id=memory.tenant_id, user_id=memory.user_id,
                            topics=memory.topics, shared=shared)  # fmt: skip
    return msgspec.structs.replace(event, memory=memory, channels=channels)


def _dot(event: MemoryEvent) -> Dot:
    """The event's position in the cursor space."""
    return Dot(event.dot.replica, event.seq)


def _everything(_tenant: str, _channels: tuple[str, ...]) -> bool:
    return True


async def _streams(path: Path, *, max_loose: int = MAX_LOOSE_SEQS) -> tuple[Streams, _Published]:
    history = History(path, "h1", KEY, max_events=100_000, max_loose=max_loose)
    await history.open()
    published = _Published()
    return Streams(history, cast(Fanout, published)), published


async def test_a_batch_waiting_for_its_reservation_is_not_overtaken_by_a_later_stamp(
    tmp_path: Path,
) -> None:
    """Two appliers without a shared lock: publication follows index order, so no
    cursor a subscriber holds is past a batch it has not been sent."""
    streams, published = await _streams(tmp_path / "h.sqlite3")
    history = streams.history
    try:
        big = _batch(Replica("r1"), 0, 1001)  # past the reservation made at open
        small = _batch(Replica("r2"), 5000, 1)  # fits it
        waiting = asyncio.create_task(streams.on_batch(big, EMPTY))
        await asyncio.sleep(0)  # it waits: for its reservation (or for its write)
        deadline = time.monotonic() + 10
        while not history.fits(len(small)):  # until the small one would go at once
            assert time.monotonic() < deadline, "the reservation never moved"
            await asyncio.sleep(0)
        await streams.on_batch(small, EMPTY)
        await waiting
        idx = [history.decode_cursor(d.cursor).idx for d in published.deliveries]
        assert idx == sorted(idx) and len(idx) == 1002
        for at in (0, 500, 1001):  # resuming from any delivery's cursor: exactly what followed
            cursor = history.decode_cursor(published.deliveries[at].cursor)
            replayed, _, _ = await history.replay(cursor, _everything, 5000)
            assert [e.dot for e in replayed] == [d.dot for d in published.deliveries[at + 1 :]]
    finally:
        await history.close()


async def test_a_batch_whose_history_write_failed_is_written_when_it_is_retried(
    tmp_path: Path,
) -> None:
    path = tmp_path / "h.sqlite3"
    streams, published = await _streams(path)
    history = streams.history
    replica = Replica("r1")
    try:
        await streams.on_batch(_batch(replica, 0, 1), EMPTY)
        before = history.decode_cursor(published.deliveries[-1].cursor)
        retried = _batch(replica, 1, 2)
        fail_writes(path, "events")
        with pytest.raises(UnavailableError):
            await streams.on_batch(retried, EMPTY)  # published, then the write failed
        heal(path, "events")
        await streams.on_batch(retried, EMPTY)  # the applier retries the batch
        assert [d.dot for d in published.deliveries[1:]] == [_dot(e) for e, _, _, _ in retried]
    finally:
        await history.close()
    again = History(path, "h1", KEY, max_events=100_000)
    await again.open()
    try:
        replayed, _, _ = await again.replay(before, _everything, 10)
        assert [e.dot for e in replayed] == [_dot(e) for e, _, _, _ in retried]
    finally:
        await again.close()


async def test_indexes_handed_out_are_never_reused_after_a_restart_when_writes_fail(
    tmp_path: Path,
) -> None:
    """A failed write that would have moved the reservation leaves it where the disk has it."""
    path = tmp_path / "h.sqlite3"
    streams, published = await _streams(path)
    replica = Replica("r1")
    fail_writes(path, "meta", "NEW.name = 'head'")  # the last statement of every append
    try:
        for first in (0, 600):
            with pytest.raises(UnavailableError):
                await streams.on_batch(_batch(replica, first, 600), EMPTY)
    finally:
        await streams.history.close()
    handed_out = max(streams.history.decode_cursor(d.cursor).idx for d in published.deliveries)
    heal(path, "meta")
    again = History(path, "h1", KEY, max_events=100_000)
    await again.open()
    try:
        (entry,) = again.stamp(
            [(_dot(e), "t1", e.channels, raw) for e, raw, _, _ in _batch(replica, 2000, 1)]
        )
        assert entry.idx > handed_out
    finally:
        await again.close()


async def test_an_event_that_arrives_after_its_gap_was_closed_reaches_live_subscribers_as_state(
    tmp_path: Path,
) -> None:
    """Late past the bound: the history counts it recorded (the applier's merge applies it);
    it takes no position, and live subscribers get the state it made, as a repair's."""
    streams, published = await _streams(tmp_path / "h.sqlite3", max_loose=200)
    history = streams.history
    try:
        events = _batch(Replica("r1"), 0, 400)
        late = events.pop(4)  # seq 5: its event reached no log in time
        for i in range(0, len(events), 50):
            await streams.on_batch(events[i : i + 50], EMPTY)
        assert [d.dot.counter for d in published.deliveries] == [e.seq for e, _, _, _ in events]
        assert history.recorded == dvv.from_vector({"r1": 400})  # closed by the rule
        head = history.head
        await streams.on_batch([late], EMPTY)
        assert len(published.deliveries) == len(events) and history.head is head
        assert published.states == [late[2]]
        await streams.on_batch([(late[0], late[1], late[2], late[2])], EMPTY)  # a duplicate
        assert published.states == [late[2]]  # changed nothing: nothing to tell
    finally:
        await history.close()


async def test_an_event_applied_before_but_not_recorded_goes_out_with_its_own_state(
    tmp_path: Path,
) -> None:
    """A duplicate to the applier that the history lacks (rows a crash lost) carries the
    state it found, a later one: only what the event itself says is published (I7)."""
    streams, published = await _streams(tmp_path / "h.sqlite3")
    try:
        replica = Replica("r1")
        create = replica.write("m1", "fact", "create", content="team lunch")
        assert create is not None
        update = replica.write("m1", "fact", "update", content="SECRET")
        assert update is not None
        later = replica.states[create.key]  # after the update
        await streams.on_batch([(create, encode(create), later, later)], EMPTY)
        (delivery,) = published.deliveries
        assert delivery.state == apply(None, create)
        assert b"SECRET" not in delivery.state_json and delivery.left is None
        assert delivery.partial  # re-derived: later events are missing, even for a create
        # The update lacked too: its own state is a part, and said to be one.
        await streams.on_batch([(update, encode(update), later, later)], EMPTY)
        assert published.deliveries[-1].partial
        assert published.deliveries[-1].state == apply(None, update)
    finally:
        await streams.history.close()


async def test_late_events_send_each_memorys_last_state_and_a_contested_one_leaves(
    tmp_path: Path,
) -> None:
    """Recorded events that still changed their memories (a crash's redelivery): one
    state per memory, the last; a memory they made contested is said to have left."""
    streams, published = await _streams(tmp_path / "h.sqlite3")
    try:
        r = Replica("r1")
        made = r.write("m", "fact", "create", user="u1", content="v0")
        shared = r.write("m", "fact", "update", user="u1", content="v1")
        theirs = Replica("r2").write("m", "fact", "create", user="u2", content="BOB")
        assert made is not None and shared is not None and theirs is not None
        s0 = apply(None, made)
        await streams.on_batch([(made, encode(made), s0, None)], EMPTY)
        s1, s2 = apply(s0, shared), apply(apply(s0, shared), theirs)
        for e, state in ((shared, s1), (theirs, s2)):  # recorded, as a crash can leave them
            await streams.on_batch([(e, encode(e), state, state)], EMPTY)
        assert s2.contested and len(published.deliveries) == 3
        await streams.on_batch(
            [(shared, encode(shared), s1, s0), (theirs, encode(theirs), s2, s1)], EMPTY
        )
        assert published.states == [s2]  # the last only
        assert published.left == [(s2, Leaving(routed(s0), ()))]
        assert (published.stats.late, published.stats.contested) == (1, 1)
        # A state repair (anti-entropy) that makes it contested is told and counted alike.
        streams.on_states([(s0, s2)])
        assert published.left[-1] == (s2, Leaving(routed(s0), ()))
        assert (published.stats.late, published.stats.contested) == (1, 2)
    finally:
        await streams.history.close()


async def test_a_shared_write_that_loses_to_a_private_one_is_not_sent_where_the_memory_left(
    tmp_path: Path,
) -> None:
    """The memory goes where its winner says: a concurrent shared write that loses to
    a private one reaches the owner's channel only, live and in the history (replays
    and pull syncs read its channels there)."""
    streams, published = await _streams(tmp_path / "h.sqlite3")
    try:
        here, there = Replica("r1"), Replica("r2")
        made = _shared(here.write("m", "fact", "create", user="u1", content="v0"), True)
        there.receive(made)
        base = apply(None, made).clock
        here.wall_ms = there.wall_ms + 50  # the private write is the later: it wins
        lost = _shared(there.write("m", "fact", "update", user="u1", context=base,
                                   content="shared but lost"), True)  # fmt: skip
        won = _shared(here.write("m", "fact", "update", user="u1", context=base,
                                 content="made private"), False)  # fmt: skip
        s0 = apply(None, made)
        s1 = apply(s0, won)
        s2 = apply(s1, lost)
        assert materialize(s2).content == "made private" and not materialize(s2).shared
        await streams.on_batch(
            [(e, encode(e), after, before)
             for e, after, before in ((made, s0, None), (won, s1, s0), (lost, s2, s1))],
            EMPTY,
        )  # fmt: skip
        by_dot = {d.dot: d for d in published.deliveries if d.left is None}
        assert "tenant:t1:shared" in by_dot[_dot(made)].channels
        assert by_dot[_dot(lost)].channels == ("user:u1:memories",)  # not back to the tenant
        assert not by_dot[_dot(lost)].shared
        assert "tenant:t1:shared" in lost.channels  # though the event itself was shared
        await streams.history.flush()
        replayed, _, _ = await streams.history.replay(Cursor(EMPTY), _everything, 100)
        (entry,) = [e for e in replayed if e.dot == _dot(lost)]
        assert entry.channels == ("user:u1:memories",)
    finally:
        await streams.history.close()
