"""Routes, heartbeats, link status, the cluster plan, peers and the running digest."""

from __future__ import annotations

from collections import namedtuple
from typing import Any

import pytest

from deploy.cluster import partition_names, plan_cluster
from gateway.replication_status import ReplicationStatus
from gateway.settings import Settings, SettingsError, parse_peers
from gateway.state_digest import RunningDigest
from replication.digest import combine, state_digest
from replication.heartbeat import (
    KIND_HEADER,
    KIND_HEARTBEAT,
    LINK_LAG_HEADER,
    Heartbeat,
    decode_heartbeat,
    encode_heartbeat,
    header,
    is_heartbeat,
    mirror_group,
    mirrored_log,
)
from replication.log import parse_routes, route_client
from replication.segments import is_expired
from replication.state import MemoryState

Broker = namedtuple("Broker", "nodeId host port rack")


class _Cluster:
    def __init__(self) -> None:
        self.brokers = {111: Broker(111, "10.0.0.5", 9092, None), "bootstrap-0": None}

    def broker_metadata(self, node: Any) -> Any:
        return self.brokers.get(node) or (
            Broker(node, "proxy", 1, None) if node == "bootstrap-0" else None
        )

    def is_bootstrap(self, node: Any) -> bool:
        return node == "bootstrap-0"


class _Client:
    def __init__(self) -> None:
        self.cluster = _Cluster()


def test_routes_parse_and_rewrite_advertised_addresses_only() -> None:
    assert parse_routes("*=127.0.0.1:9000") == {"*": "127.0.0.1:9000"}
    assert parse_routes(" a:1=b:2 , c:3=d:4 ") == {"a:1": "b:2", "c:3": "d:4"}
    assert parse_routes("") == {}
    for bad in ("a:1", "=b:2", "a:1=b", "a:1=b:x"):
        with pytest.raises(ValueError, match="bad route"):
            parse_routes(bad)
    client = _Client()
    route_client(client, {"10.0.0.5:9092": "127.0.0.1:7000"})
    assert client.cluster.broker_metadata(111)[1:3] == ("127.0.0.1", 7000)
    assert client.cluster.broker_metadata("bootstrap-0")[1:3] == ("proxy", 1)  # as given
    assert client.cluster.broker_metadata(999) is None
    other = _Client()
    route_client(other, {"elsewhere:1": "x:2"})
    assert other.cluster.broker_metadata(111)[1:3] == ("10.0.0.5", 9092)  # no route: unchanged
    star = _Client()
    route_client(star, {"*": "toxiproxy:19092"})
    assert star.cluster.broker_metadata(111)[1:3] == ("toxiproxy", 19092)


def test_heartbeats_round_trip_and_are_told_apart_by_header() -> None:
    beat = Heartbeat("us-east", 1_700_000_000_000, 7)
    assert decode_heartbeat(encode_heartbeat(beat)) == beat
    assert is_heartbeat([(KIND_HEADER, KIND_HEARTBEAT)])
    assert not is_heartbeat([(KIND_HEADER, b"event")])
    assert not is_heartbeat([])
    assert header([("a", b"1"), ("b", b"2"), ("a", b"3")], "a") == b"1"
    assert mirrored_log("us-east") == "us-east.memsync.events"
    assert mirror_group("us-east", "eu-west") == "memsync-mirror-us-east-eu-west"


def test_link_status_is_waiting_then_replicating_then_lagging() -> None:
    now = [1000.0]
    status = ReplicationStatus(
        "eu-west", ["us-east"], interval_ms=1000, alert_ms=5000, clock=lambda: now[0]
    )
    (view,) = status.view()
    assert (view.state, view.lag_ms, view.lag_events) == ("waiting", None, None)
    sent = int(now[0] * 1000) - 30
    status.heartbeat(
        "us-east", encode_heartbeat(Heartbeat("us-east", sent, 1)), [(LINK_LAG_HEADER, b"12")]
    )
    status.events("us-east", 5)
    (view,) = status.view()
    assert (view.state, view.lag_ms, view.lag_events) == ("replicating", 30.0, 12)
    assert (view.heartbeats, view.events_applied) == (1, 5)
    now[0] += 10  # no heartbeat for 10 s: the link is cut or stalled
    (view,) = status.view()
    assert view.state == "lagging"
    assert view.lag_ms == pytest.approx(10_000 + 30 - 1000)
    status.heartbeat("us-east", b"not json", [])  # ignored, never raises
    status.heartbeat("nowhere", encode_heartbeat(Heartbeat("x", 1, 1)), [])
    assert status.view()[0].heartbeats == 1


def test_a_link_draining_a_backlog_is_catching_up_a_cut_one_is_not() -> None:
    now = [1000.0]
    status = ReplicationStatus(
        "eu-west", ["us-east"], interval_ms=1000, alert_ms=5000, clock=lambda: now[0]
    )
    assert not status.catching_up("us-east")  # nothing heard yet
    beat = Heartbeat("us-east", int(now[0] * 1000) - 20, 1)
    status.heartbeat("us-east", encode_heartbeat(beat), [])
    assert not status.catching_up("us-east")  # fresh: nothing to drain
    old = Heartbeat("us-east", int(now[0] * 1000) - 8_000, 2)  # backlog from a partition
    status = ReplicationStatus(
        "eu-west", ["us-east"], interval_ms=1000, alert_ms=5000, clock=lambda: now[0]
    )
    status.heartbeat("us-east", encode_heartbeat(old), [])
    assert status.catching_up("us-east")
    now[0] += 5  # no more heartbeats: cut, not draining
    assert not status.catching_up("us-east")
    assert not status.catching_up("elsewhere")


def test_segments_expire_a_hold_after_their_end() -> None:
    assert not is_expired(10, 11 * 100 + 500, 100, 500)
    assert is_expired(10, 11 * 100 + 501, 100, 500)


def test_cluster_plan_is_a_full_mesh_with_two_proxies_per_link() -> None:
    regions = [("a", 1, "k:1"), ("b", 2, "k:2"), ("c", 3, "k:3")]
    plan = plan_cluster(regions, range(100, 112))
    assert [link.name for link in plan.links] == ["a->b", "a->c", "b->a", "b->c", "c->a", "c->b"]
    ab = plan.links[0]
    assert (ab.kafka_listen, ab.http_listen, ab.http_name) == (
        "127.0.0.1:100", "127.0.0.1:101", "a->b.http",
    )  # fmt: skip
    assert (ab.source_kafka, ab.target_kafka) == ("k:1", "k:2")
    assert plan.peers_setting("b") == "a=http://127.0.0.1:101,c=http://127.0.0.1:111"
    assert set(partition_names(plan, "a", "b")) == {"a->b", "a->b.http", "b->a", "b->a.http"}
    assert plan.proxies()["c->a"] == "c->a"
    with pytest.raises(ValueError, match="unique"):
        plan_cluster([("a", 1, "k"), ("a", 2, "k")], range(10))
    with pytest.raises(ValueError, match="not enough proxy ports"):
        plan_cluster(regions, range(3))
    assert plan_cluster(regions).links[0].kafka_listen == "127.0.0.1:0"  # picked at creation


def test_peers_are_parsed_and_checked() -> None:
    assert [(p.name, p.url) for p in parse_peers("eu-west=http://h:1/,ap-south")] == [
        ("eu-west", "http://h:1"), ("ap-south", ""),
    ]  # fmt: skip
    for bad in ("EU", "eu-west=ftp://x"):
        with pytest.raises(ValueError):
            parse_peers(bad)
    env = {"MEMSYNC_REGION": "us-east", "MEMSYNC_INSECURE_DEV": "1"}
    with pytest.raises(SettingsError, match="not this one"):
        Settings.from_env({**env, "MEMSYNC_PEERS": "us-east"}).validated()
    with pytest.raises(SettingsError, match="once"):
        Settings.from_env({**env, "MEMSYNC_PEERS": "eu-west,eu-west"}).validated()
    with pytest.raises(SettingsError, match="MEMSYNC_PEERS"):
        Settings.from_env({**env, "MEMSYNC_PEERS": "Bad Name"})
    s = Settings.from_env({**env, "MEMSYNC_PEERS": "eu-west", "MEMSYNC_MIRROR_HOLD_MS": "forever"})
    assert s.replication.mirror_hold_ms is None
    assert s.validated().replication.peer_names == ["eu-west"]


def _state(i: int, content_ts: int = 0) -> MemoryState:
    return MemoryState(
        id=f"m{i}", tenant_id="t", user_id="u", kind="fact", policy="lww",
        origin=(1, "r", 1), updated_at=content_ts,
    )  # fmt: skip


def test_running_digest_matches_a_digest_computed_from_scratch() -> None:
    digest = RunningDigest(buckets=16)
    states = [_state(i) for i in range(50)]
    digest.add_all(states[:25])
    for s in states[25:]:
        digest.replace(None, s)
    changed = _state(7, content_ts=99)
    digest.replace(states[7], changed)
    states[7] = changed
    expected = combine(((s.key, state_digest(s)) for s in states), buckets=16)
    assert digest.snapshot() == expected
    assert digest.count == 50
    with pytest.raises(ValueError):
        RunningDigest(0)


def test_the_applier_commit_delay_is_checked() -> None:
    env = {"MEMSYNC_REGION": "us-east", "MEMSYNC_INSECURE_DEV": "1"}
    assert Settings.from_env({**env, "MEMSYNC_APPLY_COMMIT_MS": "0"}).validated()
    for bad in ("-1", "600000"):
        with pytest.raises(SettingsError, match="MEMSYNC_APPLY_COMMIT_MS"):
            Settings.from_env({**env, "MEMSYNC_APPLY_COMMIT_MS": bad}).validated()


def test_the_quiet_fetch_wait_is_checked() -> None:
    env = {"MEMSYNC_REGION": "us-east", "MEMSYNC_INSECURE_DEV": "1"}
    assert Settings.from_env(env).validated().kafka.quiet_fetch_wait_ms == 25
    assert Settings.from_env({**env, "MEMSYNC_KAFKA_QUIET_FETCH_WAIT_MS": "0"}).validated()
    # A fetch wait above the quiet one is no error: the quiet cadence just changes nothing.
    assert Settings.from_env({**env, "MEMSYNC_KAFKA_FETCH_MAX_WAIT_MS": "50"}).validated()
    for bad in ("-1", "500"):
        with pytest.raises(SettingsError, match="MEMSYNC_KAFKA_QUIET_FETCH_WAIT_MS"):
            Settings.from_env({**env, "MEMSYNC_KAFKA_QUIET_FETCH_WAIT_MS": bad}).validated()
