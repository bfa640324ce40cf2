"""``shopino-gateway demo``: the demo ERP and the gateway in front of it, in one process.

The gateway runs the shipped ``config/gateway.yaml`` unchanged; the demo only supplies the
``SHOPINO_DEMO_*`` variables that file reads (ports, the backend's URL, a temporary state dir).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import sys
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import uvloop

import gateway
from gateway.config import ConfigError, load_config
from gateway.tenancy.keys import ENV_VAR as CONTEXT_KEY_ENV
from gateway.tenancy.keys import PREVIOUS_ENV_VAR as PREVIOUS_CONTEXT_KEY_ENV

if TYPE_CHECKING:
    from gateway.demo.identities import DemoUser

DEMO_ADMIN_TOKEN = "demo-admin-token"  # noqa: S105 - published demo credential (hash in the config)


def shipped_config_path() -> Path:
    return Path(gateway.__file__).resolve().parent.parent / "config" / "gateway.yaml"


def run_demo(*, port: int, admin_port: int, backend_port: int) -> int:
    config_path = shipped_config_path()
    if not config_path.exists():
        print(
            f"demo: {config_path} not found (run from a source checkout: pip install -e .)", file=sys.stderr
        )
        return 1
    workdir = Path(tempfile.mkdtemp(prefix="shopino-demo-"))
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        try:
            return runner.run(_demo(config_path, workdir, port, admin_port, backend_port))
        except OSError as exc:
            print(
                f"demo: cannot listen ({exc.strerror}); choose other ports with --port, "
                "--admin-port, --backend-port",
                file=sys.stderr,
            )
            return 1


async def _demo(config_path: Path, workdir: Path, port: int, admin_port: int, backend_port: int) -> int:
    from gateway.demo.backend import start_backend
    from gateway.demo.identities import DEMO_PASSWORDS, default_users
    from gateway.demo.issuer import DemoIssuer
    from gateway.logs import configure_logging
    from gateway.server import GatewayProcess

    issuer = DemoIssuer()
    users = default_users()
    issuer.write_jwks(workdir / "demo-issuer.jwks.json")
    issuer.write_private_pem(workdir / "demo-issuer.key.pem")
    # SPEC §7: the gateway signs X-Gateway-Context with this key and the demo ERP refuses any
    # request whose context does not verify; one random key per run unless the operator set one.
    if not os.environ.get(CONTEXT_KEY_ENV):
        os.environ[CONTEXT_KEY_ENV] = secrets.token_urlsafe(32)
    keys = [os.environ[CONTEXT_KEY_ENV]]
    if os.environ.get(PREVIOUS_CONTEXT_KEY_ENV):
        keys.append(os.environ[PREVIOUS_CONTEXT_KEY_ENV])
    backend = await start_backend(issuer, users, port=backend_port, context_keys=keys)
    os.environ.update(
        {
            "SHOPINO_DEMO_PORT": str(port),
            "SHOPINO_DEMO_ADMIN_PORT": str(admin_port),
            "SHOPINO_DEMO_UPSTREAM": backend.url,
            "SHOPINO_DEMO_STATE": f"local:{workdir / 'state'}",
            "SHOPINO_DEMO_AUDIT_SPOOL": str(workdir / "audit-spool"),
            "SHOPINO_DEMO_ISSUER": issuer.issuer,
            "SHOPINO_DEMO_JWKS": str(workdir / "demo-issuer.jwks.json"),
        }
    )
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        await backend.close()
        print("\n".join(exc.errors), file=sys.stderr)
        return 1
    configure_logging(config.logging)
    process = GatewayProcess(config, config_path, workdir=workdir / "tls", demo=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(process.reload()))
    try:
        await process.start()
        print(_banner(port, admin_port, backend.url, workdir, users, DEMO_PASSWORDS), flush=True)
        await stop.wait()
    finally:
        await process.stop()
        await backend.close()
    print("demo stopped", flush=True)
    return 0


def _banner(
    port: int,
    admin_port: int,
    backend_url: str,
    workdir: Path,
    users: Iterable[DemoUser],
    passwords: Mapping[str, str],
) -> str:
    url = f"https://127.0.0.1:{port}"
    admin = f"http://127.0.0.1:{admin_port}"
    lines = [
        "",
        "=== shopino-gateway demo ===",
        f"gateway (TLS, self-signed): {url}",
        f"admin API:                  {admin}   (token: {DEMO_ADMIN_TOKEN})",
        f"demo ERP backend:           {backend_url}   (reachable only from this machine)",
        f"state and keys:             {workdir}",
        "",
        "demo users (tenant, roles, password, TOTP secret):",
    ]
    for user in users:
        lines.append(
            f"  {user.username:<6} {user.tenant:<16} {','.join(user.roles):<22} "
            f"{passwords[user.username]:<16} {user.totp_secret}"
        )
    lines += [
        "",
        "try it (copy-paste into a shell; needs curl and python3 with pyotp):",
        f"  G={url}",
        "  curl -sk $G/_gateway/ready",
        "  # 1. log in through the gateway: the ERP checks the password, the token says amr=[pwd]",
        "  TOKEN=$(curl -sk -X POST $G/auth/login -H 'Content-Type: application/json' \\",
        f'      -d \'{{"username":"alice","password":"{passwords["alice"]}"}}\' | '
        "python3 -c 'import json,sys; print(json.load(sys.stdin)[\"access_token\"])')",
        "  # 2. a password alone is not enough for the ERP's API (401 insufficient_user_authentication)",
        '  curl -sk -i $G/api/inventory/items -H "Authorization: Bearer $TOKEN"',
        "  # 3. enroll a TOTP authenticator at the gateway (the QR code is in .qr_svg)",
        '  SECRET=$(curl -sk -X POST $G/_gateway/mfa/enroll -H "Authorization: Bearer $TOKEN" | '
        "python3 -c 'import json,sys; print(json.load(sys.stdin)[\"secret\"])')",
        '  curl -sk -X POST $G/_gateway/mfa/activate -H "Authorization: Bearer $TOKEN" '
        "-H 'Content-Type: application/json' \\",
        '      -d "{\\"code\\":\\"$(python3 -c "import pyotp; print(pyotp.TOTP(\'$SECRET\').now())")\\"}"',
        "  # 4. after the next 30-second step: verify a fresh code, get the gateway's MFA token",
        '  sleep 30; MFA=$(curl -sk -X POST $G/_gateway/mfa/verify -H "Authorization: Bearer $TOKEN" '
        "-H 'Content-Type: application/json' \\",
        '      -d "{\\"code\\":\\"$(python3 -c "import pyotp; print(pyotp.TOTP(\'$SECRET\').now())")\\"}" | '
        "python3 -c 'import json,sys; print(json.load(sys.stdin)[\"access_token\"])')",
        "  # 5. the ERP answers, for alice's tenant only (the gateway sets X-Tenant-ID from the token)",
        "  curl -sk $G/api/inventory/items -H \"Authorization: Bearer $MFA\" -H 'X-Tenant-ID: globex'",
        "  curl -sk $G/.well-known/jwks.json",
        "  # 5b. tenants: another tenant in the path is 403 tenant-mismatch; support access needs a grant",
        '  curl -sk -i $G/t/globex/api/inventory/items -H "Authorization: Bearer $MFA"',
        "  # alice (tenant-admin, MFA under 15 min old) lets support user sam see acme's inventory for 1 h",
        "  SHOPINO_GATEWAY_TOKEN=$MFA shopino-gateway grants create --url $G \\",
        f"      --cafile {workdir / 'tls' / 'self-signed.crt'} --grantee sam --modules inventory --ttl 1h",
        f"  shopino-gateway grants list --admin-url {admin}",
        "  # 6. attacks refused before they reach the ERP",
        '  curl -sk -i --path-as-is "$G/api/inventory/..%2f..%2fadmin"',
        "  curl -sk -i $G/api/finance/invoices -H 'Authorization: Bearer eyJhbGciOiJub25lIn0.e30.'",
        "  # 7. operators: effective config (secrets masked), reload, the audit trail",
        f"  export SHOPINO_GATEWAY_ADMIN_URL={admin} SHOPINO_GATEWAY_ADMIN_TOKEN={DEMO_ADMIN_TOKEN}",
        f"  curl -s {admin}/admin/config -H 'Authorization: Bearer {DEMO_ADMIN_TOKEN}'",
        "  shopino-gateway reload",
        "  shopino-gateway audit export --tenant acme --format csv",
        "  shopino-gateway audit verify --tenant acme",
        "  # 8. incident response: isolate the finance module on every instance, see the 503, release",
        f"  shopino-gateway killswitch engage --admin-url {admin} --scope module --target finance \\",
        '      --mode block --reason "demo: suspected invoice exfiltration" --incident INC-DEMO --ttl 15m',
        "  curl -sk -i $G/api/finance/invoices     # 503 isolated, with the incident id and Retry-After",
        f"  shopino-gateway killswitch list --admin-url {admin}",
        f"  shopino-gateway killswitch release --admin-url {admin} ID --reason 'demo over'",
        "",
        "Ctrl-C stops everything.",
        "",
    ]
    return "\n".join(lines)
