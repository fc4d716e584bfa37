"""Leaving a channel: telling those who may no longer see a memory, without its content.

An update that makes a memory private, moves it off a topic or takes it off
the system channel is routed to its *new* channels only: routing it to the
old ones too would show its new content to readers it was just hidden from.
Their subscribers still hold the memory, so each such event also carries a
:class:`Leaving` — where the memory was routed before it (``prior``) and
where its state is routed after it (``now``) — and every subscriber that
could see the memory on ``prior`` and cannot on ``now`` is sent a
content-free ``{"op": "left", "id", "key", "cursor"}`` (in a coalesced or
lazy ``batch``: listed in ``left``), live and in a replay alike; a pull sync
lists the memory in ``removed``. Clients drop it from their caches.

A memory that becomes *contested* (two users' creates of its id met,
:mod:`gateway.visibility`) leaves every channel: ``now`` is empty.

``now`` is the *state's* routing after the event, not the event's own: an
update that loses to a concurrent version (LWW) leaves the memory where the
winner says, so no one is told it left. Deletes carry no :class:`Leaving`
(their tombstone goes to the deleted version's channels). Pure.
"""

from __future__ import annotations

from collections.abc import Callable

import msgspec

from replication.routing import channels_for
from replication.schema import MemoryEvent
from replication.state import MemoryState

__all__ = ["Leaving", "delivered_to", "leaving", "left_message", "routed"]

_encoder = msgspec.json.Encoder()


class Leaving(msgspec.Struct, frozen=True, gc=False, array_like=True):
    """Where a memory was routed before an event (``prior``) and after it (``now``)."""

    prior: tuple[str, ...]
    now: tuple[str, ...]

    def reaches(self, allows: Callable[[tuple[str, ...]], bool]) -> bool:
        """Whether a subscriber whose rule is ``allows(channels)`` must be told it left."""
        return allows(self.prior) and not allows(self.now)


def _placement(state: MemoryState) -> tuple[tuple[str, ...], bool, bool]:
    """What routes a live state: its winning version's topics and sharing (as
    ``materialize`` picks the winner), and the system flag."""
    versions = state.versions
    if not versions:
        return (), False, state.system
    top = versions[0] if len(versions) == 1 else max(versions, key=lambda v: v.rank)
    return top.topics, top.shared, state.system


def routed(state: MemoryState) -> tuple[str, ...]:
    """The channels a live state's events go to: its winning version's."""
    topics, shared, system = _placement(state)
    return channels_for(
        tenant_id=state.tenant_id,
        user_id=state.user_id,
        topics=topics,
        shared=shared,
        system=system,
    )


def delivered_to(event: MemoryEvent, after: MemoryState) -> tuple[str, ...]:
    """The channels an event is delivered (and replayed) on: its own routing, less
    any its memory's state after it is not routed to.

    An event's own channels say where its content may go; the state's say
    where the memory is. A write that loses to a concurrent one (LWW) leaves
    the memory where the winner says: a shared write that lost to a private
    one must not bring the memory back to the tenant's channel, whose
    subscribers were told it left. A delete goes to its own channels (the
    deleted version's; a deleted state says nowhere). A contested state
    goes nowhere (:mod:`gateway.visibility`). One comparison when the event
    routes as its state does (the common case: it is the winner).
    """
    if after.deleted:
        return event.channels
    if after.contested:
        return ()
    now = routed(after)
    if now == event.channels:
        return now
    keep = set(now)
    return tuple(ch for ch in event.channels if ch in keep)


def leaving(before: MemoryState | None, after: MemoryState) -> Leaving | None:
    """What an event that took ``before`` to ``after`` left, if any channel or audience.

    ``None`` unless some channel of ``before``'s routing is missing from
    ``after``'s (losing ``shared`` drops the tenant channel, which also
    narrows a topic's audience to the owner); ``None`` for a create, a
    delete, or an event after a delete.
    """
    if before is None or before.deleted or after.deleted or before is after:
        return None
    if after.contested and not before.contested:
        # Two users' creates of one id met (gateway.visibility): no one is
        # shown it any more, so it leaves every channel it was on.
        return Leaving(routed(before), ())
    if _placement(before) == _placement(after):  # the common case: nothing moved
        return None
    prior = routed(before)
    now = routed(after)
    if prior == now or set(prior) <= set(now):
        return None
    return Leaving(prior, now)


def left_message(memory_id: str, key: str, cursor: str) -> bytes:
    """``{"op": "left", "id", "key", "cursor"}``: the memory is no longer on these channels."""
    return _encoder.encode({"op": "left", "id": memory_id, "key": key, "cursor": cursor})
