"""Pull-based sync: ``GET /v1/sync`` pages, and warming a :class:`LocalCache` from them.

A page carries the changed memories' views and their full replicated states;
the states are what the cache joins (``replication.merge.join``), so a page
can never regress what a subscription already applied. Pages are pulled until
``has_more`` is false, each from the previous page's cursor.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import structlog

from gateway.client.cache import LocalCache
from gateway.client.transport import Transport
from gateway.client.wire import SyncPage, decode_sync

__all__ = ["fetch_page", "pull", "warm_cache"]

_log = structlog.get_logger(__name__)


async def fetch_page(
    transport: Transport,
    channels: Sequence[str],
    since: str | None = None,
    limit: int | None = None,
) -> SyncPage:
    """One page; without ``since`` a snapshot. Raises :class:`ResyncRequiredError` (410)."""
    params = {"channels": ",".join(channels)}
    if since is not None:
        params["since"] = since
    if limit is not None:
        params["limit"] = str(limit)
    resp = await transport.request("GET", "/v1/sync", params=params, retry="always")
    return decode_sync(resp.body)


async def pull(
    transport: Transport,
    channels: Sequence[str],
    since: str | None = None,
    limit: int | None = None,
) -> AsyncIterator[SyncPage]:
    """Every page from ``since`` (``None``: a full snapshot) until ``has_more`` is false."""
    cursor = since
    while True:
        page = await fetch_page(transport, channels, cursor, limit)
        yield page
        cursor = page.cursor
        if not page.has_more:
            return


async def warm_cache(pages: AsyncIterator[SyncPage], cache: LocalCache) -> tuple[str, int]:
    """Join every page's states into the cache; the last cursor and the states joined."""
    cursor = ""
    joined = 0
    async for page in pages:
        for state in page.states:
            cache.join(state)
        joined += len(page.states)
        cursor = page.cursor
    _log.info("memsync_cache_warmed", states=joined, cursor=cursor)
    return cursor, joined
