"""The region's running state digest, for anti-entropy (bucketed, as Riak AAE).

Every memory contributes ``member_hash(key, state_digest(state))`` to one of
``buckets`` buckets (XOR, see :mod:`replication.digest`), so one changed
memory updates its bucket in O(1) from its state before and after, without
keeping a per-memory table. Built once at start by scanning the store;
regions compare bucket vectors and descend only into buckets that differ.

A store write that fails may still have landed (a timeout, a child that
died after writing): the digest cannot know which state the store holds.
Such keys are *in doubt* (:meth:`RunningDigest.doubt`): the digest keeps the
state it counts for each, and the next change or read of the key
(:meth:`~RunningDigest.replace`, :meth:`~RunningDigest.settle`) swaps that
state for the one the store is known to hold, so a failed write never leaves
the digest off for good. Past ``max_doubts`` keys the digest is *stale*
instead: the applier rebuilds it by a store scan into a fresh digest and
swaps that in whole (:meth:`RunningDigest.adopt`).
"""

from __future__ import annotations

from collections.abc import Iterable

from replication.digest import DIGEST_BYTES, SetDigest, bucket_of, member_hash, state_digest
from replication.state import MemoryState

__all__ = ["RunningDigest"]


class RunningDigest:
    """A mutable :class:`~replication.digest.SetDigest` of the region's states."""

    def __init__(self, buckets: int = 256, max_doubts: int = 100_000) -> None:
        if buckets < 1 or max_doubts < 1:
            raise ValueError("buckets and max_doubts must be ≥ 1")
        self.max_doubts = max_doubts
        self.stale = False  # too many doubts: only a rebuild from the store mends it
        self._acc = [0] * buckets
        self.count = 0
        # key → the state this digest counts for it (None: not counted), for
        # keys whose store write failed and may or may not have landed.
        self._doubts: dict[str, MemoryState | None] = {}

    @property
    def buckets(self) -> int:
        """How many buckets keys are spread over."""
        return len(self._acc)

    def _toggle(self, state: MemoryState) -> None:
        key = state.key
        h = int.from_bytes(member_hash(key, state_digest(state)), "big")
        self._acc[bucket_of(key, len(self._acc))] ^= h

    def add_all(self, states: Iterable[MemoryState]) -> None:
        """Add memories not counted yet (the start-up scan)."""
        for state in states:
            self._toggle(state)
            self.count += 1

    def replace(self, before: MemoryState | None, after: MemoryState) -> None:
        """One memory changed from ``before`` (``None``: new) to ``after`` in the store.

        For a key in doubt, ``before`` is what the caller read, not what
        this digest counts: the counted state is swapped out instead.
        """
        if after.key in self._doubts:
            before = self._doubts.pop(after.key)
        if before is not None:
            self._toggle(before)
        else:
            self.count += 1
        self._toggle(after)

    def doubt(self, key: str, counted: MemoryState | None) -> None:
        """A store write of ``key`` failed; ``counted`` is what this digest counts for it.

        A key already in doubt keeps the state it was counted with (nothing
        changed it here since). Past ``max_doubts`` keys, the digest goes
        :attr:`stale` and forgets them: a rebuild replaces it whole.
        """
        if self.stale:
            return
        self._doubts.setdefault(key, counted)
        if len(self._doubts) > self.max_doubts:
            self.stale = True
            self._doubts.clear()

    def adopt(self, fresh: RunningDigest) -> None:
        """Become ``fresh`` (a rebuild from the store), doubts and staleness forgotten."""
        if fresh.buckets != self.buckets:
            raise ValueError("a rebuilt digest must have the same buckets")
        self._acc = list(fresh._acc)
        self.count = fresh.count
        self._doubts = dict(fresh._doubts)
        self.stale = fresh.stale

    def settle(self, key: str, stored: MemoryState | None) -> bool:
        """The store is known to hold ``stored`` (``None``: nothing) for ``key``.

        Whether ``key`` was in doubt (else nothing changes).
        """
        if key not in self._doubts:
            return False
        counted = self._doubts.pop(key)
        if counted is not None:
            self._toggle(counted)
            self.count -= 1
        if stored is not None:
            self._toggle(stored)
            self.count += 1
        return True

    @property
    def has_doubts(self) -> bool:
        """Whether some key's stored state is in doubt."""
        return bool(self._doubts)

    def in_doubt(self, key: str) -> bool:
        """Whether ``key``'s stored state is in doubt."""
        return key in self._doubts

    @property
    def doubt_count(self) -> int:
        """How many keys are in doubt."""
        return len(self._doubts)

    @property
    def doubts(self) -> list[str]:
        """Keys whose stored state this digest is unsure of."""
        return list(self._doubts)

    def snapshot(self) -> SetDigest:
        """The digest now, as an immutable value."""
        return SetDigest(tuple(a.to_bytes(DIGEST_BYTES, "big") for a in self._acc), self.count)
