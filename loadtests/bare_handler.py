"""The reference the write targets were set against: a bare aiohttp handler.

    python -m loadtests.bare_handler BOOTSTRAP PORT TOPIC

One ``POST /w`` handler on uvloop that does one aiokafka ``send_and_wait``
(``acks="all"``, keyed by the body's first bytes) and answers 201: no auth,
no journal, no merge, no store. Prints ``ready`` once it listens on
127.0.0.1:PORT; runs until terminated. :mod:`loadtests.gateway_bench`
measures it beside the gateway on the same broker, so the gateway's figures
can be read against what this machine does with the least possible work.
"""

from __future__ import annotations

import asyncio
import sys

import uvloop
from aiohttp import web
from aiokafka import AIOKafkaProducer


async def _serve(bootstrap: str, port: int, topic: str) -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", enable_idempotence=False, linger_ms=0
    )
    await producer.start()

    async def write(request: web.Request) -> web.Response:
        body = await request.read()
        await producer.send_and_wait(topic, body, key=body[:16])
        return web.json_response({"ok": True}, status=201)

    app = web.Application(client_max_size=64 * 1024)
    app.router.add_post("/w", write)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    print("ready", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
        await producer.stop()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 3 or not args[1].isdigit():
        print("usage: python -m loadtests.bare_handler BOOTSTRAP PORT TOPIC", file=sys.stderr)
        return 2
    uvloop.run(_serve(args[0], int(args[1]), args[2]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
