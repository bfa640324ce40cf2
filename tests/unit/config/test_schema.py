"""SPEC §1 (config path), §2 (schema), §14 (workers vs state): parse, validate, mask, freeze."""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.config.effective import effective_config
from gateway.config.errors import ConfigError
from gateway.config_model import GatewayConfig
from gateway.config_schema import default_config_path, load_config, parse_config

ROOT = Path(__file__).resolve().parents[3]
SHIPPED = ROOT / "config" / "gateway.yaml"
SPEC_TOP_LEVEL_KEYS = frozenset(
    {
        "listen",
        "admin",
        "state",
        "trusted_proxies",
        "upstreams",
        "routes",
        "routes_case_insensitive",
        "cors",
        "auth",
        "mfa",
        "tenancy",
        "rate_limits",
        "killswitch",
        "integrations",
        "logging",
        "audit",
        "observability",  # App. C: observability.otlp_endpoint
    }
)
MASK = "********"
TOKEN_SHA = hashlib.sha256(b"ci-bot-token").hexdigest()

UPSTREAM = "upstreams:\n  erp:\n    urls: ['http://127.0.0.1:9000']\n"
ROUTE = "routes:\n  - {name: api, prefix: /api, upstream: erp}\n"


def errors_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text)
    assert str(info.value) == "\n".join(info.value.errors)
    return info.value.errors


def with_route(**fields: object) -> str:
    """The valid base (one upstream, one route) with the route's fields changed."""
    route: dict[str, object] = {"name": "api", "prefix": "/api", "upstream": "erp"}
    route.update(fields)
    return UPSTREAM + yaml.safe_dump({"routes": [route]})


def with_upstream(**fields: object) -> str:
    upstream: dict[str, object] = {"urls": ["http://127.0.0.1:9000"]}
    upstream.update(fields)
    return yaml.safe_dump({"upstreams": {"erp": upstream}}) + ROUTE


def two_routes(first: str, second: str, *, case_insensitive: bool = False) -> str:
    routes = [
        {"name": "one", "prefix": first, "upstream": "erp"},
        {"name": "two", "prefix": second, "upstream": "erp"},
    ]
    data = {"routes": routes, "routes_case_insensitive": case_insensitive}
    return UPSTREAM + yaml.safe_dump(data)


# --- one test per kind of error, each asserting the exact report line ------------------------

ERROR_CASES = [
    # unknown keys
    pytest.param("foo: 1\n", ["foo: unknown key"], id="unknown-root"),
    pytest.param("tenancy:\n  claims: tid\n", ["tenancy.claims: unknown key"], id="unknown-in-tenancy"),
    pytest.param(
        "listen:\n  limits:\n    max_conns: 5\n",
        ["listen.limits.max_conns: unknown key"],
        id="unknown-nested",
    ),
    pytest.param(with_upstream(weight=2), ["upstreams.erp.weight: unknown key"], id="unknown-in-upstream"),
    pytest.param(with_route(timeout="5s"), ["routes[0].timeout: unknown key"], id="unknown-in-list-element"),
    pytest.param(
        "admin:\n  tokens:\n    - {name: ci, sha256: " + TOKEN_SHA + ", scope: all}\n",
        ["admin.tokens[0].scope: unknown key"],
        id="unknown-in-nested-list-element",
    ),
    pytest.param(
        "listen:\n  tls: {cert: a.crt, key: a.key, protocol: tls13}\n",
        ["listen.tls.protocol: unknown key"],
        id="unknown-in-tls-mapping",
    ),
    # wrong types
    pytest.param("listen: [1, 2]\n", ["listen: expected a mapping"], id="type-section-not-mapping"),
    pytest.param("- listen\n", ["<root>: expected a mapping"], id="type-root-not-mapping"),
    pytest.param("listen: {workers: two}\n", ["listen.workers: expected an integer"], id="type-integer"),
    pytest.param("listen: {port: true}\n", ["listen.port: expected an integer"], id="type-bool-is-not-int"),
    pytest.param("listen: {host: 5}\n", ["listen.host: expected a string"], id="type-string"),
    pytest.param(
        "routes_case_insensitive: 'yes'\n",
        ["routes_case_insensitive: expected true or false"],
        id="type-boolean",
    ),
    pytest.param(
        "admin: {jwt_issuers: x}\n", ["admin.jwt_issuers: expected a list of strings"], id="type-list"
    ),
    pytest.param("routes: {name: x}\n", ["routes: expected a list"], id="type-routes-not-list"),
    # integer ranges
    pytest.param("listen: {port: 70000}\n", ["listen.port: must be between 0 and 65535"], id="range-port"),
    pytest.param("listen: {workers: 0}\n", ["listen.workers: must be between 1 and 64"], id="range-workers"),
    pytest.param(
        "listen: {limits: {max_headers: 1001}}\n",
        ["listen.limits.max_headers: must be between 1 and 1000"],
        id="range-max-headers",
    ),
    pytest.param(with_upstream(max_fails=0), ["upstreams.erp.max_fails: must be >= 1"], id="range-min-only"),
    # durations and sizes
    pytest.param(
        "listen: {drain_timeout: 30 seconds}\n",
        ["listen.drain_timeout: expected a duration like '30s', '15m' or '2h'"],
        id="bad-duration",
    ),
    pytest.param(
        with_upstream(connect_timeout=-1),
        ["upstreams.erp.connect_timeout: duration must not be negative"],
        id="negative-duration",
    ),
    pytest.param(
        "listen: {limits: {max_header_bytes: 16XB}}\n",
        ["listen.limits.max_header_bytes: unknown size unit 'XB' (use B, KiB, MiB, GiB, KB, MB, GB)"],
        id="bad-size-unit",
    ),
    pytest.param(
        with_route(max_body="1.5MiB"),
        ["routes[0].max_body: expected a size like '16KiB' or '1MiB'"],
        id="bad-size",
    ),
    # enums
    pytest.param(
        "logging: {level: loud}\n",
        ["logging.level: must be one of debug, info, warning, error, critical"],
        id="enum-logging-level",
    ),
    pytest.param(
        with_route(auth="basic"), ["routes[0].auth: must be one of jwt, none, webhook"], id="enum-route-auth"
    ),
    pytest.param(
        "listen:\n  tls: {cert: a.crt, key: a.key, min_version: '1.1'}\n",
        ["listen.tls.min_version: must be one of 1.2, 1.3"],
        id="enum-tls-min-version",
    ),
    pytest.param(
        "listen: {tls: on}\n",
        ["listen.tls: expected a mapping", "listen.tls.cert: is required", "listen.tls.key: is required"],
        id="enum-tls-mode-bool-true",
    ),
    pytest.param(
        "listen: {tls: plain}\n",
        ["listen.tls: expected 'off', 'self-signed' or a mapping with cert and key"],
        id="enum-tls-mode",
    ),
    pytest.param(
        with_route(methods=["GET", "FETCH"]), ["routes[0].methods: unknown method FETCH"], id="enum-method"
    ),
    # required keys
    pytest.param(
        UPSTREAM + "routes:\n  - {name: api, prefix: /api}\n",
        ["routes[0].upstream: is required"],
        id="required-route-upstream",
    ),
    pytest.param("listen:\n  tls: {cert: a.crt}\n", ["listen.tls.key: is required"], id="required-tls-key"),
    pytest.param(
        "admin:\n  tokens:\n    - {name: ci}\n",
        ["admin.tokens[0].sha256: is required"],
        id="required-token-sha",
    ),
    pytest.param(
        "upstreams:\n  erp: {}\n", ["upstreams.erp.urls: at least one URL is required"], id="required-urls"
    ),
    # networks, URLs, listen addresses, tokens
    pytest.param(
        "trusted_proxies: [10.0.0.0/8, 10.0.0.0/33, proxy.internal]\n",
        [
            "trusted_proxies[1]: expected an IP address or CIDR network",
            "trusted_proxies[2]: expected an IP address or CIDR network",
        ],
        id="bad-cidr",
    ),
    pytest.param(
        with_upstream(urls=["ftp://files:21", "http://erp:9000/api", "http://", "erp:9000"]),
        [f"upstreams.erp.urls[{i}]: expected http(s)://host:port without a path" for i in range(4)],
        id="bad-upstream-url",
    ),
    pytest.param(
        "state: {url: 'memcached://127.0.0.1'}\n",
        ["state.url: expected local:PATH, redis://, rediss:// or redis+sentinel://"],
        id="bad-state-url",
    ),
    pytest.param(
        "admin: {listen: localhost}\n", ["admin.listen: expected HOST:PORT"], id="admin-listen-no-port"
    ),
    pytest.param(
        "admin: {listen: ':9090'}\n", ["admin.listen: expected HOST:PORT"], id="admin-listen-no-host"
    ),
    pytest.param(
        "admin: {listen: 'h:99999'}\n", ["admin.listen: expected HOST:PORT"], id="admin-listen-port-range"
    ),
    pytest.param(
        "admin: {listen: 'h:http'}\n", ["admin.listen: expected HOST:PORT"], id="admin-listen-port-name"
    ),
    pytest.param(
        "admin:\n  tokens:\n    - {name: ci, sha256: abc123}\n",
        ["admin.tokens[0].sha256: expected 64 lowercase hex digits (sha256 of the token)"],
        id="bad-token-sha256",
    ),
    pytest.param(
        "admin:\n  tokens:\n    - {name: ci, sha256: " + "g" * 64 + "}\n",
        ["admin.tokens[0].sha256: expected 64 lowercase hex digits (sha256 of the token)"],
        id="bad-token-sha256-not-hex",
    ),
    # cross references and uniqueness
    pytest.param(
        with_route(upstream="nope"), ["routes[0].upstream: no upstream named 'nope'"], id="missing-upstream"
    ),
    pytest.param(
        with_route(cors="nope"), ["routes[0].cors: no cors policy named 'nope'"], id="missing-cors-policy"
    ),
    pytest.param(
        with_route(name="my api"),
        ["routes[0].name: use letters, digits, '-', '_' or '.' (max 64)"],
        id="bad-route-name",
    ),
    pytest.param(
        UPSTREAM
        + "routes:\n  - {name: api, prefix: /a, upstream: erp}\n  - {name: api, prefix: /b, upstream: erp}\n",
        ["routes[1].name: duplicate route name 'api'"],
        id="duplicate-route-name",
    ),
    pytest.param(
        two_routes("/api", "/api"),
        ["routes[1].prefix: another route already has prefix '/api'"],
        id="duplicate-prefix",
    ),
    pytest.param(
        two_routes("/api", "/api/"),
        ["routes[1].prefix: another route already has prefix '/api/'"],
        id="duplicate-prefix-trailing-slash",
    ),
    pytest.param(
        two_routes("/api/", "/api"),
        ["routes[1].prefix: another route already has prefix '/api'"],
        id="duplicate-prefix-trailing-slash-first",
    ),
    pytest.param(
        two_routes("/api/finance", "/API/Finance/", case_insensitive=True),
        ["routes[1].prefix: another route already has prefix '/API/Finance/'"],
        id="duplicate-prefix-case-insensitive",
    ),
    pytest.param(
        with_route(prefix="api/x"),
        ["routes[0].prefix: expected an absolute path like /api/finance"],
        id="relative-prefix",
    ),
    pytest.param(
        with_route(prefix="/api/../admin"),
        ["routes[0].prefix: expected an absolute path like /api/finance"],
        id="dotdot-prefix",
    ),
    pytest.param(
        with_route(prefix="//api"),
        ["routes[0].prefix: expected an absolute path like /api/finance"],
        id="double-slash-prefix",
    ),
    # cross-field rules
    pytest.param(
        "listen: {workers: 4}\n",
        ["listen.workers: must be 1 with local: state (use a redis:// state.url)"],
        id="workers-with-local-state",
    ),
    pytest.param(
        "listen: {workers: 2}\nstate: {url: 'local:/var/lib/gw'}\n",
        ["listen.workers: must be 1 with local: state (use a redis:// state.url)"],
        id="workers-with-explicit-local-state",
    ),
    pytest.param(
        "cors:\n  web: {origins: ['*'], credentials: true}\n",
        ["cors.web.origins: '*' cannot be combined with credentials: true"],
        id="cors-wildcard-with-credentials",
    ),
    pytest.param(
        "admin: {tokens: [{name: ci, sha256: 123456}]}\n",
        ["admin.tokens[0].sha256: expected a string"],
        id="required-string-given-a-number",
    ),
    pytest.param(
        "admin: {tokens: [{name: ci, sha256: null}]}\n",
        ["admin.tokens[0].sha256: is required"],
        id="required-string-given-null",
    ),
    pytest.param(
        "rate_limits: {pre_auth: [{key: 'header:x-user-id', limit: 5/second}]}\n",
        ["rate_limits.pre_auth[0].key: x-user-id is stripped from client requests (tenancy)"],
        id="rate-limit-by-a-stripped-identity-header",
    ),
    pytest.param(
        "tenancy: {strip_headers: [X-Acting-As]}\n"
        "rate_limits: {policies: {api: [{key: 'header:X-Acting-As', limit: 5/second}]}}\n",
        ["rate_limits.policies.api[0].key: X-Acting-As is stripped from client requests (tenancy)"],
        id="rate-limit-by-a-configured-stripped-header",
    ),
    pytest.param(
        "listen: {server: nginx}\n",
        ["listen.server: must be one of lean, aiohttp"],
        id="listen-server-unknown",
    ),
    # unreadable YAML
    pytest.param("listen: [\n", ["<root>: invalid YAML at line 2, column 1"], id="invalid-yaml"),
    pytest.param(
        "listen:\n  port: 1\n   host: x\n",
        ["<root>: invalid YAML at line 3, column 8"],
        id="invalid-yaml-indent",
    ),
]


@pytest.mark.parametrize(("text", "expected"), ERROR_CASES)
def test_each_kind_of_error_is_reported_at_its_key_path(text: str, expected: list[str]) -> None:
    assert errors_of(text) == expected


def test_unset_environment_variable_is_reported_at_its_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SHOPINO_TEST_UNSET", raising=False)
    assert errors_of("listen: {host: '${SHOPINO_TEST_UNSET}'}\n") == [
        "listen.host: environment variable SHOPINO_TEST_UNSET is not set"
    ]


def test_every_error_of_a_bad_file_is_reported_not_just_the_first() -> None:
    text = """
listen:
  port: 99999
  workers: 3
  bogus: 1
  limits: {max_header_bytes: 4 parsecs, header_timeout: soon}
admin:
  listen: nowhere
  tokens:
    - {name: ci, sha256: short}
trusted_proxies: [300.1.1.1]
upstreams:
  erp: {urls: ['gopher://erp']}
routes:
  - {name: a, prefix: /a, upstream: erp, cors: missing}
  - {name: a, prefix: /a/, upstream: ghost}
  - {name: c, prefix: relative, upstream: erp, auth: maybe, extra: 1}
cors:
  web: {origins: ['*'], credentials: true}
logging: {level: verbose}
features: {}
"""
    expected = {
        "listen.limits.max_header_bytes: unknown size unit 'parsecs' (use B, KiB, MiB, GiB, KB, MB, GB)",
        "listen.limits.header_timeout: expected a duration like '30s', '15m' or '2h'",
        "listen.port: must be between 0 and 65535",
        "listen.bogus: unknown key",
        "admin.listen: expected HOST:PORT",
        "admin.tokens[0].sha256: expected 64 lowercase hex digits (sha256 of the token)",
        "trusted_proxies[0]: expected an IP address or CIDR network",
        "upstreams.erp.urls[0]: expected http(s)://host:port without a path",
        "routes[1].name: duplicate route name 'a'",
        "routes[1].prefix: another route already has prefix '/a/'",
        "routes[2].prefix: expected an absolute path like /api/finance",
        "routes[2].auth: must be one of jwt, none, webhook",
        "routes[2].extra: unknown key",
        "cors.web.origins: '*' cannot be combined with credentials: true",
        "logging.level: must be one of debug, info, warning, error, critical",
        "features: unknown key",
        "routes[0].cors: no cors policy named 'missing'",
        "routes[1].upstream: no upstream named 'ghost'",
        "listen.workers: must be 1 with local: state (use a redis:// state.url)",
    }
    errors = errors_of(text)
    assert set(errors) == expected
    assert len(errors) == len(expected)  # each problem exactly once


def test_two_unnamed_routes_report_only_the_missing_names() -> None:
    text = UPSTREAM + "routes:\n  - {prefix: /a, upstream: erp}\n  - {prefix: /b, upstream: erp}\n"
    assert errors_of(text) == ["routes[0].name: is required", "routes[1].name: is required"]


@pytest.mark.parametrize("url", ["http://erp:abc", "http://erp:99999"])
def test_upstream_url_with_invalid_port_is_refused(url: str) -> None:
    assert errors_of(with_upstream(urls=[url])) == [
        "upstreams.erp.urls[0]: expected http(s)://host:port without a path"
    ]


# --- accepted variants -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        pytest.param(two_routes("/api", "/API"), id="case-variant-prefix-when-case-sensitive"),
        pytest.param(two_routes("/api", "/api/v2"), id="nested-prefixes"),
        pytest.param(
            "listen: {workers: 4}\nstate: {url: 'redis://127.0.0.1:6379/0'}\n", id="workers-with-redis"
        ),
        pytest.param("cors:\n  web: {origins: ['*']}\n", id="cors-wildcard-without-credentials"),
        pytest.param(
            "admin:\n  tokens:\n    - {name: ci, sha256: " + TOKEN_SHA.upper() + "}\n", id="sha256-upper"
        ),
        pytest.param("admin: {listen: '[::1]:9091'}\n", id="admin-listen-ipv6"),
        pytest.param("trusted_proxies: [10.0.0.0/8, 127.0.0.1, 'fd00::/8']\n", id="trusted-proxies-mixed"),
    ],
)
def test_valid_variants_are_accepted(text: str) -> None:
    assert isinstance(parse_config(text), GatewayConfig)


def test_values_are_converted_to_their_types() -> None:
    config = parse_config(
        UPSTREAM
        + """
routes:
  - {name: up, prefix: /upload, upstream: erp, methods: [post, PUT], max_body: 1MiB, mfa: false}
listen:
  port: '8080'
  tls: off
  limits: {header_timeout: 250ms, max_header_bytes: 32KiB}
admin:
  listen: '[::1]:9091'
  tokens:
    - {name: ci, sha256: """
        + TOKEN_SHA.upper()
        + """}
trusted_proxies: [10.1.2.3/8, '2001:db8::/32']
"""
    )
    route = config.routes[0]
    assert route.methods == frozenset({"POST", "PUT"})
    assert route.max_body == 1024 * 1024
    assert route.mfa is False
    assert config.listen.port == 8080  # numeric text (as from ${PORT}) becomes an int
    assert config.listen.tls.mode == "off"  # YAML 1.1 reads bare `off` as false
    assert config.listen.limits.header_timeout == pytest.approx(0.25)
    assert config.listen.limits.max_header_bytes == 32 * 1024
    assert (config.admin.host, config.admin.port) == ("::1", 9091)
    assert config.admin.tokens[0].sha256 == TOKEN_SHA  # lower-cased
    assert config.trusted_proxies == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("2001:db8::/32"),
    )


def test_upstream_urls_lose_a_trailing_slash() -> None:
    config = parse_config(with_upstream(urls=["http://a:1/", "https://b:2"]))
    assert config.upstreams["erp"].urls == ("http://a:1", "https://b:2")


# --- defaults ----------------------------------------------------------------------------------


def test_defaults_of_a_minimal_config() -> None:
    config = parse_config(UPSTREAM + ROUTE)
    listen = config.listen
    assert (listen.host, listen.port, listen.workers, listen.drain_timeout) == ("0.0.0.0", 8443, 1, 30.0)
    assert listen.tls.mode == "self-signed"
    assert listen.limits.max_connections == 10000
    assert listen.limits.header_timeout == 10.0
    assert listen.limits.keepalive_timeout == 75.0
    assert listen.limits.max_header_bytes == 16 * 1024
    assert listen.limits.max_headers == 100
    assert listen.server == "lean"
    admin = config.admin
    assert (admin.host, admin.port, admin.tls.mode, admin.tokens, admin.jwt_issuers) == (
        "127.0.0.1",
        9090,
        "off",
        (),
        (),
    )
    assert config.state.url == "local:./var/state"
    assert config.trusted_proxies == ()
    assert config.routes_case_insensitive is False
    assert config.cors == {}
    assert config.logging.level == "info"
    assert config.secret_paths == frozenset()
    upstream = config.upstreams["erp"]
    assert (upstream.connect_timeout, upstream.read_timeout) == (2.0, 30.0)
    assert (upstream.max_fails, upstream.eject_for, upstream.pool_size) == (3, 10.0, 100)
    assert upstream.tls.verify is True
    route = config.routes[0]
    assert (route.auth, route.mfa, route.websocket) == ("jwt", True, True)
    assert (route.methods, route.module, route.max_body, route.cors) == (None, None, None, None)


def test_empty_file_is_a_valid_config_with_defaults() -> None:
    config = parse_config("")
    assert config.routes == ()
    assert config.upstreams == {}
    assert config.listen.port == 8443


def test_cors_policy_defaults() -> None:
    config = parse_config("cors:\n  web: {origins: [https://app.example]}\n")
    policy = config.cors["web"]
    assert policy.origins == frozenset({"https://app.example"})
    assert policy.methods == ("GET", "POST", "PUT", "PATCH", "DELETE")
    assert policy.headers == ("Authorization", "Content-Type")
    assert (policy.credentials, policy.max_age, policy.expose_headers) == (False, 600.0, ())


# --- immutability ------------------------------------------------------------------------------


def test_config_objects_are_frozen() -> None:
    config = parse_config(UPSTREAM + ROUTE + "cors:\n  web: {origins: [https://a.example]}\n")
    targets: list[tuple[Any, str]] = [
        (config, "routes"),
        (config.listen, "port"),
        (config.listen.limits, "max_headers"),
        (config.listen.tls, "mode"),
        (config.admin, "tokens"),
        (config.state, "url"),
        (config.routes[0], "prefix"),
        (config.upstreams["erp"], "urls"),
        (config.upstreams["erp"].tls, "verify"),
        (config.cors["web"], "origins"),
        (config.logging, "level"),
    ]
    for obj, name in targets:
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(obj, name, None)
    assert isinstance(config.routes, tuple)
    assert isinstance(config.upstreams["erp"].urls, tuple)


@pytest.mark.parametrize("section", ["upstreams", "cors"])
def test_config_mappings_are_read_only(section: str) -> None:
    config = parse_config(UPSTREAM + ROUTE + "cors:\n  web: {origins: [https://a.example]}\n")
    with pytest.raises(TypeError):
        getattr(config, section)["injected"] = None


# --- effective_config: what check-config and GET /admin/config print --------------------------


def test_effective_config_masks_state_password_and_token_hashes() -> None:
    config = parse_config(
        "state: {url: 'redis://gw:Sup3r-Secret@redis.internal:6379/0'}\n"
        "admin:\n  tokens:\n    - {name: ci-bot, sha256: " + TOKEN_SHA + "}\n"
    )
    data = effective_config(config)
    assert data["state"]["url"] == f"redis://gw:{MASK}@redis.internal:6379/0"
    assert data["admin"]["tokens"] == [{"name": "ci-bot", "sha256": MASK}]
    printed = json.dumps(data)
    assert "Sup3r-Secret" not in printed
    assert TOKEN_SHA not in printed
    assert "secret_paths" not in data
    # The config object itself keeps the real values.
    assert config.admin.tokens[0].sha256 == TOKEN_SHA
    assert config.state.url.endswith("Sup3r-Secret@redis.internal:6379/0")


def test_effective_config_keeps_url_without_password() -> None:
    config = parse_config("state: {url: 'redis://redis.internal:6379/2'}\n")
    assert effective_config(config)["state"]["url"] == "redis://redis.internal:6379/2"


def test_effective_config_masks_every_value_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    secrets = {
        "GW_TEST_UPSTREAM": "http://erp-secret-host.internal:9000",
        "GW_TEST_ISSUER": "https://idp-secret.example",
        "GW_TEST_STATE": "redis://:pw-from-env@redis:6379/0",
        "GW_TEST_TOKEN_NAME": "token-name-from-env",
        "GW_TEST_MODULE": "module-from-env",
    }
    addresses = {"GW_TEST_HOST": "10.99.0.7", "GW_TEST_PORT": "8444"}
    for name, value in {**secrets, **addresses}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("GW_TEST_UNSET", raising=False)
    config = parse_config(
        """
listen: {host: '${GW_TEST_HOST}', port: '${GW_TEST_PORT}'}
auth:
  issuers:
    - {issuer: 'https://plain.example', audience: erp, jwks_file: /keys/a.json}
    - {issuer: '${GW_TEST_ISSUER}', audience: erp, jwks_file: /keys/b.json}
admin:
  jwt_issuers: ['https://plain.example', '${GW_TEST_ISSUER}']
  tokens:
    - {name: '${GW_TEST_TOKEN_NAME}', sha256: """
        + TOKEN_SHA
        + """}
state: {url: '${GW_TEST_STATE}'}
upstreams:
  erp: {urls: ['${GW_TEST_UPSTREAM}']}
routes:
  - {name: api, prefix: '${GW_TEST_UNSET:-/api}', upstream: erp, module: '${GW_TEST_MODULE}'}
"""
    )
    # The values really were substituted ...
    assert config.listen.host == "10.99.0.7"
    assert config.listen.port == 8444
    assert config.upstreams["erp"].urls == ("http://erp-secret-host.internal:9000",)
    assert config.secret_paths == {
        "auth.issuers[1].issuer",
        "admin.jwt_issuers[1]",
        "admin.tokens[0].name",
        "state.url",
        "upstreams.erp.urls[0]",
        "routes[0].module",
    }
    data = effective_config(config)
    # ... and are masked where they appear.
    assert data["admin"]["jwt_issuers"] == ["https://plain.example", MASK]
    assert data["admin"]["tokens"][0] == {"name": MASK, "sha256": MASK}
    assert data["state"]["url"] == MASK
    assert data["upstreams"]["erp"]["urls"] == [MASK]
    assert data["routes"][0]["module"] == MASK
    # A default (not from the environment) is not a secret and stays readable.
    assert data["routes"][0]["prefix"] == "/api"
    # Where the gateway listens is not a secret, even when the environment set it.
    assert (data["listen"]["host"], data["listen"]["port"]) == ("10.99.0.7", 8444)
    printed = json.dumps(data)
    for value in secrets.values():
        assert value not in printed


def test_effective_config_shows_listen_addresses_and_masks_the_secrets_around_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What ``shopino-gateway demo`` does: ports from the environment, and an upstream URL and
    a state URL (secrets by the rule) that contain the same host and port."""
    monkeypatch.setenv("GW_PORT", "18443")
    monkeypatch.setenv("GW_ADMIN_PORT", "19090")
    monkeypatch.setenv("GW_UPSTREAM", "http://127.0.0.1:18443")
    monkeypatch.setenv("GW_STATE", "redis://:Env-Pw-19090@127.0.0.1:6379/0")
    config = parse_config(
        "listen: {host: 127.0.0.1, port: '${GW_PORT}'}\n"
        "admin: {listen: '127.0.0.1:${GW_ADMIN_PORT}', tokens: [{name: ops, sha256: " + TOKEN_SHA + "}]}\n"
        "state: {url: '${GW_STATE}'}\n"
        "upstreams:\n  erp: {urls: ['${GW_UPSTREAM}']}\n"
    )
    data = effective_config(config)
    assert data["listen"]["host"] == "127.0.0.1" and data["listen"]["port"] == 18443
    assert data["admin"]["host"] == "127.0.0.1" and data["admin"]["port"] == 19090
    # The secrets stay masked, and the addresses being visible did not unmask them.
    assert data["state"]["url"] == MASK
    assert data["upstreams"]["erp"]["urls"] == [MASK]
    assert data["admin"]["tokens"] == [{"name": "ops", "sha256": MASK}]
    printed = json.dumps(data)
    assert "Env-Pw-19090" not in printed and TOKEN_SHA not in printed


@pytest.mark.parametrize("text", ["admin: {listen: '${GW_LEAK}'}\n", "listen: {host: '${GW_LEAK}'}\n"])
def test_an_address_from_the_environment_is_not_a_secret_value(
    monkeypatch: pytest.MonkeyPatch, text: str
) -> None:
    """It must not mask other fields that merely contain it either (the value rule)."""
    monkeypatch.setenv("GW_LEAK", "10.42.42.42:7777" if "admin" in text else "10.42.42.42")
    config = parse_config(text + "trusted_proxies: [10.42.42.42/32]\n")
    assert not config.secret_values and not config.secret_paths
    data = effective_config(config)
    assert data["trusted_proxies"] == ["10.42.42.42/32"]
    assert "10.42.42.42" in (data["admin"]["host"], data["listen"]["host"])


# Secrets that once slipped through effective_config: each case is one former masking gap.
def _leak(text: str, value: str, fragments: list[str], reason: str, case: str) -> Any:
    return pytest.param(text, value, fragments, id=case)


LEAKS = [
    _leak(
        "cors:\n  web: {origins: ['https://b.example', '${GW_LEAK}']}\n",
        "https://a-secret.example",
        ["https://a-secret.example"],
        "BUG config/__init__.py _mask_path: origins[1] is masked by index, but _plain sorts the "
        "frozenset, so the wrong element is masked (route methods alike)",
        "cors-origin-from-env-after-sorting",
    ),
    _leak(
        "upstreams:\n  erp.v2: {urls: ['${GW_LEAK}']}\n",
        "http://leaked-host.internal:9000",
        ["leaked-host.internal"],
        "BUG config/__init__.py _mask_path: path split on '.' breaks names containing '.', "
        "lookup fails silently and the value stays unmasked",
        "env-value-under-dotted-upstream-name",
    ),
    _leak(
        "state: {url: 'redis+sentinel://:pw@s1:26379/mymaster?sentinel_password=SENTINEL-PW'}\n",
        "SENTINEL-PW",
        ["SENTINEL-PW"],
        "BUG config/__init__.py _mask_url_password: only the userinfo password is masked; the "
        "sentinel_password query option (state/redis_url.py _SECRETS) is printed in clear",
        "sentinel-password-query-option",
    ),
]


@pytest.mark.parametrize(("text", "value", "fragments"), LEAKS)
def test_effective_config_masks_secret(
    monkeypatch: pytest.MonkeyPatch, text: str, value: str, fragments: list[str]
) -> None:
    monkeypatch.setenv("GW_LEAK", value)
    printed = json.dumps(effective_config(parse_config(text)))
    for fragment in fragments:
        assert fragment not in printed


def test_effective_config_is_json_serialisable() -> None:
    config = parse_config(
        UPSTREAM
        + "routes:\n  - {name: api, prefix: /api, upstream: erp, methods: [GET, POST]}\n"
        + "trusted_proxies: [10.0.0.0/8]\n"
    )
    data = json.loads(json.dumps(effective_config(config)))
    assert data["trusted_proxies"] == ["10.0.0.0/8"]
    assert data["routes"][0]["methods"] == ["GET", "POST"]


# --- the shipped file ------------------------------------------------------------------------


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The shipped file's ${VAR:-default}s take their defaults."""
    for name in list(os.environ):
        if name.startswith(("SHOPINO_DEMO_", "SHOPINO_ADMIN_")):
            monkeypatch.delenv(name)


@pytest.mark.usefixtures("clean_env")
def test_shipped_config_parses() -> None:
    config = load_config(SHIPPED)
    assert config.source == str(SHIPPED)
    assert config.listen.port == 8443
    assert config.state.url == "local:./var/state"
    assert {route.name for route in config.routes} >= {"login", "inventory", "finance"}
    assert all(route.upstream in config.upstreams for route in config.routes)
    # Its comment names the demo admin token; the stored hash must match it.
    assert config.admin.tokens[0].sha256 == hashlib.sha256(b"demo-admin-token").hexdigest()
    assert config.secret_paths == frozenset()


def test_the_package_carries_the_shipped_config() -> None:
    """``shopino-gateway demo`` from an installed package reads ``gateway/default_config.yaml``
    (package data). One source of truth: in the source tree it is a link to this file, so keys
    added to config/gateway.yaml reach the package without a second copy to keep in step."""
    from gateway.demo.command import shipped_config_path

    packaged = shipped_config_path()
    assert packaged.name == "default_config.yaml" and packaged.parent == ROOT / "gateway"
    assert packaged.is_symlink() and packaged.resolve() == SHIPPED.resolve()
    assert packaged.read_bytes() == SHIPPED.read_bytes()


def test_shipped_config_top_level_keys_are_from_the_spec() -> None:
    data = yaml.safe_load(SHIPPED.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    assert set(data) <= SPEC_TOP_LEVEL_KEYS


# --- load_config / default_config_path -------------------------------------------------------


def test_load_config_reads_a_file_and_records_its_source(tmp_path: Path) -> None:
    file = tmp_path / "gw.yaml"
    file.write_text(UPSTREAM + ROUTE, encoding="utf-8")
    config = load_config(file)
    assert config.source == str(file)
    assert config.routes[0].prefix == "/api"


def test_load_config_missing_file_is_a_config_error(tmp_path: Path) -> None:
    missing = tmp_path / "absent.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(missing)
    assert info.value.errors == [f"<file>: cannot read {missing}: No such file or directory"]


def test_load_config_reports_errors_of_the_file(tmp_path: Path) -> None:
    file = tmp_path / "bad.yaml"
    file.write_text("listen: {port: -1}\nlogging: {level: loud}\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(str(file))
    assert info.value.errors == [
        "listen.port: must be between 0 and 65535",
        "logging.level: must be one of debug, info, warning, error, critical",
    ]


def test_default_config_path_explicit_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHOPINO_GATEWAY_CONFIG", "/etc/from-env.yaml")
    assert default_config_path("/etc/explicit.yaml") == Path("/etc/explicit.yaml")


def test_default_config_path_environment_next(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHOPINO_GATEWAY_CONFIG", "/etc/from-env.yaml")
    assert default_config_path() == Path("/etc/from-env.yaml")
    assert default_config_path(None) == Path("/etc/from-env.yaml")


def test_default_config_path_falls_back_to_config_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SHOPINO_GATEWAY_CONFIG", raising=False)
    assert default_config_path() == Path("config/gateway.yaml")
    monkeypatch.setenv("SHOPINO_GATEWAY_CONFIG", "")
    assert default_config_path() == Path("config/gateway.yaml")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "auth: {issuers: [{issuer: https://a.example, audience: erp, algorithms: [HS256], "
            "jwks_file: /k}]}\n",
            "auth.issuers[0].algorithms: HS256 is not allowed",
        ),
        (
            "auth: {issuers: [{issuer: https://a.example, audience: erp}]}\n",
            "auth.issuers[0]: exactly one of jwks_file, jwks_url, public_key_file is required",
        ),
        (
            "auth: {issuers: [{issuer: https://a.example, audience: erp, jwks_url: 'http://idp.example/j'}]}\n",
            "auth.issuers[0].jwks_url: must be https:// (plain http only on loopback)",
        ),
        (
            "admin: {jwt_issuers: [https://ops.example]}\n",
            "admin.jwt_issuers[0]: 'https://ops.example' is not one of auth.issuers",
        ),
        (
            UPSTREAM + "routes:\n  - {name: w, prefix: /w, upstream: erp, auth: webhook}\n",
            "routes[0].integration: auth: webhook needs an integration named under integrations",
        ),
        (
            "integrations: {woo: {scheme: woocommerce, secret: ''}}\n",
            "integrations.woo: secret must not be empty",
        ),
        (
            "logging: {redact: {extra_patterns: ['a*']}}\n",
            "logging.redact.extra_patterns[0]: must not match the empty string",
        ),
        (
            "logging: {redact: {max_scan: 16}}\n",
            "logging.redact.max_scan: must be between 256 and 1048576 bytes",
        ),
        ("logging: {redact: {max_scan: lots}}\n", "logging.redact.max_scan: expected a size"),
    ],
)
def test_security_settings_are_checked(text: str, expected: str) -> None:
    errors = errors_of(text)
    assert any(error.startswith(expected) for error in errors), errors


def test_admin_step_up_age_defaults_to_15m_and_is_bounded() -> None:
    base = (
        "upstreams:\n  erp:\n    urls: ['http://127.0.0.1:9000']\n"
        "routes:\n  - {name: a, prefix: /a, upstream: erp}\n"
    )
    assert parse_config(base).admin.mfa_max_age == 900.0
    assert parse_config(base + "admin: {mfa_max_age: 5m}\n").admin.mfa_max_age == 300.0
    with pytest.raises(ConfigError) as info:
        parse_config(base + "admin: {mfa_max_age: 2d}\n")
    assert "admin.mfa_max_age: must be between 1m and 24h" in info.value.errors
