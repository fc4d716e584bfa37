"""The dashboard's feed: each event once, newest first, per tenant, bounded."""

from __future__ import annotations

from gateway.dashboard import DashboardFeed
from replication.testing import Replica


async def test_the_feed_keeps_each_event_once_and_stays_bounded() -> None:
    feed = DashboardFeed("eu", size=4)
    r = Replica("eu.g1", region="eu")
    batch = []
    for n in range(40):
        event = r.write(f"m{n}", "fact", "create", user="u", content=f"c{n}")
        assert event is not None
        batch.append((event, b"", r.states[event.key], None))
    await feed.on_batch(batch, None)  # type: ignore[arg-type]
    await feed.on_batch(batch[-2:], None)  # type: ignore[arg-type]  # the log's delivery again
    assert feed.events == 40
    shown = feed.recent("t1")
    assert [e["id"] for e in shown] == ["m39", "m38", "m37", "m36"]
    assert all(e["local"] for e in shown)
    assert len(feed._seen) <= 8 * 4


async def test_the_feed_shows_a_token_only_the_users_it_may_act_for() -> None:
    feed = DashboardFeed("eu")
    r = Replica("eu.g1", region="eu")
    batch = []
    for user in ("alice", "bob"):
        event = r.write(f"of-{user}", "fact", "create", user=user, content="x")
        assert event is not None
        batch.append((event, b"", r.states[event.key], None))
    await feed.on_batch(batch, None)  # type: ignore[arg-type]
    assert [e["id"] for e in feed.recent("t1")] == ["of-bob", "of-alice"]
    assert [e["id"] for e in feed.recent("t1", may_see=lambda u: u == "alice")] == ["of-alice"]
