"""Token buckets per agent and per tenant (429 + ``Retry-After``).

A write is admitted only when both its agent's and its tenant's bucket hold
a token, and only then is a token taken from each: a refused write costs
nothing, so an agent over its own limit cannot drain its tenant's bucket for
the tenant's other agents.

Buckets live in two bounded LRU maps, one for agents and one for tenants, so
a flood of distinct agent ids neither grows memory nor evicts a tenant's
bucket. An evicted bucket comes back full, which only ever errs towards
admitting a request.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable

from gateway.errors import RateLimitedError

__all__ = ["RateLimiter", "TokenBucket", "check_rate"]


def check_rate(what: str, rate: float, burst: float) -> None:
    """:class:`ValueError` naming ``what`` unless ``rate`` > 0 and ``burst`` ≥ 1 (both finite)."""
    if not (math.isfinite(rate) and rate > 0):
        raise ValueError(
            f"{what} rate must be a positive number of writes per second, not {rate!r} "
            "(a large value such as 1e9 effectively turns the limit off)"
        )
    if not (math.isfinite(burst) and burst >= 1):
        raise ValueError(
            f"{what} burst must be at least 1 write, not {burst!r} "
            "(a smaller bucket never holds the token one write costs)"
        )


class TokenBucket:
    """``rate`` tokens per second, holding at most ``burst``."""

    __slots__ = ("_burst", "_rate", "_stamp", "_tokens")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        check_rate("a token bucket's", rate, burst)
        self._rate = rate
        self._burst = burst
        self._tokens = burst
        self._stamp = now

    def wait(self, now: float, cost: float = 1.0) -> float:
        """0.0 if ``cost`` tokens are there, else the seconds until they are; takes nothing."""
        self._tokens = min(self._burst, self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now
        if self._tokens >= cost:
            return 0.0
        return (cost - self._tokens) / self._rate

    def debit(self, cost: float = 1.0) -> None:
        """Take ``cost`` tokens (after :meth:`wait` said they are there)."""
        self._tokens -= cost

    def take(self, now: float, cost: float = 1.0) -> float:
        """0.0 if admitted (``cost`` tokens taken), else the seconds until they are there."""
        wait = self.wait(now, cost)
        if not wait:
            self.debit(cost)
        return wait


class _Buckets:
    """Buckets of one rate and burst by key, the least recently used evicted past ``size``."""

    __slots__ = ("_buckets", "_burst", "_rate", "_size")

    def __init__(self, rate: float, burst: float, size: int) -> None:
        self._rate = rate
        self._burst = burst
        self._size = size
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def get(self, key: str, now: float) -> TokenBucket:
        bucket = self._buckets.get(key)
        if bucket is not None:
            self._buckets.move_to_end(key)
            return bucket
        bucket = self._buckets[key] = TokenBucket(self._rate, self._burst, now)
        if len(self._buckets) > self._size:
            self._buckets.popitem(last=False)
        return bucket


class RateLimiter:
    """Admits a write only when both its agent's and its tenant's bucket allow it.

    At most ``max_buckets`` agent buckets and ``max_buckets`` tenant buckets
    are kept (least recently used evicted first).
    """

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
        check_rate("the agent", agent_rate, agent_burst)
        check_rate("the tenant", tenant_rate, tenant_burst)
        if max_buckets < 1:
            raise ValueError(f"max_buckets must be at least 1, not {max_buckets!r}")
        self._agents = _Buckets(agent_rate, agent_burst, max_buckets)
        self._tenants = _Buckets(tenant_rate, tenant_burst, max_buckets)
        self._clock = clock

    @property
    def buckets(self) -> int:
        """How many buckets (agents' and tenants') are kept now."""
        return len(self._agents) + len(self._tenants)

    def check(self, tenant: str, agent: str) -> None:
        """Take a token from both buckets, or :class:`RateLimitedError` (taking none).

        Synchronous, so no other request runs between the checks and the debits.
        """
        now = self._clock()
        tenant_bucket = self._tenants.get(tenant, now)
        agent_bucket = self._agents.get(f"{tenant}/{agent}", now)
        tenant_wait = tenant_bucket.wait(now)
        agent_wait = agent_bucket.wait(now)
        if agent_wait or tenant_wait:
            raise RateLimitedError(
                _refusal(tenant, agent, tenant_wait, agent_wait),
                retry_after=max(tenant_wait, agent_wait),
            )
        tenant_bucket.debit()
        agent_bucket.debit()


def _refusal(tenant: str, agent: str, tenant_wait: float, agent_wait: float) -> str:
    over = [f"agent {agent!r}"] if agent_wait else []
    if tenant_wait:
        over.append(f"tenant {tenant!r}")
    which = "is over its write rate limit" if len(over) == 1 else "are over their write rate limits"
    return f"{' and '.join(over)} {which}: retry after the seconds in Retry-After"
