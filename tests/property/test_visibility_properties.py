"""Hiding a memory's private versions from other readers commutes with the join."""

from __future__ import annotations

import msgspec
from hypothesis import given
from hypothesis import strategies as st

from gateway.visibility import for_others
from replication.merge import apply, join
from replication.schema import MemoryEvent
from replication.state import MemoryState, materialize

from .strategies import histories


def _sharing(data: st.DataObject, history: list[MemoryEvent]) -> list[MemoryEvent]:
    """The history with each event's version shared or private at random."""
    return [
        msgspec.structs.replace(
            e, memory=msgspec.structs.replace(e.memory, shared=data.draw(st.booleans()))
        )
        for e in history
    ]


def _fold(events: list[MemoryEvent]) -> MemoryState | None:
    state = None
    for e in events:
        state = apply(state, e)
    return state


@given(st.data())
def test_a_client_fed_only_what_others_may_see_converges_to_it(data: st.DataObject) -> None:
    """Joining redacted partial states in any order equals redacting the whole state."""
    history = _sharing(data, data.draw(histories(memories=1)))
    key = history[0].key
    mine = [e for e in history if e.key == key]
    whole = _fold(mine)
    assert whole is not None
    parts = [_fold(data.draw(st.lists(st.sampled_from(mine), min_size=1))) for _ in range(3)]
    received = for_others(whole)
    for part in data.draw(st.permutations(parts)):
        assert part is not None
        received = join(received, for_others(part))
        assert join(for_others(whole), for_others(part)) == for_others(whole)
    assert received == for_others(whole)
    shown = materialize(for_others(whole))
    private = {v.content for v in whole.versions if not v.shared}  # each write's text is its own
    visible = {shown.content} | {s.content for s in (*shown.siblings, *shown.conflicts)}
    assert not private & visible
    assert all(s.shared for s in (*shown.siblings, *shown.conflicts))
    if all(v.shared for v in whole.versions):
        assert for_others(whole) is whole
