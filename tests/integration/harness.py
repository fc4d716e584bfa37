"""A real gateway in-process: real Tansu broker, real Qdrant Edge on a temp dir."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient, TestServer

from deploy.tansu import TansuBroker
from gateway.app import create_app
from gateway.auth import mint
from gateway.keys import RUNTIME
from gateway.runtime import Runtime
from gateway.settings import HttpSettings, KafkaSettings, Limits, Settings, StoreSettings
from replication.tasks import pending_stacks

SECRET = "integration-test-secret-0123456789abcdef"
STOP_WITHIN_S = 90.0  # aiohttp alone may wait 60 s for handlers before cancelling them


def settings_for(
    data_dir: Path,
    bootstrap: str,
    region: str = "test",
    *,
    backend: str = "edge-process",
    **limits: Any,
) -> Settings:
    """Gateway settings for tests: small segments, small vectors, generous limits."""
    return Settings(
        region=region,
        data_dir=data_dir,
        secret=SECRET,
        http=HttpSettings(port=0),
        kafka=KafkaSettings(
            bootstrap=bootstrap, partitions=4, segment_ms=2_000, grace_ms=500,
            request_timeout_ms=1_500,
        ),
        store=StoreSettings(backend=backend, vector_dim=8),
        limits=Limits(
            **{"journal_ack_interval": 0.2, "max_body_bytes": 256 * 1024, **limits}
        ),
    )  # fmt: skip


def token(
    tenant: str = "acme",
    users: tuple[str, ...] = ("*",),
    scope: tuple[str, ...] = ("read", "write", "subscribe"),
    agent: str = "agent-1",
    ttl: float = 600,
) -> str:
    """A bearer token signed with the test secret."""
    return mint(SECRET.encode(), agent=agent, tenant=tenant, users=users, scope=scope, ttl=ttl)


async def eventually(
    check: Callable[[], Awaitable[bool]], *, within: float = 10.0, what: str = "condition"
) -> None:
    """Wait until ``check()`` is true, failing with ``what`` after ``within`` seconds."""
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            # Where the gateway's own (named) tasks wait: what a flaky run needs.
            named = {k: v for k, v in pending_stacks().items() if not k.startswith("Task-")}
            waits = "\n".join(f"--- {k}\n{v}" for k, v in sorted(named.items()))
            raise AssertionError(f"timed out after {within} s waiting for {what}\n{waits}")
        await asyncio.sleep(0.02)


@dataclass
class Gateway:
    """One running gateway and its HTTP client."""

    data_dir: Path
    broker: TansuBroker
    limits: dict[str, Any] = field(default_factory=dict)
    client: TestClient[Any, Any] | None = None
    default_token: str = field(default_factory=token)
    # When set, every request carries the latest X-Memsync-Session seen (like the SDK).
    sticky_session: bool = False
    session: str = ""
    region: str = "test"
    store_backend: str = "edge-process"

    async def start(self) -> Gateway:
        """Start (or restart) the gateway on the same data directory."""
        settings = settings_for(
            self.data_dir, self.broker.bootstrap, self.region, backend=self.store_backend,
            **self.limits,
        )  # fmt: skip
        app = create_app(settings)
        self.client = TestClient(TestServer(app))
        await self.client.start_server()
        return self

    async def stop(self, within: float = STOP_WITHIN_S) -> None:
        """Stop the gateway (the broker keeps running); a hang fails naming what waits."""
        if self.client is not None:
            client, self.client = self.client, None
            try:
                async with asyncio.timeout(within):
                    await client.close()
            except TimeoutError:
                stacks = "\n".join(f"--- {k}\n{v}" for k, v in pending_stacks().items())
                raise AssertionError(
                    f"the gateway did not stop within {within} s; pending tasks:\n{stacks}"
                ) from None

    @property
    def runtime(self) -> Runtime:
        """The gateway's runtime (for waiting on background work)."""
        assert self.client is not None
        return self.client.app[RUNTIME]  # type: ignore[index]

    async def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        data: bytes | str | None = None,
        token_: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[ClientResponse, Any]:
        """Send a request; the response and its decoded JSON body."""
        assert self.client is not None
        h = {"Authorization": f"Bearer {token_ or self.default_token}"}
        if json is not None or data is not None:
            h["Content-Type"] = "application/json"
        if self.sticky_session and self.session:
            h["X-Memsync-Session"] = self.session
        h.update(headers or {})
        resp = await self.client.request(method, path, json=json, data=data, headers=h)
        if self.sticky_session and "X-Memsync-Session" in resp.headers:
            self.session = resp.headers["X-Memsync-Session"]
        body = await resp.json() if resp.content_type == "application/json" else await resp.text()
        return resp, body

    async def applied(self) -> int:
        """Events the applier has applied so far."""
        return self.runtime.applier.applied_total
