"""A WebSocket client's ``subscribe`` operation is checked whole before it changes anything."""

from __future__ import annotations

import types
from typing import Any, cast

import msgspec
import pytest

from gateway.auth import Claims
from gateway.errors import BadRequestError
from gateway.fanout import MAX_SUBSCRIPTION_CHANNELS, Delivery, Fanout, Subscription
from gateway.history import Cursor
from gateway.keys import STREAMS
from gateway.subscribe import _handle_op
from replication.dvv import EMPTY, Dot
from replication.errors import InvalidTokenError
from replication.testing import Replica


class _History:
    def decode_cursor(self, token: str) -> Cursor:
        if token != "good":
            raise InvalidTokenError("this cursor is not one this gateway issued")
        return Cursor(EMPTY, "h", 1)


class _Streams:
    def __init__(self) -> None:
        self.fanout = Fanout(10)
        self.history = _History()

    def head_token(self) -> str:
        return "head"


class _Pump:
    def __init__(self, *, refuse: bool) -> None:
        self.refuse = refuse
        self.asked: list[set[str]] = []

    def request_replay(self, cursor: Cursor, channels: set[str], token: str) -> None:
        if self.refuse:
            raise BadRequestError("too many resumes in flight on this connection; wait for them")
        self.asked.append(channels)


def _setup(*, refuse: bool = False) -> tuple[Any, Subscription, Any, _Streams]:
    streams = _Streams()
    request = types.SimpleNamespace(app={STREAMS: streams})
    claims = Claims(sub="a", tenant="t1", users=("*",), scope=frozenset({"subscribe"}), exp=0)
    sub = Subscription(claims=claims, channels=())
    conn = types.SimpleNamespace(pump=_Pump(refuse=refuse))
    return request, sub, conn, streams


def _op(**fields: object) -> bytes:
    return msgspec.json.encode({"op": "subscribe", **fields})


def _delivery(user: str = "u1") -> Delivery:
    r = Replica("r1")
    event = r.write("m1", "fact", "create", tenant="t1", user=user, content="c")
    assert event is not None
    return Delivery(
        key=event.key, tenant="t1", user=user, shared=False, channels=(f"user:{user}:memories",),
        dot=Dot("r1", 1), raw=b"{}", state=r.states[event.key], cursor_token="c1",
    )  # fmt: skip


def test_subscribe_ops_accumulate_only_up_to_the_channel_cap() -> None:
    request, sub, conn, streams = _setup()
    first = [f"topic:t{i}:updates" for i in range(MAX_SUBSCRIPTION_CHANNELS - 1)]
    _handle_op(request, sub, cast(Any, conn), _op(channels=first))
    _handle_op(request, sub, cast(Any, conn), _op(channels=["user:u1:memories", first[0]]))
    assert len(sub.channels) == MAX_SUBSCRIPTION_CHANNELS  # a channel held already costs nothing
    with pytest.raises(BadRequestError, match=f"at most {MAX_SUBSCRIPTION_CHANNELS} channels"):
        _handle_op(request, sub, cast(Any, conn), _op(channels=["user:u2:memories"], mode="lazy"))
    assert len(sub.channels) == MAX_SUBSCRIPTION_CHANNELS and sub.mode == "eager"
    replies = sub.pending  # the two "subscribed" replies, queued (no socket here)
    streams.fanout.publish([_delivery("u2")])
    assert sub.pending == replies  # the refused channel was not indexed


@pytest.mark.parametrize("refusal", ["bad cursor", "too many resumes"])
def test_a_refused_subscribe_changes_nothing(refusal: str) -> None:
    request, sub, conn, streams = _setup(refuse=refusal == "too many resumes")
    since = "garbage" if refusal == "bad cursor" else "good"
    op = _op(channels=["user:u1:memories"], mode="lazy", interval_ms=500, since=since)
    with pytest.raises((InvalidTokenError, BadRequestError)):
        _handle_op(request, sub, cast(Any, conn), op)
    assert sub.channels == () and (sub.mode, sub.interval_ms) == ("eager", 100)
    assert len(streams.fanout) == 0
    streams.fanout.publish([_delivery()])
    assert sub.pending == 0  # no live event without its replay: no silent gap


def test_an_accepted_resume_asks_for_the_replay_of_its_new_channels() -> None:
    request, sub, conn, streams = _setup()
    _handle_op(request, sub, cast(Any, conn), _op(channels=["user:u1:memories"]))
    _handle_op(request, sub, cast(Any, conn),
               _op(channels=["user:u1:memories", "user:u2:memories"], since="good"))  # fmt: skip
    assert conn.pump.asked == [{"user:u2:memories"}]
    assert sub.channels == ("user:u1:memories", "user:u2:memories") and len(streams.fanout) == 1
