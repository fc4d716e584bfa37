"""The propagation benchmark's subscriber counts every event the gateway's messages carry once."""

from __future__ import annotations

from typing import Any

from gateway.auth import Claims
from gateway.fanout import Delivery, Subscription
from loadtests.propagation_bench import Worker
from replication.dvv import Dot
from replication.schema import encode
from replication.testing import Replica


def _claims() -> Claims:
    return Claims(sub="a", tenant="t1", users=("*",), scope=frozenset({"subscribe"}), exp=0)


def _delivery(seq: int, key: str) -> Delivery:
    r = Replica("r1")
    content = f"PBM|w1|{seq}|{1_000_000 * seq}# padding"
    event = r.write(key, "fact", "create", user="u1", content=content)
    assert event is not None
    return Delivery(
        key=event.key, tenant="t1", user="u1", shared=False, channels=("user:u1:memories",),
        dot=Dot("r1", seq), raw=encode(event), state=r.states[event.key], cursor_token=f"c{seq}",
    )  # fmt: skip


class _Sub:
    idx = 0
    ready: Any = None


def _received(messages: list[bytes]) -> tuple[int, int]:
    worker = Worker({"raw_prefix": "c"})
    for message in messages:
        worker.on_text(_Sub(), message, 1_000.0)  # type: ignore[arg-type]
    stats = worker.tags[b"w1"]
    return stats.received, stats.duplicates


def test_single_event_messages_and_queued_batches_count_each_event_once() -> None:
    sub = Subscription(claims=_claims(), channels={"user:u1:memories"}, mode="eager")
    sub.offer(_delivery(1, "m1"))
    first = [m for m, _ in sub.take(flush_lazy=False)]
    for seq in (2, 3, 4):
        sub.offer(_delivery(seq, f"m{seq}"))
    queued = [m for m, _ in sub.take(flush_lazy=False)]
    assert first[0].startswith(b'{"op":"event"') and queued[0].startswith(b'{"op":"batch"')
    assert _received(first + queued) == (4, 0)


def test_a_coalesced_batch_counts_its_events_not_the_states_beside_them() -> None:
    sub = Subscription(claims=_claims(), channels={"user:u1:memories"}, mode="lazy")
    for seq, key in ((1, "m"), (2, "m"), (3, "n")):
        sub.offer(_delivery(seq, key))
    ((message, _),) = sub.take(flush_lazy=True)
    assert message.count(b"PBM|") == 4  # two events, each also in its state
    assert _received([message]) == (2, 0)  # the latest of m, and n
    assert _received([message, message]) == (2, 2)  # a message sent twice is counted so
