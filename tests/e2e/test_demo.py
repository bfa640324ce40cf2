"""``shopino-gateway demo``: starts, prints working commands, refuses what it must, stops on Ctrl-C."""

from __future__ import annotations

import hashlib
import json
import re
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pyotp

from gateway.config.effective import MASK
from gateway.demo.walkthrough import DEMO_ADMIN_TOKEN, DEMO_INCIDENT
from tests.support.demo_proc import DemoProc, split_steps, this_checkout_env


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


def test_demo_flow_and_clean_stop(tmp_path: Path) -> None:
    """The flow driven from Python (recovery codes, a release by ID), independent of the banner."""
    demo = DemoProc(tmp_path)
    try:
        output = demo.start()
        password = next(line.split()[3] for line in output.splitlines() if line.strip().startswith("alice "))
        base = demo.url
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
        _isolate_finance_and_release_by_id(base, demo.admin_url)
    finally:
        code = demo.stop()
    assert code == 0
    final = demo.output()
    assert "demo stopped" in final
    assert password not in final.split("Ctrl-C stops everything")[1]  # never logged after the banner


def _isolate_finance_and_release_by_id(base: str, admin: str) -> None:
    """SPEC App. B ``killswitch release ID`` keeps working next to ``--incident``."""
    env = {"SHOPINO_GATEWAY_ADMIN_TOKEN": "demo-admin-token", "PATH": "/usr/bin:/bin"}
    engage = subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway",
            "killswitch",
            "engage",
            "--admin-url",
            admin,
            "--scope",
            "module",
            "--target",
            "finance",
            "--mode",
            "block",
            "--reason",
            "demo",
            "--incident",
            "INC-DEMO",
            "--ttl",
            "15m",
            "--json",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
        check=False,
    )
    assert engage.returncode == 0, engage.stderr
    status, body = _call(f"{base}/api/finance/invoices")
    assert status == 503 and json.loads(body)["incident"] == "INC-DEMO"
    release = subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway",
            "killswitch",
            "release",
            "--admin-url",
            admin,
            json.loads(engage.stdout)["id"],
            "--reason",
            "demo over",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
        check=False,
    )
    assert release.returncode == 0, release.stderr
    status, _ = _call(f"{base}/api/finance/invoices")
    assert status == 401  # released: back to the normal answer (no token)


# --- the printed walkthrough, pasted into bash ---------------------------------------------------


def _status(out: str) -> list[int]:
    return [int(code) for code in re.findall(r"^HTTP/[\d.]+ (\d{3})", out, re.MULTILINE)]


def _json_lines(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def _expectations(demo: DemoProc, seen: dict[str, str]) -> dict[str, Callable[[str], None]]:
    """What each numbered step must answer; ``seen`` carries ids from one step to the next."""

    def ready(out: str) -> None:
        assert _json_lines(out)[0]["state"] == "ready"

    def silent(out: str) -> None:
        assert out.strip() == ""  # $TOKEN / $MFA set, nothing printed, nothing failed

    def password_only(out: str) -> None:
        assert _status(out) == [401] and "insufficient_user_authentication" in out

    def activated(out: str) -> None:
        assert len(_json_lines(out)[0]["recovery_codes"]) >= 8

    def acme_only(out: str) -> None:
        items, jwks = _json_lines(out)
        assert items["tenant"] == "acme" and items["items"]
        assert jwks["keys"] and all("d" not in key for key in jwks["keys"])

    def mismatch(out: str) -> None:
        assert _status(out) == [403] and "urn:shopino-gateway:tenant-mismatch" in out

    def granted(out: str) -> None:
        created, listed = out.strip().splitlines()
        grant_id = re.search(r"granted (g_\S+)\s+tenant=acme\s+grantee=sam\s+modules=inventory", created)
        assert grant_id, out
        assert listed.startswith(grant_id.group(1)) and "by=alice" in listed

    def attacks(out: str) -> None:
        assert _status(out) == [400, 401]
        assert "urn:shopino-gateway:bad-request" in out and "urn:shopino-gateway:invalid-token" in out

    def operators(out: str) -> None:
        config = _json_lines(out)[0]
        # Not secrets: where it listens (they came from the environment, as in any deployment).
        assert (config["listen"]["host"], config["listen"]["port"]) == ("127.0.0.1", demo.port)
        assert (config["admin"]["host"], config["admin"]["port"]) == ("127.0.0.1", demo.admin_port)
        # Secrets: the admin token's hash stays masked.
        assert config["admin"]["tokens"][0]["sha256"] == MASK
        assert hashlib.sha256(DEMO_ADMIN_TOKEN.encode()).hexdigest() not in out
        assert "reloaded: generation 2" in out
        assert "seq,time,tenant,event" in out and ",acme,grant.created,alice," in out
        assert re.search(r"^intact: \d+ records", out, re.MULTILINE)

    def isolated(out: str) -> None:
        engaged = re.search(r"^engaged (ks_\w+): module finance block, incident " + DEMO_INCIDENT, out, re.M)
        assert engaged, out
        seen["switch"] = engaged.group(1)
        assert _status(out) == [503] and f'"incident":"{DEMO_INCIDENT}"' in out
        assert re.search(r"^Retry-After: \d+", out, re.MULTILINE | re.IGNORECASE)
        assert re.search(rf"^{seen['switch']}\s+module\s+finance\s+block\s+{DEMO_INCIDENT}", out, re.M)

    def released(out: str) -> None:
        assert f"released {seen['switch']}: module finance" in out
        assert _status(out) == [401]  # no token: the normal answer again, not the 503

    return {
        "1": ready,
        "2": silent,
        "3": password_only,
        "4": activated,
        "5": silent,
        "6": acme_only,
        "7": mismatch,
        "8": granted,
        "9": attacks,
        "10": operators,
        "11": isolated,
        "12": released,
    }


def _shell_env(tmp_path: Path) -> dict[str, str]:
    """The reader's shell: the CLI on PATH (this checkout's code), and none of the variables the
    walkthrough must export itself."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    cli = bin_dir / "shopino-gateway"
    cli.write_text(f'#!/bin/sh\nexec {sys.executable} -m gateway "$@"\n')
    cli.chmod(0o755)
    env = {k: v for k, v in this_checkout_env().items() if not k.startswith("SHOPINO_GATEWAY_")}
    return {**env, "PATH": f"{bin_dir}:{env.get('PATH', '/usr/bin:/bin')}"}


def test_printed_walkthrough_runs_top_to_bottom_in_bash(tmp_path: Path) -> None:
    """Paste the banner's block into ``bash -e``: every step succeeds and answers what it says."""
    demo = DemoProc(tmp_path)
    try:
        demo.start()
        setup, steps = split_steps(demo.walkthrough())
        seen: dict[str, str] = {}
        expectations = _expectations(demo, seen)
        assert list(steps) == list(expectations)  # a new step needs its expectation here
        script = "exec 2>&1\n" + setup + "\n"
        script += "".join(f"\necho '@@step {number}'\n{lines}\n" for number, lines in steps.items())
        run = subprocess.run(
            ["bash", "-e", "-c", script],
            capture_output=True,
            text=True,
            env=_shell_env(tmp_path),
            cwd=tmp_path,
            timeout=120,
            check=False,
        )
        assert run.returncode == 0, run.stdout
        answers = dict(re.findall(r"^@@step (\d+)\n(.*?)(?=^@@step |\Z)", run.stdout, re.M | re.S))
        assert list(answers) == list(steps), run.stdout
        for number, check in expectations.items():
            try:
                check(answers[number])
            except Exception as exc:
                raise AssertionError(
                    f"step {number}:\n{steps[number]}\n--- answered:\n{answers[number]}"
                ) from exc
    finally:
        code = demo.stop()
    assert code == 0 and "demo stopped" in demo.output()
