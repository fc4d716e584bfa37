"""Live subscriptions over the gateway's WebSocket, with resume and resync.

A :class:`Subscription` owns one socket at a time and one background task:

1. **connect** — ``GET /v1/subscribe`` (heartbeat, ``max_msg_size`` and
   ``compress=0`` set), send ``subscribe`` with ``since`` = the last cursor it
   holds, wait for ``subscribed``; failed attempts are retried by tenacity
   with exponential backoff and jitter, capped at ``max_backoff`` (and at
   ``max_attempts`` consecutive failures when set), moving through the
   region fallbacks — cursors are valid in every region;
2. **pump** — every ``event`` is merged into the :class:`LocalCache`
   (``replication.merge.apply``), every ``batch`` joins its states
   (``replication.merge.join``) and applies its events; then the callback gets
   one :class:`Change` per memory whose cached state changed (duplicates are
   not reported) and the cursor advances;
3. **resume** — when the socket drops, goes idle past ``idle_timeout`` or the
   server says ``slow_consumer`` (with a cursor, which is adopted), the
   subscription reconnects from its cursor: nothing is missed, nothing is
   applied twice (the cache dedups by dot anyway);
4. **resync** — on ``resync_required`` (the cursor's history is gone) it pulls
   a full ``/v1/sync`` snapshot of its channels into the cache (reporting
   changed memories with ``origin="resync"``), then subscribes with the
   snapshot's cursor.

``forbidden``, ``bad_request`` and refused handshakes (401/403/404) end the
subscription: :meth:`Subscription.wait` raises the :class:`SubscriptionError`.
An exception raised by the callback is logged and does not stop the stream.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import aiohttp
import msgspec
import structlog
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    stop_never,
    wait_exponential_jitter,
)

from gateway.client.cache import LocalCache
from gateway.client.errors import MemsyncClientError, SubscriptionError, TransportError
from gateway.client.transport import Transport
from gateway.client.wire import Change, Frame, SyncPage, decode_frame
from replication.errors import MemsyncError
from replication.schema import MemoryEvent, decode_event
from replication.state import MemoryState, materialize

__all__ = ["Callback", "Mode", "StreamOptions", "Subscription"]

_log = structlog.get_logger(__name__)

Mode = Literal["eager", "lazy"]
Callback = Callable[[Change], Awaitable[None] | None]
Pull = Callable[[tuple[str, ...], str | None], AsyncIterator[SyncPage]]

_FATAL_CODES = frozenset({"forbidden", "bad_request", "unauthorized"})
_FATAL_HANDSHAKE = frozenset({401, 403, 404})


@dataclass(frozen=True, slots=True)
class StreamOptions:
    """Socket and reconnect settings (seconds; bytes)."""

    heartbeat: float = 15.0
    idle_timeout: float = 60.0
    max_msg_size: int = 16 * 1024 * 1024
    close_timeout: float = 5.0
    initial_backoff: float = 0.1
    max_backoff: float = 10.0
    jitter: float = 1.0
    max_attempts: int | None = None


class _SubscribeMessage(msgspec.Struct, frozen=True, kw_only=True):
    op: str = "subscribe"
    channels: tuple[str, ...]
    mode: str
    interval_ms: int | msgspec.UnsetType = msgspec.UNSET
    since: str | msgspec.UnsetType = msgspec.UNSET


class _Reconnect(Exception):
    """The socket must be replaced (retriable inside the connect loop)."""


_encoder = msgspec.json.Encoder()


def _reconnectable(exc: BaseException) -> bool:
    if isinstance(exc, _Reconnect):
        return True
    return isinstance(exc, MemsyncClientError) and exc.retriable


class Subscription:
    """A live, self-healing subscription to some channels (see the module docstring).

    Create it with :meth:`MemorySync.subscribe`. ``cursor`` is the position of
    the last message processed; ``connected`` is set while a socket is
    subscribed; ``reconnects`` counts sockets replaced after the first.
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
    ) -> None:
        if not channels:
            raise ValueError("subscribe to at least one channel")
        if mode not in ("eager", "lazy"):
            raise ValueError(f"mode must be 'eager' or 'lazy' (got {mode!r})")
        self.channels: tuple[str, ...] = tuple(dict.fromkeys(channels))
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
        self._needs_resync = False
        self._closing = False
        self._error: MemsyncClientError | None = None
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
    def error(self) -> MemsyncClientError | None:
        """Why the subscription ended, if it ended on an error."""
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
        """Wait until the subscription ends; raise the error that ended it, if any."""
        task = self._task
        if task is not None:
            await asyncio.wait([task])
            if not task.cancelled() and (exc := task.exception()) is not None:
                raise exc
        if self._error is not None:
            raise self._error

    # -- the loop -------------------------------------------------------------

    async def _run(self) -> None:
        try:
            first = True
            while not self._closing:
                ws = await self._connect()
                if not first:
                    self.reconnects += 1
                    self._log.info("memsync_subscription_resumed", reconnects=self.reconnects)
                first = False
                try:
                    await self._pump(ws)
                except (TimeoutError, aiohttp.ClientError, _Reconnect) as exc:
                    self._log.warning("memsync_subscription_lost", reason=repr(exc))
                finally:
                    self.connected.clear()
                    await ws.close()
        except MemsyncClientError as exc:
            self._error = exc
            self._log.error("memsync_subscription_failed", error=str(exc), code=exc.code)
        finally:
            self.connected.clear()

    def _before_sleep(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        self._log.warning(
            "memsync_subscription_reconnecting",
            attempt=state.attempt_number,
            reason=repr(exc),
            wait_s=round(state.upcoming_sleep, 3),
        )

    async def _connect(self) -> aiohttp.ClientWebSocketResponse:
        opts = self._options
        retrying = AsyncRetrying(
            retry=retry_if_exception(_reconnectable),
            wait=wait_exponential_jitter(
                multiplier=opts.initial_backoff, max=opts.max_backoff, jitter=opts.jitter
            ),
            stop=stop_never if opts.max_attempts is None else stop_after_attempt(opts.max_attempts),
            before_sleep=self._before_sleep,
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                return await self._open()
        raise AssertionError("tenacity ended without an outcome")  # pragma: no cover

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
            await self._on_events(frame.events, frame.states, frame.cursor, "batch")
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
            raise _Reconnect("slow consumer")
        if code in _FATAL_CODES:
            raise SubscriptionError(frame.message or code, code=code)
        if frame.cursor is not None:
            self._cursor = frame.cursor
        raise _Reconnect(f"server error {code}: {frame.message}")

    async def _on_events(
        self,
        raw_events: Sequence[msgspec.Raw],
        states: Sequence[MemoryState],
        cursor: str | None,
        origin: Literal["event", "batch"],
    ) -> None:
        try:
            events = [decode_event(bytes(raw)) for raw in raw_events]
        except MemsyncError as exc:
            # The snapshot carries states, not events: a resync heals the cache.
            self._log.error("memsync_subscription_bad_event", error=str(exc))
            self._needs_resync = True
            raise _Reconnect("undecodable event") from exc
        changed: dict[str, MemoryEvent | None] = {}
        for state in states:
            if self._cache.join(state):
                changed.setdefault(state.key, None)
        latest: dict[str, MemoryEvent] = {}
        for event in events:
            if self._cache.apply(event):
                changed.setdefault(event.key, None)
            have = latest.get(event.key)
            if have is None or event.timestamp >= have.timestamp:
                latest[event.key] = event
        if cursor is not None:
            self._cursor = cursor
        for key in changed:
            await self._emit(key, latest.get(key), origin)

    async def _resync(self) -> None:
        self._log.warning("memsync_subscription_resync", stale_cursor=self._cursor)
        cursor: str | None = None
        changed: list[str] = []
        async for page in self._pull(self.channels, None):
            changed.extend(s.key for s in page.states if self._cache.join(s))
            cursor = page.cursor
        self._cursor = cursor
        self._needs_resync = False
        for key in dict.fromkeys(changed):
            await self._emit(key, None, "resync")

    async def _emit(
        self, key: str, event: MemoryEvent | None, origin: Literal["event", "batch", "resync"]
    ) -> None:
        state = self._cache.state(key)
        if state is None:  # evicted at once (cache smaller than one batch)
            return
        change = Change(
            key=key,
            view=materialize(state),
            state=state,
            event=event,
            origin=origin,
            cursor=self._cursor,
        )
        try:
            result = self._callback(change)
            if inspect.isawaitable(result):
                await result
        except Exception:  # noqa: BLE001 - task supervisor: a callback bug must not kill the stream
            self._log.exception("memsync_subscription_callback_failed", key=key)
