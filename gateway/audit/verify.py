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

Anchors (``gateway.audit.anchors``), checked when the verifier is given the trusted keys:

- every ``audit.anchor`` record must carry a valid signature by a trusted key over the record
  just before it (its seq and hash): else *forged*, or *rewritten* when the signature is good but
  the chain under it changed - the first record whose hash differs from what was signed is named;
- a trimmed prefix counts as vouched for only if a later valid anchor signs the vouching record
  (anyone with write access to the store can append a checkpoint; nobody else can sign it);
- the instance's own last anchor (stored trails): the record it signed must still have the
  signed hash, the anchor record must still be there, and the trail must reach it (else
  *truncated*);
- stored trails (``unsigned_before``): a record older than that cutoff (``AuditTrail`` uses
  ``Anchoring.unsigned_grace``, about three ``audit.anchor_every``: the anchoring loop signs
  every head at least once a period) must lie before a valid anchor. A trail whose anchors
  were all removed (and the rest rehashed and renumbered) then fails on every instance, not
  only on the one whose local last anchor it lost;
- offline, ``require_signed`` (``audit verify --file --jwks``) makes a file fail unless its
  last record is a valid anchor signing the record just before it: everything in the file is
  then signed, so nothing can be edited after the last anchor, nor the anchor dropped. Exports
  always end with such an anchor (written at export time; see ``AuditTrail.export``).
"""

from __future__ import annotations

import csv
import io
import json
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import IO, Any

import orjson

from gateway.audit.anchors import (
    ANCHOR_EVENT,
    MAX_DIGESTS,
    AnchorInvalid,
    AnchorKeys,
    Statement,
    check_anchor_record,
    digest,
)
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
    anchors: int = 0
    """Anchors whose signatures were checked and found good."""
    signed_through: int | None = None
    """The highest seq a good anchor signed (the chain up to it is vouched for by the key)."""
    bad_seq: int | None = None
    """The first record found bad, when the verifier can name one."""
    last_anchor_revoked_at: str | None = None
    """The last good anchor's key was revoked at this time (it signed before that)."""


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

    def __init__(
        self,
        *,
        tenant: str | None = None,
        trust_start: bool = False,
        anchor_keys: AnchorKeys | None = None,
        last_anchor: Mapping[str, Any] | None = None,
        require_signed: bool = False,
        unsigned_before: str | None = None,
    ) -> None:
        self._tenant = tenant
        self._trust_start = trust_start
        self.records = 0
        self.problem: str | None = None
        self.bad_seq: int | None = None
        self._first_seq: int | None = None
        self._first_prev = ""
        self._vouched = False
        self._vouched_by = 0
        self._last_seq = 0
        self._last_hash = ""
        self._keys = anchor_keys
        self._require_signed = require_signed
        self.anchors = 0
        self.signed_through: int | None = None
        self._last_anchor_seq = 0
        self._unsigned_before = unsigned_before
        self._unsigned_old: int | None = None  # the first old record no valid anchor signed yet
        self._unsigned_from: int | None = None  # the first record after the last valid anchor
        self.last_anchor_revoked_at: str | None = None
        # Hashes of the latest records: enough to compare with any anchor's digests.
        self._recent: deque[tuple[int, str]] = deque(maxlen=MAX_DIGESTS + 2)
        self._local: Statement | None = None
        self._local_record_seq = 0
        self._local_signature = ""
        self._local_hash: object = None
        if last_anchor is not None and anchor_keys is not None:
            self._take_local(last_anchor, anchor_keys)

    def _take_local(self, last_anchor: Mapping[str, Any], keys: AnchorKeys) -> None:
        try:
            self._local = keys.verify(last_anchor.get("signature"))
            self._local_record_seq = int(last_anchor["record_seq"])
        except (AnchorInvalid, KeyError, TypeError, ValueError):
            self._fail("this instance's record of its last anchor does not verify (local state changed)")
            return
        self._local_signature = str(last_anchor["signature"])
        self._local_hash = last_anchor.get("record_hash")

    @property
    def first_seq(self) -> int | None:
        return self._first_seq

    @property
    def last_hash(self) -> str:
        """The hash of the last record fed without a problem ("" before the first)."""
        return self._last_hash

    def _fail(self, problem: str, bad_seq: int | None = None) -> bool:
        self.problem = problem
        self.bad_seq = bad_seq
        return False

    def feed(self, rec: Any, position: int | None = None) -> bool:
        if self.problem is not None:
            return False
        where = position if position is not None else self._last_seq + 1
        if not _valid_shape(rec):
            return self._fail(f"record {where}: not a valid audit record (changed)", where)
        seq: int = rec["seq"]
        if position is not None and seq != position:
            return self._fail(f"record {position}: its seq field says {seq} (reordered or changed)", position)
        if self._tenant is None:
            self._tenant = rec["tenant"]
        elif rec["tenant"] != self._tenant:
            return self._fail(f"record {seq}: filed under another tenant (moved or changed)", seq)
        try:
            actual = compute_hash(rec)
        except (TypeError, ValueError):
            actual = None
        # SECURITY: any edit to any field (including prev_hash and seq) changes this hash.
        if actual != rec["hash"]:
            return self._fail(f"record {seq}: hash mismatch (changed)", seq)
        if self._first_seq is None:
            self._first_seq, self._first_prev = seq, rec["prev_hash"]
            if seq == 1 and rec["prev_hash"] != GENESIS_HASH:
                return self._fail("record 1: prev_hash is not the genesis value (changed)")
            self._vouched = seq == 1
        else:
            if seq > self._last_seq + 1:
                # Stored trails: position checks already caught reordering, so a gap is a removal.
                cause = "removed" if position is not None else "removed or reordered"
                return self._fail(f"seq gap after {self._last_seq} ({cause})", self._last_seq + 1)
            if seq <= self._last_seq:
                return self._fail(
                    f"record {seq} follows record {self._last_seq} (reordered or duplicated)", seq
                )
            # SECURITY: the link to the previous record; removal or reordering breaks it.
            if rec["prev_hash"] != self._last_hash:
                return self._fail(
                    f"record {seq}: prev_hash does not match record {self._last_seq} (removed or reordered)",
                    seq,
                )
        if not self._vouched and rec["event"] in VOUCHING_EVENTS and isinstance(rec["details"], dict):
            details = rec["details"]
            # SECURITY: a trimmed prefix is accepted only if a chained record names its last hash.
            if (
                details.get("removed_through_seq") == self._first_seq - 1
                and details.get("removed_last_hash") == self._first_prev
            ):
                self._vouched, self._vouched_by = True, seq
        if self._keys is not None and not self._check_anchors(rec):
            return False
        self.records += 1
        self._last_seq, self._last_hash = seq, rec["hash"]
        return True

    # -- anchors ---------------------------------------------------------------------------
    def _check_anchors(self, rec: dict[str, Any]) -> bool:
        seq: int = rec["seq"]
        self._recent.append((seq, rec["hash"]))
        if rec["event"] == ANCHOR_EVENT:
            assert self._keys is not None
            try:
                statement = check_anchor_record(rec, self._keys)
            except AnchorInvalid as exc:
                # SECURITY: an anchor nobody can check is worth nothing; it is a forgery.
                return self._fail(f"record {seq}: anchor {exc} (forged or tampered)", seq)
            if statement.seq != seq - 1 or statement.hash != rec["prev_hash"]:
                return self._locate(statement, seq)
            self.anchors += 1
            self.signed_through = statement.seq
            self._last_anchor_seq = seq
            self._unsigned_old = None  # the chain links every earlier record to what it signed
            self._unsigned_from = None
            self.last_anchor_revoked_at = self._keys.signer_revoked_at(rec["details"].get("signature"))
            return self._check_local(rec)
        if self._unsigned_from is None:
            self._unsigned_from = seq
        if (
            self._unsigned_old is None
            and self._unsigned_before is not None
            and (not isinstance(rec["time"], str) or rec["time"] < self._unsigned_before)
        ):
            self._unsigned_old = seq
        return self._check_local(rec)

    def _check_local(self, rec: dict[str, Any]) -> bool:
        seq: int = rec["seq"]
        # The instance's own anchor must still stand where it wrote it (checked above as an anchor).
        if (
            self._local is not None
            and seq == self._local_record_seq
            and (
                rec["event"] != ANCHOR_EVENT
                or not isinstance(rec["details"], dict)
                or rec["details"].get("signature") != self._local_signature
                or (self._local_hash is not None and rec["hash"] != self._local_hash)
            )
        ):
            return self._fail(
                f"record {seq}: the anchor this instance wrote here is gone (removed or rewritten)", seq
            )
        return True

    def _locate(self, statement: Statement, anchor_seq: int) -> bool:
        """Fail naming the first record that differs from what the anchor at ``anchor_seq``
        signed. An anchor no longer right after the head it signed means records were removed
        or inserted before it (and renumbered); otherwise a record was rewritten."""
        signer = f"the anchor at record {anchor_seq}"
        cause = "rewritten" if statement.seq == anchor_seq - 1 else "records removed or inserted"
        current = dict(self._recent)
        start = self._first_seq or 1
        if start <= statement.previous != self._last_anchor_seq:
            return self._fail(
                f"record {statement.previous}: the anchor that stood there is gone ({signer} "
                "follows it; removed or rewritten)",
                statement.previous,
            )
        for seq in range(statement.first, statement.seq + 1):
            if seq < start:
                continue  # before this trail or file begins: nothing to compare
            have = current.get(seq)
            if have is None:
                return self._fail(f"record {seq}: missing, but {signer} signed it (removed)", seq)
            if digest(have) != statement.digest_of(seq):
                if seq == max(statement.first, start) and seq > self._last_anchor_seq + 1:
                    low = max(self._last_anchor_seq + 1, start)
                    return self._fail(
                        f"records {low}-{seq}: {cause} somewhere in this range ({signer} signed "
                        f"record {statement.seq} with another hash)",
                        low,
                    )
                return self._fail(
                    f"record {seq}: {cause} (its hash is not the one {signer} signed; "
                    "the hashes after it were recomputed)",
                    seq,
                )
        return self._fail(
            f"record {statement.seq}: {cause} ({signer} signed it with another hash)", statement.seq
        )

    def _finish_anchors(self) -> None:
        if self.problem is not None or self._keys is None:
            return
        if self._local is not None and self._last_seq < self._local_record_seq:
            self._fail(
                f"the trail ends at record {self._last_seq} but this instance anchored it through "
                f"record {self._local_record_seq} (truncated)",
                self._last_seq + 1,
            )
        elif self._vouched_by and not self._trust_start and (self.signed_through or 0) < self._vouched_by:
            # SECURITY: an appended, unsigned checkpoint would otherwise excuse any cut prefix.
            self._fail(
                f"records before {self._first_seq} removed: the record {self._vouched_by} that vouches "
                "for it is signed by no anchor (truncated)",
                self._first_seq,
            )
        elif self._unsigned_old is not None:
            # SECURITY: with every anchor removed and the chain rehashed nothing else is left
            # to catch the rewrite; honest trails are signed within one anchor period.
            self._fail(
                f"record {self._unsigned_old}: older than the anchoring period but signed by no "
                "anchor (anchors removed or the trail rewritten)",
                self._unsigned_old,
            )
        elif self._require_signed and not self.anchors:
            self._fail("no valid audit.anchor record: nothing in it is signed")
        elif self._require_signed and self._unsigned_from is not None:
            # SECURITY: records after the last anchor could be edited (and rehashed) at will.
            self._fail(
                f"records {self._unsigned_from}-{self._last_seq} are signed by no anchor: a signed "
                "export ends with an anchor over its last record (edited, or its anchor removed)",
                self._unsigned_from,
            )

    def finish(self, *, expected_last: int | None = None) -> VerifyResult:
        """The verdict; ``expected_last`` is the store's highest seq (stored trails only)."""
        first, last = self._first_seq, (self._last_seq or None)
        if self.problem is None:
            if expected_last is not None and expected_last > self._last_seq:
                self._fail(
                    f"records {self._last_seq + 1}-{expected_last} missing (removed)"
                    if self.records
                    else f"all records through {expected_last} missing (removed)",
                    self._last_seq + 1,
                )
            elif first is not None and not self._vouched and not self._trust_start:
                self._fail(f"records before {first} removed without a checkpoint (removed)", first)
        self._finish_anchors()
        anchored = self._vouched or first is None
        return VerifyResult(
            self.problem is None,
            self.records,
            self.problem,
            first,
            last,
            anchored,
            self.anchors,
            self.signed_through,
            self.bad_seq,
            self.last_anchor_revoked_at,
        )


def verify_records(
    records: Iterable[Mapping[str, Any]],
    *,
    trust_start: bool = True,
    anchor_keys: AnchorKeys | None = None,
) -> VerifyResult:
    """Verify records in export order (e.g. a parsed ``audit export --format json`` file).

    ``trust_start``: a file that starts mid-chain (exported with ``since``, or a trail trimmed
    by retention without its checkpoint in the file) is verified from its first record on,
    and the result says ``anchored=False``. With ``trust_start=False`` that is a failure.
    ``anchor_keys`` (from the gateway's JWKS): every anchor is checked, and a file with no
    valid anchor fails, since nothing in it would be signed.
    """
    checker = ChainVerifier(
        trust_start=trust_start, anchor_keys=anchor_keys, require_signed=anchor_keys is not None
    )
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
