"""Errors of the event log adapter (:mod:`replication.log`).

The adapter translates every aiokafka and socket exception into one of these,
in one place, chaining the original with ``from``.
"""

from __future__ import annotations

from replication.errors import MemsyncError

__all__ = ["LogError", "LogRecordRefusedError", "LogUnavailableError"]


class LogError(MemsyncError):
    """The log refused an operation in a way retrying will not fix."""

    status = 500
    code = "log_error"


class LogUnavailableError(LogError):
    """The log cannot be reached or did not answer in time; retry later."""

    status = 503
    code = "log_unavailable"
    retriable = True


class LogRecordRefusedError(LogError):
    """The log refuses this record for good, whenever it is sent (it is too large).

    Only what the broker or the producer says about the record itself; any
    other refusal may be the broker's state of the moment (a broker just
    restarted answers ``UnknownError``) and is never taken as final.
    """

    status = 413
    code = "too_large"
