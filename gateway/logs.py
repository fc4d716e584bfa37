"""Structured logging: JSON lines on stderr, with region bound as context."""

from __future__ import annotations

import logging
import sys
from typing import TextIO

import structlog

__all__ = ["configure_logging"]


def configure_logging(level: str = "info", stream: TextIO | None = None, **context: str) -> None:
    """Configure structlog (and stdlib logging through it) for one process."""
    out = stream or sys.stderr
    lvl = getattr(logging, level.upper(), logging.INFO)
    logging.basicConfig(
        level=max(lvl, logging.WARNING), stream=out, format="%(message)s", force=True
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.bind_contextvars(**context)
