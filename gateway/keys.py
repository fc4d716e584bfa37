"""Typed keys of the resources an aiohttp app holds (no module singletons)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

if TYPE_CHECKING:
    from gateway.auth import TokenCache
    from gateway.metrics import Metrics
    from gateway.modes import Modes
    from gateway.runtime import Runtime
    from gateway.service import MemoryService
    from gateway.settings import Settings
    from gateway.streams import Streams

__all__ = [
    "CONNECTIONS",
    "METRICS",
    "MODE",
    "RUNTIME",
    "SERVICE",
    "SETTINGS",
    "STREAMS",
    "TOKENS",
]

SETTINGS: web.AppKey[Settings] = web.AppKey("settings")
METRICS: web.AppKey[Metrics] = web.AppKey("metrics")
MODE: web.AppKey[Modes] = web.AppKey("modes")
SERVICE: web.AppKey[MemoryService] = web.AppKey("service")
RUNTIME: web.AppKey[Runtime] = web.AppKey("runtime")
STREAMS: web.AppKey[Streams] = web.AppKey("streams")
# Live streams: each WebSocket's connection (``subscribe._Connection``), each
# SSE response; counted against ``max_subscriptions``, closed at shutdown.
CONNECTIONS: web.AppKey[set[Any]] = web.AppKey("connections")
TOKENS: web.AppKey[TokenCache] = web.AppKey("tokens")
