"""SPEC App. B ``incident contain|status`` through the real CLI against a real gateway: one command
revokes a tenant's sessions and the exposed signing keys (and isolates the tenant), every step is
tagged with the incident, and ``incident status`` lists them from the audit trail."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import time
from typing import Any

import aiohttp
import pytest

from gateway.demo.identities import DemoUser, make_user
from gateway.demo.issuer import DemoIssuer
from tests.support.gateway_proc import GatewayProc, free_port
from tests.support.issuers import issuer_entries
from tests.support.mfa_flow import gateway_mfa_token
from tests.support.upstream import Upstream

ISS, OPS, AUD = "https://id.incident.example", "https://ops.incident.example", "shopino-erp"
HAS_KILLSWITCH = importlib.util.find_spec("gateway.killswitch") is not None


@pytest.fixture(scope="module")
def issuers() -> dict[str, DemoIssuer]:
    return {"tenant": DemoIssuer(issuer=ISS, audience=AUD), "ops": DemoIssuer(issuer=OPS, audience=AUD)}


@pytest.fixture(scope="module")
def users() -> dict[str, DemoUser]:
    return {
        tenant: make_user(f"user-{tenant}", tenant, ("finance",), "irrelevant-pw")
        for tenant in ("acme", "globex", "initech", "umbrella")
    }


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, issuers: dict[str, DemoIssuer]) -> Any:
    upstream = Upstream("erp").start()
    tmp = tmp_path_factory.mktemp("incident")
    config = {
        "auth": {"issuers": issuer_entries(issuers, tmp)},
        "admin": {"jwt_issuers": [OPS]},
        "upstreams": {"app": {"urls": [upstream.url]}},
        "routes": [
            {"name": "finance", "prefix": "/api/finance", "upstream": "app", "module": "finance"},
            {"name": "inventory", "prefix": "/api/inventory", "upstream": "app", "module": "inventory"},
            {"name": "api", "prefix": "/api", "upstream": "app"},
        ],
    }
    proc = GatewayProc(tmp, config).start()
    yield proc
    proc.stop()
    upstream.stop()


def _token(issuer: DemoIssuer, user: DemoUser, amr: tuple[str, ...] = ("pwd", "otp")) -> str:
    return issuer.mint(user, amr=amr, ttl=600, auth_time=int(time.time()))


async def _status(url: str, token: str) -> int:
    async with (
        aiohttp.ClientSession() as http,
        http.get(url, headers={"Authorization": f"Bearer {token}"}) as r,
    ):
        return r.status


def _status_json(gw: GatewayProc, incident: str) -> dict[str, Any]:
    done = gw.cli("incident", "status", incident, "--json")
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


async def test_contain_revokes_sessions_and_keys_and_status_lists_them(
    gw: GatewayProc, issuers: dict[str, DemoIssuer], users: dict[str, DemoUser]
) -> None:
    acme = _token(issuers["tenant"], users["acme"])
    globex = _token(issuers["tenant"], users["globex"])
    async with aiohttp.ClientSession() as http:
        # Signed by the gateway's own key: an exposed key's tokens must die with --rotate-keys.
        gateway_signed = await gateway_mfa_token(
            http, gw.url, _token(issuers["tenant"], users["umbrella"], ("pwd",))
        )
    api = f"{gw.url}/api/orders"
    assert [await _status(api, t) for t in (acme, globex, gateway_signed)] == [200, 200, 200]

    done = gw.cli(
        "incident", "contain", "--incident", "INC-1", "--tenant", "acme", "--no-switch",
        "--revoke-sessions", "--rotate-keys",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("revoked sessions of tenant acme issued at or before 20"), lines
    assert lines[1].startswith("rotated signing keys; older keys revoked (new kid "), lines
    assert "incident status INC-1" in lines[2]

    assert await _status(api, acme) == 401  # issued before the revocation
    assert await _status(api, gateway_signed) == 401  # signed by a key now revoked
    assert await _status(api, globex) == 200  # another tenant's IdP token is untouched

    status = _status_json(gw, "INC-1")
    assert status["incident"] == "INC-1"
    actions = status["actions"]
    assert [a["event"] for a in actions] == ["sessions.revoked", "keys.rotated"]
    assert actions[0]["tenant"] == "acme" and actions[1]["tenant"] == "_system"
    assert {a["actor"] for a in actions} == {"admin-token:tests"}
    assert actions[1]["details"]["revoke_old"] is True
    assert actions[0]["time"] <= actions[1]["time"]
    table = gw.cli("incident", "status", "INC-1")
    assert table.returncode == 0, table.stderr
    assert "incident INC-1: 2 action(s)" in table.stdout
    assert "sessions.revoked" in table.stdout and "keys.rotated" in table.stdout


def test_contain_json_reports_every_step(gw: GatewayProc) -> None:
    done = gw.cli("incident", "contain", "--incident", "INC-J", "--rotate-keys", "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["ok"] is True and summary["not_done"] == []
    assert [(s["action"], s["status"]) for s in summary["steps"]] == [("keys", 200)]
    assert summary["steps"][0]["result"]["incident"] == "INC-J"


def test_single_verbs_take_an_incident(gw: GatewayProc) -> None:
    assert gw.cli("sessions", "revoke", "--tenant", "globex", "--incident", "INC-S").returncode == 0
    assert gw.cli("keys", "rotate", "--incident", "INC-S").returncode == 0
    events = [a["event"] for a in _status_json(gw, "INC-S")["actions"]]
    assert events == ["sessions.revoked", "keys.rotated"]


def test_failure_stops_and_names_what_was_not_done(gw: GatewayProc) -> None:
    done = gw.cli(
        "incident", "contain", "--incident", "INC-F", "--tenant", "bad!tenant", "--no-switch",
        "--revoke-sessions", "--rotate-keys",
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "session revocation FAILED: 400" in done.stderr
    assert "done: nothing" in done.stderr
    assert "NOT done: session revocation, key rotation" in done.stderr
    # Stopped at the failure: no key was rotated under this incident.
    missing = gw.cli("incident", "status", "INC-F")
    assert missing.returncode == 2 and "404" in missing.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--revoke-sessions"], "--revoke-sessions needs --tenant"),
        (["--scope", "module"], "--scope module needs --target"),
        ([], "nothing to do"),
        (["--incident", "INC 1", "--rotate-keys"], "incident must be"),
    ],
)
def test_usage_errors_exit_1(gw: GatewayProc, args: list[str], message: str) -> None:
    full = args if "--incident" in args else ["--incident", "INC-U", *args]
    done = gw.cli("incident", "contain", *full)
    assert done.returncode == 1
    assert message in done.stderr


def test_unreachable_gateway_exits_3(gw: GatewayProc) -> None:
    done = gw.cli(
        "incident", "contain", "--incident", "INC-X", "--rotate-keys",
        "--admin-url", f"http://127.0.0.1:{free_port()}",
    )  # fmt: skip
    assert done.returncode == 3
    assert "unreachable" in done.stderr and "NOT done: key rotation" in done.stderr


async def test_incident_endpoint_validates_and_authorizes(
    gw: GatewayProc, issuers: dict[str, DemoIssuer], users: dict[str, DemoUser]
) -> None:
    ops = issuers["ops"]
    responder = make_user("responder", "shopino-ops", ("incident-responder",), "irrelevant-pw")
    nobody = make_user("clerk", "shopino-ops", ("finance",), "irrelevant-pw")
    assert gw.cli("sessions", "revoke", "--tenant", "umbrella", "--incident", "INC-R").returncode == 0
    url = f"{gw.admin_url}/admin/incidents/INC-R"
    async with aiohttp.ClientSession() as http:
        async with http.get(url, headers={"Authorization": f"Bearer {_token(ops, responder)}"}) as r:
            assert r.status == 200  # App. B: responders may read incidents
            assert (await r.json())["incident"] == "INC-R"
        async with http.get(url, headers={"Authorization": f"Bearer {_token(ops, nobody)}"}) as r:
            assert r.status == 403
        async with http.get(url) as r:
            assert r.status == 401
        tenant_admin = make_user("mallory", "acme", ("gateway-admin",), "irrelevant-pw")
        async with http.get(
            url, headers={"Authorization": f"Bearer {_token(issuers['tenant'], tenant_admin)}"}
        ) as r:
            assert r.status == 401  # a tenant's IdP never mints operator tokens
        static = {"Authorization": "Bearer test-admin-token"}
        async with http.get(f"{gw.admin_url}/admin/incidents/bad%20id", headers=static) as r:
            assert r.status == 400
            assert r.headers["Content-Type"].startswith("application/problem+json")
        async with http.post(
            f"{gw.admin_url}/admin/sessions/revoke",
            headers=static,
            json={"tenant": "acme", "incident": "x y"},
        ) as r:
            assert r.status == 400
        async with http.post(f"{gw.admin_url}/admin/keys/rotate", headers=static, json={"incident": 7}) as r:
            assert r.status == 400


@pytest.mark.skipif(not HAS_KILLSWITCH, reason="the kill switch (issue 7 items 1-5) is not built yet")
async def test_contain_isolates_the_tenant_first(
    gw: GatewayProc, issuers: dict[str, DemoIssuer], users: dict[str, DemoUser]
) -> None:
    old = _token(issuers["tenant"], users["initech"])
    done = gw.cli(
        "incident",
        "contain",
        "--incident",
        "INC-K",
        "--tenant",
        "initech",
        "--revoke-sessions",
        "--rotate-keys",
    )
    assert done.returncode == 0, done.stderr
    first = done.stdout.splitlines()[0]
    assert (
        first.startswith("engaged switch ") and "(tenant initech, block) acknowledged by 1 instance" in first
    )
    assert await _status(f"{gw.url}/api/orders", old) == 401  # revoked
    await asyncio.sleep(1.1)  # iat has one-second resolution: this token is issued after the revocation
    async with (
        aiohttp.ClientSession() as http,
        http.get(
            f"{gw.url}/api/orders",
            headers={"Authorization": f"Bearer {_token(issuers['tenant'], users['initech'])}"},
        ) as r,
    ):
        assert r.status == 503  # isolated
        assert (await r.json())["incident"] == "INC-K"
    actions = _status_json(gw, "INC-K")["actions"]
    assert [a["event"] for a in actions] == ["killswitch.engaged", "sessions.revoked", "keys.rotated"]
    assert actions[0]["tenant"] == "initech"

    module = gw.cli(
        "incident", "contain", "--incident", "INC-M", "--scope", "module", "--target", "finance", "--json"
    )
    assert module.returncode == 0, module.stderr
    step = json.loads(module.stdout)["steps"][0]
    assert step["action"] == "killswitch" and step["status"] == 201 and step["result"]["incident"] == "INC-M"
    globex = _token(issuers["tenant"], users["globex"])
    assert await _status(f"{gw.url}/api/finance/invoices", globex) == 503
    assert await _status(f"{gw.url}/api/orders", globex) == 200
    assert [a["event"] for a in _status_json(gw, "INC-M")["actions"]] == ["killswitch.engaged"]

    # A later step fails: the switch stays engaged and the message says so.
    partial = gw.cli(
        "incident", "contain", "--incident", "INC-P", "--scope", "module", "--target", "inventory",
        "--tenant", "bad!tenant", "--revoke-sessions", "--rotate-keys",
    )  # fmt: skip
    assert partial.returncode == 2
    assert partial.stdout.startswith("engaged switch ")
    assert "done: kill switch (module inventory)" in partial.stderr
    assert "NOT done: session revocation, key rotation" in partial.stderr
    assert [a["event"] for a in _status_json(gw, "INC-P")["actions"]] == ["killswitch.engaged"]
