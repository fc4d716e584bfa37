"""What a full snapshot says is gone: reconciling the cache after a resync.

A resync (the cursor's history is gone) joins a ``/v1/sync`` snapshot into
the :class:`LocalCache`. Joining only adds: the snapshot lists *live*
memories, so a memory deleted — or moved off the channels (topics changed,
no longer shared) — while the history was gone would stay live in the cache
forever. After the *whole* snapshot is in, :func:`drop_missing` drops every
cached, not-deleted memory that its cached state puts on one of the
snapshot's channels but that the snapshot did not list.

Which channels a cached memory is on is computed as the gateways route it
(:func:`replication.routing.channels_for` over the materialized view). Topic
and tenant snapshots list only what the token may see; anything in the cache
came from this token's answers, so it may see it too.

The snapshot is not atomic: a memory created after its start may be missing
from it yet already cached (by another subscription sharing the cache). It is
released too (dropped unless that subscription holds it), and comes back with
the replay from the snapshot's start cursor, which a subscription resumes
from. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable

from gateway.client.cache import Holder, LocalCache
from replication.routing import channels_for
from replication.state import MemoryState, materialize

__all__ = ["drop_missing", "on_channels"]


def on_channels(state: MemoryState, channels: Collection[str]) -> bool:
    """Whether events about this state go to one of ``channels`` (the system channel never)."""
    view = materialize(state)
    routed = channels_for(
        tenant_id=view.tenant_id, user_id=view.user_id, topics=view.topics, shared=view.shared
    )
    return any(ch in channels for ch in routed)


def drop_missing(
    cache: LocalCache, channels: Iterable[str], seen: Collection[str], holder: Holder | None = None
) -> list[MemoryState]:
    """Drop what a complete snapshot of ``channels`` did not list; the states dropped.

    ``seen``: the keys (``tenant/id``) of every state of every page of the
    snapshot. Tombstones and memories on none of ``channels`` are kept.
    With ``holder`` (the snapshot's subscription or warm), a missing memory
    is only released by it, and dropped when no other holder has it (one
    that does, e.g. a live subscription of its user's channel, still sees
    it: were it gone there too, that subscription would have been told).
    """
    wanted = frozenset(channels)
    missing = [
        s for s in cache.states() if s.key not in seen and not s.deleted and on_channels(s, wanted)
    ]
    if holder is None:
        for state in missing:
            cache.discard(state.key)
        return missing
    return [s for s in missing if cache.release(s.key, holder) is not None]
