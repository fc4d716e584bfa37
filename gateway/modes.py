"""Degraded modes in effect, reported by ``/readyz``, metrics and headers."""

from __future__ import annotations

from gateway.metrics import Metrics

__all__ = ["MODES", "Modes"]

MODES = ("log_unavailable", "store_unavailable", "overload", "remote_unreachable")


class Modes:
    """The set of degraded modes in effect (``normal`` when none)."""

    def __init__(self, metrics: Metrics | None = None) -> None:
        self._on: set[str] = set()
        self._metrics = metrics
        if metrics is not None:
            for mode in MODES:
                metrics.mode.labels(mode).set(0)

    def set(self, mode: str, on: bool) -> None:
        """Turn a mode on or off."""
        if on:
            self._on.add(mode)
        else:
            self._on.discard(mode)
        if self._metrics is not None:
            self._metrics.mode.labels(mode).set(1 if on else 0)

    def active(self) -> list[str]:
        """The modes in effect, sorted."""
        return sorted(self._on)

    def current(self) -> str:
        """``normal``, or the modes in effect joined with commas."""
        return ",".join(sorted(self._on)) or "normal"
