"""``shopino-gateway demo``: starts, prints working commands, refuses what it must, stops on Ctrl-C."""

from __future__ import annotations

import json
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pyotp

from tests.support.gateway_proc import free_port


def _context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def _call(url: str, data: dict | None = None, headers: dict | None = None) -> tuple[int, bytes]:
    body = json.dumps(data).encode() if data is not None else None
    request = urllib.request.Request(
        url, data=body, headers={"Content-Type": "application/json", **(headers or {})}
    )
    try:
        with urllib.request.urlopen(request, timeout=10, context=_context()) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def test_demo_walkthrough_and_clean_stop(tmp_path: Path) -> None:
    port, admin_port, backend_port = free_port(), free_port(), free_port()
    log = (tmp_path / "demo.log").open("wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gateway",
            "demo",
            "--port",
            str(port),
            "--admin-port",
            str(admin_port),
            "--backend-port",
            str(backend_port),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        output = ""
        while "Ctrl-C stops everything" not in output:
            assert proc.poll() is None, output
            assert time.monotonic() < deadline, output
            time.sleep(0.2)
            output = (tmp_path / "demo.log").read_text()
        password = next(line.split()[3] for line in output.splitlines() if line.strip().startswith("alice "))
        base = f"https://127.0.0.1:{port}"
        status, body = _call(f"{base}/auth/login", {"username": "alice", "password": password})
        assert status == 200
        token = json.loads(body)["access_token"]
        status, _ = _call(f"{base}/auth/login", {"username": "alice", "password": "wrong"})
        assert status == 401
        first = {"Authorization": f"Bearer {token}"}
        status, body = _call(f"{base}/api/inventory/items", headers=first)
        assert status == 401  # a password alone is not enough
        assert token.encode() not in body
        status, body = _call(f"{base}/_gateway/mfa/enroll", {}, headers=first)
        assert status == 200
        secret = json.loads(body)["secret"]
        status, body = _call(
            f"{base}/_gateway/mfa/activate", {"code": pyotp.TOTP(secret).now()}, headers=first
        )
        assert status == 200
        recovery = json.loads(body)["recovery_codes"][0]
        status, body = _call(f"{base}/_gateway/mfa/verify", {"recovery_code": recovery}, headers=first)
        assert status == 200
        mfa = {"Authorization": f"Bearer {json.loads(body)['access_token']}", "X-Tenant-ID": "globex"}
        status, body = _call(f"{base}/api/inventory/items", headers=mfa)
        assert status == 200
        items = json.loads(body)
        assert items["tenant"] == "acme"  # the token's tenant, not the spoofed header
        status, _ = _call(f"{base}/_gateway/ready")
        assert status == 200
        assert "curl -sk $G/_gateway/ready" in output and f"G={base}" in output
        _isolate_finance_as_the_banner_says(output, base, admin_port)
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(15)
        log.close()
    assert code == 0
    final = (tmp_path / "demo.log").read_text()
    assert "demo stopped" in final
    assert password not in final.split("Ctrl-C stops everything")[1]  # never logged after the banner


def _isolate_finance_as_the_banner_says(output: str, base: str, admin_port: int) -> None:
    """Step 8 of the banner: the kill switch command it prints works, the 503 shows, release."""
    admin = f"http://127.0.0.1:{admin_port}"
    assert f"killswitch engage --admin-url {admin} --scope module --target finance" in output
    env = {"SHOPINO_GATEWAY_ADMIN_TOKEN": "demo-admin-token", "PATH": "/usr/bin:/bin"}
    engage = subprocess.run(
        [sys.executable, "-m", "gateway", "killswitch", "engage", "--admin-url", admin, "--scope", "module",
         "--target", "finance", "--mode", "block", "--reason", "demo", "--incident", "INC-DEMO",
         "--ttl", "15m", "--json"],
        capture_output=True, text=True, env=env, timeout=30, check=False,
    )
    assert engage.returncode == 0, engage.stderr
    status, body = _call(f"{base}/api/finance/invoices")
    assert status == 503 and json.loads(body)["incident"] == "INC-DEMO"
    release = subprocess.run(
        [sys.executable, "-m", "gateway", "killswitch", "release", "--admin-url", admin,
         json.loads(engage.stdout)["id"], "--reason", "demo over"],
        capture_output=True, text=True, env=env, timeout=30, check=False,
    )
    assert release.returncode == 0, release.stderr
    status, _ = _call(f"{base}/api/finance/invoices")
    assert status == 401  # released: back to the normal answer (no token)
