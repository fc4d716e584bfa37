"""Errors of the fault proxy, each carrying the HTTP status Toxiproxy answers with.

The messages are the real Toxiproxy's (``api.go``), so clients that match on
them keep working; :mod:`chaos.toxiproxy_api` renders any :class:`ApiError`
as ``{"error": message, "status": status}``.
"""

from __future__ import annotations

__all__ = [
    "ApiError",
    "BadRequestError",
    "ConflictError",
    "NotFoundError",
    "ProxyStartError",
    "bad_body",
    "invalid_stream",
    "invalid_toxic_type",
    "missing_field",
    "proxy_exists",
    "proxy_not_found",
    "toxic_exists",
    "toxic_not_found",
]


class ApiError(Exception):
    """An error the API reports to its caller; ``status`` is the HTTP status."""

    status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequestError(ApiError):
    """The request body or a field in it is invalid."""

    status = 400


class NotFoundError(ApiError):
    """No proxy or toxic by that name."""

    status = 404


class ConflictError(ApiError):
    """A proxy or toxic by that name already exists."""

    status = 409


class ProxyStartError(ApiError):
    """The listener could not be bound (address in use, permission denied)."""

    status = 500


def bad_body(detail: str) -> BadRequestError:
    return BadRequestError(f"bad request body: {detail}")


def missing_field(field: str) -> BadRequestError:
    return BadRequestError(f"missing required field: {field}")


def invalid_stream() -> BadRequestError:
    return BadRequestError("stream was invalid, can be either upstream or downstream")


def invalid_toxic_type() -> BadRequestError:
    return BadRequestError("invalid toxic type")


def proxy_not_found() -> NotFoundError:
    return NotFoundError("proxy not found")


def proxy_exists() -> ConflictError:
    return ConflictError("proxy already exists")


def toxic_not_found() -> NotFoundError:
    return NotFoundError("toxic not found")


def toxic_exists() -> ConflictError:
    return ConflictError("toxic already exists")
