"""Dots, contexts and dotted version vectors on hand-picked cases."""

from __future__ import annotations

from replication import dvv
from replication.dvv import EMPTY, Dot, DotContext, DottedVersion, Order


def test_contiguous_dots_compress_to_a_vector() -> None:
    ctx = dvv.context_of([Dot("a", 1), Dot("a", 2), Dot("b", 1)])
    assert ctx == DotContext({"a": 2, "b": 1}, ())


def test_out_of_order_dot_stays_in_the_cloud_until_its_gap_fills() -> None:
    ctx = dvv.add(EMPTY, Dot("a", 3))
    assert ctx.cloud == (Dot("a", 3),)
    assert not dvv.contains(ctx, Dot("a", 2))
    ctx = dvv.add(dvv.add(ctx, Dot("a", 1)), Dot("a", 2))
    assert ctx == DotContext({"a": 3}, ())


def test_join_is_the_union_of_dots() -> None:
    a = dvv.context_of([Dot("a", 1), Dot("b", 2)])
    b = dvv.context_of([Dot("b", 1), Dot("c", 1)])
    assert set(dvv.dots(dvv.join(a, b))) == {Dot("a", 1), Dot("b", 1), Dot("b", 2), Dot("c", 1)}


def test_compare_reports_each_relation() -> None:
    small = dvv.from_vector({"a": 1})
    big = dvv.from_vector({"a": 2, "b": 1})
    other = dvv.from_vector({"c": 1})
    assert dvv.compare(small, big) is Order.BEFORE
    assert dvv.compare(big, small) is Order.AFTER
    assert dvv.compare(big, big) is Order.EQUAL
    assert dvv.compare(small, other) is Order.CONCURRENT


def test_subset_needs_every_cloud_dot() -> None:
    a = dvv.from_vector({"a": 3})
    b = DotContext({"a": 1}, (Dot("a", 3),))
    assert not dvv.is_subset(a, b)
    assert dvv.is_subset(b, a)


def test_versions_covered_by_a_context_precede_it() -> None:
    v1 = DottedVersion(Dot("a", 1), EMPTY)
    v2 = DottedVersion(Dot("b", 1), dvv.from_vector({"a": 1}))
    v3 = DottedVersion(Dot("c", 1), EMPTY)
    assert dvv.compare_versions(v1, v2) is Order.BEFORE
    assert dvv.compare_versions(v2, v1) is Order.AFTER
    assert dvv.compare_versions(v2, v3) is Order.CONCURRENT
    assert dvv.live_siblings([v1, v2, v3, v2]) == (v2, v3)


def test_blind_writes_by_one_replica_stay_concurrent() -> None:
    """A later dot of the same replica does not supersede an earlier one it never saw."""
    v1 = DottedVersion(Dot("a", 1), EMPTY)
    v2 = DottedVersion(Dot("a", 2), EMPTY)
    assert dvv.compare_versions(v1, v2) is Order.CONCURRENT
