"""The walkthrough ``shopino-gateway demo`` prints: commands that run top to bottom in bash.

Format (the e2e test relies on it, and so can a reader): everything between the ``PASTE_FROM``
and ``PASTE_TO`` comment lines is one bash script. It first defines what later steps use
(``$G``, the exported admin URL and token, ``field`` to read a JSON field and ``totp`` to play
the authenticator app, both with the demo's own Python, which has pyotp); then each step starts
with a ``# N. what it shows (expect: what you should see)`` comment.
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.demo.identities import DemoUser

DEMO_ADMIN_TOKEN = "demo-admin-token"  # noqa: S105 - published demo credential (hash in the config)
DEMO_INCIDENT = "INC-DEMO"
PASTE_FROM = "# ---- paste into bash from here (needs curl) ----"
PASTE_TO = "# ---- to here ----"


@dataclass(frozen=True)
class Step:
    title: str
    expect: str
    commands: tuple[str, ...]


def setup_lines(port: int, admin_port: int) -> list[str]:
    python = shlex.quote(sys.executable)
    return [
        f"PY={python}   # the Python running this demo (it has pyotp)",
        """field() { "$PY" -c 'import json,sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"; }""",
        """totp() { "$PY" -c 'import pyotp,sys; print(pyotp.TOTP(sys.argv[1]).now())' "$1"; }"""
        "   # your authenticator app",
        f"G=https://127.0.0.1:{port}",
        f"export SHOPINO_GATEWAY_ADMIN_URL=http://127.0.0.1:{admin_port} "
        f"SHOPINO_GATEWAY_ADMIN_TOKEN={DEMO_ADMIN_TOKEN}",
    ]


def steps(password: str, cafile: Path) -> list[Step]:
    curl = "curl -sk -w '\\n'"  # -w: a newline after each body, so the answers do not run together
    bearer = '-H "Authorization: Bearer $TOKEN"'
    mfa = '-H "Authorization: Bearer $MFA"'
    json_type = "-H 'Content-Type: application/json'"
    code = '-d "{\\"code\\":\\"$(totp $SECRET)\\"}"'
    return [
        Step("the gateway is up", '{"state": "ready", ...}', (f"{curl} $G/_gateway/ready",)),
        Step(
            "log in through the gateway: the ERP checks the password, the token says amr=[pwd]",
            "no output; $TOKEN is set",
            (
                f"TOKEN=$(curl -sk -X POST $G/auth/login {json_type} \\\n"
                f'    -d \'{{"username":"alice","password":"{password}"}}\' | field access_token)',
            ),
        ),
        Step(
            "a password alone is not enough for the ERP's API",
            "401, insufficient_user_authentication",
            (f"{curl} -i $G/api/inventory/items {bearer}",),
        ),
        Step(
            "enrol a TOTP authenticator at the gateway (the QR code is in .qr_svg)",
            "the recovery codes",
            (
                f"SECRET=$(curl -sk -X POST $G/_gateway/mfa/enroll {bearer} | field secret)",
                f"{curl} -X POST $G/_gateway/mfa/activate {bearer} {json_type} {code}",
            ),
        ),
        Step(
            "a code counts once: wait for the next one (up to 30 s), verify it, get the MFA token",
            "no output; $MFA is set",
            (
                "sleep $((31 - $(date +%s) % 30))",
                f"MFA=$(curl -sk -X POST $G/_gateway/mfa/verify {bearer} {json_type} {code} "
                "| field access_token)",
            ),
        ),
        Step(
            "the ERP answers for alice's tenant only: X-Tenant-ID comes from the token, not the client",
            '"tenant": "acme"; then the gateway\'s public keys',
            (
                f"{curl} $G/api/inventory/items {mfa} -H 'X-Tenant-ID: globex'",
                f"{curl} $G/.well-known/jwks.json",
            ),
        ),
        Step(
            "another tenant in the path is refused",
            "403 tenant-mismatch",
            (f"{curl} -i $G/t/globex/api/inventory/items {mfa}",),
        ),
        Step(
            "alice (tenant-admin, MFA under 15 min old) lets support user sam see acme's inventory "
            "for 1 h; operators see every grant",
            "granted ... grantee=sam, then the same grant listed",
            (
                "SHOPINO_GATEWAY_TOKEN=$MFA shopino-gateway grants create --url $G \\\n"
                f"    --cafile {shlex.quote(str(cafile))} --grantee sam --modules inventory --ttl 1h",
                "shopino-gateway grants list",
            ),
        ),
        Step(
            "attacks refused before they reach the ERP",
            "400 for the encoded traversal, 401 for the unsigned token",
            (
                f'{curl} -i --path-as-is "$G/api/inventory/..%2f..%2fadmin"',
                f"{curl} -i $G/api/finance/invoices -H 'Authorization: Bearer eyJhbGciOiJub25lIn0.e30.'",
            ),
        ),
        Step(
            "operators: the effective config (secrets masked), reload, the audit trail",
            "the config as JSON; reloaded; acme's trail as CSV; the chain verifies",
            (
                "curl -s -w '\\n' $SHOPINO_GATEWAY_ADMIN_URL/admin/config "
                '-H "Authorization: Bearer $SHOPINO_GATEWAY_ADMIN_TOKEN"',
                "shopino-gateway reload",
                "shopino-gateway audit export --tenant acme --format csv",
                "shopino-gateway audit verify --tenant acme",
            ),
        ),
        Step(
            "incident response: isolate the finance module on every instance",
            f"engaged ...; then 503 isolated with incident {DEMO_INCIDENT} and Retry-After",
            (
                "shopino-gateway killswitch engage --scope module --target finance --mode block \\\n"
                f'    --reason "demo: suspected invoice exfiltration" --incident {DEMO_INCIDENT} --ttl 15m',
                f"{curl} -i $G/api/finance/invoices",
                "shopino-gateway killswitch list",
            ),
        ),
        Step(
            "release every switch of the incident (or one: killswitch release ID)",
            "released ...; then 401 again (no token), not 503",
            (
                f"shopino-gateway killswitch release --incident {DEMO_INCIDENT} --reason 'demo over'",
                f"{curl} -i $G/api/finance/invoices",
            ),
        ),
    ]


def walkthrough(port: int, admin_port: int, password: str, cafile: Path) -> list[str]:
    """The paste-able block, marker lines included, without indentation."""
    lines = [PASTE_FROM, *setup_lines(port, admin_port)]
    for number, step in enumerate(steps(password, cafile), start=1):
        lines.append(f"# {number}. {step.title} (expect: {step.expect})")
        lines.extend(step.commands)
    lines.append(PASTE_TO)
    return lines


def banner(
    port: int,
    admin_port: int,
    backend_url: str,
    workdir: Path,
    users: Iterable[DemoUser],
    passwords: Mapping[str, str],
) -> str:
    lines = [
        "",
        "=== shopino-gateway demo ===",
        f"gateway (TLS, self-signed): https://127.0.0.1:{port}",
        f"admin API:                  http://127.0.0.1:{admin_port}   (token: {DEMO_ADMIN_TOKEN})",
        f"incident console:           http://127.0.0.1:{admin_port}/console/   (sign in with that token)",
        f"demo ERP backend:           {backend_url}   (reachable only from this machine)",
        f"state, keys and TLS cert:   {workdir}   (temporary)",
        "",
        "demo users (tenant, roles, password, TOTP secret):",
    ]
    for user in users:
        lines.append(
            f"  {user.username:<6} {user.tenant:<16} {','.join(user.roles):<22} "
            f"{passwords[user.username]:<16} {user.totp_secret}"
        )
    cafile = workdir / "tls" / "self-signed.crt"
    lines += ["", "try it: the whole flow, step by step; each step says what you should see."]
    lines += [f"  {line}" for line in walkthrough(port, admin_port, passwords["alice"], cafile)]
    lines += ["", "Ctrl-C stops everything.", ""]
    return "\n".join(line.replace("\n", "\n  ") for line in lines)
