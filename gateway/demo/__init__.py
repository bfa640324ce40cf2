"""The demo world ``shopino-gateway demo`` (and the test suite) runs the gateway against.

* :mod:`gateway.demo.identities` — demo tenants and users (scrypt password hashes, TOTP secrets);
* :mod:`gateway.demo.issuer` — the ERP's own identity provider: an ES256 key, JWKS, token minting;
* :mod:`gateway.demo.backend` — an in-memory, tenant-aware ERP plus debug endpoints for proxy tests.

Nothing here is production code: passwords are published, keys live for one run.
"""
