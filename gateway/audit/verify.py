"""Chain verification: one streaming checker for stored trails and for exported JSON files.

What a trail must look like, record by record (constant memory: only the previous record's
seq and hash are kept):

- every record has the Appendix B fields, all belonging to one tenant;
- its ``hash`` is the SHA-256 of its canonical JSON (else: *changed*);
- seqs are consecutive (a gap: *removed*; a step back: *reordered*) and each ``prev_hash``
  equals the previous record's ``hash`` (else: *removed or reordered*);
- the first record is either seq 1 with the genesis ``prev_hash`` (64 zeros), or starts after
  a removed prefix that a later ``audit.checkpoint`` / ``tenant.purged`` record in the same
  chain vouches for: its details say ``removed_through_seq == first.seq - 1`` and
  ``removed_last_hash == first.prev_hash``. Retention and purge write that record *before*
  trimming, so the vouching record is always part of the verified chain.

Offline (``verify_records``, for ``audit verify --file``) a file may legitimately start mid-chain:
an export filtered by ``since`` does. Without a vouching record the first ``prev_hash`` is then
taken on trust (``anchored=False`` in the result); everything after it is still checked. For a
stored trail (``AuditTrail.verify``) an unvouched start is a failure, and the trail must also
reach the store's highest seq, so removing the newest records is detected too.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import IO, Any

import orjson

from gateway.audit.export import csv_value
from gateway.audit.record import FIELDS, GENESIS_HASH, VOUCHING_EVENTS, compute_hash


@dataclass(frozen=True, slots=True)
class VerifyResult:
    ok: bool
    records: int
    problem: str | None = None
    first_seq: int | None = None
    last_seq: int | None = None
    anchored: bool = True
    """False when the first record's prev_hash was taken on trust (offline, mid-chain file)."""


def _valid_shape(rec: object) -> bool:
    if not isinstance(rec, dict) or set(rec) != set(FIELDS):
        return False
    seq = rec["seq"]
    return (
        isinstance(seq, int)
        and not isinstance(seq, bool)
        and seq >= 1
        and isinstance(rec["hash"], str)
        and isinstance(rec["prev_hash"], str)
        and isinstance(rec["tenant"], str)
    )


class ChainVerifier:
    """Feed records in order; ``feed`` returns False once a problem is found."""

    def __init__(self, *, tenant: str | None = None, trust_start: bool = False) -> None:
        self._tenant = tenant
        self._trust_start = trust_start
        self.records = 0
        self.problem: str | None = None
        self._first_seq: int | None = None
        self._first_prev = ""
        self._vouched = False
        self._last_seq = 0
        self._last_hash = ""

    def _fail(self, problem: str) -> bool:
        self.problem = problem
        return False

    def feed(self, rec: Any, position: int | None = None) -> bool:
        if self.problem is not None:
            return False
        where = position if position is not None else self._last_seq + 1
        if not _valid_shape(rec):
            return self._fail(f"record {where}: not a valid audit record (changed)")
        seq: int = rec["seq"]
        if position is not None and seq != position:
            return self._fail(f"record {position}: its seq field says {seq} (reordered or changed)")
        if self._tenant is None:
            self._tenant = rec["tenant"]
        elif rec["tenant"] != self._tenant:
            return self._fail(f"record {seq}: filed under another tenant (moved or changed)")
        try:
            actual = compute_hash(rec)
        except (TypeError, ValueError):
            actual = None
        # SECURITY: any edit to any field (including prev_hash and seq) changes this hash.
        if actual != rec["hash"]:
            return self._fail(f"record {seq}: hash mismatch (changed)")
        if self._first_seq is None:
            self._first_seq, self._first_prev = seq, rec["prev_hash"]
            if seq == 1 and rec["prev_hash"] != GENESIS_HASH:
                return self._fail("record 1: prev_hash is not the genesis value (changed)")
            self._vouched = seq == 1
        else:
            if seq > self._last_seq + 1:
                # Stored trails: position checks already caught reordering, so a gap is a removal.
                cause = "removed" if position is not None else "removed or reordered"
                return self._fail(f"seq gap after {self._last_seq} ({cause})")
            if seq <= self._last_seq:
                return self._fail(f"record {seq} follows record {self._last_seq} (reordered or duplicated)")
            # SECURITY: the link to the previous record; removal or reordering breaks it.
            if rec["prev_hash"] != self._last_hash:
                return self._fail(
                    f"record {seq}: prev_hash does not match record {self._last_seq} (removed or reordered)"
                )
        if not self._vouched and rec["event"] in VOUCHING_EVENTS and isinstance(rec["details"], dict):
            details = rec["details"]
            # SECURITY: a trimmed prefix is accepted only if a chained record names its last hash.
            if (
                details.get("removed_through_seq") == self._first_seq - 1
                and details.get("removed_last_hash") == self._first_prev
            ):
                self._vouched = True
        self.records += 1
        self._last_seq, self._last_hash = seq, rec["hash"]
        return True

    def finish(self, *, expected_last: int | None = None) -> VerifyResult:
        """The verdict; ``expected_last`` is the store's highest seq (stored trails only)."""
        first, last = self._first_seq, (self._last_seq or None)
        if self.problem is None:
            if expected_last is not None and expected_last > self._last_seq:
                self.problem = (
                    f"records {self._last_seq + 1}-{expected_last} missing (removed)"
                    if self.records
                    else f"all records through {expected_last} missing (removed)"
                )
            elif first is not None and not self._vouched and not self._trust_start:
                self.problem = f"records before {first} removed without a checkpoint (removed)"
        anchored = self._vouched or first is None
        return VerifyResult(self.problem is None, self.records, self.problem, first, last, anchored)


def verify_records(records: Iterable[Mapping[str, Any]], *, trust_start: bool = True) -> VerifyResult:
    """Verify records in export order (e.g. a parsed ``audit export --format json`` file).

    ``trust_start``: a file that starts mid-chain (exported with ``since``, or a trail trimmed
    by retention without its checkpoint in the file) is verified from its first record on,
    and the result says ``anchored=False``. With ``trust_start=False`` that is a failure.
    """
    checker = ChainVerifier(trust_start=trust_start)
    for rec in records:
        if not checker.feed(dict(rec) if isinstance(rec, Mapping) and not isinstance(rec, dict) else rec):
            break
    return checker.finish()


_CSV_HEADER = ",".join(FIELDS).encode()
_CSV_JSON_FIELDS = frozenset(("seq", "details"))  # written as JSON; every other field is text


def iter_export_records(fp: IO[bytes]) -> Iterator[Any]:
    """Records of a JSON or CSV export file, streamed. JSON: line by line when it has the layout
    ``export`` writes (``[``, one record per line with a trailing comma, ``]``); a JSON array in
    any other layout is read whole. CSV: the header row of ``export``, then one record per row
    (see ``iter_csv_records``). ValueError when the file is neither, or breaks off mid-way."""
    start = fp.tell()
    first = fp.readline().strip()
    if first == _CSV_HEADER:
        fp.seek(start)
        yield from iter_csv_records(fp)
        return
    if first == b"[":
        yielded, closed = 0, False
        for number, line in enumerate(fp, start=2):
            text = line.strip()
            if not text:
                continue
            if closed:
                raise ValueError(f"export file line {number}: data after the closing bracket")
            if text == b"]":
                closed = True
                continue
            try:
                value = orjson.loads(text.removesuffix(b","))
            except orjson.JSONDecodeError:
                if yielded:
                    raise ValueError(f"export file line {number}: not a JSON record") from None
                break  # not our layout (e.g. pretty-printed): read it whole below
            yielded += 1
            yield value
        else:
            if not closed:
                raise ValueError("export file is truncated: no closing bracket")
            return
    fp.seek(start)
    try:
        value = json.load(fp)
    except ValueError:
        raise ValueError("the export file is not valid JSON") from None
    if not isinstance(value, list):
        raise ValueError("the export file is not a JSON array of audit records")
    yield from value


def iter_csv_records(fp: IO[bytes]) -> Iterator[dict[str, Any]]:
    """Records of a CSV export: the formula-safe mark removed (``csv_value``), ``seq`` and
    ``details`` read back as JSON, so each record hashes as it did when it was written."""
    rows = csv.reader(io.TextIOWrapper(fp, encoding="utf-8", newline=""))
    if tuple(next(rows, ())) != FIELDS:
        raise ValueError("the CSV export has no audit header row")
    for number, row in enumerate(rows, start=2):
        if len(row) != len(FIELDS):
            raise ValueError(f"export file line {number}: expected {len(FIELDS)} columns")
        record: dict[str, Any] = {}
        for name, cell in zip(FIELDS, row, strict=True):
            value = csv_value(cell)
            try:
                record[name] = json.loads(value) if name in _CSV_JSON_FIELDS and value is not None else value
            except ValueError:
                raise ValueError(f"export file line {number}: {name} is not JSON") from None
        yield record
