"""``token mint``: signed test tokens for demos, tests and benchmarks (pyjwt)."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from gateway.config.values import parse_duration


class MintError(Exception):
    pass


def _algorithm_for(key: object) -> str:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}[key.curve.name]
    if isinstance(key, rsa.RSAPrivateKey):
        return "RS256"
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return "EdDSA"
    raise MintError("unsupported key type (use EC P-256/384/521, RSA or Ed25519)")


def _claim_value(text: str) -> Any:
    import json

    try:
        return json.loads(text)
    except ValueError:
        return text


def mint_token(
    *,
    key_file: str,
    kid: str | None,
    issuer: str,
    audience: str,
    subject: str,
    tenant: str,
    roles: str,
    amr: str,
    auth_time: str,
    ttl: str,
    extra_claims: list[str],
    tenant_claim: str = "tid",
) -> str:
    try:
        key = serialization.load_pem_private_key(Path(key_file).read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise MintError(f"cannot read a private key from {key_file}") from exc
    try:
        lifetime = parse_duration(ttl)
    except ValueError as exc:
        raise MintError(f"--ttl: {exc}") from None
    now = int(time.time())
    if auth_time == "now":
        authenticated_at = now
    elif auth_time.isdigit():
        authenticated_at = int(auth_time)
    else:
        raise MintError("--auth-time: expected 'now' or Unix seconds")
    claims: dict[str, Any] = {
        "iss": issuer,
        "aud": audience,
        "sub": subject,
        tenant_claim: tenant,
        "roles": [r for r in roles.split(",") if r],
        "amr": [a for a in amr.split(",") if a],
        "auth_time": authenticated_at,
        "iat": now,
        "exp": now + int(lifetime),
        "jti": uuid.uuid4().hex,
    }
    for item in extra_claims:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise MintError(f"--claim: expected K=V, got {name or '(empty)'}")
        claims[name] = _claim_value(value)
    headers = {"kid": kid} if kid else None
    return jwt.encode(claims, key, algorithm=_algorithm_for(key), headers=headers)  # type: ignore[arg-type]
