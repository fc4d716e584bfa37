"""HTTP handlers of the memory API (API.md), and the one error handler.

Handlers parse and authorise, call :class:`~gateway.service.MemoryService`,
and render. Every failure becomes ``{"error": {"code", "message"}}`` with the
status its error class carries (:func:`error_middleware`).
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import msgspec
import structlog
from aiohttp import web

from gateway import auth
from gateway.errors import (
    BadRequestError,
    MemsyncError,
    UnauthorizedError,
    UnsupportedMediaTypeError,
)
from gateway.errors import ValidationError as MemsyncValidationError
from gateway.keys import METRICS, MODE, SERVICE, TOKENS
from gateway.requests import decode_create, decode_patch, decode_search
from gateway.service import WriteResult
from replication.limits import ID_PATTERN, MAX_METADATA_DEPTH

__all__ = [
    "STREAM_ROUTES",
    "decode_json",
    "error_middleware",
    "error_response",
    "observe",
    "routes",
]

_log = structlog.get_logger(__name__)
_ID = re.compile(ID_PATTERN)
_KINDS = ("fact", "preference", "conversation", "list", "counter")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_R = TypeVar("_R")
_encoder = msgspec.json.Encoder()


def json_response(
    body: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    """A JSON response encoded with msgspec."""
    return web.Response(
        body=_encoder.encode(body), status=status, headers=headers, content_type="application/json"
    )


def error_body(code: str, message: str) -> dict[str, dict[str, str]]:
    """The one error shape."""
    return {"error": {"code": code, "message": message}}


_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    415: "unsupported_media_type",
}


# Methods named in request metrics; any other is counted as "other". aiohttp's
# C parser takes ~35 methods (WebDAV's and more), its pure-Python fallback any
# token: the client would otherwise choose the label values.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

STREAM_ROUTES = frozenset({"subscribe", "events"})  # route names of long-lived streams


@web.middleware
def error_middleware(request: web.Request, handler: Handler) -> Awaitable[web.StreamResponse]:
    """Turn every failure into the JSON error shape; time every request.

    A stream's handler (a route named in :data:`STREAM_ROUTES`) is returned
    as it is, not awaited here: a WebSocket lives for hours, and a frame
    suspended here for each costs ~0.3 KiB. Streams render their own
    handshake errors with :func:`error_response` and time the handshake
    with :func:`observe`.
    """
    if request.match_info.route.name in STREAM_ROUTES:
        return handler(request)
    return _guarded(request, handler)


async def _guarded(request: web.Request, handler: Handler) -> web.StreamResponse:
    started = time.perf_counter()
    try:
        response = await handler(request)
    except Exception as exc:  # noqa: BLE001 - the outermost handler: every failure answered
        response = error_response(request, exc)
    observe(request, response, started)
    return response


def error_response(request: web.Request, exc: Exception) -> web.Response:
    """The JSON error answer for a failure (an unexpected one is logged as a 500).

    A redirect (an ``HTTPException`` below 400) is raised again.
    """
    if isinstance(exc, MemsyncError):
        headers = {}
        retry_after = getattr(exc, "retry_after", None)
        if retry_after is not None:
            headers["Retry-After"] = str(max(1, round(retry_after + 0.49)))
        return json_response(error_body(exc.code, exc.message), exc.status, headers)
    if isinstance(exc, msgspec.ValidationError):
        return json_response(error_body("invalid", f"invalid body: {exc}"), 422)
    if isinstance(exc, msgspec.DecodeError):
        return json_response(error_body("malformed", f"body is not valid JSON: {exc}"), 400)
    if isinstance(exc, web.HTTPException):
        if exc.status < 400:
            raise exc
        return _http_error(request, exc)
    _log.error("http.unhandled", method=request.method, path=request.path, exc_info=exc)
    return json_response(error_body("internal", "internal error; see the gateway log"), 500)


def _http_error(request: web.Request, exc: web.HTTPException) -> web.Response:
    """aiohttp's own refusal (no route, wrong method, body too large) in the error shape."""
    allow = exc.headers.get("Allow")  # a 405 names the methods the resource takes
    if exc.status == 413:
        message = "request body is larger than the limit of this gateway"
    elif exc.status == 405 and allow is not None:
        methods = allow.replace(",", ", ")
        message = f"{request.method} is not allowed on this path: use {methods}"
    else:
        message = exc.reason
    code = _HTTP_CODES.get(exc.status, "http_error")
    headers = None if allow is None else {"Allow": allow}
    return json_response(error_body(code, message), exc.status, headers)


def observe(request: web.Request, response: web.StreamResponse, started: float) -> None:
    """Mark a degraded answer and time it in ``memsync_http_request_seconds``."""
    mode = request.app[MODE].current()
    if mode != "normal" and not response.prepared:
        response.headers["X-Memsync-Degraded"] = mode
    route = request.match_info.route.resource
    name = route.canonical if route is not None else "unmatched"
    method = request.method if request.method in _METHODS else "other"
    request.app[METRICS].requests_by(method, name, str(response.status)).observe(
        time.perf_counter() - started
    )


def _claims(request: web.Request) -> auth.Claims:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise UnauthorizedError("missing bearer token: send 'Authorization: Bearer <token>'")
    return request.app[TOKENS].verify(token.strip())


def _memory_id(request: web.Request) -> str:
    memory_id = request.match_info["id"]
    if not _ID.match(memory_id):
        raise BadRequestError(
            f"memory id {memory_id[:40]!r} is not valid: letters, digits, '_', '.', '@', '-'; "
            "at most 128 characters"
        )
    return memory_id


def decode_json(decode: Callable[[bytes], _R], body: bytes) -> _R:
    """``decode(body)``, with the two failures msgspec raises outside its own errors mapped.

    A string that is not UTF-8 raises ``UnicodeDecodeError`` and nesting
    deeper than the interpreter's recursion limit ``RecursionError``; both are
    re-raised as msgspec's ``DecodeError`` / ``ValidationError`` so every
    caller's handling of bad JSON answers them too (never a 500).
    """
    try:
        return decode(body)
    except UnicodeDecodeError as exc:
        byte = exc.object[exc.start : exc.start + 1].hex()
        raise msgspec.DecodeError(
            f"a string holds byte 0x{byte}, which is not UTF-8 ({exc.reason}): "
            "send the body encoded as UTF-8"
        ) from exc
    except RecursionError as exc:
        raise msgspec.ValidationError(
            "arrays and objects are nested too deeply to decode: "
            f"metadata may nest at most {MAX_METADATA_DEPTH} levels"
        ) from exc


async def _body(request: web.Request) -> bytes:
    if request.content_type != "application/json":
        raise UnsupportedMediaTypeError(
            f"send the body as application/json (got {request.content_type or 'nothing'})"
        )
    return await request.read()


def _int_param(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequestError(f"query parameter {name!r} must be an integer") from None
    if not lo <= value <= hi:
        raise BadRequestError(f"query parameter {name!r} must be between {lo} and {hi}")
    return value


def _write_response(result: WriteResult, created: bool) -> web.Response:
    status = 202 if result.degraded else (201 if created else 200)
    body = msgspec.structs.asdict(result.view)
    if result.degraded:
        body["degraded"] = True
    return json_response(
        body,
        status,
        {"ETag": f'"{result.view.version}"', "X-Memsync-Session": result.session},
    )


def _outcome(request: web.Request, result: WriteResult) -> None:
    request.app[METRICS].writes_by("degraded" if result.degraded else "logged").inc()


async def create_memory(request: web.Request) -> web.Response:
    """``POST /v1/memories``."""
    claims = _claims(request)
    req = decode_json(decode_create, await _body(request))
    service = request.app[SERVICE]
    session = service.parse_session(request.headers.get("X-Memsync-Session"))
    result = await service.create(claims, req, session)
    _outcome(request, result)
    return _write_response(result, created=True)


async def get_memory(request: web.Request) -> web.Response:
    """``GET /v1/memories/{id}``."""
    claims = _claims(request)
    memory_id = _memory_id(request)
    service = request.app[SERVICE]
    session = service.parse_session(request.headers.get("X-Memsync-Session"))
    wait_ms = _int_param(request, "wait_ms", service.limits.ryw_wait_ms, 0, 60_000)
    state = await service.get(claims, memory_id, session, wait_ms)
    view = service.view(state)
    return json_response(view, 200, {"ETag": f'"{view.version}"'})


async def patch_memory(request: web.Request) -> web.Response:
    """``PATCH /v1/memories/{id}``."""
    claims = _claims(request)
    memory_id = _memory_id(request)
    req = decode_json(decode_patch, await _body(request))
    service = request.app[SERVICE]
    if_match = service.parse_version(request.headers.get("If-Match"))
    session = service.parse_session(request.headers.get("X-Memsync-Session"))
    result = await service.update(claims, memory_id, req, if_match, session)
    _outcome(request, result)
    return _write_response(result, created=False)


async def delete_memory(request: web.Request) -> web.Response:
    """``DELETE /v1/memories/{id}``."""
    claims = _claims(request)
    memory_id = _memory_id(request)
    service = request.app[SERVICE]
    if_match = service.parse_version(request.headers.get("If-Match"))
    session = service.parse_session(request.headers.get("X-Memsync-Session"))
    result = await service.delete(claims, memory_id, if_match, session)
    _outcome(request, result)
    return _write_response(result, created=False)


async def list_memories(request: web.Request) -> web.Response:
    """``GET /v1/memories``."""
    claims = _claims(request)
    service = request.app[SERVICE]
    user_id = request.query.get("user_id") or None
    topic = request.query.get("topic") or None
    kind = request.query.get("kind") or None
    for name, value in (("user_id", user_id), ("topic", topic)):
        if value is not None and not _ID.match(value):
            raise BadRequestError(f"query parameter {name!r} is not a valid id")
    if kind is not None and kind not in _KINDS:
        raise BadRequestError(f"query parameter 'kind' must be one of {', '.join(_KINDS)}")
    limit = _int_param(request, "limit", 50, 1, service.limits.max_list_limit)
    page_token = request.query.get("page_token") or None
    if page_token is not None and len(page_token) > 512:
        raise BadRequestError("query parameter 'page_token' is not one this gateway issued")
    try:
        states, next_token = await service.list_page(
            claims, user_id=user_id, topic=topic, kind=kind, limit=limit, page_token=page_token
        )
    except ValueError as exc:
        raise BadRequestError(f"query parameter 'page_token' is not valid: {exc}") from exc
    return json_response(
        {"memories": [service.view(s) for s in states], "next_page_token": next_token}
    )


async def search_memories(request: web.Request) -> web.Response:
    """``POST /v1/search``."""
    claims = _claims(request)
    req = decode_json(decode_search, await _body(request))
    service = request.app[SERVICE]
    try:
        hits = await service.search(claims, req)
    except ValueError as exc:
        raise MemsyncValidationError(str(exc)) from exc
    return json_response(
        {"results": [{"memory": service.view(s), "score": score} for s, score in hits]}
    )


def routes() -> list[web.RouteDef]:
    """The memory API's routes."""
    return [
        web.post("/v1/memories", create_memory),
        web.get("/v1/memories", list_memories),
        web.get("/v1/memories/{id}", get_memory),
        web.patch("/v1/memories/{id}", patch_memory),
        web.delete("/v1/memories/{id}", delete_memory),
        web.post("/v1/search", search_memories),
    ]
