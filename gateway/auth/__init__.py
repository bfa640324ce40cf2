"""Authentication: JWT verification, the gateway's MFA step, signing keys."""

from gateway.auth.jwt import REASONS, JwtVerifier, TokenRejected, VerifiedClaims, has_mfa, mfa_fresh
from gateway.auth.keysources import KeySource, KeySourceError, RemoteJwks, StaticKeys

__all__ = [
    "REASONS",
    "JwtVerifier",
    "KeySource",
    "KeySourceError",
    "RemoteJwks",
    "StaticKeys",
    "TokenRejected",
    "VerifiedClaims",
    "has_mfa",
    "mfa_fresh",
]
