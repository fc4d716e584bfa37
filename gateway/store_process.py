"""The Qdrant Edge store in a process of its own (``MEMSYNC_STORE_BACKEND=edge-process``).

Why: the Qdrant Edge binding holds the GIL through much of its work, and its
flush holds it for a time that grows with the store (every payload index is
persisted whole: ~135 ms every 10 s at 150,000 memories, measured). In the
gateway's process that stops the event loop, the journal's thread and the
log clients together. Here a child process owns the shard
(:class:`gateway.store_edge.QdrantEdgeStore`, unchanged) and the gateway
talks to it over a socket pair; building and decoding payloads moves with
it, off the gateway's GIL.

The protocol is private to the two ends: length-prefixed msgpack frames,
``[id, method, args]`` one way and ``[id, error kind or None, result]`` the
other; states travel as :func:`replication.state.encode_state` bytes. The
child serves requests concurrently in arrival order, so writes keep their
order on the store's one writer thread. Every request in flight is bounded
(:data:`MAX_IN_FLIGHT`), every frame too (:data:`MAX_FRAME`). If the child
dies, every pending and later call fails with :class:`StoreError` (503) and
``/readyz`` reports ``store_unavailable``; restarting the gateway restarts it.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec
import structlog

from gateway.store import ListQuery, SearchQuery, StoreError
from replication.state import MemoryState, decode_state, encode_state

__all__ = ["MAX_FRAME", "MAX_IN_FLIGHT", "ProcessStore"]

MAX_FRAME = 64 * 1024 * 1024  # a page or batch of states; far above what callers send
MAX_IN_FLIGHT = 1024
_HEADER = struct.Struct(">I")
_START_TIMEOUT_S = 60.0
_STOP_TIMEOUT_S = 30.0
_LOST = (EOFError, ConnectionError, OSError, StoreError, msgspec.DecodeError, TypeError, ValueError)
_log = structlog.get_logger(__name__)

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder()


async def read_frame(reader: asyncio.StreamReader) -> Any:
    """One frame, decoded; :class:`EOFError` at a clean end of stream."""
    try:
        header = await reader.readexactly(_HEADER.size)
    except asyncio.IncompleteReadError as exc:
        raise EOFError from exc
    (size,) = _HEADER.unpack(header)
    if size > MAX_FRAME:
        raise StoreError(f"store process: a frame of {size} bytes exceeds {MAX_FRAME}")
    return _decoder.decode(await reader.readexactly(size))


def write_frame(writer: asyncio.StreamWriter, message: Any) -> None:
    """Queue one frame on ``writer`` (the caller drains)."""
    body = _encoder.encode(message)
    if len(body) > MAX_FRAME:
        raise StoreError(f"store process: a frame of {len(body)} bytes exceeds {MAX_FRAME}")
    writer.write(_HEADER.pack(len(body)) + body)


class ProcessStore:
    """A ``MemoryStore`` whose Qdrant Edge shard lives in a child process."""

    def __init__(self, path: Path, vector_dim: int = 384) -> None:
        self._path = path
        self._vector_dim = vector_dim
        self._proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._next_id = 0
        self._slots = asyncio.Semaphore(MAX_IN_FLIGHT)
        self._receiving: asyncio.Task[None] | None = None
        self._failure: str | None = None

    @property
    def vector_dim(self) -> int:
        """The dimension every stored embedding must have."""
        return self._vector_dim

    @property
    def pid(self) -> int | None:
        """The child's process id while it runs."""
        return self._proc.pid if self._proc is not None else None

    async def open(self) -> None:
        """Start the child, which opens (or creates) the shard, and wait until it has."""
        if self._proc is not None:
            return
        ours, theirs = socket.socketpair()
        try:
            self._proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "gateway.store_worker",
                "--fd", str(theirs.fileno()),
                "--path", str(self._path),
                "--vector-dim", str(self._vector_dim),
                pass_fds=(theirs.fileno(),),
                stdin=asyncio.subprocess.DEVNULL,
            )  # fmt: skip
        finally:
            theirs.close()
        self._reader, self._writer = await asyncio.open_connection(sock=ours, limit=MAX_FRAME)
        self._failure = None
        self._receiving = asyncio.create_task(self._receive(), name="store-process-receive")
        try:
            async with asyncio.timeout(_START_TIMEOUT_S):
                await self._call("open")
        except BaseException:
            await self._kill()
            raise
        _log.info("store_process.started", pid=self._proc.pid, path=str(self._path))

    async def close(self) -> None:
        """Flush and close the shard, and let the child exit."""
        proc = self._proc
        if proc is None:
            return
        try:
            if self._failure is None:
                async with asyncio.timeout(_STOP_TIMEOUT_S):
                    await self._call("close")
                    await proc.wait()
        except (StoreError, TimeoutError) as exc:
            _log.warning("store_process.unclean_stop", error=str(exc))
        finally:
            await self._kill()

    async def _kill(self) -> None:
        proc, self._proc = self._proc, None
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(Exception):
                await self._writer.wait_closed()
            self._writer = None
        if self._receiving is not None:
            self._receiving.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._receiving
            self._receiving = None
        if proc is not None and proc.returncode is None:
            proc.kill()
            await proc.wait()
        self._fail_pending("the store process stopped")

    # -- the port ---------------------------------------------------------------

    async def get(self, key: str) -> MemoryState | None:
        """One memory's state, deleted ones included; ``None`` if unknown."""
        return (await self.get_many([key])).get(key)

    async def get_many(self, keys: Sequence[str]) -> dict[str, MemoryState]:
        """The states of the keys that exist."""
        if not keys:
            return {}
        found: list[bytes] = await self._call("get_many", list(keys))
        states = (decode_state(b) for b in found)
        return {s.key: s for s in states}

    async def put_many(self, states: Sequence[MemoryState]) -> None:
        """Upsert states in one batch (the last state of a key wins)."""
        if states:
            await self._call("put_many", [encode_state(s) for s in states])

    async def list_page(self, query: ListQuery) -> tuple[list[MemoryState], str | None]:
        """One page of a tenant's states, and the next page's token."""
        page, token = await self._call("list_page", query)
        return [decode_state(b) for b in page], token

    async def search(self, query: SearchQuery) -> list[tuple[MemoryState, float]]:
        """Ranked live memories with scores, best first."""
        hits = await self._call("search", query)
        return [(decode_state(b), float(score)) for b, score in hits]

    async def scan(self, offset: str | None, limit: int) -> tuple[list[MemoryState], str | None]:
        """Every memory (deleted included, metadata excluded), in point-id order."""
        page, token = await self._call("scan", [offset, limit])
        return [decode_state(b) for b in page], token

    async def maintain(self) -> None:
        """Flush the shard (in the child: the gateway's loop does not stop for it)."""
        await self._call("maintain")

    async def count(self) -> int:
        """How many memories (deleted included) the shard holds."""
        result: int = await self._call("count")
        return result

    async def get_meta(self, name: str) -> bytes | None:
        """A named metadata blob, or ``None``."""
        value: bytes | None = await self._call("get_meta", name)
        return value

    async def put_meta(self, name: str, value: bytes) -> None:
        """Store a named metadata blob (ordered after earlier writes)."""
        await self._call("put_meta", [name, value])

    # -- the wire ---------------------------------------------------------------

    async def _call(self, method: str, args: Any = None) -> Any:
        if self._failure is not None:
            raise StoreError(f"qdrant edge store process: {self._failure}")
        writer = self._writer
        if writer is None:
            raise StoreError("qdrant edge store process: the store is not open")
        async with self._slots:
            self._next_id += 1
            call_id = self._next_id
            done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            self._pending[call_id] = done
            try:
                write_frame(writer, [call_id, method, args])
                await writer.drain()
                return await done
            except (ConnectionError, OSError) as exc:
                raise StoreError(f"qdrant edge store process: {method} failed: {exc}") from exc
            finally:
                self._pending.pop(call_id, None)

    async def _receive(self) -> None:
        reader = self._reader
        if reader is None:
            return
        try:
            while True:
                call_id, error, result = await read_frame(reader)
                done = self._pending.get(call_id)
                if done is None or done.done():
                    continue
                if error is None:
                    done.set_result(result)
                elif error == "value":
                    done.set_exception(ValueError(result))
                else:
                    done.set_exception(StoreError(str(result)))
        # TypeError / ValueError: a reply that is not [id, error, result]; a
        # caller must never wait on it.
        except _LOST as exc:
            reason = "the store process exited" if isinstance(exc, EOFError) else str(exc)
            self._failure = reason
            if self._proc is not None and self._proc.returncode is None:
                _log.error("store_process.lost", error=reason)
            self._fail_pending(reason)

    def _fail_pending(self, reason: str) -> None:
        for done in self._pending.values():
            if not done.done():
                done.set_exception(StoreError(f"qdrant edge store process: {reason}"))
        self._pending.clear()
