"""The gateway's HTTP API on the real broker binary and real Qdrant Edge."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from deploy.tansu import TansuBroker

from .harness import Gateway, eventually, token


async def _create(gw: Gateway, **body: object) -> dict[str, object]:
    resp, data = await gw.request("POST", "/v1/memories", json={"user_id": "alice", **body})
    assert resp.status == 201, data
    assert resp.headers["ETag"].strip('"') == data["version"]
    return dict(data, session=resp.headers["X-Memsync-Session"])


async def _read(gw: Gateway, memory_id: str, session: str) -> dict[str, object]:
    resp, data = await gw.request(
        "GET", f"/v1/memories/{memory_id}", headers={"X-Memsync-Session": session}
    )
    assert resp.status == 200, data
    return dict(data)


async def test_full_crud_cycle(gw: Gateway) -> None:
    made = await _create(gw, id="tea", kind="fact", content="Alice likes green tea",
                         topics=["drinks"], embedding=[1, 0, 0, 0, 0, 0, 0, 0])  # fmt: skip
    got = await _read(gw, "tea", str(made["session"]))
    assert got["content"] == "Alice likes green tea"
    assert got["topics"] == ["drinks"]

    resp, patched = await gw.request(
        "PATCH", "/v1/memories/tea", json={"content": "Alice likes black tea"},
        headers={"If-Match": f'"{got["version"]}"', "X-Memsync-Session": str(made["session"])},
    )  # fmt: skip
    assert resp.status == 200, patched
    session = resp.headers["X-Memsync-Session"]
    assert (await _read(gw, "tea", session))["content"] == "Alice likes black tea"

    resp, page = await gw.request("GET", "/v1/memories?user_id=alice&topic=drinks")
    assert [m["id"] for m in page["memories"]] == ["tea"]
    resp, found = await gw.request("POST", "/v1/search", json={"query": "black tea"})
    assert found["results"][0]["memory"]["id"] == "tea"
    resp, found = await gw.request(
        "POST", "/v1/search", json={"embedding": [1, 0, 0, 0, 0, 0, 0, 0.1]}
    )
    assert found["results"][0]["memory"]["id"] == "tea"

    resp, gone = await gw.request(
        "DELETE", "/v1/memories/tea", headers={"X-Memsync-Session": session}
    )
    assert resp.status == 200, gone
    session = resp.headers["X-Memsync-Session"]
    resp, _ = await gw.request("GET", "/v1/memories/tea", headers={"X-Memsync-Session": session})
    assert resp.status == 404
    resp, page = await gw.request("GET", "/v1/memories?user_id=alice")
    assert page["memories"] == []
    resp, again = await _create_raw(gw, id="tea", kind="fact")
    assert resp.status == 409, again


async def _create_raw(gw: Gateway, **body: object) -> tuple[object, object]:
    return await gw.request("POST", "/v1/memories", json={"user_id": "alice", **body})


async def test_concurrent_lww_updates_pick_one_winner_and_log_the_loser(gw: Gateway) -> None:
    made = await _create(gw, id="f", kind="fact", content="v0")
    base = await _read(gw, "f", str(made["session"]))
    sessions = []
    for text in ("from-phone", "from-laptop"):
        resp, body = await gw.request(
            "PATCH", "/v1/memories/f", json={"content": text},
            headers={"If-Match": str(base["version"])},
        )  # fmt: skip
        assert resp.status == 200, body
        sessions.append(resp.headers["X-Memsync-Session"])
    for s in sessions:
        await _read(gw, "f", s)
    got = await _read(gw, "f", sessions[-1])
    assert got["content"] == "from-laptop"  # the later HLC wins
    assert [c["content"] for c in got["conflicts"]] == ["from-phone"]
    # A write that saw both resolves the conflict.
    resp, _ = await gw.request(
        "PATCH", "/v1/memories/f", json={"content": "settled"},
        headers={"If-Match": str(got["version"])},
    )  # fmt: skip
    settled = await _read(gw, "f", resp.headers["X-Memsync-Session"])
    assert (settled["content"], settled["conflicts"]) == ("settled", [])


async def test_concurrent_surface_updates_keep_both_siblings(gw: Gateway) -> None:
    made = await _create(gw, id="tone", kind="preference", policy="surface", content="formal")
    base = await _read(gw, "tone", str(made["session"]))
    last = ""
    for text in ("casual", "playful"):
        resp, body = await gw.request(
            "PATCH", "/v1/memories/tone", json={"content": text},
            headers={"If-Match": str(base["version"])},
        )  # fmt: skip
        assert resp.status == 200, body
        last = resp.headers["X-Memsync-Session"]
    got = await _read(gw, "tone", last)
    assert sorted(s["content"] for s in got["siblings"]) == ["casual", "playful"]


async def test_concurrent_list_add_beats_remove_and_counters_sum(gw: Gateway) -> None:
    made = await _create(gw, id="groceries", kind="list", items=["milk"])
    base = await _read(gw, "groceries", str(made["session"]))
    r1, _ = await gw.request("PATCH", "/v1/memories/groceries", json={"remove": ["milk"]},
                             headers={"If-Match": str(base["version"])})  # fmt: skip
    r2, _ = await gw.request("PATCH", "/v1/memories/groceries", json={"add": ["milk", "eggs"]},
                             headers={"If-Match": str(base["version"])})  # fmt: skip
    await _read(gw, "groceries", r1.headers["X-Memsync-Session"])
    got = await _read(gw, "groceries", r2.headers["X-Memsync-Session"])
    assert sorted(got["items"]) == ["eggs", "milk"]

    made = await _create(gw, id="visits", kind="counter", value=10)
    session = str(made["session"])
    for n in (5, -3, 7):
        resp, body = await gw.request(
            "PATCH", "/v1/memories/visits", json={"increment": n},
            headers={"X-Memsync-Session": session},
        )  # fmt: skip
        assert resp.status == 200, body
        session = resp.headers["X-Memsync-Session"]
    assert (await _read(gw, "visits", session))["value"] == 19


async def test_read_your_writes_waits_for_the_applier(gw: Gateway) -> None:
    made = await _create(gw, id="ryw", kind="fact", content="fresh")
    got = await _read(gw, "ryw", str(made["session"]))
    assert got["content"] == "fresh"
    resp, err = await gw.request(
        "GET", "/v1/memories/ryw", headers={"X-Memsync-Session": "v1.bogus.token"}
    )
    assert resp.status == 400
    assert err["error"]["code"] == "bad_token"


async def test_restart_keeps_data(gw: Gateway) -> None:
    made = await _create(gw, id="keep", kind="fact", content="survives restarts")
    await _read(gw, "keep", str(made["session"]))
    replica = gw.runtime.journal.replica
    await gw.stop()
    await gw.start()
    assert gw.runtime.journal.replica == replica
    resp, got = await gw.request("GET", "/v1/memories/keep")
    assert resp.status == 200, got
    assert got["content"] == "survives restarts"
    resp, body = await gw.request(
        "PATCH", "/v1/memories/keep", json={"content": "and updates"},
        headers={"If-Match": str(got["version"])},
    )  # fmt: skip
    assert resp.status == 200, body
    assert body["conflicts"] == []  # dots kept advancing across the restart


async def test_a_create_reads_only_ids_it_may_hold_and_still_refuses_existing_ones(
    gw: Gateway,
) -> None:
    made = await _create(gw, id="held", kind="fact", content="here before the restart")
    await _read(gw, "held", str(made["session"]))
    await gw.stop()
    await gw.start()  # the known keys come back from the store
    checks = gw.runtime.metrics.existence_checks
    read_before = checks.labels("read")._value.get()
    skipped_before = checks.labels("skipped")._value.get()
    resp, again = await _create_raw(gw, id="held", kind="fact")
    assert resp.status == 409, again
    resp, fresh = await _create_raw(gw, id="brand-new", kind="fact", content="new")
    assert resp.status == 201, fresh
    assert checks.labels("read")._value.get() == read_before + 1
    assert checks.labels("skipped")._value.get() == skipped_before + 1
    await _read(gw, "brand-new", resp.headers["X-Memsync-Session"])
    resp, twice = await _create_raw(gw, id="brand-new", kind="fact")
    assert resp.status == 409, twice  # known once applied


@pytest.mark.parametrize("backend", ["edge-process", "edge"])
async def test_either_edge_backend_keeps_data_across_restarts(
    tmp_path: Path, broker: TansuBroker, backend: str
) -> None:
    g = await Gateway(tmp_path / "region", broker, store_backend=backend).start()
    try:
        child = getattr(g.runtime.store, "pid", None)
        assert (child is not None) == (backend == "edge-process")
        made = await _create(g, id="kept", kind="fact", content="in the store")
        await _read(g, "kept", str(made["session"]))
        resp, hits = await g.request("POST", "/v1/search", json={"query": "store"})
        assert resp.status == 200, hits
        assert [h["memory"]["id"] for h in hits["results"]] == ["kept"]
        await g.stop()
        await g.start()
        if backend == "edge-process":
            assert g.runtime.store.pid not in (None, child)  # type: ignore[union-attr]
        resp, got = await g.request("GET", "/v1/memories/kept")
        assert resp.status == 200, got
        assert got["content"] == "in the store"
    finally:
        await g.stop()


async def test_outbox_drains_after_the_broker_comes_back(gw: Gateway, broker: TansuBroker) -> None:
    made = await _create(gw, id="before", kind="fact", content="logged")
    await _read(gw, "before", str(made["session"]))
    await broker.stop()
    accepted = []
    for i in range(5):
        resp, body = await gw.request(
            "POST", "/v1/memories",
            json={"user_id": "alice", "id": f"during-{i}", "kind": "fact", "content": f"d{i}"},
        )  # fmt: skip
        assert resp.status in (201, 202), body
        if resp.status == 202:
            assert body["degraded"] is True
            assert "log_unavailable" in resp.headers.get("X-Memsync-Degraded", "log_unavailable")
        accepted.append(f"during-{i}")
    resp, ready = await gw.request("GET", "/readyz")
    assert ready["outbox_pending"] >= 1
    await broker.start()  # same port, empty log

    async def all_visible() -> bool:
        for mid in ["before", *accepted]:
            resp, _ = await gw.request("GET", f"/v1/memories/{mid}")
            if resp.status != 200:
                return False
        return True

    await eventually(all_visible, within=30, what="every acknowledged write to be applied")
    resp, ready = await gw.request("GET", "/readyz")
    assert ready["outbox_pending"] == 0


async def test_tenants_and_users_are_isolated(gw: Gateway) -> None:
    made = await _create(gw, id="secret", kind="fact", content="alice only")
    await _read(gw, "secret", str(made["session"]))
    other_tenant = token(tenant="globex")
    resp, _ = await gw.request("GET", "/v1/memories/secret", token_=other_tenant)
    assert resp.status == 404
    resp, page = await gw.request("GET", "/v1/memories", token_=other_tenant)
    assert page["memories"] == []
    bob = token(users=("bob",))
    resp, _ = await gw.request("GET", "/v1/memories/secret", token_=bob)
    assert resp.status == 404
    resp, err = await gw.request("GET", "/v1/memories?user_id=alice", token_=bob)
    assert resp.status == 403, err
    resp, found = await gw.request("POST", "/v1/search", json={"query": "alice"}, token_=bob)
    assert found["results"] == []
    resp, err = await gw.request(
        "POST", "/v1/memories", json={"user_id": "alice", "kind": "fact"}, token_=bob
    )
    assert resp.status == 403, err
    resp, err = await gw.request(
        "PATCH", "/v1/memories/secret", json={"content": "x"}, token_=other_tenant
    )
    assert resp.status == 404
    reader = token(scope=("read",))
    resp, err = await gw.request(
        "POST", "/v1/memories", json={"user_id": "alice", "kind": "fact"}, token_=reader
    )
    assert resp.status == 403
    assert "write" in err["error"]["message"]


@pytest.mark.parametrize(
    ("method", "path", "body", "headers", "status", "code"),
    [
        ("POST", "/v1/memories", "{not json", {}, 400, "malformed"),
        ("POST", "/v1/memories", '{"user_id": "alice", "kind": 7}', {}, 422, "invalid"),
        ("POST", "/v1/memories", '{"user_id": "alice", "kind": "fact", "colour": "red"}', {},
         422, "invalid"),
        ("POST", "/v1/memories", '{"user_id": "alice", "kind": "fact", "content": "'
         + "x" * 70_000 + '"}', {}, 422, "invalid"),
        ("POST", "/v1/memories", '{"user_id": "alice", "kind": "fact", "content": "'
         + "x" * 300_000 + '"}', {}, 413, "too_large"),
        ("POST", "/v1/memories", '{"user_id": "a:b", "kind": "fact"}', {}, 422, "invalid"),
        ("POST", "/v1/memories", '{"user_id": "alice", "kind": "fact", "embedding": [1, 2]}', {},
         422, "invalid"),
        ("POST", "/v1/memories", '{"user_id": "alice", "kind": "fact", "items": ["x"]}', {},
         422, "invalid"),
        ("POST", "/v1/memories", '{"user_id": "alice", "kind": "fact"}',
         {"Content-Type": "text/plain"}, 415, "unsupported_media_type"),
        ("POST", "/v1/memories", '{"user_id": "alice", "kind": "fact"}',
         {"Authorization": "Bearer nope"}, 401, "unauthorized"),
        ("POST", "/v1/memories", '{"user_id": "alice", "kind": "fact"}',
         {"Authorization": ""}, 401, "unauthorized"),
        ("PATCH", "/v1/memories/m1", '{"content": "x"}', {"If-Match": "garbage"}, 400,
         "bad_token"),
        ("GET", "/v1/memories/bad:id", None, {}, 400, "bad_request"),
        ("GET", "/v1/memories?limit=abc", None, {}, 400, "bad_request"),
        ("GET", "/v1/memories?kind=secret", None, {}, 400, "bad_request"),
        ("GET", "/v1/memories?page_token=%25%25", None, {}, 400, "bad_request"),
        ("POST", "/v1/search", "{}", {}, 422, "invalid"),
        ("GET", "/v1/nowhere", None, {}, 404, "not_found"),
        ("PUT", "/v1/memories/m1", None, {}, 405, "method_not_allowed"),
    ],
    ids=[
        "malformed-json", "wrong-type", "unknown-field", "oversize-field", "oversize-body",
        "bad-user-id", "wrong-embedding-dim", "items-on-fact", "wrong-content-type",
        "bad-token", "missing-token", "bad-if-match", "bad-memory-id", "bad-limit",
        "bad-kind", "bad-page-token", "empty-search", "unknown-route", "wrong-method",
    ],
)  # fmt: skip
async def test_bad_input_gets_a_clear_error_and_writes_nothing(
    gw: Gateway,
    method: str,
    path: str,
    body: str | None,
    headers: dict[str, str],
    status: int,
    code: str,
) -> None:
    made = await _create(gw, id="m1", kind="fact", content="original")
    await _read(gw, "m1", str(made["session"]))
    journal = gw.runtime.journal
    # The sequence, not the row counts: retention prunes logged rows meanwhile.
    before = journal.last_seq, (await journal.counts())[0]
    resp, err = await gw.request(method, path, data=body, headers=headers)
    assert resp.status == status, err
    assert err["error"]["code"] == code
    assert err["error"]["message"]
    assert (journal.last_seq, (await journal.counts())[0]) == before  # no event, none pending
    resp, got = await gw.request("GET", "/v1/memories/m1")
    assert got["content"] == "original"


async def test_openapi_describes_every_route(gw: Gateway) -> None:
    resp, spec = await gw.request("GET", "/openapi.json")
    assert resp.status == 200
    assert spec["openapi"].startswith("3.1")
    for path in ("/v1/memories", "/v1/memories/{id}", "/v1/search", "/readyz", "/metrics",
                 "/v1/replication", "/v1/replication/missing", "/dashboard",
                 "/v1/dashboard"):  # fmt: skip
        assert path in spec["paths"]
    assert "Memory" in spec["components"]["schemas"]


async def test_metrics_expose_latency_lag_and_cache(gw: Gateway) -> None:
    made = await _create(gw, id="m", kind="fact", content="x")
    await _read(gw, "m", str(made["session"]))
    resp, _ = await gw.request("GET", "/v1/memories/never-written")  # a store read
    assert resp.status == 404
    assert gw.client is not None

    async def metrics_text() -> str:
        assert gw.client is not None
        return await (await gw.client.get("/metrics")).text()

    # The session read may be answered by write-through; the log's delivery
    # (what the applier's metrics count and time) follows.
    async def delivered() -> bool:
        return 'memsync_events_applied_total{source="local"}' in await metrics_text()

    await eventually(delivered)
    text = await metrics_text()
    for name in (
        "memsync_http_request_seconds_bucket",
        "memsync_events_written_through_total 1.0",
        "memsync_events_duplicate_total 1.0",  # the log's delivery of the written-through write
        "memsync_apply_lag_seconds_bucket",
        "memsync_cache_hit_ratio",
        "memsync_events_applied_total",
        "memsync_outbox_pending",
        'memsync_create_existence_checks_total{result="skipped"}',
        'memsync_log_roll_releases_total{log="local"}',
        "memsync_fanout_batches_total",
        'memsync_subscriber_writes_total{path="direct"}',
        "# TYPE memsync_subscriptions gauge",
    ):
        assert name in text
    # The stages: a state read from the store (the GET), the write's journal and append.
    for stage in ("read", "journal", "append"):
        count = f'memsync_write_stage_seconds_count{{stage="{stage}"}}'
        lines = [ln for ln in text.splitlines() if ln.startswith(count)]
        assert lines and float(lines[0].split()[-1]) >= 1, (stage, lines)

    async def loop_lag_measured() -> bool:
        assert gw.client is not None
        text = await (await gw.client.get("/metrics")).text()
        name = "memsync_event_loop_lag_seconds_count"
        counts = [ln for ln in text.splitlines() if ln.startswith(name)]
        return bool(counts) and float(counts[0].split()[-1]) >= 2

    await eventually(loop_lag_measured)


async def test_request_metrics_name_no_method_a_client_invents(gw: Gateway) -> None:
    # aiohttp's C parser takes ~35 methods (WebDAV's and more; its pure-Python
    # fallback takes any token): a client should not choose label values.
    for method in ("PROPFIND", "MKCALENDAR", "PURGE"):
        resp, _ = await gw.request(method, "/v1/memories")
        assert resp.status == 405
        resp, _ = await gw.request(method, "/nowhere")
        assert resp.status in (404, 405)
    assert gw.client is not None
    text = await (await gw.client.get("/metrics")).text()
    lines = [ln for ln in text.splitlines() if ln.startswith("memsync_http_request_seconds_count")]
    methods = {ln.split('method="')[1].split('"')[0] for ln in lines}
    assert methods <= {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "other"}
    assert "other" in methods, lines


async def test_gateway_starts_while_the_log_is_down_and_catches_up(tmp_path: Path) -> None:
    broker = TansuBroker(log_path=tmp_path / "broker.log")  # not started yet
    g = await Gateway(tmp_path / "late", broker).start()
    try:
        resp, ready = await g.request("GET", "/readyz")
        assert resp.status == 200
        assert "log_unavailable" in ready["modes"]
        resp, body = await g.request(
            "POST", "/v1/memories", json={"user_id": "alice", "id": "early", "kind": "fact"}
        )
        assert resp.status == 202, body
        assert body["degraded"] is True
        await broker.start()

        async def visible() -> bool:
            resp, _ = await g.request("GET", "/v1/memories/early")
            return resp.status == 200

        await eventually(visible, within=30, what="the outbox to drain into the late log")
    finally:
        await g.stop()
        await broker.stop()


async def test_poisoned_record_goes_to_the_dead_letter_topic_and_the_applier_carries_on(
    gw: Gateway, broker: TansuBroker
) -> None:
    import time

    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

    from replication.segments import segment_of, topic_name

    made = await _create(gw, id="first", kind="fact", content="ok")
    await _read(gw, "first", str(made["session"]))
    topic = topic_name("memsync.events", segment_of(int(time.time() * 1000), 2_000))
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(topic, b'{"msg": "memory_event", "garbage": true}', key=b"x")
        await producer.send_and_wait(topic, b"\xff\xfe not json", key=b"y")
    finally:
        await producer.stop()
    made = await _create(gw, id="after", kind="fact", content="still applied")
    assert (await _read(gw, "after", str(made["session"])))["content"] == "still applied"

    consumer = AIOKafkaConsumer(
        bootstrap_servers=broker.bootstrap, auto_offset_reset="earliest", fetch_max_wait_ms=5
    )
    await consumer.start()
    try:
        tp = TopicPartition("memsync.dlq", 0)
        consumer.assign([tp])
        reasons: list[str] = []

        async def both_dead_lettered() -> bool:
            batch = await consumer.getmany(tp, timeout_ms=100)
            for rec in batch.get(tp, []):
                reasons.append(dict(rec.headers)["memsync-reason"].decode())
            return len(reasons) >= 2

        await eventually(both_dead_lettered, within=15, what="two dead letters")
    finally:
        await consumer.stop()
    assert any("invalid event" in r for r in reasons)
    assert any("undecodable" in r for r in reasons)


async def test_concurrent_creates_of_one_id_by_two_users_admit_one(gw: Gateway) -> None:
    """Ids are the tenant's: while one user's create of an id is in flight, another's
    is refused (409), so two owners' writes never merge into one memory whose reads
    would show one user the other's private content."""
    alice, bob = token(users=("alice",)), token(users=("bob",))
    for round_ in range(5):
        memory_id = f"notes-{round_}"
        answers = await asyncio.gather(
            gw.request("POST", "/v1/memories", token_=alice, json={
                "id": memory_id, "user_id": "alice", "kind": "fact", "content": "alice secret"}),
            gw.request("POST", "/v1/memories", token_=bob, json={
                "id": memory_id, "user_id": "bob", "kind": "fact", "content": "bob's"}),
        )  # fmt: skip
        statuses = sorted(resp.status for resp, _ in answers)
        assert statuses == [201, 409], [body for _, body in answers]
        (winner,) = [(resp, body) for resp, body in answers if resp.status == 201]
        owner = winner[1]["user_id"]
        session = {"X-Memsync-Session": winner[0].headers["X-Memsync-Session"]}
        for who, tok in (("alice", alice), ("bob", bob)):
            resp, got = await gw.request("GET", f"/v1/memories/{memory_id}", token_=tok,
                                         headers=session if who == owner else None)  # fmt: skip
            if who == owner:
                assert resp.status == 200 and got["user_id"] == owner and got["conflicts"] == []
            else:
                assert resp.status == 404, got
