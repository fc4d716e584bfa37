"""The collector's hook: pauses by generation, and the cyclic garbage each collection freed."""

from __future__ import annotations

import gc

from gateway.metrics import Metrics
from gateway.serve import _time_gc


class _Node:
    def __init__(self) -> None:
        self.other: _Node | None = None


def _value(metrics: Metrics, name: str, generation: str) -> float:
    value = metrics.registry.get_sample_value(name, {"generation": generation})
    return value or 0.0


def test_a_full_collection_counts_its_pause_and_the_cycles_it_freed() -> None:
    metrics = Metrics("test")
    hook = _time_gc(metrics)
    try:
        gc.collect()  # start from nothing pending
        before = _value(metrics, "memsync_gc_collected_objects_total", "2")
        pauses = _value(metrics, "memsync_gc_pause_seconds_count", "2")
        for _ in range(100):  # 100 two-node cycles, unreachable at once
            a, b = _Node(), _Node()
            a.other, b.other = b, a
        del a, b
        gc.collect()
        freed = _value(metrics, "memsync_gc_collected_objects_total", "2") - before
        assert freed >= 200  # each node, plus its __dict__ where not inlined
        assert _value(metrics, "memsync_gc_pause_seconds_count", "2") == pauses + 1
    finally:
        gc.callbacks.remove(hook)
