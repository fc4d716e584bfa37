"""The shutdown watchdog: when stopping takes too long, say what it waits for.

A clean shutdown awaits many things (live streams closing, background loops
finishing their cancellation, Kafka clients, the store and journal threads).
If one of them never returns, the process hangs with nothing in the log. The
watchdog runs beside the shutdown and, each time it overruns another
``every`` seconds, logs ``shutdown.slow`` with the stack of every task still
pending, so the step that hangs is named in the log instead of guessed.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import structlog

from replication.tasks import pending_stacks

__all__ = ["Watchdog"]

_log = structlog.get_logger(__name__)


class Watchdog:
    """Logs the pending tasks each time ``what`` overruns another ``every`` seconds."""

    def __init__(self, what: str, *, every: float = 15.0) -> None:
        self.what = what
        self.every = every
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start watching (once; later calls are ignored)."""
        if self._task is None:
            self._task = asyncio.create_task(self._watch(), name=f"watchdog:{self.what}")

    async def stop(self) -> None:
        """Stop watching."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _watch(self) -> None:
        started, me = time.monotonic(), asyncio.current_task()
        while True:
            await asyncio.sleep(self.every)
            _log.warning(
                "shutdown.slow",
                what=self.what,
                seconds=round(time.monotonic() - started, 1),
                pending=pending_stacks(exclude=me),
            )
