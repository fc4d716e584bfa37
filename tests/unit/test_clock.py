"""The hybrid logical clock."""

from __future__ import annotations

import pytest

from replication import clock
from replication.clock import HybridClock
from replication.errors import ClockDriftError


def test_timestamps_strictly_increase_when_the_wall_clock_stands_still() -> None:
    c = HybridClock(lambda: 1000)
    stamps = [c.now() for _ in range(5)]
    assert stamps == sorted(set(stamps))
    assert clock.physical_ms(stamps[0]) == 1000


def test_wall_clock_stepping_back_never_moves_time_back() -> None:
    wall = [5000]
    c = HybridClock(lambda: wall[0])
    before = c.now()
    wall[0] = 1000
    assert c.now() > before


def test_restart_from_high_water_stays_monotonic() -> None:
    c = HybridClock(lambda: 5000)
    last = max(c.now() for _ in range(3))
    restarted = HybridClock(lambda: 10, high_water=c.high_water)
    assert restarted.now() > last


def test_observing_a_remote_timestamp_moves_past_it() -> None:
    c = HybridClock(lambda: 1000, max_drift_ms=500)
    remote = clock.pack(1400, 7)
    assert c.observe(remote) > remote
    assert c.now() > remote


def test_remote_timestamp_beyond_max_drift_is_refused() -> None:
    c = HybridClock(lambda: 1000, max_drift_ms=500)
    with pytest.raises(ClockDriftError, match="ahead of the local clock"):
        c.observe(clock.pack(2000))


def test_logical_overflow_carries_into_milliseconds() -> None:
    ts = clock.pack(10, (1 << clock.LOGICAL_BITS) - 1)
    nxt = clock.tick(ts, 10)
    assert nxt > ts
    assert clock.physical_ms(nxt) == 11
