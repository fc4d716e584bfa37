"""Version tokens are opaque, URL-safe and tamper-evident."""

from __future__ import annotations

import re

import pytest

from replication import dvv
from replication.dvv import Dot
from replication.errors import InvalidTokenError
from replication.token import decode_context, encode_context, seal, unseal

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
