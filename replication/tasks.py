"""Background tasks: stop them for sure, and say where a pending one waits.

A task can swallow a cancellation: aiokafka's consumer ``stop()`` awaits
its fetch task under ``suppress(CancelledError)``, so a task cancelled while
it stops a consumer carries on as if nothing happened, and whoever cancelled
it once (a ``TaskGroup``, a ``finally: task.cancel(); await task``) waits
forever. :func:`cancel_all` cancels again (after a grace period that
cleanup in progress gets, then every two seconds) until every task is done,
and logs each one still running with its :func:`await_chain`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

import structlog

__all__ = ["await_chain", "cancel_all", "pending_stacks"]

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


async def cancel_all(
    tasks: Iterable[asyncio.Task[Any]], *, grace: float = 10.0, every: float = 2.0
) -> None:
    """Cancel ``tasks`` and wait until all are done.

    A task still running ``grace`` seconds after the first cancellation
    (longer than any bounded cleanup of ours) is cancelled again every
    ``every`` seconds and logged. If the caller is cancelled meanwhile, the
    tasks are cancelled once more before it returns, never left running
    unasked.
    """
    tasks = list(tasks)
    pending = {t for t in tasks if not t.done()}
    rounds, wait = 0, grace
    try:
        while pending:
            for task in pending:
                task.cancel()
            _, pending = await asyncio.wait(pending, timeout=wait)
            rounds, wait = rounds + 1, every
            for task in pending:
                _log.warning(
                    "task.still_running_after_cancel",
                    task=task.get_name(),
                    rounds=rounds,
                    at=await_chain(task),
                )
    except asyncio.CancelledError:
        for task in pending:
            task.cancel()
        raise
    for task in tasks:
        if not task.cancelled() and task.exception() is not None:
            _log.error("task.failed", task=task.get_name(), exc_info=task.exception())
