"""The Kafka event log adapter against a real Tansu broker from the wheel."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest

from deploy import tansu
from deploy.tansu import BrokerStartError, TansuBroker
from replication.log import (
    KafkaEventLog,
    KafkaLogReader,
    LogRecord,
    OutgoingRecord,
    SegmentJanitor,
    parse_routes,
)
from replication.log_errors import LogError, LogUnavailableError
from replication.segments import segment_start, segments_of, topic_name
from replication.tasks import cancel_all

SEGMENT_MS = 300
GRACE_MS = 100
T = TypeVar("T")


class ManualClock:
    """A wall clock in milliseconds that only moves when told to."""

    def __init__(self, now_ms: int) -> None:
        self.now_ms = now_ms

    def __call__(self) -> int:
        return self.now_ms


def clock_at(segment: int, offset_ms: int = 10) -> ManualClock:
    return ManualClock(segment_start(segment, SEGMENT_MS) + offset_ms)


@asynccontextmanager
async def event_log(broker: TansuBroker, **kwargs: object) -> AsyncIterator[KafkaEventLog]:
    settings: dict[str, object] = {"partitions": 4, "request_timeout_ms": 1500, **kwargs}
    log = KafkaEventLog(
        broker.bootstrap,
        log="t.events",
        segment_ms=SEGMENT_MS,
        grace_ms=GRACE_MS,
        **settings,  # type: ignore[arg-type]
    )
    await log.start()
    try:
        yield log
    finally:
        await log.stop()


@asynccontextmanager
async def log_reader(
    broker: TansuBroker, group: str, **kwargs: object
) -> AsyncIterator[KafkaLogReader]:
    reader = KafkaLogReader(
        broker.bootstrap,
        log="t.events",
        group_id=group,
        segment_ms=SEGMENT_MS,
        grace_ms=GRACE_MS,
        refresh_ms=100,
        request_timeout_ms=1500,
        **kwargs,  # type: ignore[arg-type]
    )
    await reader.start()
    try:
        yield reader
    finally:
        await reader.stop()


async def read_until(reader: KafkaLogReader, count: int, within: float = 5.0) -> list[LogRecord]:
    """Read until ``count`` records arrived; fail at the deadline."""
    got: list[LogRecord] = []
    deadline = time.monotonic() + within
    while len(got) < count:
        assert time.monotonic() < deadline, f"only {len(got)} of {count} records arrived"
        got.extend(await reader.read(timeout_ms=100))
    return got


async def eventually(check: Callable[[], Awaitable[T | None]], within: float = 5.0) -> T:
    """Poll ``check`` until it returns something other than None or False."""
    deadline = time.monotonic() + within
    while True:
        result = await check()
        if result is not None and result is not False:
            return result
        assert time.monotonic() < deadline, "condition not met before the deadline"


async def test_append_then_read_round_trips_keys_values_and_headers(broker: TansuBroker) -> None:
    clock = clock_at(1000)
    async with (
        event_log(broker, clock=clock) as log,
        log_reader(broker, "g", clock=clock) as reader,
    ):
        sent = [
            await log.append(b"mem-1", b"v1", [("event-id", b"e1"), ("empty", b"")]),
            await log.append(b"mem-2", b"v2"),
        ]
        got = await read_until(reader, 2)
    assert {(r.topic, r.partition, r.offset) for r in got} == {
        (a.topic, a.partition, a.offset) for a in sent
    }
    by_key = {r.key: r for r in got}
    assert by_key[b"mem-1"].value == b"v1"
    assert by_key[b"mem-1"].headers == (("event-id", b"e1"), ("empty", b""))
    assert by_key[b"mem-2"].headers == ()
    assert all(r.segment == 1000 and r.topic == topic_name("t.events", 1000) for r in got)


async def _fetches_while_idle(reader: KafkaLogReader, seconds: float) -> int:
    """Fetch requests the reader's consumer sends while it reads an idle log."""
    assert reader._consumer is not None
    client = reader._consumer._client
    sent = 0
    send = client.send

    def counting(node_id: int, request: Any, *args: Any, **kwargs: Any) -> Any:
        nonlocal sent
        sent += type(request).__name__ == "FetchRequest"
        return send(node_id, request, *args, **kwargs)

    client.send = counting  # observes the real client; every request still goes out
    try:
        async with asyncio.timeout(seconds * 3):
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                assert await reader.read(timeout_ms=50) == []
    finally:
        client.send = send
    return sent


async def test_an_idle_reader_fetches_with_its_quiet_wait_until_records_come(
    broker: TansuBroker,
) -> None:
    clock = clock_at(1000)
    async with (
        event_log(broker, clock=clock) as log,
        log_reader(broker, "g", clock=clock, quiet_fetch_wait_ms=80, quiet_after_ms=300) as reader,
    ):
        await log.append(b"k", b"first")
        await read_until(reader, 1)
        assert not reader.quiet  # records came: fast for quiet_after_ms
        await asyncio.sleep(0.35)  # none since: quiet
        assert reader.quiet
        quiet = await _fetches_while_idle(reader, 0.8)
        # The consumer's fetches carry the quiet wait (aiokafka's private
        # attribute: this fails first if a new aiokafka renames it).
        assert reader._consumer is not None
        assert reader._consumer._fetcher._fetch_max_wait_ms == 80
        await log.append(b"k", b"quiet")
        assert (await read_until(reader, 1))[0].value == b"quiet"  # delivered all the same
        assert not reader.quiet  # and the cadence is fast again at once
        fast = await _fetches_while_idle(reader, 0.25)
        assert reader._consumer._fetcher._fetch_max_wait_ms == 5
        # per second: at most ~12 at an 80 ms wait, dozens at a 5 ms one
        assert quiet / 0.8 * 3 < fast / 0.25, (quiet, fast)


async def test_one_key_stays_in_one_partition_in_order(broker: TansuBroker) -> None:
    clock = clock_at(1000)
    keys = [b"a", b"b", b"c"]
    records = [OutgoingRecord(k, f"{k.decode()}{i}".encode()) for i in range(30) for k in keys]
    async with (
        event_log(broker, clock=clock) as log,
        log_reader(broker, "g", clock=clock) as reader,
    ):
        appended = await log.append_many(records)
        got = await read_until(reader, len(records))
    assert len(appended) == len(records)
    for key in keys:
        mine = [r for r in got if r.key == key]
        assert len({r.partition for r in mine}) == 1
        assert [r.value for r in mine] == [f"{key.decode()}{i}".encode() for i in range(30)]


async def test_a_recreated_reader_resumes_from_committed_offsets(broker: TansuBroker) -> None:
    clock = clock_at(1000)
    async with event_log(broker, clock=clock, partitions=1) as log:
        await log.append_many([OutgoingRecord(b"k", b"%d" % i) for i in range(10)])
        async with log_reader(broker, "g", clock=clock) as reader:
            first = await read_until(reader, 10)
            await reader.commit(first[:6])
        await log.append_many([OutgoingRecord(b"k", b"%d" % i) for i in range(10, 12)])
        async with log_reader(broker, "g", clock=clock) as reader:
            rest = await read_until(reader, 6)
            assert await reader.read(timeout_ms=100) == []
    assert [r.value for r in rest] == [b"%d" % i for i in range(6, 12)]


async def test_reader_follows_across_segment_rolls_without_loss_or_duplicates(
    broker: TansuBroker,
) -> None:
    clock = clock_at(1000)
    async with (
        event_log(broker, clock=clock) as log,
        log_reader(broker, "g", clock=clock) as reader,
    ):
        expected: list[bytes] = []
        got: list[LogRecord] = []
        for segment in (1000, 1001, 1002):
            clock.now_ms = segment_start(segment, SEGMENT_MS) + 10
            batch = [OutgoingRecord(b"k%d" % (i % 5), b"%d-%d" % (segment, i)) for i in range(20)]
            appended = await log.append_many(batch)
            assert {a.segment for a in appended} == {segment}
            expected.extend(r.value for r in batch)
            got.extend(await read_until(reader, 20))
        await reader.commit(got)
        # Move past the settle time of 1000 and 1001: the reader drains and drops them.
        clock.now_ms = segment_start(1002, SEGMENT_MS) + 2 * GRACE_MS + 50

        async def drained() -> bool:
            await reader.read(timeout_ms=20)
            segments = {p.segment for p in await reader.positions()}
            return segments.isdisjoint({1000, 1001})

        await eventually(drained)
        assert await reader.lag() in ({}, {p: 0 for p in range(4)})
    assert sorted(r.value for r in got) == sorted(expected)
    for key in {r.key for r in got}:
        assert [r.value for r in got if r.key == key] == [
            v for v in expected if int(v.split(b"-")[1]) % 5 == int(key[1:])
        ]


async def test_janitor_deletes_a_consumed_segment_only_when_every_group_passed_it(
    broker: TansuBroker,
) -> None:
    clock = clock_at(1000)
    janitor = SegmentJanitor(
        broker.bootstrap,
        log="t.events",
        groups=["applier", "mirror"],
        segment_ms=SEGMENT_MS,
        grace_ms=GRACE_MS,
        request_timeout_ms=1500,
        clock=clock,
    )
    async with event_log(broker, clock=clock) as log:
        await log.append_many([OutgoingRecord(b"k%d" % i, b"x") for i in range(40)])
        async with log_reader(broker, "applier", clock=clock) as applier:
            await applier.commit(await read_until(applier, 40))
        clock.now_ms = segment_start(1002, SEGMENT_MS) + GRACE_MS + 1
        # 1001 was created ahead and stayed empty; 1002 and 1003 are open.
        assert 1000 not in await janitor.run_once()
        async with log_reader(broker, "mirror", clock=clock) as mirror:
            part = await read_until(mirror, 40)
            await mirror.commit(part[:-1])
            assert 1000 not in await janitor.run_once()
            await mirror.commit(part)
        open_topics = {topic_name("t.events", 1002), topic_name("t.events", 1003)}

        async def open_created() -> bool:
            # The producer's keeper creates them on its next tick (every 75 ms).
            return open_topics <= set(await _topics(broker))

        await eventually(open_created)
        assert await janitor.run_once() == [1000]
        topics = set(await _topics(broker))
    assert topic_name("t.events", 1000) not in topics
    assert {topic_name("t.events", 1002), topic_name("t.events", 1003)} <= topics


async def _topics(broker: TansuBroker) -> list[str]:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap)
    await admin.start()
    try:
        return await admin.list_topics()
    finally:
        await admin.close()


async def test_epoch_changes_when_the_broker_restarts_empty_and_the_reader_recovers(
    broker: TansuBroker, tmp_path: Path
) -> None:
    clock = clock_at(1000)
    async with (
        event_log(broker, clock=clock) as log,
        log_reader(broker, "g", clock=clock) as reader,
    ):
        before = await log.epoch()
        assert await log.epoch() == before
        await log.append(b"k", b"before")
        assert [r.value for r in await read_until(reader, 1)] == [b"before"]

        async def reader_saw_epoch() -> bool:
            await reader.read(timeout_ms=20)
            return reader.epoch == before

        await eventually(reader_saw_epoch)

        await broker.stop(grace=0.5)
        again = TansuBroker(port=broker.port, log_path=tmp_path / "again.log")
        await again.start()
        try:

            async def new_epoch() -> str | None:
                try:
                    return await log.epoch()
                except LogUnavailableError:
                    return None

            after = await eventually(new_epoch, within=10)
            assert after != before

            async def appended() -> bool:
                try:
                    await log.append_many(
                        [OutgoingRecord(b"k", b"after-1"), OutgoingRecord(b"k", b"after-2")]
                    )
                except LogUnavailableError:
                    return False
                return True

            await eventually(appended, within=10)
            # Same key, same partition: offsets 0 and 1 again on the empty broker,
            # at or below the reader's old position. Until the reader sees the new
            # epoch it may deliver from its stale position; then it re-reads the
            # whole log: nothing skipped, in order from the reset on.
            got: list[bytes] = []

            async def recovered() -> bool:
                got.extend(r.value for r in await reader.read(timeout_ms=50))
                if b"after-1" not in got:
                    return False
                tail = got[len(got) - got[::-1].index(b"after-1") - 1 :]
                return tail == [b"after-1", b"after-2"]

            await eventually(recovered, within=10)
            assert reader.epoch == after
        finally:
            await reader.stop()
            await log.stop()
            await again.stop(grace=1.0)


async def test_append_fails_fast_with_log_unavailable_when_the_broker_is_down(
    broker: TansuBroker,
) -> None:
    async with event_log(broker) as log:
        await log.append(b"k", b"up")
        await broker.stop(grace=0.5)
        started = time.monotonic()
        with pytest.raises(LogUnavailableError) as caught:
            await log.append(b"k", b"down")
        took = time.monotonic() - started
    assert took <= 3.0
    assert caught.value.retriable
    assert caught.value.status == 503


async def test_deleted_segments_stay_deleted_while_clients_keep_running(
    broker: TansuBroker,
) -> None:
    """Regression: long-lived clients named deleted segments and the broker re-created them.

    The broker auto-creates any topic named in a metadata request. The producer
    kept every segment it ever wrote in its metadata topic set, and a reader
    still had a segment assigned when the janitor deleted it, so deleted
    segments came back and the live count grew with uptime.
    """
    clock = clock_at(1000)
    janitor = SegmentJanitor(
        broker.bootstrap,
        log="t.events",
        groups=["applier"],
        segment_ms=SEGMENT_MS,
        grace_ms=GRACE_MS,
        request_timeout_ms=1500,
        clock=clock,
    )
    deleted: set[int] = set()
    read: set[bytes] = set()
    sent: set[bytes] = set()
    max_live = 0

    async def check_topics() -> set[int]:
        nonlocal max_live
        live = set(segments_of("t.events", await _topics(broker)))
        back = live & deleted
        assert not back, f"deleted segments came back: {sorted(back)}"
        max_live = max(max_live, len(live))
        assert len(live) <= 4, f"live segments: {sorted(live)}"
        return live

    async with (
        event_log(broker, clock=clock) as log,
        log_reader(broker, "applier", clock=clock) as reader,
    ):

        async def consume() -> None:
            while True:
                records = await reader.read(timeout_ms=20)
                read.update(r.value for r in records)
                if records:
                    await reader.commit(records)

        async def clean() -> None:
            while True:
                deleted.update(await janitor.run_once())
                await asyncio.sleep(0.02)

        # Not a TaskGroup that cancels once: a CI run hung here for 300 s after
        # the test's work was done, and a cancellation that lands in an
        # aiokafka client's stop() is swallowed (see replication.tasks).
        background = [asyncio.create_task(consume()), asyncio.create_task(clean())]
        try:
            # Eight rolls at 30 ms of segment time per step, paced at 30 ms.
            step = 0
            while clock.now_ms < segment_start(1008, SEGMENT_MS):
                batch = [OutgoingRecord(b"k%d" % (i % 7), b"%d-%d" % (step, i)) for i in range(5)]
                await log.append_many(batch)
                sent.update(r.value for r in batch)
                clock.now_ms += 30
                step += 1
                await check_topics()
                await asyncio.sleep(0.03)

            # Every segment up to 1005 is passed: the janitor deletes them all,
            # and none comes back while the clients keep running.
            async def all_passed_deleted() -> bool:
                await check_topics()
                return set(range(1000, 1006)) <= deleted and read >= sent

            await eventually(all_passed_deleted, within=10)
            live = await check_topics()
        finally:
            await cancel_all(background, grace=2.0, every=1.0)
        for task in background:  # what a TaskGroup would have raised
            if not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
    assert len(deleted) >= 6
    assert live.isdisjoint(deleted)
    assert max_live <= 4


async def test_sealed_segments_drain_and_are_deleted_under_continuous_appends(
    broker: TansuBroker,
) -> None:
    """Regression: under sustained appends the reader stopped draining sealed segments.

    Every reassignment (one per roll) forgot the position of partitions never
    fetched yet (paused behind an earlier segment), and aiokafka then looked up
    committed offsets one partition per round trip while fetching nothing at
    all. Under load those lookups stopped finishing between two rolls: no
    segment drained any more, the live segments piled up and nothing was read.
    Here appenders write to every partition of the current segment the whole
    time while a reader reads and commits like the applier and the janitor
    deletes what it passed: each sealed segment must be deleted soon after it
    settles, few segments may be live at any time, and every record is read
    with each key's records in order (a record of the next segment fetched
    right after an earlier record of its key reached the previous one used to
    come out first).
    """
    clock = clock_at(1000)
    first, last = 1000, 1010  # ten rolls
    janitor = SegmentJanitor(
        broker.bootstrap,
        log="t.events",
        groups=["applier"],
        segment_ms=SEGMENT_MS,
        grace_ms=GRACE_MS,
        request_timeout_ms=1500,
        clock=clock,
    )
    appenders, keys = 6, 48
    sent: dict[bytes, list[bytes]] = {b"k%d" % k: [] for k in range(keys)}
    read: list[LogRecord] = []
    deleted: set[int] = set()
    max_live = 0
    writing = asyncio.Event()
    writing.set()

    def deadline(segment: int) -> int:
        # Settled at end + 2 grace; allow two more segment lengths to drain and delete.
        return segment_start(segment + 1, SEGMENT_MS) + 2 * GRACE_MS + 2 * SEGMENT_MS

    async def check_topics() -> set[int]:
        nonlocal max_live
        live = set(segments_of("t.events", await _topics(broker)))
        assert not live & deleted, f"deleted segments came back: {sorted(live & deleted)}"
        late = [s for s in live if deadline(s) < clock.now_ms]
        assert not late, f"segments {late} not deleted by segment time {clock.now_ms}"
        max_live = max(max_live, len(live))
        assert len(live) <= 5, f"live segments: {sorted(live)}"
        return live

    async with (
        event_log(broker, clock=clock) as log,
        log_reader(broker, "applier", clock=clock) as reader,
    ):

        async def append(n: int) -> None:
            mine = [b"k%d" % k for k in range(n, keys, appenders)]
            step = 0
            while writing.is_set():
                batch = [OutgoingRecord(k, b"%s-%d" % (k, step)) for k in mine]
                await log.append_many(batch)
                for r in batch:
                    sent[r.key].append(r.value)
                step += 1

        async def consume() -> None:
            # Like gateway.applier.Applier.run: read a batch, apply, commit.
            while True:
                records = await reader.read(100, 100)
                if records:
                    read.extend(records)
                    await reader.commit(records)

        async def clean() -> None:
            while True:
                deleted.update(await janitor.run_once())
                await asyncio.sleep(0.05)

        async with asyncio.TaskGroup() as tasks:
            background = [tasks.create_task(consume()), tasks.create_task(clean())]
            writers = [tasks.create_task(append(n)) for n in range(appenders)]
            try:
                # Segment time runs at wall speed, checked every 30 ms.
                while clock.now_ms < segment_start(last, SEGMENT_MS):
                    await asyncio.sleep(0.03)
                    clock.now_ms += 30
                    await check_topics()
                writing.clear()
                await asyncio.gather(*writers)
                total = sum(len(v) for v in sent.values())

                async def everything_read_and_passed_deleted() -> bool:
                    await check_topics()
                    return len(read) >= total and set(range(first, last - 1)) <= deleted

                await eventually(everything_read_and_passed_deleted, within=10)
            finally:
                for task in background:
                    task.cancel()
    assert set(range(first, last - 1)) <= deleted
    assert max_live <= 5
    assert {r.partition for r in read} == set(range(4))
    assert len({r.segment for r in read}) >= 8
    # Records held after each roll were let go by the broker's end offsets
    # (not only by a later fetch), and still came out in order:
    assert reader.released_by_end_offsets > 0
    for key, values in sent.items():
        got = [r.value for r in read if r.key == key]
        assert list(dict.fromkeys(got)) == values, f"{key!r}: records lost or out of order"


async def test_a_held_group_is_waited_for_only_until_the_hold_expires(broker: TansuBroker) -> None:
    clock = clock_at(1000)
    janitor = SegmentJanitor(
        broker.bootstrap, log="t.events", groups=["applier"], held_groups=["mirror"],
        hold_ms=5 * SEGMENT_MS, segment_ms=SEGMENT_MS, grace_ms=GRACE_MS,
        request_timeout_ms=1500, clock=clock,
    )  # fmt: skip
    async with event_log(broker, clock=clock) as log:
        await log.append_many([OutgoingRecord(b"k%d" % i, b"x") for i in range(40)])
        async with log_reader(broker, "applier", clock=clock) as applier:
            await applier.commit(await read_until(applier, 40))  # every partition has some
        # Sealed, passed by the applier, not by the (down) mirror: kept …
        clock.now_ms = segment_start(1002, SEGMENT_MS) + GRACE_MS + 1
        assert 1000 not in await janitor.run_once()
        # … until the hold is over; then anti-entropy must repair the mirror.
        clock.now_ms = segment_start(1001 + 5, SEGMENT_MS) + GRACE_MS + 1
        assert 1000 in await janitor.run_once()


async def test_routes_send_every_connection_through_the_given_address(
    broker: TansuBroker,
) -> None:
    # A forwarder stands in for the fault proxy; the broker advertises itself,
    # so without the route only the bootstrap request would pass through it.
    connections = 0

    async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await r.read(65536):
                w.write(data)
                await w.drain()
        w.close()

    async def forward(cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        br, bw = await asyncio.open_connection("127.0.0.1", broker.port)
        await asyncio.gather(pipe(cr, bw), pipe(br, cw))

    server = await asyncio.start_server(forward, "127.0.0.1", 0)
    proxy = f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        async with event_log(broker) as log:
            await log.append_many([OutgoingRecord(b"k%d" % i, b"x") for i in range(5)])
        reader = KafkaLogReader(
            proxy, group_id="routed", log="t.events", segment_ms=SEGMENT_MS, grace_ms=GRACE_MS,
            request_timeout_ms=1500, routes=parse_routes(f"*={proxy}"),
        )  # fmt: skip
        await reader.start()
        try:
            got = await read_until(reader, 5)
            await reader.commit(got)
        finally:
            await reader.stop()
        assert len(got) == 5
        assert connections >= 2  # bootstrap, then the broker's own address, routed
        server.close()
        await server.wait_closed()
        before = connections
        reader = KafkaLogReader(
            proxy, group_id="routed", log="t.events", segment_ms=SEGMENT_MS, grace_ms=GRACE_MS,
            request_timeout_ms=800, routes=parse_routes(f"*={proxy}"),
        )  # fmt: skip
        with pytest.raises(LogError):
            await reader.start()  # the proxy is gone: nothing reaches the broker directly
        await reader.stop()
        assert connections == before
    finally:
        server.close()


async def test_an_empty_marker_topic_made_by_someone_else_still_means_a_new_epoch(
    broker: TansuBroker, tmp_path: Path
) -> None:
    # A reader's metadata request may auto-create the marker topic, empty, on
    # a broker that came back empty, before the gateway checks its epoch.
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    async with event_log(broker) as log:
        before = await log.epoch()
        await broker.stop(grace=0.5)
        again = TansuBroker(port=broker.port, log_path=tmp_path / "again.log")
        await again.start()
        try:
            admin = AIOKafkaAdminClient(bootstrap_servers=again.bootstrap)
            await admin.start()
            try:
                await admin.create_topics([NewTopic("t.events.epoch", 1, 1)])
            finally:
                await admin.close()

            async def new_epoch() -> str | None:
                try:
                    return await log.epoch()
                except LogUnavailableError:
                    return None

            assert await eventually(new_epoch, within=10) != before
        finally:
            await again.stop(grace=0.5)


async def test_a_refresh_without_its_assignment_reassigns_instead_of_crashing(
    broker: TansuBroker,
) -> None:
    # A broker coming back empty can leave the reader without its assignment
    # (the reassignment failed); seeking the epoch marker then raised
    # IllegalStateError, and the applier restarted into the same crash.
    clock = clock_at(1000)
    async with (
        event_log(broker, clock=clock) as log,
        log_reader(broker, "g", clock=clock) as reader,
    ):
        await log.epoch()
        await log.append(b"k", b"one")
        assert [r.value for r in await read_until(reader, 1)] == [b"one"]
        consumer = reader._consumer
        assert consumer is not None and reader._epoch_tp in consumer.assignment()
        consumer.unsubscribe()  # as after a reassignment that failed part-way
        await reader._refresh()  # no IllegalStateError
        await reader._refresh()  # assigns again
        assert reader._epoch_tp in consumer.assignment()
        await log.append(b"k", b"two")
        assert [r.value for r in await read_until(reader, 1)] == [b"two"]


async def test_starting_a_started_reader_again_closes_its_old_clients(broker: TansuBroker) -> None:
    # The runtime's supervisor restarts a crashed applier by starting its
    # reader again; the old consumer and admin client were left connected,
    # with their background tasks, until the process exited.
    clock = clock_at(1000)
    async with (
        event_log(broker, clock=clock) as log,
        log_reader(broker, "g", clock=clock) as reader,
    ):
        await log.append(b"k", b"one")
        first = await read_until(reader, 1)
        assert [r.value for r in first] == [b"one"]
        await reader.commit(first)
        old = reader._consumer
        tasks = len(asyncio.all_tasks())
        await reader.start()
        assert reader._consumer is not old
        assert old is not None and old._closed  # the first consumer was stopped
        assert len(asyncio.all_tasks()) <= tasks  # no second set of client tasks
        await log.append(b"k", b"two")
        # Read on from the committed offsets: the new consumer is assigned.
        # A restart does not release the offset held back at a partition's
        # end (the janitor could delete the segment under the new consumer),
        # so that one record is read again: at least once, never lost.
        assert [r.value for r in await read_until(reader, 2)] == [b"one", b"two"]


async def test_a_broker_whose_chosen_port_was_taken_starts_on_another(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A free port can be taken (by a client's ephemeral port) before the broker binds it."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        chosen = iter([port])
        real = tansu.free_port
        monkeypatch.setattr(tansu, "free_port", lambda: next(chosen, None) or real())
        broker = TansuBroker(log_path=tmp_path / "broker.log")
        assert broker.port == port
        await broker.start()
        try:
            assert broker.running and broker.port != port
            assert broker.bootstrap == f"127.0.0.1:{broker.port}"
        finally:
            await broker.stop(grace=2.0)


async def test_a_broker_on_a_port_it_was_given_does_not_move(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        broker = TansuBroker(port=port, log_path=tmp_path / "broker.log")
        with pytest.raises(BrokerStartError, match="exited during start"):
            await broker.start()
        assert broker.port == port and not broker.running


async def test_end_offsets_from_the_leader_show_growth_and_recreate_no_deleted_topic(
    broker: TansuBroker,
) -> None:
    """What releases records held after a roll (``KafkaLogReader._confirm_earlier``).

    An end offset no higher than the last fetched highwater means nothing was
    appended since (the bundled broker reports the last batch's base + 1); a
    new batch reads higher. Asking about a deleted topic does not bring it
    back (a metadata request naming it would).
    """
    from aiokafka import TopicPartition

    from replication.log import _Admin

    clock = clock_at(1000)
    admin = _Admin(broker.bootstrap, 1500)
    await admin.start()
    try:
        async with (
            event_log(broker, clock=clock) as log,
            log_reader(broker, "ends", clock=clock) as reader,
        ):
            keys = [b"k%d" % i for i in range(12)]
            await log.append_many([OutgoingRecord(k, b"v") for k in keys])
            got = await read_until(reader, len(keys))
            consumer = reader._consumer
            assert consumer is not None
            # aiokafka's fetch routine sleeps this long when it misses its own
            # fetch's completion (see KafkaLogReader.start): two fetch waits
            assert consumer._consumer_timeout <= 2 * 5 / 1000
            cluster = consumer._client.cluster
            tps = {TopicPartition(r.topic, r.partition) for r in got}
            leaders = {tp: cluster.leader_for_partition(tp) for tp in tps}
            highwaters = {tp: consumer.highwater(tp) for tp in tps}
            ends = await admin.end_offsets(leaders)
            assert ends.keys() == tps
            assert all(ends[tp] <= highwaters[tp] for tp in tps), (ends, highwaters)

            await log.append_many([OutgoingRecord(k, b"w") for k in keys])
            grown = await admin.end_offsets(leaders)
            assert all(grown[tp] > highwaters[tp] for tp in tps), (grown, highwaters)

            node = next(iter(leaders.values()))
            await admin.create({"t.gone": 2})
            await admin.delete(["t.gone"])
            gone = TopicPartition("t.gone", 0)
            # the bundled broker answers 0 (Kafka: an error): either way nothing
            # more is to come from it, and it stays deleted
            assert (await admin.end_offsets({gone: node})).get(gone, 0) == 0
            assert "t.gone" not in await _topics(broker)
    finally:
        await admin.close()


async def test_a_segment_created_ahead_is_not_fetched_until_a_grace_before_it_starts(
    broker: TansuBroker,
) -> None:
    """Each partition a fetch names costs the reader and the broker every cycle."""
    clock = clock_at(1000)  # 10 ms into segment 1000; the producer creates 1001 ahead
    async with (
        event_log(broker, clock=clock) as log,
        log_reader(broker, "ahead", clock=clock) as reader,
    ):
        await log.append_many([OutgoingRecord(b"k", b"v")])
        await read_until(reader, 1)
        for _ in range(3):  # every partition of 1000 fetched and caught up
            await reader.read(timeout_ms=30)
        consumer = reader._consumer
        assert consumer is not None
        ahead = {tp for tp in consumer.assignment() if tp.topic == topic_name("t.events", 1001)}
        assert len(ahead) == 4  # assigned (it exists) ...
        assert ahead <= consumer.paused()  # ... and not fetched
        # within a grace of its start a writer may reach it: fetched from then on
        clock.now_ms = segment_start(1001, SEGMENT_MS) - GRACE_MS + 1
        await reader.read(timeout_ms=20)
        assert not ahead & consumer.paused()
        clock.now_ms = segment_start(1001, SEGMENT_MS) + 10
        await log.append_many([OutgoingRecord(b"k", b"w")])
        assert [r.value for r in await read_until(reader, 1)] == [b"w"]
