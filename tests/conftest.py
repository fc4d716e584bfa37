"""Shared test configuration: tiers are markers, applied by directory."""

from __future__ import annotations

from pathlib import Path

import pytest

_TIERS = {"unit", "property", "integration", "cluster", "chaos"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test with the tier its directory names."""
    for item in items:
        parts = set(Path(str(item.fspath)).parts)
        for tier in _TIERS & parts:
            item.add_marker(getattr(pytest.mark, tier))
