"""The reference the subscription targets were set against: a bare aiohttp broadcast.

    python -m loadtests.bare_broadcast BOOTSTRAP PORT TOPIC [PROCESSES]

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

With PROCESSES > 1 (default 1) it is that many such processes on the one
port (``SO_REUSEPORT``: the kernel spreads connections over them), each with
its own producer, consumer and audience, as gateways that share nothing but
the log would be: a write on any of them reaches every subscriber through
the log. The first starts the others (they die with it) and ``/v1/broadcast``
is refused there, since it would reach one process's sockets only.

Prints ``ready`` once every process listens on 127.0.0.1:PORT; runs until
terminated.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import signal
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


def _die_with_parent() -> None:
    """In a spawned process, before exec: SIGTERM when the first process dies (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


async def _spawn(bootstrap: str, port: int, topic: str, n: int) -> asyncio.subprocess.Process:
    """Start one more process of the group on the port; wait for its ``ready``."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "loadtests.bare_broadcast", bootstrap, str(port), topic, str(n),
        "spawned", stdout=asyncio.subprocess.PIPE, preexec_fn=_die_with_parent,
    )  # fmt: skip
    assert proc.stdout is not None  # noqa: S101
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), 25)
    except BaseException:
        proc.kill()
        raise
    if line.strip() != b"ready":
        proc.kill()
        raise RuntimeError(f"a spawned process did not start: {line[:200]!r}")
    return proc


async def _serve(bootstrap: str, port: int, topic: str, processes: int, spawned: bool) -> None:
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
        if processes > 1:
            message = f"one of {processes} processes: a broadcast would reach its sockets only"
            body = {"error": {"code": "conflict", "message": message}}
            return web.json_response(body, status=409)
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
    await web.TCPSite(runner, "127.0.0.1", port, reuse_port=processes > 1).start()
    relaying = asyncio.create_task(relay())
    # Started together: the bench waits 30 s for the group's one ``ready``.
    others = [] if spawned else list(await asyncio.gather(
        *(_spawn(bootstrap, port, topic, processes) for _ in range(processes - 1))
    ))  # fmt: skip
    print("ready", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        relaying.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await relaying
        for proc in others:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            await proc.wait()
        await runner.cleanup()
        await consumer.stop()
        await producer.stop()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    spawned = args[4:] == ["spawned"]
    processes = args[3] if len(args) >= 4 else "1"
    if not (3 <= len(args) <= 4 or spawned) or not args[1].isdigit() or not processes.isdigit():
        print(
            "usage: python -m loadtests.bare_broadcast BOOTSTRAP PORT TOPIC [PROCESSES]",
            file=sys.stderr,
        )
        return 2
    if not 1 <= int(processes) <= 16:
        print(f"PROCESSES must be 1 to 16, not {processes}", file=sys.stderr)
        return 2
    uvloop.run(_serve(args[0], int(args[1]), args[2], int(processes), spawned))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
