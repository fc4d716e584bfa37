"""The session tokens a client holds: enough to name every write it made.

A write's answer carries the ``X-Memsync-Session`` token it was sent joined
with its own event. One write at a time, the latest answer covers every
earlier write. Writes in flight at once were all sent the same tokens, so
each answer covers only its own event beyond them: keeping the last one
would lose the others (a later read in a lagging region could miss them).
:class:`SessionTokens` keeps every answer not covered by a later one: an
answer covers exactly the tokens its request was sent, so those are dropped
when it arrives. It holds at most as many tokens as writes were in flight at
once, and the gateway joins them all (comma-separated in one header).
"""

from __future__ import annotations

import structlog

__all__ = ["MAX_HEADER_CHARS", "MAX_TOKENS", "SessionTokens"]

_log = structlog.get_logger(__name__)

MAX_TOKENS = 32  # what one header may join (the gateway's MAX_SESSION_TOKENS)
# What one header may hold: aiohttp refuses a header field past 8,190 bytes
# before the gateway sees the request, and every later request would carry
# the same tokens. Each token repeats the session's context, so size grows
# with it, not only with the count.
MAX_HEADER_CHARS = 6144


class SessionTokens:
    """Session tokens not covered by a later answer, oldest first."""

    def __init__(self) -> None:
        self._held: list[str] = []

    def sent(self) -> tuple[str, ...]:
        """What a request carries now (remember it to settle its answer)."""
        return tuple(self._held)

    def header(self, sent: tuple[str, ...] | None = None) -> str | None:
        """The ``X-Memsync-Session`` value for ``sent`` (default: what is held now)."""
        tokens = self._held if sent is None else sent
        return ",".join(tokens) or None

    def answered(self, sent: tuple[str, ...], token: str) -> None:
        """A write sent ``sent`` answered ``token``, which covers ``sent`` and that write."""
        covered = set(sent)
        held = [t for t in self._held if t not in covered and t != token]
        held.append(token)
        dropped = 0
        while len(held) > 1 and (
            len(held) > MAX_TOKENS or sum(len(t) + 1 for t in held) - 1 > MAX_HEADER_CHARS
        ):
            # More writes in flight at once than one header may name: the
            # oldest answers lose their read-your-writes guarantee (their
            # events are durable all the same).
            held.pop(0)
            dropped += 1
        if dropped:
            _log.warning("memsync_session_tokens_dropped", dropped=dropped, held=len(held))
        self._held = held

    def __len__(self) -> int:
        return len(self._held)
