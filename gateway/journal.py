"""The gateway's durable journal (SQLite, fsync'd): identity, counters, outbox.

It keeps, across restarts:

- the **replica id** of this gateway (unique, made once) and the HLC high-water
  mark, so dots stay unique and timestamps monotonic (DESIGN §3);
- the last **counter** issued per memory and the last **seq**, so dots stay
  contiguous per replica and memory;
- every **event** this gateway wrote, until every consumer of the log has
  passed it: rows start *pending* (the outbox: not yet in the log), become
  *logged* with their segment once the log acknowledged them, and are pruned
  when that segment has been deleted by retention-by-acknowledgement. After a
  broker comes back empty, logged rows are re-published.

Writes are group-committed: concurrent :meth:`Journal.record` calls share one
transaction and one fsync. All SQLite work runs on one dedicated thread.
"""

from __future__ import annotations

import asyncio
import secrets
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import structlog

from gateway.errors import UnavailableError
from gateway.sqlite_thread import SqliteThread

__all__ = ["Journal", "JournalRow"]

_log = structlog.get_logger(__name__)
R = TypeVar("R")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY,
    key TEXT NOT NULL,
    counter INTEGER NOT NULL,
    body BLOB NOT NULL,
    segment INTEGER,          -- NULL: pending (outbox); else the log segment holding it
    hw INTEGER                -- the HLC high-water mark when it was written
);
CREATE INDEX IF NOT EXISTS events_pending ON events(seq) WHERE segment IS NULL;
CREATE INDEX IF NOT EXISTS events_segment ON events(segment);
"""


_ROWS = 1000  # rows per INSERT (5 parameters each, well under SQLite's 32,766)
_MARKS_EVERY_S = 1.0  # write the log's acknowledgements with a commit at most this often
_MARKS_DUE = 2000  # ... or once this many wait
_SEQS = 900  # seqs per UPDATE of acknowledgements
_UPSERT_META = (
    "INSERT INTO meta(name, value) VALUES (?, ?), (?, ?) "
    "ON CONFLICT(name) DO UPDATE SET value = "
    "CAST(MAX(CAST(value AS INTEGER), CAST(excluded.value AS INTEGER)) AS TEXT)"
)
T = TypeVar("T")


def _chunks(items: list[T], size: int) -> list[list[T]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _insert_events(rows: int) -> str:
    values = ",".join(["(?, ?, ?, ?, NULL, ?)"] * rows)
    # placeholders only: every value is bound
    return f"INSERT OR REPLACE INTO events(seq, key, counter, body, segment, hw) VALUES {values}"  # noqa: S608


def _mark(db: sqlite3.Connection, entries: list[tuple[int, int]]) -> None:
    """Record ``(seq, segment)`` acknowledgements: one statement per segment and chunk."""
    by_segment: dict[int, list[int]] = {}
    for seq, segment in entries:
        by_segment.setdefault(segment, []).append(seq)
    for segment, seqs in by_segment.items():
        for chunk in _chunks(seqs, _SEQS):
            marks = ",".join("?" * len(chunk))  # placeholders only: every value is bound
            sql = f"UPDATE events SET segment = ? WHERE seq IN ({marks})"  # noqa: S608
            db.execute(sql, [segment, *chunk])


@dataclass(frozen=True)
class JournalRow:
    """One journalled event."""

    seq: int
    key: str
    body: bytes
    segment: int | None


@dataclass
class _Pending:
    seq: int
    key: str
    counter: int
    body: bytes
    high_water: int
    done: asyncio.Future[None]


class Journal:
    """See the module docstring. Use :meth:`open` before anything else."""

    def __init__(self, path: Path, region: str) -> None:
        self._path = path
        self._region = region
        self._sql = SqliteThread(path, "journal", synchronous="FULL", schema=_SCHEMA)
        # Last counter per memory with unpruned rows; a memory without any has
        # all its events applied everywhere, so its state's clock knows them.
        self._live: dict[str, int] = {}
        self._claimed: dict[str, int] = {}
        self._queue: list[_Pending] = []
        self._logged: list[tuple[int, int]] = []
        self._flushing: asyncio.Task[None] | None = None
        self._marked_at = time.monotonic()
        self.replica = ""
        self.high_water = 0
        self._seq = 0

    # -- lifecycle -----------------------------------------------------------

    async def open(self) -> None:
        """Open (or create) the journal and load identity and sequence."""
        await self._sql.open()
        await self._run(self._load)
        _log.info("journal.opened", path=str(self._path), replica=self.replica, seq=self._seq)

    def _load(self) -> None:
        db = self._conn
        rows = dict(db.execute("SELECT name, value FROM meta").fetchall())
        replica = rows.get("replica")
        if replica is None:
            replica = f"{self._region}.{secrets.token_hex(4)}"
            db.execute("INSERT INTO meta VALUES ('replica', ?)", (replica,))
        self.replica = replica
        columns = {row[1] for row in db.execute("PRAGMA table_info(events)")}
        if "hw" not in columns:  # a journal from before the column
            db.execute("ALTER TABLE events ADD COLUMN hw INTEGER")
        (hw,) = db.execute("SELECT MAX(hw) FROM events").fetchone()
        self.high_water = max(int(rows.get("high_water", "0")), int(hw or 0))
        self._live = dict(db.execute("SELECT key, MAX(counter) FROM events GROUP BY key"))
        seq_row = db.execute("SELECT MAX(seq) FROM events").fetchone()
        self._seq = max(int(rows.get("seq", "0")), int(seq_row[0] or 0))

    async def close(self) -> None:
        """Flush queued writes and close."""
        if self._flushing is not None:
            await asyncio.shield(self._flushing)
        if self._queue:
            await self._flush()
        await self.flush_logged()
        await self._sql.close()

    async def _run(self, fn: Callable[..., R], *args: object) -> R:
        return await self._sql.run(fn, *args)

    @property
    def _conn(self) -> sqlite3.Connection:
        return self._sql.conn

    # -- identity and counters ----------------------------------------------

    @property
    def last_seq(self) -> int:
        """The last event sequence number this replica issued."""
        return self._seq

    def next_seq(self) -> int:
        """The next event sequence number of this replica."""
        self._seq += 1
        return self._seq

    def last_counter(self, key: str) -> int:
        """The last counter this replica issued for a memory that may not be applied yet.

        0 when every event of this replica for the memory has been passed by
        every consumer: the memory's state then knows the counter.
        """
        return max(self._claimed.get(key, 0), self._live.get(key, 0))

    def claim_counter(self, key: str, counter: int) -> None:
        """Note a counter as issued; it settles when its event is journalled."""
        if counter > self._claimed.get(key, 0):
            self._claimed[key] = counter

    def release(self, key: str, counter: int, seq: int | None) -> None:
        """Give back a counter and seq whose event reached neither journal nor log.

        ``seq`` is ``None`` when none was issued for it (the event was refused
        before). Only the latest ones can be given back; an older one stays a gap.
        """
        if self._claimed.get(key) == counter:
            del self._claimed[key]
        if seq is None:
            return
        if self._seq == seq:
            self._seq -= 1
        else:
            _log.warning("journal.seq_gap", seq=seq, key=key)

    def _settle(self, batch: list[_Pending]) -> None:
        for p in batch:
            if self._claimed.get(p.key) == p.counter:
                del self._claimed[p.key]
            if p.counter > self._live.get(p.key, 0):
                self._live[p.key] = p.counter

    # -- the write path -----------------------------------------------------

    def record(
        self, *, seq: int, key: str, counter: int, body: bytes, high_water: int
    ) -> asyncio.Future[None]:
        """Journal one event as pending; the future is done after its group commit's fsync.

        The event joins the next group commit at once; a future rather than a
        coroutine, so that a write need not start a task of its own to
        journal concurrently with its append.
        """
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(seq, key, counter, body, high_water, done))
        if self._flushing is None or self._flushing.done():
            self._flushing = asyncio.create_task(self._flush_loop())
        return done

    async def _flush_loop(self) -> None:
        while self._queue:
            await self._flush()

    async def _flush(self) -> None:
        batch, self._queue = self._queue, []
        logged: list[tuple[int, int]] = []
        now = time.monotonic()
        if len(self._logged) >= _MARKS_DUE or now - self._marked_at >= _MARKS_EVERY_S:
            logged, self._logged = self._logged, []
            self._marked_at = now
        try:
            await self._run(self._write_batch, batch, logged)
        except UnavailableError as exc:
            self._logged.extend(logged)
            for p in batch:
                if not p.done.done():
                    p.done.set_exception(exc)
            return
        self._settle(batch)
        for p in batch:
            if not p.done.done():
                p.done.set_result(None)

    def note_logged(self, seq: int, segment: int) -> None:
        """Remember that the log acknowledged an event (written with a later batch).

        The marks ride along at most once a second (or every 2,000), so that
        most commits are a single statement. A mark not written yet costs
        nothing but an event counted as pending: :meth:`pending`,
        :meth:`counts` and :meth:`prune_below` write the marks first.
        """
        self._logged.append((seq, segment))

    async def flush_logged(self) -> None:
        """Write the acknowledgements noted so far."""
        entries, self._logged = self._logged, []
        await self.mark_logged(entries)

    def _write_batch(self, batch: list[_Pending], logged: list[tuple[int, int]]) -> None:
        """Durably write the batch: one statement when it can (and most commits can).

        The sqlite3 module lets go of the GIL around every statement step, and
        this thread then waits to get it back from the busy event loop (up to
        the 5 ms switch interval), so a commit waited once per statement (once
        per row, before rows were folded into one INSERT). A lone INSERT in
        autocommit mode is its own transaction: one step, one fsync. Each row
        carries the HLC high-water mark (read back by :meth:`_load`), and the
        log's acknowledgements come along only now and then (see
        :meth:`note_logged`), so the meta table is not touched here.
        """
        db = self._conn
        rows = [(p.seq, p.key, p.counter, p.body, p.high_water) for p in batch]
        if not logged and len(rows) <= _ROWS:
            db.execute(_insert_events(len(rows)), [v for row in rows for v in row])
        else:
            db.execute("BEGIN")
            try:
                for chunk in _chunks(rows, _ROWS):
                    db.execute(_insert_events(len(chunk)), [v for row in chunk for v in row])
                _mark(db, logged)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        self.high_water = max(self.high_water, max(p.high_water for p in batch))

    async def mark_logged(self, entries: list[tuple[int, int]]) -> None:
        """Record ``(seq, segment)`` pairs as acknowledged by the log."""
        if entries:
            await self._run(self._mark_logged_sync, entries)

    def _mark_logged_sync(self, entries: list[tuple[int, int]]) -> None:
        _mark(self._conn, entries)

    async def pending(self, limit: int) -> list[JournalRow]:
        """The oldest events not yet in the log (the outbox), in seq order."""
        await self.flush_logged()
        rows: list[tuple[int, str, bytes]] = await self._run(
            lambda: self._conn.execute(
                "SELECT seq, key, body FROM events WHERE segment IS NULL ORDER BY seq LIMIT ?",
                (limit,),
            ).fetchall()
        )
        return [JournalRow(seq, key, bytes(body), None) for seq, key, body in rows]

    async def logged_after(self, seq: int, limit: int) -> list[JournalRow]:
        """Logged, unpruned events after ``seq`` (what to re-publish to an empty broker)."""
        rows: list[tuple[int, str, bytes, int]] = await self._run(
            lambda: self._conn.execute(
                "SELECT seq, key, body, segment FROM events "
                "WHERE segment IS NOT NULL AND seq > ? ORDER BY seq LIMIT ?",
                (seq, limit),
            ).fetchall()
        )
        return [JournalRow(q, k, bytes(b), s) for q, k, b, s in rows]

    async def prune_below(self, segment: int) -> int:
        """Forget logged events in segments before ``segment`` (every consumer passed them)."""

        await self.flush_logged()

        def prune(db: sqlite3.Connection) -> list[tuple[str, int]]:
            rows: list[tuple[str, int]] = db.execute(
                "SELECT key, counter FROM events WHERE segment IS NOT NULL AND segment < ?",
                (segment,),
            ).fetchall()
            db.execute("DELETE FROM events WHERE segment IS NOT NULL AND segment < ?", (segment,))
            return rows

        pruned = await self._run(self._deleting, prune)
        for key, counter in pruned:
            if self._live.get(key) == counter:
                del self._live[key]
        return len(pruned)

    async def discard(self, seq: int) -> bool:
        """Delete one pending event the log refused for good; whether it was there.

        Only for a refusal retrying cannot fix (the log will never take that
        event): left pending, it would hold the outbox, and every write that
        joins it, forever. The high-water mark and last seq stay in the meta,
        as when rows are pruned, so no seq is issued twice.
        """

        def drop(db: sqlite3.Connection) -> int:
            return int(
                db.execute("DELETE FROM events WHERE seq = ? AND segment IS NULL", (seq,)).rowcount
            )

        return bool(await self._run(self._deleting, drop))

    def _deleting(self, delete: Callable[[sqlite3.Connection], R]) -> R:
        """Run ``delete`` (on the thread) in one transaction that keeps the meta's marks.

        The rows hold the high-water mark and the last seq: they go into the
        meta before any row goes, so no seq is issued twice after a restart.
        """
        db = self._conn
        db.execute("BEGIN")
        try:
            hw, top = db.execute("SELECT MAX(hw), MAX(seq) FROM events").fetchone()
            db.execute(_UPSERT_META, ("high_water", str(hw or 0), "seq", str(top or 0)))
            result = delete(db)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return result

    async def counts(self) -> tuple[int, int]:
        """``(pending, logged)`` event counts."""
        await self.flush_logged()
        row: tuple[int, int] = await self._run(
            lambda: self._conn.execute(
                "SELECT SUM(segment IS NULL), SUM(segment IS NOT NULL) FROM events"
            ).fetchone()
        )
        return int(row[0] or 0), int(row[1] or 0)

    async def get_meta(self, name: str) -> str | None:
        """A named value."""
        row: tuple[str] | None = await self._run(
            lambda: self._conn.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        )
        return row[0] if row else None

    async def set_meta(self, name: str, value: str) -> None:
        """Store a named value durably."""

        def write() -> None:
            self._conn.execute(
                "INSERT INTO meta(name, value) VALUES (?, ?) "
                "ON CONFLICT(name) DO UPDATE SET value = excluded.value",
                (name, value),
            )

        await self._run(write)
