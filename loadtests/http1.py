"""A lean HTTP/1.1 client for the benchmarks' hot paths.

The benchmarks share two cores with what they measure. aiohttp's client
costs the load generator ~200 µs of CPU per request here (request and
response objects, header multidicts, a timer per request, a task switch
per step); this client sends pre-built bytes on keep-alive connections and
parses only the status line, the headers and a ``Content-Length`` body.
``gateway_bench`` prints the load generator's own CPU per request beside
each phase.

It is for the benchmarks only: one request in flight per connection, no
redirects, no TLS, no chunked responses (refused with a clear error, never
misread), no proxies. Anything unexpected fails the request with
:class:`HttpError` and drops its connection.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["Http1Client", "HttpError", "Reply"]

_MAX_HEAD = 64 * 1024
_MAX_BODY = 64 * 1024 * 1024


class HttpError(ConnectionError):
    """A request failed: connection lost, a malformed or unsupported response."""


@dataclass(frozen=True, slots=True)
class Reply:
    """One response: status, headers (lower-cased names) and body."""

    status: int
    headers: dict[str, str]
    body: bytes


class _Connection(asyncio.Protocol):
    """One keep-alive connection; one request at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[Reply] | None = None
        self.buf = bytearray()
        self.reusable = True
        self._head: tuple[int, dict[str, str], int] | None = None  # status, headers, body starts

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no asyncio.Transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.reusable = False
        self._fail(HttpError(f"connection lost: {exc or 'closed by the server'}"))

    def send(self, data: bytes) -> asyncio.Future[Reply]:
        if self.transport is None or self.transport.is_closing():
            raise HttpError("connection closed")
        self.waiter = asyncio.get_running_loop().create_future()
        self.buf.clear()
        self._head = None
        self.transport.write(data)
        return self.waiter

    def data_received(self, data: bytes) -> None:
        self.buf += data
        try:
            reply = self._parse()
        except HttpError as exc:
            self._fail(exc)
            self.close()
            return
        if reply is not None and self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(reply)

    def _parse(self) -> Reply | None:
        buf = self.buf
        if self._head is None:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > _MAX_HEAD:
                    raise HttpError("response head larger than 64 KiB")
                return None
            lines = bytes(buf[:end]).decode("latin-1").split("\r\n")
            parts = lines[0].split(" ", 2)
            if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
                raise HttpError(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
            headers: dict[str, str] = {}
            for line in lines[1:]:
                name, sep, value = line.partition(":")
                if not sep:
                    raise HttpError(f"malformed header line: {line[:80]!r}")
                headers[name.strip().lower()] = value.strip()
            if "chunked" in headers.get("transfer-encoding", "").lower():
                raise HttpError("chunked responses are not supported by this client")
            length = headers.get("content-length", "0")
            if not length.isdigit() or int(length) > _MAX_BODY:
                raise HttpError(f"unusable Content-Length: {length[:40]!r}")
            if headers.get("connection", "").lower() == "close":
                self.reusable = False
            self._head = (int(parts[1]), headers, end + 4)
        status, headers, start = self._head
        size = int(headers.get("content-length", "0"))
        if len(buf) < start + size:
            return None
        if len(buf) > start + size:
            raise HttpError("more bytes than the response declared")
        return Reply(status, headers, bytes(buf[start:]))

    def _fail(self, exc: HttpError) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc)

    def close(self) -> None:
        self.reusable = False
        if self.transport is not None:
            self.transport.close()


class Http1Client:
    """At most ``limit`` keep-alive connections to ``host:port``.

    Use as an async context manager, or call :meth:`close`.
    """

    def __init__(self, host: str, port: int, *, limit: int = 64, timeout: float = 30.0) -> None:
        self.host = host
        self.port = port
        self.limit = limit
        self.timeout = timeout
        self._host_line = f"Host: {host}:{port}\r\n".encode()
        self._idle: list[_Connection] = []
        self._open = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._closed = False

    @classmethod
    def for_url(cls, url: str, *, limit: int = 64, timeout: float = 30.0) -> Http1Client:
        """A client for ``http://host:port`` (the benchmarks' gateway URLs)."""
        if not url.startswith("http://"):
            raise ValueError(f"only http:// URLs are supported, not {url!r}")
        host, _, port = url[len("http://") :].rstrip("/").partition(":")
        return cls(host, int(port or 80), limit=limit, timeout=timeout)

    def head(self, headers: Mapping[str, str]) -> bytes:
        """Pre-encoded header lines, to pass as ``head`` to :meth:`request`."""
        return "".join(f"{k}: {v}\r\n" for k, v in headers.items()).encode("latin-1")

    async def request(self, method: str, path: str, body: bytes = b"", head: bytes = b"") -> Reply:
        """Send one request; its reply. ``head``: header lines from :meth:`head`."""
        data = b"".join(
            (
                f"{method} {path} HTTP/1.1\r\n".encode(),
                self._host_line,
                b"Content-Length: %d\r\n" % len(body) if body or method != "GET" else b"",
                head,
                b"\r\n",
                body,
            )
        )
        conn = await self._acquire()
        try:
            async with asyncio.timeout(self.timeout):
                reply = await conn.send(data)
        except BaseException:
            conn.close()
            raise
        finally:
            self._release(conn)
        return reply

    async def _acquire(self) -> _Connection:
        while True:
            if self._closed:
                raise HttpError("client closed")
            while self._idle:
                conn = self._idle.pop()
                if conn.reusable and conn.transport is not None and not conn.transport.is_closing():
                    return conn
                self._open -= 1
            if self._open < self.limit:
                self._open += 1
                try:
                    loop = asyncio.get_running_loop()
                    _, conn = await loop.create_connection(_Connection, self.host, self.port)
                except BaseException:
                    self._open -= 1
                    self._wake()
                    raise
                return conn
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)

    def _release(self, conn: _Connection) -> None:
        if conn.reusable and not self._closed:
            self._idle.append(conn)
        else:
            conn.close()
            self._open -= 1
        self._wake()

    def _wake(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def close(self) -> None:
        """Close every idle connection; busy ones close when their request ends."""
        self._closed = True
        for conn in self._idle:
            conn.close()
        self._idle.clear()
        self._wake()

    async def __aenter__(self) -> Http1Client:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()
