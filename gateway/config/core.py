"""Builders of the sections every gateway has, whatever features it runs: ``listen``, ``admin``,
``state``, ``trusted_proxies`` and ``cors`` (called by ``gateway.config_schema``)."""

from __future__ import annotations

import ipaddress
import re
from typing import Any

from gateway.config.model import (
    AdminConfig,
    AdminToken,
    CorsPolicy,
    IPNetwork,
    ListenConfig,
    ListenLimits,
    StateConfig,
    TlsConfig,
)
from gateway.config.reader import Node

LISTEN_SERVERS = ("lean", "aiohttp")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}\Z")


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


def build_listen(node: Node) -> ListenConfig:
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


def build_admin(node: Node) -> AdminConfig:
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


def build_state(node: Node) -> StateConfig:
    url = node.string("url", "local:./var/state")
    if url and not url.startswith(("local:", "redis://", "rediss://", "redis+sentinel://")):
        node.report.error(
            node.child_path("url"), "expected local:PATH, redis://, rediss:// or redis+sentinel://"
        )
    node.done()
    return StateConfig(url=url)


def build_networks(root: Node, key: str) -> tuple[IPNetwork, ...]:
    networks: list[IPNetwork] = []
    for _, raw, path in root.items(key):
        try:
            networks.append(ipaddress.ip_network(str(raw), strict=False))
        except ValueError:
            root.report.error(path, "expected an IP address or CIDR network")
    return tuple(networks)


def build_cors(root: Node) -> dict[str, CorsPolicy]:
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
