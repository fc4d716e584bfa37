"""The fault proxy's bounds: one frozen object, built once and passed down."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Limits"]


@dataclass(frozen=True, slots=True)
class Limits:
    """Buffer sizes and timeouts (seconds as floats).

    Per link direction at most ``chunk_size * (queue_chunks + 2)`` bytes sit in
    the proxy: one chunk being read, ``queue_chunks`` queued, one in the toxic
    chain. Writes wait until the kernel took every byte (no user-space backlog).
    """

    chunk_size: int = 32 * 1024
    queue_chunks: int = 16
    connect_timeout: float = 5.0
    close_timeout: float = 5.0
    max_body_bytes: int = 1024 * 1024

    def __post_init__(self) -> None:
        for name in ("chunk_size", "queue_chunks", "max_body_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"Limits.{name} must be at least 1")
        for name in ("connect_timeout", "close_timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"Limits.{name} must be positive")
