"""Token buckets per agent and per tenant: who is refused, what a refusal costs, bounds."""

from __future__ import annotations

import pytest

from gateway.errors import RateLimitedError
from gateway.ratelimit import RateLimiter, TokenBucket
from gateway.settings import Settings, SettingsError


class _Clock:
    """A clock that moves only when told."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def _limiter(
    clock: _Clock,
    *,
    agent: tuple[float, float] = (1.0, 2.0),
    tenant: tuple[float, float] = (1.0, 5.0),
    max_buckets: int = 100,
) -> RateLimiter:
    return RateLimiter(
        agent_rate=agent[0],
        agent_burst=agent[1],
        tenant_rate=tenant[0],
        tenant_burst=tenant[1],
        clock=clock,
        max_buckets=max_buckets,
    )


def _admitted(limiter: RateLimiter, tenant: str, agent: str) -> bool:
    try:
        limiter.check(tenant, agent)
    except RateLimitedError:
        return False
    return True


def test_a_refusal_by_one_bucket_costs_the_other_nothing() -> None:
    clock = _Clock()
    limiter = _limiter(clock, agent=(0.001, 2.0), tenant=(1.0, 5.0))
    assert [_admitted(limiter, "t", "greedy") for _ in range(10)] == [True, True] + [False] * 8
    # Eight refusals by the agent's bucket cost the tenant nothing: three tokens are left.
    assert [_admitted(limiter, "t", f"other-{i}") for i in range(4)] == [True] * 3 + [False]
    # And the refusal by the tenant's bucket cost agent other-3 nothing: it still has
    # both of its writes (its own bucket all but never refills), one a tenant token.
    clock.now += 1.0
    assert _admitted(limiter, "t", "other-3")
    clock.now += 1.0
    assert _admitted(limiter, "t", "other-3")


def test_a_refusal_names_the_limit_and_says_when_to_retry() -> None:
    clock = _Clock()
    limiter = _limiter(clock, agent=(2.0, 1.0), tenant=(0.5, 1.0))
    limiter.check("t", "a")
    with pytest.raises(RateLimitedError) as refused:
        limiter.check("t", "a")
    assert "agent 'a' and tenant 't' are over their write rate limits" in refused.value.message
    assert refused.value.retry_after == pytest.approx(2.0)  # the slower bucket: the tenant's
    clock.now += 1.0
    with pytest.raises(RateLimitedError, match=r"^tenant 't' is over its write rate limit"):
        limiter.check("t", "b")


def test_an_agent_flood_neither_grows_the_buckets_nor_resets_a_tenants_bucket() -> None:
    limiter = _limiter(_Clock(), agent=(1.0, 1.0), tenant=(1.0, 1.0), max_buckets=2)
    assert _admitted(limiter, "t1", "a")  # t1's bucket is empty now
    for i in range(50):
        _admitted(limiter, "t2", f"flood-{i}")
    assert limiter.buckets <= 4  # two agents' and two tenants' at most
    assert not _admitted(limiter, "t1", "b")  # t1's empty bucket was kept, not refilled


@pytest.mark.parametrize(
    ("agent", "tenant", "words"),
    [
        ((0.0, 10.0), (1.0, 10.0), "agent rate must be a positive number"),
        ((-1.0, 10.0), (1.0, 10.0), "agent rate"),
        ((float("nan"), 10.0), (1.0, 10.0), "agent rate"),
        ((1.0, 0.5), (1.0, 10.0), "agent burst must be at least 1"),
        ((1.0, 10.0), (0.0, 10.0), "tenant rate"),
        ((1.0, 10.0), (1.0, 0.0), "tenant burst"),
        ((1.0, 10.0), (float("inf"), 10.0), "tenant rate"),
    ],
)
def test_a_limiter_refuses_a_rate_it_could_not_enforce(
    agent: tuple[float, float], tenant: tuple[float, float], words: str
) -> None:
    with pytest.raises(ValueError, match=words):
        _limiter(_Clock(), agent=agent, tenant=tenant)


def test_a_token_bucket_refuses_a_zero_rate() -> None:
    with pytest.raises(ValueError, match="rate must be a positive number"):
        TokenBucket(0.0, 1.0, now=0.0)


def test_settings_name_the_rate_variable_that_cannot_work() -> None:
    cases = [
        ("MEMSYNC_AGENT_RATE", "0", "MEMSYNC_AGENT_RATE=0.0 must be a positive number"),
        ("MEMSYNC_TENANT_RATE", "-5", "MEMSYNC_TENANT_RATE=-5.0 must be a positive number"),
        ("MEMSYNC_AGENT_RATE", "nan", "MEMSYNC_AGENT_RATE=nan"),
        ("MEMSYNC_AGENT_BURST", "0", "MEMSYNC_AGENT_BURST=0.0 must be at least 1"),
        ("MEMSYNC_TENANT_BURST", "0.5", "MEMSYNC_TENANT_BURST=0.5 must be at least 1"),
    ]
    for variable, value, words in cases:
        env = {"MEMSYNC_SECRET": "x" * 32, variable: value}
        with pytest.raises(SettingsError, match=words):
            Settings.from_env(env).validated()
    # A rate high enough to turn the limit off, and a burst of one, are fine.
    env = {"MEMSYNC_SECRET": "x" * 32, "MEMSYNC_AGENT_RATE": "1e9", "MEMSYNC_AGENT_BURST": "1"}
    assert Settings.from_env(env).validated().limits.agent_rate == 1e9
