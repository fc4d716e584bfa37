"""``memsync mirror``: one link as a process, until SIGINT/SIGTERM.

Logs the link's progress every ``report_every`` seconds (records mirrored,
backlog, state), so an operator sees a stalled link without a dashboard.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from typing import Any

import structlog

from replication.mirror import MirrorLink
from replication.tasks import cancel_all

__all__ = ["run_link"]

_log = structlog.get_logger("replication.mirror")


async def _run(link: MirrorLink, report_every: float) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    task = asyncio.create_task(link.run(), name=link.name)
    try:
        while not stop.is_set() and not task.done():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), report_every)
            s = link.status
            _log.info(
                "mirror.status",
                link=link.name,
                state=s.state,
                mirrored=s.mirrored,
                lag_events=s.lag_events,
                retries=s.retries,
                last_error=s.last_error or None,
            )
    finally:
        await cancel_all([task])  # again until it stops (a consumer's stop() may swallow one)
    crashed = None if task.cancelled() else task.exception()
    if crashed is not None:
        raise crashed


def run_link(*, report_every: float = 10.0, **kwargs: Any) -> int:
    """Run one :class:`MirrorLink` built from ``kwargs``; the exit code."""
    link = MirrorLink(**kwargs)
    asyncio.run(_run(link, report_every))
    return 0
