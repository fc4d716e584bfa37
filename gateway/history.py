"""The region's applied-event history: what a resumed subscription replays.

Every applied event is appended here in apply order with a local index
(``idx``) and the **cursor** that stands after it. A cursor is portable
(valid in every region): it holds a causal context over ``(replica, seq)``
— every event applied before the event's batch, plus the events of its own
batch up to and including it — and a hint ``(history id, idx)`` that lets
the same gateway resume by index. Any other gateway resumes by replaying
every retained event the context does not cover (I6).

A cursor's context is a *lower bound*: events arrive out of ``seq`` order
across partitions (a link catching up after a partition reads partitions
unevenly), so the exact context can hold thousands of loose dots — a token
of tens of KiB per event, sealed for every delivery and past the 8 KiB a
client may send back. A cursor therefore keeps its loose dots only while
there are at most :data:`CURSOR_MAX_LOOSE`; beyond that it keeps the
version vector alone. Resuming by index (same history) is exact either
way; another gateway replays what the vector does not cover, so the
dropped loose dots come again: duplicate deliveries, never a gap, and no
duplicate effect (applying an event twice changes nothing, I5). The
history's own exact context is :attr:`History.recorded`.

The history is bounded (``max_events``, oldest trimmed first) and durable
(SQLite beside the journal), so a subscription resumes with no gap across a
gateway restart. The union of trimmed events' dots is kept: a cursor that
does not cover all of them may have missed one, and gets
``resync_required`` instead of silent loss.

A seq whose event never reached any log (a write that failed after taking
it, an outbox row the broker refused) is a gap that never fills: every
later dot of its replica would stay loose in :attr:`History.recorded`
forever (each stamp copying the cloud), every cursor would fall back to the
vector below the gap, and once trimming passed it :attr:`History.trimmed`
would hold loose dots no cursor covers — every resume by context answering
``resync_required``. So :meth:`History.stamp` closes such gaps by the rule
the applied context uses (:func:`replication.gaps.close_gaps`, one function:
given the same dots both close the same gaps, never one the applier still
waits for), once per batch as the applier does; the cursors after it hold
the closed seqs in their vector, and trimming folds them into ``trimmed``
once it reaches them. An event that arrives after its seq was closed (late
past the bound, not lost) is, to :meth:`Streams.on_batch
<gateway.streams.Streams.on_batch>`, one the history recorded already: the
applier merges it into its memory's state (the merge, not a context,
decides what is new there), so reads and syncs show it, but it gets no
index, is not published and is never replayed — the closing was logged as
an error for that reason. Only a subscriber that resynchronises, or gets a
later event of that memory with its state, sees its effect.
"""

from __future__ import annotations

import dataclasses
import functools
import sqlite3
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import msgspec
import structlog

from gateway.errors import MemsyncError
from gateway.leaving import Leaving
from gateway.sqlite_thread import SqliteThread
from replication import dvv
from replication.dvv import EMPTY, Dot, DotContext
from replication.gaps import MAX_LOOSE_SEQS, ClosedGap, close_gaps
from replication.token import seal, unseal

__all__ = [
    "CURSOR_MAX_LOOSE",
    "Cursor",
    "History",
    "HistoryEntry",
    "Missing",
    "ResyncRequiredError",
    "cursor_context",
]

R = TypeVar("R")
_log = structlog.get_logger(__name__)
_Row = tuple[int, str, int, str, str, bytes, bytes, bytes | None]  # a row of the events table

# Loose dots a cursor keeps (each ~20 bytes in the token); more and it keeps
# only the version vector, a subset of what it has seen (module docstring).
CURSOR_MAX_LOOSE = 64

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    idx INTEGER PRIMARY KEY,
    replica TEXT NOT NULL,
    seq INTEGER NOT NULL,
    tenant TEXT NOT NULL,
    channels TEXT NOT NULL,
    body BLOB NOT NULL,
    cursor BLOB NOT NULL
);
-- An event's Leaving, for the few that took a memory off channels. Its own
-- table, not a column: a gateway from before it reads and writes ``events``
-- unchanged (a rollback keeps working, and ignores what was left).
CREATE TABLE IF NOT EXISTS leaving (idx INTEGER PRIMARY KEY, value BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS events_by_dot ON events (replica, seq);
"""


class ResyncRequiredError(MemsyncError):
    """The history needed to serve a cursor is gone: resynchronise from a snapshot."""

    status = 410
    code = "resync_required"


class Cursor(msgspec.Struct, frozen=True, gc=False, array_like=True):
    """A position in the stream of applied events (see the module docstring)."""

    context: DotContext
    history: str = ""
    idx: int = 0


def cursor_context(ctx: DotContext) -> DotContext:
    """What a cursor keeps of a context: all of it, or its vector past too many loose dots."""
    if len(ctx.cloud) <= CURSOR_MAX_LOOSE:
        return ctx
    return DotContext(ctx.vv, ())


@dataclass(frozen=True)
class HistoryEntry:
    """One applied event as the history keeps it."""

    idx: int
    dot: Dot
    tenant: str
    channels: tuple[str, ...]
    body: bytes
    cursor: Cursor
    # Where the memory was routed before this event and after it, when the
    # event took it off a channel or audience (:mod:`gateway.leaving`).
    leaving: Leaving | None = None


_RESERVE = 1_000  # indexes reserved ahead on disk (twice the default apply batch)
_cursor_codec = msgspec.msgpack.Decoder(Cursor)
_ctx_codec = msgspec.msgpack.Decoder(DotContext)
_leaving_codec = msgspec.msgpack.Decoder(Leaving)


class History:
    """Durable, bounded, applied-order event history of one gateway."""

    def __init__(
        self,
        path: Path,
        history_id: str,
        key: bytes,
        *,
        max_events: int,
        max_loose: int = MAX_LOOSE_SEQS,
    ) -> None:
        self.id = history_id
        self._key = key
        self._max = max_events
        # The gap-closing bound: the applied context's (tests lower it).
        self._max_loose = max_loose
        self._sql = SqliteThread(path, "event history", synchronous="NORMAL", schema=_SCHEMA)
        # Owned by the event loop (stamp): the next index to hand out, and the
        # reservation known to be committed *and* synced to disk — indexes
        # below it may be handed out (in cursors) before their rows are
        # written, since a restart starts past it (see fits).
        self._next_idx = 1
        self._reserved = 1
        self.failed = False  # the last append failed: flush() before stamping more
        # Owned by the database thread (each is read and written only by jobs
        # on it, so a check and the query it guards are one job): the oldest
        # retained index, the dots of trimmed events, the reservation written
        # so far, and the entries of a failed append (written again first by
        # the next job).
        self._oldest = 1
        self.trimmed: DotContext = EMPTY
        self._disk_reserved = 1
        self._unwritten: list[HistoryEntry] = []
        # Every event this history ever recorded (retained or trimmed), exactly;
        # cursors carry a bounded subset of it.
        self.recorded: DotContext = EMPTY
        self.head = Cursor(EMPTY, history_id, 0)

    # -- lifecycle -----------------------------------------------------------

    async def open(self) -> None:
        """Open (or create) the history and load its bounds."""
        await self._sql.open()
        self._reserved = await self._run(self._load)

    def _load(self) -> int:
        db = self._conn
        meta = dict(db.execute("SELECT name, value FROM meta").fetchall())
        if "trimmed" in meta:
            self.trimmed = _ctx_codec.decode(meta["trimmed"])
        lo, hi = db.execute("SELECT MIN(idx), MAX(idx) FROM events").fetchone()
        self._oldest = int(lo or meta_int(meta, "next_idx", 1))
        self._next_idx = max(
            int(hi or 0) + 1, meta_int(meta, "next_idx", 1), meta_int(meta, "reserved_idx", 1)
        )
        reserved = self._reserve_sync(self._next_idx)
        if hi is not None:
            row = db.execute("SELECT cursor FROM events WHERE idx = ?", (hi,)).fetchone()
            self.head = _cursor_codec.decode(row[0])
        elif "head" in meta:
            self.head = _cursor_codec.decode(meta["head"])
        retained = dvv.context_of(
            Dot(replica, seq) for replica, seq in db.execute("SELECT replica, seq FROM events")
        )
        # Gaps closed before the restart are in the head's vector. The rule
        # again, for a history written before it was applied here (its
        # trimmed context then folds in what it closes, as a trim would).
        recorded, closed = close_gaps(
            dvv.join(dvv.join(self.trimmed, retained), self.head.context), self._max_loose
        )
        _log_closed(closed)
        self.recorded = recorded
        self.trimmed = self._fold_closed(db, self.trimmed, recorded)
        return reserved

    def _reserve_sync(self, upto: int) -> int:
        """Reserve the indexes below ``upto + _RESERVE`` on disk, durably; the reservation.

        Its own transaction, synced (``synchronous=FULL``; the history's other
        writes are ``NORMAL``, which a power loss may roll back): a
        reservation that came back smaller after a restart would give
        handed-out indexes to other events.
        """
        reserved = max(self._disk_reserved, upto + _RESERVE)
        if reserved > self._disk_reserved:
            db = self._conn
            db.execute("PRAGMA synchronous=FULL")
            try:
                db.execute(
                    "INSERT OR REPLACE INTO meta VALUES ('reserved_idx', ?)", (str(reserved),)
                )
            finally:
                db.execute("PRAGMA synchronous=NORMAL")
            self._disk_reserved = reserved
        return reserved

    def fits(self, count: int) -> bool:
        """Whether the next ``count`` indexes are reserved on disk (committed and synced).

        Then the cursors of a batch stamped with them may be handed out
        before its :meth:`append` is done: a restart never gives those
        indexes to other events (it starts past the reservation), so
        resuming by index after a crash cannot skip anything; the log
        delivers again what the history did not write. Otherwise
        :meth:`reserve` first, *before* stamping: a batch is published as
        soon as it is stamped, so batches reach subscribers in index order.
        """
        return self._next_idx + count <= self._reserved

    async def reserve(self, count: int) -> None:
        """Reserve at least the next ``count`` indexes on disk (synced), and wait for it.

        Queued after every append already submitted. Another batch may be
        stamped while this waits: ask :meth:`fits` again afterwards.
        """
        reserved = await self._run(self._reserve_sync, self._next_idx + count)
        self._reserved = max(self._reserved, reserved)

    async def close(self) -> None:
        """Close the database."""
        await self._sql.close()

    async def _run(self, fn: Callable[..., R], *args: object) -> R:
        return await self._sql.run(fn, *args)

    @property
    def _conn(self) -> sqlite3.Connection:
        return self._sql.conn

    # -- cursors -------------------------------------------------------------

    def encode_cursor(self, cursor: Cursor) -> str:
        """The opaque token of a cursor."""
        return seal(cursor, self._key, "cursor")

    def decode_cursor(self, token: str) -> Cursor:
        """A cursor from its token (:class:`InvalidTokenError` if not genuine)."""
        return unseal(token.strip(), self._key, "cursor", Cursor)

    # -- appending -----------------------------------------------------------

    def stamp(
        self,
        batch: Sequence[tuple[Dot, str, tuple[str, ...], bytes]],
        leaving: Sequence[Leaving | None] = (),
    ) -> list[HistoryEntry]:
        """Give a batch of applied events their indexes and cursors (in memory).

        ``leaving``, when given, holds each event's :class:`Leaving` (or
        ``None``), in batch order; it is kept with the event and replayed.

        Each event's cursor holds what the history recorded before the batch
        plus the batch's dots up to and including its own (bounded by
        :func:`cursor_context`).

        Then permanent gaps are closed (:func:`~replication.gaps.close_gaps`)
        once for the batch, as the applier closes them in its applied
        context after each batch: the same dots, the same gaps (on the
        normal path that is one length check). The batch's last cursor
        holds the closed seqs, so the head, every later cursor and a
        restart (which starts from the head) have them. An event of a
        closed seq that arrives later is recorded already, to the caller
        (see the module docstring); one in this very batch has filled its
        gap before the rule looks.
        """
        ctx = self.recorded
        out = []
        lefts = leaving or [None] * len(batch)
        for (dot, tenant, channels, body), left in zip(batch, lefts, strict=True):
            ctx = dvv.add(ctx, dot)
            idx = self._next_idx
            self._next_idx += 1
            cursor = Cursor(cursor_context(ctx), self.id, idx)
            out.append(HistoryEntry(idx, dot, tenant, channels, body, cursor, left))
        if out:
            ctx, closed = close_gaps(ctx, self._max_loose)
            if closed:
                _log_closed(closed)
                last = out[-1]
                out[-1] = dataclasses.replace(
                    last, cursor=Cursor(cursor_context(ctx), self.id, last.idx)
                )
            self.recorded = ctx
            self.head = out[-1].cursor
        return out

    def append(self, entries: Sequence[HistoryEntry]) -> Awaitable[None]:
        """Persist stamped entries, trimming the oldest past the bound; await the result.

        The write is queued on the history's thread at once: a replay asked
        for afterwards, by any task, reads after it. So the entries may be
        delivered to live subscribers before the write is done (if their
        indexes :meth:`fits` the reservation).

        A write that fails leaves :attr:`failed` set and its entries — with
        the indexes and cursors already handed out — are written again,
        first, by the next job on the thread (append, :meth:`flush`,
        replay): a retried batch finds its events already recorded, so
        without that they would never be written (a hole every earlier
        cursor resumes across).
        """
        return self._appended(self._sql.submit(self._append_sync, list(entries)))

    def flush(self) -> Awaitable[None]:
        """Write what a failed :meth:`append` left (nothing if none); clears :attr:`failed`."""
        return self.append(())

    async def _appended(self, queued: Awaitable[int]) -> None:
        try:
            reserved = await queued
        except BaseException:
            self.failed = True
            raise
        self.failed = False
        # Set here, once its transaction has committed (synced): fits() reads it.
        if reserved > self._reserved:
            self._reserved = reserved

    def _append_sync(self, entries: list[HistoryEntry]) -> int:
        """Write a failed append's entries, then these; the reservation committed (0: none)."""
        if self._unwritten:
            entries = self._unwritten + entries
        if not entries:
            return 0
        try:
            reserved = self._write(self._conn, entries)
        except BaseException:
            self._unwritten = entries
            raise
        self._unwritten = []
        return reserved

    def _heal(self) -> None:
        """Before a read: write what a failed append left (raises while it still fails)."""
        if self._unwritten:
            self._append_sync([])

    def _write(self, db: sqlite3.Connection, entries: list[HistoryEntry]) -> int:
        # Everything from the entries (in index order, the latest last), not
        # from the loop's state, which later batches have moved on already.
        next_idx = entries[-1].idx + 1
        reserved = 0
        if next_idx + _RESERVE // 2 > self._disk_reserved:
            reserved = next_idx + _RESERVE
            db.execute("PRAGMA synchronous=FULL")  # this commit moves the reservation: synced
        try:
            db.execute("BEGIN")
            db.executemany(
                "INSERT OR REPLACE INTO events "
                "(idx, replica, seq, tenant, channels, body, cursor) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        e.idx,
                        e.dot.replica,
                        e.dot.counter,
                        e.tenant,
                        " ".join(e.channels),
                        e.body,
                        msgspec.msgpack.encode(e.cursor),
                    )
                    for e in entries
                ],
            )
            moved = [(e.idx, msgspec.msgpack.encode(e.leaving)) for e in entries if e.leaving]
            if moved:
                db.executemany("INSERT OR REPLACE INTO leaving VALUES (?, ?)", moved)
            cut = next_idx - self._max
            trimmed = self.trimmed
            if cut > self._oldest:
                for replica, seq in db.execute(
                    "SELECT replica, seq FROM events WHERE idx < ?", (cut,)
                ):
                    trimmed = dvv.add(trimmed, Dot(replica, seq))
                db.execute("DELETE FROM events WHERE idx < ?", (cut,))
                db.execute("DELETE FROM leaving WHERE idx < ?", (cut,))
                trimmed = self._fold_closed(db, trimmed, entries[-1].cursor.context)
                db.execute(
                    "INSERT OR REPLACE INTO meta VALUES ('trimmed', ?)",
                    (msgspec.msgpack.encode(trimmed),),
                )
            db.execute("INSERT OR REPLACE INTO meta VALUES ('next_idx', ?)", (str(next_idx),))
            if reserved:
                db.execute(
                    "INSERT OR REPLACE INTO meta VALUES ('reserved_idx', ?)", (str(reserved),)
                )
            db.execute(
                "INSERT OR REPLACE INTO meta VALUES ('head', ?)",
                (msgspec.msgpack.encode(entries[-1].cursor),),
            )
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:  # some errors (a full disk) have rolled it back already
                db.execute("ROLLBACK")
            raise
        finally:
            if reserved:
                db.execute("PRAGMA synchronous=NORMAL")
        # Committed: only now do the trim and the reservation count.
        if cut > self._oldest:
            self.trimmed = trimmed
            self._oldest = cut
        if reserved:
            self._disk_reserved = reserved
        return reserved

    def _fold_closed(
        self, db: sqlite3.Connection, trimmed: DotContext, recorded: DotContext
    ) -> DotContext:
        """``trimmed`` with the closed gaps it has reached folded in (on the database thread).

        A gap :meth:`stamp` closed holds no event, so no trim ever fills it:
        every later trimmed dot of its replica would stay loose here, in the
        meta row each trim rewrites. A gap of ``trimmed`` is such a one when
        ``recorded``'s vector covers it (a context that holds every gap
        closed before it: the head of the batch being written, or the
        recorded context at load) and no retained event lies in it (else it
        is an event not trimmed yet, applied out of order). Every cursor
        handed out after the closing covers the folded seqs (its vector
        does), so it resumes as before; one from before it that does not
        gets ``resync_required`` once the trim has passed the gap, which it
        would get for the trimmed seqs past the gap anyway unless it held
        them all loose. Only past :data:`CURSOR_MAX_LOOSE` loose dots, so
        the normal path pays one length check.
        """
        if len(trimmed.cloud) <= CURSOR_MAX_LOOSE:
            return trimmed
        kept: set[str] = set()  # replicas whose first gap is not a closed one
        while True:
            lowest: dict[str, int] = {}
            for d in trimmed.cloud:  # sorted: a replica's first loose dot is its lowest
                if d.replica not in kept:
                    lowest.setdefault(d.replica, d.counter)
            vv = dict(trimmed.vv)
            for replica, low in lowest.items():
                closed = recorded.vv.get(replica, 0) >= low - 1 and (
                    db.execute(
                        "SELECT 1 FROM events WHERE replica = ? AND seq > ? AND seq < ? LIMIT 1",
                        (replica, vv.get(replica, 0), low),
                    ).fetchone()
                    is None
                )
                if closed:
                    vv[replica] = low - 1
                else:
                    kept.add(replica)
            if vv == trimmed.vv:
                return trimmed
            trimmed = dvv.join(DotContext(vv, ()), dvv.context_of(trimmed.cloud))

    # -- anti-entropy --------------------------------------------------------

    async def missing(self, since: DotContext, upto: DotContext, limit: int) -> Missing:
        """Events this history holds that ``upto`` names and ``since`` does not.

        ``since`` is what a peer has applied, ``upto`` what it knows this
        region had applied a while ago: the events no log brought it. Looked
        up by ``(replica, seq)`` ranges, so the cost is the answer's size.
        """
        wanted: list[tuple[str, int, int]] = []
        for replica, high in upto.vv.items():
            low = since.vv.get(replica, 0)
            if high > low:
                wanted.append((replica, low, high))
        loose = [d for d in upto.cloud if not dvv.contains(since, d)]
        return await self._run(self._missing_sync, since, wanted, loose, limit)

    def _missing_sync(
        self,
        since: DotContext,
        ranges: list[tuple[str, int, int]],
        loose: list[Dot],
        limit: int,
    ) -> Missing:
        self._heal()
        db = self._conn
        out: list[bytes] = []
        complete = True
        for replica, low, high in ranges:
            room = limit - len(out)
            rows = db.execute(
                "SELECT seq, body FROM events WHERE replica = ? AND seq > ? AND seq <= ? "
                "ORDER BY seq LIMIT ?",
                (replica, low, high, room + 1),
            ).fetchall()
            fresh = [
                bytes(body) for seq, body in rows if not dvv.contains(since, Dot(replica, seq))
            ]
            if len(rows) > room:  # cut short by the limit: what follows comes next time
                out.extend(fresh[:room])
                return Missing(out, complete, True)
            out.extend(fresh)
            held = sum(1 for d in since.cloud if d.replica == replica and low < d.counter <= high)
            if len(fresh) < high - low - held:
                complete = False  # some were trimmed from this history
        for dot in loose:
            row = db.execute(
                "SELECT body FROM events WHERE replica = ? AND seq = ? LIMIT 1",
                (dot.replica, dot.counter),
            ).fetchone()
            if row is None:
                complete = False
                continue
            if len(out) >= limit:
                return Missing(out, complete, True)
            out.append(bytes(row[0]))
        return Missing(out, complete, False)

    # -- replay --------------------------------------------------------------

    def _start_idx(self, cursor: Cursor) -> int:
        """Where replay starts; :class:`ResyncRequiredError` if history is missing.

        On the database thread, in the job that reads from there: an append
        queued before it may trim past the cursor, and the check must see
        that trim.
        """
        if cursor.history == self.id and cursor.idx >= self._oldest - 1:
            return cursor.idx + 1
        if not dvv.is_subset(self.trimmed, cursor.context):
            raise ResyncRequiredError(
                "the events after this cursor are no longer kept here: resynchronise "
                "(GET /v1/sync without 'since') and subscribe with the new cursor"
            )
        return self._oldest

    def _replay_sync(self, cursor: Cursor, page: int) -> list[_Row]:
        self._heal()  # a failed append's rows first: replay must not pass them by
        return self._conn.execute(
            "SELECT idx, replica, seq, tenant, channels, body, cursor, value "
            "FROM events LEFT JOIN leaving USING (idx) "
            "WHERE idx >= ? ORDER BY idx LIMIT ?",
            (self._start_idx(cursor), page),
        ).fetchall()

    async def replay(
        self,
        cursor: Cursor,
        wants: Callable[[str, tuple[str, ...]], bool],
        limit: int,
    ) -> tuple[list[HistoryEntry], Cursor, bool]:
        """Retained events after ``cursor`` that ``wants(tenant, channels)``.

        An event that took its memory off channels (:class:`Leaving`) is also
        returned when ``leaving.reaches`` says a reader of ``wants`` must be
        told it left, though it may not see the event: the caller sends the
        event only where ``wants`` its channels.

        Returns the entries (at most ``limit``), the cursor after the last
        event scanned, and whether more may follow.
        :class:`ResyncRequiredError` when events after the cursor were
        trimmed (checked in the same job on the database thread as the read,
        so no append queued before it can trim them in between).
        """
        page = max(limit * 8, 1000)
        rows = await self._run(self._replay_sync, cursor, page)
        out: list[HistoryEntry] = []
        last = cursor
        more = False
        for idx, replica, seq, tenant, channels, body, raw_cursor, raw_leaving in rows:
            dot = Dot(replica, seq)
            after = _cursor_codec.decode(raw_cursor)
            if not dvv.contains(cursor.context, dot):
                chans = tuple(channels.split())
                left = None if raw_leaving is None else _leaving_codec.decode(raw_leaving)
                if wants(tenant, chans) or (
                    left is not None and left.reaches(functools.partial(wants, tenant))
                ):
                    if len(out) >= limit:
                        more = True
                        break
                    out.append(HistoryEntry(idx, dot, tenant, chans, bytes(body), after, left))
            last = Cursor(cursor_context(dvv.join(cursor.context, after.context)), self.id, idx)
        else:
            more = len(rows) == page
        return out, last, more


class Missing(msgspec.Struct, frozen=True, gc=False):
    """What :meth:`History.missing` found."""

    events: list[bytes]
    complete: bool  # every wanted event was still here (else some were trimmed)
    more: bool  # the limit cut the answer short


def _log_closed(closed: tuple[ClosedGap, ...]) -> None:
    """Log gaps the history closed: an error, as the applier logs its own (``seq_gap_closed``)."""
    for gap in closed:
        _log.error(
            "history.seq_gap_closed", replica=gap.replica, upto=gap.upto, waiting=gap.waiting
        )


def meta_int(meta: dict[str, bytes], name: str, default: int) -> int:
    """An integer stored in the meta table."""
    raw = meta.get(name)
    return int(raw) if raw is not None else default
