"""Frames the fan-out writes straight to the socket are what a WebSocket client reads."""

from __future__ import annotations

import asyncio
import gc
import weakref

import pytest
from aiohttp import WSCloseCode, WSMsgType, web
from aiohttp.test_utils import TestClient, TestServer

from gateway.subscribe import _DirectFrames, _WebSocket

# One payload per length class of RFC 6455 §5.2 (7-bit, 16-bit, 64-bit lengths).
PAYLOADS = [b"", b"x" * 125, b"y" * 126, b"z" * 65535, b"w" * 65536, b"{}" * 100_000]


async def _handler(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    assert request.transport is not None
    frames = _DirectFrames(ws, request.transport)
    assert frames.ready()
    frames.write_encoded(frames.encode(PAYLOADS[:3]))  # several frames in one write
    frames.write_encoded(frames.encode(PAYLOADS[3:]))
    frames.drop([b'{"op":"error"}'], WSCloseCode.TRY_AGAIN_LATER, b"slow consumer")
    assert not frames.ready()
    async for _ in ws:  # until the socket closes
        pass
    return ws


async def test_direct_frames_and_the_drop_reach_a_client_intact() -> None:
    app = web.Application()
    app.router.add_get("/ws", _handler)
    async with TestClient(TestServer(app)) as client:
        ws = await client.ws_connect("/ws", max_msg_size=0)
        got = []
        while True:
            msg = await ws.receive(timeout=5)
            if msg.type != WSMsgType.TEXT:
                break
            got.append(msg.data.encode())
        assert got == [*PAYLOADS, b'{"op":"error"}']
        assert msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.CLOSING)
        assert ws.close_code == WSCloseCode.TRY_AGAIN_LATER


@pytest.mark.parametrize("response_type", [_WebSocket, web.WebSocketResponse])
async def test_a_failed_close_reply_leaves_no_cycle(
    response_type: type[web.WebSocketResponse],
) -> None:
    """aiohttp keeps the error of a close reply it could not send; its traceback holds the response.

    This is what a subscriber that sends a close frame and goes at once can
    cause under load (the socket's end read before the frame is answered).
    The gateway's ``_WebSocket`` is freed by reference counting when its
    handler returns; aiohttp's own response (the control) survives it as
    cyclic garbage, for a full collection to find.
    """
    responses: list[weakref.ref[web.WebSocketResponse]] = []
    errors: list[str] = []

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = response_type()
        await ws.prepare(request)
        await ws.receive()  # the client's hello
        assert request.transport is not None
        request.transport.close()  # the socket ends before the close reply
        await ws.close()
        errors.append(repr(ws.exception()))
        responses.append(weakref.ref(ws))
        return ws

    app = web.Application()
    app.router.add_get("/ws", handler)
    gc.collect()
    gc.disable()
    try:
        async with TestClient(TestServer(app)) as client:
            ws = await client.ws_connect("/ws")
            await ws.send_str("hello")
            await ws.receive(timeout=5)  # the socket's end
            for _ in range(50):  # the handler returns
                if responses:
                    break
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.1)
            assert errors and "ClientConnectionResetError" in errors[0], errors
            (response,) = responses
            assert (response() is None) is (response_type is _WebSocket)
    finally:
        gc.enable()
