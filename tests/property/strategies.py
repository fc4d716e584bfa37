"""Shared Hypothesis strategies: dots, contexts and causally valid histories."""

from __future__ import annotations

from hypothesis import strategies as st

from replication import dvv
from replication.dvv import EMPTY, Dot, DotContext
from replication.schema import MemoryEvent
from replication.testing import SAMPLE_MEMORIES, Replica

REPLICAS = ("a", "b", "c")

dots = st.builds(Dot, st.sampled_from(REPLICAS), st.integers(min_value=1, max_value=6))
dot_sets = st.frozensets(dots, max_size=12)
contexts = dot_sets.map(dvv.context_of)

_OPS = {
    "fact": ("update", "update", "delete"),
    "preference": ("update", "update", "delete"),
    "list": ("add", "remove", "update", "delete"),
    "conversation": ("add", "add", "remove", "delete"),
    "counter": ("increment", "increment", "update", "delete"),
}
_ITEMS = ("milk", "eggs", "tea", "bread")


@st.composite
def histories(draw: st.DrawFn, max_steps: int = 40, memories: int = 2) -> list[MemoryEvent]:
    """Events written by 2–4 replicas that read each other's writes at random.

    Every context an event carries is one its writer really had (its own
    state, a blind write, or a state it held earlier), so the histories are
    causally valid — exactly what gateways can produce.
    """
    replicas = [Replica(f"r{i}") for i in range(draw(st.integers(2, 4)))]
    pool = SAMPLE_MEMORIES[: max(1, memories)]
    log: list[MemoryEvent] = []
    past: dict[str, list[DotContext]] = {}
    for _ in range(draw(st.integers(1, max_steps))):
        if log and draw(st.booleans()):
            event = draw(st.sampled_from(log))
            draw(st.sampled_from(replicas)).receive(event)
            continue
        r = draw(st.sampled_from(replicas))
        mid, kind, policy = draw(st.sampled_from(pool))
        key = f"t1/{mid}"
        state = r.states.get(key)
        op = "create" if state is None or state.deleted else draw(st.sampled_from(_OPS[kind]))
        how = draw(st.sampled_from(("read", "read", "blind", "stale")))
        ctx: DotContext | None = None
        if how == "blind":
            ctx = EMPTY
        elif how == "stale" and past.get(r.name + key):
            ctx = draw(st.sampled_from(past[r.name + key]))
        r.wall_ms += draw(st.integers(0, 3))
        event = r.write(
            mid,
            kind,
            op,
            policy=policy,
            context=ctx,
            content=f"{r.name}-{len(log)}",
            items=draw(st.lists(st.sampled_from(_ITEMS), min_size=1, max_size=2, unique=True)),
            increment=draw(st.integers(-5, 5)),
        )
        if event is not None:
            log.append(event)
        if key in r.states:
            past.setdefault(r.name + key, []).append(r.states[key].clock)
    return log
