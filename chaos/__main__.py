"""``python -m chaos``: run the Toxiproxy-compatible fault proxy until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

import structlog

from chaos.collection import PopulateError
from chaos.errors import ApiError
from chaos.proxy import DEFAULT_LISTEN, ProxyConfig
from chaos.settings import Limits
from chaos.toxiproxy_api import VERSION, ToxiproxyServer

_log = structlog.get_logger("chaos")
_DEFAULTS = Limits()

_DESCRIPTION = f"""\
memsync's fault proxy: a TCP proxy that injects network faults, driven by the
Toxiproxy HTTP API (version {VERSION.split("+")[0]}), so any Toxiproxy client works
against it unchanged.

Create a proxy, then add toxics to it:

  curl -X POST localhost:8474/proxies \\
       -d '{{"name": "kafka", "listen": "127.0.0.1:19092", "upstream": "127.0.0.1:9092"}}'
  curl -X POST localhost:8474/proxies/kafka/toxics \\
       -d '{{"type": "latency", "stream": "downstream", "attributes": {{"latency": 200}}}}'
  curl -X POST localhost:8474/proxies/kafka -d '{{"enabled": false}}'   # take it down
  curl -X POST localhost:8474/reset                                   # heal everything

Endpoints: GET/POST /proxies, POST /populate, GET/POST/DELETE /proxies/NAME,
GET/POST /proxies/NAME/toxics, GET/POST/DELETE /proxies/NAME/toxics/TOXIC,
POST /reset, GET /version.

Toxics (attributes; "stream": upstream|downstream, "toxicity": 0..1):
  latency     latency, jitter (ms)        bandwidth   rate (KB/s)
  slow_close  delay (ms)                  timeout     timeout (ms; 0 = hold forever)
  reset_peer  timeout (ms, then RST)      limit_data  bytes
  slicer      average_size, size_variation (bytes), delay (µs)
"""


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m chaos",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--host", default="127.0.0.1", help="API address (default %(default)s)")
    parser.add_argument("--port", type=int, default=8474, help="API port (default %(default)s)")
    parser.add_argument(
        "--config",
        type=Path,
        help="JSON file with an array of proxies to populate at start "
        '([{"name": ..., "listen": ..., "upstream": ...}])',
    )
    parser.add_argument(
        "--seed", type=int, help="seed for toxicity rolls, jitter and slice sizes (replayable runs)"
    )
    parser.add_argument(
        "--chunk-size",
        type=int,
        default=_DEFAULTS.chunk_size,
        help="bytes read per socket read (default %(default)s)",
    )
    parser.add_argument(
        "--queue-chunks",
        type=int,
        default=_DEFAULTS.queue_chunks,
        help="chunks buffered per connection direction (default %(default)s)",
    )
    parser.add_argument(
        "--connect-timeout",
        type=float,
        default=_DEFAULTS.connect_timeout,
        help="seconds to wait for an upstream connection (default %(default)s)",
    )
    parser.add_argument("--version", action="version", version=VERSION)
    return parser.parse_args(argv)


def _load_config(path: Path) -> list[ProxyConfig]:
    entries = json.loads(path.read_text())
    if not isinstance(entries, list):
        raise TypeError(f"{path}: expected a JSON array of proxies")
    return [
        ProxyConfig(
            name=entry["name"],
            upstream=entry["upstream"],
            listen=entry.get("listen") or DEFAULT_LISTEN,
            enabled=entry.get("enabled", True),
        )
        for entry in entries
    ]


async def _serve(args: argparse.Namespace) -> None:
    limits = Limits(
        chunk_size=args.chunk_size,
        queue_chunks=args.queue_chunks,
        connect_timeout=args.connect_timeout,
    )
    server = ToxiproxyServer(args.host, args.port, limits=limits, seed=args.seed)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        if args.config is not None:
            proxies = await server.collection.populate(_load_config(args.config))
            _log.info("toxiproxy.populated", config=str(args.config), proxies=len(proxies))
        await stop.wait()


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    try:
        asyncio.run(_serve(args))
    except (OSError, ValueError, TypeError, KeyError, ApiError, PopulateError) as exc:
        print(f"python -m chaos: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
