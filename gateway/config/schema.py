"""Section builders: raw YAML data → frozen config objects, every error reported by key path.

Each section's rules sit in its own function; cross-field rules are named validators at the end.
"""

from __future__ import annotations

import ipaddress
import re
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

from gateway.auth.webhooks import IntegrationConfig
from gateway.config.model import (
    AdminConfig,
    AdminToken,
    AuditConfig,
    AuthConfig,
    CorsPolicy,
    GatewayConfig,
    IPNetwork,
    IssuerConfig,
    KillSwitchConfig,
    ListenConfig,
    ListenLimits,
    LoggingConfig,
    MfaConfig,
    RedactConfig,
    RouteConfig,
    StateConfig,
    TlsConfig,
    UpstreamConfig,
    UpstreamTls,
)
from gateway.config.reader import Node, Report
from gateway.ratelimit.schema import build_rate_limits, check_rate_limit_references
from gateway.redaction.processor import DEFAULT_MAX_SCAN
from gateway.tenancy.schema import build_tenancy, check_tenancy_routes, route_tenancy_fields
from gateway.tracing.schema import build_observability

LISTEN_SERVERS = ("lean", "aiohttp")
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# A route may opt in to TRACE and CONNECT (App. C); TRACK never gets past the HTTP parser.
ROUTE_METHODS = HTTP_METHODS | {"TRACE", "CONNECT"}
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}\Z")


def build_config(data: object, report: Report, source: str) -> GatewayConfig:
    root = Node(data, "", report)
    config = GatewayConfig(
        listen=_listen(root.child("listen")),
        admin=_admin(root.child("admin")),
        state=_state(root.child("state")),
        trusted_proxies=_networks(root, "trusted_proxies"),
        upstreams=MappingProxyType(_upstreams(root)),
        routes=_routes(root),
        routes_case_insensitive=root.boolean("routes_case_insensitive", False),
        cors=MappingProxyType(_cors(root)),
        logging=_logging(root.child("logging")),
        audit=_audit(root.child("audit")),
        auth=(auth := _auth(root.child("auth"))),
        mfa=_mfa(root.child("mfa")),
        killswitch=_killswitch(root.child("killswitch")),
        integrations=MappingProxyType(_integrations(root)),
        rate_limits=build_rate_limits(root.child("rate_limits"), HTTP_METHODS),
        tenancy=build_tenancy(root.child("tenancy"), tuple(i.issuer for i in auth.issuers)),
        observability=build_observability(root.child("observability")),
        source=source,
    )
    root.done()
    _check_references(config, report)
    _check_workers_and_state(config, report)
    _check_admin_issuers(config, report)
    check_rate_limit_references(config, report)
    check_tenancy_routes(config, report)
    return config


def _tls(node: Node, raw: Any, default_mode: str) -> TlsConfig:
    if raw is None:
        raw = default_mode
    if isinstance(raw, bool) and raw is False:
        raw = "off"  # YAML 1.1 reads a bare `off` as false
    if isinstance(raw, str):
        if raw not in ("off", "self-signed"):
            node.report.error(node.path, "expected 'off', 'self-signed' or a mapping with cert and key")
            return TlsConfig()
        return TlsConfig(mode=raw)  # type: ignore[arg-type]
    tls = Node(raw, node.path, node.report)
    result = TlsConfig(
        mode="files",
        cert=tls.string("cert"),
        key=tls.string("key"),
        min_version=tls.string("min_version", "1.3", choices=("1.2", "1.3")),
        ciphers=tls.string("ciphers", None),
    )
    tls.done()
    return result


def _listen(node: Node) -> ListenConfig:
    limits_node = node.child("limits")
    limits = ListenLimits(
        max_connections=limits_node.integer("max_connections", 10000, minimum=1),
        header_timeout=limits_node.duration("header_timeout", 10.0),
        keepalive_timeout=limits_node.duration("keepalive_timeout", 75.0),
        max_header_bytes=limits_node.size("max_header_bytes", 16 * 1024),
        max_headers=limits_node.integer("max_headers", 100, minimum=1, maximum=1000),
        max_header_line=limits_node.size("max_header_line", 8 * 1024),
        body_timeout=limits_node.duration("body_timeout", 30.0),
    )
    limits_node.done()
    tls_path = node.child_path("tls")
    result = ListenConfig(
        host=node.string("host", "0.0.0.0"),
        port=node.integer("port", 8443, minimum=0, maximum=65535),
        workers=node.integer("workers", 1, minimum=1, maximum=64),
        tls=_tls(Node({}, tls_path, node.report), node.raw("tls", None), "self-signed"),
        limits=limits,
        drain_timeout=node.duration("drain_timeout", 30.0),
        server=node.string("server", "lean", choices=LISTEN_SERVERS),
    )
    node.done()
    return result


def _host_port(node: Node, key: str, default: str) -> tuple[str, int]:
    text = node.string(key, default)
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not host or int(port) > 65535:
        node.report.error(node.child_path(key), "expected HOST:PORT")
        return "127.0.0.1", 9090
    return host.strip("[]"), int(port)


def _admin(node: Node) -> AdminConfig:
    host, port = _host_port(node, "listen", "127.0.0.1:9090")
    tokens: list[AdminToken] = []
    for _, raw, path in node.items("tokens"):
        token = Node(raw, path, node.report)
        name, digest = token.string("name"), token.string("sha256").lower()
        if digest and not _SHA256_RE.match(digest):
            node.report.error(f"{path}.sha256", "expected 64 lowercase hex digits (sha256 of the token)")
        token.done()
        tokens.append(AdminToken(name=name, sha256=digest))
    result = AdminConfig(
        host=host,
        port=port,
        tls=_tls(Node({}, node.child_path("tls"), node.report), node.raw("tls", None), "off"),
        jwt_issuers=node.string_list("jwt_issuers"),
        tokens=tuple(tokens),
        mfa_max_age=node.duration("mfa_max_age", 900.0),
    )
    if not 60 <= result.mfa_max_age <= 86400:
        node.report.error(node.child_path("mfa_max_age"), "must be between 1m and 24h")
    node.done()
    return result


def _state(node: Node) -> StateConfig:
    url = node.string("url", "local:./var/state")
    if url and not url.startswith(("local:", "redis://", "rediss://", "redis+sentinel://")):
        node.report.error(
            node.child_path("url"), "expected local:PATH, redis://, rediss:// or redis+sentinel://"
        )
    node.done()
    return StateConfig(url=url)


def _networks(root: Node, key: str) -> tuple[IPNetwork, ...]:
    networks: list[IPNetwork] = []
    for _, raw, path in root.items(key):
        try:
            networks.append(ipaddress.ip_network(str(raw), strict=False))
        except ValueError:
            root.report.error(path, "expected an IP address or CIDR network")
    return tuple(networks)


def _upstreams(root: Node) -> dict[str, UpstreamConfig]:
    upstreams: dict[str, UpstreamConfig] = {}
    section = root.child("upstreams")
    for name in list(section.data):
        node = section.child(name)
        urls = node.string_list("urls")
        if not urls:
            node.report.error(node.child_path("urls"), "at least one URL is required")
        for index, url in enumerate(urls):
            parts = urlsplit(url)
            try:
                port_ok = parts.port is None or parts.port > 0
            except ValueError:
                port_ok = False
            bad_shape = parts.scheme not in ("http", "https") or not parts.hostname or parts.username
            if bad_shape or not port_ok or parts.path not in ("", "/") or parts.query:
                node.report.error(
                    f"{node.child_path('urls')}[{index}]", "expected http(s)://host:port without a path"
                )
        tls_node = node.child("tls")
        tls = UpstreamTls(
            verify=tls_node.boolean("verify", True),
            ca_file=tls_node.string("ca_file", None),
            client_cert=tls_node.string("client_cert", None),
            client_key=tls_node.string("client_key", None),
        )
        if (tls.client_cert is None) != (tls.client_key is None):
            node.report.error(tls_node.path, "client_cert and client_key go together")
        tls_node.done()
        upstreams[name] = UpstreamConfig(
            name=name,
            urls=tuple(u.rstrip("/") for u in urls),
            connect_timeout=node.duration("connect_timeout", 2.0),
            read_timeout=node.duration("read_timeout", 30.0),
            max_fails=node.integer("max_fails", 3, minimum=1),
            eject_for=node.duration("eject_for", 10.0),
            pool_size=node.integer("pool_size", 100, minimum=1),
            transport=node.string("transport", "httptools", choices=("httptools", "aiohttp")),
            tls=tls,
        )
        node.done()
    section.done()
    return upstreams


def _methods(node: Node) -> frozenset[str] | None:
    if not node.has("methods"):
        node.raw("methods", None)
        return None
    methods = frozenset(m.upper() for m in node.string_list("methods"))
    unknown = sorted(methods - ROUTE_METHODS)
    if unknown:
        node.report.error(node.child_path("methods"), f"unknown method {unknown[0]}")
    return methods


def _routes(root: Node) -> tuple[RouteConfig, ...]:
    routes: list[RouteConfig] = []
    names: set[str] = set()
    prefixes: set[str] = set()
    case_insensitive = root.data.get("routes_case_insensitive") is True
    for _, raw, path in root.items("routes"):
        node = Node(raw, path, root.report)
        name = node.string("name")
        prefix = node.string("prefix")
        if name and name in names:
            node.report.error(node.child_path("name"), f"duplicate route name {name!r}")
        names.add(name)
        key = prefix.rstrip("/") or "/"
        key = key.casefold() if case_insensitive else key
        if prefix and key in prefixes:
            # One of two equal prefixes would silently shadow the other.
            node.report.error(node.child_path("prefix"), f"another route already has prefix {prefix!r}")
        prefixes.add(key)
        if prefix and (not prefix.startswith("/") or "//" in prefix or "/../" in f"{prefix}/"):
            node.report.error(node.child_path("prefix"), "expected an absolute path like /api/finance")
        routes.append(
            RouteConfig(
                name=name,
                prefix=prefix,
                upstream=node.string("upstream"),
                methods=_methods(node),
                module=node.string("module", None),
                auth=node.string("auth", "jwt", choices=("jwt", "none", "webhook")),
                integration=node.string("integration", None),
                mfa=node.boolean("mfa", True),
                mfa_max_age=node.duration("mfa_max_age", None),
                max_body=node.size("max_body", None),
                cors=node.string("cors", None),
                websocket=node.boolean("websocket", True),
                audit=node.boolean("audit", False),
                rate_limit=node.string_list("rate_limit"),
                login=node.boolean("login", False),
                **route_tenancy_fields(node),  # type: ignore[arg-type]
            )
        )
        node.done()
    return tuple(routes)


def _cors(root: Node) -> dict[str, CorsPolicy]:
    policies: dict[str, CorsPolicy] = {}
    section = root.child("cors")
    for name in list(section.data):
        node = section.child(name)
        origins = node.string_list("origins")
        if "*" in origins and node.data.get("credentials"):
            node.report.error(node.child_path("origins"), "'*' cannot be combined with credentials: true")
        policies[name] = CorsPolicy(
            name=name,
            origins=frozenset(origins),
            methods=tuple(m.upper() for m in node.string_list("methods", CorsPolicy.methods)),
            headers=node.string_list("headers", CorsPolicy.headers),
            expose_headers=node.string_list("expose_headers", ()),
            credentials=node.boolean("credentials", False),
            max_age=node.duration("max_age", 600.0),
        )
        node.done()
    section.done()
    return policies


# Appendix C: below 256 a field is cut before typical values end; above 1 MiB one field could
# again hold the event loop (redaction is linear, not free).
MAX_SCAN_MIN, MAX_SCAN_MAX = 256, 1024 * 1024


def _logging(node: Node) -> LoggingConfig:
    redact = node.child("redact")
    patterns = redact.string_list("extra_patterns")
    for index, pattern in enumerate(patterns):
        where = f"{redact.child_path('extra_patterns')}[{index}]"
        try:
            if re.compile(pattern).fullmatch(""):
                node.report.error(
                    where, "must not match the empty string (it would mask between every character)"
                )
        except re.error as exc:
            node.report.error(where, f"invalid regex: {exc.msg}")
    max_scan = redact.size("max_scan", DEFAULT_MAX_SCAN)
    if isinstance(max_scan, int) and not MAX_SCAN_MIN <= max_scan <= MAX_SCAN_MAX:
        node.report.error(
            redact.child_path("max_scan"), f"must be between {MAX_SCAN_MIN} and {MAX_SCAN_MAX} bytes"
        )
    redact_config = RedactConfig(
        extra_keys=redact.string_list("extra_keys"), extra_patterns=patterns, max_scan=max_scan
    )
    redact.done()
    result = LoggingConfig(
        level=node.string("level", "info", choices=LOG_LEVELS),
        pseudonymize=node.boolean("pseudonymize", True),
        access_log=node.boolean("access_log", True),
        redact=redact_config,
    )
    node.done()
    return result


_ALGORITHMS = ("ES256", "ES384", "ES512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "EdDSA")


def _issuer(node: Node) -> IssuerConfig:
    audience_raw = node.raw("audience")
    audience: tuple[str, ...] = ()
    if isinstance(audience_raw, str) and audience_raw:
        audience = (audience_raw,)
    elif isinstance(audience_raw, list) and audience_raw and all(isinstance(a, str) for a in audience_raw):
        audience = tuple(audience_raw)
    elif audience_raw is not None:
        node.report.error(node.child_path("audience"), "expected a string or a list of strings")
    algorithms = node.string_list("algorithms", IssuerConfig.algorithms)
    for name in algorithms:
        if name not in _ALGORITHMS:
            # SECURITY: HMAC algorithms and "none" can never verify an issuer's public-key tokens.
            node.report.error(
                node.child_path("algorithms"), f"{name} is not allowed (use {', '.join(_ALGORITHMS)})"
            )
    result = IssuerConfig(
        issuer=node.string("issuer"),
        audience=audience,
        algorithms=algorithms,
        jwks_file=node.string("jwks_file", None),
        jwks_url=node.string("jwks_url", None),
        jwks_refresh=node.duration("jwks_refresh", 600.0),
        public_key_file=node.string("public_key_file", None),
    )
    sources = [s for s in (result.jwks_file, result.jwks_url, result.public_key_file) if s]
    if len(sources) != 1:
        node.report.error(node.path, "exactly one of jwks_file, jwks_url, public_key_file is required")
    if result.jwks_url and not result.jwks_url.startswith(("https://", "http://127.", "http://localhost")):
        node.report.error(node.child_path("jwks_url"), "must be https:// (plain http only on loopback)")
    node.done()
    return result


def _auth(node: Node) -> AuthConfig:
    issuers = tuple(_issuer(Node(raw, path, node.report)) for _, raw, path in node.items("issuers"))
    result = AuthConfig(
        issuers=issuers,
        token_cookie=node.string("token_cookie", None),
        leeway=node.duration("leeway", 30.0),
        max_token_lifetime=node.duration("max_token_lifetime", 86400.0),
        roles_claim=node.string("roles_claim", "roles"),
        max_token_bytes=node.size("max_token_bytes", 8192),
    )
    if result.leeway > 300:
        node.report.error(node.child_path("leeway"), "must be at most 5m")
    node.done()
    return result


def _mfa(node: Node) -> MfaConfig:
    result = MfaConfig(
        issuer=node.string("issuer", MfaConfig.issuer),
        accepted_amr=node.string_list("accepted_amr", MfaConfig.accepted_amr),
        token_ttl=node.duration("token_ttl", 900.0),
        max_attempts=node.integer("max_attempts", 5, minimum=1, maximum=100),
        lockout=node.duration("lockout", 900.0),
    )
    node.done()
    return result


def _killswitch(node: Node) -> KillSwitchConfig:
    result = KillSwitchConfig(resync=node.duration("resync", 5.0))
    if not 0.1 <= result.resync <= 60:
        # SPEC §9: a lost pub/sub message must not delay a switch for long; too short floods the store.
        node.report.error(node.child_path("resync"), "must be between 100ms and 60s")
    node.done()
    return result


def _integrations(root: Node) -> dict[str, IntegrationConfig]:
    section = root.child("integrations")
    result: dict[str, IntegrationConfig] = {}
    for name in list(section.data):
        node = section.child(name)
        fields = {
            "scheme": node.string("scheme", choices=("woocommerce", "hmac")),
            "secret": node.string("secret"),
            "rotation_grace": node.duration("rotation_grace", 86400.0),
            "header": node.string("header", None),
            "algorithm": node.string("algorithm", "sha256", choices=("sha256", "sha512")),
            "encoding": node.string("encoding", "base64", choices=("base64", "hex")),
            "prefix": node.string("prefix", ""),
        }
        node.done()
        try:
            result[name] = IntegrationConfig(name=name, **fields)
        except (ValueError, TypeError) as exc:
            # The message names the setting, never the secret (IntegrationConfig guarantees it).
            node.report.error(
                node.path, str(exc).removeprefix(f"integrations.{name}").lstrip(".: ") or "invalid"
            )
    section.done()
    return result


def _audit(node: Node) -> AuditConfig:
    result = AuditConfig(
        retention=node.duration("retention", 400 * 86400.0),
        spool_dir=node.string("spool_dir", "./var/audit-spool"),
        anchor_every=node.duration("anchor_every", 3600.0),
        queue_size=node.integer("queue_size", 10_000, minimum=100, maximum=1_000_000),
        write_timeout=node.duration("write_timeout", 1.0),
    )
    if result.retention < 86400:
        node.report.error(node.child_path("retention"), "must be at least 1d")
    if not 1 <= result.anchor_every <= 86400:
        node.report.error(node.child_path("anchor_every"), "must be between 1s and 1d")
    if not 0.05 <= result.write_timeout <= 30:
        node.report.error(node.child_path("write_timeout"), "must be between 50ms and 30s")
    node.done()
    return result


def _check_references(config: GatewayConfig, report: Report) -> None:
    for index, route in enumerate(config.routes):
        if route.upstream and route.upstream not in config.upstreams:
            report.error(f"routes[{index}].upstream", f"no upstream named {route.upstream!r}")
        if route.auth == "webhook" and route.integration not in config.integrations:
            report.error(
                f"routes[{index}].integration", "auth: webhook needs an integration named under integrations"
            )
        if route.auth != "webhook" and route.integration is not None:
            report.error(f"routes[{index}].integration", "only routes with auth: webhook name an integration")
        if route.cors is not None and route.cors not in config.cors:
            report.error(f"routes[{index}].cors", f"no cors policy named {route.cors!r}")
        if route.name and not _NAME_RE.match(route.name):
            report.error(f"routes[{index}].name", "use letters, digits, '-', '_' or '.' (max 64)")


def _check_admin_issuers(config: GatewayConfig, report: Report) -> None:
    known = {issuer.issuer for issuer in config.auth.issuers}
    for index, issuer in enumerate(config.admin.jwt_issuers):
        if issuer not in known:
            # The keys of an admin issuer are configured once, under auth.issuers.
            report.error(f"admin.jwt_issuers[{index}]", f"{issuer!r} is not one of auth.issuers")


def _check_workers_and_state(config: GatewayConfig, report: Report) -> None:
    # SPEC §14: local state is a single-process store; several workers would each hold a copy.
    if config.listen.workers > 1 and config.state.url.startswith("local:"):
        report.error("listen.workers", "must be 1 with local: state (use a redis:// state.url)")
