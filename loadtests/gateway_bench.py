"""End-to-end benchmark of one gateway against its own Tansu broker.

    python -m loadtests.gateway_bench [--quick] [--keep-dir]

Starts a Tansu broker and a gateway subprocess (``python -m gateway.cli
gateway``) on free 127.0.0.1 ports in a temporary directory, measures, and
stops everything at the end (also on an error, Ctrl-C or SIGTERM). In one run:

a. **floor** — raw aiokafka produce→ack latency (``send_and_wait``,
   ``acks="all"``) on the same broker into a scratch topic: sequential, then
   open-loop at 1,000/s; and the **reference** the write targets were set
   against: a bare aiohttp handler doing one ``send_and_wait`` and nothing
   else (:mod:`loadtests.bare_handler`, its own process), at 1,000/s and at
   the highest concurrency of (c) — what this machine does per request with
   the least possible work (where the targets were set it did ~12,000
   requests/s at p99 1.5 ms);
b. **gateway writes** (``POST /v1/memories``) open-loop at 1,000/s: requests
   follow a fixed timetable and latency runs from the *scheduled* time to the
   response, so a stall is charged to every request it delays (no coordinated
   omission);
c. **maximum sustained acknowledged write throughput**: closed loop at 16, 32
   and 64 requests in flight, and whether the applier keeps up (acknowledged
   writes vs ``applied_events`` from ``/readyz``, apply lag from ``/metrics``);
d. **reads**: cached (the same memories again and again) and uncached (the
   gateway restarted with ``MEMSYNC_CACHE_BYTES=1``, so every read misses the
   cache and goes to the store; ids never read before);
e. **ratios** gateway write p50/p99 ÷ floor p50/p99;
f. a sweep of ``MEMSYNC_KAFKA_FETCH_MAX_WAIT_MS`` (1, 5, 10) with the
   write→applied latency from the ``memsync_apply_lag_seconds`` histogram.

Everything shares one 2-core machine (load generator, gateway, broker), so
throughput figures are a lower bound of what the gateway alone can do. The
load generator sends through a lean HTTP/1.1 client (``loadtests.http1``,
~22 µs of CPU per request against aiohttp's client's ~90 µs, measured on
uvloop); ``client_cpu_us`` is its own CPU per request in each phase.
``--quick`` shrinks every phase (< 60 s in all); the default takes ~3 minutes.
Progress goes to stderr; the figures to stdout (tables + JSON lines).

The harness here (:class:`LocalRegion`, the open-loop driver, metric parsing)
is reused by :mod:`loadtests.soak` and the short soak test.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import resource
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from deploy.tansu import TansuBroker, free_port_run
from gateway.auth import mint
from loadtests.http1 import Http1Client, Reply
from loadtests.report import add_settings_option, emit, settings_env, summarize
from replication.segments import parse_topic

__all__ = [
    "Histogram",
    "LocalRegion",
    "Sample",
    "closed_loop",
    "count_segments",
    "histogram",
    "log",
    "open_loop",
    "rss_kib",
    "scrape",
]

LOG = "memsync.events"
TENANT = "bench"
CONTENT = (
    "Alice takes her coffee black, no sugar; decaf after 3pm, please. "
    "She prefers window seats and vegetarian meals on long-haul flights."
)
# Benchmarks must not be throttled by the per-agent/tenant token buckets.
UNLIMITED = {
    "MEMSYNC_AGENT_RATE": "1000000",
    "MEMSYNC_AGENT_BURST": "1000000",
    "MEMSYNC_TENANT_RATE": "1000000",
    "MEMSYNC_TENANT_BURST": "1000000",
}


def log(message: str) -> None:
    """A progress line on stderr."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- processes ------------------------------------------------------------------------


def rss_kib(pid: int | None, *, children: bool = True) -> int | None:
    """Resident set size in KiB (``VmRSS``) of a process and, by default, its children.

    A gateway with ``MEMSYNC_STORE_BACKEND=edge-process`` keeps its store in a
    child process: its memory is the gateway's too. ``None`` if unknown.
    """
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/status") as f:
            own = next((int(ln.split()[1]) for ln in f if ln.startswith("VmRSS:")), None)
    except OSError:
        return None
    if own is None or not children:
        return own
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            kids = [int(k) for k in f.read().split()]
    except OSError:
        kids = []
    return own + sum(rss_kib(k, children=False) or 0 for k in kids)


class LocalRegion:
    """A Tansu broker and one gateway subprocess on free loopback ports in ``workdir``.

    ``env`` holds extra ``MEMSYNC_*`` settings for the gateway;
    :meth:`restart_gateway` replaces the gateway process (same data dir, same
    broker) with other settings. Use as an async context manager: everything
    is stopped on exit, whatever happened.
    """

    def __init__(
        self, workdir: Path, env: Mapping[str, str] | None = None, *, region: str = "bench"
    ) -> None:
        self.workdir = workdir
        self.region = region
        self.env = {**UNLIMITED, **(env or {})}
        self.secret = secrets.token_hex(32)
        self.broker = TansuBroker(log_path=workdir / "broker.log")
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.gateway_starts = 0

    @property
    def url(self) -> str:
        """The gateway's base URL."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def bootstrap(self) -> str:
        """The broker's bootstrap address."""
        return self.broker.bootstrap

    @property
    def data_dir(self) -> Path:
        """The gateway's data directory (journal and store)."""
        return self.workdir / "gateway"

    @property
    def gateway_pid(self) -> int | None:
        """The gateway process id while it runs."""
        return self.proc.pid if self.proc is not None else None

    def token(self, agent: str = "bench-agent", ttl: float = 24 * 3600) -> str:
        """A read+write token for every user of the benchmark tenant."""
        return mint(
            self.secret.encode(),
            agent=agent,
            tenant=TENANT,
            users=["*"],
            scope=["read", "write"],
            ttl=ttl,
        )

    async def start(self) -> None:
        """Start the broker, then the gateway; wait until the gateway is ready."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        await self.broker.start()
        await self.start_gateway()

    async def start_gateway(self, overrides: Mapping[str, str] | None = None) -> float:
        """Start a gateway process; the seconds until ``/readyz`` answered 200."""
        if self.proc is not None:
            raise RuntimeError("a gateway is already running")
        self.port = free_port_run(1)  # below the ephemeral range: no client takes it meanwhile
        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("MEMSYNC_")}
        env.update(self.env)
        env.update(overrides or {})
        env.update(
            {
                "MEMSYNC_REGION": self.region,
                "MEMSYNC_DATA_DIR": str(self.data_dir),
                "MEMSYNC_HTTP_HOST": "127.0.0.1",
                "MEMSYNC_HTTP_PORT": str(self.port),
                "MEMSYNC_KAFKA_BOOTSTRAP": self.bootstrap,
                "MEMSYNC_SECRET": self.secret,
            }
        )
        self.gateway_starts += 1
        started = time.monotonic()
        with (self.workdir / "gateway.log").open("ab") as out:
            self.proc = subprocess.Popen(  # noqa: ASYNC220 - fork/exec only
                [sys.executable, "-m", "gateway.cli", "gateway"],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        try:
            await self._wait_ready(60.0)
        except BaseException:
            await self.stop_gateway()
            raise
        return time.monotonic() - started

    async def _wait_ready(self, within: float) -> None:
        deadline = time.monotonic() + within
        async with aiohttp.ClientSession() as http:
            while True:
                if self.proc is None or self.proc.poll() is not None:
                    rc = None if self.proc is None else self.proc.returncode
                    raise RuntimeError(
                        f"gateway exited during start (rc={rc}); see {self.workdir}/gateway.log"
                    )
                with contextlib.suppress(aiohttp.ClientError, OSError):
                    async with http.get(f"{self.url}/readyz") as resp:
                        if resp.status == 200:
                            return
                if time.monotonic() > deadline:
                    raise TimeoutError(f"gateway not ready within {within:.0f} s")
                await asyncio.sleep(0.05)

    async def stop_gateway(self, grace: float = 15.0) -> int | None:
        """SIGTERM the gateway, wait up to ``grace`` s, then SIGKILL; the exit code."""
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + grace
            while proc.poll() is None and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.02)
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                while proc.poll() is None:  # noqa: ASYNC110
                    await asyncio.sleep(0.02)
        return proc.returncode

    async def restart_gateway(self, overrides: Mapping[str, str] | None = None) -> float:
        """Replace the gateway by one with these extra settings; seconds to ready."""
        await self.stop_gateway()
        return await self.start_gateway(overrides)

    async def stop(self) -> None:
        """Stop the gateway (it flushes), then the broker."""
        try:
            await asyncio.shield(self.stop_gateway())
        finally:
            await asyncio.shield(self.broker.stop(grace=2.0))

    async def __aenter__(self) -> LocalRegion:
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


# -- observing a gateway --------------------------------------------------------------


@dataclass(frozen=True)
class Histogram:
    """Cumulative bucket counts of one Prometheus histogram (upper bound → count)."""

    buckets: tuple[tuple[float, float], ...] = ()
    count: float = 0.0
    total: float = 0.0

    def __sub__(self, other: Histogram) -> Histogram:
        before = dict(other.buckets)
        return Histogram(
            tuple((le, c - before.get(le, 0.0)) for le, c in self.buckets),
            self.count - other.count,
            self.total - other.total,
        )

    def quantile(self, q: float) -> float:
        """The q-quantile (0–1) in seconds, interpolated inside its bucket (as PromQL)."""
        if self.count <= 0:
            return 0.0
        rank = q * self.count
        lower, below = 0.0, 0.0
        finite = [le for le, _ in self.buckets if le != float("inf")]
        for le, cum in self.buckets:
            if cum >= rank:
                if le == float("inf"):
                    return max(finite) if finite else 0.0
                inside = cum - below
                return lower + (le - lower) * ((rank - below) / inside if inside else 1.0)
            lower, below = le, cum
        return max(finite) if finite else 0.0

    @property
    def mean(self) -> float:
        """The mean in seconds."""
        return self.total / self.count if self.count else 0.0


@dataclass
class Sample:
    """What one scrape of ``/metrics`` and ``/readyz`` said."""

    at: float
    ready: dict[str, Any]
    metrics: dict[str, list[tuple[dict[str, str], float]]] = field(default_factory=dict)

    def value(self, name: str, **labels: str) -> float:
        """The sum of the samples of ``name`` whose labels include ``labels``."""
        return sum(
            v
            for lab, v in self.metrics.get(name, [])
            if all(lab.get(k) == want for k, want in labels.items())
        )

    def histogram(self, name: str, **labels: str) -> Histogram:
        """One histogram (its buckets summed over other labels)."""
        return histogram(self.metrics, name, **labels)


def histogram(
    metrics: Mapping[str, list[tuple[dict[str, str], float]]], name: str, **labels: str
) -> Histogram:
    """The histogram ``name`` out of parsed metrics."""
    buckets: dict[float, float] = {}
    count = total = 0.0
    for lab, v in metrics.get(f"{name}_bucket", []):
        if all(lab.get(k) == want for k, want in labels.items()):
            le = float(lab["le"])
            buckets[le] = buckets.get(le, 0.0) + v
    for lab, v in metrics.get(f"{name}_count", []):
        if all(lab.get(k) == want for k, want in labels.items()):
            count += v
    for lab, v in metrics.get(f"{name}_sum", []):
        if all(lab.get(k) == want for k, want in labels.items()):
            total += v
    return Histogram(tuple(sorted(buckets.items())), count, total)


def parse_metrics(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Prometheus text → sample name → [(labels, value)]."""
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, []).append((dict(s.labels), float(s.value)))
    return out


async def scrape(http: aiohttp.ClientSession, url: str, *, metrics: bool = True) -> Sample:
    """``/readyz`` (and ``/metrics``) of the gateway at ``url``."""
    async with http.get(f"{url}/readyz") as resp:
        ready = await resp.json()
    parsed: dict[str, list[tuple[dict[str, str], float]]] = {}
    if metrics:
        async with http.get(f"{url}/metrics") as resp:
            parsed = parse_metrics(await resp.text())
    return Sample(time.monotonic(), ready, parsed)


async def count_segments(bootstrap: str, log_name: str = LOG) -> int:
    """Live segment topics of the log (``memsync.events.<segment>``).

    A fresh admin client each time: a long-lived aiokafka client remembers
    topic names and would name deleted segments in later metadata requests,
    which makes Tansu re-create them.
    """
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
    await admin.start()
    try:
        topics = await admin.list_topics()
    finally:
        await admin.close()
    return sum(1 for t in topics if parse_topic(log_name, t) is not None)


async def wait_applied(
    http: aiohttp.ClientSession, url: str, target: int, within: float
) -> tuple[bool, float, int]:
    """Poll ``/readyz`` until ``applied_events`` ≥ ``target``: (reached, seconds, last)."""
    started = time.monotonic()
    applied = 0
    while True:
        applied = int((await scrape(http, url, metrics=False)).ready["applied_events"])
        if applied >= target:
            return True, time.monotonic() - started, applied
        if time.monotonic() - started > within:
            return False, time.monotonic() - started, applied
        await asyncio.sleep(0.05)


# -- load drivers ---------------------------------------------------------------------

# op(i) → HTTP status (or 0 on a transport error)
Op = Callable[[int], Awaitable[int]]
# record(i, scheduled_or_started, finished, status)
Record = Callable[[int, float, float, int], None]


async def open_loop(
    rate: float,
    count: int,
    op: Op,
    record: Record,
    *,
    workers: int = 128,
    stop: asyncio.Event | None = None,
) -> float:
    """Issue ``count`` operations on a fixed timetable of ``rate`` per second.

    Operation *i* is due at ``t0 + i / rate``; ``workers`` coroutines take the
    next due slot, sleep until it, run it, and record latency from the *due*
    time (so a slow answer delays — and is charged to — the ones behind it).
    In-flight requests never exceed ``workers``. Returns the elapsed seconds.
    """
    clock = time.perf_counter
    t0 = clock() + 0.01
    next_slot = 0

    async def worker() -> None:
        nonlocal next_slot
        while next_slot < count and not (stop is not None and stop.is_set()):
            i = next_slot
            next_slot += 1
            due = t0 + i / rate
            delay = due - clock()
            if delay > 0:
                await asyncio.sleep(delay)
            status = await op(i)
            record(i, due, clock(), status)

    await asyncio.gather(*(worker() for _ in range(workers)))
    return clock() - t0


async def closed_loop(concurrency: int, duration: float, op: Op, record: Record) -> float:
    """``concurrency`` coroutines issuing operations back to back for ``duration`` s."""
    clock = time.perf_counter
    end = clock() + duration
    counter = 0

    async def worker() -> None:
        nonlocal counter
        while clock() < end:
            i = counter
            counter += 1
            started = clock()
            status = await op(i)
            record(i, started, clock(), status)

    t0 = clock()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return clock() - t0


def process_cpu() -> float:
    """CPU seconds (user + system) this process has used."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass
class Latencies:
    """Latencies (ms) and outcomes of one phase."""

    ms: list[float] = field(default_factory=list)
    ok: int = 0
    errors: dict[int, int] = field(default_factory=dict)
    # this process's CPU seconds when the phase started: the load generator's own cost
    cpu_at_start: float = field(default_factory=lambda: process_cpu())

    def record(self, _i: int, start: float, end: float, status: int) -> None:
        """A :data:`Record` callback."""
        if status in (200, 201, 202):
            self.ok += 1
            self.ms.append((end - start) * 1000)
        else:
            self.errors[status] = self.errors.get(status, 0) + 1

    def row(self, phase: str, seconds: float, target: float | None = None) -> dict[str, Any]:
        """One table row."""
        s = summarize(self.ms)
        return {
            "phase": phase,
            "n": self.ok,
            "target_per_s": target,
            "achieved_per_s": round(self.ok / seconds, 1) if seconds > 0 else 0.0,
            "p50_ms": round(s["median"], 3),
            "p90_ms": round(s["p90"], 3),
            "p99_ms": round(s["p99"], 3),
            "max_ms": round(s["max"], 3),
            "errors": sum(self.errors.values()),
            "error_statuses": dict(sorted(self.errors.items())) or None,
            "client_cpu_us": round((process_cpu() - self.cpu_at_start) / self.ok * 1e6)
            if self.ok
            else None,
        }


class Client:
    """Pre-encoded memory API calls on keep-alive connections (status codes only).

    Requests go through :class:`loadtests.http1.Http1Client`, not aiohttp's
    client, so the load generator takes as little of the shared CPU as it can
    (``client_cpu_us`` in the tables). Use as an async context manager.
    """

    def __init__(self, url: str, token: str, prefix: str, *, limit: int = 256) -> None:
        self.url = url
        self.prefix = prefix
        self.http = Http1Client.for_url(url, limit=limit, timeout=30.0)
        self.head = self.http.head(
            {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        )
        self.read_head = self.http.head({"Authorization": f"Bearer {token}"})
        self.created: list[str] = []
        # (memory id, X-Memsync-Session) of every acknowledged write, when not None
        self.sessions: list[tuple[str, str]] | None = None

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.http.close()

    def _keep_session(self, mid: str, reply: Reply) -> None:
        if self.sessions is not None:
            self.sessions.append((mid, reply.headers.get("x-memsync-session", "")))

    def memory_id(self, i: int) -> str:
        """The id of the i-th memory this client creates."""
        return f"{self.prefix}-{i}"

    async def create(self, i: int) -> int:
        """Create memory i (client-chosen id, so no body parsing)."""
        mid = self.memory_id(i)
        body = json.dumps(
            {
                "id": mid,
                "user_id": f"user-{i % 500}",
                "kind": "fact",
                "content": f"{CONTENT} #{i}",
                "topics": ["travel", "food"],
            }
        ).encode()
        try:
            reply = await self.http.request("POST", "/v1/memories", body, self.head)
        except (OSError, TimeoutError):  # HttpError is an OSError
            return 0
        if reply.status in (200, 201, 202):
            self.created.append(mid)
            self._keep_session(mid, reply)
        return reply.status

    async def update(self, mid: str, i: int) -> int:
        """A blind content update of memory ``mid``."""
        body = json.dumps({"content": f"{CONTENT} v{i}"}).encode()
        try:
            reply = await self.http.request("PATCH", f"/v1/memories/{mid}", body, self.head)
        except (OSError, TimeoutError):
            return 0
        if reply.status in (200, 201, 202):
            self._keep_session(mid, reply)
        return reply.status

    async def get(self, mid: str, session: str | None = None) -> int:
        """Read one memory (with ``session``: only once that session's writes are applied)."""
        head = self.read_head
        path = f"/v1/memories/{mid}"
        if session is not None:
            head += f"X-Memsync-Session: {session}\r\n".encode()
            path += "?wait_ms=0"
        try:
            reply = await self.http.request("GET", path, b"", head)
        except (OSError, TimeoutError):
            return 0
        return reply.status


def http_session(limit: int) -> aiohttp.ClientSession:
    """One client session with a bounded connection pool."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=limit, limit_per_host=limit, force_close=False),
        timeout=aiohttp.ClientTimeout(total=30),
    )


# -- the benchmark --------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """Durations of each phase."""

    floor_sequential: int
    floor_seconds: float
    write_seconds: float
    read_seconds: float
    sweep_seconds: float
    fetch_seconds: float
    concurrency: tuple[int, ...] = (16, 32, 64)
    fetch_waits: tuple[int, ...] = (1, 5, 10)
    rate: float = 1000.0


QUICK = Plan(
    floor_sequential=500,
    floor_seconds=2,
    write_seconds=4,
    read_seconds=2,
    sweep_seconds=2,
    fetch_seconds=2,
)
DEFAULT = Plan(
    floor_sequential=3000,
    floor_seconds=10,
    write_seconds=20,
    read_seconds=10,
    sweep_seconds=8,
    fetch_seconds=10,
)


async def scratch_topic(bootstrap: str, prefix: str, *, name: str | None = None) -> str:
    """A new 8-partition topic ``prefix.<random>`` (or ``name``) on the broker; its name."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    topic = name or f"{prefix}.{secrets.token_hex(3)}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 8, 1)])
    finally:
        await admin.close()
    return topic


async def measure_floor(bootstrap: str, plan: Plan) -> tuple[Latencies, Latencies, float]:
    """Raw produce→ack on the broker: sequential, and open-loop at ``plan.rate``."""
    from aiokafka import AIOKafkaProducer

    topic = await scratch_topic(bootstrap, "bench.floor")
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", enable_idempotence=False, linger_ms=0
    )
    await producer.start()
    value = CONTENT.encode() * 5  # ~600 bytes, like an encoded event
    try:
        for i in range(50):  # warm the connection and metadata
            await producer.send_and_wait(topic, value, key=f"k{i}".encode())
        seq = Latencies()
        clock = time.perf_counter
        started = clock()
        for i in range(plan.floor_sequential):
            t = clock()
            await producer.send_and_wait(topic, value, key=f"k{i}".encode())
            seq.record(i, t, clock(), 200)
        seq_seconds = clock() - started

        async def send(i: int) -> int:
            try:
                await producer.send_and_wait(topic, value, key=f"k{i}".encode())
            except Exception:  # noqa: BLE001 - counted as an error
                return 0
            return 200

        rated = Latencies()
        await open_loop(plan.rate, int(plan.rate * plan.floor_seconds), send, rated.record)
        return seq, rated, seq_seconds
    finally:
        await producer.stop()


_REPO = str(Path(__file__).resolve().parents[1])  # where ``-m loadtests...`` resolves


class ReferenceServer:
    """A reference server (``python -m MODULE BOOTSTRAP PORT TOPIC [ARGS]``) on the broker.

    Used as ``async with``: makes a scratch topic, starts the module in its
    own process on a free port, waits for its ``ready`` line, and stops it
    on the way out (terminate, then kill after 10 s).
    """

    def __init__(
        self, module: str, bootstrap: str, topic_prefix: str, args: Sequence[str] = ()
    ) -> None:
        self.module = module
        self.bootstrap = bootstrap
        self.topic_prefix = topic_prefix
        self.args = tuple(args)
        self.port = free_port_run(1)
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        """Its base URL."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        """Its process id while it runs."""
        return self.proc.pid if self.proc is not None else None

    async def __aenter__(self) -> ReferenceServer:
        topic = await scratch_topic(self.bootstrap, self.topic_prefix)
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", self.module, self.bootstrap, str(self.port), topic,
            *self.args, stdout=asyncio.subprocess.PIPE, cwd=_REPO,
        )  # fmt: skip
        assert self.proc.stdout is not None  # noqa: S101
        try:
            line = await asyncio.wait_for(self.proc.stdout.readline(), 30)
        except BaseException:
            await self.__aexit__()
            raise
        if line.strip() != b"ready":
            await self.__aexit__()
            raise RuntimeError(f"{self.module} did not start: {line[:200]!r}")
        return self

    async def __aexit__(self, *exc: object) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.returncode is not None:
            return
        proc.terminate()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), 10)
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def measure_reference(
    bootstrap: str, plan: Plan, concurrency: int
) -> tuple[Latencies, float, Latencies, float]:
    """The bare handler (:mod:`loadtests.bare_handler`) on the same broker.

    Open loop at ``plan.rate`` for ``plan.floor_seconds``, then closed loop at
    ``concurrency`` in flight for ``plan.sweep_seconds``: what this machine
    does per request with one ``send_and_wait`` and nothing else.
    """
    async with ReferenceServer("loadtests.bare_handler", bootstrap, "bench.bare") as server:
        http = Http1Client("127.0.0.1", server.port, limit=max(64, concurrency), timeout=30.0)
        try:
            body = json.dumps({"user_id": "u1", "kind": "fact", "content": CONTENT}).encode()
            head = http.head({"Content-Type": "application/json"})

            async def post(_i: int) -> int:
                try:
                    return (await http.request("POST", "/w", body, head)).status
                except (OSError, TimeoutError):
                    return 0

            await open_loop(500, 500, post, Latencies().record, workers=32)  # warm
            rated = Latencies()
            rated_s = await open_loop(
                plan.rate, int(plan.rate * plan.floor_seconds), post, rated.record, workers=128
            )
            closed = Latencies()
            closed_s = await closed_loop(concurrency, plan.sweep_seconds, post, closed.record)
            return rated, rated_s, closed, closed_s
        finally:
            await http.close()


async def run_bench(plan: Plan, workdir: Path, settings: dict[str, str] | None = None) -> int:
    """Every phase, then the tables."""
    rows: list[dict[str, Any]] = []
    meta: dict[str, Any] = {
        "cores": os.cpu_count(),
        "rate_per_s": plan.rate,
        "plan": plan.__dict__,
        "fetch_max_wait_ms": 5,
        "settings": settings or {},
    }
    started = time.monotonic()
    env = {"MEMSYNC_KAFKA_FETCH_MAX_WAIT_MS": "5", **(settings or {})}
    async with LocalRegion(workdir, env) as region:
        log(f"broker {region.bootstrap} (pid {region.broker.pid}), gateway {region.url}")
        token = region.token()
        async with (
            http_session(256) as http,
            Client(region.url, token, f"m{secrets.token_hex(2)}") as client,
        ):
            # warm up: connections, journal, segment topics, caches
            warm = Latencies()
            await open_loop(500, 500, client.create, warm.record, workers=32)

            log(f"(a) floor: {plan.floor_sequential} sequential sends, then 1,000/s")
            seq, rated, seq_s = await measure_floor(region.bootstrap, plan)
            rows.append(seq.row("a floor produce→ack sequential", seq_s))
            rows.append(rated.row("a floor produce→ack @1k/s", plan.floor_seconds, plan.rate))
            top = max(plan.concurrency)
            log(
                f"(a) reference: a bare aiohttp handler, one send_and_wait, at 1,000/s "
                f"and {top} in flight"
            )
            bare, bare_s, bare_closed, bare_closed_s = await measure_reference(
                region.bootstrap, plan, top
            )
            rows.append(bare.row("a reference bare handler POST @1k/s", bare_s, plan.rate))
            rows.append(
                bare_closed.row(f"a reference bare handler, {top} in flight", bare_closed_s)
            )

            log(f"(b) gateway writes open-loop at {plan.rate:.0f}/s for {plan.write_seconds} s")
            before = await scrape(http, region.url)
            writes = Latencies()
            n = int(plan.rate * plan.write_seconds)
            offset = len(client.created) + 1_000_000

            async def create_b(i: int) -> int:
                return await client.create(offset + i)

            took = await open_loop(plan.rate, n, create_b, writes.record, workers=256)
            target = int(before.ready["applied_events"]) + writes.ok
            await wait_applied(http, region.url, target, 60.0)
            after = await scrape(http, region.url)
            rows.append(writes.row("b gateway POST @1k/s", took, plan.rate))
            lag_b = after.histogram("memsync_apply_lag_seconds") - before.histogram(
                "memsync_apply_lag_seconds"
            )
            meta["b_apply_lag_ms"] = _lag(lag_b)

            # (d) cached reads: the same 200 memories over and over
            hot = client.created[:200]
            for mid in hot:  # make sure they are in the cache
                await client.get(mid)
            log(f"(d) cached reads open-loop at {plan.rate:.0f}/s for {plan.read_seconds} s")
            cached = Latencies()
            n = int(plan.rate * plan.read_seconds)

            async def read_hot(i: int) -> int:
                return await client.get(hot[i % len(hot)])

            took = await open_loop(plan.rate, n, read_hot, cached.record, workers=128)
            rows.append(cached.row("d GET cached @1k/s", took, plan.rate))
            ratio = await scrape(http, region.url)
            meta["cache_hit_ratio_after_cached_reads"] = ratio.value("memsync_cache_hit_ratio")

            # (c) closed-loop throughput sweep
            base_applied = int(after.ready["applied_events"])
            acked_before = warm.ok + writes.ok
            applied_start = int(
                (await scrape(http, region.url, metrics=False)).ready["applied_events"]
            )
            acked_sweep = 0
            sweep_before = await scrape(http, region.url)
            for conc in plan.concurrency:
                log(f"(c) closed loop, {conc} in flight, {plan.sweep_seconds} s")
                lat = Latencies()
                s0 = await scrape(http, region.url, metrics=False)
                off = 2_000_000 + conc * 1_000_000

                async def create_c(i: int, off: int = off) -> int:
                    return await client.create(off + i)

                took = await closed_loop(conc, plan.sweep_seconds, create_c, lat.record)
                s1 = await scrape(http, region.url, metrics=False)
                acked_sweep += lat.ok
                row = lat.row(f"c closed loop {conc} in flight", took)
                applied_rate = (s1.ready["applied_events"] - s0.ready["applied_events"]) / took
                row["applied_per_s"] = round(applied_rate, 1)
                row["backlog_end"] = (applied_start + acked_sweep) - int(s1.ready["applied_events"])
                rows.append(row)
            target = applied_start + acked_sweep
            ok, catch_up, applied = await wait_applied(http, region.url, target, 120.0)
            sweep_after = await scrape(http, region.url)
            lag_c = sweep_after.histogram("memsync_apply_lag_seconds") - sweep_before.histogram(
                "memsync_apply_lag_seconds"
            )
            meta["c_applier"] = {
                "acknowledged": acked_sweep,
                "applied": applied - applied_start,
                "caught_up": ok,
                "catch_up_seconds_after_last_ack": round(catch_up, 3),
                "apply_lag_ms": _lag(lag_c),
                "writes_acknowledged_total": acked_before + acked_sweep,
                "applied_events_total": applied,
                "applied_before_b": base_applied,
            }
            best = max(
                (r for r in rows if r["phase"].startswith("c ")),
                key=lambda r: r["achieved_per_s"],
            )
            meta["c_max_sustained_writes_per_s"] = best["achieved_per_s"]

            # (e) ratios
            b = summarize(writes.ms)
            f = summarize(rated.ms)
            fs = summarize(seq.ms)
            meta["e_ratio_vs_floor_at_1k"] = {
                "p50": round(b["median"] / f["median"], 2) if f["median"] else None,
                "p99": round(b["p99"] / f["p99"], 2) if f["p99"] else None,
            }
            meta["e_ratio_vs_floor_sequential"] = {
                "p50": round(b["median"] / fs["median"], 2) if fs["median"] else None,
                "p99": round(b["p99"] / fs["p99"], 2) if fs["p99"] else None,
            }

            # (d) uncached reads: a gateway whose cache holds nothing
            never_read = [m for m in client.created[200:] if m.startswith(client.prefix)]
            random.Random(7).shuffle(never_read)
        log("(d) restarting the gateway with MEMSYNC_CACHE_BYTES=1 (every read misses)")
        took = await region.restart_gateway(
            {"MEMSYNC_CACHE_BYTES": "1", "MEMSYNC_KAFKA_FETCH_MAX_WAIT_MS": "5"}
        )
        meta["uncached_gateway_start_s"] = round(took, 2)
        async with http_session(256) as http, Client(region.url, token, "unused") as client:
            n = min(len(never_read), int(plan.rate * plan.read_seconds))
            uncached = Latencies()

            async def read_cold(i: int) -> int:
                return await client.get(never_read[i])

            log(f"(d) uncached reads open-loop at {plan.rate:.0f}/s of {n} ids never read")
            took = await open_loop(plan.rate, n, read_cold, uncached.record, workers=128)
            rows.append(uncached.row("d GET uncached @1k/s", took, plan.rate))
            s = await scrape(http, region.url)
            meta["cache_hit_ratio_uncached_gateway"] = s.value("memsync_cache_hit_ratio")

        # (f) fetch_max_wait_ms sweep
        sweep_rows: list[dict[str, Any]] = []
        for wait_ms in plan.fetch_waits:
            log(f"(f) fetch_max_wait_ms={wait_ms}: writes at {plan.rate:.0f}/s")
            await region.restart_gateway({"MEMSYNC_KAFKA_FETCH_MAX_WAIT_MS": str(wait_ms)})
            async with (
                http_session(256) as http,
                Client(region.url, token, f"f{wait_ms}-{secrets.token_hex(2)}") as client,
            ):
                s0 = await scrape(http, region.url, metrics=False)
                warm = Latencies()
                await open_loop(500, 250, client.create, warm.record, workers=32)
                await wait_applied(http, region.url, s0.ready["applied_events"] + warm.ok, 30.0)
                before = await scrape(http, region.url)
                lat = Latencies()
                n = int(plan.rate * plan.fetch_seconds)

                async def create_f(i: int, client: Client = client) -> int:
                    return await client.create(10_000 + i)

                took = await open_loop(plan.rate, n, create_f, lat.record, workers=256)
                target = int(before.ready["applied_events"]) + lat.ok
                await wait_applied(http, region.url, target, 30.0)
                after = await scrape(http, region.url)
                h = after.histogram("memsync_apply_lag_seconds") - before.histogram(
                    "memsync_apply_lag_seconds"
                )
                w = summarize(lat.ms)
                lag = _lag(h)
                sweep_rows.append(
                    {
                        "fetch_max_wait_ms": wait_ms,
                        "writes": lat.ok,
                        "write_p50_ms": round(w["median"], 3),
                        "write_p99_ms": round(w["p99"], 3),
                        "apply_lag_p50_ms": lag["p50"],
                        "apply_lag_p90_ms": lag["p90"],
                        "apply_lag_p99_ms": lag["p99"],
                        "apply_lag_mean_ms": lag["mean"],
                    }
                )
    meta["seconds"] = round(time.monotonic() - started, 1)
    columns = [
        "phase",
        "n",
        "target_per_s",
        "achieved_per_s",
        "p50_ms",
        "p90_ms",
        "p99_ms",
        "max_ms",
        "errors",
        "applied_per_s",
        "backlog_end",
        "client_cpu_us",
    ]
    emit("gateway_bench", rows, columns, meta)
    emit(
        "gateway_bench.ratios",
        [
            {"vs": "floor @1k/s", **meta["e_ratio_vs_floor_at_1k"]},
            {"vs": "floor sequential", **meta["e_ratio_vs_floor_sequential"]},
        ],
        ["vs", "p50", "p99"],
        {"what": "gateway POST @1k/s latency ÷ raw produce→ack latency"},
    )
    emit(
        "gateway_bench.fetch_max_wait",
        sweep_rows,
        list(sweep_rows[0]) if sweep_rows else ["fetch_max_wait_ms"],
        {
            "apply_lag": "memsync_apply_lag_seconds: event HLC time → applied; "
            "quantiles interpolated inside histogram buckets",
            "rate_per_s": plan.rate,
            "seconds_each": plan.fetch_seconds,
        },
    )
    return 0


def _lag(h: Histogram) -> dict[str, float]:
    return {
        "count": h.count,
        "p50": round(h.quantile(0.5) * 1000, 2),
        "p90": round(h.quantile(0.9) * 1000, 2),
        "p99": round(h.quantile(0.99) * 1000, 2),
        "mean": round(h.mean * 1000, 2),
    }


def run_main(coro_fn: Callable[[], Awaitable[int]]) -> int:
    """Run on uvloop when available; SIGTERM cancels like Ctrl-C (cleanup runs)."""

    async def main() -> int:
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        if task is not None:
            loop.add_signal_handler(signal.SIGTERM, task.cancel)
        return await coro_fn()

    try:
        import uvloop

        factory: Callable[[], asyncio.AbstractEventLoop] | None = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - uvloop is a dependency
        factory = None
    try:
        with asyncio.Runner(loop_factory=factory) as runner:
            return runner.run(main())
    except (KeyboardInterrupt, asyncio.CancelledError):
        log("interrupted; everything stopped")
        return 130


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests.gateway_bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="short phases (< 60 s in all)")
    parser.add_argument("--keep-dir", action="store_true", help="keep the temp dir (logs)")
    add_settings_option(parser)
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else DEFAULT
    workdir = Path(tempfile.mkdtemp(prefix="memsync-bench-"))
    log(f"working in {workdir}")
    try:
        return run_main(lambda: run_bench(plan, workdir, settings_env(args.set)))
    finally:
        if args.keep_dir:
            log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
