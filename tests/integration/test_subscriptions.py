"""Live subscriptions, cursors and pull sync on the real broker and store."""

from __future__ import annotations

import asyncio
import gc
import json
import random
import socket
from pathlib import Path
from typing import Any

import msgspec
import pytest
import uvloop
from aiohttp import ClientWebSocketResponse, WSMsgType

from deploy.tansu import TansuBroker
from gateway.client import LocalCache
from gateway.fanout import Subscription
from gateway.keys import CONNECTIONS
from replication.state import MemoryState

from .harness import Gateway, eventually, token

GATEWAY_OPTIONS = {"sticky_session": True}


async def _ws(gw: Gateway, tok: str | None = None) -> ClientWebSocketResponse:
    assert gw.client is not None
    return await gw.client.ws_connect(
        "/v1/subscribe", headers={"Authorization": f"Bearer {tok or gw.default_token}"}
    )


async def _recv(ws: ClientWebSocketResponse, within: float = 10.0) -> dict[str, Any]:
    msg = await asyncio.wait_for(ws.receive(), within)
    assert msg.type == WSMsgType.TEXT, msg
    data: dict[str, Any] = json.loads(msg.data)
    return data


async def _subscribe(ws: ClientWebSocketResponse, **op: Any) -> dict[str, Any]:
    await ws.send_json({"op": "subscribe", **op})
    while True:
        reply = await _recv(ws)
        if reply["op"] in ("subscribed", "error"):
            return reply


async def _events(ws: ClientWebSocketResponse, n: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    while len(out) < n:
        msg = await _recv(ws)
        if msg["op"] == "event":
            out.append(msg)
        elif msg["op"] == "batch":
            out.extend({"op": "event", "event": e, "cursor": msg["cursor"]} for e in msg["events"])
    return out


async def _write(gw: Gateway, method: str, path: str, **body: Any) -> dict[str, Any]:
    resp, data = await gw.request(method, path, json=body or None)
    assert resp.status in (200, 201), data
    return dict(data)


async def test_one_event_reaches_a_subscriber_once_across_matching_channels(gw: Gateway) -> None:
    ws = await _ws(gw)
    reply = await _subscribe(
        ws, channels=["user:alice:memories", "topic:tea:updates", "tenant:acme:shared"]
    )
    assert reply["op"] == "subscribed"
    await _write(gw, "POST", "/v1/memories", user_id="alice", id="m1", kind="fact",
                 content="green tea", topics=["tea"], shared=True)  # fmt: skip
    (got,) = await _events(ws, 1)
    assert got["event"]["memory"]["id"] == "m1"
    assert got["cursor"]
    await _write(gw, "POST", "/v1/memories", user_id="alice", id="m2", kind="fact")
    (nxt,) = await _events(ws, 1)
    assert nxt["event"]["memory"]["id"] == "m2"  # nothing duplicated in between
    assert gw.client is not None
    metrics = await (await gw.client.get("/metrics")).text()
    assert 'memsync_subscriptions{mode="eager",transport="websocket"} 1.0' in metrics
    # m1 is on three of its channels and counts once
    assert _sample(metrics, "memsync_subscriber_deliveries_total") == 2
    assert 'memsync_subscriptions{mode="lazy",transport="sse"} 0.0' in metrics
    await ws.close()


def _sample(metrics: str, name: str) -> float:
    """The value of an unlabelled sample in a Prometheus text page."""
    (line,) = [ln for ln in metrics.splitlines() if ln.startswith(name + " ")]
    return float(line.split()[1])


async def test_one_memorys_events_arrive_in_order(gw: Gateway) -> None:
    ws = await _ws(gw)
    await _subscribe(ws, channels=["user:alice:memories"])
    made = await _write(gw, "POST", "/v1/memories", user_id="alice", id="c", kind="counter")
    del made
    for _ in range(10):
        await _write(gw, "PATCH", "/v1/memories/c", increment=1)
    events = await _events(ws, 11)
    seqs = [e["event"]["seq"] for e in events]
    assert seqs == sorted(seqs)
    assert [e["event"]["memory"].get("value", 0) for e in events] == list(range(11))
    await ws.close()


async def test_lazy_subscription_coalesces_to_the_latest_state(gw: Gateway) -> None:
    ws = await _ws(gw)
    await _subscribe(ws, channels=["user:alice:memories"], mode="lazy", interval_ms=300)
    await _write(gw, "POST", "/v1/memories", user_id="alice", id="l", kind="list", items=["a"])
    for item in "bcdefg":
        await _write(gw, "PATCH", "/v1/memories/l", add=[item])
    cache = LocalCache()
    batches = 0
    while True:
        msg = await _recv(ws)
        if msg["op"] != "batch":
            continue
        batches += 1
        for state in msg["states"]:
            cache.join(msgspec.json.decode(json.dumps(state), type=MemoryState))
        view = cache.view("acme/l")
        if view is not None and len(view.items) == 7:
            break
    assert batches < 7  # coalesced, not one message per write
    _resp, server = await gw.request("GET", "/v1/memories/l")
    assert sorted(server["items"]) == sorted(view.items)
    await ws.close()


async def test_pull_sync_returns_changes_and_tombstones(gw: Gateway) -> None:
    resp, first = await gw.request("GET", "/v1/sync?channels=user:alice:memories")
    assert resp.status == 200, first
    cursor = first["cursor"]
    await _write(gw, "POST", "/v1/memories", user_id="alice", id="keep", kind="fact", content="k")
    await _write(gw, "POST", "/v1/memories", user_id="alice", id="gone", kind="fact")

    async def deletable() -> bool:
        r, _ = await gw.request("GET", "/v1/memories/gone")
        return r.status == 200

    await eventually(deletable, what="the create to apply")
    await _write(gw, "DELETE", "/v1/memories/gone")
    changes: dict[str, Any] = {}

    async def synced() -> bool:
        nonlocal cursor
        r, page = await gw.request("GET", f"/v1/sync?channels=user:alice:memories&since={cursor}")
        assert r.status == 200, page
        for m in page["changes"]:
            changes[m["id"]] = m
        cursor = page["cursor"]
        return "gone" in changes and changes["gone"]["deleted"] and "keep" in changes

    await eventually(synced, what="sync to report the change and the tombstone")
    assert changes["keep"]["deleted"] is False
    resp, snap = await gw.request("GET", "/v1/sync?channels=user:alice:memories")
    assert [m["id"] for m in snap["changes"]] == ["keep"]


async def test_resume_after_a_gateway_restart_has_no_gap(gw: Gateway) -> None:
    ws = await _ws(gw)
    await _subscribe(ws, channels=["user:alice:memories"])
    for i in range(3):
        await _write(gw, "POST", "/v1/memories", user_id="alice", id=f"a{i}", kind="fact")
    seen = await _events(ws, 3)
    cursor = seen[-1]["cursor"]
    await ws.close()
    for i in range(3, 6):
        await _write(gw, "POST", "/v1/memories", user_id="alice", id=f"a{i}", kind="fact")

    async def applied() -> bool:
        r, _ = await gw.request("GET", "/v1/memories/a5")
        return r.status == 200

    await eventually(applied, what="the writes made while away to apply")
    await gw.stop()
    await gw.start()
    ws = await _ws(gw)
    await ws.send_json({"op": "subscribe", "channels": ["user:alice:memories"], "since": cursor})
    # The replay and the live stream (events the restarted applier re-reads)
    # may interleave with the "subscribed" reply; what matters: a3..a5, once each.
    missed: list[str] = []
    received: list[dict[str, Any]] = []
    subscribed = False
    while len(missed) < 3 or not subscribed:
        try:
            msg = await _recv(ws)
        except TimeoutError:
            raise AssertionError(f"the resume stalled; it received {received}") from None
        received.append(msg)
        if msg["op"] == "event":
            missed.append(msg["event"]["memory"]["id"])
        elif msg["op"] == "batch":  # queued events leave as one frame
            missed.extend(e["memory"]["id"] for e in msg["events"])
        subscribed = subscribed or msg["op"] == "subscribed"
    assert missed == ["a3", "a4", "a5"]
    await _write(gw, "POST", "/v1/memories", user_id="alice", id="a6", kind="fact")
    (live,) = await _events(ws, 1)
    assert live["event"]["memory"]["id"] == "a6"
    assert gw.client is not None
    metrics = await (await gw.client.get("/metrics")).text()
    assert "memsync_subscription_replays_total 1.0" in metrics  # the restarted gateway's
    await ws.close()


async def test_cursor_beyond_the_kept_history_gets_resync_required(
    tmp_path: Path, broker: TansuBroker
) -> None:
    g = await Gateway(
        tmp_path / "small", broker, limits={"history_max_events": 5}, sticky_session=True
    ).start()
    try:
        ws = await _ws(g)
        await _subscribe(ws, channels=["user:alice:memories"])
        await _write(g, "POST", "/v1/memories", user_id="alice", id="first", kind="fact")
        (first,) = await _events(ws, 1)
        await ws.close()
        for i in range(12):
            await _write(g, "POST", "/v1/memories", user_id="alice", id=f"n{i}", kind="fact")

        async def applied() -> bool:
            r, _ = await g.request("GET", "/v1/memories/n11")
            return r.status == 200

        await eventually(applied, what="the writes to apply")
        ws = await _ws(g)
        reply = await _subscribe(ws, channels=["user:alice:memories"], since=first["cursor"])
        assert reply["op"] == "error"
        assert reply["code"] == "resync_required"
        await ws.close()
        resp, body = await g.request(
            "GET", f"/v1/sync?channels=user:alice:memories&since={first['cursor']}"
        )
        assert resp.status == 410
        assert body["error"]["code"] == "resync_required"
        assert g.client is not None
        metrics = await (await g.client.get("/metrics")).text()
        assert "memsync_resync_required_total 2.0" in metrics  # the WebSocket and /v1/sync
        assert "memsync_subscription_replays_total 0.0" in metrics  # none was served
    finally:
        await g.stop()


async def test_channel_isolation(gw: Gateway) -> None:
    alice_only = token(users=("alice",))
    ws = await _ws(gw, alice_only)
    for channel in ("user:bob:memories", "tenant:globex:shared"):
        reply = await _subscribe(ws, channels=[channel])
        assert (reply["op"], reply["code"]) == ("error", "forbidden")
    reply = await _subscribe(ws, channels=["topic:secrets:updates"])
    assert reply["op"] == "subscribed"
    await _write(gw, "POST", "/v1/memories", user_id="bob", id="b1", kind="fact",
                 topics=["secrets"])  # fmt: skip
    await _write(gw, "POST", "/v1/memories", user_id="bob", id="b2", kind="fact",
                 topics=["secrets"], shared=True)  # fmt: skip
    (got,) = await _events(ws, 1)
    assert got["event"]["memory"]["id"] == "b2"  # bob's private memory never arrives
    other = await _ws(gw, token(tenant="globex"))
    await _subscribe(other, channels=["topic:secrets:updates"])
    await _write(gw, "POST", "/v1/memories", user_id="bob", id="b3", kind="fact",
                 topics=["secrets"], shared=True)  # fmt: skip
    with pytest.raises(asyncio.TimeoutError):
        while True:
            msg = await _recv(other, within=1.0)
            assert msg["op"] != "event", msg  # another tenant never sees acme's events
    await ws.close()
    await other.close()
    no_subscribe = token(scope=("read",))
    assert gw.client is not None
    resp = await gw.client.get("/v1/subscribe", headers={"Authorization": f"Bearer {no_subscribe}"})
    assert resp.status == 403


async def test_slow_subscriber_is_dropped_with_its_cursor(
    tmp_path: Path, broker: TansuBroker
) -> None:
    g = await Gateway(
        tmp_path / "slow",
        broker,
        sticky_session=True,
        limits={
            "subscriber_soft_limit": 2,
            "subscriber_hard_limit": 4,
            "max_body_bytes": 512 * 1024,
        },
    ).start()
    gc.collect()
    gc.disable()  # what the drop leaves must be freed by reference counting (see below)
    try:
        ws = await _ws(g)
        await _subscribe(ws, channels=["user:alice:memories"])
        big = "x" * 60_000
        for i in range(200):  # ~12 MB the client never reads: buffers fill, the pump blocks
            await _write(g, "POST", "/v1/memories", user_id="alice", id=f"s{i}", kind="fact",
                         content=big)  # fmt: skip

        async def dropped() -> bool:
            return len(g.runtime.streams.fanout) == 0

        await eventually(dropped, within=30, what="the slow subscriber to be dropped")
        last_error = None
        while True:
            msg = await asyncio.wait_for(ws.receive(), 10)
            if msg.type != WSMsgType.TEXT:
                break
            data = json.loads(msg.data)
            if data["op"] == "error":
                last_error = data
        assert last_error is not None
        assert last_error["code"] == "slow_consumer"
        assert last_error["cursor"]
        assert g.client is not None
        metrics = await (await g.client.get("/metrics")).text()
        assert 'memsync_subscriptions_closed_total{reason="slow_consumer"} 1.0' in metrics
        # It fell behind at least once (again after a coalesced batch went out, at times).
        assert _sample(metrics, "memsync_subscriber_coalescing_total") >= 1
        assert 'memsync_subscriber_writes_total{path="pump"}' in metrics
        live = g.client.app[CONNECTIONS]  # type: ignore[index]
        await eventually(lambda: _true(not live), what="the connection to end")
        await asyncio.sleep(0.1)
        assert _connections_in_garbage() == []  # its pump, socket and subscription included
    finally:
        gc.enable()
        await g.stop()


def _connections_in_garbage() -> list[str]:
    """Connection objects only a full collection would free (collected here, then dropped)."""
    from aiohttp import web

    from gateway.subscribe import _Connection

    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        gc.collect()
    finally:
        gc.set_debug(0)
    kinds = (_Connection, web.WebSocketResponse, Subscription)
    found = [type(o).__name__ for o in gc.garbage if isinstance(o, kinds)]
    gc.garbage.clear()
    return found


async def test_cursor_from_one_gateway_resumes_on_another(
    tmp_path: Path, broker: TansuBroker
) -> None:
    """Two gateways applying the same log keep different histories; a cursor works on both."""
    a = await Gateway(tmp_path / "a", broker, sticky_session=True).start()
    b = Gateway(tmp_path / "b", broker, region="other")
    try:
        ws = await _ws(a)
        await _subscribe(ws, channels=["user:alice:memories"])
        for i in range(2):
            await _write(a, "POST", "/v1/memories", user_id="alice", id=f"x{i}", kind="fact")
        seen = await _events(ws, 2)
        await ws.close()
        cursor = seen[-1]["cursor"]  # the client got x0, x1
        await _write(a, "POST", "/v1/memories", user_id="alice", id="x2", kind="fact")
        await b.start()  # applies the whole log in its own order, into its own history

        async def b_applied() -> bool:
            return await b.applied() >= 3

        await eventually(b_applied, what="the second gateway to apply the log")
        ws = await _ws(b)
        await ws.send_json(
            {"op": "subscribe", "channels": ["user:alice:memories"], "since": cursor}
        )
        (missed,) = await _events(ws, 1)
        assert missed["event"]["memory"]["id"] == "x2"
        reply = await _recv(ws)
        assert reply["op"] == "subscribed"
        await ws.close()
    finally:
        await a.stop()
        await b.stop()


async def test_sdk_cache_equals_the_server_after_a_random_workload(gw: Gateway) -> None:
    from gateway.client import MemorySync

    assert gw.client is not None
    base = str(gw.client.make_url(""))
    rng = random.Random(7)
    async with (
        MemorySync(base, gw.default_token) as phone,
        MemorySync(base, gw.default_token) as laptop,
    ):
        changes: list[Any] = []
        sub = laptop.subscribe(["user:alice:memories"], changes.append)
        await asyncio.wait_for(sub.connected.wait(), 10)
        ids = [f"w{i}" for i in range(6)]
        for mid in ids[:3]:
            await phone.create("alice", "fact", id=mid, content="v0")
        await phone.create("alice", "list", id="w-list", items=["a"])
        await phone.create("alice", "counter", id="w-count", value=1)
        for step in range(40):
            choice = rng.random()
            if choice < 0.5:
                await phone.update(rng.choice(ids[:3]), content=f"v{step}")
            elif choice < 0.7:
                await phone.update("w-list", add=[rng.choice("abcdef")])
            elif choice < 0.8:
                await phone.update("w-list", remove=[rng.choice("abcdef")])
            else:
                await phone.update("w-count", increment=rng.randint(-3, 5))

        async def converged() -> bool:
            for key in [*ids[:3], "w-list", "w-count"]:
                local = laptop.cache.view(f"acme/{key}")
                resp, server = await gw.request("GET", f"/v1/memories/{key}")
                if local is None or resp.status != 200:
                    return False
                if (local.content, sorted(local.items), local.value) != (
                    server["content"],
                    sorted(server["items"]),
                    server["value"],
                ):
                    return False
            return True

        await eventually(converged, within=20, what="the SDK cache to equal the server")
        await sub.close()


async def test_bad_subscription_input_gets_clear_errors(gw: Gateway) -> None:
    ws = await _ws(gw)
    for raw, code in (
        ("{not json", "bad_request"),
        ('{"op": "subscribe", "channels": ["nonsense"]}', "bad_request"),
        ('{"op": "subscribe", "channels": ["user:alice:memories"], "colour": 1}', "bad_request"),
        (
            '{"op": "subscribe", "channels": ["user:alice:memories"], "since": "v1.x.y"}',
            "bad_token",
        ),
        ('{"op": "dance", "channels": []}', "bad_request"),
    ):
        await ws.send_str(raw)
        reply = await _recv(ws)
        assert (reply["op"], reply["code"]) == ("error", code), (raw, reply)
    reply = await _subscribe(ws, channels=["user:alice:memories"])
    assert reply["op"] == "subscribed"  # the connection survived every bad message
    await ws.close()
    for query, status in (
        ("", 400),
        ("?channels=user:alice:memories&since=garbage", 400),
        ("?channels=user:alice:memories&limit=0", 400),
        ("?channels=bogus", 400),
        ("?channels=user:bob:memories", 200),
    ):
        resp, body = await gw.request("GET", f"/v1/sync{query}")
        assert resp.status == status, (query, body)
    resp, body = await gw.request(
        "GET", "/v1/sync?channels=tenant:globex:shared", token_=token(users=("alice",))
    )
    assert resp.status == 403, body


async def test_a_state_repair_reaches_live_subscribers_without_moving_their_cursor(
    gw: Gateway,
) -> None:
    from gateway.client import MemorySync
    from replication.testing import Replica

    assert gw.client is not None
    ws = await _ws(gw)
    await _subscribe(ws, channels=["user:alice:memories"])
    async with MemorySync(str(gw.client.make_url("")), gw.default_token) as laptop:
        changes: list[Any] = []
        sdk = laptop.subscribe(["user:alice:memories"], changes.append)
        await asyncio.wait_for(sdk.connected.wait(), 10)
        await _write(gw, "POST", "/v1/memories", user_id="alice", id="m1", kind="fact", content="a")
        await _events(ws, 1)
        await eventually(lambda: _true(len(changes) == 1 and changes[0].cursor is not None))
        cursor = changes[0].cursor
        state = await gw.runtime.service.current("acme/m1")
        assert state is not None
        # What a peer region knows and no event brought here (anti-entropy's case).
        peer = Replica("peer.0001")
        peer.states["acme/m1"] = state
        assert peer.write("m1", "fact", "update", tenant="acme", user="alice", content="repaired")
        assert await gw.runtime.applier.merge_states([peer.states["acme/m1"]]) == 1

        frame = await _recv(ws)
        assert frame["op"] == "batch" and frame["events"] == [] and frame["cursor"] is None
        (got,) = [msgspec.convert(s, MemoryState) for s in frame["states"]]
        assert got == peer.states["acme/m1"]
        _, view = await gw.request("GET", "/v1/memories/m1")
        assert view["content"] == "repaired"
        # The SDK joined the repair and kept its cursor (no event moved it).
        await eventually(lambda: _true(len(changes) == 2))
        assert changes[1].view.content == "repaired" and changes[1].cursor == cursor
        assert laptop.cache.state("acme/m1") == peer.states["acme/m1"]
    await ws.close()


async def _true(value: bool) -> bool:
    return value


async def test_an_idle_websocket_holds_no_pump_task_and_still_gets_heartbeats(
    tmp_path: Path, broker: TansuBroker
) -> None:
    g = await Gateway(tmp_path / "beats", broker, limits={"stream_heartbeat": 0.3}).start()
    try:
        ws = await _ws(g)
        await _subscribe(ws, channels=["user:alice:memories"])
        await asyncio.sleep(0.05)
        pumps = [t for t in asyncio.all_tasks() if t.get_name().startswith("pump-")]
        assert pumps == []  # the reply went straight to the socket; nothing runs for it
        beats = [await _recv(ws, within=3.0) for _ in range(2)]
        assert [b["op"] for b in beats] == ["heartbeat", "heartbeat"]
        await _write(g, "POST", "/v1/memories", user_id="alice", id="b1", kind="fact")
        (event,) = await _events(ws, 1)
        assert event["event"]["memory"]["id"] == "b1"
        assert [t for t in asyncio.all_tasks() if t.get_name().startswith("pump-")] == []
        await ws.close()
    finally:
        await g.stop()


async def test_quiet_websockets_are_pinged_and_silent_ones_dropped(
    tmp_path: Path, broker: TansuBroker
) -> None:
    g = await Gateway(tmp_path / "pings", broker, limits={"ws_heartbeat": 0.3}).start()
    try:
        assert g.client is not None
        headers = {"Authorization": f"Bearer {g.default_token}"}
        answering = await g.client.ws_connect("/v1/subscribe", headers=headers, autoping=False)
        silent = await g.client.ws_connect("/v1/subscribe", headers=headers, autoping=False)
        await answering.ping(b"are you there")
        pong = await asyncio.wait_for(answering.receive(), 3.0)
        assert (pong.type, pong.data) == (WSMsgType.PONG, b"are you there")
        pings = 0
        deadline = asyncio.get_running_loop().time() + 1.5
        while (left := deadline - asyncio.get_running_loop().time()) > 0:
            try:
                msg = await asyncio.wait_for(answering.receive(), left)
            except TimeoutError:
                break
            if msg.type == WSMsgType.PING:
                pings += 1
                await answering.pong(msg.data)
        assert pings >= 2 and not answering.closed  # pinged while quiet, kept while answering
        seen = []
        while len(seen) < 20 and (not seen or seen[-1] not in (WSMsgType.CLOSE, WSMsgType.CLOSED)):
            seen.append((await asyncio.wait_for(silent.receive(), 3.0)).type)
        assert seen[0] == WSMsgType.PING and seen[-1] in (WSMsgType.CLOSE, WSMsgType.CLOSED), seen
        # Still served: a subscription is answered (pings keep coming meanwhile).
        await answering.send_json({"op": "subscribe", "channels": ["user:alice:memories"]})
        while (msg := await asyncio.wait_for(answering.receive(), 3.0)).type == WSMsgType.PING:
            await answering.pong(msg.data)
        assert msg.type == WSMsgType.TEXT and json.loads(msg.data)["op"] == "subscribed", msg
        await answering.close()
    finally:
        await g.stop()


async def _sse_messages(resp: Any, n: int) -> list[tuple[str | None, dict[str, Any]]]:
    """The next ``n`` SSE messages: ``(id or None, data)``."""
    out: list[tuple[str | None, dict[str, Any]]] = []
    event_id: str | None = None
    while len(out) < n:
        line = (await asyncio.wait_for(resp.content.readline(), 10.0)).decode().rstrip("\n")
        if line.startswith("id: "):
            event_id = line[4:]
        elif line.startswith("data: "):
            out.append((event_id, json.loads(line[6:])))
            event_id = None
    return out


async def test_server_sent_events_deliver_and_resume_from_last_event_id(gw: Gateway) -> None:
    assert gw.client is not None
    headers = {"Authorization": f"Bearer {gw.default_token}"}
    resp = await gw.client.get("/v1/events?channels=user:alice:memories", headers=headers)
    assert resp.status == 200 and resp.content_type == "text/event-stream"
    ((_, subscribed),) = await _sse_messages(resp, 1)
    assert subscribed["op"] == "subscribed"
    await _write(gw, "POST", "/v1/memories", user_id="alice", id="s1", kind="fact")
    await _write(gw, "POST", "/v1/memories", user_id="bob", id="s2", kind="fact")  # not alice's
    await _write(gw, "POST", "/v1/memories", user_id="alice", id="s3", kind="fact")
    # One message per event, or several events in one batch when they queued up.
    ids: list[tuple[str, str | None]] = []
    while len(ids) < 2:
        ((event_id, message),) = await _sse_messages(resp, 1)
        events = [message["event"]] if "event" in message else message.get("events", [])
        ids.extend((e["memory"]["id"], event_id) for e in events)
    # Two memories: ordered per memory only (they may sit in different partitions).
    assert sorted(memory for memory, _ in ids) == ["s1", "s3"]
    resp.close()
    await _write(gw, "POST", "/v1/memories", user_id="alice", id="s4", kind="fact")
    first_has_own_cursor = ids[0][1] != ids[1][1]
    resume_from = ids[0][1] if first_has_own_cursor else None
    again = await gw.client.get(
        "/v1/events?channels=user:alice:memories",
        headers={**headers, "Last-Event-ID": resume_from or subscribed_cursor(subscribed)},
    )
    replayed: list[str] = []
    want = [ids[1][0], "s4"] if resume_from else [ids[0][0], ids[1][0], "s4"]
    while len(replayed) < len(want):
        ((_, message),) = await _sse_messages(again, 1)
        events = [message["event"]] if "event" in message else message.get("events", [])
        replayed.extend(e["memory"]["id"] for e in events)
    assert replayed == want  # after the cursor, nothing before it, nothing missed
    again.close()


def subscribed_cursor(message: dict[str, Any]) -> str:
    cursor: str = message["cursor"]
    return cursor


async def test_stream_handshake_failures_are_json_errors_and_timed(gw: Gateway) -> None:
    assert gw.client is not None
    good = {"Authorization": f"Bearer {gw.default_token}"}
    cases = [
        ("/v1/subscribe", {}, 401, "unauthorized"),
        ("/v1/subscribe", good, 400, "bad_request"),  # a plain GET: no WebSocket upgrade
        ("/v1/events", good, 400, "bad_request"),  # no channels
        ("/v1/events?channels=user:alice:memories&mode=fast", good, 400, "bad_request"),
        ("/v1/events?channels=tenant:other:shared", good, 403, "forbidden"),
    ]
    for path, headers, status, code in cases:
        resp = await gw.client.get(path, headers=headers)
        body = await resp.json()
        assert (resp.status, body["error"]["code"]) == (status, code), (path, body)
    metrics = await (await gw.client.get("/metrics")).text()
    assert 'route="/v1/subscribe",status="401"' in metrics
    assert 'route="/v1/events",status="403"' in metrics


@pytest.mark.parametrize(
    "leave", ["close_handshake", "fin", "reset", "close_frame_then_fin", "dropped_by_the_gateway"]
)
def test_a_closed_websocket_leaves_no_cyclic_garbage(
    tmp_path: Path, broker: TansuBroker, leave: str
) -> None:
    """Freed by reference counting when it ends: a mass disconnect costs no long GC pause.

    However it ends: a close handshake, a client gone with or without a close
    frame (its socket closed or reset, as when its process exits), or dropped
    by the gateway. On uvloop, the gateway's loop in production. (The close
    reply that fails when the socket's end is read first, which only load
    brings about, is tested in ``tests/unit/test_direct_frames.py``.)
    """
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(_leaves_no_garbage(tmp_path, broker, leave))


async def _leaves_no_garbage(tmp_path: Path, broker: TansuBroker, leave: str) -> None:
    from aiohttp import web

    from gateway.subscribe import _Connection

    gw = await Gateway(tmp_path / "region", broker, **GATEWAY_OPTIONS).start()
    try:
        assert gw.client is not None
        live = gw.client.app[CONNECTIONS]  # type: ignore[index]
        gc.collect()
        gc.disable()
        try:
            if leave == "close_handshake":
                ws = await _ws(gw)
                await _subscribe(ws, channels=["user:alice:memories"])
                await _write(gw, "POST", "/v1/memories", user_id="alice", id="g1", kind="fact")
                await _events(ws, 1)
                await ws.close()
            else:
                reader, writer = await _raw_subscriber(gw, "user:alice:memories")
                await _write(gw, "POST", "/v1/memories", user_id="alice", id="g1", kind="fact")
                await asyncio.wait_for(reader.readuntil(b'"g1"'), 10.0)
                if leave == "dropped_by_the_gateway":  # as when its socket fails
                    next(iter(live)).sub.close_lost()
                    await asyncio.wait_for(reader.read(), 10.0)  # to the socket's end
                    writer.close()
                else:
                    if leave.startswith("close_frame"):
                        writer.write(_masked(0x88, (1000).to_bytes(2, "big")))
                    if leave.endswith("fin"):
                        writer.close()
                    else:
                        writer.transport.abort()
            await eventually(lambda: _true(not live), what="the connection to end")
            await asyncio.sleep(0.1)
            left = [
                type(o).__name__
                for o in gc.get_objects()
                if isinstance(o, (_Connection, web.WebSocketResponse))
            ]
            assert left == []
        finally:
            gc.enable()
    finally:
        await gw.stop()


async def _raw_subscriber(
    gw: Gateway, channel: str
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A bare WebSocket client, subscribed to ``channel``: it can leave without a close frame."""
    assert gw.client is not None
    reader, writer = await asyncio.open_connection(str(gw.client.host), gw.client.port)
    writer.write(
        (
            f"GET /v1/subscribe HTTP/1.1\r\nHost: {gw.client.host}:{gw.client.port}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
            f"Authorization: Bearer {gw.default_token}\r\n\r\n"
        ).encode()
    )
    status = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10.0)
    assert status.startswith(b"HTTP/1.1 101"), status
    writer.write(_masked(0x81, json.dumps({"op": "subscribe", "channels": [channel]}).encode()))
    await asyncio.wait_for(reader.readuntil(b'"subscribed"'), 10.0)
    return reader, writer


def _masked(first: int, payload: bytes) -> bytes:
    """One masked client frame (FIN + ``first``'s opcode) of under 126 bytes."""
    mask = b"\x01\x02\x03\x04"
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes((first, 0x80 | len(payload))) + mask + masked


async def test_a_refused_resume_leaves_no_live_channel_behind(gw: Gateway) -> None:
    """A subscribe whose cursor is bad is refused whole: no live events without their replay."""
    ws = await _ws(gw)
    reply = await _subscribe(ws, channels=["topic:tea:updates"], since="v1.x.y")
    assert (reply["op"], reply["code"]) == ("error", "bad_token")
    reply = await _subscribe(ws, channels=["tenant:acme:shared"])
    assert reply["op"] == "subscribed" and reply["channels"] == ["tenant:acme:shared"]
    await _write(gw, "POST", "/v1/memories", user_id="alice", id="t1", kind="fact",
                 content="private", topics=["tea"])  # fmt: skip
    await _write(gw, "PATCH", "/v1/memories/t1", shared=True)
    (first,) = await _events(ws, 1)  # one memory: its events come in order
    assert first["event"]["event_type"] == "update", first  # the create was on topic:tea only
    await ws.close()


async def _stalled_sse_client(gw: Gateway, channel: str) -> socket.socket:
    """A raw SSE client with a tiny receive buffer that stops reading once subscribed."""
    assert gw.client is not None
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, (str(gw.client.host), gw.client.port))
    await loop.sock_sendall(
        sock,
        (
            f"GET /v1/events?channels={channel} HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: Bearer {gw.default_token}\r\n\r\n"
        ).encode(),
    )
    received = b""
    while b'"subscribed"' not in received:
        received += await asyncio.wait_for(loop.sock_recv(sock, 4096), 10.0)
    return sock


def _fill(gw: Gateway, n: int, start: int = 1) -> None:
    """Publish ``n`` large events for alice straight into the fan-out (no broker round trip)."""
    from gateway.fanout import Delivery
    from replication.dvv import Dot
    from replication.testing import Replica

    replica = Replica("fill")
    made = replica.write("f", "fact", "create", tenant="acme", user="alice", content="x")
    assert made is not None
    big = b'"' + b"x" * 60_000 + b'"'
    gw.runtime.streams.fanout.publish(
        Delivery(key=f"acme/f{i}", tenant="acme", user="alice", shared=False,
                 channels=("user:alice:memories",), dot=Dot("fill", i), raw=big,
                 state=replica.states[made.key], cursor_token=f"c{i}")
        for i in range(start, start + n)
    )  # fmt: skip


async def test_an_sse_client_that_stops_reading_is_dropped(
    tmp_path: Path, broker: TansuBroker
) -> None:
    """Its handler, connection slot and buffers go (as a WebSocket's do), within a bound."""
    g = await Gateway(tmp_path / "sse", broker, limits={
        "stream_heartbeat": 0.25, "subscriber_soft_limit": 2, "subscriber_hard_limit": 4,
    }).start()  # fmt: skip
    try:
        assert g.client is not None
        live = g.client.app[CONNECTIONS]  # type: ignore[index]
        sock = await _stalled_sse_client(g, "user:alice:memories")
        fanout = g.runtime.streams.fanout
        for i in range(200):  # ~12 MB the client never reads (past any socket buffer)
            if not len(fanout):
                break
            _fill(g, 1, start=i + 1)
            await asyncio.sleep(0)  # let the pump write what it can
        await eventually(lambda: _true(not live and not len(fanout)), within=10,
                         what="the stalled SSE subscriber to be dropped")  # fmt: skip
        metrics = await (await g.client.get("/metrics")).text()
        assert 'memsync_subscriptions_closed_total{reason="slow_consumer"} 1.0' in metrics
        sock.close()
    finally:
        await g.stop()


async def test_shutdown_is_not_held_by_an_sse_client_that_stopped_reading(
    tmp_path: Path, broker: TansuBroker
) -> None:
    """Its pump is stopped first and its write bounded: the gateway stops at once, cleanly."""
    g = await Gateway(tmp_path / "sse-stop", broker, limits={"stream_heartbeat": 0.5}).start()
    assert g.client is not None
    sock = await _stalled_sse_client(g, "user:alice:memories")
    (sub,) = g.runtime.streams.fanout.subscriptions()
    _fill(g, 200)  # ~12 MB the client never reads: the pump waits on the full socket
    await eventually(lambda: _true(sub.busy), what="the pump to wait on the socket")
    live = g.client.app[CONNECTIONS]  # type: ignore[index]
    stopping = asyncio.create_task(g.stop())
    try:  # its end took 5 s and more (an end of stream written behind the stuck write)
        await eventually(lambda: _true(not live), within=4.0, what="the SSE stream to end")
    finally:
        await stopping
        sock.close()


async def test_a_stream_ends_when_its_token_expires(gw: Gateway) -> None:
    """Claims are checked at the handshake; a stream must not outlive them (I7)."""
    assert gw.client is not None
    short = token(ttl=2)
    ws = await _ws(gw, short)
    assert (await _subscribe(ws, channels=["user:alice:memories"], mode="eager"))["op"] == (
        "subscribed"
    )
    sse = await gw.client.get(
        "/v1/events?channels=user:alice:memories", headers={"Authorization": f"Bearer {short}"}
    )
    assert sse.status == 200
    fanout = gw.runtime.streams.fanout
    assert len(fanout) == 2
    error: dict[str, Any] = {}
    while error.get("op") != "error":
        error = await _recv(ws, within=15)
    assert error["code"] == "unauthorized" and "expired" in error["message"]
    closing = await asyncio.wait_for(ws.receive(), 5)
    assert closing.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED), closing
    # 1008 (policy) when the client reads the close frame before the socket's
    # end; aiohttp reports 1006 when the end came first.
    assert closing.type != WSMsgType.CLOSE or closing.data == 1008, closing
    await asyncio.wait_for(sse.content.read(), 15)  # the event stream ends too

    async def none_left() -> bool:
        return len(fanout) == 0

    await eventually(none_left, what="both expired subscriptions to go")


async def test_a_system_memorys_every_event_goes_to_system_global(gw: Gateway) -> None:
    """Updates and deletes of a system memory reach ``system:global``, and need admin."""
    admin = token(scope=("read", "write", "subscribe", "admin"))
    ws = await _ws(gw)
    reply = await _subscribe(ws, channels=["system:global"])
    assert reply["op"] == "subscribed"
    start = reply["cursor"]

    async def write(method: str, path: str, tok: str, **body: Any) -> tuple[int, Any]:
        resp, data = await gw.request(method, path, json=body or None, token_=tok)
        return resp.status, data

    status, data = await write("POST", "/v1/memories", gw.default_token, user_id="alice",
                               id="s0", kind="fact", system=True)  # fmt: skip
    assert status == 403, data  # publishing to system:global needs admin
    status, data = await write("POST", "/v1/memories", admin, user_id="alice", id="s1",
                               kind="fact", content="maintenance at noon", system=True)  # fmt: skip
    assert status == 201, data
    (created,) = await _events(ws, 1)
    assert created["event"]["memory"]["id"] == "s1"
    await _write(gw, "POST", "/v1/memories", user_id="alice", id="plain", kind="fact")

    async def applied() -> bool:
        r, _ = await gw.request("GET", "/v1/memories/s1")
        return r.status == 200

    await eventually(applied, what="the system memory to apply")
    status, data = await write("PATCH", "/v1/memories/s1", gw.default_token, content="x")
    assert status == 403, data
    assert "system:global" in data["error"]["message"] and "admin" in data["error"]["message"]
    status, data = await write("PATCH", "/v1/memories/s1", admin, content="maintenance at one")
    assert status == 200, data
    (updated,) = await _events(ws, 1)  # "plain" never comes: it is not a system memory
    assert updated["event"]["memory"]["id"] == "s1"
    assert updated["event"]["event_type"] == "update"
    assert "system:global" in updated["event"]["channels"]
    status, data = await write("DELETE", "/v1/memories/s1", gw.default_token)
    assert status == 403, data
    status, data = await write("DELETE", "/v1/memories/s1", admin)
    assert status == 200, data
    (deleted,) = await _events(ws, 1)
    assert (deleted["event"]["memory"]["id"], deleted["event"]["event_type"]) == ("s1", "delete")
    await ws.close()
    # Pull sync of the channel sees the same: the tombstone, nothing "removed".
    resp, page = await gw.request("GET", f"/v1/sync?channels=system:global&since={start}")
    assert resp.status == 200, page
    assert [(m["id"], m["deleted"]) for m in page["changes"]] == [("s1", True)]
    assert page.get("removed", []) == []


async def _until(ws: ClientWebSocketResponse, op: str) -> tuple[dict[str, Any], list[str]]:
    """The next message ``op`` and the raw text of every message before it."""
    before: list[str] = []
    while True:
        msg = await asyncio.wait_for(ws.receive(), 10.0)
        assert msg.type == WSMsgType.TEXT, msg
        data: dict[str, Any] = json.loads(msg.data)
        if data["op"] == op:
            return data, before
        before.append(msg.data)


async def test_a_memory_that_leaves_a_channel_is_announced_there_without_its_content(
    gw: Gateway,
) -> None:
    """Moved off a topic, then made private: each old channel's subscribers that may no
    longer see it get a content-free ``left`` — live, coalesced, in a replay — and the
    channels it is still on get the events."""
    alice = await _ws(gw, token(users=("alice",)))
    bob = await _ws(gw, token(users=("bob",)))  # the tenant's shared memories
    carol = await _ws(gw, token(users=("carol",)))  # the tea topic, not the owner
    dave = await _ws(gw, token(users=("dave",)))  # the tenant's, lazy
    await _subscribe(alice, channels=["user:alice:memories"])
    await _subscribe(bob, channels=["tenant:acme:shared"])
    await _subscribe(carol, channels=["topic:tea:updates"])
    await _subscribe(dave, channels=["tenant:acme:shared"], mode="lazy", interval_ms=50)
    await _write(gw, "POST", "/v1/memories", user_id="alice", id="m1", kind="fact",
                 content="team lunch", topics=["tea"], shared=True)  # fmt: skip
    for ws in (alice, bob, carol):
        (got,) = await _events(ws, 1)
        assert got["event"]["memory"]["id"] == "m1"
    (created,) = await _events(dave, 1)
    await _write(gw, "PATCH", "/v1/memories/m1", content="lunch at noon")  # stays put
    (same,) = await _events(bob, 1)
    assert same["event"]["memory"]["content"] == "lunch at noon"
    bob_cursor = same["cursor"]

    await _write(gw, "PATCH", "/v1/memories/m1", topics=["coffee"])  # off the tea topic
    left, _ = await _until(carol, "left")
    assert left == {"op": "left", "id": "m1", "key": "acme/m1", "cursor": left["cursor"]}
    assert left["cursor"]
    (moved,) = await _events(bob, 1)  # still shared: bob gets the event itself
    assert moved["event"]["memory"]["topics"] == ["coffee"]

    await _write(gw, "PATCH", "/v1/memories/m1", content="SECRET plan", shared=False)
    *_, own = await _events(alice, 3)
    assert own["event"]["memory"]["content"] == "SECRET plan"  # the owner still sees it
    left, before = await _until(bob, "left")
    assert (left["id"], left["key"]) == ("m1", "acme/m1")
    assert not any("SECRET" in text for text in before)
    batch, before = await _until(dave, "batch")
    while "left" not in batch:  # the lazy subscriber's earlier updates come first
        before.append(json.dumps(batch))
        batch, more = await _until(dave, "batch")
        before += more
    assert batch["left"] == [{"id": "m1", "key": "acme/m1"}]
    assert "SECRET" not in json.dumps(batch) and not any("SECRET" in t for t in before)
    assert created["event"]["memory"]["id"] == "m1"

    # A replay from before the change says the same; so does a pull sync.
    again = await _ws(gw, token(users=("bob",)))
    await again.send_json({"op": "subscribe", "channels": ["tenant:acme:shared"],
                           "since": bob_cursor})  # fmt: skip
    replayed, before = await _until(again, "left")
    assert (replayed["id"], replayed["cursor"]) == ("m1", left["cursor"])
    assert not any("SECRET" in text for text in before)
    done, after = await _until(again, "subscribed")
    assert done["replayed"] is True and not any("SECRET" in text for text in after)
    resp, page = await gw.request(
        "GET", f"/v1/sync?channels=tenant:acme:shared&since={bob_cursor}",
        token_=token(users=("bob",)),
    )  # fmt: skip
    assert resp.status == 200, page
    assert page["removed"] == [{"id": "m1", "key": "acme/m1"}] and page["changes"] == []
    for ws in (alice, bob, carol, dave, again):
        await ws.close()


async def test_a_resume_of_one_channel_says_nothing_left_that_another_still_shows(
    gw: Gateway,
) -> None:
    """Live on the tenant channel, then resuming a topic from before the memory moved off
    it: the connection still sees the memory on the tenant channel, so no ``left``."""
    ws = await _ws(gw, token(users=("bob",)))
    first = await _subscribe(ws, channels=["tenant:acme:shared"])
    await _write(gw, "POST", "/v1/memories", user_id="alice", id="m1", kind="fact",
                 content="team lunch", topics=["tea"], shared=True)  # fmt: skip
    (created,) = await _events(ws, 1)
    await _write(gw, "PATCH", "/v1/memories/m1", topics=["coffee"])  # still shared
    (moved,) = await _events(ws, 1)
    assert moved["event"]["memory"]["topics"] == ["coffee"]
    await ws.send_json({"op": "subscribe", "channels": ["topic:tea:updates"],
                        "since": first["cursor"]})  # fmt: skip
    done, before = await _until(ws, "subscribed")
    assert done["replayed"] is True
    ops = [json.loads(text)["op"] for text in before]
    assert "left" not in ops, before
    assert created["event"]["memory"]["id"] == "m1"
    await ws.close()


async def test_others_never_see_a_version_its_owner_wrote_private(gw: Gateway) -> None:
    """A private edit concurrent with a shared one that wins stays in the memory's state
    (the conflict log); readers other than the owner get that state without it — in a
    coalesced batch and in a pull sync — and the owner still gets all of it."""
    bob_token = token(users=("bob",))
    bob = await _ws(gw, bob_token)
    await _subscribe(bob, channels=["tenant:acme:shared"], mode="lazy", interval_ms=50)
    _, start = await gw.request("GET", "/v1/sync?channels=tenant:acme:shared", token_=bob_token)
    create = {"user_id": "alice", "id": "plan", "kind": "fact", "content": "v0", "shared": True}
    resp, made = await gw.request("POST", "/v1/memories", json=create)
    assert resp.status == 201, made
    session = {"X-Memsync-Session": resp.headers["X-Memsync-Session"]}
    resp, base = await gw.request("GET", "/v1/memories/plan", headers=session)
    assert resp.status == 200, base
    sessions = []
    for body in ({"content": "SECRET draft", "shared": False},
                 {"content": "team lunch", "shared": True}):  # fmt: skip
        resp, data = await gw.request("PATCH", "/v1/memories/plan", json=body,
                                      headers={"If-Match": base["version"]})  # fmt: skip
        assert resp.status == 200, data
        sessions.append(resp.headers["X-Memsync-Session"])
    resp, own = await gw.request("GET", "/v1/memories/plan",
                                 headers={"X-Memsync-Session": ",".join(sessions)})  # fmt: skip
    assert (own["content"], [c["content"] for c in own["conflicts"]]) == (
        "team lunch", ["SECRET draft"])  # fmt: skip

    seen: list[str] = []
    while True:  # bob's batches until one holds the winning version
        batch, before = await _until(bob, "batch")
        seen += [*before, json.dumps(batch)]
        states = [msgspec.json.decode(json.dumps(s), type=MemoryState) for s in batch["states"]]
        if any(v.content == "team lunch" for s in states for v in s.versions):
            break
    assert not any("SECRET" in text for text in seen)

    resp, page = await gw.request(
        "GET", f"/v1/sync?channels=tenant:acme:shared&since={start['cursor']}", token_=bob_token
    )
    assert resp.status == 200, page
    (change,) = page["changes"]
    assert (change["content"], change["conflicts"]) == ("team lunch", [])
    assert "SECRET" not in json.dumps(page)
    _, snap = await gw.request("GET", "/v1/sync?channels=tenant:acme:shared", token_=bob_token)
    assert [m["content"] for m in snap["changes"]] == ["team lunch"]
    assert "SECRET" not in json.dumps(snap)
    _, mine = await gw.request("GET", "/v1/sync?channels=user:alice:memories")
    assert [c["content"] for m in mine["changes"] for c in m["conflicts"]] == ["SECRET draft"]
    await bob.close()


async def test_a_memory_two_users_created_apart_is_withheld_from_everyone(
    gw: Gateway, broker: TansuBroker
) -> None:
    """Another region's create of the same id by another user (as after a partition)
    meets alice's: the state holds both owners' versions and cannot say whose each is.
    No one is shown it — reads 409, lists, snapshots and batches skip it, a pull sync
    and live subscribers are told it left — and its owner may still delete it."""
    import time

    from aiokafka import AIOKafkaProducer

    from replication.schema import encode as encode_wire
    from replication.segments import segment_of, topic_name
    from replication.testing import Replica

    alice = await _ws(gw, token(users=("alice",)))
    await _subscribe(alice, channels=["user:alice:memories"])
    _, start = await gw.request("GET", "/v1/sync?channels=user:alice:memories")
    made = await _write(gw, "POST", "/v1/memories", user_id="alice", id="twice", kind="fact",
                        content="alice's own")  # fmt: skip
    (created,) = await _events(alice, 1)
    assert created["event"]["memory"]["content"] == "alice's own"
    far = Replica("far-away.1")
    theirs = far.write("twice", "fact", "create", tenant="acme", user="bob", content="BOB private")
    assert theirs is not None  # written later than alice's: alice's origin is the lower
    theirs = msgspec.structs.replace(theirs, timestamp=made["updated_at"] + 1_000_000)
    topic = topic_name("memsync.events", segment_of(int(time.time() * 1000), 2_000))
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(topic, encode_wire(theirs), key=b"acme/twice")
    finally:
        await producer.stop()

    left, before = await _until(alice, "left")  # alice's channel is told it is gone ...
    assert (left["id"], left["key"]) == ("twice", "acme/twice")
    assert not any("BOB" in text for text in before)  # ... and never shown bob's version

    async def withheld() -> bool:
        resp, _ = await gw.request("GET", "/v1/memories/twice")
        return resp.status == 409

    await eventually(withheld, what="the contested memory to be withheld")
    assert gw.client is not None
    metrics = await (await gw.client.get("/metrics")).text()
    assert "memsync_contested_memories_total 1.0" in metrics
    resp, body = await gw.request("GET", "/v1/memories/twice")
    assert "created by two users" in body["error"]["message"] and "BOB" not in json.dumps(body)
    resp, patched = await gw.request("PATCH", "/v1/memories/twice", json={"content": "x"})
    assert resp.status == 409, patched
    _, page = await gw.request("GET", "/v1/memories?user_id=alice")
    assert [m["id"] for m in page["memories"]] == []
    _, synced = await gw.request(
        "GET", f"/v1/sync?channels=user:alice:memories&since={start['cursor']}"
    )
    assert synced["changes"] == [] and synced["removed"] == [{"id": "twice", "key": "acme/twice"}]
    _, snap = await gw.request("GET", "/v1/sync?channels=user:alice:memories")
    assert snap["changes"] == [] and "BOB" not in json.dumps(snap)
    resp, gone = await gw.request("DELETE", "/v1/memories/twice")  # the owner may delete it
    assert resp.status == 200, gone
    assert "BOB" not in json.dumps(gone)
    await alice.close()
