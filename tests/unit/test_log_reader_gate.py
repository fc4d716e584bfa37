"""Held records of a new segment: released by the broker's end offsets, never early."""

from __future__ import annotations

from typing import Any, cast

from aiokafka import TopicPartition
from aiokafka.errors import KafkaTimeoutError

from replication.log import LogRecord
from replication.log_reader import KafkaLogReader, _Pending
from replication.segments import topic_name

OLD, NEW = 1000, 1001


def _tp(segment: int, partition: int = 0) -> TopicPartition:
    return TopicPartition(topic_name("memsync.events", segment), partition)


class _Consumer:
    """What the gate asks of aiokafka's consumer."""

    def __init__(self, highwater: int, ends: dict[TopicPartition, int] | Exception) -> None:
        self._highwater = highwater
        self._ends = ends
        self.asked: list[list[TopicPartition]] = []

    def highwater(self, tp: TopicPartition) -> int | None:
        return self._highwater if tp == _tp(OLD) else None

    def last_poll_timestamp(self, tp: TopicPartition) -> int:
        return 5_000  # the earlier segment was last fetched before the held records

    async def end_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        self.asked.append(tps)
        if isinstance(self._ends, Exception):
            raise self._ends
        return {tp: self._ends[tp] for tp in tps}


def _reader(consumer: _Consumer, *, returned_old: int) -> KafkaLogReader:
    reader = KafkaLogReader("127.0.0.1:1", group_id="g")
    reader._consumer = cast(Any, consumer)
    reader._admin = cast(Any, object())
    reader._live = {OLD: 1, NEW: 1}
    reader._returned[_tp(OLD)] = returned_old
    held = _Pending(fetched_at=6_000)
    held.records.append(LogRecord(_tp(NEW).topic, NEW, 0, 0, b"k", b"r2", (), 6_000))
    reader._pending[_tp(NEW)] = held
    return reader


async def test_held_records_go_at_once_when_the_earlier_segment_did_not_grow() -> None:
    # highwater 10 at the last fetch; the bundled broker reports the last batch's base + 1
    consumer = _Consumer(10, {_tp(OLD): 8})
    reader = _reader(consumer, returned_old=10)
    assert reader._take(10) == []  # no later fetch of the earlier segment yet
    assert await reader._confirm_earlier()
    assert [r.value for r in reader._take(10)] == [b"r2"]
    assert consumer.asked == [[_tp(OLD)]]


async def test_held_records_wait_when_the_earlier_segment_grew_since_its_fetch() -> None:
    # a batch appended after the last fetch starts at the old highwater: base + 1 = 11
    reader = _reader(_Consumer(10, {_tp(OLD): 11}), returned_old=10)
    assert not await reader._confirm_earlier()
    assert reader._take(10) == []


async def test_records_still_to_return_from_the_earlier_segment_are_not_asked_about() -> None:
    consumer = _Consumer(10, {_tp(OLD): 8})
    reader = _reader(consumer, returned_old=7)  # 7..9 not returned yet
    assert not await reader._confirm_earlier()
    assert consumer.asked == []
    assert reader._take(10) == []


async def test_a_failed_end_offsets_request_leaves_them_to_the_next_fetch() -> None:
    reader = _reader(_Consumer(10, KafkaTimeoutError()), returned_old=10)
    assert not await reader._confirm_earlier()
    assert reader._take(10) == []
