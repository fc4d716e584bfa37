"""The set of proxies, by name: the in-process API behind the HTTP one.

Mirrors ``proxy_collection.go``: names are unique; ``populate`` keeps a proxy
whose listen/upstream are unchanged and replaces (stops, recreates without
toxics) one whose addresses differ; ``reset`` enables every proxy and removes
every toxic. Mutations are serialised by one lock, as the real server's mutex.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence

from chaos.errors import ApiError, proxy_exists, proxy_not_found
from chaos.proxy import Proxy, ProxyConfig
from chaos.settings import Limits

__all__ = ["PopulateError", "ProxyCollection"]


class PopulateError(Exception):
    """``populate`` failed part-way: ``error`` is why, ``done`` the proxies handled before."""

    def __init__(self, error: ApiError, done: list[Proxy]) -> None:
        super().__init__(error.message)
        self.error = error
        self.done = done


class ProxyCollection:
    """All proxies of one server. Every method may raise :class:`chaos.errors.ApiError`."""

    def __init__(self, *, limits: Limits | None = None, rng: random.Random | None = None) -> None:
        self._limits = limits or Limits()
        # Toxicity rolls, jitter and slice sizes: not security-relevant; seedable for replay.
        self._rng = rng or random.Random()  # noqa: S311
        self._proxies: dict[str, Proxy] = {}
        self._lock = asyncio.Lock()

    def proxies(self) -> dict[str, Proxy]:
        return dict(self._proxies)

    def get(self, name: str) -> Proxy:
        try:
            return self._proxies[name]
        except KeyError:
            raise proxy_not_found() from None

    async def create(self, config: ProxyConfig) -> Proxy:
        """Add a proxy (409 if the name exists) and start it if ``config.enabled``."""
        async with self._lock:
            if config.name in self._proxies:
                raise proxy_exists()
            proxy = self._new(config)
            if config.enabled:
                await proxy.start()
            self._proxies[config.name] = proxy
            return proxy

    async def populate(self, configs: Sequence[ProxyConfig]) -> list[Proxy]:
        """Create or replace each proxy in order; PopulateError if one fails."""
        async with self._lock:
            done: list[Proxy] = []
            for config in configs:
                try:
                    done.append(await self._add_or_replace(config))
                except ApiError as exc:
                    raise PopulateError(exc, done) from exc
            return done

    async def update(
        self,
        name: str,
        *,
        listen: str | None = None,
        upstream: str | None = None,
        enabled: bool | None = None,
    ) -> Proxy:
        """Change fields of a proxy; omitted ones keep their value."""
        async with self._lock:
            proxy = self.get(name)
            await proxy.update(
                listen=proxy.listen if listen is None else listen,
                upstream=proxy.upstream if upstream is None else upstream,
                enabled=proxy.enabled if enabled is None else enabled,
            )
            return proxy

    async def remove(self, name: str) -> None:
        async with self._lock:
            proxy = self.get(name)
            await proxy.stop()
            del self._proxies[name]

    async def reset(self) -> None:
        """Enable every proxy and remove all toxics."""
        async with self._lock:
            for proxy in list(self._proxies.values()):
                await proxy.start()
                proxy.reset_toxics()

    async def close(self) -> None:
        """Stop and forget every proxy (server shutdown)."""
        async with self._lock:
            proxies = list(self._proxies.values())
            self._proxies.clear()
            await asyncio.gather(*(proxy.stop() for proxy in proxies))

    def _new(self, config: ProxyConfig) -> Proxy:
        return Proxy(config, limits=self._limits, rng=self._rng)

    async def _add_or_replace(self, config: ProxyConfig) -> Proxy:
        existing = self._proxies.get(config.name)
        if existing is not None:
            if not await existing.differs(config.listen, config.upstream):
                return existing
            await existing.stop()
        proxy = self._new(config)
        if config.enabled:
            await proxy.start()
        self._proxies[config.name] = proxy
        return proxy
