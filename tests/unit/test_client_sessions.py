"""The SDK's session tokens: every write stays covered, however many were in flight."""

from __future__ import annotations

from gateway.client.sessions import MAX_HEADER_CHARS, MAX_TOKENS, SessionTokens


def test_one_write_at_a_time_keeps_only_the_latest_answer() -> None:
    tokens = SessionTokens()
    assert tokens.header() is None
    for n in range(3):
        sent = tokens.sent()
        tokens.answered(sent, f"t{n}")
    assert tokens.header() == "t2"


def test_writes_in_flight_at_once_are_all_kept_until_a_later_answer_covers_them() -> None:
    tokens = SessionTokens()
    tokens.answered((), "t0")
    sent = [tokens.sent() for _ in range(3)]  # three writes sent at once, each with t0
    for n, s in enumerate(sent):
        tokens.answered(s, f"a{n}")
    assert tokens.header() == "a0,a1,a2"  # none of them covers the others
    after = tokens.sent()
    tokens.answered(after, "b")  # sent all three: its answer covers them
    assert tokens.header() == "b"


def test_an_answer_that_overtook_a_later_request_keeps_what_that_request_lacked() -> None:
    tokens = SessionTokens()
    first = tokens.sent()
    tokens.answered(first, "a")
    second = tokens.sent()  # ("a",)
    third = tokens.sent()  # ("a",), in flight at once with the second
    tokens.answered(third, "c")
    tokens.answered(second, "b")
    assert tokens.header() == "c,b"


def test_more_writes_in_flight_than_a_header_names_keeps_the_newest() -> None:
    tokens = SessionTokens()
    sent = tokens.sent()
    for n in range(MAX_TOKENS + 5):
        tokens.answered(sent, f"t{n}")
    assert len(tokens) == MAX_TOKENS
    assert tokens.header() == ",".join(f"t{n}" for n in range(5, MAX_TOKENS + 5))


def test_the_header_stays_under_what_a_gateway_accepts_however_large_the_tokens() -> None:
    tokens = SessionTokens()
    sent = tokens.sent()
    big = 500  # a session context with many loose dots makes each token long
    for n in range(20):
        tokens.answered(sent, f"{n:03d}" + "x" * big)
    header = tokens.header()
    assert header is not None and len(header) <= MAX_HEADER_CHARS
    assert header.split(",")[-1].startswith("019")  # the newest kept
    assert len(tokens) == (MAX_HEADER_CHARS + 1) // (big + 4)
