"""Micro-benchmark of the replication core: encode, decode, merge.

    python -m loadtests.core_bench [--events 20000] [--runs 7]

Prints events/s (median of ``--runs`` runs, with min and max) for encoding,
decoding, merging and decode+merge of ~600-byte events, as a table and as a
JSON line. One core, no I/O.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

from loadtests.report import emit
from replication import dvv
from replication.dvv import Dot
from replication.merge import apply
from replication.schema import MemoryBody, MemoryEvent, Ops, Source, decode_event, encode
from replication.state import MemoryState

CONTENT = "Alice takes her coffee black, no sugar; decaf after 3pm, please."


def make_events(n: int, memories: int = 1000) -> list[MemoryEvent]:
    """``n`` realistic update events spread over ``memories`` memories, 3 writers."""
    events = []
    counters: dict[tuple[str, int], int] = {}
    for i in range(n):
        m = i % memories
        replica = f"us-east.g{i % 3}"
        c = counters.get((replica, m), 0) + 1
        counters[(replica, m)] = c
        ctx = dvv.from_vector({f"us-east.g{j}": max(0, c - 1) for j in range(3)})
        events.append(
            MemoryEvent(
                event_id=f"{i:032x}",
                event_type="create" if c == 1 and replica.endswith("g0") else "update",
                timestamp=(1_763_700_000_000 + i) << 16,
                memory=MemoryBody(
                    id=f"mem-{m}",
                    tenant_id="acme",
                    user_id=f"user-{m % 50}",
                    kind="fact",
                    policy="lww",
                    content=CONTENT,
                    metadata={"source": "chat", "confidence": 0.9},
                    topics=("coffee", "preferences"),
                ),
                source=Source(agent_id="phone-agent", session_id="s-1", region="us-east"),
                channels=("user:u:memories", "topic:coffee:updates", "topic:preferences:updates"),
                context=ctx,
                dot=Dot(replica, c),
                seq=i + 1,
                ops=Ops(),
            )
        )
    return events


def _rate(n: int, fn: Callable[[], object], runs: int) -> dict[str, float]:
    rates = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        rates.append(n / (time.perf_counter() - start))
    return {"median": statistics.median(rates), "min": min(rates), "max": max(rates)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests.core_bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--events", type=int, default=20_000, help="events per run")
    parser.add_argument("--runs", type=int, default=7, help="runs per figure (median reported)")
    args = parser.parse_args(argv)
    events = make_events(args.events)
    blobs = [encode(e) for e in events]
    size = statistics.median(len(b) for b in blobs)

    def encode_all() -> None:
        for e in events:
            encode(e)

    def decode_all() -> None:
        for b in blobs:
            decode_event(b)

    def merge_all() -> None:
        states: dict[str, MemoryState] = {}
        for e in events:
            k = e.memory.id
            states[k] = apply(states.get(k), e)

    def decode_merge_all() -> None:
        states: dict[str, MemoryState] = {}
        for b in blobs:
            e = decode_event(b)
            k = e.memory.id
            states[k] = apply(states.get(k), e)

    rows = []
    for name, fn in (
        ("encode", encode_all),
        ("decode+validate", decode_all),
        ("merge", merge_all),
        ("decode+merge", decode_merge_all),
    ):
        r = _rate(args.events, fn, args.runs)
        rows.append(
            {"operation": name, "events_per_s": r["median"], "min": r["min"], "max": r["max"]}
        )
    emit(
        "core_bench",
        rows,
        ["operation", "events_per_s", "min", "max"],
        meta={"events": args.events, "runs": args.runs, "event_bytes_median": size},
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
