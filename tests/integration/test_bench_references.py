"""The benchmarks' reference servers do what the figures they give say (real broker)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp

from deploy.tansu import TansuBroker
from loadtests.gateway_bench import ReferenceServer
from tests.integration.harness import eventually


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


def _children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


async def test_the_bare_pipeline_split_over_processes_reaches_every_socket_through_the_log(
    broker: TansuBroker,
) -> None:
    ref = ReferenceServer("loadtests.bare_broadcast", broker.bootstrap, "test.split", ["2"])
    async with ref as server, aiohttp.ClientSession() as http:
        assert server.pid is not None
        spawned = _children(server.pid)
        assert len(spawned) == 1  # one more process on the port
        sockets = [await http.ws_connect(f"{server.url}/v1/subscribe") for _ in range(8)]
        for ws in sockets:
            await ws.send_json({"op": "subscribe", "channels": ["user:u1:memories"]})
            assert json.loads(await ws.receive_str()) == {"op": "subscribed"}
        for i in range(6):  # new connections: the kernel spreads them over both
            async with (
                aiohttp.ClientSession() as one,
                one.post(f"{server.url}/v1/memories", json={"content": f"w{i}"}) as r,
            ):
                assert r.status == 201
        for ws in sockets:  # whichever process holds it, each socket gets every write
            assert sorted(await _events(ws, 6)) == [f"w{i}" for i in range(6)]
        async with http.post(f"{server.url}/v1/broadcast", json={"content": "now"}) as r:
            assert r.status == 409  # it would reach one process's sockets only
            assert "processes" in (await r.json())["error"]["message"]
        for ws in sockets:
            await ws.close()

    def running(pid: int) -> bool:  # a zombie (exited, not reaped yet) is not
        try:
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except OSError:
            return False

    async def gone() -> bool:
        return not any(running(pid) for pid in spawned)

    await eventually(gone, what="the spawned process to die with the first")


async def test_the_bare_handler_answers_after_the_append(broker: TansuBroker) -> None:
    async with (
        ReferenceServer("loadtests.bare_handler", broker.bootstrap, "test.bare") as server,
        aiohttp.ClientSession() as http,
        http.post(f"{server.url}/w", data=b'{"content": "x"}') as r,
    ):
        assert r.status == 201
