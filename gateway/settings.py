"""One frozen, typed settings object per process, built once.

``Settings.from_env(mapping)`` reads ``MEMSYNC_*`` variables (nothing else in
the code reads the environment); the CLI overrides fields with
``dataclasses.replace``. Every invalid value is reported with the variable's
name. Durations are seconds as floats unless the name says ``_ms``.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

__all__ = [
    "HttpSettings",
    "KafkaSettings",
    "Limits",
    "Peer",
    "ReplicationSettings",
    "Settings",
    "SettingsError",
    "StoreSettings",
]

T = TypeVar("T")
_REGION = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}$")


class SettingsError(ValueError):
    """A setting is missing or invalid; the message names the variable."""


@dataclass(frozen=True)
class KafkaSettings:
    """The regional event log."""

    bootstrap: str = "127.0.0.1:9092"
    log: str = "memsync.events"
    partitions: int = 8
    segment_ms: int = 10_000
    grace_ms: int = 2_000
    fetch_max_wait_ms: int = 5
    # The local log's fetch wait once it brought nothing for a second (its
    # events are this gateway's own, written through already); 0: never,
    # and never shorter than fetch_max_wait_ms. At most 100 (ms): what the
    # first record after a quiet second may wait more.
    quiet_fetch_wait_ms: int = 25
    request_timeout_ms: int = 3_000
    idempotent: bool = False
    # Consumer groups a segment waits for before deletion, besides this
    # region's applier (mirror links add theirs).
    extra_groups: tuple[str, ...] = ()


@dataclass(frozen=True)
class Peer:
    """Another region: its name and (for anti-entropy) its gateway's URL."""

    name: str
    url: str = ""


@dataclass(frozen=True)
class ReplicationSettings:
    """Links from the other regions, heartbeats and anti-entropy."""

    peers: tuple[Peer, ...] = ()
    heartbeat_ms: int = 1_000
    lag_alert_ms: int = 5_000
    # How long a segment of this region's log waits for a mirror link that
    # has not passed it; past that anti-entropy must repair (None: forever).
    mirror_hold_ms: int | None = 15 * 60 * 1000
    antientropy_interval: float = 5.0
    antientropy_batch: int = 500

    @property
    def peer_names(self) -> list[str]:
        """The other regions' names."""
        return [p.name for p in self.peers]


def parse_peers(text: str) -> tuple[Peer, ...]:
    """Peers from ``"eu-west=http://host:port,ap-south"`` (the URL is optional)."""
    peers = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        name, _, url = part.partition("=")
        name, url = name.strip(), url.strip()
        if not _REGION.match(name):
            raise ValueError(f"peer region {name!r}")
        if url and not url.startswith(("http://", "https://")):
            raise ValueError(f"peer URL {url!r}")
        peers.append(Peer(name, url.rstrip("/")))
    return tuple(peers)


@dataclass(frozen=True)
class StoreSettings:
    """The regional store."""

    backend: str = "edge-process"  # edge | edge-process | server
    url: str = ""  # Qdrant server URL when backend == server
    collection: str = "memsync"
    vector_dim: int = 384


@dataclass(frozen=True)
class HttpSettings:
    """The HTTP listener."""

    host: str = "127.0.0.1"
    port: int = 8700


@dataclass(frozen=True)
class Limits:
    """Every bound the gateway enforces."""

    max_body_bytes: int = 1024 * 1024
    cache_bytes: int = 64 * 1024 * 1024
    max_siblings: int = 32
    ryw_wait_ms: int = 2_000
    max_list_limit: int = 500
    max_search_limit: int = 100
    agent_rate: float = 2_000.0  # writes per second per agent
    agent_burst: float = 4_000.0
    tenant_rate: float = 20_000.0
    tenant_burst: float = 40_000.0
    outbox_max_events: int = 1_000_000
    apply_batch: int = 500
    apply_commit_ms: int = 100  # the most an applier's offset commits wait (one per batch at 0)
    # Own acknowledged writes waiting to be applied at once (write-through;
    # 0: off, they wait for the log's delivery like everything else).
    write_through_queue: int = 10_000
    journal_ack_interval: float = 1.0
    max_subscriptions: int = 20_000
    subscriber_soft_limit: int = 256  # queued messages before an eager one coalesces
    subscriber_hard_limit: int = 4_096  # coalesced memories before it is dropped
    history_max_events: int = 200_000
    ws_max_msg_bytes: int = 64 * 1024
    ws_heartbeat: float = 30.0
    stream_heartbeat: float = 15.0


@dataclass(frozen=True)
class Settings:
    """Everything one gateway process needs to know."""

    region: str = "local"
    data_dir: Path = Path("./memsync-data")
    secret: str = ""
    insecure_dev: bool = False
    token_ttl: float = 30 * 24 * 3600.0
    http: HttpSettings = field(default_factory=HttpSettings)
    kafka: KafkaSettings = field(default_factory=KafkaSettings)
    store: StoreSettings = field(default_factory=StoreSettings)
    limits: Limits = field(default_factory=Limits)
    replication: ReplicationSettings = field(default_factory=ReplicationSettings)
    log_level: str = "info"

    @property
    def secret_bytes(self) -> bytes:
        """The signing key for tokens (JWT and version/session tokens)."""
        return self.secret.encode()

    def validated(self) -> Settings:
        """This object, or :class:`SettingsError` naming what is wrong."""
        if not _REGION.match(self.region):
            raise SettingsError(
                f"MEMSYNC_REGION={self.region!r}: use lowercase letters, digits and '-' "
                "(at most 32 characters)"
            )
        if not self.secret and not self.insecure_dev:
            raise SettingsError(
                "MEMSYNC_SECRET is not set: set a secret of at least 32 characters "
                "(or pass --insecure-dev for a development cluster)"
            )
        if self.secret and len(self.secret) < 32 and not self.insecure_dev:
            raise SettingsError("MEMSYNC_SECRET must be at least 32 characters long")
        if self.store.backend not in ("edge", "edge-process", "server"):
            raise SettingsError(
                f"MEMSYNC_STORE_BACKEND={self.store.backend!r}: "
                "expected 'edge', 'edge-process' or 'server'"
            )
        if self.store.backend == "server" and not self.store.url:
            raise SettingsError("MEMSYNC_STORE_URL is required when MEMSYNC_STORE_BACKEND=server")
        if self.kafka.fetch_max_wait_ms < 1:
            raise SettingsError(
                "MEMSYNC_KAFKA_FETCH_MAX_WAIT_MS must be ≥ 1 (the bundled broker never "
                "answers a fetch with 0)"
            )
        if not 0 <= self.kafka.quiet_fetch_wait_ms <= 100:
            raise SettingsError(
                "MEMSYNC_KAFKA_QUIET_FETCH_WAIT_MS must be between 0 (off) and 100 "
                "(a quiet wait below MEMSYNC_KAFKA_FETCH_MAX_WAIT_MS changes nothing)"
            )
        if self.kafka.partitions < 1:
            raise SettingsError("MEMSYNC_KAFKA_PARTITIONS must be ≥ 1")
        if self.kafka.segment_ms < 1000:
            raise SettingsError("MEMSYNC_KAFKA_SEGMENT_MS must be ≥ 1000")
        names = self.replication.peer_names
        if self.region in names or len(set(names)) != len(names):
            raise SettingsError(
                f"MEMSYNC_PEERS={','.join(names)!r}: list each other region once, "
                f"not this one ({self.region!r})"
            )
        if self.replication.heartbeat_ms < 100:
            raise SettingsError("MEMSYNC_HEARTBEAT_MS must be ≥ 100")
        if not 0 <= self.limits.apply_commit_ms <= 60_000:
            raise SettingsError(
                "MEMSYNC_APPLY_COMMIT_MS must be between 0 (commit after every batch) and 60000"
            )
        if not 0 <= self.limits.write_through_queue <= 1_000_000:
            raise SettingsError(
                "MEMSYNC_WRITE_THROUGH_QUEUE must be between 0 (off: own writes wait for the "
                "log's delivery) and 1000000"
            )
        _check_rate_limits(self.limits)
        return self

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        """Settings from ``MEMSYNC_*`` variables over the defaults."""
        d = cls()
        dr = d.replication
        r = _Reader(env)
        return cls(
            region=r.as_str("MEMSYNC_REGION", d.region),
            data_dir=Path(r.as_str("MEMSYNC_DATA_DIR", str(d.data_dir))),
            secret=r.as_str("MEMSYNC_SECRET", d.secret),
            insecure_dev=r.as_bool("MEMSYNC_INSECURE_DEV", d.insecure_dev),
            token_ttl=r.as_float("MEMSYNC_TOKEN_TTL", d.token_ttl),
            log_level=r.as_str("MEMSYNC_LOG_LEVEL", d.log_level),
            http=HttpSettings(
                host=r.as_str("MEMSYNC_HTTP_HOST", d.http.host),
                port=r.as_int("MEMSYNC_HTTP_PORT", d.http.port),
            ),
            kafka=KafkaSettings(
                bootstrap=r.as_str("MEMSYNC_KAFKA_BOOTSTRAP", d.kafka.bootstrap),
                log=r.as_str("MEMSYNC_KAFKA_LOG", d.kafka.log),
                partitions=r.as_int("MEMSYNC_KAFKA_PARTITIONS", d.kafka.partitions),
                segment_ms=r.as_int("MEMSYNC_KAFKA_SEGMENT_MS", d.kafka.segment_ms),
                grace_ms=r.as_int("MEMSYNC_KAFKA_GRACE_MS", d.kafka.grace_ms),
                fetch_max_wait_ms=r.as_int(
                    "MEMSYNC_KAFKA_FETCH_MAX_WAIT_MS", d.kafka.fetch_max_wait_ms
                ),
                quiet_fetch_wait_ms=r.as_int(
                    "MEMSYNC_KAFKA_QUIET_FETCH_WAIT_MS", d.kafka.quiet_fetch_wait_ms
                ),
                request_timeout_ms=r.as_int(
                    "MEMSYNC_KAFKA_REQUEST_TIMEOUT_MS", d.kafka.request_timeout_ms
                ),
                idempotent=r.as_bool("MEMSYNC_KAFKA_IDEMPOTENT", d.kafka.idempotent),
                extra_groups=tuple(
                    g for g in r.as_str("MEMSYNC_KAFKA_EXTRA_GROUPS", "").split(",") if g
                ),
            ),
            store=StoreSettings(
                backend=r.as_str("MEMSYNC_STORE_BACKEND", d.store.backend),
                url=r.as_str("MEMSYNC_STORE_URL", d.store.url),
                collection=r.as_str("MEMSYNC_STORE_COLLECTION", d.store.collection),
                vector_dim=r.as_int("MEMSYNC_STORE_VECTOR_DIM", d.store.vector_dim),
            ),
            limits=Limits(
                max_body_bytes=r.as_int("MEMSYNC_MAX_BODY_BYTES", d.limits.max_body_bytes),
                cache_bytes=r.as_int("MEMSYNC_CACHE_BYTES", d.limits.cache_bytes),
                max_siblings=r.as_int("MEMSYNC_MAX_SIBLINGS", d.limits.max_siblings),
                ryw_wait_ms=r.as_int("MEMSYNC_RYW_WAIT_MS", d.limits.ryw_wait_ms),
                agent_rate=r.as_float("MEMSYNC_AGENT_RATE", d.limits.agent_rate),
                agent_burst=r.as_float("MEMSYNC_AGENT_BURST", d.limits.agent_burst),
                tenant_rate=r.as_float("MEMSYNC_TENANT_RATE", d.limits.tenant_rate),
                tenant_burst=r.as_float("MEMSYNC_TENANT_BURST", d.limits.tenant_burst),
                max_subscriptions=r.as_int("MEMSYNC_MAX_SUBSCRIPTIONS", d.limits.max_subscriptions),
                apply_commit_ms=r.as_int("MEMSYNC_APPLY_COMMIT_MS", d.limits.apply_commit_ms),
                write_through_queue=r.as_int(
                    "MEMSYNC_WRITE_THROUGH_QUEUE", d.limits.write_through_queue
                ),
                subscriber_soft_limit=r.as_int(
                    "MEMSYNC_SUBSCRIBER_SOFT_LIMIT", d.limits.subscriber_soft_limit
                ),
                subscriber_hard_limit=r.as_int(
                    "MEMSYNC_SUBSCRIBER_HARD_LIMIT", d.limits.subscriber_hard_limit
                ),
                history_max_events=r.as_int(
                    "MEMSYNC_HISTORY_MAX_EVENTS", d.limits.history_max_events
                ),
            ),
            replication=ReplicationSettings(
                peers=r.parse("MEMSYNC_PEERS", (), parse_peers, "a list like eu-west=http://h:p,…"),
                heartbeat_ms=r.as_int("MEMSYNC_HEARTBEAT_MS", dr.heartbeat_ms),
                lag_alert_ms=r.as_int("MEMSYNC_LAG_ALERT_MS", dr.lag_alert_ms),
                mirror_hold_ms=r.parse(
                    "MEMSYNC_MIRROR_HOLD_MS", dr.mirror_hold_ms, _hold, "milliseconds or 'forever'"
                ),
                antientropy_interval=r.as_float(
                    "MEMSYNC_ANTIENTROPY_INTERVAL", dr.antientropy_interval
                ),
            ),
        )

    def replace(self, **changes: object) -> Settings:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


def _check_rate_limits(limits: Limits) -> None:
    """:class:`SettingsError` naming the variable unless every rate is > 0 and burst ≥ 1."""
    for name, rate in (
        ("MEMSYNC_AGENT_RATE", limits.agent_rate),
        ("MEMSYNC_TENANT_RATE", limits.tenant_rate),
    ):
        if not (math.isfinite(rate) and rate > 0):
            raise SettingsError(
                f"{name}={rate!r} must be a positive number of writes per second "
                "(a large value such as 1e9 effectively turns the limit off)"
            )
    for name, burst in (
        ("MEMSYNC_AGENT_BURST", limits.agent_burst),
        ("MEMSYNC_TENANT_BURST", limits.tenant_burst),
    ):
        if not (math.isfinite(burst) and burst >= 1):
            raise SettingsError(
                f"{name}={burst!r} must be at least 1 (the writes admitted at once; "
                "a smaller bucket never admits a write)"
            )


def _hold(text: str) -> int | None:
    return None if text == "forever" else int(text)


class _Reader:
    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = env

    def _get(self, name: str, default: T, parse: Callable[[str], T], what: str) -> T:
        raw = self._env.get(name)
        if raw is None or raw == "":
            return default
        try:
            return parse(raw)
        except ValueError:
            raise SettingsError(f"{name}={raw!r} is not {what}") from None

    def parse(self, name: str, default: T, fn: Callable[[str], T], what: str) -> T:
        return self._get(name, default, fn, what)

    def as_str(self, name: str, default: str) -> str:
        return self._get(name, default, lambda s: s, "a string")

    def as_int(self, name: str, default: int) -> int:
        return self._get(name, default, int, "an integer")

    def as_float(self, name: str, default: float) -> float:
        return self._get(name, default, float, "a number")

    def as_bool(self, name: str, default: bool) -> bool:
        def parse(s: str) -> bool:
            if s.lower() in ("1", "true", "yes", "on"):
                return True
            if s.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(s)

        return self._get(name, default, parse, "a boolean (true/false)")
