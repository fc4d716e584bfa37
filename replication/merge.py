"""Merging events into states: one join, every policy.

Applying an event is joining the state with the event's *delta state* (the
state that holds that one event, see :func:`delta`). The join is commutative,
associative and idempotent, so the result never depends on arrival order,
duplication or replay (I2, I5), and anti-entropy can join whole states
with the same function.

Per policy (DESIGN §3):

- ``lww``: field versions not superseded by a causally later write stay as
  candidates; the highest (HLC, replica) wins, the others form the conflict
  log (never silently dropped, I3);
- ``surface``: the same candidates, all surfaced as siblings until a write
  whose context covers them resolves them;
- ``union``: list items are an add-wins OR-Set — a removal removes the adds
  its writer had seen, a concurrent add survives; other fields as ``lww``;
- ``counter``: a PN-counter summed per replica over contiguous dots, so a
  duplicate never counts twice; other fields as ``lww``.

Deletes are tombstones that keep their causal context: they hide exactly the
writes they had seen and never a concurrent one (I4).
"""

from __future__ import annotations

from collections.abc import Iterable

from replication import dvv
from replication.dvv import EMPTY, Dot, DotContext
from replication.schema import MemoryEvent
from replication.state import (
    FieldVersion,
    ItemRemoval,
    ItemTag,
    MemoryState,
    PendingCount,
    ReplicaCount,
)

__all__ = ["apply", "apply_all", "delta", "join"]


def delta(event: MemoryEvent) -> MemoryState:
    """The state that holds exactly one event."""
    mem = event.memory
    dot = event.dot
    ctx = event.context
    is_delete = event.event_type == "delete"
    writes_fields = not is_delete and (event.event_type == "create" or event.ops.fields)
    versions: tuple[FieldVersion, ...] = ()
    if writes_fields and not dvv.contains(ctx, dot):
        versions = (
            FieldVersion(
                dot=dot,
                timestamp=event.timestamp,
                content=mem.content,
                embedding=mem.embedding,
                metadata=mem.metadata,
                topics=mem.topics,
                shared=mem.shared,
                agent_id=event.source.agent_id,
                region=event.source.region,
            ),
        )
    removals = (
        tuple(ItemRemoval(item, ctx) for item in sorted(set(event.ops.remove)))
        if event.ops.remove
        else ()
    )
    removed = {r.item for r in removals}
    tags = (
        tuple(
            sorted(
                ItemTag(item, dot, event.timestamp)
                for item in set(event.ops.add)
                if item not in removed
            )
        )
        if event.ops.add and not is_delete
        else ()
    )
    own = dvv.add(EMPTY, dot)
    counts: tuple[ReplicaCount, ...] = ()
    pending: tuple[PendingCount, ...] = ()
    if mem.policy == "counter":
        inc = event.ops.increment
        if dot.counter == 1:
            counts = (ReplicaCount(dot.replica, max(inc, 0), max(-inc, 0)),)
        else:
            pending = (PendingCount(dot, inc),)
    return MemoryState(
        id=mem.id,
        tenant_id=mem.tenant_id,
        user_id=mem.user_id,
        kind=mem.kind,
        policy=mem.policy,
        origin=(event.timestamp, dot.replica, dot.counter),
        clock=own,
        superseded=ctx if (writes_fields or is_delete) else EMPTY,
        present=EMPTY if is_delete else own,
        deletes=ctx if is_delete else EMPTY,
        versions=versions,
        tags=tags,
        removals=removals,
        counts=counts,
        pending=pending,
        updated_at=event.timestamp,
        system=event.system,
    )


def _join_removals(
    a: tuple[ItemRemoval, ...], b: tuple[ItemRemoval, ...]
) -> tuple[ItemRemoval, ...]:
    if not b:
        return a
    if not a:
        return b
    by_item = {r.item: r.context for r in a}
    for r in b:
        have = by_item.get(r.item)
        by_item[r.item] = r.context if have is None else dvv.join(have, r.context)
    return tuple(ItemRemoval(item, by_item[item]) for item in sorted(by_item))


def _live_tags(
    tags: Iterable[ItemTag], deletes: DotContext, removals: tuple[ItemRemoval, ...]
) -> tuple[ItemTag, ...]:
    by_item = {r.item: r.context for r in removals}
    out = []
    for tag in tags:
        if dvv.contains(deletes, tag.dot):
            continue
        removal = by_item.get(tag.item)
        if removal is not None and dvv.contains(removal, tag.dot):
            continue
        out.append(tag)
    return tuple(sorted(set(out)))


def _join_counts(
    a: MemoryState, b: MemoryState, clock: DotContext
) -> tuple[tuple[ReplicaCount, ...], tuple[PendingCount, ...]]:
    """Join PN-counter sums: per replica, the longer contiguous prefix wins."""
    prefix: dict[str, tuple[int, int, int]] = {}
    for side in (a, b):
        for c in side.counts:
            upto = side.clock.vv.get(c.replica, 0)
            have = prefix.get(c.replica)
            if have is None or upto > have[0]:
                prefix[c.replica] = (upto, c.p, c.n)
    loose: dict[Dot, int] = {}
    for side in (a, b):
        for p in side.pending:
            if p.dot.counter > prefix.get(p.dot.replica, (0, 0, 0))[0]:
                loose[p.dot] = p.increment
    pending: list[PendingCount] = []
    for dot in sorted(loose):
        inc = loose[dot]
        upto, pos, neg = prefix.get(dot.replica, (0, 0, 0))
        if dot.counter <= clock.vv.get(dot.replica, 0):
            prefix[dot.replica] = (upto, pos + max(inc, 0), neg + max(-inc, 0))
        else:
            pending.append(PendingCount(dot, inc))
    counts = tuple(ReplicaCount(r, p, n) for r, (_, p, n) in sorted(prefix.items()))
    return counts, tuple(pending)


def join(a: MemoryState, b: MemoryState) -> MemoryState:
    """The least upper bound of two states of the same memory."""
    if a is b:
        return a
    clock = dvv.join(a.clock, b.clock)
    superseded = dvv.join(a.superseded, b.superseded)
    deletes = dvv.join(a.deletes, b.deletes)
    by_dot = {v.dot: v for v in a.versions}
    for v in b.versions:
        by_dot.setdefault(v.dot, v)
    versions = tuple(by_dot[d] for d in sorted(by_dot) if not dvv.contains(superseded, d))
    removals = _join_removals(a.removals, b.removals)
    tags = _live_tags((*a.tags, *b.tags), deletes, removals) if a.tags or b.tags else ()
    if a.policy == "counter" or b.policy == "counter":
        counts, pending = _join_counts(a, b, clock)
    else:
        counts, pending = (), ()
    ident = a if a.origin <= b.origin else b
    return MemoryState(
        id=ident.id,
        tenant_id=ident.tenant_id,
        user_id=ident.user_id,
        kind=ident.kind,
        policy=ident.policy,
        origin=ident.origin,
        clock=clock,
        superseded=superseded,
        present=dvv.join(a.present, b.present),
        deletes=deletes,
        versions=versions,
        tags=tags,
        removals=removals,
        counts=counts,
        pending=pending,
        updated_at=max(a.updated_at, b.updated_at),
        system=a.system or b.system,
        contested=a.contested or b.contested or a.user_id != b.user_id,
    )


def apply(state: MemoryState | None, event: MemoryEvent) -> MemoryState:
    """Merge one event into a state (``None``: the memory is new here).

    Applying an event whose dot the state already holds returns the state
    unchanged (I5).
    """
    if state is None:
        return delta(event)
    if dvv.contains(state.clock, event.dot):
        return state
    return join(state, delta(event))


def apply_all(state: MemoryState | None, events: Iterable[MemoryEvent]) -> MemoryState | None:
    """Apply events in the given order."""
    for event in events:
        state = apply(state, event)
    return state
