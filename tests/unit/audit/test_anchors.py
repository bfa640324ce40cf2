"""Audit anchors (SPEC App. C): signed heads catch what the hash chain alone cannot.

Every attack here is done the way someone with write access to the store would do it: rewrite
the backend's own storage and recompute every hash after the edit, so that the hash chain by
itself is whole again (``rechain``); verify must still say broken and name the first bad record.
"""

from __future__ import annotations

import io
import sqlite3
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis.asyncio
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.audit import AuditTrail, iter_export_records, verify_records
from gateway.audit.anchors import (
    ANCHOR_EVENT,
    AnchorHeads,
    Anchoring,
    AnchorKeyArchive,
    AnchorKeys,
    LastAnchors,
    Statement,
    sign,
)
from gateway.audit.record import GENESIS_HASH, compute_hash, format_time
from gateway.auth.signing import SigningKey, SigningKeys
from gateway.crypto import Keyring
from gateway.errors import StoreUnavailable
from gateway.state import StateStore
from tests.unit.audit.conftest import Backend, FakeClock, export_bytes, stored, stored_records

Rows = list[tuple[int, bytes]]


@pytest.fixture
async def signing(store: StateStore) -> SigningKeys:
    keys = SigningKeys(store, KEYRING)
    await keys.load()
    return keys


KEYRING = Keyring.generate()


@pytest.fixture
def anchored(trail: AuditTrail, store: StateStore, signing: SigningKeys, tmp_path: Path) -> AuditTrail:
    trail.use_anchors(Anchoring(signing, AnchorKeyArchive(store, KEYRING), LastAnchors(tmp_path / "anchors")))
    return trail


async def fill(trail: AuditTrail, clock: FakeClock, count: int, tenant: str = "acme") -> None:
    for i in range(count):
        await trail.record("grant.create", tenants=[tenant], actor=f"admin{i}", details={"n": i})
        clock.advance(1)


async def anchored_trail(trail: AuditTrail, clock: FakeClock) -> None:
    """Records 1-5, anchor 6, records 7-11, anchor 12, records 13-14."""
    await fill(trail, clock, 5)
    assert (await trail.anchor("acme"))["seq"] == 6
    await fill(trail, clock, 5)
    assert (await trail.anchor("acme"))["seq"] == 12
    await fill(trail, clock, 2)


def rechain(rows: Rows, seq: int, change: dict[str, Any] | None = None, *, renumber: bool = False) -> Rows:
    """Apply ``change`` to record ``seq`` and recompute every hash from there (and, with
    ``renumber``, every seq), exactly as an attacker with store access would."""
    out: Rows = []
    prev = GENESIS_HASH
    for position, (_, raw) in enumerate(rows, start=1):
        rec = orjson.loads(raw)
        if renumber:
            rec["seq"] = position
        if rec["seq"] == seq and change:
            rec.update(change)
        if rec["seq"] >= seq:
            rec["prev_hash"] = prev
            rec["hash"] = compute_hash(rec)
        prev = rec["hash"]
        out.append((rec["seq"], orjson.dumps(rec)))
    return out


async def set_length(backend: Backend, stream: str, length: int) -> None:
    """Lower the store's seq counter too, so the store itself no longer shows the cut."""
    if backend.kind == "local":
        assert backend.path is not None
        db = sqlite3.connect(backend.path / "state.sqlite3", isolation_level=None)
        try:
            db.execute("UPDATE log_heads SET last_seq = ? WHERE stream = ?", (length, stream))
        finally:
            db.close()
        return
    client = redis.asyncio.Redis.from_url(backend.url)
    try:
        await client.set(f"sgw:logseq:{stream}", length)
    finally:
        await client.aclose()


# -- honest trails --------------------------------------------------------------------------
async def test_an_intact_trail_with_anchors_verifies(anchored: AuditTrail, clock: FakeClock) -> None:
    await anchored_trail(anchored, clock)
    result = await anchored.verify("acme")
    assert result.ok, result.problem
    assert (result.records, result.anchors, result.signed_through) == (14, 2, 11)


async def test_an_anchor_signs_the_head_and_the_records_since_the_last_one(
    anchored: AuditTrail, store: StateStore, signing: SigningKeys, clock: FakeClock
) -> None:
    await anchored_trail(anchored, clock)
    recs = {seq: orjson.loads(raw) for seq, raw in await stored(store, "acme")}
    anchor = recs[12]
    assert anchor["event"] == ANCHOR_EVENT and anchor["actor"] == "gateway"
    details = anchor["details"]
    assert details["kid"] == signing.active.kid
    assert (details["anchored_seq"], details["anchored_hash"]) == (11, recs[11]["hash"])
    keys = AnchorKeys.from_jwks(signing.jwks())
    statement = keys.verify(details["signature"])
    assert (statement.tenant, statement.first, statement.seq) == ("acme", 6, 11)
    assert (statement.time, statement.previous) == (anchor["time"], 6)
    assert statement.digests == "".join(recs[s]["hash"][:8] for s in range(6, 12))  # from anchor 6 on


async def test_a_head_that_is_already_an_anchor_is_not_signed_again(
    anchored: AuditTrail, clock: FakeClock
) -> None:
    assert await anchored.anchor("acme") is None  # nothing to sign yet
    await fill(anchored, clock, 2)
    assert await anchored.anchor("acme") is not None
    assert await anchored.anchor("acme") is None
    await fill(anchored, clock, 1, "globex")
    assert await anchored.anchor_all() == 1  # globex only


async def test_the_instance_keeps_its_last_anchor_on_local_disk(
    anchored: AuditTrail, clock: FakeClock, tmp_path: Path
) -> None:
    await anchored_trail(anchored, clock)
    kept = orjson.loads((tmp_path / "anchors" / "acme.json").read_bytes())
    assert kept["record_seq"] == 12 and kept["anchored_seq"] == 11
    assert {"anchored_hash", "signed_at", "kid", "signature"} <= set(kept)


async def test_retention_and_purge_stay_verifiable_with_anchors(
    anchored: AuditTrail, clock: FakeClock, tenant_registry: list[str]
) -> None:
    await anchored_trail(anchored, clock)
    clock.advance(3 * 86400)
    await fill(anchored, clock, 2)
    assert await anchored.apply_retention("acme", 2 * 86400) == 14
    result = await anchored.verify("acme")
    assert result.ok and result.first_seq == 15, result.problem
    await anchored.purge_tenant("acme", actor="ops")
    result = await anchored.verify("acme")
    assert result.ok and result.anchors == 1, result.problem


async def test_anchors_keep_verifying_after_the_signing_key_rotates(
    anchored: AuditTrail, signing: SigningKeys, clock: FakeClock
) -> None:
    await anchored_trail(anchored, clock)
    old = signing.active.kid
    await signing.rotate(revoke_old=True, token_ttl=0)
    await fill(anchored, clock, 1)
    await anchored.anchor("acme")
    assert old not in {k["kid"] for k in signing.jwks()["keys"]}
    result = await anchored.verify("acme")
    assert result.ok and result.anchors == 3, result.problem
    # Offline: the archive's JWKS verifies all three; today's public JWKS alone does not.
    records = list(iter_export_records(io.BytesIO(await export_bytes(anchored, "acme"))))
    assert verify_records(records, anchor_keys=await anchored.anchor_keys()).ok
    only_current = verify_records(records, anchor_keys=AnchorKeys.from_jwks(signing.jwks()))
    assert not only_current.ok and only_current.bad_seq == 6


# -- attacks on the stored trail ------------------------------------------------------------
@pytest.mark.parametrize("edited", [1, 3, 7, 11])
async def test_a_rewritten_chain_is_broken_and_names_the_edited_record(
    edited: int, anchored: AuditTrail, store: StateStore, backend: Backend, clock: FakeClock
) -> None:
    await anchored_trail(anchored, clock)
    rows = rechain(await stored(store, "acme"), edited, {"actor": "someone-else"})
    await backend.rewrite("audit:acme", rows)
    assert verify_records(orjson.loads(raw) for _, raw in rows).ok  # the hash chain alone is happy
    result = await anchored.verify("acme")
    assert not result.ok
    assert result.bad_seq == edited, result.problem
    assert result.problem is not None and f"record {edited}: " in result.problem
    assert "rewritten" in result.problem


@pytest.mark.parametrize("anchor", [6, 12])
async def test_an_anchor_record_edited_outside_its_signature_is_named(
    anchor: int, anchored: AuditTrail, store: StateStore, backend: Backend, clock: FakeClock
) -> None:
    # The actor is not part of what an anchor signs: the next anchor's digests (for 6) or this
    # instance's copy of its last anchor (for 12) catch the edit.
    await anchored_trail(anchored, clock)
    await backend.rewrite("audit:acme", rechain(await stored(store, "acme"), anchor, {"actor": "x"}))
    result = await anchored.verify("acme")
    assert not result.ok and result.bad_seq == anchor, result.problem


async def test_a_record_removed_and_the_rest_renumbered_is_named(
    anchored: AuditTrail, store: StateStore, backend: Backend, clock: FakeClock
) -> None:
    await anchored_trail(anchored, clock)
    rows = [row for row in await stored(store, "acme") if row[0] != 9]
    await backend.rewrite("audit:acme", rechain(rows, 9, renumber=True))
    await set_length(backend, "audit:acme", 13)
    result = await anchored.verify("acme")
    assert not result.ok and result.bad_seq == 9
    assert str(result.problem).startswith("record 9: records removed or inserted (its hash is not the one")


async def test_a_forged_anchor_by_another_key_is_refused(
    anchored: AuditTrail, store: StateStore, backend: Backend, clock: FakeClock, signing: SigningKeys
) -> None:
    await anchored_trail(anchored, clock)
    rows = await stored(store, "acme")
    anchor = orjson.loads(dict(rows)[12])
    statement = AnchorKeys.from_jwks(signing.jwks()).verify(anchor["details"]["signature"])
    # Same kid, same statement, the attacker's own key.
    impostor = SigningKey(signing.active.kid, ec.generate_private_key(ec.SECP256R1()), 0.0)
    forged = rechain(rows, 12, {"details": sign(statement, impostor)})
    await backend.rewrite("audit:acme", forged)
    result = await anchored.verify("acme")
    assert not result.ok and result.bad_seq == 12
    assert result.problem == "record 12: anchor the signature does not verify (forged or tampered)"


async def test_a_tampered_anchor_signature_is_refused(
    anchored: AuditTrail, store: StateStore, backend: Backend, clock: FakeClock
) -> None:
    await anchored_trail(anchored, clock)
    rows = await stored(store, "acme")
    details = orjson.loads(dict(rows)[6])["details"]
    body, signature = details["signature"].rsplit(".", 1)
    flipped = signature[:10] + ("A" if signature[10] != "A" else "B") + signature[11:]
    await backend.rewrite(
        "audit:acme", rechain(rows, 6, {"details": {**details, "signature": f"{body}.{flipped}"}})
    )
    result = await anchored.verify("acme")
    assert not result.ok and result.bad_seq == 6 and "forged or tampered" in str(result.problem)


async def test_a_rewritten_chain_with_a_re_signed_statement_by_a_planted_key_is_refused(
    anchored: AuditTrail, store: StateStore, backend: Backend, clock: FakeClock
) -> None:
    # The attacker also plants their public key in the archive: it is not sealed by the master
    # key, so it is not trusted.
    await anchored_trail(anchored, clock)
    impostor = SigningKey("evil", ec.generate_private_key(ec.SECP256R1()), 0.0)
    await store.hset("audit-anchor-keys", "evil", b'{"kty":"EC"}')
    rows = rechain(await stored(store, "acme"), 3, {"actor": "x"})
    recs = {seq: orjson.loads(raw) for seq, raw in rows}
    for at in (6, 12):
        head = recs[at - 1]
        statement = Statement("acme", at - 1, head["hash"], recs[at]["time"], at, "")
        rows = rechain(rows, at, {"details": sign(statement, impostor)})
        recs = {seq: orjson.loads(raw) for seq, raw in rows}
    await backend.rewrite("audit:acme", rows)
    result = await anchored.verify("acme")
    assert not result.ok and result.bad_seq == 6
    assert result.problem == "record 6: anchor signed by an unknown key (forged or tampered)"


async def test_a_removed_anchor_is_detected(
    anchored: AuditTrail, store: StateStore, backend: Backend, clock: FakeClock
) -> None:
    await anchored_trail(anchored, clock)
    rows = [row for row in await stored(store, "acme") if row[0] != 6]
    await backend.rewrite("audit:acme", rechain(rows, 6, renumber=True))
    result = await anchored.verify("acme")
    assert not result.ok and result.bad_seq == 6
    assert result.problem == (
        "record 6: the anchor that stood there is gone "
        "(the anchor at record 11 follows it; removed or rewritten)"
    )


async def test_the_removed_last_anchor_is_caught_by_the_local_copy(
    anchored: AuditTrail, store: StateStore, backend: Backend, clock: FakeClock
) -> None:
    await anchored_trail(anchored, clock)
    rows = [row for row in await stored(store, "acme") if row[0] != 12]
    await backend.rewrite("audit:acme", rechain(rows, 12, renumber=True))
    await set_length(backend, "audit:acme", 13)
    result = await anchored.verify("acme")
    assert not result.ok and result.bad_seq == 12
    assert "the anchor this instance wrote here is gone" in str(result.problem)


async def test_a_truncated_trail_is_detected_from_the_local_anchor(
    anchored: AuditTrail, store: StateStore, backend: Backend, clock: FakeClock
) -> None:
    await anchored_trail(anchored, clock)
    await backend.rewrite("audit:acme", (await stored(store, "acme"))[:9])
    await set_length(backend, "audit:acme", 9)  # the store itself no longer shows the cut
    result = await anchored.verify("acme")
    assert not result.ok and result.bad_seq == 10
    assert result.problem == (
        "the trail ends at record 9 but this instance anchored it through record 12 (truncated)"
    )


async def test_a_prefix_cut_behind_an_appended_unsigned_checkpoint_is_detected(
    anchored: AuditTrail, store: StateStore, backend: Backend, clock: FakeClock
) -> None:
    await anchored_trail(anchored, clock)
    rows = await stored(store, "acme")
    recs = [orjson.loads(raw) for _, raw in rows]
    checkpoint = {
        "seq": 15,
        "time": recs[-1]["time"],
        "tenant": "acme",
        "event": "audit.checkpoint",
        "actor": "gateway",
        "request_id": None,
        "incident": None,
        "details": {"removed_through_seq": 7, "removed_last_hash": recs[6]["hash"]},
        "prev_hash": recs[-1]["hash"],
    }
    checkpoint["hash"] = compute_hash(checkpoint)
    await backend.rewrite("audit:acme", [*rows[7:], (15, orjson.dumps(checkpoint))])
    await set_length(backend, "audit:acme", 15)
    result = await anchored.verify("acme")
    assert not result.ok and result.bad_seq == 8
    assert "signed by no anchor" in str(result.problem)


async def test_a_planted_local_anchor_is_not_trusted(
    anchored: AuditTrail, clock: FakeClock, tmp_path: Path
) -> None:
    await anchored_trail(anchored, clock)
    path = tmp_path / "anchors" / "acme.json"
    kept = orjson.loads(path.read_bytes())
    path.write_bytes(orjson.dumps({**kept, "signature": kept["signature"][:-4] + "AAAA"}))
    result = await anchored.verify("acme")
    assert not result.ok and "last anchor does not verify" in str(result.problem)


# -- offline: a signed export and the JWKS --------------------------------------------------
async def test_a_signed_export_verifies_offline_with_the_jwks(
    anchored: AuditTrail, signing: SigningKeys, clock: FakeClock
) -> None:
    await anchored_trail(anchored, clock)
    await anchored.anchor("acme")  # what every export does first
    records = list(iter_export_records(io.BytesIO(await export_bytes(anchored, "acme"))))
    keys = AnchorKeys.from_jwks(orjson.loads(orjson.dumps(signing.jwks())))  # as read from a file
    result = verify_records(records, anchor_keys=keys)
    assert result.ok and result.anchors == 3 and result.signed_through == 14, result.problem


async def test_an_edited_and_rechained_export_fails_offline(
    anchored: AuditTrail, signing: SigningKeys, clock: FakeClock
) -> None:
    await anchored_trail(anchored, clock)
    await anchored.anchor("acme")
    rows = [(r["seq"], orjson.dumps(r)) for r in orjson.loads(await export_bytes(anchored, "acme"))]
    records = [orjson.loads(raw) for _, raw in rechain(rows, 8, {"details": {"n": 99}})]
    assert verify_records(records).ok  # without the JWKS only the hash chain is checked
    result = verify_records(records, anchor_keys=AnchorKeys.from_jwks(signing.jwks()))
    assert not result.ok and result.bad_seq == 8


async def test_an_export_checked_against_another_gateways_jwks_fails(
    anchored: AuditTrail, clock: FakeClock
) -> None:
    await anchored_trail(anchored, clock)
    other = ec.generate_private_key(ec.SECP256R1())
    records = orjson.loads(await export_bytes(anchored, "acme"))
    keys = AnchorKeys({"someone-else": other.public_key()})
    result = verify_records(records, anchor_keys=keys)
    assert not result.ok and result.bad_seq == 6


async def test_an_export_without_any_anchor_is_not_signed(trail: AuditTrail, clock: FakeClock) -> None:
    await fill(trail, clock, 3)
    records = orjson.loads(await export_bytes(trail, "acme"))
    result = verify_records(records, anchor_keys=AnchorKeys({}))
    assert not result.ok and result.problem == "no valid audit.anchor record: nothing in it is signed"


@pytest.mark.parametrize(
    "jwks",
    [
        [],
        {"keys": "x"},
        {"keys": [{"kty": "EC"}]},
        {"keys": [{"kid": "a", "kty": "EC", "crv": "P-256", "x": "!"}]},
    ],
)
def test_a_malformed_jwks_is_refused(jwks: object) -> None:
    with pytest.raises(ValueError):
        AnchorKeys.from_jwks(jwks)


async def test_the_public_key_list_is_read_from_the_store_at_most_once_per_max_age(
    anchored: AuditTrail, signing: SigningKeys, clock: FakeClock
) -> None:
    await fill(anchored, clock, 1)
    await anchored.anchor("acme")
    first = await anchored.anchor_keys(max_age=60)
    await signing.rotate(revoke_old=False, token_ttl=0)
    await fill(anchored, clock, 1)
    await anchored.anchor("acme")  # archives the new key
    assert await anchored.anchor_keys(max_age=60) is first  # the public endpoint's cached answer
    assert len(await anchored.anchor_keys()) == 2  # verification always reads the archive


async def test_without_loaded_signing_keys_an_anchor_waits_for_the_store(
    trail: AuditTrail, store: StateStore, tmp_path: Path, clock: FakeClock
) -> None:
    unloaded = SigningKeys(store, KEYRING)  # never loaded: as at start while the store is down
    trail.use_anchors(Anchoring(unloaded, AnchorKeyArchive(store, KEYRING), LastAnchors(tmp_path / "a")))
    await fill(trail, clock, 1)
    with pytest.raises(StoreUnavailable):
        await trail.anchor("acme")


# -- anchors removed altogether (review HIGH 1) ---------------------------------------------
PAST_GRACE = 3 * 3600.0  # beyond 2 x anchor_every (1h by default) + the 10 min margin


def other_instance(store: StateStore, signing: SigningKeys, tmp_path: Path, clock: FakeClock) -> AuditTrail:
    """A second gateway on the same store with its own (empty) local state: a restarted pod."""
    other = AuditTrail(store, spool_dir=tmp_path / "spool-b", clock=clock)
    other.use_anchors(Anchoring(signing, AnchorKeyArchive(store, KEYRING), LastAnchors(tmp_path / "b")))
    return other


async def strip_anchors(store: StateStore, backend: Backend, edit_seq: int = 3) -> Rows:
    """The attack: every anchor deleted, one record rewritten, the rest renumbered and rehashed,
    the store's seq counter lowered to match."""
    rows = [r for r in await stored(store, "acme") if orjson.loads(r[1])["event"] != ANCHOR_EVENT]
    rows = rechain(rows, edit_seq, {"actor": "someone-else", "details": {"n": 999}}, renumber=True)
    await backend.rewrite("audit:acme", rows)
    await set_length(backend, "audit:acme", len(rows))
    return rows


async def test_a_trail_with_every_anchor_removed_is_broken_on_every_instance(
    anchored: AuditTrail,
    store: StateStore,
    backend: Backend,
    signing: SigningKeys,
    clock: FakeClock,
    tmp_path: Path,
) -> None:
    await anchored_trail(anchored, clock)
    await anchored.anchor("acme")  # the periodic anchor signs the head
    rows = await strip_anchors(store, backend)
    clock.advance(PAST_GRACE)
    other = other_instance(store, signing, tmp_path, clock)
    try:
        result = await other.verify("acme")  # no local state: the age of the records tells
        assert not result.ok and result.anchors == 0 and result.bad_seq == 1, result
        assert result.problem == (
            "record 1: older than the anchoring period but signed by no anchor "
            "(anchors removed or the trail rewritten)"
        )
        assert not (await anchored.verify("acme")).ok  # its own last anchor tells
        # And neither signs the forgery: the head stays as the attacker left it.
        assert await other.anchor_all() == 0
        assert await anchored.anchor("acme") is None
        assert await stored(store, "acme") == rows
    finally:
        other.close()


async def test_a_young_unsigned_trail_is_intact_and_an_old_one_is_not(
    anchored: AuditTrail, clock: FakeClock
) -> None:
    await fill(anchored, clock, 3)
    clock.advance(2 * 3600 + 590)  # younger than 2 periods + the margin: an anchor may be due
    result = await anchored.verify("acme")
    assert result.ok and result.anchors == 0, result.problem
    clock.advance(20)
    result = await anchored.verify("acme")
    assert not result.ok and result.bad_seq == 1


async def test_the_grace_follows_anchor_every(
    trail: AuditTrail, store: StateStore, signing: SigningKeys, clock: FakeClock, tmp_path: Path
) -> None:
    trail.use_anchors(
        Anchoring(signing, AnchorKeyArchive(store, KEYRING), LastAnchors(tmp_path / "a"), lambda: 60.0)
    )
    await fill(trail, clock, 2)
    clock.advance(3 * 60 - 10)  # short periods: the margin is one more period
    assert (await trail.verify("acme")).ok
    clock.advance(20)
    assert (await trail.verify("acme")).bad_seq == 1


async def test_an_outage_after_this_instances_last_anchor_is_signed_once_it_is_back(
    anchored: AuditTrail, clock: FakeClock
) -> None:
    await anchored_trail(anchored, clock)  # records 13-14 written after this instance's anchor 12
    clock.advance(PAST_GRACE)  # every gateway was down meanwhile
    assert (await anchored.verify("acme")).bad_seq == 13  # unsigned and old: reported
    assert (await anchored.anchor("acme"))["seq"] == 15  # it kept anchor 12: no anchor was removed
    result = await anchored.verify("acme")
    assert result.ok and result.signed_through == 14, result.problem


async def test_the_last_anchor_removed_and_the_tail_rewritten_is_not_signed(
    anchored: AuditTrail,
    store: StateStore,
    backend: Backend,
    signing: SigningKeys,
    clock: FakeClock,
    tmp_path: Path,
) -> None:
    await anchored_trail(anchored, clock)
    rows = [row for row in await stored(store, "acme") if row[0] != 12]
    rows = rechain(rows, 12, {"actor": "someone-else"}, renumber=True)
    await backend.rewrite("audit:acme", rows)
    await set_length(backend, "audit:acme", len(rows))
    clock.advance(PAST_GRACE)
    other = other_instance(store, signing, tmp_path, clock)
    try:
        assert await other.anchor("acme") is None
        assert await anchored.anchor("acme") is None
        assert await stored(store, "acme") == rows
        assert (await other.verify("acme")).bad_seq == 7  # the first record after anchor 6
    finally:
        other.close()


async def test_an_instance_keeps_the_anchor_another_one_wrote_on_the_head(
    anchored: AuditTrail,
    store: StateStore,
    backend: Backend,
    signing: SigningKeys,
    clock: FakeClock,
    tmp_path: Path,
) -> None:
    await anchored_trail(anchored, clock)
    head = await anchored.anchor("acme")  # instance A wins the race for this head
    other = other_instance(store, signing, tmp_path, clock)
    try:
        assert await other.anchor("acme") is None  # nothing to sign, but B records A's anchor
        kept = orjson.loads((tmp_path / "b" / "acme.json").read_bytes())
        assert (kept["record_seq"], kept["record_hash"]) == (15, head["hash"])
        await backend.rewrite("audit:acme", (await stored(store, "acme"))[:13])
        await set_length(backend, "audit:acme", 13)
        result = await other.verify("acme")
        assert not result.ok and "anchored it through record 15 (truncated)" in str(result.problem)
    finally:
        other.close()


async def test_a_forged_head_anchor_is_not_kept_as_the_last_anchor(
    anchored: AuditTrail,
    store: StateStore,
    backend: Backend,
    signing: SigningKeys,
    clock: FakeClock,
    tmp_path: Path,
) -> None:
    await fill(anchored, clock, 3)
    rows = await stored(store, "acme")
    head = orjson.loads(rows[-1][1])
    impostor = SigningKey(signing.active.kid, ec.generate_private_key(ec.SECP256R1()), 0.0)
    statement = Statement("acme", 3, head["hash"], head["time"], 1, "")
    forged = {**head, "seq": 4, "event": ANCHOR_EVENT, "details": sign(statement, impostor)}
    forged["prev_hash"] = head["hash"]
    forged["hash"] = compute_hash(forged)
    await backend.rewrite("audit:acme", [*rows, (4, orjson.dumps(forged))])
    await set_length(backend, "audit:acme", 4)
    other = other_instance(store, signing, tmp_path, clock)
    try:
        assert await other.anchor("acme") is None
        assert not (tmp_path / "b" / "acme.json").exists()
    finally:
        other.close()


# -- every export ends signed (review MEDIUM 3) ---------------------------------------------
def record_time(recs: list[dict[str, Any]], seq: int) -> str:
    return next(r["time"] for r in recs if r["seq"] == seq)


async def test_an_export_ends_with_its_export_anchor_and_nothing_after_it(
    anchored: AuditTrail, store: StateStore, signing: SigningKeys, clock: FakeClock
) -> None:
    await anchored_trail(anchored, clock)
    through = await anchored.sign_for_export("acme")
    assert through == 15
    await fill(anchored, clock, 2)  # written while the export streams
    records = orjson.loads(await export_bytes(anchored, "acme", through_seq=through))
    assert [r["seq"] for r in records] == list(range(1, 16))
    result = verify_records(records, anchor_keys=await anchored.anchor_keys())
    assert result.ok and result.signed_through == 14, result.problem
    assert await anchored.sign_for_export("acme") == 18
    assert await anchored.sign_for_export("acme") == 18  # the head is signed already


@pytest.mark.parametrize(("until", "last"), [(8, 12), (11, 12), (13, 15), (3, 6)])
async def test_an_export_cut_by_until_runs_on_to_the_next_anchor(
    until: int, last: int, anchored: AuditTrail, store: StateStore, clock: FakeClock
) -> None:
    await anchored_trail(anchored, clock)
    through = await anchored.sign_for_export("acme")
    recs = await stored_records(store, "acme")
    cut = record_time(recs, until)
    records = orjson.loads(await export_bytes(anchored, "acme", until=cut, through_seq=through))
    assert [r["seq"] for r in records] == list(range(1, last + 1))
    assert records[-1]["event"] == ANCHOR_EVENT
    assert verify_records(records, anchor_keys=await anchored.anchor_keys()).ok
    # since + until: mid-chain start, still signed at the end.
    window = orjson.loads(
        await export_bytes(anchored, "acme", since=record_time(recs, 2), until=cut, through_seq=through)
    )
    assert window[0]["seq"] == 2 and window[-1]["seq"] == last
    assert verify_records(window, anchor_keys=await anchored.anchor_keys()).ok


async def test_an_export_without_anchors_is_cut_where_until_says(trail: AuditTrail, clock: FakeClock) -> None:
    await fill(trail, clock, 5)
    recs = orjson.loads(await export_bytes(trail, "acme"))
    records = orjson.loads(await export_bytes(trail, "acme", until=recs[2]["time"]))
    assert [r["seq"] for r in records] == [1, 2, 3]


# -- a revoked key (review MEDIUM 2) and a lost archive (review LOW) ------------------------
def forged_export(records: list[dict[str, Any]], key: SigningKey, signed_at: str) -> list[dict[str, Any]]:
    """The review's attack: record 2 rewritten, the anchors dropped, the rest rechained, and
    an anchor signed with the exposed key appended."""
    recs = [dict(r) for r in records if r["event"] != ANCHOR_EVENT]
    recs[1]["details"] = {"n": "forged"}
    prev = GENESIS_HASH
    for seq, rec in enumerate(recs, 1):
        rec["seq"], rec["prev_hash"] = seq, prev
        rec["hash"] = compute_hash(rec)
        prev = rec["hash"]
    head = recs[-1]
    statement = Statement(
        "acme", head["seq"], head["hash"], signed_at, 1, "".join(r["hash"][:8] for r in recs)
    )
    anchor = {
        **head,
        "seq": head["seq"] + 1,
        "time": signed_at,
        "event": ANCHOR_EVENT,
        "actor": "gateway",
        "details": sign(statement, key),
        "prev_hash": head["hash"],
    }
    anchor["hash"] = compute_hash(anchor)
    return [*recs, anchor]


async def test_a_revoked_key_vouches_for_nothing_signed_after_its_revocation(
    anchored: AuditTrail, store: StateStore, signing: SigningKeys, clock: FakeClock
) -> None:
    await anchored_trail(anchored, clock)
    exposed = signing.active  # the key the attacker stole
    new = await signing.rotate(revoke_old=True, token_ttl=900)
    assert await anchored.revoke_anchor_keys([exposed.kid]) == 1  # acme re-signed at once
    head = (await stored_records(store, "acme"))[-1]
    assert head["event"] == ANCHOR_EVENT and head["details"]["kid"] == new.kid
    jwks = (await anchored.anchor_keys()).jwks()  # what /_gateway/audit/jwks serves
    marked = {k["kid"]: k.get("revoked_at") for k in jwks["keys"]}
    assert marked[new.kid] is None and marked[exposed.kid] is not None
    keys = AnchorKeys.from_jwks(orjson.loads(orjson.dumps(jwks)))  # as read from a file

    clock.advance(61)  # past the grace other instances get to load the new key
    honest = orjson.loads(
        await export_bytes(anchored, "acme", through_seq=await anchored.sign_for_export("acme"))
    )
    result = verify_records(honest, anchor_keys=keys)
    assert result.ok and result.anchors == 3, result.problem  # old anchors signed before it count

    forged = forged_export(honest, exposed, format_time(clock()))
    result = verify_records(forged, anchor_keys=keys)
    assert not result.ok and result.bad_seq == len(forged)
    assert result.problem == (
        f"record {len(forged)}: anchor signed by a revoked key after its revocation (forged or tampered)"
    )
    # Signed "before" the revocation: the time inside the signature is the forger's to choose,
    # which is why the rotation re-signs every stored trail with the new key (README).
    assert verify_records(forged_export(honest, exposed, honest[0]["time"]), anchor_keys=keys).ok


async def test_a_revocation_stands_when_the_store_forgets_it(
    anchored: AuditTrail, store: StateStore, signing: SigningKeys, clock: FakeClock
) -> None:
    await fill(anchored, clock, 2)
    await anchored.anchor("acme")
    exposed = signing.active
    unrevoked = (await store.hgetall("audit-anchor-keys"))[exposed.kid]
    await signing.rotate(revoke_old=True, token_ttl=0)
    await anchored.revoke_anchor_keys([exposed.kid])
    assert (await anchored.anchor_keys()).revoked_at(exposed.kid) is not None
    await store.hset("audit-anchor-keys", exposed.kid, unrevoked)  # a rollback of the archive
    assert (await anchored.anchor_keys()).revoked_at(exposed.kid) is not None


async def test_an_anchor_key_lost_by_the_store_is_archived_again(
    anchored: AuditTrail, store: StateStore, clock: FakeClock
) -> None:
    await fill(anchored, clock, 2)
    await anchored.anchor("acme")
    await store.delete("audit-anchor-keys")  # a reset: the store came back without the archive
    await fill(anchored, clock, 1, "globex")
    assert await anchored.anchor("globex") is not None
    result = await anchored.verify("globex")
    assert result.ok and result.anchors == 1, result.problem
    assert len(await anchored.anchor_keys()) == 1


async def test_a_store_reset_drops_the_archive_cache(
    anchored: AuditTrail, store: StateStore, signing: SigningKeys, clock: FakeClock
) -> None:
    await fill(anchored, clock, 1)
    await anchored.anchor("acme")
    first = await anchored.anchor_keys(max_age=60)
    anchored.forget_anchor_keys()  # what the store-reset signal calls
    assert await anchored.anchor_keys(max_age=60) is not first


@pytest.mark.parametrize("when", ["yesterday", 5, "2026-12-07T10:00:00Z"])
def test_a_jwks_with_a_malformed_revocation_is_refused(when: object, signing: SigningKeys) -> None:
    jwks = signing.jwks()
    jwks["keys"][0]["revoked_at"] = when
    with pytest.raises(ValueError, match="revoked_at"):
        AnchorKeys.from_jwks(jwks)


# -- the newest anchor sealed in the store, for every instance --------------------------------
def with_heads(trail: AuditTrail, store: StateStore, signing: SigningKeys, directory: Path) -> AuditTrail:
    trail.use_anchors(
        Anchoring(
            signing,
            AnchorKeyArchive(store, KEYRING),
            LastAnchors(directory),
            heads=AnchorHeads(store, KEYRING),
        )
    )
    return trail


async def test_a_fresh_instance_catches_a_removed_newest_anchor_from_the_store_copy(
    trail: AuditTrail,
    store: StateStore,
    backend: Backend,
    signing: SigningKeys,
    clock: FakeClock,
    tmp_path: Path,
) -> None:
    with_heads(trail, store, signing, tmp_path / "a")
    await anchored_trail(trail, clock)
    rows = [row for row in await stored(store, "acme") if row[0] != 12]
    await backend.rewrite("audit:acme", rechain(rows, 12, {"actor": "x"}, renumber=True))
    await set_length(backend, "audit:acme", 13)
    # Records still young: only the sealed copy of anchor 12 shows it is gone.
    fresh = with_heads(
        AuditTrail(store, spool_dir=tmp_path / "sb", clock=clock), store, signing, tmp_path / "b"
    )
    try:
        result = await fresh.verify("acme")
        assert not result.ok and result.bad_seq == 12, result.problem
        assert await fresh.anchor("acme") is None  # and it does not sign the rewrite
    finally:
        fresh.close()


async def test_a_fresh_instance_signs_after_an_outage_when_the_store_copy_vouches(
    trail: AuditTrail, store: StateStore, signing: SigningKeys, clock: FakeClock, tmp_path: Path
) -> None:
    with_heads(trail, store, signing, tmp_path / "a")
    await anchored_trail(trail, clock)
    clock.advance(PAST_GRACE)  # every gateway was down; a new pod comes up with an empty disk
    fresh = with_heads(
        AuditTrail(store, spool_dir=tmp_path / "sb", clock=clock), store, signing, tmp_path / "b"
    )
    try:
        assert (await fresh.anchor("acme"))["seq"] == 15
        assert (await fresh.verify("acme")).ok
    finally:
        fresh.close()


async def test_a_planted_or_moved_store_copy_is_ignored(
    trail: AuditTrail, store: StateStore, signing: SigningKeys, clock: FakeClock, tmp_path: Path
) -> None:
    with_heads(trail, store, signing, tmp_path / "a")
    await anchored_trail(trail, clock)
    await fill(trail, clock, 1, "globex")
    await trail.anchor("globex")
    heads = AnchorHeads(store, KEYRING)
    acme = (await store.hgetall("audit-anchor-heads"))["acme"]
    await store.hset("audit-anchor-heads", "globex", acme)  # moved to another tenant
    assert await heads.read("globex") is None
    await store.hset("audit-anchor-heads", "globex", b'{"record_seq": 99}')  # made up
    assert await heads.read("globex") is None
    assert (await heads.read("acme"))["record_seq"] == 12
