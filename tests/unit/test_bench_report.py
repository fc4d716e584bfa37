"""The benchmarks' process meters: a process tree from /proc and its CPU."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from loadtests.report import CpuMeter, command_line, cpu_seconds, descendants, machine_ticks

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

_BUSY = "import time\nend = time.process_time() + 0.4\nwhile time.process_time() < end: pass\n"


def test_a_busy_grandchild_is_found_and_its_cpu_counted() -> None:
    # a child that starts a busy grandchild and waits for it
    parent = subprocess.Popen(  # noqa: S603 - our own interpreter
        [
            sys.executable,
            "-c",
            f"import subprocess, sys; subprocess.run([sys.executable, '-c', {_BUSY!r}])",
        ]
    )
    try:
        deadline = time.monotonic() + 10
        while len(tree := descendants(parent.pid)) < 2:
            assert time.monotonic() < deadline, "the grandchild never showed up"
            time.sleep(0.01)
        assert tree[0] == parent.pid
        grandchild = tree[1]
        assert "process_time" in command_line(grandchild)
        meter = CpuMeter(
            {"grandchild": grandchild, "gone": None, "group": (parent.pid, grandchild)}
        )
        time.sleep(0.2)
        pct = meter.pct()
        assert pct["grandchild"] > 20  # it spins on a core
        assert pct["gone"] == 0.0
        assert pct["group"] > 20  # a group: the sum of its processes (the spinning one in it)
        # ... and that core is part of the machine's busy share (of all cores)
        assert 100 / (os.cpu_count() or 1) * 0.2 < meter.machine_pct() <= 100
    finally:
        parent.wait(10)
    assert cpu_seconds(grandchild) == 0.0  # gone: nothing to read
    assert command_line(grandchild) == ""


def test_the_machines_busy_ticks_only_grow() -> None:
    busy, total = machine_ticks()
    assert 0 < busy <= total
    sum(i * i for i in range(200_000))
    busy2, total2 = machine_ticks()
    assert busy2 >= busy and total2 >= total
