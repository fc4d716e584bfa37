"""When a gap in one replica's sequence of seqs is permanent, and closing it.

Events are named by ``(replica, seq)`` and a replica's seqs are contiguous,
except where a seq was taken and its event never reached any log (a write
that failed after taking it, an outbox row the broker refused for good).
Such a gap never fills: every later seq of that replica stays a loose dot
in each context that tracks what arrived (the applier's applied context,
the history's recorded and trimmed contexts and its cursors), and those
contexts grow without bound.

:func:`close_gaps` is the one rule that decides a gap is permanent, shared
by the applied context (:func:`gateway.service.heal_gaps`) and the history
(:class:`gateway.history.History`): given the same dots both close the same
gaps, so the history never declares seen an event the applied context still
waits for. Pure: the callers log what it closed.
"""

from __future__ import annotations

from typing import NamedTuple

from replication import dvv
from replication.dvv import DotContext

__all__ = ["MAX_LOOSE_SEQS", "ClosedGap", "close_gaps"]

# Loose seqs a context may hold before its gaps are looked at. Reads across
# partitions run ahead of a gap only briefly (a link catching up after a 30 s
# partition: up to 2,800 loose dots), so a gap with more than half of this
# waiting behind it belongs to an event that never reached any log.
MAX_LOOSE_SEQS = 10_000


class ClosedGap(NamedTuple):
    """A gap :func:`close_gaps` closed: ``replica``'s seqs up to ``upto`` are now held."""

    replica: str
    upto: int  # the replica's vector entry now (just below its lowest loose seq)
    waiting: int  # the loose seqs that were waiting behind the gap


def close_gaps(
    ctx: DotContext, limit: int = MAX_LOOSE_SEQS
) -> tuple[DotContext, tuple[ClosedGap, ...]]:
    """``ctx`` with its permanent gaps closed, and which (``ctx`` itself if none).

    Only once the cloud holds more than ``limit`` dots (one length check
    otherwise): then each replica with more than ``limit // 2`` loose seqs
    has its vector entry moved to just below its lowest loose seq, which
    folds in the run that follows. The closed seqs are then held as if their
    events had arrived; an event that does arrive later with one of them is
    a duplicate to whatever deduplicates by this context (it was late past
    the bound, not lost — which is why the bound is far beyond any delay
    seen, and why callers log each closing as an error).
    """
    if len(ctx.cloud) <= limit:
        return ctx, ()
    by_replica: dict[str, list[int]] = {}
    for d in ctx.cloud:
        by_replica.setdefault(d.replica, []).append(d.counter)
    vv = dict(ctx.vv)
    closed: list[ClosedGap] = []
    for replica, counters in by_replica.items():
        if len(counters) > limit // 2:
            upto = min(counters) - 1
            vv[replica] = max(vv.get(replica, 0), upto)
            closed.append(ClosedGap(replica, upto, len(counters)))
    if not closed:
        return ctx, ()
    return dvv.join(DotContext(vv, ()), dvv.context_of(ctx.cloud)), tuple(closed)
