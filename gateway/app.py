"""``create_app``: the aiohttp application of one regional gateway."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import WSCloseCode, web

from gateway import api, dashboard, health, replication_api, subscribe
from gateway.auth import TokenCache
from gateway.keys import (
    CONNECTIONS,
    METRICS,
    MODE,
    RUNTIME,
    SERVICE,
    SETTINGS,
    STREAMS,
    TOKENS,
)
from gateway.metrics import Metrics
from gateway.modes import Modes
from gateway.runtime import Runtime
from gateway.settings import Settings
from gateway.shutdown import Watchdog
from gateway.store import MemoryStore
from replication.tasks import cancel_all

__all__ = ["create_app"]


def create_app(settings: Settings, *, store: MemoryStore | None = None) -> web.Application:
    """The gateway app; its resources start and stop with it (``cleanup_ctx``)."""
    settings = settings.validated()
    app = web.Application(
        middlewares=[api.error_middleware],
        client_max_size=settings.limits.max_body_bytes,
    )
    metrics = Metrics(settings.region)
    modes = Modes(metrics)
    app[SETTINGS] = settings
    app[TOKENS] = TokenCache(settings.secret_bytes)
    app[METRICS] = metrics
    app[MODE] = modes
    app[RUNTIME] = Runtime(settings, metrics, modes, store=store)
    app[CONNECTIONS] = set()
    app.add_routes(api.routes())
    app.add_routes(subscribe.routes())
    app.add_routes(health.routes())
    app.add_routes(replication_api.routes())
    app.add_routes(dashboard.routes())

    # Shutdown runs from on_shutdown (streams) to the end of cleanup (runtime);
    # if any step hangs, the watchdog logs what every pending task awaits.
    watchdog = Watchdog(f"gateway {settings.region} shutdown")

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        runtime = app[RUNTIME]
        try:
            await runtime.start()
            app[SERVICE] = runtime.service
            app[STREAMS] = runtime.streams
            tasks = runtime.spawn()
            try:
                yield
            finally:
                watchdog.start()
                await cancel_all(tasks)
        finally:
            watchdog.start()
            try:
                await runtime.stop()
            finally:
                await watchdog.stop()

    async def going_away(app: web.Application) -> None:
        """Close live streams with GOING_AWAY (clients resume elsewhere with their cursor).

        Every subscription is closed and its pump woken first: the fan-out
        writes to it no more and its pump stops after the write in progress.
        Then WebSockets get their close frame, and each SSE handler returns
        so aiohttp ends its response after its last write (ending it from
        here, while its pump could still write, made that write fail).
        """
        watchdog.start()
        for sub in app[STREAMS].fanout.subscriptions() if STREAMS in app else ():
            sub.closed = sub.closed or "going_away"
            sub.send_direct(b"")
        connections = app[CONNECTIONS]
        live = list(connections)
        # Concurrently, each bounded: a client that stopped reading cannot hold the shutdown.
        await asyncio.gather(
            *(
                subscribe.end_event_stream(conn, _CLOSE_TIMEOUT_S)
                if subscribe.is_event_stream(conn)
                else _going_away(conn)
                for conn in live
            )
        )

    app.cleanup_ctx.append(lifecycle)
    app.cleanup_ctx.append(subscribe.liveness)
    app.on_shutdown.append(going_away)
    return app


_CLOSE_TIMEOUT_S = 5.0


async def _going_away(conn: Any) -> None:
    """A WebSocket's connection: its close frame, bounded (SSE: ``subscribe.end_event_stream``)."""
    with contextlib.suppress(ConnectionError, RuntimeError, TimeoutError):
        async with asyncio.timeout(_CLOSE_TIMEOUT_S):
            await conn.ws.close(code=WSCloseCode.GOING_AWAY, message=b"gateway shutting down")
