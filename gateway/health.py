"""Operational endpoints: liveness, readiness, metrics, the OpenAPI document."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway.api import json_response
from gateway.keys import METRICS, MODE, RUNTIME, SETTINGS
from gateway.openapi import spec

__all__ = ["routes"]


async def healthz(request: web.Request) -> web.Response:
    """``GET /healthz``: the process is up."""
    return json_response({"status": "ok", "region": request.app[SETTINGS].region})


async def readyz(request: web.Request) -> web.Response:
    """``GET /readyz``: whether to route traffic here, and the modes in effect.

    Degraded-but-serving modes (the log is down: writes go to the outbox)
    answer 200; a region that cannot serve reads (store down) answers 503.
    """
    modes = request.app[MODE]
    runtime = request.app[RUNTIME]
    status = await runtime.status()
    ready = "store_unavailable" not in modes.active() and runtime.started
    body = {
        "ready": ready,
        "mode": modes.current(),
        "modes": modes.active(),
        "region": request.app[SETTINGS].region,
        **status,
    }
    return json_response(body, 200 if ready else 503, None if ready else {"Retry-After": "1"})


async def metrics(request: web.Request) -> web.Response:
    """``GET /metrics``: Prometheus text format."""
    data = generate_latest(request.app[METRICS].registry)
    return web.Response(body=data, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def openapi(request: web.Request) -> web.Response:
    """``GET /openapi.json``."""
    return json_response(spec())


def routes() -> list[web.RouteDef]:
    """The operational routes."""
    return [
        web.get("/healthz", healthz),
        web.get("/readyz", readyz),
        web.get("/metrics", metrics),
        web.get("/openapi.json", openapi),
    ]
