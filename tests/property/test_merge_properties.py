"""Merging is order-free, duplicate-free and agrees with an independent oracle."""

from __future__ import annotations

from collections import defaultdict

from hypothesis import given
from hypothesis import strategies as st

from replication import dvv
from replication.digest import state_digest
from replication.merge import apply, apply_all, join
from replication.schema import MemoryEvent
from replication.state import MemoryState, materialize
from replication.testing import oracle

from .strategies import histories


def _by_key(events: list[MemoryEvent]) -> dict[str, list[MemoryEvent]]:
    out: dict[str, list[MemoryEvent]] = defaultdict(list)
    for e in events:
        out[e.key].append(e)
    return out


def _fold(events: list[MemoryEvent]) -> MemoryState:
    state = apply_all(None, events)
    assert state is not None
    return state


@given(st.data())
def test_any_delivery_order_with_duplicates_gives_identical_state(data: st.DataObject) -> None:
    """I2 + I5: permutations of any multiset of the events converge, digest included."""
    history = data.draw(histories(memories=3))
    dups = data.draw(st.lists(st.sampled_from(history), max_size=len(history)))
    for events in _by_key(history).values():
        mine = [e for e in dups if e.key == events[0].key]
        shuffled = data.draw(st.permutations([*events, *mine]))
        a, b = _fold(events), _fold(shuffled)
        assert a == b
        assert state_digest(a) == state_digest(b)


@given(histories(memories=5, max_steps=60))
def test_merge_agrees_with_the_oracle(history: list[MemoryEvent]) -> None:
    """I1/I3/I4/I5 against a from-scratch recomputation over plain sets of dots."""
    for events in _by_key(history).values():
        state = _fold(events)
        want = oracle(events)
        view = materialize(state)
        assert {v.dot for v in state.versions} == want.survivors
        assert view.deleted == want.deleted
        assert set(view.items) == want.items
        assert view.value == want.value
        top = max(state.versions, key=lambda v: v.rank, default=None)
        assert (top.dot if top else None) == want.winner


@given(st.data())
def test_join_of_partial_states_equals_applying_everything(data: st.DataObject) -> None:
    """Anti-entropy: states built from overlapping subsets join to the full state."""
    history = data.draw(histories(memories=3))
    for events in _by_key(history).values():
        parts = [data.draw(st.lists(st.sampled_from(events), min_size=1)) for _ in range(3)]
        parts[0] = [*parts[0], *events]  # together they cover every event
        states = [_fold(p) for p in parts]
        order = data.draw(st.permutations(states))
        joined = order[0]
        for s in order[1:]:
            joined = join(joined, s)
        assert joined == _fold(events)


@given(st.data())
def test_join_is_commutative_associative_idempotent(data: st.DataObject) -> None:
    history = data.draw(histories(memories=5))
    key = history[0].key
    mine = [e for e in history if e.key == key]
    a, b, c = (_fold(data.draw(st.lists(st.sampled_from(mine), min_size=1))) for _ in range(3))
    assert join(a, b) == join(b, a)
    assert join(join(a, b), c) == join(a, join(b, c))
    assert join(a, a) == a


@given(histories(memories=1))
def test_a_write_with_the_full_context_supersedes_every_version(
    history: list[MemoryEvent],
) -> None:
    """I4: what a context covers is superseded, and nothing else."""
    state = _fold(history)
    for v in state.versions:
        assert not dvv.contains(state.superseded, v.dot)
    if not materialize(state).deleted and len(state.versions) > 1:
        view = materialize(state)
        assert len(view.conflicts) + len(view.siblings) >= 1


@given(histories(memories=2))
def test_concurrent_field_writes_are_never_silently_lost(history: list[MemoryEvent]) -> None:
    """I3: every field write survives or was covered by the context of a later write."""
    for events in _by_key(history).values():
        state = _fold(events)
        survivors = {v.dot for v in state.versions}
        for e in events:
            if e.event_type == "delete" or not (e.event_type == "create" or e.ops.fields):
                continue
            covered_by = [
                o
                for o in events
                if dvv.contains(o.context, e.dot)
                and (o.event_type in ("create", "delete") or o.ops.fields)
            ]
            assert e.dot in survivors or covered_by


@given(histories(memories=1))
def test_reapplying_any_event_changes_nothing(history: list[MemoryEvent]) -> None:
    state = _fold(history)
    for e in history:
        assert apply(state, e) is state
