"""The event log over the Kafka protocol (aiokafka): producer, reader, janitor.

This module holds the records, the error translation and the producer
(:class:`KafkaEventLog`); the reader lives in :mod:`replication.log_reader` and
the janitor in :mod:`replication.janitor`, both re-exported from here.

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
  a reader only assigns topics it saw listed. No long-lived client names a
  segment behind the open window: the producer's metadata names the current
  and next segment (and what is in flight), a reader's names what it has
  assigned, and a reader lets a segment be deleted only once it unassigned
  it (see :mod:`replication.log_reader`).

Every library exception is translated in :func:`_translated`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import msgspec
import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    KafkaError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    NodeNotReadyError,
    RecordTooLargeError,
    for_code,
)
from aiokafka.protocol.offset import OffsetRequest
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_exponential

from replication.log_errors import LogError, LogRecordRefusedError, LogUnavailableError
from replication.segments import (
    DEFAULT_GRACE_MS,
    DEFAULT_SEGMENT_MS,
    is_sealed,
    open_segments,
    parse_topic,
    segment_of,
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
    "Routes",
    "SegmentJanitor",
    "parse_routes",
    "route_client",
    "wall_ms",
]

DEFAULT_LOG = "memsync.events"
Headers = Sequence[tuple[str, bytes]]
WallClock = Callable[[], int]
# Advertised broker address ("host:port", or "*" for every broker) → the
# address to connect to instead: how a mirror link reaches a remote broker
# through a fault proxy (see :func:`route_client`).
Routes = Mapping[str, str]

_log = structlog.get_logger(__name__)
_TOPIC_EXISTS = 36
_UNKNOWN_TOPIC = 3

if TYPE_CHECKING:
    from replication.janitor import SegmentJanitor
    from replication.log_reader import KafkaLogReader


def __getattr__(name: str) -> object:
    """Re-export the reader and the janitor lazily: their modules import this one."""
    if name == "KafkaLogReader":
        from replication.log_reader import KafkaLogReader

        return KafkaLogReader
    if name == "SegmentJanitor":
        from replication.janitor import SegmentJanitor

        return SegmentJanitor
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def wall_ms() -> int:
    """The wall clock in milliseconds (the default clock of every class here)."""
    return time.time_ns() // 1_000_000


def parse_routes(text: str) -> dict[str, str]:
    """Routes from ``"advertised=connect,..."`` (``"*=host:port"`` for every broker)."""
    routes: dict[str, str] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        advertised, sep, target = part.partition("=")
        host, colon, port = target.rpartition(":")
        if not sep or not advertised or not colon or not host or not port.isdigit():
            raise ValueError(
                f"bad route {part!r}: expected ADVERTISED_HOST:PORT=CONNECT_HOST:PORT "
                "or *=CONNECT_HOST:PORT"
            )
        routes[advertised.strip()] = target.strip()
    return routes


def route_client(client: Any, routes: Routes | None) -> None:
    """Make an aiokafka client connect to brokers through ``routes``.

    A Kafka client learns broker addresses from metadata and connects to what
    the broker *advertises*, so a bootstrap address pointing at a proxy only
    carries the first request. This rewrites each advertised address at the
    one place aiokafka reads it (``ClusterMetadata.broker_metadata``, used for
    every broker and coordinator connection) — client-side address
    translation, like a DNS override. Bootstrap addresses are used as given.
    Call it before the client starts.
    """
    if not routes:
        return
    cluster = client.cluster
    original = cluster.broker_metadata

    def routed(broker_id: Any) -> Any:
        broker = original(broker_id)
        if broker is None or cluster.is_bootstrap(broker_id):
            return broker
        target = routes.get(f"{broker.host}:{broker.port}") or routes.get("*")
        if target is None:
            return broker
        host, _, port = target.rpartition(":")
        return broker._replace(host=host, port=int(port))

    cluster.broker_metadata = routed


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
    # A fixed partition (a mirror link preserves the source's; heartbeats go
    # to every partition); ``None`` partitions by key.
    partition: int | None = None


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
    if isinstance(exc, MessageSizeTooLargeError | RecordTooLargeError):
        return LogRecordRefusedError(message)
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

    def __init__(
        self, bootstrap: str, request_timeout_ms: int, routes: Routes | None = None
    ) -> None:
        self._timeout_s = request_timeout_ms / 1000
        self._client = AIOKafkaAdminClient(
            bootstrap_servers=bootstrap, request_timeout_ms=request_timeout_ms
        )
        route_client(self._client._client, routes)

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

    async def end_offsets(
        self, leaders: Mapping[TopicPartition, int], *, timeout_s: float | None = None
    ) -> dict[TopicPartition, int]:
        """Each partition's end offset, asked of its leader (partition → node id).

        One ListOffsets request per leader, on this client's own connection:
        unlike the consumer's ``end_offsets``, nothing is added to any
        client's metadata (aiokafka's consumer adds the topic of a partition
        whose leader it does not know, and every later metadata request would
        then name it, re-creating it on the bundled broker once deleted), and
        the answer does not queue behind a fetch waiting on the broker. A
        partition answered with an error is left out; no retry, and at most
        ``timeout_s`` (default: the request timeout).
        """
        by_node: dict[int, dict[str, list[tuple[int, int]]]] = {}
        for tp, node in leaders.items():
            by_node.setdefault(node, {}).setdefault(tp.topic, []).append((tp.partition, -1))
        ends: dict[TopicPartition, int] = {}
        with _translated("end offsets"):
            async with asyncio.timeout(timeout_s or self._timeout_s):
                responses = await asyncio.gather(
                    *(
                        self._client._send_request_to_node(
                            node, OffsetRequest(-1, 0, list(topics.items()))
                        )
                        for node, topics in by_node.items()
                    )
                )
        for response in responses:
            for topic, partitions in response.topics:
                for partition, code, *info in partitions:
                    if code == 0 and response.API_VERSION >= 1 and len(info) >= 2:
                        ends[TopicPartition(topic, partition)] = int(info[1])
        return ends

    async def delete(self, topics: Sequence[str]) -> None:
        with _translated("delete topics"):
            response = await self._client.delete_topics(list(topics))
            for topic, code in response.topic_error_codes:
                if code not in (0, _UNKNOWN_TOPIC):
                    raise for_code(code)(f"delete {topic}")


# -- producer -------------------------------------------------------------------------


def _fixed(partition: int | None, partitions: int) -> int | None:
    """A fixed partition if it exists in this log, else ``None`` (partition by key)."""
    return partition if partition is not None and 0 <= partition < partitions else None


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
        routes: Routes | None = None,
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
        self._routes = routes
        self._producer: AIOKafkaProducer | None = None
        self._admin: _Admin | None = None
        self._created: set[int] = set()
        self._create_lock = asyncio.Lock()
        # What the producer's metadata requests may name (see _name_only): the
        # open window (current and next segment, once created) and the topics
        # of appends and epoch writes in flight.
        self._window: frozenset[str] = frozenset()
        self._in_flight: collections.Counter[str] = collections.Counter()
        self._named: frozenset[str] | None = None  # last set given to the client
        self._keeper: asyncio.Task[None] | None = None
        self._bound = _log.bind(log=log)

    @property
    def log(self) -> str:
        """The log's name."""
        return self._log_name

    async def start(self) -> None:
        """Connect and create the open segments; raises :class:`LogUnavailableError`."""
        self._admin = _Admin(self._bootstrap, self._request_timeout_ms, self._routes)
        self._named = None
        self._producer = AIOKafkaProducer(
            bootstrap_servers=self._bootstrap,
            acks="all",
            enable_idempotence=self._idempotent,
            request_timeout_ms=self._request_timeout_ms,
            linger_ms=self._linger_ms,
            retry_backoff_ms=50,
        )
        route_client(self._producer.client, self._routes)
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
    def partitions(self) -> int:
        """Partitions of every segment."""
        return self._partitions

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
        # Stop naming segments behind the window before anything else, so a
        # failure to create the new ones cannot keep old ones named.
        self._window = frozenset(
            t for t in self._window if (parse_topic(self._log_name, t) or 0) >= current
        )
        self._name_only()
        if force:
            _, admin = self._require()
            await admin.create(
                {topic_name(self._log_name, s): self._partitions for s in (current, following)}
            )
        for segment in (current, following):
            await self._ensure(segment)
        self._created = {s for s in self._created if s >= current - 1}
        self._window = frozenset(topic_name(self._log_name, s) for s in (current, following))
        self._name_only()

    def _name_only(self) -> None:
        """Limit the producer's metadata requests to the window and what is in flight.

        aiokafka's client adds every topic it ever sent to (or was asked the
        partitions of) to its metadata topic set and never removes one; every
        refresh (each new segment, connection errors, ``metadata_max_age_ms``)
        names them all. The broker auto-creates a missing topic named in a
        metadata request, so the producer kept re-creating every segment the
        janitor deleted. ``set_topics`` replaces the set, so every later
        refresh, the periodic ``metadata_max_age_ms`` one included, names only
        these; it refreshes at once only when a topic is new to the set (all
        are created before they get here), and a refresh already under way
        with the old set is repeated with the new one. The keeper calls this
        every tick, so the set trails the clock by one tick at most.
        """
        producer = self._producer
        named = self._window | self._in_flight.keys()
        if producer is None or named == self._named:
            return
        # An empty set means "every topic" to aiokafka: that names none either.
        producer.client.set_topics(sorted(named))
        self._named = named

    @contextlib.contextmanager
    def _naming(self, topic: str) -> Iterator[None]:
        """Keep ``topic`` in the producer's metadata while an operation on it is in flight.

        A batch whose topic dropped out of the metadata has no known leader and
        would wait for its delivery timeout. The client adds the topic itself
        when sending (after it was created); it is dropped again at the end
        unless it is in the window.
        """
        self._in_flight[topic] += 1
        try:
            yield
        finally:
            self._in_flight[topic] -= 1
            if not self._in_flight[topic]:
                del self._in_flight[topic]
                if topic not in self._window:
                    self._named = None  # the client added it behind our back
                    self._name_only()

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
            topic = topic_name(self._log_name, segment)
            with self._naming(topic):
                await self._ensure(segment)
                futures = [
                    await producer.send(
                        topic,
                        r.value,
                        key=r.key,
                        headers=list(r.headers),
                        partition=_fixed(r.partition, self._partitions),
                    )
                    for r in records
                ]
                results: list[Any]
                if len(futures) == 1:  # a write's own append: no gather around one future
                    try:
                        results = [await futures[0]]
                    except Exception as exc:  # noqa: BLE001 - handed back as gather would
                        results = [exc]
                else:
                    results = await asyncio.gather(*futures, return_exceptions=True)
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
        with _translated("epoch"), self._naming(topic):
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
        route_client(consumer._client, self._routes)
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
