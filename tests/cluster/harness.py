"""Three regions in one process: real brokers, real stores, links through the proxy.

The topology is :mod:`deploy.cluster`'s, as ``memsync up`` runs it; the
gateways run in-process (aiohttp test servers on chosen ports) so tests can
restart them and look at their runtimes.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient, TestServer

from chaos.toxiproxy_api import ToxiproxyServer
from deploy.cluster import ClusterPlan, create_proxies, mirror_links, partition_names, plan_cluster
from deploy.tansu import TansuBroker, free_port_run
from gateway.app import create_app
from gateway.keys import RUNTIME
from gateway.runtime import Runtime
from gateway.settings import Peer, ReplicationSettings, parse_peers
from replication.mirror import MirrorLink
from tests.integration.harness import Gateway, eventually, settings_for, token

__all__ = ["Cluster", "Region", "eventually", "token"]

SEGMENT_MS = 2_000
GRACE_MS = 500
PARTITIONS = 4


@dataclasses.dataclass
class Region(Gateway):
    """One region's gateway (its broker is ``broker``), on a fixed HTTP port."""

    http_port: int = 0
    peers: tuple[Peer, ...] = ()
    antientropy_interval: float = 1.0

    async def start(self) -> Region:
        """Start (or restart) the gateway on the same data directory and port."""
        settings = settings_for(self.data_dir, self.broker.bootstrap, self.region, **self.limits)
        settings = settings.replace(
            kafka=dataclasses.replace(settings.kafka, partitions=PARTITIONS),
            replication=ReplicationSettings(
                peers=self.peers,
                heartbeat_ms=250,
                antientropy_interval=self.antientropy_interval,
                mirror_hold_ms=None,
            ),
        )
        self.client = TestClient(TestServer(create_app(settings), port=self.http_port))
        await self.client.start_server()
        return self

    @property
    def runtime(self) -> Runtime:
        assert self.client is not None
        return self.client.app[RUNTIME]  # type: ignore[index]

    async def state(self, memory_id: str, tenant: str = "acme") -> Any:
        """The memory as this region serves it (404 → None)."""
        resp, body = await self.request("GET", f"/v1/memories/{memory_id}", token_=token(tenant))
        return body if resp.status == 200 else None


@dataclasses.dataclass
class Cluster:
    """Brokers, gateways, fault proxies and mirror links of a local cluster."""

    root: Path
    names: tuple[str, ...] = ("us-east", "eu-west", "ap-south")
    antientropy_interval: float = 1.0
    regions: dict[str, Region] = dataclasses.field(default_factory=dict)
    plan: ClusterPlan | None = None
    proxy: ToxiproxyServer | None = None
    links: list[MirrorLink] = dataclasses.field(default_factory=list)
    brokers: dict[str, TansuBroker] = dataclasses.field(default_factory=dict)
    _tasks: list[asyncio.Task[None]] = dataclasses.field(default_factory=list)

    async def start(self) -> Cluster:
        """Start everything; returns once every gateway answers (stops all if one fails)."""
        try:
            return await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> Cluster:
        self.brokers = {
            n: TansuBroker(cluster_id=f"memsync-{n}", log_path=self.root / n / "broker.log")
            for n in self.names
        }
        brokers = self.brokers
        await asyncio.gather(*(b.start() for b in brokers.values()))
        # Below the ephemeral range: no client connection can take one meanwhile.
        base = free_port_run(len(self.names))
        ports = {n: base + i for i, n in enumerate(self.names)}
        self.proxy = ToxiproxyServer(seed=7)
        await self.proxy.start()
        self.plan = await create_proxies(
            self.proxy.collection,
            plan_cluster((n, ports[n], brokers[n].bootstrap) for n in self.names),
        )
        for n in self.names:
            self.regions[n] = Region(
                data_dir=self.root / n,
                broker=brokers[n],
                region=n,
                http_port=ports[n],
                peers=parse_peers(self.plan.peers_setting(n)),
                antientropy_interval=self.antientropy_interval,
            )
        await asyncio.gather(*(r.start() for r in self.regions.values()))
        self.start_links()
        return self

    def start_links(self) -> None:
        """Start a mirror link per directed pair."""
        assert self.plan is not None
        self.links = mirror_links(
            self.plan, partitions=PARTITIONS, segment_ms=SEGMENT_MS, grace_ms=GRACE_MS,
            request_timeout_ms=1_500,
        )  # fmt: skip
        self._tasks = [asyncio.create_task(link.run(), name=link.name) for link in self.links]

    async def stop_links(self) -> None:
        """Stop every mirror link."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    async def stop(self) -> None:
        """Stop links, gateways, the proxy and the brokers."""
        await self.stop_links()
        for r in self.regions.values():
            await r.stop()
        if self.proxy is not None:
            await self.proxy.stop()
        for broker in self.brokers.values():
            await broker.stop(grace=1.0)

    async def partition(self, a: str, b: str, *, enabled: bool = False) -> None:
        """Cut (or heal, ``enabled=True``) every proxy between regions ``a`` and ``b``."""
        assert self.proxy is not None and self.plan is not None
        for name in partition_names(self.plan, a, b):
            await self.proxy.collection.update(name, enabled=enabled)

    async def converged(self, memory_ids: list[str], within: float = 30.0) -> list[Any]:
        """Wait until every region serves identical states of these memories."""
        states: list[Any] = []

        async def same() -> bool:
            nonlocal states
            states = [
                [_comparable(await r.state(m)) for m in memory_ids] for r in self.regions.values()
            ]
            return all(s == states[0] for s in states) and all(x is not None for x in states[0])

        await eventually(same, within=within, what=f"convergence of {len(memory_ids)} memories")
        return states[0]


def _comparable(body: Any) -> Any:
    """A served memory minus what legitimately differs per region (version tokens)."""
    if body is None:
        return None
    return {k: v for k, v in body.items() if k not in ("version",)}
