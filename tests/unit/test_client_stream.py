"""Subscription supervision against a scripted in-process gateway: backoff, bad cursors, errors."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import msgspec
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from structlog.testing import capture_logs

from gateway.client import (
    Change,
    MemorySync,
    MemsyncClientError,
    StreamOptions,
    SubscriptionError,
)
from replication import merge
from replication.dvv import EMPTY, Dot
from replication.events import make_event
from replication.schema import MemoryBody, Source, encode
from replication.testing import Replica

CHANNEL = "user:alice:memories"
OnSubscribe = Callable[[web.WebSocketResponse, dict[str, Any], int], Awaitable[None]]


class _Gateway:
    """A scripted gateway: each subscribe answered by ``on_subscribe``, ``/v1/sync`` by ``sync``."""

    def __init__(self, on_subscribe: OnSubscribe, sync: bytes = b"") -> None:
        self.subscribes: list[dict[str, Any]] = []
        self.syncs: list[dict[str, str]] = []
        self._on_subscribe = on_subscribe
        self._sync_body = sync
        app = web.Application()
        app.router.add_get("/v1/subscribe", self._ws)
        app.router.add_get("/v1/sync", self._sync)
        self.server = TestServer(app)

    @property
    def url(self) -> str:
        return str(self.server.make_url("")).rstrip("/")

    async def _ws(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        op = json.loads((await ws.receive()).data)
        self.subscribes.append(op)
        await self._on_subscribe(ws, op, len(self.subscribes))
        await ws.close()
        return ws

    async def _sync(self, request: web.Request) -> web.Response:
        self.syncs.append(dict(request.query))
        return web.Response(body=self._sync_body, content_type="application/json")


@pytest.fixture
async def started() -> AsyncIterator[Callable[[_Gateway], Awaitable[_Gateway]]]:
    running: list[_Gateway] = []

    async def start(gateway: _Gateway) -> _Gateway:
        await gateway.server.start_server()
        running.append(gateway)
        return gateway

    yield start
    for gateway in running:
        await gateway.server.close()


async def _subscribed(ws: web.WebSocketResponse, cursor: str = "C") -> None:
    await ws.send_str(json.dumps({"op": "subscribed", "channels": [CHANNEL], "cursor": cursor}))


async def _hold(ws: web.WebSocketResponse) -> None:
    async for _ in ws:
        pass


def _snapshot(memory_id: str, cursor: str) -> bytes:
    body = MemoryBody(id=memory_id, tenant_id="t", user_id="alice", kind="fact", policy="lww")
    event = make_event(
        event_id=f"{memory_id}-1",
        event_type="create",
        memory=body,
        source=Source(agent_id="a"),
        context=EMPTY,
        dot=Dot("r1", 1),
        seq=1,
        timestamp=1001 << 16,
    )
    state = merge.apply(None, event)
    return msgspec.json.encode({"states": [state], "cursor": cursor, "has_more": False})


async def _ended(ms: MemorySync, since: str | None = None) -> SubscriptionError:
    sub = ms.subscribe([CHANNEL], lambda _change: None, since=since)
    with pytest.raises(SubscriptionError) as info:
        await asyncio.wait_for(sub.wait(), 5)
    assert sub.closed and sub.error is info.value
    return info.value


async def test_sessions_dropped_right_after_the_handshake_back_off_and_give_up(
    started: Callable[[_Gateway], Awaitable[_Gateway]],
) -> None:
    gateway = await started(_Gateway(lambda ws, op, n: _subscribed(ws)))
    opts = StreamOptions(initial_backoff=0.01, jitter=0.0, max_attempts=3, stable_after=60.0)
    async with MemorySync(gateway.url, "tok", stream=opts) as ms:
        with capture_logs() as logs:
            error = await _ended(ms)
    assert error.code == "gave_up"
    assert "gave up after 3 attempts" in error.message and "session lost" in error.message
    assert len(gateway.subscribes) == 3
    waits = [e["wait_s"] for e in logs if e["event"] == "memsync_subscription_reconnecting"]
    assert waits == [0.01, 0.02]  # exponential, between sessions too


async def test_a_stable_sessions_loss_reconnects_at_once_with_the_failure_count_reset(
    started: Callable[[_Gateway], Awaitable[_Gateway]],
) -> None:
    """With one attempt allowed and a 30 s backoff, only resets let it reconnect, and at once."""
    fifth = asyncio.Event()

    async def flap(ws: web.WebSocketResponse, op: dict[str, Any], n: int) -> None:
        await _subscribed(ws)
        if n == 5:
            fifth.set()
            await _hold(ws)

    gateway = await started(_Gateway(flap))
    opts = StreamOptions(initial_backoff=30.0, jitter=0.0, max_attempts=1, stable_after=0.0)
    async with MemorySync(gateway.url, "tok", stream=opts) as ms:
        sub = ms.subscribe([CHANNEL], lambda _change: None)
        await asyncio.wait_for(fifth.wait(), 5)
        await asyncio.wait_for(sub.connected.wait(), 5)
        assert sub.error is None and not sub.closed and sub.reconnects == 4


async def test_a_slow_consumer_drop_is_a_failed_attempt_however_long_the_session(
    started: Callable[[_Gateway], Awaitable[_Gateway]],
) -> None:
    async def slow(ws: web.WebSocketResponse, op: dict[str, Any], n: int) -> None:
        await _subscribed(ws)
        drop = {"op": "error", "code": "slow_consumer", "message": "behind", "cursor": f"S{n}"}
        await ws.send_str(json.dumps(drop))

    gateway = await started(_Gateway(slow))
    opts = StreamOptions(initial_backoff=0.01, jitter=0.0, max_attempts=2, stable_after=0.0)
    async with MemorySync(gateway.url, "tok", stream=opts) as ms:
        error = await _ended(ms)
    assert error.code == "gave_up" and "slow consumer" in error.message
    assert [op.get("since") for op in gateway.subscribes] == [None, "S1"]


async def test_bad_token_for_the_sent_cursor_resyncs_from_a_snapshot(
    started: Callable[[_Gateway], Awaitable[_Gateway]],
) -> None:
    async def answer(ws: web.WebSocketResponse, op: dict[str, Any], n: int) -> None:
        if op.get("since") == "FOREIGN":
            bad = {"op": "error", "code": "bad_token", "message": "token is not genuine"}
            await ws.send_str(json.dumps(bad))
        else:
            await _subscribed(ws, "HEAD")
        await _hold(ws)

    gateway = await started(_Gateway(answer, sync=_snapshot("x", "HEAD")))
    changes: list[Change] = []
    opts = StreamOptions(initial_backoff=0.01, jitter=0.0, max_attempts=3)
    async with MemorySync(gateway.url, "tok", stream=opts) as ms:
        with capture_logs() as logs:
            sub = ms.subscribe([CHANNEL], changes.append, since="FOREIGN")
            await asyncio.wait_for(sub.connected.wait(), 5)
    assert [op.get("since") for op in gateway.subscribes] == ["FOREIGN", "HEAD"]
    assert gateway.syncs == [{"channels": CHANNEL}]  # a snapshot: no since
    assert [(c.key, c.origin) for c in changes] == [("t/x", "resync")]
    (warning,) = [e for e in logs if e["event"] == "memsync_subscription_bad_cursor"]
    assert (warning["cause"], warning["cursor"]) == ("bad_token", "FOREIGN")


async def test_bad_token_without_a_cursor_ends_the_subscription_saying_what_to_do(
    started: Callable[[_Gateway], Awaitable[_Gateway]],
) -> None:
    async def bad(ws: web.WebSocketResponse, op: dict[str, Any], n: int) -> None:
        await ws.send_str(json.dumps({"op": "error", "code": "bad_token", "message": "huh"}))
        await _hold(ws)

    gateway = await started(_Gateway(bad))
    opts = StreamOptions(initial_backoff=0.01, jitter=0.0)
    async with MemorySync(gateway.url, "tok", stream=opts) as ms:
        error = await _ended(ms)
    assert error.code == "bad_token" and "upgrade" in error.message
    assert len(gateway.subscribes) == 1


async def test_an_undecodable_resync_snapshot_ends_with_a_subscription_error(
    started: Callable[[_Gateway], Awaitable[_Gateway]],
) -> None:
    async def gone(ws: web.WebSocketResponse, op: dict[str, Any], n: int) -> None:
        await ws.send_str(json.dumps({"op": "error", "code": "resync_required", "message": "-"}))

    gateway = await started(_Gateway(gone, sync=b'{"cursor": 5}'))
    opts = StreamOptions(initial_backoff=0.01, jitter=0.0)
    async with MemorySync(gateway.url, "tok", stream=opts) as ms:
        error = await _ended(ms, since="OLD")
    assert error.code == "failed"
    assert isinstance(error.__cause__, msgspec.ValidationError)


async def test_a_snapshot_with_more_pages_but_no_page_token_is_a_clear_error(
    started: Callable[[_Gateway], Awaitable[_Gateway]],
) -> None:
    gateway = await started(
        _Gateway(lambda ws, op, n: _hold(ws), sync=b'{"cursor": "HEAD", "has_more": true}')
    )
    async with MemorySync(gateway.url, "tok") as ms:
        with pytest.raises(MemsyncClientError, match="no page_token") as info:
            await ms.warm([CHANNEL])
    assert info.value.code == "protocol"


# -- left: a memory that left the subscription's channels -------------------------------

SHARED = "tenant:t:shared"


def _writes() -> tuple[Replica, list[bytes]]:
    """Memories m and n of alice created, and n updated: each event's JSON."""
    r = Replica("r1")
    events = [
        r.write("m", "fact", "create", tenant="t", user="alice", content="m"),
        r.write("n", "fact", "create", tenant="t", user="alice", content="n"),
        r.write("n", "fact", "update", content="n2", tenant="t"),
    ]
    return r, [encode(e) for e in events if e is not None]


def _frame(ws: web.WebSocketResponse, **fields: Any) -> Awaitable[None]:
    return ws.send_bytes(encode(fields))


def _event(ws: web.WebSocketResponse, raw: bytes, cursor: str) -> Awaitable[None]:
    return ws.send_str(f'{{"op":"event","event":{raw.decode()},"cursor":"{cursor}"}}')


async def _until(check: Callable[[], bool], what: str) -> None:
    """Wait up to 5 s for ``check()`` (the subscription's task runs meanwhile)."""
    for _ in range(500):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


async def test_a_left_drops_the_memory_reports_it_gone_and_adopts_the_cursor(
    started: Callable[[_Gateway], Awaitable[_Gateway]],
) -> None:
    _, (m, _, _) = _writes()

    async def script(ws: web.WebSocketResponse, op: dict[str, Any], n: int) -> None:
        await _subscribed(ws)
        await _event(ws, m, "E1")
        await _frame(ws, op="left", id="m", key="t/m", cursor="L1")
        await _hold(ws)

    gateway = await started(_Gateway(script))
    changes: list[Change] = []
    async with MemorySync(gateway.url, "tok") as ms:
        sub = ms.subscribe([CHANNEL], changes.append)
        await _until(lambda: any(c.gone for c in changes), "the memory reported gone")
        assert sub.cursor == "L1"
        assert "t/m" not in ms.cache
    created, gone = changes
    assert (created.key, created.origin, created.gone) == ("t/m", "event", False)
    assert (gone.key, gone.origin, gone.event, gone.cursor) == ("t/m", "event", None, "L1")
    assert gone.view.content == "m" and gone.state == created.state  # the last one held


async def test_a_batch_left_drops_the_memory_and_reports_it_gone(
    started: Callable[[_Gateway], Awaitable[_Gateway]],
) -> None:
    r, (m, n, n2) = _writes()

    async def script(ws: web.WebSocketResponse, op: dict[str, Any], k: int) -> None:
        await _subscribed(ws)
        await _event(ws, m, "E1")
        await _event(ws, n, "E2")
        batch = {
            "op": "batch",
            "events": [msgspec.Raw(n2)],
            "states": [r.states["t/n"]],
            "left": [{"id": "m", "key": "t/m"}],
            "cursor": "B3",
        }
        await _frame(ws, **batch)
        await _hold(ws)

    gateway = await started(_Gateway(script))
    changes: list[Change] = []
    async with MemorySync(gateway.url, "tok") as ms:
        sub = ms.subscribe([CHANNEL], changes.append)
        await _until(lambda: any(c.gone for c in changes), "the memory reported gone")
        assert sub.cursor == "B3"
        assert "t/m" not in ms.cache
        assert [v.content for v in ms.cache.views()] == ["n2"]
    batch = [(c.key, c.gone, c.cursor) for c in changes if c.origin == "batch"]
    assert batch == [("t/n", False, "B3"), ("t/m", True, "B3")]
    (gone,) = (c for c in changes if c.gone)
    assert gone.event is None and gone.view.content == "m"


async def test_a_left_keeps_a_memory_another_subscription_holds(
    started: Callable[[_Gateway], Awaitable[_Gateway]],
) -> None:
    _, (m, _, _) = _writes()
    mine_left = asyncio.Event()

    async def script(ws: web.WebSocketResponse, op: dict[str, Any], n: int) -> None:
        await _subscribed(ws)
        await _event(ws, m, f"{op['channels'][0]}-E1")
        if op["channels"] == [SHARED]:
            await _frame(ws, op="left", id="m", key="t/m", cursor="shared-L2")
        else:
            await mine_left.wait()
            await _frame(ws, op="left", id="m", key="t/m", cursor="mine-L2")
        await _hold(ws)

    gateway = await started(_Gateway(script))
    mine: list[Change] = []
    shared: list[Change] = []
    async with MemorySync(gateway.url, "tok") as ms:
        own = ms.subscribe([CHANNEL], mine.append)
        await _until(lambda: len(mine) == 1, "the memory through the user channel")
        sub = ms.subscribe([SHARED], shared.append)
        await _until(lambda: sub.cursor == "shared-L2", "the left through the tenant channel")
        assert ms.cache.view("t/m") is not None  # still held through the user channel
        assert ms.cache.holders("t/m") == {frozenset({CHANNEL})}
        assert shared == [] and not any(c.gone for c in mine)  # a duplicate, then kept
        mine_left.set()
        await _until(lambda: any(c.gone for c in mine), "the memory gone for the last holder")
        assert own.cursor == "mine-L2"
        assert "t/m" not in ms.cache
    assert shared == []


async def test_a_closed_subscription_holds_nothing_more(
    started: Callable[[_Gateway], Awaitable[_Gateway]],
) -> None:
    """Closed, its hold is withdrawn: the other subscription's ``left`` then drops the memory."""
    _, (m, _, _) = _writes()
    closed = asyncio.Event()

    async def script(ws: web.WebSocketResponse, op: dict[str, Any], n: int) -> None:
        await _subscribed(ws)
        await _event(ws, m, f"{op['channels'][0]}-E1")
        if op["channels"] == [SHARED]:
            await closed.wait()
            await _frame(ws, op="left", id="m", key="t/m", cursor="shared-L2")
        await _hold(ws)

    gateway = await started(_Gateway(script))
    shared: list[Change] = []
    async with MemorySync(gateway.url, "tok") as ms:
        own = ms.subscribe([CHANNEL], lambda c: None)
        sub = ms.subscribe([SHARED], shared.append)
        await _until(
            lambda: ms.cache.holders("t/m") == {frozenset({CHANNEL}), frozenset({SHARED})},
            "both subscriptions holding the memory",
        )
        await own.close()
        assert ms.cache.holders("t/m") == {frozenset({SHARED})}
        closed.set()
        await _until(lambda: any(c.gone for c in shared), "the memory gone for the last holder")
        assert sub.cursor == "shared-L2" and "t/m" not in ms.cache


async def test_a_memory_two_users_created_is_reported_gone_without_its_content(
    started: Callable[[_Gateway], Awaitable[_Gateway]],
) -> None:
    """A token that may see both users' creates of one id (say, the tenant's shared
    channel) makes the cache's state contested: the callback is told it is gone,
    and no view it gets shows either user's content."""
    mine = Replica("r1").write("x", "fact", "create", tenant="t", user="alice", content="A")
    theirs = Replica("r2").write("x", "fact", "create", tenant="t", user="bob", content="BOB")
    assert mine is not None and theirs is not None

    async def script(ws: web.WebSocketResponse, op: dict[str, Any], n: int) -> None:
        await _subscribed(ws)
        await _event(ws, encode(mine), "E1")
        await _event(ws, encode(theirs), "E2")
        await _hold(ws)

    gateway = await started(_Gateway(script))
    changes: list[Change] = []
    async with MemorySync(gateway.url, "tok") as ms:
        ms.subscribe([CHANNEL], changes.append)
        await _until(lambda: len(changes) == 2, "both events reported")
    shown, withheld = changes
    assert (shown.gone, shown.view.content) == (False, "A")
    assert withheld.gone and withheld.state is not None and withheld.state.contested
    assert withheld.view.content == "" and withheld.view.conflicts == ()
