"""The benchmarks run end to end on the real broker, store and gateway, tiny.

Not a performance test (no figure is judged): it keeps a benchmark from
rotting between the sessions that run it for real, and checks what its
figures stand on — every delivery counted, every phase reported as JSON.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from loadtests import propagation_bench

TINY = propagation_bench.Plan(
    floor_seconds=1,
    subscribers=(3, 8),
    write_seconds=1,
    write_seconds_big=1,
    warm_seconds=0.2,
    fanout_subscribers=8,
    fanout_repeats=3,
    idle=40,
    idle_rate=400.0,
    idle_hold=0.5,
    drain_quiet=5.0,
    drain_max=20.0,
    ref_rate=50.0,
    ref_seconds=1.0,
    single_rate=20.0,
    single_seconds=1.0,
    rate=100.0,
    idle_cpu_seconds=1.0,
)


def _result(out: str, name: str) -> dict[str, Any]:
    (line,) = [ln for ln in out.splitlines() if ln.startswith('{"benchmark": "' + name + '"')]
    result: dict[str, Any] = json.loads(line)
    return result


async def test_the_propagation_benchmark_counts_every_delivery(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await propagation_bench.run_bench(TINY, tmp_path) == 0
    out = capsys.readouterr().out
    result = _result(out, "propagation_bench")
    rows = {r["phase"]: r for r in result["results"]}
    propagation = [r for p, r in rows.items() if "propagation write→WS" in p]
    # one subscriber at 20/s; 3 at 100/s and 50/s; 8 at 100/s; the bare pipeline's
    assert len(propagation) == 5
    for row in propagation:
        assert row["expected"] > 0 and row["received"] == row["expected"], row
        assert 0 < row["p50_ms"] <= row["p99_ms"] <= row["max_ms"]
    fanout = [r for p, r in rows.items() if "fan-out 1 event" in p]
    assert len(fanout) == 3  # the gateway, the bare pipeline, the bare broadcast
    assert all(r["received"] == r["expected"] == 3 * 8 for r in fanout)
    floor = rows["a floor produce→consume @100/s"]  # the phases name the plan's rate
    assert floor["received"] == floor["expected"] > 0
    meta = result["meta"]
    assert meta["d_idle"]["connections"] == 40
    assert 0 < meta["d_idle"]["kib_per_conn"] < 64  # 40 connections: RSS pages are coarse
    assert "b write ack (POST) @100/s, 0 subs" in rows
    idle_cpu = rows["d idle gateway: no writes, no subscribers (CPU)"]
    assert idle_cpu["gw_cpu_pct"] > 0 and meta["d_idle_gateway_cpu_pct"]["broker"] > 0
    idle = _result(out, "propagation_bench.idle")
    assert idle["results"]
