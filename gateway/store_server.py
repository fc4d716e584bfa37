"""``MemoryStore`` on a Qdrant server collection, through ``qdrant-client``.

The payload layout, point ids, vector and metadata points are exactly those
of :mod:`gateway.store_edge` (see :func:`gateway.store.memory_payload`), so the
same contract suite passes and a region can move between the two.

Design choices:

- **The synchronous** ``QdrantClient`` **on one single-thread executor.** The
  client is built *inside* that thread by ``client_factory`` (local mode's
  SQLite connection is bound to its creating thread), every call is
  serialised (local mode is not thread-safe) and the event loop never blocks
  (the async client's local mode runs its numpy scans on the loop).
- ``QdrantServerStore.from_url(...)`` for deployments,
  ``QdrantServerStore.from_path(...)`` (``":memory:"`` works too) for tests
  on qdrant-client's local mode.
- Metadata blobs are points in the collection (``status`` = ``meta``) and page
  tokens are encoded next point ids, as in the Edge store.
"""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from qdrant_client import QdrantClient, models
from qdrant_client.http.exceptions import ApiException

from gateway.store import (
    DELETED,
    LIVE,
    ListQuery,
    SearchQuery,
    StoreError,
    decode_page_token,
    dense_vector,
    encode_page_token,
    last_per_key,
    memory_payload,
    meta_payload,
    meta_point_id,
    meta_value,
    point_id,
    state_from_payload,
    validate_search,
)
from replication.state import MemoryState

__all__ = ["QdrantServerStore"]

_T = TypeVar("_T")
_VECTOR = "dense"
_STATE_ONLY = ["state"]
_MEMORY = models.Filter(
    must=[models.FieldCondition(key="status", match=models.MatchAny(any=[LIVE, DELETED]))]
)
_INDEXES: tuple[tuple[str, models.PayloadSchemaType], ...] = (
    ("key", models.PayloadSchemaType.KEYWORD),
    ("tenant_id", models.PayloadSchemaType.KEYWORD),
    ("user_id", models.PayloadSchemaType.KEYWORD),
    ("kind", models.PayloadSchemaType.KEYWORD),
    ("topics", models.PayloadSchemaType.KEYWORD),
    ("status", models.PayloadSchemaType.KEYWORD),
    ("deleted", models.PayloadSchemaType.BOOL),
)
_TEXT_INDEX = models.TextIndexParams(
    type=models.TextIndexType.TEXT,
    tokenizer=models.TokenizerType.WORD,
    lowercase=True,
    scoring=True,
)
_LOCAL_INDEX_WARNING = "Payload indexes have no effect in the local Qdrant"


@contextmanager
def _translated(action: str) -> Iterator[None]:
    """Turn a qdrant-client failure into :class:`StoreError` (the one place it happens).

    HTTP/gRPC errors (``ApiException``), connection and file errors
    (``OSError``) and local mode's ``RuntimeError`` (e.g. the folder is in use
    by another client) are the store failing; anything else is a bug and
    propagates.
    """
    try:
        yield
    except (ApiException, OSError, RuntimeError) as exc:
        raise StoreError(f"qdrant: {action} failed: {exc}") from exc


def _memory_filter(
    tenant_id: str,
    *,
    user_ids: Sequence[str] | None,
    kind: str | None,
    topics: Sequence[str] | None,
    include_deleted: bool,
) -> models.Filter:
    statuses = [LIVE, DELETED] if include_deleted else [LIVE]
    must: list[models.Condition] = [
        models.FieldCondition(key="tenant_id", match=models.MatchValue(value=tenant_id)),
        models.FieldCondition(key="status", match=models.MatchAny(any=statuses)),
    ]
    if user_ids is not None:
        must.append(models.FieldCondition(key="user_id", match=models.MatchAny(any=list(user_ids))))
    if kind is not None:
        must.append(models.FieldCondition(key="kind", match=models.MatchValue(value=kind)))
    if topics is not None:
        must.append(models.FieldCondition(key="topics", match=models.MatchAny(any=list(topics))))
    return models.Filter(must=must)


def _payload(record: models.Record | models.ScoredPoint) -> dict[str, Any]:
    return record.payload or {}


class QdrantServerStore:
    """A region's states in a Qdrant collection (see the module docstring).

    ``client_factory`` builds the client; it runs on the store's own thread
    when the store opens.
    """

    def __init__(
        self,
        client_factory: Callable[[], QdrantClient],
        collection: str = "memsync",
        vector_dim: int = 384,
    ) -> None:
        self._factory = client_factory
        self._collection = collection
        self._vector_dim = vector_dim
        self._client: QdrantClient | None = None
        self._executor: ThreadPoolExecutor | None = None

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        api_key: str | None = None,
        timeout: int | None = None,
        collection: str = "memsync",
        vector_dim: int = 384,
    ) -> QdrantServerStore:
        """A store on a Qdrant server (``http(s)://host:6333``)."""
        return cls(
            lambda: QdrantClient(url=url, api_key=api_key, timeout=timeout),
            collection=collection,
            vector_dim=vector_dim,
        )

    @classmethod
    def from_path(
        cls, path: Path | str, *, collection: str = "memsync", vector_dim: int = 384
    ) -> QdrantServerStore:
        """A store on qdrant-client's local mode in ``path`` (``":memory:"``: in RAM)."""
        if str(path) == ":memory:":
            return cls(lambda: QdrantClient(location=":memory:"), collection, vector_dim)
        return cls(lambda: QdrantClient(path=str(path)), collection, vector_dim)

    @property
    def vector_dim(self) -> int:
        """The dimension every stored embedding must have."""
        return self._vector_dim

    async def open(self) -> None:
        """Connect, create the collection if missing and ensure the payload indexes."""
        if self._executor is not None:
            return
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="qdrant-client")
        try:
            self._client = await self._run(self._connect)
        except BaseException:
            self._executor.shutdown(wait=False)
            self._executor = None
            raise

    async def close(self) -> None:
        """Close the client (local mode persists on close); the store can reopen."""
        executor = self._executor
        if executor is None:
            return
        try:
            await self._run(self._disconnect)
        finally:
            self._executor = None
            executor.shutdown(wait=True)

    async def get(self, key: str) -> MemoryState | None:
        """One memory's state, deleted ones included; ``None`` if unknown."""
        found = await self.get_many([key])
        return found.get(key)

    async def get_many(self, keys: Sequence[str]) -> dict[str, MemoryState]:
        """The states of the keys that exist."""
        if not keys:
            return {}
        ids: list[models.ExtendedPointId] = [point_id(k) for k in dict.fromkeys(keys)]
        records = await self._call(
            "retrieve",
            lambda c: c.retrieve(
                self._collection, ids=ids, with_payload=_STATE_ONLY, with_vectors=False
            ),
        )
        states = (state_from_payload(_payload(r)) for r in records)
        return {s.key: s for s in states}

    async def put_many(self, states: Sequence[MemoryState]) -> None:
        """Upsert states in one batch (the last state of a key wins)."""
        if not states:
            return
        points = []
        for state in last_per_key(states):
            vector = dense_vector(state, self._vector_dim)
            points.append(
                models.PointStruct(
                    id=point_id(state.key),
                    vector={_VECTOR: vector} if vector is not None else {},
                    payload=memory_payload(state),
                )
            )
        await self._call("upsert", lambda c: c.upsert(self._collection, points=points, wait=True))

    async def list_page(self, query: ListQuery) -> tuple[list[MemoryState], str | None]:
        """One page of a tenant's states in point-id order, and the next page's token."""
        flt = _memory_filter(
            query.tenant_id,
            user_ids=query.user_ids,
            kind=query.kind,
            topics=None if query.topic is None else [query.topic],
            include_deleted=query.include_deleted,
        )
        return await self._scroll(flt, query.offset, query.limit)

    async def search(self, query: SearchQuery) -> list[tuple[MemoryState, float]]:
        """Live memories ranked by BM25 over content, by cosine, or both fused (RRF)."""
        validate_search(query, self._vector_dim)
        flt = _memory_filter(
            query.tenant_id,
            user_ids=query.user_ids,
            kind=query.kind,
            topics=query.topics,
            include_deleted=False,
        )
        dense = None if query.embedding is None else list(query.embedding)
        text = models.TextQuery(text=query.text) if query.text else None

        def run(c: QdrantClient) -> models.QueryResponse:
            if dense is not None and text is not None:
                depth = max(4 * query.limit, 40)
                return c.query_points(
                    self._collection,
                    prefetch=[
                        models.Prefetch(query=dense, using=_VECTOR, filter=flt, limit=depth),
                        models.Prefetch(query=text, using="content", filter=flt, limit=depth),
                    ],
                    query=models.FusionQuery(fusion=models.Fusion.RRF),
                    query_filter=flt,
                    limit=query.limit,
                    with_payload=_STATE_ONLY,
                )
            if dense is not None:
                return c.query_points(
                    self._collection,
                    query=dense,
                    using=_VECTOR,
                    query_filter=flt,
                    limit=query.limit,
                    with_payload=_STATE_ONLY,
                )
            return c.query_points(
                self._collection,
                query=text,
                using="content",
                query_filter=flt,
                limit=query.limit,
                with_payload=_STATE_ONLY,
            )

        response = await self._call("query", run)
        return [(state_from_payload(_payload(p)), p.score) for p in response.points]

    async def scan(self, offset: str | None, limit: int) -> tuple[list[MemoryState], str | None]:
        """Every memory (deleted included, metadata excluded), in point-id order."""
        return await self._scroll(_MEMORY, offset, limit)

    async def maintain(self) -> None:
        """Nothing to do: a Qdrant server optimises and flushes by itself."""

    async def count(self) -> int:
        """How many memories (deleted included) the collection holds."""
        result = await self._call(
            "count", lambda c: c.count(self._collection, count_filter=_MEMORY, exact=True)
        )
        return result.count

    async def get_meta(self, name: str) -> bytes | None:
        """A named metadata blob, or ``None``."""
        ids: list[models.ExtendedPointId] = [meta_point_id(name)]
        records = await self._call(
            "retrieve",
            lambda c: c.retrieve(self._collection, ids=ids, with_payload=True, with_vectors=False),
        )
        return meta_value(_payload(records[0])) if records else None

    async def put_meta(self, name: str, value: bytes) -> None:
        """Store a named metadata blob (ordered after earlier writes)."""
        point = models.PointStruct(
            id=meta_point_id(name), vector={}, payload=meta_payload(name, value)
        )
        await self._call("put meta", lambda c: c.upsert(self._collection, [point], wait=True))

    # --- internals ---

    def _connect(self) -> QdrantClient:
        with _translated("connecting"):
            client = self._factory()
        try:
            with _translated("preparing the collection"):
                if not client.collection_exists(self._collection):
                    client.create_collection(
                        self._collection,
                        vectors_config={
                            _VECTOR: models.VectorParams(
                                size=self._vector_dim, distance=models.Distance.COSINE
                            )
                        },
                    )
                for field, schema in _INDEXES:
                    with warnings.catch_warnings():
                        # Local mode ignores these indexes and says so; the server builds them.
                        warnings.filterwarnings(
                            "ignore", message=_LOCAL_INDEX_WARNING, category=UserWarning
                        )
                        client.create_payload_index(self._collection, field, schema, wait=True)
                client.create_payload_index(self._collection, "content", _TEXT_INDEX, wait=True)
        except BaseException:
            client.close()
            raise
        return client

    def _disconnect(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with _translated("closing"):
                client.close()

    async def _scroll(
        self, flt: models.Filter, token: str | None, limit: int
    ) -> tuple[list[MemoryState], str | None]:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        start = None if token is None else decode_page_token(token)
        records, next_id = await self._call(
            "scroll",
            lambda c: c.scroll(
                self._collection,
                scroll_filter=flt,
                limit=limit,
                offset=start,
                with_payload=_STATE_ONLY,
                with_vectors=False,
            ),
        )
        states = [state_from_payload(_payload(r)) for r in records]
        return states, None if next_id is None else encode_page_token(str(next_id))

    async def _call(self, action: str, fn: Callable[[QdrantClient], _T]) -> _T:
        def call() -> _T:
            client = self._client
            if client is None:
                raise StoreError("qdrant: the store is closed")
            with _translated(action):
                return fn(client)

        return await self._run(call)

    async def _run(self, fn: Callable[[], _T]) -> _T:
        if self._executor is None:
            raise StoreError("qdrant: the store is not open")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)
