"""Fixtures for the fault proxy: an in-process server, the real client, an echo upstream."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest
from toxiproxy import Toxiproxy
from toxiproxy.api import APIConsumer

from chaos.toxiproxy_api import ToxiproxyServer


class EchoServer:
    """A TCP upstream that echoes everything and closes after the client's EOF."""

    def __init__(self) -> None:
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.address = ""

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._echo, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.address = f"127.0.0.1:{port}"

    async def _echo(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except OSError:
            pass  # the proxy reset or aborted us: that is what several tests do
        finally:
            self._writers.discard(writer)
            writer.transport.abort()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in list(self._writers):
                writer.transport.abort()
            await self._server.wait_closed()


@pytest.fixture
async def echo() -> AsyncIterator[EchoServer]:
    server = EchoServer()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def server() -> AsyncIterator[ToxiproxyServer]:
    async with ToxiproxyServer(seed=1234) as running:
        yield running


@pytest.fixture
def client(server: ToxiproxyServer) -> Iterator[Toxiproxy]:
    """The real ``toxiproxy-python`` client, pointed at our server.

    Its host and port are class attributes of ``APIConsumer`` (global), so they
    are restored afterwards. It is synchronous (requests): call it through
    ``asyncio.to_thread`` so the server on this loop can answer.
    """
    saved = (APIConsumer.host, APIConsumer.port)
    toxiproxy = Toxiproxy()
    toxiproxy.update_api_consumer(server.host, server.port)
    try:
        yield toxiproxy
    finally:
        APIConsumer.host, APIConsumer.port = saved


@pytest.fixture
async def http(server: ToxiproxyServer) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(base_url=server.url) as session:
        yield session
