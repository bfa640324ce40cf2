"""The ``auth``, ``mfa`` and ``integrations`` section builders (called by
``gateway.config_schema``): who may sign tokens, the second factor, and webhook senders."""

from __future__ import annotations

from gateway.auth.webhooks import IntegrationConfig
from gateway.config.model import AuthConfig, IssuerConfig, MfaConfig
from gateway.config.reader import Node

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


def build_auth(node: Node) -> AuthConfig:
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


def build_mfa(node: Node) -> MfaConfig:
    result = MfaConfig(
        issuer=node.string("issuer", MfaConfig.issuer),
        accepted_amr=node.string_list("accepted_amr", MfaConfig.accepted_amr),
        token_ttl=node.duration("token_ttl", 900.0),
        max_attempts=node.integer("max_attempts", 5, minimum=1, maximum=100),
        lockout=node.duration("lockout", 900.0),
    )
    node.done()
    return result


def build_integrations(root: Node) -> dict[str, IntegrationConfig]:
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
