"""The region's running state digest, for anti-entropy (bucketed, as Riak AAE).

Every memory contributes ``member_hash(key, state_digest(state))`` to one of
``buckets`` buckets (XOR, see :mod:`replication.digest`), so one changed
memory updates its bucket in O(1) from its state before and after, without
keeping a per-memory table. Built once at start by scanning the store;
regions compare bucket vectors and descend only into buckets that differ.
"""

from __future__ import annotations

from collections.abc import Iterable

from replication.digest import DIGEST_BYTES, SetDigest, bucket_of, member_hash, state_digest
from replication.state import MemoryState

__all__ = ["RunningDigest"]


class RunningDigest:
    """A mutable :class:`~replication.digest.SetDigest` of the region's states."""

    def __init__(self, buckets: int = 256) -> None:
        if buckets < 1:
            raise ValueError("buckets must be ≥ 1")
        self._acc = [0] * buckets
        self.count = 0

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
        """One memory changed from ``before`` (``None``: new) to ``after``."""
        if before is not None:
            self._toggle(before)
        else:
            self.count += 1
        self._toggle(after)

    def snapshot(self) -> SetDigest:
        """The digest now, as an immutable value."""
        return SetDigest(tuple(a.to_bytes(DIGEST_BYTES, "big") for a in self._acc), self.count)
