"""Bad input over HTTP gets a clear error (status, code, a message naming it), never a 500."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from tests.integration.harness import Gateway

_DEEP = b"[" * 2_000 + b"]" * 2_000  # ~4 KB, deeper than the interpreter's recursion limit


@pytest.mark.parametrize(
    ("method", "path", "raw", "status", "code", "words"),
    [
        pytest.param("POST", "/v1/memories",
                     b'{"user_id": "u", "kind": "fact", "content": "\xff"}',
                     400, "malformed", "byte 0xff, which is not UTF-8", id="create-content"),
        pytest.param("POST", "/v1/memories",
                     b'{"user_id": "u", "kind": "fact", "metadata": {"\xfe": 1}}',
                     400, "malformed", "byte 0xfe, which is not UTF-8", id="create-metadata-key"),
        pytest.param("POST", "/v1/search", b'{"query": "\xff"}',
                     400, "malformed", "not UTF-8", id="search-query"),
        pytest.param("PATCH", "/v1/memories/m1", b'{"content": "ok \xc3"}',
                     400, "malformed", "not UTF-8", id="patch-content"),
        pytest.param("POST", "/v1/memories",
                     b'{"user_id": "u", "kind": "fact", "metadata": {"a": ' + _DEEP + b"}}",
                     422, "invalid", "metadata may nest at most 8 levels", id="create-deep"),
        pytest.param("PATCH", "/v1/memories/m1", b'{"metadata": {"a": ' + _DEEP + b"}}",
                     422, "invalid", "nested too deeply", id="patch-deep"),
    ],
)  # fmt: skip
async def test_a_body_that_is_not_utf8_or_nests_too_deeply_is_refused_by_name(
    gw: Gateway, method: str, path: str, raw: bytes, status: int, code: str, words: str
) -> None:
    resp, body = await gw.request(method, path, data=raw)
    assert (resp.status, body["error"]["code"]) == (status, code), body
    assert words in body["error"]["message"], body


async def _raw_request(gw: Gateway, head: bytes) -> tuple[int, Any]:
    """Send ``head`` as it is (bytes no HTTP client would send); the status and JSON body."""
    assert gw.client is not None
    reader, writer = await asyncio.open_connection(gw.client.host, gw.client.port)
    try:
        writer.write(head)
        await writer.drain()
        async with asyncio.timeout(10):
            answer = await reader.read()  # the request says Connection: close
    finally:
        writer.close()
        await writer.wait_closed()
    status_line, _, rest = answer.partition(b"\r\n")
    return int(status_line.split()[1]), json.loads(rest.partition(b"\r\n\r\n")[2])


async def test_a_bearer_token_with_bytes_that_are_not_utf8_is_unauthorized(gw: Gateway) -> None:
    status, body = await _raw_request(
        gw,
        b"GET /v1/memories HTTP/1.1\r\nHost: test\r\n"
        b"Authorization: Bearer \xff\xfe\r\nConnection: close\r\n\r\n",
    )
    assert (status, body["error"]["code"]) == (401, "unauthorized"), body
    assert "not ASCII" in body["error"]["message"], body


async def test_a_method_not_allowed_answer_names_the_allowed_methods(gw: Gateway) -> None:
    resp, body = await gw.request("PUT", "/v1/memories")
    assert (resp.status, body["error"]["code"]) == (405, "method_not_allowed"), body
    assert set(resp.headers["Allow"].split(",")) >= {"GET", "POST"}
    assert body["error"]["message"].startswith("PUT is not allowed on this path: use "), body
    resp, body = await gw.request("POST", "/v1/memories/m1")
    assert resp.status == 405, body
    assert set(resp.headers["Allow"].split(",")) >= {"GET", "PATCH", "DELETE"}
