"""Incoming replication links as this region sees them: ``GET /v1/replication``.

Each peer's heartbeats arrive through its mirror link and are noted by the
applier when applied (see :mod:`replication.heartbeat`). From them:

- ``lag_ms``: how far behind the peer this region's applied state is, in
  time — the age of the newest heartbeat applied, less the heartbeat
  interval (a heartbeat is written only once per interval), and never less
  than the latency the last heartbeat measured (written → applied);
- ``lag_events``: the link's source backlog when it forwarded that heartbeat;
- ``state``: ``waiting`` (no heartbeat applied yet), ``replicating``, or
  ``lagging`` (``lag_ms`` above the alert threshold — a cut link, a stalled
  mirror, a slow applier all look the same from here, which is the point).

Wall clocks of regions are compared (heartbeats carry the writer's wall
time); on one machine they agree, across machines NTP skew adds to ``lag_ms``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import msgspec

from replication.heartbeat import LINK_LAG_HEADER, Heartbeat, decode_heartbeat, header

__all__ = ["LinkView", "ReplicationStatus"]


class LinkView(msgspec.Struct, frozen=True):
    """One incoming link (API.md ``GET /v1/replication``)."""

    source: str
    target: str
    lag_ms: float | None
    lag_events: int | None
    state: str
    heartbeats: int
    events_applied: int
    last_heartbeat_ms: int | None


@dataclass
class _Incoming:
    heartbeats: int = 0
    events: int = 0
    last_at_ms: int | None = None  # the newest heartbeat's write time (source wall clock)
    latency_ms: float = 0.0  # written → applied, of that heartbeat
    lag_events: int | None = None
    arrived_at: float | None = None  # local clock, seconds: when a heartbeat was last applied


class ReplicationStatus:
    """Heartbeats and event counts per peer (see the module docstring)."""

    def __init__(
        self,
        region: str,
        peers: Iterable[str],
        *,
        interval_ms: int,
        alert_ms: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.region = region
        self._interval_ms = interval_ms
        self._alert_ms = alert_ms
        self._clock = clock
        self._links = {p: _Incoming() for p in peers}

    @property
    def peers(self) -> list[str]:
        """The regions this one receives from."""
        return list(self._links)

    def heartbeat(self, source: str, value: bytes, headers: Iterable[tuple[str, bytes]]) -> None:
        """Note one applied heartbeat (malformed ones are ignored)."""
        link = self._links.get(source)
        if link is None:
            return
        try:
            beat: Heartbeat = decode_heartbeat(value)
        except msgspec.DecodeError:
            return
        now_ms = self._clock() * 1000
        link.heartbeats += 1
        link.arrived_at = now_ms / 1000
        if link.last_at_ms is None or beat.at_ms >= link.last_at_ms:
            link.last_at_ms = beat.at_ms
            link.latency_ms = max(0.0, now_ms - beat.at_ms)
            raw = header(headers, LINK_LAG_HEADER)
            if raw is not None and raw.isdigit():
                link.lag_events = int(raw)

    def events(self, source: str, count: int) -> None:
        """Note events applied from ``source``."""
        link = self._links.get(source)
        if link is not None:
            link.events += count

    def lag_ms(self, source: str) -> float | None:
        """Replication lag from ``source`` in milliseconds (``None`` before any heartbeat)."""
        link = self._links[source]
        if link.last_at_ms is None:
            return None
        age = self._clock() * 1000 - link.last_at_ms - self._interval_ms
        return max(link.latency_ms, age)

    def catching_up(self, source: str) -> bool:
        """Whether the link from ``source`` delivers, but behind by more than an interval.

        Heartbeats keep arriving (within two intervals), yet the newest is
        older than one interval: a backlog is draining (after a partition
        healed). Anti-entropy leaves such a link alone rather than doing its
        work twice.
        """
        link = self._links.get(source)
        if link is None or link.arrived_at is None:
            return False
        flowing = self._clock() - link.arrived_at < 2 * self._interval_ms / 1000
        lag = self.lag_ms(source)
        return flowing and lag is not None and lag > self._interval_ms

    def lag_events(self, source: str) -> int | None:
        """The link's backlog stamped on the last heartbeat from ``source``."""
        return self._links[source].lag_events

    def view(self) -> list[LinkView]:
        """Every incoming link, in peer order."""
        out = []
        for source, link in self._links.items():
            lag = self.lag_ms(source)
            state = (
                "waiting" if lag is None else "lagging" if lag > self._alert_ms else "replicating"
            )
            out.append(
                LinkView(
                    source=source,
                    target=self.region,
                    lag_ms=None if lag is None else round(lag, 1),
                    lag_events=link.lag_events,
                    state=state,
                    heartbeats=link.heartbeats,
                    events_applied=link.events,
                    last_heartbeat_ms=link.last_at_ms,
                )
            )
        return out
