"""What each toxic does to one direction of one connection.

A :class:`Stage` is one toxic's state on one link direction (the real
Toxiproxy's ``ToxicStub``). A pipe pushes each chunk it read through its
stages in chain order: ``await stage.feed(chunk, emit)`` where ``emit`` hands a
chunk to the next stage (or the socket). A stage may delay (``latency``,
``bandwidth``, ``slicer``, ``slow_close``), split, truncate, drop, or end the
whole connection by raising :class:`CloseLink`. An empty chunk is end-of-file.

Behaviour follows ``toxics/*.go``; where it differs it is said below.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from chaos.toxics import ToxicSpec

__all__ = ["Chunk", "CloseLink", "Emit", "Stage", "make_stage"]


@dataclass(frozen=True, slots=True)
class Chunk:
    """Bytes read from one side; ``stamp`` is the loop time they were read at."""

    data: bytes
    stamp: float

    @property
    def eof(self) -> bool:
        return not self.data


Emit = Callable[[Chunk], Awaitable[None]]


class CloseLink(Exception):
    """Raised by a stage to close the whole connection (``reset``: with a TCP RST)."""

    def __init__(self, *, reset: bool) -> None:
        super().__init__("reset" if reset else "close")
        self.reset = reset


class Stage:
    """A toxic that lets everything through: ``noop``, or a toxicity roll that missed."""

    closes_link_on_removal = False

    def __init__(self, spec: ToxicSpec) -> None:
        self.spec = spec

    async def feed(self, chunk: Chunk, emit: Emit) -> None:
        await emit(chunk)

    def close(self) -> None:
        """Release timers; called when the toxic is removed or the link ends."""


def make_stage(
    spec: ToxicSpec,
    *,
    rng: random.Random,
    on_timeout: Callable[[], None],
    previous: Stage | None = None,
) -> Stage:
    """Roll ``toxicity`` for this link and build the stage (``previous``: before an update)."""
    if rng.random() >= spec.toxicity:
        return Stage(spec)
    match spec.type:
        case "latency":
            return _Latency(spec, rng)
        case "bandwidth":
            return _Bandwidth(spec)
        case "slow_close":
            return _SlowClose(spec)
        case "timeout":
            return _Timeout(spec, on_timeout)
        case "reset_peer":
            return _ResetPeer(spec)
        case "slicer":
            return _Slicer(spec, rng)
        case "limit_data":
            sent = previous.sent if isinstance(previous, _LimitData) else 0
            return _LimitData(spec, sent)
        case _:
            return Stage(spec)


async def _sleep_until(deadline: float) -> None:
    wait = deadline - asyncio.get_running_loop().time()
    if wait > 0:
        await asyncio.sleep(wait)


class _Latency(Stage):
    """Each chunk leaves ``latency ± jitter`` ms after it was read (so it pipelines)."""

    def __init__(self, spec: ToxicSpec, rng: random.Random) -> None:
        super().__init__(spec)
        self._rng = rng

    async def feed(self, chunk: Chunk, emit: Emit) -> None:
        if chunk.eof:
            await emit(chunk)
            return
        delay_ms = self.spec.attr("latency")
        jitter = self.spec.attr("jitter")
        if jitter > 0:
            delay_ms += self._rng.randrange(-jitter, jitter)
        due = chunk.stamp + max(delay_ms, 0) / 1000
        await _sleep_until(due)
        await emit(Chunk(chunk.data, due))


class _Bandwidth(Stage):
    """At most ``rate`` KB/s, sent in pieces of 100 ms worth; idle time earns no credit."""

    def __init__(self, spec: ToxicSpec) -> None:
        super().__init__(spec)
        self._free_at = 0.0

    async def feed(self, chunk: Chunk, emit: Emit) -> None:
        rate = self.spec.attr("rate")
        if chunk.eof or rate <= 0:
            await emit(chunk)
            return
        per_second = rate * 1000
        step = max(rate * 100, 1)
        loop = asyncio.get_running_loop()
        for start in range(0, len(chunk.data), step):
            piece = chunk.data[start : start + step]
            self._free_at = max(self._free_at, loop.time()) + len(piece) / per_second
            await _sleep_until(self._free_at)
            await emit(Chunk(piece, chunk.stamp))


class _SlowClose(Stage):
    """Data passes; end-of-file is held back ``delay`` ms."""

    async def feed(self, chunk: Chunk, emit: Emit) -> None:
        if chunk.eof:
            await asyncio.sleep(self.spec.attr("delay") / 1000)
        await emit(chunk)


class _Timeout(Stage):
    """Drops all data; closes the link ``timeout`` ms after it started (0: never).

    The real toxic re-arms its timer on every chunk it drops (an idle timeout);
    this one counts from when it became active on the link, as documented.
    Removing it closes the link, as the real ``Cleanup`` does: data was lost.
    """

    closes_link_on_removal = True

    def __init__(self, spec: ToxicSpec, on_timeout: Callable[[], None]) -> None:
        super().__init__(spec)
        timeout_ms = spec.attr("timeout")
        self._timer = (
            asyncio.get_running_loop().call_later(timeout_ms / 1000, on_timeout)
            if timeout_ms > 0
            else None
        )

    async def feed(self, chunk: Chunk, emit: Emit) -> None:
        if chunk.eof:
            raise CloseLink(reset=False)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()


class _ResetPeer(Stage):
    """On the first chunk (or end-of-file), waits ``timeout`` ms, then resets the link."""

    async def feed(self, chunk: Chunk, emit: Emit) -> None:
        await asyncio.sleep(self.spec.attr("timeout") / 1000)
        raise CloseLink(reset=True)


class _Slicer(Stage):
    """Splits chunks into ~``average_size ± size_variation`` pieces, ``delay`` µs apart."""

    def __init__(self, spec: ToxicSpec, rng: random.Random) -> None:
        super().__init__(spec)
        self._rng = rng

    def _cuts(self, size: int) -> list[tuple[int, int]]:
        # Halve until a piece is within average + variation (slicer.go's
        # recursion, made iterative). The parser guarantees average >= 1 and
        # variation < average, so every cut makes progress.
        average = self.spec.attr("average_size")
        variation = self.spec.attr("size_variation")
        cuts: list[tuple[int, int]] = []
        todo = [(0, size)]
        while todo:
            start, end = todo.pop()
            if (end - start) - average <= variation:
                cuts.append((start, end))
                continue
            mid = start + (end - start) // 2
            if variation > 0:
                mid += self._rng.randrange(-variation, variation)
            todo.append((mid, end))
            todo.append((start, mid))
        return cuts

    async def feed(self, chunk: Chunk, emit: Emit) -> None:
        if chunk.eof:
            await emit(chunk)
            return
        pause = self.spec.attr("delay") / 1_000_000
        for start, end in self._cuts(len(chunk.data)):
            await emit(Chunk(chunk.data[start:end], chunk.stamp))
            await asyncio.sleep(pause)


class _LimitData(Stage):
    """Passes ``bytes`` bytes in total (across updates), then closes the link."""

    def __init__(self, spec: ToxicSpec, sent: int) -> None:
        super().__init__(spec)
        self.sent = sent

    async def feed(self, chunk: Chunk, emit: Emit) -> None:
        if chunk.eof:
            await emit(chunk)
            return
        limit = self.spec.attr("bytes")
        piece = chunk.data[: max(limit - self.sent, 0)]
        if piece:
            await emit(Chunk(piece, chunk.stamp))
            self.sent += len(piece)
        if self.sent >= limit:
            raise CloseLink(reset=False)
