"""The wire format: released payloads keep decoding, bad ones are refused clearly."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import pytest

from replication import limits
from replication.dvv import Dot
from replication.errors import InvalidEventError, PayloadTooLargeError, ValidationError
from replication.schema import MemoryEvent, decode_event, encode

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "wire"
RELEASED = sorted(FIXTURES.glob("v*/*.json"))


def _fixture(name: str) -> dict[str, object]:
    data: dict[str, object] = json.loads((FIXTURES / "v1" / f"{name}.json").read_bytes())
    return data


def test_there_are_released_fixtures() -> None:
    assert len(RELEASED) >= 4


@pytest.mark.parametrize("path", RELEASED, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_every_released_payload_still_decodes_and_round_trips(path: Path) -> None:
    event = decode_event(path.read_bytes())
    assert isinstance(event, MemoryEvent)
    assert decode_event(encode(event)) == event


def test_seed_fields_are_all_there() -> None:
    event = decode_event((FIXTURES / "v1" / "create_fact.json").read_bytes())
    assert event.event_type == "create"
    assert event.memory.content.startswith("Alice drinks")
    assert event.memory.embedding == (0.12, -0.03, 0.88, 0.41)
    assert event.source.agent_id == "phone-agent"
    assert event.channels == ("user:alice:memories", "topic:coffee:updates")
    assert event.dot == Dot("us-east.g1a2b3c", 1)
    assert event.schema == 1


def test_unknown_fields_from_a_newer_writer_are_ignored() -> None:
    data = _fixture("create_fact")
    data["added_in_v2"] = {"anything": True}
    assert decode_event(json.dumps(data).encode()).event_id == data["event_id"]


def test_not_json_is_malformed() -> None:
    with pytest.raises(InvalidEventError, match="undecodable"):
        decode_event(b"{not json")


def test_wrong_type_names_the_field() -> None:
    data = _fixture("create_fact")
    data["timestamp"] = "yesterday"
    with pytest.raises(ValidationError, match=r"\$\.timestamp"):
        decode_event(json.dumps(data).encode())


def test_oversize_event_is_refused_before_decoding() -> None:
    with pytest.raises(PayloadTooLargeError, match="limit"):
        decode_event(b" " * (limits.MAX_EVENT_BYTES + 1))


@pytest.mark.parametrize(
    ("path", "value", "match"),
    [
        (("memory", "content"), "x" * (limits.MAX_CONTENT_CHARS + 1), "content"),
        (("memory", "embedding"), [0.0] * (limits.MAX_EMBEDDING_DIM + 1), "embedding"),
        (("memory", "items"), ["i"] * (limits.MAX_ITEMS + 1), "items"),
        (("memory", "topics"), [f"t{i}" for i in range(limits.MAX_TOPICS + 1)], "topics"),
        (("memory", "id"), "has:colon", "id"),
        (("memory", "kind"), "secret", "kind"),
        (("event_type", None), "upsert", "event_type"),
    ],
)
def test_field_limits_are_enforced(path: tuple[str, str | None], value: object, match: str) -> None:
    data = _fixture("update_list")
    outer, inner = path
    if inner is None:
        data[outer] = value
    else:
        nested = data[outer]
        assert isinstance(nested, dict)
        nested[inner] = value
    with pytest.raises(ValidationError, match=match):
        decode_event(json.dumps(data).encode())


def _nested(depth: int) -> dict[str, object]:
    node: dict[str, object] = {}
    for _ in range(depth - 1):
        node = {"k": node}
    return node


def test_metadata_depth_and_size_are_bounded() -> None:
    data = _fixture("create_fact")
    memory = data["memory"]
    assert isinstance(memory, dict)
    memory["metadata"] = _nested(limits.MAX_METADATA_DEPTH + 1)
    with pytest.raises(ValidationError, match="nested deeper"):
        decode_event(json.dumps(data).encode())
    memory["metadata"] = {"blob": "x" * (limits.MAX_METADATA_BYTES + 1)}
    with pytest.raises(PayloadTooLargeError, match="metadata"):
        decode_event(json.dumps(data).encode())


@pytest.mark.parametrize(
    "metadata",
    [{"n": 2**64}, {"n": -(2**63) - 1}, {"deep": {"list": [1, [2**53]]}}, {"x": [-(2**53)]}],
)
def test_metadata_integers_must_be_safe_ones(metadata: dict[str, object]) -> None:
    """A log of JSON carries any integer; the stores' 64-bit encodings and JavaScript do not."""
    data = _fixture("create_fact")
    memory = data["memory"]
    assert isinstance(memory, dict)
    memory["metadata"] = metadata
    with pytest.raises(ValidationError, match="outside"):
        decode_event(json.dumps(data).encode())
    memory["metadata"] = {"n": 2**53 - 1, "m": -(2**53 - 1), "flag": True, "f": 1e300}
    decode_event(json.dumps(data).encode())


def test_policy_must_fit_kind() -> None:
    data = _fixture("create_fact")
    memory = data["memory"]
    assert isinstance(memory, dict)
    memory["policy"] = "counter"
    with pytest.raises(ValidationError, match="counter policy"):
        decode_event(json.dumps(data).encode())


def test_item_ops_on_a_fact_are_refused() -> None:
    data = _fixture("create_fact")
    data["ops"] = {"add": ["x"]}
    with pytest.raises(ValidationError, match="lists and conversations"):
        decode_event(json.dumps(data).encode())


def test_events_are_frozen() -> None:
    event = decode_event((FIXTURES / "v1" / "create_fact.json").read_bytes())
    with pytest.raises(AttributeError):
        event.event_id = "x"  # type: ignore[misc]
    assert msgspec.structs.asdict(event)["event_type"] == "create"
