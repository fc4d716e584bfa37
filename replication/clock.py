"""Hybrid logical clock (Kulkarni et al.), as one 64-bit integer.

A timestamp packs wall milliseconds in the high bits and a logical counter in
the low 16 bits, so timestamps compare as plain integers and fit every wire
format. The clock never goes backwards — not when the wall clock steps back,
not across restarts (the caller persists :attr:`HybridClock.high_water` and
passes it back to the constructor) — and refuses remote timestamps further
ahead of the local wall clock than ``max_drift_ms``, so one bad clock cannot
drag a region into the future.

The clock does no I/O: the wall clock is a function passed in.
"""

from __future__ import annotations

from collections.abc import Callable

from replication.errors import ClockDriftError

__all__ = [
    "LOGICAL_BITS",
    "HybridClock",
    "logical_of",
    "pack",
    "physical_ms",
    "receive",
    "tick",
]

LOGICAL_BITS = 16
_LOGICAL_MASK = (1 << LOGICAL_BITS) - 1


def pack(wall_ms: int, logical: int = 0) -> int:
    """The timestamp for a wall time and logical counter."""
    return (wall_ms << LOGICAL_BITS) | (logical & _LOGICAL_MASK)


def physical_ms(ts: int) -> int:
    """The wall-clock milliseconds part of a timestamp."""
    return ts >> LOGICAL_BITS


def logical_of(ts: int) -> int:
    """The logical part of a timestamp."""
    return ts & _LOGICAL_MASK


def tick(last: int, wall_ms: int) -> int:
    """The timestamp of a local event, strictly after ``last``."""
    return max(pack(wall_ms), last + 1)


def receive(last: int, remote: int, wall_ms: int, max_drift_ms: int) -> int:
    """The timestamp after seeing ``remote``, strictly after both it and ``last``.

    Raises :class:`ClockDriftError` when ``remote`` is more than
    ``max_drift_ms`` ahead of ``wall_ms``.
    """
    ahead = physical_ms(remote) - wall_ms
    if ahead > max_drift_ms:
        raise ClockDriftError(
            f"remote timestamp is {ahead} ms ahead of the local clock "
            f"(max drift {max_drift_ms} ms); check NTP on both hosts"
        )
    return max(pack(wall_ms), last + 1, remote + 1)


class HybridClock:
    """A hybrid logical clock over an injected wall clock (milliseconds)."""

    __slots__ = ("_last", "_max_drift_ms", "_wall_ms")

    def __init__(
        self,
        wall_ms: Callable[[], int],
        *,
        high_water: int = 0,
        max_drift_ms: int = 60_000,
    ) -> None:
        self._wall_ms = wall_ms
        self._last = high_water
        self._max_drift_ms = max_drift_ms

    @property
    def high_water(self) -> int:
        """The latest timestamp issued or observed; persist it to survive restarts."""
        return self._last

    def now(self) -> int:
        """A new timestamp for a local event."""
        self._last = tick(self._last, self._wall_ms())
        return self._last

    def observe(self, remote: int) -> int:
        """Advance past a timestamp seen on a remote event."""
        self._last = receive(self._last, remote, self._wall_ms(), self._max_drift_ms)
        return self._last
