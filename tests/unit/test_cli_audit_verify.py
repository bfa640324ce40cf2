"""``audit verify --file --jwks`` (offline, in process): usage errors exit 1, a signed export
verifies (exit 0) and a rechained one is broken (exit 4) naming the first bad record."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.audit.anchors import AnchorKeys, Statement, sign
from gateway.audit.record import GENESIS_HASH, build_record, compute_hash
from gateway.auth.signing import SigningKey
from gateway.cli import main

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
