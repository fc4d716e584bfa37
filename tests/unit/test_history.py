"""The event history's cursors: bounded tokens, exact resume, no gap elsewhere."""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from gateway import sqlite_thread
from gateway.errors import UnavailableError
from gateway.history import CURSOR_MAX_LOOSE, History, ResyncRequiredError
from replication import dvv
from replication.dvv import Dot
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
