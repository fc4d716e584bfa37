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
import time
from collections.abc import Iterable, Mapping
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from replication.log import (
    DEFAULT_LOG,
    LogRecord,
    PartitionPosition,
    WallClock,
    _Admin,
    _translated,
    wall_ms,
)
from replication.log_errors import LogError, LogUnavailableError
from replication.segments import (
    DEFAULT_GRACE_MS,
    DEFAULT_SEGMENT_MS,
    is_settled,
    parse_topic,
    segment_of,
    segments_of,
    topic_name,
)

__all__ = ["KafkaLogReader"]

_log = structlog.get_logger("replication.log")
_EPOCH_WAIT_MS = 200  # bounded wait for the marker a reader has not seen yet


class KafkaLogReader:
    """Reads every segment of ``log`` in segment order, committing as ``group_id``.

    Manual assignment (group joins are slow on Tansu) with commits under
    ``group_id``, so a recreated reader resumes from the committed offsets.
    Segment topics are discovered by listing topics every ``refresh_ms``; the
    next segment is assigned as soon as it exists. Partition *p* of a segment
    is fetched only once partition *p* of every earlier live segment is
    caught up, so one key's records come out in order across a roll. A
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
    ) -> None:
        if fetch_max_wait_ms < 1:
            raise ValueError("fetch_max_wait_ms must be ≥ 1 (0 never delivers on Tansu)")
        self._bootstrap = bootstrap
        self._group_id = group_id
        self._log_name = log
        self._segment_ms = segment_ms
        self._grace_ms = grace_ms
        self._fetch_max_wait_ms = fetch_max_wait_ms
        self._max_records = max_records
        self._refresh_s = refresh_ms / 1000
        self._gate_poll_s = max(0.01, 2 * fetch_max_wait_ms / 1000)
        self._request_timeout_ms = request_timeout_ms
        self._clock = clock
        self._consumer: AIOKafkaConsumer | None = None
        self._admin: _Admin | None = None
        self._live: dict[int, int] = {}  # segment → partitions, still fetched
        self._drained: dict[int, dict[int, int]] = {}  # segment → {partition: end}
        self._retired: set[int] = set()
        self._sealed_seen: dict[int, float] = {}  # segment → wall ms the seal was seen
        self._returned: dict[TopicPartition, int] = {}  # next offset after returned records
        self._committed: dict[TopicPartition, int] = {}  # as asked by the caller
        self._held: set[TopicPartition] = set()  # committed one below _committed
        self._next_refresh = 0.0
        self._epoch_tp = TopicPartition(f"{log}.epoch", 0)
        self._epoch_present = False
        self._epoch: bytes | None = None
        self._epoch_changed = False
        self._bound = _log.bind(log=log, group=group_id)

    async def start(self) -> None:
        """Connect and discover the existing segments."""
        self._admin = _Admin(self._bootstrap, self._request_timeout_ms)
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self._bootstrap,
            group_id=self._group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=self._fetch_max_wait_ms,
            request_timeout_ms=self._request_timeout_ms,
            retry_backoff_ms=50,
        )
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
        consumer, admin = self._consumer, self._admin
        self._consumer = self._admin = None
        if consumer is not None:
            await self._release_held(consumer)
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

    async def read(self, max_records: int | None = None, timeout_ms: int = 1000) -> list[LogRecord]:
        """Up to ``max_records`` records, waiting at most ``timeout_ms`` for the first."""
        consumer, _ = self._require()
        limit = max_records or self._max_records
        deadline = time.monotonic() + timeout_ms / 1000
        while True:
            if time.monotonic() >= self._next_refresh:
                await self._refresh()
            gated = await self._gate()
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
            records = self._convert(batch)
            if self._epoch_changed:
                await self._reset("epoch_changed")
            if records or time.monotonic() >= deadline:
                return records

    def _convert(self, batch: Mapping[TopicPartition, list[Any]]) -> list[LogRecord]:
        records: list[LogRecord] = []
        for tp, messages in batch.items():
            if tp == self._epoch_tp:
                self._observe_epoch(messages)
                continue
            segment = parse_topic(self._log_name, tp.topic)
            if segment is None or not messages:
                continue
            records.extend(
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
            self._returned[tp] = messages[-1].offset + 1
        records.sort(key=lambda r: (r.partition, r.segment, r.offset))
        return records

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
        self._live.clear()
        self._drained.clear()
        self._sealed_seen.clear()
        self._returned.clear()
        self._committed.clear()
        self._held.clear()
        self._retired.clear()
        consumer, _ = self._require()
        consumer.assign([])  # drop every position, so none is carried over
        await self._refresh()
        await self._reassign()

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
        with _translated("commit"):
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
            position = await self._position(tp) if highwater is not None else None
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
        if vanished or added or epoch_added:
            await self._reassign()
        if has_epoch:
            # Re-read the marker's first record every refresh: a broker that
            # restarted empty has a new one at the same offset. The first time,
            # wait for it, so a restart right after start is not missed.
            consumer, _ = self._require()
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
        """
        consumer, _ = self._require()
        retiring = set(retiring)
        segments = {**self._live, **{s: len(ends) for s, ends in self._drained.items()}}
        segments = {s: n for s, n in segments.items() if s not in retiring}
        wanted = [self._tp(s, p) for s in sorted(segments) for p in range(segments[s])]
        keep = set(wanted)
        if self._epoch_present:
            wanted.append(self._epoch_tp)
        # assign() forgets every position and the fetcher then waits for
        # committed-offset lookups (~250 ms on Tansu): carry known positions
        # over, and start segments that are not current yet at 0 (empty).
        seek = {tp: o for tp, o in self._returned.items() if tp in keep}
        assigned = consumer.assignment()
        for tp in assigned & keep:
            if tp not in seek and consumer.highwater(tp) is not None:
                seek[tp] = await self._position(tp)
        current = segment_of(self._clock(), self._segment_ms)
        for tp in keep - assigned:
            segment = parse_topic(self._log_name, tp.topic)
            if segment is not None and segment > current:
                seek[tp] = 0
        if release:
            with _translated("release"):
                await consumer.commit(dict(release))
        for s in retiring:
            self._drained.pop(s, None)
            self._retired.add(s)
        self._held &= keep
        self._returned = {tp: o for tp, o in self._returned.items() if tp in keep}
        self._committed = {tp: o for tp, o in self._committed.items() if tp in keep}
        consumer.assign(wanted)
        for tp, offset in seek.items():
            consumer.seek(tp, offset)
        self._bound.info(
            "segments_assigned", live=sorted(self._live), drained=sorted(self._drained)
        )

    async def _caught_up(self, tp: TopicPartition) -> bool:
        consumer, _ = self._require()
        highwater = consumer.highwater(tp)
        if highwater is None:
            return False
        position = await self._position(tp)
        if position > highwater:
            self._bound.warning("partition_recreated", topic=tp.topic, partition=tp.partition)
            self._returned.pop(tp, None)
            with _translated("seek"):
                await consumer.seek_to_beginning(tp)
            return False
        return bool(position >= highwater)

    async def _gate(self) -> bool:
        """Pause what must wait for earlier segments; detect drained segments.

        Returns whether some partition waits for an earlier segment.
        """
        consumer, _ = self._require()
        now, wall = self._clock(), time.time() * 1000
        fresh_ms = 2 * self._fetch_max_wait_ms + 10
        pause: list[TopicPartition] = []
        resume: list[TopicPartition] = []
        behind: set[int] = set()  # partition indexes with an earlier segment not caught up
        newly_drained: list[int] = []
        for s in sorted(self._live):
            settled = is_settled(s, now, self._segment_ms, self._grace_ms)
            if settled:
                self._sealed_seen.setdefault(s, wall)
            drained = settled
            for p in range(self._live[s]):
                tp = self._tp(s, p)
                (pause if p in behind else resume).append(tp)
                caught = p not in behind and await self._caught_up(tp)
                if not caught:
                    behind.add(p)
                polled = consumer.last_poll_timestamp(tp) if caught else None
                if polled is None or polled < self._sealed_seen.get(s, wall) + fresh_ms:
                    drained = False
            if drained:
                newly_drained.append(s)
        gated = bool(pause)
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
