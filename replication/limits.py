"""Hard size limits of the wire format, checked on every decode.

They bound what one event can cost a consumer; the gateway may enforce
tighter limits from its settings, never looser ones.
"""

from __future__ import annotations

from typing import Any

from replication.errors import PayloadTooLargeError, ValidationError

__all__ = [
    "ID_PATTERN",
    "MAX_CHANNELS",
    "MAX_CONTENT_CHARS",
    "MAX_EMBEDDING_DIM",
    "MAX_EVENT_BYTES",
    "MAX_ID_CHARS",
    "MAX_ITEMS",
    "MAX_ITEM_CHARS",
    "MAX_METADATA_BYTES",
    "MAX_METADATA_DEPTH",
    "MAX_METADATA_INT",
    "MAX_METADATA_KEYS",
    "MAX_TOPICS",
    "check_metadata",
]

MAX_EVENT_BYTES = 512 * 1024
MAX_CONTENT_CHARS = 64 * 1024
MAX_EMBEDDING_DIM = 4096
MAX_ITEMS = 1024
MAX_ITEM_CHARS = 2048
MAX_TOPICS = 32
MAX_CHANNELS = MAX_TOPICS + 3
MAX_ID_CHARS = 128
MAX_METADATA_BYTES = 16 * 1024
MAX_METADATA_DEPTH = 8
MAX_METADATA_KEYS = 256
# Integers in metadata: exactly representable as JSON numbers everywhere
# (JavaScript's safe integers) and in the stores' encodings (64-bit).
MAX_METADATA_INT = 2**53 - 1
# Ids become parts of channel names (`user:{id}:memories`) and storage keys:
# no colons, slashes or spaces.
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.@\-]{0,127}$"


def check_metadata(value: dict[str, Any], encoded_size: int) -> None:
    """Check a metadata object's depth, key count and encoded size.

    Raises :class:`PayloadTooLargeError` or :class:`ValidationError` naming the
    limit that was broken.
    """
    if encoded_size > MAX_METADATA_BYTES:
        raise PayloadTooLargeError(
            f"metadata is {encoded_size} bytes encoded; the limit is {MAX_METADATA_BYTES}"
        )
    keys = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_METADATA_DEPTH:
            raise ValidationError(f"metadata is nested deeper than {MAX_METADATA_DEPTH} levels")
        if isinstance(node, dict):
            keys += len(node)
            for key, child in node.items():
                if len(key) > MAX_ID_CHARS:
                    raise ValidationError(
                        f"metadata key {key[:32]!r}… is longer than {MAX_ID_CHARS} characters"
                    )
                if isinstance(child, dict | list):
                    stack.append((child, depth + 1))
                else:
                    _check_scalar(child)
        elif isinstance(node, list):
            for child in node:
                if isinstance(child, dict | list):
                    stack.append((child, depth + 1))
                else:
                    _check_scalar(child)
    if keys > MAX_METADATA_KEYS:
        raise ValidationError(f"metadata has {keys} keys; the limit is {MAX_METADATA_KEYS}")


def _check_scalar(value: Any) -> None:
    """An integer in metadata must be a safe one (see ``MAX_METADATA_INT``)."""
    if type(value) is int and not -MAX_METADATA_INT <= value <= MAX_METADATA_INT:
        raise ValidationError(
            f"metadata holds the integer {str(value)[:40]}, outside ±{MAX_METADATA_INT} "
            "(2**53 - 1, what JSON numbers hold exactly everywhere); send it as a string"
        )
