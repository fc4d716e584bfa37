"""The reference the subscription targets were set against: a bare aiohttp broadcast.

    python -m loadtests.bare_broadcast BOOTSTRAP PORT TOPIC

One process on uvloop, aiohttp and aiokafka and nothing of memsync, speaking
just enough of the gateway's protocol that :mod:`loadtests.propagation_bench`
drives it with the same writer and the same subscriber processes:

- ``GET /v1/subscribe``: a WebSocket; its first text message (whatever it
  says) is answered ``{"op":"subscribed"}`` and the socket joins the one
  audience. No auth, no channels, no cursors, no buffers per connection.
- ``POST /v1/memories``: the body's ``content`` becomes an event frame that
  is appended with one ``send_and_wait`` (``acks="all"``) to TOPIC; 201 once
  the broker acknowledged. A consumer of TOPIC (``fetch_max_wait_ms=5``, as
  the gateway's readers) sends what each fetch returned to every socket: one
  ``event`` frame, or one ``batch`` frame when it returned several, as the
  gateway coalesces queued events. This is the least a write → log →
  subscriber pipeline does.
- ``POST /v1/broadcast``: the same frame straight to every socket, no log
  (the bare aiohttp broadcast of one event to many).
- ``GET /readyz`` and ``GET /metrics``: empty answers, so the benchmark's
  scrapes work unchanged.

Prints ``ready`` once it listens on 127.0.0.1:PORT; runs until terminated.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys

import msgspec
import uvloop
from aiohttp import WSMsgType, web
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

_decode = msgspec.json.Decoder()
_encode = msgspec.json.Encoder()
MAX_BODY = 64 * 1024


def event_frame(content: str) -> bytes:
    """One event as the gateway frames it (only what the subscribers read)."""
    return _encode.encode({"op": "event", "memory": {"content": content}})


def batch_frame(events: list[bytes]) -> bytes:
    """Several event frames as one ``batch`` frame."""
    return b'{"op":"batch","events":[' + b",".join(events) + b"]}"


async def _send_all(audience: set[web.WebSocketResponse], frame: str) -> None:
    for ws in tuple(audience):
        if ws.closed:
            audience.discard(ws)
            continue
        try:
            await ws.send_str(frame)
        except (ConnectionError, RuntimeError):
            audience.discard(ws)


async def _serve(bootstrap: str, port: int, topic: str) -> None:
    audience: set[web.WebSocketResponse] = set()
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", enable_idempotence=False, linger_ms=0
    )
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="latest",
        fetch_max_wait_ms=5,
        group_id=None,
    )
    await producer.start()
    partitions = await producer.partitions_for(topic)
    consumer.assign([TopicPartition(topic, p) for p in sorted(partitions)])
    await consumer.start()

    async def relay() -> None:
        while True:
            batches = await consumer.getmany(timeout_ms=100)
            events = [rec.value for recs in batches.values() for rec in recs]
            if events:
                frame = events[0] if len(events) == 1 else batch_frame(events)
                await _send_all(audience, frame.decode())

    async def subscribe(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(heartbeat=None, max_msg_size=MAX_BODY)
        await ws.prepare(request)
        try:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT and ws not in audience:
                    await ws.send_str('{"op":"subscribed"}')
                    audience.add(ws)
        finally:
            audience.discard(ws)
        return ws

    async def content_of(request: web.Request) -> bytes:
        body = _decode.decode(await request.read())
        return event_frame(str(body["content"]))

    async def write(request: web.Request) -> web.Response:
        frame = await content_of(request)
        await producer.send_and_wait(topic, frame, key=frame[-16:])
        return web.json_response({"ok": True}, status=201)

    async def broadcast(request: web.Request) -> web.Response:
        await _send_all(audience, (await content_of(request)).decode())
        return web.json_response({"ok": True}, status=201)

    async def empty_json(_request: web.Request) -> web.Response:
        return web.json_response({})

    async def empty_text(_request: web.Request) -> web.Response:
        return web.Response(text="")

    app = web.Application(client_max_size=MAX_BODY)
    app.router.add_get("/v1/subscribe", subscribe)
    app.router.add_post("/v1/memories", write)
    app.router.add_post("/v1/broadcast", broadcast)
    app.router.add_get("/readyz", empty_json)
    app.router.add_get("/metrics", empty_text)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    relaying = asyncio.create_task(relay())
    print("ready", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        relaying.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await relaying
        await runner.cleanup()
        await consumer.stop()
        await producer.stop()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 3 or not args[1].isdigit():
        print("usage: python -m loadtests.bare_broadcast BOOTSTRAP PORT TOPIC", file=sys.stderr)
        return 2
    uvloop.run(_serve(args[0], int(args[1]), args[2]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
