"""Heartbeats and the headers mirror links add (pure; MM2's heartbeat connector).

Every region with peers appends a heartbeat record to each partition of its
own log once a second. Heartbeats travel the same path as events (source log
→ mirror link → ``<source>.memsync.events`` → the target's applier), so the
target measures replication lag in time exactly where it matters: when the
heartbeat is *applied*. The link stamps each heartbeat it forwards with its
own backlog in events. Heartbeats are told apart from events by a header, so
an applier never decodes one as an event (nor dead-letters it).
"""

from __future__ import annotations

from collections.abc import Iterable

import msgspec

__all__ = [
    "HEARTBEAT_KEY",
    "KIND_HEADER",
    "KIND_HEARTBEAT",
    "LINK_LAG_HEADER",
    "MIRRORED_AT_HEADER",
    "ORIGIN_HEADER",
    "ORIGIN_REGION_HEADER",
    "Heartbeat",
    "decode_heartbeat",
    "encode_heartbeat",
    "header",
    "is_heartbeat",
    "mirror_group",
    "mirrored_log",
]

KIND_HEADER = "memsync-kind"
KIND_HEARTBEAT = b"heartbeat"
HEARTBEAT_KEY = b"\x00heartbeat"
ORIGIN_REGION_HEADER = "memsync-origin-region"
ORIGIN_HEADER = "memsync-origin"  # "<topic>/<partition>/<offset>" in the source region
MIRRORED_AT_HEADER = "memsync-mirrored-at-ms"
LINK_LAG_HEADER = "memsync-link-lag-events"

Headers = Iterable[tuple[str, bytes]]


class Heartbeat(msgspec.Struct, frozen=True, forbid_unknown_fields=False):
    """One heartbeat: which region wrote it, when (its wall clock), and its number."""

    region: str
    at_ms: int
    seq: int


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Heartbeat)


def encode_heartbeat(beat: Heartbeat) -> bytes:
    """The record value of a heartbeat."""
    return _encoder.encode(beat)


def decode_heartbeat(data: bytes) -> Heartbeat:
    """A heartbeat from a record value (:class:`msgspec.DecodeError` if malformed)."""
    return _decoder.decode(data)


def header(headers: Headers, name: str) -> bytes | None:
    """The first value of header ``name``, if present."""
    for key, value in headers:
        if key == name:
            return value
    return None


def is_heartbeat(headers: Headers) -> bool:
    """Whether a record with these headers is a heartbeat (not an event)."""
    return header(headers, KIND_HEADER) == KIND_HEARTBEAT


def mirrored_log(source: str, log: str = "memsync.events") -> str:
    """The target-side name of ``source``'s log (MM2 naming: links never loop)."""
    return f"{source}.{log}"


def mirror_group(source: str, target: str) -> str:
    """The consumer group a link commits its source offsets under."""
    return f"memsync-mirror-{source}-{target}"
