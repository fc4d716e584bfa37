"""The event log over the Kafka protocol (aiokafka): producer, reader, janitor.

The log is bounded by acknowledgement (DESIGN §5): a series of segment topics
(:mod:`replication.segments`) that roll by time, are sealed, and are deleted
by :class:`SegmentJanitor` once every registered consumer group has passed
them. Written against the Tansu broker's quirks and valid on Apache Kafka:

- no idempotent producer unless the settings say the broker has one;
- ``end_offsets`` under-reports after batched produce, so true ends come from
  the fetch ``highwater``;
- ``fetch_max_wait_ms=0`` never delivers;
- any metadata request naming a missing topic auto-creates it with 4
  partitions, so topics are always created explicitly before first use and
  a reader only assigns topics it saw listed.

Every library exception is translated in :func:`_translated`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Protocol

import msgspec
import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, KafkaTimeoutError, NodeNotReadyError, for_code
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_exponential

from replication.log_errors import LogError, LogUnavailableError
from replication.segments import (
    DEFAULT_GRACE_MS,
    DEFAULT_SEGMENT_MS,
    GroupProgress,
    deletable,
    is_sealed,
    is_settled,
    open_segments,
    parse_topic,
    segment_of,
    segment_passed,
    segments_of,
    topic_name,
)

__all__ = [
    "DEFAULT_LOG",
    "Appended",
    "EventLog",
    "KafkaEventLog",
    "KafkaLogReader",
    "LogReader",
    "LogRecord",
    "OutgoingRecord",
    "PartitionPosition",
    "SegmentJanitor",
    "wall_ms",
]

DEFAULT_LOG = "memsync.events"
Headers = Sequence[tuple[str, bytes]]
WallClock = Callable[[], int]

_log = structlog.get_logger(__name__)
_TOPIC_EXISTS = 36
_UNKNOWN_TOPIC = 3
_EPOCH_WAIT_MS = 200  # bounded wait for the marker a reader has not seen yet


def wall_ms() -> int:
    """The wall clock in milliseconds (the default clock of every class here)."""
    return time.time_ns() // 1_000_000


class Appended(msgspec.Struct, frozen=True):
    """Where an appended record landed."""

    topic: str
    segment: int
    partition: int
    offset: int


class OutgoingRecord(msgspec.Struct, frozen=True):
    """One record to append with :meth:`EventLog.append_many`."""

    key: bytes
    value: bytes
    headers: tuple[tuple[str, bytes], ...] = ()


class LogRecord(msgspec.Struct, frozen=True):
    """One record read from the log."""

    topic: str
    segment: int
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...]
    timestamp_ms: int


class PartitionPosition(msgspec.Struct, frozen=True):
    """A reader's position in one segment partition, for metrics."""

    topic: str
    segment: int
    partition: int
    position: int | None
    highwater: int | None
    drained: bool


class EventLog(Protocol):
    """The producer side of the regional log."""

    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    async def append(self, key: bytes, value: bytes, headers: Headers = ()) -> Appended: ...
    async def append_many(self, records: Sequence[OutgoingRecord]) -> list[Appended]: ...
    async def epoch(self) -> str: ...


class LogReader(Protocol):
    """The consumer side of the regional log."""

    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    async def read(
        self, max_records: int | None = None, timeout_ms: int = 1000
    ) -> list[LogRecord]: ...
    async def commit(self, records: Iterable[LogRecord]) -> None: ...
    async def lag(self) -> dict[int, int]: ...


# -- error translation: the one place -------------------------------------------------


def _translate(exc: BaseException, op: str) -> LogError:
    message = f"{op}: {type(exc).__name__}: {exc}"
    unavailable = isinstance(exc, TimeoutError | OSError | KafkaTimeoutError | NodeNotReadyError)
    if unavailable or (isinstance(exc, KafkaError) and exc.retriable):
        return LogUnavailableError(message)
    return LogError(message)


@contextlib.contextmanager
def _translated(op: str) -> Iterator[None]:
    """Turn aiokafka, socket and timeout exceptions into :class:`LogError`s."""
    try:
        yield
    except LogError:
        raise
    except (KafkaError, OSError, TimeoutError) as exc:
        raise _translate(exc, op) from exc


def _retrying(deadline_s: float) -> AsyncRetrying:
    """Retry a *safe* operation (metadata, topic creation) while the log is unavailable."""
    return AsyncRetrying(
        stop=stop_after_delay(deadline_s),
        wait=wait_exponential(multiplier=0.02, max=0.5),
        retry=retry_if_exception_type(LogUnavailableError),
        reraise=True,
    )


class _Admin:
    """Topic administration with retries and per-topic error codes checked."""

    def __init__(self, bootstrap: str, request_timeout_ms: int) -> None:
        self._timeout_s = request_timeout_ms / 1000
        self._client = AIOKafkaAdminClient(
            bootstrap_servers=bootstrap, request_timeout_ms=request_timeout_ms
        )

    async def start(self) -> None:
        with _translated("admin start"):
            await self._client.start()

    async def close(self) -> None:
        await self._client.close()

    async def create(self, topics: Mapping[str, int]) -> None:
        """Create topics (name → partitions); existing ones are left alone."""
        async for attempt in _retrying(self._timeout_s):
            with attempt, _translated("create topics"):
                response = await self._client.create_topics(
                    [NewTopic(name, n, 1) for name, n in topics.items()]
                )
                for topic, code, *_ in response.topic_errors:
                    if code not in (0, _TOPIC_EXISTS):
                        raise for_code(code)(f"create {topic}")

    async def describe(self) -> dict[str, int]:
        """Every topic (name → partition count); names none, so creates none."""
        async for attempt in _retrying(self._timeout_s):
            with attempt, _translated("list topics"):
                topics: list[dict[str, Any]] = await self._client.describe_topics(None)
                return {t["topic"]: len(t["partitions"]) for t in topics if t["error_code"] == 0}
        raise AssertionError("unreachable")  # pragma: no cover

    async def delete(self, topics: Sequence[str]) -> None:
        with _translated("delete topics"):
            response = await self._client.delete_topics(list(topics))
            for topic, code in response.topic_error_codes:
                if code not in (0, _UNKNOWN_TOPIC):
                    raise for_code(code)(f"delete {topic}")


# -- producer -------------------------------------------------------------------------


class KafkaEventLog:
    """Appends records to the current segment of ``log`` with ``acks="all"``.

    Records are keyed by memory key, so one memory stays in one partition
    (every segment has ``partitions`` partitions). The current and the next
    segment are created ahead by a background task; a record whose
    acknowledgement arrives after its segment was sealed is appended again to
    the current one (at-least-once; consumers deduplicate by event id).
    """

    def __init__(
        self,
        bootstrap: str,
        *,
        log: str = DEFAULT_LOG,
        partitions: int = 8,
        segment_ms: int = DEFAULT_SEGMENT_MS,
        grace_ms: int = DEFAULT_GRACE_MS,
        clock: WallClock = wall_ms,
        request_timeout_ms: int = 2_000,
        idempotent: bool = False,
        linger_ms: int = 0,
        max_reappends: int = 3,
    ) -> None:
        if partitions < 1:
            raise ValueError("partitions must be at least 1")
        self._bootstrap = bootstrap
        self._log_name = log
        self._partitions = partitions
        self._segment_ms = segment_ms
        self._grace_ms = grace_ms
        self._clock = clock
        self._request_timeout_ms = request_timeout_ms
        self._timeout_s = request_timeout_ms / 1000
        self._idempotent = idempotent
        self._linger_ms = linger_ms
        self._max_reappends = max_reappends
        self._producer: AIOKafkaProducer | None = None
        self._admin: _Admin | None = None
        self._created: set[int] = set()
        self._create_lock = asyncio.Lock()
        self._keeper: asyncio.Task[None] | None = None
        self._bound = _log.bind(log=log)

    @property
    def log(self) -> str:
        """The log's name."""
        return self._log_name

    async def start(self) -> None:
        """Connect and create the open segments; raises :class:`LogUnavailableError`."""
        self._admin = _Admin(self._bootstrap, self._request_timeout_ms)
        self._producer = AIOKafkaProducer(
            bootstrap_servers=self._bootstrap,
            acks="all",
            enable_idempotence=self._idempotent,
            request_timeout_ms=self._request_timeout_ms,
            linger_ms=self._linger_ms,
            retry_backoff_ms=50,
        )
        try:
            await self._admin.start()
            with _translated("producer start"):
                await self._producer.start()
            await self._ensure_open(force=True)
        except BaseException:
            await self._close_clients()
            raise
        self._keeper = asyncio.create_task(self._keep_open(), name=f"segments:{self._log_name}")

    async def stop(self) -> None:
        """Cancel the background task and close every client."""
        if self._keeper is not None:
            self._keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keeper
            self._keeper = None
        await self._close_clients()

    async def _close_clients(self) -> None:
        producer, admin = self._producer, self._admin
        self._producer = self._admin = None
        if producer is not None:
            with contextlib.suppress(KafkaError, OSError):
                await producer.stop()
        if admin is not None:
            await admin.close()

    @property
    def started(self) -> bool:
        """Whether the producer is connected (``start`` succeeded)."""
        return self._producer is not None

    def _require(self) -> tuple[AIOKafkaProducer, _Admin]:
        if self._producer is None or self._admin is None:
            raise LogUnavailableError("the event log is not connected (yet)")
        return self._producer, self._admin

    async def _keep_open(self) -> None:
        interval = max(0.05, min(self._segment_ms / 4000, 0.5))
        while True:
            await asyncio.sleep(interval)
            try:
                await self._ensure_open(force=True)
            except LogError as exc:
                self._bound.warning("segment_precreate_failed", error=exc.message)

    async def _ensure_open(self, *, force: bool) -> None:
        current, following = open_segments(self._clock(), self._segment_ms)
        if force:
            _, admin = self._require()
            await admin.create(
                {topic_name(self._log_name, s): self._partitions for s in (current, following)}
            )
        for segment in (current, following):
            await self._ensure(segment)
        self._created = {s for s in self._created if s >= current - 1}

    async def _ensure(self, segment: int) -> None:
        """Create a segment topic before anything names it in a metadata request."""
        if segment in self._created:
            return
        async with self._create_lock:
            if segment in self._created:
                return
            producer, admin = self._require()
            topic = topic_name(self._log_name, segment)
            await admin.create({topic: self._partitions})
            with _translated("segment metadata"):
                found = await producer.partitions_for(topic)
            if len(found) != self._partitions:
                self._bound.error(
                    "segment_partition_mismatch",
                    topic=topic,
                    expected=self._partitions,
                    found=len(found),
                )
            self._created.add(segment)
            self._bound.debug("segment_created", topic=topic)

    async def append(self, key: bytes, value: bytes, headers: Headers = ()) -> Appended:
        """Append one record and wait for ``acks="all"``; bounded by the request timeout."""
        (appended,) = await self.append_many([OutgoingRecord(key, value, tuple(headers))])
        return appended

    async def append_many(self, records: Sequence[OutgoingRecord]) -> list[Appended]:
        """Append records concurrently (keeping their order per key) and wait for all acks."""
        producer, _ = self._require()
        with _translated("append"):
            async with asyncio.timeout(self._timeout_s):
                return await self._append(producer, records)

    async def _append(
        self, producer: AIOKafkaProducer, records: Sequence[OutgoingRecord]
    ) -> list[Appended]:
        for attempt in range(self._max_reappends + 1):
            segment = segment_of(self._clock(), self._segment_ms)
            await self._ensure(segment)
            topic = topic_name(self._log_name, segment)
            futures = [
                await producer.send(topic, r.value, key=r.key, headers=list(r.headers))
                for r in records
            ]
            results: list[Any] = await asyncio.gather(*futures, return_exceptions=True)
            for result in results:
                if isinstance(result, BaseException):
                    self._created.discard(segment)
                    raise result
            if not is_sealed(segment, self._clock(), self._segment_ms, self._grace_ms):
                return [Appended(topic, segment, m.partition, m.offset) for m in results]
            self._bound.warning(
                "append_acked_after_seal", segment=segment, records=len(records), attempt=attempt
            )
        raise LogUnavailableError("acknowledgements keep arriving after the segment seal")

    async def epoch(self) -> str:
        """An identity of the broker's state; changes when the broker lost its data.

        The first record of the marker topic ``{log}.epoch``; written (with a
        random id) when the topic is missing or empty. Callers compare epochs
        and re-publish from their journals when it changed.
        """
        producer, admin = self._require()
        topic = f"{self._log_name}.epoch"
        with _translated("epoch"):
            async with asyncio.timeout(self._timeout_s * 2):
                await admin.create({topic: 1})
                first = await self._first_value(topic)
                if first is None:
                    await producer.send_and_wait(topic, uuid.uuid4().hex.encode(), partition=0)
                    first = await self._first_value(topic)
                    if first is None:
                        raise LogUnavailableError("the epoch marker vanished while written")
                    self._bound.warning("log_epoch_created", epoch=first.decode())
                return first.decode()

    async def _first_value(self, topic: str) -> bytes | None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self._bootstrap,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=5,
            request_timeout_ms=self._request_timeout_ms,
        )
        try:
            await consumer.start()
            tp = TopicPartition(topic, 0)
            consumer.assign([tp])
            await consumer.seek_to_beginning(tp)
            while True:
                batch = await consumer.getmany(tp, timeout_ms=100, max_records=1)
                if batch.get(tp):
                    value: bytes = batch[tp][0].value or b""
                    return value
                highwater = consumer.highwater(tp)
                if highwater is not None and highwater <= await consumer.position(tp):
                    return None
        finally:
            await consumer.stop()


# -- reader ---------------------------------------------------------------------------


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
        self._committed: dict[TopicPartition, int] = {}
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
        """Close every client."""
        consumer, admin = self._consumer, self._admin
        self._consumer = self._admin = None
        if consumer is not None:
            with contextlib.suppress(KafkaError, OSError):
                await consumer.stop()
        if admin is not None:
            await admin.close()

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
        self._retired.clear()
        consumer, _ = self._require()
        consumer.assign([])  # drop every position, so none is carried over
        await self._refresh()
        await self._reassign()

    async def commit(self, records: Iterable[LogRecord]) -> None:
        """Commit, per topic-partition, the highest offset read plus one."""
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
        with _translated("commit"):
            await consumer.commit(offsets)
        self._committed.update(offsets)
        if self._retire():
            await self._reassign()

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

    async def _reassign(self) -> None:
        consumer, _ = self._require()
        segments = {**self._live, **{s: len(ends) for s, ends in self._drained.items()}}
        wanted = [self._tp(s, p) for s in sorted(segments) for p in range(segments[s])]
        keep = set(wanted)
        if self._epoch_present:
            wanted.append(self._epoch_tp)
        self._returned = {tp: o for tp, o in self._returned.items() if tp in keep}
        self._committed = {tp: o for tp, o in self._committed.items() if tp in keep}
        # assign() forgets every position and the fetcher then waits for
        # committed-offset lookups (~250 ms on Tansu): carry known positions
        # over, and start segments that are not current yet at 0 (empty).
        seek = dict(self._returned)
        assigned = consumer.assignment()
        for tp in assigned & keep:
            if tp not in seek and consumer.highwater(tp) is not None:
                seek[tp] = await self._position(tp)
        current = segment_of(self._clock(), self._segment_ms)
        for tp in keep - assigned:
            segment = parse_topic(self._log_name, tp.topic)
            if segment is not None and segment > current:
                seek[tp] = 0
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
        if self._retire():
            await self._reassign()
        return gated

    def _retire(self) -> bool:
        """Unassign drained segments whose records were all committed (or never read)."""
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
        for s in done:
            del self._drained[s]
            self._retired.add(s)
        return bool(done)


# -- janitor --------------------------------------------------------------------------


class SegmentJanitor:
    """Deletes sealed segments every registered consumer group has fully consumed.

    The true end of a partition comes from a fetch's highwater (``end_offsets``
    under-reports on Tansu); a group passes a partition when its committed
    offset reaches that end (an empty partition is passed by everyone). The
    current and the next segment are never deleted.
    """

    def __init__(
        self,
        bootstrap: str,
        *,
        groups: Sequence[str],
        log: str = DEFAULT_LOG,
        segment_ms: int = DEFAULT_SEGMENT_MS,
        grace_ms: int = DEFAULT_GRACE_MS,
        request_timeout_ms: int = 5_000,
        clock: WallClock = wall_ms,
    ) -> None:
        self._bootstrap = bootstrap
        self._groups = tuple(groups)
        self._log_name = log
        self._segment_ms = segment_ms
        self._grace_ms = grace_ms
        self._request_timeout_ms = request_timeout_ms
        self._clock = clock
        self._bound = _log.bind(log=log)

    def _consumer(self, group_id: str | None) -> AIOKafkaConsumer:
        return AIOKafkaConsumer(
            bootstrap_servers=self._bootstrap,
            group_id=group_id,
            enable_auto_commit=False,
            fetch_max_wait_ms=5,
            request_timeout_ms=self._request_timeout_ms,
        )

    async def run_once(self, now_ms: int | None = None) -> list[int]:
        """Delete what may be deleted now; returns the deleted segments."""
        now = self._clock() if now_ms is None else now_ms
        admin = _Admin(self._bootstrap, self._request_timeout_ms)
        probe = self._consumer(None)
        groups = {g: self._consumer(g) for g in self._groups}
        try:
            await admin.start()
            with _translated("janitor start"):
                await probe.start()
                for consumer in groups.values():
                    await consumer.start()
            topics = await admin.describe()
            keep = set(open_segments(now, self._segment_ms))
            sealed = [
                s
                for s in segments_of(self._log_name, topics)
                if s not in keep and is_sealed(s, now, self._segment_ms, self._grace_ms)
            ]
            progress: dict[str, set[int]] = {g: set() for g in groups}
            for s in sealed:
                n = topics[topic_name(self._log_name, s)]
                ends = await self._true_ends(
                    probe, [TopicPartition(topic_name(self._log_name, s), p) for p in range(n)]
                )
                for g, consumer in groups.items():
                    with _translated("committed"):
                        committed = {tp.partition: await consumer.committed(tp) for tp in ends}
                    if segment_passed({tp.partition: e for tp, e in ends.items()}, committed):
                        progress[g].add(s)
            doomed = deletable(
                sealed, self._groups, [GroupProgress(g, frozenset(p)) for g, p in progress.items()]
            )
            if doomed:
                await admin.delete([topic_name(self._log_name, s) for s in doomed])
                self._bound.info("segments_deleted", segments=doomed)
            return doomed
        finally:
            for consumer in (probe, *groups.values()):
                with contextlib.suppress(KafkaError, OSError):
                    await consumer.stop()
            await admin.close()

    async def _true_ends(
        self, probe: AIOKafkaConsumer, tps: list[TopicPartition]
    ) -> dict[TopicPartition, int]:
        """The highwater of each partition, read by fetching its last batch."""
        with _translated("true ends"):
            probe.assign(tps)
            reported: dict[TopicPartition, int] = await probe.end_offsets(tps)
            ends = {tp: 0 for tp, end in reported.items() if end == 0}
            pending = [tp for tp in tps if tp not in ends]
            for tp in pending:
                probe.seek(tp, max(0, reported[tp] - 1))
            async with asyncio.timeout(self._request_timeout_ms / 1000):
                while pending:
                    await probe.getmany(*pending, timeout_ms=50)
                    for tp in list(pending):
                        highwater = probe.highwater(tp)
                        if highwater is not None:
                            ends[tp] = highwater
                            pending.remove(tp)
            probe.unsubscribe()  # stop naming the topic before it may be deleted
            return ends

    async def run(self, interval: float) -> None:
        """Run :meth:`run_once` every ``interval`` seconds until cancelled."""
        while True:
            try:
                await self.run_once()
            except LogError as exc:
                self._bound.warning("janitor_pass_failed", error=exc.message)
            await asyncio.sleep(interval)
