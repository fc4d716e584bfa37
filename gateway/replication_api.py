"""Replication endpoints: link status for operators, digests and repairs for peers.

- ``GET /v1/replication`` (any valid token): one entry per incoming link
  (API.md), from the heartbeats applied here.
- ``GET /v1/replication/context`` (``replicate`` scope): the ``(replica,
  seq)`` events this region has applied, those its event history has
  recorded (what ``missing`` can serve, trimmed ones included), and its
  bucketed state digest.
- ``POST /v1/replication/missing`` (``replicate``): the events this region
  holds that a peer lacks (``since``: what the peer applied; ``upto``: what
  the peer saw this region apply a pass ago).
- ``POST /v1/replication/states`` (``replicate``): whole states of the
  memories in some digest buckets, for repairs no event history can serve.

The ``replicate`` scope is for gateways (they mint their own tokens with the
cluster secret); it grants nothing on the memory API.
"""

from __future__ import annotations

import base64
from typing import Annotated, TypeVar

import msgspec
from aiohttp import web

from gateway.api import _body, _claims, decode_json, json_response
from gateway.errors import BadRequestError
from gateway.keys import RUNTIME
from gateway.store import decode_page_token
from replication import dvv
from replication.digest import bucket_of
from replication.dvv import DotContext
from replication.state import encode_state

__all__ = ["MissingRequest", "StatesRequest", "routes"]

S = TypeVar("S", bound=msgspec.Struct)
MAX_MISSING = 2_000
MAX_STATES = 1_000


class MissingRequest(msgspec.Struct, forbid_unknown_fields=True):
    """``POST /v1/replication/missing``."""

    since: DotContext
    upto: DotContext
    limit: Annotated[int, msgspec.Meta(ge=1, le=MAX_MISSING)] = 500


class StatesRequest(msgspec.Struct, forbid_unknown_fields=True):
    """``POST /v1/replication/states``: memories in ``buckets`` (of ``of``), paged."""

    buckets: Annotated[list[Annotated[int, msgspec.Meta(ge=0)]], msgspec.Meta(max_length=4096)]
    of: Annotated[int, msgspec.Meta(ge=1, le=65_536)]
    offset: str | None = None
    limit: Annotated[int, msgspec.Meta(ge=1, le=MAX_STATES)] = 500


_missing_decoder = msgspec.json.Decoder(MissingRequest)
_states_decoder = msgspec.json.Decoder(StatesRequest)


def _decode(raw: bytes, decoder: msgspec.json.Decoder[S]) -> S:
    try:
        return decode_json(decoder.decode, raw)
    except msgspec.ValidationError as exc:
        raise BadRequestError(f"invalid {decoder.type.__name__}: {exc}") from None
    except msgspec.DecodeError as exc:
        raise BadRequestError(f"malformed JSON: {exc}") from None


def _offset(body: StatesRequest) -> str | None:
    """The request's ``offset``, if it is a page token a store issued."""
    if body.offset is not None:
        try:
            decode_page_token(body.offset)
        except ValueError:
            raise BadRequestError(
                "'offset' is not a page token this gateway issued: pass the 'next' of "
                "the previous page, or null for the first page"
            ) from None
    return body.offset


async def replication(request: web.Request) -> web.Response:
    """``GET /v1/replication``: every incoming link's lag and state."""
    _claims(request)
    runtime = request.app[RUNTIME]
    return json_response({"region": runtime.settings.region, "links": runtime.replication.view()})


async def context(request: web.Request) -> web.Response:
    """``GET /v1/replication/context``: applied events and the state digest."""
    _claims(request).require("replicate")
    runtime = request.app[RUNTIME]
    digest = runtime.digest.snapshot()
    return json_response(
        {
            "region": runtime.settings.region,
            "applied": runtime.service.tracker.applied,
            "history": runtime.history.recorded,
            "count": digest.count,
            "buckets": [b.hex() for b in digest.buckets],
        }
    )


async def missing(request: web.Request) -> web.Response:
    """``POST /v1/replication/missing``: events a peer lacks, from the history."""
    _claims(request).require("replicate")
    body = _decode(await _body(request), _missing_decoder)
    since, upto = dvv.normalised(body.since), dvv.normalised(body.upto)
    found = await request.app[RUNTIME].history.missing(since, upto, body.limit)
    events = b",".join(found.events)
    flags = msgspec.json.encode({"complete": found.complete, "has_more": found.more})
    return web.Response(
        body=b'{"events":[' + events + b"]," + flags[1:],
        content_type="application/json",
    )


async def states(request: web.Request) -> web.Response:
    """``POST /v1/replication/states``: whole states of the memories in some buckets."""
    _claims(request).require("replicate")
    body = _decode(await _body(request), _states_decoder)
    if any(b >= body.of for b in body.buckets):
        raise BadRequestError(f"bucket numbers must be below 'of' ({body.of})")
    wanted = set(body.buckets)
    store = request.app[RUNTIME].open_store
    out: list[str] = []
    offset = _offset(body)
    scanned = 0
    while len(out) < body.limit and scanned < 20 * MAX_STATES:
        # Never more matches than still fit: ``next`` must not skip any.
        page, offset = await store.scan(offset, min(500, body.limit - len(out)))
        scanned += len(page)
        out.extend(
            base64.b64encode(encode_state(s)).decode()
            for s in page
            if bucket_of(s.key, body.of) in wanted
        )
        if offset is None:
            break
    return json_response({"states": out, "next": offset})


def routes() -> list[web.RouteDef]:
    """The replication routes."""
    return [
        web.get("/v1/replication", replication),
        web.get("/v1/replication/context", context),
        web.post("/v1/replication/missing", missing),
        web.post("/v1/replication/states", states),
    ]
