"""The client's local replica: a bounded LRU of replicated memory states.

:class:`LocalCache` is the seed's ``localCache.apply(event)``. It holds the
same :class:`~replication.state.MemoryState` the gateways hold, keyed by
``tenant/id``, and folds events and states into it with the very functions the
gateways use (:func:`replication.merge.apply` and :func:`replication.merge.join`).
Because those form a join-semilattice, the cache converges to the server's
state whatever order events arrive in, and duplicates change nothing; its
:meth:`LocalCache.digest` is then equal to the server-side set digest of the
same memories.

**Holders.** Every subscription of a :class:`~gateway.client.MemorySync`
shares one cache, so a memory may be there for several of them. The cache
records, per memory, its *holders*: a holder is the frozenset of the channels
of the subscription (or :meth:`MemorySync.warm` call) whose events or states
put it there — a warm and a subscription of the same channels are one holder.
When the server says a memory left a subscription's channels (a ``left``
message, a sync page's ``removed``), :meth:`LocalCache.release` withdraws that
holder only; the memory is dropped once no holder is left, so another
subscription that may still see it keeps it.

Pure: no I/O, no clock, no asyncio — the subscription loop moves bytes and
calls this.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator

from replication import merge
from replication.digest import SetDigest, combine, state_digest
from replication.schema import MemoryEvent
from replication.state import MemoryState, MemoryView, materialize

__all__ = ["DEFAULT_MAX_ENTRIES", "Holder", "LocalCache"]

DEFAULT_MAX_ENTRIES = 10_000

Holder = frozenset[str]
"""Who put a memory in the cache: the channels of a subscription or of a warm."""


class LocalCache:
    """A bounded, LRU-evicting map ``tenant/id`` → replicated memory state.

    **What eviction means.** When more than ``max_entries`` memories are held,
    the least recently touched one (applied, joined or read through
    :meth:`view` / :meth:`state`) is dropped *entirely*: the cache then knows
    nothing about it, :meth:`view` returns ``None`` and :meth:`digest` no
    longer covers it. Nothing is lost on the server. If a later event for an
    evicted memory arrives, the cache starts again from that event alone, so
    the entry is *partial* (an update's content is right, but e.g. list items
    or counter increments from before the eviction are missing):
    :meth:`is_complete` reports False for it until a full state is joined in
    (a lazy-mode ``batch``, a ``/v1/sync`` page, or :meth:`join` of a state
    fetched by other means). Entries that began with a full state or with the
    memory's create event are complete.

    **Holders** (see the module docstring). :meth:`apply` and :meth:`join`
    given a ``holder`` record it for the memory, whether or not the state
    changed (a duplicate is held too); without one (``None``, e.g. a direct
    use of the cache) nothing is recorded. :meth:`release` withdraws one
    holder and drops the memory when none is left — also when none was ever
    recorded. Holders are forgotten with their entry, on eviction or
    :meth:`discard` (which drops the memory whatever its holders; a
    resync's reconciliation, :func:`gateway.client.reconcile.drop_missing`,
    releases instead); a memory that comes back starts with the holder that
    brought it. When a subscription ends and no other open one has its
    channels, :meth:`forget_holder` withdraws it everywhere (what it put in
    the cache stays, as last seen, until a release drops it).

    Memories are addressed either by key (``tenant/id``) or by bare id (ids
    never contain ``/``); a bare id that several tenants share in this cache
    is ambiguous and raises :class:`KeyError`.
    """

    def __init__(self, max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be at least 1 (got {max_entries})")
        self._max = max_entries
        self._states: OrderedDict[str, MemoryState] = OrderedDict()
        self._partial: set[str] = set()
        self._by_id: dict[str, set[str]] = {}
        self._holders: dict[str, set[Holder]] = {}
        self._evictions = 0

    # -- folding --------------------------------------------------------------

    def apply(self, event: MemoryEvent, holder: Holder | None = None) -> bool:
        """Merge one event; True when the cached state changed (False: a duplicate).

        ``holder``: who applied it, recorded for the memory (class docstring).
        """
        key = event.key
        have = self._states.get(key)
        new = merge.apply(have, event)
        if have is None and event.event_type != "create":
            self._partial.add(key)
        return self._put(key, have, new, holder)

    def join(self, state: MemoryState, holder: Holder | None = None) -> bool:
        """Join a full replicated state (from the server); True when the cache changed.

        ``holder``: who joined it, recorded for the memory (class docstring).
        """
        key = state.key
        have = self._states.get(key)
        new = state if have is None else merge.join(have, state)
        self._partial.discard(key)
        return self._put(key, have, new, holder)

    def _put(
        self, key: str, have: MemoryState | None, new: MemoryState, holder: Holder | None
    ) -> bool:
        self._states[key] = new
        self._states.move_to_end(key)
        if holder is not None:
            self._holders.setdefault(key, set()).add(holder)
        if have is None:
            self._by_id.setdefault(new.id, set()).add(key)
            self._evict()
        return have is None or (new is not have and new != have)

    def _evict(self) -> None:
        while len(self._states) > self._max:
            key, state = self._states.popitem(last=False)
            self._forget(key, state)
            self._evictions += 1

    def _forget(self, key: str, state: MemoryState) -> None:
        self._partial.discard(key)
        self._holders.pop(key, None)
        keys = self._by_id.get(state.id)
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self._by_id[state.id]

    def discard(self, id_or_key: str) -> MemoryState | None:
        """Drop one memory (not an eviction); the state it held, ``None`` when not held.

        For what the server says no longer exists here, e.g. a memory a resync
        snapshot no longer lists (see :func:`gateway.client.reconcile.drop_missing`):
        it is not a tombstone — the cache then knows nothing about it.
        """
        key = self._key(id_or_key)
        if key is None:
            return None
        state = self._states.pop(key, None)
        if state is not None:
            self._forget(key, state)
        return state

    def forget_holder(self, holder: Holder) -> None:
        """Withdraw ``holder`` from every memory, dropping none (its subscription ended).

        What only it held stays cached, as last seen, with no holder: the
        next :meth:`release` of it by anyone drops it.
        """
        for held in self._holders.values():
            held.discard(holder)

    def release(self, id_or_key: str, holder: Holder) -> MemoryState | None:
        """Withdraw one holder of a memory; drop it when no holder is left.

        For what the server says left ``holder``'s channels (a ``left``
        message, a sync page's ``removed``). Returns the state dropped;
        ``None`` when the memory is kept (another holder remains) or was not
        held. A memory with no holder recorded (put there without one) is
        dropped.
        """
        key = self._key(id_or_key)
        if key is None or key not in self._states:
            return None
        held = self._holders.get(key)
        if held:
            held.discard(holder)
            if held:
                return None
        return self.discard(key)

    # -- reading --------------------------------------------------------------

    def _key(self, id_or_key: str) -> str | None:
        if "/" in id_or_key:
            return id_or_key
        keys = self._by_id.get(id_or_key)
        if not keys:
            return None
        if len(keys) > 1:
            raise KeyError(f"id {id_or_key!r} is held for several tenants; pass tenant/id")
        return next(iter(keys))

    def state(self, id_or_key: str) -> MemoryState | None:
        """The replicated state of one memory, or ``None`` when not held (marks it recent)."""
        key = self._key(id_or_key)
        if key is None:
            return None
        state = self._states.get(key)
        if state is not None:
            self._states.move_to_end(key)
        return state

    def view(self, id_or_key: str) -> MemoryView | None:
        """The reader's view of one memory (tombstones included: check ``deleted``).

        ``version`` is empty: version tokens are sealed by the gateways, so use
        the one a gateway answer carried for ``If-Match``. ``None`` for a
        contested memory (two users created its id apart): as the gateways,
        the cache shows no one a state that cannot say whose each version is.
        """
        state = self.state(id_or_key)
        return None if state is None or state.contested else materialize(state)

    def views(self, *, include_deleted: bool = False) -> list[MemoryView]:
        """Views of every held memory, least recently touched first (recency unchanged)."""
        out = [materialize(s) for s in self._states.values() if not s.contested]
        return out if include_deleted else [v for v in out if not v.deleted]

    def states(self) -> list[MemoryState]:
        """Every held state, least recently touched first (recency unchanged)."""
        return list(self._states.values())

    def holders(self, id_or_key: str) -> frozenset[Holder]:
        """Who holds a memory: empty when none was recorded or it is not held (recency kept)."""
        key = self._key(id_or_key)
        if key is None:
            return frozenset()
        return frozenset(self._holders.get(key, ()))

    def is_complete(self, id_or_key: str) -> bool:
        """Whether the entry holds the memory's whole history (see the class docstring)."""
        key = self._key(id_or_key)
        return key is not None and key in self._states and key not in self._partial

    def digest(self) -> SetDigest:
        """The set digest of every held state, comparable with the server's.

        Equal to ``replication.digest.combine`` over the server's
        ``(key, state_digest(state))`` pairs for the same memories.
        """
        return combine((key, state_digest(s)) for key, s in self._states.items())

    def keys(self) -> Iterator[str]:
        """The held keys, least recently touched first."""
        return iter(list(self._states))

    @property
    def max_entries(self) -> int:
        """The bound on held memories."""
        return self._max

    @property
    def evictions(self) -> int:
        """How many memories were evicted so far."""
        return self._evictions

    def clear(self) -> None:
        """Forget everything (the eviction count is kept)."""
        self._states.clear()
        self._partial.clear()
        self._by_id.clear()
        self._holders.clear()

    def __len__(self) -> int:
        return len(self._states)

    def __contains__(self, id_or_key: object) -> bool:
        if not isinstance(id_or_key, str):
            return False
        try:
            key = self._key(id_or_key)
        except KeyError:
            return True
        return key is not None and key in self._states
