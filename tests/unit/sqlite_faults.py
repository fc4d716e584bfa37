"""Disk faults for tests of SQLite-backed parts: inserts that fail, until healed."""

from __future__ import annotations

import sqlite3
from pathlib import Path

__all__ = ["fail_writes", "heal"]


def fail_writes(path: Path, table: str, when: str = "1") -> None:
    """Make every insert into ``table`` (``when``) fail, from another connection."""
    with sqlite3.connect(path) as db:
        db.execute(
            f"CREATE TRIGGER fail_{table} BEFORE INSERT ON {table} WHEN {when} "
            "BEGIN SELECT RAISE(ABORT, 'the disk is away'); END"
        )


def heal(path: Path, table: str) -> None:
    """Let inserts into ``table`` succeed again."""
    with sqlite3.connect(path) as db:
        db.execute(f"DROP TRIGGER fail_{table}")
