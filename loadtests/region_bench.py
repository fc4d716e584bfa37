"""Cross-region benchmark: a write in one region until a subscriber in another has it.

    python -m loadtests.region_bench [--quick] [--keep-dir]

Runs ``memsync up --regions us-east,eu-west`` (two brokers, two gateway
processes, the fault proxy and two mirror links, each through its proxy) in
a temporary directory and measures, in one run:

0. **idle cluster** — the CPU each process of the idle cluster takes (summed
   per kind: brokers, gateways, store processes, the runner with the links
   and the fault proxy) before any phase: on the bundled broker every log
   reader polls every fetch wait, so this is what the phases do not have;
a. **floor** — raw produce → mirror → consume: a producer appends to a
   scratch log on us-east's broker, a mirror link (the product's, placed as
   ``memsync up`` places links: next to its source, producing to eu-west's
   broker through a proxy of its own on the same fault proxy) copies it,
   a raw reader there consumes it; 500 messages/s, each carrying its send
   time. Measured without and with the 50 ms latency toxic on that proxy,
   each time beside its own reference: the same path in raw aiokafka (a
   consumer and a producer relaying each fetch through a proxy of their
   own, no segments, headers, commits or ordering gate), so what the link
   itself costs shows apart from what the machine costs;
b. **propagation** — ``POST /v1/memories`` to us-east open loop at 500
   writes/s (fixed timetable) while one WebSocket subscriber in eu-west
   (eager, ``user:u1:memories``) receives every event: latency from the
   write request being *sent* (its time travels in the content) to the
   subscriber reading it. Without toxics, then with a 50 ms ``latency``
   toxic (downstream) on the us-east→eu-west link's proxy;
c. **convergence after a partition** — every proxy between the regions is
   disabled (both links and both anti-entropy paths); both regions take
   writes for 30 s (10,000 in all); then the proxies are enabled, and the
   time until each region's subscriber has received every write the other
   region took is the convergence time.

One clock on one machine, so send and receive times compare directly. The
machine is shared by everything (brokers, gateways, links, proxy, client):
figures are pessimistic for a real deployment and noisy; compare against
the floor of the same run. ``--quick`` (< 90 s) shortens every phase.
Progress on stderr; tables and JSON on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from gateway.logs import configure_logging
from loadtests.gateway_bench import log, open_loop, run_main, scratch_topic
from loadtests.http1 import Http1Client
from loadtests.report import (
    CpuMeter,
    add_settings_option,
    command_line,
    descendants,
    emit,
    settings_env,
    summarize,
)
from replication.log import KafkaEventLog, OutgoingRecord, route_client
from replication.log_reader import KafkaLogReader
from replication.mirror import MirrorLink

__all__ = ["Plan", "main"]

USER = "u1"
CHANNEL = f"user:{USER}:memories"
REGIONS = ("us-east", "eu-west")
LINK = "us-east->eu-west"
TARGET_P99_MS = 60.0
TARGET_TOXIC_P99_MS = 120.0
TARGET_CONVERGE_S = 5.0
LATENCY_TOXIC = {"name": "wan", "type": "latency", "stream": "downstream",
                 "attributes": {"latency": 50, "jitter": 0}}  # fmt: skip
PAD = "x" * 200


@dataclass(frozen=True)
class Plan:
    """How long and how fast each phase runs."""

    rate: float = 500.0
    seconds: float = 20.0
    partition_s: float = 30.0
    partition_events: int = 10_000
    warmup_s: float = 3.0
    idle_s: float = 10.0


DEFAULT = Plan()
QUICK = Plan(seconds=8.0, partition_s=10.0, partition_events=3_000, warmup_s=2.0, idle_s=5.0)


class Cluster:
    """``memsync up`` as a subprocess (its own session) in ``workdir``."""

    def __init__(self, workdir: Path, settings: dict[str, str] | None = None) -> None:
        self.workdir = workdir
        self.settings = settings or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.info: dict[str, Any] = {}

    async def __aenter__(self) -> Cluster:
        from deploy.tansu import free_port, free_port_run

        env = {k: v for k, v in os.environ.items() if not k.startswith("MEMSYNC_")}
        env.update({"MEMSYNC_AGENT_RATE": "100000", "MEMSYNC_AGENT_BURST": "100000",
                    "MEMSYNC_TENANT_RATE": "100000", "MEMSYNC_TENANT_BURST": "100000"})  # fmt: skip
        env.update(self.settings)  # memsync up hands MEMSYNC_* settings to every gateway
        base = free_port_run(len(REGIONS))
        out = (self.workdir / "up.out").open("wb")
        self.proc = subprocess.Popen(  # noqa: S603, ASYNC220 - our own CLI, started once
            [sys.executable, "-m", "gateway.cli", "up", "--regions", ",".join(REGIONS),
             "--data-dir", str(self.workdir / "data"), "--base-port", str(base),
             "--toxiproxy-port", str(free_port()), "--insecure-dev"],
            stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )  # fmt: skip
        out.close()
        cluster_file = self.workdir / "data" / "cluster.json"
        deadline = time.monotonic() + 120
        while not cluster_file.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = (self.workdir / "up.out").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"memsync up failed:\n{tail}")
            await asyncio.sleep(0.1)
        self.info = json.loads(cluster_file.read_text())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                await asyncio.to_thread(self.proc.wait, 60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)

    def url(self, region: str) -> str:
        return next(r["url"] for r in self.info["regions"] if r["name"] == region)

    def kafka(self, region: str) -> str:
        return next(r["kafka"] for r in self.info["regions"] if r["name"] == region)

    @property
    def api(self) -> str:
        return f"http://{self.info['toxiproxy']}"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.info['token']}"}


class Subscriber:
    """One eager WebSocket subscription; notes when each tagged write arrived."""

    def __init__(self, http: aiohttp.ClientSession, cluster: Cluster, region: str) -> None:
        self._http = http
        self._url = cluster.url(region)
        self._headers = cluster.headers
        self.arrivals: dict[str, dict[int, tuple[float, float]]] = {}  # tag → seq → (sent, got)
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run())
        await asyncio.wait_for(self._ready.wait(), 30)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def count(self, tag: str) -> int:
        return len(self.arrivals.get(tag, {}))

    def latencies_ms(self, tag: str) -> list[float]:
        return [(got - sent) * 1000 for sent, got in self.arrivals.get(tag, {}).values()]

    async def _run(self) -> None:
        async with self._http.ws_connect(
            f"{self._url}/v1/subscribe", headers=self._headers, compress=0, max_msg_size=0
        ) as ws:
            await ws.send_json({"op": "subscribe", "channels": [CHANNEL], "mode": "eager"})
            async for msg in ws:
                now = time.time()
                data = json.loads(msg.data)
                op = data.get("op")
                if op == "subscribed":
                    self._ready.set()
                events = [data["event"]] if op == "event" else data.get("events", [])
                for event in events:
                    self._note(event["memory"].get("content", ""), now)

    def _note(self, content: str, now: float) -> None:
        if not content.startswith("RB|"):
            return
        _, tag, seq, sent, _ = content.split("|", 4)
        self.arrivals.setdefault(tag, {}).setdefault(int(seq), (int(sent) / 1e6, now))


class Writer:
    """``POST /v1/memories`` for user ``u1`` in one region."""

    def __init__(self, http: aiohttp.ClientSession, cluster: Cluster, region: str) -> None:
        self._http = Http1Client.for_url(cluster.url(region), limit=256)
        self._head = self._http.head({**cluster.headers, "Content-Type": "application/json"})
        self.statuses: dict[int, int] = {}
        self.acked_ms: dict[str, list[float]] = {}  # tag → write latencies (sent → 2xx)

    async def write(self, tag: str, seq: int) -> int:
        sent = time.time()
        content = f"RB|{tag}|{seq}|{int(sent * 1e6)}|{PAD}"
        body = {"id": f"rb-{tag}-{seq}", "user_id": USER, "kind": "fact", "content": content}
        try:
            reply = await self._http.request(
                "POST", "/v1/memories", json.dumps(body).encode(), self._head
            )
            status = reply.status
            if status < 300:
                self.acked_ms.setdefault(tag, []).append((time.time() - sent) * 1000)
        except (OSError, TimeoutError):  # HttpError is an OSError
            status = 0
        self.statuses[status] = self.statuses.get(status, 0) + 1
        return status

    async def close(self) -> None:
        """Close the write connections."""
        await self._http.close()


async def _toxics(http: aiohttp.ClientSession, api: str, proxy: str, add: bool) -> None:
    if add:
        async with http.post(f"{api}/proxies/{proxy}/toxics", json=LATENCY_TOXIC) as resp:
            resp.raise_for_status()
    else:
        async with http.delete(f"{api}/proxies/{proxy}/toxics/wan") as resp:
            resp.raise_for_status()


async def _wait_count(sub: Subscriber, tag: str, expected: int, within: float) -> float:
    """Seconds until ``sub`` has ``expected`` writes of ``tag`` (polled every 10 ms)."""
    started = time.monotonic()
    while sub.count(tag) < expected and time.monotonic() - started < within:  # noqa: ASYNC110
        await asyncio.sleep(0.01)
    return time.monotonic() - started


# -- phases ---------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def _proxy_to_eu_west(
    http: aiohttp.ClientSession, cluster: Cluster, name: str, toxic: bool
) -> AsyncIterator[str]:
    """A proxy of its own to eu-west's broker on the cluster's fault proxy; its address."""
    async with http.post(
        f"{cluster.api}/proxies",
        json={"name": name, "listen": "127.0.0.1:0", "upstream": cluster.kafka("eu-west")},
    ) as resp:
        resp.raise_for_status()
        listen: str = (await resp.json())["listen"]
    try:
        if toxic:
            await _toxics(http, cluster.api, name, add=True)
        yield listen
    finally:
        async with http.delete(f"{cluster.api}/proxies/{name}"):
            pass


async def _drive(
    plan: Plan,
    send: Callable[[int], Awaitable[None]],
    sent: dict[int, float],
    got: dict[int, float],
) -> None:
    """Messages ``0…`` at ``plan.rate`` for ``plan.seconds`` (send times noted), then
    wait up to 30 s until ``got`` has them all."""

    async def op(i: int) -> int:
        sent[i] = time.time()
        await send(i)
        return 200

    count = int(plan.rate * plan.seconds)
    await open_loop(plan.rate, count, op, lambda *_: None, workers=64)
    deadline = time.monotonic() + 30
    while len(got) < count and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.05)


def _floor_row(what: str, toxic: bool, plan: Plan, sent: dict[int, float],
               got: dict[int, float]) -> dict[str, Any]:  # fmt: skip
    warm = int(plan.rate * plan.warmup_s)
    lat = [(got[i] - sent[i]) * 1000 for i in sent if i in got and i >= warm]
    return {"phase": f"{what}{' +50ms toxic' if toxic else ''}",
            **summarize(lat), "sent": len(sent), "received": len(got)}  # fmt: skip


async def measure_floor(
    http: aiohttp.ClientSession, cluster: Cluster, plan: Plan, toxic: bool
) -> dict[str, Any]:
    """Raw produce (us-east) → mirror link through a proxy → raw consume (eu-west)."""
    name = f"floor-{'toxic' if toxic else 'plain'}"
    async with _proxy_to_eu_west(http, cluster, name, toxic) as listen:
        return await _floor_through(listen, cluster, plan, name, toxic)


async def _floor_through(
    listen: str, cluster: Cluster, plan: Plan, name: str, toxic: bool
) -> dict[str, Any]:
    log_name = f"bench.{name}"
    producer = KafkaEventLog(cluster.kafka("us-east"), log=log_name, partitions=8)
    link = MirrorLink(  # placed as memsync up places its links: next to the source
        source="floor", target="eu-west", source_bootstrap=cluster.kafka("us-east"),
        target_bootstrap=listen, target_routes={"*": listen}, log=log_name, partitions=8,
    )  # fmt: skip
    reader = KafkaLogReader(cluster.kafka("eu-west"), group_id=f"bench-{name}",
                            log=f"floor.{log_name}")  # fmt: skip
    await producer.start()
    link_task = asyncio.create_task(link.run())
    got: dict[int, float] = {}
    sent: dict[int, float] = {}

    async def consume() -> None:
        await reader.start()
        while True:
            for r in await reader.read(500, 100):
                got.setdefault(int(r.key or b"0"), time.time())

    consumer = asyncio.create_task(consume())
    try:
        await asyncio.sleep(1.0)  # segments exist, link assigned

        async def send(i: int) -> None:
            await producer.append_many([OutgoingRecord(str(i).encode(), PAD.encode())])

        await _drive(plan, send, sent, got)
    finally:
        for task in (consumer, link_task):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await reader.stop()
        await producer.stop()
    return _floor_row("floor: produce→mirror→consume", toxic, plan, sent, got)


async def measure_bare_relay(
    http: aiohttp.ClientSession, cluster: Cluster, plan: Plan, toxic: bool
) -> dict[str, Any]:
    """The floor's own reference: the same path in raw aiokafka, no product code.

    A producer (``acks="all"``) appends to an 8-partition scratch topic on
    us-east's broker; a relay in this process — one consumer
    (``fetch_max_wait_ms=5``, as the link's reader) and one producer to
    eu-west's broker through a proxy of its own (``acks="all"``) — copies
    each fetch, sending it without waiting; a consumer on eu-west reads it.
    No segments, no headers, no offsets committed, no ordering gate: what
    the link costs beyond this is the product's.
    """
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

    name = f"bare-{'toxic' if toxic else 'plain'}"
    topic = await scratch_topic(cluster.kafka("us-east"), f"bench.{name}")
    await scratch_topic(cluster.kafka("eu-west"), "", name=topic)  # the same name there
    parts = [TopicPartition(topic, p) for p in range(8)]

    def consumer(bootstrap: str) -> AIOKafkaConsumer:
        c = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, fetch_max_wait_ms=5,
                             enable_auto_commit=False, auto_offset_reset="earliest")  # fmt: skip
        c.assign(parts)
        return c

    def producer(bootstrap: str) -> AIOKafkaProducer:
        return AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0,
                                enable_idempotence=False)  # fmt: skip

    async with _proxy_to_eu_west(http, cluster, name, toxic) as listen:
        source, relay_in = producer(cluster.kafka("us-east")), consumer(cluster.kafka("us-east"))
        relay_out, target = producer(listen), consumer(cluster.kafka("eu-west"))
        route_client(relay_out.client, {"*": listen})
        got: dict[int, float] = {}
        sent: dict[int, float] = {}

        async def relay() -> None:
            while True:
                batches = await relay_in.getmany(timeout_ms=100)
                for tp, records in batches.items():
                    for r in records:
                        await relay_out.send(topic, r.value, key=r.key, partition=tp.partition)

        async def consume() -> None:
            while True:
                for records in (await target.getmany(timeout_ms=100)).values():
                    now = time.time()
                    for r in records:
                        got.setdefault(int(r.key or b"0"), now)

        clients = (source, relay_in, relay_out, target)
        for c in clients:
            await c.start()
        tasks = [asyncio.create_task(relay()), asyncio.create_task(consume())]
        try:
            await asyncio.sleep(1.0)

            async def send(i: int) -> None:
                await source.send_and_wait(topic, PAD.encode(), key=str(i).encode())

            await _drive(plan, send, sent, got)
        finally:
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            for c in clients:
                await c.stop()
    return _floor_row("reference: bare aiokafka relay", toxic, plan, sent, got)


async def measure_propagation(
    http: aiohttp.ClientSession, cluster: Cluster, plan: Plan, sub: Subscriber, toxic: bool
) -> dict[str, Any]:
    """HTTP write in us-east → WebSocket subscriber in eu-west, 500 writes/s."""
    tag = "toxic" if toxic else "plain"
    if toxic:
        await _toxics(http, cluster.api, LINK, add=True)
    writer = Writer(http, cluster, "us-east")
    count = int(plan.rate * plan.seconds)
    try:
        await open_loop(plan.rate, count, lambda i: writer.write(tag, i), lambda *_: None,
                        workers=64)  # fmt: skip
        acked = writer.statuses.get(201, 0)
        await _wait_count(sub, tag, acked, 30)
    finally:
        await writer.close()
        if toxic:
            await _toxics(http, cluster.api, LINK, add=False)
    warm = int(plan.rate * plan.warmup_s)
    lat = [ms for seq, ms in zip(sub.arrivals.get(tag, {}), sub.latencies_ms(tag), strict=True)
           if seq >= warm]  # fmt: skip
    target = TARGET_TOXIC_P99_MS if toxic else TARGET_P99_MS
    row = summarize(lat)
    acks = summarize(writer.acked_ms.get(tag, [])[warm:])
    log(f"  of which the write in us-east (sent → 2xx): median {acks['median']:.1f} ms, "
        f"p99 {acks['p99']:.1f} ms")  # fmt: skip
    return {"phase": f"write us-east → subscriber eu-west{' +50ms toxic' if toxic else ''}",
            **row, "sent": count, "received": sub.count(tag), "acked": acked,
            "target_p99": target,
            "meets": ("yes" if row["p99"] <= target else "NO")
            if plan.rate >= DEFAULT.rate else "(target at 500/s)",
            "write_ack_median": acks["median"], "write_ack_p99": acks["p99"]}  # fmt: skip


async def measure_partition(
    http: aiohttp.ClientSession, cluster: Cluster, plan: Plan, subs: dict[str, Subscriber]
) -> dict[str, Any]:
    """Both sides write through a partition; time to converge after the heal."""
    names = [f"{a}->{b}{s}" for a in REGIONS for b in REGIONS if a != b for s in ("", ".http")]
    for name in names:
        async with http.post(f"{cluster.api}/proxies/{name}", json={"enabled": False}) as resp:
            resp.raise_for_status()
    per_side = plan.partition_events // 2
    rate = per_side / plan.partition_s
    writers = {r: Writer(http, cluster, r) for r in REGIONS}
    log(f"partition: {per_side} writes on each side at {rate:.0f}/s for {plan.partition_s:.0f} s")
    await asyncio.gather(*(
        open_loop(rate, per_side, lambda i, r=r: writers[r].write(f"part-{r}", i),
                  lambda *_: None, workers=32)
        for r in REGIONS
    ))  # fmt: skip
    for w in writers.values():
        await w.close()
    acked = {r: writers[r].statuses.get(201, 0) for r in REGIONS}
    other = {"us-east": "eu-west", "eu-west": "us-east"}
    leaked = {r: subs[r].count(f"part-{other[r]}") for r in REGIONS}
    healed = time.monotonic()
    async with http.post(f"{cluster.api}/reset") as resp:
        resp.raise_for_status()
    waits = await asyncio.gather(*(
        _wait_count(subs[r], f"part-{other[r]}", acked[other[r]], 120) for r in REGIONS
    ))  # fmt: skip
    converge = max(waits)
    # When the first write of the other side arrived, and how the rest followed:
    # the link's reconnection vs the catch-up itself.
    heal_wall = time.time() - (time.monotonic() - healed)
    first = {}
    halfway = {}
    for r in REGIONS:
        got = sorted(t for _sent, t in subs[r].arrivals.get(f"part-{other[r]}", {}).values())
        if got:
            first[r] = round(got[0] - heal_wall, 3)
            halfway[r] = round(got[len(got) // 2] - heal_wall, 3)
    log(f"after the heal: first delivery {first} s, half delivered {halfway} s, all {waits}")
    return {
        "phase": f"converge after a {plan.partition_s:.0f} s partition",
        "backlog_events": sum(acked.values()),
        "seen_across_during_partition": sum(leaked.values()),
        "converged_s": round(converge, 3),
        "per_region_s": {r: round(w, 3) for r, w in zip(REGIONS, waits, strict=True)},
        "first_delivery_s": first,
        "half_delivered_s": halfway,
        "received": {r: subs[r].count(f"part-{other[r]}") for r in REGIONS},
        "since_heal_s": round(time.monotonic() - healed, 3),
        "target_s": TARGET_CONVERGE_S,
        "meets": "yes" if converge <= TARGET_CONVERGE_S else "NO",
    }


_KINDS = (  # command-line fragment → what the process is
    ("tansu broker", "broker"),
    ("gateway.cli gateway", "gateway"),
    ("store_worker", "store process"),
    ("gateway.cli up", "runner (links, fault proxy)"),
)


async def measure_idle(cluster: Cluster, seconds: float) -> list[dict[str, Any]]:
    """CPU (% of one core) of every process of the idle cluster, summed per kind.

    On the bundled broker every log reader polls every fetch wait even when
    nothing is written, so an idle cluster is not free: what it takes is
    what the other phases do not have.
    """
    assert cluster.proc is not None  # noqa: S101
    pids = descendants(cluster.proc.pid)
    meter = CpuMeter({str(p): p for p in pids})
    kinds = {str(p): next((k for frag, k in _KINDS if frag in command_line(p)), "other")
             for p in pids}  # fmt: skip
    await asyncio.sleep(seconds)
    rows: dict[str, dict[str, Any]] = {}
    for key, pct in meter.pct().items():
        row = rows.setdefault(kinds[key], {"process": kinds[key], "count": 0, "cpu_pct": 0.0})
        row["count"] += 1
        row["cpu_pct"] = round(row["cpu_pct"] + pct, 1)
    out = sorted(rows.values(), key=lambda r: -r["cpu_pct"])
    total = round(sum(r["cpu_pct"] for r in out), 1)
    out.append({"process": "all", "count": len(pids), "cpu_pct": total,
                "of_machine_pct": round(total / (os.cpu_count() or 1), 1)})  # fmt: skip
    return out


async def run_bench(
    plan: Plan, workdir: Path, phases: str = "all", settings: dict[str, str] | None = None
) -> int:
    log("starting memsync up --regions us-east,eu-west")
    async with (
        Cluster(workdir, settings) as cluster,
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256)) as http,
    ):
        log(f"cluster up: {cluster.info['regions']}")
        subs = {r: Subscriber(http, cluster, r) for r in REGIONS}
        for sub in subs.values():
            await sub.start()
        await asyncio.sleep(2.0)  # links assigned, heartbeats flowing
        log(f"idle cluster: CPU of its processes over {plan.idle_s:g} s")
        idle = await measure_idle(cluster, plan.idle_s)
        emit(
            "idle cluster CPU (% of one core)",
            idle,
            ["process", "count", "cpu_pct", "of_machine_pct"],
            meta={"seconds": plan.idle_s, "cores": os.cpu_count()},
        )
        rows: list[dict[str, Any]] = []
        for toxic in (False, True) if phases in ("all", "propagation") else ():
            log(f"reference: a bare aiokafka relay{' with the 50 ms toxic' if toxic else ''}")
            rows.append(await measure_bare_relay(http, cluster, plan, toxic))
            log(f"floor{' with the 50 ms toxic' if toxic else ''}")
            rows.append(await measure_floor(http, cluster, plan, toxic))
            log(f"propagation{' with the 50 ms toxic' if toxic else ''} at {plan.rate:.0f}/s")
            rows.append(await measure_propagation(http, cluster, plan, subs["eu-west"], toxic))
        if rows:
            emit(
                "cross-region propagation (ms)",
                rows,
                ["phase", "count", "median", "p90", "p99", "max", "received", "target_p99",
                 "meets"],
                meta={"plan": plan.__dict__, "regions": REGIONS, "settings": settings or {}},
            )  # fmt: skip
        if phases in ("all", "convergence"):
            part = await measure_partition(http, cluster, plan, subs)
            emit(
                "convergence after a partition",
                [part],
                ["phase", "backlog_events", "seen_across_during_partition", "converged_s",
                 "first_delivery_s", "half_delivered_s", "target_s", "meets"],
                meta={"detail": part},
            )  # fmt: skip
        async with http.get(f"{cluster.url('eu-west')}/v1/replication",
                            headers=cluster.headers) as resp:  # fmt: skip
            log(f"eu-west /v1/replication: {await resp.text()}")
        for sub in subs.values():
            await sub.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests.region_bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="short phases (< 90 s in all)")
    parser.add_argument("--keep-dir", action="store_true", help="keep the temp dir (logs)")
    parser.add_argument(
        "--phases",
        choices=("all", "propagation", "convergence"),
        default="all",
        help="run only the floor and propagation phases, or only the partition (default: all)",
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=DEFAULT.rate,
        help="writes/s of the floor and propagation phases (default: %(default)g, the rate "
        "the targets are set at; lower it to measure latency on a machine the two-region "
        "cluster saturates)",
    )
    add_settings_option(parser)
    args = parser.parse_args(argv)
    if args.rate <= 0:
        parser.error("--rate must be positive")
    plan = dataclasses.replace(QUICK if args.quick else DEFAULT, rate=args.rate)
    configure_logging("warning")  # the in-process floor link logs to stderr, not the tables
    workdir = Path(tempfile.mkdtemp(prefix="memsync-region-bench-"))
    log(f"working in {workdir}")
    try:
        return run_main(lambda: run_bench(plan, workdir, args.phases, settings_env(args.set)))
    finally:
        if not args.keep_dir:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
