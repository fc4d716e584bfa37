"""The error hierarchy: every class carries its own policy.

Each error knows whether retrying can help and which HTTP status and
machine-readable code it maps to, so one handler at the edge can turn any of
them into a response (the h11/aiokafka habit). Adapters translate their
library's exceptions into these, chaining with ``from``.
"""

from __future__ import annotations

__all__ = [
    "ClockDriftError",
    "ConflictError",
    "InvalidEventError",
    "InvalidTokenError",
    "MemsyncError",
    "PayloadTooLargeError",
    "PreconditionFailedError",
    "ValidationError",
]


class MemsyncError(Exception):
    """Base of every error memsync raises on purpose."""

    status: int = 500
    code: str = "internal"
    retriable: bool = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ValidationError(MemsyncError):
    """A value is well-formed JSON but breaks the schema or a limit."""

    status = 422
    code = "invalid"


class InvalidEventError(MemsyncError):
    """Bytes that cannot be decoded as the wire type they claim to be."""

    status = 400
    code = "malformed"


class PayloadTooLargeError(MemsyncError):
    """A payload or a field is over its size limit."""

    status = 413
    code = "too_large"


class InvalidTokenError(MemsyncError):
    """A version, session or cursor token that is malformed or was tampered with."""

    status = 400
    code = "bad_token"


class PreconditionFailedError(MemsyncError):
    """A conditional write whose precondition does not hold."""

    status = 412
    code = "precondition_failed"


class ConflictError(MemsyncError):
    """The write conflicts with the current state (e.g. an id that already exists)."""

    status = 409
    code = "conflict"


class ClockDriftError(MemsyncError):
    """A remote timestamp is further ahead of the local wall clock than allowed."""

    status = 422
    code = "clock_drift"
