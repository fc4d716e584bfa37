"""Pull-based sync: ``GET /v1/sync`` pages, and warming a :class:`LocalCache` from them.

A page carries the changed memories' views and their full replicated states;
the states are what the cache joins (``replication.merge.join``), so a page
can never regress what a subscription already applied.

Two ways to page (see :class:`~gateway.client.wire.SyncPage`): a **snapshot**
(no ``since``) continues with each page's ``page_token`` and keeps the
cursor of its start — where a subscription resumes once every page is in; a
**replay** (``since``) continues from each page's ``cursor``. Either is pulled
until ``has_more`` is false.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import msgspec
import structlog

from gateway.client.cache import Holder, LocalCache
from gateway.client.errors import MemsyncClientError
from gateway.client.transport import Transport
from gateway.client.wire import SyncPage, decode_sync

__all__ = ["fetch_page", "pull", "warm_cache"]

_log = structlog.get_logger(__name__)


async def fetch_page(
    transport: Transport,
    channels: Sequence[str],
    since: str | None = None,
    limit: int | None = None,
    page_token: str | None = None,
) -> SyncPage:
    """One page: a replay after ``since``, a snapshot's next page, or (neither) its first.

    Raises :class:`ResyncRequiredError` (410) when ``since`` can no longer be
    served. ``since`` and ``page_token`` exclude each other: the gateway reads
    ``since`` first, so sending both would replay instead of continuing.
    """
    if since is not None and page_token is not None:
        raise ValueError("pass since (a replay) or page_token (a snapshot's next page), not both")
    params = {"channels": ",".join(channels)}
    if since is not None:
        params["since"] = since
    if page_token is not None:
        params["page_token"] = page_token
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
    """Every page from ``since`` (``None``: a full snapshot) until ``has_more`` is false.

    A snapshot's pages all carry its start cursor, so the last page's
    ``cursor`` is where to resume either way.
    """
    if since is None:
        async for page in _snapshot(transport, channels, limit):
            yield page
        return
    cursor = since
    while True:
        page = await fetch_page(transport, channels, cursor, limit)
        yield page
        cursor = page.cursor
        if not page.has_more:
            return


async def _snapshot(
    transport: Transport, channels: Sequence[str], limit: int | None
) -> AsyncIterator[SyncPage]:
    page = await fetch_page(transport, channels, None, limit)
    start = page.cursor
    while True:
        if page.cursor != start:  # the resume point is the start, whatever a page says
            page = msgspec.structs.replace(page, cursor=start)
        yield page
        if not page.has_more:
            return
        if not page.page_token:
            raise MemsyncClientError(
                "the gateway's snapshot has more pages but sent no page_token to ask for "
                "them; upgrade the gateway (or the client) so both speak the same /v1/sync",
                code="protocol",
            )
        page = await fetch_page(transport, channels, None, limit, page.page_token)


async def warm_cache(
    pages: AsyncIterator[SyncPage],
    cache: LocalCache,
    seen: set[str] | None = None,
    holder: Holder | None = None,
) -> tuple[str, int]:
    """Join every page's states into the cache, drop its ``removed``; the last cursor and
    the states joined.

    ``seen``, when given, receives the key of every state pulled (what a
    snapshot listed, for :func:`gateway.client.reconcile.drop_missing`).
    ``holder``, when given (the pulled channels, as a frozenset), is recorded
    as holding every state joined, and a ``removed`` memory only releases it
    (:meth:`LocalCache.release`: dropped when no other holder has it);
    without one, states are joined untracked and ``removed`` ones dropped.
    """
    cursor = ""
    joined = 0
    async for page in pages:
        for state in page.states:
            cache.join(state, holder)
            if seen is not None:
                seen.add(state.key)
        for gone in page.removed:  # left these channels: the server sends nothing more of it
            if holder is None:
                cache.discard(gone.key)
            else:
                cache.release(gone.key, holder)
        joined += len(page.states)
        cursor = page.cursor
    _log.info("memsync_cache_warmed", states=joined, cursor=cursor)
    return cursor, joined
