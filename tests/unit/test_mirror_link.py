"""A mirror link's source-side recovery (no broker: the reader is a stand-in)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable

from replication.log import LogRecord
from replication.log_errors import LogUnavailableError
from replication.mirror import MirrorLink


class _StuckCommits:
    """A source reader whose commits fail until it is started again."""

    def __init__(self) -> None:
        self.starts = 0
        self.committed: list[int] = []
        self.contact_at = time.monotonic()
        self.done = asyncio.Event()

    async def start(self) -> None:
        self.starts += 1

    async def read(self, max_records: int | None = None, timeout_ms: int = 1000) -> list[LogRecord]:
        await asyncio.sleep(0.005)
        self.contact_at = time.monotonic()
        return []

    async def commit(self, records: Iterable[LogRecord]) -> None:
        if self.starts == 0:
            raise LogUnavailableError("commit: NodeNotReadyError (coordinator lookup)")
        self.committed.extend(r.offset for r in records)
        self.done.set()

    async def lag(self) -> dict[int, int]:
        return {}


def _record(offset: int) -> LogRecord:
    return LogRecord("memsync.events.1", 1, 0, offset, b"k", b"v", (), 0)


async def test_a_link_restarts_its_source_reader_when_commits_keep_failing() -> None:
    link = MirrorLink(
        source="us-east", target="eu-west", source_bootstrap="127.0.0.1:1",
        target_bootstrap="127.0.0.1:2",
    )  # fmt: skip
    reader = _StuckCommits()
    link._reader = reader  # type: ignore[assignment]
    acked = [_record(0), _record(1)]
    queue: asyncio.Queue[list[LogRecord]] = asyncio.Queue(8)
    loop = asyncio.create_task(link._read_loop(queue, acked))
    try:
        await asyncio.wait_for(reader.done.wait(), 10)
    finally:
        loop.cancel()
    assert reader.starts == 1, "three failed commits in a row restart the reader once"
    assert reader.committed == [0, 1], "the acknowledged records are committed after it"
    assert acked == []
    assert link.status.retries >= 3
