"""The real CLI in a subprocess: ``python -m gateway run -c FILE`` on free loopback ports."""

from __future__ import annotations

import base64
import os
import secrets
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from gateway.logs.access_log import FLUSH_DELAY

if TYPE_CHECKING:
    from tests.support.upstream import Upstream

ADMIN_TOKEN = "test-admin-token"
# How long a test waits for a log line it needs: generous, since waiting ends when the line
# arrives; only a missing line costs the whole wait.
LOG_WAIT = 15.0


# Ports free_port() handed out lately: a server given one may not have bound it yet.
_HANDED_OUT: deque[int] = deque(maxlen=256)


def free_port() -> int:
    """A loopback port nothing is bound to, and none this process handed out lately: the kernel
    may offer a port to two bind(0) calls in a row (measured: 8 pairs in 100,000), and two
    servers of one test (a demo's three ports, a Sentinel cluster's five) then got one port
    before either had bound it."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.append(port)
            return port


def insecure_client_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


class GatewayProc:
    """A gateway process with its config, stdout log file and ports."""

    def __init__(self, tmp: Path, config: dict[str, Any], *, env: dict[str, str] | None = None) -> None:
        import hashlib

        self.tmp = tmp
        # Ports this class picked may be retaken if another process grabs them first (see start).
        self._own_ports = "port" not in config.get("listen", {}) and "listen" not in config.get("admin", {})
        self.port = config.setdefault("listen", {}).setdefault("port", free_port())
        config["listen"].setdefault("host", "127.0.0.1")
        config["listen"].setdefault("tls", "off")
        # Runs a whole suite over either public listener: SHOPINO_TEST_LISTEN_SERVER=aiohttp|lean.
        if listener := os.environ.get("SHOPINO_TEST_LISTEN_SERVER"):
            config["listen"].setdefault("server", listener)
        admin = config.setdefault("admin", {})
        self.admin_port = free_port()
        admin.setdefault("listen", f"127.0.0.1:{self.admin_port}")
        self.admin_port = int(admin["listen"].rpartition(":")[2])
        admin.setdefault(
            "tokens", [{"name": "tests", "sha256": hashlib.sha256(ADMIN_TOKEN.encode()).hexdigest()}]
        )
        config.setdefault("state", {"url": f"local:{tmp / 'state'}"})
        config.setdefault("logging", {"level": "info"})
        config.setdefault("audit", {"spool_dir": str(tmp / "audit-spool")})
        self.config = config
        self.config_path = tmp / "gateway.yaml"
        self.write_config(config)
        self.log_path = tmp / "gateway.log"
        master_key = base64.b64encode(secrets.token_bytes(32)).decode()
        # The X-Gateway-Context MAC key (SPEC §7): tests verify what upstreams receive with it.
        self.context_key = secrets.token_urlsafe(32)
        self.env = {
            **os.environ,
            "SHOPINO_GATEWAY_MASTER_KEY": master_key,
            "SHOPINO_GATEWAY_CONTEXT_KEY": self.context_key,
            **(env or {}),
        }
        self.context_key = self.env["SHOPINO_GATEWAY_CONTEXT_KEY"]
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def scheme(self) -> str:
        return "http" if self.config["listen"]["tls"] == "off" else "https"

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def write_config(self, config: dict[str, Any]) -> None:
        self.config_path.write_text(yaml.safe_dump(config))

    def start(self, *, wait: bool = True, timeout: float = 20.0) -> GatewayProc:
        for attempt in range(3):
            self._spawn()
            if not wait:
                return self
            try:
                self.wait_healthy(timeout)
                return self
            except AssertionError:
                # free_port() cannot reserve a port: between it and the gateway's bind, a client's
                # ephemeral source port may take it. Only ports this class chose are re-picked.
                if not self._own_ports or attempt == 2 or "address already in use" not in self.logs():
                    raise
                self.port, self.admin_port = free_port(), free_port()
                self.config["listen"]["port"] = self.port
                self.config["admin"]["listen"] = f"127.0.0.1:{self.admin_port}"
                self.write_config(self.config)
        return self

    def _spawn(self) -> None:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "run", "-c", str(self.config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env,
            start_new_session=True,
        )
        log.close()

    def wait_healthy(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        context = insecure_client_context() if self.scheme == "https" else None
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"gateway exited with {self.proc.returncode}:\n{self.logs()}")
            try:
                with urllib.request.urlopen(f"{self.url}/_gateway/health", timeout=1, context=context):
                    return
            except (OSError, urllib.error.URLError):
                time.sleep(0.1)
        raise AssertionError(f"gateway not healthy within {timeout}s:\n{self.logs()}")

    def logs(self) -> str:
        """Everything the gateway printed, including the access lines of requests that have
        just finished: they are batched for up to ``FLUSH_DELAY``, so a check that a secret is
        *not* in the log must not read before they are written."""
        time.sleep(FLUSH_DELAY * 3)
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def logs_with(self, *needles: str, timeout: float = LOG_WAIT) -> str:
        """``logs()`` once every needle is in it. A line the test needs may reach the file well
        after the answer that caused it: access lines wait ``FLUSH_DELAY`` for the gateway's
        event loop, and on a loaded host the gateway may get the CPU much later than that.
        After ``timeout`` the log is returned as it is, for the caller's assertion to report."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.logs()
            if all(needle in text for needle in needles) or time.monotonic() > deadline:
                return text
            time.sleep(0.05)

    def access_lines(self, *, paths: Collection[str] = (), timeout: float = LOG_WAIT) -> list[dict[str, Any]]:
        """The access log lines written so far, parsed; first waiting (up to ``timeout``) until
        each of ``paths`` has its line (see ``logs_with``)."""
        import json

        deadline = time.monotonic() + timeout
        while True:
            lines = [json.loads(line) for line in self.logs().splitlines() if '"event":"access"' in line]
            if set(paths) <= {line["path"] for line in lines} or time.monotonic() > deadline:
                return lines
            time.sleep(0.05)

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signum)

    def rss_kib(self) -> int:
        """Resident memory of the gateway and its worker processes."""
        assert self.proc is not None
        pids = [self.proc.pid, *_children(self.proc.pid)]
        total = 0
        for pid in pids:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        return total

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """An operator verb through the real CLI, against this gateway's admin API."""
        env = {
            **os.environ,
            "SHOPINO_GATEWAY_ADMIN_URL": self.admin_url,
            "SHOPINO_GATEWAY_ADMIN_TOKEN": ADMIN_TOKEN,
        }
        return subprocess.run(
            [sys.executable, "-m", "gateway", *args], capture_output=True, text=True, env=env, timeout=30
        )

    def stop(self, timeout: float = 15.0) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            return self.proc.wait(5)


def metric(gw: GatewayProc, name: str) -> float | None:
    """The first sample of ``name`` on the gateway's admin ``/metrics``; None when absent."""
    request = urllib.request.Request(
        f"{gw.admin_url}/metrics", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.split()[-1])
    return None


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


@contextmanager
def running_gateway(tmp: Path, config: dict[str, Any], upstream: Upstream) -> Iterator[GatewayProc]:
    """A started gateway with ``config`` in front of the started ``upstream``; on leaving (or if
    the gateway does not start) stops the gateway, then the upstream."""
    try:
        proc = GatewayProc(tmp, config).start()
        try:
            yield proc
        finally:
            proc.stop()
    finally:
        upstream.stop()
