"""Leaving a channel: who is told, what they get, and what the history keeps."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import msgspec

from gateway.auth import Claims
from gateway.fanout import Delivery, Fanout, Subscription
from gateway.history import Cursor, History
from gateway.leaving import Leaving, delivered_to, leaving, routed
from gateway.streams import Streams, channel_allows
from replication.dvv import EMPTY, Dot, DotContext
from replication.events import make_event
from replication.merge import apply
from replication.schema import MemoryBody, MemoryEvent, Ops, Source, encode
from replication.state import MemoryState
from replication.testing import Replica

KEY = b"k" * 32
TEA = "topic:tea:updates"
SHARED = "tenant:t1:shared"


def _event(
    n: int,
    *,
    before: MemoryState | None,
    topics: tuple[str, ...] = ("tea",),
    shared: bool = True,
    content: str = "",
    replica: str = "r1",
    context: DotContext | None = None,
    at: int | None = None,
    event_type: str = "",
) -> MemoryEvent:
    body = MemoryBody(
        id="m1", tenant_id="t1", user_id="alice", kind="fact", policy="lww",
        content=content or f"c{n}", topics=topics, shared=shared,
    )  # fmt: skip
    return make_event(
        event_id=f"e{replica}{n}",
        event_type=event_type or ("create" if before is None else "update"),  # type: ignore[arg-type]
        memory=body, source=Source(agent_id="a", region="r"),
        context=before.clock if context is None and before is not None else (context or EMPTY),
        dot=Dot(replica, n), seq=n, timestamp=at if at is not None else 1_700_000_000_000 + n,
        ops=Ops(fields=True),
    )  # fmt: skip


def _created() -> MemoryState:
    return apply(None, _event(1, before=None))


def test_an_update_that_keeps_or_widens_the_routing_leaves_nothing() -> None:
    created = _created()
    assert leaving(None, created) is None  # a create
    same = apply(created, _event(2, before=created, content="new words"))
    assert leaving(created, same) is None
    wider = apply(created, _event(2, before=created, topics=("tea", "coffee")))
    assert leaving(created, wider) is None


def test_moving_off_a_topic_or_unsharing_leaves_the_old_routing() -> None:
    created = _created()
    assert routed(created) == ("user:alice:memories", SHARED, TEA)
    moved = apply(created, _event(2, before=created, topics=("coffee",)))
    assert leaving(created, moved) == Leaving(
        prior=("user:alice:memories", SHARED, TEA),
        now=("user:alice:memories", SHARED, "topic:coffee:updates"),
    )
    private = apply(created, _event(2, before=created, shared=False))
    assert leaving(created, private) == Leaving(
        prior=("user:alice:memories", SHARED, TEA), now=("user:alice:memories", TEA)
    )


def test_a_delete_and_a_losing_concurrent_update_leave_nothing() -> None:
    created = _created()
    gone = apply(created, _event(2, before=created, event_type="delete", shared=False, topics=()))
    assert gone.deleted and leaving(created, gone) is None
    # Newer and shared wins over an older concurrent private version: it stays put.
    winner = apply(created, _event(2, before=created, at=1_700_000_009_000))
    loser = _event(1, before=created, replica="r2", shared=False, at=1_700_000_005_000)
    after = apply(winner, loser)
    assert len(after.versions) == 2
    assert leaving(winner, after) is None


def _sub(users: tuple[str, ...], *channels: str) -> Subscription:
    claims = Claims(sub="s", tenant="t1", users=users, scope=frozenset({"subscribe"}), exp=0)
    return Subscription(claims=claims, channels=channels)


def _pair(before: MemoryState, event: MemoryEvent, n: int) -> list[Delivery]:
    after = apply(before, event)
    left = leaving(before, after)
    assert left is not None
    d = Delivery(
        key=event.key, tenant="t1", user="alice", shared=event.memory.shared,
        channels=event.channels, dot=Dot("r1", n), raw=encode(event), state=after,
        cursor_token=f"c{n}",
    )  # fmt: skip
    return [d, Delivery.leaving(d, left)]


def test_only_those_who_could_see_it_and_no_longer_can_are_told() -> None:
    created = _created()
    fan = Fanout(10)
    owner_topic = _sub(("alice",), TEA)  # the owner sees it on the topic, shared or not
    other_topic = _sub(("bob",), TEA)
    tenant = _sub(("bob",), SHARED)
    both = _sub(("*",), SHARED, "user:alice:memories")  # still sees it on the user channel
    for sub in (owner_topic, other_topic, tenant, both):
        fan.add(sub)
    fan.publish(_pair(created, _event(2, before=created, shared=False, content="SECRET"), 2))
    (owner_msg,) = owner_topic.take(flush_lazy=True)
    assert json.loads(owner_msg[0])["op"] == "event"
    (both_msg,) = both.take(flush_lazy=True)
    assert json.loads(both_msg[0])["op"] == "event"
    for sub in (other_topic, tenant):
        ((message, cursor),) = sub.take(flush_lazy=True)
        assert json.loads(message) == {"op": "left", "id": "m1", "key": "t1/m1", "cursor": "c2"}
        assert cursor == "c2" and b"SECRET" not in message


def test_a_subscriber_shown_the_event_is_then_told_it_left() -> None:
    """An event on its channels whose state the winner routes elsewhere (a losing
    concurrent version): the event, then ``left``, in one stream and in that order."""
    created = _created()
    event = _event(2, before=created)  # routed to the tenant channel
    d = Delivery(
        key=event.key, tenant="t1", user="alice", shared=True, channels=event.channels,
        dot=Dot("r1", 2), raw=encode(event), state=created, cursor_token="c2",
    )  # fmt: skip
    private_now = Leaving(prior=routed(created), now=("user:alice:memories", TEA))
    sub = _sub(("bob",), SHARED)
    fan = Fanout(10)
    fan.add(sub)
    fan.publish([d, Delivery.leaving(d, private_now)])
    ops = [json.loads(m)["op"] for m, _ in sub.take(flush_lazy=True)]
    assert ops == ["event", "left"]


def test_a_coalesced_memory_that_left_goes_out_as_left_without_state() -> None:
    created = _created()
    lazy = _sub(("bob",), SHARED)
    lazy.mode = "lazy"
    fan = Fanout(10)
    fan.add(lazy)
    fan.publish(_pair(created, _event(2, before=created, shared=False, content="SECRET"), 2))
    ((message, cursor),) = lazy.take(flush_lazy=True)
    assert json.loads(message) == {
        "op": "batch", "events": [], "states": [],
        "left": [{"id": "m1", "key": "t1/m1"}], "cursor": "c2",
    }  # fmt: skip
    assert cursor == "c2"


async def test_the_history_keeps_what_an_event_left_and_replays_it(tmp_path: Path) -> None:
    path = tmp_path / "h.sqlite3"
    history = History(path, "h1", KEY, max_events=1000)
    await history.open()
    created = _created()
    update = _event(2, before=created, shared=False, content="SECRET")
    after = apply(created, update)
    first = _event(1, before=None)
    published: list[Delivery] = []

    class _Fan:
        def publish(self, deliveries: list[Delivery]) -> None:
            published.extend(deliveries)

    streams = Streams(history, _Fan())  # type: ignore[arg-type]
    await streams.on_batch([(first, encode(first), created, None)], EMPTY)
    await streams.on_batch([(update, encode(update), after, created)], EMPTY)
    await history.close()
    assert [d.left is not None for d in published] == [False, False, True]
    again = History(path, "h1", KEY, max_events=1000)
    await again.open()
    try:
        bob = _sub(("bob",), SHARED)
        entries, _, _ = await again.replay(
            Cursor(EMPTY), lambda t, c: channel_allows(bob, t, c), 10
        )
        assert [e.dot.counter for e in entries] == [1, 2]
        assert entries[0].leaving is None
        assert entries[1].leaving == leaving(created, after)
        alice = _sub(("alice",), "user:alice:memories")
        entries, _, _ = await again.replay(
            Cursor(EMPTY), lambda t, c: channel_allows(alice, t, c), 10
        )
        assert [e.dot.counter for e in entries] == [1, 2]  # her own: the events themselves
    finally:
        await again.close()


async def test_a_history_from_before_leaving_opens_and_one_after_takes_old_writes(
    tmp_path: Path,
) -> None:
    path = tmp_path / "old.sqlite3"
    with sqlite3.connect(path) as db:
        db.executescript(
            "CREATE TABLE events (idx INTEGER PRIMARY KEY, replica TEXT NOT NULL, "
            "seq INTEGER NOT NULL, tenant TEXT NOT NULL, channels TEXT NOT NULL, "
            "body BLOB NOT NULL, cursor BLOB NOT NULL);"
        )
    history = History(path, "h1", KEY, max_events=1000)
    await history.open()
    try:
        created = _created()
        update = _event(2, before=created, shared=False)
        entries = history.stamp(
            [(Dot("r1", 2), "t1", update.channels, encode(update))],
            [leaving(created, apply(created, update))],
        )
        await history.append(entries)
        replayed, _, _ = await history.replay(Cursor(EMPTY), lambda t, c: True, 10)
        assert replayed[0].leaving == entries[0].leaving is not None
    finally:
        await history.close()
    # A gateway from before (a rollback) still writes its rows as it did: seven values.
    with sqlite3.connect(path) as db:
        db.execute(
            "INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?)",
            (99, "r1", 3, "t1", "user:alice:memories", b"{}", b""),
        )


def test_a_repair_that_took_a_memory_off_a_channel_lists_it_in_left() -> None:
    """A state repair moves no cursor: ``left`` rides in its batch, without the state."""
    created = _created()
    private = apply(created, _event(2, before=created, shared=False, content="SECRET"))
    owner = _sub(("alice",), "user:alice:memories")
    tenant = _sub(("bob",), SHARED)
    fan = Fanout(10)
    for sub in (owner, tenant):
        fan.add(sub)
    Streams(None, fan).on_states([(created, private)])  # type: ignore[arg-type]
    ((told, cursor),) = tenant.take(flush_lazy=True)
    assert cursor is None and b"SECRET" not in told
    assert json.loads(told) == {
        "op": "batch", "events": [], "states": [],
        "left": [{"id": "m1", "key": "t1/m1"}], "cursor": None,
    }  # fmt: skip
    ((shown, _),) = owner.take(flush_lazy=True)
    assert b"SECRET" in shown and b'"left"' not in shown


async def test_what_was_left_is_trimmed_with_its_event(tmp_path: Path) -> None:
    path = tmp_path / "h.sqlite3"
    history = History(path, "h1", KEY, max_events=3)
    await history.open()
    try:
        created = _created()
        update = _event(2, before=created, shared=False)
        left = leaving(created, apply(created, update))
        for n in range(1, 11):
            entries = history.stamp([(Dot("r1", n), "t1", update.channels, encode(update))], [left])
            await history.append(entries)
    finally:
        await history.close()
    with sqlite3.connect(path) as db:
        kept = [i for (i,) in db.execute("SELECT idx FROM events ORDER BY idx")]
        left_rows = [i for (i,) in db.execute("SELECT idx FROM leaving ORDER BY idx")]
    assert len(kept) == 3 and left_rows == kept


def test_a_memory_that_becomes_contested_leaves_every_channel() -> None:
    r = Replica("r1")
    mine = r.write("x", "fact", "create", user="u1", content="mine")
    theirs = Replica("r2").write("x", "fact", "create", user="u2", content="theirs")
    assert mine is not None and theirs is not None
    before = apply(None, mine)
    after = apply(before, theirs)
    assert after.contested
    left = leaving(before, after)
    assert left is not None and left.prior == routed(before) and left.now == ()
    assert leaving(after, apply(after, theirs)) is None  # contested already: nothing new


def test_an_event_goes_where_both_it_and_its_memory_after_it_are_routed() -> None:
    r = Replica("r1")
    made = r.write("x", "fact", "create", user="u1", content="c")
    assert made is not None
    state = apply(None, made)
    assert delivered_to(made, state) == made.channels == routed(state)  # the winner's own
    wider = msgspec.structs.replace(made, channels=(*made.channels, "tenant:t1:shared"))
    assert delivered_to(wider, state) == made.channels  # the memory is not shared
    theirs = Replica("r2").write("x", "fact", "create", user="u2", content="other")
    assert theirs is not None
    assert delivered_to(theirs, apply(state, theirs)) == ()  # contested: nowhere
