"""The demo ERP's identity provider: one EC P-256 key per run, ES256 tokens, a JWKS.

The gateway trusts it like any external issuer (``auth.issuers[].jwks_file``), and
``shopino-gateway token mint --key`` can sign with the same key via :meth:`write_private_pem`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from gateway.demo.identities import DemoUser

DEFAULT_ISSUER = "https://id.demo.shopino.example"
DEFAULT_AUDIENCE = "shopino-erp"
ALGORITHM = "ES256"


def jwk_thumbprint(jwk: Mapping[str, Any]) -> str:
    """RFC 7638 thumbprint of an EC public JWK: a ``kid`` that is stable for the key itself, so
    two issuers (or two runs loading the same PEM) never disagree about which key is which."""
    required = {name: jwk[name] for name in ("crv", "kty", "x", "y")}
    canonical = json.dumps(required, sort_keys=True, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(hashlib.sha256(canonical).digest()).rstrip(b"=").decode()


class DemoIssuer:
    """Signs demo tokens. The private key never leaves the object except via
    :meth:`write_private_pem`; ``repr`` shows only public facts."""

    def __init__(
        self, *, issuer: str = DEFAULT_ISSUER, audience: str = DEFAULT_AUDIENCE,
        kid: str | None = None, private_key: ec.EllipticCurvePrivateKey | None = None,
        tenant_claim: str = "tid", clock: Callable[[], float] = time.time,
    ) -> None:
        self._key = private_key or ec.generate_private_key(ec.SECP256R1())
        if not isinstance(self._key.curve, ec.SECP256R1):
            raise ValueError("DemoIssuer signs ES256 and needs a P-256 key")
        self.issuer = issuer
        self.audience = audience
        self.tenant_claim = tenant_claim
        self._clock = clock
        self._public_jwk = dict(ECAlgorithm.to_jwk(self._key.public_key(), as_dict=True))
        self.kid = kid or jwk_thumbprint(self._public_jwk)

    @classmethod
    def from_pem_file(cls, path: str | os.PathLike[str], **kwargs: Any) -> DemoIssuer:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{path}: not an EC private key")
        return cls(private_key=key, **kwargs)

    def __repr__(self) -> str:
        return f"DemoIssuer(issuer={self.issuer!r}, audience={self.audience!r}, kid={self.kid!r})"

    @property
    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self._key.public_key()

    def mint(
        self, user: DemoUser, *, amr: Iterable[str] = ("pwd",), ttl: int = 900,
        auth_time: int | None = None, extra_claims: Mapping[str, Any] | None = None,
    ) -> str:
        """An ES256 token for ``user`` (first-factor by default: ``amr`` = ``["pwd"]``)."""
        if ttl <= 0:
            raise ValueError("ttl must be positive")
        now = int(self._clock())
        claims: dict[str, Any] = {
            "iss": self.issuer, "aud": self.audience, "sub": user.sub,
            self.tenant_claim: user.tenant, "roles": list(user.roles), "amr": list(amr),
            "auth_time": now if auth_time is None else auth_time,
            "iat": now, "exp": now + ttl, "jti": uuid.uuid4().hex,
        }
        claims.update(extra_claims or {})
        return jwt.encode(claims, self._key, algorithm=ALGORITHM, headers={"kid": self.kid})

    def jwks(self) -> dict[str, list[dict[str, Any]]]:
        """The public JWK set (RFC 7517) a verifier needs: one key, with ``kid``/``alg``/``use``
        so verifiers can pick it without guessing."""
        key = {**self._public_jwk, "kid": self.kid, "alg": ALGORITHM, "use": "sig"}
        return {"keys": [key]}

    def write_jwks(self, path: str | os.PathLike[str]) -> Path:
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(self.jwks(), indent=2) + "\n", encoding="utf-8")
        return target

    def private_pem(self) -> bytes:
        return self._key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def write_private_pem(self, path: str | os.PathLike[str]) -> Path:
        """Write the signing key as unencrypted PKCS#8 PEM, readable by the owner only.

        The file is created 0600 (no window in which it is world-readable), and an existing
        file is chmod-ed back to 0600, since ``O_CREAT``'s mode only applies to new files."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "wb") as handle:
                fd = -1  # now owned (and closed) by the file object
                handle.write(self.private_pem())
        finally:
            if fd >= 0:
                os.close(fd)
        return target
