"""The frozen, typed configuration objects of each section, built once by the section builders
(``gateway.config.core``, ``gateway.config.routes`` and each feature's ``schema.py``).

This module is the floor: it imports no feature package (features import it). The whole
config, which holds the features' own section types too, is ``gateway.config_model``.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Literal

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
TlsMode = Literal["off", "self-signed", "files"]
AuthMode = Literal["jwt", "none", "webhook"]
# App. C bounded redaction: characters of one log field scanned and kept. Set here, below the
# redaction processor that uses it as its default, so the floor imports nothing from features.
DEFAULT_MAX_SCAN = 2048  # logging.redact.max_scan


@dataclass(frozen=True)
class TlsConfig:
    mode: TlsMode = "off"
    cert: str | None = None
    key: str | None = None
    min_version: str = "1.3"
    ciphers: str | None = None


@dataclass(frozen=True)
class ListenLimits:
    max_connections: int = 10000
    header_timeout: float = 10.0
    keepalive_timeout: float = 75.0
    max_header_bytes: int = 16 * 1024
    max_headers: int = 100
    max_header_line: int = 8 * 1024
    body_timeout: float = 30.0


@dataclass(frozen=True)
class ListenConfig:
    host: str = "0.0.0.0"
    port: int = 8443
    workers: int = 1
    tls: TlsConfig = field(default_factory=lambda: TlsConfig(mode="self-signed"))
    limits: ListenLimits = field(default_factory=ListenLimits)
    drain_timeout: float = 30.0
    server: str = "lean"  # the public listener's HTTP/1.1 server: "lean" (httptools) or "aiohttp"


@dataclass(frozen=True)
class AdminToken:
    name: str
    sha256: str = field(repr=False)


@dataclass(frozen=True)
class AdminConfig:
    host: str = "127.0.0.1"
    port: int = 9090
    tls: TlsConfig = field(default_factory=TlsConfig)
    jwt_issuers: tuple[str, ...] = ()
    tokens: tuple[AdminToken, ...] = ()
    mfa_max_age: float = 900.0  # step-up: admin JWTs change things only with MFA this recent


@dataclass(frozen=True)
class StateConfig:
    url: str = field(default="local:./var/state", repr=False)


@dataclass(frozen=True)
class UpstreamTls:
    verify: bool = True
    ca_file: str | None = None
    client_cert: str | None = None
    client_key: str | None = None


@dataclass(frozen=True)
class UpstreamConfig:
    name: str
    urls: tuple[str, ...]
    connect_timeout: float = 2.0
    read_timeout: float = 30.0
    max_fails: int = 3
    eject_for: float = 10.0
    pool_size: int = 100
    transport: str = "httptools"
    tls: UpstreamTls = field(default_factory=UpstreamTls)


@dataclass(frozen=True)
class RouteConfig:
    name: str
    prefix: str
    upstream: str
    methods: frozenset[str] | None = None
    module: str | None = None
    auth: AuthMode = "jwt"
    mfa: bool = True
    mfa_max_age: float | None = None
    max_body: int | None = None
    cors: str | None = None
    websocket: bool = True
    integration: str | None = None
    audit: bool = False  # every request is filed in the tenant's audit trail (72-hour account)
    rate_limit: tuple[str, ...] = ()  # names of rate_limits.policies (SPEC §8)
    login: bool = False  # upstream 401/403 count as login failures (SPEC §8 lockouts)
    roles: tuple[str, ...] = ()  # any-of against the token's roles (SPEC §7); () = no role needed
    tenant_from: str | None = None  # "path:/t/{tenant}/" or "host:{tenant}.erp.example.com"
    require_tenant_echo: bool = False  # the upstream must answer with X-Tenant-ID = acting tenant


@dataclass(frozen=True)
class CorsPolicy:
    name: str
    origins: frozenset[str]
    methods: tuple[str, ...] = ("GET", "POST", "PUT", "PATCH", "DELETE")
    headers: tuple[str, ...] = ("Authorization", "Content-Type")
    expose_headers: tuple[str, ...] = ()
    credentials: bool = False
    max_age: float = 600.0


@dataclass(frozen=True)
class RedactConfig:
    extra_keys: tuple[str, ...] = ()
    extra_patterns: tuple[str, ...] = ()
    max_scan: int = DEFAULT_MAX_SCAN  # characters of one field scanned and kept (App. C bounded redaction)


@dataclass(frozen=True)
class LoggingConfig:
    level: str = "info"
    pseudonymize: bool = True
    access_log: bool = True
    redact: RedactConfig = field(default_factory=RedactConfig)


@dataclass(frozen=True)
class IssuerConfig:
    """One trusted token issuer (SPEC §5). Exactly one key source is set."""

    issuer: str
    audience: tuple[str, ...]
    algorithms: tuple[str, ...] = ("ES256", "RS256", "EdDSA")
    jwks_file: str | None = None
    jwks_url: str | None = None
    jwks_refresh: float = 600.0
    public_key_file: str | None = None


@dataclass(frozen=True)
class AuthConfig:
    issuers: tuple[IssuerConfig, ...] = ()
    token_cookie: str | None = None
    leeway: float = 30.0
    max_token_lifetime: float = 86400.0
    roles_claim: str = "roles"
    max_token_bytes: int = 8192


@dataclass(frozen=True)
class MfaConfig:
    issuer: str = "https://gateway.shopino.example"
    accepted_amr: tuple[str, ...] = ("otp", "mfa", "hwk")
    token_ttl: float = 900.0
    max_attempts: int = 5
    lockout: float = 900.0


@dataclass(frozen=True)
class KillSwitchConfig:
    resync: float = 5.0  # SPEC §9: full reload period, in case a pub/sub message was lost


@dataclass(frozen=True)
class AuditConfig:
    retention: float = 400 * 86400.0
    spool_dir: str = "./var/audit-spool"
    anchor_every: float = 3600.0  # App. C: each trail's head is signed at least this often
    queue_size: int = 10_000  # records queued in memory before they are spilled to the spool
    write_timeout: float = 1.0  # an audit append slower than this spills to the spool (store sick)
