"""The replication core imports nothing that does I/O (CONVENTIONS: pure core)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parents[2] / "replication"
# Adapters that are allowed to do I/O live in these modules of the package.
EDGE_MODULES = {"log.py", "log_reader.py", "janitor.py", "mirror.py", "mirror_main.py", "tasks.py"}
FORBIDDEN = {
    "asyncio",
    "aiokafka",
    "aiohttp",
    "qdrant_edge",
    "qdrant_client",
    "socket",
    "sqlite3",
    "subprocess",
    "threading",
    "uvloop",
    "requests",
    "httpx",
    "time",
}


def _core_modules() -> list[Path]:
    return sorted(p for p in CORE.rglob("*.py") if p.name not in EDGE_MODULES)


@pytest.mark.parametrize("path", _core_modules(), ids=lambda p: p.name)
def test_core_module_imports_no_io(path: Path) -> None:
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""]
        else:
            continue
        for name in names:
            assert name.split(".")[0] not in FORBIDDEN, f"{path.name} imports {name}"
