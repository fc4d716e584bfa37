"""The topology of a local multi-region cluster, and what runs beside the gateways.

Shared by ``memsync up`` (:mod:`deploy.runner`) and the cluster tests, so the
tests exercise the topology users run:

- per region a broker and a gateway (HTTP on ``base_port + i``);
- per directed pair ``source->target`` a **mirror link** (run by the caller,
  next to the source: it consumes locally and produces across the WAN, see
  :mod:`replication.mirror`) whose connections to the *target* broker all go
  through the fault proxy named ``source->target``: the link's producer
  bootstraps at the proxy's listen address and its clients translate the
  broker's advertised address to the same proxy
  (:func:`replication.log.route_client`), so no connection bypasses it;
- per directed pair a second proxy ``source->target.http`` in front of the
  source's gateway, which the target's anti-entropy calls: cutting both
  proxies of a pair in both directions is a full partition of two regions
  (:func:`partition_names`).

The fault proxies live in one Toxiproxy-compatible server
(:mod:`chaos.toxiproxy_api`), so ``toxiproxy-python`` (or ``curl``) drives
every experiment.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from chaos.collection import ProxyCollection
from chaos.proxy import ProxyConfig
from replication.mirror import MirrorLink

__all__ = [
    "ClusterPlan",
    "LinkPlan",
    "RegionPlan",
    "create_proxies",
    "mirror_links",
    "partition_names",
    "plan_cluster",
]


@dataclass(frozen=True)
class RegionPlan:
    """One region: its name, gateway HTTP port and broker address."""

    name: str
    http_port: int
    kafka: str

    @property
    def url(self) -> str:
        """The gateway's base URL."""
        return f"http://127.0.0.1:{self.http_port}"


@dataclass(frozen=True)
class LinkPlan:
    """One directed link and its two fault proxies."""

    source: str
    target: str
    source_kafka: str
    target_kafka: str
    source_url: str
    kafka_listen: str  # the proxy the link reaches the target broker through
    http_listen: str  # the proxy the target's anti-entropy reaches the source through

    @property
    def name(self) -> str:
        """``source->target``: the link's and its Kafka proxy's name."""
        return f"{self.source}->{self.target}"

    @property
    def http_name(self) -> str:
        """The anti-entropy proxy's name."""
        return f"{self.name}.http"


@dataclass(frozen=True)
class ClusterPlan:
    """Every region and every directed link of a full mesh."""

    regions: tuple[RegionPlan, ...]
    links: tuple[LinkPlan, ...]

    def region(self, name: str) -> RegionPlan:
        """The region called ``name``."""
        for r in self.regions:
            if r.name == name:
                return r
        raise KeyError(name)

    def incoming(self, target: str) -> list[LinkPlan]:
        """The links into ``target``."""
        return [link for link in self.links if link.target == target]

    def peers_setting(self, region: str) -> str:
        """``MEMSYNC_PEERS`` for ``region``: each peer, reached through its proxy."""
        return ",".join(f"{x.source}=http://{x.http_listen}" for x in self.incoming(region))

    def proxies(self) -> dict[str, str]:
        """``cluster.json``'s ``proxies``: link name → its Kafka proxy's name."""
        return {link.name: link.name for link in self.links}


def plan_cluster(
    regions: Iterable[tuple[str, int, str]], proxy_ports: Iterable[int] | None = None
) -> ClusterPlan:
    """A full mesh over ``(name, http_port, kafka)`` regions.

    ``proxy_ports`` supplies two listen ports per directed link; without it
    every proxy listens on a port the system picks (:func:`create_proxies`
    fills them in), which never collides with anything.
    """
    rs = tuple(RegionPlan(n, port, kafka) for n, port, kafka in regions)
    names = [r.name for r in rs]
    if len(set(names)) != len(names):
        raise ValueError(f"region names must be unique: {', '.join(names)}")
    ports = iter(proxy_ports) if proxy_ports is not None else _zeros()
    links = []
    for source in rs:
        for target in rs:
            if source.name == target.name:
                continue
            try:
                kafka_port, http_port = next(ports), next(ports)
            except StopIteration:
                raise ValueError("not enough proxy ports for every link") from None
            links.append(
                LinkPlan(
                    source=source.name,
                    target=target.name,
                    source_kafka=source.kafka,
                    target_kafka=target.kafka,
                    source_url=source.url,
                    kafka_listen=f"127.0.0.1:{kafka_port}",
                    http_listen=f"127.0.0.1:{http_port}",
                )
            )
    return ClusterPlan(rs, tuple(links))


def _zeros() -> Iterator[int]:
    while True:
        yield 0


async def create_proxies(collection: ProxyCollection, plan: ClusterPlan) -> ClusterPlan:
    """Create (or replace) both fault proxies of every link; the plan with their addresses."""
    configs = []
    for link in plan.links:
        configs.append(ProxyConfig(link.name, link.target_kafka, link.kafka_listen))
        configs.append(
            ProxyConfig(link.http_name, link.source_url.removeprefix("http://"), link.http_listen)
        )
    proxies = {p.name: p for p in await collection.populate(configs)}
    links = tuple(
        dataclasses.replace(
            link,
            kafka_listen=proxies[link.name].listen,
            http_listen=proxies[link.http_name].listen,
        )
        for link in plan.links
    )
    return dataclasses.replace(plan, links=links)


def mirror_links(
    plan: ClusterPlan,
    *,
    partitions: int,
    segment_ms: int,
    grace_ms: int,
    fetch_max_wait_ms: int = 5,
    request_timeout_ms: int = 3_000,
) -> list[MirrorLink]:
    """One mirror link per directed pair, each through its proxy."""
    return [
        MirrorLink(
            source=link.source,
            target=link.target,
            source_bootstrap=link.source_kafka,
            target_bootstrap=link.kafka_listen,
            target_routes={"*": link.kafka_listen},
            partitions=partitions,
            segment_ms=segment_ms,
            grace_ms=grace_ms,
            fetch_max_wait_ms=fetch_max_wait_ms,
            request_timeout_ms=request_timeout_ms,
        )
        for link in plan.links
    ]


def partition_names(plan: ClusterPlan, a: str, b: str) -> list[str]:
    """Every proxy between regions ``a`` and ``b`` (both directions, log and HTTP)."""
    return [
        name
        for link in plan.links
        if {link.source, link.target} == {a, b}
        for name in (link.name, link.http_name)
    ]
