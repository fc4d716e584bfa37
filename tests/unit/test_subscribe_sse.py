"""An SSE stream whose response ended under its pump ends quietly (shutdown's old race)."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest

from gateway.auth import Claims
from gateway.fanout import Fanout, Subscription
from gateway.subscribe import _EventStream


class _EndedResponse:
    """What aiohttp's response does once its end was written: refuse every write."""

    async def write(self, data: bytes) -> None:
        raise RuntimeError("Cannot call write() after write_eof()")


class _Streams:
    def __init__(self) -> None:
        self.fanout = Fanout(10)

    def head_token(self) -> str:
        return "head"


async def test_a_write_after_the_response_ended_ends_the_stream_without_an_error() -> None:
    claims = Claims(sub="a", tenant="t1", users=("*",), scope=frozenset({"subscribe"}), exp=0)
    sub = Subscription(claims=claims, channels=("user:u1:memories",))
    streams = _Streams()
    stream = _EventStream(cast(Any, _EndedResponse()), sub, None, 15.0)
    with pytest.raises(ConnectionResetError, match="the event stream has ended"):
        await stream.send(b"{}", None)
    # The handler's pump meets it on its first write ("subscribed") and the stream ends.
    await asyncio.wait_for(stream.run(cast(Any, streams), None, ""), 1.0)
    assert len(streams.fanout) == 0
