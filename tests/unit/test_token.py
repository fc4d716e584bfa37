"""Version tokens are opaque, URL-safe and tamper-evident."""

from __future__ import annotations

import re

import pytest

from replication import dvv
from replication.dvv import Dot
from replication.errors import InvalidTokenError, PreconditionFailedError
from replication.token import (
    Version,
    decode_context,
    decode_version,
    encode_context,
    encode_version,
    seal,
    unseal,
)

KEY = b"k" * 32


def test_context_round_trips_through_a_url_safe_token() -> None:
    ctx = dvv.context_of([Dot("us-east.g1", 1), Dot("us-east.g1", 2), Dot("eu", 5)])
    token = encode_context(ctx, KEY)
    assert re.fullmatch(r"[A-Za-z0-9_.\-]+", token)
    assert decode_context(token, KEY) == ctx


def test_altered_token_fails_its_integrity_check() -> None:
    token = encode_context(dvv.from_vector({"a": 1}), KEY)
    forged = encode_context(dvv.from_vector({"a": 9}), KEY).split(".")[1]
    parts = token.split(".")
    with pytest.raises(InvalidTokenError, match="integrity"):
        decode_context(f"{parts[0]}.{forged}.{parts[2]}", KEY)


def test_token_from_another_key_is_refused() -> None:
    with pytest.raises(InvalidTokenError, match="integrity"):
        decode_context(encode_context(dvv.EMPTY, KEY), b"other-key")


def test_token_for_another_purpose_is_refused() -> None:
    with pytest.raises(InvalidTokenError):
        unseal(seal({"a": 1}, KEY, "cursor"), KEY, "version", dict)


@pytest.mark.parametrize("bad", ["", "abc", "v2.a.b", "v1.%%%.b", "v1..", "x" * 9000])
def test_malformed_tokens_are_refused_with_a_reason(bad: str) -> None:
    with pytest.raises(InvalidTokenError):
        decode_context(bad, KEY)


def test_a_version_token_names_its_memory() -> None:
    ctx = dvv.context_of([Dot("eu", 3)])
    token = encode_version("t1/m1", ctx, KEY)
    assert decode_version(token, KEY) == Version("t1/m1", ctx)
    with pytest.raises(InvalidTokenError, match="integrity"):
        decode_version(token, b"other-key")


def test_a_version_token_from_before_memories_were_named_asks_for_a_fresh_read() -> None:
    """Genuine but unbound: it cannot be checked against the memory written, so 412."""
    with pytest.raises(PreconditionFailedError, match="read the memory again"):
        decode_version(encode_context(dvv.context_of([Dot("eu", 3)]), KEY), KEY)
    with pytest.raises(InvalidTokenError):  # anything else stays a bad token
        decode_version(seal({"a": 1}, KEY, "cursor"), KEY)
