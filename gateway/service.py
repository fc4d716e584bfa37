"""The memory operations of one region: the write and read paths (DESIGN §4).

Write: authorise → validate → rate-limit → build the event (dot, HLC,
context) → journal it (fsync) and append it to the regional log with
``acks=all`` → 201. When the log is unreachable the journalled event is the
outbox entry and the answer is 202 ``degraded``; the outbox drains in order
when the log returns.

Read: cache → store, with read-your-writes on a session token.

HTTP concerns (parsing, headers, status codes) live in :mod:`gateway.api`;
this module speaks in requests, claims and views.
"""

from __future__ import annotations

import asyncio
import secrets
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import msgspec
import structlog

from gateway.auth import Claims
from gateway.cache import StateCache
from gateway.errors import (
    BadRequestError,
    ConflictError,
    ForbiddenError,
    NotFoundError,
    UnavailableError,
    ValidationError,
)
from gateway.journal import Journal, JournalRow
from gateway.known_keys import KnownKeys
from gateway.ratelimit import RateLimiter
from gateway.requests import CreateRequest, PatchRequest, SearchRequest
from gateway.settings import Limits
from gateway.store import ListQuery, MemoryStore, SearchQuery
from gateway.visibility import withheld
from replication import dvv, gaps
from replication.clock import HybridClock
from replication.dvv import EMPTY, Dot, DotContext
from replication.errors import MemsyncError, PreconditionFailedError
from replication.events import make_event, next_counter
from replication.log_errors import LogRecordRefusedError
from replication.merge import apply, join
from replication.schema import (
    EventType,
    MemoryBody,
    MemoryEvent,
    Ops,
    Source,
    decode_event,
    default_policy,
)
from replication.schema import encode as encode_wire
from replication.state import MemoryState, MemoryView, materialize
from replication.token import Version, decode_version, encode_version, seal, unseal

__all__ = ["MAX_SESSION_TOKENS", "Appender", "MemoryService", "SeqTracker", "WriteResult"]

_log = structlog.get_logger(__name__)
MAX_SESSION_TOKENS = 32  # tokens one X-Memsync-Session header may join


class Appender(Protocol):
    """The part of the event log the write path needs."""

    async def append(
        self, key: bytes, value: bytes, headers: Sequence[tuple[str, bytes]] = ()
    ) -> Any:
        """Append with ``acks=all``; the result has a ``segment`` attribute."""


@dataclass(frozen=True)
class WriteResult:
    """What a write answers: the memory after it, its tokens, and whether degraded."""

    view: MemoryView
    session: str
    degraded: bool
    event: MemoryEvent


MAX_LOOSE_SEQS = gaps.MAX_LOOSE_SEQS  # the bound of the rule the history shares


def heal_gaps(ctx: DotContext, limit: int = MAX_LOOSE_SEQS) -> DotContext:
    """Bound the loose seqs held past a gap in one replica's sequence.

    Seqs arrive out of order across partitions only briefly; a gap that keeps
    ``limit`` later seqs waiting belongs to an event that never reached any
    log (its write failed after its seq was taken), so it is closed — logged
    as an error, since it should not happen. The rule is
    :func:`replication.gaps.close_gaps`, which the event history applies to
    its own contexts too: both close the same gaps given the same dots.
    """
    healed, closed = gaps.close_gaps(ctx, limit)
    for gap in closed:
        _log.error("seq_gap_closed", replica=gap.replica, upto=gap.upto, waiting=gap.waiting)
    return healed


class SeqTracker:
    """Which ``(replica, seq)`` events this region has applied, and who waits on them."""

    def __init__(self, applied: DotContext = EMPTY) -> None:
        self.applied = applied
        self._changed = asyncio.Condition()

    def covers(self, session: DotContext) -> bool:
        """Whether every event named by a session token has been applied here."""
        return dvv.is_subset(session, self.applied)

    def after(self, dots: Sequence[Dot]) -> DotContext:
        """What :attr:`applied` becomes once these events are noted."""
        return heal_gaps(dvv.join(self.applied, dvv.context_of(dots)))

    async def note(self, dots: Sequence[Dot]) -> None:
        """Record applied events and wake waiters."""
        self.applied = self.after(dots)
        async with self._changed:
            self._changed.notify_all()

    async def wait(self, session: DotContext, within: float) -> bool:
        """Wait (bounded) until ``session`` is covered; whether it is."""
        if self.covers(session):
            return True
        try:
            async with asyncio.timeout(within):
                async with self._changed:
                    await self._changed.wait_for(lambda: self.covers(session))
        except TimeoutError:
            return False
        return True


def _ignore_check(_read: bool) -> None:
    return None


def _ignore_stage(_stage: str, _seconds: float) -> None:
    pass


class MemoryService:
    """One region's memory operations (see the module docstring)."""

    def __init__(
        self,
        *,
        region: str,
        store: MemoryStore,
        cache: StateCache,
        log: Appender,
        journal: Journal,
        clock: HybridClock,
        tracker: SeqTracker,
        limiter: RateLimiter,
        limits: Limits,
        key: bytes,
        observe_stage: Callable[[str, float], None] | None = None,
        known: KnownKeys | None = None,
        on_existence_check: Callable[[bool], None] | None = None,
    ) -> None:
        self.region = region
        # Keys whose state may be here (None: assume any may be, always read).
        self.known = known
        self._on_existence_check = on_existence_check or _ignore_check
        self._observe_stage = observe_stage or _ignore_stage
        self.store = store
        self.cache = cache
        self.log = log
        self.journal = journal
        self.clock = clock
        self.tracker = tracker
        self.limiter = limiter
        self.limits = limits
        self._key = key
        self.log_available = True
        self.outbox_busy = False
        self._inflight: set[int] = set()
        # Event ids: this process's random 64-bit prefix and the event's seq
        # (32 hex digits, like a uuid4's): unique without building a UUID from
        # os.urandom per write (~3 % of the loop's samples at 600 writes/s).
        self._event_id_prefix = secrets.token_hex(8)
        self._wake_drainer = asyncio.Event()
        # Told of each event as soon as the log acknowledged it (not of outbox
        # writes): gateway/write_through.py applies them here without waiting
        # for the log's delivery (nor for the journal's fsync).
        self.on_logged: Callable[[MemoryEvent, bytes], None] | None = None

    # -- tokens ---------------------------------------------------------------

    def version_token(self, state: MemoryState) -> str:
        """The ``ETag`` of a state: its memory and causal context."""
        return encode_version(state.key, state.clock, self._key)

    def parse_version(self, token: str | None) -> Version | None:
        """The memory and context of an ``If-Match`` header (``None``: blind write)."""
        if token is None:
            return None
        token = token.strip()
        if token.startswith("W/"):
            token = token[2:]
        return decode_version(token.strip('"'), self._key)

    def parse_session(self, header: str | None) -> DotContext:
        """The applied-events context named by an ``X-Memsync-Session`` header.

        The header holds one token or several, comma-separated, whose contexts
        are joined: writes in flight at once each answer with the token they
        were sent plus their own event, so a client that had several in flight
        sends them all back (at most ``MAX_SESSION_TOKENS``).
        """
        if not header:
            return EMPTY
        tokens = [t.strip() for t in header.split(",") if t.strip()]
        if len(tokens) > MAX_SESSION_TOKENS:
            raise BadRequestError(
                f"X-Memsync-Session holds {len(tokens)} tokens; at most {MAX_SESSION_TOKENS} "
                "(send the tokens of your latest writes that were in flight at once)"
            )
        ctx = EMPTY
        for token in tokens:
            ctx = dvv.join(ctx, unseal(token, self._key, "session", DotContext))
        return ctx

    def session_token(self, ctx: DotContext) -> str:
        """An ``X-Memsync-Session`` token."""
        return seal(ctx, self._key, "session")

    def view(self, state: MemoryState) -> MemoryView:
        """The reader's view of a state, with its version token."""
        return materialize(state, self.version_token(state))

    # -- reads ----------------------------------------------------------------

    async def current(self, key: str) -> MemoryState | None:
        """A memory's state here: cache, else store (filling the cache)."""
        cached = self.cache.get(key)
        if cached is not None:
            return cached
        started = time.perf_counter()
        state = await self.store.get(key)
        self._observe_stage("read", time.perf_counter() - started)
        if state is not None:
            self.remember(state)
        return state

    def remember(self, state: MemoryState) -> None:
        """Put a state in the cache, joined with what is there (never regresses)."""
        self.note_known(state.key)
        old = self.cache.peek(state.key)
        self.cache.put(state if old is None else join(old, state))

    def note_known(self, key: str) -> None:
        """A state of ``key`` may now be in the cache or the store (before it is)."""
        if self.known is not None:
            self.known.add(key)

    def _visible(self, claims: Claims, state: MemoryState | None, memory_id: str) -> MemoryState:
        if (
            state is None
            or state.tenant_id != claims.tenant
            or not claims.may_act_for(state.user_id)
        ):
            raise NotFoundError(f"memory {memory_id!r} does not exist")
        return state

    async def await_session(self, session: DotContext, wait_ms: int | None = None) -> None:
        """Wait (bounded) until the writes a session token names are applied here."""
        if not (session.vv or session.cloud):
            return
        limit = self.limits.ryw_wait_ms
        budget = min(wait_ms if wait_ms is not None else limit, limit)
        if not await self.tracker.wait(session, budget / 1000):
            raise UnavailableError(
                "this region has not yet applied the writes named by X-Memsync-Session; "
                "retry, or send no session header to act on the current state",
                retry_after=0.1,
            )

    async def get(
        self, claims: Claims, memory_id: str, session: DotContext, wait_ms: int | None
    ) -> MemoryState:
        """A live memory; waits (bounded) for a session's writes to be applied."""
        claims.require("read")
        await self.await_session(session, wait_ms)
        key = f"{claims.tenant}/{memory_id}"
        state = self._visible(claims, await self.current(key), memory_id)
        if state.deleted:
            raise NotFoundError(f"memory {memory_id!r} was deleted")
        _refuse_withheld(state, memory_id)
        return state

    async def list_page(
        self,
        claims: Claims,
        *,
        user_id: str | None,
        topic: str | None,
        kind: str | None,
        limit: int,
        page_token: str | None,
    ) -> tuple[list[MemoryState], str | None]:
        """One page of live memories the token may see."""
        claims.require("read")
        users = claims.user_filter(user_id)
        states, token = await self.store.list_page(
            ListQuery(
                tenant_id=claims.tenant,
                user_ids=users,
                topic=topic,
                kind=kind,
                limit=min(limit, self.limits.max_list_limit),
                offset=page_token,
            )
        )
        return [s for s in states if not withheld(s)], token

    async def search(self, claims: Claims, req: SearchRequest) -> list[tuple[MemoryState, float]]:
        """Ranked live memories the token may see."""
        claims.require("read")
        if not req.query and req.embedding is None:
            raise ValidationError("search needs a 'query' text, an 'embedding', or both")
        self._check_dim(req.embedding)
        hits = await self.store.search(
            SearchQuery(
                tenant_id=claims.tenant,
                text=req.query or None,
                embedding=req.embedding,
                user_ids=claims.user_filter(req.user_id),
                kind=req.kind,
                topics=req.topics,
                limit=min(req.limit, self.limits.max_search_limit),
            )
        )
        return [(s, score) for s, score in hits if not withheld(s)]

    # -- writes ---------------------------------------------------------------

    def _check_dim(self, embedding: Sequence[float] | None) -> None:
        dim = self.store.vector_dim
        if embedding is not None and len(embedding) != dim:
            raise ValidationError(
                f"embedding has {len(embedding)} dimensions; this region stores {dim}"
            )

    async def create(self, claims: Claims, req: CreateRequest, session: DotContext) -> WriteResult:
        """Create a memory."""
        claims.require("write")
        claims.require_user(req.user_id)
        if req.system:
            claims.require("admin")
        self._check_dim(req.embedding)
        policy = req.policy or default_policy(req.kind)
        memory_id = req.id or uuid.uuid4().hex
        key = f"{claims.tenant}/{memory_id}"
        # A generated id (uuid4) is new by construction, and a key this gateway
        # has never seen (gateway/known_keys.py) is not here: no lookup then.
        state = None
        if req.id is not None:
            may_exist = self.known is None or key in self.known
            self._on_existence_check(may_exist)
            if may_exist:
                state = await self.current(key)
        if state is None and req.id is not None and self.journal.last_counter(key):
            # A create of this id is in flight here (journalled or appending,
            # not applied yet): a second one would merge into the same memory,
            # two owners' versions in one state (the lower origin's user owning
            # both). No await from here to the counter's claim in ``_write``.
            raise ConflictError(f"memory {memory_id!r} already exists: update it with PATCH")
        if state is not None:
            if state.tenant_id == claims.tenant and state.deleted:
                raise ConflictError(f"memory {memory_id!r} was deleted; ids are never reused")
            raise ConflictError(f"memory {memory_id!r} already exists: update it with PATCH")
        if req.items and req.kind not in ("list", "conversation"):
            raise ValidationError(f"'items' applies to lists and conversations, not {req.kind!r}")
        if req.value and req.kind != "counter":
            raise ValidationError(f"'value' applies to counters, not {req.kind!r}")
        body = MemoryBody(
            id=memory_id,
            tenant_id=claims.tenant,
            user_id=req.user_id,
            kind=req.kind,
            policy=policy,  # type: ignore[arg-type]
            content=req.content,
            items=tuple(dict.fromkeys(req.items)),
            value=req.value,
            embedding=req.embedding,
            metadata=req.metadata,
            topics=tuple(dict.fromkeys(req.topics)),
            shared=req.shared,
        )
        ops = Ops(fields=True, add=body.items, increment=req.value)
        return await self._write(
            claims,
            key,
            "create",
            body,
            ops,
            EMPTY,
            None,
            req.source.agent_id,
            req.source.session_id,
            session,
            req.system,
        )

    async def update(
        self,
        claims: Claims,
        memory_id: str,
        req: PatchRequest,
        version: Version | None,
        session: DotContext,
    ) -> WriteResult:
        """Update a memory's fields, list items or counter."""
        claims.require("write")
        await self.await_session(session)
        key = f"{claims.tenant}/{memory_id}"
        state = self._visible(claims, await self.current(key), memory_id)
        if_match = _matched(version, key)
        if state.deleted:
            raise NotFoundError(f"memory {memory_id!r} was deleted")
        _refuse_withheld(state, memory_id)
        _require_system_scope(claims, state, memory_id)
        view = materialize(state)
        fields = {
            name: getattr(req, name)
            for name in ("content", "embedding", "metadata", "topics", "shared")
            if getattr(req, name) is not msgspec.UNSET
        }
        if not fields and not req.add and not req.remove and not req.increment:
            raise ValidationError("nothing to update: set a field, add/remove items or increment")
        if (req.add or req.remove) and state.kind not in ("list", "conversation"):
            raise ValidationError(
                f"add/remove applies to lists and conversations, not {state.kind!r}"
            )
        if set(req.add) & set(req.remove):
            raise ValidationError("an item cannot be added and removed in one update")
        if req.increment and state.kind != "counter":
            raise ValidationError(f"increment applies to counters, not {state.kind!r}")
        if "embedding" in fields:
            self._check_dim(fields["embedding"])
        if "topics" in fields:
            fields["topics"] = tuple(dict.fromkeys(fields["topics"]))
        if if_match is None and state.policy == "surface" and fields:
            context = EMPTY  # a blind write to a surfaced memory is a new sibling
        else:
            context = if_match if if_match is not None else state.clock
        if fields and state.policy == "surface":
            survivors = [v for v in state.versions if not dvv.contains(context, v.dot)]
            if len(survivors) >= self.limits.max_siblings:
                raise ConflictError(
                    f"memory {memory_id!r} has {len(survivors)} unresolved siblings; "
                    "resolve them by writing with If-Match set to the current ETag"
                )
        items = [i for i in view.items if i not in set(req.remove)]
        items += [i for i in req.add if i not in items]
        body = MemoryBody(
            id=state.id,
            tenant_id=state.tenant_id,
            user_id=state.user_id,
            kind=state.kind,  # type: ignore[arg-type]
            policy=state.policy,  # type: ignore[arg-type]
            content=fields.get("content", view.content),
            items=tuple(items),
            value=view.value + req.increment,
            embedding=fields.get("embedding", view.embedding),
            metadata=fields.get("metadata", view.metadata),
            topics=fields.get("topics", view.topics),
            shared=fields.get("shared", view.shared),
        )
        ops = Ops(fields=bool(fields), add=req.add, remove=req.remove, increment=req.increment)
        return await self._write(
            claims,
            key,
            "update",
            body,
            ops,
            context,
            state,
            req.source.agent_id,
            req.source.session_id,
            session,
            state.system,
        )

    async def delete(
        self, claims: Claims, memory_id: str, version: Version | None, session: DotContext
    ) -> WriteResult:
        """Delete a memory (a tombstone that keeps its causal context)."""
        claims.require("write")
        await self.await_session(session)
        key = f"{claims.tenant}/{memory_id}"
        state = self._visible(claims, await self.current(key), memory_id)
        if_match = _matched(version, key)
        if state.deleted:
            raise NotFoundError(f"memory {memory_id!r} was already deleted")
        _require_system_scope(claims, state, memory_id)
        view = materialize(state)
        body = MemoryBody(
            id=state.id,
            tenant_id=state.tenant_id,
            user_id=state.user_id,
            kind=state.kind,  # type: ignore[arg-type]
            policy=state.policy,  # type: ignore[arg-type]
            content="" if withheld(state) else view.content,  # whose, it cannot say
            topics=view.topics,
            shared=view.shared,
        )
        context = if_match if if_match is not None else state.clock
        return await self._write(
            claims,
            key,
            "delete",
            body,
            Ops(fields=False),
            context,
            state,
            None,
            "",
            session,
            state.system,
        )

    async def _write(
        self,
        claims: Claims,
        key: str,
        event_type: EventType,
        body: MemoryBody,
        ops: Ops,
        context: DotContext,
        state: MemoryState | None,
        agent_id: str | None,
        session_id: str,
        session: DotContext,
        system: bool,
    ) -> WriteResult:
        self.limiter.check(claims.tenant, claims.sub)
        replica = self.journal.replica
        counter = next_counter(state, replica, self.journal.last_counter(key))
        self.journal.claim_counter(key, counter)  # no await since the lookup: no race
        try:
            event = make_event(
                event_id=self._event_id_prefix,  # placeholder: completed with the seq
                event_type=event_type,
                memory=body,
                source=Source(
                    agent_id=(agent_id or claims.sub)[:128],
                    session_id=session_id,
                    user_id=body.user_id,
                    region=self.region,
                ),
                context=context,
                dot=Dot(replica, counter),
                seq=1,  # placeholder: a seq is allocated only for a valid event
                timestamp=self.clock.now(),
                ops=ops,
                system=system,
            )
        except MemsyncError:
            self.journal.release(key, counter, None)  # no seq was issued for it
            raise
        seq = self.journal.next_seq()
        event = msgspec.structs.replace(
            event, seq=seq, event_id=f"{self._event_id_prefix}{seq:016x}"
        )
        raw = encode_wire(event)
        try:
            _checked_as_consumers_will(raw)
        except MemsyncError:
            self.journal.release(key, counter, seq)
            raise
        self._inflight.add(seq)
        try:
            _, degraded = await self._journal_and_append(key, counter, seq, raw, event)
        finally:
            self._inflight.discard(seq)
        after = apply(state, event)
        new_session = dvv.add(session, Dot(replica, seq))
        return WriteResult(self.view(after), self.session_token(new_session), degraded, event)

    async def _journal_and_append(
        self, key: str, counter: int, seq: int, raw: bytes, event: MemoryEvent
    ) -> tuple[Any, bool]:
        """Journal (fsync) and append concurrently; ``(appended or None, degraded)``."""
        started = time.perf_counter()
        journalled = self.journal.record(
            seq=seq, key=key, counter=counter, body=raw, high_water=event.timestamp
        )
        journalled.add_done_callback(
            lambda _: self._observe_stage("journal", time.perf_counter() - started)
        )
        appended: Any = None
        if self.log_available and not self.outbox_busy:
            try:
                appended = await self.log.append(key.encode(), raw, ())
                self._observe_stage("append", time.perf_counter() - started)
            except LogRecordRefusedError as exc:
                # The log will never take this event (checked as consumers do,
                # it still is too large for this broker): it must not stay in
                # the outbox, where it would hold every later write.
                await asyncio.gather(journalled, return_exceptions=True)
                await self.journal.discard(seq)
                self.journal.release(key, counter, seq)
                _log.error("log.refused_write", key=key, seq=seq, error=exc.message)
                raise
            except MemsyncError as exc:
                if not exc.retriable:
                    await asyncio.gather(journalled, return_exceptions=True)
                    raise
                self.log_available = False
                _log.warning("log.unavailable_on_write", key=key, seq=seq, error=exc.message)
            else:
                if self.on_logged is not None:
                    # In the log: applied here (and everywhere) whatever the
                    # journal says, so it need not wait for the journal's fsync.
                    self.on_logged(event, raw)
        try:
            await journalled  # durability: the answer waits for the fsync
        except MemsyncError:
            if appended is None:
                self.journal.release(key, counter, seq)  # nothing anywhere: no gap
            raise
        if appended is not None:
            self.journal.note_logged(seq, int(appended.segment))
            return appended, False
        # The log is down, or older events wait in the outbox (they drain in
        # seq order): this event waits there too, durable in the journal.
        self.outbox_busy = True
        self._wake_drainer.set()
        return None, True

    # -- the outbox ---------------------------------------------------------

    async def drain_outbox(self, batch: int = 500) -> int:
        """Append pending journal rows to the log in seq order; how many went.

        New writes join the outbox while it is being drained, so the log sees
        this replica's events in seq order; the flag drops when it is empty.
        """
        sent = 0
        while True:
            rows = [r for r in await self.journal.pending(batch) if r.seq not in self._inflight]
            if not rows:
                self.outbox_busy = False
                return sent
            logged: list[tuple[int, int]] = []
            try:
                for row in rows:
                    appended = await self._append_row(row)
                    if appended is not None:
                        logged.append((row.seq, int(appended.segment)))
            finally:
                await self.journal.mark_logged(logged)
                sent += len(logged)
            self.log_available = True

    async def republish(self, batch: int = 500) -> int:
        """Re-append every journalled, unpruned event (after the broker lost its log)."""
        after, sent = 0, 0
        while True:
            rows = await self.journal.logged_after(after, batch)
            if not rows:
                return sent
            logged = []
            for row in rows:
                appended = await self._append_row(row)
                if appended is not None:
                    logged.append((row.seq, int(appended.segment)))
            await self.journal.mark_logged(logged)
            sent += len(logged)
            after = rows[-1].seq

    async def _append_row(self, row: JournalRow) -> Any:
        """Append one journal row; ``None`` when the log refused it for good (row dropped).

        A record the log refuses for its size (a journal written before the
        gateway checked events as consumers do, or a broker with a smaller
        record limit) would otherwise stop the outbox, or a re-publication,
        at that row forever. The row is dropped with an error naming it;
        every other error still raises, so the drainer retries later.
        """
        try:
            return await self.log.append(row.key.encode(), row.body, ())
        except LogRecordRefusedError as exc:
            # Only a refusal of the record itself: any other error (a broker
            # just restarted answers UnknownError) may pass, and the row stays.
            await self.journal.discard(row.seq)
            _log.error(
                "journal.row_refused_by_log",
                seq=row.seq,
                key=row.key,
                bytes=len(row.body),
                error=exc.message,
            )
            return None

    def poke_outbox(self) -> None:
        """Ask the outbox drainer to look now."""
        self._wake_drainer.set()

    async def wait_for_outbox_work(self, within: float) -> None:
        """Sleep until a write went to the outbox, or ``within`` seconds."""
        try:
            async with asyncio.timeout(within):
                await self._wake_drainer.wait()
        except TimeoutError:
            pass
        self._wake_drainer.clear()


def _checked_as_consumers_will(raw: bytes) -> None:
    """Refuse a finished event that a consumer of the log would refuse.

    Structs built in the gateway skip the wire type's constraints (lengths,
    ranges) and the event's size limit, which every consumer checks when it
    decodes: a write answered 201 would then be applied here (write-through)
    and dead-lettered everywhere else. Raises the decoder's
    :class:`PayloadTooLargeError` (413) or :class:`ValidationError` (422).
    """
    try:
        decode_event(raw)
    except MemsyncError as exc:
        raise type(exc)(f"this write is refused, its event breaks a limit: {exc.message}") from exc


def _matched(version: Version | None, key: str) -> DotContext | None:
    """The context of an ``If-Match`` for memory ``key``; 412 if it names another memory."""
    if version is None:
        return None
    if version.key != key:
        raise PreconditionFailedError(
            "If-Match holds the version of another memory; read this memory and send its ETag"
        )
    return version.context


def _refuse_withheld(state: MemoryState, memory_id: str) -> None:
    """409 for a contested memory (:mod:`gateway.visibility`): no one is shown it."""
    if withheld(state):
        raise ConflictError(
            f"memory {memory_id!r} was created by two users at once, in regions cut off from "
            "each other, and is withheld from reads and updates; its owner may DELETE it "
            "and create the memory again under another id"
        )


def _require_system_scope(claims: Claims, state: MemoryState, memory_id: str) -> None:
    """403 unless an admin token writes a ``system:global`` memory (its events go there)."""
    if state.system and "admin" not in claims.scope:
        raise ForbiddenError(
            f"memory {memory_id!r} is a system memory: changing it publishes to "
            "system:global, which needs a token with the 'admin' scope"
        )
