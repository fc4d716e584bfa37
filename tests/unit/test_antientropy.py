"""Anti-entropy against a scripted peer: a stale digest is not compared."""

from __future__ import annotations

from typing import Any, cast

import msgspec
from aiohttp import ClientSession, web
from aiohttp.test_utils import TestServer

from gateway.antientropy import AntiEntropy
from gateway.applier import Applier
from gateway.metrics import Metrics
from gateway.service import MemoryService, SeqTracker
from gateway.settings import Peer
from gateway.state_digest import RunningDigest
from gateway.testing import InMemoryStore
from replication.dvv import EMPTY


def _peer_app(asked: list[list[int]]) -> web.Application:
    """A peer that applied what we did, with one digest bucket unlike ours."""

    async def context(_: web.Request) -> web.Response:
        buckets = ["00" * 16] * 16
        buckets[3] = "ab" * 16
        body = {"region": "west", "applied": EMPTY, "history": EMPTY, "count": 1,
                "buckets": buckets}  # fmt: skip
        return web.Response(body=msgspec.json.encode(body), content_type="application/json")

    async def states(request: web.Request) -> web.Response:
        asked.append((await request.json())["buckets"])
        return web.json_response({"states": [], "next": None})

    app = web.Application()
    app.router.add_get("/v1/replication/context", context)
    app.router.add_post("/v1/replication/states", states)
    return app


async def test_a_stale_digest_is_not_compared_and_a_rebuilt_one_is() -> None:
    asked: list[list[int]] = []
    async with TestServer(_peer_app(asked), host="127.0.0.1") as server:
        digest, tracker, metrics = RunningDigest(buckets=16), SeqTracker(), Metrics("east")
        peer = Peer("west", str(server.make_url("")).rstrip("/"))
        applier = Applier(
            name="west", reader=cast(Any, None), store=InMemoryStore(),
            service=cast(MemoryService, None), tracker=tracker, dead_letters=cast(Any, None),
            metrics=metrics, digest=digest,
        )  # fmt: skip
        ae = AntiEntropy(
            region="east", peers=[peer],
            appliers={"west": applier}, tracker=tracker, digest=digest, metrics=metrics,
            secret=b"s" * 32,
        )  # fmt: skip
        async with ClientSession() as http:
            assert await ae.run_once(http, peer) == "in_sync"  # differs once: not yet
            digest.stale = True  # too many failed store writes: the applier rebuilds it
            assert [await ae.run_once(http, peer) for _ in range(3)] == ["in_sync"] * 3
            assert asked == []  # no repair on a digest that says nothing
            digest.stale = False  # rebuilt: what differed before it counts no more
            assert [await ae.run_once(http, peer) for _ in range(2)] == ["in_sync", "repaired"]
            assert asked == [[3]]  # the differing bucket, once it differed twice in a row
