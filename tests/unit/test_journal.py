"""The journal's group commit: many rows per statement, nothing lost or misfiled."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

from gateway.journal import Journal


@contextlib.asynccontextmanager
async def _opened(path: Path) -> AsyncIterator[Journal]:
    journal = Journal(path, "r")
    await journal.open()
    try:
        yield journal
    finally:
        await journal.close()


async def _record(journal: Journal, n: int) -> list[int]:
    seqs = [journal.next_seq() for _ in range(n)]
    await asyncio.gather(
        *(
            journal.record(
                seq=seq, key=f"t/m{seq % 37}", counter=seq, body=b"e%d" % seq, high_water=seq * 10
            )
            for seq in seqs
        )
    )
    return seqs


async def test_large_group_commits_keep_every_row_and_acknowledgement(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal.sqlite3", "r")
    await journal.open()
    try:
        seqs = await _record(journal, 1_250)  # several INSERT chunks in one commit
        assert await journal.counts() == (1_250, 0)
        pending = await journal.pending(5_000)
        assert [r.seq for r in pending] == seqs
        assert all(r.body == b"e%d" % r.seq for r in pending)
        # acknowledgements in two segments, more than one UPDATE chunk each
        for seq in seqs[:1_000]:
            journal.note_logged(seq, 7)
        for seq in seqs[1_000:1_200]:
            journal.note_logged(seq, 8)
        more = await _record(journal, 3)
        assert await journal.counts() == (50 + 3, 1_200)
        logged = await journal.logged_after(0, 5_000)
        assert [(r.seq, r.segment) for r in logged] == [
            (s, 7 if i < 1_000 else 8) for i, s in enumerate(seqs[:1_200])
        ]
        assert await journal.prune_below(8) == 1_000
        assert [r.seq for r in await journal.pending(100)] == seqs[1_200:] + more
    finally:
        await journal.close()
    async with _opened(tmp_path / "journal.sqlite3") as again:
        assert again.last_seq == more[-1]
        assert again.high_water == more[-1] * 10
        assert again.last_counter(f"t/m{more[-1] % 37}") == more[-1]


async def test_the_high_water_mark_and_seq_survive_pruning_every_row(tmp_path: Path) -> None:
    async with _opened(tmp_path / "journal.sqlite3") as journal:
        seqs = await _record(journal, 10)
        for seq in seqs:
            journal.note_logged(seq, 3)
        assert await journal.prune_below(4) == 10  # every row gone: the meta keeps them
    async with _opened(tmp_path / "journal.sqlite3") as again:
        assert again.last_seq == seqs[-1]
        assert again.high_water == seqs[-1] * 10
        assert await again.counts() == (0, 0)


async def test_a_journal_from_before_the_high_water_column_opens_and_keeps_it(
    tmp_path: Path,
) -> None:
    path = tmp_path / "journal.sqlite3"
    db = sqlite3.connect(path)
    db.executescript(
        """
        CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE events (seq INTEGER PRIMARY KEY, key TEXT NOT NULL,
            counter INTEGER NOT NULL, body BLOB NOT NULL, segment INTEGER);
        INSERT INTO meta VALUES ('replica', 'r.old'), ('high_water', '777'), ('seq', '5');
        INSERT INTO events VALUES (5, 't/m', 2, x'00', NULL);
        """
    )
    db.commit()
    db.close()
    journal = Journal(path, "r")
    await journal.open()
    try:
        assert (journal.replica, journal.last_seq, journal.high_water) == ("r.old", 5, 777)
        assert journal.last_counter("t/m") == 2
        await _record(journal, 2)  # rows with the new column
        assert [r.seq for r in await journal.pending(10)] == [5, 6, 7]
        assert journal.high_water == 777  # never backwards
    finally:
        await journal.close()
