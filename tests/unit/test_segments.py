"""Segment arithmetic of the log bounded by acknowledgement."""

from __future__ import annotations

import pytest

from replication.segments import (
    GroupProgress,
    deletable,
    is_ahead,
    is_sealed,
    is_settled,
    open_segments,
    parse_topic,
    partition_passed,
    segment_end,
    segment_of,
    segment_passed,
    segment_start,
    segments_of,
    topic_name,
)


def test_segment_of_rolls_every_segment_ms() -> None:
    assert segment_of(0, 10_000) == 0
    assert segment_of(9_999, 10_000) == 0
    assert segment_of(10_000, 10_000) == 1
    assert segment_start(3, 300) == 900
    assert segment_end(3, 300) == 1200


def test_topic_name_round_trips_through_parse_topic() -> None:
    topic = topic_name("memsync.events", 172_800_000)
    assert topic == "memsync.events.000172800000"
    assert parse_topic("memsync.events", topic) == 172_800_000


@pytest.mark.parametrize(
    "topic",
    [
        "memsync.events.epoch",
        "memsync.events",
        "us-east.memsync.events.000000000001",
        "memsync.events.00000001",
        "memsync.events.0000000000x1",
        "other.000000000001",
    ],
)
def test_parse_topic_rejects_what_is_not_a_segment_of_the_log(topic: str) -> None:
    assert parse_topic("memsync.events", topic) is None


def test_a_mirrored_log_has_its_own_segments() -> None:
    topics = [topic_name("us-east.memsync.events", 5), topic_name("memsync.events", 7)]
    assert segments_of("us-east.memsync.events", topics) == [5]
    assert segments_of("memsync.events", topics) == [7]


def test_segments_of_sorts_and_deduplicates() -> None:
    topics = [topic_name("l", 9), topic_name("l", 2), "l.epoch", topic_name("l", 2)]
    assert segments_of("l", topics) == [2, 9]


def test_a_segment_is_sealed_only_after_its_end_plus_grace() -> None:
    # segment 1 covers [300, 600)
    assert not is_sealed(1, 599, 300, 100)
    assert not is_sealed(1, 700, 300, 100)
    assert is_sealed(1, 701, 300, 100)
    assert not is_settled(1, 701, 300, 100)
    assert is_settled(1, 801, 300, 100)


def test_a_segment_is_ahead_until_a_grace_before_its_start() -> None:
    # segment 2 covers [600, 900); a writer's clock may run up to 100 ms ahead
    assert is_ahead(2, 499, 300, 100)
    assert not is_ahead(2, 500, 300, 100)
    assert not is_ahead(2, 650, 300, 100)
    assert not is_ahead(1, 650, 300, 100)
    _, following = open_segments(650, 300)
    assert not is_ahead(following, 650, 300, 300)  # with a grace as long as a segment
    assert is_ahead(following, 650, 300, 0)


def test_open_segments_are_the_current_and_the_next() -> None:
    assert open_segments(650, 300) == (2, 3)
    current, following = open_segments(650, 300)
    assert not is_sealed(current, 650, 300, 0)
    assert not is_sealed(following, 650, 300, 0)


def test_invalid_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="segment_ms"):
        segment_of(1, 0)
    with pytest.raises(ValueError, match="grace_ms"):
        is_sealed(1, 1, 300, -1)
    with pytest.raises(ValueError, match="segment"):
        topic_name("l", -1)


def test_a_partition_is_passed_when_committed_reaches_its_true_end() -> None:
    assert partition_passed(0, None)
    assert not partition_passed(5, None)
    assert not partition_passed(5, 4)
    assert partition_passed(5, 5)
    assert segment_passed({0: 5, 1: 0}, {0: 5})
    assert not segment_passed({0: 5, 1: 3}, {0: 5, 1: 2})


def test_only_segments_every_registered_group_passed_are_deletable() -> None:
    progress = [
        GroupProgress("applier", frozenset({1, 2, 3})),
        GroupProgress("mirror-eu", frozenset({1, 2})),
    ]
    assert deletable([1, 2, 3], ["applier", "mirror-eu"], progress) == [1, 2]
    assert deletable([2, 3], ["applier"], progress) == [2, 3]


def test_a_registered_group_without_progress_blocks_deletion() -> None:
    progress = [GroupProgress("applier", frozenset({1}))]
    assert deletable([1], ["applier", "mirror-eu"], progress) == []


def test_nothing_is_deletable_without_registered_groups() -> None:
    assert deletable([1, 2], [], [GroupProgress("applier", frozenset({1, 2}))]) == []


def test_only_sealed_segments_are_candidates() -> None:
    progress = [GroupProgress("applier", frozenset({1, 2, 3}))]
    assert deletable([1], ["applier"], progress) == [1]
