"""The ``memsync`` command line."""

from __future__ import annotations

import argparse
import sys

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``memsync`` console script."""
    parser = argparse.ArgumentParser(
        prog="memsync",
        description="Real-time memory sync for fleets of AI agents.",
    )
    parser.add_argument("command", nargs="?", help="up | gateway | mirror | token")
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    print(f"memsync {args.command}: not built yet (see the README's status)", file=sys.stderr)
    return 2
