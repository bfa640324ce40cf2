"""gateway.killswitch.checks: one request against the switch set, as the stages, the gateway's
own endpoints and the stream registry ask it."""

from __future__ import annotations

import itertools
import time
from types import SimpleNamespace

import pytest

from gateway.errors import Isolated, NotReady
from gateway.killswitch.checks import (
    acting_tenants,
    check_endpoint_tenant,
    check_gateway_endpoint,
    refusal_for,
    refuse_unidentified,
    wants_websocket,
)
from gateway.killswitch.matcher import SwitchIndex
from gateway.killswitch.model import Switch, validate_spec
from gateway.routing import HEALTH_PATH, READY_PATH

_ids = itertools.count()


def switch(scope: str, target: str | None, mode: str = "block") -> Switch:
    base = validate_spec({"scope": scope, "target": target, "mode": mode, "reason": "test"})
    return Switch(
        f"ks_{next(_ids)}", base.scope, base.target, base.mode, "test", None, time.time(), None, None
    )


def facts(
    path: str,
    method: str = "GET",
    tenant: str | None = None,
    claims_tenant: str | None = None,
    **headers: str,
) -> SimpleNamespace:
    claims = SimpleNamespace(tenant=claims_tenant) if claims_tenant else None
    route = SimpleNamespace(name="finance-api", module="finance", integration=None)
    return SimpleNamespace(
        request=SimpleNamespace(method=method, headers=headers),
        target=SimpleNamespace(path=path),
        route=route,
        tenant=tenant,
        claims=claims,
    )


def test_no_switch_set_yet_fails_closed() -> None:
    with pytest.raises(NotReady):
        check_gateway_endpoint(None, facts("/_gateway/mfa/verify"), case_insensitive=False)  # type: ignore[arg-type]
    with pytest.raises(NotReady):
        check_endpoint_tenant(None, "GET", "acme")


def test_a_global_switch_spares_only_the_probes() -> None:
    index = SwitchIndex([switch("global", None)], 1)
    check_gateway_endpoint(index, facts(HEALTH_PATH), case_insensitive=False)  # type: ignore[arg-type]
    check_gateway_endpoint(None, facts(READY_PATH), case_insensitive=False)  # type: ignore[arg-type]
    with pytest.raises(Isolated):
        check_gateway_endpoint(index, facts("/_gateway/grants"), case_insensitive=False)  # type: ignore[arg-type]


def test_read_only_refuses_a_websocket_upgrade() -> None:
    index = SwitchIndex([switch("module", "finance", mode="read-only")], 1)
    plain, upgrade = facts("/api/finance/x"), facts("/api/finance/x", Upgrade="WebSocket")
    refuse_unidentified(index, plain, plain.route, case_insensitive=False)  # type: ignore[arg-type]
    with pytest.raises(Isolated):
        refuse_unidentified(index, upgrade, upgrade.route, case_insensitive=False)  # type: ignore[arg-type]
    assert wants_websocket({"Upgrade": "h2c, websocket"})


def test_endpoint_tenant_switch() -> None:
    index = SwitchIndex([switch("tenant", "acme", mode="read-only")], 1)
    check_endpoint_tenant(index, "GET", "acme")
    check_endpoint_tenant(index, "POST", "globex")
    with pytest.raises(Isolated):
        check_endpoint_tenant(index, "POST", "acme")


def test_acting_tenants_cover_the_token_tenant_under_a_grant() -> None:
    assert acting_tenants(facts("/", tenant="acme", claims_tenant="support")) == ("acme", "support")  # type: ignore[arg-type]
    assert acting_tenants(facts("/", tenant="acme", claims_tenant="acme")) == ("acme",)  # type: ignore[arg-type]
    assert acting_tenants(facts("/", claims_tenant="acme")) == ("acme",)  # type: ignore[arg-type]
    assert acting_tenants(facts("/")) == ()  # type: ignore[arg-type]


def test_refusal_for_checks_every_scope() -> None:
    index = SwitchIndex([switch("tenant", "support")], 1)
    hit = refusal_for(
        index,
        facts("/api/x", tenant="acme", claims_tenant="support"),
        websocket=False,
        now=time.time(),
        case_insensitive=False,  # type: ignore[arg-type]
    )
    assert hit is not None and hit.target == "support"
