"""The OpenAPI 3.1 document of the gateway's HTTP API.

Schemas come from the same msgspec types the handlers decode and encode, so
the document cannot drift from behaviour; paths are written out here.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import msgspec

from gateway.replication_api import MissingRequest, StatesRequest
from gateway.replication_status import LinkView
from gateway.requests import CreateRequest, PatchRequest, SearchRequest
from replication.state import MemoryView

__all__ = ["spec"]

_REF = "#/components/schemas/{name}"


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": _REF.format(name="Error")}}},
    }


def _json(ref: str, description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": _REF.format(name=ref)}}},
    }
    if headers:
        out["headers"] = headers
    return out


_VERSION_HEADERS = {
    "ETag": {
        "description": "Version token: this memory and its causal context (If-Match takes it).",
        "schema": {"type": "string"},
    },
    "X-Memsync-Session": {
        "description": "Session token for read-your-writes, in any region.",
        "schema": {"type": "string"},
    },
}
_ERRORS = {
    "400": _error("Malformed request (JSON, parameter, id or token)."),
    "401": _error("Missing, invalid or expired bearer token."),
    "403": _error("The token's claims do not allow this."),
    "413": _error("Body or field over its size limit."),
    "415": _error("Body is not application/json."),
    "422": _error("Body breaks the schema or a rule; the message names the field."),
    "429": _error("Rate limited; see Retry-After."),
    "503": _error("Overloaded or a dependency is down; see Retry-After."),
}
_ID_PARAM = {
    "name": "id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": r"^[A-Za-z0-9][A-Za-z0-9_.@\-]{0,127}$"},
}
_CHANNELS = {
    "name": "channels",
    "in": "query",
    "required": True,
    "description": "Comma-separated channel names.",
    "schema": {"type": "string"},
}
_IF_MATCH = {
    "name": "If-Match",
    "in": "header",
    "required": False,
    "description": "The version token last read: the write's causal context. Absent: blind.",
    "schema": {"type": "string"},
}
_SESSION = {
    "name": "X-Memsync-Session",
    "in": "header",
    "required": False,
    "description": (
        "Session token of earlier writes; reads wait (bounded) until they apply. Several "
        "tokens, comma-separated (at most 32), are joined: send the answers of writes that "
        "were in flight at once."
    ),
    "schema": {"type": "string"},
}


def _write_op(summary: str, body: str | None, ok: str, params: list[Any]) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": summary,
        "parameters": params,
        "responses": {
            ok: _json("Memory", "The memory after the write.", _VERSION_HEADERS),
            "202": _json(
                "Memory",
                "Accepted into the local durable outbox only (log unreachable): "
                "`degraded: true`; it reaches the log when it returns.",
                _VERSION_HEADERS,
            ),
            **_ERRORS,
            "403": _error(
                "The token's claims do not allow this. Creating or changing a system memory "
                "(`system: true`, published to system:global) needs the admin scope."
            ),
            "404": _error("No such memory."),
            "409": _error("Conflict (id exists or was deleted; too many siblings)."),
        },
    }
    if body:
        op["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": _REF.format(name=body)}}},
        }
    return op


@cache
def spec() -> dict[str, Any]:
    """The OpenAPI document (built once)."""
    (create, patch, search, memory, *_), components = msgspec.json.schema_components(
        [CreateRequest, PatchRequest, SearchRequest, MemoryView, LinkView, MissingRequest,
         StatesRequest],
        ref_template=_REF,
    )  # fmt: skip
    components["Memory"] = components.pop("MemoryView")
    memory_ref = {"$ref": _REF.format(name="Memory")}
    components["Error"] = {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
            }
        },
    }
    components["MemoryList"] = {
        "type": "object",
        "properties": {
            "memories": {"type": "array", "items": memory_ref},
            "next_page_token": {"type": ["string", "null"]},
        },
    }
    components["SearchResults"] = {
        "type": "object",
        "properties": {
            "results": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {"memory": memory_ref, "score": {"type": "number"}},
                },
            }
        },
    }
    for schema in components.values():
        _fix_refs(schema)
    list_params = [
        {"name": n, "in": "query", "required": False, "schema": {"type": t}}
        for n, t in (
            ("user_id", "string"),
            ("topic", "string"),
            ("kind", "string"),
            ("limit", "integer"),
            ("page_token", "string"),
        )
    ]
    bearer: list[dict[str, list[str]]] = [{"bearer": []}]
    paths: dict[str, Any] = {
        "/v1/memories": {
            "post": _write_op("Create a memory", "CreateRequest", "201", [_SESSION]),
            "get": {
                "summary": "List memories, paged",
                "parameters": list_params,
                "responses": {"200": _json("MemoryList", "One page."), **_ERRORS},
            },
        },
        "/v1/memories/{id}": {
            "get": {
                "summary": "Get a memory (siblings and conflicts included)",
                "parameters": [
                    _ID_PARAM,
                    _SESSION,
                    {"name": "wait_ms", "in": "query", "schema": {"type": "integer"}},
                ],
                "responses": {
                    "200": _json("Memory", "The memory.", {"ETag": _VERSION_HEADERS["ETag"]}),
                    "404": _error("Absent or deleted."),
                    "409": _error(
                        "Withheld: two users created this id in regions cut off from each "
                        "other, and no one is shown the memory; its owner may DELETE it."
                    ),
                    **_ERRORS,
                },
            },
            "patch": _write_op(
                "Update fields, add/remove items, increment", "PatchRequest", "200",
                [_ID_PARAM, _IF_MATCH, _SESSION],
            ),
            "delete": _write_op(
                "Delete (tombstone)", None, "200", [_ID_PARAM, _IF_MATCH, _SESSION]
            ),
        },
        "/v1/search": {
            "post": {
                "summary": "Ranked search (BM25 text, dense embedding, or both fused)",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {"schema": {"$ref": _REF.format(name="SearchRequest")}}
                    },
                },
                "responses": {"200": _json("SearchResults", "Best first."), **_ERRORS},
            }
        },
        "/v1/subscribe": {"get": {
            "summary": "WebSocket stream (eager or lazy) of the subscribed channels",
            "description": (
                "Upgrade to WebSocket. Client: {op: subscribe, channels, mode: eager|lazy, "
                "interval_ms?, since?: cursor} / {op: unsubscribe, channels}. Server: "
                "{op: subscribed, channels, cursor}, {op: event, event, cursor}, {op: batch, "
                "events, states, left?, cursor} (lazy, or a slow subscriber coalesced; "
                "another user's memory comes without its owner's private versions), "
                "{op: left, id, key, cursor} (the memory moved off these channels or was made "
                "private: drop it; no content comes with it), {op: heartbeat}, "
                "{op: error, code: bad_request|forbidden|resync_required|slow_consumer, message, "
                "cursor?}. Cursors are valid in every region. No compression; frames ≤ 64 KiB "
                "from the client."
            ),
            "responses": {"101": {"description": "Switching to WebSocket."}, **_ERRORS},
        }},
        "/v1/events": {"get": {
            "summary": "The same stream as Server-Sent Events",
            "parameters": [
                _CHANNELS,
                {"name": "mode", "in": "query", "schema": {"enum": ["eager", "lazy"]}},
                {"name": "Last-Event-ID", "in": "header", "schema": {"type": "string"},
                 "description": "A cursor: resume after it."},
            ],
            "responses": {
                "200": {"description": "text/event-stream; each message's id is its cursor.",
                        "content": {"text/event-stream": {"schema": {"type": "string"}}}},
                **_ERRORS,
            },
        }},
        "/v1/sync": {"get": {
            "summary": "Pull sync: changes since a cursor (tombstones included), or a snapshot",
            "parameters": [
                _CHANNELS,
                {"name": "since", "in": "query", "schema": {"type": "string"}},
                {"name": "limit", "in": "query", "schema": {"type": "integer"}},
                {"name": "page_token", "in": "query", "schema": {"type": "string"}},
            ],
            "responses": {
                "200": {
                    "description": (
                        "One page. With `since`: the current state of each memory changed "
                        "after the cursor that the token may still see on these channels "
                        "(tombstones of deletes it was shown included), and in `removed` the "
                        "memories it was shown after the cursor, or that left these channels "
                        "after it, that it may no longer see there (made private, moved off "
                        "a topic), without content: drop them. Without `since`: a paged "
                        "snapshot of the channels' live memories (`page_token` continues it) "
                        "and the cursor of its start. "
                        "503 while this region's store has not yet applied what the cursor "
                        "covers (retry)."
                    ),
                    "content": {"application/json": {"schema": {
                        "type": "object",
                        "required": ["changes", "states", "cursor", "has_more"],
                        "properties": {
                            "changes": {"type": "array", "items": memory_ref},
                            "states": {"type": "array", "items": {"type": "object"},
                                       "description": (
                                           "Each change's full replicated state; for a "
                                           "memory of a user the token may not act for, "
                                           "without the versions its owner kept private.")},
                            "removed": {
                                "type": "array",
                                "description": "With `since` only.",
                                "items": {
                                    "type": "object",
                                    "required": ["id", "key"],
                                    "properties": {"id": {"type": "string"},
                                                   "key": {"type": "string"}},
                                },
                            },
                            "cursor": {"type": "string"},
                            "has_more": {"type": "boolean"},
                            "page_token": {"type": ["string", "null"],
                                           "description": "Snapshot pages only."},
                        },
                    }}},
                },
                "410": _error("resync_required: the cursor's history is gone; take a snapshot."),
                **_ERRORS,
            },
        }},
        "/dashboard": {"get": {
            "summary": "Live admin page (events, regions, lag, conflicts)",
            "description": (
                "A static HTML page with no data in it: it asks for an admin token, keeps it "
                "in the tab's sessionStorage and polls /v1/dashboard once a second."
            ),
            "security": [],
            "responses": {"200": {"description": "the page", "content": {"text/html": {}}}},
        }},
        "/v1/dashboard": {"get": {
            "summary": "The dashboard's data (admin scope; the token's tenant and users only)",
            "description": (
                "mode and modes in effect, every incoming link (as /v1/replication), counts "
                "(as /readyz, plus events_seen and conflicts_seen since start), the latest "
                "events applied here (newest first: at_ms, type, id, user_id, region, local, "
                "versions) and conflicts: the memories whose latest event left concurrent "
                "versions (an LWW memory's losers, a surfaced memory's siblings)."
            ),
            "responses": {"200": {"description": "{region, at_ms, mode, modes, links, totals, "
                                                 "recent, conflicts}",
                                  "content": {"application/json": {}}}, **_ERRORS},
        }},
        "/v1/replication": {"get": {
            "summary": "Incoming replication links: lag (time, events) and state",
            "description": (
                "One entry per peer region whose link brings events here, measured by the "
                "peer's heartbeats when applied. state: waiting (no heartbeat yet), "
                "replicating, lagging (lag_ms above MEMSYNC_LAG_ALERT_MS)."
            ),
            "responses": {"200": {"description": "{region, links: [LinkView]}", "content": {
                "application/json": {"schema": {"type": "object", "properties": {
                    "region": {"type": "string"},
                    "links": {"type": "array", "items": {"$ref": _REF.format(name="LinkView")}},
                }}}}}, **_ERRORS},
        }},
        "/v1/replication/context": {"get": {
            "summary": "Anti-entropy (gateways only, 'replicate' scope): applied events, digest",
            "responses": {"200": {"description": "{region, applied, history, count, buckets}",
                                  "content": {"application/json": {"schema": {"type": "object"}}}},
                          **_ERRORS},
        }},
        "/v1/replication/missing": {"post": {
            "summary": "Anti-entropy: events held here that a peer lacks ('replicate' scope)",
            "requestBody": {"required": True, "content": {"application/json": {
                "schema": {"$ref": _REF.format(name="MissingRequest")}}}},
            "responses": {"200": {"description": "{events: [MemoryEvent], complete, has_more}",
                                  "content": {"application/json": {"schema": {"type": "object"}}}},
                          **_ERRORS},
        }},
        "/v1/replication/states": {"post": {
            "summary": "Anti-entropy: whole states of memories in digest buckets ('replicate')",
            "requestBody": {"required": True, "content": {"application/json": {
                "schema": {"$ref": _REF.format(name="StatesRequest")}}}},
            "responses": {"200": {"description": "{states: [base64 msgpack], next}",
                                  "content": {"application/json": {"schema": {"type": "object"}}}},
                          **_ERRORS},
        }},
        "/healthz": {"get": {"summary": "Liveness", "security": [], "responses": {"200": {
            "description": "Up."}}}},
        "/readyz": {"get": {"summary": "Readiness and degraded modes", "security": [],
                            "responses": {"200": {"description": "Ready (mode says how)."},
                                          "503": {"description": "Not ready."}}}},
        "/metrics": {"get": {"summary": "Prometheus metrics", "security": [], "responses": {
            "200": {"description": "Text exposition format.",
                    "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
        "/openapi.json": {"get": {"summary": "This document", "security": [], "responses": {
            "200": {"description": "OpenAPI 3.1."}}}},
    }  # fmt: skip
    del create, patch, search, memory
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "memsync gateway",
            "version": "0.1.0",
            "description": "Real-time memory sync for fleets of AI agents (one region's gateway).",
        },
        "security": bearer,
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
            },
        },
    }


def _fix_refs(node: Any) -> None:
    """Point references to ``MemoryView`` at its public name ``Memory``."""
    if isinstance(node, dict):
        ref = node.get("$ref")
        if ref == _REF.format(name="MemoryView"):
            node["$ref"] = _REF.format(name="Memory")
        for value in node.values():
            _fix_refs(value)
    elif isinstance(node, list):
        for value in node:
            _fix_refs(value)
