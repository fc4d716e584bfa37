"""The SDK's version book never moves back to an older version of a memory."""

from __future__ import annotations

from gateway.client.versions import VersionBook
from replication.state import MemoryView


def _view(version: str, updated_at: int, memory_id: str = "a") -> MemoryView:
    return MemoryView(
        id=memory_id,
        tenant_id="t",
        user_id="alice",
        kind="fact",
        policy="lww",
        version=version,
        updated_at=updated_at,
    )


def test_a_trailing_read_does_not_replace_the_clients_own_newer_write() -> None:
    """The stale-delete case: a list served by a lagging store after this client's update."""
    book = VersionBook(10)
    book.wrote(_view("v1", 100))
    book.wrote(_view("v2", 200))  # the client's own update
    book.remember([_view("v1", 100)])  # list() from a store that has not applied it yet
    assert book.get("a") == "v2"


def test_a_later_or_equal_read_replaces_and_an_earlier_one_keeps_the_held_version() -> None:
    book = VersionBook(10)
    book.remember([_view("v1", 100)])
    book.remember([_view("v2", 200)])  # someone else's later write, read back
    assert book.get("a") == "v2"
    book.remember([_view("v1-again", 100)])  # a store trailing that write
    assert book.get("a") == "v2"
    # The same time and more: a concurrent version merged in, written earlier.
    book.remember([_view("v2+sibling", 200)])
    assert book.get("a") == "v2+sibling"


def test_a_write_answer_always_replaces_the_held_version() -> None:
    """A write's answer holds the write itself, which every earlier read lacks."""
    book = VersionBook(10)
    book.remember([_view("read", 300)])  # e.g. from a region whose clock runs ahead
    book.wrote(_view("mine", 250))
    assert book.get("a") == "mine"


def test_views_without_a_version_are_ignored_and_the_book_stays_bounded() -> None:
    book = VersionBook(2)
    book.remember([_view("", 10, "a")])
    assert book.get("a") is None
    book.remember([_view("va", 1, "a"), _view("vb", 1, "b"), _view("vc", 1, "c")])
    assert (book.get("a"), book.get("b"), book.get("c")) == (None, "vb", "vc")
