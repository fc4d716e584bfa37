"""Propagation benchmark: an HTTP write until WebSocket subscribers receive it.

    python -m loadtests.propagation_bench [--quick] [--reference-only]
        [--reference-processes N] [--keep-dir]

Starts one region (a Tansu broker and a gateway subprocess, see
:class:`loadtests.gateway_bench.LocalRegion`) in a temporary directory and,
in one run:

a. **floor** — raw aiokafka produce→consume latency on the same broker: a
   scratch topic, producer ``acks="all"``, consumer ``fetch_max_wait_ms=5``,
   1,000 messages/s open loop (each carries its send time);
b. **end-to-end propagation** — ``POST /v1/memories`` open loop at 1,000
   writes/s (fixed timetable) while 100, then 1,000 WebSocket subscribers
   (eager) all hold ``user:u1:memories`` and every write is for user ``u1``:
   every subscriber gets every event; first, one subscriber and single
   writes at 40/s (one agent learns, another hears it). The latency of each (event,
   subscriber) delivery runs from the moment the write request was *sent*
   (its ``time.time()`` travels in the memory's ``content`` with a per-write
   sequence number) to the moment the subscriber's process read it;
   deliveries expected (acknowledged writes × subscribers) vs received;
c. **fan-out of one event** to 1,000 subscribers: a single write, the time
   until each subscriber receives it, repeated 20 times (also the spread
   after the first receiver and the time until the last one has it);
d. **idle subscribers** — 10,000 WebSocket connections, each subscribed to
   its own user channel, held open: gateway RSS before/after → KiB per
   connection (measured first, on a fresh gateway, so memory freed by other
   phases cannot hide the cost; the gateway is then restarted on the same
   data, so the other phases do not inherit the teardown of those
   connections); then the restarted gateway's CPU and its broker's while
   idle (no writes, no subscribers), what every phase has beneath it;
r. **the reference** the targets were set against, measured last, once the
   region is stopped, on a fresh broker of its own (what the gateway had at
   its start; the bundled broker keeps every record in memory):
   :mod:`loadtests.bare_broadcast` where the gateway was, with the same
   writer and subscriber processes and the same phases — propagation at
   1,000 writes/s to 100 subscribers through the log (one ``send_and_wait``
   per write, one consumer broadcasting each fetch), and one event to 1,000
   subscribers, through the log and broadcast straight from the request
   (the bare aiohttp broadcast).
   ``--reference-only`` runs just (a) and (r). ``--reference-processes N``
   adds the pipeline rows for N bare processes on one port (``SO_REUSEPORT``)
   that share nothing but the log, each consuming it for its own
   subscribers, on a fresh broker: a gateway split into shared-nothing
   processes could do no better.

Subscribers run in child processes (``--worker``): a minimal RFC 6455 client
on raw asyncio transports (no extensions offered, so no permessage-deflate,
like ``aiohttp.ws_connect(compress=0)``) that parses frames in bulk,
timestamps each read with ``time.time()`` (one clock on one machine) and
ships aggregated latencies back (10 µs histogram buckets; raw values for the
fan-out phase). Connections open at a bounded rate; the children raise their
``RLIMIT_NOFILE`` soft limit to the hard limit. The gateway allows
``MEMSYNC_MAX_SUBSCRIPTIONS`` (default 20,000) subscriptions.

Everything shares one small machine (broker, gateway, writer, subscribers),
so CPU use of the gateway and of the subscriber processes is reported per
phase: a saturated gateway (≈100 % of one core) is the bottleneck, a
saturated client would make latencies pessimistic.

``--quick`` (< 90 s): 50/200 subscribers, 1,000 idle, shorter phases. The
default takes a few minutes. Progress on stderr; tables + JSON on stdout.
Each latency row also names the gateway's CPU (% of one core), the
subscriber processes' and ``machine_pct``: how busy the whole machine was
(% of all cores, ``/proc/stat``) — near 100 the phase was bound by the
machine that every process shares, not by the gateway alone.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import resource
import secrets
import shutil
import signal
import struct
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import msgspec

from deploy.tansu import TansuBroker
from gateway.auth import mint
from loadtests.gateway_bench import (
    CONTENT,
    TENANT,
    Latencies,
    LocalRegion,
    ReferenceServer,
    Sample,
    http_session,
    log,
    open_loop,
    rss_kib,
    run_main,
    scrape,
)
from loadtests.http1 import Http1Client
from loadtests.report import (
    CpuMeter,
    Pids,
    add_settings_option,
    descendants,
    emit,
    settings_env,
    summarize,
)

__all__ = ["Plan", "SubscriberPool", "main"]

USER = "u1"
CHANNEL = f"user:{USER}:memories"
MARK = b"PBM|"  # content = "PBM|<tag>|<seq>|<sent µs>#..." (one per event message)
STATES = b'],"states":['  # where a batch's events end
TARGET_PROPAGATION_P99_MS = 25.0
TARGET_FANOUT_P99_MS = 20.0
TARGET_IDLE_KIB = 16.0
BUCKET_PER_MS = 100  # histogram resolution: 10 µs
REPO = Path(__file__).resolve().parents[1]
_children: set[int] = set()  # pids of live worker processes (killed on any exit)


@dataclass(frozen=True)
class Plan:
    """Sizes and durations of each phase."""

    floor_seconds: float
    subscribers: tuple[int, ...]  # phase (b), one run each
    write_seconds: float
    write_seconds_big: float  # the largest subscriber count (its fan-out takes longer)
    warm_seconds: float
    fanout_subscribers: int
    fanout_repeats: int
    idle: int
    idle_rate: float  # connections per second
    idle_hold: float
    drain_quiet: float  # stop waiting for deliveries after this long without progress
    drain_max: float
    ref_rate: float = 250.0  # a second, lower rate for the smaller subscriber counts
    ref_seconds: float = 4.0
    single_rate: float = 40.0  # single writes to one subscriber (one agent → another)
    single_seconds: float = 15.0
    connect_rate: float = 1000.0
    rate: float = 1000.0
    idle_cpu_seconds: float = 5.0  # the idle gateway's CPU (no writes, no subscribers)


QUICK = Plan(
    floor_seconds=2,
    subscribers=(50, 200),
    write_seconds=3,
    write_seconds_big=2,
    warm_seconds=0.5,
    fanout_subscribers=200,
    fanout_repeats=10,
    idle=1000,
    idle_rate=1000.0,
    idle_hold=1.5,
    drain_quiet=5.0,
    drain_max=30.0,
    ref_seconds=2.0,
    single_seconds=5.0,
    idle_cpu_seconds=2.0,
)
DEFAULT = Plan(
    floor_seconds=5,
    subscribers=(100, 1000),
    write_seconds=10,
    write_seconds_big=5,
    warm_seconds=1.0,
    fanout_subscribers=1000,
    fanout_repeats=20,
    idle=10_000,
    idle_rate=1000.0,
    idle_hold=5.0,
    # Under overload (1,000 subscribers at 1,000 writes/s) a few subscribers'
    # deliveries were seen to pause ~6 s and then arrive: with a 3 s quiet
    # window they were reported missing. Late is measured as late.
    drain_quiet=20.0,
    drain_max=90.0,
)


# == the subscriber worker (a child process) ==========================================


def _frame(opcode: int, payload: bytes) -> bytes:
    """A masked client frame (RFC 6455 §5.2)."""
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    elif n < 1 << 16:
        head = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 0x80 | 127)) + n.to_bytes(8, "big")
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i & 3] for i, b in enumerate(payload))
    return head + mask + masked


class HandshakeError(ConnectionError):
    """The server did not switch protocols (the status line says why)."""


_batch_decoder = msgspec.json.Decoder()


@dataclass
class TagStats:
    """What one worker saw of the writes of one tag."""

    raw: list[tuple[int, float]] | None = None
    received: int = 0
    duplicates: int = 0
    max_ms: float = 0.0
    hist: dict[int, int] = field(default_factory=dict)
    seen: dict[int, bytearray] = field(default_factory=dict)  # subscriber → seq bitmap


class Worker:
    """Many subscriber connections in one process, and what they received."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg = cfg
        self.subs: list[Sub] = []
        self.tags: dict[bytes, TagStats] = {}
        self.raw_prefix: bytes = cfg.get("raw_prefix", "c").encode()
        self.errors: dict[str, int] = {}
        self.failures: dict[str, int] = {}
        self.closed = 0
        self.batches = 0
        self.events = 0
        self._cpu0 = self._cpu()
        self._wall0 = time.monotonic()
        self._batches0 = 0

    @staticmethod
    def _cpu() -> float:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    # -- receiving --------------------------------------------------------------------

    def on_text(self, sub: Sub, p: bytes, now: float) -> None:
        """One text message from the server."""
        if p.startswith(b'{"op":"event"'):
            self.events += 1
            i = p.find(MARK)
            if i >= 0:
                self._record(sub.idx, p[i + 4 : p.find(b"#", i)], now)
        elif p.startswith(b'{"op":"batch"'):
            # Each event of the batch holds its memory's content, so one mark,
            # once; the states after them repeat it. Scanned, not decoded: a
            # slow subscriber gets batches (coalesced or queued), and decoding
            # whole batches made it slower still.
            self.batches += 1
            end = p.find(STATES)
            i = p.find(MARK, 0, end)
            while i >= 0:
                j = p.find(b"#", i)
                self._record(sub.idx, p[i + 4 : j], now)
                i = p.find(MARK, j, end)
        elif p.startswith(b'{"op":"subscribed"'):
            if not sub.ready.done():
                sub.ready.set_result(None)
        elif p.startswith(b'{"op":"error"'):
            code = str(_batch_decoder.decode(p).get("code", "?"))
            self.errors[code] = self.errors.get(code, 0) + 1
            if not sub.ready.done():
                sub.ready.set_exception(ConnectionError(f"error {code}"))

    def _record(self, idx: int, marker: bytes, now: float) -> None:
        tag, seq_b, sent_b = marker.split(b"|")
        seq = int(seq_b)
        st = self.tags.get(tag)
        if st is None:
            st = self.tags[tag] = TagStats(raw=[] if tag.startswith(self.raw_prefix) else None)
        seen = st.seen.get(idx)
        if seen is None:
            seen = st.seen[idx] = bytearray(max(1024, seq + 1))
        elif seq >= len(seen):
            seen.extend(bytes(seq + 1024 - len(seen)))
        if seen[seq]:
            st.duplicates += 1
            return
        seen[seq] = 1
        ms = (now - int(sent_b) / 1e6) * 1000.0
        st.received += 1
        b = int(ms * BUCKET_PER_MS)
        st.hist[b] = st.hist.get(b, 0) + 1
        if ms > st.max_ms:
            st.max_ms = ms
        if st.raw is not None:
            st.raw.append((seq, round(ms, 4)))

    # -- connecting -------------------------------------------------------------------

    async def open_all(self) -> float:
        """Open ``count`` subscriptions at ``rate``/s, ``concurrency`` at a time."""
        cfg = self.cfg
        count, rate = int(cfg["count"]), float(cfg["rate"])
        sem = asyncio.Semaphore(int(cfg.get("concurrency", 100)))
        started = time.monotonic()
        tasks: list[asyncio.Task[None]] = []

        async def one(i: int) -> None:
            try:
                await self._open(i)
            finally:
                sem.release()

        for i in range(count):
            delay = started + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await sem.acquire()
            tasks.append(asyncio.create_task(one(i)))
        await asyncio.gather(*tasks)
        return time.monotonic() - started

    async def _open(self, i: int) -> None:
        cfg = self.cfg
        gidx = int(cfg.get("offset", 0)) + i
        channel = str(cfg["channel"]).replace("{i}", str(gidx))
        loop = asyncio.get_running_loop()
        reason = "?"
        for attempt in range(4):
            sub = Sub(self, i, channel)
            try:
                async with asyncio.timeout(30.0):
                    await loop.create_connection(lambda s=sub: s, cfg["host"], int(cfg["port"]))
                    await sub.ready
            except (OSError, TimeoutError) as exc:
                reason = type(exc).__name__ + (f": {exc}" if str(exc) else "")
                sub.abort()
                await asyncio.sleep(0.2 * 2**attempt)
                continue
            self.subs.append(sub)
            return
        key = reason[:80]
        self.failures[key] = self.failures.get(key, 0) + 1

    def close_all(self) -> None:
        """Close every connection (a close frame, then the transport)."""
        for sub in self.subs:
            sub.close()

    # -- answering the parent ---------------------------------------------------------

    def handle(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """One command from the parent → its answer."""
        what = cmd.get("cmd")
        if what == "mark":
            self._cpu0, self._wall0 = self._cpu(), time.monotonic()
            self._batches0 = self.batches
            return {"ok": True}
        if what == "progress":
            st = self.tags.get(str(cmd["tag"]).encode())
            return {"received": st.received if st else 0, "closed": self.closed}
        if what == "report":
            st = self.tags.get(str(cmd["tag"]).encode()) or TagStats()
            per_sub = [int(sum(v)) for v in st.seen.values()]
            wall = time.monotonic() - self._wall0
            return {
                "received": st.received,
                "duplicates": st.duplicates,
                "max_ms": st.max_ms,
                "hist": st.hist,
                "raw": st.raw,
                "subscribers_receiving": len(st.seen),
                "per_sub_min": min(per_sub) if per_sub else 0,
                "per_sub_max": max(per_sub) if per_sub else 0,
                "errors": self.errors,
                "closed": self.closed,
                "batches": self.batches - self._batches0,  # since "mark"
                "events": self.events,
                "cpu_pct": round(100 * (self._cpu() - self._cpu0) / wall, 1) if wall else 0.0,
            }
        return {"error": f"unknown command {what!r}"}


class Sub(asyncio.Protocol):
    """One WebSocket subscriber (client side of RFC 6455, no extensions)."""

    def __init__(self, worker: Worker, idx: int, channel: str) -> None:
        self.worker = worker
        self.idx = idx
        self.channel = channel
        self.transport: asyncio.Transport | None = None
        self.upgraded = False
        self.buf = b""
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.alive = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass
        self.alive = True
        cfg = self.worker.cfg
        key = base64.b64encode(os.urandom(16)).decode()
        transport.write(
            (
                f"GET /v1/subscribe HTTP/1.1\r\nHost: {cfg['host']}:{cfg['port']}\r\n"
                "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                f"Authorization: Bearer {cfg['token']}\r\n\r\n"
            ).encode()
        )

    def data_received(self, data: bytes) -> None:
        now = time.time()
        buf = self.buf + data if self.buf else data
        if not self.upgraded:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                self.buf = buf
                return
            status = buf[: buf.find(b"\r\n")]
            buf = buf[end + 4 :]
            if not status.startswith(b"HTTP/1.1 101"):
                if not self.ready.done():
                    self.ready.set_exception(HandshakeError(status.decode(errors="replace")))
                self.abort()
                return
            self.upgraded = True
            op = {"op": "subscribe", "channels": [self.channel], "mode": "eager"}
            assert self.transport is not None  # noqa: S101
            self.transport.write(_frame(0x1, json.dumps(op).encode()))
        pos, n = 0, len(buf)
        on_text = self.worker.on_text
        while n - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            ln, hdr = b1 & 0x7F, 2
            if ln == 126:
                if n - pos < 4:
                    break
                ln, hdr = int.from_bytes(buf[pos + 2 : pos + 4], "big"), 4
            elif ln == 127:
                if n - pos < 10:
                    break
                ln, hdr = int.from_bytes(buf[pos + 2 : pos + 10], "big"), 10
            masked = b1 & 0x80
            if masked:
                hdr += 4
            end = pos + hdr + ln
            if end > n:
                break
            payload = buf[pos + hdr : end]
            if masked:  # servers do not mask, but be lenient
                mask = buf[pos + hdr - 4 : pos + hdr]
                payload = bytes(c ^ mask[i & 3] for i, c in enumerate(payload))
            pos = end
            opcode = b0 & 0x0F
            if opcode == 0x1:
                on_text(self, payload, now)
            elif opcode == 0x9 and self.transport is not None:
                self.transport.write(_frame(0xA, payload))
            elif opcode == 0x8:
                self.close()
                break
        self.buf = buf[pos:] if pos < n else b""

    def connection_lost(self, exc: Exception | None) -> None:
        if self.alive and self.ready.done():
            self.worker.closed += 1
        self.alive = False
        if not self.ready.done():
            self.ready.set_exception(ConnectionError("connection lost before subscribed"))

    def close(self) -> None:
        """Send a close frame and close the transport."""
        if self.transport is not None and not self.transport.is_closing():
            with contextlib.suppress(OSError, RuntimeError):
                self.transport.write(_frame(0x8, (1000).to_bytes(2, "big")))
            self.transport.close()

    def abort(self) -> None:
        """Drop the connection at once."""
        if self.transport is not None:
            self.transport.abort()
        if not self.ready.done():
            self.ready.cancel()


def _raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _say(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj, separators=(",", ":")) + "\n")
    sys.stdout.flush()


async def _worker_main(cfg: dict[str, Any]) -> int:
    nofile = _raise_nofile()
    need = int(cfg["count"]) + 64
    if nofile < need:
        _say({"ready": 0, "failed": int(cfg["count"]), "error": f"RLIMIT_NOFILE {nofile} < {need}"})
        return 1
    worker = Worker(cfg)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 20)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    took = await worker.open_all()
    _say(
        {
            "ready": len(worker.subs),
            "failed": sum(worker.failures.values()),
            "failures": worker.failures,
            "seconds": round(took, 2),
            "nofile": nofile,
        }
    )
    try:
        while True:
            line = await reader.readline()
            if not line:
                break
            cmd = json.loads(line)
            if cmd.get("cmd") == "quit":
                break
            _say(worker.handle(cmd))
    finally:
        worker.close_all()
        await asyncio.sleep(0.3)
        _say({"bye": True})
    return 0


def _worker_entry(raw_cfg: str) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when we stop
    cfg = json.loads(raw_cfg)
    try:
        import uvloop

        return uvloop.run(_worker_main(cfg))
    except ImportError:  # pragma: no cover - uvloop is a dependency
        return asyncio.run(_worker_main(cfg))


# == the parent side ==================================================================


@dataclass(frozen=True)
class Reference:
    """A reference server where the phases expect the region's gateway."""

    server: ReferenceServer
    broker: TansuBroker

    @property
    def url(self) -> str:
        """The reference server's base URL."""
        return self.server.url

    @property
    def gateway_pid(self) -> int | None:
        """The reference server's pid (its CPU is reported as the gateway's)."""
        return self.server.pid


Server = LocalRegion | Reference  # what the subscribers and the writer talk to


class SubscriberPool:
    """``count`` subscribers spread over ``procs`` worker processes."""

    def __init__(
        self,
        region: Server,
        token: str,
        count: int,
        *,
        procs: int = 1,
        channel: str = CHANNEL,
        rate: float = 1000.0,
        concurrency: int = 100,
    ) -> None:
        self.region = region
        self.token = token
        self.count = count
        self.procs = max(1, min(procs, count))
        self.channel = channel
        self.rate = rate
        self.concurrency = concurrency
        self.children: list[asyncio.subprocess.Process] = []
        self.ready = 0
        self.failed = 0
        self.failures: dict[str, int] = {}
        self.open_seconds = 0.0

    async def start(self) -> None:
        """Spawn the workers and wait until every connection is subscribed (or failed)."""
        host, port = self.region.url.removeprefix("http://").split(":")
        share = [self.count // self.procs + (1 if k < self.count % self.procs else 0)
                 for k in range(self.procs)]  # fmt: skip
        offset = 0
        started = time.monotonic()
        for k, n in enumerate(share):
            cfg = {
                "host": host,
                "port": int(port),
                "token": self.token,
                "channel": self.channel,
                "count": n,
                "offset": offset,
                "rate": self.rate / self.procs,
                "concurrency": max(1, self.concurrency // self.procs),
                "raw_prefix": "c",
                "worker": k,
            }
            offset += n
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "loadtests.propagation_bench",
                "--worker",
                json.dumps(cfg),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                cwd=str(REPO),
                limit=256 << 20,
            )
            self.children.append(proc)
            _children.add(proc.pid)
        within = self.count / self.rate + 90.0
        for proc in self.children:
            hello = await self._read(proc, within)
            self.ready += int(hello.get("ready", 0))
            self.failed += int(hello.get("failed", 0))
            for k, v in (hello.get("failures") or {}).items():
                self.failures[k] = self.failures.get(k, 0) + v
            if "error" in hello:
                self.failures[hello["error"]] = self.failures.get(hello["error"], 0) + 1
        self.open_seconds = time.monotonic() - started

    @staticmethod
    async def _read(proc: asyncio.subprocess.Process, within: float) -> dict[str, Any]:
        assert proc.stdout is not None  # noqa: S101
        line = await asyncio.wait_for(proc.stdout.readline(), within)
        if not line:
            raise RuntimeError(f"subscriber worker {proc.pid} exited (rc={proc.returncode})")
        out: dict[str, Any] = json.loads(line)
        return out

    async def ask(self, cmd: dict[str, Any], within: float = 60.0) -> list[dict[str, Any]]:
        """Send one command to every worker; their answers."""
        data = (json.dumps(cmd) + "\n").encode()
        for proc in self.children:
            assert proc.stdin is not None  # noqa: S101
            proc.stdin.write(data)
            await proc.stdin.drain()
        return [await self._read(proc, within) for proc in self.children]

    async def received(self, tag: str) -> tuple[int, int]:
        """(deliveries of ``tag`` so far, connections closed by the server)."""
        answers = await self.ask({"cmd": "progress", "tag": tag})
        return sum(a["received"] for a in answers), sum(a["closed"] for a in answers)

    async def report(self, tag: str) -> Report:
        """Merge what every worker saw of ``tag``."""
        return Report.merge(await self.ask({"cmd": "report", "tag": tag}, 120.0))

    async def stop(self) -> None:
        """Ask the workers to quit; kill whatever has not gone within 10 s."""
        children, self.children = self.children, []
        for proc in children:
            if proc.returncode is None and proc.stdin is not None:
                with contextlib.suppress(ConnectionError, RuntimeError, OSError):
                    proc.stdin.write(b'{"cmd":"quit"}\n')
                    await proc.stdin.drain()
                    proc.stdin.close()
        for proc in children:
            try:
                await asyncio.wait_for(proc.wait(), 10.0)
            except (TimeoutError, asyncio.CancelledError):
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await asyncio.shield(proc.wait())
            _children.discard(proc.pid)

    async def __aenter__(self) -> SubscriberPool:
        try:
            await self.start()
        except BaseException:
            await asyncio.shield(self.stop())
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.shield(self.stop())


@dataclass
class Report:
    """Deliveries of one tag, merged over the workers."""

    received: int = 0
    duplicates: int = 0
    max_ms: float = 0.0
    hist: dict[int, int] = field(default_factory=dict)
    raw: list[tuple[int, float]] = field(default_factory=list)
    subscribers_receiving: int = 0
    per_sub_min: int | None = None
    per_sub_max: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    closed: int = 0
    batches: int = 0
    client_cpu_pct: list[float] = field(default_factory=list)

    @classmethod
    def merge(cls, answers: Iterable[dict[str, Any]]) -> Report:
        """One report out of every worker's answer."""
        r = cls()
        for a in answers:
            r.received += a["received"]
            r.duplicates += a["duplicates"]
            r.max_ms = max(r.max_ms, a["max_ms"])
            for b, c in a["hist"].items():
                r.hist[int(b)] = r.hist.get(int(b), 0) + c
            r.raw.extend((int(s), float(ms)) for s, ms in a["raw"] or ())
            r.subscribers_receiving += a["subscribers_receiving"]
            if a["subscribers_receiving"]:
                low = a["per_sub_min"]
                r.per_sub_min = low if r.per_sub_min is None else min(r.per_sub_min, low)
            r.per_sub_max = max(r.per_sub_max, a["per_sub_max"])
            for k, v in a["errors"].items():
                r.errors[k] = r.errors.get(k, 0) + v
            r.closed += a["closed"]
            r.batches += a["batches"]
            r.client_cpu_pct.append(a["cpu_pct"])
        return r

    def quantile(self, q: float) -> float:
        """The q-th percentile (0–100) in ms by nearest rank, at 10 µs resolution."""
        if not self.received:
            return 0.0
        rank = max(0, min(self.received - 1, round(q / 100 * (self.received - 1))))
        seen = 0
        for b in sorted(self.hist):
            seen += self.hist[b]
            if seen > rank:
                return min((b + 0.5) / BUCKET_PER_MS, self.max_ms)
        return self.max_ms


def _content(tag: str, seq: int) -> str:
    return f"PBM|{tag}|{seq}|{int(time.time() * 1e6)}# {CONTENT}"


class Writer:
    """``POST /v1/memories`` for user ``u1``; each write carries its send time."""

    def __init__(
        self, http: aiohttp.ClientSession, url: str, token: str, path: str = "/v1/memories"
    ) -> None:
        self.http = http  # for scrapes; writes go through the lean client
        self.path = path
        self.fast = Http1Client.for_url(url, limit=256)
        self.head = self.fast.head(
            {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        )

    async def write(self, tag: str, seq: int) -> int:
        """One create; the HTTP status (0 on a transport error)."""
        body = {"id": f"pb-{tag}-{seq}", "user_id": USER, "kind": "fact"}
        body["content"] = _content(tag, seq)  # stamped as late as possible
        try:
            reply = await self.fast.request("POST", self.path, json.dumps(body).encode(), self.head)
        except (OSError, TimeoutError):  # HttpError is an OSError
            return 0
        return reply.status

    async def close(self) -> None:
        """Close the write connections."""
        await self.fast.close()


async def _wait_deliveries(
    pool: SubscriberPool, tag: str, expected: int, quiet: float, within: float
) -> tuple[int, float]:
    """Poll the workers until ``expected`` deliveries or no progress for ``quiet`` s."""
    started = last_change = time.monotonic()
    last = -1
    while True:
        got, _closed = await pool.received(tag)
        now = time.monotonic()
        if got != last:
            last, last_change = got, now
        if got >= expected or now - last_change > quiet or now - started > within:
            return got, now - started
        await asyncio.sleep(0.25)


def _at(rate: float) -> str:
    """A rate as the phases name it: ``@1k/s``, ``@250/s``."""
    return f"@{rate / 1000:g}k/s" if rate >= 1000 else f"@{rate:g}/s"


def _meets(value: float, target: float) -> str:
    return "yes" if value <= target else "NO"


# -- (a) the floor -------------------------------------------------------------------


async def measure_floor(
    bootstrap: str, seconds: float, rate: float, partitions: int = 8
) -> tuple[list[float], Latencies, int]:
    """Produce (``acks=all``) → consume (``fetch_max_wait_ms=5``) latencies in ms."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    topic = f"bench.propfloor.{secrets.token_hex(3)}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, partitions, 1)])
    finally:
        await admin.close()
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=5,
        group_id=None,
    )
    consumer.assign([TopicPartition(topic, p) for p in range(partitions)])
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", enable_idempotence=False, linger_ms=0
    )
    await consumer.start()
    await producer.start()
    pad = CONTENT.encode() * 4
    warm = 100
    n = int(seconds * rate)
    latencies: list[float] = []
    got = 0
    done = asyncio.Event()

    async def consume() -> None:
        nonlocal got
        while True:
            batches = await consumer.getmany(timeout_ms=100)
            now = time.time()
            for records in batches.values():
                for rec in records:
                    seq, sent = struct.unpack_from(">qd", rec.value)
                    got += 1
                    if seq >= warm:
                        latencies.append((now - sent) * 1000)
            if got >= warm + n:
                done.set()

    async def send(i: int) -> int:
        value = struct.pack(">qd", i, time.time()) + pad
        try:
            await producer.send_and_wait(topic, value, key=f"k{i}".encode())
        except Exception:  # noqa: BLE001 - counted as an error
            return 0
        return 200

    consuming = asyncio.create_task(consume())
    try:
        for i in range(warm):
            await send(i)
        acks = Latencies()
        await open_loop(rate, n, lambda i: send(warm + i), acks.record, workers=128)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), 15.0)
        return latencies, acks, n
    finally:
        consuming.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await consuming
        await producer.stop()
        await consumer.stop()


# -- (b) propagation at 1,000 writes/s -------------------------------------------------


async def measure_propagation(
    region: Server,
    writer: Writer,
    pool: SubscriberPool,
    plan: Plan,
    rows: list[dict[str, Any]],
    meta: dict[str, Any],
    rate: float | None = None,
    seconds: float | None = None,
    reference: str = "",
) -> None:
    """Open-loop writes at ``rate`` (default ``rate``) while ``pool`` listens; two rows.

    ``reference`` names a reference server standing in for the gateway: its
    rows are ``r …`` rows, with no target.
    """
    rate = rate or plan.rate
    at = _at(rate)
    subs = pool.ready
    tag, warm_tag = f"b{pool.count}r{rate:g}", f"wb{pool.count}r{rate:g}"
    phase, key = (f"r {reference}:", "r_") if reference else ("b", "b_")
    warm = Latencies()
    await open_loop(
        rate,
        int(rate * plan.warm_seconds),
        lambda i: writer.write(warm_tag, i),
        warm.record,
        workers=256,
    )
    await _wait_deliveries(pool, warm_tag, warm.ok * subs, 1.0, 10.0)
    await pool.ask({"cmd": "mark"})
    closed_before = (await pool.received(warm_tag))[1]
    cpu = CpuMeter(_pids(region))
    before = await scrape(writer.http, region.url)
    if seconds is None:
        big = pool.count >= max(plan.subscribers)
        seconds = plan.write_seconds_big if big else plan.write_seconds
    n = int(rate * seconds)
    log(f"({phase[0]}) {subs} subscribers: {n} writes at {rate:.0f}/s open loop")
    acks = Latencies()
    stop = asyncio.Event()  # an overloaded gateway must not stretch the phase for ever
    budget = asyncio.get_running_loop().call_later(seconds * 3 + 10, stop.set)
    try:
        took = await open_loop(
            rate, n, lambda i: writer.write(tag, i), acks.record, workers=256, stop=stop
        )
    finally:
        budget.cancel()
    if stop.is_set():
        log(f"({phase[0]}) stopped issuing writes after {took:.0f} s ({acks.ok} acknowledged)")
    expected = acks.ok * (subs - closed_before)
    _got, drain = await _wait_deliveries(pool, tag, expected, plan.drain_quiet, plan.drain_max)
    usage = cpu.pct()
    machine = cpu.machine_pct()
    stages = _stages(before, await scrape(writer.http, region.url))
    rep = await pool.report(tag)
    log(
        f"({phase[0]}) {subs} subscribers: {rep.received}/{expected} deliveries, "
        f"p99 {rep.quantile(99):.1f} ms, server cpu {usage['gateway']} %"
    )
    if stages:
        log(
            "    stages p50/p99 ms: "
            + ", ".join(f"{k} {v[0]:g}/{v[1]:g}" for k, v in stages.items())
        )
    rows.append(
        {
            **acks.row(f"{phase} write ack (POST) {at}, {subs} subs", took, rate),
            "subs": subs,
            "target": None,
        }
    )
    p99 = rep.quantile(99)
    target = (
        TARGET_PROPAGATION_P99_MS if subs <= 100 and rate >= plan.rate and not reference else None
    )
    meets = None
    if target is not None:
        meets = _meets(p99, target) if rep.received == expected else "NO"
    rows.append(
        {
            "phase": f"{phase} propagation write→WS {at}, {subs} subs",
            "subs": subs,
            "n": rep.received,
            "target_per_s": rate * subs,
            "achieved_per_s": round(rep.received / (took + drain), 1),
            "expected": expected,
            "received": rep.received,
            "p50_ms": round(rep.quantile(50), 3),
            "p90_ms": round(rep.quantile(90), 3),
            "p99_ms": round(p99, 3),
            "max_ms": round(rep.max_ms, 3),
            "target": f"p99 ≤ {TARGET_PROPAGATION_P99_MS:g}"
            if target
            else ("(reference)" if reference else "(target: 100 subs @1k/s)"),
            "meets": meets,
            "gw_cpu_pct": usage["gateway"],
            "client_cpu_pct": "/".join(f"{c:g}" for c in rep.client_cpu_pct),
            "machine_pct": machine,
        }
    )
    slug = _slug(reference) + "_" if reference else ""
    meta[f"{key}{slug}{subs}_subscribers_{rate:g}_per_s"] = {
        "writes_scheduled": n,
        "writes_cut_short_by_time_budget": stop.is_set(),
        "writes_acknowledged": acks.ok,
        "write_errors": acks.errors,
        "write_seconds": round(took, 2),
        "expected_deliveries": expected,
        "received_deliveries": rep.received,
        "missing_deliveries": expected - rep.received,
        "duplicate_deliveries": rep.duplicates,
        "drain_seconds_after_last_write": round(drain, 2),
        "subscribers_connected": subs,
        "subscribers_closed_by_server": rep.closed,
        "server_errors_seen": rep.errors,
        "coalesced_batches_received": rep.batches,
        "per_subscriber_received_min": rep.per_sub_min,
        "per_subscriber_received_max": rep.per_sub_max,
        "cpu_pct": {**usage, "subscriber_workers": rep.client_cpu_pct},
        "gateway_stages_p50_p99_ms": stages,
    }


def _slug(name: str) -> str:
    """A reference's name in a JSON key (``bare pipeline, 2 processes``, for one)."""
    return "_".join(name.replace(",", " ").split())


def _pids(region: Server) -> dict[str, Pids]:
    """The processes whose CPU a phase reports: gateway, its store process, broker, bench.

    A reference of several processes is reported as one gateway: their sum.
    """
    pids: dict[str, Pids] = {
        "gateway": region.gateway_pid, "broker": region.broker.pid, "bench": os.getpid(),
    }  # fmt: skip
    gw = region.gateway_pid
    if isinstance(region, Reference) and region.server.args and gw is not None:
        group = tuple(descendants(gw))  # the first process and those it spawned
        pids["gateway"] = group
        if len(group) != int(region.server.args[0]):
            log(f"    CPU of {len(group)} reference processes, not {region.server.args[0]}")
    elif gw is not None:
        with contextlib.suppress(OSError, ValueError):
            children = Path(f"/proc/{gw}/task/{gw}/children").read_text().split()
            if children:
                pids["store_process"] = int(children[0])
    return pids


_STAGES = (
    ("write", "memsync_write_stage_seconds", "stage"),
    ("apply", "memsync_apply_stage_seconds", "stage"),
    ("loop lag", "memsync_event_loop_lag_seconds", ""),
    ("gc gen", "memsync_gc_pause_seconds", "generation"),
)


def _stages(before: Sample, after: Sample) -> dict[str, tuple[float, float]]:
    """p50/p99 (ms) of the gateway's write and apply stages and loop lag between two scrapes."""
    out: dict[str, tuple[float, float]] = {}
    for what, name, label in _STAGES:
        values = sorted({lab.get(label, "") for lab, _ in after.metrics.get(name + "_count", [])})
        for value in values:
            labels = {label: value} if label else {}
            h = after.histogram(name, **labels) - before.histogram(name, **labels)
            if h.count:
                key = f"{what} {value}".strip()
                out[key] = (round(h.quantile(0.5) * 1000, 2), round(h.quantile(0.99) * 1000, 2))
                if label == "generation":  # pauses: how many, and the longest bucket reached
                    out[key] = (h.count, round(h.quantile(1.0) * 1000, 2))
    return out


# -- (c) one event to many ------------------------------------------------------------


async def measure_fanout(
    region: Server,
    writer: Writer,
    pool: SubscriberPool,
    repeats: int,
    rows: list[dict[str, Any]],
    meta: dict[str, Any],
    reference: str = "",
) -> None:
    """One write at a time; every subscriber's delivery time; ``repeats`` times.

    ``reference`` names a reference server standing in for the gateway: its
    rows are ``r …`` rows, with no target.
    """
    subs = pool.ready
    tag = f"c{pool.count}{secrets.token_hex(2) if reference else ''}"  # "c…": raw times kept
    phase, key = (f"r {reference}:", "r_") if reference else ("c", "c_")
    for i in range(3):  # warm the path
        await writer.write(f"w{tag}", i)
    await _wait_deliveries(pool, f"w{tag}", 3 * subs, 1.0, 10.0)
    await pool.ask({"cmd": "mark"})
    cpu = CpuMeter(_pids(region))
    acks: list[float] = []
    log(f"({phase[0]}) one write → {subs} subscribers, {repeats} times")
    for k in range(repeats):
        t = time.perf_counter()
        status = await writer.write(tag, k)
        acks.append((time.perf_counter() - t) * 1000)
        if status not in (200, 201, 202):
            log(f"({phase[0]}) write {k} answered {status}")
        await asyncio.sleep(0.1)
        await _wait_deliveries(pool, tag, (k + 1) * subs, 2.0, 5.0)
        await asyncio.sleep(0.05)
    usage = cpu.pct()
    machine = cpu.machine_pct()
    rep = await pool.report(tag)
    by_event: dict[int, list[float]] = {}
    for seq, ms in rep.raw:
        by_event.setdefault(seq, []).append(ms)
    all_ms = [ms for _, ms in rep.raw]
    spread = [ms - min(v) for v in by_event.values() for ms in v]
    last = [max(v) for v in by_event.values()]
    first = [min(v) for v in by_event.values()]
    s, sp, la, fi = summarize(all_ms), summarize(spread), summarize(last), summarize(first)
    expected = repeats * subs
    common = {"subs": subs, "expected": expected, "received": rep.received}
    rows.append(
        {
            "phase": f"{phase} fan-out 1 event → {subs} subs (from write sent)",
            **common,
            "n": len(all_ms),
            "p50_ms": round(s["median"], 3),
            "p90_ms": round(s["p90"], 3),
            "p99_ms": round(s["p99"], 3),
            "max_ms": round(s["max"], 3),
            "target": "(reference)" if reference else f"p99 ≤ {TARGET_FANOUT_P99_MS:g}",
            "meets": None
            if reference
            else (_meets(s["p99"], TARGET_FANOUT_P99_MS) if rep.received == expected else "NO"),
            "gw_cpu_pct": usage["gateway"],
            "client_cpu_pct": "/".join(f"{c:g}" for c in rep.client_cpu_pct),
            "machine_pct": machine,
        }
    )
    rows.append(
        {
            "phase": f"{phase}   spread after the first receiver",
            **common,
            "n": len(spread),
            "p50_ms": round(sp["median"], 3),
            "p90_ms": round(sp["p90"], 3),
            "p99_ms": round(sp["p99"], 3),
            "max_ms": round(sp["max"], 3),
        }
    )
    rows.append(
        {
            "phase": f"{phase}   first receiver, per event",
            "subs": subs,
            "n": len(first),
            "p50_ms": round(fi["median"], 3),
            "p90_ms": round(fi["p90"], 3),
            "p99_ms": round(fi["p99"], 3),
            "max_ms": round(fi["max"], 3),
        }
    )
    rows.append(
        {
            "phase": f"{phase}   last receiver (all have it), per event",
            "subs": subs,
            "n": len(last),
            "p50_ms": round(la["median"], 3),
            "p90_ms": round(la["p90"], 3),
            "p99_ms": round(la["p99"], 3),
            "max_ms": round(la["max"], 3),
        }
    )
    a = summarize(acks)
    slug = _slug(reference) + "_" if reference else ""
    meta[f"{key}{slug}{subs}_subscribers"] = {
        "events": repeats,
        "expected_deliveries": expected,
        "received_deliveries": rep.received,
        "duplicate_deliveries": rep.duplicates,
        "write_ack_ms": {"p50": round(a["median"], 3), "max": round(a["max"], 3)},
        "cpu_pct": {**usage, "subscriber_workers": rep.client_cpu_pct},
    }


# -- (d) idle subscribers --------------------------------------------------------------


async def measure_idle(
    region: LocalRegion, token: str, http: aiohttp.ClientSession, plan: Plan
) -> dict[str, Any]:
    """Gateway RSS before/while/after ``plan.idle`` idle subscriptions."""
    pid = region.gateway_pid
    # warm every code path the idle connections take, then let the process settle
    async with SubscriberPool(region, token, 50, channel="user:warm{i}:memories"):
        pass
    await asyncio.sleep(1.5)
    before = [rss_kib(pid) or 0 for _ in range(3) if not await asyncio.sleep(0.3)]
    rss0 = min(before)
    log(f"(d) {plan.idle} idle subscribers at ≤ {plan.idle_rate:.0f}/s; gateway RSS {rss0} KiB")
    procs = max(1, plan.idle // 5000)
    pool = SubscriberPool(
        region,
        token,
        plan.idle,
        procs=procs,
        channel="user:idle{i}:memories",
        rate=plan.idle_rate,
        concurrency=100,
    )
    async with pool:
        await asyncio.sleep(1.0)
        ready = await scrape(http, region.url, metrics=False)
        held: list[int] = []
        end = time.monotonic() + plan.idle_hold
        while time.monotonic() < end:
            held.append(rss_kib(pid) or 0)
            await asyncio.sleep(0.5)
        rss1 = max(held)
        gw_subs = ready.ready.get("subscriptions")
        log(f"(d) {pool.ready} open (gateway counts {gw_subs}); gateway RSS {rss1} KiB")
    await asyncio.sleep(2.0)
    after_close = rss_kib(pid) or 0
    left = (await scrape(http, region.url, metrics=False)).ready.get("subscriptions")
    per = (rss1 - rss0) / pool.ready if pool.ready else 0.0
    return {
        "phase": "d idle WebSocket subscribers",
        "connections": plan.idle,
        "opened": pool.ready,
        "failed": pool.failed,
        "gateway_subscriptions": gw_subs,
        "open_seconds": round(pool.open_seconds, 1),
        "rss_before_kib": rss0,
        "rss_held_kib": rss1,
        "rss_after_close_kib": after_close,
        "subscriptions_after_close": left,
        "kib_per_conn": round(per, 2),
        "target": f"< {TARGET_IDLE_KIB:g} KiB",
        "meets": "yes" if pool.ready == plan.idle and per < TARGET_IDLE_KIB else "NO",
        "failures": pool.failures or None,
    }


# -- (r) the reference: a bare aiohttp pipeline ---------------------------------------


async def measure_references(
    workdir: Path,
    token: str,
    http: aiohttp.ClientSession,
    plan: Plan,
    rows: list[dict[str, Any]],
    meta: dict[str, Any],
    *,
    processes: int = 1,
) -> None:
    """(r) :mod:`loadtests.bare_broadcast` where the gateway was, measured alike.

    Run once the region is stopped, on a fresh broker of its own: the
    reference has what the gateway had at its start (a fresh broker, the
    same writer and subscriber processes, the same phases) and inherits
    nothing of the gateway's run — the bundled broker keeps every record in
    memory. Rows: propagation at ``plan.rate`` to the smallest subscriber
    count through the log; one event to ``plan.fanout_subscribers`` through
    the log, and broadcast straight from the request (the bare aiohttp
    broadcast).

    With ``processes`` > 1, the same pipeline rows again (on another fresh
    broker) for that many bare processes sharing the port and nothing but
    the log: what splitting a gateway into shared-nothing processes could
    give on this machine at best.
    """
    for n in dict.fromkeys((1, processes)):
        log(f"(r) reference: the bare aiohttp pipeline (loadtests.bare_broadcast) as {n} "
            "process(es), on a fresh broker")  # fmt: skip
        broker = TansuBroker(log_path=workdir / f"reference-{n}-broker.log")
        await broker.start()
        try:
            await _measure_references(broker, token, http, plan, rows, meta, processes=n)
        finally:
            await broker.stop(grace=2.0)


async def _measure_references(
    broker: TansuBroker,
    token: str,
    http: aiohttp.ClientSession,
    plan: Plan,
    rows: list[dict[str, Any]],
    meta: dict[str, Any],
    *,
    processes: int = 1,
) -> None:
    module = "loadtests.bare_broadcast"
    args = (str(processes),) if processes > 1 else ()
    name = "bare pipeline" if processes == 1 else f"bare pipeline, {processes} processes"
    async with ReferenceServer(module, broker.bootstrap, "bench.bcast", args) as server:
        ref = Reference(server, broker)
        writer = Writer(http, ref.url, token)
        direct = Writer(http, ref.url, token, path="/v1/broadcast")
        try:
            warm = Latencies()
            await open_loop(500, 300, lambda i: writer.write("w2", i), warm.record, workers=32)
            count = plan.subscribers[0]
            log(f"(r) opening {count} subscribers")
            async with SubscriberPool(ref, token, count, procs=1) as pool:
                _check_pool(pool, meta, name)
                await measure_propagation(ref, writer, pool, plan, rows, meta, reference=name)
            big = plan.fanout_subscribers
            log(f"(r) opening {big} subscribers")
            # A broadcast from one of several processes reaches its own sockets only.
            writers = [(name, writer)] + ([("bare broadcast", direct)] if processes == 1 else [])
            async with SubscriberPool(ref, token, big, procs=2 if big >= 500 else 1) as pool:
                _check_pool(pool, meta, name)
                for label, w in writers:
                    await measure_fanout(
                        ref, w, pool, plan.fanout_repeats, rows, meta, reference=label
                    )
        finally:
            await writer.close()
            await direct.close()


# -- the benchmark --------------------------------------------------------------------


async def run_bench(
    plan: Plan,
    workdir: Path,
    settings: dict[str, str] | None = None,
    *,
    only_reference: bool = False,
    reference_processes: int = 1,
) -> int:
    """Every phase (or the floor and the reference only), then the tables."""
    rows: list[dict[str, Any]] = []
    meta: dict[str, Any] = {
        "cores": os.cpu_count(),
        "rate_per_s": plan.rate,
        "plan": plan.__dict__,
        "channel": CHANNEL,
        "latency_from": "client time.time() just before the POST was issued",
        "targets": {
            "propagation_p99_ms_at_1k_writes_100_subs": TARGET_PROPAGATION_P99_MS,
            "fanout_1_event_1000_subs_p99_ms": TARGET_FANOUT_P99_MS,
            "idle_kib_per_subscriber": TARGET_IDLE_KIB,
        },
    }
    started = time.monotonic()
    env = {"MEMSYNC_AGENT_RATE": "1e9", "MEMSYNC_TENANT_RATE": "1e9",
           "MEMSYNC_AGENT_BURST": "1e9", "MEMSYNC_TENANT_BURST": "1e9"}  # fmt: skip
    env.update(settings or {})
    meta["settings"] = settings or {}
    async with LocalRegion(workdir, env) as region:
        log(f"broker {region.bootstrap} (pid {region.broker.pid}), gateway {region.url}")
        token = mint(
            region.secret.encode(),
            agent="propagation-bench",
            tenant=TENANT,
            users=["*"],
            scope=["read", "write", "subscribe"],
            ttl=24 * 3600,
        )
        async with http_session(256) as http:
            writer = Writer(http, region.url, token)
            warm = Latencies()
            await open_loop(500, 300, lambda i: writer.write("w0", i), warm.record, workers=32)

            if only_reference:
                await measure_floor_rows(region, plan, rows)
                await writer.close()
                idle = None
            else:
                idle = await measure_gateway(region, token, http, writer, plan, rows, meta)
    async with http_session(256) as http:
        await measure_references(
            workdir, token, http, plan, rows, meta, processes=reference_processes
        )
    meta["seconds"] = round(time.monotonic() - started, 1)
    emit_tables(rows, meta, idle)
    return 0


async def measure_idle_cpu(
    region: LocalRegion, plan: Plan, rows: list[dict[str, Any]], meta: dict[str, Any]
) -> None:
    """The idle gateway's CPU and its broker's: what every phase has beneath it.

    Measured once the local log has been quiet past its quiet cadence's
    second (``MEMSYNC_KAFKA_QUIET_FETCH_WAIT_MS``): on the bundled broker an
    idle reader still polls every fetch wait.
    """
    await asyncio.sleep(1.5)
    cpu = CpuMeter(_pids(region))
    await asyncio.sleep(plan.idle_cpu_seconds)
    usage = cpu.pct()
    meta["d_idle_gateway_cpu_pct"] = usage
    log(f"(d) idle gateway over {plan.idle_cpu_seconds:g} s: CPU % of a core {usage}")
    rows.append(
        {
            "phase": "d idle gateway: no writes, no subscribers (CPU)",
            "subs": 0,
            "gw_cpu_pct": usage["gateway"],
            "client_cpu_pct": f"broker {usage['broker']:g}",
        }
    )


async def measure_floor_rows(region: LocalRegion, plan: Plan, rows: list[dict[str, Any]]) -> None:
    """(a) the raw produce→consume floor: two rows."""
    log(f"(a) floor: produce→consume at {plan.rate:.0f}/s for {plan.floor_seconds} s")
    floor, floor_acks, n = await measure_floor(region.bootstrap, plan.floor_seconds, plan.rate)
    f = summarize(floor)
    rows.append(
        {
            "phase": f"a floor produce→consume {_at(plan.rate)}",
            "n": len(floor),
            "expected": n,
            "received": len(floor),
            "target_per_s": plan.rate,
            "p50_ms": round(f["median"], 3),
            "p90_ms": round(f["p90"], 3),
            "p99_ms": round(f["p99"], 3),
            "max_ms": round(f["max"], 3),
        }
    )
    rows.append(
        {
            **floor_acks.row(
                f"a floor produce→ack {_at(plan.rate)}", plan.floor_seconds, plan.rate
            ),
            "achieved_per_s": None,
        }
    )


async def measure_gateway(
    region: LocalRegion,
    token: str,
    http: aiohttp.ClientSession,
    writer: Writer,
    plan: Plan,
    rows: list[dict[str, Any]],
    meta: dict[str, Any],
) -> dict[str, Any]:
    """Phases (d), (a), (b), (c) on the gateway; the idle row."""
    # (d) first: a fresh gateway, so freed memory of other phases hides nothing
    idle = await measure_idle(region, token, http, plan)
    meta["d_idle"] = idle
    # Then a fresh gateway again: the latency phases should not inherit
    # the teardown of 10,000 connections (full collections of 0.5-1 s
    # followed it; docs/architecture.md, known problem 9).
    seconds = await region.restart_gateway()
    log(f"gateway restarted after (d) in {seconds:.1f} s")
    await writer.close()
    writer = Writer(http, region.url, token)  # a new port
    warm = Latencies()
    await open_loop(500, 300, lambda i: writer.write("w1", i), warm.record, workers=32)

    await measure_idle_cpu(region, plan, rows, meta)
    await measure_floor_rows(region, plan, rows)

    # reference: the same writes with nobody subscribed
    cpu = CpuMeter(_pids(region))
    n = int(plan.rate * plan.write_seconds / 2)
    log(f"(b) no subscribers: {n} writes at {plan.rate:.0f}/s open loop (reference)")
    acks = Latencies()
    took = await open_loop(plan.rate, n, lambda i: writer.write("b0", i), acks.record, workers=256)
    row = acks.row(f"b write ack (POST) {_at(plan.rate)}, 0 subs", took, plan.rate)
    usage = cpu.pct()
    rows.append(
        {**row, "subs": 0, "gw_cpu_pct": usage["gateway"], "machine_pct": cpu.machine_pct()}
    )
    meta["b_0_subscribers_cpu_pct"] = usage

    log(f"(b) one subscriber on {CHANNEL}: single writes at {plan.single_rate:g}/s")
    async with SubscriberPool(region, token, 1, procs=1) as pool:
        _check_pool(pool, meta)
        await measure_propagation(
            region, writer, pool, plan, rows, meta, plan.single_rate, plan.single_seconds
        )

    for count in plan.subscribers[:-1]:
        log(f"(b) opening {count} subscribers on {CHANNEL}")
        async with SubscriberPool(region, token, count, procs=1) as pool:
            _check_pool(pool, meta)
            await measure_propagation(region, writer, pool, plan, rows, meta)
            # reference: the same subscribers at a rate the write path sustains
            await measure_propagation(
                region, writer, pool, plan, rows, meta, plan.ref_rate, plan.ref_seconds
            )

    big = max(plan.subscribers[-1], plan.fanout_subscribers)
    procs = 2 if big >= 500 else 1
    log(f"(b/c) opening {big} subscribers on {CHANNEL} ({procs} processes)")
    async with SubscriberPool(region, token, big, procs=procs) as pool:
        _check_pool(pool, meta)
        await measure_fanout(region, writer, pool, plan.fanout_repeats, rows, meta)
        await measure_propagation(region, writer, pool, plan, rows, meta)
    await writer.close()
    final = await scrape(http, region.url, metrics=False)
    meta["gateway_subscriptions_at_end"] = final.ready.get("subscriptions")
    meta["gateway_rss_kib_at_end"] = rss_kib(region.gateway_pid)
    return idle


def emit_tables(
    rows: list[dict[str, Any]], meta: dict[str, Any], idle: dict[str, Any] | None
) -> None:
    """The phases' table, and the idle subscribers' one (when measured)."""
    columns = [
        "phase",
        "subs",
        "n",
        "expected",
        "received",
        "achieved_per_s",
        "p50_ms",
        "p90_ms",
        "p99_ms",
        "max_ms",
        "errors",
        "target",
        "meets",
        "gw_cpu_pct",
        "client_cpu_pct",
        "machine_pct",
    ]
    emit("propagation_bench", rows, columns, meta)
    if idle is None:
        return
    emit(
        "propagation_bench.idle",
        [idle],
        [
            "connections",
            "opened",
            "failed",
            "gateway_subscriptions",
            "rss_before_kib",
            "rss_held_kib",
            "rss_after_close_kib",
            "subscriptions_after_close",
            "kib_per_conn",
            "target",
            "meets",
        ],
        {"what": "gateway RSS (VmRSS) with idle WebSocket subscribers, one channel each"},
    )


def _check_pool(pool: SubscriberPool, meta: dict[str, Any], name: str = "") -> None:
    log(f"    {pool.ready}/{pool.count} subscribed in {pool.open_seconds:.1f} s")
    if pool.failed:
        log(f"    {pool.failed} failed: {pool.failures}")
        key = f"{_slug(name)}_{pool.count}" if name else str(pool.count)
        meta.setdefault("subscribe_failures", {})[key] = pool.failures
    if not pool.ready:
        raise RuntimeError(f"no subscriber could connect: {pool.failures}")


def _kill_children() -> None:
    for pid in list(_children):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
        _children.discard(pid)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests.propagation_bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="small and short (< 90 s)")
    parser.add_argument("--keep-dir", action="store_true", help="keep the temp dir (logs)")
    parser.add_argument(
        "--reference-only",
        action="store_true",
        help="run only the floor (a) and the bare reference (r), not the gateway's phases",
    )
    parser.add_argument(
        "--reference-processes",
        type=int,
        default=1,
        metavar="N",
        help="also measure the bare pipeline as N processes on one port that share only "
        "the log (2 to 16; 1, the default, adds nothing): what splitting the gateway "
        "that way could give here at best",
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    add_settings_option(parser)
    args = parser.parse_args(argv)
    if args.worker:
        return _worker_entry(args.worker)
    if not 1 <= args.reference_processes <= 16:
        parser.error(f"--reference-processes must be 1 to 16, not {args.reference_processes}")
    plan = QUICK if args.quick else DEFAULT
    workdir = Path(tempfile.mkdtemp(prefix="memsync-prop-"))
    log(f"working in {workdir}")
    try:
        return run_main(
            lambda: run_bench(
                plan,
                workdir,
                settings_env(args.set),
                only_reference=args.reference_only,
                reference_processes=args.reference_processes,
            )
        )
    finally:
        _kill_children()
        if args.keep_dir:
            log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
