"""Held records of a new segment: released by the broker's end offsets, never early."""

from __future__ import annotations

import types
from typing import Any, cast

from aiokafka import TopicPartition

from replication.log import LogRecord
from replication.log_errors import LogUnavailableError
from replication.log_reader import KafkaLogReader, _Pending
from replication.segments import topic_name

OLD, NEW = 1000, 1001


def _tp(segment: int, partition: int = 0) -> TopicPartition:
    return TopicPartition(topic_name("memsync.events", segment), partition)


class _Cluster:
    def __init__(self, leader: int | None) -> None:
        self._leader = leader

    def leader_for_partition(self, tp: TopicPartition) -> int | None:
        return self._leader


class _Consumer:
    """What the gate asks of aiokafka's consumer."""

    def __init__(self, highwater: int, leader: int | None = 1) -> None:
        self._highwater = highwater
        self._client = types.SimpleNamespace(cluster=_Cluster(leader))

    def highwater(self, tp: TopicPartition) -> int | None:
        return self._highwater if tp == _tp(OLD) else None

    def last_poll_timestamp(self, tp: TopicPartition) -> int:
        return 5_000  # the earlier segment was last fetched before the held records


class _Admin:
    """What the gate asks of the admin client: end offsets by leader."""

    def __init__(self, ends: dict[TopicPartition, int] | Exception) -> None:
        self._ends = ends
        self.asked: list[dict[TopicPartition, int]] = []

    async def end_offsets(
        self, leaders: dict[TopicPartition, int], *, timeout_s: float | None = None
    ) -> dict[TopicPartition, int]:
        self.asked.append(dict(leaders))
        if isinstance(self._ends, Exception):
            raise self._ends
        return {tp: self._ends[tp] for tp in leaders if tp in self._ends}


def _reader(consumer: _Consumer, admin: _Admin, *, returned_old: int) -> KafkaLogReader:
    reader = KafkaLogReader("127.0.0.1:1", group_id="g")
    reader._consumer = cast(Any, consumer)
    reader._admin = cast(Any, admin)
    reader._live = {OLD: 1, NEW: 1}
    reader._returned[_tp(OLD)] = returned_old
    held = _Pending(fetched_at=6_000)
    held.records.append(LogRecord(_tp(NEW).topic, NEW, 0, 0, b"k", b"r2", (), 6_000))
    reader._pending[_tp(NEW)] = held
    return reader


async def test_held_records_go_at_once_when_the_earlier_segment_did_not_grow() -> None:
    # highwater 10 at the last fetch; the bundled broker reports the last batch's base + 1
    admin = _Admin({_tp(OLD): 8})
    reader = _reader(_Consumer(10), admin, returned_old=10)
    assert reader._take(10) == []  # no later fetch of the earlier segment yet
    assert await reader._confirm_earlier()
    assert [r.value for r in reader._take(10)] == [b"r2"]
    assert admin.asked == [{_tp(OLD): 1}]  # asked of the partition's leader


async def test_held_records_wait_when_the_earlier_segment_grew_since_its_fetch() -> None:
    # a batch appended after the last fetch starts at the old highwater: base + 1 = 11
    reader = _reader(_Consumer(10), _Admin({_tp(OLD): 11}), returned_old=10)
    assert not await reader._confirm_earlier()
    assert reader._take(10) == []


async def test_records_still_to_return_from_the_earlier_segment_are_not_asked_about() -> None:
    admin = _Admin({_tp(OLD): 8})
    reader = _reader(_Consumer(10), admin, returned_old=7)  # 7..9 not returned yet
    assert not await reader._confirm_earlier()
    assert admin.asked == []
    assert reader._take(10) == []


async def test_a_partition_whose_leader_is_unknown_is_not_asked_about() -> None:
    # Asking anyway would make a client look the topic up (and, on the bundled
    # broker, re-create it if it was deleted meanwhile).
    admin = _Admin({_tp(OLD): 8})
    reader = _reader(_Consumer(10, leader=None), admin, returned_old=10)
    assert not await reader._confirm_earlier()
    assert admin.asked == []
    assert reader._take(10) == []


async def test_a_partition_answered_with_an_error_keeps_the_records_held() -> None:
    reader = _reader(_Consumer(10), _Admin({}), returned_old=10)
    assert not await reader._confirm_earlier()
    assert reader._take(10) == []


async def test_a_failed_end_offsets_request_leaves_them_to_the_next_fetch() -> None:
    reader = _reader(_Consumer(10), _Admin(LogUnavailableError("end offsets")), returned_old=10)
    assert not await reader._confirm_earlier()
    assert reader._take(10) == []
