"""A bounded LRU cache of memory states, bounded in bytes, not entries.

The applier writes every state it stores through :meth:`StateCache.put`, so
the cache never holds a state older than the store's; the read path fills it
on a miss. Hit and miss counts feed the ``cache hit ratio`` metric.
"""

from __future__ import annotations

from collections import OrderedDict

from replication.state import MemoryState, encode_state

__all__ = ["StateCache"]

# Bytes per entry beyond the encoded state: a decoded MemoryState holds its
# fields as Python objects (measured with tracemalloc: encoded size + ~1,450 B
# for 300 B to 10 KB states), plus the LRU node, the tuple and the key.
_OVERHEAD = 1600


class StateCache:
    """Key → :class:`MemoryState`, evicting least recently used past ``max_bytes``."""

    def __init__(self, max_bytes: int) -> None:
        self._max = max_bytes
        self._entries: OrderedDict[str, tuple[MemoryState, int]] = OrderedDict()
        self._bytes = 0
        self.hits = 0
        self.misses = 0

    @property
    def size_bytes(self) -> int:
        """Estimated bytes held."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> MemoryState | None:
        """The cached state, counting a hit or a miss."""
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return entry[0]

    def peek(self, key: str) -> MemoryState | None:
        """The cached state without touching recency or counters."""
        entry = self._entries.get(key)
        return entry[0] if entry else None

    def put(self, state: MemoryState, size: int | None = None) -> None:
        """Cache a state (replacing an older one)."""
        key = state.key
        cost = (size if size is not None else len(encode_state(state))) + len(key) + _OVERHEAD
        if cost > self._max:
            self.discard(key)
            return
        old = self._entries.pop(key, None)
        if old is not None:
            self._bytes -= old[1]
        self._entries[key] = (state, cost)
        self._bytes += cost
        while self._bytes > self._max:
            _, (_, evicted) = self._entries.popitem(last=False)
            self._bytes -= evicted

    def discard(self, key: str) -> None:
        """Drop a key."""
        old = self._entries.pop(key, None)
        if old is not None:
            self._bytes -= old[1]

    def clear(self) -> None:
        """Drop everything."""
        self._entries.clear()
        self._bytes = 0
