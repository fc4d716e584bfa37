"""A proxy: a named TCP listener, its upstream, its toxics and its live links.

Semantics follow the real Toxiproxy (``proxy.go``): a proxy listens only while
enabled; disabling closes the listener *and* every live connection; toxics
belong to the proxy and survive disable/enable; changing ``listen`` or
``upstream`` restarts it (re-binds, drops connections). After binding,
``listen`` holds the resolved address, so port 0 becomes the real port and a
later enable re-binds that same port. Toxic changes apply to live links too.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import random
import socket
from dataclasses import dataclass
from typing import Any

import structlog

from chaos.errors import (
    ProxyStartError,
    bad_body,
    toxic_exists,
    toxic_not_found,
)
from chaos.link import Link
from chaos.settings import Limits
from chaos.toxics import Stream, ToxicSpec, update_toxic

__all__ = ["DEFAULT_LISTEN", "Proxy", "ProxyConfig", "parse_address"]

_log = structlog.get_logger(__name__)

DEFAULT_LISTEN = "127.0.0.1:0"
"""Used when ``listen`` is empty (the real server would listen on all interfaces)."""


def parse_address(text: str, field: str) -> tuple[str, int]:
    """``host:port`` (IPv6 in brackets) → ``(host, port)``; BadRequestError names the field."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit() or int(port_text) > 65535:
        raise bad_body(f"{field} must be host:port, got {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if ":" in host and not _is_ip(host):
        raise bad_body(f"{field} must be host:port, got {text!r}")
    return host, int(port_text)


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


async def resolve_address(text: str) -> str:
    """The address a listener on ``text`` would report (hostnames resolved)."""
    host, port = parse_address(text or DEFAULT_LISTEN, "listen")
    host = host or "0.0.0.0"  # noqa: S104 - an explicit ":port" means every interface
    if not _is_ip(host):
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )
        except OSError as exc:
            raise ProxyStartError(f"listen tcp {text}: {exc}") from exc
        if not infos:
            raise ProxyStartError(f"listen tcp {text}: no such host")
        host = str(infos[0][4][0])
    return format_address(str(ipaddress.ip_address(host)), port)


@dataclass(frozen=True, slots=True)
class ProxyConfig:
    """What a client asks for: ``POST /proxies`` and one entry of ``POST /populate``."""

    name: str
    upstream: str
    listen: str = DEFAULT_LISTEN
    enabled: bool = True

    def __post_init__(self) -> None:
        parse_address(self.upstream, "upstream")
        parse_address(self.listen, "listen")


class Proxy:
    """One proxy: its listener, toxics and links (the collection adds and removes proxies)."""

    def __init__(self, config: ProxyConfig, *, limits: Limits, rng: random.Random) -> None:
        self.name = config.name
        self.listen = config.listen
        self.upstream = config.upstream
        self._limits = limits
        self._rng = rng
        self._toxics: list[ToxicSpec] = []
        self._server: asyncio.Server | None = None
        self._generation = 0
        self._links: set[Link] = set()

    @property
    def enabled(self) -> bool:
        return self._server is not None

    @property
    def toxics(self) -> list[ToxicSpec]:
        """Upstream chain then downstream chain, each in the order toxics were added."""
        return sorted(self._toxics, key=lambda spec: spec.stream is not Stream.UPSTREAM)

    @property
    def connections(self) -> int:
        return len(self._links)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "listen": self.listen,
            "upstream": self.upstream,
            "enabled": self.enabled,
            "toxics": [spec.to_json() for spec in self.toxics],
        }

    async def differs(self, listen: str, upstream: str) -> bool:
        """Whether ``listen``/``upstream`` name another address than the current ones."""
        return upstream != self.upstream or await resolve_address(listen) != self.listen

    # -- lifecycle -----------------------------------------------------------

    async def start(self) -> None:
        """Bind and accept; a no-op if already listening. ProxyStartError if it can't bind."""
        if self._server is not None:
            return
        try:
            address = await resolve_address(self.listen)
            host, port = parse_address(address, "listen")
            self._generation += 1
            server = await asyncio.start_server(
                functools.partial(self._accept, self._generation),
                host,
                port,
                limit=self._limits.chunk_size,
                reuse_address=True,
            )
        except OSError as exc:
            raise ProxyStartError(f"listen tcp {self.listen}: {exc.strerror or exc}") from exc
        self._server = server
        bound = server.sockets[0].getsockname()
        self.listen = format_address(str(bound[0]), int(bound[1]))
        _log.info("proxy.started", proxy=self.name, listen=self.listen, upstream=self.upstream)

    async def stop(self) -> None:
        """Close the listener and every live link, waiting (bounded) until they are gone."""
        server, self._server = self._server, None
        if server is None:
            return
        self._generation += 1
        server.close()
        links = list(self._links)
        for link in links:
            link.terminate()
        tasks = [link.task for link in links if link.task is not None]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=self._limits.close_timeout)
            if pending:
                _log.warning("proxy.links_still_closing", proxy=self.name, links=len(pending))
        await server.wait_closed()
        _log.info("proxy.stopped", proxy=self.name, closed_links=len(links))

    async def update(self, *, listen: str, upstream: str, enabled: bool) -> None:
        """Apply a ``POST /proxies/{proxy}``: re-bind if an address changed, then (dis)able."""
        parse_address(upstream, "upstream")
        parse_address(listen or DEFAULT_LISTEN, "listen")
        if await self.differs(listen, upstream):
            await self.stop()
            self.listen = listen or DEFAULT_LISTEN
            self.upstream = upstream
        if enabled:
            await self.start()
        else:
            await self.stop()

    async def _accept(
        self, generation: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        if generation != self._generation or self._server is None:
            writer.transport.abort()  # accepted just before the listener closed
            return
        link = Link(
            proxy=self.name,
            upstream=parse_address(self.upstream, "upstream"),
            client=(reader, writer),
            toxics=lambda: self._toxics,
            limits=self._limits,
            rng=self._rng,
        )
        self._links.add(link)
        try:
            await link.run()
        except Exception:  # noqa: BLE001 - a link's supervisor: log the bug, keep serving
            _log.exception("link.failed", proxy=self.name)
        finally:
            self._links.discard(link)

    # -- toxics ----------------------------------------------------------------

    def get_toxic(self, name: str) -> ToxicSpec:
        for spec in self._toxics:
            if spec.name == name:
                return spec
        raise toxic_not_found()

    def add_toxic(self, spec: ToxicSpec) -> ToxicSpec:
        if any(existing.name == spec.name for existing in self._toxics):
            raise toxic_exists()
        self._toxics.append(spec)
        self._sync()
        return spec

    def update_toxic(self, name: str, body: object) -> ToxicSpec:
        """Merge an update body (attributes, toxicity) into the named toxic."""
        old = self.get_toxic(name)
        new = update_toxic(old, body)
        self._toxics[self._toxics.index(old)] = new
        self._sync()
        return new

    def remove_toxic(self, name: str) -> None:
        self._toxics.remove(self.get_toxic(name))
        self._sync()

    def reset_toxics(self) -> None:
        self._toxics.clear()
        self._sync()

    def _sync(self) -> None:
        for link in list(self._links):
            link.sync_toxics()
