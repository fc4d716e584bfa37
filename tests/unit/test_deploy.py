"""The compose file and Dockerfile agree with the code (validated, never started here)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import threading
from pathlib import Path

import pytest
import yaml

from deploy.runner import write_atomically

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.multi-region.yml"
REGIONS = ("us-east", "eu-west", "ap-south")


def _services() -> dict[str, dict[str, object]]:
    data = yaml.safe_load(COMPOSE.read_text())
    services: dict[str, dict[str, object]] = data["services"]
    return services


def test_every_region_has_a_broker_a_store_and_a_gateway_wired_to_them() -> None:
    services = _services()
    ports = set()
    for region in REGIONS:
        for part in ("kafka", "qdrant", "gateway"):
            assert f"{part}-{region}" in services
        env = services[f"gateway-{region}"]["environment"]
        assert isinstance(env, dict)
        assert env["MEMSYNC_REGION"] == region
        assert env["MEMSYNC_KAFKA_BOOTSTRAP"] == f"kafka-{region}:9092"
        assert env["MEMSYNC_STORE_URL"] == f"http://qdrant-{region}:6333"
        assert env["MEMSYNC_STORE_BACKEND"] == "server"
        ports.update(services[f"gateway-{region}"]["ports"])  # type: ignore[arg-type]
    assert len(ports) == len(REGIONS)


def test_dockerfile_copies_paths_that_exist() -> None:
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    for src in re.findall(r"^COPY (\S+)", dockerfile, flags=re.M):
        for name in src.split():
            assert (ROOT / name).exists(), name


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="Debian's docker-compose")
def test_docker_compose_accepts_the_file() -> None:
    env = {**os.environ, "MEMSYNC_SECRET": "x" * 32}
    result = subprocess.run(  # noqa: S603
        ["docker-compose", "-f", str(COMPOSE), "config", "--quiet"],  # noqa: S607
        env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr


def test_every_directed_pair_has_a_mirror_link_through_its_toxiproxy_proxy() -> None:
    import json

    services = _services()
    proxies = {p["name"]: p for p in json.loads((ROOT / "deploy" / "toxiproxy.json").read_text())}
    pairs = [(a, b) for a in REGIONS for b in REGIONS if a != b]
    assert set(proxies) == {f"{a}->{b}{s}" for a, b in pairs for s in ("", ".http")}
    for a, b in pairs:
        command = services[f"mirror-{a}-{b}"]["command"]
        assert isinstance(command, list)
        args = dict(zip(command[2::2], command[3::2], strict=True))
        assert (args["--source-region"], args["--target-region"]) == (a, b)
        assert args["--source-kafka"] == f"kafka-{a}:9092"  # next to its source
        port = proxies[f"{a}->{b}"]["listen"].rsplit(":", 1)[1]
        assert args["--target-kafka"] == f"toxiproxy:{port}"
        assert args["--target-route"] == f"*=toxiproxy:{port}"  # no bypass after metadata
        assert proxies[f"{a}->{b}"]["upstream"] == f"kafka-{b}:9092"
    for region in REGIONS:
        env = services[f"gateway-{region}"]["environment"]
        assert isinstance(env, dict)
        peers = dict(p.split("=", 1) for p in env["MEMSYNC_PEERS"].split(","))
        assert set(peers) == set(REGIONS) - {region}
        for source, url in peers.items():
            proxy = proxies[f"{source}->{region}.http"]
            assert url == f"http://toxiproxy:{proxy['listen'].rsplit(':', 1)[1]}"
            assert proxy["upstream"] == f"gateway-{source}:8700"


def test_memsync_up_passes_gateway_settings_through_but_wires_each_region_itself() -> None:
    from deploy.runner import Region, gateway_env
    from deploy.tansu import TansuBroker

    broker = TansuBroker(port=19092)  # never started: only its address is read
    region = Region("eu-west", 8701, Path("/data/eu-west"), broker)
    env = gateway_env(
        region,
        "s" * 32,
        insecure_dev=False,
        peers="us-east",
        environ={
            "PATH": "/bin",
            "MEMSYNC_CACHE_BYTES": "1048576",
            "MEMSYNC_WRITE_THROUGH_QUEUE": "0",
            "MEMSYNC_REGION": "somewhere-else",
            "MEMSYNC_HTTP_PORT": "1",
            "MEMSYNC_KAFKA_PARTITIONS": "2",
            "MEMSYNC_KAFKA_BOOTSTRAP": "elsewhere:9092",
        },
    )
    assert env["PATH"] == "/bin"
    assert env["MEMSYNC_CACHE_BYTES"] == "1048576"
    assert env["MEMSYNC_WRITE_THROUGH_QUEUE"] == "0"
    assert env["MEMSYNC_REGION"] == "eu-west"
    assert env["MEMSYNC_HTTP_PORT"] == "8701"
    assert env["MEMSYNC_KAFKA_BOOTSTRAP"] == broker.bootstrap
    assert "MEMSYNC_KAFKA_PARTITIONS" not in env  # the log's shape is the runner's
    assert env["MEMSYNC_PEERS"] == "us-east"


def test_the_cluster_file_appears_whole_or_not_at_all(tmp_path: Path) -> None:
    # memsync up's cluster.json is read by whoever polls for it: a reader
    # that finds it must find all of it (in place, it existed empty first).
    target = tmp_path / "cluster.json"
    torn: list[str] = []
    done = threading.Event()

    def read() -> None:
        while not done.is_set():
            with contextlib.suppress(FileNotFoundError):
                text = target.read_text()
                try:
                    json.loads(text)
                except ValueError:
                    torn.append(text[:40])

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for i in range(200):
            write_atomically(target, json.dumps({"n": i, "pad": "x" * 200_000}))
    finally:
        done.set()
        reader.join()
    assert torn == []
    assert json.loads(target.read_text())["n"] == 199
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cluster.json"]  # no temp left
