"""The client's LocalCache folds events and states exactly like the gateways do."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.client import LocalCache
from replication.digest import combine, state_digest
from replication.dvv import EMPTY
from replication.merge import join
from replication.schema import MemoryEvent
from replication.state import MemoryState, materialize
from replication.testing import Replica


def _history() -> tuple[list[MemoryEvent], dict[str, MemoryState]]:
    """Two replicas writing concurrently to memories of every policy, and the server fold."""
    a, b = Replica("a", "us-east"), Replica("b", "eu-west")
    events: list[MemoryEvent | None] = [
        a.write("fact-1", "fact", "create", content="Alice likes tea"),
        a.write("list-1", "list", "create", items=["milk"]),
        a.write("count-1", "counter", "create", increment=1),
        a.write("pref-1", "preference", "create", policy="surface", content="tea"),
    ]
    for e in list(events):
        assert e is not None
        b.receive(e)
    events += [
        a.write("fact-1", "fact", "update", content="Alice prefers tea over coffee"),
        b.write("fact-1", "fact", "update", content="Alice prefers coffee"),
        a.write("list-1", "list", "add", items=["eggs"]),
        b.write("list-1", "list", "remove", items=["milk"]),
        a.write("count-1", "counter", "increment", increment=2),
        b.write("count-1", "counter", "increment", increment=-5),
        a.write("count-1", "counter", "increment", increment=7),
        b.write("pref-1", "preference", "update", content="green tea", context=EMPTY),
        a.write("gone-1", "fact", "create", content="temporary"),
        a.write("gone-1", "fact", "delete"),
    ]
    history = [e for e in events if e is not None]
    server = Replica("server")
    for e in history:
        server.receive(e)
    return history, server.states


HISTORY, SERVER = _history()


def _server_digest() -> bytes:
    return combine((k, state_digest(s)) for k, s in SERVER.items()).root


@settings(max_examples=60, deadline=None)
@given(
    order=st.permutations(range(len(HISTORY))),
    dups=st.lists(st.integers(0, len(HISTORY) - 1), max_size=8),
)
def test_any_delivery_order_with_duplicates_gives_the_server_digest(
    order: list[int], dups: list[int]
) -> None:
    cache = LocalCache()
    for i in [*order, *dups]:
        cache.apply(HISTORY[i])
    assert cache.digest().root == _server_digest()
    assert cache.digest().count == len(SERVER)
    for key, state in SERVER.items():
        assert cache.state(key) == state


def test_a_duplicate_event_reports_no_change() -> None:
    cache = LocalCache()
    assert cache.apply(HISTORY[0]) is True
    before = cache.digest()
    assert cache.apply(HISTORY[0]) is False
    assert cache.digest() == before


def test_views_materialize_like_the_server() -> None:
    cache = LocalCache()
    for e in HISTORY:
        cache.apply(e)
    view = cache.view("fact-1")
    assert view == materialize(SERVER["t1/fact-1"])
    assert view is not None
    assert view.content in ("Alice prefers tea over coffee", "Alice prefers coffee")
    assert len(view.conflicts) == 1  # the concurrent loser is kept, not dropped
    counter = cache.view("t1/count-1")
    assert counter is not None
    assert counter.value == 1 + 2 - 5 + 7


def test_views_hide_tombstones_unless_asked() -> None:
    cache = LocalCache()
    for e in HISTORY:
        cache.apply(e)
    ids = {v.id for v in cache.views()}
    assert "gone-1" not in ids
    assert "gone-1" in {v.id for v in cache.views(include_deleted=True)}
    gone = cache.view("gone-1")
    assert gone is not None
    assert gone.deleted


def test_joining_partial_states_equals_applying_every_event() -> None:
    left, right = Replica("left"), Replica("right")
    for i, e in enumerate(HISTORY):
        (left if i % 2 else right).receive(e)
    cache = LocalCache()
    for state in (*left.states.values(), *right.states.values()):
        cache.join(state)
    assert cache.digest().root == _server_digest()


def test_join_is_idempotent_and_commutes_with_apply() -> None:
    applied, joined = LocalCache(), LocalCache()
    for e in HISTORY:
        applied.apply(e)
    for state in SERVER.values():
        assert joined.join(state) is True
        assert joined.join(state) is False
    half = len(HISTORY) // 2
    mixed = LocalCache()
    for e in HISTORY[:half]:
        mixed.apply(e)
    for state in SERVER.values():
        mixed.join(state)
    for e in HISTORY[half:]:
        assert mixed.apply(e) is False
    assert applied.digest() == joined.digest() == mixed.digest()


def test_join_with_a_stale_state_never_regresses() -> None:
    cache = LocalCache()
    for state in SERVER.values():
        cache.join(state)
    r = Replica("old")
    r.receive(HISTORY[0])
    stale = r.states["t1/fact-1"]
    assert cache.join(stale) is False
    assert cache.state("fact-1") == join(SERVER["t1/fact-1"], stale) == SERVER["t1/fact-1"]


def test_the_cache_never_holds_more_than_max_entries() -> None:
    r = Replica("r1")
    cache = LocalCache(max_entries=3)
    for i in range(10):
        e = r.write(f"m{i}", "fact", "create", content=str(i))
        assert e is not None
        cache.apply(e)
        assert len(cache) <= 3
    assert list(cache.keys()) == ["t1/m7", "t1/m8", "t1/m9"]
    assert cache.evictions == 7
    assert cache.view("m0") is None
    assert "m0" not in cache


def test_reading_a_memory_keeps_it_from_eviction() -> None:
    r = Replica("r1")
    cache = LocalCache(max_entries=2)
    for mid in ("m1", "m2"):
        e = r.write(mid, "fact", "create", content=mid)
        assert e is not None
        cache.apply(e)
    assert cache.view("m1") is not None
    e = r.write("m3", "fact", "create", content="m3")
    assert e is not None
    cache.apply(e)
    assert "m1" in cache
    assert "m2" not in cache


def test_an_evicted_memory_comes_back_partial_until_a_state_is_joined() -> None:
    r = Replica("r1")
    cache = LocalCache(max_entries=1)
    first = r.write("c", "counter", "create", increment=5)
    assert first is not None
    cache.apply(first)
    assert cache.is_complete("c")
    other = r.write("x", "fact", "create", content="x")
    assert other is not None
    cache.apply(other)  # evicts "c"
    later = r.write("c", "counter", "increment", increment=1)
    assert later is not None
    cache.apply(later)  # evicts "x"; "c" restarts from one event
    assert not cache.is_complete("c")
    partial = cache.view("c")
    assert partial is not None
    assert partial.value != 6
    cache.join(r.states["t1/c"])
    assert cache.is_complete("c")
    full = cache.view("c")
    assert full is not None
    assert full.value == 6


def test_a_bare_id_shared_by_two_tenants_is_ambiguous() -> None:
    r = Replica("r1")
    cache = LocalCache()
    for tenant in ("t1", "t2"):
        e = r.write("same", "fact", "create", tenant=tenant, content=tenant)
        assert e is not None
        cache.apply(e)
    with pytest.raises(KeyError):
        cache.view("same")
    view = cache.view("t2/same")
    assert view is not None
    assert view.content == "t2"


def test_max_entries_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_entries"):
        LocalCache(max_entries=0)


# -- holders: who put a memory in the cache -------------------------------------------

MINE = frozenset({"user:u1:memories"})
SHARED = frozenset({"tenant:t1:shared"})


def _created(r: Replica, memory_id: str) -> MemoryEvent:
    e = r.write(memory_id, "fact", "create", content=memory_id)
    assert e is not None
    return e


def test_a_memory_released_by_one_of_two_holders_is_kept() -> None:
    r = Replica("r1")
    cache = LocalCache()
    e = _created(r, "m")
    assert cache.apply(e, MINE) is True
    assert cache.apply(e, SHARED) is False  # a duplicate, held all the same
    assert cache.holders("m") == {MINE, SHARED}
    assert cache.release("t1/m", SHARED) is None
    assert "m" in cache
    assert cache.holders("t1/m") == {MINE}


def test_a_memory_released_by_every_holder_is_discarded() -> None:
    r = Replica("r1")
    cache = LocalCache()
    e = _created(r, "m")
    cache.apply(e, MINE)
    cache.join(r.states["t1/m"], SHARED)
    assert cache.release("t1/m", MINE) is None
    dropped = cache.release("t1/m", SHARED)
    assert dropped == r.states["t1/m"]
    assert "m" not in cache and cache.view("m") is None
    assert cache.holders("t1/m") == frozenset()
    assert cache.release("t1/m", SHARED) is None  # not held: nothing to drop


def test_releasing_a_holder_that_never_held_it_keeps_the_others() -> None:
    r = Replica("r1")
    cache = LocalCache()
    cache.apply(_created(r, "m"), MINE)
    assert cache.release("t1/m", SHARED) is None
    assert cache.holders("m") == {MINE}


def test_eviction_and_discard_forget_the_holders() -> None:
    r = Replica("r1")
    cache = LocalCache(max_entries=1)
    first = _created(r, "m")
    cache.apply(first, MINE)
    cache.apply(_created(r, "x"), MINE)  # evicts "m"
    assert cache.holders("t1/m") == frozenset()
    later = r.write("m", "fact", "update", content="again")
    assert later is not None
    cache.apply(later, SHARED)  # "m" comes back with the holder that brought it
    assert cache.holders("m") == {SHARED}
    assert cache.release("t1/m", SHARED) is not None  # MINE was forgotten with the entry
    cache.join(r.states["t1/m"], MINE)
    assert cache.discard("m") is not None
    cache.join(r.states["t1/m"])
    assert cache.holders("m") == frozenset()
    cache.clear()
    assert cache.holders("m") == frozenset()


def test_apply_and_join_without_a_holder_track_nothing_and_a_release_drops() -> None:
    r = Replica("r1")
    cache = LocalCache()
    e = _created(r, "m")
    assert cache.apply(e) is True
    assert cache.join(r.states["t1/m"]) is False
    assert cache.holders("m") == frozenset()
    assert cache.view("m") is not None
    assert cache.release("t1/m", MINE) == r.states["t1/m"]
    assert "m" not in cache


def test_a_forgotten_holder_keeps_the_memory_until_someone_releases_it() -> None:
    """A subscription ended: what only it held stays, and the next release drops it."""
    r = Replica("r1")
    cache = LocalCache()
    only, both = _created(r, "only"), _created(r, "both")
    cache.apply(only, MINE)
    cache.apply(both, MINE)
    cache.apply(both, SHARED)
    cache.forget_holder(MINE)
    assert "only" in cache and cache.holders("only") == frozenset()
    assert cache.holders("both") == {SHARED}
    assert cache.release("t1/only", SHARED) is not None  # no holder left: dropped
    assert cache.release("t1/both", SHARED) is not None
    assert len(cache) == 0


def test_a_contested_memory_is_held_but_never_shown() -> None:
    mine = Replica("r1").write("x", "fact", "create", user="u1", content="mine")
    theirs = Replica("r2").write("x", "fact", "create", user="u2", content="theirs")
    assert mine is not None and theirs is not None
    cache = LocalCache()
    cache.apply(mine)
    assert cache.view("t1/x") is not None
    cache.apply(theirs)
    state = cache.state("t1/x")
    assert state is not None and state.contested  # held, as the server holds it ...
    assert cache.view("t1/x") is None and cache.views() == []  # ... and shown to no one
