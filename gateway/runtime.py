"""The immutable ``Runtime`` built from one config; a reload builds a new one and swaps it.

In-flight requests keep the runtime they started with (they hold a reference in their
context), so a reload never changes the rules under a request's feet.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING

from gateway import __version__
from gateway.audit import AuditTrail
from gateway.auth.jwt import JwtVerifier
from gateway.auth.mfa import MfaService
from gateway.auth.mfa_freeze import MfaEnrolmentFreeze
from gateway.auth.revocation import RevocationEpochs
from gateway.auth.signing import SigningKeys
from gateway.auth.webhooks import IntegrationSecrets
from gateway.config.errors import ConfigError
from gateway.config.model import IssuerConfig
from gateway.config_model import GatewayConfig
from gateway.crypto import Keyring
from gateway.jwks_client import fetch_jwks
from gateway.killswitch import KillSwitchRegistry
from gateway.logs.access_log import AccessLogWriter
from gateway.redaction.processor import Redactor
from gateway.routing import RouteTable
from gateway.state import StateStore
from gateway.state.bounded import BoundedStore
from gateway.state.generation import StoreGeneration
from gateway.tenancy.grants import SupportGrants
from gateway.tenancy.keys import ContextKeys
from gateway.tenancy.resolve import TenantTemplate, compile_templates
from gateway.upstream.forwarding import TrustedProxies, never_forwarded_names
from gateway.upstream.pools import UpstreamRegistry, UpstreamTransport

if TYPE_CHECKING:  # imported lazily: the limiter loads prometheus_client, which must wait for
    # prepare_metrics_dir() when `run` starts several workers (gateway.server.workers)
    from gateway.ratelimit.limiter import RateLimitBackend
    from gateway.ratelimit.lockout_memory import LockoutMemory
    from gateway.ratelimit.service import RateLimitRuntime
    from gateway.tracing.export import SpanRecorder


@dataclass
class GatewayStatus:
    """Process-wide facts that outlive any one runtime (readiness, store health)."""

    instance_id: str
    store_description: str
    snapshot_loaded: bool = False
    store_healthy: bool = False
    store_checked_at: float = 0.0
    store_restoring: bool = False  # App. C: a store reset noticed, the write-back not done yet
    reloads: int = 0
    last_reload_error: str | None = None
    started_at: float = field(default_factory=time.time)


@dataclass(frozen=True)
class ProcessServices:
    """Built once per process; every runtime shares them."""

    store: StateStore
    audit: AuditTrail
    keyring: Keyring
    signing: SigningKeys
    revocations: RevocationEpochs
    integrations: IntegrationSecrets
    killswitches: KillSwitchRegistry
    ratelimit: RateLimitBackend  # storages and breaker shared by every runtime (SPEC §8)
    grants: SupportGrants
    context_keys: ContextKeys  # SPEC §7: read once per process, never per request
    pseudonym_key: bytes = field(repr=False)  # access-log user pseudonyms (SPEC §11)
    generation: StoreGeneration | None = None  # App. C: tells a reset store from an intact one
    lockout_memory: LockoutMemory | None = None  # lockouts seen, kept across reloads
    mfa_freeze: MfaEnrolmentFreeze | None = None  # enrolment frozen after a store reset


@dataclass(frozen=True)
class RuntimeServices:
    """Process services plus those that depend on the config (rebuilt on reload)."""

    audit: AuditTrail
    signing: SigningKeys
    revocations: RevocationEpochs
    integrations: IntegrationSecrets
    mfa: MfaService
    killswitches: KillSwitchRegistry
    grants: SupportGrants
    context_keys: ContextKeys


@dataclass(frozen=True)
class Runtime:
    config: GatewayConfig
    generation: int
    routes: RouteTable
    upstreams: Mapping[str, UpstreamTransport]
    trusted_proxies: TrustedProxies
    admin_tokens: Mapping[str, str]  # sha256 hex → token name
    status: GatewayStatus
    tls: bool
    scheme: str
    access_log: AccessLogWriter
    verifier: JwtVerifier
    services: RuntimeServices
    admin_verifier: JwtVerifier | None
    rate_limits: RateLimitRuntime  # compiled policies + lockouts for this config
    strip_headers: frozenset[str]  # SPEC §7: lower-case client headers never forwarded
    # strip_headers with hop-by-hop, override and the gateway's own names (Host, Expect, trace):
    # every lower-case request header name the proxy drops, built once here, not per request.
    never_forwarded: frozenset[str]
    tenant_templates: Mapping[str, TenantTemplate]  # route name → compiled tenant_from
    spans: SpanRecorder | None = None  # App. C: OTLP span export (observability.otlp_endpoint)


def build_runtime(
    config: GatewayConfig,
    *,
    registry: UpstreamRegistry,
    status: GatewayStatus,
    generation: int,
    process: ProcessServices,
    verifier: JwtVerifier,
) -> Runtime:
    tls = config.listen.tls.mode != "off"
    strip_headers = config.tenancy.strip_set()
    return Runtime(
        config=config,
        generation=generation,
        routes=RouteTable(config.routes, case_insensitive=config.routes_case_insensitive),
        upstreams=MappingProxyType(dict(registry.pools_for(config.upstreams))),
        trusted_proxies=TrustedProxies(config.trusted_proxies),
        admin_tokens=MappingProxyType({t.sha256: t.name for t in config.admin.tokens}),
        status=status,
        tls=tls,
        scheme="https" if tls else "http",
        access_log=AccessLogWriter(
            Redactor.from_config(config.logging.redact),
            enabled=config.logging.access_log,
            pseudonymize=config.logging.pseudonymize,
            pseudonym_key=process.pseudonym_key,
        ),
        verifier=verifier,
        admin_verifier=build_admin_verifier(config),
        strip_headers=strip_headers,
        never_forwarded=never_forwarded_names(strip_headers),
        tenant_templates=compile_templates(
            ((r.name, r.tenant_from) for r in config.routes), case_insensitive=config.routes_case_insensitive
        ),
        rate_limits=_rate_limits(config, process),
        spans=_span_recorder(config, status, tls),
        services=RuntimeServices(
            audit=process.audit,
            signing=process.signing,
            revocations=process.revocations,
            integrations=process.integrations,
            # Issue 15: the MFA step is request-path work, so its store calls are bounded.
            mfa=MfaService(
                _request_store(process.store, config),
                process.keyring,
                config.mfa,
                freeze=process.mfa_freeze,
                store_timeout=config.rate_limits.store_timeout,  # the freeze check is request path
            ),
            killswitches=process.killswitches,
            grants=process.grants,
            context_keys=process.context_keys,
        ),
    )


def _span_recorder(config: GatewayConfig, status: GatewayStatus, tls: bool) -> SpanRecorder | None:
    """None unless ``observability.otlp_endpoint`` is set: opentelemetry is imported only then
    (not a circle: it costs every worker ≈0.2 s of start-up and its memory when tracing is off)."""
    endpoint = config.observability.otlp_endpoint
    if endpoint is None:
        return None
    from gateway.tracing.export import SpanRecorder

    return SpanRecorder(
        endpoint,
        redactor=Redactor.from_config(config.logging.redact),
        pseudonymize=config.logging.pseudonymize,
        scheme="https" if tls else "http",
        server_port=config.listen.port,
        instance=status.instance_id,
        version=__version__,
    )


def _request_store(store: StateStore, config: GatewayConfig) -> StateStore:
    """The store as a request may use it: each call bounded by ``rate_limits.store_timeout``."""
    timeout = config.rate_limits.store_timeout
    return BoundedStore(store, lambda: timeout)


def build_admin_verifier(config: GatewayConfig) -> JwtVerifier | None:
    """Only the issuers named in ``admin.jwt_issuers`` (SPEC §12); None when there are none."""
    issuers = tuple(i for i in config.auth.issuers if i.issuer in config.admin.jwt_issuers)
    if not issuers:
        return None
    try:
        return JwtVerifier(
            dataclasses.replace(config.auth, issuers=issuers),
            tenant_claim=config.tenancy.claim,
            fetch_jwks=fetch_jwks,
        )
    except ValueError as exc:
        raise ConfigError([f"admin.jwt_issuers: {exc}"]) from None


def build_verifier(config: GatewayConfig, signing: SigningKeys | None) -> JwtVerifier:
    """Configured issuers plus the gateway's own MFA issuer, which is always trusted (SPEC §5).

    The gateway's tokens copy ``aud`` from the first-factor token, so its issuer accepts every
    audience a configured issuer accepts."""
    audiences = tuple(dict.fromkeys(a for issuer in config.auth.issuers for a in issuer.audience))
    own = IssuerConfig(
        issuer=config.mfa.issuer, audience=audiences or ("shopino-erp",), algorithms=("ES256",)
    )
    extra = [(own, signing)] if signing is not None else []
    try:
        return JwtVerifier(
            config.auth, tenant_claim=config.tenancy.claim, extra_issuers=extra, fetch_jwks=fetch_jwks
        )
    except ValueError as exc:  # KeySourceError included: unreadable or invalid key files
        raise ConfigError([f"auth.issuers: {exc}"]) from None


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _rate_limits(config: GatewayConfig, process: ProcessServices) -> RateLimitRuntime:
    # Not a circle: ``run`` imports this module (build_verifier) before prepare_metrics_dir(),
    # and the limiter imports prometheus_client, which must come after it (see TYPE_CHECKING).
    from gateway.ratelimit.service import build_rate_limit_runtime

    return build_rate_limit_runtime(
        config,
        process.ratelimit,
        process.store,
        process.audit,
        memory=process.lockout_memory,
        generation=process.generation,
    )
