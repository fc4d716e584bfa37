"""The client's error hierarchy: one class per HTTP answer, carrying retry policy.

Every error the SDK raises is a :class:`MemsyncClientError` with the HTTP
``status`` (0 for transport failures), the server's error ``code`` and
``message``, and ``retry_after`` (seconds) when the server sent
``Retry-After``. ``retriable`` says whether the same request may succeed
later unchanged; the SDK retries such errors itself on idempotent calls.
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "AuthenticationError",
    "BadRequestError",
    "ConflictError",
    "MemsyncClientError",
    "NotFoundError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "PreconditionFailedError",
    "RateLimitedError",
    "ResyncRequiredError",
    "ServerError",
    "SubscriptionError",
    "TransportError",
    "UnavailableError",
    "UnsupportedMediaTypeError",
    "ValidationError",
    "error_for_status",
]


class MemsyncClientError(Exception):
    """An error answer from a gateway, or a failure to reach one."""

    status: int = 0
    retriable: ClassVar[bool] = False

    def __init__(
        self,
        message: str,
        *,
        code: str = "",
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.retry_after = retry_after
        if status is not None:
            self.status = status

    def __str__(self) -> str:
        if not self.code:
            return self.message
        prefix = f"{self.status} {self.code}" if self.status else self.code
        return f"{prefix}: {self.message}"


class TransportError(MemsyncClientError):
    """The gateway could not be reached or the connection broke (status 0).

    ``sent`` is False when the request certainly never left this process
    (the connection could not be opened), so even a non-idempotent request
    may be sent again.
    """

    retriable = True

    def __init__(self, message: str, *, sent: bool) -> None:
        super().__init__(message, code="transport")
        self.sent = sent


class BadRequestError(MemsyncClientError):
    """400: the request is malformed."""

    status = 400


class AuthenticationError(MemsyncClientError):
    """401: the token is missing, invalid or expired."""

    status = 401


class PermissionDeniedError(MemsyncClientError):
    """403: the token does not allow this tenant, user, scope or channel."""

    status = 403


class NotFoundError(MemsyncClientError):
    """404: the memory is absent or deleted."""

    status = 404


class ConflictError(MemsyncClientError):
    """409: e.g. a create with an id that already exists."""

    status = 409


class ResyncRequiredError(MemsyncClientError):
    """410: the cursor's history is gone; a full resync is needed."""

    status = 410


class PreconditionFailedError(MemsyncClientError):
    """412: the ``If-Match`` version is not valid here."""

    status = 412


class PayloadTooLargeError(MemsyncClientError):
    """413: the body is over the gateway's limit."""

    status = 413


class UnsupportedMediaTypeError(MemsyncClientError):
    """415: the body was not sent as JSON."""

    status = 415


class ValidationError(MemsyncClientError):
    """422: the body breaks a rule (kind/policy mismatch, limits, ...)."""

    status = 422


class RateLimitedError(MemsyncClientError):
    """429: slow down; ``retry_after`` says for how long."""

    status = 429
    retriable = True


class UnavailableError(MemsyncClientError):
    """503: the region is overloaded, degraded, or has not applied the session's writes yet."""

    status = 503
    retriable = True


class ServerError(MemsyncClientError):
    """Any other 5xx answer."""

    status = 500
    retriable = True


class SubscriptionError(MemsyncClientError):
    """A subscription ended for good: what :meth:`Subscription.wait` raises.

    ``code``: the server's (``forbidden``, ``bad_request``, ``bad_token``),
    ``handshake`` (refused, with the HTTP ``status``), ``gave_up``
    (``max_attempts`` consecutive failed attempts; the last one is
    ``__cause__``), ``failed`` (an unexpected error, as ``__cause__``), or that
    of the error answer that ended a resync (the typed error as ``__cause__``).
    """


_BY_STATUS: dict[int, type[MemsyncClientError]] = {
    cls.status: cls
    for cls in (
        BadRequestError,
        AuthenticationError,
        PermissionDeniedError,
        NotFoundError,
        ConflictError,
        ResyncRequiredError,
        PreconditionFailedError,
        PayloadTooLargeError,
        UnsupportedMediaTypeError,
        ValidationError,
        RateLimitedError,
        UnavailableError,
    )
}


def error_for_status(
    status: int, code: str, message: str, retry_after: float | None = None
) -> MemsyncClientError:
    """The typed error for an error answer."""
    cls = _BY_STATUS.get(status)
    if cls is None:
        cls = ServerError if status >= 500 else MemsyncClientError
    return cls(message or f"HTTP {status}", code=code, status=status, retry_after=retry_after)
