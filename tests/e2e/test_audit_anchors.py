"""Audit anchors through the real gateway, Redis and CLI (SPEC App. C, issue 15 item 3).

Someone with write access to Redis edits one record and recomputes every later hash, so the hash
chain alone is whole again; `audit verify` must still exit 4 and name the edited record. A trail
cut short (the seq counter lowered too) is caught by the instance's own last anchor. A signed
export verifies offline with the JWKS from `audit jwks`, and a rechained export does not.
"""

from __future__ import annotations

import json
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import redis

from gateway.audit.record import GENESIS_HASH, compute_hash
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

    # An export cut by --until still ends signed: it runs on to the next anchor.
    cut = tmp_path / "cut.json"
    first_reload = next(r for r in exported if r["event"] == "config.reloaded")
    until = ["--until", first_reload["time"]]
    assert gw.cli("audit", "export", "--tenant", "_system", *until, "-o", str(cut)).returncode == 0
    cut_records = json.loads(cut.read_text())
    assert cut_records[-1]["event"] == "audit.anchor" and len(cut_records) <= len(exported)
    assert gw.cli("audit", "verify", "--file", str(cut), "--jwks", str(jwks)).returncode == 0
    # The export anchor dropped: what is left after the last anchor is not signed.
    unsigned = tmp_path / "unsigned.json"
    unsigned.write_text(json.dumps(exported[:-1]))
    dropped = gw.cli("audit", "verify", "--file", str(unsigned), "--jwks", str(jwks), "--json")
    assert dropped.returncode == 4 and "signed by no anchor" in json.loads(dropped.stdout)["problem"]

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


def strip_anchors_and_rewrite(client: redis.Redis, tenant: str) -> list[dict[str, Any]]:
    """The review's attack (HIGH 1): every anchor deleted, one record rewritten, the rest
    renumbered and rehashed, the seq counter lowered: the store itself shows nothing."""
    records = [r for r in stream(client, tenant) if r["event"] != "audit.anchor"]
    records[1]["details"]["user"] = "someone-else"  # what was revoked is rewritten
    prev = GENESIS_HASH
    for seq, rec in enumerate(records, 1):
        rec["seq"], rec["prev_hash"] = seq, prev
        rec["hash"] = compute_hash(rec)
        prev = rec["hash"]
    rewrite(client, tenant, records)
    client.set(f"sgw:logseq:audit:{tenant}", len(records))
    client.hdel("sgw:k:audit-anchor-heads", tenant)  # the sealed newest anchor too
    return records


def wait_until_older_than(records: list[dict[str, Any]], seconds: float) -> None:
    """Until every record's own time lies ``seconds`` in the past (a fixed point in time, read
    from the records: no guessing how long something takes)."""
    newest = max(datetime.fromisoformat(r["time"].replace("Z", "+00:00")).timestamp() for r in records)
    time.sleep(max(0.0, newest + seconds - time.time()))


async def test_a_trail_stripped_of_every_anchor_is_broken_on_a_fresh_instance_and_never_signed(
    gateway_factory, upstream: Upstream, redis_url: str, tmp_path: Path
) -> None:
    a: GatewayProc = gateway_factory(config(upstream, redis_url, tmp_path / "a"))
    same_keys = {"SHOPINO_GATEWAY_MASTER_KEY": a.env["SHOPINO_GATEWAY_MASTER_KEY"]}
    client = redis.Redis.from_url(redis_url)
    async with aiohttp.ClientSession() as http:
        for user in ("u1", "u2", "u3", "u4"):
            body = {"tenant": "acme", "user": user}
            async with http.post(f"{a.admin_url}/admin/sessions/revoke", headers=AUTH, json=body) as r:
                assert r.status == 200
    wait_for_anchor_head(client, "acme")
    a.stop()
    forged = strip_anchors_and_rewrite(client, "acme")
    # anchor_every is 1s: records older than 3 s must be signed by an anchor.
    wait_until_older_than(forged, 3.5)

    # A fresh instance (a pod restarted with an empty last-anchors/) has no local anchor.
    b = gateway_factory(config(upstream, redis_url, tmp_path / "b"), env=same_keys)
    out = b.cli("audit", "verify", "--tenant", "acme", "--json")
    assert out.returncode == 4, out.stdout + out.stderr
    report = json.loads(out.stdout)
    assert report["first_bad_seq"] == 1 and report["anchors"] == 0
    assert report["problem"].startswith("record 1: older than the anchoring period but signed by no anchor")
    # Its anchoring loop refuses to sign the forged head (it runs every second).
    deadline = time.monotonic() + 15
    while "audit.anchor_refused" not in b.logs():
        assert time.monotonic() < deadline, "the fresh instance never checked the forged head"
        time.sleep(0.2)
    assert [r["event"] for r in stream(client, "acme")] == [r["event"] for r in forged]

    # The instance that wrote the anchors (its disk kept) says broken as well.
    a2 = gateway_factory(config(upstream, redis_url, tmp_path / "a"), env=same_keys)
    assert a2.cli("audit", "verify", "--tenant", "acme").returncode == 4
    client.close()


async def test_keys_rotate_revoke_old_marks_the_anchor_key_revoked_and_re_signs_every_trail(
    gateway_factory, upstream: Upstream, redis_url: str, tmp_path: Path
) -> None:
    cfg = config(upstream, redis_url, tmp_path)
    cfg["audit"]["anchor_every"] = "1h"  # only the first pass at start, and the rotation, sign
    gw: GatewayProc = gateway_factory(cfg)
    client = redis.Redis.from_url(redis_url)
    async with aiohttp.ClientSession() as http:
        body = {"tenant": "acme", "user": "u1"}
        async with http.post(f"{gw.admin_url}/admin/sessions/revoke", headers=AUTH, json=body) as r:
            assert r.status == 200
    export = tmp_path / "before.json"
    assert gw.cli("audit", "export", "--tenant", "acme", "-o", str(export)).returncode == 0
    old_kid = json.loads(export.read_text())[-1]["details"]["kid"]

    rotated = gw.cli("keys", "rotate", "--revoke-old")
    assert rotated.returncode == 0, rotated.stdout + rotated.stderr
    head = stream(client, "acme")[-1]  # re-signed with the new key before the command returned
    assert head["event"] == "audit.anchor" and head["details"]["kid"] != old_kid
    jwks = tmp_path / "jwks.json"
    assert gw.cli("audit", "jwks", "-o", str(jwks)).returncode == 0
    marked = {k["kid"]: k.get("revoked_at") for k in json.loads(jwks.read_text())["keys"]}
    assert marked[old_kid] is not None and marked[head["details"]["kid"]] is None
    async with aiohttp.ClientSession() as http, http.get(f"{gw.url}/_gateway/audit/jwks") as r:
        assert r.status == 200 and await r.json() == json.loads(jwks.read_text())
    # The stored trail and the export taken before the rotation (signed before it) still verify.
    assert gw.cli("audit", "verify", "--tenant", "acme").returncode == 0
    old = gw.cli("audit", "verify", "--file", str(export), "--jwks", str(jwks))
    assert old.returncode == 0, old.stdout + old.stderr
    client.close()
