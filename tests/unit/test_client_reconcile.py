"""After a resync's full snapshot, the cache drops what the snapshot no longer lists."""

from __future__ import annotations

from collections.abc import Sequence

from gateway.client import LocalCache
from gateway.client.reconcile import drop_missing, on_channels
from replication import merge
from replication.dvv import EMPTY, Dot
from replication.events import make_event
from replication.schema import EventType, MemoryBody, Source
from replication.state import MemoryState

ALICE = "user:alice:memories"


def _state(
    memory_id: str,
    *,
    user: str = "alice",
    topics: Sequence[str] = (),
    shared: bool = False,
    deleted: bool = False,
) -> MemoryState:
    body = MemoryBody(
        id=memory_id,
        tenant_id="t",
        user_id=user,
        kind="fact",
        policy="lww",
        content=memory_id,
        topics=tuple(topics),
        shared=shared,
    )

    def event(kind: EventType, counter: int, state: MemoryState | None) -> MemoryState:
        e = make_event(
            event_id=f"{memory_id}-{counter}",
            event_type=kind,
            memory=body,
            source=Source(agent_id="a"),
            context=EMPTY if state is None else state.clock,
            dot=Dot("r1", counter),
            seq=counter,
            timestamp=(1000 + counter) << 16,
        )
        return merge.apply(state, e)

    state = event("create", 1, None)
    return event("delete", 2, state) if deleted else state


def _cache(*states: MemoryState) -> LocalCache:
    cache = LocalCache()
    for s in states:
        cache.join(s)
    return cache


def test_a_live_memory_on_the_channels_that_the_snapshot_did_not_list_is_dropped() -> None:
    kept, gone = _state("kept"), _state("gone")
    cache = _cache(kept, gone)
    dropped = drop_missing(cache, [ALICE], {"t/kept"})
    assert dropped == [gone]
    assert "t/gone" not in cache and cache.view("gone") is None
    assert cache.state("t/kept") == kept


def test_tombstones_and_memories_on_other_channels_are_kept() -> None:
    tomb = _state("tomb", deleted=True)
    bobs = _state("bobs", user="bob")
    cache = _cache(tomb, bobs)
    assert drop_missing(cache, [ALICE], set()) == []
    assert len(cache) == 2


def test_topic_and_tenant_channels_count_memories_by_their_cached_topics_and_sharing() -> None:
    tea = _state("tea", user="bob", topics=["drinks"])
    shared = _state("shared", user="bob", shared=True)
    private = _state("private", user="bob")
    cache = _cache(tea, shared, private)
    assert on_channels(tea, {"topic:drinks:updates"})
    assert not on_channels(tea, {"topic:food:updates"})
    assert drop_missing(cache, ["topic:drinks:updates", "tenant:t:shared"], set()) == [tea, shared]
    assert list(cache.keys()) == ["t/private"]


def test_the_system_channel_never_counts_a_memory_as_gone() -> None:
    cache = _cache(_state("m"))
    assert drop_missing(cache, ["system:global"], set()) == []
    assert len(cache) == 1


def test_discard_forgets_one_memory_without_counting_an_eviction() -> None:
    m = _state("m")
    cache = _cache(m, _state("n"))
    assert cache.discard("m") == m  # by bare id
    assert cache.discard("t/m") is None
    assert "m" not in cache and cache.evictions == 0
    assert list(cache.keys()) == ["t/n"]


def test_with_a_holder_a_missing_memory_another_holder_has_is_kept() -> None:
    """A resync of one subscription releases; the user channel's live subscription keeps it."""
    mine, theirs = frozenset({"tenant:t:shared"}), frozenset({ALICE})
    held, alone = _state("held", shared=True), _state("alone", shared=True)
    cache = LocalCache()
    cache.join(held, mine)
    cache.join(held, theirs)
    cache.join(alone, mine)
    dropped = drop_missing(cache, ["tenant:t:shared"], set(), mine)
    assert dropped == [alone] and "t/alone" not in cache
    assert cache.state("t/held") == held and cache.holders("t/held") == {theirs}
