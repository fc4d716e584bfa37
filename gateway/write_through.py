"""Write-through: this gateway's own writes applied as soon as the log acknowledged them.

A write is answered once its event is in the log (``acks=all``) and in the
journal (fsync). Without this it reached this gateway's cache, store,
history and subscribers only when the applier read it back from the log: one
fetch cycle at least (the bundled broker answers a fetch only when its wait
expires), plus, in the seconds after a segment roll, the reader's hold that
keeps one key's records in order across segments. Once the log has
acknowledged it, the event is durable and immutable and will be applied
everywhere (whatever the journal's fsync beside it says), so the gateway
applies it at once, through the same
:meth:`gateway.applier.Applier.apply_written` (same lock, merge, cache, store,
history and fan-out). When the log delivers it, it is a duplicate here and
changes nothing (I5); everyone else — other gateways, other regions — still
learns it from the log only.

Order per memory holds: a gateway's writes to one memory are built one after
the other from its own state, and anything the log delivers later is either
a duplicate, concurrent with them, or built after them elsewhere.

The queue is bounded. A full queue, or an apply that fails, costs nothing
but the early delivery: the log's applier applies those events anyway
(``memsync_write_through_dropped_total``).
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Awaitable, Callable, Sequence

import structlog

from replication.errors import MemsyncError
from replication.schema import MemoryEvent

__all__ = ["WriteThrough"]

_log = structlog.get_logger(__name__)

Apply = Callable[[Sequence[tuple[MemoryEvent, bytes]]], Awaitable[None]]


class WriteThrough:
    """A bounded queue of acknowledged own events and the loop that applies them."""

    def __init__(
        self,
        apply: Apply,
        *,
        limit: int = 10_000,
        batch: int = 500,
        on_drop: Callable[[int], None] | None = None,
    ) -> None:
        if limit < 1 or batch < 1:
            raise ValueError("limit and batch must be at least 1")
        self._apply = apply
        self._limit = limit
        self._batch = batch
        self._on_drop = on_drop or (lambda _n: None)
        self._queue: collections.deque[tuple[MemoryEvent, bytes]] = collections.deque()
        self._ready = asyncio.Event()

    def __len__(self) -> int:
        return len(self._queue)

    def offer(self, event: MemoryEvent, raw: bytes) -> None:
        """Queue an event the log acknowledged; dropped (the log applies it) when full."""
        if len(self._queue) >= self._limit:
            self._on_drop(1)
            return
        self._queue.append((event, raw))
        self._ready.set()

    async def run(self) -> None:
        """Apply queued events in batches, forever (until cancelled)."""
        while True:
            await self._ready.wait()
            self._ready.clear()
            # The acknowledgements of one produce response resume their writers
            # one loop step each: let them all queue, then apply them together.
            await asyncio.sleep(0)
            while self._queue:
                n = min(len(self._queue), self._batch)
                events = [self._queue.popleft() for _ in range(n)]
                try:
                    await self._apply(events)
                except MemsyncError as exc:
                    self._on_drop(len(events))
                    _log.warning("write_through.failed", events=len(events), error=exc.message)
