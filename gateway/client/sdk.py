"""``MemorySync``: the async client of a memsync gateway.

::

    async with MemorySync("http://127.0.0.1:8700", token) as ms:
        written = await ms.create("alice", "preference", content="tea over coffee")
        memory = await ms.get(written.id)                 # read-your-writes
        await ms.update(written.id, if_match="auto", content="green tea")
        sub = ms.subscribe(["user:alice:memories"], on_change)
        await sub.connected.wait()

The client keeps the **session tokens** of its writes (the gateway's tokens
accumulate, so one write at a time the latest covers every earlier one; writes
in flight at once are each kept until a later answer covers them, see
:mod:`gateway.client.sessions`) and sends them with reads and writes: a
``get`` then sees this client's own writes in any region,
and a ``503 unavailable`` while the region catches up is retried briefly. It
remembers the **version** (``ETag``) it last saw of each memory, so
``if_match="auto"`` writes with exactly the causal context it read — never
an older one than it already holds, whatever order answers come in (see
:mod:`gateway.client.versions`).

Errors are :mod:`gateway.client.errors` classes; retries follow
:mod:`gateway.client.transport` (idempotent calls only, honouring
``Retry-After``). Live updates: :meth:`MemorySync.subscribe` and
:mod:`gateway.client.stream`; the local replica: :class:`LocalCache`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, Self

import aiohttp
import msgspec
import structlog

from gateway.client.cache import DEFAULT_MAX_ENTRIES, LocalCache
from gateway.client.errors import BadRequestError, MemsyncClientError, ResyncRequiredError
from gateway.client.reconcile import drop_missing
from gateway.client.sessions import SessionTokens
from gateway.client.stream import Callback, Mode, StreamOptions, Subscription
from gateway.client.sync import fetch_page, pull, warm_cache
from gateway.client.transport import Endpoints, RetryPolicy, Transport
from gateway.client.versions import VersionBook, parse_etag
from gateway.client.wire import (
    ListPage,
    SearchHit,
    SyncPage,
    WriteResult,
    decode_list,
    decode_memory,
    decode_search,
    decode_write,
)
from gateway.requests import CreateRequest, PatchRequest, SearchRequest, SourceIn
from replication.schema import Kind, Policy
from replication.state import MemoryView

__all__ = ["MemorySync"]

_log = structlog.get_logger(__name__)
_encoder = msgspec.json.Encoder()

_UNSET: Any = msgspec.UNSET
SESSION_HEADER = "X-Memsync-Session"


class MemorySync:
    """An async client of one memsync deployment (an async context manager).

    ``session``: an ``aiohttp.ClientSession`` to share (not closed here);
    otherwise one is opened on enter and closed on exit. ``region_fallbacks``:
    other regions' base URLs, used in order when the current region cannot be
    reached or keeps answering 503. ``cache``: the :class:`LocalCache` that
    subscriptions and :meth:`warm` fill (one of ``cache_size`` entries by
    default). ``agent_id`` / ``session_id`` go into every write's ``source``.
    """

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        session: aiohttp.ClientSession | None = None,
        region_fallbacks: Sequence[str] = (),
        cache: LocalCache | None = None,
        cache_size: int = DEFAULT_MAX_ENTRIES,
        retry: RetryPolicy | None = None,
        stream: StreamOptions | None = None,
        request_timeout: float = 30.0,
        agent_id: str | None = None,
        session_id: str = "",
    ) -> None:
        self.cache = cache if cache is not None else LocalCache(cache_size)
        self._endpoints = Endpoints(base_url, region_fallbacks)
        self._token = token
        self._http = session
        self._owns_http = session is None
        self._retry = retry or RetryPolicy()
        self._stream = stream or StreamOptions()
        self._request_timeout = request_timeout
        self._source = SourceIn(agent_id=agent_id, session_id=session_id)
        self._transport: Transport | None = None
        self._sessions = SessionTokens()
        self._versions = VersionBook(cache_size)
        self._cursors: dict[frozenset[str], str] = {}
        self._subscriptions: set[Subscription] = set()

    # -- lifecycle ------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._http is None:
            self._http = aiohttp.ClientSession()
        self._transport = Transport(
            self._http, self._endpoints, self._token, self._retry, self._request_timeout
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close every subscription, then the HTTP session if this client opened it."""
        for sub in tuple(self._subscriptions):
            await sub.close()
        self._subscriptions.clear()
        if self._owns_http and self._http is not None:
            await self._http.close()
            self._http = None
        self._transport = None

    @property
    def _t(self) -> Transport:
        if self._transport is None:
            raise RuntimeError("use MemorySync as 'async with MemorySync(...) as client'")
        return self._transport

    # -- state the client keeps -----------------------------------------------

    @property
    def session_token(self) -> str | None:
        """The ``X-Memsync-Session`` value that covers every write of this client."""
        return self._sessions.header()

    @property
    def base_url(self) -> str:
        """The region requests currently go to."""
        return self._endpoints.current

    def version_of(self, memory_id: str) -> str | None:
        """The newest version token this client saw of a memory (its own writes win)."""
        return self._versions.get(memory_id)

    def _remember(self, views: Iterable[MemoryView]) -> None:
        """Versions from read answers: kept only when newer than the held one."""
        self._versions.remember(views)

    def _session_headers(self, sent: tuple[str, ...] | None = None) -> dict[str, str]:
        value = self._sessions.header(sent)
        return {SESSION_HEADER: value} if value else {}

    def _written(
        self, status: int, headers: Mapping[str, str], body: bytes, sent: tuple[str, ...]
    ) -> WriteResult:
        token = headers.get(SESSION_HEADER)
        if token:
            self._sessions.answered(sent, token)
        result = decode_write(body, token or "")
        self._versions.wrote(result.memory)
        if result.degraded or status == 202:
            _log.warning("memsync_write_degraded", memory_id=result.id)
        return result

    # -- the memory API -------------------------------------------------------

    async def create(
        self,
        user_id: str,
        kind: Kind,
        *,
        id: str | None = None,
        content: str = "",
        items: Sequence[str] = (),
        value: int = 0,
        embedding: Sequence[float] | None = None,
        metadata: Mapping[str, Any] | None = None,
        topics: Sequence[str] = (),
        shared: bool = False,
        policy: Policy | None = None,
    ) -> WriteResult:
        """``POST /v1/memories``. Retried only when safe: with an explicit ``id``
        after a 429/503 rejection, and never after an ambiguous failure of a
        create without one (a retry could create a second memory).
        """
        req = CreateRequest(
            user_id=user_id,
            kind=kind,
            id=id,
            content=content,
            items=tuple(items),
            value=value,
            embedding=None if embedding is None else tuple(embedding),
            metadata=dict(metadata or {}),
            topics=tuple(topics),
            shared=shared,
            policy=policy,
            source=self._source,
        )
        sent = self._sessions.sent()
        resp = await self._t.request(
            "POST",
            "/v1/memories",
            body=_encoder.encode(req),
            headers=self._session_headers(sent),
            retry="rejected" if id is not None else "never",
        )
        return self._written(resp.status, resp.headers, resp.body, sent)

    async def get(
        self, memory_id: str, *, consistent: bool = True, wait_ms: int | None = None
    ) -> MemoryView:
        """``GET /v1/memories/{id}``; raises :class:`NotFoundError` when absent or deleted.

        ``consistent``: send the session token, so the answer includes this
        client's own writes (the gateway waits up to ``wait_ms``, then answers
        503, which is retried).
        """
        params = {"wait_ms": str(wait_ms)} if wait_ms is not None else None
        sent = self._sessions.sent()
        resp = await self._t.request(
            "GET",
            f"/v1/memories/{memory_id}",
            params=params,
            headers=self._session_headers(sent) if consistent else None,
            retry="always",
        )
        view = decode_memory(resp.body)
        version = parse_etag(resp.headers.get("ETag")) or view.version
        if version != view.version:
            view = msgspec.structs.replace(view, version=version)
        if consistent and self._sessions.sent() == sent:
            # It holds every write of this client (none answered meanwhile):
            # it replaces the held version even at an equal or earlier time.
            self._versions.wrote(view)
        else:
            self._remember((view,))
        return view

    async def _if_match(self, memory_id: str, if_match: str | None) -> str | None:
        if if_match != "auto":
            return if_match
        version = self._versions.get(memory_id)
        if version is None:
            version = (await self.get(memory_id)).version
        return version

    async def update(
        self,
        memory_id: str,
        *,
        if_match: str | None = None,
        content: str = _UNSET,
        embedding: Sequence[float] | None = _UNSET,
        metadata: Mapping[str, Any] = _UNSET,
        topics: Sequence[str] = _UNSET,
        shared: bool = _UNSET,
        add: Sequence[str] = (),
        remove: Sequence[str] = (),
        increment: int = 0,
    ) -> WriteResult:
        """``PATCH /v1/memories/{id}``: set the given fields, add/remove items, increment.

        ``if_match``: ``None`` for a blind write, a version token, or
        ``"auto"`` for the version this client last saw of the memory (read
        first when it has seen none). Retried on 429/503 only with ``If-Match``.
        """
        req = PatchRequest(
            content=content,
            embedding=embedding if embedding is None or embedding is _UNSET else tuple(embedding),
            metadata=metadata if metadata is _UNSET else dict(metadata),
            topics=topics if topics is _UNSET else tuple(topics),
            shared=shared,
            add=tuple(add),
            remove=tuple(remove),
            increment=increment,
            source=self._source,
        )
        version = await self._if_match(memory_id, if_match)
        sent = self._sessions.sent()
        headers = self._session_headers(sent)
        if version is not None:
            headers["If-Match"] = f'"{version}"'
        resp = await self._t.request(
            "PATCH",
            f"/v1/memories/{memory_id}",
            body=_encoder.encode(req),
            headers=headers,
            retry="rejected" if version is not None else "never",
        )
        return self._written(resp.status, resp.headers, resp.body, sent)

    async def delete(self, memory_id: str, *, if_match: str | None = None) -> WriteResult:
        """``DELETE /v1/memories/{id}``: a tombstone (``if_match`` as in :meth:`update`)."""
        version = await self._if_match(memory_id, if_match)
        sent = self._sessions.sent()
        headers = self._session_headers(sent)
        if version is not None:
            headers["If-Match"] = f'"{version}"'
        resp = await self._t.request(
            "DELETE",
            f"/v1/memories/{memory_id}",
            headers=headers,
            retry="rejected" if version is not None else "never",
        )
        return self._written(resp.status, resp.headers, resp.body, sent)

    async def list(
        self,
        *,
        user_id: str | None = None,
        topic: str | None = None,
        kind: Kind | None = None,
        limit: int | None = None,
        page_token: str | None = None,
    ) -> AsyncIterator[ListPage]:
        """``GET /v1/memories``, one page at a time: ``async for page in client.list(...)``."""
        token = page_token
        while True:
            query = {
                "user_id": user_id,
                "topic": topic,
                "kind": kind,
                "limit": None if limit is None else str(limit),
                "page_token": token,
            }
            params = {k: v for k, v in query.items() if v is not None}
            resp = await self._t.request("GET", "/v1/memories", params=params, retry="always")
            page = decode_list(resp.body)
            self._remember(page.memories)
            yield page
            if not page.next_page_token:
                return
            token = page.next_page_token

    async def search(
        self,
        query: str,
        *,
        embedding: Sequence[float] | None = None,
        user_id: str | None = None,
        kind: Kind | None = None,
        topics: Sequence[str] | None = None,
        limit: int = 10,
    ) -> tuple[SearchHit, ...]:
        """``POST /v1/search``: ranked memories (read-only, so retried like a GET)."""
        req = SearchRequest(
            query=query,
            embedding=None if embedding is None else tuple(embedding),
            user_id=user_id,
            kind=kind,
            topics=None if topics is None else tuple(topics),
            limit=limit,
        )
        resp = await self._t.request(
            "POST", "/v1/search", body=_encoder.encode(req), retry="always"
        )
        hits = decode_search(resp.body)
        self._remember(h.memory for h in hits)
        return hits

    # -- sync -----------------------------------------------------------------

    async def sync(
        self,
        channels: Sequence[str],
        *,
        since: str | None = None,
        limit: int | None = None,
        page_token: str | None = None,
    ) -> SyncPage:
        """One page of ``GET /v1/sync`` (no cache update; see :meth:`warm`).

        With ``since``: the changes after it (next page: ``since=page.cursor``
        while ``has_more``). Without: a snapshot of the channels' live
        memories (next page: ``page_token=page.page_token`` while
        ``has_more``; every page's ``cursor`` is the snapshot's start, where
        to resume). Raises :class:`ResyncRequiredError` when ``since`` can no
        longer be served.
        """
        page = await fetch_page(self._t, channels, since, limit, page_token)
        self._remember(page.changes)
        return page

    def _pull(self, channels: tuple[str, ...], since: str | None) -> AsyncIterator[SyncPage]:
        return pull(self._t, channels, since)

    async def warm(
        self, channels: Sequence[str], *, since: str | None = None, limit: int | None = None
    ) -> str:
        """Pull ``/v1/sync`` pages into :attr:`cache`; the cursor to subscribe from.

        A later :meth:`subscribe` to the same channels starts from that cursor,
        so nothing between the snapshot and the subscription is missed; the
        two are one holder of what they put in the cache (see
        :class:`LocalCache`): a memory a replay page lists as ``removed`` is
        dropped unless a subscription or warm of other channels holds it. With
        ``since`` only the changes after it are pulled; when the gateway can
        no longer serve it (``resync_required``) or cannot decode it
        (``bad_token``), a full snapshot instead, after which every cached
        live memory of these channels that the snapshot did not list (deleted
        or moved away meanwhile) is dropped from the cache (see
        :mod:`gateway.client.reconcile`; one created during the snapshot comes
        back when subscribing from the returned cursor).
        """
        chans = tuple(dict.fromkeys(channels))
        holder = frozenset(chans)
        try:
            cursor, _ = await warm_cache(
                pull(self._t, chans, since, limit), self.cache, holder=holder
            )
        except (ResyncRequiredError, BadRequestError) as exc:
            if since is None or not _needs_snapshot(exc):
                raise
            _log.warning("memsync_warm_resync", channels=",".join(chans), cause=exc.code)
            seen: set[str] = set()
            cursor, _ = await warm_cache(
                pull(self._t, chans, None, limit), self.cache, seen, holder
            )
            gone = drop_missing(self.cache, chans, seen, holder)
            _log.info("memsync_warm_reconciled", listed=len(seen), gone=len(gone))
        self._cursors[frozenset(chans)] = cursor
        return cursor

    def subscribe(
        self,
        channels: Sequence[str],
        callback: Callback,
        *,
        mode: Mode = "eager",
        interval_ms: int | None = None,
        since: str | None = None,
    ) -> Subscription:
        """Start a live subscription (see :mod:`gateway.client.stream`).

        Every event or batch is merged into :attr:`cache` first, then
        ``callback`` (plain or async) gets a :class:`Change` per memory whose
        state changed. When the server says a memory left these channels
        (made private, moved off a topic; no content is sent), it is dropped
        from :attr:`cache` and reported with ``Change.gone`` — unless a
        subscription or :meth:`warm` of other channels of this client still
        holds it (see :class:`LocalCache`): then it is kept and nothing is
        reported. It resumes from ``since``, else from the cursor of a
        previous :meth:`warm` of the same channels, else from now. Await
        ``sub.connected.wait()`` to know it is live; ``sub.close()`` stops it
        (closing the client closes it too).
        """
        chans = tuple(dict.fromkeys(channels))
        sub = Subscription(
            transport=self._t,
            cache=self.cache,
            pull=self._pull,
            channels=chans,
            callback=callback,
            mode=mode,
            interval_ms=interval_ms,
            since=since if since is not None else self._cursors.get(frozenset(chans)),
            options=self._stream,
            on_end=self._ended,
        )
        self._subscriptions = {s for s in self._subscriptions if not s.closed}
        self._subscriptions.add(sub)
        sub.start()
        return sub

    def _ended(self, sub: Subscription) -> None:
        """A subscription ended: its channels hold nothing more, unless another open one's do."""
        if not any(
            s is not sub and s.holder == sub.holder and not s.closed for s in self._subscriptions
        ):
            self.cache.forget_holder(sub.holder)


def _needs_snapshot(exc: MemsyncClientError) -> bool:
    """Whether a ``/v1/sync`` error means the cursor is useless (gone, or not decodable)."""
    return isinstance(exc, ResyncRequiredError) or exc.code == "bad_token"
