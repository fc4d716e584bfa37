"""Shutdown hygiene: tasks are cancelled for sure; a slow stop names what it waits for."""

from __future__ import annotations

import asyncio
import contextlib

from structlog.testing import capture_logs

from gateway.shutdown import Watchdog
from replication.tasks import cancel_all


async def _stuck_here(gate: asyncio.Event) -> None:
    await gate.wait()


async def test_an_overrunning_step_is_logged_with_the_stack_of_what_waits() -> None:
    gate = asyncio.Event()
    stuck = asyncio.create_task(_stuck_here(gate), name="stuck-step")
    with capture_logs() as logs:
        dog = Watchdog("test shutdown", every=0.05)
        dog.start()
        await asyncio.sleep(0.18)
        await dog.stop()
        gate.set()
        await stuck
    slow = [e for e in logs if e["event"] == "shutdown.slow"]
    assert len(slow) >= 2  # once per overrun period, not once only
    assert slow[0]["what"] == "test shutdown"
    pending = slow[0]["pending"]
    (name,) = [k for k in pending if k.startswith("stuck-step#")]
    chain = pending[name].splitlines()
    assert "in _stuck_here" in chain[0]
    assert "in wait" in chain[1]  # asyncio.Event.wait: the chain goes below the task's frame
    assert chain[-1].strip().startswith("awaiting <Future pending")
    assert not any(k.startswith("watchdog:") for k in pending)  # not itself


async def test_a_prompt_step_logs_nothing_and_leaves_no_task() -> None:
    dog = Watchdog("quick", every=0.05)
    with capture_logs() as logs:
        dog.start()
        dog.start()  # idempotent
        await asyncio.sleep(0.01)
        await dog.stop()
        await dog.stop()
    assert logs == []
    assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("watchdog:")]


async def _swallows_one_cancel(stopped: list[str]) -> None:
    """Like a loop that stops an aiokafka consumer when the cancellation arrives."""
    inner = asyncio.create_task(asyncio.sleep(3600))
    while True:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            inner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await inner  # a second cancel landing here is swallowed too
            if stopped:
                raise
            stopped.append("swallowed")


async def test_cancel_all_cancels_again_a_task_that_swallowed_the_cancellation() -> None:
    stopped: list[str] = []
    stubborn = asyncio.create_task(_swallows_one_cancel(stopped), name="stubborn")
    plain = asyncio.create_task(asyncio.sleep(3600), name="plain")
    await asyncio.sleep(0)
    with capture_logs() as logs:
        await asyncio.wait_for(cancel_all([stubborn, plain], grace=0.05, every=0.05), 5)
    assert stubborn.cancelled() and plain.cancelled()
    assert stopped == ["swallowed"]
    (warned,) = [e for e in logs if e["event"] == "task.still_running_after_cancel"]
    assert warned["task"] == "stubborn" and "_swallows_one_cancel" in warned["at"]


async def test_one_cancel_is_what_taskgroup_gives_and_it_is_not_enough() -> None:
    # The behaviour cancel_all exists for: one cancel, and the task runs on.
    stopped: list[str] = []
    stubborn = asyncio.create_task(_swallows_one_cancel(stopped))
    await asyncio.sleep(0)
    stubborn.cancel()
    await asyncio.sleep(0.05)
    assert not stubborn.done() and stopped == ["swallowed"]
    await cancel_all([stubborn], grace=0.05)
    assert stubborn.cancelled()


async def test_cleanup_within_the_grace_period_is_not_cut_short() -> None:
    steps: list[str] = []

    async def slow_cleanup() -> None:
        try:
            await asyncio.sleep(3600)
        finally:
            steps.append("cleanup start")
            await asyncio.sleep(0.2)  # a bounded release commit, say
            steps.append("cleanup end")

    task = asyncio.create_task(slow_cleanup())
    await asyncio.sleep(0)
    await cancel_all([task], grace=1.0, every=0.05)
    assert steps == ["cleanup start", "cleanup end"]


async def test_a_cancelled_caller_leaves_no_task_unasked() -> None:
    stopped: list[str] = []
    stubborn = asyncio.create_task(_swallows_one_cancel(stopped))
    await asyncio.sleep(0)
    caller = asyncio.create_task(cancel_all([stubborn], grace=10.0))
    await asyncio.sleep(0.05)  # stubborn swallowed the first cancel; the caller waits
    assert stopped == ["swallowed"] and not stubborn.done()
    caller.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await caller
    await asyncio.sleep(0.01)
    assert stubborn.cancelled()  # cancelled again on the way out
