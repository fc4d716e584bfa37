"""Writes every consumer of the log would refuse are refused at the gateway, before the journal.

The gateway builds its events from structs, which skip the wire type's
constraints; consumers decode the log strictly. A write answered 201 that the
applier then dead-letters would be applied here by write-through and nowhere
else; one the log refuses for good must not stay in the outbox.
"""

from __future__ import annotations

import pytest

from deploy.tansu import TansuBroker

from .harness import Gateway, eventually

_BIG_ITEM = "i" * 2_000


async def _create(gw: Gateway, **body: object) -> dict[str, object]:
    resp, data = await gw.request("POST", "/v1/memories", json={"user_id": "alice", **body})
    assert resp.status == 201, data
    return dict(data)


async def _nothing_journalled(gw: Gateway, before: tuple[int, int]) -> None:
    journal = gw.runtime.journal
    assert (journal.last_seq, (await journal.counts())[0]) == before


@pytest.mark.parametrize(
    ("setup", "method", "path", "body", "status", "words"),
    [
        pytest.param(
            None, "POST", "/v1/memories",
            {"user_id": "alice", "kind": "fact", "metadata": {"n": 2**64}},
            422, "outside", id="metadata-integer-past-64-bits",
        ),
        pytest.param(
            None, "POST", "/v1/memories",
            {"user_id": "alice", "kind": "fact", "metadata": {"deep": [[1, -(2**53)]]}},
            422, "outside", id="metadata-integer-past-2**53-in-a-list",
        ),
        pytest.param(
            # Each body is under the gateway's limit; the event holds the whole
            # list plus what the PATCH adds, past what the log takes.
            {"id": "big", "kind": "list", "items": [f"{n}{_BIG_ITEM}" for n in range(120)]},
            "PATCH", "/v1/memories/big", {"add": [f"new{n}{_BIG_ITEM}" for n in range(100)]},
            413, "event is", id="event-over-the-log-limit",
        ),
        pytest.param(
            {"id": "l", "kind": "list", "items": [str(n) for n in range(1_000)]},
            "PATCH", "/v1/memories/l", {"add": [f"new-{n}" for n in range(100)]},
            422, "items", id="list-past-its-item-limit",
        ),
        pytest.param(
            {"id": "c", "kind": "counter", "value": 2**53},
            "PATCH", "/v1/memories/c", {"increment": 1},
            422, "value", id="counter-past-2**53",
        ),
    ],
)  # fmt: skip
async def test_a_write_consumers_would_refuse_is_refused_and_journals_nothing(
    gw: Gateway,
    setup: dict[str, object] | None,
    method: str,
    path: str,
    body: dict[str, object],
    status: int,
    words: str,
) -> None:
    if setup is not None:
        await _create(gw, **setup)
    journal = gw.runtime.journal
    before = journal.last_seq, (await journal.counts())[0]
    resp, err = await gw.request(method, path, json=body)
    assert resp.status == status, err
    assert words in err["error"]["message"], err
    await _nothing_journalled(gw, before)
    # The next write is numbered on from where the refused one would have been.
    made = await _create(gw, id="after", kind="fact", content="fine")
    assert made["content"] == "fine"
    assert journal.last_seq == before[0] + 1


async def test_a_row_the_log_refuses_for_good_leaves_the_outbox(
    gw: Gateway, broker: TansuBroker
) -> None:
    """An outbox row the log will never take (here: over the producer's request size).

    Journals written before the gateway checked events as consumers do can hold
    one; left pending it would hold every later write in the outbox.
    """
    runtime = gw.runtime
    journal, service = runtime.journal, runtime.service
    poison = journal.next_seq()
    await journal.record(seq=poison, key="t1/poison", counter=1, body=b"x" * (2 << 20),
                         high_water=0)  # fmt: skip
    service.outbox_busy = True  # as after an outage: new writes queue behind the row
    resp, data = await gw.request(
        "POST", "/v1/memories", json={"user_id": "alice", "id": "queued", "kind": "fact"}
    )
    assert resp.status == 202, data
    service.poke_outbox()

    async def drained() -> bool:
        _, ready = await gw.request("GET", "/readyz")
        got, _ = await gw.request("GET", "/v1/memories/queued")
        return ready["outbox_pending"] == 0 and got.status == 200

    await eventually(drained, within=20, what="the outbox to drain past the refused row")
    assert [r.seq for r in await journal.pending(10)] == []
    assert not await journal.discard(poison)  # gone already


@pytest.mark.parametrize("method", ["PATCH", "DELETE"])
async def test_an_if_match_of_another_memory_fails_its_precondition(
    gw: Gateway, method: str
) -> None:
    """An ETag names its memory: another memory's context must not cover this one's versions."""
    a = await _create(gw, id="a", kind="fact", content="a0")
    await _create(gw, id="b", kind="fact", content="b0")
    journal = gw.runtime.journal
    before = journal.last_seq, (await journal.counts())[0]
    body = {"content": "b1"} if method == "PATCH" else None
    resp, err = await gw.request(
        method, "/v1/memories/b", json=body, headers={"If-Match": f'"{a["version"]}"'}
    )
    assert resp.status == 412, err
    assert err["error"]["code"] == "precondition_failed"
    assert "another memory" in err["error"]["message"]
    await _nothing_journalled(gw, before)
    resp, got = await gw.request("GET", "/v1/memories/b")
    assert resp.status == 200 and got["content"] == "b0"
    resp, ok = await gw.request(  # its own ETag still works
        method, "/v1/memories/b", json=body, headers={"If-Match": f'"{got["version"]}"'}
    )
    assert resp.status == 200, ok
