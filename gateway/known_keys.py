"""Which memory keys this gateway may hold: a Bloom filter, never a false "no".

A create with a client-chosen id must answer 409 when the id exists, so it
read the memory's state first — a round trip to the store process on every
create of a new id (1–1.6 ms at 1,000 writes/s, 5–6 ms at 64 in flight,
queued behind the applier's writes). Every state that reaches this gateway's
cache or store passes through :meth:`KnownKeys.add` first (the start-up scan
of the store, the applier before it writes, anti-entropy before it writes,
any state read), so a key the filter has never seen is not there, and the
create skips the read. A false "maybe" (1 % at capacity, more past it) only
costs the read it would have done anyway.
"""

from __future__ import annotations

import hashlib
import math

__all__ = ["KnownKeys"]


class KnownKeys:
    """A Bloom filter over memory keys (``tenant/id``): ``key in known`` may err only "yes"."""

    def __init__(self, capacity: int = 2_000_000, error: float = 0.01) -> None:
        if capacity < 1 or not 0 < error < 1:
            raise ValueError("capacity must be ≥ 1 and error in (0, 1)")
        bits = math.ceil(-capacity * math.log(error) / math.log(2) ** 2)
        self._m = bits
        self._k = max(1, round(bits / capacity * math.log(2)))
        self._bits = bytearray((bits + 7) // 8)

    @property
    def size_bytes(self) -> int:
        """Memory taken by the bit array."""
        return len(self._bits)

    def _positions(self, key: str) -> list[int]:
        digest = hashlib.blake2b(key.encode(), digest_size=16).digest()
        a = int.from_bytes(digest[:8], "little")
        b = int.from_bytes(digest[8:], "little") | 1
        m = self._m
        return [(a + i * b) % m for i in range(self._k)]

    def add(self, key: str) -> None:
        """Remember a key (before its state can be found in the cache or the store)."""
        bits = self._bits
        for p in self._positions(key):
            bits[p >> 3] |= 1 << (p & 7)

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, str):
            return False
        bits = self._bits
        return all(bits[p >> 3] >> (p & 7) & 1 for p in self._positions(key))
