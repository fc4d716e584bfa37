"""Request bodies of the HTTP API, decoded strictly (unknown fields refused)."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

from replication import limits
from replication.schema import Content, Embedding, Id, Items, Kind, Policy, ShortText, Topics

__all__ = [
    "CreateRequest",
    "PatchRequest",
    "SearchRequest",
    "SourceIn",
    "decode_create",
    "decode_patch",
    "decode_search",
]


class SourceIn(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Who is writing (the token's ``sub`` is used when absent)."""

    agent_id: ShortText | None = None
    session_id: ShortText = ""


class CreateRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``POST /v1/memories``."""

    user_id: Id
    kind: Kind
    id: Id | None = None
    content: Content = ""
    items: Items = ()
    value: Annotated[int, msgspec.Meta(ge=-(2**53), le=2**53)] = 0
    embedding: Embedding | None = None
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)
    topics: Topics = ()
    shared: bool = False
    policy: Policy | None = None
    source: SourceIn = msgspec.field(default_factory=SourceIn)
    system: bool = False


class PatchRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``PATCH /v1/memories/{id}``: the fields to set and the list/counter ops."""

    content: Content | msgspec.UnsetType = msgspec.UNSET
    embedding: Embedding | msgspec.UnsetType | None = msgspec.UNSET
    metadata: dict[str, Any] | msgspec.UnsetType = msgspec.UNSET
    topics: Topics | msgspec.UnsetType = msgspec.UNSET
    shared: bool | msgspec.UnsetType = msgspec.UNSET
    add: Items = ()
    remove: Items = ()
    increment: Annotated[int, msgspec.Meta(ge=-(2**53), le=2**53)] = 0
    source: SourceIn = msgspec.field(default_factory=SourceIn)


class SearchRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``POST /v1/search``."""

    query: Annotated[str, msgspec.Meta(max_length=4096)] = ""
    embedding: Embedding | None = None
    user_id: Id | None = None
    kind: Kind | None = None
    topics: Topics | None = None
    limit: Annotated[int, msgspec.Meta(ge=1, le=limits.MAX_ITEMS)] = 10


_create = msgspec.json.Decoder(CreateRequest)
_patch = msgspec.json.Decoder(PatchRequest)
_search = msgspec.json.Decoder(SearchRequest)


def decode_create(body: bytes) -> CreateRequest:
    """Decode a create body (``msgspec`` errors propagate; the handler maps them)."""
    return _create.decode(body)


def decode_patch(body: bytes) -> PatchRequest:
    """Decode a patch body."""
    return _patch.decode(body)


def decode_search(body: bytes) -> SearchRequest:
    """Decode a search body."""
    return _search.decode(body)
