"""Fan-out: once per subscriber, authorised per channel, bounded when slow."""

from __future__ import annotations

import asyncio
import json
from typing import cast

import msgspec

from gateway.auth import Claims
from gateway.fanout import Delivery, Fanout, Subscription
from gateway.history import Cursor
from gateway.streams import Pump, Streams
from replication.dvv import EMPTY as dvv_empty_context
from replication.dvv import Dot
from replication.dvv import add as dvv_add
from replication.merge import apply
from replication.state import MemoryState, materialize
from replication.testing import Replica


def _claims(users: tuple[str, ...] = ("*",), tenant: str = "t1") -> Claims:
    return Claims(sub="a", tenant=tenant, users=users, scope=frozenset({"subscribe"}), exp=0)


def _delivery(n: int, *, user: str = "u1", topics: tuple[str, ...] = (), shared: bool = False,
              key: str | None = None) -> Delivery:  # fmt: skip
    r = Replica("r1")
    event = r.write(key or f"m{n}", "fact", "create", user=user, content=f"c{n}")
    assert event is not None
    channels = (f"user:{user}:memories", *(["tenant:t1:shared"] if shared else []),
                *(f"topic:{t}:updates" for t in topics))  # fmt: skip
    return Delivery(
        key=event.key, tenant="t1", user=user, shared=shared, channels=channels,
        dot=Dot("r1", n), raw=b'{"n":%d}' % n, state=r.states[event.key], cursor_token=f"c{n}",
    )  # fmt: skip


def test_an_event_on_several_subscribed_channels_is_offered_once() -> None:
    fan = Fanout(10)
    sub = Subscription(claims=_claims(), channels={"user:u1:memories", "topic:tea:updates",
                                                   "tenant:t1:shared"})  # fmt: skip
    fan.add(sub)
    fan.publish([_delivery(1, topics=("tea",), shared=True)])
    assert len(sub.take(flush_lazy=True)) == 1


def test_topic_channel_hides_other_users_private_memories() -> None:
    fan = Fanout(10)
    sub = Subscription(claims=_claims(users=("alice",)), channels={"topic:tea:updates"})
    fan.add(sub)
    fan.publish([_delivery(1, user="bob", topics=("tea",))])
    assert sub.take(flush_lazy=True) == []
    fan.publish([_delivery(2, user="bob", topics=("tea",), shared=True)])
    assert len(sub.take(flush_lazy=True)) == 1


def test_other_tenants_never_see_an_event() -> None:
    fan = Fanout(10)
    other = Subscription(claims=_claims(tenant="t2"), channels={"user:u1:memories"})
    fan.add(other)
    fan.publish([_delivery(1)])
    assert other.take(flush_lazy=True) == []


def test_slow_eager_subscriber_coalesces_then_is_dropped() -> None:
    closed: list[str] = []
    sub = Subscription(claims=_claims(), channels={"user:u1:memories"}, soft_limit=3,
                       hard_limit=5, on_close=lambda: closed.append("x"))  # fmt: skip
    for n in range(1, 5):
        sub.offer(_delivery(n))
    assert sub.pending == 4  # queued past the soft limit: now coalescing
    sub.offer(_delivery(5, key="m1"))  # same memory as #1: coalesces into one entry
    sub.offer(_delivery(6, key="m1"))
    assert sub.closed is None
    for n in range(7, 14):
        sub.offer(_delivery(n))
    assert sub.closed == "slow_consumer"
    assert closed == ["x"]
    assert sub.pending <= 4 + 6  # bounded: queue + coalesced never past the limits


def test_the_fan_outs_counts_follow_what_it_did() -> None:
    fan, socket = Fanout(10), _Socket()
    direct = Subscription(claims=_claims(), channels={"user:u1:memories"}, writer=socket)
    slow = Subscription(claims=_claims(), channels={"user:u1:memories"}, soft_limit=1,
                        hard_limit=2)  # fmt: skip
    fan.add(direct)
    fan.add(slow)
    fan.publish([_delivery(1)])
    fan.publish([_delivery(2), _delivery(3)])
    st = fan.stats
    assert (st.batches, st.events, st.deliveries) == (2, 3, 6)
    assert st.direct_writes == 2  # one per batch to the caught-up socket, none to the other
    assert st.coalescing == 1 and st.closed == {}  # the slow one fell behind after 2
    direct.send_direct(b"control")  # straight to the socket, but not a published batch
    assert (st.direct_writes, st.other_writes) == (2, 1)
    fan.publish([_delivery(4), _delivery(5)])
    assert slow.closed == "slow_consumer" and st.closed == {"slow_consumer": 1}
    assert st.coalescing == 1  # counted when it began, not per event


def test_lazy_batch_carries_the_latest_event_and_state_per_memory() -> None:
    sub = Subscription(claims=_claims(), channels={"user:u1:memories"}, mode="lazy")
    sub.offer(_delivery(1, key="m"))
    sub.offer(_delivery(2, key="m"))
    sub.offer(_delivery(3, key="n"))
    assert sub.take(flush_lazy=False) == []
    ((message, cursor),) = sub.take(flush_lazy=True)
    batch = json.loads(message)
    assert batch["op"] == "batch"
    assert batch["events"] == [{"n": 2}, {"n": 3}]
    assert len(batch["states"]) == 2
    assert cursor == "c3"


def test_held_deliveries_skip_what_the_replay_sent() -> None:
    from replication import dvv

    sub = Subscription(claims=_claims(), channels={"user:u1:memories"})
    sub.hold()
    sub.offer(_delivery(1))
    sub.offer(_delivery(2))
    sub.release(dvv.context_of([Dot("r1", 1)]))
    assert [c for _, c in sub.take(flush_lazy=True)] == ["c2"]


class _Socket:
    """A connection the fan-out may write to directly (records whole writes)."""

    def __init__(self, *, room: bool = True) -> None:
        self.room = room
        self.writes: list[list[bytes]] = []

    def ready(self) -> bool:
        return self.room

    def encode(self, messages: list[bytes]) -> bytes:
        return b"\0".join(messages)

    def write_encoded(self, data: bytes) -> None:
        self.writes.append(data.split(b"\0"))


async def _pump_waiting(sub: Subscription) -> asyncio.Task[None]:
    """The pump's wait, started: done once something wakes it."""
    task = asyncio.create_task(sub.wait(None, lazy_due=False))
    await asyncio.sleep(0)
    return task


async def test_a_caught_up_subscriber_gets_a_batch_in_one_direct_write() -> None:
    fan, socket = Fanout(10), _Socket()
    sub = Subscription(claims=_claims(), channels={"user:u1:memories"}, writer=socket)
    fan.add(sub)
    pump = await _pump_waiting(sub)
    fan.publish([_delivery(1)])
    fan.publish([_delivery(2), _delivery(3)])
    assert [len(w) for w in socket.writes] == [1, 1]  # the second batch as one frame
    assert json.loads(socket.writes[0][0])["cursor"] == "c1"
    assert [e["n"] for e in json.loads(socket.writes[1][0])["events"]] == [2, 3]
    assert sub.sent_cursor == "c3" and sub.pending == 0
    await asyncio.sleep(0)
    assert not pump.done()  # the pump was not woken
    pump.cancel()


async def test_direct_writes_wait_for_a_full_socket_and_a_busy_pump_in_order() -> None:
    fan, socket = Fanout(10), _Socket(room=False)
    sub = Subscription(claims=_claims(), channels={"user:u1:memories"}, writer=socket)
    fan.add(sub)
    pump = await _pump_waiting(sub)
    fan.publish([_delivery(1)])
    await asyncio.sleep(0)
    assert socket.writes == [] and sub.pending == 1 and pump.done()  # left to the pump
    socket.room = True
    sub.busy = True  # the pump took messages and is sending them
    fan.publish([_delivery(2)])
    assert socket.writes == [] and sub.pending == 2
    sub.busy = False
    fan.publish([_delivery(3)])  # everything queued goes, in order
    (write,) = socket.writes
    assert [e["n"] for e in json.loads(write[0])["events"]] == [1, 2, 3]


def test_lazy_and_replaying_subscribers_are_left_to_their_pump() -> None:
    fan, socket = Fanout(10), _Socket()
    lazy = Subscription(claims=_claims(), channels={"user:u1:memories"}, mode="lazy",
                        writer=socket)  # fmt: skip
    replaying = Subscription(claims=_claims(), channels={"user:u1:memories"}, writer=socket)
    replaying.hold()
    fan.add(lazy)
    fan.add(replaying)
    fan.publish([_delivery(1)])
    assert socket.writes == []
    assert lazy.pending == 1 and replaying.pending == 1


def test_a_repaired_state_goes_only_to_who_may_see_it_in_order() -> None:
    fan = Fanout(10)
    alice = Subscription(claims=_claims(users=("u1",)), channels={"user:u1:memories"})
    bob = Subscription(claims=_claims(users=("u2",)), channels={"topic:tea:updates"})
    other = Subscription(claims=_claims(tenant="t2"), channels={"user:u1:memories"})
    for sub in (alice, bob, other):
        fan.add(sub)
    fan.publish([_delivery(1)])
    state = _delivery(2).state
    fan.publish_states([(state, ("user:u1:memories", "topic:tea:updates"), False, b'{"s":2}'),
                        (state, ("user:u1:memories",), False, b'{"s":3}')])  # fmt: skip
    sent = alice.take(flush_lazy=True)
    assert [json.loads(m)["cursor"] for m, _ in sent[:1]] == ["c1"]  # the event first ...
    assert len(sent) == 2 and sent[1][1] is None  # ... then one repair batch, moving no cursor
    assert json.loads(sent[1][0]) == {"op": "batch", "events": [], "states": [{"s": 2}, {"s": 3}],
                                      "cursor": None}  # fmt: skip
    assert alice.cursor == "c1"
    assert bob.take(flush_lazy=True) == []  # a topic shows u1's private memory to u1 only
    assert other.take(flush_lazy=True) == []  # never another tenant


def test_repairs_are_bounded_like_everything_else() -> None:
    closed: list[str] = []
    fan = Fanout(10)
    sub = Subscription(claims=_claims(), channels={"user:u1:memories"}, hard_limit=3,
                       on_close=lambda: closed.append("x"))  # fmt: skip
    fan.add(sub)
    state = _delivery(1).state
    for n in range(4):  # the pump is stuck: nothing is taken
        fan.publish_states([(state, ("user:u1:memories",), False, b"%d" % n)])
    assert sub.closed == "slow_consumer" and closed == ["x"]


def test_a_repaired_deletion_goes_where_the_memory_was() -> None:
    from gateway.streams import repair_route
    from replication.dvv import EMPTY
    from replication.events import make_event
    from replication.merge import apply
    from replication.schema import MemoryBody, Ops, Source

    clock = Replica("r1").clock

    def event(n: int, kind: str, context: object, **body: object) -> object:
        return make_event(
            event_id=f"e{n}", event_type=kind, context=context, dot=Dot("r1", n), seq=n,
            memory=MemoryBody(id="m", tenant_id="t1", user_id="u1", kind="fact", policy="lww",
                              **body),
            source=Source(agent_id="a"), timestamp=clock.now(),
            ops=Ops(fields=kind != "delete"),
        )  # fmt: skip

    live = apply(None, event(1, "create", EMPTY, content="tea", topics=("tea",), shared=True))
    deleted = apply(live, event(2, "delete", live.clock))
    assert deleted.deleted
    shared_route = (("user:u1:memories", "tenant:t1:shared", "topic:tea:updates"), True)
    # A live memory goes where its current version says ...
    assert repair_route(None, live) == shared_route
    # ... a deletion where the memory was: the channels its delete event went to.
    assert repair_route(live, deleted) == shared_route
    assert repair_route(None, deleted) == (("user:u1:memories",), False)  # nothing known


def test_switching_from_lazy_to_eager_sends_what_was_coalesced_first() -> None:
    fan, socket = Fanout(10), _Socket()
    sub = Subscription(claims=_claims(), channels={"user:u1:memories"}, mode="lazy",
                       writer=socket)  # fmt: skip
    fan.add(sub)
    fan.publish([_delivery(1)])
    assert socket.writes == [] and sub.pending == 1
    sub.set_mode("eager", 100)  # the coalesced batch is written at once
    fan.publish([_delivery(2)])
    sent = [m for write in socket.writes for m in write]
    assert [json.loads(m)["cursor"] for m in sent] == ["c1", "c2"]  # cursors only advance


def _pump_for(sub: Subscription, sent: list[bytes]) -> Pump:
    async def send(message: bytes, cursor: str | None) -> None:
        sent.append(message)

    return Pump(cast(Streams, None), sub, send, heartbeat_s=3600)


async def test_an_idle_subscriber_runs_no_pump_until_work_needs_one() -> None:
    socket, asked = _Socket(), []
    sub = Subscription(claims=_claims(), channels={"user:u1:memories"}, writer=socket,
                       on_wake=lambda: asked.append("pump"))  # fmt: skip
    sub.send_direct(b'{"op":"subscribed"}')  # the socket has room: written, no pump
    sub.offer(_delivery(1))
    sub.flush()
    assert len(socket.writes) == 2 and asked == []
    socket.room = False
    sub.offer(_delivery(2))
    sub.flush()  # a full socket: now a pump is asked for
    assert asked == ["pump"]


async def test_a_pump_run_until_idle_sends_what_waits_then_returns() -> None:
    sub = Subscription(claims=_claims(), channels={"user:u1:memories"})
    sent: list[bytes] = []
    pump = _pump_for(sub, sent)
    sub.offer(_delivery(1))
    sub.offer(_delivery(2))
    assert await asyncio.wait_for(pump.run(until_idle=True), 1) is None
    assert len(sent) == 1 and not sub.pumping and sub.idle()  # one batch frame, then idle
    lazy = Subscription(claims=_claims(), channels={"user:u1:memories"}, mode="lazy",
                        interval_ms=20)  # fmt: skip
    lazy_sent: list[bytes] = []
    lazy.offer(_delivery(3))
    # Lazy: waits for the flush interval, sends the coalesced batch, then returns.
    assert await asyncio.wait_for(_pump_for(lazy, lazy_sent).run(until_idle=True), 1) is None
    assert len(lazy_sent) == 1 and json.loads(lazy_sent[0])["op"] == "batch"


async def test_a_running_pump_is_woken_not_asked_for_again() -> None:
    asked: list[str] = []
    sub = Subscription(claims=_claims(), channels={"user:u1:memories"},
                       on_wake=lambda: asked.append("pump"))  # fmt: skip
    sent: list[bytes] = []
    sub.hold()  # a replay in progress keeps the pump running
    sub.send_direct(b"x")  # no writer: a pump is asked for
    assert asked == ["pump"]
    task = asyncio.create_task(_pump_for(sub, sent).run(until_idle=True))
    await asyncio.sleep(0.01)
    assert sub.pumping and sent == [b"x"]
    sub.send_direct(b"y")
    await asyncio.sleep(0.01)
    assert asked == ["pump"] and sent == [b"x", b"y"]  # woken, not asked for again
    sub.release(dvv_empty_context)  # nothing held any more: the pump returns
    assert await asyncio.wait_for(task, 1) is None
    assert not sub.pumping


def test_the_heartbeat_sweep_reaches_quiet_subscribers_no_pump_serves() -> None:
    fan, socket = Fanout(10), _Socket()
    quiet = Subscription(claims=_claims(), channels={"user:u1:memories"}, writer=socket)
    recent = Subscription(claims=_claims(), channels={"user:u1:memories"}, writer=socket)
    pumped = Subscription(claims=_claims(), channels={"user:u1:memories"}, writer=socket)
    for sub in (quiet, recent, pumped):
        fan.add(sub)
    quiet.last_sent -= 20
    pumped.last_sent -= 20
    pumped.pumping = True  # its pump sends its own heartbeats
    assert fan.heartbeat(b'{"op":"heartbeat"}', 15.0) == 1
    assert socket.writes == [[b'{"op":"heartbeat"}']]
    assert fan.heartbeat(b'{"op":"heartbeat"}', 15.0) == 0  # just sent: not due again


def test_a_resume_names_its_cursor_until_something_is_sent() -> None:
    # A slow_consumer drop during the replay reports where to resume: the
    # client's own cursor, never "" (the SDK resubscribed with since="").
    sub = Subscription(claims=_claims(), channels={"user:u1:memories"},
                       on_wake=lambda: None)  # fmt: skip
    _pump_for(sub, []).request_replay(Cursor(dvv_empty_context, "h", 7), set(), "tok-7")
    assert sub.sent_cursor == "tok-7"
    sub.sent_cursor = "later"
    _pump_for(sub, []).request_replay(Cursor(dvv_empty_context, "h", 9), set(), "tok-9")
    assert sub.sent_cursor == "later"  # what was actually sent wins


def test_a_repair_and_a_mode_switch_go_straight_to_a_socket_with_room() -> None:
    socket, asked = _Socket(), []
    sub = Subscription(claims=_claims(), channels={"user:u1:memories"}, mode="lazy",
                       writer=socket, on_wake=lambda: asked.append("pump"))  # fmt: skip
    sub.offer(_delivery(1))
    asked.clear()  # lazy mode asks for its timer
    sub.set_mode("eager", 100)  # the coalesced batch goes first, directly
    sub.send_repair(b'{"op":"batch","events":[],"states":[],"cursor":null}')
    assert asked == [] and len(socket.writes) == 2
    assert json.loads(socket.writes[0][0])["events"][0] == {"n": 1}


def test_one_audience_is_encoded_once_and_written_as_the_queued_path_would() -> None:
    fan = Fanout(10)
    sockets = [_Socket() for _ in range(3)]
    subs = [Subscription(claims=_claims(), channels={"user:u1:memories"}, writer=s)
            for s in sockets]  # fmt: skip
    for sub in subs:
        fan.add(sub)
    encoded: list[list[bytes]] = []
    original = sockets[0].encode
    sockets[0].encode = lambda m: (encoded.append(m), original(m))[1]  # type: ignore[method-assign]
    sockets[1].encode = sockets[0].encode  # type: ignore[method-assign]
    sockets[2].encode = sockets[0].encode  # type: ignore[method-assign]
    subs[2].busy = True  # its pump holds messages: this batch is queued for it
    fan.publish([_delivery(n) for n in range(1, 5)])
    assert len(encoded) == 1  # once for every caught-up subscriber
    assert sockets[0].writes == sockets[1].writes and sockets[2].writes == []
    subs[2].busy = False
    subs[2].flush()  # the queued path: the same frames
    assert sockets[2].writes == sockets[0].writes
    assert [e["n"] for e in json.loads(sockets[0].writes[0][0])["events"]] == [1, 2, 3, 4]
    assert all(s.sent_cursor == s.cursor == "c4" for s in subs)
    assert fan.stats.deliveries == 12


def test_a_subscriber_of_several_audiences_gets_the_batch_in_order_once() -> None:
    fan, socket = Fanout(10), _Socket()
    channels = {"user:u1:memories", "tenant:t1:shared", "topic:x:updates"}
    sub = Subscription(claims=_claims(), writer=socket, channels=channels)
    fan.add(sub)
    batch = [_delivery(1), _delivery(2, shared=True), _delivery(3, topics=("x",)),
             _delivery(4, user="u2", topics=("x",), shared=True), _delivery(5)]  # fmt: skip
    fan.publish(batch)
    (write,) = socket.writes
    assert [e["n"] for e in json.loads(write[0])["events"]] == [1, 2, 3, 4, 5]


def test_a_resumed_subscriber_is_not_sent_what_its_cursor_holds() -> None:
    fan, socket = Fanout(10), _Socket()
    sub = Subscription(claims=_claims(), channels={"user:u1:memories"}, writer=socket)
    sub.skip = dvv_add(dvv_empty_context, Dot("r1", 2))
    fan.add(sub)
    fan.publish([_delivery(1), _delivery(2), _delivery(3)])
    (write,) = socket.writes
    assert [e["n"] for e in json.loads(write[0])["events"]] == [1, 3]
    fan.publish([_delivery(4)])
    assert json.loads(socket.writes[1][0])["cursor"] == "c4"


def test_a_channel_index_grows_and_shrinks_between_one_and_several_listeners() -> None:
    fan = Fanout(10)
    a, b = (Subscription(claims=_claims(), channels={"user:u1:memories"}) for _ in range(2))
    fan.add(a)
    fan.add(a)  # adding again changes nothing
    fan.add(b)
    fan.publish([_delivery(1)])
    assert a.pending == b.pending == 1
    fan.remove(a)
    fan.publish([_delivery(2)])
    assert (a.pending, b.pending) == (1, 2) and len(fan) == 1
    fan.add(a)
    fan.remove(b, ["user:u1:memories"])  # its last channel: gone
    fan.remove(a)
    fan.publish([_delivery(3)])
    assert (a.pending, b.pending, len(fan)) == (1, 2, 0)


def test_control_replies_to_a_client_that_stops_reading_are_bounded() -> None:
    """A client that keeps sending operations but reads nothing is dropped, not queued for."""
    closed: list[str] = []
    sub = Subscription(claims=_claims(), channels={"user:u1:memories"}, hard_limit=8,
                       writer=_Socket(room=False), on_wake=lambda: None,
                       on_close=lambda: closed.append("x"))  # fmt: skip
    sub.pumping = True  # its pump waits on the full socket
    for _ in range(1000):
        sub.send_direct(b'{"op":"error","code":"bad_request"}')
    assert sub.closed == "slow_consumer" and closed == ["x"]
    assert sub.pending <= 9  # never past the hard limit (+ the one that tipped it)
    assert sub.stats is None or sub.stats.closed == {"slow_consumer": 1}


def test_a_closed_subscription_queues_nothing_more() -> None:
    woken: list[str] = []
    sub = Subscription(claims=_claims(), channels={"user:u1:memories"},
                       on_wake=lambda: woken.append("pump"))  # fmt: skip
    sub.closed = "going_away"
    for _ in range(100):
        sub.send_direct(b"")  # what shutdown and a closing connection send to wake the pump
    assert sub.pending == 0 and woken  # woken to finish, nothing held


def test_a_coalesced_batch_ends_at_the_latest_delivery_it_carries() -> None:
    """A, B, then A again: the batch's cursor is A's latest, not B's (older)."""
    sub = Subscription(claims=_claims(), channels={"user:u1:memories"}, mode="lazy")
    for n, key in ((1, "a"), (2, "b"), (3, "a")):
        sub.offer(_delivery(n, key=key))
    ((message, cursor),) = sub.take(flush_lazy=True)
    assert cursor == "c3" and json.loads(message)["cursor"] == "c3"


def _with_a_private_rival() -> tuple[Delivery, MemoryState]:
    """u1's fact, shared "public" winning over a concurrent private "SECRET"."""
    r = Replica("r1")
    made = r.write("m", "fact", "create", user="u1", content="v0")
    assert made is not None
    base = r.states[made.key].clock
    secret = r.write("m", "fact", "update", user="u1", context=base, content="SECRET")
    r.wall_ms += 5
    public = r.write("m", "fact", "update", user="u1", context=base, content="public")
    assert secret is not None and public is not None
    shared = lambda e: msgspec.structs.replace(  # noqa: E731
        e, memory=msgspec.structs.replace(e.memory, shared=True))  # fmt: skip
    state = apply(apply(apply(None, shared(made)), secret), shared(public))
    assert materialize(state).content == "public" and len(state.versions) == 2
    delivery = Delivery(
        key=made.key, tenant="t1", user="u1", shared=True,
        channels=("user:u1:memories", "tenant:t1:shared"), dot=Dot("r1", 3),
        raw=b'{"n":3}', state=state, cursor_token="c3",
    )  # fmt: skip
    return delivery, state


def test_others_get_a_coalesced_state_without_the_owners_private_versions() -> None:
    owner = Subscription(claims=_claims(users=("u1",)), channels={"user:u1:memories"},
                         mode="lazy")  # fmt: skip
    other = Subscription(claims=_claims(users=("u2",)), channels={"tenant:t1:shared"},
                         mode="lazy")  # fmt: skip
    fan = Fanout(10)
    for sub in (owner, other):
        fan.add(sub)
    delivery, state = _with_a_private_rival()
    fan.publish([delivery])
    ((mine, _),) = owner.take(flush_lazy=True)
    ((theirs, _),) = other.take(flush_lazy=True)
    assert b"SECRET" in mine and b"SECRET" not in theirs
    (shown,) = json.loads(theirs)["states"]
    view = materialize(msgspec.json.decode(json.dumps(shown), type=MemoryState))
    assert (view.content, view.conflicts) == ("public", ())
    (whole,) = json.loads(mine)["states"]
    assert msgspec.json.decode(json.dumps(whole), type=MemoryState) == state


def test_others_get_a_repaired_state_without_the_owners_private_versions() -> None:
    owner = Subscription(claims=_claims(users=("u1",)), channels={"user:u1:memories"})
    other = Subscription(claims=_claims(users=("u2",)), channels={"tenant:t1:shared"})
    fan = Fanout(10)
    for sub in (owner, other):
        fan.add(sub)
    _, state = _with_a_private_rival()
    whole = msgspec.json.encode(state)
    fan.publish_states([(state, ("user:u1:memories", "tenant:t1:shared"), True, whole)])
    ((mine, _),) = owner.take(flush_lazy=True)
    ((theirs, _),) = other.take(flush_lazy=True)
    assert json.loads(mine)["states"] == [json.loads(whole)]
    (shown,) = json.loads(theirs)["states"]
    assert [v[2] for v in shown["versions"]] == ["public"]  # FieldVersion: array-like


def test_a_partial_state_is_joined_into_the_coalesced_entry_or_not_sent_alone() -> None:
    """An event whose state is its own alone (no create before it here) never
    reaches a batch's ``states`` as if it were the memory's whole state."""
    r = Replica("r1")
    made = r.write("m", "list", "create", items=["a"])
    added = r.write("m", "list", "add", items=["b"])
    assert made is not None and added is not None
    whole = r.states[made.key]

    def delivery(n: int, state: MemoryState, partial: bool) -> Delivery:
        return Delivery(
            key=made.key, tenant="t1", user="u1", shared=False, channels=("user:u1:memories",),
            dot=Dot("r1", n), raw=b'{"n":%d}' % n, state=state, cursor_token=f"c{n}",
            partial=partial,
        )  # fmt: skip

    lone = Subscription(claims=_claims(), channels={"user:u1:memories"}, mode="lazy")
    lone.offer(delivery(2, apply(None, added), partial=True))
    ((message, _),) = lone.take(flush_lazy=True)
    assert json.loads(message)["events"] == [{"n": 2}] and json.loads(message)["states"] == []

    joined = Subscription(claims=_claims(), channels={"user:u1:memories"}, mode="lazy")
    first = delivery(1, apply(None, made), partial=False)
    joined.offer(first)
    joined.offer(delivery(2, apply(None, added), partial=True))
    ((message, cursor),) = joined.take(flush_lazy=True)
    (state,) = json.loads(message)["states"]
    assert msgspec.json.decode(json.dumps(state), type=MemoryState) == whole
    assert (json.loads(message)["events"], cursor) == ([{"n": 2}], "c2")
    assert first.state == apply(None, made)  # the shared delivery is left as it was


def test_two_partial_states_of_one_memory_coalesced_keep_both_events() -> None:
    """No state goes out for a partial entry, so its events all do (bounded)."""
    r = Replica("r1")
    made = r.write("m", "list", "create", items=["a"])
    first = r.write("m", "list", "add", items=["b"])
    second = r.write("m", "list", "add", items=["c"])
    assert made is not None and first is not None and second is not None
    sub = Subscription(claims=_claims(), channels={"user:u1:memories"}, mode="lazy")
    for n, e in ((2, first), (3, second)):
        sub.offer(Delivery(
            key=e.key, tenant="t1", user="u1", shared=False, channels=("user:u1:memories",),
            dot=Dot("r1", n), raw=b'{"n":%d}' % n, state=apply(None, e), cursor_token=f"c{n}",
            partial=True,
        ))  # fmt: skip
    ((message, cursor),) = sub.take(flush_lazy=True)
    batch = json.loads(message)
    assert (batch["events"], batch["states"], cursor) == ([{"n": 2}, {"n": 3}], [], "c3")
