"""What the client reads off the wire: typed answers of the HTTP and stream APIs.

Memories are :class:`replication.state.MemoryView` (the gateways' own reader
type) and replicated states :class:`replication.state.MemoryState`; these
structs only wrap them. Decoders are built once and ignore unknown fields, so
an older client keeps working against a newer gateway.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import msgspec

from replication.schema import MemoryEvent
from replication.state import MemoryState, MemoryView

__all__ = [
    "Change",
    "Frame",
    "ListPage",
    "Removed",
    "SearchHit",
    "SyncPage",
    "WriteResult",
    "decode_frame",
    "decode_list",
    "decode_memory",
    "decode_search",
    "decode_sync",
    "decode_write",
]


class _Written(MemoryView, frozen=True, kw_only=True):
    degraded: bool = False


@dataclass(frozen=True, slots=True)
class WriteResult:
    """A write's answer: the memory as the writer's gateway computed it.

    ``degraded``: the gateway accepted the write into its local outbox only
    (202); it is durable there and reaches the log when the log is back.
    """

    memory: MemoryView
    degraded: bool
    session: str

    @property
    def id(self) -> str:
        """The memory's id."""
        return self.memory.id

    @property
    def version(self) -> str:
        """The version token to send back as ``If-Match``."""
        return self.memory.version


class ListPage(msgspec.Struct, frozen=True, kw_only=True):
    """One page of ``GET /v1/memories``."""

    memories: tuple[MemoryView, ...] = ()
    next_page_token: str | None = None


class SearchHit(msgspec.Struct, frozen=True, kw_only=True):
    """One ranked search result."""

    memory: MemoryView
    score: float


class _SearchAnswer(msgspec.Struct, frozen=True):
    results: tuple[SearchHit, ...] = ()


class Removed(msgspec.Struct, frozen=True, kw_only=True):
    """A memory a replay page or a stream batch says left the channels asked for (no content)."""

    id: str
    key: str


class SyncPage(msgspec.Struct, frozen=True, kw_only=True):
    """One page of ``GET /v1/sync``: views, their full states, and where to resume.

    Two kinds of page share this shape. A **replay** page (asked with
    ``since``) lists what changed after ``since``; ``cursor`` is where it
    ends, and with ``has_more`` the next page is asked with ``since=cursor``.
    A **snapshot** page (asked without ``since``) lists live memories;
    ``cursor`` is the snapshot's *start* on every page (where a subscription
    resumes once the whole snapshot is in), and with ``has_more`` the next
    page is asked with ``page_token`` — asking ``since=cursor`` instead would
    replay the changes after the start, not the rest of the snapshot.
    ``removed`` (replay pages) names memories shown after ``since`` that the
    token may no longer see on these channels (made private, moved off a
    topic, deleted out of sight): drop them.
    """

    changes: tuple[MemoryView, ...] = ()
    states: tuple[MemoryState, ...] = ()
    removed: tuple[Removed, ...] = ()
    cursor: str
    has_more: bool = False
    page_token: str | None = None


class Frame(msgspec.Struct, frozen=True, kw_only=True):
    """One server → client stream message (WebSocket frame or SSE ``data``).

    ``event`` / ``events`` stay raw so each is decoded and validated by
    :func:`replication.schema.decode_event`, the gateways' own decoder.
    ``id`` and ``key`` name the memory of a ``left`` message (it left the
    subscription's channels; no content comes with it); a ``batch`` lists
    such memories in ``left``.
    """

    op: str
    event: msgspec.Raw = msgspec.Raw()
    events: tuple[msgspec.Raw, ...] = ()
    states: tuple[MemoryState, ...] = ()
    left: tuple[Removed, ...] = ()
    id: str = ""
    key: str = ""
    channels: tuple[str, ...] = ()
    cursor: str | None = None
    code: str = ""
    message: str = ""


@dataclass(frozen=True, slots=True)
class Change:
    """What a subscription callback receives: one memory whose cached state changed.

    ``view`` is the memory after the change (``view.deleted`` for a
    tombstone; ``version`` is empty, see :meth:`LocalCache.view`). ``event``
    is the event that caused it — for a coalesced batch the latest event of
    that memory, ``None`` when only a state arrived (batch without an event
    for it, or a resync snapshot). ``origin`` says which: ``event``,
    ``batch`` or ``resync``. ``cursor`` is where the stream stood after it.

    ``gone``: the memory has been dropped from the cache; ``view`` and
    ``state`` are the last ones held, ``event`` is ``None``. Reported once,
    for one of two reasons:

    - ``origin="event"`` (a ``left`` message) or ``"batch"`` (a batch's
      ``left``): the server said the memory left the subscription's channels
      (made private, moved off a topic) and no other holder of the cache
      still has it (see :class:`~gateway.client.cache.LocalCache`; while
      another subscription of the client may still see it, it is kept and
      nothing is reported). No content of the change that took it away is
      sent;
    - ``origin="resync"``: after a resync's full snapshot, this memory was
      held live in the cache, its cached state put it on one of the
      subscription's channels, and the snapshot (which lists live memories
      only) did not contain it — it was deleted, or moved off these
      channels, while the history was gone. A memory created after the
      snapshot started may be reported gone and then arrive again through
      the replay from the snapshot's cursor.
    """

    key: str
    view: MemoryView
    state: MemoryState
    event: MemoryEvent | None
    origin: Literal["event", "batch", "resync"]
    cursor: str | None
    gone: bool = False


_memory = msgspec.json.Decoder(MemoryView)
_written = msgspec.json.Decoder(_Written)
_list = msgspec.json.Decoder(ListPage)
_search = msgspec.json.Decoder(_SearchAnswer)
_sync = msgspec.json.Decoder(SyncPage)
_frame = msgspec.json.Decoder(Frame)


def decode_memory(body: bytes) -> MemoryView:
    """A memory answer."""
    return _memory.decode(body)


def decode_write(body: bytes, session: str) -> WriteResult:
    """A write answer (201/200/202) and the session token it carried."""
    w = _written.decode(body)
    fields = {f: getattr(w, f) for f in MemoryView.__struct_fields__}
    return WriteResult(memory=MemoryView(**fields), degraded=w.degraded, session=session)


def decode_list(body: bytes) -> ListPage:
    """A list page."""
    return _list.decode(body)


def decode_search(body: bytes) -> tuple[SearchHit, ...]:
    """Search results, best first."""
    return _search.decode(body).results


def decode_sync(body: bytes) -> SyncPage:
    """A sync page."""
    return _sync.decode(body)


def decode_frame(data: str | bytes) -> Frame:
    """A stream message."""
    return _frame.decode(data)
