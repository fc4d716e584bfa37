"""In-memory twins of the gateway's ports, for tests, simulations and examples.

Each fake implements its port's ``Protocol`` with plain dicts and passes the
same contract suite as the real adapters.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from gateway.store import (
    ListQuery,
    SearchQuery,
    decode_page_token,
    dense_vector,
    encode_page_token,
    last_per_key,
    point_id,
    validate_search,
)
from gateway.text_rank import Corpus, bm25, mean_length, query_terms, rrf, words
from replication.state import MemoryState, materialize

__all__ = ["InMemoryStore"]


# --- MemoryStore: InMemoryStore ---------------------------------------------

_RRF_K = 60


def _cosine(a: Sequence[float], b: Sequence[float]) -> float:
    na = math.sqrt(sum(x * x for x in a))
    nb = math.sqrt(sum(x * x for x in b))
    if na == 0.0 or nb == 0.0:
        return 0.0
    return sum(x * y for x, y in zip(a, b, strict=True)) / (na * nb)


def _ranked(scores: dict[str, float]) -> list[tuple[str, float]]:
    """Best first; ties in point-id order so results are deterministic."""
    return sorted(scores.items(), key=lambda kv: (-kv[1], point_id(kv[0])))


class InMemoryStore:
    """A ``MemoryStore`` in a dict: BM25 text scoring, exact cosine, RRF for both.

    Pages follow point-id order and tokens are the same opaque next-point ids
    as the Qdrant adapters'. States are kept as given (they are frozen).
    """

    def __init__(self, vector_dim: int = 384) -> None:
        self._vector_dim = vector_dim
        self._states: dict[str, MemoryState] = {}
        self._meta: dict[str, bytes] = {}

    @property
    def vector_dim(self) -> int:
        """The dimension every stored embedding must have."""
        return self._vector_dim

    async def open(self) -> None:
        """Nothing to open."""

    async def close(self) -> None:
        """Nothing to release (the data stays, as on disk)."""

    async def get(self, key: str) -> MemoryState | None:
        """One memory's state, deleted ones included; ``None`` if unknown."""
        return self._states.get(key)

    async def get_many(self, keys: Sequence[str]) -> dict[str, MemoryState]:
        """The states of the keys that exist."""
        return {k: self._states[k] for k in keys if k in self._states}

    async def put_many(self, states: Sequence[MemoryState]) -> None:
        """Upsert states (the last state of a key wins)."""
        for state in last_per_key(states):
            self._states[state.key] = state

    async def list_page(self, query: ListQuery) -> tuple[list[MemoryState], str | None]:
        """One page of a tenant's states in point-id order, and the next page's token."""
        matching = [
            s
            for s in self._states.values()
            if s.tenant_id == query.tenant_id
            and (query.include_deleted or not s.deleted)
            and (query.user_ids is None or s.user_id in query.user_ids)
            and (query.kind is None or s.kind == query.kind)
            and (query.topic is None or query.topic in materialize(s).topics)
        ]
        return self._page(matching, query.offset, query.limit)

    async def search(self, query: SearchQuery) -> list[tuple[MemoryState, float]]:
        """Live memories ranked by BM25 over content, by cosine, or both fused (RRF)."""
        validate_search(query, self._vector_dim)
        candidates = {
            s.key: s
            for s in self._states.values()
            if s.tenant_id == query.tenant_id
            and not s.deleted
            and (query.user_ids is None or s.user_id in query.user_ids)
            and (query.kind is None or s.kind == query.kind)
            and (query.topics is None or set(query.topics) & set(materialize(s).topics))
        }
        rankings: list[list[tuple[str, float]]] = []
        if query.text:
            # The same ranking as the Edge adapter's, over exact corpus figures.
            terms = query_terms(query.text)
            contents = {k: materialize(s).content for k, s in candidates.items()}
            frequency = {t: sum(t in words(c) for c in contents.values()) for t in terms}
            corpus = Corpus(len(contents), frequency, mean_length(contents.values()))
            rankings.append(bm25(terms, contents, corpus))
        if query.embedding is not None:
            dense: dict[str, float] = {}
            for key, state in candidates.items():
                vector = dense_vector(state, self._vector_dim)
                if vector is not None:
                    dense[key] = _cosine(query.embedding, vector)
            rankings.append(_ranked(dense))
        if len(rankings) == 1:
            ranked = rankings[0]
        else:
            ranked = rrf([[k for k, _ in r] for r in rankings], _RRF_K)
        return [(candidates[k], score) for k, score in ranked[: query.limit]]

    async def scan(self, offset: str | None, limit: int) -> tuple[list[MemoryState], str | None]:
        """Every state, in point-id order."""
        return self._page(list(self._states.values()), offset, limit)

    async def maintain(self) -> None:
        """Nothing to do in memory."""

    async def count(self) -> int:
        """How many memories (deleted included) the store holds."""
        return len(self._states)

    async def get_meta(self, name: str) -> bytes | None:
        """A named metadata blob, or ``None``."""
        return self._meta.get(name)

    async def put_meta(self, name: str, value: bytes) -> None:
        """Store a named metadata blob."""
        self._meta[name] = value

    def _page(
        self, states: list[MemoryState], token: str | None, limit: int
    ) -> tuple[list[MemoryState], str | None]:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        start = None if token is None else decode_page_token(token)
        ordered = sorted(((point_id(s.key), s) for s in states), key=lambda ps: ps[0])
        if start is not None:
            ordered = [(pid, s) for pid, s in ordered if pid >= start]
        page = ordered[: limit + 1]
        next_token = encode_page_token(page[limit][0]) if len(page) > limit else None
        return [s for _, s in page[:limit]], next_token
