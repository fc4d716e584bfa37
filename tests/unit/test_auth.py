"""Tokens: minted, verified, cached, expired, forged."""

from __future__ import annotations

import time

import pytest

from gateway.auth import TokenCache, mint, verify
from gateway.errors import ForbiddenError, UnauthorizedError

SECRET = b"s" * 32


def _token(ttl: float = 60, **kw: object) -> str:
    args: dict[str, object] = {"agent": "a", "tenant": "t", "users": ["u"], "scope": ["read"]}
    args.update(kw)
    return mint(SECRET, ttl=ttl, **args)  # type: ignore[arg-type]


def test_claims_round_trip_and_enforce_scope_and_users() -> None:
    claims = verify(_token(), SECRET)
    assert (claims.sub, claims.tenant, claims.users) == ("a", "t", ("u",))
    claims.require("read")
    with pytest.raises(ForbiddenError, match="write"):
        claims.require("write")
    with pytest.raises(ForbiddenError, match="other"):
        claims.require_user("other")


def test_forged_and_foreign_tokens_are_refused() -> None:
    with pytest.raises(UnauthorizedError):
        verify(_token(), b"another-secret-another-secret-00")
    with pytest.raises(UnauthorizedError):
        verify(_token()[:-3] + "abc", SECRET)


def test_cache_rechecks_expiry_on_every_hit() -> None:
    cache = TokenCache(SECRET)
    token = _token(ttl=5)
    assert cache.verify(token).sub == "a"
    assert cache.verify(token).sub == "a"
    with pytest.raises(UnauthorizedError, match="expired"):
        cache.verify(token, now=time.time() + 10)


def test_unknown_scope_cannot_be_minted() -> None:
    with pytest.raises(ValueError, match="unknown scope"):
        _token(scope=["root"])


@pytest.mark.parametrize("token", ["\udcff\udcfe", "abc.d\u00e9f.ghi"])
def test_a_token_with_bytes_that_are_not_ascii_is_refused_as_unauthorized(token: str) -> None:
    """A header's raw non-UTF-8 bytes arrive as surrogates; PyJWT cannot even encode them."""
    with pytest.raises(UnauthorizedError, match="not ASCII"):
        verify(token, SECRET)
    with pytest.raises(UnauthorizedError, match="not ASCII"):
        TokenCache(SECRET).verify(token)
