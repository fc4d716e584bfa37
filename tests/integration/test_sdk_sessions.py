"""Read-your-writes with writes in flight at once: the session covers every one of them."""

from __future__ import annotations

import asyncio

from gateway.client import MemorySync
from gateway.service import MAX_SESSION_TOKENS
from replication import dvv
from replication.dvv import Dot

from .harness import Gateway


def _base(gw: Gateway) -> str:
    assert gw.client is not None
    return str(gw.client.make_url("")).rstrip("/")


async def test_concurrent_writes_leave_a_session_that_covers_them_all(gw: Gateway) -> None:
    service = gw.runtime.service
    replica = gw.runtime.journal.replica
    async with MemorySync(_base(gw), gw.default_token) as ms:
        await asyncio.gather(
            *(ms.create("alice", "fact", id=f"c{n}", content=f"{n}") for n in range(6))
        )
        header = ms.session_token
        assert header is not None
        ctx = service.parse_session(header)
        # Each was sent no token and answered with its own event only: the
        # client must hold them all, not the last answer's.
        assert all(dvv.contains(ctx, Dot(replica, seq)) for seq in range(1, 7)), header
        await ms.create("alice", "fact", id="after", content="after")
        assert "," not in str(ms.session_token)  # sent them all: its answer covers them
        assert all(
            dvv.contains(service.parse_session(ms.session_token), Dot(replica, seq))
            for seq in range(1, 8)
        )
        for n in range(6):  # and the gateway accepts it for a consistent read
            assert (await ms.get(f"c{n}")).content == f"{n}"


async def test_the_gateway_joins_the_tokens_of_one_header_and_bounds_them(gw: Gateway) -> None:
    tokens = []
    for n in range(2):
        resp, _ = await gw.request(
            "POST", "/v1/memories", json={"user_id": "alice", "id": f"j{n}", "kind": "fact"}
        )
        tokens.append(resp.headers["X-Memsync-Session"])
    service = gw.runtime.service
    joined = service.parse_session(", ".join(tokens))
    assert joined == dvv.join(service.parse_session(tokens[0]), service.parse_session(tokens[1]))
    resp, err = await gw.request(
        "GET", "/v1/memories/j0",
        headers={"X-Memsync-Session": ",".join([tokens[0]] * (MAX_SESSION_TOKENS + 1))},
    )  # fmt: skip
    assert resp.status == 400, err
    assert f"at most {MAX_SESSION_TOKENS}" in err["error"]["message"]
    resp, got = await gw.request(
        "GET", "/v1/memories/j1", headers={"X-Memsync-Session": ",".join(tokens)}
    )
    assert resp.status == 200, got
