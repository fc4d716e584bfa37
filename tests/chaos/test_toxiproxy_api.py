"""The fault proxy speaks the Toxiproxy API: the real client drives it, toxics do what they say.

Timing assertions are lower bounds only (the machine may be busy); every wait
for a state change polls with a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from toxiproxy import Toxiproxy
from toxiproxy.exceptions import InvalidToxic, NotFound, ProxyExists
from toxiproxy.proxy import Proxy as ClientProxy

from chaos.__main__ import main
from chaos.proxy import ProxyConfig
from chaos.toxiproxy_api import VERSION, ToxiproxyServer
from tests.chaos.conftest import EchoServer

DEADLINE = 5.0
SLACK = 0.02  # timer granularity allowance on lower bounds

Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


@contextlib.asynccontextmanager
async def connection(listen: str) -> AsyncIterator[Conn]:
    """A client connection to ``listen`` (``host:port``), aborted on exit."""
    host, port = listen.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        yield reader, writer
    finally:
        writer.transport.abort()


async def round_trip(conn: Conn, data: bytes) -> float:
    """Send ``data`` through the echo upstream and read it back; returns the seconds taken."""
    reader, writer = conn
    started = time.monotonic()
    writer.write(data)
    await writer.drain()
    echoed = await asyncio.wait_for(reader.readexactly(len(data)), DEADLINE)
    assert echoed == data
    return time.monotonic() - started


async def read_to_end(reader: asyncio.StreamReader) -> bytes:
    """Everything until EOF (or a reset, after which nothing more can come)."""
    received = bytearray()
    with contextlib.suppress(ConnectionResetError):
        while chunk := await asyncio.wait_for(reader.read(65536), DEADLINE):
            received += chunk
    return bytes(received)


async def eventually(check: Callable[[], Awaitable[bool]], what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not await check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def refuses(listen: str) -> bool:
    host, port = listen.rsplit(":", 1)
    try:
        _, writer = await asyncio.open_connection(host, int(port))
    except ConnectionRefusedError:
        return True
    writer.transport.abort()
    return False


async def create(client: Toxiproxy, echo: EchoServer, name: str = "echo") -> ClientProxy:
    return await asyncio.to_thread(client.create, upstream=echo.address, name=name)


async def add_toxic(proxy: ClientProxy, **toxic: Any) -> None:
    await asyncio.to_thread(proxy.add_toxic, **toxic)


async def toxic_names(proxy: ClientProxy) -> set[str]:
    return set(await asyncio.to_thread(proxy.toxics))


# -- proxies through the real client ----------------------------------------------


async def test_client_creates_lists_updates_and_deletes_a_proxy(
    client: Toxiproxy, echo: EchoServer
) -> None:
    proxy = await create(client, echo)
    assert proxy.enabled is True
    assert proxy.upstream == echo.address
    assert proxy.listen.startswith("127.0.0.1:") and not proxy.listen.endswith(":0")

    listed = await asyncio.to_thread(client.proxies)
    assert set(listed) == {"echo"}
    assert listed["echo"].listen == proxy.listen
    with pytest.raises(ProxyExists):
        await create(client, echo)

    await asyncio.to_thread(proxy.disable)
    fetched = await asyncio.to_thread(client.get_proxy, "echo")
    assert fetched is not None and fetched.enabled is False
    await asyncio.to_thread(proxy.enable)
    fetched = await asyncio.to_thread(client.get_proxy, "echo")
    assert fetched is not None and fetched.enabled is True
    assert fetched.listen == proxy.listen  # re-enabled on the same port

    assert await asyncio.to_thread(client.destroy, proxy) is True
    assert await asyncio.to_thread(client.get_proxy, "echo") is None
    with pytest.raises(NotFound):
        await asyncio.to_thread(proxy.destroy)
    assert await refuses(proxy.listen)


async def test_version_names_the_toxiproxy_release(client: Toxiproxy) -> None:
    assert await asyncio.to_thread(client.running) is True
    body = await asyncio.to_thread(client.version)
    assert body is not None and VERSION.encode() in body


async def test_data_flows_both_ways_including_half_close(
    client: Toxiproxy, echo: EchoServer
) -> None:
    proxy = await create(client, echo)
    payload = os.urandom(200_000)
    async with connection(proxy.listen) as (reader, writer):
        await round_trip((reader, writer), b"hello")
        writer.write(payload)
        writer.write_eof()
        assert await read_to_end(reader) == payload


# -- toxics -------------------------------------------------------------------------


async def test_latency_delays_every_round_trip(client: Toxiproxy, echo: EchoServer) -> None:
    proxy = await create(client, echo)
    await add_toxic(proxy, type="latency", attributes={"latency": 150})
    await add_toxic(proxy, type="latency", stream="upstream", attributes={"latency": 100})
    assert await toxic_names(proxy) == {"latency_downstream", "latency_upstream"}
    async with connection(proxy.listen) as conn:
        for _ in range(2):
            assert await round_trip(conn, b"ping") >= 0.25 - SLACK


async def test_toxics_apply_to_live_connections(client: Toxiproxy, echo: EchoServer) -> None:
    proxy = await create(client, echo)
    async with connection(proxy.listen) as conn:
        await round_trip(conn, b"before")
        await add_toxic(proxy, type="latency", attributes={"latency": 200})
        assert await round_trip(conn, b"during") >= 0.2 - SLACK
        await asyncio.to_thread(proxy.destroy_toxic, "latency_downstream")
        await round_trip(conn, b"after")


async def test_bandwidth_slows_a_transfer(client: Toxiproxy, echo: EchoServer) -> None:
    proxy = await create(client, echo)
    await add_toxic(proxy, type="bandwidth", attributes={"rate": 50})  # 50 KB/s
    async with connection(proxy.listen) as conn:
        assert await round_trip(conn, os.urandom(30_000)) >= 0.6 - SLACK


async def test_timeout_drops_data_then_closes(client: Toxiproxy, echo: EchoServer) -> None:
    proxy = await create(client, echo)
    await add_toxic(proxy, type="timeout", attributes={"timeout": 300})
    started = time.monotonic()
    async with connection(proxy.listen) as (reader, writer):
        writer.write(b"never echoed")
        assert await read_to_end(reader) == b""
    assert time.monotonic() - started >= 0.3 - SLACK


async def test_timeout_zero_holds_until_removed(client: Toxiproxy, echo: EchoServer) -> None:
    proxy = await create(client, echo)
    await add_toxic(proxy, type="timeout", attributes={"timeout": 0})
    async with connection(proxy.listen) as (reader, writer):
        writer.write(b"dropped")
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(reader.read(1), 0.3)  # held: nothing, no close
        # Removing it closes the held connection, as the real toxic's cleanup does.
        await asyncio.to_thread(proxy.destroy_toxic, "timeout_downstream")
        assert await read_to_end(reader) == b""


async def test_reset_peer_resets_the_connection(client: Toxiproxy, echo: EchoServer) -> None:
    proxy = await create(client, echo)
    await add_toxic(proxy, type="reset_peer", attributes={"timeout": 100})
    async with connection(proxy.listen) as (reader, writer):
        started = time.monotonic()
        writer.write(b"ping")
        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(reader.read(1024), DEADLINE)
        assert time.monotonic() - started >= 0.1 - SLACK


async def test_limit_data_closes_after_n_bytes(client: Toxiproxy, echo: EchoServer) -> None:
    proxy = await create(client, echo)
    await add_toxic(proxy, type="limit_data", attributes={"bytes": 1000})
    payload = os.urandom(5000)
    async with connection(proxy.listen) as (reader, writer):
        writer.write(payload)
        assert await read_to_end(reader) == payload[:1000]


async def test_slicer_delivers_every_byte_in_order(client: Toxiproxy, echo: EchoServer) -> None:
    proxy = await create(client, echo)
    await add_toxic(
        proxy,
        type="slicer",
        attributes={"average_size": 64, "size_variation": 32, "delay": 50},
    )
    async with connection(proxy.listen) as conn:
        await round_trip(conn, os.urandom(20_000))


async def test_slow_close_holds_the_close(client: Toxiproxy, echo: EchoServer) -> None:
    proxy = await create(client, echo)
    await add_toxic(proxy, type="slow_close", attributes={"delay": 300})
    async with connection(proxy.listen) as (reader, writer):
        started = time.monotonic()
        writer.write(b"bye")
        writer.write_eof()
        assert await read_to_end(reader) == b"bye"
        assert time.monotonic() - started >= 0.3 - SLACK


async def test_toxicity_zero_never_applies(client: Toxiproxy, echo: EchoServer) -> None:
    proxy = await create(client, echo)
    await add_toxic(proxy, type="limit_data", toxicity=0.0, attributes={"bytes": 1})
    async with connection(proxy.listen) as conn:
        await round_trip(conn, b"all of it")


# -- disable, enable, reset, populate, update ------------------------------------------


async def test_disable_drops_connections_refuses_new_and_keeps_toxics(
    client: Toxiproxy, echo: EchoServer
) -> None:
    proxy = await create(client, echo)
    await add_toxic(proxy, type="latency", attributes={"latency": 100})
    async with connection(proxy.listen) as (reader, writer):
        await round_trip((reader, writer), b"up")
        await asyncio.to_thread(proxy.disable)
        assert await read_to_end(reader) == b""
    assert await refuses(proxy.listen)
    assert await toxic_names(proxy) == {"latency_downstream"}

    await asyncio.to_thread(proxy.enable)
    async with connection(proxy.listen) as conn:
        assert await round_trip(conn, b"back") >= 0.1 - SLACK  # the toxic survived


async def test_reset_enables_every_proxy_and_removes_every_toxic(
    client: Toxiproxy, echo: EchoServer
) -> None:
    first = await create(client, echo, "first")
    second = await create(client, echo, "second")
    await add_toxic(first, type="timeout", attributes={"timeout": 0})
    await add_toxic(second, type="latency", stream="upstream", attributes={"latency": 10})
    await asyncio.to_thread(second.disable)

    assert await asyncio.to_thread(client.reset) is True

    for proxy in await asyncio.to_thread(lambda: list(client.proxies().values())):
        assert proxy.enabled is True
        assert await toxic_names(proxy) == set()
        async with connection(proxy.listen) as conn:
            await round_trip(conn, b"healed")


async def test_populate_creates_keeps_unchanged_and_replaces_changed(
    http: aiohttp.ClientSession, echo: EchoServer
) -> None:
    entries = [
        {"name": "a", "listen": "127.0.0.1:0", "upstream": echo.address},
        {"name": "b", "listen": "127.0.0.1:0", "upstream": echo.address},
    ]
    async with http.post("/populate", json=entries) as response:
        assert response.status == 201
        created = {proxy["name"]: proxy for proxy in (await response.json())["proxies"]}
    assert set(created) == {"a", "b"}
    assert all(proxy["enabled"] and proxy["toxics"] == [] for proxy in created.values())
    async with http.post("/proxies/a/toxics", json={"type": "latency"}) as response:
        assert response.status == 200

    again = [
        {"name": "a", "listen": created["a"]["listen"], "upstream": echo.address},
        {"name": "b", "listen": created["b"]["listen"], "upstream": "127.0.0.1:9"},
    ]
    async with http.post("/populate", json=again) as response:
        assert response.status == 201
        result = {proxy["name"]: proxy for proxy in (await response.json())["proxies"]}
    assert [toxic["name"] for toxic in result["a"]["toxics"]] == ["latency_downstream"]
    assert result["b"]["upstream"] == "127.0.0.1:9"

    async with http.post("/populate", json=[{"name": "c"}]) as response:
        assert response.status == 400
        assert (await response.json())["error"] == "missing required field: upstream at proxy 1"


async def test_update_rebinds_listen_and_drops_connections(
    http: aiohttp.ClientSession, echo: EchoServer
) -> None:
    body = {"name": "moving", "upstream": echo.address}
    async with http.post("/proxies", json=body) as response:
        old = (await response.json())["listen"]
    async with connection(old) as (reader, _):
        async with http.post("/proxies/moving", json={"listen": "127.0.0.1:0"}) as response:
            assert response.status == 200
            moved = await response.json()
        assert await read_to_end(reader) == b""
    assert moved["enabled"] is True and moved["listen"] != old
    await eventually(lambda: refuses(old), "the old listener to close")
    async with connection(moved["listen"]) as conn:
        await round_trip(conn, b"moved")


async def test_stop_closes_listeners_connections_and_the_api(echo: EchoServer) -> None:
    server = ToxiproxyServer()
    await server.start()
    proxy = await server.collection.create(ProxyConfig(name="solo", upstream=echo.address))
    async with connection(proxy.listen) as (reader, writer):
        await round_trip((reader, writer), b"alive")
        await server.stop()
        assert await read_to_end(reader) == b""
    assert await refuses(proxy.listen)
    assert await refuses(f"127.0.0.1:{server.port}")


# -- the HTTP surface: shapes and status codes ---------------------------------------------


async def expect(
    http: aiohttp.ClientSession,
    method: str,
    path: str,
    status: int,
    **kwargs: Any,
) -> Any:
    async with http.request(method, path, **kwargs) as response:
        assert response.status == status, await response.text()
        return None if status == 204 else await response.json(content_type=None)


async def test_errors_use_toxiproxy_status_codes_and_shape(
    http: aiohttp.ClientSession, echo: EchoServer
) -> None:
    missing = await expect(http, "GET", "/proxies/nope", 404)
    assert missing == {"error": "proxy not found", "status": 404}
    await expect(http, "DELETE", "/proxies/nope", 404)
    await expect(http, "POST", "/proxies/nope", 404, json={"enabled": False})
    await expect(http, "GET", "/proxies/nope/toxics", 404)

    body = {"name": "p", "upstream": echo.address}
    await expect(http, "POST", "/proxies", 201, json=body)
    exists = await expect(http, "POST", "/proxies", 409, json=body)
    assert exists == {"error": "proxy already exists", "status": 409}
    no_upstream = await expect(http, "POST", "/proxies", 400, json={"name": "q"})
    assert no_upstream["error"] == "missing required field: upstream"
    not_json = await expect(http, "POST", "/proxies", 400, data=b"{nope")
    assert not_json["error"].startswith("bad request body")
    await expect(http, "POST", "/proxies", 400, json={**body, "name": "r", "listen": "nowhere"})
    await expect(http, "POST", "/proxies", 400, json={**body, "name": "r", "enabled": "yes"})

    toxics = "/proxies/p/toxics"
    await expect(http, "GET", f"{toxics}/nope", 404)
    await expect(http, "POST", f"{toxics}/nope", 404, json={"toxicity": 0.5})
    await expect(http, "DELETE", f"{toxics}/nope", 404)
    bad_type = await expect(http, "POST", toxics, 400, json={"type": "gremlins"})
    assert bad_type == {"error": "invalid toxic type", "status": 400}
    bad_stream = await expect(http, "POST", toxics, 400, json={"type": "latency", "stream": "up"})
    assert bad_stream["error"].startswith("stream was invalid")
    for attributes in ({"latency": "slow"}, {"latency": -1}, {"latncy": 5}):
        await expect(http, "POST", toxics, 400, json={"type": "latency", "attributes": attributes})
    await expect(http, "POST", toxics, 400, json={"type": "latency", "toxicity": 2})
    await expect(http, "POST", toxics, 200, json={"type": "latency"})
    duplicate = await expect(http, "POST", toxics, 409, json={"type": "latency"})
    assert duplicate == {"error": "toxic already exists", "status": 409}

    browser = {"User-Agent": "Mozilla/5.0"}
    async with http.get("/proxies", headers=browser) as response:
        assert response.status == 403


async def test_client_raises_its_exceptions_on_our_status_codes(
    client: Toxiproxy, echo: EchoServer
) -> None:
    proxy = await create(client, echo)
    with pytest.raises(InvalidToxic):
        await add_toxic(proxy, type="gremlins")
    with pytest.raises(NotFound):
        await asyncio.to_thread(proxy.destroy_toxic, "nope")


async def test_toxic_json_defaults_and_update_merges_attributes(
    http: aiohttp.ClientSession, echo: EchoServer
) -> None:
    await expect(http, "POST", "/proxies", 201, json={"name": "p", "upstream": echo.address})
    toxic = await expect(
        http,
        "POST",
        "/proxies/p/toxics",
        200,
        json={"type": "latency", "attributes": {"latency": 9}},
    )
    assert toxic == {
        "name": "latency_downstream",
        "type": "latency",
        "stream": "downstream",
        "toxicity": 1.0,
        "attributes": {"latency": 9, "jitter": 0},
    }
    path = "/proxies/p/toxics/latency_downstream"
    update = {"attributes": {"jitter": 3}, "toxicity": 0.5, "type": "ignored"}
    updated = await expect(http, "POST", path, 200, json=update)
    assert updated["attributes"] == {"latency": 9, "jitter": 3}
    assert updated["toxicity"] == 0.5 and updated["type"] == "latency"
    assert await expect(http, "GET", path, 200) == updated
    shown = await expect(http, "GET", "/proxies/p", 200)
    assert shown["toxics"] == [updated]
    assert await expect(http, "GET", "/proxies", 200) == {"p": shown}
    await expect(http, "DELETE", path, 204)
    assert await expect(http, "GET", "/proxies/p/toxics", 200) == []
    await expect(http, "POST", "/reset", 204)
    await expect(http, "DELETE", "/proxies/p", 204)
    assert await expect(http, "GET", "/version", 200) == {"version": VERSION}


# -- the command line ------------------------------------------------------------------------


def test_help_explains_the_api_and_the_toxics(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    assert exited.value.code == 0
    text = capsys.readouterr().out
    for needle in ("--port", "--config", "--seed", "/populate", "reset_peer", "limit_data"):
        assert needle in text


async def test_python_m_chaos_serves_until_sigterm() -> None:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "chaos",
        "--port",
        str(port),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with aiohttp.ClientSession() as session:

            async def answers() -> bool:
                try:
                    async with session.get(f"http://127.0.0.1:{port}/version") as response:
                        return response.status == 200
                except aiohttp.ClientConnectionError:
                    assert process.returncode is None, "python -m chaos exited early"
                    return False

            await eventually(answers, "python -m chaos to answer")
        process.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(process.communicate(), DEADLINE)
        assert process.returncode == 0, stderr.decode()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
