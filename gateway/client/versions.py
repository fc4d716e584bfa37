"""The version tokens a client has seen: what ``if_match="auto"`` sends back."""

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
    """A bounded LRU map memory id → the last version token seen of it."""

    def __init__(self, max_entries: int) -> None:
        self._max = max(max_entries, 1)
        self._versions: OrderedDict[str, str] = OrderedDict()

    def get(self, memory_id: str) -> str | None:
        """The last version seen, or ``None``."""
        return self._versions.get(memory_id)

    def remember(self, views: Iterable[MemoryView]) -> None:
        """Record the versions of memories a gateway answered with."""
        for view in views:
            if view.version:
                self._versions[view.id] = view.version
                self._versions.move_to_end(view.id)
        while len(self._versions) > self._max:
            self._versions.popitem(last=False)
