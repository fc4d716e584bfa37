"""The cross-region benchmark runs end to end on a real two-region cluster, tiny.

Not a performance test (no figure is judged): it keeps ``region_bench``
from rotting between the sessions that run it for real, and checks what its
figures stand on — every message and write it sent counted as received, on
every path, with and without the toxic, and after the partition heals.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from loadtests import region_bench

TINY = region_bench.Plan(
    rate=50.0, seconds=2.0, partition_s=3.0, partition_events=200, warmup_s=0.5, idle_s=1.0
)


def _results(out: str) -> dict[str, list[dict[str, Any]]]:
    tables = [json.loads(ln) for ln in out.splitlines() if ln.startswith('{"benchmark": ')]
    return {t["benchmark"]: t["results"] for t in tables}


async def test_the_region_benchmark_counts_everything_it_sent(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await region_bench.run_bench(TINY, tmp_path) == 0
    tables = _results(capsys.readouterr().out)
    idle = {r["process"]: r for r in tables["idle cluster CPU (% of one core)"]}
    assert idle["broker"]["count"] == 2 and idle["gateway"]["count"] == 2
    assert idle["all"]["cpu_pct"] > 0
    rows = tables["cross-region propagation (ms)"]
    # the bare relay, the floor and the product's path; each plain and with the toxic
    assert len(rows) == 6
    for row in rows:
        assert row["sent"] == row["received"] == TINY.rate * TINY.seconds, row
        assert 0 < row["median"] <= row["p99"] <= row["max"]
    assert len([r for r in rows if r["phase"].endswith("+50ms toxic")]) == 3
    writes = [r for r in rows if r["phase"].startswith("write us-east")]
    assert all(r["acked"] == r["sent"] for r in writes)
    (part,) = tables["convergence after a partition"]
    assert part["backlog_events"] == TINY.partition_events
    # each region's subscriber got every write the other region took while cut off
    assert part["received"] == {"us-east": 100, "eu-west": 100}
    assert part["seen_across_during_partition"] == 0
