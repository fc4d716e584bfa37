"""Dots, causal contexts and dotted version vectors.

A **dot** ``(replica, counter)`` names one write uniquely: the gateway that
made it and that gateway's counter *for that memory* (counters run 1, 2, 3 …
per replica and memory, so a context compresses to a version vector).

A **causal context** is an exact set of dots, stored as a version vector
(every dot of replica *r* with counter ≤ ``vv[r]``) plus a *cloud* of dots
beyond the contiguous prefix (dots that arrived out of order). The cloud
folds into the vector as soon as its gap fills, so contexts stay small, and
membership is exact whatever the delivery order — which is what makes every
merge in :mod:`replication.merge` independent of arrival order.

A **dotted version vector** (Preguiça et al.) is one version: its own dot and
the context its writer had seen. ``v1`` precedes ``v2`` exactly when ``v2``'s
context holds ``v1``'s dot; versions with distinct dots that do not precede
each other are concurrent.
"""

from __future__ import annotations

import bisect
import enum
from collections.abc import Iterable, Mapping

import msgspec

__all__ = [
    "EMPTY",
    "Dot",
    "DotContext",
    "DottedVersion",
    "Order",
    "add",
    "compare",
    "compare_versions",
    "contains",
    "context_of",
    "dots",
    "from_vector",
    "is_subset",
    "join",
    "join_all",
    "live_siblings",
    "normalised",
    "size",
]


class Dot(msgspec.Struct, frozen=True, gc=False, array_like=True, order=True):
    """One write's unique name: ``(replica, counter)``."""

    replica: str
    counter: int


class DotContext(msgspec.Struct, frozen=True, gc=False, array_like=True):
    """An exact set of dots: a version vector plus a cloud of loose dots.

    Always normalised (see :func:`_normalise`): counters in ``vv`` are ≥ 1,
    cloud dots lie strictly beyond their replica's vector entry and the cloud
    is sorted, so two contexts holding the same dots are equal as values.
    """

    vv: dict[str, int] = msgspec.field(default_factory=dict)
    cloud: tuple[Dot, ...] = ()


EMPTY = DotContext()


class Order(enum.Enum):
    """How two causal histories relate."""

    EQUAL = "equal"
    BEFORE = "before"
    AFTER = "after"
    CONCURRENT = "concurrent"


class DottedVersion(msgspec.Struct, frozen=True, gc=False, array_like=True):
    """One version: its own dot and the causal context its writer had seen."""

    dot: Dot
    context: DotContext


def contains(ctx: DotContext, dot: Dot) -> bool:
    """Whether ``ctx`` holds ``dot`` (the cloud is sorted: a binary search)."""
    if dot.counter <= ctx.vv.get(dot.replica, 0):
        return True
    cloud = ctx.cloud
    if not cloud:
        return False
    i = bisect.bisect_left(cloud, dot)
    return i < len(cloud) and cloud[i] == dot


def _normalise(vv: dict[str, int], loose: Iterable[Dot]) -> DotContext:
    """Fold loose dots into the vector wherever they extend it contiguously."""
    by_replica: dict[str, set[int]] = {}
    for d in loose:
        if d.counter > vv.get(d.replica, 0):
            by_replica.setdefault(d.replica, set()).add(d.counter)
    cloud: list[Dot] = []
    for replica, counters in by_replica.items():
        top = vv.get(replica, 0)
        while top + 1 in counters:
            top += 1
            counters.discard(top)
        if top:
            vv[replica] = top
        cloud.extend(Dot(replica, c) for c in counters if c > top)
    cloud.sort()
    return DotContext({r: c for r, c in vv.items() if c > 0}, tuple(cloud))


def add(ctx: DotContext, dot: Dot) -> DotContext:
    """``ctx`` with ``dot`` added, in O(log cloud) comparisons.

    A dot that extends its replica's vector entry folds in the cloud dots
    that continue the run; any other goes into the sorted cloud. (Adding
    dots one by one is the hot path of the history and fan-out, where the
    cloud holds the seqs read ahead of a gap across partitions.)
    """
    if contains(ctx, dot):
        return ctx
    cloud = ctx.cloud
    top = ctx.vv.get(dot.replica, 0)
    if dot.counter == top + 1:
        top = dot.counter
        if cloud:
            lo = hi = bisect.bisect_left(cloud, Dot(dot.replica, top + 1))
            while hi < len(cloud) and cloud[hi] == Dot(dot.replica, top + 1):
                top += 1
                hi += 1
            if hi > lo:
                cloud = cloud[:lo] + cloud[hi:]
        vv = dict(ctx.vv)
        vv[dot.replica] = top
        return DotContext(vv, cloud)
    i = bisect.bisect_left(cloud, dot)
    # The vector is unchanged; contexts are never mutated, so it is shared.
    return DotContext(ctx.vv, (*cloud[:i], dot, *cloud[i:]))


def normalised(ctx: DotContext) -> DotContext:
    """``ctx`` in normal form; for contexts decoded from outside (any order, any counters)."""
    return _normalise({r: c for r, c in ctx.vv.items() if c > 0}, ctx.cloud)


def join(a: DotContext, b: DotContext) -> DotContext:
    """The union of two contexts (commutative, associative, idempotent)."""
    if a is b or not (b.vv or b.cloud):
        return a
    if not (a.vv or a.cloud):
        return b
    vv = dict(a.vv)
    for replica, counter in b.vv.items():
        if counter > vv.get(replica, 0):
            vv[replica] = counter
    if not a.cloud and not b.cloud:
        return DotContext(vv, ())
    return _normalise(vv, (*a.cloud, *b.cloud))


def join_all(contexts: Iterable[DotContext]) -> DotContext:
    """The union of any number of contexts."""
    out = EMPTY
    for ctx in contexts:
        out = join(out, ctx)
    return out


def from_vector(vector: Mapping[str, int]) -> DotContext:
    """The context holding every dot up to each replica's counter."""
    return DotContext({r: int(c) for r, c in vector.items() if c > 0}, ())


def context_of(dots_: Iterable[Dot]) -> DotContext:
    """The smallest context holding ``dots_``."""
    return _normalise({}, dots_)


def is_subset(a: DotContext, b: DotContext) -> bool:
    """Whether every dot of ``a`` is in ``b``."""
    for replica, top in a.vv.items():
        have = b.vv.get(replica, 0)
        if top > have:
            cloud = {d.counter for d in b.cloud if d.replica == replica}
            if any(c not in cloud for c in range(have + 1, top + 1)):
                return False
    return all(contains(b, d) for d in a.cloud)


def compare(a: DotContext, b: DotContext) -> Order:
    """Compare two causal histories (a partial order: set inclusion)."""
    a_in_b = is_subset(a, b)
    b_in_a = is_subset(b, a)
    if a_in_b and b_in_a:
        return Order.EQUAL
    if a_in_b:
        return Order.BEFORE
    if b_in_a:
        return Order.AFTER
    return Order.CONCURRENT


def compare_versions(a: DottedVersion, b: DottedVersion) -> Order:
    """Compare two dotted version vectors by their dots and contexts."""
    if a.dot == b.dot:
        return Order.EQUAL
    if contains(b.context, a.dot):
        return Order.BEFORE
    if contains(a.context, b.dot):
        return Order.AFTER
    return Order.CONCURRENT


def live_siblings(versions: Iterable[DottedVersion]) -> tuple[DottedVersion, ...]:
    """The versions no other version supersedes (the sibling set), by dot."""
    vs = list({v.dot: v for v in versions}.values())
    seen = join_all(v.context for v in vs)
    return tuple(sorted((v for v in vs if not contains(seen, v.dot)), key=lambda v: v.dot))


def dots(ctx: DotContext) -> Iterable[Dot]:
    """Every dot of ``ctx`` (for tests and small contexts)."""
    for replica, top in ctx.vv.items():
        for counter in range(1, top + 1):
            yield Dot(replica, counter)
    yield from ctx.cloud


def size(ctx: DotContext) -> int:
    """How many dots ``ctx`` holds."""
    return sum(ctx.vv.values()) + len(ctx.cloud)
