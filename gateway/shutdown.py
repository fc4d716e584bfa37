"""Shutdown hygiene: cancel background tasks for sure, and say what a slow stop waits for.

**Cancelling.** A task can swallow a cancellation: aiokafka's consumer
``stop()`` awaits its fetch task under ``suppress(CancelledError)``, so a
task cancelled while it stops a consumer carries on as if nothing happened.
``TaskGroup`` cancels once and then waits forever. :func:`cancel_all`
cancels again (every two seconds, so cleanup in progress is given time)
until every task is done, and logs each one still running.

**Watching.** A clean shutdown awaits many things (live streams closing, background loops
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
from collections.abc import AsyncIterator, Iterable
from typing import Any

import structlog

__all__ = ["Watchdog", "await_chain", "cancel_all", "pending_stacks", "watching"]

_log = structlog.get_logger(__name__)

_FRAMES = 40  # frames per task, outermost first: enough to reach what it awaits


def await_chain(task: asyncio.Task[Any]) -> str:
    """Where a pending task waits: every frame of its ``await`` chain, innermost last.

    ``Task.get_stack`` shows only the outermost frame of a suspended
    coroutine; this follows ``cr_await`` (and generators' ``gi_yieldfrom``)
    down to the future or object the task is blocked on.
    """
    lines: list[str] = []
    node: Any = task.get_coro()
    for _ in range(_FRAMES):
        frame = getattr(node, "cr_frame", None) or getattr(node, "gi_frame", None)
        frame = frame or getattr(node, "ag_frame", None)
        if frame is None:
            # A future's iterator says nothing; the task knows the future itself.
            waited = getattr(task, "_fut_waiter", None) or node
            lines.append(f"  awaiting {waited!r}"[:400])
            break
        code = frame.f_code
        lines.append(f"  {code.co_filename}:{frame.f_lineno} in {code.co_name}")
        node = (
            getattr(node, "cr_await", None)
            or getattr(node, "gi_yieldfrom", None)
            or getattr(node, "ag_await", None)
        )
        if node is None:
            break
    return "\n".join(lines)


def pending_stacks(*, exclude: asyncio.Task[Any] | None = None) -> dict[str, str]:
    """The name and ``await`` chain of every pending task on the running loop."""
    return {
        f"{task.get_name()}#{id(task):x}": await_chain(task)
        for task in asyncio.all_tasks()
        if task is not exclude and not task.done()
    }


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


@contextlib.asynccontextmanager
async def watching(what: str, *, every: float = 15.0) -> AsyncIterator[None]:
    """Watch the body with a :class:`Watchdog`."""
    dog = Watchdog(what, every=every)
    dog.start()
    try:
        yield
    finally:
        await dog.stop()


async def cancel_all(tasks: Iterable[asyncio.Task[Any]], *, every: float = 2.0) -> None:
    """Cancel ``tasks`` and wait until all are done, cancelling again every ``every`` s."""
    tasks = list(tasks)
    pending = {t for t in tasks if not t.done()}
    rounds = 0
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=every)
        rounds += 1
        for task in pending:
            _log.warning(
                "task.still_running_after_cancel",
                task=task.get_name(),
                rounds=rounds,
                at=await_chain(task),
            )
    for task in tasks:
        if not task.cancelled() and task.exception() is not None:
            _log.error("task.failed", task=task.get_name(), exc_info=task.exception())
