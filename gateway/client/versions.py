"""The version tokens a client has seen: what ``if_match="auto"`` sends back.

A version token is the gateway's sealed causal context of a memory's state
(opaque to the client). Answers do not all come from the same place: a write
answer is the gateway's state right after the write, a consistent ``get``
waits for this client's writes, but ``list``, ``search``, ``sync`` and
``get(consistent=False)`` come from the store, which may trail the log (and
other regions trail this one). Remembering whichever answer came last would
let a trailing read replace a newer version, and ``if_match="auto"`` would
then send a context that misses writes this client already saw — a delete
with it leaves the missed writes live.

So the book never moves backwards, ordered by the states' ``updated_at``
(the latest event timestamp a state holds: a state that has seen more
events never has an earlier one):

- a **read** answer replaces the held version only when its ``updated_at``
  is *later*; an equal one is almost always the same state, and keeping the
  held token is then never a step back;
- a **write** answer always replaces it: it holds the write itself, which
  every version read before lacks, so anything else would make the next
  ``if_match="auto"`` miss this client's own last write.

Within one region this holds: the store applies a memory's events in log
order, and a write's timestamp is later than every event its gateway has
applied (the applier advances the gateway's clock). Across a failover it is
the best the client can do without reading the tokens: a later read from
another region that lacks this client's last write but holds a later foreign
one wins — it is what the client last read.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable

from replication.state import MemoryView

__all__ = ["VersionBook", "parse_etag"]


def parse_etag(value: str | None) -> str | None:
    """The version token inside an ``ETag`` header (quotes and ``W/`` removed)."""
    if not value:
        return None
    value = value.strip()
    if value.startswith("W/"):
        value = value[2:]
    return value.strip('"') or None


class VersionBook:
    """A bounded LRU map memory id → the newest version token seen of it (module docstring)."""

    def __init__(self, max_entries: int) -> None:
        self._max = max(max_entries, 1)
        self._versions: OrderedDict[str, tuple[str, int]] = OrderedDict()

    def get(self, memory_id: str) -> str | None:
        """The newest version seen, or ``None``."""
        held = self._versions.get(memory_id)
        return None if held is None else held[0]

    def remember(self, views: Iterable[MemoryView]) -> None:
        """Record the versions of memories a read answered with (never older than held).

        An equal ``updated_at`` replaces: a merged state keeps the greatest
        timestamp of its versions, so a state that joined a concurrent
        version written earlier (by HLC) than the held one ties with it and
        knows more. One that lacks the held write is strictly older.
        """
        for view in views:
            held = self._versions.get(view.id)
            if held is None or view.updated_at >= held[1]:
                self._put(view)

    def wrote(self, view: MemoryView) -> None:
        """Record a version that holds every write of this client (always kept).

        A write's answer, and a consistent read's (the gateway answered once
        this client's writes were applied there).
        """
        self._put(view)

    def _put(self, view: MemoryView) -> None:
        if not view.version:
            return
        self._versions[view.id] = (view.version, view.updated_at)
        self._versions.move_to_end(view.id)
        while len(self._versions) > self._max:
            self._versions.popitem(last=False)
