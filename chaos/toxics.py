"""Toxics as data: the types, their attributes, parsing and the JSON shape.

A :class:`ToxicSpec` is what the API stores and lists; what a toxic *does* to
the bytes of one connection lives in :mod:`chaos.stages`. Parsing follows the
real Toxiproxy (``toxic_collection.go``): ``stream`` defaults to downstream,
``toxicity`` to 1.0, the name to ``<type>_<stream>``; an update merges the given
attributes into the existing ones and may change ``toxicity`` only.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from chaos.errors import bad_body, invalid_stream, invalid_toxic_type

__all__ = ["TOXIC_TYPES", "Stream", "ToxicSpec", "parse_toxic", "update_toxic"]

_INT64_MAX = 2**63 - 1


class Stream(enum.Enum):
    """Link direction: upstream is client → server, downstream server → client."""

    UPSTREAM = "upstream"
    DOWNSTREAM = "downstream"


# Attribute names per type (all integers, default 0), as in toxics/*.go:
# latency/jitter ms, rate KB/s (1 KB = 1000 bytes), delay ms (slow_close) or
# µs (slicer), timeout ms, average_size/size_variation/bytes in bytes.
TOXIC_TYPES: Mapping[str, tuple[str, ...]] = {
    "noop": (),
    "latency": ("latency", "jitter"),
    "bandwidth": ("rate",),
    "slow_close": ("delay",),
    "timeout": ("timeout",),
    "reset_peer": ("timeout",),
    "slicer": ("average_size", "size_variation", "delay"),
    "limit_data": ("bytes",),
}


@dataclass(frozen=True, slots=True)
class ToxicSpec:
    """One toxic on one proxy: its identity, direction, probability and attributes."""

    name: str
    type: str
    stream: Stream
    toxicity: float
    attributes: Mapping[str, int]

    def attr(self, key: str) -> int:
        return self.attributes[key]

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.type,
            "stream": self.stream.value,
            "toxicity": self.toxicity,
            "attributes": dict(self.attributes),
        }


def parse_toxic(body: object) -> ToxicSpec:
    """Validate a create body (``POST /proxies/{proxy}/toxics``) into a spec.

    Raises :class:`chaos.errors.BadRequestError` with Toxiproxy's messages.
    """
    if not isinstance(body, dict):
        raise bad_body("expected a JSON object")
    name = _string(body, "name")
    kind = _string(body, "type")
    stream_text = body.get("stream", Stream.DOWNSTREAM.value)
    if not isinstance(stream_text, str):
        raise bad_body("stream must be a string")
    try:
        stream = Stream(stream_text.lower())
    except ValueError:
        raise invalid_stream() from None
    if kind not in TOXIC_TYPES:
        raise invalid_toxic_type()
    toxicity = _toxicity(body.get("toxicity", 1.0))
    defaults = dict.fromkeys(TOXIC_TYPES[kind], 0)
    attributes = _attributes(kind, defaults, body.get("attributes"))
    return ToxicSpec(
        name=name or f"{kind}_{stream.value}",
        type=kind,
        stream=stream,
        toxicity=toxicity,
        attributes=attributes,
    )


def update_toxic(spec: ToxicSpec, body: object) -> ToxicSpec:
    """Apply an update body: merge ``attributes``, maybe set ``toxicity``.

    Name, type and stream cannot change (the real server ignores them too).
    """
    if not isinstance(body, dict):
        raise bad_body("expected a JSON object")
    toxicity = _toxicity(body.get("toxicity", spec.toxicity))
    attributes = _attributes(spec.type, dict(spec.attributes), body.get("attributes"))
    return replace(spec, toxicity=toxicity, attributes=attributes)


def _string(body: Mapping[str, object], key: str) -> str:
    value = body.get(key, "")
    if not isinstance(value, str):
        raise bad_body(f"{key} must be a string")
    return value


def _toxicity(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise bad_body("toxicity must be a number")
    if not 0.0 <= value <= 1.0:
        raise bad_body("toxicity must be between 0 and 1")
    return float(value)


def _attributes(kind: str, base: dict[str, int], given: object) -> dict[str, int]:
    if given is None:
        given = {}
    if not isinstance(given, dict):
        raise bad_body("attributes must be a JSON object")
    for key, value in given.items():
        if key not in base:
            raise bad_body(f"unknown attribute {key!r} for toxic type {kind!r}")
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad_body(f"attribute {key!r} must be an integer")
        if not 0 <= value <= _INT64_MAX:
            raise bad_body(f"attribute {key!r} must be between 0 and {_INT64_MAX}")
        base[key] = value
    if kind == "slicer":
        if base["average_size"] < 1:
            raise bad_body("attribute 'average_size' must be at least 1")
        if base["size_variation"] >= base["average_size"]:
            raise bad_body("attribute 'size_variation' must be smaller than 'average_size'")
    return base
