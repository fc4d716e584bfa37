"""The regional store as it grows: write and read cost, memory per memory, GIL held.

    python -m loadtests.store_bench [--quick] [--points 300000] [--step 50000]

Fills a Qdrant Edge store through the gateway's own adapter
(:class:`gateway.store_edge.QdrantEdgeStore`, on a temp dir, default vector
size) with realistic states in batches of 50, as the applier writes them.
At every ``--step`` stored memories it measures, for ``--batches`` batches:

- **insert**: ms per ``put_many`` of 50 new memories;
- **update**: ms per ``put_many`` of 50 existing memories;
- **flush**: ms of one ``maintain()`` (the shard's flush) after those
  updates; Qdrant Edge holds the GIL for much of it, and it grows with the
  store;
- **lookup**: ms per ``get_many`` of 50 existing keys;
- **search**: ms per full-text search (BM25, top 10) scoped to one user
  (~1/500 of the memories) and to the whole tenant (every memory matches:
  the worst case of ranking at query time);
- **anon KiB/memory**: this process's anonymous memory (``RssAnon``) above the
  empty store, per stored memory;
- **GIL pace while updating**: how fast a pure-Python counter thread runs
  while the updates run, against its pace with the store idle (100 % means
  the store never kept the GIL from it; the event loop is such a thread).

It answers "does the applier slow down as the store grows, and why" without a
gateway in the way. Prints a table and one JSON line (``loadtests.report``).
``--quick`` (~1 min): 20,000 memories in steps of 5,000.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from gateway.settings import StoreSettings
from gateway.store import SearchQuery
from gateway.store_edge import QdrantEdgeStore
from loadtests.report import emit, summarize
from replication import dvv
from replication.dvv import Dot
from replication.merge import apply
from replication.schema import MemoryBody, MemoryEvent, Ops, Source
from replication.state import MemoryState

BATCH = 50
CONTENT = "Alice takes her coffee black, no sugar; decaf after 3pm, please."


def _event(n: int, counter: int) -> MemoryEvent:
    return MemoryEvent(
        event_id=f"{n:024x}{counter:08x}",
        event_type="create" if counter == 1 else "update",
        timestamp=(1_763_700_000_000 + n) << 16,
        memory=MemoryBody(
            id=f"mem-{n}",
            tenant_id="acme",
            user_id=f"user-{n % 500}",
            kind="fact",
            policy="lww",
            content=f"{CONTENT} #{n} v{counter}",
            metadata={"source": "chat", "confidence": 0.9},
            topics=("coffee", "preferences"),
        ),
        source=Source(agent_id="phone-agent", session_id="s-1", region="us-east"),
        channels=("user:u:memories", "topic:coffee:updates"),
        context=dvv.from_vector({"us-east.g0": counter - 1}),
        dot=Dot("us-east.g0", counter),
        seq=n * 1000 + counter,
        ops=Ops(),
    )


def states(first: int, count: int, counter: int = 1) -> list[MemoryState]:
    """States of memories ``first..first+count-1`` after their ``counter``-th write."""
    out = []
    for n in range(first, first + count):
        state = apply(None, _event(n, 1))
        for c in range(2, counter + 1):
            state = apply(state, _event(n, c))
        out.append(state)
    return out


def rss_anon_kib() -> int:
    """This process's anonymous resident memory (``RssAnon``), KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1])
    return 0


class PaceMeter:
    """A pure-Python counter on its own thread: its pace shows who holds the GIL."""

    def __init__(self) -> None:
        self.count = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._spin, daemon=True, name="pace")

    def _spin(self) -> None:
        while not self._stop.is_set():
            for _ in range(1000):
                self.count += 1

    def __enter__(self) -> PaceMeter:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    async def rate(self, seconds: float) -> float:
        """Counts per second over ``seconds`` of the caller awaiting (the store idle)."""
        start, t = self.count, time.perf_counter()
        await asyncio.sleep(seconds)
        return (self.count - start) / (time.perf_counter() - t)


async def gil_pace(store: QdrantEdgeStore, filled: int, batches: int) -> float | None:
    """A counter thread's pace while updates run, as % of its pace with the store idle.

    The states are built beforehand, so what slows the counter is the
    adapter's ``put_many``: encoding the points on the loop's thread, and the
    Qdrant Edge call on the store's thread while it holds the GIL.
    """
    work = [states((b * BATCH * 7919) % max(1, filled - BATCH), BATCH, 3) for b in range(batches)]
    with PaceMeter() as pace:
        idle = await pace.rate(0.5)
        start, t = pace.count, time.perf_counter()
        for batch in work:
            await store.put_many(batch)
        busy = (pace.count - start) / (time.perf_counter() - t)
    return round(100 * busy / idle, 1) if idle else None


async def _timed(op: Any) -> float:
    t = time.perf_counter()
    await op
    return (time.perf_counter() - t) * 1000


async def run(points: int, step: int, batches: int, workdir: Path) -> list[dict[str, Any]]:
    store = QdrantEdgeStore(workdir / "store", vector_dim=StoreSettings().vector_dim)
    await store.open()
    rows: list[dict[str, Any]] = []
    try:
        base_kib = rss_anon_kib()
        filled = inserted = 0  # keys mem-0.. (the fill) and mem-10000000.. (inserts)
        while filled + inserted < points:
            target = min(points - inserted, filled + step)
            t = time.perf_counter()
            while filled < target:
                n = min(BATCH, target - filled)
                await store.put_many(states(filled, n))
                filled += n
            fill_s = time.perf_counter() - t
            stored = filled + inserted
            anon = rss_anon_kib()
            insert, update, lookup = [], [], []
            # Timings first, with no other thread: the spinning counter below
            # would take the GIL from the loop and the store's thread alike.
            for b in range(batches):
                first = (b * BATCH * 7919) % max(1, filled - BATCH)
                update.append(await _timed(store.put_many(states(first, BATCH, 2))))
            # The gateway flushes every ~10 s; this one follows all the updates.
            flush_ms = await _timed(store.maintain())
            for b in range(batches):
                first = (b * BATCH * 104729) % max(1, filled - BATCH)
                keys = [f"acme/mem-{n}" for n in range(first, first + BATCH)]
                lookup.append(await _timed(store.get_many(keys)))
            user_search, tenant_search = [], []
            for b in range(max(1, batches // 4)):
                by_user = SearchQuery(
                    tenant_id="acme", text="coffee decaf", user_ids=(f"user-{b % 500}",)
                )
                user_search.append(await _timed(store.search(by_user)))
                by_tenant = SearchQuery(tenant_id="acme", text="decaf")
                tenant_search.append(await _timed(store.search(by_tenant)))
            for _ in range(batches):
                fresh = states(10_000_000 + inserted, BATCH)
                insert.append(await _timed(store.put_many(fresh)))
                inserted += BATCH
            pace = await gil_pace(store, filled, batches)
            ins, upd, look = summarize(insert), summarize(update), summarize(lookup)
            in_user, in_tenant = summarize(user_search), summarize(tenant_search)
            row = {
                "memories": stored,
                "fill_per_s": round(step / fill_s) if fill_s else None,
                "insert_p50_ms": round(ins["median"], 2),
                "insert_p99_ms": round(ins["p99"], 2),
                "update_p50_ms": round(upd["median"], 2),
                "update_p99_ms": round(upd["p99"], 2),
                "lookup_p50_ms": round(look["median"], 3),
                "lookup_p99_ms": round(look["p99"], 3),
                "flush_ms": round(flush_ms, 1),
                "search_user_p50_ms": round(in_user["median"], 2),
                "search_tenant_p50_ms": round(in_tenant["median"], 2),
                "anon_kib_per_memory": round((anon - base_kib) / stored, 3),
                "gil_pace_pct": pace,
            }
            rows.append(row)
            print(
                f"[{time.strftime('%H:%M:%S')}] {stored:,} memories: "
                f"insert p50 {row['insert_p50_ms']} ms, update p50 {row['update_p50_ms']} ms, "
                f"lookup p50 {row['lookup_p50_ms']} ms, "
                f"search p50 {row['search_user_p50_ms']} ms (user), "
                f"{row['search_tenant_p50_ms']} ms (tenant), "
                f"{row['anon_kib_per_memory']} KiB/memory, GIL pace {row['gil_pace_pct']} %",
                flush=True,
            )
    finally:
        await store.close()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests.store_bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="20,000 memories, steps of 5,000")
    parser.add_argument("--points", type=int, default=300_000, help="memories to store")
    parser.add_argument("--step", type=int, default=50_000, help="measure every N memories")
    parser.add_argument("--batches", type=int, default=200, help="batches of 50 per measure")
    args = parser.parse_args(argv)
    points, step, batches = args.points, args.step, args.batches
    if args.quick:
        points, step, batches = 20_000, 5_000, 100
    with tempfile.TemporaryDirectory(prefix="memsync-store-") as tmp:
        rows = asyncio.run(run(points, step, batches, Path(tmp)))
    columns = [
        "memories", "fill_per_s", "insert_p50_ms", "insert_p99_ms", "update_p50_ms",
        "update_p99_ms", "flush_ms", "lookup_p50_ms", "lookup_p99_ms", "search_user_p50_ms",
        "search_tenant_p50_ms", "anon_kib_per_memory", "gil_pace_pct",
    ]  # fmt: skip
    meta = {"batch": BATCH, "batches_per_measure": batches, "store": "qdrant-edge (adapter)"}
    emit("store_bench", rows, columns, meta)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
