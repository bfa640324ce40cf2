"""Audit anchors through the real gateway, Redis and CLI (SPEC App. C, issue 15 item 3).

Someone with write access to Redis edits one record and recomputes every later hash, so the hash
chain alone is whole again; `audit verify` must still exit 4 and name the edited record. A trail
cut short (the seq counter lowered too) is caught by the instance's own last anchor. A signed
export verifies offline with the JWKS from `audit jwks`, and a rechained export does not.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import redis

from gateway.audit.record import compute_hash
from tests.support.gateway_proc import ADMIN_TOKEN, GatewayProc
from tests.support.upstream import Upstream

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def config(upstream: Upstream, redis_url: str, tmp_path: Path) -> dict[str, Any]:
    return {
        "state": {"url": redis_url},
        "audit": {"spool_dir": str(tmp_path / "spool"), "anchor_every": "1s"},
        "upstreams": {"app": {"urls": [upstream.url]}},
        "routes": [{"name": "open", "prefix": "/", "upstream": "app", "auth": "none"}],
    }


def stream(client: redis.Redis, tenant: str) -> list[dict[str, Any]]:
    return [json.loads(fields[b"r"]) for _, fields in client.xrange(f"sgw:log:audit:{tenant}")]


def rewrite(client: redis.Redis, tenant: str, records: list[dict[str, Any]]) -> None:
    key = f"sgw:log:audit:{tenant}"
    with client.pipeline(transaction=True) as pipe:
        pipe.delete(key)
        for rec in records:
            pipe.xadd(key, {"r": json.dumps(rec, ensure_ascii=False)}, id=f"{rec['seq']}-0")
        pipe.execute()


def rechain(records: list[dict[str, Any]], seq: int, **change: Any) -> list[dict[str, Any]]:
    """Edit record ``seq`` and recompute every hash from it on: the hash chain stays whole."""
    out, prev = [], None
    for rec in (dict(r) for r in records):
        if rec["seq"] == seq:
            rec.update(change)
        if rec["seq"] >= seq:
            rec["prev_hash"] = prev
            rec["hash"] = compute_hash(rec)
        prev = rec["hash"]
        out.append(rec)
    return out


def wait_for_anchor_head(client: redis.Redis, tenant: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        records = stream(client, tenant)
        if records and records[-1]["event"] == "audit.anchor":
            return
        time.sleep(0.1)
    raise AssertionError(f"no anchor was written on {tenant}'s head within {timeout}s")


async def test_anchors_catch_a_rewritten_or_truncated_trail_and_sign_exports(
    gateway_factory, upstream: Upstream, redis_url: str, tmp_path: Path
) -> None:
    gw: GatewayProc = gateway_factory(config(upstream, redis_url, tmp_path))
    client = redis.Redis.from_url(redis_url)
    async with aiohttp.ClientSession() as http:
        for _ in range(4):
            async with http.post(f"{gw.admin_url}/admin/reload", headers=AUTH) as r:
                assert r.status == 200
        for user in ("u1", "u2", "u3", "u4"):
            body = {"tenant": "acme", "user": user}
            async with http.post(f"{gw.admin_url}/admin/sessions/revoke", headers=AUTH, json=body) as r:
                assert r.status == 200
    # The periodic anchor (audit.anchor_every: 1s) signs both heads without any export.
    wait_for_anchor_head(client, "_system")
    wait_for_anchor_head(client, "acme")
    intact = gw.cli("audit", "verify", "--tenant", "_system")
    assert intact.returncode == 0 and "anchors verified" in intact.stdout, intact.stdout + intact.stderr

    # A signed export verifies offline with the gateway's anchor JWKS.
    export, jwks = tmp_path / "system.json", tmp_path / "jwks.json"
    assert gw.cli("audit", "export", "--tenant", "_system", "-o", str(export)).returncode == 0
    assert gw.cli("audit", "jwks", "-o", str(jwks)).returncode == 0
    # The same keys are public on the gateway's listener, for tenant admins checking exports.
    async with aiohttp.ClientSession() as http, http.get(f"{gw.url}/_gateway/audit/jwks") as r:
        assert r.status == 200 and await r.json() == json.loads(jwks.read_text())
    exported = json.loads(export.read_text())
    assert exported[-1]["event"] == "audit.anchor"  # signed on export, up to the export record
    assert exported[-2]["event"] == "audit.exported"
    offline = gw.cli("audit", "verify", "--file", str(export), "--jwks", str(jwks), "--json")
    assert offline.returncode == 0, offline.stdout + offline.stderr
    report = json.loads(offline.stdout)
    assert report["ok"] and report["anchors"] >= 2 and report["signed_through"] == len(exported) - 1

    # Offline attack: the export edited and rechained. The hash chain alone is fooled, not the JWKS.
    forged = tmp_path / "forged.json"
    # A reload record (the periodic anchor may have landed anywhere between the reloads).
    edited = next(r["seq"] for r in exported if r["event"] == "config.reloaded" and r["seq"] > 1)
    forged.write_text(json.dumps(rechain(exported, edited, actor="someone-else")))
    assert gw.cli("audit", "verify", "--file", str(forged)).returncode == 0
    caught = gw.cli("audit", "verify", "--file", str(forged), "--jwks", str(jwks), "--json")
    assert caught.returncode == 4 and json.loads(caught.stdout)["first_bad_seq"] == edited, caught.stdout

    # Online attack: one record edited in Redis, every later hash recomputed.
    records = stream(client, "_system")
    edited = [r["seq"] for r in records if r["event"] == "config.reloaded"][-1]
    rewrite(client, "_system", rechain(records, edited, actor="someone-else"))
    broken = gw.cli("audit", "verify", "--tenant", "_system")
    assert broken.returncode == 4, broken.stdout + broken.stderr
    assert broken.stdout.startswith(f"BROKEN: record {edited}: rewritten"), broken.stdout

    # Truncation: acme's newest records removed and the seq counter lowered to match, so the
    # store itself shows no gap; this instance's last anchor does.
    acme = stream(client, "acme")
    kept = acme[:-2]
    rewrite(client, "acme", kept)
    client.set("sgw:logseq:audit:acme", kept[-1]["seq"])
    cut = gw.cli("audit", "verify", "--tenant", "acme", "--json")
    assert cut.returncode == 4, cut.stdout + cut.stderr
    assert "(truncated)" in json.loads(cut.stdout)["problem"]
    client.close()
