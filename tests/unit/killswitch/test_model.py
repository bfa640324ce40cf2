"""Switch validation: scopes, modes, reason required, targets normalised, round trip."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.killswitch.model import Switch, isolated_error, parse_ttl, validate_spec
from gateway.killswitch.scopes import parse_endpoint


def spec(**fields: Any) -> dict[str, Any]:
    return {"scope": "module", "target": "finance", "mode": "block", "reason": "breach", **fields}


def test_valid_spec_is_normalised() -> None:
    switch = validate_spec(spec(reason="  breach  "))
    assert (switch.scope, switch.target, switch.mode, switch.reason) == (
        "module",
        "finance",
        "block",
        "breach",
    )


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"reason": None}, "reason is required"),
        ({"reason": "   "}, "reason is required"),
        ({"reason": "x" * 501}, "longer"),
        ({"scope": "planet"}, "scope must be"),
        ({"mode": "drain"}, "mode must be"),
        ({"target": None}, "needs a target"),
        ({"target": "fin ance"}, "target must be a name"),
        ({"scope": "global", "target": "finance"}, "no target"),
        ({"scope": "tenant", "target": "-bad"}, "invalid tenant"),
        ({"incident": "has space"}, "incident must be"),
        ({"scope": "endpoint", "target": "FETCH /x"}, "METHOD /path"),
        ({"scope": "endpoint", "target": "GET x"}, "start with '/'"),
        ({"scope": "endpoint", "target": "GET /a/**/b"}, "last segment"),
        ({"scope": "endpoint", "target": "GET /a/b*"}, "whole segments"),
        ({"scope": "endpoint", "target": "GET /../etc"}, "escapes the root"),
        ({"scope": "endpoint", "target": "GET /a%2Fb"}, "encoded slash"),
    ],
)
def test_invalid_specs_are_refused(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        validate_spec(spec(**fields))


@pytest.mark.parametrize("target", [None, "", "*"])
def test_global_takes_no_target_or_star(target: str | None) -> None:
    assert validate_spec(spec(scope="global", target=target)).target == "*"


def test_endpoint_targets_are_canonicalised_like_requests() -> None:
    # A glob written with '//', dot segments or escapes names what requests will look like.
    assert parse_endpoint("post //api/./finance/%69nvoices/*") == ("POST", "/api/finance/invoices/*")
    assert parse_endpoint("* /api/**") == ("*", "/api/**")


@pytest.mark.parametrize("raw, seconds", [(None, None), ("2h", 7200.0), (90, 90.0), ("250ms", 0.25)])
def test_ttl(raw: object, seconds: float | None) -> None:
    assert parse_ttl(raw) == seconds


@pytest.mark.parametrize("raw", [0, "0s", -1, "soon", "400d", True])
def test_bad_ttl(raw: object) -> None:
    with pytest.raises(ValueError):
        parse_ttl(raw)


def test_record_round_trip_and_json_shape() -> None:
    base = validate_spec(spec(incident="INC-7"))
    switch = Switch(
        "ks_1", base.scope, base.target, base.mode, base.reason, "INC-7", 1000.5, 2000.0, "admin", 3
    )
    assert Switch.from_record(switch.to_record()) == switch
    body = switch.to_json()
    assert set(body) == {
        "id",
        "scope",
        "target",
        "mode",
        "reason",
        "incident",
        "created_at",
        "expires_at",
        "actor",
        "version",
    }
    assert body["created_at"].endswith("Z") and body["expires_at"].endswith("Z")


def test_tampered_record_is_rejected() -> None:
    base = validate_spec(spec())
    record = Switch(
        "ks_1", base.scope, base.target, base.mode, base.reason, None, 1.0, None, None, 1
    ).to_record()
    with pytest.raises(ValueError):
        Switch.from_record({**record, "scope": "everything"})
    with pytest.raises(ValueError):
        Switch.from_record({**record, "created_at": float("nan")})


def test_isolated_error_carries_incident_and_retry_after() -> None:
    base = validate_spec(spec())
    switch = Switch("ks_1", "module", "finance", "block", "secret internal reason", "INC-9", 0.0, 130.2, None)
    error = isolated_error(switch, now=100.0)
    assert (error.status, error.slug) == (503, "isolated")
    assert error.extensions == {"incident": "INC-9"}
    assert error.headers == {"Retry-After": "31"}
    assert "secret" not in error.detail  # the operator's reason is never shown to clients
    no_ttl = isolated_error(Switch("ks_2", "module", "finance", "block", "r", None, 0.0, None, None), 1.0)
    assert no_ttl.headers == {} and no_ttl.extensions == {}
    assert base.mode == "block"
