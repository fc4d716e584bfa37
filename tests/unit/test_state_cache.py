"""The gateway's state cache: bounded by the bytes it really holds."""

from __future__ import annotations

import gc
import tracemalloc

import pytest

from gateway.cache import StateCache
from replication.state import MemoryState, decode_state, encode_state
from replication.testing import Replica


def _states(n: int, content: int) -> list[bytes]:
    r = Replica("r.1")
    out = []
    for i in range(n):
        event = r.write(f"m{i:06d}", "fact", "create", user=f"u{i % 50}", content="x" * content)
        assert event is not None
        out.append(encode_state(r.states[event.key]))
    return out


@pytest.mark.parametrize("content", [20, 200, 5_000])
def test_the_bytes_held_stay_near_the_bound(content: int) -> None:
    bound = 2 * 1024 * 1024
    encoded = _states(3 * bound // (content + 1_500), content)  # 3x what fits
    cache = StateCache(bound)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for raw in encoded:
            state: MemoryState = decode_state(raw)
            cache.put(state, len(raw))
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert cache.size_bytes <= bound
    assert len(cache) < len(encoded)  # it evicted
    # What the process really holds for the cached states, within 25 % of the bound.
    assert held <= 1.25 * bound, (held, bound, len(cache))
