"""The compose file's Sentinel start script, run as it is (sh, its heredoc, redis-sentinel) with
loopback in place of Docker's names: the written config is one Sentinel accepts, and it finds
the primary under the service name the gateways' state URL asks for, and the replica."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import yaml

from gateway.state.redis_url import parse_redis_url
from tests.support.gateway_proc import free_port

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def spawn(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        proc.terminate()
    for proc in started:
        proc.wait(timeout=10)


def poll(check: object, deadline_s: float = 20.0) -> object:
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            answer = check()  # type: ignore[operator]
            if answer:
                return answer
        except redis.RedisError:
            pass
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_the_sentinel_script_monitors_the_primary_the_gateways_ask_for(
    tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    services = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]
    state_url = services["gateway-1"]["environment"]["SHOPINO_STATE_URL"]
    master_name = parse_redis_url(state_url).service
    primary, replica, sentinel = free_port(), free_port(), free_port()
    # --dir: a replica's full sync writes an RDB file into the working directory.
    common = ["--save", "", "--appendonly", "no", "--bind", "127.0.0.1", "--dir", str(tmp_path)]
    processes.append(spawn(["redis-server", "--port", str(primary), *common], tmp_path / "primary.log"))
    processes.append(
        spawn(
            ["redis-server", "--port", str(replica), *common, "--replicaof", "127.0.0.1", str(primary)],
            tmp_path / "replica.log",
        )
    )
    script = services["sentinel-1"]["command"][-1]
    script = script.replace("redis-primary 6379", f"127.0.0.1 {primary}").replace(
        "port 26379", f"port {sentinel}"
    )
    script = script.replace("/tmp/sentinel.conf", str(tmp_path / "sentinel.conf"))
    assert f"sentinel monitor {master_name} 127.0.0.1 {primary} 2" in script
    processes.append(spawn(["sh", "-c", script], tmp_path / "sentinel.log"))
    client = redis.Redis(port=sentinel, socket_timeout=1)
    try:
        master = poll(lambda: client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", master_name))
        assert [part.decode() for part in master] == ["127.0.0.1", str(primary)]  # type: ignore[attr-defined]
        replicas = poll(lambda: client.execute_command("SENTINEL", "REPLICAS", master_name))
        assert replicas, (tmp_path / "sentinel.log").read_text()
    finally:
        client.close()
