"""The store benchmark measures a real Qdrant Edge store (a short run)."""

from __future__ import annotations

from pathlib import Path

from loadtests.store_bench import run, states


async def test_a_short_store_bench_reports_every_step(tmp_path: Path) -> None:
    rows = await run(points=700, step=300, batches=2, workdir=tmp_path)
    # Each step fills ``step`` memories, then inserts 2 batches of 50 more.
    assert [r["memories"] for r in rows] == [300, 700]
    for r in rows:
        assert 0 < r["insert_p50_ms"] <= r["insert_p99_ms"]
        assert r["update_p50_ms"] > 0 and r["lookup_p50_ms"] > 0
        assert r["gil_pace_pct"] is not None and 0 < r["gil_pace_pct"] < 1000


def test_updated_states_carry_their_later_writes() -> None:
    (first,), (second,) = states(7, 1), states(7, 1, counter=2)
    assert first.key == second.key == "acme/mem-7"
    assert first != second
