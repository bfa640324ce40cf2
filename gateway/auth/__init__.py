"""Authentication: JWT verification, the gateway's MFA step, signing keys."""
