"""Opaque, URL-safe, tamper-evident tokens (version, session, cursor).

A token is ``v1.<payload>.<mac>``: the payload is a base64url msgpack value,
the mac a truncated keyed BLAKE2b over it. Tokens carry no secret, only
integrity: a client cannot forge a context that claims to have seen writes it
never read. Every region of a cluster shares the key, so a token minted in
one region is accepted in all of them.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import TypeVar

import msgspec

from replication.dvv import DotContext
from replication.errors import InvalidTokenError, PreconditionFailedError

__all__ = [
    "MAX_TOKEN_CHARS",
    "Version",
    "decode_context",
    "decode_version",
    "encode_context",
    "encode_version",
    "seal",
    "unseal",
]

MAX_TOKEN_CHARS = 8192
_PREFIX = "v1"
_MAC_BYTES = 12
T = TypeVar("T")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(key: bytes, purpose: str, payload: bytes) -> bytes:
    h = hashlib.blake2b(payload, digest_size=_MAC_BYTES, key=key[:64], person=purpose.encode()[:16])
    return h.digest()


def seal(value: object, key: bytes, purpose: str) -> str:
    """A token carrying ``value`` (any msgspec-encodable value)."""
    payload = msgspec.msgpack.encode(value)
    return f"{_PREFIX}.{_b64(payload)}.{_b64(_mac(key, purpose, payload))}"


def unseal(token: str, key: bytes, purpose: str, type_: type[T]) -> T:
    """The value inside a token; :class:`InvalidTokenError` when it is not genuine."""
    if len(token) > MAX_TOKEN_CHARS:
        raise InvalidTokenError(f"{purpose} token is longer than {MAX_TOKEN_CHARS} characters")
    parts = token.split(".")
    if len(parts) != 3 or parts[0] != _PREFIX:
        raise InvalidTokenError(f"{purpose} token is malformed: expected v1.<payload>.<mac>")
    try:
        payload = _unb64(parts[1])
        mac = _unb64(parts[2])
    except ValueError as exc:
        raise InvalidTokenError(f"{purpose} token is not base64url") from exc
    if not hmac.compare_digest(mac, _mac(key, purpose, payload)):
        raise InvalidTokenError(
            f"{purpose} token failed its integrity check: it was altered or minted elsewhere"
        )
    try:
        return msgspec.msgpack.decode(payload, type=type_)
    except msgspec.DecodeError as exc:
        raise InvalidTokenError(f"{purpose} token payload is not valid: {exc}") from exc


def encode_context(ctx: DotContext, key: bytes) -> str:
    """The version token (``ETag`` / ``If-Match``) for a causal context."""
    return seal(ctx, key, "version")


def decode_context(token: str, key: bytes) -> DotContext:
    """The causal context inside a version token."""
    return unseal(token, key, "version", DotContext)


class Version(msgspec.Struct, frozen=True, array_like=True):
    """What a memory's ``ETag`` names: that memory (its key) and the causal context read.

    Bound to its memory, so an ``If-Match`` cannot carry another memory's
    context, which could cover versions of this one its writer never saw (I4).
    """

    key: str
    context: DotContext


_VERSION = "memory-version"


def encode_version(memory_key: str, ctx: DotContext, key: bytes) -> str:
    """The version token (``ETag`` / ``If-Match``) of one memory's causal context."""
    return seal(Version(memory_key, ctx), key, _VERSION)


def decode_version(token: str, key: bytes) -> Version:
    """The memory and context inside a version token.

    :class:`InvalidTokenError` (400) when it is not a genuine token;
    :class:`PreconditionFailedError` (412) for a genuine one minted before
    version tokens named their memory, which cannot be checked against it.
    """
    try:
        return unseal(token, key, _VERSION, Version)
    except InvalidTokenError as exc:
        try:
            decode_context(token, key)
        except InvalidTokenError:
            raise exc from None
        raise PreconditionFailedError(
            "this version token predates tokens that name their memory; "
            "read the memory again and send its current ETag"
        ) from None
