"""``audit verify --file --jwks`` (offline, in process): usage errors exit 1, a signed export
verifies (exit 0) and a rechained one is broken (exit 4) naming the first bad record."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.audit import verify_records
from gateway.audit.anchors import AnchorKeys, Statement, sign
from gateway.audit.record import GENESIS_HASH, build_record, compute_hash
from gateway.auth.signing import SigningKey
from gateway.cli.commands import main

KEY = SigningKey("k1", ec.generate_private_key(ec.SECP256R1()), 0.0)


def signed_trail(count: int = 4) -> list[dict[str, Any]]:
    """Records 1..count-1, then an anchor over them all (as the gateway writes it)."""
    records: list[dict[str, Any]] = []
    prev = GENESIS_HASH
    for seq in range(1, count + 1):
        time = f"2026-12-07T10:00:0{seq}.000Z"
        event, details = "grant.create", {"n": seq}
        if seq == count:
            digests = "".join(r["hash"][:8] for r in records)
            event, details = "audit.anchor", sign(Statement("acme", seq - 1, prev, time, 1, digests), KEY)
        rec = build_record(
            seq=seq,
            time=time,
            tenant="acme",
            event=event,
            actor="ops",
            request_id=None,
            incident=None,
            details=details,
            prev_hash=prev,
        )
        records.append(rec)
        prev = rec["hash"]
    return records


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    export, jwks = tmp_path / "export.json", tmp_path / "jwks.json"
    export.write_text(json.dumps(signed_trail()))
    jwks.write_text(json.dumps(AnchorKeys({"k1": KEY.public_key}).jwks()))
    return export, jwks


def test_a_signed_export_verifies(files: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    export, jwks = files
    assert main(["audit", "verify", "--file", str(export), "--jwks", str(jwks)]) == 0
    assert capsys.readouterr().out == "intact: 4 records, 1 anchors verified, signed through record 3\n"


def test_a_rechained_export_is_broken(files: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    export, jwks = files
    records = json.loads(export.read_text())
    records[1]["actor"] = "someone-else"
    for index in range(1, len(records)):
        records[index]["prev_hash"] = records[index - 1]["hash"]
        records[index]["hash"] = compute_hash(records[index])
    export.write_text(json.dumps(records))
    assert main(["audit", "verify", "--file", str(export)]) == 0  # the hash chain alone is fooled
    capsys.readouterr()
    assert main(["audit", "verify", "--file", str(export), "--jwks", str(jwks), "--json"]) == 4
    assert json.loads(capsys.readouterr().out)["first_bad_seq"] == 2


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--tenant", "acme", "--jwks", "j.json"], "--jwks goes with --file"),
        (["--file", "EXPORT", "--jwks", "missing.json"], "cannot read a JWKS"),
        (["--file", "EXPORT", "--jwks", "EXPORT"], "cannot read a JWKS"),
    ],
)
def test_usage_errors_exit_1(
    argv: list[str], message: str, files: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    export, _ = files
    argv = [str(export) if a == "EXPORT" else a for a in argv]
    assert main(["audit", "verify", *argv]) == 1
    assert message in capsys.readouterr().err


def layout_trail(layout: str) -> list[dict[str, Any]]:
    """Records by ``layout``: ``r`` a plain record, ``a`` an anchor over everything before it."""
    records: list[dict[str, Any]] = []
    prev, first = GENESIS_HASH, 1
    for seq, kind in enumerate(layout, 1):
        time = f"2026-12-07T10:00:{seq:02d}.000Z"
        event, details = "grant.create", {"n": seq}
        if kind == "a":
            digests = "".join(r["hash"][:8] for r in records[first - 1 :])
            statement = Statement("acme", seq - 1, prev, time, first, digests, first if first > 1 else 0)
            event, details = "audit.anchor", sign(statement, KEY)
            first = seq
        rec = build_record(
            seq=seq,
            time=time,
            tenant="acme",
            event=event,
            actor="ops",
            request_id=None,
            incident=None,
            details=details,
            prev_hash=prev,
        )
        records.append(rec)
        prev = rec["hash"]
    return records


def rehash_from(records: list[dict[str, Any]], index: int) -> None:
    for i in range(index, len(records)):
        records[i]["prev_hash"] = records[i - 1]["hash"] if i else GENESIS_HASH
        records[i]["hash"] = compute_hash(records[i])


def test_an_export_whose_final_anchor_was_dropped_and_tail_edited_is_broken(
    files: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    # The review's MEDIUM 3: records 1-5, anchor 6, records 7-10, export anchor 11 dropped,
    # record 8 (after anchor 6) edited and the hashes after it recomputed.
    export, jwks = files
    records = layout_trail("rrrrrarrrra")
    assert verify_records(records, anchor_keys=AnchorKeys({"k1": KEY.public_key})).ok
    records = records[:-1]
    records[7]["actor"], records[7]["details"] = "nobody", {"n": "edited"}
    rehash_from(records, 7)
    export.write_text(json.dumps(records))
    assert main(["audit", "verify", "--file", str(export), "--jwks", str(jwks), "--json"]) == 4
    report = json.loads(capsys.readouterr().out)
    assert report["first_bad_seq"] == 7 and report["anchors"] == 1, report
    assert report["problem"].startswith("records 7-10 are signed by no anchor")


def test_an_export_that_does_not_end_with_its_anchor_is_broken(
    files: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    export, jwks = files
    export.write_text(json.dumps(layout_trail("rrarr")))  # even unedited: 4-5 are not signed
    assert main(["audit", "verify", "--file", str(export), "--jwks", str(jwks)]) == 4
    assert capsys.readouterr().out.startswith("BROKEN: records 4-5 are signed by no anchor")
    export.write_text(json.dumps(layout_trail("rrarra")))
    assert main(["audit", "verify", "--file", str(export), "--jwks", str(jwks)]) == 0
    assert capsys.readouterr().out == "intact: 6 records, 2 anchors verified, signed through record 5\n"


def revoked_jwks(path: Path, revoked_at: str) -> None:
    jwks = AnchorKeys({"k1": KEY.public_key}, {"k1": revoked_at}).jwks()
    assert jwks["keys"][0]["revoked_at"] == revoked_at
    path.write_text(json.dumps(jwks))


def test_an_export_signed_before_its_key_was_revoked_verifies_with_a_note(
    files: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    export, jwks = files
    export.write_text(json.dumps(layout_trail("rrarra")))
    revoked_jwks(jwks, "2026-12-07T11:00:00.000Z")
    assert main(["audit", "verify", "--file", str(export), "--jwks", str(jwks)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("intact: 6 records, 2 anchors verified")
    assert "note: the last anchor's key was revoked at 2026-12-07T11:00:00.000Z" in out


def test_an_export_signed_after_its_key_was_revoked_is_broken(
    files: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    export, jwks = files
    export.write_text(json.dumps(layout_trail("rrarra")))  # anchors signed at :03 and :06
    revoked_jwks(jwks, "2026-12-07T10:00:05.000Z")
    assert main(["audit", "verify", "--file", str(export), "--jwks", str(jwks), "--json"]) == 4
    report = json.loads(capsys.readouterr().out)
    assert report["first_bad_seq"] == 6
    assert (
        report["problem"]
        == "record 6: anchor signed by a revoked key after its revocation (forged or tampered)"
    )
