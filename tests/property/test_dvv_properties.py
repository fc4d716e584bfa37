"""Causal contexts behave exactly like the sets of dots they stand for."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from replication import dvv
from replication.dvv import Dot, DotContext, Order

from .strategies import contexts, dot_sets, dots


@given(dot_sets, dots)
def test_membership_is_exact(members: frozenset[Dot], probe: Dot) -> None:
    assert dvv.contains(dvv.context_of(members), probe) == (probe in members)


@given(dot_sets)
def test_context_holds_exactly_its_dots(members: frozenset[Dot]) -> None:
    ctx = dvv.context_of(members)
    assert set(dvv.dots(ctx)) == members
    assert dvv.size(ctx) == len(members)


@given(dot_sets, dot_sets)
def test_join_is_set_union(a: frozenset[Dot], b: frozenset[Dot]) -> None:
    assert dvv.join(dvv.context_of(a), dvv.context_of(b)) == dvv.context_of(a | b)


@given(dot_sets, dots)
def test_add_is_insertion(a: frozenset[Dot], d: Dot) -> None:
    assert dvv.add(dvv.context_of(a), d) == dvv.context_of(a | {d})


@given(st.lists(dots, max_size=60))
def test_adding_dots_one_by_one_in_any_order_gives_the_normal_context(seq: list[Dot]) -> None:
    # The history and fan-out build contexts this way (dvv.add's fast paths).
    ctx = dvv.EMPTY
    for d in seq:
        ctx = dvv.add(ctx, d)
        assert dvv.contains(ctx, d)
    assert ctx == dvv.context_of(seq)
    assert list(ctx.cloud) == sorted(ctx.cloud)


@given(st.lists(dots, max_size=30), st.dictionaries(st.sampled_from("abc"), st.integers(-2, 5)))
def test_any_decoded_context_normalises_to_the_same_set(
    loose: list[Dot], vv: dict[str, int]
) -> None:
    raw = DotContext(vv, tuple(loose))  # as decoded from a request: any order, any counters
    members = {Dot(r, c) for r, n in vv.items() for c in range(1, n + 1)} | set(loose)
    assert dvv.normalised(raw) == dvv.context_of(members)


@given(contexts, contexts)
def test_join_is_commutative(a: DotContext, b: DotContext) -> None:
    assert dvv.join(a, b) == dvv.join(b, a)


@given(contexts, contexts, contexts)
def test_join_is_associative(a: DotContext, b: DotContext, c: DotContext) -> None:
    assert dvv.join(dvv.join(a, b), c) == dvv.join(a, dvv.join(b, c))


@given(contexts)
def test_join_is_idempotent(a: DotContext) -> None:
    assert dvv.join(a, a) == a


@given(contexts, contexts)
def test_join_is_an_upper_bound(a: DotContext, b: DotContext) -> None:
    j = dvv.join(a, b)
    assert dvv.compare(a, j) in (Order.BEFORE, Order.EQUAL)
    assert dvv.compare(b, j) in (Order.BEFORE, Order.EQUAL)


@given(dot_sets, dot_sets)
def test_compare_is_set_inclusion(a: frozenset[Dot], b: frozenset[Dot]) -> None:
    expected = (
        Order.EQUAL
        if a == b
        else Order.BEFORE
        if a < b
        else Order.AFTER
        if a > b
        else Order.CONCURRENT
    )
    assert dvv.compare(dvv.context_of(a), dvv.context_of(b)) is expected


@given(contexts)
def test_compare_is_reflexive(a: DotContext) -> None:
    assert dvv.compare(a, a) is Order.EQUAL


@given(contexts, contexts)
def test_compare_is_antisymmetric(a: DotContext, b: DotContext) -> None:
    if dvv.compare(a, b) is Order.BEFORE:
        assert dvv.compare(b, a) is Order.AFTER
    if dvv.is_subset(a, b) and dvv.is_subset(b, a):
        assert a == b


@given(contexts, contexts, contexts)
def test_compare_is_transitive(a: DotContext, b: DotContext, c: DotContext) -> None:
    if dvv.is_subset(a, b) and dvv.is_subset(b, c):
        assert dvv.is_subset(a, c)
