"""The consumer side of the segmented event log (:class:`KafkaLogReader`).

Re-exported by :mod:`replication.log`; see there for the broker quirks.

A reader *releases* a segment (DESIGN §5): it commits the true end of a
segment partition only once it has stopped reading the segment. Until then a
commit that reaches the partition's highwater is held back by one record, so
:class:`~replication.janitor.SegmentJanitor` (which deletes a segment every
group committed past) never deletes a topic a reader still has assigned; the
consumer would otherwise name it in its next metadata request and the broker
would re-create it. A held-back record is read again only after a crash
(at-least-once; consumers deduplicate).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from replication.log import (
    DEFAULT_LOG,
    LogRecord,
    PartitionPosition,
    Routes,
    WallClock,
    _Admin,
    _translated,
    route_client,
    wall_ms,
)
from replication.log_errors import LogError, LogUnavailableError
from replication.segments import (
    DEFAULT_GRACE_MS,
    DEFAULT_SEGMENT_MS,
    is_ahead,
    is_settled,
    parse_topic,
    segment_of,
    segments_of,
    topic_name,
)

__all__ = ["KafkaLogReader"]

_log = structlog.get_logger("replication.log")
_EPOCH_WAIT_MS = 200  # bounded wait for the marker a reader has not seen yet


@dataclasses.dataclass
class _Pending:
    """Records fetched from one partition and not returned yet (see ``_take``)."""

    fetched_at: int  # wall ms of the fetch response that brought them
    records: list[LogRecord] = dataclasses.field(default_factory=list)
    verified: bool = False


class KafkaLogReader:
    """Reads every segment of ``log`` in segment order, committing as ``group_id``.

    Manual assignment (group joins are slow on Tansu) with commits under
    ``group_id``, so a recreated reader resumes from the committed offsets.
    Segment topics are discovered by listing topics every ``refresh_ms``; the
    next segment is assigned as soon as it exists. Partition *p* of a segment
    is fetched only once partition *p* of every earlier live segment is
    caught up, and what it brings is returned only once a later fetch showed
    those caught up still, so one key's records come out in order across a
    roll. Every assigned partition is sought to a known offset. A
    settled segment whose partitions are all caught up (by a fetch made after
    the seal was seen) is *drained*: no longer fetched, and unassigned once
    what was read from it is committed. Topics that vanish (janitor, broker
    restarted empty) are forgotten; a partition whose position is past its
    highwater was recreated and is read again from its beginning.
    """

    def __init__(
        self,
        bootstrap: str,
        *,
        group_id: str,
        log: str = DEFAULT_LOG,
        segment_ms: int = DEFAULT_SEGMENT_MS,
        grace_ms: int = DEFAULT_GRACE_MS,
        fetch_max_wait_ms: int = 5,
        max_records: int = 500,
        refresh_ms: int = 250,
        request_timeout_ms: int = 5_000,
        clock: WallClock = wall_ms,
        routes: Routes | None = None,
        quiet_fetch_wait_ms: int | None = None,
        quiet_after_ms: int = 1_000,
    ) -> None:
        if fetch_max_wait_ms < 1:
            raise ValueError("fetch_max_wait_ms must be ≥ 1 (0 never delivers on Tansu)")
        if quiet_fetch_wait_ms is not None and quiet_fetch_wait_ms < fetch_max_wait_ms:
            raise ValueError("quiet_fetch_wait_ms must be ≥ fetch_max_wait_ms")
        self._bootstrap = bootstrap
        self._group_id = group_id
        self._log_name = log
        self._segment_ms = segment_ms
        self._grace_ms = grace_ms
        self._fetch_max_wait_ms = fetch_max_wait_ms
        # The quiet cadence (see :attr:`quiet`): the fetch wait once no read
        # returned records for ``quiet_after_ms``. ``_wait_ms`` is the wait in effect.
        self._quiet_wait_ms = quiet_fetch_wait_ms
        self._quiet_after_s = quiet_after_ms / 1000
        self._wait_ms = fetch_max_wait_ms
        self._active_until = 0.0  # monotonic: the fast cadence holds until then
        self._max_records = max_records
        self._refresh_s = refresh_ms / 1000
        self._request_timeout_ms = request_timeout_ms
        # A ListOffsets answer is immediate; a slow one must not stop reading
        # (the next fetch releases the records anyway).
        self._confirm_timeout_s = max(0.05, 10 * fetch_max_wait_ms / 1000)
        self._clock = clock
        self._routes = routes
        self._consumer: AIOKafkaConsumer | None = None
        self._admin: _Admin | None = None
        self._live: dict[int, int] = {}  # segment → partitions, still fetched
        self._drained: dict[int, dict[int, int]] = {}  # segment → {partition: end}
        self._retired: set[int] = set()
        self._sealed_seen: dict[int, float] = {}  # segment → wall ms the seal was seen
        self._returned: dict[TopicPartition, int] = {}  # next offset after returned records
        self._seeked: dict[TopicPartition, int] = {}  # where each partition was last sought
        self._pending: dict[TopicPartition, _Pending] = {}  # fetched, not returned yet
        self._committed: dict[TopicPartition, int] = {}  # as asked by the caller
        self._held: set[TopicPartition] = set()  # committed one below _committed
        self._next_refresh = 0.0
        self.released_by_end_offsets = 0  # held partitions let go by _confirm_earlier
        self.contact_at = 0.0  # monotonic time of the last topic listing that succeeded
        self._stale = False  # the assignment lags the segments (a reassignment failed)
        self._epoch_tp = TopicPartition(f"{log}.epoch", 0)
        self._epoch_present = False
        self._epoch: bytes | None = None
        self._epoch_changed = False
        self._bound = _log.bind(log=log, group=group_id)

    async def start(self) -> None:
        """Connect and discover the existing segments (closing any earlier clients first).

        A supervisor restarts a crashed applier by starting its reader again.
        Without the stop, the old consumer and admin client stayed connected,
        with their background tasks, until the process exited; and with the
        old segments still known, the new consumer was never assigned any.
        """
        # No release of held offsets on a restart: the janitor could delete a
        # segment the new consumer is about to be assigned again (one record
        # per partition is read twice instead).
        await self._close(release=False)
        # A restart reads from the committed offsets again: what the last run
        # returned but nobody committed may not have been applied.
        self._forget_positions()
        self._wait_ms = self._fetch_max_wait_ms  # the consumer below starts fast
        self._active_until = time.monotonic() + self._quiet_after_s
        self._admin = _Admin(self._bootstrap, self._request_timeout_ms, self._routes)
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self._bootstrap,
            group_id=self._group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=self._fetch_max_wait_ms,
            request_timeout_ms=self._request_timeout_ms,
            retry_backoff_ms=50,
            # aiokafka's fetch routine can miss the completion of its own
            # fetch: woken by another future (a resumed partition, records
            # consumed) in the loop step where the fetch finished, it sees the
            # node still in flight (the task's done callback has not run yet),
            # sends nothing and sleeps this long (default 200 ms) with no
            # fetch outstanding. Seen: ~1 % of single writes delivered
            # ~200 ms late. Two fetch waits bound that stall.
            consumer_timeout_ms=2 * self._fetch_max_wait_ms,
        )
        route_client(self._consumer._client, self._routes)
        try:
            await self._admin.start()
            with _translated("reader start"):
                await self._consumer.start()
            await self._refresh()
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        """Commit what was held back (nothing is read any more), then close every client."""
        await self._close(release=True)

    async def _close(self, *, release: bool) -> None:
        consumer, admin = self._consumer, self._admin
        self._consumer = self._admin = None
        try:
            if consumer is not None and release:
                await self._release_held(consumer)
        finally:  # closed even when the release is cancelled
            self._held.clear()
            if consumer is not None:
                with contextlib.suppress(KafkaError, OSError):
                    await consumer.stop()
            if admin is not None:
                await admin.close()

    async def _release_held(self, consumer: AIOKafkaConsumer) -> None:
        """Best effort: a failure only means one record per partition is read again."""
        assigned = consumer.assignment()
        release = {tp: self._committed[tp] for tp in self._held if tp in assigned}
        self._held.clear()
        if not release:
            return
        with contextlib.suppress(LogError, TimeoutError):
            async with asyncio.timeout(self._request_timeout_ms / 1000):
                with _translated("release"):
                    await consumer.commit(release)

    @property
    def epoch(self) -> str | None:
        """The broker epoch (see :meth:`KafkaEventLog.epoch`) last seen, if any."""
        return self._epoch.decode() if self._epoch is not None else None

    def _require(self) -> tuple[AIOKafkaConsumer, _Admin]:
        if self._consumer is None or self._admin is None:
            raise LogError("the log reader is not started")
        return self._consumer, self._admin

    def _tp(self, segment: int, partition: int) -> TopicPartition:
        return TopicPartition(topic_name(self._log_name, segment), partition)

    @property
    def _gate_poll_s(self) -> float:
        # While records wait for a later fetch of an earlier segment (an
        # empty fetch does not wake getmany), look again after two fetch
        # waits. Half a fetch wait held records ~7.9 ms instead of ~10.5 ms,
        # but a CI run then hung in the segment-deletion test (not reproduced
        # in 22 runs alone): reverted until that is understood.
        return max(0.01, 2 * self._wait_ms / 1000)

    @property
    def quiet(self) -> bool:
        """Whether the quiet cadence is in effect.

        Only with ``quiet_fetch_wait_ms``: once no read returned records for
        ``quiet_after_ms``, fetches wait ``quiet_fetch_wait_ms`` instead of
        ``fetch_max_wait_ms``; the first read that returns records brings the
        fast wait back. The bundled broker answers a fetch only when its wait
        expires, so a reader polls it every wait even when the log is idle:
        CPU on both sides for nothing. The first record after a quiet spell
        waits at most one quiet wait more. Only for a log whose first record
        after a pause may come that much later: a gateway's own log, whose
        events its write-through applied already. While records flow the
        wait stays fast (an earlier rule that went quiet while the records
        were only already-applied ones made an overloaded gateway's
        subscribers later).
        """
        return self._quiet_wait_ms is not None and time.monotonic() >= self._active_until

    def _cadence(self, consumer: AIOKafkaConsumer) -> None:
        """Set the fetch wait the cadence asks for."""
        wait = (
            self._quiet_wait_ms if self.quiet and self._quiet_wait_ms else self._fetch_max_wait_ms
        )
        if wait != self._wait_ms:
            self._wait_ms = wait
            _set_fetch_wait(consumer, wait)

    async def read(self, max_records: int | None = None, timeout_ms: int = 1000) -> list[LogRecord]:
        """Up to ``max_records`` records, waiting at most ``timeout_ms`` for the first."""
        consumer, _ = self._require()
        limit = max_records or self._max_records
        deadline = time.monotonic() + timeout_ms / 1000
        self._cadence(consumer)
        records = await self._read(consumer, limit, deadline)
        if records:
            self._active_until = time.monotonic() + self._quiet_after_s
        return records

    async def _read(
        self, consumer: AIOKafkaConsumer, limit: int, deadline: float
    ) -> list[LogRecord]:
        while True:
            if time.monotonic() >= self._next_refresh:
                await self._refresh()
            gated = await self._gate()
            ready = self._take(limit)
            if ready:
                return ready
            now = time.monotonic()
            wait = max(0.0, min(deadline, self._next_refresh) - now)
            if gated:
                # An empty fetch updates a highwater without waking getmany:
                # look again soon rather than at the next refresh.
                wait = min(wait, self._gate_poll_s)
            if not consumer.assignment():
                await asyncio.sleep(wait)
                batch = {}
            else:
                with _translated("read"):
                    batch = await consumer.getmany(timeout_ms=int(wait * 1000), max_records=limit)
            self._hold(batch)
            records = self._take(limit)
            # At most one ListOffsets request per fetch cycle, after it.
            if not records and self._pending and await self._confirm_earlier():
                records = self._take(limit)
            if self._epoch_changed:
                await self._reset("epoch_changed")
            if records or time.monotonic() >= deadline:
                return records

    def _hold(self, batch: Mapping[TopicPartition, list[Any]]) -> None:
        """Convert fetched records and hold them until :meth:`_take` releases them."""
        consumer, _ = self._require()
        for tp, messages in batch.items():
            if tp == self._epoch_tp:
                self._observe_epoch(messages)
                continue
            segment = parse_topic(self._log_name, tp.topic)
            if segment is None or not messages:
                continue
            # The fetch response that brought these (a partition with buffered
            # records is not fetched again): its time, at the latest.
            fetched_at = consumer.last_poll_timestamp(tp) or int(time.time() * 1000)
            pending = self._pending.setdefault(tp, _Pending(fetched_at))
            pending.fetched_at = max(pending.fetched_at, fetched_at)
            pending.verified = False
            pending.records.extend(
                LogRecord(
                    m.topic,
                    segment,
                    m.partition,
                    m.offset,
                    m.key,
                    m.value or b"",
                    tuple(m.headers),
                    m.timestamp,
                )
                for m in messages
            )

    def _take(self, limit: int) -> list[LogRecord]:
        """Up to ``limit`` held records that may be returned now, in order per partition.

        Partition *p* of segment *s* is read while partition *p* of an earlier
        segment may still receive records (until that one is sealed), so a
        gate checked before the fetch cannot keep a key's records in order: a
        record of *s* fetched right after an earlier record of its key reached
        the earlier segment (after the gate last saw that one's highwater)
        would come out first. Records of *s* are therefore returned only once
        partition *p* of every earlier live segment was fetched again by a
        later fetch (every record of the key appended before them is below that
        highwater) and returned up to that highwater.
        """
        out: list[LogRecord] = []
        for tp in sorted(self._pending, key=lambda t: (t.partition, t.topic)):
            if len(out) >= limit:
                break
            pending = self._pending[tp]
            if not pending.verified:
                pending.verified = self._follows(tp, pending.fetched_at)
                if not pending.verified:
                    continue
            chunk = pending.records[: limit - len(out)]
            del pending.records[: len(chunk)]
            out.extend(chunk)
            self._returned[tp] = chunk[-1].offset + 1
            if not pending.records:
                del self._pending[tp]
        out.sort(key=lambda r: (r.partition, r.segment, r.offset))
        return out

    def _earlier(self, tp: TopicPartition) -> Iterator[TopicPartition]:
        """Partition ``tp.partition`` of every live segment before ``tp``'s."""
        segment = parse_topic(self._log_name, tp.topic)
        if segment is None:
            return
        for s, partitions in self._live.items():
            if s < segment and tp.partition < partitions:
                yield self._tp(s, tp.partition)

    def _follows(self, tp: TopicPartition, fetched_at: int) -> bool:
        """Whether everything before ``tp``'s records fetched at ``fetched_at`` was returned."""
        consumer, _ = self._require()
        for earlier in self._earlier(tp):
            highwater = consumer.highwater(earlier)
            polled = consumer.last_poll_timestamp(earlier)
            if (
                earlier in self._pending
                or highwater is None
                or polled is None
                or polled <= fetched_at  # the same fetch may have read it first
                or self._delivered(earlier) < highwater
            ):
                return False
        return True

    async def _confirm_earlier(self) -> bool:
        """Ask the broker whether earlier segments grew; whether held records may go now.

        Held records wait (see :meth:`_take`) until every earlier segment's
        partition was fetched *after* them. An empty fetch comes back only
        when the broker's fetch wait expires and does not wake ``getmany``,
        so that wait held ~40 % of the records ~10 ms in the 4 s after each
        roll. A ListOffsets request answers at once: asked now (after the
        held records were fetched), an end offset no higher than the
        partition's last fetched highwater means nothing was appended there
        since, so every record that could precede the held ones was returned.
        That holds for Apache Kafka (the end offset is the highwater) and for
        the bundled broker, whose end offset is the last batch's base + 1 (a
        new batch starts at the old highwater, so it reads higher). The
        request goes through the admin client to the partition's leader as
        the consumer knows it (:meth:`_Admin.end_offsets`), never through the
        consumer, which would add the topic to its metadata when it does not
        know the leader. Any failure leaves the records to the next fetch.
        """
        consumer, admin = self._require()
        cluster = consumer._client.cluster
        waiting: dict[TopicPartition, list[tuple[TopicPartition, int]]] = {}
        leaders: dict[TopicPartition, int] = {}
        for tp, pending in self._pending.items():
            if pending.verified:
                continue
            blockers: list[tuple[TopicPartition, int]] = []
            for earlier in self._earlier(tp):
                highwater = consumer.highwater(earlier)
                leader = cluster.leader_for_partition(earlier)
                if (
                    earlier in self._pending
                    or highwater is None
                    or self._delivered(earlier) < highwater
                    or leader is None
                    or leader < 0
                ):
                    break  # records of it are still to come (a fetch brings them)
                blockers.append((earlier, highwater))
                leaders[earlier] = leader
            else:
                if blockers:
                    waiting[tp] = blockers
        if not waiting:
            return False
        ask = {earlier: leaders[earlier] for b in waiting.values() for earlier, _ in b}
        try:
            ends = await admin.end_offsets(ask, timeout_s=self._confirm_timeout_s)
        except (LogError, TimeoutError) as exc:
            self._bound.debug("confirm_failed", error=str(exc))
            return False
        released = False
        for tp, blockers in waiting.items():
            held = self._pending.get(tp)
            if held is None or held.verified:
                continue
            if all(earlier in ends and ends[earlier] <= hw for earlier, hw in blockers):
                held.verified = True
                released = True
                self.released_by_end_offsets += 1
        return released

    def _delivered(self, tp: TopicPartition) -> int:
        """The offset after what was returned from ``tp`` (where it was sought if nothing)."""
        return self._returned.get(tp, self._seeked.get(tp, 0))

    def _observe_epoch(self, messages: list[Any]) -> None:
        first = next((m.value for m in messages if m.offset == 0), None)
        if first is None:
            return
        if self._epoch is not None and first != self._epoch:
            self._epoch_changed = True
        self._epoch = first

    async def _reset(self, reason: str) -> None:
        """Forget every segment and position: the broker lost its state.

        Positions then come from the committed offsets again (earliest where
        the broker lost those too); records may be read twice, never skipped.
        """
        self._bound.warning("log_reader_reset", reason=reason)
        self._epoch_changed = False
        self._forget_positions()
        self._retired.clear()
        consumer, _ = self._require()
        consumer.assign([])  # drop every position, so none is carried over
        await self._refresh()
        await self._reassign()

    def _forget_positions(self) -> None:
        """Drop every segment and position, so the next assignment reads from commits."""
        self._live.clear()
        self._drained.clear()
        self._sealed_seen.clear()
        self._returned.clear()
        self._seeked.clear()
        self._pending.clear()
        self._committed.clear()
        self._held.clear()

    async def commit(self, records: Iterable[LogRecord]) -> None:
        """Commit, per topic-partition, the highest offset read plus one.

        An offset that reaches the partition's highwater is committed one
        lower until the segment is released (see the module docstring).
        """
        consumer, _ = self._require()
        offsets: dict[TopicPartition, int] = {}
        for r in records:
            tp = TopicPartition(r.topic, r.partition)
            offsets[tp] = max(offsets.get(tp, 0), r.offset + 1)
        assigned = consumer.assignment()
        gone = [tp for tp in offsets if tp not in assigned]
        if gone:
            self._bound.warning("commit_skipped_vanished", partitions=len(gone))
        offsets = {tp: o for tp, o in offsets.items() if tp in assigned}
        if not offsets:
            return
        sent: dict[TopicPartition, int] = {}
        held: set[TopicPartition] = set()
        for tp, offset in offsets.items():
            highwater = consumer.highwater(tp)
            if highwater is None or offset >= highwater:
                held.add(tp)
                sent[tp] = offset - 1
            else:
                sent[tp] = offset
        # Bounded: aiokafka retries a commit (and the coordinator lookup
        # before it) for as long as the error is retriable. After a broker
        # restart an applier's consumer was seen retrying its coordinator
        # lookup (NodeNotReadyError) until a test's 30 s deadline; the caller
        # now gets LogUnavailableError and restarts the reader with fresh
        # clients (the applier's supervisor does).
        with _translated("commit"):
            async with asyncio.timeout(2 * self._request_timeout_ms / 1000):
                await consumer.commit(sent)
        self._held = (self._held - offsets.keys()) | held
        self._committed.update(offsets)
        await self._retire()

    async def lag(self) -> dict[int, int]:
        """Records behind the highwater, per partition index, over live segments."""
        lag: dict[int, int] = {}
        for p in await self.positions():
            if p.drained or p.highwater is None or p.position is None:
                continue
            lag[p.partition] = lag.get(p.partition, 0) + max(0, p.highwater - p.position)
        return lag

    async def positions(self) -> list[PartitionPosition]:
        """The reader's position and the highwater of every assigned partition."""
        consumer, _ = self._require()
        out: list[PartitionPosition] = []
        for tp in sorted(consumer.assignment()):
            segment = parse_topic(self._log_name, tp.topic)
            if segment is None:
                continue
            highwater = consumer.highwater(tp)
            position = self._delivered(tp) if highwater is not None else None
            out.append(
                PartitionPosition(
                    tp.topic, segment, tp.partition, position, highwater, segment in self._drained
                )
            )
        return out

    async def _position(self, tp: TopicPartition) -> int:
        consumer, _ = self._require()
        with _translated("position"):
            async with asyncio.timeout(self._request_timeout_ms / 1000):
                position: int = await consumer.position(tp)
                return position

    async def _refresh(self) -> None:
        _, admin = self._require()
        self._next_refresh = time.monotonic() + self._refresh_s
        try:
            topics = await admin.describe()
        except LogUnavailableError as exc:
            self._bound.warning("segment_refresh_failed", error=exc.message)
            return
        self.contact_at = time.monotonic()
        has_epoch = self._epoch_tp.topic in topics
        if self._epoch_present and not has_epoch:
            self._epoch_present = False
            self._epoch = None
            await self._reset("epoch_vanished")
            return
        epoch_added = has_epoch and not self._epoch_present
        self._epoch_present = has_epoch
        live = {
            s: topics[topic_name(self._log_name, s)] for s in segments_of(self._log_name, topics)
        }
        known = self._live.keys() | self._drained.keys()
        vanished = known - live.keys()
        added = live.keys() - known - self._retired
        self._retired &= live.keys()
        for s in vanished:
            self._bound.warning("segment_vanished", segment=s)
            self._live.pop(s, None)
            self._drained.pop(s, None)
            self._sealed_seen.pop(s, None)
        for s in added:
            self._live[s] = live[s]
        if vanished or added or epoch_added or self._stale:
            await self._reassign()
        if has_epoch:
            # Re-read the marker's first record every refresh: a broker that
            # restarted empty has a new one at the same offset. The first time,
            # wait for it, so a restart right after start is not missed.
            consumer, _ = self._require()
            if self._epoch_tp not in consumer.assignment():
                # The reassignment above failed (the broker is coming back):
                # seeking now would raise; the next refresh assigns again.
                self._stale = True
                return
            consumer.seek(self._epoch_tp, 0)
            if self._epoch is None:
                with _translated("read epoch"):
                    batch = await consumer.getmany(
                        self._epoch_tp, timeout_ms=_EPOCH_WAIT_MS, max_records=1
                    )
                self._observe_epoch(batch.get(self._epoch_tp, []))

    async def _reassign(
        self, retiring: Iterable[int] = (), release: Mapping[TopicPartition, int] | None = None
    ) -> None:
        """Assign the live and drained segments but ``retiring``.

        ``release`` is committed right before the assignment changes, with no
        await in between: once committed, the janitor may delete the segment.
        Every assigned partition is sought to a known offset (see
        :meth:`_starts`); until this succeeds, every refresh tries again.
        """
        consumer, _ = self._require()
        self._stale = True
        retiring = set(retiring)
        segments = {**self._live, **{s: len(ends) for s, ends in self._drained.items()}}
        segments = {s: n for s, n in segments.items() if s not in retiring}
        wanted = [self._tp(s, p) for s in sorted(segments) for p in range(segments[s])]
        keep = set(wanted)
        if self._epoch_present:
            wanted.append(self._epoch_tp)
        seek = await self._starts(keep)
        if release:
            with _translated("release"):
                await consumer.commit(dict(release))
        for s in retiring:
            self._drained.pop(s, None)
            self._retired.add(s)
        self._held &= keep
        self._returned = {tp: o for tp, o in self._returned.items() if tp in keep}
        self._committed = {tp: o for tp, o in self._committed.items() if tp in keep}
        self._seeked = seek
        self._pending.clear()  # fetched again from where the caller stopped
        consumer.assign(wanted)
        for tp, offset in seek.items():
            consumer.seek(tp, offset)
        if self._epoch_present:
            consumer.seek(self._epoch_tp, 0)  # re-read each refresh anyway
        self._stale = False
        self._bound.info(
            "segments_assigned", live=sorted(self._live), drained=sorted(self._drained)
        )

    async def _starts(self, tps: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        """The offset to read each of ``tps`` from once assigned.

        ``assign()`` forgets every position. A partition left without one makes
        aiokafka look up its committed offset, one partition per round trip
        (~100-250 ms each on Tansu), and it sends no fetch to the broker (the
        only node) until every such lookup is done. Under load, with paused
        partitions of later segments (never fetched) forgetting their positions
        at every reassignment, those lookups stopped finishing between two
        reassignments (one per roll): nothing was fetched any more, so no
        segment drained and the live segments piled up. So every partition is
        sought: to what was returned from it, else to where it was last
        sought, to 0 for a segment that is not current yet (empty), else
        to the group's committed offset, looked up here concurrently (0 when
        none: a segment topic starts at 0).
        """
        consumer, _ = self._require()
        current = segment_of(self._clock(), self._segment_ms)
        starts: dict[TopicPartition, int] = {}
        unknown: list[TopicPartition] = []
        for tp in tps:
            if tp in self._returned:
                starts[tp] = self._returned[tp]
            elif tp in self._seeked:
                starts[tp] = self._seeked[tp]
            elif (parse_topic(self._log_name, tp.topic) or 0) > current:
                starts[tp] = 0
            else:
                unknown.append(tp)
        if unknown:
            with _translated("committed"):
                async with asyncio.timeout(self._request_timeout_ms / 1000):
                    committed = await asyncio.gather(*(consumer.committed(tp) for tp in unknown))
            for tp, offset in zip(unknown, committed, strict=True):
                starts[tp] = offset if offset is not None else 0
        return starts

    def _known_position(self, tp: TopicPartition) -> int | None:
        """``tp``'s fetch position if the consumer has a valid one, without awaiting.

        ``consumer.position`` returns it at once in that case too, but the
        gate asks for every partition of every live segment on each read
        (~20 partitions every fetch wait); the coroutine and the timeout
        around it were ~8 % of an idle gateway's samples.
        """
        consumer, _ = self._require()
        subscription = consumer._subscription.subscription
        assignment = subscription.assignment if subscription is not None else None
        state = assignment.state_value(tp) if assignment is not None else None
        if state is None or not state.has_valid_position:
            return None
        position: int = state.position
        return position

    async def _caught_up(self, tp: TopicPartition) -> bool:
        consumer, _ = self._require()
        highwater = consumer.highwater(tp)
        if highwater is None:
            return False
        position = self._known_position(tp)
        if position is None:
            position = await self._position(tp)
        if position > highwater:
            self._bound.warning("partition_recreated", topic=tp.topic, partition=tp.partition)
            self._returned.pop(tp, None)
            self._pending.pop(tp, None)
            self._seeked[tp] = 0  # a segment topic starts at 0
            consumer.seek(tp, 0)
            return False
        return bool(self._delivered(tp) >= highwater)

    async def _gate(self) -> bool:
        """Pause what must wait for earlier segments; detect drained segments.

        Returns whether some partition waits for an earlier segment.
        """
        consumer, _ = self._require()
        now, wall = self._clock(), time.time() * 1000
        # A fetch sent at the quiet wait may still be in flight after the
        # cadence went fast again: "made after the seal" allows for the longer.
        fresh_ms = 2 * max(self._fetch_max_wait_ms, self._quiet_wait_ms or 0) + 10
        pause: list[TopicPartition] = []
        resume: list[TopicPartition] = []
        behind: set[int] = set()  # partition indexes with an earlier segment not caught up
        newly_drained: list[int] = []
        ahead: list[TopicPartition] = []
        for s in sorted(self._live):
            if is_ahead(s, now, self._segment_ms, self._grace_ms):
                # Created ahead of time and empty: no writer can have reached it
                # yet, so no fetch names it (each named partition costs this
                # reader and the broker on every fetch cycle).
                ahead.extend(self._tp(s, p) for p in range(self._live[s]))
                continue
            settled = is_settled(s, now, self._segment_ms, self._grace_ms)
            if settled:
                self._sealed_seen.setdefault(s, wall)
            drained = settled
            for p in range(self._live[s]):
                tp = self._tp(s, p)
                # Held records are dropped from the fetcher's buffer when paused;
                # the position stays after them, so nothing more is fetched.
                (pause if p in behind or tp in self._pending else resume).append(tp)
                caught = p not in behind and await self._caught_up(tp)
                if not caught:
                    behind.add(p)
                polled = consumer.last_poll_timestamp(tp) if caught else None
                if polled is None or polled < self._sealed_seen.get(s, wall) + fresh_ms:
                    drained = False
            if drained:
                newly_drained.append(s)
        gated = bool(pause)
        pause.extend(ahead)
        for s in self._drained:
            pause.extend(self._tp(s, p) for p in self._drained[s])
        if pause:
            consumer.pause(*pause)
        if resume:
            consumer.resume(*resume)
        for s in newly_drained:
            ends = {p: consumer.highwater(self._tp(s, p)) or 0 for p in range(self._live.pop(s))}
            self._drained[s] = ends
            self._sealed_seen.pop(s, None)
            self._bound.info("segment_drained", segment=s)
        if newly_drained:
            consumer.pause(*(self._tp(s, p) for s in newly_drained for p in self._drained[s]))
        await self._retire()
        return gated

    async def _retire(self) -> None:
        """Release and unassign drained segments whose records were all committed.

        Releasing commits what was held back and, for an empty partition,
        offset 0: the janitor deletes a segment only once every partition has
        a commit at its end.
        """
        done = [
            s
            for s, ends in self._drained.items()
            if all(
                end == 0
                or self._tp(s, p) not in self._returned
                or self._committed.get(self._tp(s, p), -1) >= end
                for p, end in ends.items()
            )
        ]
        if not done:
            return
        release: dict[TopicPartition, int] = {}
        for s in done:
            for p, end in self._drained[s].items():
                tp = self._tp(s, p)
                if tp in self._held:
                    release[tp] = self._committed[tp]
                elif end == 0:
                    release[tp] = 0
        await self._reassign(done, release)


def _set_fetch_wait(consumer: AIOKafkaConsumer, wait_ms: int) -> None:
    """Change the ``max_wait_time`` of the consumer's next fetch requests.

    aiokafka has no public setter; its fetcher reads this attribute for every
    FetchRequest it builds. Without it (another aiokafka) the wait stays as
    constructed and only the pacing of reads applies.
    """
    fetcher = getattr(consumer, "_fetcher", None)
    if fetcher is not None and hasattr(fetcher, "_fetch_max_wait_ms"):
        fetcher._fetch_max_wait_ms = wait_ms
