"""State digests: compare regions cheaply, find what differs.

A memory's digest is a hash of its canonical encoding, so equal states have
equal digests. A set's digest combines member digests with XOR of keyed
hashes: order-independent, updatable in O(1) when one member changes, and
splittable into buckets by key hash for a Merkle-style descent (Dynamo /
Riak AAE): regions compare the root, then only the buckets that differ.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import msgspec

from replication.state import MemoryState, encode_state

__all__ = [
    "DIGEST_BYTES",
    "SetDigest",
    "bucket_of",
    "combine",
    "differing_buckets",
    "member_hash",
    "state_digest",
]

DIGEST_BYTES = 16
_ZERO = bytes(DIGEST_BYTES)


def state_digest(state: MemoryState) -> bytes:
    """The 16-byte digest of one memory's state."""
    return hashlib.blake2b(encode_state(state), digest_size=DIGEST_BYTES).digest()


def member_hash(key: str, digest: bytes) -> bytes:
    """What one member contributes to a set digest."""
    h = hashlib.blake2b(key.encode(), digest_size=DIGEST_BYTES, key=digest[:DIGEST_BYTES])
    return h.digest()


def _xor(a: bytes, b: bytes) -> bytes:
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).to_bytes(DIGEST_BYTES, "big")


def bucket_of(key: str, buckets: int) -> int:
    """The bucket a key falls in (stable across processes and regions)."""
    h = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return int.from_bytes(h, "big") % buckets


class SetDigest(msgspec.Struct, frozen=True):
    """A combinable digest of a set of memories, bucketed by key."""

    buckets: tuple[bytes, ...]
    count: int = 0

    @classmethod
    def empty(cls, buckets: int = 256) -> SetDigest:
        """The digest of no memories."""
        return cls(tuple(_ZERO for _ in range(buckets)), 0)

    @property
    def root(self) -> bytes:
        """One digest for the whole set."""
        out = _ZERO
        for b in self.buckets:
            out = _xor(out, b)
        return out

    def add(self, key: str, digest: bytes) -> SetDigest:
        """The digest with a member added."""
        return self._toggle(key, digest, +1)

    def remove(self, key: str, digest: bytes) -> SetDigest:
        """The digest with a member removed (e.g. before re-adding it changed)."""
        return self._toggle(key, digest, -1)

    def _toggle(self, key: str, digest: bytes, delta: int) -> SetDigest:
        i = bucket_of(key, len(self.buckets))
        buckets = list(self.buckets)
        buckets[i] = _xor(buckets[i], member_hash(key, digest))
        return SetDigest(tuple(buckets), self.count + delta)


def combine(members: Iterable[tuple[str, bytes]], buckets: int = 256) -> SetDigest:
    """The set digest of ``(key, state digest)`` pairs."""
    acc = [0] * buckets
    count = 0
    for key, digest in members:
        acc[bucket_of(key, buckets)] ^= int.from_bytes(member_hash(key, digest), "big")
        count += 1
    return SetDigest(tuple(a.to_bytes(DIGEST_BYTES, "big") for a in acc), count)


def differing_buckets(a: SetDigest, b: SetDigest) -> list[int]:
    """The buckets whose digests differ (both sides must use the same bucket count)."""
    if len(a.buckets) != len(b.buckets):
        raise ValueError(f"bucket counts differ: {len(a.buckets)} vs {len(b.buckets)}")
    return [i for i, (x, y) in enumerate(zip(a.buckets, b.buckets, strict=True)) if x != y]
