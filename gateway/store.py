"""The ``MemoryStore`` port: where a region keeps the materialised state.

Two adapters implement it — Qdrant Edge on disk (:mod:`gateway.store_edge`,
the default) and Qdrant server through ``qdrant-client``
(:mod:`gateway.store_server`) — and one contract suite
(``tests/integration/test_store_contract.py``) runs against both and against
the in-memory twin in :mod:`gateway.testing`.

The store holds :class:`~replication.state.MemoryState` values keyed by
``tenant/id``, plus a few named metadata blobs (applier watermarks). Every
method is async; adapters run blocking calls off the event loop.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from collections.abc import Sequence
from typing import Any, Protocol

import msgspec

from replication.errors import MemsyncError
from replication.state import MemoryState, decode_state, encode_state, materialize

__all__ = [
    "DELETED",
    "LIVE",
    "META",
    "ListQuery",
    "MemoryStore",
    "SearchQuery",
    "StoreError",
    "decode_page_token",
    "dense_vector",
    "encode_page_token",
    "last_per_key",
    "memory_payload",
    "meta_payload",
    "meta_point_id",
    "meta_value",
    "point_id",
    "state_from_payload",
    "validate_search",
]

_NAMESPACE = uuid.UUID("5b0f3c1e-8f0e-4d2a-9d0b-6d656d73796e")
_META_NAMESPACE = uuid.UUID("0c5e1a52-3f7d-4b8e-a1c4-6d6574616d65")

# Every point carries a ``status`` keyword: ``live`` and ``deleted`` memories,
# ``meta`` blobs. Adapters filter on it rather than on the ``deleted`` bool
# because qdrant-edge-py 0.9.0 never matches ``MatchValue(True/False)`` on a
# bool field (indexed or not); the bool stays in the payload for readers.
LIVE = "live"
DELETED = "deleted"
META = "meta"


def point_id(key: str) -> str:
    """The store's point id for a memory key (a UUID string, stable everywhere)."""
    return str(uuid.uuid5(_NAMESPACE, key))


def meta_point_id(name: str) -> str:
    """The point id of a named metadata blob (its own namespace: never a memory's id)."""
    return str(uuid.uuid5(_META_NAMESPACE, name))


class StoreError(MemsyncError):
    """The store failed (unreachable, corrupt, full); retriable at the caller's discretion."""

    status = 503
    code = "store_unavailable"
    retriable = True


class ListQuery(msgspec.Struct, frozen=True, kw_only=True):
    """Which memories to list: always one tenant; optional narrowing."""

    tenant_id: str
    user_ids: tuple[str, ...] | None = None  # None: every user of the tenant
    topic: str | None = None
    kind: str | None = None
    include_deleted: bool = False
    limit: int = 50
    offset: str | None = None  # opaque page token from the previous page


class SearchQuery(msgspec.Struct, frozen=True, kw_only=True):
    """A ranked search: BM25 over content, dense over embeddings, or both (fused)."""

    tenant_id: str
    text: str | None = None
    embedding: tuple[float, ...] | None = None
    user_ids: tuple[str, ...] | None = None
    kind: str | None = None
    topics: tuple[str, ...] | None = None  # any of
    limit: int = 10


class MemoryStore(Protocol):
    """A region's materialised state (see the module docstring)."""

    @property
    def vector_dim(self) -> int:
        """The dimension every stored embedding must have."""
        ...

    async def open(self) -> None:
        """Open or create the store; idempotent indexes are ensured here."""

    async def close(self) -> None:
        """Flush and release the store."""

    async def get(self, key: str) -> MemoryState | None:
        """One memory's state, deleted ones included; ``None`` if unknown."""

    async def get_many(self, keys: Sequence[str]) -> dict[str, MemoryState]:
        """The states of the keys that exist."""

    async def put_many(self, states: Sequence[MemoryState]) -> None:
        """Upsert states (one write per key; the last one wins within a call)."""

    async def list_page(self, query: ListQuery) -> tuple[list[MemoryState], str | None]:
        """One page of states, ordered stably, and the next page's token."""

    async def search(self, query: SearchQuery) -> list[tuple[MemoryState, float]]:
        """Ranked live (non-deleted) memories with scores, best first."""

    async def scan(self, offset: str | None, limit: int) -> tuple[list[MemoryState], str | None]:
        """Every state, in pages (cache warming, digests, anti-entropy)."""

    async def maintain(self) -> None:
        """Periodic upkeep (the gateway calls it every ~10 s); may do nothing."""

    async def count(self) -> int:
        """How many memories (deleted included) the store holds."""

    async def get_meta(self, name: str) -> bytes | None:
        """A named metadata blob (e.g. applier watermarks)."""

    async def put_meta(self, name: str, value: bytes) -> None:
        """Store a named metadata blob durably."""


# --- helpers shared by the adapters (payload layout, page tokens, checks) ---


def memory_payload(state: MemoryState) -> dict[str, Any]:
    """The payload of a memory point: filterable fields plus the canonical state.

    ``state`` is :func:`~replication.state.encode_state` bytes, base64; every
    other field is derived from it (the LWW winner's content and topics) so
    the store can filter and rank without decoding states.
    """
    view = materialize(state)
    deleted = state.deleted
    return {
        "key": state.key,
        "tenant_id": state.tenant_id,
        "user_id": state.user_id,
        "kind": state.kind,
        "policy": state.policy,
        "topics": list(view.topics),
        "shared": view.shared,
        "deleted": deleted,
        "status": DELETED if deleted else LIVE,
        "updated_at": state.updated_at,
        "content": view.content,
        "state": base64.b64encode(encode_state(state)).decode("ascii"),
    }


def state_from_payload(payload: dict[str, Any]) -> MemoryState:
    """The state a memory point holds (see :func:`memory_payload`)."""
    return decode_state(base64.b64decode(payload["state"]))


def dense_vector(state: MemoryState, vector_dim: int) -> list[float] | None:
    """The LWW winner's embedding if it has ``vector_dim`` numbers, else ``None``."""
    embedding = materialize(state).embedding
    if embedding is None or len(embedding) != vector_dim:
        return None
    return [float(x) for x in embedding]


def meta_payload(name: str, value: bytes) -> dict[str, Any]:
    """The payload of a metadata point (``status`` = ``meta``: never listed or counted)."""
    return {"status": META, "name": name, "value": base64.b64encode(value).decode("ascii")}


def meta_value(payload: dict[str, Any]) -> bytes:
    """The blob a metadata point holds."""
    return base64.b64decode(payload["value"])


def last_per_key(states: Sequence[MemoryState]) -> list[MemoryState]:
    """One state per key, the last one given winning (``put_many``'s contract)."""
    return list({s.key: s for s in states}.values())


def encode_page_token(next_point: str) -> str:
    """An opaque, URL-safe page token for the point id a page resumes at."""
    raw = uuid.UUID(next_point).bytes
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def decode_page_token(token: str) -> str:
    """The point id a page token resumes at; ``ValueError`` if it is not one of ours."""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        return str(uuid.UUID(bytes=raw))
    except (ValueError, binascii.Error) as exc:
        raise ValueError(f"invalid page token {token!r}") from exc


def validate_search(query: SearchQuery, vector_dim: int) -> None:
    """Refuse a search with nothing to rank by, or an embedding of the wrong size."""
    if not query.text and query.embedding is None:
        raise ValueError("a search needs text, an embedding, or both")
    if query.embedding is not None and len(query.embedding) != vector_dim:
        raise ValueError(
            f"the query embedding has {len(query.embedding)} dimensions, expected {vector_dim}"
        )
    if query.limit < 1:
        raise ValueError("limit must be at least 1")
