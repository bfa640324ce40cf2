"""The gateway's TOTP step driven as a client would: enroll, activate, verify with a recovery code."""

from __future__ import annotations

import aiohttp
import pyotp


async def gateway_mfa_token(http: aiohttp.ClientSession, base_url: str, first_factor_token: str) -> str:
    first = {"Authorization": f"Bearer {first_factor_token}"}
    async with http.post(f"{base_url}/_gateway/mfa/enroll", headers=first) as r:
        secret = (await r.json())["secret"]
    async with http.post(
        f"{base_url}/_gateway/mfa/activate", headers=first, json={"code": pyotp.TOTP(secret).now()}
    ) as r:
        recovery = (await r.json())["recovery_codes"]
    async with http.post(
        f"{base_url}/_gateway/mfa/verify", headers=first, json={"recovery_code": recovery[0]}
    ) as r:
        return str((await r.json())["access_token"])
