"""Bearer tokens (HS256 JWT) and what their claims allow (I7).

Claims (API.md): ``sub`` (agent id), ``tenant``, ``users`` (user ids the agent
may act for, or ``["*"]``), ``scope`` (subset of read, write, subscribe,
admin), ``exp``. A token never reaches outside its tenant, and never touches a
user outside ``users``.
"""

from __future__ import annotations

import re
import time
from collections import OrderedDict
from collections.abc import Iterable

import jwt
import msgspec

from gateway.errors import ForbiddenError, UnauthorizedError
from replication.limits import ID_PATTERN

__all__ = ["SCOPES", "Claims", "TokenCache", "mint", "verify"]

SCOPES = ("read", "write", "subscribe", "admin", "replicate")
_ID = re.compile(ID_PATTERN)


class Claims(msgspec.Struct, frozen=True, kw_only=True):
    """A verified token's claims."""

    sub: str
    tenant: str
    users: tuple[str, ...]
    scope: frozenset[str]
    exp: int

    @property
    def all_users(self) -> bool:
        """Whether the token may act for every user of its tenant."""
        return "*" in self.users

    def require(self, scope: str) -> None:
        """:class:`ForbiddenError` unless the token has ``scope``."""
        if scope not in self.scope:
            raise ForbiddenError(f"this token lacks the {scope!r} scope")

    def may_act_for(self, user_id: str) -> bool:
        """Whether the token may act for ``user_id``."""
        return self.all_users or user_id in self.users

    def require_user(self, user_id: str) -> None:
        """:class:`ForbiddenError` unless the token may act for ``user_id``."""
        if not self.may_act_for(user_id):
            raise ForbiddenError(f"this token may not act for user {user_id!r}")

    def require_tenant(self, tenant_id: str) -> None:
        """:class:`ForbiddenError` unless ``tenant_id`` is the token's tenant."""
        if tenant_id != self.tenant:
            raise ForbiddenError("this token belongs to another tenant")

    def user_filter(self, user_id: str | None) -> tuple[str, ...] | None:
        """The users a read may see: one requested user, or every allowed one."""
        if user_id is not None:
            self.require_user(user_id)
            return (user_id,)
        return None if self.all_users else self.users


def mint(
    secret: bytes,
    *,
    agent: str,
    tenant: str,
    users: Iterable[str],
    scope: Iterable[str],
    ttl: float,
    now: float | None = None,
) -> str:
    """A signed token for these claims."""
    scopes = sorted(set(scope))
    bad = [s for s in scopes if s not in SCOPES]
    if bad:
        raise ValueError(f"unknown scope {bad[0]!r}: expected some of {', '.join(SCOPES)}")
    issued = int(now if now is not None else time.time())
    payload = {
        "sub": agent,
        "tenant": tenant,
        "users": list(users),
        "scope": scopes,
        "iat": issued,
        "exp": issued + int(ttl),
    }
    return jwt.encode(payload, secret, algorithm="HS256")


def _scope(raw: object) -> frozenset[str]:
    if isinstance(raw, str):
        items = raw.replace(",", " ").split()
    elif isinstance(raw, list) and all(isinstance(s, str) for s in raw):
        items = list(raw)
    else:
        raise UnauthorizedError("token claim 'scope' must be a list of strings")
    return frozenset(s for s in items if s in SCOPES)


class TokenCache:
    """Recently verified tokens (bounded LRU): a hit skips the signature check.

    Tokens are immutable and signed, so a token verified once stays genuine;
    only its expiry is checked again on every hit.
    """

    def __init__(self, secret: bytes, max_entries: int = 10_000) -> None:
        self._secret = secret
        self._max = max_entries
        self._claims: OrderedDict[str, Claims] = OrderedDict()

    def verify(self, token: str, now: float | None = None) -> Claims:
        """Like :func:`verify`, cached."""
        claims = self._claims.get(token)
        if claims is not None:
            if claims.exp <= (time.time() if now is None else now):
                del self._claims[token]
                raise UnauthorizedError("token has expired: mint a new one (memsync token)")
            self._claims.move_to_end(token)
            return claims
        claims = verify(token, self._secret)
        self._claims[token] = claims
        if len(self._claims) > self._max:
            self._claims.popitem(last=False)
        return claims


def verify(token: str, secret: bytes) -> Claims:
    """The claims of a genuine, unexpired token; :class:`UnauthorizedError` otherwise."""
    if not token.isascii():  # PyJWT cannot encode the surrogates of a header's raw bytes
        raise UnauthorizedError(
            "invalid token: it holds characters that are not ASCII, so it is not a token "
            "this cluster minted; send it exactly as 'memsync token' printed it"
        )
    try:
        raw = jwt.decode(
            token,
            secret,
            algorithms=["HS256"],
            options={"require": ["exp", "sub", "tenant"]},
        )
    except jwt.ExpiredSignatureError as exc:
        raise UnauthorizedError("token has expired: mint a new one (memsync token)") from exc
    except jwt.InvalidTokenError as exc:
        raise UnauthorizedError(f"invalid token: {exc}") from exc
    sub, tenant, users = raw.get("sub"), raw.get("tenant"), raw.get("users", [])
    if not isinstance(sub, str) or not sub:
        raise UnauthorizedError("token claim 'sub' must be a non-empty string")
    if not isinstance(tenant, str) or not _ID.match(tenant):
        raise UnauthorizedError("token claim 'tenant' must be a valid id")
    if not isinstance(users, list) or not all(isinstance(u, str) for u in users):
        raise UnauthorizedError("token claim 'users' must be a list of user ids")
    return Claims(
        sub=sub[:128],
        tenant=tenant,
        users=tuple(users),
        scope=_scope(raw.get("scope", [])),
        exp=int(raw["exp"]),
    )
