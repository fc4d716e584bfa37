"""The admin dashboard: a static page, and its data for an admin token's tenant only."""

from __future__ import annotations

import base64
import hashlib
import re

from .harness import Gateway, eventually, token

ADMIN = token(scope=("read", "write", "admin"))


async def test_the_page_is_static_and_runs_only_its_own_script(gw: Gateway) -> None:
    assert gw.client is not None
    resp = await gw.client.get("/dashboard")  # no token: the page holds no data
    assert resp.status == 200
    assert resp.content_type == "text/html"
    page = await resp.text()
    script = re.search(r"<script>(.*)</script>", page, re.S)
    assert script is not None
    digest = base64.b64encode(hashlib.sha256(script.group(1).encode()).digest()).decode()
    policy = resp.headers["Content-Security-Policy"]
    assert f"script-src 'sha256-{digest}'" in policy
    assert "default-src 'none'" in policy and "connect-src 'self'" in policy
    assert "/v1/dashboard" in page and "innerHTML" not in page  # data as text only


async def test_the_data_needs_an_admin_token(gw: Gateway) -> None:
    resp, err = await gw.request("GET", "/v1/dashboard")  # read/write/subscribe token
    assert resp.status == 403, err
    assert "admin" in err["error"]["message"]


async def test_the_data_shows_events_and_conflicts_of_the_admins_tenant(gw: Gateway) -> None:
    resp, made = await gw.request("POST", "/v1/memories", json={
        "user_id": "alice", "id": "tone", "kind": "preference", "policy": "surface",
        "content": "formal"})  # fmt: skip
    assert resp.status == 201, made
    for text in ("casual", "playful"):  # concurrent: both saw only "formal"
        resp, body = await gw.request(
            "PATCH", "/v1/memories/tone", json={"content": text},
            headers={"If-Match": str(made["version"])},
        )  # fmt: skip
        assert resp.status == 200, body
    other = token(tenant="globex", scope=("write",))
    resp, _ = await gw.request("POST", "/v1/memories", token_=other,
                               json={"user_id": "bob", "id": "theirs", "kind": "fact"})  # fmt: skip
    assert resp.status == 201

    data: dict[str, object] = {}

    async def four_events() -> bool:
        nonlocal data
        resp, data = await gw.request("GET", "/v1/dashboard", token_=ADMIN)
        assert resp.status == 200, data
        return data["totals"]["events_seen"] == 4  # type: ignore[index]

    await eventually(four_events, what="four events on the dashboard")
    recent = data["recent"]
    assert isinstance(recent, list)
    assert [(e["type"], e["id"]) for e in recent] == [
        ("update", "tone"),
        ("update", "tone"),
        ("create", "tone"),
    ]  # newest first, each once although written through and then read from the log
    assert recent[0]["versions"] == 2 and recent[0]["local"] is True
    assert [(c["id"], c["versions"]) for c in data["conflicts"]] == [("tone", 2)]  # type: ignore[attr-defined]
    assert data["mode"] == "normal" and data["region"] == "test"
    totals = data["totals"]
    assert isinstance(totals, dict)
    assert totals["events_seen"] == 4 and totals["conflicts_seen"] >= 1
    resp, theirs = await gw.request(
        "GET", "/v1/dashboard", token_=token(tenant="globex", scope=("admin",))
    )
    assert [e["id"] for e in theirs["recent"]] == ["theirs"]
    assert theirs["conflicts"] == []
