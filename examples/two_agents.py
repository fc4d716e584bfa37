"""Two agents of one user share a memory in real time.

Run a cluster, then this script::

    memsync up --data-dir ./memsync-data          # in another terminal
    python examples/two_agents.py --cluster ./memsync-data/cluster.json

It reads ``cluster.json`` (written by ``memsync up``: ``regions[0].url``,
``token`` and ``tenant``) and starts two agents, "phone" and "laptop", each
with its own :class:`gateway.client.MemorySync`:

1. the laptop subscribes to ``user:alice:memories`` and waits until live;
2. the phone creates a preference, "Alice prefers tea over coffee";
3. the laptop prints it when it arrives, with the measured propagation time
   (phone's create call → laptop's callback);
4. the phone updates it (``If-Match`` = the version it wrote), and the laptop
   sees the update.

``--laptop-region N`` puts the laptop on another region of the cluster to
watch cross-region propagation (default: the same region as the phone).
Exits 0 on success, 1 when an update does not arrive within ``--timeout``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import structlog

from gateway.client import Change, MemorySync


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cluster", type=Path, required=True, help="path to cluster.json")
    parser.add_argument("--user", default="alice", help="the user both agents act for")
    parser.add_argument("--laptop-region", type=int, default=0, help="region index for laptop")
    parser.add_argument("--timeout", type=float, default=15.0, help="seconds to wait per update")
    return parser.parse_args(argv)


async def _arrival(
    queue: asyncio.Queue[tuple[float, Change]], memory_id: str, content: str, wait_s: float
) -> tuple[float, Change] | None:
    """The first change of ``memory_id`` whose content is ``content`` (``None``: too late)."""
    try:
        async with asyncio.timeout(wait_s):
            while True:
                at, change = await queue.get()
                if change.view.id == memory_id and change.view.content == content:
                    return at, change
    except TimeoutError:
        return None


async def run(cluster: dict[str, Any], user: str, laptop_region: int, wait_s: float) -> int:
    """The demo; the process exit code."""
    regions = cluster["regions"]
    token = cluster["token"]
    phone_url = regions[0]["url"]
    laptop_url = regions[laptop_region % len(regions)]["url"]
    others = [r["url"] for r in regions]
    channel = f"user:{user}:memories"
    arrivals: asyncio.Queue[tuple[float, Change]] = asyncio.Queue()

    def on_change(change: Change) -> None:
        arrivals.put_nowait((time.perf_counter(), change))

    async with (
        MemorySync(phone_url, token, region_fallbacks=others, agent_id="phone") as phone,
        MemorySync(laptop_url, token, region_fallbacks=others, agent_id="laptop") as laptop,
    ):
        print(f"tenant {cluster.get('tenant', '?')}: phone on {phone_url}, laptop on {laptop_url}")
        sub = laptop.subscribe([channel], on_change)
        await asyncio.wait_for(sub.connected.wait(), wait_s)
        print(f"laptop: subscribed to {channel}")

        text = f"{user.capitalize()} prefers tea over coffee"
        started = time.perf_counter()
        written = await phone.create(user, "preference", content=text, topics=["drinks"])
        print(f"phone:  created {written.id!r}: {text!r}")
        arrived = await _arrival(arrivals, written.id, text, wait_s)
        if arrived is None:
            print(f"laptop: the preference did not arrive within {wait_s:.0f} s", file=sys.stderr)
            return 1
        at, change = arrived
        print(f"laptop: received {change.view.content!r} after {(at - started) * 1000:.1f} ms")

        text = f"{user.capitalize()} prefers green tea over coffee"
        started = time.perf_counter()
        await phone.update(written.id, if_match="auto", content=text)
        print(f"phone:  updated it to {text!r}")
        arrived = await _arrival(arrivals, written.id, text, wait_s)
        if arrived is None:
            print(f"laptop: the update did not arrive within {wait_s:.0f} s", file=sys.stderr)
            return 1
        at, change = arrived
        print(f"laptop: received {change.view.content!r} after {(at - started) * 1000:.1f} ms")
        cached = laptop.cache.view(change.key)
        print(f"laptop: local cache holds {cached.content if cached else None!r}")
        print(f"laptop: stream cursor {sub.cursor}, reconnects {sub.reconnects}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    args = _parse(argv)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    cluster = json.loads(args.cluster.read_text())
    return asyncio.run(run(cluster, args.user, args.laptop_region, args.timeout))


if __name__ == "__main__":
    sys.exit(main())
