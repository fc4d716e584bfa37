"""Channel fan-out: every applied event to every subscription that may see it, once.

A :class:`Delivery` is built once per applied event and shared by every
subscriber: the WebSocket/SSE message is encoded once, embedding the event's
bytes exactly as they came from the log (never re-encoded).

Each :class:`Subscription` has a bounded outbound buffer. **Eager** ones
queue each message; past ``soft_limit`` queued messages they start
coalescing like **lazy** ones — one entry per memory, the latest event plus
the memory's full replicated state, so nothing causally earlier is lost (the
client joins the state; a reader who may not act for the memory's owner
gets it without the owner's private versions, :mod:`gateway.visibility`).
Past ``hard_limit`` coalesced memories the subscription is closed with its
resume cursor (``slow_consumer``): a slow client never grows gateway memory
without bound. Control replies and state repairs queued for a client that
does not read count against the same ``hard_limit``.

**Direct writes.** A WebSocket subscription that is eager, caught up and
whose socket has room is written to by the fan-out itself: at the end of
each published batch, what the batch queued for it goes out as whole frames
in one write, with no task switch per subscriber (a bare broadcast). Its
pump task runs only for what needs waiting — a full socket, a replay, lazy
timing — and the fan-out never writes while the pump holds taken messages,
so order is kept. Idle subscriptions' heartbeats come from one sweep
(:meth:`Fanout.heartbeat`).

Authorisation (I7) is checked at subscribe time per channel and again per
event: the index is keyed by ``(tenant, channel)``, and a topic channel
delivers only memories of users the token may act for, or shared ones.

**Leaving.** An event that takes its memory off channels is followed by a
``left`` delivery (:meth:`Delivery.leaving`, :mod:`gateway.leaving`) routed
to where the memory was: it reaches each subscription that could see it
there and cannot where it is now, as a content-free ``left`` message (a
coalesced entry: in the batch's ``left`` list).
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

import msgspec

from gateway.auth import Claims
from gateway.errors import ForbiddenError
from gateway.leaving import Leaving, left_message
from gateway.visibility import for_others, hides_something, withheld
from replication import dvv
from replication.dvv import EMPTY, Dot, DotContext
from replication.merge import join
from replication.routing import parse_channel, tenant_channel
from replication.state import MemoryState

__all__ = [
    "MAX_SUBSCRIPTION_CHANNELS",
    "Delivery",
    "DirectWriter",
    "Fanout",
    "FanoutStats",
    "Subscription",
    "authorize_channels",
]

_encoder = msgspec.json.Encoder()
_ids = itertools.count(1)
_DIRECT_MAX_BYTES = 256 * 1024  # the most one direct write may carry
_RUN_MAX = 256  # the most events one batch frame carries
# The most channels one subscription listens on, over all its subscribe ops
# (also the most one op, an SSE stream or a pull sync may name): bounds the
# index entries and the per-event membership checks a connection costs.
MAX_SUBSCRIPTION_CHANNELS = 64


class FanoutStats:
    """What one gateway's fan-out did since it started: plain counts, read at scrape time.

    Kept here, not in Prometheus objects, so the per-event path costs an
    integer increment (``gateway.runtime`` exports them as counters).
    """

    __slots__ = (
        "batches",
        "closed",
        "coalescing",
        "contested",
        "deliveries",
        "direct_writes",
        "events",
        "late",
        "other_writes",
        "pumped",
        "replays",
        "resyncs",
    )

    def __init__(self) -> None:
        self.batches = 0  # batches published
        self.events = 0  # events in them
        self.deliveries = 0  # (event, subscription) pairs offered or written
        self.direct_writes = 0  # the fan-out's own batch writes to caught-up sockets
        self.other_writes = 0  # other straight socket writes: queues flushed, control, heartbeats
        self.pumped = 0  # messages sent by connections' pumps (flow-controlled)
        self.coalescing = 0  # times an eager subscription fell behind and began coalescing
        self.replays = 0  # resumes from a cursor replayed from the history
        self.resyncs = 0  # cursors answered ``resync_required`` (history gone)
        self.contested = 0  # memories that became contested here (gateway.visibility)
        self.late = 0  # states of recorded events that still changed their memory
        self.closed: dict[str, int] = {}  # subscriptions the server closed, by reason

    def closing(self, reason: str) -> None:
        """Count a subscription the server closes."""
        self.closed[reason] = self.closed.get(reason, 0) + 1


@dataclass(eq=False)
class Delivery:
    """One applied event, ready to send to any number of subscribers."""

    key: str
    tenant: str
    user: str
    shared: bool
    channels: tuple[str, ...]
    dot: Dot  # (replica, seq): the event's position in the cursor space
    raw: bytes
    state: MemoryState
    # The cursor after this event: a token, or a function making it. Sealing
    # a token costs a MAC and an encoding, so it is done only for events
    # some subscriber receives, once.
    cursor_token: str | Callable[[], str]
    # Set on an announcement that the memory left ``channels`` (its routing
    # before the event; ``left.now`` is after it): sent as a content-free
    # ``left`` message to whoever could see it there and cannot now.
    left: Leaving | None = None
    # ``state`` is made of this event alone and is not the memory's whole
    # state: an event other than a create that found its memory unknown here
    # (an update that came before its create), or a duplicate the history
    # lacked, create or not (its later events are missing). A coalesced
    # batch joins it into what the subscriber's entry held, and sends none
    # on its own, so a client never takes it for the whole.
    partial: bool = False
    runs: int = 1  # events in ``raw`` (more than one only in a coalesced entry, _joined)
    _message: bytes | None = None
    _state_json: bytes | None = None
    _others_json: bytes | None = None

    @classmethod
    def leaving(cls, event: Delivery, left: Leaving) -> Delivery:
        """The ``left`` announcement that goes with ``event`` (same position, no content)."""
        return cls(
            key=event.key,
            tenant=event.tenant,
            user=event.user,
            shared=tenant_channel(event.tenant) in left.prior,
            channels=left.prior,
            dot=event.dot,
            raw=b"",
            state=event.state,
            cursor_token=lambda: event.cursor,  # sealed once, for both
            left=left,
        )

    @property
    def cursor(self) -> str:
        """The resume cursor after this event (sealed on first use)."""
        token = self.cursor_token
        if not isinstance(token, str):
            token = self.cursor_token = token()
        return token

    @property
    def message(self) -> bytes:
        """``{"op": "event", "event": ..., "cursor": ...}`` (or ``left``), encoded once."""
        if self._message is None and self.left is not None:
            self._message = left_message(self.state.id, self.key, self.cursor)
        elif self._message is None:
            self._message = b"".join(
                (
                    b'{"op":"event","event":',
                    self.raw,
                    b',"cursor":',
                    _encoder.encode(self.cursor),
                    b"}",
                )
            )
        return self._message

    @property
    def state_json(self) -> bytes:
        """The memory's replicated state as JSON, encoded once."""
        if self._state_json is None:
            self._state_json = _encoder.encode(self.state)
        return self._state_json

    def state_json_for(self, sub: Subscription) -> bytes:
        """The state as ``sub`` may see it: whole for its owner, else without
        the versions the owner kept private (:mod:`gateway.visibility`), each
        encoded once."""
        if sub.claims.may_act_for(self.user):
            return self.state_json
        if self._others_json is None:
            self._others_json = _others_json(self.state, self.state_json)
        return self._others_json


def authorize_channels(claims: Claims, channels: Iterable[str]) -> tuple[str, ...]:
    """The channels, checked against the token (:class:`ForbiddenError` names the first bad one).

    ``ValueError`` for a malformed channel name.
    """
    out: list[str] = []
    for name in channels:
        kind, ident = parse_channel(name)
        if kind == "user" and not claims.may_act_for(ident):
            raise ForbiddenError(f"this token may not subscribe to {name!r}")
        if kind == "tenant" and ident != claims.tenant:
            raise ForbiddenError(f"this token may not subscribe to {name!r} (another tenant)")
        out.append(name)
    return tuple(dict.fromkeys(out))


class DirectWriter(Protocol):
    """A connection the fan-out may write whole messages to without awaiting."""

    def ready(self) -> bool:
        """Whether the connection is open and its send buffer has room now."""
        ...

    def encode(self, messages: list[bytes]) -> bytes:
        """These messages as frames, one each (the same bytes for every connection)."""
        ...

    def write_encoded(self, data: bytes) -> None:
        """Send what :meth:`encode` made, now."""
        ...


@dataclass(eq=False, slots=True)
class Subscription:
    """One subscriber's channels, mode, position and bounded outbound buffer."""

    claims: Claims
    # A tuple, not a set: 48 bytes for one channel instead of 216, on every
    # connection (membership over at most MAX_SUBSCRIPTION_CHANNELS names is
    # as quick).
    channels: tuple[str, ...]
    mode: str = "eager"
    interval_ms: int = 100
    soft_limit: int = 256
    hard_limit: int = 4096
    id: int = field(default_factory=lambda: next(_ids))
    cursor: str = ""
    skip: DotContext = EMPTY  # dots the client already has (a resumed cursor)
    closed: str | None = None  # why the server is closing it
    # (message, cursor, raw event or None for control messages)
    # Made on first use, dropped when emptied: most connections are idle.
    _queue: list[tuple[bytes, str | None, bytes | None]] | None = None
    _coalesced: dict[str, Delivery] | None = None
    _coalescing: bool = False
    _held: list[Delivery] | None = None  # live deliveries held back during a replay
    # The pump's wake-up: a future only while it waits (an Event and its
    # waiter deque cost ~1 KiB per idle connection).
    _waiter: asyncio.Future[None] | None = None
    on_close: Callable[[], None] | None = None  # told when the server drops it
    # Told when there is work and no pump runs (a connection starts its pump
    # only then: an idle subscriber costs no task of its own).
    on_wake: Callable[[], None] | None = None
    writer: DirectWriter | None = None  # set for connections the fan-out may write to
    busy: bool = False  # the pump holds taken messages it has not sent yet
    pumping: bool = False  # a pump runs for it (set and cleared by Pump.run)
    sent_cursor: str = ""  # the cursor of the last message actually sent
    last_sent: float = field(default_factory=time.monotonic)
    stats: FanoutStats | None = None  # the fan-out's counts (set when indexed)

    def __post_init__(self) -> None:
        self.channels = tuple(dict.fromkeys(self.channels))

    def _enqueue(self, item: tuple[bytes, str | None, bytes | None]) -> int:
        """Append to the outbound queue (made on first use); its length."""
        if self._queue is None:
            self._queue = []
        self._queue.append(item)
        return len(self._queue)

    def close_lost(self) -> None:
        """The connection failed under a send: close this subscription."""
        self._close("connection_lost")

    def close_slow(self) -> None:
        """The client stopped reading (a send could not finish in time): drop it as slow."""
        self._close("slow_consumer")

    def close_expired(self) -> None:
        """Its token expired: a stream must not outlive the claims it was opened with (I7)."""
        self._close("token_expired")

    def _close(self, reason: str) -> None:
        if self.closed is None:
            self.closed = reason
            if self.stats is not None:
                self.stats.closing(reason)
            if self.on_close is not None:
                self.on_close()

    def allows(self, d: Delivery) -> bool:
        """Whether this subscriber may see a delivery on one of its channels.

        A ``left`` announcement: whether it could see the memory where it
        was (``d.channels``) and cannot where it is now (``d.left.now``).
        """
        if d.tenant != self.claims.tenant:
            return False
        if d.left is not None:
            now = d.left.now
            return self._sees(d.channels, d.user, d.shared) and not self._sees(
                now, d.user, tenant_channel(d.tenant) in now
            )
        return self._sees(d.channels, d.user, d.shared)

    def _sees(self, channels: tuple[str, ...], user: str, shared: bool) -> bool:
        for ch in channels:
            if ch in self.channels:
                if not ch.startswith("topic:"):
                    return True
                if shared or self.claims.may_act_for(user):
                    return True
        return False

    def allows_state(self, state: MemoryState, channels: tuple[str, ...], shared: bool) -> bool:
        """Whether this subscriber may see ``state`` routed to ``channels`` (no event).

        The rule of :meth:`allows`, for a memory's state where no event
        carries it: a state repair, a pull sync re-checking a current state.
        """
        return self.allows(_probe(state, channels, shared))

    def hold(self) -> None:
        """Hold live deliveries back while a replay is being sent."""
        if self._held is None:
            self._held = []

    def release(self, replayed: DotContext) -> None:
        """Stop holding; queue what was held unless the replay already sent it."""
        held, self._held = self._held or [], None
        for d in held:
            if not dvv.contains(replayed, d.dot):
                self.offer(d)
        self._wake()

    def offer(self, d: Delivery) -> None:
        """Queue a delivery (or coalesce it); never blocks, never grows unbounded."""
        if self.closed is not None or dvv.contains(self.skip, d.dot):
            return
        if self._held is not None:
            if len(self._held) >= self.hard_limit:
                self._close("slow_consumer")
            else:
                self._held.append(d)
            self._wake()
            return
        if self.mode == "lazy" or self._coalescing:
            if self._coalesced is None:
                self._coalesced = {}
            # Moved to the end: the batch's last entry is the latest offered,
            # and its cursor the stream's position after the batch.
            old = self._coalesced.pop(d.key, None)
            if d.partial and old is not None and old.left is None:
                d = _joined(old, d)
            self._coalesced[d.key] = d
            if len(self._coalesced) > self.hard_limit:
                self._close("slow_consumer")
        else:
            if self._enqueue((d.message, d.cursor, d.raw if d.left is None else None)) > (
                self.soft_limit
            ):
                self._coalescing = True
                if self.stats is not None:
                    self.stats.coalescing += 1
        self.cursor = d.cursor
        if self.writer is None or self._coalescing or self.mode == "lazy":
            self._wake()
        # else: the fan-out calls flush() once the whole batch is offered.

    def flush(self) -> None:
        """Write what is queued straight to the connection, or wake the pump for it."""
        if not self._queue or self.closed is not None:
            return
        writer = self._writable()
        if writer is None or sum(len(m) for m, _, _ in self._queue) > _DIRECT_MAX_BYTES:
            self._wake()  # the pump sends it (a big backlog: with flow control)
            return
        out = self.take(flush_lazy=False)
        messages = [message for message, _ in out if message]
        if messages:
            cursor = next((c for _, c in reversed(out) if c), None)
            self._send_now(writer, writer.encode(messages), cursor)

    def direct_writer(self) -> DirectWriter | None:
        """The connection, when this subscriber is caught up and it can take a write now.

        Nothing queued or coalesced besides what :meth:`_writable` asks: what
        the fan-out writes goes out in order with everything before it.
        """
        if self._queue or self._coalesced:
            return None
        return self._writable()

    def wrote(self, writer: DirectWriter, data: bytes, cursor: str) -> None:
        """Send bytes :meth:`direct_writer`'s connection encoded; ``cursor`` stands after them."""
        self.cursor = cursor
        self._send_now(writer, data, cursor, batch=True)

    def _writable(self) -> DirectWriter | None:
        """The connection, if the fan-out may write to it now.

        Open, eager and not catching up (no coalescing), no replay holding
        live events back, no pump holding taken messages, the socket with room.
        """
        writer = self.writer
        if (
            writer is None
            or self.closed is not None
            or self._held is not None
            or self.busy
            or self._coalescing
            or self.mode != "eager"
            or not writer.ready()
        ):
            return None
        return writer

    def _send_now(
        self, writer: DirectWriter, data: bytes, cursor: str | None, *, batch: bool = False
    ) -> None:
        try:
            writer.write_encoded(data)
        except (OSError, RuntimeError):  # the connection went away under us
            self._close("connection_lost")
            self._wake()
            return
        if self.stats is not None:
            if batch:  # the fan-out's own write of a batch to a caught-up subscriber
                self.stats.direct_writes += 1
            else:
                self.stats.other_writes += 1
        if cursor:
            self.sent_cursor = cursor
        self.last_sent = time.monotonic()

    def send_repair(self, message: bytes) -> None:
        """Queue a state-repair batch; past ``hard_limit`` queued messages, drop the subscriber."""
        if self.closed is not None:
            return
        if self._enqueue((message, None, None)) > self.hard_limit:
            self._close("slow_consumer")
            self._wake()
        else:
            self.flush()  # straight to the socket when it can take it, else the pump

    def send_direct(self, message: bytes, cursor: str | None = None) -> None:
        """Send a message outside the fan-out (replay, control), in order with events.

        Written straight to the connection when it can take it now, else
        queued for the pump. Bounded like events: past ``hard_limit`` queued
        messages (a client that stops reading and keeps sending operations
        is answered into the queue) the subscriber is dropped as
        ``slow_consumer``. Once closed nothing is queued; the pump is only
        woken, to finish.
        """
        if self.closed is not None:
            self._wake()  # the pump is told to finish
            return
        if self._enqueue((message, cursor, None)) > self.hard_limit:
            self._close("slow_consumer")
            self._wake()
            return
        if cursor is not None:
            self.cursor = cursor
        self.flush()

    def idle(self) -> bool:
        """Nothing queued, held back or coalesced: a pump would only wait."""
        return not self._queue and not self._coalesced and self._held is None

    def heartbeat_due(self, now: float, every: float) -> bool:
        """Whether nothing was sent for ``every`` seconds and no pump runs to say so."""
        return self.closed is None and not self.pumping and now - self.last_sent >= every

    async def wait(self, within: float | None, *, lazy_due: bool) -> None:
        """Wait until there is something to send now (or ``within`` seconds).

        Coalesced memories count only when a flush is due (``lazy_due``) or
        the subscription is an eager one catching up.
        """
        if self._queue or self.closed or (self._coalesced and (lazy_due or self._coalescing)):
            return
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        timer = None if within is None else loop.call_later(within, _settle, waiter)
        try:
            await waiter
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()

    def _wake(self) -> None:
        """Wake the pump if it waits; ask for one if none runs."""
        if self._waiter is not None:
            _settle(self._waiter)
        elif not self.pumping and self.on_wake is not None:
            self.on_wake()

    def take(self, flush_lazy: bool) -> list[tuple[bytes, str | None]]:
        """``(message, cursor)`` pairs to send now.

        Consecutive queued events go out as one ``batch`` frame (events only):
        a subscriber that fell behind catches up in few frames. Coalesced
        memories follow as one batch with their states.
        """
        out: list[tuple[bytes, str | None]] = []
        run: list[tuple[bytes, str | None, bytes]] = []
        for message, cursor, raw in self._queue or ():
            if raw is not None:
                run.append((message, cursor, raw))
                if len(run) >= _RUN_MAX:
                    out.append(_run_message(run))
                    run.clear()
            else:
                if run:
                    out.append(_run_message(run))
                    run.clear()
                out.append((message, cursor))
        if run:
            out.append(_run_message(run))
        self._queue = None
        if self._coalesced and (flush_lazy or self._coalescing):
            out.append(self._coalesced_batch())
        return out

    def _coalesced_batch(self) -> tuple[bytes, str]:
        batch = list((self._coalesced or {}).values())
        self._coalesced = None
        self._coalescing = False
        events = b",".join(d.raw for d in batch if d.left is None)
        states = b",".join(
            d.state_json_for(self)
            for d in batch
            if d.left is None and not d.partial and not withheld(d.state)
        )
        left = [{"id": d.state.id, "key": d.key} for d in batch if d.left is not None]
        cursor = batch[-1].cursor
        message = (
            b'{"op":"batch","events":[' + events + b'],"states":[' + states + b"]"
            + (b',"left":' + _encoder.encode(left) if left else b"")
            + b',"cursor":' + _encoder.encode(cursor) + b"}"
        )  # fmt: skip
        return message, cursor

    def set_mode(self, mode: str, interval_ms: int) -> None:
        """Change the delivery mode; what lazy mode coalesced goes out first, in order."""
        pending = mode != "lazy" and bool(self._coalesced) and not self._coalescing
        if pending:
            message, cursor = self._coalesced_batch()
            self._enqueue((message, cursor, None))
        self.mode = mode
        self.interval_ms = interval_ms
        if pending:
            self.flush()

    @property
    def pending(self) -> int:
        """Messages and coalesced memories waiting to be sent."""
        return len(self._queue or ()) + len(self._coalesced or ()) + len(self._held or ())


class Fanout:
    """The ``(tenant, channel) → subscriptions`` index of one gateway."""

    def __init__(self, max_subscriptions: int) -> None:
        # One subscription, or a set of several: most channels (a user's, a
        # device's) have one listener, and an empty set costs 216 bytes.
        self._index: dict[tuple[str, str], Subscription | set[Subscription]] = {}
        self._subs: dict[int, Subscription] = {}
        self.max_subscriptions = max_subscriptions
        self.stats = FanoutStats()

    def __len__(self) -> int:
        return len(self._subs)

    def add(self, sub: Subscription) -> None:
        """Index a subscription under each of its channels."""
        sub.stats = self.stats
        self._subs[sub.id] = sub
        for ch in sub.channels:
            key = (sub.claims.tenant, ch)
            held = self._index.get(key)
            if held is None:
                self._index[key] = sub
            elif isinstance(held, set):
                held.add(sub)
            elif held is not sub:
                self._index[key] = {held, sub}

    def remove(self, sub: Subscription, channels: Iterable[str] | None = None) -> None:
        """Unindex some (default: all) of a subscription's channels."""
        names = set(sub.channels) if channels is None else set(channels)
        for ch in names:
            key = (sub.claims.tenant, ch)
            held = self._index.get(key)
            if held is sub:
                del self._index[key]
            elif isinstance(held, set):
                held.discard(sub)
                if len(held) == 1:
                    self._index[key] = next(iter(held))
        sub.channels = tuple(ch for ch in sub.channels if ch not in names)
        if channels is None or not sub.channels:
            self._subs.pop(sub.id, None)

    def publish(self, deliveries: Iterable[Delivery]) -> None:
        """Offer each delivery to every subscription that may see it, once.

        Deliveries are grouped by **audience** — tenant, channels, user and
        ``shared``, everything that decides who may see one — so each
        group's targets are found and authorised once, not per event. A
        subscription in one audience of the batch that is caught up
        (:meth:`Subscription.direct_writer`) gets the group's frames,
        encoded once for all of them, in one write: per subscriber, the work
        of a bare broadcast. Any other subscription is offered each
        delivery in batch order and flushed at the end.
        """
        batch = list(deliveries)
        stats = self.stats
        stats.batches += 1
        stats.events += len(batch)
        groups: dict[
            tuple[str, tuple[str, ...], str, bool, tuple[str, ...] | None], list[Delivery]
        ] = {}
        for d in batch:
            now = None if d.left is None else d.left.now
            groups.setdefault((d.tenant, d.channels, d.user, d.shared, now), []).append(d)
        audiences: list[tuple[list[Delivery], list[Subscription]]] = []
        seen: set[int] = set()
        several: dict[int, Subscription] = {}  # subscriptions in more than one audience
        for group in groups.values():
            first = group[0]
            subs = [s for s in self._targets(first.tenant, first.channels) if s.allows(first)]
            for sub in subs:
                if sub.id in seen:
                    several[sub.id] = sub
                seen.add(sub.id)
            audiences.append((group, subs))
        offered: list[Subscription] = list(several.values())
        if several:  # offered in batch order, across their audiences
            audience_of = {id(d): subs for group, subs in audiences for d in group}
            for d in batch:
                for sub in audience_of[id(d)]:
                    if sub.id in several:
                        sub.offer(d)
                        stats.deliveries += 1
        for group, subs in audiences:
            encoded: bytes | None = None
            for sub in subs:
                if sub.id in several:
                    continue
                stats.deliveries += len(group)
                writer = sub.direct_writer()
                if writer is not None and (sub.skip is EMPTY or not _skips(sub.skip, group)):
                    if encoded is None:
                        encoded = writer.encode(_messages(group))
                    if len(encoded) <= _DIRECT_MAX_BYTES:
                        sub.wrote(writer, encoded, group[-1].cursor)
                        continue
                for d in group:
                    sub.offer(d)
                offered.append(sub)
        for sub in offered:
            sub.flush()

    def publish_states(
        self,
        items: Iterable[tuple[MemoryState, tuple[str, ...], bool, bytes]],
        left: Iterable[tuple[MemoryState, Leaving]] = (),
    ) -> None:
        """Send ``(state, channels, shared, state JSON)`` to every subscription that may see it.

        For memories changed without an event (anti-entropy's state repair):
        each subscription gets one batch of the states it may see, in order
        with its other messages, bounded like them, moving no cursor. A
        repair that took a memory off channels (``left``: its state and
        :class:`Leaving`) lists it in the batch's ``left`` for whoever could
        see it there and cannot now, without its state. Whoever may not act
        for a memory's owner gets its state without the owner's private
        versions (:mod:`gateway.visibility`).
        """
        found: dict[int, tuple[Subscription, list[bytes], list[dict[str, str]]]] = {}
        for state, channels, shared, state_json in items:
            if withheld(state):  # contested: no one is shown it
                continue
            probe = _probe(state, channels, shared)
            others: bytes | None = None
            for sub in self._targets(state.tenant_id, channels):
                if sub.closed is None and sub.allows(probe):
                    shown = state_json
                    if not sub.claims.may_act_for(state.user_id):
                        others = others or _others_json(state, state_json)
                        shown = others
                    found.setdefault(sub.id, (sub, [], []))[1].append(shown)
        for state, leaving in left:
            probe = _probe(state, leaving.prior, tenant_channel(state.tenant_id) in leaving.prior)
            probe.left = leaving
            for sub in self._targets(state.tenant_id, leaving.prior):
                if sub.closed is None and sub.allows(probe):
                    ref = {"id": state.id, "key": state.key}
                    found.setdefault(sub.id, (sub, [], []))[2].append(ref)
        for sub, states, refs in found.values():
            sub.send_repair(
                b'{"op":"batch","events":[],"states":[' + b",".join(states) + b"]"
                + (b',"left":' + _encoder.encode(refs) if refs else b"")
                + b',"cursor":null}'
            )  # fmt: skip

    def heartbeat(self, message: bytes, every: float) -> int:
        """Send ``message`` to every subscriber quiet for ``every`` s that no pump serves.

        A connection's pump runs only while it has work, so a gateway-wide
        sweep keeps idle connections' application heartbeats; how many got one.
        """
        now, sent = time.monotonic(), 0
        for sub in self.subscriptions():
            if sub.heartbeat_due(now, every):
                sub.send_direct(message)
                sent += 1
        return sent

    def _targets(self, tenant: str, channels: Iterable[str]) -> set[Subscription]:
        """Every subscription listening on one of ``channels`` of ``tenant``, once."""
        targets: set[Subscription] = set()
        for ch in channels:
            held = self._index.get((tenant, ch))
            if held is None:
                continue
            if isinstance(held, set):
                targets.update(held)
            else:
                targets.add(held)
        return targets

    def subscriptions(self) -> list[Subscription]:
        """Every live subscription."""
        return list(self._subs.values())


def _batch(raws: Iterable[bytes], cursor: str | None) -> bytes:
    """``{"op": "batch", "events": [...], "states": [], "cursor": ...}`` of raw events."""
    return (
        b'{"op":"batch","events":[' + b",".join(raws)
        + b'],"states":[],"cursor":' + _encoder.encode(cursor) + b"}"
    )  # fmt: skip


def _run_message(run: list[tuple[bytes, str | None, bytes]]) -> tuple[bytes, str | None]:
    """Queued events ``(message, cursor, raw)`` as one message: itself, or a ``batch``."""
    if len(run) == 1:
        return run[0][0], run[0][1]
    cursor = run[-1][1]
    return _batch((r[2] for r in run), cursor), cursor


def _messages(group: list[Delivery]) -> list[bytes]:
    """The messages :meth:`Subscription.take` would make of these deliveries, queued."""
    if group[0].left is not None:  # an audience's group is all events or all announcements
        return [d.message for d in group]
    runs = (group[i : i + _RUN_MAX] for i in range(0, len(group), _RUN_MAX))
    return [
        run[0].message if len(run) == 1 else _batch((d.raw for d in run), run[-1].cursor)
        for run in runs
    ]


_PARTIAL_EVENTS = 64  # events one coalesced entry of partial states carries at most


def _joined(old: Delivery, new: Delivery) -> Delivery:
    """``new`` coalesced onto ``old`` (same memory, same subscriber): both states
    joined, whole if ``old``'s was. When both are partial, no state goes out, so
    the entry carries both events (``raw`` holds them comma-joined, as the
    batch's ``events`` list does; at most ``_PARTIAL_EVENTS``, past which the
    oldest are left to the memory's next whole state). For one subscriber
    only: the shared delivery is not changed."""
    raw, runs = new.raw, 1
    if old.partial and old.runs < _PARTIAL_EVENTS:
        raw, runs = old.raw + b"," + new.raw, old.runs + 1
    return dataclasses.replace(
        new, raw=raw, runs=runs, state=join(old.state, new.state), partial=old.partial,
        _state_json=None, _others_json=None,
    )  # fmt: skip


def _others_json(state: MemoryState, whole: bytes) -> bytes:
    """``state``'s JSON as readers other than its owner may see it (``whole`` if the same)."""
    return _encoder.encode(for_others(state)) if hides_something(state) else whole


def _probe(state: MemoryState, channels: tuple[str, ...], shared: bool) -> Delivery:
    """A delivery standing for a state routed to ``channels`` (only to ask who may see it)."""
    return Delivery(
        key=state.key, tenant=state.tenant_id, user=state.user_id, shared=shared,
        channels=channels, dot=Dot("", 0), raw=b"", state=state, cursor_token="",
    )  # fmt: skip


def _skips(skip: DotContext, group: list[Delivery]) -> bool:
    """Whether the client already has one of these deliveries (a resumed cursor)."""
    return any(dvv.contains(skip, d.dot) for d in group)


def _settle(waiter: asyncio.Future[None] | None) -> None:
    if waiter is not None and not waiter.done():
        waiter.set_result(None)
