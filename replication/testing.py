"""In-memory twins for tests, simulations and examples.

:class:`Replica` writes and applies events the way a gateway does, with no
I/O; :class:`Router` is a seeded "terrible network" between replicas that
drops, duplicates, delays and reorders; :func:`oracle` recomputes what a
memory must look like from the bare set of its events, independently of
:mod:`replication.merge`, so tests can compare the two.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass, field

from replication import dvv
from replication.clock import HybridClock
from replication.dvv import EMPTY, Dot, DotContext
from replication.events import make_event, next_counter
from replication.merge import apply
from replication.schema import MemoryBody, MemoryEvent, Ops, Source, default_policy
from replication.state import MemoryState, materialize

__all__ = [
    "SAMPLE_MEMORIES",
    "Expected",
    "Replica",
    "Router",
    "oracle",
]

# (id, kind, policy): one memory of every policy and most kinds.
SAMPLE_MEMORIES: tuple[tuple[str, str, str], ...] = (
    ("count-1", "counter", "counter"),
    ("list-1", "list", "union"),
    ("pref-1", "preference", "surface"),
    ("fact-1", "fact", "lww"),
    ("conv-1", "conversation", "union"),
)


class Replica:
    """A gateway's write and apply logic, in memory, on a fake clock."""

    def __init__(self, name: str, region: str = "sim", *, wall_ms: int = 1_700_000_000_000) -> None:
        self.name = name
        self.region = region
        self.wall_ms = wall_ms
        self.clock = HybridClock(lambda: self.wall_ms, max_drift_ms=10**12)
        self.states: dict[str, MemoryState] = {}
        self._issued: dict[str, int] = {}
        self._seq = 0
        self._events = 0

    def receive(self, event: MemoryEvent) -> None:
        """Apply an event (idempotent)."""
        self.clock.observe(event.timestamp)
        key = event.key
        self.states[key] = apply(self.states.get(key), event)

    def write(
        self,
        memory_id: str,
        kind: str,
        op: str,
        *,
        tenant: str = "t1",
        user: str = "u1",
        policy: str | None = None,
        context: DotContext | None = None,
        content: str = "",
        items: Iterable[str] = (),
        increment: int = 0,
    ) -> MemoryEvent | None:
        """Write like a client through this replica; ``None`` if the op makes no sense here.

        ``op`` is ``create``, ``update``, ``add``, ``remove``, ``increment`` or
        ``delete``. ``context`` defaults to everything this replica has seen of
        the memory (a read-modify-write); pass ``EMPTY`` for a blind write.
        """
        key = f"{tenant}/{memory_id}"
        state = self.states.get(key)
        exists = state is not None and not state.deleted
        if (op == "create") == exists or (op != "create" and state is None):
            return None
        policy = policy or (state.policy if state else default_policy(kind))
        ctx = state.clock if (context is None and state is not None) else (context or EMPTY)
        view = materialize(state) if state else None
        if state is not None:
            kind = state.kind
        items = tuple(items) if kind in ("list", "conversation") else ()
        increment = increment if kind == "counter" else 0
        if (op in ("add", "remove") and not items) or (op == "increment" and kind != "counter"):
            return None
        if op == "create":
            event_type, ops = "create", Ops(add=items, increment=increment)
        elif op == "update":
            event_type, ops = "update", Ops(fields=True)
        elif op == "add":
            event_type, ops = "update", Ops(fields=False, add=items)
        elif op == "remove":
            event_type, ops = "update", Ops(fields=False, remove=items)
        elif op == "increment":
            event_type, ops = "update", Ops(fields=False, increment=increment)
        elif op == "delete":
            event_type, ops = "delete", Ops(fields=False)
        else:
            raise ValueError(f"unknown op {op!r}")
        if state is not None:
            kind, policy, user = state.kind, state.policy, state.user_id
        body = MemoryBody(
            id=memory_id,
            tenant_id=tenant,
            user_id=user,
            kind=kind,  # type: ignore[arg-type]
            policy=policy,  # type: ignore[arg-type]
            content=content if op in ("create", "update") else (view.content if view else ""),
        )
        counter = next_counter(state, self.name, self._issued.get(key, 0))
        self._issued[key] = counter
        self._seq += 1
        self._events += 1
        event = make_event(
            event_id=f"{self.name}-{self._events}",
            event_type=event_type,  # type: ignore[arg-type]
            memory=body,
            source=Source(agent_id=f"agent-{self.name}", region=self.region),
            context=ctx,
            dot=Dot(self.name, counter),
            seq=self._seq,
            timestamp=self.clock.now(),
            ops=ops,
        )
        self.receive(event)
        return event


@dataclass
class Router:
    """A seeded network that drops, duplicates, delays and reorders messages."""

    seed: int
    drop: float = 0.1
    duplicate: float = 0.1
    max_delay: int = 20
    healed: bool = False
    _rng: random.Random = field(init=False)
    _queue: list[tuple[int, int, str, MemoryEvent]] = field(default_factory=list)
    _now: int = 0
    _order: int = 0

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)  # noqa: S311 - simulation, not crypto

    @property
    def rng(self) -> random.Random:
        """The router's seeded random source (share it for reproducible runs)."""
        return self._rng

    def send(self, target: str, event: MemoryEvent) -> None:
        """Hand a message to the network."""
        copies = 1
        if not self.healed:
            if self._rng.random() < self.drop:
                return
            if self._rng.random() < self.duplicate:
                copies = 2
        for _ in range(copies):
            delay = 0 if self.healed else self._rng.randint(0, self.max_delay)
            self._order += 1
            self._queue.append((self._now + delay, self._order, target, event))

    def step(self) -> list[tuple[str, MemoryEvent]]:
        """Advance time by one tick; the messages that arrive now, in shuffled order."""
        self._now += 1
        due = [m for m in self._queue if m[0] <= self._now]
        self._queue = [m for m in self._queue if m[0] > self._now]
        self._rng.shuffle(due)
        return [(target, event) for _, _, target, event in due]

    def drain(self) -> list[tuple[str, MemoryEvent]]:
        """Deliver everything still in flight."""
        out = [(target, event) for _, _, target, event in self._queue]
        self._queue = []
        self._rng.shuffle(out)
        return out


@dataclass(frozen=True)
class Expected:
    """What a memory must look like, computed from the bare set of its events."""

    survivors: frozenset[Dot]
    deleted: bool
    items: frozenset[str]
    value: int
    winner: Dot | None


def oracle(events: Iterable[MemoryEvent]) -> Expected:
    """Recompute a memory's semantics from its events with plain sets of dots.

    Independent of :mod:`replication.merge`: no contexts are joined
    incrementally, every rule of DESIGN §3 is evaluated over the whole set.
    """
    unique = {e.dot: e for e in events}
    superseded: set[Dot] = set()
    deleted_by: set[Dot] = set()
    removed: dict[str, set[Dot]] = {}
    for e in unique.values():
        ctx = set(dvv.dots(e.context))
        if e.event_type == "delete" or e.event_type == "create" or e.ops.fields:
            superseded |= ctx
        if e.event_type == "delete":
            deleted_by |= ctx
        for item in e.ops.remove:
            removed.setdefault(item, set()).update(ctx)
    writes = [
        e
        for e in unique.values()
        if e.event_type != "delete" and (e.event_type == "create" or e.ops.fields)
    ]
    survivors = frozenset(e.dot for e in writes if e.dot not in superseded)
    present = {e.dot for e in unique.values() if e.event_type != "delete"}
    items = frozenset(
        item
        for e in unique.values()
        if e.event_type != "delete"
        for item in e.ops.add
        if item not in e.ops.remove
        and e.dot not in deleted_by
        and e.dot not in removed.get(item, set())
    )
    value = sum(e.ops.increment for e in unique.values())
    ranked = sorted(
        (e for e in writes if e.dot in survivors),
        key=lambda e: (e.timestamp, e.dot.replica, e.dot.counter),
    )
    return Expected(
        survivors=survivors,
        deleted=present <= deleted_by,
        items=items,
        value=value,
        winner=ranked[-1].dot if ranked else None,
    )
