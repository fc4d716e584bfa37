"""What of a memory's state readers other than its owner see."""

from __future__ import annotations

import msgspec

from gateway.auth import Claims
from gateway.visibility import as_seen_by, for_others, hides_something
from replication.merge import apply
from replication.schema import MemoryEvent
from replication.state import MemoryState, materialize
from replication.testing import Replica


def _shared(e: MemoryEvent | None, shared: bool = True) -> MemoryEvent:
    assert e is not None
    return msgspec.structs.replace(e, memory=msgspec.structs.replace(e.memory, shared=shared))


def _rivals(*, system: bool = False, policy: str = "lww") -> MemoryState:
    """A shared version and a concurrent private one (the shared one later, so it wins)."""
    r = Replica("r1")
    made = _shared(r.write("m", "fact", "create", policy=policy, content="v0"))
    if system:
        made = msgspec.structs.replace(made, system=True)
    base = r.states[made.key].clock
    secret = _shared(r.write("m", "fact", "update", context=base, content="SECRET"), False)
    r.wall_ms += 5
    public = _shared(r.write("m", "fact", "update", context=base, content="public"))
    return apply(apply(apply(None, made), secret), public)


def _claims(users: tuple[str, ...]) -> Claims:
    return Claims(sub="a", tenant="t1", users=users, scope=frozenset({"read"}), exp=0)


def test_others_see_the_winner_without_the_private_conflict() -> None:
    state = _rivals()
    assert [c.content for c in materialize(state).conflicts] == ["SECRET"]
    shown = materialize(for_others(state))
    assert (shown.content, shown.conflicts, shown.siblings) == ("public", (), ())
    assert for_others(state).clock == state.clock  # contexts kept: joins still converge


def test_others_see_no_private_sibling_under_surface() -> None:
    view = materialize(for_others(_rivals(policy="surface")))
    assert [s.content for s in view.siblings] == []  # one version left: no siblings to list
    assert view.content == "public"


def test_nothing_hidden_gives_the_same_state_and_a_system_memory_is_shown_whole() -> None:
    r = Replica("r1")
    state = apply(None, _shared(r.write("m", "fact", "create", content="x")))
    assert not hides_something(state) and for_others(state) is state
    system = _rivals(system=True)
    assert system.system and for_others(system) is system


def test_the_owner_and_who_may_act_for_them_get_the_whole_state() -> None:
    state = _rivals()
    assert as_seen_by(_claims(("u1",)), state) is state
    assert as_seen_by(_claims(("*",)), state) is state
    assert as_seen_by(_claims(("u2",)), state) == for_others(state) != state
