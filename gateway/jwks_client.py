"""The HTTP client that downloads remote JWKS documents (SPEC §5): the edge side of
``gateway.auth.keysources.RemoteJwks``, which takes it as its ``FetchJwks`` so the auth package
imports no HTTP library. ``gateway.runtime`` hands ``fetch_jwks`` to the JWT verifiers.
"""

from __future__ import annotations

import aiohttp

from gateway.auth.keysources import FETCH_TIMEOUT, KeySourceError


def _session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=FETCH_TIMEOUT))


async def fetch_jwks(url: str, timeout: float, max_bytes: int) -> bytes:
    """GET a JWKS document (``gateway.auth.keysources.FetchJwks``): one short-lived session per
    fetch (a fetch every few minutes per issuer), never a redirect, the body bounded."""
    async with (
        _session() as session,
        session.get(
            url,
            allow_redirects=False,  # SECURITY: a redirect must not move key trust to another host
            timeout=aiohttp.ClientTimeout(total=timeout),
            headers={"Accept": "application/json"},
        ) as response,
    ):
        if response.status != 200:
            raise KeySourceError(f"HTTP status {response.status}")
        if (response.content_length or 0) > max_bytes:
            raise KeySourceError("body too large")
        body = bytearray()
        async for chunk in response.content.iter_chunked(16384):
            body += chunk
            if len(body) > max_bytes:  # counts decompressed bytes: no gzip bombs
                raise KeySourceError("body too large")
        return bytes(body)
