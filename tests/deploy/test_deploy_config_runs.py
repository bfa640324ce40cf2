"""deploy/gateway.yaml runs: a real gateway process on it (ports, state URL and spool moved to
this test's loopback and temp dir, nothing else changed), with the environment the compose file
passes, in front of the demo ERP started exactly as the compose ``erp`` service starts it. A
token of the ERP's demo identity provider reaches the ERP through the gateway, which proves the
JWKS hand-over, the shared context key and the TLS files fit together."""

from __future__ import annotations

import json
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from gateway.demo.identities import default_users
from gateway.demo.issuer import DemoIssuer
from gateway.server.tls import self_signed_certificate
from tests.deploy.test_compose import OPERATOR_ENV, gateway_env
from tests.support.gateway_proc import GatewayProc, free_port, insecure_client_context

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def wait_for(url: str, context: ssl.SSLContext | None, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 20
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1, context=context):
                return
        except OSError:
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)


@pytest.fixture
def erp(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]["erp"]
    port = free_port()
    data = tmp_path / "erp"
    args = [
        a.replace("/var/lib/shopino", str(data)).replace("0.0.0.0", "127.0.0.1").replace("9000", str(port))
        for a in compose["command"]
    ]
    log = tmp_path / "erp.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.demo.erp_server", *args],
            env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(DEPLOY.parent), **_context_env()},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    wait_for(f"http://127.0.0.1:{port}/healthz", None, proc, log)
    yield f"http://127.0.0.1:{port}", data
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=10)


def _context_env() -> dict[str, str]:
    return {"SHOPINO_GATEWAY_CONTEXT_KEY": OPERATOR_ENV["SHOPINO_GATEWAY_CONTEXT_KEY"]}


def test_a_gateway_on_the_deploy_config_serves_the_demo_erp(
    erp: tuple[str, Path], redis_url: str, tmp_path: Path
) -> None:
    erp_url, erp_data = erp
    config = yaml.safe_load((DEPLOY / "gateway.yaml").read_text())
    port = free_port()
    config["listen"]["port"] = port
    config["admin"]["listen"] = f"127.0.0.1:{free_port()}"
    config["audit"]["spool_dir"] = str(tmp_path / "spool")
    cert, key = self_signed_certificate(tmp_path / "tls")
    service = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]["gateway-1"]
    env = gateway_env(service)
    env.update(
        SHOPINO_STATE_URL=redis_url,
        SHOPINO_ERP_URL=erp_url,
        SHOPINO_IDP_JWKS=str(erp_data / "demo-issuer.jwks.json"),
        SHOPINO_TLS_CERT=str(cert),
        SHOPINO_TLS_KEY=str(key),
    )
    env.pop("SHOPINO_GATEWAY_CONFIG")  # GatewayProc passes its own copy with -c
    (tmp_path / "gw").mkdir()
    gateway = GatewayProc(tmp_path / "gw", config, env=env).start()
    try:
        context = insecure_client_context()
        # Ready once the store answered and the snapshot is held (503 until then).
        assert gateway.proc is not None
        wait_for(f"https://127.0.0.1:{port}/_gateway/ready", context, gateway.proc, gateway.log_path)
        with urllib.request.urlopen(f"https://127.0.0.1:{port}/_gateway/ready", context=context) as r:
            assert json.loads(r.read())["state"] == "ready"
        alice = next(u for u in default_users() if u.username == "alice")
        token = DemoIssuer.from_pem_file(erp_data / "demo-issuer.key.pem").mint(alice, amr=("pwd", "otp"))
        request = urllib.request.Request(
            f"https://127.0.0.1:{port}/api/inventory/items", headers={"Authorization": f"Bearer {token}"}
        )
        with urllib.request.urlopen(request, timeout=5, context=context) as r:
            body = json.loads(r.read())
        assert r.status == 200 and body["tenant"] == alice.tenant and body["count"] > 0
    finally:
        gateway.stop()
