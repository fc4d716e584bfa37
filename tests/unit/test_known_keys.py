"""The known-keys filter: never a false "no", about 1 % false "maybe" at capacity."""

from __future__ import annotations

import pytest

from gateway.known_keys import KnownKeys


def test_every_added_key_is_known_and_few_others_are() -> None:
    known = KnownKeys(capacity=20_000, error=0.01)
    added = [f"t{i % 7}/m-{i}" for i in range(20_000)]
    for key in added:
        known.add(key)
    assert all(key in known for key in added)
    others = [f"t{i % 7}/other-{i}" for i in range(20_000)]
    false_maybe = sum(key in known for key in others) / len(others)
    assert false_maybe < 0.02, false_maybe
    assert known.size_bytes < 20_000 * 10 / 8 + 8  # ~9.6 bits per key at 1 %


def test_an_empty_filter_knows_nothing_and_bad_sizes_are_refused() -> None:
    known = KnownKeys(capacity=10)
    assert "t/m" not in known
    assert 42 not in known
    with pytest.raises(ValueError, match="capacity"):
        KnownKeys(capacity=0)
    with pytest.raises(ValueError, match="error"):
        KnownKeys(error=1.5)
