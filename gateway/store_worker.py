"""The child process of :class:`gateway.store_process.ProcessStore`.

    python -m gateway.store_worker --fd N --path DIR --vector-dim D

Not run by hand: the gateway starts it with one end of a socket pair as
``--fd``. It owns one :class:`gateway.store_edge.QdrantEdgeStore` and serves
the frames described in :mod:`gateway.store_process` until it is asked to
close or the socket closes (the gateway went away: the shard is flushed and
closed then too). It ignores SIGINT, which a terminal's Ctrl-C sends to the
whole process group: the gateway decides when it closes.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import msgspec
import uvloop

from gateway.store import ListQuery, SearchQuery, StoreError
from gateway.store_edge import QdrantEdgeStore
from gateway.store_process import MAX_FRAME, read_frame, write_frame
from replication.state import decode_state, encode_state

__all__ = ["LOCK_WAIT_S", "main", "serve"]

Handler = Callable[[QdrantEdgeStore, Any], Awaitable[Any]]
LOCK_WAIT_S = 30.0  # how long an open waits for another process to release the shard


async def _get_many(store: QdrantEdgeStore, keys: list[str]) -> list[bytes]:
    return [encode_state(s) for s in (await store.get_many(keys)).values()]


async def _put_many(store: QdrantEdgeStore, states: list[bytes]) -> None:
    await store.put_many([decode_state(b) for b in states])


async def _list_page(store: QdrantEdgeStore, query: Any) -> list[Any]:
    page, token = await store.list_page(msgspec.convert(query, ListQuery))
    return [[encode_state(s) for s in page], token]


async def _search(store: QdrantEdgeStore, query: Any) -> list[Any]:
    hits = await store.search(msgspec.convert(query, SearchQuery))
    return [[encode_state(s), score] for s, score in hits]


async def _scan(store: QdrantEdgeStore, args: list[Any]) -> list[Any]:
    page, token = await store.scan(args[0], int(args[1]))
    return [[encode_state(s) for s in page], token]


async def _put_meta(store: QdrantEdgeStore, args: list[Any]) -> None:
    await store.put_meta(str(args[0]), bytes(args[1]))


async def _unknown(_store: QdrantEdgeStore, _args: Any) -> None:
    raise StoreError("store process: unknown method")


async def _open(store: QdrantEdgeStore, _args: Any) -> None:
    # A gateway restarted at once (after a crash or SIGKILL) can start this
    # child while the previous one still closes the shard and holds its lock.
    deadline = time.monotonic() + LOCK_WAIT_S
    while True:
        try:
            await store.open()
        except StoreError as exc:
            if "WouldBlock" not in str(exc) or time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)
        else:
            return


async def _close(store: QdrantEdgeStore, _args: Any) -> None:
    await store.close()


async def _maintain(store: QdrantEdgeStore, _args: Any) -> None:
    await store.maintain()


async def _count(store: QdrantEdgeStore, _args: Any) -> int:
    return await store.count()


async def _get_meta(store: QdrantEdgeStore, name: Any) -> bytes | None:
    return await store.get_meta(str(name))


HANDLERS: dict[str, Handler] = {
    "open": _open,
    "close": _close,
    "get_many": _get_many,
    "put_many": _put_many,
    "list_page": _list_page,
    "search": _search,
    "scan": _scan,
    "maintain": _maintain,
    "count": _count,
    "get_meta": _get_meta,
    "put_meta": _put_meta,
}


async def serve(sock: socket.socket, store: QdrantEdgeStore) -> None:
    """Answer frames on ``sock`` until ``close`` or the end of the stream."""
    reader, writer = await asyncio.open_connection(sock=sock, limit=MAX_FRAME)
    tasks: set[asyncio.Task[None]] = set()

    async def answer(call_id: int, method: str, args: Any) -> None:
        handler: Handler = HANDLERS.get(method) or _unknown
        try:
            reply = [call_id, None, await handler(store, args)]
        except ValueError as exc:  # a bad query: the caller's error, as in-process
            reply = [call_id, "value", str(exc)]
        except Exception as exc:  # noqa: BLE001 - every failure is answered, never lost
            reply = [call_id, "store", str(exc) if isinstance(exc, StoreError) else repr(exc)]
        try:
            write_frame(writer, reply)
        except StoreError as exc:  # a result over the frame limit: say so, do not go silent
            write_frame(writer, [call_id, "store", str(exc)])
        await writer.drain()

    try:
        while True:
            try:
                call_id, method, args = await read_frame(reader)
            except EOFError:
                break
            if method == "close":
                await asyncio.gather(*tasks, return_exceptions=True)
                await answer(call_id, method, args)
                return
            # Started in arrival order: writes reach the store's writer
            # thread in that order.
            task = asyncio.create_task(answer(call_id, method, args))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
    finally:
        await asyncio.gather(*tasks, return_exceptions=True)
        await store.close()
        writer.close()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the child process."""
    parser = argparse.ArgumentParser(prog="python -m gateway.store_worker")
    parser.add_argument("--fd", type=int, required=True, help="this end of the socket pair")
    parser.add_argument("--path", type=Path, required=True, help="the shard's directory")
    parser.add_argument("--vector-dim", type=int, required=True)
    args = parser.parse_args(argv)
    # Ctrl-C in a terminal reaches the whole process group: the gateway
    # closes this store itself (or its end of the socket closes), in order.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sock = socket.socket(fileno=args.fd)
    store = QdrantEdgeStore(args.path, vector_dim=args.vector_dim)
    uvloop.run(serve(sock, store))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
