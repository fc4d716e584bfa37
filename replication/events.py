"""Building events: the write path's pure half.

The gateway supplies what needs I/O (its replica id, the next per-memory
counter from its journal, an HLC timestamp, a fresh event id); this module
turns a request into the one event that describes it.
"""

from __future__ import annotations

from replication import dvv
from replication.dvv import Dot, DotContext
from replication.errors import ValidationError
from replication.routing import channels_for
from replication.schema import EventType, MemoryBody, MemoryEvent, Ops, Source, validate_event
from replication.state import MemoryState

__all__ = ["make_event", "next_counter"]


def next_counter(state: MemoryState | None, replica: str, last_issued: int) -> int:
    """The counter of ``replica``'s next dot on this memory.

    One more than anything ``replica`` has issued for it — by the journal's
    record (``last_issued``) or as seen in the state (e.g. after the journal
    was lost) — so counters stay contiguous per replica and memory.
    """
    seen = 0
    if state is not None:
        seen = state.clock.vv.get(replica, 0)
        for d in state.clock.cloud:
            if d.replica == replica and d.counter > seen:
                seen = d.counter
    return max(seen, last_issued) + 1


def make_event(
    *,
    event_id: str,
    event_type: EventType,
    memory: MemoryBody,
    source: Source,
    context: DotContext,
    dot: Dot,
    seq: int,
    timestamp: int,
    ops: Ops | None = None,
    system: bool = False,
) -> MemoryEvent:
    """A validated event with its channels routed.

    Raises :class:`~replication.errors.ValidationError` when the write breaks a
    rule, e.g. a context that already holds the new dot.
    """
    if dvv.contains(context, dot):
        raise ValidationError(f"context already holds the new dot {dot}; counters must advance")
    event = MemoryEvent(
        event_id=event_id,
        event_type=event_type,
        timestamp=timestamp,
        memory=memory,
        source=source,
        channels=channels_for(
            tenant_id=memory.tenant_id,
            user_id=memory.user_id,
            topics=memory.topics,
            shared=memory.shared,
            system=system,
        ),
        context=context,
        dot=dot,
        seq=seq,
        ops=ops or Ops(),
        system=system,
    )
    return validate_event(event)
