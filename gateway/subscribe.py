"""Subscriptions over WebSocket (``/v1/subscribe``) and SSE (``/v1/events``), and pull sync.

WebSocket protocol (API.md): client → ``{"op": "subscribe", "channels",
"mode": "eager"|"lazy", "interval_ms"?, "since"?}`` / ``{"op":
"unsubscribe", "channels"}``; server → ``subscribed``, ``event``,
``batch`` (lazy, or a slow eager subscriber coalesced: latest event and
full state per memory, and in ``left`` the memories that left), ``left``
(``id``, ``key``, ``cursor``: the memory moved off the subscribed channels or
was made private, see :mod:`gateway.leaving`), ``heartbeat``, ``error`` (codes ``bad_request``,
``forbidden``, ``resync_required``, ``slow_consumer`` with its resume
cursor). Compression is off (permessage-deflate costs ~110 KiB per
connection); frames are bounded by ``max_msg_size``; a subscription listens
on at most ``MAX_SUBSCRIPTION_CHANNELS`` channels over all its operations.

SSE streams are bounded like WebSockets: every write has a deadline, and a
dropped subscriber's connection is aborted after a grace period.

Pull sync returns a memory only if the reader may see its current state on
the channels asked for; one it was shown after the cursor, or that left
these channels after it, and that it may no longer see is listed in
``removed`` (id and key, no content).
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

import msgspec
import structlog
from aiohttp import WSCloseCode, WSMsgType, web

from gateway.api import _claims, error_response, json_response, observe
from gateway.auth import Claims
from gateway.errors import (
    BadRequestError,
    ForbiddenError,
    MemsyncError,
    OverloadedError,
    UnavailableError,
)
from gateway.fanout import MAX_SUBSCRIPTION_CHANNELS, Subscription, authorize_channels
from gateway.history import Cursor, HistoryEntry, ResyncRequiredError
from gateway.keys import CONNECTIONS, SERVICE, SETTINGS, STREAMS
from gateway.service import MemoryService
from gateway.store import ListQuery
from gateway.streams import Pump, Streams, channel_allows, control, repair_route
from gateway.visibility import as_seen_by, withheld
from replication.dvv import DotContext
from replication.errors import InvalidTokenError
from replication.merge import apply, join
from replication.routing import parse_channel
from replication.schema import MemoryEvent, decode_event
from replication.state import MemoryState
from replication.token import seal, unseal

__all__ = ["end_event_stream", "is_event_stream", "liveness", "routes"]

_log = structlog.get_logger(__name__)
_encoder = msgspec.json.Encoder()
Channels = Annotated[
    list[Annotated[str, msgspec.Meta(max_length=400)]],
    msgspec.Meta(max_length=MAX_SUBSCRIPTION_CHANNELS),
]


class SubscribeOp(
    msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag="subscribe", tag_field="op"
):
    """``{"op": "subscribe", ...}``."""

    channels: Channels
    mode: Literal["eager", "lazy"] = "eager"
    interval_ms: Annotated[int, msgspec.Meta(ge=10, le=60_000)] = 100
    since: Annotated[str, msgspec.Meta(max_length=8192)] | None = None


class UnsubscribeOp(
    msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag="unsubscribe", tag_field="op"
):
    """``{"op": "unsubscribe", "channels": [...]}``."""

    channels: Channels


_ops = msgspec.json.Decoder(SubscribeOp | UnsubscribeOp)


_DIRECT_BUFFER = 64 * 1024  # bytes the socket may hold unsent before writes wait


class _DirectFrames:
    """Unmasked text frames (RFC 6455 §5.2, server to client) written straight to the socket.

    The fan-out uses it for a caught-up subscriber (see :mod:`gateway.fanout`):
    whole frames in one write, only while the connection is open and its send
    buffer is under ``_DIRECT_BUFFER``; anything else waits for the pump, which
    writes through aiohttp with its flow control.
    """

    __slots__ = ("_transport", "_ws")

    def __init__(self, ws: web.WebSocketResponse, transport: asyncio.Transport | None) -> None:
        self._ws = ws
        self._transport: asyncio.Transport | None = transport

    @property
    def ws(self) -> web.WebSocketResponse:
        """The aiohttp WebSocket (handshake, client frames, the pump's flow-controlled sends)."""
        return self._ws

    def ready(self) -> bool:
        t = self._transport
        return (
            t is not None
            and not self._ws.closed
            and not t.is_closing()
            and t.get_write_buffer_size() <= _DIRECT_BUFFER
        )

    @staticmethod
    def encode(messages: list[bytes]) -> bytes:
        return b"".join([_frame(0x81, m) for m in messages])

    def write_encoded(self, data: bytes) -> None:
        if self._transport is None:
            raise ConnectionResetError("the connection is not open")
        self._transport.write(data)

    def drop(self, last: list[bytes], code: int, reason: bytes) -> None:
        """Send ``last`` and a close frame after what is buffered, then close the socket.

        No drain is awaited (the peer may have stopped reading): the socket
        closes once the buffer is flushed, or is aborted after
        ``_DROP_ABORT_S`` if the peer never reads it.
        """
        t = self._transport
        if t is None or t.is_closing():
            return
        if not self._ws.closed:  # else aiohttp's close frame went first: nothing may follow
            frames = [_frame(0x81, m) for m in last]
            frames.append(_frame(0x88, struct.pack("!H", code) + reason[:123]))
            t.write(b"".join(frames))
        t.close()
        asyncio.get_running_loop().call_later(_DROP_ABORT_S, t.abort)


_DROP_ABORT_S = 10.0


def _frame(first: int, payload: bytes) -> bytes:
    """One unmasked frame (FIN + ``first``'s opcode) with its payload."""
    n = len(payload)
    if n < 126:
        return bytes((first, n)) + payload
    if n < 65536:
        return struct.pack("!BBH", first, 126, n) + payload
    return struct.pack("!BBQ", first, 127, n) + payload


def _new_subscription(request: web.Request) -> tuple[Subscription, Any]:
    claims = _claims(request)
    claims.require("subscribe")
    streams = request.app[STREAMS]
    limits = request.app[SETTINGS].limits
    if len(request.app[CONNECTIONS]) >= limits.max_subscriptions:
        raise OverloadedError("this gateway holds its maximum of subscriptions", retry_after=5.0)
    sub = Subscription(
        claims=claims,
        channels=(),
        soft_limit=limits.subscriber_soft_limit,
        hard_limit=limits.subscriber_hard_limit,
    )
    return sub, streams


async def subscribe_ws(request: web.Request) -> web.StreamResponse:
    """``GET /v1/subscribe``: the WebSocket stream.

    Not wrapped by the error middleware (see :data:`gateway.api.STREAM_ROUTES`):
    a failed handshake is answered here, and only the handshake is timed.
    """
    started = time.perf_counter()
    try:
        ws, conn = await _ws_handshake(request)
    except Exception as exc:  # noqa: BLE001 - answered like any request's failure
        response = error_response(request, exc)
        observe(request, response, started)
        return response
    observe(request, ws, started)
    if conn is None:  # gone already
        return ws
    connections = request.app[CONNECTIONS]
    try:
        # Client operations are read here, in the handler's own task (no
        # coroutine more per connection than the handler itself; receive()
        # rather than ``async for``: one suspended frame less, ~0.25 KiB).
        while True:
            msg = await ws.receive()
            if msg.type in _ENDED:
                break
            conn.seen = _monotonic()
            if msg.type == WSMsgType.TEXT:
                conn.handle(request, msg.data)
            elif msg.type == WSMsgType.PING:
                conn.pong(msg.data)
    finally:
        connections.discard(conn)
        await conn.finish()
    return ws


class _WebSocket(web.WebSocketResponse):
    """aiohttp's WebSocket response, without the cycle a failed close reply leaves.

    A client that sends its close frame and goes at once can have its
    socket's end read before the frame is answered (under load). aiohttp's
    automatic close reply then fails on the closing transport, and aiohttp
    keeps the error as ``exception()``. Its traceback holds the frames of
    ``close()``, and so the response itself: a reference cycle of ~60
    objects per connection (request, protocol, transport, reader, writer).
    Measured: of 10,000 benchmark subscribers closing together, 9,001 left
    ~590,000 objects for the next full collections (two of ~0.6 s). With
    the traceback dropped after every close, reference counting frees each
    connection when its handler returns.
    """

    async def close(
        self, *, code: int = WSCloseCode.OK, message: bytes = b"", drain: bool = True
    ) -> bool:
        try:
            return await super().close(code=code, message=message, drain=drain)
        finally:
            error = self.exception()
            if error is not None:
                error.__traceback__ = None


async def _ws_handshake(
    request: web.Request,
) -> tuple[web.WebSocketResponse, _Connection | None]:
    """Authorise, count and upgrade; the connection (None if the client went away)."""
    sub, streams = _new_subscription(request)
    limits = request.app[SETTINGS].limits
    # No per-connection heartbeat timer (and no automatic pings): one sweep
    # pings every quiet connection (:func:`liveness`), ~0.5 KiB less each.
    ws = _WebSocket(
        heartbeat=None, autoping=False, max_msg_size=limits.ws_max_msg_bytes, compress=False
    )
    conn = _Connection(ws, sub, streams, limits.stream_heartbeat)
    connections = request.app[CONNECTIONS]
    connections.add(conn)  # counted before the first await: no burst gets past
    try:
        await ws.prepare(request)
    except BaseException:
        connections.discard(conn)
        raise
    transport = request.transport
    if transport is None:
        connections.discard(conn)
        return ws, None
    conn.attach(transport)
    return ws, conn


class _Connection(_DirectFrames):
    """One WebSocket subscriber: its direct frames, and a pump only while needed.

    The handler task reads the client's operations; a pump task runs only
    while there is something the fan-out could not write straight away (a
    replay, lazy timing, a full socket). An idle subscriber holds no task of
    its own (its heartbeats come from the gateway-wide sweep), no pump
    object and no closures: ~3 KiB less per connection, measured.
    """

    __slots__ = ("_heartbeat_s", "_pump", "_pumping", "seen", "streams", "sub")

    def __init__(
        self,
        ws: web.WebSocketResponse,
        sub: Subscription,
        streams: Streams,
        heartbeat_s: float,
    ) -> None:
        super().__init__(ws, None)
        self.sub, self.streams = sub, streams
        self.seen = _monotonic()  # when the client last sent a frame (liveness)
        self._heartbeat_s = heartbeat_s
        self._pump: Pump | None = None
        self._pumping: asyncio.Task[str | None] | None = None
        sub.writer = self  # the fan-out writes caught-up batches straight to it
        sub.on_wake = self._start_pump
        sub.on_close = self._drop

    def attach(self, transport: asyncio.Transport) -> None:
        """The handshake is done: frames may go to ``transport``."""
        self._transport = transport

    def pong(self, payload: bytes) -> None:
        """Answer a client's ping (a control frame may go between whole messages)."""
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(_frame(0x8A, payload[:125]))

    def keepalive(self, now: float, every: float) -> None:
        """Ping if quiet for ``every`` seconds; drop if silent past ``2 * every`` (dead peer)."""
        t = self._transport
        if t is None or t.is_closing() or self.sub.closed is not None:
            return
        quiet = now - self.seen
        if quiet > 2 * every:
            _log.info("subscription.peer_silent", sub=self.sub.id, seconds=round(quiet, 1))
            self.sub.close_lost()
        elif quiet >= every:
            t.write(_PING)

    @property
    def pump(self) -> Pump:
        """The pump (made on first need)."""
        if self._pump is None:
            self._pump = Pump(self.streams, self.sub, self._send, heartbeat_s=self._heartbeat_s)
        return self._pump

    async def _send(self, message: bytes, cursor: str | None) -> None:
        if self.sub.closed in _DROPPED:  # the close frame is out: nothing may follow it
            raise ConnectionResetError(f"subscription dropped ({self.sub.closed})")
        await self._ws.send_frame(message, WSMsgType.TEXT)

    def _start_pump(self) -> None:
        if self._pumping is None or self._pumping.done():
            task = asyncio.create_task(self.pump.run(until_idle=True), name=f"pump-{self.sub.id}")
            task.add_done_callback(self._pump_ended)
            self._pumping = task

    def _pump_ended(self, task: asyncio.Task[str | None]) -> None:
        exc = None if task.cancelled() else task.exception()
        if exc is not None:
            if not isinstance(exc, ConnectionError):
                _log.error("subscription.pump_failed", sub=self.sub.id, exc_info=exc)
            self.sub.close_lost()  # the socket failed under the pump: close the connection

    def _drop(self) -> None:
        """The server drops it: slow, or its socket failed.

        Not by cancelling a pump that waits on a full socket: aiohttp's
        writers share one drain future, and a cancelled one stays in place,
        failing every later drain on the connection. The pump finishes when
        the socket drains or is aborted; its sends refuse meanwhile.
        """
        sub = self.sub
        self.streams.fanout.remove(sub)  # dropped now, whenever the socket goes
        if sub.closed == "token_expired":
            self.drop([_EXPIRED_ERROR], WSCloseCode.POLICY_VIOLATION, b"token expired")
            return
        last = []
        if sub.closed == "slow_consumer":
            last.append(_slow_consumer_error(sub.sent_cursor))
        code = WSCloseCode.TRY_AGAIN_LATER if last else WSCloseCode.INTERNAL_ERROR
        self.drop(last, code, b"slow consumer" if last else b"connection lost")

    def handle(self, request: web.Request, text: str) -> None:
        """Handle one client operation; a bad one gets an error, the connection stays."""
        if self.sub.closed is not None:  # dropped: its socket is closing
            return
        try:
            _handle_op(request, self.sub, self, text.encode())
        except (MemsyncError, ValueError, msgspec.ValidationError, msgspec.DecodeError) as exc:
            code = exc.code if isinstance(exc, MemsyncError) else "bad_request"
            message = exc.message if isinstance(exc, MemsyncError) else str(exc)
            self.sub.send_direct(control("error", code=code, message=message))

    async def finish(self) -> None:
        """Unsubscribe; let a running pump finish (bounded)."""
        sub = self.sub
        self.streams.fanout.remove(sub)
        sub.on_wake = sub.on_close = None
        pumping = self._pumping
        if pumping is not None and not pumping.done():
            sub.closed = sub.closed or "client_closed"
            sub.send_direct(b"")  # wakes a waiting pump to finish
            with contextlib.suppress(asyncio.CancelledError, ConnectionError, TimeoutError):
                await asyncio.wait_for(pumping, 5.0)
        # Break the connection <-> subscription cycle: reference counting
        # frees the connection at once, not a full collection later (10,000
        # closing together left ~0.5 s of cyclic garbage for one pause).
        sub.writer = None
        self._pump = self._pumping = None
        self._transport = None


_DROPPED = ("slow_consumer", "connection_lost", "token_expired")
_EXPIRY_CHECK_S = 5.0  # how late a stream may outlive its token
_EXPIRED_ERROR = control(
    "error",
    code="unauthorized",
    message="the token expired: subscribe again with a fresh one (memsync token)",
)


def close_expired(subscriptions: list[Subscription], now: float) -> int:
    """Close every subscription whose token expired by ``now``; how many."""
    closed = 0
    for sub in subscriptions:
        if sub.closed is None and sub.claims.exp <= now:
            sub.close_expired()
            closed += 1
    if closed:
        _log.info("subscription.tokens_expired", closed=closed)
    return closed


_ENDED = (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED)
_PING = _frame(0x89, b"")


def _monotonic() -> float:
    return asyncio.get_running_loop().time()


async def liveness(app: web.Application) -> AsyncIterator[None]:
    """One task keeps every WebSocket alive: pings quiet ones, drops silent ones.

    A client that sent nothing for ``ws_heartbeat`` seconds gets a ping
    (any frame back counts); one silent past twice that is dropped, its
    subscription closed — the peer is gone without a FIN. One timer for the
    gateway instead of one per connection.
    """
    every = app[SETTINGS].limits.ws_heartbeat
    live: set[Any] = app[CONNECTIONS]

    async def sweep() -> None:
        while True:
            await asyncio.sleep(min(every / 2, _EXPIRY_CHECK_S))
            now = _monotonic()
            for conn in list(live):
                if isinstance(conn, _Connection):
                    conn.keepalive(now, every)
            if STREAMS in app:
                close_expired(app[STREAMS].fanout.subscriptions(), time.time())

    task = asyncio.create_task(sweep(), name="ws-liveness")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _slow_consumer_error(cursor: str) -> bytes:
    return control(
        "error",
        code="slow_consumer",
        message="this subscriber fell too far behind; reconnect with the cursor",
        cursor=cursor,
    )


def _handle_op(request: web.Request, sub: Subscription, conn: _Connection, raw: bytes) -> None:
    """One client operation. A refused one (error reply) leaves the subscription as it was.

    Everything that can refuse a ``subscribe`` is checked before anything
    changes: the channel cap, then the cursor. Only the resume limit is
    checked by :meth:`Pump.request_replay` itself; the mode it follows is
    put back when it refuses. (Half-applied, a refused resume left the new
    channels live with the replay never sent: a silent gap.)
    """
    op = _ops.decode(raw)
    streams = request.app[STREAMS]
    try:
        channels = authorize_channels(sub.claims, op.channels)
    except ForbiddenError as exc:
        sub.send_direct(control("error", code="forbidden", message=exc.message))
        return
    if isinstance(op, UnsubscribeOp):
        streams.fanout.remove(sub, channels)
        sub.send_direct(control("unsubscribed", channels=list(channels)))
        return
    new = [ch for ch in channels if ch not in sub.channels]
    if len(sub.channels) + len(new) > MAX_SUBSCRIPTION_CHANNELS:
        raise BadRequestError(
            f"a subscription listens on at most {MAX_SUBSCRIPTION_CHANNELS} channels: this "
            f"one has {len(sub.channels)} and the operation adds {len(new)}; unsubscribe "
            "from some first"
        )
    cursor = None if op.since is None else streams.history.decode_cursor(op.since)
    before = (sub.mode, sub.interval_ms)
    sub.set_mode(op.mode, op.interval_ms)
    if cursor is not None and op.since is not None:
        try:
            conn.pump.request_replay(cursor, set(new or channels), op.since)
        except BadRequestError:  # too many resumes in flight: nothing else changed yet
            sub.set_mode(*before)
            raise
    sub.channels = (*sub.channels, *new)
    streams.fanout.add(sub)
    if cursor is None:
        head = streams.head_token()
        sub.send_direct(control("subscribed", channels=sorted(sub.channels), cursor=head), head)


async def events_sse(request: web.Request) -> web.StreamResponse:
    """``GET /v1/events?channels=a,b[&mode=lazy&interval_ms=N]``: Server-Sent Events."""
    started = time.perf_counter()
    try:
        stream, streams, cursor, since = await _sse_handshake(request)
    except Exception as exc:  # noqa: BLE001 - answered like any request's failure
        response = error_response(request, exc)
        observe(request, response, started)
        return response
    observe(request, stream.resp, started)
    try:
        await stream.run(streams, cursor, since)
    finally:
        request.app[CONNECTIONS].discard(stream)
    return stream.resp


class _EventStream:
    """One SSE subscriber: its response, subscription and pump, every write bounded in time.

    A client that stops reading fills the socket and the pump waits in
    aiohttp's drain. So each write has a deadline (twice the stream
    heartbeat): one that cannot finish by then drops the subscriber as
    ``slow_consumer`` and aborts the connection. A subscription dropped
    while the pump waits (its buffers past their limits) is aborted at the
    latest ``_DROP_ABORT_S`` later, as a WebSocket is; a client that reads
    again before that gets its ``slow_consumer`` error first. Either way
    the handler, its connection slot and its buffers go.
    """

    __slots__ = ("_abort", "_done", "_heartbeat_s", "_transport", "_write_timeout", "resp", "sub")

    def __init__(
        self,
        resp: web.StreamResponse,
        sub: Subscription,
        transport: asyncio.Transport | None,
        heartbeat_s: float,
    ) -> None:
        self.resp, self.sub = resp, sub
        self._transport = transport
        self._heartbeat_s = heartbeat_s
        self._write_timeout = 2 * heartbeat_s
        self._done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._abort: asyncio.TimerHandle | None = None
        sub.on_close = self._dropped

    async def send(self, message: bytes, cursor: str | None) -> None:
        """Write one SSE message (``TimeoutError`` past the write deadline)."""
        head = b"id: " + cursor.encode() + b"\n" if cursor else b""
        try:
            async with asyncio.timeout(self._write_timeout):
                await self.resp.write(head + b"data: " + message + b"\n\n")
        except RuntimeError as exc:  # aiohttp refuses a write after the response's end
            raise ConnectionResetError(f"the event stream has ended: {exc}") from exc

    async def run(self, streams: Streams, cursor: Cursor | None, since: str) -> None:
        """Replay (if resumed), then live, until the subscription closes or the client goes."""
        sub = self.sub
        pump = Pump(streams, sub, self.send, heartbeat_s=self._heartbeat_s)
        streams.fanout.add(sub)
        try:
            if cursor is not None:
                pump.request_replay(cursor, set(sub.channels), since)
            else:
                head = streams.head_token()
                sub.send_direct(
                    control("subscribed", channels=sorted(sub.channels), cursor=head), head
                )
            reason = await pump.run()
            if reason == "slow_consumer":
                message = "this subscriber fell too far behind; reconnect with Last-Event-ID"
                await self.send(
                    control(
                        "error", code="slow_consumer", cursor=pump.sent_cursor, message=message
                    ),
                    None,
                )
        except TimeoutError:
            _log.info("subscription.sse_stalled", sub=sub.id, seconds=self._write_timeout)
            sub.close_slow()
            self.abort()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            streams.fanout.remove(sub)
            sub.on_close = sub.on_wake = None
            if self._abort is not None:
                self._abort.cancel()
                self._abort = None
            if not self._done.done():
                self._done.set_result(None)

    def _dropped(self) -> None:
        """The server drops it (slow, or its connection failed): gone within ``_DROP_ABORT_S``.

        An expired token ends the stream at once instead (the pump is woken
        and finishes, the handler ends the response); the client's reconnect
        then gets 401 naming the expiry.
        """
        if self.sub.closed == "token_expired":
            self.sub.send_direct(b"")  # closed: wakes the pump to finish
        if self._abort is None and not self._done.done():
            self._abort = asyncio.get_running_loop().call_later(_DROP_ABORT_S, self.abort)

    def abort(self) -> None:
        """Abort the connection: a waiting write fails, the handler ends."""
        t = self._transport
        if t is not None and not t.is_closing():
            t.abort()

    async def going_away(self, within: float) -> None:
        """Shutdown: stop the pump, let the handler end the response; abort after ``within``.

        The pump stops after the write in progress and the handler returns,
        so aiohttp ends the response after the last write, never during one.
        """
        sub = self.sub
        if sub.closed is None:
            sub.closed = "going_away"
        sub.send_direct(b"")  # closed: wakes the pump to finish
        await asyncio.wait([self._done], timeout=within)
        if not self._done.done():
            self.abort()


def is_event_stream(conn: object) -> bool:
    """Whether a live connection (``CONNECTIONS``) is an SSE stream (else a WebSocket's)."""
    return isinstance(conn, _EventStream)


async def end_event_stream(conn: object, within: float) -> None:
    """Shutdown of one SSE stream (see :meth:`_EventStream.going_away`)."""
    if isinstance(conn, _EventStream):
        await conn.going_away(within)


async def _sse_handshake(
    request: web.Request,
) -> tuple[_EventStream, Streams, Cursor | None, str]:
    """Authorise, count and start the event stream."""
    sub, streams = _new_subscription(request)
    channels = _query_channels(request, sub.claims)
    mode = request.query.get("mode", "eager")
    if mode not in ("eager", "lazy"):
        raise BadRequestError("query parameter 'mode' must be 'eager' or 'lazy'")
    since = request.headers.get("Last-Event-ID") or request.query.get("since") or ""
    cursor = streams.history.decode_cursor(since) if since else None
    sub.mode = mode
    sub.channels = channels
    resp = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
        }
    )
    heartbeat_s = request.app[SETTINGS].limits.stream_heartbeat
    stream = _EventStream(resp, sub, request.transport, heartbeat_s)
    request.app[CONNECTIONS].add(stream)
    try:
        await resp.prepare(request)
    except BaseException:
        request.app[CONNECTIONS].discard(stream)
        raise
    return stream, streams, cursor, since


def _query_channels(request: web.Request, claims: Claims) -> tuple[str, ...]:
    """The ``channels`` query parameter, authorised and capped (SSE and pull sync)."""
    names = [c for c in request.query.get("channels", "").split(",") if c]
    if not names:
        raise BadRequestError("query parameter 'channels' is required (comma-separated)")
    try:
        channels = authorize_channels(claims, names)
    except ValueError as exc:
        raise BadRequestError(str(exc)) from exc
    if len(channels) > MAX_SUBSCRIPTION_CHANNELS:
        raise BadRequestError(
            f"query parameter 'channels' names {len(channels)} channels; at most "
            f"{MAX_SUBSCRIPTION_CHANNELS} are allowed"
        )
    return channels


async def sync(request: web.Request) -> web.Response:
    """``GET /v1/sync?channels=a,b&since=CURSOR&limit=N``: pull-based sync."""
    claims = _claims(request)
    claims.require("read")
    channels = _query_channels(request, claims)
    try:
        limit = int(request.query.get("limit", "100"))
    except ValueError:
        raise BadRequestError("query parameter 'limit' must be an integer") from None
    if not 1 <= limit <= 1000:
        raise BadRequestError("query parameter 'limit' must be between 1 and 1000")
    streams = request.app[STREAMS]
    service = request.app[SERVICE]
    sub = Subscription(claims=claims, channels=channels)
    since = request.query.get("since")
    if since:
        cursor = streams.history.decode_cursor(since)
        try:
            entries, after, more = await streams.history.replay(
                cursor, lambda tenant, chans: channel_allows(sub, tenant, chans), limit
            )
        except ResyncRequiredError as exc:
            streams.fanout.stats.resyncs += 1
            return json_response({"error": {"code": exc.code, "message": exc.message}}, 410)
        # Every event the answer's cursor covers was recorded here by now.
        covered = streams.history.head.context
        token = streams.history.encode_cursor(after)
        return json_response(await _changes(service, sub, entries, covered, token, more))
    return await _snapshot(request, sub, limit)


async def _changes(
    service: MemoryService,
    sub: Subscription,
    entries: list[HistoryEntry],
    covered: DotContext,
    cursor: str,
    more: bool,
) -> dict[str, Any]:
    """What changed: the current state of each memory the entries touched, if still visible.

    States come from the cache, which the applier fills before the history
    records an event; a key it lacks is read from the store once the store
    holds everything ``covered`` names (bounded wait, else 503). Each
    listed event is joined into its memory's state as well (applying an
    event twice changes nothing), so no state is older than what it is
    listed for. A memory is returned only if the subscriber may see its
    *current* state on the channels asked for — the rule of live delivery
    (:meth:`Subscription.allows_state`, routed as a state repair is) — and
    a tombstone only to whoever was shown its delete. Any other memory
    listed — shown after the cursor, or taken off these channels after it
    (the replay lists such an event for those it must tell,
    :mod:`gateway.leaving`) — has left them since: it is listed in
    ``removed`` as ``{"id", "key"}``, without content. A memory of a user
    the token may not act for is listed without its owner's private
    versions (:mod:`gateway.visibility`).
    """
    events: dict[str, list[MemoryEvent]] = {}
    for entry in entries:
        event = decode_event(entry.body)
        events.setdefault(event.key, []).append(event)
    found = await _current_states(service, list(events), covered)
    states: list[MemoryState] = []
    removed: list[dict[str, str]] = []
    for key, listed in events.items():
        state = found.get(key)
        for event in listed:
            state = apply(state, event)
        if state is None:  # no event listed: not reached
            continue
        if _visible(sub, state, shown_delete=any(e.event_type == "delete" for e in listed)):
            states.append(as_seen_by(sub.claims, state))
        else:
            removed.append({"id": state.id, "key": state.key})
    return {
        "changes": [service.view(s) for s in states],
        "states": states,
        "removed": removed,
        "cursor": cursor,
        "has_more": more,
    }


def _visible(sub: Subscription, state: MemoryState, *, shown_delete: bool) -> bool:
    """Whether ``sub`` may see ``state`` now (a tombstone: if it was shown the delete)."""
    if withheld(state):  # contested: no one is shown it (gateway.visibility)
        return False
    if state.deleted:
        # A deleted state no longer says where the memory was; its delete
        # event went there (it carries the deleted version's channels).
        return shown_delete
    channels, shared = repair_route(None, state)
    return sub.allows_state(state, channels, shared)


async def _current_states(
    service: MemoryService, keys: list[str], covered: DotContext
) -> dict[str, MemoryState]:
    """The states of ``keys`` here, each at least as new as the events ``covered`` names."""
    out: dict[str, MemoryState] = {}
    missing: list[str] = []
    for key in keys:
        cached = service.cache.peek(key)
        if cached is None:
            missing.append(key)
        else:
            out[key] = cached
    if missing:
        await _store_covers(service, covered)
        for key, state in (await service.store.get_many(missing)).items():
            service.remember(state)
            out[key] = service.cache.peek(key) or state  # joined with what came meanwhile
    return out


async def _store_covers(service: MemoryService, covered: DotContext) -> None:
    """Wait (bounded, as read-your-writes does) until the store holds every event ``covered`` names.

    The applier writes the store while the history records and fans out a
    batch, so a store read can lag what the history (and so a cursor)
    already covers. Raises :class:`UnavailableError` (503) past the bound.
    """
    if not await service.tracker.wait(covered, service.limits.ryw_wait_ms / 1000):
        raise UnavailableError(
            "this region's store has not yet applied the events this sync covers; retry",
            retry_after=0.1,
        )


_SNAPSHOT_SCANS = 8  # store pages one snapshot request reads at most (filtered pages may be thin)


async def _snapshot(request: web.Request, sub: Subscription, limit: int) -> web.Response:
    """Every live memory of the channels, paged by ``page_token``; the cursor of its start.

    The store is read once it holds everything the start cursor covers (a
    resume from it then misses nothing); each listed state is joined with
    the cache's (never older than the store's) and listed only if the
    subscriber may see it on the channel listed — on a topic channel also
    other users' shared memories, as live delivery and replay show them
    (without their owners' private versions, :mod:`gateway.visibility`).
    Pages the filter thins out may come short of ``limit`` (at most
    ``_SNAPSHOT_SCANS`` store pages are read per request); ``has_more`` and
    ``page_token`` go on.
    """
    streams = request.app[STREAMS]
    service = request.app[SERVICE]
    page = request.query.get("page_token")
    start, start_cursor, index, offset = streams.history.head, "", 0, None
    if page:
        try:
            start_cursor, index, offset = _unseal_page(request, page)
        except InvalidTokenError as exc:
            raise BadRequestError(
                "query parameter 'page_token' is not one this gateway issued"
            ) from exc
        start = streams.history.decode_cursor(start_cursor)
    else:
        start_cursor = streams.head_token()
    await _store_covers(service, start.context)
    channels = sorted(sub.channels)
    states: list[MemoryState] = []
    scans = 0
    while index < len(channels) and len(states) < limit and scans < _SNAPSHOT_SCANS:
        channel = channels[index]
        kind, ident = parse_channel(channel)
        if kind == "system":
            index, offset = index + 1, None
            continue
        query = ListQuery(
            tenant_id=sub.claims.tenant,
            user_ids=(ident,) if kind == "user" else None,
            topic=ident if kind == "topic" else None,
            limit=limit - len(states),
            offset=offset,
        )
        page_states, offset = await service.store.list_page(query)
        scans += 1
        on_channel = Subscription(claims=sub.claims, channels=(channel,))
        for stored in page_states:
            cached = service.cache.peek(stored.key)
            state = stored if cached is None else join(cached, stored)
            if not state.deleted and _visible(on_channel, state, shown_delete=False):
                states.append(as_seen_by(sub.claims, state))
        if offset is None:
            index += 1
    more = index < len(channels)
    token = _seal_page(request, start_cursor, index, offset) if more else None
    return json_response(
        {
            "changes": [service.view(s) for s in states],
            "states": states,
            "cursor": start_cursor,
            "has_more": more,
            "page_token": token,
        }
    )


def _seal_page(request: web.Request, cursor: str, index: int, offset: str | None) -> str:
    return seal((cursor, index, offset), request.app[SETTINGS].secret_bytes, "sync-page")


def _unseal_page(request: web.Request, token: str) -> tuple[str, int, str | None]:
    return unseal(
        token, request.app[SETTINGS].secret_bytes, "sync-page", tuple[str, int, str | None]
    )


def routes() -> list[web.RouteDef]:
    """The streaming and sync routes."""
    return [
        web.get("/v1/subscribe", subscribe_ws, name="subscribe"),
        web.get("/v1/events", events_sse, name="events"),
        web.get("/v1/sync", sync),
    ]
