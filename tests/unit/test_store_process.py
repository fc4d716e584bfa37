"""The store process's wire, both ends, without a shard (gateway.store_process, store_worker)."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

import pytest

from gateway import store_process
from gateway.store import StoreError
from gateway.store_process import ProcessStore, read_frame, write_frame
from gateway.store_worker import serve


async def test_a_malformed_reply_fails_the_pending_call_instead_of_leaving_it_waiting() -> None:
    ours, theirs = socket.socketpair()
    store = ProcessStore(Path("/nonexistent"))
    store._reader, store._writer = await asyncio.open_connection(sock=ours)
    child_reader, child_writer = await asyncio.open_connection(sock=theirs)
    store._receiving = asyncio.create_task(store._receive())
    try:
        call = asyncio.create_task(store._call("count"))
        assert (await read_frame(child_reader))[1] == "count"
        write_frame(child_writer, {"not": "a reply"})
        await child_writer.drain()
        with pytest.raises(StoreError, match="store process"):
            await asyncio.wait_for(call, 5)
        with pytest.raises(StoreError, match="store process"):
            await store._call("count")  # and every later call, at once
    finally:
        child_writer.close()
        await store._kill()


class _BigMeta:
    """A stand-in for the shard: one metadata blob, larger than a frame may be."""

    closed = False

    async def get_meta(self, name: str) -> bytes:
        return b"x" * 4096

    async def count(self) -> int:
        return 7

    async def close(self) -> None:
        self.closed = True


async def test_a_result_over_the_frame_limit_is_answered_with_an_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(store_process, "MAX_FRAME", 1024)
    ours, theirs = socket.socketpair()
    fake = _BigMeta()
    serving = asyncio.create_task(serve(theirs, fake))  # type: ignore[arg-type]
    reader, writer = await asyncio.open_connection(sock=ours)
    try:
        write_frame(writer, [1, "get_meta", "blob"])
        write_frame(writer, [2, "count", None])
        write_frame(writer, [3, "no_such_method", None])
        await writer.drain()
        replies: dict[int, Any] = {}
        for _ in range(3):
            call_id, error, result = await asyncio.wait_for(read_frame(reader), 5)
            replies[call_id] = (error, result)
        assert replies[1][0] == "store" and "exceeds 1024" in replies[1][1]
        assert replies[2] == (None, 7)
        assert replies[3][0] == "store" and "unknown method" in replies[3][1]
        write_frame(writer, [4, "close", None])
        await writer.drain()
        await asyncio.wait_for(serving, 5)
        assert fake.closed
    finally:
        writer.close()
        serving.cancel()
