"""The SDK against a real gateway: paged snapshots, resync reconciliation, bad cursors."""

from __future__ import annotations

import asyncio
from typing import Any

from structlog.testing import capture_logs

from gateway.client import Change, MemorySync, StreamOptions

from .harness import Gateway, eventually, token

# A short history, so that a cursor from before a dozen writes needs a resync.
GATEWAY_OPTIONS: dict[str, Any] = {"sticky_session": True, "limits": {"history_max_events": 5}}
FAST = StreamOptions(initial_backoff=0.01, max_backoff=0.1, jitter=0.01, idle_timeout=10.0)
ALICE = "user:alice:memories"
DRINKS = "topic:drinks:updates"


def _base(gw: Gateway) -> str:
    assert gw.client is not None
    return str(gw.client.make_url("")).rstrip("/")


async def _listed(gw: Gateway, query: str, n: int) -> None:
    """Wait until the store lists ``n`` memories for ``query`` (the snapshot reads the store)."""

    async def ready() -> bool:
        _, body = await gw.request("GET", f"/v1/memories?{query}&limit=100")
        return len(body["memories"]) == n

    await eventually(ready, what=f"{n} memories listed for {query}")


async def test_warm_pulls_every_page_of_a_snapshot_larger_than_the_limit(gw: Gateway) -> None:
    async with MemorySync(_base(gw), gw.default_token, stream=FAST) as ms:
        ids = [f"p{i}" for i in range(7)]
        for mid in ids:
            await ms.create("alice", "fact", id=mid, content=mid)
        await _listed(gw, "user_id=alice", len(ids))

        cursor = await ms.warm([ALICE], limit=3)

        assert sorted(v.id for v in ms.cache.views()) == ids
        first = await ms.sync([ALICE], limit=3)
        assert first.has_more and first.page_token and first.cursor
        pages = [first]
        while pages[-1].has_more:
            pages.append(await ms.sync([ALICE], limit=3, page_token=pages[-1].page_token))
        assert sorted(s.id for p in pages for s in p.states) == ids
        assert {p.cursor for p in pages} == {first.cursor}  # the snapshot's start, every page
        # The warm's cursor is the snapshot's start: a subscription from it gets what follows.
        changes: list[Change] = []
        sub = ms.subscribe([ALICE], changes.append)
        await asyncio.wait_for(sub.connected.wait(), 10)
        assert sub.cursor is not None and cursor
        await ms.create("alice", "fact", id="after", content="after")
        await eventually(lambda: _true(any(c.view.id == "after" for c in changes)))
        await sub.close()


async def _true(value: bool) -> bool:
    return value


async def _drinks(phone: MemorySync) -> None:
    """x, y and z on topic drinks."""
    for mid in ("x", "y", "z"):
        await phone.create("alice", "fact", id=mid, content=mid, topics=["drinks"])


async def _gap(gw: Gateway, phone: MemorySync) -> None:
    """While nobody listens: x deleted, z moved to topic food, and the history trimmed past both."""
    await phone.delete("x", if_match="auto")
    await phone.update("z", if_match="auto", topics=["food"])
    for i in range(8):
        await phone.create("bob", "fact", id=f"b{i}", content="filler")
    await _listed(gw, "user_id=bob", 8)
    await _listed(gw, "topic=drinks", 1)


async def test_a_resync_drops_and_reports_memories_deleted_or_moved_away_meanwhile(
    gw: Gateway,
) -> None:
    async with (
        MemorySync(_base(gw), gw.default_token) as phone,
        MemorySync(_base(gw), gw.default_token, stream=FAST) as laptop,
    ):
        before: list[Change] = []
        sub = laptop.subscribe([DRINKS], before.append)
        await asyncio.wait_for(sub.connected.wait(), 10)
        await _drinks(phone)
        await eventually(lambda: _true(len(laptop.cache) == 3), what="x, y, z cached")
        stale = sub.cursor
        await sub.close()
        await _gap(gw, phone)

        changes: list[Change] = []
        with capture_logs() as logs:
            sub = laptop.subscribe([DRINKS], changes.append, since=stale)
            await asyncio.wait_for(sub.connected.wait(), 10)
        assert "memsync_subscription_resync" in [e["event"] for e in logs]

        gone = sorted(c.key for c in changes if c.gone)
        assert gone == ["acme/x", "acme/z"]  # each reported once
        assert all(c.origin == "resync" and not c.view.deleted for c in changes if c.gone)
        assert "acme/x" not in laptop.cache and "acme/z" not in laptop.cache
        y = laptop.cache.view("acme/y")
        assert y is not None and not y.deleted
        # Live again from the snapshot's cursor.
        await phone.update("y", if_match="auto", content="y2")
        await eventually(lambda: _true(any(c.view.content == "y2" for c in changes)))
        assert sorted(c.key for c in changes if c.gone) == gone
        await sub.close()


async def test_warm_after_resync_required_drops_memories_the_snapshot_no_longer_lists(
    gw: Gateway,
) -> None:
    async with (
        MemorySync(_base(gw), gw.default_token) as phone,
        MemorySync(_base(gw), gw.default_token) as tablet,
    ):
        await _drinks(phone)
        await _listed(gw, "topic=drinks", 3)
        stale = await tablet.warm([DRINKS])
        assert len(tablet.cache) == 3
        await _gap(gw, phone)

        with capture_logs() as logs:
            await tablet.warm([DRINKS], since=stale)

        assert "memsync_warm_resync" in [e["event"] for e in logs]
        assert [v.id for v in tablet.cache.views(include_deleted=True)] == ["y"]


async def test_a_cursor_the_gateway_cannot_decode_is_dropped_for_a_resync(gw: Gateway) -> None:
    async with MemorySync(_base(gw), gw.default_token, stream=FAST) as ms:
        await ms.create("alice", "fact", id="kept", content="kept")
        await _listed(gw, "user_id=alice", 1)
        foreign = "v1.bm90LW91cnM.aW52YWxpZA"  # not a cursor this gateway issued
        changes: list[Change] = []
        with capture_logs() as logs:
            sub = ms.subscribe([ALICE], changes.append, since=foreign)
            await asyncio.wait_for(sub.connected.wait(), 10)

        (warning,) = [e for e in logs if e["event"] == "memsync_subscription_bad_cursor"]
        assert warning["cause"] == "bad_token" and warning["cursor"] == foreign
        assert sub.cursor not in (None, foreign)
        assert [(c.key, c.origin) for c in changes] == [("acme/kept", "resync")]
        await ms.create("alice", "fact", id="live", content="live")
        await eventually(lambda: _true(any(c.view.id == "live" for c in changes)))
        await sub.close()
    await _listed(gw, "user_id=alice", 2)
    async with MemorySync(_base(gw), gw.default_token) as tablet:  # warm's fallback alike
        assert await tablet.warm([ALICE], since=foreign) not in ("", foreign)
        assert sorted(v.id for v in tablet.cache.views()) == ["kept", "live"]


async def test_warm_since_a_cursor_drops_what_left_the_channels(gw: Gateway) -> None:
    """A replay page's ``removed``: a memory made private is dropped, with no content sent."""
    bob = token(users=("bob",))
    shared = "tenant:acme:shared"
    async with (
        MemorySync(_base(gw), gw.default_token, stream=FAST) as alice,
        MemorySync(_base(gw), bob, stream=FAST) as reader,
    ):
        start = await reader.warm([shared])
        await alice.create("alice", "fact", id="s", content="for everyone", shared=True)
        await _listed(gw, "user_id=alice", 1)

        async def cached() -> bool:
            await reader.warm([shared], since=start)
            return reader.cache.view("s") is not None

        await eventually(cached, what="the shared memory in the reader's cache")
        await alice.update("s", if_match="auto", content="alice only", shared=False)

        async def removed() -> bool:
            page = await reader.sync([shared], since=start)
            assert all(v.content != "alice only" for v in page.changes)  # never the content
            return [r.id for r in page.removed] == ["s"] and page.states == ()

        await eventually(removed, what="the memory listed as removed")
        await reader.warm([shared], since=start)
        assert reader.cache.view("s") is None
