"""Segment arithmetic for the log bounded by acknowledgement (DESIGN §5).

A log such as ``memsync.events`` (or a mirrored ``us-east.memsync.events``) is
a series of *segment topics* ``f"{log}.{segment:012d}"``. Segments roll by
time: a record appended at wall time ``t`` goes to segment ``t // segment_ms``.
A segment is *sealed* once the wall clock is past its end plus a grace period;
a producer whose acknowledgement arrives after the seal re-appends the record
to the current segment, so nothing stays behind in a sealed segment unseen.
A sealed segment may be deleted once every registered consumer group has
committed past its true end on every partition.

Everything here is pure: plain functions over ints and frozen values. The
Kafka adapter (:mod:`replication.log`) supplies the clock and the offsets.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping

import msgspec

__all__ = [
    "DEFAULT_GRACE_MS",
    "DEFAULT_SEGMENT_MS",
    "GroupProgress",
    "deletable",
    "is_ahead",
    "is_expired",
    "is_sealed",
    "is_settled",
    "open_segments",
    "parse_topic",
    "partition_passed",
    "segment_end",
    "segment_of",
    "segment_passed",
    "segment_start",
    "segments_of",
    "topic_name",
]

DEFAULT_SEGMENT_MS = 10_000
DEFAULT_GRACE_MS = 2_000
_DIGITS = 12


class GroupProgress(msgspec.Struct, frozen=True):
    """The sealed segments one consumer group has fully consumed."""

    group: str
    passed: frozenset[int]


def _check(segment_ms: int, grace_ms: int = 0) -> None:
    if segment_ms <= 0:
        raise ValueError(f"segment_ms must be positive, got {segment_ms}")
    if grace_ms < 0:
        raise ValueError(f"grace_ms must not be negative, got {grace_ms}")


def segment_of(wall_ms: int, segment_ms: int) -> int:
    """The segment a record appended at ``wall_ms`` belongs to."""
    _check(segment_ms)
    return wall_ms // segment_ms


def segment_start(segment: int, segment_ms: int) -> int:
    """The first wall millisecond of ``segment``."""
    _check(segment_ms)
    return segment * segment_ms


def segment_end(segment: int, segment_ms: int) -> int:
    """The first wall millisecond *after* ``segment`` (exclusive end)."""
    _check(segment_ms)
    return (segment + 1) * segment_ms


def topic_name(log: str, segment: int) -> str:
    """The topic holding ``segment`` of ``log``."""
    if segment < 0:
        raise ValueError(f"segment must not be negative, got {segment}")
    return f"{log}.{segment:0{_DIGITS}d}"


def parse_topic(log: str, topic: str) -> int | None:
    """The segment number if ``topic`` is a segment topic of ``log``, else ``None``.

    ``memsync.events.epoch`` and ``us-east.memsync.events.000000000001`` are
    not segments of ``memsync.events``.
    """
    prefix = log + "."
    if not topic.startswith(prefix):
        return None
    rest = topic[len(prefix) :]
    if len(rest) < _DIGITS or not rest.isascii() or not rest.isdigit():
        return None
    return int(rest)


def segments_of(log: str, topics: Iterable[str]) -> list[int]:
    """The segments of ``log`` among ``topics``, in segment order."""
    found = {parse_topic(log, topic) for topic in topics}
    return sorted(s for s in found if s is not None)


def is_sealed(segment: int, now_ms: int, segment_ms: int, grace_ms: int) -> bool:
    """Whether ``segment`` is sealed: ``now_ms`` is past its end plus ``grace_ms``.

    No acknowledgement for a record of a sealed segment is accepted; the
    producer re-appends such a record to the current segment.
    """
    _check(segment_ms, grace_ms)
    return now_ms > segment_end(segment, segment_ms) + grace_ms


def is_settled(segment: int, now_ms: int, segment_ms: int, grace_ms: int) -> bool:
    """Whether ``segment`` has been sealed for one more grace period.

    A reader that has caught up on a settled segment (with a fetch made after
    it saw the seal) has seen every record the segment will ever keep.
    """
    return is_sealed(segment, now_ms - grace_ms, segment_ms, grace_ms)


def is_ahead(segment: int, now_ms: int, segment_ms: int, grace_ms: int) -> bool:
    """Whether ``segment`` starts more than ``grace_ms`` from now.

    No writer whose clock is within ``grace_ms`` of this one (what sealing
    assumes) can have appended to it yet, so a reader need not fetch it.
    """
    _check(segment_ms, grace_ms)
    return segment_start(segment, segment_ms) - grace_ms > now_ms


def is_expired(segment: int, now_ms: int, segment_ms: int, hold_ms: int) -> bool:
    """Whether ``segment`` ended more than ``hold_ms`` ago.

    Past that, a segment no longer waits for *held* consumers (mirror links
    that are down): it is deleted once the required ones passed it, and
    anti-entropy repairs what a held consumer then misses.
    """
    _check(segment_ms)
    return now_ms > segment_end(segment, segment_ms) + hold_ms


def open_segments(now_ms: int, segment_ms: int) -> tuple[int, int]:
    """The current and the next segment: the ones to create ahead of use."""
    current = segment_of(now_ms, segment_ms)
    return current, current + 1


def partition_passed(end: int, committed: int | None) -> bool:
    """Whether a group committed past the true ``end`` of one partition.

    An empty partition (``end == 0``) holds nothing to lose, so it is passed
    even by a group that never committed; otherwise a missing commit blocks.
    """
    if end <= 0:
        return True
    return committed is not None and committed >= end


def segment_passed(ends: Mapping[int, int], committed: Mapping[int, int | None]) -> bool:
    """Whether a group passed every partition of a segment.

    ``ends`` maps each partition to its true end offset; ``committed`` maps
    partitions to the group's committed offset (missing means never committed).
    """
    return all(partition_passed(end, committed.get(p)) for p, end in ends.items())


def deletable(
    sealed: Iterable[int], groups: Collection[str], progress: Iterable[GroupProgress]
) -> list[int]:
    """The sealed segments every registered group has fully passed, in order.

    A registered group with no :class:`GroupProgress` blocks every deletion;
    with no registered group nothing is deletable (nobody acknowledged it).
    """
    if not groups:
        return []
    passed = {p.group: p.passed for p in progress}
    candidates = set(sealed)
    for group in groups:
        candidates &= passed.get(group, frozenset())
    return sorted(candidates)
