"""The benchmarks' reference servers do what the figures they give say (real broker)."""

from __future__ import annotations

import asyncio
import json

import aiohttp

from deploy.tansu import TansuBroker
from loadtests.gateway_bench import ReferenceServer


async def _events(ws: aiohttp.ClientWebSocketResponse, want: int) -> list[str]:
    """Contents of the next ``want`` events (``event`` or ``batch`` frames)."""
    got: list[str] = []
    async with asyncio.timeout(15):
        while len(got) < want:
            msg = json.loads(await ws.receive_str())
            events = [msg] if msg["op"] == "event" else msg["events"]
            assert msg["op"] in ("event", "batch"), msg
            got.extend(e["memory"]["content"] for e in events)
    return got


async def test_the_bare_pipeline_delivers_each_write_through_the_log_and_broadcasts(
    broker: TansuBroker,
) -> None:
    async with (
        ReferenceServer("loadtests.bare_broadcast", broker.bootstrap, "test.bcast") as server,
        aiohttp.ClientSession() as http,
    ):
        sockets = [await http.ws_connect(f"{server.url}/v1/subscribe") for _ in range(3)]
        for ws in sockets:
            await ws.send_json({"op": "subscribe", "channels": ["user:u1:memories"]})
            assert json.loads(await ws.receive_str()) == {"op": "subscribed"}
        for i in range(5):
            async with http.post(f"{server.url}/v1/memories", json={"content": f"w{i}"}) as r:
                assert r.status == 201  # answered once the broker acknowledged the append
        for ws in sockets:
            assert sorted(await _events(ws, 5)) == [f"w{i}" for i in range(5)]
        async with http.post(f"{server.url}/v1/broadcast", json={"content": "now"}) as r:
            assert r.status == 201
        for ws in sockets:
            assert await _events(ws, 1) == ["now"]
            await ws.close()
        async with http.get(f"{server.url}/readyz") as r:
            assert await r.json() == {}
    assert server.proc is None  # stopped on the way out


async def test_the_bare_handler_answers_after_the_append(broker: TansuBroker) -> None:
    async with (
        ReferenceServer("loadtests.bare_handler", broker.bootstrap, "test.bare") as server,
        aiohttp.ClientSession() as http,
        http.post(f"{server.url}/w", data=b'{"content": "x"}') as r,
    ):
        assert r.status == 201
