"""The replication endpoints on one gateway: status, contexts, missing events, states."""

from __future__ import annotations

import base64

from replication.state import decode_state
from tests.integration.harness import Gateway, eventually, token

REPLICATE = token(tenant="memsync.cluster", users=(), scope=("replicate",))


async def _applied(gw: Gateway) -> dict[str, object]:
    resp, body = await gw.request("GET", "/v1/replication/context", token_=REPLICATE)
    assert resp.status == 200, body
    return dict(body)


async def _five_applied(gw: Gateway, prefix: str) -> None:
    """Create five memories and wait until the gateway applied them."""
    for i in range(5):
        resp, made = await gw.request(
            "POST", "/v1/memories", json={"id": f"{prefix}{i}", "user_id": "u", "kind": "fact"}
        )
        assert resp.status == 201, made

    async def all_applied() -> bool:
        return int((await _applied(gw))["count"]) == 5  # type: ignore[call-overload]

    await eventually(all_applied, what="five memories applied")


async def test_status_context_missing_and_states(gw: Gateway) -> None:
    resp, body = await gw.request("GET", "/v1/replication")
    assert (resp.status, body) == (200, {"region": "test", "links": []})
    await _five_applied(gw, "r")
    ctx = await _applied(gw)
    assert ctx["region"] == "test"
    assert len(ctx["buckets"]) == 256  # type: ignore[arg-type]
    resp, found = await gw.request(
        "POST", "/v1/replication/missing",
        json={"since": [{}, []], "upto": ctx["applied"], "limit": 3}, token_=REPLICATE,
    )  # fmt: skip
    assert resp.status == 200, found
    assert (len(found["events"]), found["complete"], found["has_more"]) == (3, True, True)
    assert {e["memory"]["id"] for e in found["events"]} <= {f"r{i}" for i in range(5)}
    resp, none = await gw.request(
        "POST", "/v1/replication/missing",
        json={"since": ctx["applied"], "upto": ctx["applied"]}, token_=REPLICATE,
    )  # fmt: skip
    assert (resp.status, none) == (200, {"events": [], "complete": True, "has_more": False})
    resp, page = await gw.request(
        "POST", "/v1/replication/states",
        json={"buckets": list(range(256)), "of": 256}, token_=REPLICATE,
    )  # fmt: skip
    assert resp.status == 200, page
    ids = sorted(decode_state(base64.b64decode(s)).id for s in page["states"])
    assert ids == [f"r{i}" for i in range(5)]
    assert page["next"] is None


async def test_replication_endpoints_refuse_bad_input_and_wrong_tokens(gw: Gateway) -> None:
    resp, body = await gw.request("GET", "/v1/replication/context")  # a memory-API token
    assert resp.status == 403 and "replicate" in body["error"]["message"]
    resp, body = await gw.request("GET", "/v1/replication", token_="nope")
    assert resp.status == 401
    cases = [
        ("/v1/replication/missing", b"{", "malformed JSON"),
        ("/v1/replication/missing", b'{"since": [{}, []]}', "MissingRequest"),
        ("/v1/replication/missing",
         b'{"since": [{}, []], "upto": [{}, []], "limit": 0}', "limit"),
        ("/v1/replication/missing",
         b'{"since": [{}, []], "upto": [{}, []], "extra": 1}', "extra"),
        ("/v1/replication/states", b'{"buckets": [300], "of": 256}', "below"),
        ("/v1/replication/states", b'{"buckets": [1], "of": 0}', "of"),
        ("/v1/replication/states", b'{"buckets": [0], "of": 1, "offset": "nope"}',
         "'offset' is not a page token"),
        ("/v1/replication/states", b'{"buckets": [0], "of": 1, "offset": "\xff"}',
         "byte 0xff, which is not UTF-8"),
    ]  # fmt: skip
    for path, raw, words in cases:
        resp, body = await gw.request("POST", path, data=raw, token_=REPLICATE)
        assert resp.status == 400, (path, raw, body)
        assert words in body["error"]["message"], (raw, body)


async def test_missing_and_states_page_within_their_limits(gw: Gateway) -> None:
    await _five_applied(gw, "p")
    applied = (await _applied(gw))["history"]
    ((replica, top),) = applied[0].items()  # type: ignore[index]
    assert top == 5
    # The peer holds seqs 2 and 3 already: with room for 2, the first page is
    # cut by the limit — more follows, nothing is reported trimmed.
    since = [{}, [[replica, 2], [replica, 3]]]
    got: list[int] = []
    for _ in range(5):
        resp, page = await gw.request(
            "POST", "/v1/replication/missing",
            json={"since": since, "upto": applied, "limit": 2}, token_=REPLICATE,
        )  # fmt: skip
        assert resp.status == 200, page
        assert page["complete"] is True
        got += [e["seq"] for e in page["events"]]
        since[1] += [[replica, e["seq"]] for e in page["events"]]
        if not page["has_more"]:
            break
    assert sorted(got) == [1, 4, 5]
    # States: never more than the limit on a page, and paging finds them all.
    ids: list[str] = []
    offset = None
    for _ in range(10):
        resp, states = await gw.request(
            "POST", "/v1/replication/states",
            json={"buckets": list(range(256)), "of": 256, "limit": 2, "offset": offset},
            token_=REPLICATE,
        )  # fmt: skip
        assert resp.status == 200, states
        assert len(states["states"]) <= 2
        ids += [decode_state(base64.b64decode(s)).id for s in states["states"]]
        offset = states["next"]
        if offset is None:
            break
    assert sorted(ids) == [f"p{i}" for i in range(5)]
