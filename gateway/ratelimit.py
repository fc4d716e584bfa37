"""Token buckets per agent and per tenant (429 + ``Retry-After``).

Buckets live in a bounded LRU map, so a flood of distinct agent ids cannot
grow memory: an evicted bucket comes back full, which only ever errs towards
admitting a request.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

from gateway.errors import RateLimitedError

__all__ = ["RateLimiter", "TokenBucket"]


class TokenBucket:
    """``rate`` tokens per second, holding at most ``burst``."""

    __slots__ = ("_burst", "_rate", "_stamp", "_tokens")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self._rate = rate
        self._burst = burst
        self._tokens = burst
        self._stamp = now

    def take(self, now: float, cost: float = 1.0) -> float:
        """0.0 if admitted, else the seconds until ``cost`` tokens are there."""
        self._tokens = min(self._burst, self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now
        if self._tokens >= cost:
            self._tokens -= cost
            return 0.0
        return (cost - self._tokens) / self._rate


class RateLimiter:
    """Admits a write only when both its agent's and its tenant's bucket allow it."""

    def __init__(
        self,
        *,
        agent_rate: float,
        agent_burst: float,
        tenant_rate: float,
        tenant_burst: float,
        clock: Callable[[], float],
        max_buckets: int = 100_000,
    ) -> None:
        self._agent = (agent_rate, agent_burst)
        self._tenant = (tenant_rate, tenant_burst)
        self._clock = clock
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()
        self._max = max_buckets

    def _bucket(self, key: str, rate: float, burst: float, now: float) -> TokenBucket:
        b = self._buckets.get(key)
        if b is None:
            b = TokenBucket(rate, burst, now)
            self._buckets[key] = b
            if len(self._buckets) > self._max:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
        return b

    def check(self, tenant: str, agent: str) -> None:
        """:class:`RateLimitedError` (with ``retry_after``) when over a limit."""
        now = self._clock()
        wait = self._bucket(f"t:{tenant}", *self._tenant, now).take(now)
        if wait:
            raise RateLimitedError(
                f"tenant {tenant!r} is over its write rate limit", retry_after=wait
            )
        wait = self._bucket(f"a:{tenant}/{agent}", *self._agent, now).take(now)
        if wait:
            raise RateLimitedError(
                f"agent {agent!r} is over its write rate limit", retry_after=wait
            )
