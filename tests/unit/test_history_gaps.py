"""A permanent seq gap: one rule closes it in the applied context and in the history alike.

What the streams do with an event of a closed gap is in ``test_streams.py``.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from gateway.history import History
from gateway.service import SeqTracker
from replication import dvv
from replication.dvv import Dot, DotContext
from replication.gaps import MAX_LOOSE_SEQS, ClosedGap, close_gaps

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
