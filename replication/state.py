"""A memory's replicated state, and the view of it that readers get.

The state is a join-semilattice (see :mod:`replication.merge`): every field is
a set that only grows, or a set filtered by contexts that only grow, so two
replicas holding the same events hold equal states whatever the order.

- ``clock``: every dot applied (dedup, and the version token readers get);
- ``superseded``: the union of the contexts of field writes and deletes; a
  field version whose dot it holds is obsolete;
- ``present`` / ``deletes``: dots of non-delete events and the union of delete
  contexts; the memory is deleted when every present dot is covered by a
  delete, so a delete never hides a write it had not seen (I4);
- ``versions``: the surviving field versions (siblings; LWW picks one);
- ``tags`` / ``removals``: the OR-Set of list items (add-wins);
- ``counts`` / ``pending``: the PN-counter, summed per replica over the
  contiguous prefix of that replica's dots, loose dots kept apart until their
  gap fills, so no increment is counted twice (I5).

Every struct of the core is frozen and built bottom-up, so none can be part
of a reference cycle: they are declared ``gc=False`` (msgspec), which keeps
the cache's and history's many states out of the cyclic collector's
traversals (a full collection of a gateway's heap paused it ~100 ms).
"""

from __future__ import annotations

from typing import Any

import msgspec

from replication.dvv import EMPTY, Dot, DotContext, is_subset

__all__ = [
    "FieldVersion",
    "ItemRemoval",
    "ItemTag",
    "MemoryState",
    "MemoryView",
    "PendingCount",
    "ReplicaCount",
    "Sibling",
    "decode_state",
    "encode_state",
    "materialize",
]


class FieldVersion(msgspec.Struct, frozen=True, gc=False, array_like=True):
    """One surviving write of the register fields."""

    dot: Dot
    timestamp: int
    content: str
    embedding: tuple[float, ...] | None
    metadata: dict[str, Any]
    topics: tuple[str, ...]
    shared: bool
    agent_id: str
    region: str

    @property
    def rank(self) -> tuple[int, str, int]:
        """LWW order: HLC timestamp, then replica id, then counter."""
        return (self.timestamp, self.dot.replica, self.dot.counter)


class ItemTag(msgspec.Struct, frozen=True, gc=False, array_like=True, order=True):
    """One add of one list item, tagged with the adding write's dot."""

    item: str
    dot: Dot
    timestamp: int


class ItemRemoval(msgspec.Struct, frozen=True, gc=False, array_like=True):
    """The union of the contexts of every removal of one item."""

    item: str
    context: DotContext


class ReplicaCount(msgspec.Struct, frozen=True, gc=False, array_like=True):
    """Counter sums over one replica's contiguous dots (``clock.vv[replica]``)."""

    replica: str
    p: int
    n: int


class PendingCount(msgspec.Struct, frozen=True, gc=False, array_like=True, order=True):
    """The increment of one dot that arrived ahead of a gap."""

    dot: Dot
    increment: int


class MemoryState(msgspec.Struct, frozen=True, gc=False, kw_only=True):
    """Everything a region knows about one memory (a join-semilattice)."""

    id: str
    tenant_id: str
    user_id: str
    kind: str
    policy: str
    origin: tuple[int, str, int]
    clock: DotContext = EMPTY
    superseded: DotContext = EMPTY
    present: DotContext = EMPTY
    deletes: DotContext = EMPTY
    versions: tuple[FieldVersion, ...] = ()
    tags: tuple[ItemTag, ...] = ()
    removals: tuple[ItemRemoval, ...] = ()
    counts: tuple[ReplicaCount, ...] = ()
    pending: tuple[PendingCount, ...] = ()
    updated_at: int = 0
    # Created by an admin for ``system:global`` (its every later event goes
    # there too). See encode_state.
    system: bool = False
    # Two users created this id (in regions cut off from each other): the
    # state holds both owners' versions and cannot tell them apart, so no
    # one is shown it (gateway/visibility.py). Joins take the OR, set by any
    # join of two states with different users. Always the last field: see
    # encode_state.
    contested: bool = False

    @property
    def key(self) -> str:
        """Tenant and id: the memory's unique key."""
        return f"{self.tenant_id}/{self.id}"

    @property
    def deleted(self) -> bool:
        """Whether every non-delete write is covered by a delete."""
        return is_subset(self.present, self.deletes)


class Sibling(msgspec.Struct, frozen=True, gc=False, kw_only=True):
    """One concurrent version of the register fields, as readers see it."""

    content: str
    embedding: tuple[float, ...] | None
    metadata: dict[str, Any]
    topics: tuple[str, ...]
    shared: bool
    updated_at: int
    agent_id: str
    region: str
    dot: Dot


class MemoryView(msgspec.Struct, frozen=True, gc=False, kw_only=True):
    """A memory as the API returns it (``version`` filled in by the caller)."""

    id: str
    tenant_id: str
    user_id: str
    kind: str
    policy: str
    content: str = ""
    items: tuple[str, ...] = ()
    value: int = 0
    embedding: tuple[float, ...] | None = None
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)
    topics: tuple[str, ...] = ()
    shared: bool = False
    version: str = ""
    updated_at: int = 0
    siblings: tuple[Sibling, ...] = ()
    conflicts: tuple[Sibling, ...] = ()
    deleted: bool = False


def _sibling(v: FieldVersion) -> Sibling:
    return Sibling(
        content=v.content,
        embedding=v.embedding,
        metadata=v.metadata,
        topics=v.topics,
        shared=v.shared,
        updated_at=v.timestamp,
        agent_id=v.agent_id,
        region=v.region,
        dot=v.dot,
    )


def materialize(state: MemoryState, version: str = "") -> MemoryView:
    """The reader's view of a state.

    The fields come from the LWW winner among surviving versions (highest HLC,
    then replica id). Under ``surface`` every surviving version is listed in
    ``siblings`` (winner first); under the other policies the losers are listed
    in ``conflicts`` — the conflict log — until a write that saw them
    supersedes them.
    """
    ranked = sorted(state.versions, key=lambda v: v.rank, reverse=True)
    top = ranked[0] if ranked else None
    items: list[tuple[int, str]] = []
    seen: dict[str, int] = {}
    for tag in state.tags:
        first = seen.get(tag.item)
        if first is None or tag.timestamp < first:
            seen[tag.item] = tag.timestamp
    items = sorted((ts, item) for item, ts in seen.items())
    value = sum(c.p - c.n for c in state.counts) + sum(p.increment for p in state.pending)
    siblings: tuple[Sibling, ...] = ()
    conflicts: tuple[Sibling, ...] = ()
    if len(ranked) > 1:
        if state.policy == "surface":
            siblings = tuple(_sibling(v) for v in ranked)
        else:
            conflicts = tuple(_sibling(v) for v in ranked[1:])
    return MemoryView(
        id=state.id,
        tenant_id=state.tenant_id,
        user_id=state.user_id,
        kind=state.kind,
        policy=state.policy,
        content=top.content if top else "",
        items=tuple(item for _, item in items),
        value=value,
        embedding=top.embedding if top else None,
        metadata=top.metadata if top else {},
        topics=top.topics if top else (),
        shared=top.shared if top else False,
        version=version,
        updated_at=state.updated_at,
        siblings=siblings,
        conflicts=conflicts,
        deleted=state.deleted,
    )


_state_encoder = msgspec.msgpack.Encoder(order="deterministic")
_state_decoder = msgspec.msgpack.Decoder(MemoryState)


# ``system`` and then ``contested`` came later than the other fields. A
# state without them encodes exactly as before they existed (a map of 16
# fields, not 18 ending in ``"system": false, "contested": false``; a system
# memory's map of 17 ends at ``system``, as it did): equal states keep equal
# bytes, so digests agree between regions on either side of an upgrade, and
# stored states stay as they were. Every header is map16 (a fixmap holds at
# most 15 entries). A contested state encodes every field.
_FIELDS = len(MemoryState.__struct_fields__)
_HEADER_LEN = 3
_WITH_SYSTEM = b"\xde" + (_FIELDS - 1).to_bytes(2, "big")
_WITHOUT_SYSTEM = b"\xde" + (_FIELDS - 2).to_bytes(2, "big")
_NOT_SYSTEM = b"\xa6system\xc2"  # the entry of a state with system=False
_NOT_CONTESTED = b"\xa9contested\xc2"  # the last entry of a state with contested=False


def encode_state(state: MemoryState) -> bytes:
    """The canonical bytes of a state (deterministic: equal states, equal bytes)."""
    data = _state_encoder.encode(state)
    if state.contested:
        return data
    body = data[_HEADER_LEN : -len(_NOT_CONTESTED)]
    if state.system:
        return _WITH_SYSTEM + body
    return _WITHOUT_SYSTEM + body[: -len(_NOT_SYSTEM)]


def decode_state(data: bytes) -> MemoryState:
    """A state from :func:`encode_state` bytes."""
    return _state_decoder.decode(data)
