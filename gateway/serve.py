"""Serve one gateway on uvloop until SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio

import uvloop
from aiohttp import web

from gateway.app import create_app
from gateway.settings import Settings

__all__ = ["serve"]


def serve(settings: Settings) -> int:
    """Run the gateway; returns the process exit code."""
    app = create_app(settings)
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
