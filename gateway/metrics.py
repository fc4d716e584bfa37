"""Prometheus metrics of one gateway, in a registry of its own (no globals)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Generic, Literal, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

__all__ = ["Children", "Metrics"]

_M = TypeVar("_M", Counter, Gauge, Histogram)

_LATENCY_BUCKETS = (
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0,
)  # fmt: skip


class Children(Generic[_M]):
    """A labelled metric's children, each looked up in ``prometheus_client`` once.

    ``metric.labels(...)`` checks its arguments and takes a lock on every
    call; the write path calls several per write. This keeps what it
    returned, per tuple of label values (as the metric itself does, so the
    values must come from a bounded set either way).
    """

    __slots__ = ("_children", "_metric")

    def __init__(self, metric: _M) -> None:
        self._metric: _M = metric
        self._children: dict[tuple[str, ...], _M] = {}

    def __call__(self, *values: str) -> _M:
        """The child for these label values, in the metric's label order."""
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self._metric.labels(*values)
        return child


class Metrics:
    """Every metric the gateway exports."""

    def __init__(self, region: str) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        labels = {"region": region}
        self.requests = Histogram(
            "memsync_http_request_seconds",
            "HTTP request latency by route and status.",
            ["method", "route", "status"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.write_stage = Histogram(
            "memsync_write_stage_seconds",
            "Where a write's time goes: reading the memory's state (read), the "
            "journal's fsync (journal), the log's acks=all append (append).",
            ["stage"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.writes = Counter(
            "memsync_writes_total",
            "Writes by outcome: logged (201/200), degraded (202, outbox) or failed.",
            ["outcome"],
            registry=r,
        )
        self.existence_checks = Counter(
            "memsync_create_existence_checks_total",
            "Creates with a client-chosen id: whether the memory's state was read "
            "(read) or the id was known to be new here (skipped; gateway/known_keys.py).",
            ["result"],
            registry=r,
        )
        self.applied = Counter(
            "memsync_events_applied_total",
            "Events merged into the store by the applier (duplicates included).",
            ["source"],
            registry=r,
        )
        self.written_through = Counter(
            "memsync_events_written_through_total",
            "This gateway's own writes applied as soon as the log acknowledged them "
            "(write-through), ahead of the log's delivery (which then finds duplicates).",
            registry=r,
        )
        self.written_through_dropped = Counter(
            "memsync_write_through_dropped_total",
            "Own writes not applied at once because the write-through queue was full or "
            "its apply failed; the log's delivery applies them.",
            registry=r,
        )
        self.duplicates = Counter(
            "memsync_events_duplicate_total",
            "Events the applier had already applied (exactly-once effect).",
            registry=r,
        )
        self.apply_stage = Histogram(
            "memsync_apply_stage_seconds",
            "Where an applied batch's time goes: reading states and merging "
            "(merge), recording in the history and fanning out (publish), the "
            "store write still running after that (store), committing offsets "
            "(commit).",
            ["source", "stage"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.apply_lag = Histogram(
            "memsync_apply_lag_seconds",
            "Event timestamp to applied in this region.",
            ["source"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.dead_letters = Counter(
            "memsync_dead_letters_total",
            "Records sent to the dead-letter topic, by reason.",
            ["reason"],
            registry=r,
        )
        self.outbox_pending = Gauge(
            "memsync_outbox_pending", "Journalled events not yet in the log.", registry=r
        )
        self.journal_logged = Gauge(
            "memsync_journal_unacknowledged",
            "Logged events kept until every consumer has passed their segment.",
            registry=r,
        )
        self.log_lag = Gauge(
            "memsync_log_lag_records", "Records the applier is behind, by log.", ["log"], registry=r
        )
        self.segments_deleted = Counter(
            "memsync_segments_deleted_total",
            "Log segments deleted once every consumer passed them.",
            registry=r,
        )
        self.republished = Counter(
            "memsync_republished_total",
            "Journalled events re-published after the broker lost its log.",
            registry=r,
        )
        self.replication_lag = Gauge(
            "memsync_replication_lag_seconds",
            "Replication lag from each peer region, measured by its heartbeats.",
            ["source"],
            registry=r,
        )
        self.replication_lag_events = Gauge(
            "memsync_replication_lag_events",
            "The mirror link's source backlog, as stamped on the last heartbeat.",
            ["source"],
            registry=r,
        )
        self.heartbeats = Counter(
            "memsync_heartbeats_total", "Heartbeats applied, by source region.", ["source"],
            registry=r,
        )  # fmt: skip
        self.antientropy_passes = Counter(
            "memsync_antientropy_passes_total",
            "Anti-entropy comparisons with a peer, by result (in_sync, repaired, incomplete, "
            "deferred, unreachable, error: a bad answer, failed: a bug, logged).",
            ["peer", "result"],
            registry=r,
        )
        self.antientropy_repaired = Counter(
            "memsync_antientropy_repaired_events_total",
            "Events anti-entropy fetched from a peer because no log delivered them.",
            ["peer"],
            registry=r,
        )
        self.antientropy_missing = Gauge(
            "memsync_antientropy_missing_events",
            "Events a peer had applied a pass ago that this region still lacked.",
            ["peer"],
            registry=r,
        )
        self.antientropy_repaired_states = Counter(
            "memsync_antientropy_repaired_states_total",
            "Memories repaired by state (digest comparison) when no event history covered them.",
            ["peer"],
            registry=r,
        )
        self.gc_pause = Histogram(
            "memsync_gc_pause_seconds",
            "Python garbage-collector pauses of this process, by generation.",
            ["generation"],
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
            registry=r,
        )
        self.gc_collected = Counter(
            "memsync_gc_collected_objects_total",
            "Objects the garbage collector freed, by generation. Reference counting frees "
            "everything not in a reference cycle, so a steady rise here is cyclic garbage, "
            "which only a collection (a full one, for long-lived objects) finds.",
            ["generation"],
            registry=r,
        )
        self.loop_lag = Histogram(
            "memsync_event_loop_lag_seconds",
            "How late a 100 ms timer of the event loop fires: time the loop was busy elsewhere.",
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
            registry=r,
        )
        self.mode = Gauge(
            "memsync_degraded", "1 while a degraded mode is in effect.", ["mode"], registry=r
        )
        self.info = Gauge(
            "memsync_info", "Static facts about this gateway.", ["region"], registry=r
        )
        self.info.labels(**labels).set(1)

        # The children the hot paths use (see Children).
        self.requests_by = Children(self.requests)
        self.write_stage_by = Children(self.write_stage)
        self.writes_by = Children(self.writes)
        self.existence_checks_by = Children(self.existence_checks)
        self.apply_stage_by = Children(self.apply_stage)

    def gauge_fn(self, name: str, doc: str, fn: Callable[[], float]) -> None:
        """A gauge whose value is computed at scrape time."""
        Gauge(name, doc, registry=self.registry).set_function(fn)

    def scraped(
        self,
        name: str,
        doc: str,
        labels: tuple[str, ...],
        fn: Callable[[], Mapping[tuple[str, ...], float]],
        *,
        kind: Literal["counter", "gauge"] = "counter",
    ) -> None:
        """Counters (``name`` without ``_total``) or gauges kept elsewhere, read at scrape time.

        ``fn`` maps each tuple of ``labels`` values to its value (``()`` with no labels).
        """
        family = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
        self.registry.register(_Scraped(family, name, doc, labels, fn))


class _Scraped(Collector):
    """Values kept elsewhere (by a component that must not know Prometheus), read when scraped."""

    def __init__(
        self,
        family: type[CounterMetricFamily] | type[GaugeMetricFamily],
        name: str,
        doc: str,
        labels: tuple[str, ...],
        fn: Callable[[], Mapping[tuple[str, ...], float]],
    ) -> None:
        self._family, self._name, self._doc, self._labels, self._fn = family, name, doc, labels, fn

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        family = self._family(self._name, self._doc, labels=list(self._labels))
        for values, count in sorted(self._fn().items()):
            family.add_metric(list(values), count)
        yield family
