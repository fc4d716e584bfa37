"""The benchmarks' lean HTTP/1.1 client against a real aiohttp server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from loadtests.http1 import Http1Client, HttpError


async def _echo(request: web.Request) -> web.Response:
    body = await request.read()
    return web.json_response(
        {"method": request.method, "body": body.decode(), "auth": request.headers.get("X-A")},
        status=201 if request.method == "POST" else 200,
        headers={"X-Memsync-Session": "s1"},
    )


async def _chunked(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse()
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    await resp.write(b"part")
    await resp.write_eof()
    return resp


async def _closing(_request: web.Request) -> web.Response:
    return web.Response(text="bye", headers={"Connection": "close"})


@pytest.fixture
async def server() -> AsyncIterator[tuple[str, int]]:
    app = web.Application()
    app.router.add_route("*", "/echo", _echo)
    app.router.add_get("/chunked", _chunked)
    app.router.add_get("/closing", _closing)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield "127.0.0.1", port
    finally:
        await runner.cleanup()


async def test_requests_reuse_connections_and_read_status_headers_and_body(
    server: tuple[str, int],
) -> None:
    async with Http1Client(*server, limit=4) as client:
        head = client.head({"X-A": "token", "Content-Type": "application/json"})
        replies = await asyncio.gather(
            *(client.request("POST", "/echo", b'{"n":%d}' % i, head) for i in range(40))
        )
        assert {r.status for r in replies} == {201}
        assert sorted(r.body for r in replies)[0].startswith(b'{"method": "POST"')
        assert all(r.headers["x-memsync-session"] == "s1" for r in replies)
        assert client._open <= 4
        got = await client.request("GET", "/echo", b"", head)
        assert got.status == 200 and b'"auth": "token"' in got.body


async def test_chunked_responses_are_refused_and_closing_servers_reconnect(
    server: tuple[str, int],
) -> None:
    async with Http1Client(*server, limit=1) as client:
        with pytest.raises(HttpError, match="chunked"):
            await client.request("GET", "/chunked")
        for _ in range(3):  # each answer closes its connection; the next one opens anew
            reply = await client.request("GET", "/closing")
            assert (reply.status, reply.body) == (200, b"bye")
        assert (await client.request("GET", "/echo")).status == 200


async def test_an_unreachable_server_fails_as_an_os_error() -> None:
    client = Http1Client.for_url("http://127.0.0.1:1", limit=1)
    with pytest.raises(OSError):
        await client.request("GET", "/")
    with pytest.raises(ValueError, match="http://"):
        Http1Client.for_url("https://example.invalid")
