"""Fixtures for the cluster tier: three real regions in one process."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.cluster.harness import Cluster


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    """us-east, eu-west, ap-south: brokers, gateways, proxies and six links."""
    running = await Cluster(tmp_path).start()
    try:
        yield running
    finally:
        await running.stop()
