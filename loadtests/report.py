"""Benchmark output: one JSON document and one human table, same figures."""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Sequence
from typing import Any, TextIO

__all__ = ["add_settings_option", "emit", "percentile", "settings_env", "summarize"]


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
    out: TextIO = sys.stdout,
) -> None:
    """Print ``rows`` as a table, then the whole result as one JSON line."""
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
