"""SPEC §8 login protection through real gateways: lockouts from upstream 401s per canonical
username and per IP, growing Retry-After, the CLI, and a bounded credential-stuffing run."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import aiohttp

from tests.e2e.ratelimit_support import limits_config, ready, send
from tests.support.gateway_proc import ADMIN_TOKEN, GatewayProc
from tests.support.upstream import Upstream

LOGIN_ROUTE = {"name": "login", "prefix": "/login", "auth": "none", "login": True, "methods": ["POST"]}


def _config(upstream: Upstream, tmp: Path, login: dict[str, Any], **extra: Any) -> dict[str, Any]:
    rate_limits = {
        "login": {"window": "1m", **login},
        "policies": {"login": [{"key": "ip", "limit": "1000/minute"}]},
    }
    route = {**LOGIN_ROUTE, "rate_limit": ["login"]}
    return limits_config(upstream.url, tmp, rate_limits, [route], **extra)


async def _login(
    http: aiohttp.ClientSession, gw: GatewayProc, username: str, password: str, ip: str | None = None
) -> tuple[int, dict[str, str], bytes]:
    headers = {"X-Forwarded-For": ip} if ip else None
    return await send(
        http,
        f"{gw.url}/login",
        method="POST",
        json={"username": username, "password": password},
        headers=headers,
    )


async def test_username_lockout_grows_and_is_managed_by_the_cli(
    tmp_path: Path, upstream: Upstream, gateway_factory, http: aiohttp.ClientSession
) -> None:
    upstream.accounts["alice"] = "right-pw"
    login = {"failures_per_username": 3, "failures_per_ip": 100, "base_lockout": "2s", "max_lockout": "1h"}
    gw: GatewayProc = ready(gateway_factory(_config(upstream, tmp_path, login)))
    assert [(await _login(http, gw, "alice", "nope"))[0] for _ in range(3)] == [401, 401, 401]
    # The third failure reached the threshold: even the right password (any alias) is refused.
    status, headers, body = await _login(http, gw, " ALICE", "right-pw")
    assert status == 429 and json.loads(body)["type"] == "urn:shopino-gateway:locked-out"
    assert 1 <= int(headers["Retry-After"]) <= 2
    assert len(upstream.login_attempts) == 3  # the locked attempt never reached the upstream

    await asyncio.sleep(2.1)
    assert (await _login(http, gw, "alice", "nope"))[0] == 401  # still over the threshold: locked again
    status, headers, _ = await _login(http, gw, "alice", "right-pw")
    assert status == 429 and 3 <= int(headers["Retry-After"]) <= 4  # doubled

    listing = gw.cli("lockouts", "list", "--json")
    assert listing.returncode == 0, listing.stderr
    locks = json.loads(listing.stdout)["lockouts"]
    assert [(lock["kind"], lock["level"]) for lock in locks] == [("user", 2)]
    assert "alice" not in listing.stdout  # a keyed hash, never the name
    cleared = gw.cli("lockouts", "clear", "--username", "Alice")
    assert cleared.returncode == 0 and "cleared" in cleared.stdout, cleared.stderr
    assert (await _login(http, gw, "alice", "right-pw"))[0] == 200
    assert "no active lockouts" in gw.cli("lockouts", "list").stdout

    async with http.get(
        f"{gw.admin_url}/admin/audit?tenant=_system&format=json",
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
    ) as response:
        trail = await response.text()
    assert trail.count('"ratelimit.lockout"') == 2 and '"ratelimit.lockout_cleared"' in trail
    assert "alice" not in trail.lower() and "alice" not in gw.logs().lower()


async def test_success_never_unlocks_an_ip_lockouts_survive_a_restart_and_bad_clears_fail(
    tmp_path: Path, upstream: Upstream, gateway_factory, http: aiohttp.ClientSession
) -> None:
    upstream.accounts["bob"] = "bob-pw"
    login = {"failures_per_username": 100, "failures_per_ip": 3, "base_lockout": "1m"}
    gw: GatewayProc = ready(gateway_factory(_config(upstream, tmp_path, login)))
    for name in ("u1", "u2"):
        assert (await _login(http, gw, name, "x"))[0] == 401
    assert (await _login(http, gw, "bob", "bob-pw"))[0] == 200  # a success resets nothing for the IP
    assert (await _login(http, gw, "u3", "x"))[0] == 401  # third failure: the IP is locked
    status, headers, _ = await _login(http, gw, "bob", "bob-pw")
    assert status == 429 and 50 <= int(headers["Retry-After"]) <= 60
    gw.stop()
    ready(gw.start())  # lockouts live in the state store: a restart keeps them
    async with aiohttp.ClientSession() as fresh:  # the old keep-alive connections are gone
        assert (await _login(fresh, gw, "bob", "bob-pw"))[0] == 429
        assert gw.cli("lockouts", "clear", "--ip", "not-an-ip").returncode == 2
        assert gw.cli("lockouts", "clear", "--ip", "127.0.0.1").returncode == 0
        assert (await _login(fresh, gw, "bob", "bob-pw"))[0] == 200


async def test_bounded_credential_stuffing_run(
    tmp_path: Path, upstream: Upstream, gateway_factory, http: aiohttp.ClientSession
) -> None:
    """300 usernames tried from 40 addresses behind a trusted proxy: the upstream sees at most
    a few failures per address, and real users on other addresses still log in."""
    legit = {f"real{i}": f"real-pw-{i}" for i in range(5)}
    upstream.accounts.update(legit)
    login = {"failures_per_username": 3, "failures_per_ip": 5, "base_lockout": "5m"}
    gw: GatewayProc = ready(
        gateway_factory(_config(upstream, tmp_path, login, trusted_proxies=["127.0.0.0/8"]))
    )
    usernames = [f"victim{i}" for i in range(300)]
    attempts = [(f"198.51.100.{i % 40}", usernames[(i * 7) % 300]) for i in range(800)]
    gate = asyncio.Semaphore(16)
    statuses: list[int] = []

    async def attack(ip: str, username: str) -> None:
        async with gate:
            statuses.append((await _login(http, gw, username, "guess", ip))[0])

    started = time.monotonic()
    await asyncio.gather(*(attack(ip, name) for ip, name in attempts))
    reached = len(upstream.login_attempts)
    print(
        f"\ncredential stuffing: {len(attempts)} attempts from 40 IPs over 300 usernames in "
        f"{time.monotonic() - started:.1f}s; reached the upstream: {reached}; "
        f"refused locked-out: {statuses.count(429)}"
    )
    assert reached <= 40 * 5 + 16  # per-IP threshold, plus at most one in-flight batch
    assert statuses.count(429) >= len(attempts) - reached
    for index, (name, password) in enumerate(legit.items()):
        assert (await _login(http, gw, name, password, f"203.0.113.{index}"))[0] == 200


async def test_a_repeated_username_cannot_dodge_the_counters(
    tmp_path: Path, upstream: Upstream, gateway_factory, http: aiohttp.ClientSession
) -> None:
    """Review regression: upstreams that read the first of a repeated form field (aiohttp's
    ``dict(await request.post())``) were attacked while the gateway counted the last one."""
    login = {"failures_per_username": 2, "failures_per_ip": 100}
    gw: GatewayProc = ready(gateway_factory(_config(upstream, tmp_path, login)))
    status, headers, body = await send(
        http,
        f"{gw.url}/login",
        method="POST",
        data=b"username=victim&password=x&username=fresh-1",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert status == 400 and json.loads(body)["type"] == "urn:shopino-gateway:bad-request"
    assert "RateLimit-Policy" not in headers and upstream.login_attempts == []


def _multipart_login(*parts: tuple[str, str, str]) -> tuple[bytes, dict[str, str]]:
    """A multipart login body of (name, extra Content-Disposition params, value) parts."""
    boundary = "issue14-boundary"
    body = b"".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"{extra}\r\n\r\n{value}\r\n'.encode()
        for name, extra, value in parts
    )
    return body + f"--{boundary}--\r\n".encode(), {
        "Content-Type": f"multipart/form-data; boundary={boundary}"
    }


async def test_a_filename_decoy_part_cannot_dodge_the_username_lockout(
    tmp_path: Path, upstream: Upstream, gateway_factory, http: aiohttp.ClientSession
) -> None:
    """Issue 14 / Appendix C: the upstream's ``post()`` reads a ``filename=""`` part as the
    username, the old gateway skipped it and counted a fresh decoy per guess — the victim's
    password was guessed without ever locking. Now the attack is a 400 that never reaches the
    upstream, and plain multipart logins still count the real username."""
    upstream.accounts["victim"] = "right-pw"
    login = {"failures_per_username": 2, "failures_per_ip": 100, "base_lockout": "1m"}
    gw: GatewayProc = ready(gateway_factory(_config(upstream, tmp_path, login)))
    for guess in ("guess-1", "guess-2", "guess-3", "right-pw"):
        body, headers = _multipart_login(
            ("username", '; filename=""', "victim"),
            ("username", "", f"decoy-{guess}"),
            ("password", "", guess),
        )
        status, _, answer = await send(http, f"{gw.url}/login", method="POST", data=body, headers=headers)
        assert status == 400 and json.loads(answer)["type"] == "urn:shopino-gateway:bad-request"
    assert upstream.login_attempts == []

    for guess in ("guess-1", "guess-2"):
        body, headers = _multipart_login(("username", "", "victim"), ("password", "", guess))
        assert (await send(http, f"{gw.url}/login", method="POST", data=body, headers=headers))[0] == 401
    body, headers = _multipart_login(("username", "", "Victim"), ("password", "", "right-pw"))
    status, _, answer = await send(http, f"{gw.url}/login", method="POST", data=body, headers=headers)
    assert status == 429 and json.loads(answer)["type"] == "urn:shopino-gateway:locked-out"
    assert upstream.login_attempts == [("victim", False), ("victim", False)]
