"""Live streams of one gateway: history + fan-out, and the pump behind each connection.

The applier hands every batch of newly applied events to :meth:`Streams.on_batch`,
which stamps them into the durable history (so a cursor handed out can
always be resumed — the history write is queued *before* anything is sent,
and the batch's indexes are reserved on disk) and publishes them to the
fan-out, in stamp (index) order. A :class:`Pump` sends for one WebSocket or
SSE connection's :class:`~gateway.fanout.Subscription`: replays, lazy
batches, SSE heartbeats and whatever had to wait for a full socket go out in
order through it (a WebSocket's pump runs only while such work waits).
Live events for a caught-up eager WebSocket subscriber are written by the
fan-out directly (see :mod:`gateway.fanout`); the two never overlap,
because the fan-out steps aside while the pump is sending.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable, Sequence

import msgspec
import structlog

from gateway.errors import BadRequestError
from gateway.fanout import Delivery, Fanout, Subscription
from gateway.history import Cursor, History, HistoryEntry, ResyncRequiredError
from gateway.leaving import Leaving, delivered_to, leaving, left_message
from replication import dvv
from replication.dvv import Dot, DotContext
from replication.merge import apply
from replication.routing import channels_for, parse_channel, tenant_channel
from replication.schema import MemoryEvent
from replication.state import MemoryState, materialize

__all__ = ["Pump", "Streams", "channel_allows", "repair_route"]

_log = structlog.get_logger(__name__)
_MAX_REPLAYS = 16
_encoder = msgspec.json.Encoder()

Send = Callable[[bytes, str | None], Awaitable[None]]
# An applied event: itself, its bytes, its memory's state right after it and before it.
Applied = tuple[MemoryEvent, bytes, MemoryState, MemoryState | None]


def channel_allows(
    sub: Subscription, tenant: str, channels: Sequence[str], only: set[str] | None = None
) -> bool:
    """Whether ``sub`` may see an event routed to ``channels`` (history replay).

    The event's user and ``shared`` flag are read back from its channels
    (``user:{id}:memories``; ``tenant:{id}:shared`` only when shared).
    """
    if tenant != sub.claims.tenant:
        return False
    wanted = only if only is not None else sub.channels
    user = ""
    shared = False
    for ch in channels:
        kind, ident = parse_channel(ch)
        if kind == "user":
            user = ident
        elif kind == "tenant":
            shared = True
    return any(
        ch in wanted and (not ch.startswith("topic:") or shared or sub.claims.may_act_for(user))
        for ch in channels
    )


class Streams:
    """History and fan-out of one gateway."""

    def __init__(self, history: History, fanout: Fanout) -> None:
        self.history = history
        self.fanout = fanout
        self._head: tuple[Cursor | None, str] = (None, "")

    async def on_batch(self, batch: Sequence[Applied], frontier: DotContext) -> None:
        """Record and publish the events of a batch the history does not hold yet.

        Cursors are positions in this history: their context is everything it
        recorded before, plus the batch up to the event (``frontier`` is not
        needed for that, and the history stays consistent with itself). Each
        event's ``state`` is the memory's state right after that event (never
        a later one: it goes to subscribers of the event's channels), and
        with the state before it says which channels the memory left
        (:mod:`gateway.leaving`), recorded and announced with the event.
        """
        history = self.history
        if history.failed:
            # A failed append's entries (their cursors may be out) are written
            # before anything new is stamped; while that fails, so does this.
            await history.flush()
        while True:
            seen = history.recorded  # retained and trimmed events alike
            fresh = []
            parts: list[bool] = []  # per fresh event: its state is a part (Delivery.partial)
            late: list[tuple[MemoryState | None, MemoryState]] = []
            for e, raw, state, before in batch:
                dot = Dot(e.dot.replica, e.seq)
                if dvv.contains(seen, dot):
                    if state is not before:
                        # Recorded, yet its merge changed the memory here: an
                        # event late past a gap the history closed (or one a
                        # crash left in the history but not in the store). It
                        # has no position to take; live subscribers get the
                        # state it made, as a repair's (cursor kept). Never a
                        # ``left``: the pair may be a stale read's (a batch
                        # that raced the one that recorded the event), and
                        # joining a state of real events is always safe.
                        late.append((before, state))
                else:
                    if state is before:
                        # Applied before, yet not recorded here (history rows
                        # a crash lost; an event a state repair merged, or a
                        # newer state covered, before the log delivered it):
                        # the state found is a later one, which may have left
                        # this event's channels. The state of the event alone
                        # is what its channels may see (a part of the whole:
                        # joining it is safe), and it says nothing left.
                        # A part even for a create: later events are missing.
                        state, before = apply(None, e), None
                        parts.append(True)
                    else:
                        parts.append(before is None and e.event_type != "create")
                    fresh.append((e, raw, state, before))
                    seen = dvv.add(seen, dot)
            if not fresh:
                self._late(late)
                return
            if history.fits(len(fresh)):
                break
            # Its indexes are not reserved on disk yet: reserve them *before*
            # stamping. Stamping, then waiting for the write, then publishing
            # would let a batch stamped meanwhile go out first, and its cursor
            # would pass this one unsent. Another batch may be stamped while
            # this waits: look again.
            await history.reserve(len(fresh))
        entries = history.stamp(
            [
                (Dot(e.dot.replica, e.seq), e.memory.tenant_id, delivered_to(e, state), raw)
                for e, raw, state, _ in fresh
            ],
            [leaving(before, state) for _, _, state, before in fresh],
        )
        # Queued before the fan-out (a resume replays after it), awaited after:
        # live subscribers need not wait for the history's thread. Stamp,
        # queue and publish with no await between them: publication follows
        # stamp order, whoever calls.
        persisted = history.append(entries)
        try:
            self._publish(fresh, entries, parts)
            self._late(late)
        finally:
            await persisted

    def _publish(
        self, fresh: Sequence[Applied], entries: Sequence[HistoryEntry], parts: Sequence[bool]
    ) -> None:
        deliveries: list[Delivery] = []
        for (e, raw, state, _), entry, part in zip(fresh, entries, parts, strict=True):
            delivery = Delivery(
                key=e.key,
                tenant=e.memory.tenant_id,
                user=e.memory.user_id,
                shared=tenant_channel(e.memory.tenant_id) in entry.channels,
                channels=entry.channels,  # delivered_to: where it and its memory are
                dot=entry.dot,
                raw=raw,
                state=state,
                cursor_token=functools.partial(self.history.encode_cursor, entry.cursor),
                partial=part,
            )
            deliveries.append(delivery)
            if entry.leaving is not None:  # after the event: whoever got both drops it
                deliveries.append(Delivery.leaving(delivery, entry.leaving))
                if not entry.leaving.now:
                    self._contested(e.key)
        self.fanout.publish(deliveries)

    def _late(self, changes: Sequence[tuple[MemoryState | None, MemoryState]]) -> None:
        """Live subscribers get what recorded events changed anyway, as repaired states.

        One state per memory, the last (an earlier one may be routed where
        the memory has left since). No ``left`` but a contested memory's
        (``contested`` only ever turns on, so even a stale read's pair says
        it rightly): the pair may be a stale read's, and joining a state of
        real events is always safe.
        """
        if not changes:
            return
        first: dict[str, MemoryState | None] = {}
        last: dict[str, MemoryState] = {}
        for before, after in changes:
            first.setdefault(after.key, before)
            last[after.key] = after
        self.fanout.stats.late += len(last)
        self._repaired([(first[key], after) for key, after in last.items()], moved=False)

    def on_states(self, changes: Sequence[tuple[MemoryState | None, MemoryState]]) -> None:
        """Tell live subscribers of memories a repair changed (no event, no cursor move).

        Each subscription that may see some of them gets one ``{"op":
        "batch", "events": [], "states": [...], "cursor": null}``: clients
        join the states, as with a coalesced batch, and keep their cursor. A
        repair that took a memory off channels is listed in ``left`` for
        whoever could see it there and cannot now (:mod:`gateway.leaving`).
        """
        self._repaired(changes, moved=True)

    def _repaired(
        self, changes: Sequence[tuple[MemoryState | None, MemoryState]], *, moved: bool
    ) -> None:
        """Publish changed states, with what they left: every move if ``moved``,
        else only a memory's becoming contested."""
        left: list[tuple[MemoryState, Leaving]] = []
        for before, after in changes:
            gone = leaving(before, after)
            if gone is not None and (moved or not gone.now):
                left.append((after, gone))
                if not gone.now:
                    self._contested(after.key)
        self.fanout.publish_states(
            [
                (after, *repair_route(before, after), _encoder.encode(after))
                for before, after in changes
            ],
            left,
        )

    def _contested(self, key: str) -> None:
        """Count and log a memory that just became contested (gateway.visibility)."""
        self.fanout.stats.contested += 1
        _log.error(
            "memory.contested",
            key=key,
            hint="two users created this id in regions cut off from each other; it is "
            "withheld from everyone until its owner deletes it",
        )

    def head_token(self) -> str:
        """The cursor of "now": everything applied so far.

        Sealed once per head: subscribers that start at the same head share
        one string (each idle connection keeps its cursor).
        """
        head = self.history.head
        if self._head[0] is not head:
            self._head = (head, self.history.encode_cursor(head))
        return self._head[1]


def repair_route(before: MemoryState | None, after: MemoryState) -> tuple[tuple[str, ...], bool]:
    """``(channels, shared)`` a repaired memory goes to, as its event would.

    A live memory goes where its current version says. A deletion goes
    where the memory was before (a delete event carries the deleted
    version's topics and sharing too): a deleted state has no version left
    to say it, and no content to leak. A system memory also goes to
    ``system:global``, as its every event does.
    """
    source = before if after.deleted and before is not None else after
    view = materialize(source)
    channels = channels_for(
        tenant_id=after.tenant_id,
        user_id=after.user_id,
        topics=view.topics,
        shared=view.shared,
        system=after.system,
    )
    return channels, view.shared


def _replayed_messages(
    sub: Subscription, entry: HistoryEntry, channels: set[str], token: str
) -> tuple[list[bytes], bool]:
    """What a replay of ``channels`` sends ``sub`` of one entry, and whether the event is in it.

    Its event, a ``left``, or both — as live. A resume may replay only some
    of a connection's channels: the memory was seen on the replayed ones,
    but whether it can be seen *now* is asked of all of them (live, it
    would not have been told it left while another of its channels shows
    it).
    """
    out: list[bytes] = []
    shown = channel_allows(sub, entry.tenant, entry.channels, channels)
    if shown:
        out.append(_event_message(entry.body, token))
    left = entry.leaving
    if (
        left is not None
        and channel_allows(sub, entry.tenant, left.prior, channels)
        and not channel_allows(sub, entry.tenant, left.now, channels | set(sub.channels))
    ):
        memory = msgspec.json.decode(entry.body, type=_MemoryRef).memory
        out.append(left_message(memory.id, f"{entry.tenant}/{memory.id}", token))
    return out, shown


class _Id(msgspec.Struct):
    id: str


class _MemoryRef(msgspec.Struct):
    memory: _Id


def _event_message(raw: bytes, cursor: str) -> bytes:
    return b'{"op":"event","event":' + raw + b',"cursor":' + _encoder.encode(cursor) + b"}"


def control(op: str, **fields: object) -> bytes:
    """A control message (``subscribed``, ``error``, ``heartbeat``)."""
    return _encoder.encode({"op": op, **fields})


class Pump:
    """Sends one subscription's messages over one connection, in order."""

    def __init__(
        self,
        streams: Streams,
        sub: Subscription,
        send: Send,
        *,
        heartbeat_s: float = 15.0,
        replay_page: int = 500,
    ) -> None:
        self.streams = streams
        self.sub = sub
        self._send = send
        self._heartbeat_s = heartbeat_s
        self._replay_page = replay_page
        self._replays: list[tuple[Cursor, set[str]]] = []  # at most _MAX_REPLAYS
        self._replayed: DotContext = dvv.EMPTY  # sent by replays whose hold is not released
        self._last_flush = time.monotonic()

    @property
    def sent_cursor(self) -> str:
        """The cursor of the last message actually sent (by the pump or the fan-out)."""
        return self.sub.sent_cursor

    async def send(self, message: bytes, cursor: str | None) -> None:
        """Send one message and remember its cursor."""
        await self._send(message, cursor)
        if self.sub.stats is not None:
            self.sub.stats.pumped += 1
        if cursor:
            self.sub.sent_cursor = cursor
        self.sub.last_sent = time.monotonic()

    def request_replay(self, cursor: Cursor, channels: set[str], token: str) -> None:
        """Replay what ``cursor`` (sent as ``token``) has not seen on ``channels``, then live.

        Until something is sent, ``token`` is where this subscriber resumes
        from: a ``slow_consumer`` error during the replay names it, never "".
        """
        if len(self._replays) >= _MAX_REPLAYS:
            raise BadRequestError("too many resumes in flight on this connection; wait for them")
        if not self.sub.sent_cursor:
            self.sub.sent_cursor = token
        self.sub.hold()
        self.sub.skip = dvv.join(self.sub.skip, cursor.context)
        self._replays.append((cursor, channels))
        self.sub.send_direct(b"", None)  # wake the pump

    async def run(self, *, until_idle: bool = False) -> str | None:
        """Pump until the subscription is closed (why), or with ``until_idle``
        until nothing is left to send (``None``: the next work starts a pump again).
        """
        sub = self.sub
        sub.pumping = True
        try:
            return await self._run(until_idle)
        finally:
            sub.pumping = False

    async def _run(self, until_idle: bool) -> str | None:
        sub = self.sub
        if not until_idle:
            sub.last_sent = time.monotonic()
        while sub.closed is None:
            if until_idle and not self._replays and sub.idle():
                return None
            now = time.monotonic()
            interval = sub.interval_ms / 1000
            next_flush = self._last_flush + interval
            due = now >= next_flush
            wait = self._heartbeat_s - (now - sub.last_sent)
            if sub.mode == "lazy" or sub.pending:
                wait = min(wait, max(0.0, next_flush - now))
            await sub.wait(max(0.0, wait), lazy_due=due)
            sub.busy = True  # the fan-out must not write past what is sent here
            try:
                await self._turn(interval)
            finally:
                sub.busy = False
        return sub.closed

    async def _turn(self, interval: float) -> None:
        """Replays, then what is queued, then a heartbeat if the line was quiet."""
        sub = self.sub
        while self._replays:
            await self._replay(*self._replays.pop(0))
        now = time.monotonic()
        flush = now >= self._last_flush + interval
        if flush:
            self._last_flush = now
        for message, cursor in sub.take(flush_lazy=flush):
            if message:
                await self.send(message, cursor)
        if time.monotonic() - sub.last_sent >= self._heartbeat_s:
            await self.send(control("heartbeat"), None)

    def _finish_replay(self, replayed: DotContext) -> None:
        """Release held live events once no other replay is waiting."""
        if self._replays:
            self._replayed = replayed
        else:
            self._replayed = dvv.EMPTY
            self.sub.release(replayed)

    async def _replay(self, cursor: Cursor, channels: set[str]) -> None:
        sub = self.sub
        replayed: DotContext = self._replayed
        history = self.streams.history
        stats = self.streams.fanout.stats
        try:
            while True:
                entries, cursor, more = await history.replay(
                    cursor,
                    lambda tenant, chans: channel_allows(sub, tenant, chans, channels),
                    self._replay_page,
                )
                for entry in entries:
                    token = history.encode_cursor(entry.cursor)
                    messages, shown = _replayed_messages(sub, entry, channels, token)
                    for message in messages:
                        await self.send(message, token)
                    if shown:  # a live delivery of an event only announced here still goes
                        replayed = dvv.add(replayed, entry.dot)
                if not more:
                    break
        except ResyncRequiredError as exc:
            stats.resyncs += 1
            self._finish_replay(replayed)
            await self.send(control("error", code=exc.code, message=exc.message), None)
            return
        stats.replays += 1
        token = history.encode_cursor(cursor)
        sub.cursor = token
        self._finish_replay(replayed)
        await self.send(
            control("subscribed", channels=sorted(channels), cursor=token, replayed=True), token
        )
