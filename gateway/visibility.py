"""What of a memory's replicated state a reader who is not its owner may see (I7).

A memory is routed by its winning version (:func:`gateway.leaving.routed`),
but its replicated state keeps every surviving version: under ``surface``
the siblings, under the other policies the conflict log's losers. A version
its owner wrote private (``shared: false``) concurrently with a shared one
stays in that state while the shared one wins, so the state sent whole to
the tenant's channel, or to a topic's other readers, would show it.

Whoever may not act for the owner gets :func:`for_others` instead: the
state without the versions its owner kept private. Live (the states of a
coalesced or a state-repair batch) and in a pull sync alike; the owner, and
every token that may act for them, gets the whole state. Events need no
such care: each goes to its own version's channels only (and only those
its memory is on after it, :func:`gateway.leaving.delivered_to`).

Dropping versions commutes with the join — ``shared`` belongs to a version,
and :func:`replication.merge.join` keeps a version unless a context
supersedes it, whichever side it came from — so a client that only ever
receives ``for_others`` states converges to ``for_others`` of the server's
state (a property test checks it). A system memory is shown whole: its
every event goes to ``system:global``, whose readers see all of it.

A *contested* memory (:attr:`MemoryState.contested`: two users created
its id in regions cut off from each other, and their versions met in one
state that cannot tell whose each is) is withheld from everyone
(:func:`withheld`): reads answer 409, lists, searches and snapshots skip it,
a pull sync lists it in ``removed``, live subscribers are told it ``left``
(:func:`gateway.leaving.leaving`), no batch carries its state and its
events go to no channel (:func:`gateway.leaving.delivered_to`). Its owner (the user of
the lower origin) may delete it; the id stays spent, as every deleted id.

What stays: the state's contexts still name the private versions' dots,
and ``updated_at`` may be a private version's time — that something was
written, not what. Pure.
"""

from __future__ import annotations

import msgspec

from gateway.auth import Claims
from replication.state import MemoryState

__all__ = ["as_seen_by", "for_others", "hides_something", "withheld"]


def withheld(state: MemoryState) -> bool:
    """Whether no one may be shown ``state``: it is contested (module docstring)."""
    return state.contested


def hides_something(state: MemoryState) -> bool:
    """Whether :func:`for_others` would drop a version of ``state``."""
    return not state.system and not all(v.shared for v in state.versions)


def for_others(state: MemoryState) -> MemoryState:
    """``state`` as a reader other than its owner may see it: without its private versions.

    The same object when nothing is hidden (the common case: every version
    shared, or one private version whose memory is not routed to others).
    """
    if not hides_something(state):
        return state
    shown = tuple(v for v in state.versions if v.shared)
    return msgspec.structs.replace(state, versions=shown)


def as_seen_by(claims: Claims, state: MemoryState) -> MemoryState:
    """``state`` whole if ``claims`` may act for its owner, else :func:`for_others`."""
    return state if claims.may_act_for(state.user_id) else for_others(state)
