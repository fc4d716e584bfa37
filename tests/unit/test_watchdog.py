"""The shutdown watchdog names what a hanging shutdown waits for."""

from __future__ import annotations

import asyncio

from structlog.testing import capture_logs

from gateway.watchdog import Watchdog, watching


async def _stuck_here(gate: asyncio.Event) -> None:
    await gate.wait()


async def test_an_overrunning_step_is_logged_with_the_stack_of_what_waits() -> None:
    gate = asyncio.Event()
    stuck = asyncio.create_task(_stuck_here(gate), name="stuck-step")
    with capture_logs() as logs:
        async with watching("test shutdown", every=0.05):
            await asyncio.sleep(0.18)
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
