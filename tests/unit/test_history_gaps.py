"""A permanent seq gap: one rule closes it in the applied context and in the history alike."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import cast

from gateway.fanout import Delivery, Fanout
from gateway.history import History
from gateway.service import SeqTracker
from gateway.streams import Streams
from replication import dvv
from replication.dvv import EMPTY, Dot, DotContext
from replication.gaps import MAX_LOOSE_SEQS, ClosedGap, close_gaps
from replication.merge import apply
from replication.schema import MemoryEvent, encode
from replication.state import MemoryState
from replication.testing import Replica

KEY = b"k" * 32


def _ctx(vv: dict[str, int], loose: Iterable[tuple[str, int]]) -> DotContext:
    return dvv.join(dvv.from_vector(vv), dvv.context_of(Dot(r, c) for r, c in loose))


def test_a_cloud_within_the_bound_is_left_as_it_is() -> None:
    ctx = _ctx({"r1": 4}, [("r1", s) for s in range(6, 16)])
    healed, closed = close_gaps(ctx, 10)
    assert healed is ctx and closed == ()


def test_only_a_replica_with_more_than_half_the_bound_waiting_is_closed() -> None:
    ctx = _ctx({"r1": 4, "r2": 1}, [*(("r1", s) for s in range(9, 16)), ("r2", 3), ("r2", 5)])
    healed, closed = close_gaps(ctx, 8)  # 9 loose: r1 has 7 of them (> 4), r2 has 2
    assert closed == (ClosedGap("r1", 8, 7),)
    assert healed == _ctx({"r1": 15, "r2": 1}, [("r2", 3), ("r2", 5)])


def _entries(dots: list[Dot]) -> list[tuple[Dot, str, tuple[str, ...], bytes]]:
    return [(d, "t1", ("user:u1:memories",), b"{}") for d in dots]


def _order() -> list[Dot]:
    """Two replicas as one reader sees them: r1's seq 7 never reached any log, r2's seq
    3 comes 3,000 events late (within the bound: only late)."""
    r1 = [Dot("r1", s) for s in range(1, MAX_LOOSE_SEQS + 700) if s != 7]
    r2 = [Dot("r2", s) for s in range(1, 2001) if s != 3]
    out = [d for pair in zip(r1, r2, strict=False) for d in pair] + r1[len(r2) :]
    out.insert(3000, Dot("r2", 3))
    return out


async def test_the_history_and_the_applied_context_close_the_same_gaps(tmp_path: Path) -> None:
    """At the gateway's own bound: the same batches leave both holding the same dots."""
    history = History(tmp_path / "h.sqlite3", "h1", KEY, max_events=100_000)
    await history.open()
    tracker = SeqTracker()
    try:
        order = _order()
        widest = 0
        stamped: set[Dot] = set()
        for i in range(0, len(order), 500):
            batch = order[i : i + 500]
            fresh = [d for d in batch if not dvv.contains(history.recorded, d)]
            entries = history.stamp(_entries(fresh))
            await history.append(entries)
            stamped.update(e.dot for e in entries)
            await tracker.note(batch)
            assert history.recorded == tracker.applied
            widest = max(widest, len(history.recorded.cloud))
        assert widest <= MAX_LOOSE_SEQS
        assert Dot("r2", 3) in stamped  # the late one: recorded as it came, not closed
        assert Dot("r1", 7) not in stamped
        assert history.recorded == dvv.from_vector({"r1": MAX_LOOSE_SEQS + 699, "r2": 2000})
        assert history.head.context == history.recorded  # exact again, not the vector below
    finally:
        await history.close()


class _Published:
    """The fan-out's twin: what was published, in order."""

    def __init__(self) -> None:
        self.deliveries: list[Delivery] = []

    def publish(self, deliveries: Iterable[Delivery]) -> None:
        self.deliveries.extend(deliveries)


async def test_an_event_that_arrives_after_its_gap_was_closed_is_not_published_again(
    tmp_path: Path,
) -> None:
    """Late past the bound: the history counts it recorded (the applier's merge applies it)."""
    history = History(tmp_path / "h.sqlite3", "h1", KEY, max_events=100_000, max_loose=200)
    await history.open()
    published = _Published()
    streams = Streams(history, cast(Fanout, published))
    try:
        writer = Replica("r1")
        events: list[tuple[MemoryEvent, bytes, MemoryState]] = []
        for i in range(400):
            event = writer.write(f"m{i}", "fact", "create", content=f"note {i}")
            assert event is not None
            events.append((event, encode(event), apply(None, event)))
        late = events.pop(4)  # seq 5: its event reached no log in time
        for i in range(0, len(events), 50):
            await streams.on_batch(events[i : i + 50], EMPTY)
        assert [d.dot.counter for d in published.deliveries] == [e.seq for e, _, _ in events]
        assert history.recorded == dvv.from_vector({"r1": 400})  # closed by the rule
        head = history.head
        await streams.on_batch([late], EMPTY)
        assert len(published.deliveries) == len(events) and history.head is head
    finally:
        await history.close()
