"""Channel routing."""

from __future__ import annotations

import pytest

from replication.routing import channels_for, parse_channel


def test_private_memory_goes_to_its_user_and_topics() -> None:
    assert channels_for(tenant_id="t", user_id="u", topics=["a", "b", "a"], shared=False) == (
        "user:u:memories",
        "topic:a:updates",
        "topic:b:updates",
    )


def test_shared_memory_also_goes_to_the_tenant_and_system_to_global() -> None:
    got = channels_for(tenant_id="t", user_id="u", topics=[], shared=True, system=True)
    assert got == ("user:u:memories", "tenant:t:shared", "system:global")


@pytest.mark.parametrize(
    ("name", "parsed"),
    [
        ("user:u1:memories", ("user", "u1")),
        ("tenant:t:shared", ("tenant", "t")),
        ("topic:x:updates", ("topic", "x")),
        ("system:global", ("system", "global")),
    ],
)
def test_channel_names_parse(name: str, parsed: tuple[str, str]) -> None:
    assert parse_channel(name) == parsed


@pytest.mark.parametrize("bad", ["user:u1", "user::memories", "tenant:t:memories", "x:y:z", ""])
def test_unknown_channel_names_are_refused_with_the_accepted_shapes(bad: str) -> None:
    with pytest.raises(ValueError, match="expected user:"):
        parse_channel(bad)
