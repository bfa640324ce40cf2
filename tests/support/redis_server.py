"""A real ``redis-server`` on a free loopback port, for tests that must see real Redis
behaviour: restarts, hangs (SIGSTOP), authentication, sentinel discovery.

Missing ``redis-server`` fails the test run (never skips): a skipped backend would let the
conformance suite pass while testing only half the code.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import redis

from tests.support.certs import write_self_signed

PASSWORD = "s3cret-Redis-pw"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """``redis-server`` bound to 127.0.0.1, password-protected, restartable on the same port.

    ``appendonly=True`` keeps data in a temp dir across ``stop()``/``start()``.
    ``sentinel_of=(port, name)`` runs a sentinel monitoring that master (which uses PASSWORD)
    instead. ``tls=True`` serves TLS only, with a self-signed cert that ``url`` trusts.
    """

    def __init__(
        self,
        *,
        appendonly: bool = False,
        password: str | None = PASSWORD,
        sentinel_of: tuple[int, str] | None = None,
        tls: bool = False,
    ) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server not found on PATH: apt-get install redis-server")
        self.binary = binary
        self.port = free_port()
        self.password = None if sentinel_of else password  # sentinels here run without auth
        self.appendonly = appendonly
        self.sentinel_of = sentinel_of
        self.dir = Path(tempfile.mkdtemp(prefix="sgw-redis-"))
        self.tls = tls
        if tls:
            self.cert, self.key = write_self_signed(self.dir, "127.0.0.1")
        self.proc: subprocess.Popen[bytes] | None = None
        self.paused = False

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        if self.tls:
            return f"rediss://{auth}127.0.0.1:{self.port}/0?ssl_ca_certs={self.cert}"
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def _client(self) -> redis.Redis:
        tls = {"ssl": True, "ssl_ca_certs": str(self.cert)} if self.tls else {}
        return redis.Redis(host="127.0.0.1", port=self.port, password=self.password, socket_timeout=2, **tls)

    def _args(self) -> list[str]:
        common = ["--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir)]
        if self.tls:
            common[1] = "0"  # TLS only: no plain-text port at all
            common += ["--tls-port", str(self.port), "--tls-auth-clients", "no"]
            common += ["--tls-cert-file", str(self.cert), "--tls-key-file", str(self.key)]
            common += ["--tls-ca-cert-file", str(self.cert)]
        if self.sentinel_of is not None:
            master_port, name = self.sentinel_of
            conf = self.dir / "sentinel.conf"
            lines = [f"sentinel monitor {name} 127.0.0.1 {master_port} 1"]
            lines.append(f"sentinel auth-pass {name} {PASSWORD}")
            conf.write_text("\n".join(lines) + "\n")
            return [self.binary, str(conf), "--sentinel", *common]
        args = [self.binary, *common, "--save", "", "--appendonly"]
        args.append("yes" if self.appendonly else "no")
        if self.password:
            args += ["--requirepass", self.password]
        return args

    def start(self, timeout: float = 10.0) -> RedisServer:
        """Start (or restart on the same port) and wait until it answers PING."""
        assert self.proc is None, "already running"
        self.proc = subprocess.Popen(self._args(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = self._client()
        deadline = time.monotonic() + timeout
        try:
            while True:
                try:
                    client.ping()
                    return self
                except redis.exceptions.ConnectionError:
                    if self.proc.poll() is not None or time.monotonic() > deadline:
                        self.stop()
                        pytest.fail(f"redis-server did not start on port {self.port}")
                    time.sleep(0.02)
        finally:
            client.close()

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.paused:
            self.resume()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def pause(self) -> None:
        """SIGSTOP: the socket stays open but nothing answers, like a hung server."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)
        self.paused = False

    def flushall(self) -> None:
        with self._client() as client:
            client.flushall()

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
