#!/usr/bin/env python3
"""In-process cost of one JwtVerifier.verify(): cache hit (the same token again) and cache miss
(a fresh token each time: full parse, header checks and ES256 signature verification); and of
the request path's check of a cached token, ``verify_cached`` with the connection's
``TokenMemo`` (each request brings its own copy of the token string, as a parsed header does).

Uses the same key, JWKS and claims as run_proxy_bench.py's gateway-jwt contestant.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

from bench_contestants import JWT_AUD, JWT_ISS, jwks_for, mint_gateway_token
from cryptography.hazmat.primitives.asymmetric import ec

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the project, for `gateway`

from gateway.auth.jwt import JwtVerifier, TokenMemo
from gateway.config.model import AuthConfig, IssuerConfig


async def run(hits: int, misses: int, rounds: int) -> tuple[float, float, float]:
    key = ec.generate_private_key(ec.SECP256R1())
    with tempfile.TemporaryDirectory(prefix="jwt-cost-") as tmp:
        jwks_file = Path(tmp) / "jwks.json"
        jwks_file.write_text(json.dumps(jwks_for(key.public_key())))
        issuer = IssuerConfig(issuer=JWT_ISS, audience=(JWT_AUD,), jwks_file=str(jwks_file))
        # cache_size above the miss count, so the misses never evict each other mid-run
        verifier = JwtVerifier(
            AuthConfig(issuers=(issuer,), max_token_lifetime=86400.0), cache_size=misses * rounds + 10
        )
    now = int(time.time())
    token = mint_gateway_token(key, now)
    claims = await verifier.verify(token)  # also warms the cache for the hits
    assert claims.amr == ("pwd", "otp") and claims.tenant == "bench"
    fresh = [mint_gateway_token(key, now, jti=f"bench-{i}") for i in range(misses * rounds)]

    # Equal strings, distinct objects: what the header parser hands over on each request.
    copies = [token[:-1] + token[-1] for _ in range(1000)]
    memo = TokenMemo()
    best_hit = best_miss = best_path = float("inf")
    for r in range(rounds):
        start = time.perf_counter()
        for n in range(hits):
            verifier.verify_cached(copies[n % 1000], memo)
        best_path = min(best_path, (time.perf_counter() - start) / hits)
        start = time.perf_counter()
        for _ in range(hits):
            await verifier.verify(token)
        best_hit = min(best_hit, (time.perf_counter() - start) / hits)
        batch = fresh[r * misses : (r + 1) * misses]
        start = time.perf_counter()
        for distinct in batch:
            await verifier.verify(distinct)
        best_miss = min(best_miss, (time.perf_counter() - start) / misses)
    return best_hit * 1e6, best_miss * 1e6, best_path * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--hits", type=int, default=100_000, help="verifies of one token per round")
    parser.add_argument("--misses", type=int, default=2000, help="distinct tokens per round")
    parser.add_argument("--rounds", type=int, default=3, help="best of N rounds (default 3)")
    args = parser.parse_args()
    hit_us, miss_us, path_us = asyncio.run(run(args.hits, args.misses, args.rounds))
    print(f"JwtVerifier.verify, best of {args.rounds} rounds ({sys.executable}):")
    print(f"  cache hit  (same token x {args.hits}):      {hit_us:8.2f} µs/verify")
    print(f"  cache miss (distinct tokens x {args.misses}): {miss_us:8.2f} µs/verify")
    print(f"request path, cached token (verify_cached + connection memo): {path_us:8.2f} µs/check")
    return 0


if __name__ == "__main__":
    sys.exit(main())
