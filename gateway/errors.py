"""Gateway errors: the core's hierarchy plus what only the edge can say.

Each class carries its HTTP status and code; :mod:`gateway.http_errors`
turns any :class:`MemsyncError` into the one JSON error shape of API.md.
"""

from __future__ import annotations

from replication.errors import (
    ConflictError,
    InvalidEventError,
    InvalidTokenError,
    MemsyncError,
    PayloadTooLargeError,
    PreconditionFailedError,
    ValidationError,
)

__all__ = [
    "BadRequestError",
    "ConflictError",
    "ForbiddenError",
    "InvalidEventError",
    "InvalidTokenError",
    "MemsyncError",
    "NotFoundError",
    "OverloadedError",
    "PayloadTooLargeError",
    "PreconditionFailedError",
    "RateLimitedError",
    "UnauthorizedError",
    "UnavailableError",
    "UnsupportedMediaTypeError",
    "ValidationError",
]


class BadRequestError(MemsyncError):
    """The request is malformed (not JSON, bad query parameter, bad header)."""

    status = 400
    code = "bad_request"


class UnauthorizedError(MemsyncError):
    """No valid bearer token."""

    status = 401
    code = "unauthorized"


class ForbiddenError(MemsyncError):
    """The token is valid but its claims do not allow this."""

    status = 403
    code = "forbidden"


class NotFoundError(MemsyncError):
    """No such memory (or not visible to this token)."""

    status = 404
    code = "not_found"


class UnsupportedMediaTypeError(MemsyncError):
    """The body is not ``application/json``."""

    status = 415
    code = "unsupported_media_type"


class _RetryAfter(MemsyncError):
    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RateLimitedError(_RetryAfter):
    """A token bucket is empty."""

    status = 429
    code = "rate_limited"
    retriable = True


class OverloadedError(_RetryAfter):
    """Load is being shed; come back later."""

    status = 503
    code = "overloaded"
    retriable = True


class UnavailableError(_RetryAfter):
    """A dependency the request needs is down."""

    status = 503
    code = "unavailable"
    retriable = True
