"""One gateway's resources and background work, started and stopped together.

Owns the store, the journal, the log producer, the applier's reader, the
dead-letter sink and the segment janitor, and runs these background tasks
(the app cancels them with :func:`replication.tasks.cancel_all`):

- the **applier** (regional log → store, cache, listeners);
- **write-through**: this gateway's own acknowledged writes applied at once,
  ahead of the log's delivery (``gateway/write_through.py``);
- the **outbox drainer** (journal rows the log did not take → log, in order);
- **maintenance** every second: detect a broker that lost its log (epoch
  change) and re-publish the journal; delete segments every consumer has
  passed and prune the journal below them; probe the store; update gauges;
- **cache warming** at start, bounded by the cache's byte budget.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from gateway.antientropy import AntiEntropy
from gateway.applier import Applier
from gateway.cache import StateCache
from gateway.dashboard import DashboardFeed
from gateway.deadletter import KafkaDeadLetters
from gateway.fanout import Fanout
from gateway.history import History
from gateway.journal import Journal
from gateway.known_keys import KnownKeys
from gateway.metrics import Metrics
from gateway.modes import Modes
from gateway.ratelimit import RateLimiter
from gateway.replication_status import ReplicationStatus
from gateway.service import MemoryService, SeqTracker
from gateway.settings import Settings
from gateway.state_digest import RunningDigest
from gateway.store import MemoryStore, StoreError
from gateway.streams import Streams, control
from gateway.write_through import WriteThrough
from replication.clock import HybridClock
from replication.errors import MemsyncError
from replication.heartbeat import (
    HEARTBEAT_KEY,
    KIND_HEADER,
    KIND_HEARTBEAT,
    Heartbeat,
    encode_heartbeat,
    mirror_group,
    mirrored_log,
)
from replication.log import KafkaEventLog, KafkaLogReader, OutgoingRecord, SegmentJanitor

__all__ = ["Runtime", "applier_group", "build_store"]

_HEALTH_PROBE = "health-probe"  # a metadata name never written: reading it is the probe
_log = structlog.get_logger(__name__)


def applier_group(region: str) -> str:
    """The consumer group of a region's applier."""
    return f"memsync-applier-{region}"


def build_store(settings: Settings, region_dir: Path) -> MemoryStore:
    """The store the settings ask for."""
    if settings.store.backend == "server":
        from gateway.store_server import QdrantServerStore

        return QdrantServerStore.from_url(
            settings.store.url,
            collection=settings.store.collection,
            vector_dim=settings.store.vector_dim,
        )
    if settings.store.backend == "edge-process":
        from gateway.store_process import ProcessStore

        return ProcessStore(region_dir / "store", vector_dim=settings.store.vector_dim)
    from gateway.store_edge import QdrantEdgeStore

    return QdrantEdgeStore(region_dir / "store", vector_dim=settings.store.vector_dim)


async def _supervised(name: str, loop: Callable[[], Awaitable[None]]) -> None:
    """Run a background loop forever, restarting it (with backoff) if it crashes."""
    backoff = 0.1
    while True:
        try:
            await loop()
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - a supervisor: log, back off, restart
            _log.exception("task.crashed", task=name, restart_in=backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)
        else:
            return


def _wall_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class Runtime:
    """Everything one gateway runs (see the module docstring)."""

    settings: Settings
    metrics: Metrics
    modes: Modes
    store: MemoryStore | None = None
    started: bool = False
    service: MemoryService = field(init=False)
    applier: Applier = field(init=False)
    journal: Journal = field(init=False)
    log: KafkaEventLog = field(init=False)
    reader: KafkaLogReader = field(init=False)
    janitor: SegmentJanitor = field(init=False)
    dead_letters: KafkaDeadLetters = field(init=False)
    history: History = field(init=False)
    streams: Streams = field(init=False)
    dashboard: DashboardFeed = field(init=False)
    replication: ReplicationStatus = field(init=False)
    remote: dict[str, tuple[KafkaLogReader, Applier, SegmentJanitor]] = field(
        default_factory=dict, init=False
    )
    apply_lock: asyncio.Lock = field(default_factory=asyncio.Lock, init=False)
    digest: RunningDigest = field(default_factory=RunningDigest, init=False)
    antientropy: AntiEntropy = field(init=False)
    write_through: WriteThrough | None = field(default=None, init=False)
    _stack: contextlib.AsyncExitStack = field(default_factory=contextlib.AsyncExitStack)
    _epoch: str | None = field(default=None, init=False)
    _ticks: int = field(default=0, init=False)
    _beats: int = field(default=0, init=False)

    @property
    def open_store(self) -> MemoryStore:
        """The store (once started)."""
        return self._open_store

    @property
    def _open_store(self) -> MemoryStore:
        if self.store is None:
            raise RuntimeError("the runtime has not been started")
        return self.store

    @property
    def region_dir(self) -> Path:
        """Where this gateway keeps its journal and (Edge) store."""
        return self.settings.data_dir

    async def start(self) -> None:
        """Open everything, then start the background work."""
        s = self.settings
        k = s.kafka
        stack = self._stack
        self.journal = Journal(self.region_dir / "journal.sqlite3", s.region)
        await self.journal.open()
        stack.push_async_callback(self.journal.close)
        store = self.store or build_store(s, self.region_dir)
        self.store = store
        await store.open()
        stack.push_async_callback(store.close)
        clock = HybridClock(_wall_ms, high_water=self.journal.high_water)
        self.log = KafkaEventLog(
            k.bootstrap,
            log=k.log,
            partitions=k.partitions,
            segment_ms=k.segment_ms,
            grace_ms=k.grace_ms,
            request_timeout_ms=k.request_timeout_ms,
            idempotent=k.idempotent,
        )
        self._epoch = await self.journal.get_meta("log_epoch")
        try:
            await self.log.start()
            current = await self.log.epoch()
            if self._epoch is None:
                await self.journal.set_meta("log_epoch", current)
                self._epoch = current
        except MemsyncError as exc:
            self.modes.set("log_unavailable", True)
            _log.warning("gateway.log_unavailable_at_start", error=exc.message)
        stack.push_async_callback(self.log.stop)
        tracker = SeqTracker()
        cache = StateCache(s.limits.cache_bytes)
        self.service = MemoryService(
            region=s.region,
            store=store,
            cache=cache,
            log=self.log,
            journal=self.journal,
            clock=clock,
            tracker=tracker,
            limiter=RateLimiter(
                agent_rate=s.limits.agent_rate,
                agent_burst=s.limits.agent_burst,
                tenant_rate=s.limits.tenant_rate,
                tenant_burst=s.limits.tenant_burst,
                clock=time.monotonic,
            ),
            limits=s.limits,
            key=s.secret_bytes,
            observe_stage=self._observe_write_stage,
            known=KnownKeys(),
            on_existence_check=self._observe_existence_check,
        )
        self.reader = KafkaLogReader(
            k.bootstrap,
            log=k.log,
            group_id=applier_group(s.region),
            segment_ms=k.segment_ms,
            grace_ms=k.grace_ms,
            fetch_max_wait_ms=k.fetch_max_wait_ms,
            # Its records are this gateway's own, applied already by the
            # write-through (unless it is off): an idle log is polled at a
            # quieter cadence (KafkaLogReader.quiet).
            quiet_fetch_wait_ms=(
                max(k.quiet_fetch_wait_ms, k.fetch_max_wait_ms)
                if k.quiet_fetch_wait_ms and s.limits.write_through_queue
                else None
            ),
        )
        stack.push_async_callback(self.reader.stop)
        self.dead_letters = KafkaDeadLetters(k.bootstrap)
        stack.push_async_callback(self.dead_letters.stop)
        rep = s.replication
        self.janitor = SegmentJanitor(
            k.bootstrap,
            log=k.log,
            groups=[applier_group(s.region), *k.extra_groups],
            held_groups=[mirror_group(s.region, peer) for peer in rep.peer_names],
            hold_ms=rep.mirror_hold_ms,
            segment_ms=k.segment_ms,
            grace_ms=k.grace_ms,
        )
        self.replication = ReplicationStatus(
            s.region, rep.peer_names, interval_ms=rep.heartbeat_ms, alert_ms=rep.lag_alert_ms
        )
        self.applier = self._applier("local", self.reader, tracker)
        if s.limits.write_through_queue:
            self.write_through = WriteThrough(
                self.applier.apply_written,
                limit=s.limits.write_through_queue,
                batch=s.limits.apply_batch,
                on_drop=self.metrics.written_through_dropped.inc,
            )
            self.service.on_logged = self.write_through.offer
        for peer in rep.peer_names:
            log = mirrored_log(peer, k.log)
            reader = KafkaLogReader(
                k.bootstrap,
                log=log,
                group_id=applier_group(s.region),
                segment_ms=k.segment_ms,
                grace_ms=k.grace_ms,
                fetch_max_wait_ms=k.fetch_max_wait_ms,
            )
            stack.push_async_callback(reader.stop)
            janitor = SegmentJanitor(
                k.bootstrap,
                log=log,
                groups=[applier_group(s.region)],
                segment_ms=k.segment_ms,
                grace_ms=k.grace_ms,
            )
            self.remote[peer] = (reader, self._applier(peer, reader, tracker), janitor)
        self.history = History(
            self.region_dir / "history.sqlite3",
            self.journal.replica,
            s.secret_bytes,
            max_events=s.limits.history_max_events,
        )
        await self.history.open()
        stack.push_async_callback(self.history.close)
        self.streams = Streams(self.history, Fanout(s.limits.max_subscriptions))
        self.dashboard = DashboardFeed(s.region)
        for applier in self.appliers:
            applier.batch_listeners.append(self.streams.on_batch)
            applier.batch_listeners.append(self.dashboard.on_batch)
            applier.state_listeners.append(self.streams.on_states)
        await self.applier.load_applied()
        await self._build_digest()
        self.antientropy = AntiEntropy(
            region=s.region,
            peers=list(rep.peers),
            appliers={peer: applier for peer, (_, applier, _) in self.remote.items()},
            tracker=tracker,
            digest=self.digest,
            metrics=self.metrics,
            secret=s.secret_bytes,
            batch=rep.antientropy_batch,
            catching_up=self.replication.catching_up,
        )
        pending, _ = await self.journal.counts()
        if pending:  # written while the log was away, before a restart: drain first
            self.service.outbox_busy = True
        self._gauges()
        await self._warm_cache()
        _log.info("gateway.opened", region=s.region, replica=self.journal.replica)

    def _applier(self, name: str, reader: KafkaLogReader, tracker: SeqTracker) -> Applier:
        applier = Applier(
            name=name,
            reader=reader,
            store=self._open_store,
            service=self.service,
            tracker=tracker,
            dead_letters=self.dead_letters,
            metrics=self.metrics,
            batch=self.settings.limits.apply_batch,
            commit_every=self.settings.limits.apply_commit_ms / 1000,
            lock=self.apply_lock,
            digest=self.digest,
            # A store only this gateway writes: a key it never saw is not there.
            known=self.service.known if self.settings.store.backend != "server" else None,
        )
        applier.heartbeat_listeners.append(self._on_heartbeat)
        applier.event_counters.append(self.replication.events)
        return applier

    @property
    def appliers(self) -> list[Applier]:
        """The region's own applier, then one per peer's mirrored log."""
        return [self.applier, *(applier for _, applier, _ in self.remote.values())]

    def _on_heartbeat(
        self, source: str, value: bytes, headers: tuple[tuple[str, bytes], ...]
    ) -> None:
        self.replication.heartbeat(source, value, headers)
        self.metrics.heartbeats.labels(source).inc()

    def spawn(self) -> list[asyncio.Task[None]]:
        """Start the background work; the caller cancels the tasks (and must keep them)."""
        tasks = [
            asyncio.create_task(_supervised("applier", self._apply_loop), name="applier"),
            asyncio.create_task(_supervised("outbox", self._drain_loop), name="outbox"),
            asyncio.create_task(_supervised("maintenance", self._maintenance_loop), name="maint"),
            asyncio.create_task(_supervised("loop lag", self._loop_lag_loop), name="loop-lag"),
            asyncio.create_task(
                _supervised("stream heartbeats", self._stream_heartbeat_loop), name="ws-beats"
            ),
        ]
        if self.write_through is not None:
            tasks.append(
                asyncio.create_task(
                    _supervised("write-through", self.write_through.run), name="write-through"
                )
            )
        for peer, (reader, applier, _) in self.remote.items():
            loop = functools.partial(self._remote_apply_loop, reader, applier)
            tasks.append(
                asyncio.create_task(_supervised(f"applier:{peer}", loop), name=f"applier:{peer}")
            )
        if self.remote:
            tasks.append(
                asyncio.create_task(_supervised("heartbeats", self._heartbeat_loop), name="beats")
            )
            interval = self.settings.replication.antientropy_interval
            loop = functools.partial(self.antientropy.run, interval)
            tasks.append(asyncio.create_task(_supervised("antientropy", loop), name="antientropy"))
        self.started = True
        return tasks

    def _observe_write_stage(self, stage: str, seconds: float) -> None:
        self.metrics.write_stage_by(stage).observe(seconds)

    async def stop(self) -> None:
        """Close everything in reverse order (background work must be cancelled first)."""
        self.started = False
        await self._stack.aclose()
        _log.info("gateway.stopped", region=self.settings.region)

    def _gauges(self) -> None:
        m, cache = self.metrics, self.service.cache
        m.gauge_fn(
            "memsync_cache_hit_ratio",
            "Cache hits / lookups since start.",
            lambda: cache.hits / max(1, cache.hits + cache.misses),
        )
        status = self.replication
        for peer in status.peers:
            m.replication_lag.labels(peer).set_function(
                functools.partial(lambda p: (status.lag_ms(p) or 0.0) / 1000, peer)
            )
            m.replication_lag_events.labels(peer).set_function(
                functools.partial(lambda p: float(status.lag_events(p) or 0), peer)
            )
        m.gauge_fn("memsync_cache_bytes", "Estimated bytes in the cache.", lambda: cache.size_bytes)
        m.gauge_fn("memsync_cache_entries", "Memories in the cache.", lambda: len(cache))
        digest = self.digest
        m.gauge_fn(
            "memsync_digest_doubts",
            "Memories whose store write failed and may have landed: the state digest "
            "is settled from the store when a batch next touches them, or by the applier "
            "after its next batch or quiet poll "
            "(-1: too many, the digest is rebuilt by a store scan).",
            lambda: -1 if digest.stale else digest.doubt_count,
        )
        m.scraped(
            "memsync_log_roll_releases",
            "Times records held after a segment roll were let go by an end-offsets answer "
            "(instead of a later fetch), by log: local, or the peer region mirrored here.",
            ("log",),
            lambda: {
                ("local",): self.reader.released_by_end_offsets,
                **{(peer,): r.released_by_end_offsets for peer, (r, _, _) in self.remote.items()},
            },
        )
        self._subscription_metrics()

    def _subscription_metrics(self) -> None:
        """The fan-out's counts (:class:`gateway.fanout.FanoutStats`) and the live subscriptions."""
        m, fanout = self.metrics, self.streams.fanout
        st = fanout.stats

        def one(name: str, doc: str, fn: Callable[[], int]) -> None:
            m.scraped(name, doc, (), lambda: {(): fn()})

        one("memsync_fanout_batches", "Batches of applied events the fan-out published.",
            lambda: st.batches)  # fmt: skip
        one("memsync_fanout_events", "Events in those batches.", lambda: st.events)
        one("memsync_subscriber_deliveries",
            "Events offered or written to subscriptions (one per event and subscription).",
            lambda: st.deliveries)  # fmt: skip
        m.scraped(
            "memsync_subscriber_writes",
            "Writes to subscribers: the fan-out's own write of a published batch to a "
            "caught-up WebSocket (path=direct, one per audience of the batch and subscriber); "
            "other straight socket writes (path=other: queued messages flushed, control "
            "replies, heartbeats); messages a connection's pump sent with flow control "
            "(path=pump: replays, lazy batches, SSE, a full socket).",
            ("path",),
            lambda: {
                ("direct",): st.direct_writes,
                ("other",): st.other_writes,
                ("pump",): st.pumped,
            },
        )
        one("memsync_subscriber_coalescing",
            "Times an eager subscription fell past its soft limit and began coalescing "
            "per memory.", lambda: st.coalescing)  # fmt: skip
        m.scraped(
            "memsync_subscriptions_closed",
            "Subscriptions the server closed, by reason (slow_consumer: past the hard "
            "limit, with its resume cursor; connection_lost: the socket failed).",
            ("reason",),
            lambda: {(r,): n for r, n in st.closed.items()},
        )
        one("memsync_subscription_replays",
            "Resumes from a cursor served from the history (not those answered "
            "resync_required).", lambda: st.replays)  # fmt: skip
        one("memsync_resync_required",
            "Cursors answered resync_required (history gone), WebSocket and /v1/sync.",
            lambda: st.resyncs)  # fmt: skip
        one("memsync_contested_memories",
            "Memories that became contested here: two users' creates of one id met "
            "(regions cut off from each other); withheld from everyone, see "
            "docs/architecture.md.", lambda: st.contested)  # fmt: skip
        one("memsync_late_event_states",
            "States sent to live subscribers for events the history had counted recorded "
            "that still changed their memory (late past a closed seq gap).",
            lambda: st.late)  # fmt: skip

        def live() -> dict[tuple[str, ...], float]:
            counts: dict[tuple[str, ...], float] = {
                (t, mode): 0 for t in ("websocket", "sse") for mode in ("eager", "lazy")
            }
            for sub in fanout.subscriptions():
                key = ("websocket" if sub.writer is not None else "sse", sub.mode)
                counts[key] = counts.get(key, 0) + 1
            return counts

        m.scraped(
            "memsync_subscriptions",
            "Live subscriptions (with at least one channel), by transport and mode.",
            ("transport", "mode"),
            live,
            kind="gauge",
        )

    def _observe_existence_check(self, read: bool) -> None:
        self.metrics.existence_checks_by("read" if read else "skipped").inc()

    async def _build_digest(self) -> None:
        """The running state digest and the known keys, from one scan of the store."""
        store = self._open_store
        offset: str | None = None
        started = time.perf_counter()
        while True:
            states, offset = await store.scan(offset, 1000)
            self.digest.add_all(states)
            for state in states:
                self.service.note_known(state.key)  # before any create can ask
            if offset is None:
                break
        _log.info(
            "gateway.digest_built",
            memories=self.digest.count,
            seconds=round(time.perf_counter() - started, 3),
        )

    async def _warm_cache(self) -> None:
        """Fill the cache from the store, up to its byte budget."""
        store = self._open_store
        cache, offset, loaded = self.service.cache, None, 0
        budget = self.settings.limits.cache_bytes * 0.9
        most = max(1, self.settings.limits.cache_bytes // 512)  # never scan past what fits
        try:
            while cache.size_bytes < budget and loaded < most:
                states, offset = await store.scan(offset, 500)
                for state in states:
                    self.service.remember(state)
                loaded += len(states)
                if offset is None:
                    break
        except StoreError as exc:
            _log.warning("gateway.cache_warm_failed", error=str(exc))
        _log.info("gateway.cache_warmed", memories=loaded, bytes=cache.size_bytes)

    async def status(self) -> dict[str, Any]:
        """Facts for ``/readyz``."""
        pending, logged = await self.journal.counts()
        return {
            "replica": self.journal.replica,
            "outbox_pending": pending,
            "journal_unacknowledged": logged,
            "applied_events": self.applier.applied_total,
            "subscriptions": len(self.streams.fanout),
        }

    async def _apply_loop(self) -> None:
        """Start the reader (waiting for the log if it is down), then apply forever."""
        while True:
            try:
                await self.reader.start()
                break
            except MemsyncError as exc:
                self.modes.set("log_unavailable", True)
                _log.info("applier.waiting_for_log", error=exc.message)
                await self.reader.stop()
                await asyncio.sleep(1.0)
        await self.applier.run()

    async def _remote_apply_loop(self, reader: KafkaLogReader, applier: Applier) -> None:
        """Apply a peer's mirrored log (created by its link; waits for the broker)."""
        while True:
            try:
                await reader.start()
                break
            except MemsyncError as exc:
                _log.info("applier.waiting_for_log", applier=applier.name, error=exc.message)
                await reader.stop()
                await asyncio.sleep(1.0)
        await applier.run()

    async def _heartbeat_loop(self) -> None:
        """Append a heartbeat to every partition of this region's log (MM2's connector)."""
        interval = self.settings.replication.heartbeat_ms / 1000
        headers = ((KIND_HEADER, KIND_HEARTBEAT),)
        while True:
            await asyncio.sleep(interval)
            if not self.log.started:
                continue
            self._beats += 1
            value = encode_heartbeat(Heartbeat(self.settings.region, _wall_ms(), self._beats))
            records = [
                OutgoingRecord(HEARTBEAT_KEY, value, headers, partition)
                for partition in range(self.log.partitions)
            ]
            try:
                await self.log.append_many(records)
            except MemsyncError as exc:
                _log.debug("heartbeat.skipped", error=exc.message)

    async def _drain_loop(self) -> None:
        while True:
            await self.service.wait_for_outbox_work(1.0)
            if not self.service.outbox_busy:
                continue  # writes go straight to the log; nothing waits in the outbox
            try:
                sent = await self.service.drain_outbox()
            except MemsyncError as exc:
                self.service.log_available = False
                self.modes.set("log_unavailable", True)
                pending, _ = await self.journal.counts()
                self.metrics.outbox_pending.set(pending)
                _log.info("outbox.waiting_for_log", pending=pending, error=exc.message)
                await asyncio.sleep(0.5)
                continue
            self.service.log_available = True
            self.modes.set("log_unavailable", False)
            self.metrics.outbox_pending.set(0)
            if sent:
                _log.info("outbox.drained", events=sent)

    async def _loop_lag_loop(self, period: float = 0.1) -> None:
        """Measure how late the loop runs a timer (``memsync_event_loop_lag_seconds``)."""
        clock = time.perf_counter
        while True:
            due = clock() + period
            await asyncio.sleep(period)
            self.metrics.loop_lag.observe(max(0.0, clock() - due))

    async def _stream_heartbeat_loop(self) -> None:
        """Heartbeats for quiet subscribers no pump serves (idle WebSockets)."""
        every = self.settings.limits.stream_heartbeat
        message = control("heartbeat")
        while True:
            await asyncio.sleep(min(1.0, every / 4))
            self.streams.fanout.heartbeat(message, every)

    async def _maintenance_loop(self) -> None:
        interval = self.settings.limits.journal_ack_interval
        while True:
            await asyncio.sleep(interval)
            await self._maintain()

    async def _clean_logs(self) -> None:
        """Delete segments every consumer passed; prune the journal below them."""
        try:
            deleted = await self.janitor.run_once(_wall_ms())
        except MemsyncError as exc:
            _log.info("janitor.skipped", error=exc.message)
            deleted = []
        if deleted:
            self.metrics.segments_deleted.inc(len(deleted))
            pruned = await self.journal.prune_below(max(deleted) + 1)
            _log.info("log.segments_deleted", segments=deleted, journal_pruned=pruned)
        for peer, (_, _, janitor) in self.remote.items():
            try:
                gone = await janitor.run_once(_wall_ms())
            except MemsyncError as exc:
                _log.info("janitor.skipped", log=peer, error=exc.message)
                continue
            self.metrics.segments_deleted.inc(len(gone))

    async def _maintain(self) -> None:
        self._ticks += 1
        if self._ticks % 10 == 0:
            try:
                await self._open_store.maintain()
            except StoreError as exc:
                _log.warning("store.maintenance_failed", error=str(exc))
        try:
            # A one-point read: an exact count (the probe before) walked every
            # memory each second (~27 ms at 100,000) and grew with the store.
            await self._open_store.get_meta(_HEALTH_PROBE)
            self.modes.set("store_unavailable", False)
        except StoreError as exc:
            self.modes.set("store_unavailable", True)
            _log.warning("store.unavailable", error=str(exc))
        try:
            if not self.log.started:
                await self.log.start()
            epoch = await self.log.epoch()
        except MemsyncError as exc:
            self.modes.set("log_unavailable", True)
            _log.info("log.unavailable", error=exc.message)
            return
        if self._epoch is not None and epoch != self._epoch:
            _log.warning("log.epoch_changed", old=self._epoch, new=epoch)
            try:
                sent = await self.service.republish()
            except MemsyncError as exc:
                _log.warning("log.republish_failed", error=exc.message)
                return
            self.metrics.republished.inc(sent)
            _log.info("log.republished", events=sent)
        if epoch != self._epoch:
            await self.journal.set_meta("log_epoch", epoch)
            self._epoch = epoch
        self.modes.set("log_unavailable", not self.service.log_available)
        if self.service.log_available:
            self.service.poke_outbox()
        if self.remote:
            lagging = any(link.state == "lagging" for link in self.replication.view())
            self.modes.set("remote_unreachable", lagging)
        # Segments seal once per segment_ms: looking twice per segment is
        # enough (each pass connects a client per consumer group).
        k, interval = self.settings.kafka, self.settings.limits.journal_ack_interval
        if self._ticks % max(1, int(k.segment_ms / 2000 / interval)) == 0:
            await self._clean_logs()
        pending, logged = await self.journal.counts()
        self.metrics.outbox_pending.set(pending)
        self.metrics.journal_logged.set(logged)
        try:
            lag = await self.reader.lag()
        except MemsyncError:
            return
        self.metrics.log_lag.labels("local").set(float(sum(lag.values())))
