"""Tamper detection: a changed, removed or reordered record is found both in the stored trail
(``AuditTrail.verify``, after rewriting the backend's storage directly) and in a JSON export
(``verify_records``, after editing the file)."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from typing import Any

import orjson
import pytest

from gateway.audit import AuditTrail, iter_export_records, verify_records
from gateway.audit.record import compute_hash
from gateway.state import StateStore
from tests.unit.audit.conftest import Backend, FakeClock, export_bytes, stored

Rows = list[tuple[int, bytes]]


async def fill(trail: AuditTrail, clock: FakeClock, count: int = 30, tenant: str = "acme") -> None:
    for i in range(count):
        await trail.record(
            "grant.create", tenants=[tenant], actor=f"admin{i}", details={"n": i, "who": "Zoë"}
        )
        clock.advance(1)


def edit(rows: Rows, seq: int, **changes: Any) -> Rows:
    out = []
    for s, raw in rows:
        if s == seq:
            rec = orjson.loads(raw)
            rec.update(changes)
            raw = orjson.dumps(rec)
        out.append((s, raw))
    return out


def rehash(rows: Rows, seq: int, **changes: Any) -> Rows:
    """Change a record and recompute its own hash, as a smarter attacker would."""
    out = []
    for s, raw in rows:
        if s == seq:
            rec = orjson.loads(raw)
            rec.update(changes)
            rec["hash"] = compute_hash(rec)
            raw = orjson.dumps(rec)
        out.append((s, raw))
    return out


def swap(rows: Rows, a: int, b: int) -> Rows:
    by_seq = dict(rows)
    by_seq[a], by_seq[b] = by_seq[b], by_seq[a]
    return sorted(by_seq.items())


TAMPERING: dict[str, tuple[Callable[[Rows], Rows], str]] = {
    "changed field": (
        lambda rows: edit(rows, 17, actor="someone-else"),
        "record 17: hash mismatch (changed)",
    ),
    "changed details": (lambda rows: edit(rows, 17, details={"n": 16}), "record 17: hash mismatch (changed)"),
    "changed and rehashed": (
        lambda rows: rehash(rows, 17, actor="x"),
        "record 18: prev_hash does not match record 17 (removed or reordered)",
    ),
    "added field": (lambda rows: edit(rows, 5, extra=1), "record 5: not a valid audit record (changed)"),
    "removed record": (lambda rows: [r for r in rows if r[0] != 17], "seq gap after 16 (removed)"),
    "removed newest": (lambda rows: rows[:-1], "records 30-30 missing (removed)"),
    "removed oldest": (lambda rows: rows[3:], "records before 4 removed without a checkpoint (removed)"),
}


@pytest.mark.parametrize("case", sorted(TAMPERING))
async def test_verify_detects_tampering_in_the_store(
    case: str, trail: AuditTrail, store: StateStore, backend: Backend, clock: FakeClock
) -> None:
    await fill(trail, clock)
    assert (await trail.verify("acme")).ok
    mutate, problem = TAMPERING[case]
    await backend.rewrite("audit:acme", mutate(await stored(store, "acme")))
    result = await trail.verify("acme")
    assert not result.ok
    assert result.problem is not None and result.problem.startswith(problem), result.problem


async def test_verify_detects_reordered_records_in_the_store(
    trail: AuditTrail, store: StateStore, backend: Backend, clock: FakeClock
) -> None:
    await fill(trail, clock)
    await backend.rewrite("audit:acme", swap(await stored(store, "acme"), 17, 18))
    result = await trail.verify("acme")
    assert not result.ok and result.problem == "record 17: its seq field says 18 (reordered or changed)"


async def test_verify_detects_a_record_moved_from_another_tenant(
    trail: AuditTrail, store: StateStore, backend: Backend, clock: FakeClock
) -> None:
    await fill(trail, clock, 5, "acme")
    await fill(trail, clock, 5, "globex")
    rows = await stored(store, "acme")
    foreign = dict(await stored(store, "globex"))
    rows[2] = (3, foreign[3])
    await backend.rewrite("audit:acme", rows)
    result = await trail.verify("acme")
    assert result.problem == "record 3: filed under another tenant (moved or changed)"


async def test_empty_and_unknown_trails_verify(trail: AuditTrail) -> None:
    result = await trail.verify("nobody")
    assert result.ok and result.records == 0


async def test_all_records_removed_is_detected(
    trail: AuditTrail, store: StateStore, backend: Backend, clock: FakeClock
) -> None:
    await fill(trail, clock, 3)
    await backend.rewrite("audit:acme", [])
    result = await trail.verify("acme")
    assert result.problem == "all records through 3 missing (removed)"


async def test_unreadable_record_is_detected(
    trail: AuditTrail, store: StateStore, backend: Backend, clock: FakeClock
) -> None:
    await fill(trail, clock, 3)
    rows = await stored(store, "acme")
    rows[1] = (2, b"garbage")
    await backend.rewrite("audit:acme", rows)
    assert (await trail.verify("acme")).problem == "record 2: not a valid audit record (changed)"


# -- offline: an exported JSON file ---------------------------------------------------------
def export_swap(recs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    recs[16], recs[17] = recs[17], recs[16]
    return recs


def export_edit(recs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    recs[16]["time"] = "2020-01-01T00:00:00.000Z"
    return recs


def export_renumber(recs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Remove record 17 and renumber/rehash the ones after it (the chain link still breaks)."""
    del recs[16]
    for rec in recs[16:]:
        rec["seq"] -= 1
        rec["hash"] = compute_hash(rec)
    return recs


EXPORT_TAMPERING: dict[str, tuple[Callable[[list[dict[str, Any]]], list[dict[str, Any]]], str]] = {
    "changed": (export_edit, "record 17: hash mismatch (changed)"),
    "removed": (lambda recs: recs[:16] + recs[17:], "seq gap after 16 (removed or reordered)"),
    "reordered": (export_swap, "seq gap after 16 (removed or reordered)"),
    "removed and renumbered": (
        export_renumber,
        "record 17: prev_hash does not match record 16 (removed or reordered)",
    ),
    "duplicated": (
        lambda recs: recs[:17] + recs[16:],
        "record 17 follows record 17 (reordered or duplicated)",
    ),
}


@pytest.mark.parametrize("case", sorted(EXPORT_TAMPERING))
async def test_verify_records_detects_tampering_in_an_export(
    case: str, trail: AuditTrail, clock: FakeClock
) -> None:
    await fill(trail, clock)
    exported = json.loads(await export_bytes(trail, "acme"))
    assert verify_records(exported).ok
    mutate, problem = EXPORT_TAMPERING[case]
    result = verify_records(mutate(exported))
    assert not result.ok
    assert result.problem is not None and result.problem.startswith(problem), result.problem


async def test_export_verifies_streamed_from_file(trail: AuditTrail, clock: FakeClock) -> None:
    await fill(trail, clock, 50)
    data = await export_bytes(trail, "acme")
    result = verify_records(iter_export_records(io.BytesIO(data)))
    assert result.ok and result.records == 50 and result.anchored
    # The same file reformatted by some tool is still read (whole).
    pretty = json.dumps(json.loads(data), indent=2, ensure_ascii=False).encode()
    assert verify_records(iter_export_records(io.BytesIO(pretty))).records == 50
    compact = json.dumps(json.loads(data), ensure_ascii=False).encode()
    assert verify_records(iter_export_records(io.BytesIO(compact))).records == 50


async def test_export_filtered_by_since_is_verified_from_its_first_record(
    trail: AuditTrail, clock: FakeClock
) -> None:
    start = clock.now
    await fill(trail, clock, 20)
    data = await export_bytes(trail, "acme", since=start + 10)
    result = verify_records(iter_export_records(io.BytesIO(data)))
    assert result.ok and result.records == 10 and result.first_seq == 11
    assert result.anchored is False  # its first prev_hash was taken on trust
    strict = verify_records(json.loads(data), trust_start=False)
    assert strict.problem == "records before 11 removed without a checkpoint (removed)"
    # ...but a change inside it is still caught.
    recs = json.loads(data)
    recs[3]["actor"] = "forged"
    assert verify_records(recs).problem == "record 14: hash mismatch (changed)"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "not valid JSON"),
        (b'{"seq": 1}', "not a JSON array"),
        (b"[\n{}\n", "truncated"),
        (b'[\n{"seq":1},\n{oops\n]\n', "line 3"),
        (b"[\n]\n[\n", "after the closing bracket"),
    ],
)
def test_iter_export_records_rejects_bad_files(data: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        list(iter_export_records(io.BytesIO(data)))


def test_verify_records_on_non_records() -> None:
    assert verify_records([]).ok
    assert verify_records([{"seq": 1}]).problem == "record 1: not a valid audit record (changed)"
    assert verify_records([{"seq": True}]).problem == "record 1: not a valid audit record (changed)"
