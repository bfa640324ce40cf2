"""The incident console in a real browser (Debian's chromium driven by Playwright, headless):
a responder signs in, dry-runs and engages a module switch, the public listeners answer 503 with
the incident id, two instances sharing a real redis-server acknowledge in the grid, one is killed
and turns silent, the switch is released; a wrong token is refused; a read-only role sees no
engage button and the API refuses it anyway; a reason carrying ``<script>`` is shown as text and
the CSP blocks inline script; the traffic view shows what a shadow rate-limit policy would have
refused. Screenshots of every view go to ``test-artifacts/console/``."""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from gateway.demo.issuer import DemoIssuer
from tests.e2e.killswitch_helpers import killswitch_config
from tests.support.gateway_proc import ADMIN_TOKEN, GatewayProc
from tests.support.issuers import mint, operator_and_tenant_issuers
from tests.support.upstream import Upstream

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "console"
playwright_api = pytest.importorskip("playwright.sync_api")
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="needs Debian's chromium (.ci/run installs it)"),
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with playwright_api.sync_playwright() as p:
        # Never a downloaded browser: the distribution's chromium; no sandbox as root in CI.
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(10_000)
    page.problems = []  # type: ignore[attr-defined]
    page.on("pageerror", lambda error: page.problems.append(str(error)))
    yield page
    context.close()


@pytest.fixture
def issuers() -> dict[str, DemoIssuer]:
    return operator_and_tenant_issuers()


def shoot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def sign_in(page: Any, gw: GatewayProc, token: str) -> None:
    page.goto(gw.admin_url + "/console/")
    page.fill("#token", token)
    page.click("#signin-form button[type=submit]")


def public(url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, {}
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def instance_of(gw: GatewayProc) -> str:
    with urllib.request.urlopen(gw.url + "/_gateway/health", timeout=5) as response:
        return str(json.loads(response.read())["instance"])


def grid_state(page: Any, instance: str) -> str | None:
    return page.evaluate(
        "(id) => { const row = [...document.querySelectorAll('#ack-grid tr[data-instance]')]"
        ".find((r) => r.dataset.instance === id); return row ? row.dataset.state : null; }",
        instance,
    )


def wait_grid(page: Any, instance: str, state: str, timeout: float = 10.0) -> float:
    started = time.monotonic()
    while grid_state(page, instance) != state:
        assert time.monotonic() - started < timeout, f"{instance} never shown {state}"
        page.wait_for_timeout(100)
    return time.monotonic() - started


def test_responder_isolates_a_module_and_watches_two_instances_acknowledge(
    gateway_factory: Callable[..., GatewayProc],
    upstream: Upstream,
    redis_url: str,
    issuers: dict[str, DemoIssuer],
    tmp_path: Path,
    page: Any,
) -> None:
    env = {"SHOPINO_GATEWAY_MASTER_KEY": GatewayProc(tmp_path, {}).env["SHOPINO_GATEWAY_MASTER_KEY"]}
    a, b = (
        gateway_factory(killswitch_config(upstream.url, tmp_path, issuers, state={"url": redis_url}), env=env)
        for _ in range(2)
    )
    ids = {"a": instance_of(a), "b": instance_of(b)}
    for _ in range(3):
        assert public(a.url + "/api/finance/invoices/1")[0] == 200

    sign_in(page, a, ADMIN_TOKEN)
    page.wait_for_selector("#engage")
    assert page.query_selector("#purge") is not None  # a gateway admin may purge a tenant
    for instance in ids.values():
        wait_grid(page, instance, "enforcing")
    page.select_option("#engage-scope", "module")
    page.select_option("#engage-target", "finance")
    reason = "<script>window.__pwned = 1</script> card data leak"
    page.fill("#engage-reason", reason)
    page.fill("#engage-incident", "INC-UI-1")

    page.click("#dry-run")
    page.wait_for_selector("#dryrun-result:has-text('Would have refused')")
    would = int(page.text_content("#dryrun-result").split("refused ")[1].split(" ")[0])
    assert would >= 3  # the three finance requests A answered
    assert public(a.url + "/api/finance/invoices/1")[0] == 200  # a dry run engages nothing

    page.click("#engage")
    page.wait_for_selector("#board-result:has-text('acknowledged by 2 instance(s)')")
    for gw in (a, b):
        status, problem = public(gw.url + "/api/finance/invoices/1")
        assert status == 503 and problem["incident"] == "INC-UI-1"
    row = page.wait_for_selector("#switches tr[data-scope='module']")
    assert row.query_selector("td.reason").text_content() == reason  # shown as text ...
    assert page.evaluate("window.__pwned") is None  # ... never run
    assert page.query_selector("#switches script") is None
    # The CSP refuses inline script even when it does reach the DOM.
    page.evaluate(
        "() => { window.__violations = [];"
        " document.addEventListener('securitypolicyviolation',"
        "   (e) => window.__violations.push(e.violatedDirective));"
        " const s = document.createElement('script'); s.textContent = 'window.__inline = 1';"
        " document.body.append(s); }"
    )
    page.wait_for_function("window.__violations.length > 0")
    assert page.evaluate("window.__inline") is None
    assert page.evaluate("window.__violations")[0].startswith("script-src")
    shoot(page, "board")

    page.click("a[data-view='incident']")
    page.fill("#incident-id", "INC-UI-1")
    page.click("#incident-lookup")
    page.wait_for_selector("#incident-actions td:has-text('killswitch.engaged')")
    # Audited with the actor, exactly as the same call through the CLI would be.
    assert page.query_selector("#incident-actions td:text-is('admin-token:tests')") is not None
    shoot(page, "incident")
    page.click("a[data-view='traffic']")
    page.wait_for_selector("#traffic-routes tr[data-route='finance-api']")
    page.wait_for_selector("#traffic-refusals tr[data-reason='isolated']")
    shoot(page, "traffic")
    page.click("a[data-view='audit']")
    page.fill("#audit-tenant", "_system")
    page.click("#audit-verify")
    page.wait_for_selector("#audit-verdict.intact")
    shoot(page, "audit")
    # Someone deletes the oldest _system record in Redis: the verdict turns, naming the place.
    store = redis.Redis.from_url(redis_url)
    [stream] = list(store.scan_iter(match="*log:audit:_system"))
    assert store.xdel(stream, "1-0") == 1
    store.close()
    page.click("#audit-verify")
    page.wait_for_selector("#audit-verdict.broken")
    assert "First bad record:" in page.text_content("#audit-verdict")
    shoot(page, "audit-broken")

    page.click("a[data-view='board']")
    b.signal(signal.SIGKILL)  # a crash: no goodbye, the heartbeat just stops
    silent_after = wait_grid(page, ids["b"], "silent")
    assert grid_state(page, ids["a"]) == "enforcing"
    print(f"\nkilled instance shown silent after {silent_after:.1f} s")
    shoot(page, "board-silent")

    page.click("#switches tr[data-scope='module'] button.release")
    page.fill("#confirm-fields input[data-field='reason']", "contained")
    page.click("#confirm-ok")
    page.wait_for_selector("#board-result:has-text('Released')")
    assert public(a.url + "/api/finance/invoices/1")[0] == 200

    # A global switch is destructive: the typed confirmation gates it; cancelling engages nothing.
    page.select_option("#engage-scope", "global")
    page.fill("#engage-reason", "testing the guard")
    page.click("#engage")
    page.wait_for_selector("#confirm[open]")
    page.fill("#confirm-typed", "isolate everythin")
    assert page.is_disabled("#confirm-ok")
    page.click("#confirm-cancel")
    assert public(a.url + "/api/finance/invoices/1")[0] == 200
    assert page.problems == []


def test_wrong_token_is_refused_and_a_viewer_gets_no_engage_button(
    gateway_factory: Callable[..., GatewayProc],
    upstream: Upstream,
    issuers: dict[str, DemoIssuer],
    tmp_path: Path,
    page: Any,
) -> None:
    gw = gateway_factory(killswitch_config(upstream.url, tmp_path, issuers))
    sign_in(page, gw, "not-the-admin-token")
    page.wait_for_selector("#signin-error:has-text('Refused')")
    assert page.is_hidden("#views") and page.evaluate("sessionStorage.length") == 0
    shoot(page, "signin-refused")

    # A switch exists, so a release button would show if the role allowed one.
    request = urllib.request.Request(
        gw.admin_url + "/admin/killswitch",
        data=json.dumps({"scope": "module", "target": "orders", "reason": "set up"}).encode(),
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 201

    viewer = mint(issuers["ops"], "shopino-ops", ["gateway-viewer"], user_id="watcher")
    sign_in(page, gw, viewer)
    page.wait_for_selector("#switches tr[data-scope='module']")
    page.wait_for_selector("#ack-grid tr[data-state='enforcing']")
    assert page.query_selector("#engage") is None and page.query_selector("#engage-form") is None
    assert page.query_selector("#switches button.release") is None
    for action in ("#contain", "#rotate-keys", "#purge", "#lockout-username", "#switches button.extend"):
        assert page.query_selector(action) is None, action  # no view offers a change
    assert page.text_content("#who").startswith("jwt:watcher (gateway-viewer)")
    shoot(page, "board-viewer")
    # The API refuses the viewer anyway, whatever the page shows.
    status = page.evaluate(
        "async () => (await fetch('/admin/killswitch', {method: 'POST', headers: {"
        " Authorization: 'Bearer ' + sessionStorage.getItem('shopino-gateway-admin-token'),"
        " 'Content-Type': 'application/json'},"
        " body: JSON.stringify({scope: 'module', target: 'finance', reason: 'viewer'})})).status"
    )
    assert status == 403
    assert public(gw.url + "/api/finance/x")[0] == 200
    # A token the API stops accepting (expired, rotated) ends the session at the next poll.
    page.evaluate("sessionStorage.setItem('shopino-gateway-admin-token', 'no-longer-valid')")
    page.wait_for_selector("#signin-error:has-text('no longer accepts this token')")
    assert page.is_hidden("#views") and page.evaluate("sessionStorage.length") == 0
    assert page.problems == []


def test_contain_wizard_shows_each_step_and_exports_the_affected_trail(
    gateway_factory: Callable[..., GatewayProc],
    upstream: Upstream,
    issuers: dict[str, DemoIssuer],
    tmp_path: Path,
    page: Any,
) -> None:
    config = killswitch_config(upstream.url, tmp_path, issuers)
    # Login protection, so the traffic view has an IP lockout to clear.
    config["routes"].append(
        {
            "name": "login",
            "prefix": "/login",
            "upstream": "app",
            "auth": "none",
            "login": True,
            "methods": ["POST"],
            "rate_limit": ["login", "watch"],
        }
    )
    config["rate_limits"] = {
        "login": {"window": "1m", "failures_per_username": 100, "failures_per_ip": 2, "base_lockout": "1m"},
        "policies": {
            "login": [{"key": "ip", "limit": "1000/minute"}],
            # A limit being watched before it is enforced (App. C): over it, nothing is refused.
            "watch": [{"key": "ip", "limit": "1/minute", "mode": "shadow"}],
        },
    }
    gw = gateway_factory(config)
    responder = mint(issuers["ops"], "shopino-ops", ["incident-responder"], user_id="resp-1")
    sign_in(page, gw, responder)
    page.click("a[data-view='incident']")
    # The role matrix: a responder contains and rotates, but purging a tenant is gateway-admin's.
    assert page.query_selector("#rotate-keys") is not None and page.query_selector("#purge") is None
    page.fill("#contain-incident", "INC-UI-2")
    page.select_option("#contain-scope", "tenant")
    page.fill("#contain-tenant", "acme")
    page.check("#contain-keys")  # all three steps: isolate, revoke sessions, rotate keys
    page.click("#contain")
    page.wait_for_selector("#confirm[open]")
    page.fill("#confirm-fields input[data-field='reason']", "stolen admin session")
    assert page.is_disabled("#confirm-ok")  # the incident id must be typed
    page.fill("#confirm-typed", "INC-UI-2")
    page.click("#confirm-ok")
    page.wait_for_selector("#contain-steps li[data-step='key rotation'] .ok")
    steps = page.locator("#contain-steps li").all_text_contents()
    assert steps[0].startswith("kill switch: engaged") and "(tenant acme)" in steps[0]
    assert steps[1].startswith("session revocation: revoked sessions of acme")
    assert steps[2].startswith("key rotation: rotated signing keys; older keys revoked (new kid ")
    page.wait_for_selector("#incident-actions td:has-text('sessions.revoked')")
    page.wait_for_selector("#incident-actions td:has-text('keys.rotated')")
    assert page.query_selector("#incident-actions td:text-is('jwt:resp-1')") is not None
    # The reason asked for lands in every step's audit record, not only the switch's.
    revoked = page.locator("#incident-actions tr", has_text="sessions.revoked").text_content()
    assert "stolen admin session" in revoked
    shoot(page, "incident-contained")
    with page.expect_download() as download_info:
        page.click("#export-trails")
    download = download_info.value
    assert download.suggested_filename == "audit-acme-INC-UI-2.json"
    exported = Path(download.path()).read_text()
    assert "killswitch.engaged" in exported and "INC-UI-2" in exported

    assert [login(gw, f"user{i}") for i in range(3)] == [401, 401, 429]  # the IP is locked out
    would = shadow_refusals(gw, "watch")
    assert would >= 1  # the second login was over "watch" and still reached the upstream (401)
    page.click("a[data-view='traffic']")
    # Per shadow policy, what it would have refused: the gateway's own count, as text.
    page.wait_for_selector(f"#traffic-shadow tr[data-policy='watch'] td:nth-child(2):text-is('{would}')")
    page.click("#lockouts tr:has-text('ip') button")
    page.click("#confirm-ok")
    page.wait_for_selector("#lockout-result:has-text('Cleared ip')")
    page.wait_for_selector("#lockouts:has-text('No active lockouts')")
    assert login(gw, "user9") == 401  # refused by the upstream again, not by a lockout
    page.wait_for_selector("#traffic-refusals tr[data-reason='locked-out']:has-text('429')")
    shoot(page, "traffic-lockouts")
    assert page.problems == []


def shadow_refusals(gw: GatewayProc, policy: str) -> int:
    request = urllib.request.Request(
        gw.admin_url + "/metrics", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        text = response.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "shopino_gateway_ratelimit_shadow_refusals_total" and sample.labels == {
                "policy": policy
            }:
                return int(sample.value)
    return 0


def login(gw: GatewayProc, username: str) -> int:
    body = json.dumps({"username": username, "password": "wrong"}).encode()
    request = urllib.request.Request(
        gw.url + "/login", data=body, headers={"Content-Type": "application/json"}
    )
    return public_request(request)


def public_request(request: urllib.request.Request) -> int:
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
