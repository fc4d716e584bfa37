"""Deletion of consumed segment topics (:class:`SegmentJanitor`).

Re-exported by :mod:`replication.log`; see there for the broker quirks.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping, Sequence

import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from replication.log import DEFAULT_LOG, WallClock, _Admin, _translated, wall_ms
from replication.log_errors import LogError
from replication.segments import (
    DEFAULT_GRACE_MS,
    DEFAULT_SEGMENT_MS,
    GroupProgress,
    deletable,
    is_expired,
    is_sealed,
    open_segments,
    segment_passed,
    segments_of,
    topic_name,
)

__all__ = ["SegmentJanitor"]

_log = structlog.get_logger("replication.log")


class SegmentJanitor:
    """Deletes sealed segments every registered consumer group has fully consumed.

    The true end of a partition comes from a fetch's highwater (``end_offsets``
    under-reports on Tansu); a group passes a partition when its committed
    offset reaches that end. A reader commits the end of a segment only once
    it has unassigned it, and commits an empty partition (offset 0) then too,
    so a partition no group committed is not passed even when it is empty:
    deleting a topic a reader still has assigned would make its consumer name
    it in a metadata request, and the broker re-create it. The current and
    the next segment are never deleted.

    ``held_groups`` (mirror links) are waited for only ``hold_ms`` after a
    segment ended: a link that is down for longer must not make the bundled
    broker keep every record (it has no retention), so past the hold the
    segment goes once the required ``groups`` passed it, and anti-entropy
    repairs what the link then misses. ``hold_ms=None`` waits for ever.
    """

    def __init__(
        self,
        bootstrap: str,
        *,
        groups: Sequence[str],
        held_groups: Sequence[str] = (),
        hold_ms: int | None = None,
        log: str = DEFAULT_LOG,
        segment_ms: int = DEFAULT_SEGMENT_MS,
        grace_ms: int = DEFAULT_GRACE_MS,
        request_timeout_ms: int = 5_000,
        clock: WallClock = wall_ms,
    ) -> None:
        self._bootstrap = bootstrap
        self._groups = tuple(groups)
        self._held = tuple(g for g in held_groups if g not in self._groups)
        self._hold_ms = hold_ms
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
        groups = {g: self._consumer(g) for g in (*self._groups, *self._held)}
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
                    if _released({tp.partition: e for tp, e in ends.items()}, committed):
                        progress[g].add(s)
            passed = [GroupProgress(g, frozenset(p)) for g, p in progress.items()]
            doomed = deletable(sealed, (*self._groups, *self._held), passed)
            if self._held and self._hold_ms is not None:
                hold = self._hold_ms
                expired = [s for s in sealed if is_expired(s, now, self._segment_ms, hold)]
                overdue = sorted(set(deletable(expired, self._groups, passed)) - set(doomed))
                if overdue:
                    self._bound.warning(
                        "segments_expired_unmirrored", segments=overdue, held=self._held
                    )
                doomed = sorted({*doomed, *overdue})
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


def _released(ends: Mapping[int, int], committed: Mapping[int, int | None]) -> bool:
    """Whether a group passed every partition and committed on each, even an empty one."""
    return segment_passed(ends, committed) and all(committed.get(p) is not None for p in ends)
