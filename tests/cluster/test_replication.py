"""Replication between three regions on real brokers and stores, links through the proxy."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from replication.heartbeat import mirrored_log
from tests.cluster.harness import Cluster, Region, eventually


async def _create(region: Region, **body: Any) -> dict[str, Any]:
    resp, got = await region.request("POST", "/v1/memories", json={"user_id": "alice", **body})
    assert resp.status == 201, got
    return dict(got)


async def _patch(region: Region, memory_id: str, version: str, **body: Any) -> None:
    resp, got = await region.request(
        "PATCH", f"/v1/memories/{memory_id}", json=body, headers={"If-Match": version}
    )
    assert resp.status == 200, got


async def _isolate(cluster: Cluster, name: str, *, heal: bool = False) -> None:
    for other in cluster.regions:
        if other != name:
            await cluster.partition(name, other, enabled=heal)


async def test_a_write_in_any_region_is_visible_in_the_others(cluster: Cluster) -> None:
    for i, (name, region) in enumerate(cluster.regions.items()):
        await _create(region, id=f"m-{i}", kind="fact", content=f"from {name}")
    states = await cluster.converged([f"m-{i}" for i in range(3)], within=20)
    assert [s["content"] for s in states] == [f"from {n}" for n in cluster.regions]

    # Every region reports its two incoming links, replicating, lag measured.
    async def reporting() -> bool:
        for region in cluster.regions.values():
            resp, body = await region.request("GET", "/v1/replication")
            assert resp.status == 200, body
            links = {x["source"]: x for x in body["links"]}
            assert set(links) == set(cluster.regions) - {region.region}
            if any(x["state"] != "replicating" for x in links.values()):
                return False
            assert all(0 <= x["lag_ms"] < 5_000 for x in links.values())
            assert all(x["lag_events"] is not None for x in links.values())
        return True

    await eventually(reporting, within=10, what="every link replicating")
    _, text = await cluster.regions["eu-west"].request("GET", "/metrics")
    assert 'memsync_replication_lag_seconds{source="us-east"}' in text
    assert 'memsync_heartbeats_total{source="ap-south"}' in text


async def test_a_cut_link_stops_replication_and_anti_entropy_repairs(cluster: Cluster) -> None:
    assert cluster.proxy is not None
    east, west, south = (cluster.regions[n] for n in ("us-east", "eu-west", "ap-south"))
    await _create(east, id="warm", kind="fact", content="x")
    await cluster.converged(["warm"], within=20)
    # Only the Kafka proxy of us-east->eu-west: if the link bypassed it, the
    # write would still arrive at once.
    await cluster.proxy.collection.update("us-east->eu-west", enabled=False)
    await _create(east, id="cut", kind="fact", content="y")
    await eventually(lambda: _has(south, "cut"), within=5, what="ap-south over its link")
    assert await west.state("cut") is None
    # Anti-entropy (its own proxy is up) fetches it from a peer's history a
    # pass after the peer applied it, with the link still cut.
    progress = west.runtime.antientropy.progress.values()

    async def repaired() -> bool:
        # By events from a peer's history, or (if that history did not hold
        # it yet when asked) by whole states: either way, anti-entropy did it.
        # The state is visible while the repairing pass is still applying, so
        # wait for the pass to count it too.
        count = sum(p.repaired_events + p.repaired_states for p in progress)
        return await _has(west, "cut") and count >= 1

    await eventually(repaired, within=10, what="repair by anti-entropy")
    await cluster.proxy.collection.update("us-east->eu-west", enabled=True)
    await _create(east, id="after", kind="fact", content="z")
    await cluster.converged(["cut", "after"], within=20)


async def _has(region: Region, memory_id: str) -> bool:
    return await region.state(memory_id) is not None


async def test_concurrent_writes_in_two_regions_converge_by_policy(cluster: Cluster) -> None:
    east, west = cluster.regions["us-east"], cluster.regions["eu-west"]
    await _create(east, id="fact", kind="fact", content="v0")
    await _create(east, id="tone", kind="preference", policy="surface", content="formal")
    await _create(east, id="groceries", kind="list", items=["milk"])
    await _create(east, id="visits", kind="counter", value=10)
    ids = ["fact", "tone", "groceries", "visits"]
    await cluster.converged(ids, within=20)
    base = {m: (await east.state(m))["version"] for m in ids}

    await _isolate(cluster, "us-east")
    await _patch(east, "fact", base["fact"], content="from-east")
    await _patch(west, "fact", base["fact"], content="from-west")
    await _patch(east, "tone", base["tone"], content="casual")
    await _patch(west, "tone", base["tone"], content="playful")
    await _patch(east, "groceries", base["groceries"], remove=["milk"])
    await _patch(west, "groceries", base["groceries"], add=["milk", "eggs"])
    for n in (5, -3):
        await _patch(east, "visits", base["visits"], increment=n)
    await _patch(west, "visits", base["visits"], increment=7)
    await _isolate(cluster, "us-east", heal=True)

    fact, tone, groceries, visits = await cluster.converged(ids, within=30)
    assert fact["content"] == "from-west"  # the later HLC wins everywhere …
    assert [c["content"] for c in fact["conflicts"]] == ["from-east"]  # … the loser is logged
    assert sorted(s["content"] for s in tone["siblings"]) == ["casual", "playful"]
    assert sorted(groceries["items"]) == ["eggs", "milk"]  # add wins over a concurrent remove
    assert visits["value"] == 10 + 5 - 3 + 7


async def test_partition_both_sides_write_then_heal_and_lose_nothing(cluster: Cluster) -> None:
    east, west = cluster.regions["us-east"], cluster.regions["eu-west"]
    await _isolate(cluster, "us-east")
    written: list[str] = []
    for i in range(40):
        for region in (east, west):
            mid = f"{region.region}-{i}"
            await _create(region, id=mid, kind="fact", content=mid)
            written.append(mid)
    await asyncio.sleep(1.0)
    assert await west.state("us-east-0") is None  # really cut off
    assert await cluster.regions["ap-south"].state("eu-west-39") is not None  # the rest is not
    await _isolate(cluster, "us-east", heal=True)
    states = await cluster.converged(written, within=30)
    assert [s["content"] for s in states] == written  # every acknowledged write, everywhere


async def test_latency_and_bandwidth_toxics_slow_replication_but_do_not_break_it(
    cluster: Cluster,
) -> None:
    assert cluster.proxy is not None
    api = cluster.proxy.url
    async with aiohttp.ClientSession() as http:
        for toxic in (
            {"name": "slow", "type": "latency", "attributes": {"latency": 150, "jitter": 50}},
            {"name": "thin", "type": "bandwidth", "attributes": {"rate": 64}},
        ):
            async with http.post(f"{api}/proxies/us-east->eu-west/toxics", json=toxic) as resp:
                assert resp.status == 200, await resp.text()
        east = cluster.regions["us-east"]
        for i in range(20):
            await _create(east, id=f"slow-{i}", kind="fact", content="x" * 2000)
        await cluster.converged([f"slow-{i}" for i in range(20)], within=30)
        async with http.post(f"{api}/reset") as resp:
            assert resp.status == 204


async def test_links_never_loop(cluster: Cluster) -> None:
    for i, region in enumerate(cluster.regions.values()):
        for j in range(5):
            await _create(region, id=f"loop-{i}-{j}", kind="fact", content="x")
    ids = [f"loop-{i}-{j}" for i in range(3) for j in range(5)]
    await cluster.converged(ids, within=20)
    await asyncio.sleep(1.0)  # anything looping would keep arriving
    for target in cluster.regions.values():
        applied = {applier.name: applier.applied_total for applier in target.runtime.appliers}
        # Each log carries each region's 5 events once (a duplicate would be
        # a loop or a re-send; dedup would hide it from the state).
        assert applied == {name: 5 for name in applied}, (target.region, applied)
        assert target.runtime.remote.keys() == set(cluster.regions) - {target.region}
    for link in cluster.links:
        assert mirrored_log(link.source) == f"{link.source}.memsync.events"


async def test_a_broker_restarted_empty_is_healed_by_anti_entropy(cluster: Cluster) -> None:
    east, west = cluster.regions["us-east"], cluster.regions["eu-west"]
    link = next(x for x in cluster.links if x.name == "us-east->eu-west")
    await west.stop()  # eu-west's applier is away: mirrored events wait in its broker
    before = link.status.mirrored
    ids = [f"lost-{i}" for i in range(30)]
    for mid in ids:
        await _create(east, id=mid, kind="fact", content=mid)

    async def mirrored() -> bool:
        return link.status.mirrored >= before + len(ids) and link.status.lag_events == 0

    await eventually(mirrored, within=15, what="the link to mirror the writes into eu-west")
    # The broker comes back empty (memory storage): what the link had
    # delivered and committed is gone from every log.
    await west.broker.stop(grace=1.0)
    await west.broker.start()
    await west.start()
    states = await cluster.converged(ids, within=30)
    assert [s["content"] for s in states] == ids
    repaired = west.runtime.antientropy.progress
    assert sum(p.repaired_events for p in repaired.values()) >= len(ids)
    _, text = await west.request("GET", "/metrics")
    assert "memsync_antientropy_repaired_events_total" in text


async def test_a_cursor_from_one_region_resumes_in_another_without_gap(cluster: Cluster) -> None:
    east, west = cluster.regions["us-east"], cluster.regions["eu-west"]
    query = "/v1/sync?channels=user:alice:memories"
    for i in range(3):
        await _create(east, id=f"c{i}", kind="fact", content=str(i))
    await cluster.converged(["c0", "c1", "c2"], within=20)
    _, page = await east.request("GET", query)
    assert sorted(m["id"] for m in page["changes"]) == ["c0", "c1", "c2"]
    cursor = page["cursor"]
    # Written in both regions after the cursor; the agent then moves to eu-west.
    await _create(east, id="c3", kind="fact", content="3")
    await _create(west, id="c4", kind="fact", content="4")
    seen: dict[str, Any] = {}

    async def resumed() -> bool:
        nonlocal cursor
        resp, body = await west.request("GET", f"{query}&since={cursor}")
        assert resp.status == 200, body
        for m in body["changes"]:
            seen[m["id"]] = m
        cursor = body["cursor"]
        return {"c3", "c4"} <= seen.keys()

    await eventually(resumed, within=20, what="eu-west to serve what followed the cursor")
    assert set(seen) == {"c3", "c4"}  # nothing before the cursor, nothing missed after it
