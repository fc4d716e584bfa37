"""One SQLite database on one thread of its own (journal, history).

SQLite calls block, so they run on a single dedicated thread: statements
are serialised in submission order and the event loop never waits on disk.
Library errors become :class:`UnavailableError` (503, retriable) naming
the database.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from gateway.errors import UnavailableError

__all__ = ["SqliteThread"]

R = TypeVar("R")


class SqliteThread:
    """A connection opened, used and closed on one worker thread."""

    def __init__(self, path: Path, what: str, *, synchronous: str, schema: str) -> None:
        self.path = path
        self._what = what
        self._synchronous = synchronous
        self._schema = schema
        self._db: sqlite3.Connection | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=what)

    async def open(self) -> None:
        """Open (or create) the database: WAL, the configured fsync policy, the schema."""
        await self.run(self._open_sync)

    def _open_sync(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={self._synchronous}")
        db.executescript(self._schema)
        self._db = db

    async def close(self) -> None:
        """Close the connection and stop the thread."""
        await self.run(self._close_sync)
        self._pool.shutdown(wait=True)

    def _close_sync(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    async def run(self, fn: Callable[..., R], *args: object) -> R:
        """Run ``fn(*args)`` on the database thread."""
        return await self.submit(fn, *args)

    def submit(self, fn: Callable[..., R], *args: object) -> Awaitable[R]:
        """Queue ``fn(*args)`` on the database thread now; await its result later.

        Work runs in submission order, so whatever is submitted after this
        call (from any task) sees its effect, whether or not it was awaited.
        """
        queued = asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)
        return self._result(queued)

    async def _result(self, queued: Awaitable[R]) -> R:
        try:
            return await queued
        except sqlite3.Error as exc:
            raise UnavailableError(f"{self._what} failed: {exc}", retry_after=1.0) from exc

    @property
    def conn(self) -> sqlite3.Connection:
        """The connection (only to be used on the database thread)."""
        if self._db is None:
            raise UnavailableError(f"{self._what} is closed", retry_after=1.0)
        return self._db
