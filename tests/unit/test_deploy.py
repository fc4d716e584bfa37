"""The compose file and Dockerfile agree with the code (validated, never started here)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

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
