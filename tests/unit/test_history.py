"""The event history's cursors: bounded tokens, exact resume, no gap elsewhere (nor past a
permanent seq gap)."""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path
from typing import Any

import msgspec
import pytest

from gateway import sqlite_thread
from gateway.errors import UnavailableError
from gateway.history import CURSOR_MAX_LOOSE, Cursor, History, HistoryEntry, ResyncRequiredError
from gateway.service import heal_gaps
from replication import dvv
from replication.dvv import Dot, DotContext
from tests.unit.sqlite_faults import fail_writes, heal

KEY = b"k" * 32


def _entries(seqs: list[int]) -> list[tuple[Dot, str, tuple[str, ...], bytes]]:
    return [(Dot("r1", s), "t1", ("user:u1:memories",), b'{"seq":%d}' % s) for s in seqs]


def _everything(_tenant: str, _channels: tuple[str, ...]) -> bool:
    return True


def _shuffled_runs(n: int, partitions: int = 8, seed: int = 7) -> list[int]:
    """Seqs 1..n as one reader sees them: spread over partitions, read unevenly."""
    rng = random.Random(seed)
    parts: list[list[int]] = [[] for _ in range(partitions)]
    for s in range(1, n + 1):
        parts[rng.randrange(partitions)].append(s)
    out: list[int] = []
    while any(parts):
        p = rng.choice([p for p in parts if p])
        take = rng.randint(1, 60)
        out.extend(p[:take])
        del p[:take]
    return out


async def test_cursor_tokens_stay_small_while_reads_run_far_ahead_of_a_gap(
    tmp_path: Path,
) -> None:
    history = History(tmp_path / "h.sqlite3", "h1", KEY, max_events=100_000)
    await history.open()
    try:
        order = _shuffled_runs(3000)
        entries = history.stamp(_entries(order))
        await history.append(entries)
        widest = max(len(e.cursor.context.cloud) for e in entries)
        longest = max(len(history.encode_cursor(e.cursor)) for e in entries)
        # The exact context is kept by the history; the cursors carry a bounded part.
        assert widest <= CURSOR_MAX_LOOSE
        assert longest < 2048, longest
        assert history.recorded == dvv.context_of(Dot("r1", s) for s in range(1, 3001))
        for e in entries:  # a cursor never claims an event it has not seen
            seen = set(order[: e.idx])
            assert all(d.counter in seen for d in e.cursor.context.cloud)
            assert all(s in seen for s in range(1, e.cursor.context.vv.get("r1", 0) + 1))
    finally:
        await history.close()


async def test_a_bounded_cursor_resumes_exactly_here_and_without_gap_elsewhere(
    tmp_path: Path,
) -> None:
    order = _shuffled_runs(2000, seed=11)
    here = History(tmp_path / "a.sqlite3", "here", KEY, max_events=100_000)
    there = History(tmp_path / "b.sqlite3", "there", KEY, max_events=100_000)
    await here.open()
    await there.open()
    try:
        stamped = here.stamp(_entries(order))
        await here.append(stamped)
        await there.append(there.stamp(_entries(sorted(order))))  # another apply order
        cut = 1200
        cursor = here.decode_cursor(here.encode_cursor(stamped[cut - 1].cursor))
        assert len(cursor.context.cloud) < len(set(range(1, 2001)) - set(order[:cut]))
        seen_before = set(order[:cut])

        same, _, _ = await here.replay(cursor, _everything, 5000)
        assert [e.dot.counter for e in same] == order[cut:]  # by index: exact

        other, _, _ = await there.replay(cursor, _everything, 5000)
        got = {e.dot.counter for e in other}
        assert got >= set(range(1, 2001)) - seen_before  # nothing missed
        assert len(got) == len(other)  # each at most once
    finally:
        await here.close()
        await there.close()


async def test_the_recorded_context_survives_a_reopen(tmp_path: Path) -> None:
    order = _shuffled_runs(500, seed=3)
    history = History(tmp_path / "h.sqlite3", "h1", KEY, max_events=100)
    await history.open()
    await history.append(history.stamp(_entries(order[:400])))
    await history.close()
    again = History(tmp_path / "h.sqlite3", "h1", KEY, max_events=100)
    await again.open()
    try:
        # 300 trimmed, 100 retained: both are recorded, exactly
        assert again.recorded == dvv.context_of(Dot("r1", s) for s in order[:400])
    finally:
        await again.close()


async def test_a_replay_asked_after_an_unfinished_append_sees_its_entries(tmp_path: Path) -> None:
    """The write is queued when append() is called: live delivery may go first."""
    history = History(tmp_path / "h.sqlite3", "h1", KEY, max_events=100_000)
    await history.open()
    try:
        first = history.stamp(_entries([1]))
        await history.append(first)
        later = history.stamp(_entries([2, 3, 4]))
        persisted = history.append(later)  # not awaited yet
        replayed, _, more = await history.replay(first[0].cursor, _everything, 10)
        assert [e.dot.counter for e in replayed] == [2, 3, 4] and not more
        await persisted
    finally:
        await history.close()


async def test_cursors_handed_out_before_a_crash_never_skip_events_after_the_restart(
    tmp_path: Path,
) -> None:
    path = tmp_path / "h.sqlite3"
    history = History(path, "h1", KEY, max_events=100_000)
    await history.open()
    await history.append(history.stamp(_entries([1])))
    assert history.fits(2)  # so they may be delivered before their write
    lost = history.stamp(_entries([2, 3]))  # delivered live, then the gateway died
    await history.close()
    again = History(path, "h1", KEY, max_events=100_000)
    await again.open()
    try:
        # Another partition's event 4 comes first, then 2 and 3 again (never committed).
        redelivered = again.stamp(_entries([4, 2, 3]))
        assert min(e.idx for e in redelivered) > max(e.idx for e in lost)
        await again.append(redelivered)
        replayed, _, _ = await again.replay(lost[-1].cursor, _everything, 10)
        assert [e.dot.counter for e in replayed] == [4]  # nothing skipped, no duplicate
    finally:
        await again.close()


async def test_a_replay_queued_behind_an_append_that_trims_past_its_cursor_must_resync(
    tmp_path: Path,
) -> None:
    """The trim check runs in the replay's own job, after the append queued before it."""
    history = History(tmp_path / "h.sqlite3", "h1", KEY, max_events=10)
    await history.open()
    try:
        first = history.stamp(_entries(list(range(1, 11))))
        await history.append(first)
        persisted = history.append(history.stamp(_entries(list(range(11, 21)))))  # trims 1..10
        with pytest.raises(ResyncRequiredError):
            await history.replay(first[2].cursor, _everything, 100)
        await persisted
    finally:
        await history.close()


async def test_a_failed_append_is_written_with_its_cursors_before_anything_is_read(
    tmp_path: Path,
) -> None:
    path = tmp_path / "h.sqlite3"
    history = History(path, "h1", KEY, max_events=100_000)
    await history.open()
    try:
        first = history.stamp(_entries([1]))
        await history.append(first)
        lost = history.stamp(_entries([2, 3]))  # delivered live, then the write fails
        fail_writes(path, "events")
        with pytest.raises(UnavailableError):
            await history.append(lost)
        with pytest.raises(UnavailableError):  # never a replay that passes them by
            await history.replay(first[0].cursor, _everything, 10)
        assert history.failed
        heal(path, "events")
        replayed, _, _ = await history.replay(first[0].cursor, _everything, 10)
        assert [(e.idx, e.cursor) for e in replayed] == [(e.idx, e.cursor) for e in lost]
        await history.flush()
        assert not history.failed
    finally:
        await history.close()


def _synced_reservations(statements: list[str]) -> int:
    """How many reservations these statements committed; fails on one not synced."""
    synced, sync, in_transaction, pending = 0, "", False, False
    for sql in (s.upper() for s in statements):
        if sql.startswith("PRAGMA SYNCHRONOUS="):
            sync = sql.partition("=")[2].strip()
        elif sql == "BEGIN":
            in_transaction = True
        elif sql in ("COMMIT", "ROLLBACK"):
            if pending and sql == "COMMIT":
                assert sync == "FULL", "a reservation was committed unsynced"
                synced += 1
            in_transaction = pending = False
        elif sql.startswith("INSERT") and "RESERVED_IDX" in sql:
            if in_transaction:
                pending = True
            else:
                assert sync == "FULL", "a reservation was committed unsynced"
                synced += 1
    return synced


async def test_the_commits_that_move_the_index_reservation_are_synced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``synchronous=FULL`` for them: a power loss must not roll a reservation back."""
    statements: list[str] = []
    connect = sqlite3.connect

    def traced(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        db = connect(*args, **kwargs)
        db.set_trace_callback(statements.append)
        return db

    monkeypatch.setattr(sqlite_thread.sqlite3, "connect", traced)
    history = History(tmp_path / "h.sqlite3", "h1", KEY, max_events=100_000)
    await history.open()
    try:
        for start in range(1, 3001, 300):
            await history.append(history.stamp(_entries(list(range(start, start + 300)))))
        assert _synced_reservations(statements) >= 5  # at open, then every 500 indexes or so
        assert not history.fits(5000)
        await history.reserve(5000)
        assert history.fits(5000)
    finally:
        await history.close()
    assert _synced_reservations(statements) >= 6


# -- a permanent seq gap (an event that never reached any log) -----------------

GAP = 5  # r1's seq 5 was taken by a write whose event no log ever got
LOOSE = 200  # the gap-closing bound these tests use (the gateway's is MAX_LOOSE_SEQS)


def _past_the_gap(n: int) -> list[int]:
    return [s for s in range(1, n + 1) if s != GAP]


async def _gapped_history(
    path: Path, name: str, n: int, *, max_events: int, batch: int, max_loose: int = LOOSE
) -> tuple[History, list[HistoryEntry]]:
    """A history that applied r1's seqs 1..n but ``GAP``, ``batch`` at a time."""
    history = History(path, name, KEY, max_events=max_events, max_loose=max_loose)
    await history.open()
    seqs = _past_the_gap(n)
    stamped: list[HistoryEntry] = []
    for i in range(0, len(seqs), batch):
        entries = history.stamp(_entries(seqs[i : i + batch]))
        await history.append(entries)
        stamped.extend(entries)
    return history, stamped


def _stored_trimmed(path: Path) -> DotContext:
    db = sqlite3.connect(path)
    try:
        (raw,) = db.execute("SELECT value FROM meta WHERE name = 'trimmed'").fetchone()
    finally:
        db.close()
    return msgspec.msgpack.decode(raw, type=DotContext)


async def test_a_permanent_gap_is_closed_by_the_applied_contexts_rule_and_cursors_are_exact_again(
    tmp_path: Path,
) -> None:
    history = History(tmp_path / "h.sqlite3", "h1", KEY, max_events=100_000, max_loose=LOOSE)
    await history.open()
    try:
        seqs = _past_the_gap(1000)
        seen: list[int] = []
        closed_at = 0
        for i in range(0, len(seqs), 50):
            entries = history.stamp(_entries(seqs[i : i + 50]))
            await history.append(entries)
            seen.extend(seqs[i : i + 50])
            # Exactly what the applied context becomes on the same dots: the
            # gap stays open until the rule closes it, then the cloud is gone.
            applied = heal_gaps(dvv.context_of(Dot("r1", s) for s in seen), LOOSE)
            assert history.recorded == applied
            assert len(history.recorded.cloud) <= LOOSE  # so each stamp's copy is bounded too
            assert history.head == entries[-1].cursor
            if closed_at:  # after the closing: exact cursors, not the vector below the gap
                assert all(
                    e.cursor.context == dvv.from_vector({"r1": e.dot.counter}) for e in entries
                )
            elif dvv.contains(history.recorded, Dot("r1", GAP)):
                closed_at = len(seen)
                assert entries[-1].cursor.context == dvv.from_vector({"r1": seen[-1]})
        assert LOOSE // 2 < closed_at <= LOOSE + 50  # not before the rule says so, and not later
        assert history.recorded == dvv.from_vector({"r1": 1000})
    finally:
        await history.close()


async def test_cursors_after_a_closed_gap_resume_past_its_trim_here_and_elsewhere(
    tmp_path: Path,
) -> None:
    """Before the fix every resume by context, once trimming passed the gap, was resync_required."""
    here, mine = await _gapped_history(
        tmp_path / "a.sqlite3", "here", 1000, max_events=100, batch=50
    )
    there, _ = await _gapped_history(
        tmp_path / "b.sqlite3", "there", 1000, max_events=100, batch=70
    )
    try:
        assert here.trimmed == dvv.from_vector({"r1": 900})  # the gap folded in: no loose dots
        assert _stored_trimmed(tmp_path / "a.sqlite3") == here.trimmed
        assert len(there.trimmed.cloud) <= CURSOR_MAX_LOOSE
        cursor = here.decode_cursor(here.encode_cursor(mine[-40].cursor))  # seq 961
        after = list(range(962, 1001))

        by_index, _, _ = await here.replay(cursor, _everything, 1000)
        assert [e.dot.counter for e in by_index] == after
        by_context, _, _ = await here.replay(Cursor(cursor.context), _everything, 1000)
        assert [e.dot.counter for e in by_context] == after
        elsewhere, _, _ = await there.replay(cursor, _everything, 1000)
        assert [e.dot.counter for e in elsewhere] == after  # nothing missed, nothing twice

        # I6: a cursor (also after the closing) whose next events were trimmed
        # everywhere must still resynchronise, never skip them.
        missed = mine[-200].cursor  # seq 801; 802..900 are trimmed here and there
        assert dvv.contains(missed.context, Dot("r1", GAP))
        for history in (here, there):
            with pytest.raises(ResyncRequiredError):
                await history.replay(missed, _everything, 1000)
    finally:
        await here.close()
        await there.close()


async def test_a_closed_gap_stays_closed_across_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "h.sqlite3"
    history, stamped = await _gapped_history(path, "h1", 1000, max_events=100, batch=50)
    before = history.recorded
    await history.close()
    assert _stored_trimmed(path) == dvv.from_vector({"r1": 900})
    again = History(path, "h1", KEY, max_events=100, max_loose=LOOSE)
    await again.open()
    try:
        assert again.recorded == before == dvv.from_vector({"r1": 1000})
        assert again.trimmed == dvv.from_vector({"r1": 900})
        entries = again.stamp(_entries(list(range(1001, 1011))))
        await again.append(entries)
        assert [e.cursor.context for e in entries] == [
            dvv.from_vector({"r1": s}) for s in range(1001, 1011)
        ]
        old = stamped[-1].cursor  # handed out before the restart
        for cursor in (old, Cursor(old.context)):  # by index, and as another gateway's
            replayed, _, _ = await again.replay(cursor, _everything, 100)
            assert [e.dot.counter for e in replayed] == list(range(1001, 1011))
    finally:
        await again.close()


async def test_a_history_that_kept_a_gap_open_is_closed_when_it_is_reopened(
    tmp_path: Path,
) -> None:
    """One written with the gap open (before the rule applied here) heals at open and trim."""
    path = tmp_path / "h.sqlite3"
    wide, _ = await _gapped_history(path, "h1", 1000, max_events=100, batch=50, max_loose=10**9)
    assert len(wide.trimmed.cloud) > LOOSE  # what every history kept before
    await wide.close()
    again = History(path, "h1", KEY, max_events=100, max_loose=LOOSE)
    await again.open()
    try:
        assert again.recorded == dvv.from_vector({"r1": 1000})
        assert again.trimmed == dvv.from_vector({"r1": 900})
        entries = again.stamp(_entries(list(range(1001, 1051))))
        await again.append(entries)  # indexes go on past the reservation: trims every old one
        assert entries[0].cursor.context == dvv.from_vector({"r1": 1001})
        assert _stored_trimmed(path) == dvv.from_vector({"r1": 1000})
    finally:
        await again.close()


async def test_a_gap_of_an_event_applied_out_of_order_is_not_folded_into_trimmed(
    tmp_path: Path,
) -> None:
    """Seq 5 applied after 300 later ones (within the bound): trimmed waits for its trim."""
    history = History(tmp_path / "h.sqlite3", "h1", KEY, max_events=100, max_loose=10_000)
    await history.open()
    try:
        late = _past_the_gap(301)
        for i in range(0, len(late), 50):
            await history.append(history.stamp(_entries(late[i : i + 50])))
        await history.append(history.stamp(_entries([GAP])))
        assert dvv.contains(history.recorded, Dot("r1", GAP))  # recorded, and retained
        assert not dvv.contains(history.trimmed, Dot("r1", GAP))
        assert len(history.trimmed.cloud) > CURSOR_MAX_LOOSE  # so the fold looked, and kept it
        replayed, _, _ = await history.replay(Cursor(history.trimmed), _everything, 1000)
        assert GAP in {e.dot.counter for e in replayed}
    finally:
        await history.close()
