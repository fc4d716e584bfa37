"""The ``MemoryStore`` contract, run against every adapter and the in-memory twin.

Qdrant Edge on a temp dir, the qdrant-client adapter on local mode on a temp
dir, and :class:`gateway.testing.InMemoryStore` must all behave the same.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import msgspec
import pytest

from gateway.store import ListQuery, MemoryStore, SearchQuery, StoreError
from gateway.store_edge import QdrantEdgeStore
from gateway.store_process import ProcessStore
from gateway.store_server import QdrantServerStore
from gateway.testing import InMemoryStore
from replication.dvv import EMPTY
from replication.merge import join
from replication.state import MemoryState
from replication.testing import Replica

DIM = 8
StoreFactory = Callable[[], MemoryStore]


def _factory(kind: str, path: Path) -> StoreFactory:
    if kind == "edge":
        return lambda: QdrantEdgeStore(path / "edge", vector_dim=DIM)
    if kind == "edge-process":
        return lambda: ProcessStore(path / "edge", vector_dim=DIM)
    if kind == "server":
        return lambda: QdrantServerStore.from_path(path / "local", vector_dim=DIM)
    return lambda: InMemoryStore(vector_dim=DIM)


@pytest.fixture(params=["edge", "edge-process", "server", "memory"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[MemoryStore]:
    """An open, empty store of each kind, closed at teardown."""
    s = _factory(request.param, tmp_path)()
    await s.open()
    try:
        yield s
    finally:
        await s.close()


def _state(
    memory_id: str,
    *,
    tenant: str = "t1",
    user: str = "u1",
    kind: str = "fact",
    content: str = "",
    embedding: tuple[float, ...] | None = None,
    topics: tuple[str, ...] = (),
    deleted: bool = False,
) -> MemoryState:
    """A state written through a replica, with the winner's embedding and topics set."""
    r = Replica("r1")
    r.write(memory_id, kind, "create", tenant=tenant, user=user, content=content)
    if deleted:
        r.write(memory_id, kind, "delete", tenant=tenant)
    state = r.states[f"{tenant}/{memory_id}"]
    versions = tuple(
        msgspec.structs.replace(v, embedding=embedding, topics=topics) for v in state.versions
    )
    return msgspec.structs.replace(state, versions=versions)


def _unit(i: int) -> tuple[float, ...]:
    return tuple(1.0 if j == i else 0.0 for j in range(DIM))


def _keys(states: list[MemoryState]) -> list[str]:
    return [s.key for s in states]


def _rich_states() -> list[MemoryState]:
    """States of every policy, with items, counts, conflicts and a delete."""
    a, b = Replica("ra"), Replica("rb")
    a.write("list-1", "list", "create", items=["x", "y"])
    a.write("list-1", "list", "remove", items=["x"])
    a.write("count-1", "counter", "create", increment=3)
    a.write("count-1", "counter", "increment", increment=-1)
    a.write("pref-1", "preference", "create", content="dark mode")
    fact = a.write("fact-1", "fact", "create", content="base")
    assert fact is not None
    b.receive(fact)
    a.write("fact-1", "fact", "update", content="from a", context=EMPTY)
    b.write("fact-1", "fact", "update", content="from b", context=EMPTY)
    merged = join(a.states["t1/fact-1"], b.states["t1/fact-1"])
    a.write("gone-1", "fact", "create", content="bye")
    a.write("gone-1", "fact", "delete")
    return [*(s for k, s in a.states.items() if k != "t1/fact-1"), merged]


async def _list_all(store: MemoryStore, query: ListQuery) -> list[MemoryState]:
    out: list[MemoryState] = []
    offset = None
    while True:
        page, offset = await store.list_page(msgspec.structs.replace(query, offset=offset))
        out += page
        if offset is None:
            return out


# --- get / put ---


async def test_a_put_state_reads_back_equal(store: MemoryStore) -> None:
    r = Replica("r1")
    r.write("m1", "fact", "create", content="hello")
    state = r.states["t1/m1"]
    await store.put_many([state])
    assert await store.get("t1/m1") == state


async def test_states_of_every_policy_round_trip_exactly(store: MemoryStore) -> None:
    states = _rich_states()
    await store.put_many(states)
    got = await store.get_many([s.key for s in states])
    assert got == {s.key: s for s in states}


async def test_get_of_an_unknown_key_is_none(store: MemoryStore) -> None:
    assert await store.get("t1/nope") is None


async def test_get_many_skips_missing_keys(store: MemoryStore) -> None:
    a, b = _state("a"), _state("b")
    await store.put_many([a, b])
    assert await store.get_many(["t1/a", "t1/missing", "t1/b"]) == {"t1/a": a, "t1/b": b}
    assert await store.get_many([]) == {}


async def test_a_put_overwrites_and_the_last_state_of_a_key_wins(store: MemoryStore) -> None:
    await store.put_many([_state("m", content="one")])
    newer = _state("m", content="three")
    await store.put_many([_state("m", content="two"), newer])
    assert await store.get("t1/m") == newer
    assert await store.count() == 1


async def test_an_embedding_of_the_wrong_size_is_stored_without_a_vector(
    store: MemoryStore,
) -> None:
    odd = _state("odd", content="odd vector", embedding=(1.0, 2.0))
    await store.put_many([odd])
    assert await store.get("t1/odd") == odd
    assert await store.search(SearchQuery(tenant_id="t1", embedding=_unit(0))) == []
    assert _keys([s for s, _ in await store.search(SearchQuery(tenant_id="t1", text="odd"))]) == [
        "t1/odd"
    ]


# --- deletes ---


async def test_deleted_states_are_readable_but_not_listed_or_searched(store: MemoryStore) -> None:
    live = _state("live", content="green tea", embedding=_unit(0))
    gone = _state("gone", content="green tea", embedding=_unit(0), deleted=True)
    assert gone.deleted
    await store.put_many([live, gone])
    assert await store.get("t1/gone") == gone
    page, _ = await store.list_page(ListQuery(tenant_id="t1"))
    assert _keys(page) == ["t1/live"]
    page, _ = await store.list_page(ListQuery(tenant_id="t1", include_deleted=True))
    assert sorted(_keys(page)) == ["t1/gone", "t1/live"]
    for query in (
        SearchQuery(tenant_id="t1", text="green tea"),
        SearchQuery(tenant_id="t1", embedding=_unit(0)),
        SearchQuery(tenant_id="t1", text="green tea", embedding=_unit(0)),
    ):
        assert _keys([s for s, _ in await store.search(query)]) == ["t1/live"]
    assert await store.count() == 2


# --- list ---


async def _seed_listing(store: MemoryStore) -> None:
    await store.put_many(
        [
            _state("a", user="u1", kind="fact", topics=("food", "tea")),
            _state("b", user="u2", kind="preference", topics=("food",)),
            _state("c", user="u3", kind="fact"),
            _state("d", user="u1", kind="fact", topics=("work",)),
            _state("z", tenant="t2", user="u1", kind="fact", topics=("food",)),
        ]
    )


async def test_list_never_crosses_tenants(store: MemoryStore) -> None:
    await _seed_listing(store)
    t1 = await _list_all(store, ListQuery(tenant_id="t1", include_deleted=True))
    t2 = await _list_all(store, ListQuery(tenant_id="t2", include_deleted=True))
    assert sorted(_keys(t1)) == ["t1/a", "t1/b", "t1/c", "t1/d"]
    assert _keys(t2) == ["t2/z"]
    assert await _list_all(store, ListQuery(tenant_id="t3")) == []


async def test_list_narrows_by_users(store: MemoryStore) -> None:
    await _seed_listing(store)
    got = await _list_all(store, ListQuery(tenant_id="t1", user_ids=("u1", "u3")))
    assert sorted(_keys(got)) == ["t1/a", "t1/c", "t1/d"]
    assert await _list_all(store, ListQuery(tenant_id="t1", user_ids=())) == []


async def test_list_narrows_by_topic_and_kind(store: MemoryStore) -> None:
    await _seed_listing(store)
    food = await _list_all(store, ListQuery(tenant_id="t1", topic="food"))
    assert sorted(_keys(food)) == ["t1/a", "t1/b"]
    facts = await _list_all(store, ListQuery(tenant_id="t1", kind="fact"))
    assert sorted(_keys(facts)) == ["t1/a", "t1/c", "t1/d"]
    both = await _list_all(store, ListQuery(tenant_id="t1", kind="fact", topic="food"))
    assert _keys(both) == ["t1/a"]


async def test_pages_cover_every_item_exactly_once_in_a_stable_order(store: MemoryStore) -> None:
    states = [_state(f"m{i:02d}", user=f"u{i % 3}") for i in range(23)]
    await store.put_many(states)
    await store.put_many([_state("other", tenant="t2")])
    query = ListQuery(tenant_id="t1", limit=5)
    pages: list[list[str]] = []
    offset = None
    while True:
        page, offset = await store.list_page(msgspec.structs.replace(query, offset=offset))
        pages.append(_keys(page))
        if offset is None:
            break
    assert [len(p) for p in pages] == [5, 5, 5, 5, 3]
    flat = [k for p in pages for k in p]
    assert sorted(flat) == sorted(s.key for s in states)
    assert flat == _keys(await _list_all(store, query))
    assert flat == _keys(await _list_all(store, msgspec.structs.replace(query, limit=100)))


async def test_a_bad_page_token_is_refused(store: MemoryStore) -> None:
    with pytest.raises(ValueError, match="page token"):
        await store.list_page(ListQuery(tenant_id="t1", offset="not a token"))


# --- search ---


async def _seed_search(store: MemoryStore) -> None:
    await store.put_many(
        [
            _state("tea", content="Green tea, green TEA, tea!", embedding=_unit(0)),
            _state("coffee", content="coffee and a little tea", embedding=_unit(1)),
            _state("near", content="nothing to drink", embedding=(0.9, 0.1, 0, 0, 0, 0, 0, 0)),
            _state("bare", content="plain green tea note"),
            _state(
                "u2tea", user="u2", kind="preference", content="tea tea tea", embedding=_unit(0)
            ),
            _state("other", tenant="t2", content="green tea", embedding=_unit(0)),
        ]
    )


async def test_text_search_ranks_the_better_match_first(store: MemoryStore) -> None:
    await _seed_search(store)
    hits = await store.search(SearchQuery(tenant_id="t1", text="green tea", user_ids=("u1",)))
    keys = _keys([s for s, _ in hits])
    assert keys[0] == "t1/tea"
    assert set(keys) == {"t1/tea", "t1/coffee", "t1/bare"}
    scores = [score for _, score in hits]
    assert scores == sorted(scores, reverse=True)
    assert await store.search(SearchQuery(tenant_id="t1", text="zebra")) == []


async def test_dense_search_ranks_the_nearest_first(store: MemoryStore) -> None:
    await _seed_search(store)
    hits = await store.search(
        SearchQuery(tenant_id="t1", embedding=_unit(1), user_ids=("u1",), limit=2)
    )
    assert _keys([s for s, _ in hits]) == ["t1/coffee", "t1/near"]
    assert hits[0][1] == pytest.approx(1.0)


async def test_states_without_an_embedding_are_found_by_text_only(store: MemoryStore) -> None:
    await _seed_search(store)
    dense = await store.search(SearchQuery(tenant_id="t1", embedding=_unit(0), limit=10))
    assert "t1/bare" not in _keys([s for s, _ in dense])
    assert len(dense) == 4
    text = await store.search(SearchQuery(tenant_id="t1", text="note"))
    assert _keys([s for s, _ in text]) == ["t1/bare"]


async def test_search_filters_by_tenant_user_kind_and_topics(store: MemoryStore) -> None:
    await _seed_search(store)
    await store.put_many([_state("topical", content="tea", topics=("drinks",))])
    t2 = await store.search(SearchQuery(tenant_id="t2", text="tea", embedding=_unit(0)))
    assert _keys([s for s, _ in t2]) == ["t2/other"]
    u2 = await store.search(SearchQuery(tenant_id="t1", text="tea", user_ids=("u2",)))
    assert _keys([s for s, _ in u2]) == ["t1/u2tea"]
    notes = await store.search(SearchQuery(tenant_id="t1", embedding=_unit(0), kind="preference"))
    assert _keys([s for s, _ in notes]) == ["t1/u2tea"]
    drinks = await store.search(SearchQuery(tenant_id="t1", text="tea", topics=("x", "drinks")))
    assert _keys([s for s, _ in drinks]) == ["t1/topical"]


async def test_hybrid_search_fuses_text_and_dense(store: MemoryStore) -> None:
    await _seed_search(store)
    hits = await store.search(
        SearchQuery(tenant_id="t1", text="green tea", embedding=_unit(0), user_ids=("u1",))
    )
    keys = _keys([s for s, _ in hits])
    assert keys[0] == "t1/tea"  # first in both rankings
    assert set(keys) == {"t1/tea", "t1/coffee", "t1/near", "t1/bare"}
    scores = [score for _, score in hits]
    assert scores == sorted(scores, reverse=True)


async def test_search_respects_the_limit(store: MemoryStore) -> None:
    await _seed_search(store)
    assert len(await store.search(SearchQuery(tenant_id="t1", text="tea", limit=2))) == 2


async def test_a_search_without_text_or_embedding_is_refused(store: MemoryStore) -> None:
    with pytest.raises(ValueError, match="text, an embedding"):
        await store.search(SearchQuery(tenant_id="t1"))
    with pytest.raises(ValueError, match="dimensions"):
        await store.search(SearchQuery(tenant_id="t1", embedding=(1.0, 0.0)))


# --- scan, count, meta ---


async def test_scan_pages_over_every_memory_but_no_metadata(store: MemoryStore) -> None:
    states = [_state(f"s{i}", tenant=f"t{i % 3}", deleted=i % 4 == 0) for i in range(11)]
    await store.put_many(states)
    await store.put_meta("watermark", b"\x00\x01")
    seen: list[str] = []
    offset = None
    while True:
        page, offset = await store.scan(offset, 4)
        assert len(page) <= 4
        seen += _keys(page)
        if offset is None:
            break
    assert sorted(seen) == sorted(s.key for s in states)


async def test_count_includes_deleted_memories_and_excludes_metadata(store: MemoryStore) -> None:
    assert await store.count() == 0
    await store.put_many([_state("a"), _state("b", deleted=True), _state("c", tenant="t2")])
    await store.put_meta("watermark", b"w")
    assert await store.count() == 3


async def test_meta_round_trips_and_overwrites(store: MemoryStore) -> None:
    assert await store.get_meta("watermark") is None
    await store.put_meta("watermark", b"\x00one")
    await store.put_meta("other", b"")
    await store.put_meta("watermark", b"\xfftwo")
    assert await store.get_meta("watermark") == b"\xfftwo"
    assert await store.get_meta("other") == b""
    assert await _list_all(store, ListQuery(tenant_id="t1", include_deleted=True)) == []


# --- durability (on-disk stores) ---


@pytest.mark.parametrize("kind", ["edge", "server"])
async def test_a_reopened_store_has_its_data(kind: str, tmp_path: Path) -> None:
    make = _factory(kind, tmp_path)
    states = [*_rich_states(), _state("v", content="green tea", embedding=_unit(2))]
    first = make()
    await first.open()
    try:
        await first.put_many(states)
        await first.put_meta("watermark", b"42")
    finally:
        await first.close()
    second = make()
    await second.open()
    try:
        assert await second.get_many([s.key for s in states]) == {s.key: s for s in states}
        assert await second.get_meta("watermark") == b"42"
        assert await second.count() == len(states)
        hits = await second.search(SearchQuery(tenant_id="t1", text="green", embedding=_unit(2)))
        assert _keys([s for s, _ in hits])[0] == "t1/v"
    finally:
        await second.close()


@pytest.mark.parametrize("kind", ["edge", "server"])
async def test_a_closed_store_raises_store_error(kind: str, tmp_path: Path) -> None:
    s = _factory(kind, tmp_path)()
    await s.open()
    await s.close()
    with pytest.raises(StoreError):
        await s.get("t1/a")


async def test_a_second_edge_store_on_the_same_path_is_a_store_error(tmp_path: Path) -> None:
    first = QdrantEdgeStore(tmp_path / "edge", vector_dim=DIM)
    await first.open()
    try:
        with pytest.raises(StoreError, match="qdrant edge"):
            await QdrantEdgeStore(tmp_path / "edge", vector_dim=DIM).open()
    finally:
        await first.close()


async def test_an_edge_store_drops_the_indexes_no_query_uses(tmp_path: Path) -> None:
    # Qdrant Edge's mutable integer index kept ~200 B per update of a point
    # (RSS grew without bound in the soak), and every payload index makes each
    # flush longer in proportion to the store, with the GIL held. No query
    # filters on updated_at, key or deleted: new stores do not index them and
    # older stores lose those indexes when opened.
    from qdrant_edge import EdgeShard, PayloadSchemaType, UpdateOperation

    store = QdrantEdgeStore(tmp_path / "edge", vector_dim=DIM)
    await store.open()
    await store.close()
    old = EdgeShard.load(str(tmp_path / "edge"), None)
    old.update(UpdateOperation.create_field_index("updated_at", PayloadSchemaType.Integer))
    old.update(UpdateOperation.create_field_index("key", PayloadSchemaType.Keyword))
    old.update(UpdateOperation.create_field_index("deleted", PayloadSchemaType.Bool))
    assert {"updated_at", "key", "deleted"} <= set(old.info().payload_schema)
    old.close()

    store = QdrantEdgeStore(tmp_path / "edge", vector_dim=DIM)
    await store.open()
    try:
        schema = await store._call("info", lambda s: s.info().payload_schema)
        assert not {"updated_at", "key", "deleted"} & set(schema)
        assert set(schema) == {"tenant_id", "user_id", "kind", "topics", "status", "content"}
        await _seed_search(store)
        hits = await store.search(SearchQuery(tenant_id="t1", text="tea", user_ids=("u2",)))
        assert _keys([s for s, _ in hits]) == ["t1/u2tea"]
    finally:
        await store.close()


async def test_an_edge_store_with_a_scoring_text_index_is_reindexed_unscored(
    tmp_path: Path,
) -> None:
    # A scoring (BM25) index on content made updates slower as the store grew;
    # ranking now happens at query time, and older stores lose the scoring.
    from qdrant_edge import EdgeShard, TextIndexParams, TokenizerType, UpdateOperation

    store = QdrantEdgeStore(tmp_path / "edge", vector_dim=DIM)
    await store.open()
    await _seed_search(store)
    await store.close()
    old = EdgeShard.load(str(tmp_path / "edge"), None)
    scored = TextIndexParams(tokenizer=TokenizerType.Word, lowercase=True, scoring=True)
    old.update(UpdateOperation.create_field_index("content", scored))
    assert old.info().payload_schema["content"].params.scoring is not None
    old.close()

    store = QdrantEdgeStore(tmp_path / "edge", vector_dim=DIM)
    await store.open()
    try:
        schema = await store._call("info", lambda s: s.info().payload_schema)
        assert schema["content"].params.scoring is None
        hits = await store.search(SearchQuery(tenant_id="t1", text="green tea", user_ids=("u1",)))
        assert _keys([s for s, _ in hits])[0] == "t1/tea"
    finally:
        await store.close()


async def test_edge_text_search_ranks_by_bm25_over_many_matches(tmp_path: Path) -> None:
    # More matches than the candidate cap: the memories holding every term are
    # read first, so the best match is found however many hold only one.
    from gateway import store_edge

    store = QdrantEdgeStore(tmp_path / "edge", vector_dim=DIM)
    await store.open()
    try:
        filler = [
            _state(f"f{i}", content=f"tea note {i}")
            for i in range(store_edge._TEXT_CANDIDATES + 50)
        ]
        await store.put_many([*filler, _state("best", content="green tea")])
        hits = await store.search(SearchQuery(tenant_id="t1", text="green tea", limit=3))
        assert _keys([s for s, _ in hits])[0] == "t1/best"
        assert len(hits) == 3
        scores = [score for _, score in hits]
        assert scores[0] > scores[1] >= scores[2] > 0
    finally:
        await store.close()


async def test_a_store_process_that_dies_fails_calls_with_a_store_error(tmp_path: Path) -> None:
    import os
    import signal

    store = ProcessStore(tmp_path / "edge", vector_dim=DIM)
    await store.open()
    try:
        await store.put_many([_state("a", content="tea")])
        assert store.pid is not None
        os.kill(store.pid, signal.SIGKILL)
        with pytest.raises(StoreError, match="store process"):
            for _ in range(100):  # until the end of the stream is seen
                await store.get("t1/a")
                await asyncio.sleep(0.02)
    finally:
        await store.close()
    reopened = ProcessStore(tmp_path / "edge", vector_dim=DIM)
    await reopened.open()
    try:
        state = await reopened.get("t1/a")
        assert state is not None, "an acknowledged put survives the child's death (its WAL)"
    finally:
        await reopened.close()


async def test_a_store_process_waits_for_the_previous_owner_to_release_the_shard(
    tmp_path: Path,
) -> None:
    # A gateway restarted at once can start its child while the old one still
    # closes the shard: the open waits for the lock instead of failing.
    holder = QdrantEdgeStore(tmp_path / "edge", vector_dim=DIM)
    await holder.open()
    await holder.put_many([_state("a", content="tea")])

    async def release_later() -> None:
        await asyncio.sleep(1.0)
        await holder.close()

    releasing = asyncio.create_task(release_later())
    store = ProcessStore(tmp_path / "edge", vector_dim=DIM)
    try:
        await store.open()
        assert releasing.done(), "the open returned while the shard was still held"
        assert await store.get("t1/a") is not None
    finally:
        await releasing
        await store.close()
