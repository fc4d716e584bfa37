"""Merging events, one scenario per rule of DESIGN §3."""

from __future__ import annotations

import msgspec

from replication.digest import state_digest
from replication.dvv import EMPTY
from replication.merge import apply, apply_all, join
from replication.state import MemoryState, decode_state, encode_state, materialize
from replication.testing import Replica


def _pair() -> tuple[Replica, Replica]:
    a, b = Replica("a", "us-east"), Replica("b", "eu-west")
    return a, b


def _sync(*replicas: Replica) -> None:
    """Every replica receives every other replica's states (full join)."""
    for r in replicas:
        for other in replicas:
            for key, state in other.states.items():
                mine = r.states.get(key)
                r.states[key] = state if mine is None else join(mine, state)


def _state(r: Replica, mid: str) -> MemoryState:
    return r.states[f"t1/{mid}"]


def test_causally_later_write_supersedes() -> None:
    a, _ = _pair()
    a.write("f", "fact", "create", content="v1")
    a.write("f", "fact", "update", content="v2")
    view = materialize(_state(a, "f"))
    assert view.content == "v2"
    assert view.conflicts == ()


def test_lww_picks_the_highest_timestamp_and_logs_the_loser() -> None:
    a, b = _pair()
    create = a.write("f", "fact", "create", content="v0")
    assert create is not None
    b.receive(create)
    a.wall_ms += 5
    b.wall_ms += 10
    a.write("f", "fact", "update", content="from-a")
    b.write("f", "fact", "update", content="from-b")
    _sync(a, b)
    for r in (a, b):
        view = materialize(_state(r, "f"))
        assert view.content == "from-b"
        assert [c.content for c in view.conflicts] == ["from-a"]
    assert state_digest(_state(a, "f")) == state_digest(_state(b, "f"))


def test_a_write_that_saw_the_conflict_resolves_it() -> None:
    a, b = _pair()
    create = a.write("f", "fact", "create", content="v0")
    assert create is not None
    b.receive(create)
    a.write("f", "fact", "update", content="x")
    b.write("f", "fact", "update", content="y")
    _sync(a, b)
    a.write("f", "fact", "update", content="z")
    view = materialize(_state(a, "f"))
    assert (view.content, view.conflicts) == ("z", ())


def test_surface_keeps_every_concurrent_sibling() -> None:
    a, b = _pair()
    create = a.write("p", "preference", "create", policy="surface", content="tea")
    assert create is not None
    b.receive(create)
    a.write("p", "preference", "update", content="coffee")
    b.write("p", "preference", "update", content="water")
    _sync(a, b)
    view = materialize(_state(a, "p"))
    assert sorted(s.content for s in view.siblings) == ["coffee", "water"]
    assert view.content == view.siblings[0].content


def test_blind_surface_write_becomes_a_sibling() -> None:
    a, _ = _pair()
    a.write("p", "preference", "create", policy="surface", content="tea")
    a.write("p", "preference", "update", content="milk", context=EMPTY)
    assert len(materialize(_state(a, "p")).siblings) == 2


def test_or_set_concurrent_add_wins_over_remove() -> None:
    a, b = _pair()
    create = a.write("l", "list", "create", items=["milk"])
    assert create is not None
    b.receive(create)
    a.write("l", "list", "remove", items=["milk"])
    b.write("l", "list", "add", items=["milk", "eggs"])
    _sync(a, b)
    assert set(materialize(_state(a, "l")).items) == {"milk", "eggs"}


def test_or_set_remove_of_an_observed_item_sticks() -> None:
    a, b = _pair()
    create = a.write("l", "list", "create", items=["milk", "tea"])
    assert create is not None
    b.receive(create)
    rm = b.write("l", "list", "remove", items=["milk"])
    assert rm is not None
    a.receive(rm)
    a.receive(create)
    assert materialize(_state(a, "l")).items == ("tea",)


def test_counter_counts_each_dot_once_whatever_the_duplicates() -> None:
    a, b = _pair()
    events = [a.write("c", "counter", "create", increment=5)]
    events += [a.write("c", "counter", "increment", increment=i) for i in (3, -1, 10)]
    real = [e for e in events if e is not None]
    state = apply_all(None, [*real, *reversed(real), real[2], real[0]])
    assert state is not None
    assert materialize(state).value == 17
    for e in reversed(real):
        b.receive(e)
    assert materialize(_state(b, "c")).value == 17


def test_delete_hides_what_it_saw_and_keeps_concurrent_writes() -> None:
    a, b = _pair()
    create = a.write("f", "fact", "create", content="v0")
    assert create is not None
    b.receive(create)
    a.write("f", "fact", "delete")
    b.write("f", "fact", "update", content="concurrent")
    _sync(a, b)
    view = materialize(_state(a, "f"))
    assert not view.deleted
    assert view.content == "concurrent"


def test_deleted_memory_never_resurrects_on_replay() -> None:
    a, b = _pair()
    events = [
        a.write("f", "fact", "create", content="v0"),
        a.write("f", "fact", "update", content="v1"),
    ]
    delete = a.write("f", "fact", "delete")
    for e in [delete, *events, *events]:
        assert e is not None
        b.receive(e)
    assert materialize(_state(b, "f")).deleted
    assert materialize(_state(a, "f")).deleted


def test_applying_an_event_twice_changes_nothing() -> None:
    a, _ = _pair()
    e = a.write("l", "list", "create", items=["x"])
    assert e is not None
    once = apply(None, e)
    assert apply(once, e) is once


def test_state_encoding_is_canonical_and_round_trips() -> None:
    a, b = _pair()
    for r in (a, b):
        r.write("l", "list", "create", items=["x", "y"], tenant="t1")
    _sync(a, b)
    sa, sb = _state(a, "l"), _state(b, "l")
    assert encode_state(sa) == encode_state(sb)
    assert decode_state(encode_state(sa)) == sa


def test_concurrent_creates_agree_on_identity() -> None:
    a, b = _pair()
    a.write("x", "fact", "create", content="a", user="u1")
    b.write("x", "fact", "create", content="b", user="u2")
    _sync(a, b)
    assert _state(a, "x").user_id == _state(b, "x").user_id
    # Two owners' versions in one state: contested on both sides, whatever the order.
    assert _state(a, "x").contested and _state(b, "x").contested
    assert _state(a, "x") == _state(b, "x")


def test_a_contested_state_stays_contested_and_encodes_every_field() -> None:
    a, b = _pair()
    mine = a.write("x", "fact", "create", content="a", user="u1")
    theirs = b.write("x", "fact", "create", content="b", user="u2")
    more = a.write("x", "fact", "update", content="a2", user="u1")
    assert mine is not None and theirs is not None and more is not None
    assert not apply(apply(None, mine), more).contested  # one owner: never contested
    contested = apply(apply(None, mine), theirs)
    assert contested.contested and apply(contested, more).contested
    assert join(apply(None, more), contested).contested
    assert decode_state(encode_state(contested)) == contested
    assert state_digest(contested) != state_digest(
        msgspec.structs.replace(contested, contested=False)
    )


def _without_system(state: MemoryState, *, keep: tuple[str, ...] = ()) -> bytes:
    """``state`` encoded by a struct that has every field but ``system`` and
    ``contested`` (as before them), or but those not in ``keep``."""
    fields = [
        (f.name, f.type, f.default) if f.default is not msgspec.NODEFAULT else (f.name, f.type)
        for f in msgspec.structs.fields(MemoryState)
        if f.name not in ("system", "contested") or f.name in keep
    ]
    legacy = msgspec.defstruct("LegacyState", fields, kw_only=True, frozen=True)
    values = {f: getattr(state, f) for f in legacy.__struct_fields__}
    return msgspec.msgpack.Encoder(order="deterministic").encode(legacy(**values))


def test_a_state_that_is_not_a_system_memory_encodes_as_before_the_flag() -> None:
    a, b = _pair()
    e = a.write("l", "list", "create", items=["x", "y"])
    b.write("c", "counter", "create", increment=3)
    _sync(a, b)
    assert e is not None
    for state in (*a.states.values(), apply(None, e)):
        assert not state.system
        assert encode_state(state) == _without_system(state)  # same bytes, same digest
        assert decode_state(_without_system(state)) == state
    flagged = msgspec.structs.replace(_state(a, "l"), system=True)
    assert decode_state(encode_state(flagged)) == flagged
    assert state_digest(flagged) != state_digest(_state(a, "l"))
    # A system memory encodes as it did before ``contested`` came.
    assert encode_state(flagged) == _without_system(flagged, keep=("system",))


def test_a_system_memory_stays_one_through_every_merge() -> None:
    a, b = _pair()
    made = a.write("s", "fact", "create", content="notice")
    assert made is not None
    made = msgspec.structs.replace(made, system=True)
    created = apply(None, made)
    assert created.system
    # A later event that does not carry the flag (an older writer) keeps it,
    # in either order, and a state joined with one that lacks it keeps it.
    plain = b.write("s", "fact", "create", content="other")
    assert plain is not None
    assert apply(created, plain).system
    assert apply(apply(None, plain), made).system
    assert join(apply(None, plain), created).system
    assert join(created, apply(None, plain)).system
