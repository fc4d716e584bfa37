"""``memsync up`` with three regions, as a user runs it: one command, one cluster file."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from toxiproxy import Toxiproxy

from deploy.tansu import free_port, free_port_run

REGIONS = ("us-east", "eu-west", "ap-south")


def _start(data_dir: Path, base_port: int, api_port: int) -> subprocess.Popen[str]:
    cluster_file = data_dir / "cluster.json"
    cluster_file.unlink(missing_ok=True)
    proc = subprocess.Popen(  # noqa: S603 - our own CLI
        [sys.executable, "-m", "gateway.cli", "up", "--regions", ",".join(REGIONS),
         "--data-dir", str(data_dir), "--base-port", str(base_port),
         "--toxiproxy-port", str(api_port), "--insecure-dev"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("MEMSYNC_")},
    )  # fmt: skip
    deadline = time.monotonic() + 90
    try:
        while not cluster_file.exists():
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            assert time.monotonic() < deadline, "memsync up did not write cluster.json in 90 s"
            time.sleep(0.1)
    except BaseException:
        proc.kill()
        proc.communicate(timeout=60)  # reaps it and closes its output pipe
        raise
    return proc


def _stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    return out


def _wait_for(check: Any, within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_memsync_up_runs_three_regions_through_the_fault_proxy(tmp_path: Path) -> None:
    base, api_port = free_port_run(len(REGIONS)), free_port()
    proc = _start(tmp_path, base, api_port)
    try:
        cluster = json.loads((tmp_path / "cluster.json").read_text())
        urls = {r["name"]: r["url"] for r in cluster["regions"]}
        assert list(urls) == list(REGIONS)
        assert cluster["toxiproxy"] == f"127.0.0.1:{api_port}"
        assert set(cluster["proxies"]) == {f"{a}->{b}" for a in REGIONS for b in REGIONS if a != b}
        auth = {"Authorization": f"Bearer {cluster['token']}"}
        with httpx.Client(headers=auth, timeout=10) as http:
            made = http.post(
                f"{urls['us-east']}/v1/memories",
                json={"id": "theme", "user_id": "alice", "kind": "preference", "content": "dark"},
            )
            assert made.status_code == 201, made.text

            def everywhere(memory_id: str) -> bool:
                return all(
                    http.get(f"{u}/v1/memories/{memory_id}").status_code == 200
                    for u in urls.values()
                )

            _wait_for(lambda: everywhere("theme"), 20, "the write in every region")
            # The real toxiproxy-python client drives the cluster's proxy.
            toxi = Toxiproxy()
            toxi.update_api_consumer("127.0.0.1", api_port)
            assert set(cluster["proxies"].values()) <= set(toxi.proxies())
            for name in ("us-east->eu-west", "us-east->eu-west.http"):
                toxi.get_proxy(name).disable()
            made = http.post(
                f"{urls['us-east']}/v1/memories",
                json={"id": "font", "user_id": "alice", "kind": "preference", "content": "mono"},
            )
            assert made.status_code == 201, made.text
            _wait_for(
                lambda: http.get(f"{urls['ap-south']}/v1/memories/font").status_code == 200,
                20,
                "ap-south",
            )
            time.sleep(0.5)
            assert http.get(f"{urls['eu-west']}/v1/memories/font").status_code == 404
            toxi.reset()  # heal: enables every proxy, removes toxics
            _wait_for(lambda: everywhere("font"), 30, "eu-west after the heal")
            links = http.get(f"{urls['eu-west']}/v1/replication").json()["links"]
            assert {x["source"] for x in links} == {"us-east", "ap-south"}
    finally:
        out = _stop(proc)
    assert "6 mirror links started" in out
    assert "stopped" in out

    # Data is kept across a restart of the whole cluster (brokers come back empty).
    proc = _start(tmp_path, base, api_port)
    try:
        cluster = json.loads((tmp_path / "cluster.json").read_text())
        auth = {"Authorization": f"Bearer {cluster['token']}"}
        with httpx.Client(headers=auth, timeout=10) as http:
            for region in cluster["regions"]:
                got = http.get(f"{region['url']}/v1/memories/font")
                assert got.status_code == 200, (region["name"], got.text)
                assert got.json()["content"] == "mono"
    finally:
        _stop(proc)
