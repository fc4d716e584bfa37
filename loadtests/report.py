"""Benchmark output (one JSON document and one human table, same figures) and CPU meters."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any, TextIO

__all__ = [
    "CpuMeter",
    "add_settings_option",
    "command_line",
    "cpu_seconds",
    "descendants",
    "emit",
    "percentile",
    "settings_env",
    "summarize",
]


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0–100) by nearest rank; 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1))))
    return ordered[rank]


def summarize(values: Sequence[float]) -> dict[str, float]:
    """Median, p50/p90/p99/max and count of a sample."""
    return {
        "count": float(len(values)),
        "median": statistics.median(values) if values else 0.0,
        "p90": percentile(values, 90),
        "p99": percentile(values, 99),
        "max": max(values) if values else 0.0,
    }


def emit(
    name: str,
    rows: list[dict[str, Any]],
    columns: list[str],
    meta: dict[str, Any] | None = None,
    out: TextIO | None = None,
) -> None:
    """Print ``rows`` as a table, then the whole result as one JSON line (default: stdout)."""
    out = out if out is not None else sys.stdout  # looked up now: whoever redirected it
    widths = {c: max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in columns}
    print(f"\n{name}", file=out)
    print("  ".join(c.ljust(widths[c]) for c in columns), file=out)
    print("  ".join("-" * widths[c] for c in columns), file=out)
    for r in rows:
        print("  ".join(_fmt(r.get(c)).ljust(widths[c]) for c in columns), file=out)
    print(json.dumps({"benchmark": name, "meta": meta or {}, "results": rows}), file=out)


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return f"{v:,.3f}" if v < 100 else f"{v:,.0f}"
    return "" if v is None else str(v)


def _setting(item: str) -> str:
    """An argparse type: ``MEMSYNC_NAME=VALUE``."""
    name, sep, _ = item.partition("=")
    if not sep or not name.startswith("MEMSYNC_"):
        raise argparse.ArgumentTypeError(f"expected MEMSYNC_NAME=VALUE, got {item!r}")
    return item


def add_settings_option(parser: argparse.ArgumentParser) -> None:
    """``--set MEMSYNC_NAME=VALUE`` (repeatable): a gateway setting for the run."""
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        type=_setting,
        metavar="MEMSYNC_NAME=VALUE",
        help="a gateway setting for the run (repeatable), e.g. MEMSYNC_WRITE_THROUGH_QUEUE=0",
    )


def settings_env(items: Sequence[str]) -> dict[str, str]:
    """The ``--set`` items as an environment mapping."""
    return dict(item.split("=", 1) for item in items)


def cpu_seconds(pid: int | None) -> float:
    """utime + stime of a process in seconds (0 if unknown or gone)."""
    if pid is None:
        return 0.0
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (from ``/proc``; empty off Linux)."""
    children: dict[int, list[int]] = {}
    with contextlib.suppress(OSError):
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parent = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(parent, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def command_line(pid: int) -> str:
    """A process's command line, space-separated ('' if gone)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def machine_ticks() -> tuple[int, int]:
    """``(busy, total)`` clock ticks of every core since boot (``/proc/stat``; zeros off Linux).

    Busy is everything but idle and I/O wait: the share of the machine no
    process could have had.
    """
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return 0, 0
    total = sum(fields)
    return total - fields[3] - fields[4], total


Pids = int | tuple[int, ...] | None  # one process, a group of them (summed), or none


def group_cpu_seconds(pids: Pids) -> float:
    """:func:`cpu_seconds` of one process, or the sum over a group."""
    if isinstance(pids, tuple):
        return sum(cpu_seconds(p) for p in pids)
    return cpu_seconds(pids)


class CpuMeter:
    """CPU use (% of one core) of a few processes (or groups) over a window, and of the machine."""

    def __init__(self, pids: Mapping[str, Pids]) -> None:
        self.pids = dict(pids)
        self.t0 = time.monotonic()
        self.c0 = {k: group_cpu_seconds(p) for k, p in self.pids.items()}
        self.m0 = machine_ticks()

    def machine_pct(self) -> float:
        """How busy the whole machine was since construction (% of all its cores).

        Near 100 the phase was bound by the machine, not by one process: on
        a shared 2-core machine the broker, the store process, the load
        generator and the subscribers' processes all compete with the gateway.
        """
        busy, total = machine_ticks()
        elapsed = total - self.m0[1]
        return round(100 * (busy - self.m0[0]) / elapsed, 1) if elapsed > 0 else 0.0

    def pct(self) -> dict[str, float]:
        """Per process, since construction."""
        wall = time.monotonic() - self.t0
        return {
            k: round(100 * (group_cpu_seconds(p) - self.c0[k]) / wall, 1) if wall else 0.0
            for k, p in self.pids.items()
        }
