"""Live subscriptions over the gateway's WebSocket, with resume and resync.

A :class:`Subscription` owns one socket at a time and one background task:

1. **connect** — ``GET /v1/subscribe`` (heartbeat, ``max_msg_size`` and
   ``compress=0`` set), send ``subscribe`` with ``since`` = the last cursor it
   holds, wait for ``subscribed``; failed attempts are retried by tenacity
   with exponential backoff and jitter, capped at ``max_backoff`` (and at
   ``max_attempts`` consecutive failures when set), moving through the
   region fallbacks — cursors are valid in every region. A *session* (one
   subscribed socket) is an attempt too: only one that stayed up for
   ``stable_after`` seconds counts as a success; one that ended sooner, and
   every ``slow_consumer`` drop, is a failure (backoff, and counted toward
   ``max_attempts``), so a gateway that accepts and drops at once is not
   hammered. After a stable session is lost the subscription reconnects at
   once, with the failure count reset;
2. **pump** — every ``event`` is merged into the :class:`LocalCache`
   (``replication.merge.apply``), every ``batch`` joins its states
   (``replication.merge.join``) and applies its events; then the callback gets
   one :class:`Change` per memory whose cached state changed (duplicates are
   not reported) and the cursor advances. The subscription's channels are the
   *holder* of what it puts in the cache (shared by every subscription of a
   :class:`MemorySync`, see :mod:`gateway.client.cache`);
3. **left** — a ``left`` message (or a ``batch``'s ``left`` list) says a
   memory left the subscription's channels (made private, moved off a topic),
   without its content: the cursor advances (a ``left`` carries one, like an
   event), the subscription releases its hold on the memory, and when no
   other holder has it the memory is dropped from the cache and the callback
   gets one :class:`Change` with ``gone=True``, ``event=None`` and ``origin``
   ``event`` (or ``batch``) carrying the last state held. A memory another
   holder (a subscription or warm of other channels) has is kept, and
   nothing is reported;
4. **resume** — when the socket drops, goes idle past ``idle_timeout`` or the
   server says ``slow_consumer`` (with a cursor, which is adopted; a failed
   attempt, so it backs off), the subscription reconnects from its cursor:
   nothing is missed, nothing is applied twice (the cache dedups by dot
   anyway);
5. **resync** — on ``resync_required`` (the cursor's history is gone), and on
   ``bad_token`` for the cursor it sent (the gateway cannot decode it, e.g.
   one from a deployment with another secret: the cursor is dropped, with a
   warning naming the cause), it pulls a full ``/v1/sync`` snapshot of its
   channels into the cache (every page, by ``page_token``), reporting changed
   memories with ``origin="resync"``. The snapshot lists live memories only,
   so every cached, live memory on these channels that it did not list was
   deleted or moved away meanwhile: the subscription releases its hold on
   it, and when no other holder has it (a live subscription still seeing it
   would have been told otherwise) it is dropped from the cache and
   reported once with ``gone=True`` (:mod:`gateway.client.reconcile`). Then
   it subscribes with the snapshot's start cursor; a memory created during
   the snapshot may so be reported gone and then come back by the replay.

The subscription ends, with :attr:`Subscription.error` set to a
:class:`SubscriptionError` that :meth:`Subscription.wait` raises, on
``forbidden``, ``bad_request``, ``bad_token`` to a subscribe without a cursor
(client and gateway disagree on the protocol), a refused handshake
(401/403/404), a non-retriable error answer during a resync (code and status kept, the typed
error as ``__cause__``), after ``max_attempts`` consecutive failed attempts
(code ``gave_up``), or on an unexpected error (code ``failed``). An exception
raised by the callback is logged and does not stop the stream.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import aiohttp
import msgspec
import structlog
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    RetryError,
    retry_if_exception,
    stop_after_attempt,
    stop_never,
    wait_exponential_jitter,
)

from gateway.client.cache import Holder, LocalCache
from gateway.client.errors import MemsyncClientError, SubscriptionError, TransportError
from gateway.client.reconcile import drop_missing
from gateway.client.transport import Transport
from gateway.client.wire import Change, Frame, Removed, SyncPage, decode_frame
from replication.errors import MemsyncError
from replication.schema import MemoryEvent, decode_event
from replication.state import MemoryState, MemoryView, materialize

__all__ = ["Callback", "Mode", "StreamOptions", "Subscription"]

_log = structlog.get_logger(__name__)

Mode = Literal["eager", "lazy"]
Callback = Callable[[Change], Awaitable[None] | None]
Pull = Callable[[tuple[str, ...], str | None], AsyncIterator[SyncPage]]

_FATAL_CODES = frozenset({"forbidden", "bad_request", "unauthorized"})
_FATAL_HANDSHAKE = frozenset({401, 403, 404})


@dataclass(frozen=True, slots=True)
class StreamOptions:
    """Socket and reconnect settings (seconds; bytes).

    ``initial_backoff``, ``max_backoff``, ``jitter``: the exponential wait
    between failed attempts. ``max_attempts``: give up after that many
    consecutive failed attempts (``None``: never). ``stable_after``: how long
    a subscribed session must stay up to count as a success — sooner losses
    are failed attempts, so the backoff also spaces out sessions that a
    gateway or proxy drops right after the handshake.
    """

    heartbeat: float = 15.0
    idle_timeout: float = 60.0
    max_msg_size: int = 16 * 1024 * 1024
    close_timeout: float = 5.0
    initial_backoff: float = 0.1
    max_backoff: float = 10.0
    jitter: float = 1.0
    max_attempts: int | None = None
    stable_after: float = 5.0


class _SubscribeMessage(msgspec.Struct, frozen=True, kw_only=True):
    op: str = "subscribe"
    channels: tuple[str, ...]
    mode: str
    interval_ms: int | msgspec.UnsetType = msgspec.UNSET
    since: str | msgspec.UnsetType = msgspec.UNSET


class _Reconnect(Exception):
    """The socket must be replaced (retriable inside the connect loop)."""


class _SlowConsumer(_Reconnect):
    """The gateway dropped this subscriber for falling behind: a failed session however long."""


_encoder = msgspec.json.Encoder()


def _reconnectable(exc: BaseException) -> bool:
    if isinstance(exc, _Reconnect):
        return True
    return isinstance(exc, MemsyncClientError) and exc.retriable


class Subscription:
    """A live, self-healing subscription to some channels (see the module docstring).

    Create it with :meth:`MemorySync.subscribe`. ``cursor`` is the position of
    the last message processed; ``connected`` is set while a socket is
    subscribed; ``reconnects`` counts sockets replaced after the first;
    ``holder`` (its channels, as a frozenset) is whom the cache records as
    holding what it applied.
    """

    def __init__(
        self,
        *,
        transport: Transport,
        cache: LocalCache,
        pull: Pull,
        channels: Sequence[str],
        callback: Callback,
        mode: Mode = "eager",
        interval_ms: int | None = None,
        since: str | None = None,
        options: StreamOptions | None = None,
        on_end: Callable[[Subscription], None] | None = None,
    ) -> None:
        if not channels:
            raise ValueError("subscribe to at least one channel")
        if mode not in ("eager", "lazy"):
            raise ValueError(f"mode must be 'eager' or 'lazy' (got {mode!r})")
        self.channels: tuple[str, ...] = tuple(dict.fromkeys(channels))
        self.holder: Holder = frozenset(self.channels)
        self._on_end = on_end  # told once the subscription has ended, for good
        self.mode: Mode = mode
        self.interval_ms = interval_ms
        self.connected = asyncio.Event()
        self.reconnects = 0
        self._transport = transport
        self._cache = cache
        self._pull = pull
        self._callback = callback
        self._options = options or StreamOptions()
        self._cursor = since
        self._sent_since: str | None = None
        self._needs_resync = False
        self._opened = False
        self._closing = False
        self._error: SubscriptionError | None = None
        self._task: asyncio.Task[None] | None = None
        self._log = _log.bind(channels=",".join(self.channels), mode=mode)

    # -- public surface -------------------------------------------------------

    @property
    def cursor(self) -> str | None:
        """Where the stream stands: resume point after a reconnect."""
        return self._cursor

    @property
    def closed(self) -> bool:
        """Whether the subscription has ended (closed, or failed for good)."""
        return self._task is not None and self._task.done()

    @property
    def error(self) -> SubscriptionError | None:
        """Why the subscription ended, if it ended on an error (see the module docstring)."""
        return self._error

    def start(self) -> None:
        """Start the background task (done by :meth:`MemorySync.subscribe`)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"memsync-sub:{self.channels[0]}")

    async def close(self) -> None:
        """Stop: close the socket and end the task (idempotent)."""
        self._closing = True
        task = self._task
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait([task])

    async def wait(self) -> None:
        """Wait until the subscription ends; raise the :class:`SubscriptionError` that ended it."""
        task = self._task
        if task is not None:
            await asyncio.wait([task])
        if self._error is not None:
            raise self._error

    # -- the loop -------------------------------------------------------------

    async def _run(self) -> None:
        """Sessions until closed; whatever else ends them becomes :attr:`error`."""
        try:
            while not self._closing:
                await self._attempts()
        except RetryError as exc:
            self._fail(_gave_up(exc), exc.last_attempt.exception())
        except SubscriptionError as exc:
            self._fail(exc, None)
        except MemsyncClientError as exc:
            message = f"subscription ended: {exc}"
            self._fail(SubscriptionError(message, code=exc.code, status=exc.status), exc)
        except Exception as exc:  # noqa: BLE001 - task supervisor: never die with a private error
            message = (
                f"subscription failed on an unexpected error: {exc!r}; subscribe again, and "
                "report it if it repeats (the gateway may speak a newer protocol)"
            )
            self._fail(SubscriptionError(message, code="failed"), exc)
        finally:
            self.connected.clear()
            if self._on_end is not None:
                self._on_end(self)

    def _fail(self, error: SubscriptionError, cause: BaseException | None) -> None:
        if cause is not None:
            error.__cause__ = cause
        self._error = error
        self._log.error("memsync_subscription_failed", error=str(error), code=error.code)

    def _retrying(self) -> AsyncRetrying:
        opts = self._options
        return AsyncRetrying(
            retry=retry_if_exception(_reconnectable),
            wait=wait_exponential_jitter(
                multiplier=opts.initial_backoff, max=opts.max_backoff, jitter=opts.jitter
            ),
            stop=stop_never if opts.max_attempts is None else stop_after_attempt(opts.max_attempts),
            before_sleep=self._before_sleep,
        )

    async def _attempts(self) -> None:
        """Connect and pump, with backoff between failed attempts, until a stable session ends.

        One ``AsyncRetrying`` spans sessions, so short-lived ones back off and
        count toward ``max_attempts``; the caller starts a fresh one (count
        reset, no wait) after a stable session. Raises :class:`RetryError`
        when ``max_attempts`` is reached.
        """
        async for attempt in self._retrying():
            with attempt:
                await self._session()

    def _before_sleep(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        self._log.warning(
            "memsync_subscription_reconnecting",
            attempt=state.attempt_number,
            reason=repr(exc),
            wait_s=round(state.upcoming_sleep, 3),
        )

    async def _session(self) -> None:
        """One socket: open, subscribe, pump until it is lost.

        Returns when a stable session was lost (or the subscription closes);
        raises :class:`_Reconnect` when the session failed (see
        :attr:`StreamOptions.stable_after`).
        """
        ws = await self._open()
        if self._opened:
            self.reconnects += 1
            self._log.info("memsync_subscription_resumed", reconnects=self.reconnects)
        self._opened = True
        started = time.monotonic()
        try:
            await self._pump(ws)
        except (TimeoutError, aiohttp.ClientError, _Reconnect) as exc:
            lost: BaseException = exc
        else:
            return
        finally:
            self.connected.clear()
            await ws.close()
        lasted = time.monotonic() - started
        self._log.warning("memsync_subscription_lost", reason=repr(lost), lasted_s=round(lasted, 3))
        if isinstance(lost, _SlowConsumer):
            raise _Reconnect(f"dropped as a slow consumer after {lasted:.2f} s") from lost
        if lasted < self._options.stable_after:
            raise _Reconnect(f"session lost after {lasted:.2f} s: {lost}") from lost

    async def _open(self) -> aiohttp.ClientWebSocketResponse:
        if self._needs_resync:
            await self._resync()
        endpoints = self._transport.endpoints
        url = endpoints.current + "/v1/subscribe"
        opts = self._options
        try:
            ws = await self._transport.http.ws_connect(
                url,
                headers=self._transport.auth_headers,
                heartbeat=opts.heartbeat,
                max_msg_size=opts.max_msg_size,
                compress=0,
                timeout=aiohttp.ClientWSTimeout(ws_close=opts.close_timeout),
            )
        except aiohttp.WSServerHandshakeError as exc:
            if exc.status in _FATAL_HANDSHAKE:
                raise SubscriptionError(
                    f"subscription refused: {exc.message}", code="handshake", status=exc.status
                ) from exc
            endpoints.rotate()
            raise TransportError(f"websocket handshake failed: {exc}", sent=True) from exc
        except aiohttp.ClientConnectorError as exc:
            endpoints.rotate()
            raise TransportError(f"cannot connect to {url}: {exc}", sent=False) from exc
        except (aiohttp.ClientError, TimeoutError) as exc:
            endpoints.rotate()
            raise TransportError(f"websocket connect failed: {exc!r}", sent=True) from exc
        try:
            await self._send_subscribe(ws)
            while not self.connected.is_set():
                await self._step(ws)
        except (TimeoutError, aiohttp.ClientError) as exc:
            await ws.close()
            raise _Reconnect(f"subscribe handshake failed: {exc!r}") from exc
        except BaseException:
            await ws.close()
            raise
        return ws

    async def _send_subscribe(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        msg = _SubscribeMessage(
            channels=self.channels,
            mode=self.mode,
            interval_ms=msgspec.UNSET if self.interval_ms is None else self.interval_ms,
            since=msgspec.UNSET if self._cursor is None else self._cursor,
        )
        self._sent_since = self._cursor
        await ws.send_str(_encoder.encode(msg).decode())
        self._log.info("memsync_subscribe_sent", since=self._cursor)

    async def _pump(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        while not self._closing:
            await self._step(ws)

    async def _step(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        """Receive and handle one message; raise :class:`_Reconnect` when the socket is done."""
        msg = await ws.receive(timeout=self._options.idle_timeout)
        if msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
            try:
                frame = decode_frame(msg.data)
            except msgspec.DecodeError as exc:
                raise _Reconnect(f"undecodable frame: {exc}") from exc
            await self._handle(frame)
        elif msg.type == aiohttp.WSMsgType.ERROR:
            raise _Reconnect(f"socket error: {ws.exception()!r}")
        else:
            raise _Reconnect(f"socket closed ({msg.type.name}, code {ws.close_code})")

    # -- messages -------------------------------------------------------------

    async def _handle(self, frame: Frame) -> None:
        if frame.op == "event":
            await self._on_events([frame.event], (), frame.cursor, "event")
        elif frame.op == "batch":
            await self._on_events(frame.events, frame.states, frame.cursor, "batch", frame.left)
        elif frame.op == "left":
            await self._on_left(frame)
        elif frame.op == "subscribed":
            # Adopt the server's cursor only for a fresh ("from now") subscribe:
            # when resuming, backlog events may still follow and carry their own.
            if self._cursor is None and frame.cursor is not None:
                self._cursor = frame.cursor
            self.connected.set()
            self._log.info("memsync_subscribed", cursor=self._cursor)
        elif frame.op == "error":
            self._on_error(frame)
        elif frame.op != "heartbeat":
            self._log.info("memsync_subscription_unknown_op", op=frame.op)

    def _on_error(self, frame: Frame) -> None:
        code = frame.code
        if code == "resync_required":
            self._needs_resync = True
            raise _Reconnect("resync required")
        if code == "slow_consumer":
            if frame.cursor is not None:
                self._cursor = frame.cursor
            raise _SlowConsumer("slow consumer")
        if code == "bad_token":
            self._on_bad_token(frame)
        if code in _FATAL_CODES:
            raise SubscriptionError(frame.message or code, code=code)
        if frame.cursor is not None:
            self._cursor = frame.cursor
        raise _Reconnect(f"server error {code}: {frame.message}")

    def _on_bad_token(self, frame: Frame) -> None:
        """The gateway cannot decode a token of this subscription: the cursor, if one was sent.

        Retrying with the same cursor would fail forever; a snapshot gives a
        cursor this gateway issued.
        """
        if self._sent_since is None:
            raise SubscriptionError(
                f"the gateway answered bad_token to a subscribe without a cursor "
                f"({frame.message or 'no message'}): this client and the gateway disagree on "
                "the protocol; upgrade the older of the two",
                code="bad_token",
            )
        self._log.warning(
            "memsync_subscription_bad_cursor",
            cause="bad_token",
            message=frame.message,
            cursor=self._sent_since,
            action="resync from a snapshot",
        )
        self._cursor = None
        self._needs_resync = True
        raise _Reconnect(f"the gateway cannot decode the cursor (bad_token): {frame.message}")

    async def _on_events(
        self,
        raw_events: Sequence[msgspec.Raw],
        states: Sequence[MemoryState],
        cursor: str | None,
        origin: Literal["event", "batch"],
        left: Sequence[Removed] = (),
    ) -> None:
        try:
            events = [decode_event(bytes(raw)) for raw in raw_events]
        except MemsyncError as exc:
            # The snapshot carries states, not events: a resync heals the cache.
            self._log.error("memsync_subscription_bad_event", error=str(exc))
            self._needs_resync = True
            raise _Reconnect("undecodable event") from exc
        holder = self.holder
        changed: dict[str, MemoryEvent | None] = {}
        for state in states:
            if self._cache.join(state, holder):
                changed.setdefault(state.key, None)
        latest: dict[str, MemoryEvent] = {}
        for event in events:
            if self._cache.apply(event, holder):
                changed.setdefault(event.key, None)
            have = latest.get(event.key)
            if have is None or event.timestamp >= have.timestamp:
                latest[event.key] = event
        # After the events: a memory both changed and left in one batch is dropped.
        dropped = [s for s in (self._cache.release(r.key, holder) for r in left) if s is not None]
        if cursor is not None:
            self._cursor = cursor
        for key in changed:
            await self._emit(key, latest.get(key), origin)
        for state in dropped:
            await self._gone(state, origin)

    async def _on_left(self, frame: Frame) -> None:
        """A memory left this subscription's channels (module docstring, 3)."""
        if frame.cursor is not None:
            self._cursor = frame.cursor
        key = frame.key or frame.id
        if not key:
            self._log.warning("memsync_subscription_left_without_key", cursor=frame.cursor)
            return
        try:
            state = self._cache.release(key, self.holder)
        except KeyError:  # a bare id several tenants share here: the key is needed
            self._log.warning("memsync_subscription_left_ambiguous", id=key)
            return
        if state is not None:
            await self._gone(state, "event")

    async def _resync(self) -> None:
        """A full snapshot into the cache; drop what it no longer lists (module docstring, 5)."""
        self._log.warning("memsync_subscription_resync", stale_cursor=self._cursor)
        cursor: str | None = None
        changed: list[str] = []
        seen: set[str] = set()
        async for page in self._pull(self.channels, None):
            for state in page.states:
                seen.add(state.key)
                if self._cache.join(state, self.holder):
                    changed.append(state.key)
            cursor = page.cursor
        gone = drop_missing(self._cache, self.channels, seen, self.holder)
        self._cursor = cursor
        self._needs_resync = False
        self._log.info(
            "memsync_subscription_resynced",
            cursor=cursor,
            states=len(seen),
            changed=len(changed),
            gone=len(gone),
        )
        for key in dict.fromkeys(changed):
            await self._emit(key, None, "resync")
        for state in gone:
            await self._gone(state, "resync")

    async def _gone(self, state: MemoryState, origin: Literal["event", "batch", "resync"]) -> None:
        """Report a memory dropped from the cache, with the last state held."""
        change = Change(
            key=state.key,
            view=_shown(state),
            state=state,
            event=None,
            origin=origin,
            cursor=self._cursor,
            gone=True,
        )
        await self._deliver(change)

    async def _emit(
        self, key: str, event: MemoryEvent | None, origin: Literal["event", "batch", "resync"]
    ) -> None:
        state = self._cache.state(key)
        if state is None:  # evicted at once (cache smaller than one batch)
            return
        if state.contested:  # two users' versions met here: shown to no one, as gone
            await self._gone(state, origin)
            return
        change = Change(
            key=key,
            view=materialize(state),
            state=state,
            event=event,
            origin=origin,
            cursor=self._cursor,
        )
        await self._deliver(change)

    async def _deliver(self, change: Change) -> None:
        try:
            result = self._callback(change)
            if inspect.isawaitable(result):
                await result
        except Exception:  # noqa: BLE001 - task supervisor: a callback bug must not kill the stream
            self._log.exception("memsync_subscription_callback_failed", key=change.key)


def _gave_up(exc: RetryError) -> SubscriptionError:
    """What ends a subscription after ``max_attempts`` consecutive failed attempts."""
    last = exc.last_attempt
    reason = last.exception()
    return SubscriptionError(
        f"gave up after {last.attempt_number} attempts: {reason}; check that the gateway is "
        "reachable and healthy, then subscribe again (or raise StreamOptions.max_attempts)",
        code="gave_up",
    )


def _shown(state: MemoryState) -> MemoryView:
    """The view a callback gets: none of a contested state's content (LocalCache.view)."""
    if state.contested:
        state = msgspec.structs.replace(state, versions=(), tags=(), counts=(), pending=())
    return materialize(state)
