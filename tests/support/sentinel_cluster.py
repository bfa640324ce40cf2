"""A real Sentinel deployment on loopback: a ``redis-server`` primary, one replica and three
``redis-sentinel`` processes (Debian's ``redis-sentinel`` package), tuned to fail over in about
a second (``down-after-milliseconds`` 500, quorum 2)."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from tests.support.gateway_proc import free_port
from tests.support.redis_server import PASSWORD

SERVICE = "gwmaster"
DOWN_AFTER_MS = 500
FAILOVER_TIMEOUT_MS = 2000


def _binary(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} not found on PATH: apt-get install redis-server redis-sentinel")
    return found


class SentinelCluster:
    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="sgw-sentinel-"))
        self.data_ports = [free_port(), free_port()]  # [0] starts as primary, [1] as its replica
        self.sentinel_ports = [free_port() for _ in range(3)]
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports)
        # Short socket timeouts: a dead primary is noticed by the gateway within half a second.
        return f"redis+sentinel://:{PASSWORD}@{hosts}/{SERVICE}?socket_timeout=0.5&socket_connect_timeout=0.5"

    def _spawn(self, port: int, args: list[str]) -> None:
        log = (self.dir / f"{port}.log").open("ab")
        self.procs[port] = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        log.close()

    def _data_args(self, port: int, replica_of: int | None) -> list[str]:
        workdir = self.dir / str(port)
        workdir.mkdir(exist_ok=True)
        args = [_binary("redis-server"), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(workdir)]
        args += ["--save", "", "--appendonly", "no", "--requirepass", PASSWORD, "--masterauth", PASSWORD]
        if replica_of is not None:
            args += ["--replicaof", "127.0.0.1", str(replica_of)]
        return args

    def _sentinel_args(self, port: int) -> list[str]:
        conf = self.dir / f"sentinel-{port}.conf"  # sentinels rewrite their config: one each
        conf.write_text(
            "\n".join(
                [
                    f"port {port}",
                    "bind 127.0.0.1",
                    f"dir {self.dir}",
                    f"sentinel monitor {SERVICE} 127.0.0.1 {self.data_ports[0]} 2",
                    f"sentinel auth-pass {SERVICE} {PASSWORD}",
                    f"sentinel down-after-milliseconds {SERVICE} {DOWN_AFTER_MS}",
                    f"sentinel failover-timeout {SERVICE} {FAILOVER_TIMEOUT_MS}",
                    f"sentinel parallel-syncs {SERVICE} 1",
                ]
            )
            + "\n"
        )
        return [_binary("redis-sentinel"), str(conf)]

    def start(self, timeout: float = 20.0) -> SentinelCluster:
        primary, replica = self.data_ports
        self._spawn(primary, self._data_args(primary, None))
        self._spawn(replica, self._data_args(replica, primary))
        self._until(lambda: self._info(replica).get("master_link_status") == "up", timeout, "replication")
        for port in self.sentinel_ports:
            self._spawn(port, self._sentinel_args(port))
        self._until(self._sentinels_agree, timeout, "sentinels to see each other and the replica")
        return self

    def _info(self, port: int) -> dict[str, object]:
        try:
            with redis.Redis(port=port, password=PASSWORD, socket_timeout=1) as client:
                return dict(client.info("replication"))
        except redis.RedisError:
            return {}

    def _sentinels_agree(self) -> bool:
        for port in self.sentinel_ports:
            try:
                with redis.Redis(port=port, socket_timeout=1) as client:
                    state = client.sentinel_master(SERVICE)
            except redis.RedisError:
                return False
            if int(state.get("num-other-sentinels", 0)) < 2 or int(state.get("num-slaves", 0)) < 1:
                return False
        return True

    def master_port(self) -> int | None:
        """The primary's port as a majority of the sentinels report it (None: no answer)."""
        seen: dict[int, int] = {}
        for port in self.sentinel_ports:
            try:
                with redis.Redis(port=port, socket_timeout=1) as client:
                    _, master = client.sentinel_get_master_addr_by_name(SERVICE)
            except (redis.RedisError, TypeError):
                continue
            seen[int(master)] = seen.get(int(master), 0) + 1
        best = max(seen.items(), key=lambda item: item[1], default=None)
        return best[0] if best and best[1] >= 2 else None

    def kill(self, port: int) -> None:
        proc = self.procs.pop(port)
        proc.kill()
        proc.wait(5)

    @staticmethod
    def _until(check: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() > deadline:
                pytest.fail(f"sentinel cluster: waiting for {what} timed out")
            time.sleep(0.05)

    def stop(self) -> None:
        for proc in self.procs.values():
            proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs.clear()
        shutil.rmtree(self.dir, ignore_errors=True)
