"""The SDK against a real gateway: a memory that left a subscription's channels leaves the cache."""

from __future__ import annotations

import asyncio

import msgspec

from gateway.client import Change, MemorySync, StreamOptions

from .harness import Gateway, eventually, token

FAST = StreamOptions(initial_backoff=0.01, max_backoff=0.1, jitter=0.01, idle_timeout=10.0)
ALICE = "user:alice:memories"
SHARED = "tenant:acme:shared"


def _base(gw: Gateway) -> str:
    assert gw.client is not None
    return str(gw.client.make_url("")).rstrip("/")


async def _true(value: bool) -> bool:
    return value


def _secret_in(change: Change) -> bool:
    return "SECRET" in change.view.content or b"SECRET" in msgspec.json.encode(change.state)


async def test_a_memory_made_private_is_dropped_and_reported_gone_without_its_new_content(
    gw: Gateway,
) -> None:
    async with (
        MemorySync(_base(gw), gw.default_token, stream=FAST) as alice,
        MemorySync(_base(gw), token(users=("bob",)), stream=FAST) as bob,
    ):
        changes: list[Change] = []
        sub = bob.subscribe([SHARED], changes.append)
        await asyncio.wait_for(sub.connected.wait(), 10)
        await alice.create("alice", "fact", id="s", content="for everyone", shared=True)
        await eventually(
            lambda: _true(bob.cache.view("acme/s") is not None), what="s in bob's cache"
        )
        seen = sub.cursor

        await alice.update("s", if_match="auto", content="SECRET: alice only", shared=False)

        await eventually(lambda: _true(any(c.gone for c in changes)), what="s reported gone")
        (gone,) = [c for c in changes if c.gone]
        assert (gone.key, gone.origin, gone.event) == ("acme/s", "event", None)
        assert gone.view.content == "for everyone"  # the last view bob held
        assert "acme/s" not in bob.cache and bob.cache.view("s") is None
        assert sub.cursor == gone.cursor and sub.cursor != seen  # the left's cursor adopted
        assert not any(_secret_in(c) for c in changes)
        assert all(b"SECRET" not in msgspec.json.encode(s) for s in bob.cache.states())
        await sub.close()


async def test_a_memory_made_private_stays_for_the_owner_subscribed_to_both_channels(
    gw: Gateway,
) -> None:
    async with MemorySync(_base(gw), gw.default_token, stream=FAST) as alice:
        mine: list[Change] = []
        shared: list[Change] = []
        own = alice.subscribe([ALICE], mine.append)
        tenant = alice.subscribe([SHARED], shared.append)
        await asyncio.wait_for(own.connected.wait(), 10)
        await asyncio.wait_for(tenant.connected.wait(), 10)
        await alice.create("alice", "fact", id="s", content="for everyone", shared=True)

        async def held_by_both() -> bool:
            return alice.cache.holders("acme/s") == {frozenset({ALICE}), frozenset({SHARED})}

        await eventually(held_by_both, what="s held through both subscriptions")

        await alice.update("s", if_match="auto", content="SECRET: alice only", shared=False)

        async def left_and_updated() -> bool:
            view = alice.cache.view("acme/s")
            updated = view is not None and view.content == "SECRET: alice only"
            # The left comes at the update's position: the tenant stream stands where it is.
            return updated and tenant.cursor == own.cursor

        await eventually(
            left_and_updated, what="the update on the user channel, the left on the other"
        )
        view = alice.cache.view("acme/s")
        assert view is not None and not view.shared and not view.deleted
        assert alice.cache.is_complete("acme/s")  # kept, never dropped and refilled
        assert alice.cache.holders("acme/s") == {frozenset({ALICE})}
        assert not any(c.gone for c in (*mine, *shared))
        assert any(c.view.content == "SECRET: alice only" for c in mine)
        assert not any(_secret_in(c) for c in shared)
        await own.close()
        await tenant.close()
