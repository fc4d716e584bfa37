"""``create_app``: the aiohttp application of one regional gateway."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from aiohttp import web

from gateway import api, health
from gateway.keys import METRICS, MODE, RUNTIME, SERVICE, SETTINGS
from gateway.metrics import Metrics
from gateway.modes import Modes
from gateway.runtime import Runtime
from gateway.settings import Settings
from gateway.store import MemoryStore

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
    app[METRICS] = metrics
    app[MODE] = modes
    app[RUNTIME] = Runtime(settings, metrics, modes, store=store)
    app.add_routes(api.routes())
    app.add_routes(health.routes())

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        runtime = app[RUNTIME]
        try:
            await runtime.start()
            app[SERVICE] = runtime.service
            async with asyncio.TaskGroup() as group:
                tasks = runtime.spawn(group)
                try:
                    yield
                finally:
                    for task in tasks:
                        task.cancel()
        finally:
            await runtime.stop()

    app.cleanup_ctx.append(lifecycle)
    return app
