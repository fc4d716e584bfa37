"""The wire format: one module, frozen tagged msgspec Structs, decoders built once.

Evolution rules (msgspec's): a new field always gets a default; fields are
never reordered, renamed or retyped; ``schema`` on every envelope says which
version wrote it. Decoders ignore fields they do not know, so an older reader
keeps working on newer events. Sample payloads of every released version live
in ``tests/fixtures/wire`` and must keep decoding.

The seed's MemoryEvent (``event_id, event_type, timestamp, memory{id, content,
embedding?, type, metadata}, source{agent_id, session_id, user_id},
channels``) is kept field for field; the memory's ``type`` is called ``kind``
here, as in the API.
"""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal

import msgspec

from replication import limits
from replication.dvv import Dot, DotContext
from replication.errors import InvalidEventError, PayloadTooLargeError, ValidationError

__all__ = [
    "KINDS",
    "POLICIES",
    "SCHEMA_VERSION",
    "EventType",
    "Kind",
    "MemoryBody",
    "MemoryEvent",
    "Ops",
    "Policy",
    "Source",
    "decode_event",
    "default_policy",
    "encode",
    "validate_event",
]

SCHEMA_VERSION: Final = 1

Kind = Literal["fact", "preference", "conversation", "list", "counter"]
Policy = Literal["lww", "union", "counter", "surface"]
EventType = Literal["create", "update", "delete"]
KINDS: Final[tuple[str, ...]] = ("fact", "preference", "conversation", "list", "counter")
POLICIES: Final[tuple[str, ...]] = ("lww", "union", "counter", "surface")

Id = Annotated[str, msgspec.Meta(pattern=limits.ID_PATTERN)]
ShortText = Annotated[str, msgspec.Meta(max_length=limits.MAX_ID_CHARS)]
Content = Annotated[str, msgspec.Meta(max_length=limits.MAX_CONTENT_CHARS)]
Item = Annotated[str, msgspec.Meta(min_length=1, max_length=limits.MAX_ITEM_CHARS)]
Items = Annotated[tuple[Item, ...], msgspec.Meta(max_length=limits.MAX_ITEMS)]
Topics = Annotated[tuple[Id, ...], msgspec.Meta(max_length=limits.MAX_TOPICS)]
Embedding = Annotated[
    tuple[float, ...], msgspec.Meta(min_length=1, max_length=limits.MAX_EMBEDDING_DIM)
]
Channel = Annotated[str, msgspec.Meta(max_length=3 * limits.MAX_ID_CHARS)]
Channels = Annotated[tuple[Channel, ...], msgspec.Meta(max_length=limits.MAX_CHANNELS)]
Count = Annotated[int, msgspec.Meta(ge=-(2**53), le=2**53)]
Positive = Annotated[int, msgspec.Meta(ge=1)]

_DEFAULT_POLICY: Final[dict[str, str]] = {
    "fact": "lww",
    "preference": "lww",
    "conversation": "union",
    "list": "union",
    "counter": "counter",
}


def default_policy(kind: str) -> str:
    """The merge policy a kind gets when the writer names none (DESIGN §3)."""
    return _DEFAULT_POLICY[kind]


class Source(msgspec.Struct, frozen=True, gc=False, kw_only=True, omit_defaults=True):
    """Who wrote an event: the agent, its session, the acting user, the region."""

    agent_id: ShortText
    session_id: ShortText = ""
    user_id: ShortText = ""
    region: ShortText = ""


class MemoryBody(msgspec.Struct, frozen=True, gc=False, kw_only=True, omit_defaults=True):
    """The memory as its writer saw it after the write (the seed's ``memory``)."""

    id: Id
    tenant_id: Id
    user_id: Id
    kind: Kind
    policy: Policy
    content: Content = ""
    items: Items = ()
    value: Count = 0
    embedding: Embedding | None = None
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)
    topics: Topics = ()
    shared: bool = False


class Ops(msgspec.Struct, frozen=True, gc=False, kw_only=True, omit_defaults=True):
    """What a write changes, beyond the memory snapshot it carries.

    ``fields``: the write sets the memory's register fields (content,
    embedding, metadata, topics, shared) to the snapshot's. ``add``/``remove``:
    list items (OR-Set). ``increment``: counter delta (PN-counter).
    """

    fields: bool = True
    add: Items = ()
    remove: Items = ()
    increment: Count = 0


class MemoryEvent(
    msgspec.Struct,
    frozen=True,
    gc=False,
    kw_only=True,
    tag="memory_event",
    tag_field="msg",
):
    """One change to one memory: the unit of the log, replication and fan-out."""

    schema: int = SCHEMA_VERSION
    event_id: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    event_type: EventType
    timestamp: Annotated[int, msgspec.Meta(ge=0)]
    memory: MemoryBody
    source: Source
    channels: Channels = ()
    context: DotContext = msgspec.field(default_factory=DotContext)
    dot: Dot
    seq: Positive = 1
    ops: Ops = msgspec.field(default_factory=Ops)
    system: bool = False

    @property
    def key(self) -> str:
        """The memory's key: tenant and id (ids are unique within a tenant)."""
        return f"{self.memory.tenant_id}/{self.memory.id}"


_encoder = msgspec.json.Encoder()
_event_decoder = msgspec.json.Decoder(MemoryEvent)


def encode(value: object) -> bytes:
    """Encode any wire value as JSON bytes (the one wire encoding)."""
    return _encoder.encode(value)


def validate_event(event: MemoryEvent) -> MemoryEvent:
    """Check the rules a type cannot express; return the event unchanged.

    Raises :class:`ValidationError` or :class:`PayloadTooLargeError`.
    """
    mem = event.memory
    if event.schema < 1:
        raise ValidationError(f"schema version {event.schema} is not valid")
    if event.dot.counter < 1 or not event.dot.replica:
        raise ValidationError("dot must name a replica and a counter ≥ 1")
    if (mem.kind == "counter") != (mem.policy == "counter"):
        raise ValidationError(
            f"policy {mem.policy!r} does not fit kind {mem.kind!r}: "
            "the counter policy is for counter memories and only for them"
        )
    if mem.policy == "union" and mem.kind not in ("list", "conversation"):
        raise ValidationError(f"policy 'union' needs a list or conversation, not {mem.kind!r}")
    ops = event.ops
    if (ops.add or ops.remove) and mem.kind not in ("list", "conversation"):
        raise ValidationError(
            f"item add/remove applies to lists and conversations, not {mem.kind!r}"
        )
    if ops.increment and mem.kind != "counter":
        raise ValidationError(f"increment applies to counters, not {mem.kind!r}")
    if mem.metadata:
        limits.check_metadata(mem.metadata, len(_encoder.encode(mem.metadata)))
    return event


def decode_event(data: bytes | bytearray | memoryview) -> MemoryEvent:
    """Decode and validate one event strictly.

    Raises :class:`PayloadTooLargeError` (over ``MAX_EVENT_BYTES``),
    :class:`InvalidEventError` (not JSON, or not an event) or
    :class:`ValidationError` (an event that breaks a rule), each naming the
    problem.
    """
    if len(data) > limits.MAX_EVENT_BYTES:
        raise PayloadTooLargeError(
            f"event is {len(data)} bytes; the limit is {limits.MAX_EVENT_BYTES}"
        )
    try:
        event = _event_decoder.decode(data)
    except msgspec.ValidationError as exc:
        raise ValidationError(f"invalid event: {exc}") from exc
    except msgspec.DecodeError as exc:
        raise InvalidEventError(f"undecodable event: {exc}") from exc
    return validate_event(event)
