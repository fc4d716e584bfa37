"""Serve one gateway on uvloop until SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Callable
from typing import Any

import uvloop
from aiohttp import web

from gateway.app import create_app
from gateway.keys import METRICS
from gateway.metrics import Metrics
from gateway.settings import Settings

__all__ = ["serve"]


def _time_gc(metrics: Metrics) -> Callable[[str, dict[str, Any]], None]:
    """Observe every collector pause and what it freed (a process-wide hook: one app per process).

    Returns the hook, already in ``gc.callbacks``.
    """
    started = [0.0]
    pauses = {g: metrics.gc_pause.labels(str(g)) for g in range(3)}
    collected = {g: metrics.gc_collected.labels(str(g)) for g in range(3)}

    def callback(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            generation = info["generation"]
            pauses[generation].observe(time.perf_counter() - started[0])
            collected[generation].inc(info["collected"])

    gc.callbacks.append(callback)
    return callback


def serve(settings: Settings) -> int:
    """Run the gateway; returns the process exit code."""
    app = create_app(settings)
    _time_gc(app[METRICS])

    async def freeze(_: web.Application) -> None:
        # After start-up (runs after the runtime's cleanup_ctx opened it):
        # modules, clients and the warmed cache never become garbage; keep
        # full collections from walking them again and again.
        gc.freeze()

    app.on_startup.append(freeze)
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    web.run_app(
        app,
        host=settings.http.host,
        port=settings.http.port,
        print=None,
        access_log=None,
        shutdown_timeout=5.0,
        handle_signals=True,
    )
    return 0
