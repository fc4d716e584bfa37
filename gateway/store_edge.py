"""The default ``MemoryStore``: one Qdrant Edge shard in a local directory.

Layout (shared with :mod:`gateway.store_server`, see
:func:`gateway.store.memory_payload`): one point per memory, id
:func:`gateway.store.point_id`, the named dense vector ``"dense"`` holding the
LWW winner's embedding (no vector when there is none or its size is wrong),
and a payload with the filterable fields, the text-indexed ``content`` and the
canonical state bytes.

Design choices:

- **Metadata blobs are points in the same shard** (``status`` = ``meta``, id
  from :func:`gateway.store.meta_point_id`), not a sidecar file. They go
  through the shard's one write-ahead log, so a watermark written after a
  batch of states can never survive a crash that lost those states (a
  separately fsynced file could), snapshots carry them, and there is one
  thing to open, lock and close. Every memory query filters on ``status``
  so they are never listed, searched, scanned or counted.
- **Two executors**: one thread runs every write, so writes apply in
  submission order; a second pool runs reads, so a read never queues behind
  a large batch upsert from the applier (measured: a 500-state upsert takes
  ~60 ms). Edge is safe to call from several threads. It releases the GIL
  for much of an upsert, but not for all of it, and a flush holds it for a
  time that grows with the store (measured: ~135 ms at 150,000 memories):
  in the gateway's process that stops the event loop, which is why the
  default backend runs this class in a child process
  (:mod:`gateway.store_process`).
- **Full-text search ranks at query time.** The ``content`` index is
  unscored: it finds the memories holding a query's words, and
  :mod:`gateway.text_rank` ranks them with BM25 over the query's scope. A
  scoring index made every update pay for its statistics, more as the
  store grew (measured: ``loadtests.store_bench`` and docs/architecture.md).
- **Page tokens** are the scroll's next point id, encoded opaquely
  (:func:`gateway.store.encode_page_token`); pages follow point-id order,
  which is stable while points are added or removed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from qdrant_edge import (
    CountRequest,
    Distance,
    EdgeConfig,
    EdgeShard,
    EdgeVectorParams,
    FieldCondition,
    Filter,
    MatchAny,
    MatchText,
    MatchTextAny,
    MatchValue,
    PayloadSchemaType,
    Point,
    Query,
    QueryRequest,
    ScrollRequest,
    TextIndexParams,
    TokenizerType,
    UpdateOperation,
)

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
from gateway.text_rank import Corpus, bm25, mean_length, query_terms, rrf
from replication.state import MemoryState

if TYPE_CHECKING:
    from qdrant_edge import PointId

__all__ = ["QdrantEdgeStore"]

_T = TypeVar("_T")
_VECTOR = "dense"
_STATE_ONLY = ["state"]
_CONTENT_ONLY = ["content"]
_TEXT_CANDIDATES = 500
_RRF_K = 60
_MEMORY = Filter(must=[FieldCondition(key="status", match=MatchAny([LIVE, DELETED]))])
_KEYWORD_FIELDS = ("tenant_id", "user_id", "kind", "topics", "status")  # what queries filter on
# Indexed by earlier versions, filtered on by no query. Every payload index
# costs each flush time in proportion to the points it covers, with the GIL
# held (measured: ~4 ms per keyword index at 60,000 memories), and the
# integer one kept ~200 B per update of a point forever.
_UNUSED_INDEXES = ("updated_at", "key", "deleted")


@dataclass(frozen=True, slots=True)
class _TextMatches:
    contents: dict[str, str]  # point id -> content
    corpus: Corpus


def _text_matches(
    shard: EdgeShard, scope: Callable[..., Filter], terms: Sequence[str]
) -> _TextMatches:
    """The memories in scope that contain the terms, and the scope's corpus figures.

    Those with every term come first, then those with some, up to
    :data:`_TEXT_CANDIDATES` in all: BM25 ranks a memory holding every term
    above one holding fewer nearly always, so a large match set is cut where
    it matters least.
    """
    if not terms:
        return _TextMatches({}, Corpus(0, {}, 0.0))
    joined = " ".join(terms)
    every = FieldCondition(key="content", match=MatchText(joined))
    some = FieldCondition(key="content", match=MatchTextAny(joined))
    contents: dict[str, str] = {}
    for flt in (scope([every]), scope([some], [every])):
        room = _TEXT_CANDIDATES - len(contents)
        if room <= 0:
            break
        records, _ = shard.scroll(
            ScrollRequest(limit=room, filter=flt, with_payload=_CONTENT_ONLY, with_vector=False)
        )
        for r in records:
            contents[str(r.id)] = str((r.payload or {}).get("content", ""))
    if not contents:
        return _TextMatches({}, Corpus(0, {}, 0.0))
    # Estimated counts (from the indexes' cardinalities): exact ones cost
    # ~28 ms each over 100,000 matches (measured), estimates ~0.02 ms, and
    # BM25 needs only their proportions.
    documents = shard.count(CountRequest(filter=scope(), exact=False))
    frequency = {
        term: shard.count(
            CountRequest(
                filter=scope([FieldCondition(key="content", match=MatchText(term))]), exact=False
            )
        )
        for term in terms
    }
    # The scope's mean length is estimated from the matches (reading every
    # document in scope would cost what the index saves).
    return _TextMatches(contents, Corpus(documents, frequency, mean_length(contents.values())))


@contextmanager
def _translated(action: str) -> Iterator[None]:
    """Turn a qdrant_edge failure into :class:`StoreError` (the one place it happens).

    The extension raises plain ``Exception`` for every runtime failure (I/O,
    a locked directory, a closed shard, bad vectors), so that is what is
    caught; subclasses such as ``TypeError`` or ``ValueError`` are bugs in the
    caller and propagate unchanged.
    """
    try:
        yield
    except OSError as exc:
        raise StoreError(f"qdrant edge: {action} failed: {exc}") from exc
    except Exception as exc:
        if type(exc) is not Exception:
            raise
        raise StoreError(f"qdrant edge: {action} failed: {exc}") from exc


def _memory_filter(
    tenant_id: str,
    *,
    user_ids: Sequence[str] | None,
    kind: str | None,
    topics: Sequence[str] | None,
    include_deleted: bool,
    also: Sequence[Any] = (),
    never: Sequence[Any] = (),
) -> Filter:
    must: list[Any] = [FieldCondition(key="tenant_id", match=MatchValue(tenant_id))]
    statuses = [LIVE, DELETED] if include_deleted else [LIVE]
    must.append(FieldCondition(key="status", match=MatchAny(statuses)))
    if user_ids is not None:
        must.append(FieldCondition(key="user_id", match=MatchAny(list(user_ids))))
    if kind is not None:
        must.append(FieldCondition(key="kind", match=MatchValue(kind)))
    if topics is not None:
        must.append(FieldCondition(key="topics", match=MatchAny(list(topics))))
    must.extend(also)
    return Filter(must=must, must_not=list(never) or None)


class QdrantEdgeStore:
    """A region's states in a Qdrant Edge shard at ``path`` (see the module docstring)."""

    def __init__(self, path: Path, vector_dim: int = 384) -> None:
        self._path = path
        self._vector_dim = vector_dim
        self._shard: EdgeShard | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._readers: ThreadPoolExecutor | None = None

    @property
    def vector_dim(self) -> int:
        """The dimension every stored embedding must have."""
        return self._vector_dim

    async def open(self) -> None:
        """Load the shard in ``path`` (or create it) and ensure the payload indexes."""
        if self._executor is not None:
            return
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="qdrant-edge")
        self._readers = ThreadPoolExecutor(max_workers=2, thread_name_prefix="qdrant-edge-read")
        try:
            self._shard = await self._run(self._open_shard)
        except BaseException:
            self._executor.shutdown(wait=False)
            self._readers.shutdown(wait=False)
            self._executor = self._readers = None
            raise

    async def close(self) -> None:
        """Flush and close the shard; the store can be opened again."""
        executor = self._executor
        if executor is None:
            return
        readers, self._readers = self._readers, None
        if readers is not None:
            readers.shutdown(wait=True)
        try:
            await self._run(self._close_shard)
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
        ids: list[PointId] = [point_id(k) for k in dict.fromkeys(keys)]
        records = await self._call(
            "retrieve", lambda s: s.retrieve(ids, _STATE_ONLY, False), read=True
        )
        states = (state_from_payload(r.payload or {}) for r in records)
        return {s.key: s for s in states}

    async def put_many(self, states: Sequence[MemoryState]) -> None:
        """Upsert states in one batch (the last state of a key wins)."""
        if not states:
            return
        points = []
        for state in last_per_key(states):
            vector = dense_vector(state, self._vector_dim)
            points.append(
                Point(
                    id=point_id(state.key),
                    vector={_VECTOR: vector} if vector is not None else {},
                    payload=memory_payload(state),
                )
            )
        op = UpdateOperation.upsert_points(points)
        await self._call("upsert", lambda s: s.update(op))

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
        """Live memories ranked by BM25 over content, by cosine, or both fused (RRF).

        The text index only matches; BM25 ranks the matches here
        (:mod:`gateway.text_rank`), over the query's scope.
        """
        validate_search(query, self._vector_dim)

        def scope(also: Sequence[Any] = (), never: Sequence[Any] = ()) -> Filter:
            return _memory_filter(
                query.tenant_id,
                user_ids=query.user_ids,
                kind=query.kind,
                topics=query.topics,
                include_deleted=False,
                also=also,
                never=never,
            )

        hybrid = bool(query.text) and query.embedding is not None
        depth = max(4 * query.limit, 40) if hybrid else query.limit
        found: dict[str, MemoryState] = {}
        rankings: list[list[tuple[str, float]]] = []
        if query.embedding is not None:
            request = QueryRequest(
                limit=depth,
                query=Query.Nearest(list(query.embedding), _VECTOR),
                filter=scope(),
                with_payload=_STATE_ONLY,
            )
            hits = await self._call("query", lambda s: s.query(request), read=True)
            for hit in hits:
                found[str(hit.id)] = state_from_payload(hit.payload or {})
            rankings.append([(str(hit.id), hit.score) for hit in hits])
        if query.text:
            terms = query_terms(query.text)
            text = await self._call(
                "text search", lambda s: _text_matches(s, scope, terms), read=True
            )
            rankings.append(bm25(terms, text.contents, text.corpus)[:depth])
        if hybrid:
            ranked = rrf([[doc for doc, _ in r] for r in rankings], _RRF_K)[: query.limit]
        else:
            ranked = rankings[0][: query.limit]
        missing: list[PointId] = [doc for doc, _ in ranked if doc not in found]
        if missing:
            records = await self._call(
                "retrieve", lambda s: s.retrieve(missing, _STATE_ONLY, False), read=True
            )
            for r in records:
                found[str(r.id)] = state_from_payload(r.payload or {})
        return [(found[doc], score) for doc, score in ranked if doc in found]

    async def scan(self, offset: str | None, limit: int) -> tuple[list[MemoryState], str | None]:
        """Every memory (deleted included, metadata excluded), in point-id order."""
        return await self._scroll(_MEMORY, offset, limit)

    async def count(self) -> int:
        """How many memories (deleted included) the shard holds."""
        request = CountRequest(filter=_MEMORY, exact=True)
        return await self._call("count", lambda s: s.count(request), read=True)

    async def get_meta(self, name: str) -> bytes | None:
        """A named metadata blob, or ``None``."""
        ids: list[PointId] = [meta_point_id(name)]
        records = await self._call("retrieve", lambda s: s.retrieve(ids, True, False), read=True)
        return meta_value(records[0].payload or {}) if records else None

    async def put_meta(self, name: str, value: bytes) -> None:
        """Store a named metadata blob (in the shard's WAL, ordered after earlier writes)."""
        point = Point(id=meta_point_id(name), vector={}, payload=meta_payload(name, value))
        op = UpdateOperation.upsert_points([point])
        await self._call("put meta", lambda s: s.update(op))

    async def maintain(self) -> None:
        """Flush the shard (checkpoints its write-ahead log; called periodically).

        Qdrant Edge runs no background work: without flushes its WAL, and the
        memory that goes with it, grows with every upsert.
        """
        await self._call("flush", lambda s: s.flush())

    # --- internals ---

    def _open_shard(self) -> EdgeShard:
        config = EdgeConfig(
            vectors={_VECTOR: EdgeVectorParams(size=self._vector_dim, distance=Distance.Cosine)}
        )
        path = str(self._path)
        with _translated(f"opening {path}"):
            if (self._path / "edge_config.json").exists():
                shard = EdgeShard.load(path, config)
            else:
                shard = EdgeShard.create(path, config)
        try:
            with _translated("creating payload indexes"):
                for field in _KEYWORD_FIELDS:
                    shard.update(
                        UpdateOperation.create_field_index(field, PayloadSchemaType.Keyword)
                    )
                schema = shard.info().payload_schema
                for field in _UNUSED_INDEXES:
                    if field in schema:
                        shard.update(UpdateOperation.delete_field_index(field))
                # Unscored: BM25 is computed at query time (gateway.text_rank).
                # A scoring index cost every update more as the store grew;
                # a store made with one is re-indexed once, here.
                content = schema.get("content")
                if content is None or getattr(content.params, "scoring", None) is not None:
                    text = TextIndexParams(
                        tokenizer=TokenizerType.Word, lowercase=True, scoring=False
                    )
                    shard.update(UpdateOperation.create_field_index("content", text))
        except BaseException:
            shard.close()
            raise
        return shard

    def _close_shard(self) -> None:
        shard, self._shard = self._shard, None
        if shard is None:
            return
        with _translated("closing"):
            try:
                shard.flush()
            finally:
                shard.close()

    async def _scroll(
        self, flt: Filter, token: str | None, limit: int
    ) -> tuple[list[MemoryState], str | None]:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        start = None if token is None else decode_page_token(token)
        request = ScrollRequest(
            offset=start, limit=limit, filter=flt, with_payload=_STATE_ONLY, with_vector=False
        )
        records, next_id = await self._call("scroll", lambda s: s.scroll(request), read=True)
        states = [state_from_payload(r.payload or {}) for r in records]
        return states, None if next_id is None else encode_page_token(str(next_id))

    async def _call(self, action: str, fn: Callable[[EdgeShard], _T], *, read: bool = False) -> _T:
        def call() -> _T:
            shard = self._shard
            if shard is None:
                raise StoreError("qdrant edge: the store is closed")
            with _translated(action):
                return fn(shard)

        return await self._run(call, read=read)

    async def _run(self, fn: Callable[[], _T], *, read: bool = False) -> _T:
        executor = self._readers if read else self._executor
        if executor is None:
            raise StoreError("qdrant edge: the store is not open")
        return await asyncio.get_running_loop().run_in_executor(executor, fn)
