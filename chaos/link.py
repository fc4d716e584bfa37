"""One proxied TCP connection: two pipes, each through its direction's toxics.

A pipe is a reader task (socket → bounded queue of stamped chunks) and a
forwarder task (queue → toxic stages → other socket). Reading ahead into the
queue is what lets ``latency`` pipeline like the real Toxiproxy (each chunk
waits from when it was *read*) while the queue's size bounds memory and turns
a slow chain into TCP back-pressure.

End-of-file in one direction is forwarded as a half-close; the link ends when
both directions did, when a stage raises :class:`~chaos.stages.CloseLink`, on a
socket error, or when :meth:`Link.terminate` is called (proxy disabled, toxic
removed, timeout fired). Closing aborts both sockets — with ``SO_LINGER`` 0,
i.e. an RST, for ``reset_peer``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
import socket
import struct
from collections.abc import Callable, Sequence

import structlog

from chaos.settings import Limits
from chaos.stages import Chunk, CloseLink, Stage, make_stage
from chaos.toxics import Stream, ToxicSpec

__all__ = ["Link"]

_log = structlog.get_logger(__name__)
_LINGER_ZERO = struct.pack("ii", 1, 0)


class Link:
    """A client connection proxied to the upstream; run by the listener's handler task."""

    def __init__(
        self,
        *,
        proxy: str,
        upstream: tuple[str, int],
        client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        toxics: Callable[[], Sequence[ToxicSpec]],
        limits: Limits,
        rng: random.Random,
    ) -> None:
        self._proxy = proxy
        self._upstream = upstream
        self._client = client
        self._toxics = toxics
        self._limits = limits
        self._rng = rng
        self._pipes: tuple[_Pipe, ...] = ()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._reset = False

    @property
    def task(self) -> asyncio.Task[None] | None:
        return self._task

    def terminate(self, *, reset: bool = False) -> None:
        """Close both sockets now (``reset``: with an RST); safe to call repeatedly."""
        self._reset = self._reset or reset
        if self._closing:
            return
        self._closing = True
        if self._task is not None and not self._task.done():
            self._task.cancel()

    def sync_toxics(self) -> None:
        """Bring each pipe's stages in line with the proxy's toxics (called on every change)."""
        close = False
        toxics = self._toxics()
        for pipe in self._pipes:
            close = pipe.sync(toxics) or close
        if close:
            self.terminate()

    async def run(self) -> None:
        """Dial the upstream and move bytes until the link ends or is terminated.

        Termination cancels this task; that cancellation is absorbed here (the
        stream server's handler must not end cancelled), any other propagates.
        """
        task = self._task = asyncio.current_task()
        try:
            await self._run()
        except asyncio.CancelledError:
            if not self._closing or task is None:
                raise
            task.uncancel()

    async def _run(self) -> None:
        client_reader, client_writer = self._client
        writers = [client_writer]
        try:
            host, port = self._upstream
            try:
                async with asyncio.timeout(self._limits.connect_timeout):
                    upstream_reader, upstream_writer = await asyncio.open_connection(
                        host, port, limit=self._limits.chunk_size
                    )
            except (OSError, TimeoutError) as exc:
                _log.warning(
                    "link.upstream_unreachable", proxy=self._proxy, upstream=host, error=str(exc)
                )
                return
            writers.append(upstream_writer)
            if self._closing:  # terminated while the dial was completing
                return
            for writer in writers:
                # drain() then waits until the kernel has every byte: no hidden backlog,
                # and aborting after a drain loses nothing that was forwarded.
                writer.transport.set_write_buffer_limits(high=0)
            self._pipes = (
                _Pipe(Stream.UPSTREAM, client_reader, upstream_writer, self._limits, self._stage),
                _Pipe(Stream.DOWNSTREAM, upstream_reader, client_writer, self._limits, self._stage),
            )
            self.sync_toxics()
            await self._move_bytes()
        finally:
            for pipe in self._pipes:
                pipe.close()
            for writer in writers:
                _abort(writer, reset=self._reset)

    async def _move_bytes(self) -> None:
        try:
            async with asyncio.TaskGroup() as tasks:
                for pipe in self._pipes:
                    tasks.create_task(pipe.pump())
                    tasks.create_task(pipe.forward())
        except* CloseLink as closed:
            self._reset = self._reset or any(
                isinstance(exc, CloseLink) and exc.reset for exc in closed.exceptions
            )
        except* OSError as failed:
            _log.debug("link.socket_error", proxy=self._proxy, error=str(failed.exceptions[0]))

    def _stage(self, spec: ToxicSpec, previous: Stage | None) -> Stage:
        return make_stage(spec, rng=self._rng, on_timeout=self.terminate, previous=previous)


class _Pipe:
    """One direction of a link."""

    def __init__(
        self,
        stream: Stream,
        source: asyncio.StreamReader,
        sink: asyncio.StreamWriter,
        limits: Limits,
        make: Callable[[ToxicSpec, Stage | None], Stage],
    ) -> None:
        self._stream = stream
        self._source = source
        self._sink = sink
        self._make = make
        self._chunk_size = limits.chunk_size
        self._queue: asyncio.Queue[Chunk] = asyncio.Queue(maxsize=limits.queue_chunks)
        self._stages: dict[str, Stage] = {}

    async def pump(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            data = await self._source.read(self._chunk_size)
            await self._queue.put(Chunk(data, loop.time()))
            if not data:
                return

    async def forward(self) -> None:
        while True:
            chunk = await self._queue.get()
            await self._through(tuple(self._stages.values()), chunk)
            if chunk.eof:
                return

    async def _through(self, stages: tuple[Stage, ...], chunk: Chunk) -> None:
        if stages:
            await stages[0].feed(chunk, functools.partial(self._through, stages[1:]))
        elif chunk.eof:
            if self._sink.can_write_eof():
                self._sink.write_eof()
        else:
            self._sink.write(chunk.data)
            await self._sink.drain()

    def sync(self, toxics: Sequence[ToxicSpec]) -> bool:
        """Rebuild the stages; True if a removed toxic requires closing the link."""
        stages: dict[str, Stage] = {}
        for spec in toxics:
            if spec.stream is not self._stream:
                continue
            old = self._stages.get(spec.name)
            if old is not None and old.spec == spec:
                stages[spec.name] = old
                continue
            if old is not None:
                old.close()
            stages[spec.name] = self._make(spec, old)
        close_link = False
        for name, old in self._stages.items():
            if name not in stages:
                old.close()
                close_link = close_link or old.closes_link_on_removal
        self._stages = stages
        return close_link

    def close(self) -> None:
        for stage in self._stages.values():
            stage.close()
        self._stages = {}


def _abort(writer: asyncio.StreamWriter, *, reset: bool) -> None:
    if reset:
        sock = writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ZERO)
    writer.transport.abort()
