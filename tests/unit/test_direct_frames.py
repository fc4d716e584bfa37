"""Frames the fan-out writes straight to the socket are what a WebSocket client reads."""

from __future__ import annotations

from aiohttp import WSCloseCode, WSMsgType, web
from aiohttp.test_utils import TestClient, TestServer

from gateway.subscribe import _DirectFrames

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
