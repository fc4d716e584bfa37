"""Pull sync (``GET /v1/sync``) shows what live delivery shows, from state as new as its cursor."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from deploy.tansu import TansuBroker
from gateway.app import create_app
from gateway.keys import RUNTIME
from gateway.testing import InMemoryStore
from replication.state import MemoryState

from .harness import Gateway, eventually, settings_for, token

GATEWAY_OPTIONS = {"sticky_session": True}
BOB = token(users=("bob",), agent="bob-agent")  # may act for bob only


async def _write(gw: Gateway, method: str, path: str, **body: Any) -> dict[str, Any]:
    resp, data = await gw.request(method, path, json=body or None)
    assert resp.status in (200, 201), data
    return dict(data)


async def _sync(gw: Gateway, query: str, tok: str = BOB) -> dict[str, Any]:
    resp, body = await gw.request("GET", f"/v1/sync?{query}", token_=tok)
    assert resp.status == 200, body
    return dict(body)


async def test_sync_since_never_returns_a_memory_that_left_the_readers_channels(
    gw: Gateway,
) -> None:
    """A memory made private after the cursor is listed as removed, without its content (I7)."""
    channels = "tenant:acme:shared,topic:plans:updates"
    cursor = (await _sync(gw, f"channels={channels}"))["cursor"]
    await _write(gw, "POST", "/v1/memories", user_id="alice", id="m1", kind="fact",
                 content="team lunch friday", topics=["plans"], shared=True)  # fmt: skip
    await _write(gw, "POST", "/v1/memories", user_id="alice", id="m2", kind="fact",
                 content="still shared", shared=True)  # fmt: skip
    await _write(gw, "POST", "/v1/memories", user_id="alice", id="m3", kind="fact",
                 content="soon gone", shared=True)  # fmt: skip
    await _write(gw, "PATCH", "/v1/memories/m1", content="SECRET: alice's note", shared=False)
    await _write(gw, "DELETE", "/v1/memories/m3")
    await _write(gw, "POST", "/v1/memories", user_id="alice", id="m4", kind="fact",
                 content="applied last")  # fmt: skip
    _, alice_view = await gw.request("GET", "/v1/memories/m4")  # waits for all of alice's writes
    assert alice_view["id"] == "m4"
    for query in (f"channels={channels}", "channels=tenant:acme:shared",
                  "channels=topic:plans:updates"):  # fmt: skip
        page = await _sync(gw, f"{query}&since={cursor}")
        assert "SECRET" not in json.dumps(page), page
        shown = {m["id"]: m for m in page["changes"]}
        assert {s["id"] for s in page["states"]} == set(shown)
        assert "m1" not in shown
        assert {"id": "m1", "key": "acme/m1"} in page["removed"]
        if "tenant" in query:
            assert shown["m2"]["content"] == "still shared"
            assert shown["m3"]["deleted"] is True  # its delete went to the channel: a tombstone
    owner = await _sync(gw, f"channels=user:alice:memories&since={cursor}", token(users=("alice",)))
    assert {m["id"]: m["content"] for m in owner["changes"]}["m1"] == "SECRET: alice's note"
    assert owner["removed"] == []


async def _snapshot(gw: Gateway, channels: str, limit: int, tok: str = BOB) -> list[str]:
    """Every memory id of a paged snapshot, in page order."""
    page = await _sync(gw, f"channels={channels}&limit={limit}", tok)
    ids = [m["id"] for m in page["changes"]]
    while page["has_more"]:
        page = await _sync(gw, f"channels={channels}&limit={limit}&page_token={page['page_token']}",
                           tok)  # fmt: skip
        assert len(page["changes"]) <= limit
        ids.extend(m["id"] for m in page["changes"])
    return ids


async def test_a_snapshot_of_a_topic_shows_other_users_shared_memories_as_live_delivery_does(
    gw: Gateway,
) -> None:
    for mid, user, shared in (
        ("p1", "alice", True),
        ("p2", "alice", False),
        ("p3", "carol", True),
        ("p4", "carol", False),
        ("p5", "alice", True),
        ("b1", "bob", False),
    ):
        await _write(gw, "POST", "/v1/memories", user_id=user, id=mid, kind="fact",
                     content=f"about tea ({mid})", topics=["tea"], shared=shared)  # fmt: skip
    for mid in ("p5", "p4", "b1"):  # each user's last write applied: the others are too
        resp, _ = await gw.request("GET", f"/v1/memories/{mid}")
        assert resp.status == 200
    for limit in (1, 2, 100):
        ids = await _snapshot(gw, "topic:tea:updates", limit)
        assert sorted(ids) == ["b1", "p1", "p3", "p5"], limit  # never p2 or p4
    everyone = await _snapshot(gw, "topic:tea:updates", 2, token())
    assert sorted(everyone) == ["b1", "p1", "p2", "p3", "p4", "p5"]


class _GatedStore(InMemoryStore):
    """An in-memory store whose writes wait while the gate is shut (a store that lags)."""

    def __init__(self) -> None:
        super().__init__(vector_dim=8)
        self.gate = asyncio.Event()
        self.gate.set()

    async def put_many(self, states: Sequence[MemoryState]) -> None:
        await self.gate.wait()
        await super().put_many(states)


@pytest.fixture
async def lagging(
    tmp_path: Path, broker: TansuBroker
) -> AsyncIterator[tuple[TestClient[Any, Any], _GatedStore]]:
    """A gateway over a store that can be made to lag, with no cache to hide it."""
    store = _GatedStore()
    settings = settings_for(tmp_path / "lag", broker.bootstrap, cache_bytes=1, ryw_wait_ms=300)
    client = TestClient(TestServer(create_app(settings, store=store)))
    await client.start_server()
    try:
        yield client, store
    finally:
        store.gate.set()
        await client.close()


async def test_sync_waits_for_a_lagging_store_instead_of_answering_past_it(
    lagging: tuple[TestClient[Any, Any], _GatedStore],
) -> None:
    """A cursor never covers a change the answer misses: 503 while the store lags (I6)."""
    client, store = lagging
    alice = {"Authorization": f"Bearer {token()}"}
    bob = {"Authorization": f"Bearer {BOB}"}
    start = await (await client.get("/v1/sync?channels=tenant:acme:shared", headers=bob)).json()
    body = {"user_id": "alice", "id": "m1", "kind": "fact", "content": "lunch", "shared": True}
    made = await client.post("/v1/memories", headers=alice, json=body)
    assert made.status == 201
    history = client.app[RUNTIME].streams.history  # type: ignore[index]
    tracker = client.app[RUNTIME].service.tracker  # type: ignore[index]
    await eventually(lambda: _true(tracker.covers(history.head.context)), what="m1 stored")
    store.gate.clear()  # the store stops taking writes; the history goes on
    hidden = await client.patch("/v1/memories/m1", headers=alice,
                                json={"content": "SECRET", "shared": False})  # fmt: skip
    assert hidden.status == 200
    await eventually(lambda: _true(history.head.idx >= 2), what="the update to be recorded")
    since = f"/v1/sync?channels=tenant:acme:shared&since={start['cursor']}"
    lagged = await client.get(since, headers=bob)
    assert lagged.status == 503, await lagged.text()  # not the stale shared version
    assert "Retry-After" in lagged.headers
    snapshot = await client.get("/v1/sync?channels=tenant:acme:shared", headers=bob)
    assert snapshot.status == 503  # its start cursor covers the update too
    store.gate.set()
    page = await (await client.get(since, headers=bob)).json()
    assert page["changes"] == [] and page["removed"] == [{"id": "m1", "key": "acme/m1"}]
    snap = await (await client.get("/v1/sync?channels=tenant:acme:shared", headers=bob)).json()
    assert snap["changes"] == []


async def _true(value: bool) -> bool:
    return value
