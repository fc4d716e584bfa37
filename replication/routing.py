"""Which channels an event belongs to (the four seed channel kinds)."""

from __future__ import annotations

from collections.abc import Iterable

__all__ = [
    "SYSTEM_CHANNEL",
    "channels_for",
    "parse_channel",
    "tenant_channel",
    "topic_channel",
    "user_channel",
]

SYSTEM_CHANNEL = "system:global"


def user_channel(user_id: str) -> str:
    """Every memory of one user."""
    return f"user:{user_id}:memories"


def tenant_channel(tenant_id: str) -> str:
    """The memories a tenant shares."""
    return f"tenant:{tenant_id}:shared"


def topic_channel(topic_id: str) -> str:
    """The memories tagged with one topic."""
    return f"topic:{topic_id}:updates"


def channels_for(
    *, tenant_id: str, user_id: str, topics: Iterable[str], shared: bool, system: bool = False
) -> tuple[str, ...]:
    """Every channel an event about this memory goes to, without duplicates."""
    out = [user_channel(user_id)]
    if shared:
        out.append(tenant_channel(tenant_id))
    out.extend(dict.fromkeys(topic_channel(t) for t in topics))
    if system:
        out.append(SYSTEM_CHANNEL)
    return tuple(out)


def parse_channel(name: str) -> tuple[str, str]:
    """``(kind, id)`` for a channel name; kind is ``user``, ``tenant``, ``topic`` or ``system``.

    Raises ``ValueError`` naming the accepted shapes.
    """
    if name == SYSTEM_CHANNEL:
        return ("system", "global")
    parts = name.split(":")
    shapes = {("user", "memories"), ("tenant", "shared"), ("topic", "updates")}
    if len(parts) == 3 and (parts[0], parts[2]) in shapes and parts[1]:
        return (parts[0], parts[1])
    raise ValueError(
        f"unknown channel {name!r}: expected user:{{id}}:memories, tenant:{{id}}:shared, "
        "topic:{id}:updates or system:global"
    )
