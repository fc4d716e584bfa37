"""Soak run: a long stream of writes through one region, sampled over time.

    python -m loadtests.soak --events 1000000 --rate 800 [--segment-ms 10000]

Starts its own Tansu broker and gateway (as :mod:`loadtests.gateway_bench`),
then pushes ``--events`` writes at a fixed open-loop ``--rate``: a mix of
creates (new memories, spread over 1,000 users) and blind content updates of
memories created earlier (``--create-fraction``), with at most
``--concurrency`` requests in flight. Latency runs from each request's
*scheduled* time, so falling behind shows up as latency, never as a lower
offered rate. Every ``--interval`` seconds (default 10) it samples:

- write latency p50/p99 of the window, achieved rate, errors;
- where a write's time went: the journal's group commit p50/p99 and the
  log append p99 (``memsync_write_stage_seconds``), how late the event loop
  ran its timer (``memsync_event_loop_lag_seconds`` p99, histogram buckets)
  and the time spent in garbage collection;
- apply lag p50/p99 of the window (``memsync_apply_lag_seconds``) and the
  backlog (acknowledged writes − ``applied_events`` from ``/readyz``);
- broker and gateway RSS (``/proc/<pid>/status`` ``VmRSS``);
- live segment topics (``memsync.events.<segment>``, via an admin client);
- ``journal_unacknowledged`` from ``/readyz``.

At the end: a per-window table and JSON line, and a verdict: latency and
apply lag are *flat* when the last minute's median is within
``--tolerance`` (default 50 %) or 2 ms of the first minute's; broker RSS is
*bounded* when the second half's max is within 50 % of the second half's
median (it saw-tooths with segment deletion). Short mode (``--events 20000``)
finishes in well under a minute.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import statistics
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from loadtests.gateway_bench import (
    Client,
    Histogram,
    LocalRegion,
    Sample,
    count_segments,
    log,
    open_loop,
    rss_kib,
    run_main,
    scrape,
    wait_applied,
)
from loadtests.report import add_settings_option, emit, percentile

__all__ = [
    "LocalRegion",
    "SoakConfig",
    "SoakResult",
    "Window",
    "run_soak",
    "soak_region",
    "verdict",
    "verify_applied",
]

FLAT_ABS_MS = 2.0
RSS_TOLERANCE = 0.5


@dataclass(frozen=True)
class SoakConfig:
    """What to push and how often to look."""

    events: int = 1_000_000
    rate: float = 800.0
    concurrency: int = 256
    create_fraction: float = 0.3
    interval: float = 10.0
    settle_s: float = 1.0  # a memory is updated only this long after its create was acked
    catch_up_s: float = 120.0  # how long to wait for the applier after the last write
    seed: int = 1
    keep_sessions: bool = False  # keep every acknowledged write's session (for verify_applied)


@dataclass
class Window:
    """One sampling window."""

    t: float
    writes: int
    per_s: float
    errors: int
    p50_ms: float
    p99_ms: float
    lag_p50_ms: float
    lag_p99_ms: float
    journal_p50_ms: float
    journal_p99_ms: float
    append_p99_ms: float
    loop_lag_p99_ms: float
    gc_ms: float
    backlog: int
    applied: int
    log_lag_records: int
    duplicates: int
    broker_rss_mib: float
    gateway_rss_mib: float
    segments: int
    journal_unacknowledged: int
    outbox_pending: int

    def row(self) -> dict[str, Any]:
        """A table row."""
        return dict(self.__dict__)


@dataclass
class SoakResult:
    """Everything a soak run observed."""

    windows: list[Window] = field(default_factory=list)
    acknowledged: int = 0
    errors: dict[int, int] = field(default_factory=dict)
    seconds: float = 0.0
    applied_base: int = 0
    caught_up: bool = False
    catch_up_s: float = 0.0
    final: dict[str, Any] = field(default_factory=dict)
    segments_deleted: float = 0.0
    max_segments: int = 0
    sessions: list[tuple[str, str]] = field(default_factory=list)


class _Workload:
    """Creates and blind updates over a growing set of memories."""

    def __init__(self, client: Client, cfg: SoakConfig) -> None:
        self.client = client
        self.cfg = cfg
        self.rng = random.Random(cfg.seed)
        self.ready: list[str] = []
        self.settling: deque[tuple[float, str]] = deque()
        self.creates = 0
        self.updates = 0

    async def op(self, i: int) -> int:
        now = time.monotonic()
        while self.settling and self.settling[0][0] <= now:
            self.ready.append(self.settling.popleft()[1])
        if not self.ready or self.rng.random() < self.cfg.create_fraction:
            self.creates += 1
            status = await self.client.create(i)
            if status in (200, 201, 202):
                self.settling.append(
                    (time.monotonic() + self.cfg.settle_s, self.client.memory_id(i))
                )
            return status
        self.updates += 1
        return await self.client.update(self.rng.choice(self.ready), i)


async def run_soak(region: LocalRegion, cfg: SoakConfig, *, progress: bool = True) -> SoakResult:
    """Push ``cfg.events`` writes through ``region`` and sample it every ``cfg.interval`` s."""
    result = SoakResult()
    window: list[float] = []
    window_errors = 0
    acked = 0

    def record(_i: int, due: float, end: float, status: int) -> None:
        nonlocal window_errors, acked
        if status in (200, 201, 202):
            acked += 1
            window.append((end - due) * 1000)
        else:
            window_errors += 1
            result.errors[status] = result.errors.get(status, 0) + 1

    if True:
        async with Client(
            region.url, region.token(), f"s{random.getrandbits(20):05x}", limit=cfg.concurrency
        ) as client:
            client.created = _Discard()  # type: ignore[assignment] - nothing reads it here
            if cfg.keep_sessions:
                client.sessions = result.sessions
            workload = _Workload(client, cfg)
            async with aiohttp.ClientSession() as probe:
                first = await scrape(probe, region.url)
                result.applied_base = int(first.ready["applied_events"])
                deleted_base = first.value("memsync_segments_deleted_total")
                started = time.monotonic()
                last = first
                stop = asyncio.Event()

                async def sampler() -> None:
                    nonlocal window, window_errors, last
                    while True:
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(stop.wait(), cfg.interval)
                        lat, errs = window, window_errors
                        window, window_errors = [], 0
                        w, sample = await _sample(
                            probe, region, last, lat, errs, acked, result.applied_base
                        )
                        w.t = round(time.monotonic() - started, 1)
                        result.windows.append(w)
                        result.max_segments = max(result.max_segments, w.segments)
                        last = sample
                        if progress:
                            log(
                                f"t={w.t:>6.1f}s writes={w.writes} ({w.per_s:.0f}/s) "
                                f"p50={w.p50_ms:.1f}ms p99={w.p99_ms:.1f}ms "
                                f"lag p99={w.lag_p99_ms:.0f}ms journal p50/p99="
                                f"{w.journal_p50_ms:.1f}/{w.journal_p99_ms:.0f}ms "
                                f"loop lag p99={w.loop_lag_p99_ms:.0f}ms backlog={w.backlog} "
                                f"broker={w.broker_rss_mib:.0f}MiB gw={w.gateway_rss_mib:.0f}MiB "
                                f"segments={w.segments} journal={w.journal_unacknowledged}"
                            )
                        if stop.is_set():
                            return

                sampling = asyncio.create_task(sampler())
                took = 0.0
                try:
                    took = await open_loop(
                        cfg.rate, cfg.events, workload.op, record, workers=cfg.concurrency
                    )
                finally:
                    result.seconds = time.monotonic() - started
                    result.acknowledged = acked
                    if progress:
                        log(
                            f"writes done in {took:.1f} s: "
                            f"{acked} acknowledged ({workload.creates} creates, "
                            f"{workload.updates} updates); waiting for the applier"
                        )
                    target = result.applied_base + acked
                    ok, catch_up, _ = await wait_applied(probe, region.url, target, cfg.catch_up_s)
                    result.caught_up, result.catch_up_s = ok, catch_up
                    stop.set()
                    await sampling
                final = await scrape(probe, region.url)
                result.final = final.ready
                result.segments_deleted = (
                    final.value("memsync_segments_deleted_total") - deleted_base
                )
    return result


async def verify_applied(
    region: LocalRegion, sessions: Sequence[tuple[str, str]], *, rate: float = 2000.0
) -> dict[int, int]:
    """Check that every write's session is covered by what the region applied.

    ``GET /v1/memories/{id}`` with the write's ``X-Memsync-Session`` and
    ``wait_ms=0`` answers 200 only if the gateway has applied that write (503
    if not). Returns the count of each status; all 200 means every
    acknowledged write was applied.
    """
    statuses: dict[int, int] = {}
    async with Client(region.url, region.token(), "verify", limit=64) as client:

        async def check(i: int) -> int:
            mid, session = sessions[i]
            return await client.get(mid, session)

        def record(_i: int, _due: float, _end: float, status: int) -> None:
            statuses[status] = statuses.get(status, 0) + 1

        await open_loop(rate, len(sessions), check, record, workers=64)
    return statuses


class _Discard(list):  # type: ignore[type-arg]
    """A list that keeps nothing (the soak never reads created ids back from the client)."""

    def append(self, _item: object) -> None:
        return None


async def _sample(
    probe: aiohttp.ClientSession,
    region: LocalRegion,
    last: Sample,
    lat: list[float],
    errors: int,
    acked: int,
    applied_base: int,
) -> tuple[Window, Sample]:
    s = await scrape(probe, region.url)
    lag: Histogram = s.histogram("memsync_apply_lag_seconds") - last.histogram(
        "memsync_apply_lag_seconds"
    )
    dt = max(1e-9, s.at - last.at)

    def stage(name: str) -> Histogram:
        return s.histogram("memsync_write_stage_seconds", stage=name) - last.histogram(
            "memsync_write_stage_seconds", stage=name
        )

    journal, append = stage("journal"), stage("append")
    loop = s.histogram("memsync_event_loop_lag_seconds") - last.histogram(
        "memsync_event_loop_lag_seconds"
    )
    gc_s = s.value("memsync_gc_pause_seconds_sum") - last.value("memsync_gc_pause_seconds_sum")
    applied = int(s.ready["applied_events"])
    try:
        segments = await count_segments(region.bootstrap)
    except Exception:  # noqa: BLE001 - a missed count is shown as -1
        segments = -1
    w = Window(
        t=0.0,
        writes=len(lat),
        per_s=round(len(lat) / dt, 1),
        errors=errors,
        p50_ms=round(percentile(lat, 50), 2),
        p99_ms=round(percentile(lat, 99), 2),
        lag_p50_ms=round(lag.quantile(0.5) * 1000, 2),
        lag_p99_ms=round(lag.quantile(0.99) * 1000, 2),
        journal_p50_ms=round(journal.quantile(0.5) * 1000, 2),
        journal_p99_ms=round(journal.quantile(0.99) * 1000, 2),
        append_p99_ms=round(append.quantile(0.99) * 1000, 2),
        loop_lag_p99_ms=round(loop.quantile(0.99) * 1000, 2),
        gc_ms=round(gc_s * 1000, 1),
        backlog=applied_base + acked - applied,
        applied=applied - applied_base,
        log_lag_records=int(s.value("memsync_log_lag_records")),
        duplicates=int(s.value("memsync_events_duplicate_total")),
        broker_rss_mib=round((rss_kib(region.broker.pid) or 0) / 1024, 1),
        gateway_rss_mib=round((rss_kib(region.gateway_pid) or 0) / 1024, 1),
        segments=segments,
        journal_unacknowledged=int(s.ready["journal_unacknowledged"]),
        outbox_pending=int(s.ready["outbox_pending"]),
    )
    return w, s


def verdict(
    windows: Sequence[Window], *, tolerance: float = 0.5, minute: float = 60.0
) -> dict[str, Any]:
    """First vs last minute medians (flat?) and broker RSS of the second half (bounded?)."""
    loaded = [w for w in windows if w.writes > 0]
    if not loaded:
        return {"flat": None, "rss_bounded": None, "note": "no loaded windows"}
    t0, t1 = loaded[0].t, loaded[-1].t
    span = min(minute, max(0.0, (t1 - t0) / 2))
    head = [w for w in loaded if w.t <= t0 + span] or loaded[:1]
    tail = [w for w in loaded if w.t >= t1 - span] or loaded[-1:]
    out: dict[str, Any] = {
        "first_windows": len(head),
        "last_windows": len(tail),
        "tolerance": f"last ≤ first × {1 + tolerance:g} or first + {FLAT_ABS_MS:g} ms",
    }
    flat = True
    for name in ("p50_ms", "p99_ms", "lag_p50_ms", "lag_p99_ms"):
        a = statistics.median(getattr(w, name) for w in head)
        b = statistics.median(getattr(w, name) for w in tail)
        ok = b <= a * (1 + tolerance) or b <= a + FLAT_ABS_MS
        out[name] = {"first": round(a, 2), "last": round(b, 2), "flat": ok}
        flat = flat and ok
    out["flat"] = flat
    second = [w.broker_rss_mib for w in windows[len(windows) // 2 :]] or [0.0]
    med, top = statistics.median(second), max(second)
    out["broker_rss_mib"] = {
        "second_half_median": med,
        "second_half_max": top,
        "overall_max": max(w.broker_rss_mib for w in windows),
        "tolerance": f"max ≤ median × {1 + RSS_TOLERANCE:g}",
    }
    out["rss_bounded"] = top <= med * (1 + RSS_TOLERANCE)
    first = [w.broker_rss_mib for w in windows[: len(windows) // 2]] or [0.0]
    out["broker_rss_mib"]["first_half_max"] = max(first)
    gw = [w.gateway_rss_mib for w in windows]
    out["gateway_rss_mib"] = {"first": gw[0], "max": max(gw), "last": gw[-1]}
    out["max_segments"] = max(w.segments for w in windows)
    out["max_journal_unacknowledged"] = max(w.journal_unacknowledged for w in windows)
    return out


def soak_region(
    workdir: Path,
    segment_ms: int | None,
    grace_ms: int | None = None,
    settings: Sequence[str] = (),
) -> LocalRegion:
    """A :class:`LocalRegion` with the soak's settings (``NAME=VALUE`` ones last)."""
    env: dict[str, str] = dict(item.split("=", 1) for item in settings)
    if segment_ms is not None:
        env["MEMSYNC_KAFKA_SEGMENT_MS"] = str(segment_ms)
    if grace_ms is not None:
        env["MEMSYNC_KAFKA_GRACE_MS"] = str(grace_ms)
    return LocalRegion(workdir, env, region="soak")


async def _main(args: argparse.Namespace, workdir: Path) -> int:
    cfg = SoakConfig(
        events=args.events,
        rate=args.rate,
        concurrency=args.concurrency,
        create_fraction=args.create_fraction,
        interval=args.interval,
    )
    async with soak_region(workdir, args.segment_ms, args.grace_ms, args.set) as region:
        log(
            f"broker {region.bootstrap} (pid {region.broker.pid}), gateway {region.url} "
            f"(pid {region.gateway_pid}); {cfg.events} events at {cfg.rate:g}/s"
        )
        result = await run_soak(region, cfg)
    v = verdict(result.windows, tolerance=args.tolerance)
    columns = list(Window.__dataclass_fields__)
    meta = {
        "events": cfg.events,
        "rate": cfg.rate,
        "concurrency": cfg.concurrency,
        "create_fraction": cfg.create_fraction,
        "interval_s": cfg.interval,
        "segment_ms": args.segment_ms,
        "settings": list(args.set),
        "seconds": round(result.seconds, 1),
        "acknowledged": result.acknowledged,
        "errors": result.errors,
        "applier_caught_up": result.caught_up,
        "catch_up_s": round(result.catch_up_s, 2),
        "segments_deleted": result.segments_deleted,
        "final": result.final,
        "verdict": v,
    }
    emit("soak", [w.row() for w in result.windows], columns, meta)
    print(
        f"\nverdict: latency/lag {'FLAT' if v['flat'] else 'NOT FLAT'}; broker RSS "
        f"{'BOUNDED' if v['rss_bounded'] else 'NOT BOUNDED'}; applier "
        f"{'caught up' if result.caught_up else 'DID NOT catch up'}; "
        f"errors {sum(result.errors.values())}"
    )
    return 0 if v["flat"] and v["rss_bounded"] and result.caught_up else 1


def main(argv: Sequence[str] | None = None) -> int:
    import shutil
    import tempfile

    parser = argparse.ArgumentParser(
        prog="python -m loadtests.soak",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--rate", type=float, default=800.0, help="writes per second offered")
    parser.add_argument("--segment-ms", type=int, default=None, help="MEMSYNC_KAFKA_SEGMENT_MS")
    parser.add_argument("--grace-ms", type=int, default=None, help="MEMSYNC_KAFKA_GRACE_MS")
    parser.add_argument("--concurrency", type=int, default=256, help="max requests in flight")
    parser.add_argument("--create-fraction", type=float, default=0.3)
    parser.add_argument("--interval", type=float, default=10.0, help="seconds per window")
    parser.add_argument("--tolerance", type=float, default=0.5, help="flatness tolerance")
    parser.add_argument("--keep-dir", action="store_true", help="keep the temp dir (logs)")
    add_settings_option(parser)
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="memsync-soak-"))
    log(f"working in {workdir}")
    try:
        return run_main(lambda: _main(args, workdir))
    finally:
        if args.keep_dir:
            log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
