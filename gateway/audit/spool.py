"""The local-disk spool that keeps audit writes while the state store is unreachable.

One file per process, ``audit-spool-<pid>-<random>.jsonl`` under the spool directory (0700),
mode 0600, JSON lines, each write fsync'd before ``record()`` returns - a spooled event survives
a crash of the gateway. The owner holds an exclusive ``flock`` on its file for its lifetime; a
file whose lock can be taken belongs to a process that is gone, and ``adopt_orphans`` takes it
over so its events are replayed too (each orphan is adopted by exactly one process).

Lines:
- ``{"op": "rec", "id", "tenant", "time", "event", "actor", "request_id", "incident",
  "details", "attempt"}`` - an event not yet in the store. ``time`` is the original event time;
  seq and prev_hash are assigned when the record is finally chained, at replay.
- ``{"op": "try", "id", "seq", "hash"}`` - written (and fsync'd) just before an append whose
  outcome may be lost with the connection.

``attempt``/``try`` make replay exactly-once where the store can tell: before re-appending, the
replayer looks at the seq it tried; if the record there has the hash it built, the earlier
append did land and is not repeated. If that seq has since been trimmed the outcome is unknown
and the event is appended again: a possible duplicate is preferred to a lost audit event.

A file is emptied (own) or removed (adopted) once all its events are in the store. A torn last
line (a crash mid-write, never acknowledged) is ignored.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

_PREFIX = "audit-spool-"


@dataclass(slots=True, eq=False)
class PendingRecord:
    """An event for one tenant's trail, before it has a seq and a hash."""

    tenant: str
    time: str
    event: str
    actor: str | None
    request_id: str | None
    incident: str | None
    details: dict[str, Any]
    attempt: tuple[int, str] | None = None
    """(seq, hash) of an append that may or may not have landed."""
    spool_id: int = 0
    source: _SpoolFile | None = field(default=None, repr=False)

    def line(self) -> dict[str, Any]:
        return {
            "op": "rec",
            "id": self.spool_id,
            "tenant": self.tenant,
            "time": self.time,
            "event": self.event,
            "actor": self.actor,
            "request_id": self.request_id,
            "incident": self.incident,
            "details": self.details,
            "attempt": list(self.attempt) if self.attempt else None,
        }


class _SpoolFile:
    def __init__(self, path: Path, fd: int, *, own: bool) -> None:
        self.path, self.fd, self.own = path, fd, own
        self.outstanding = 0
        self.next_id = 1

    def write(self, lines: list[dict[str, Any]]) -> None:
        data = b"".join(orjson.dumps(line) + b"\n" for line in lines)
        # One write on an O_APPEND descriptor, then fsync: the event is on disk before we return.
        view = memoryview(data)
        while view:
            written = os.write(self.fd, view)
            view = view[written:]
        os.fsync(self.fd)


def _load(fd: int) -> tuple[list[PendingRecord], int]:
    records: dict[int, PendingRecord] = {}
    with open(os.dup(fd), "rb") as fp:
        fp.seek(0)
        for raw in fp:
            try:
                line = orjson.loads(raw)
            except orjson.JSONDecodeError:
                continue  # a torn line from a crash mid-write
            if not isinstance(line, dict):
                continue
            try:
                if line.get("op") == "rec":
                    attempt = line.get("attempt")
                    records[int(line["id"])] = PendingRecord(
                        tenant=line["tenant"],
                        time=line["time"],
                        event=line["event"],
                        actor=line["actor"],
                        request_id=line["request_id"],
                        incident=line["incident"],
                        details=line["details"],
                        attempt=(int(attempt[0]), str(attempt[1])) if attempt else None,
                        spool_id=int(line["id"]),
                    )
                elif line.get("op") == "try" and line.get("id") in records:
                    records[line["id"]].attempt = (int(line["seq"]), str(line["hash"]))
            except (KeyError, TypeError, ValueError, IndexError):
                continue  # a line we did not write: skip it rather than block every replay
    next_id = max(records, default=0) + 1
    return [records[i] for i in sorted(records)], next_id


class Spool:
    """Pending audit events, in order, durable on local disk."""

    def __init__(self, directory: Path) -> None:
        self._dir = Path(directory)
        self._own: _SpoolFile | None = None
        self._queue: deque[PendingRecord] = deque()

    @property
    def pending(self) -> int:
        return len(self._queue)

    def _own_file(self) -> _SpoolFile:
        if self._own is None:
            # SECURITY: spooled events name users and tenants: owner-only directory and file.
            self._dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            path = self._dir / f"{_PREFIX}{os.getpid()}-{secrets.token_hex(4)}.jsonl"
            flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
            fd = os.open(path, flags, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self._own = _SpoolFile(path, fd, own=True)
        return self._own

    def add(self, records: list[PendingRecord]) -> None:
        """Append ``records`` durably (OSError if the disk refuses: nothing is queued then)."""
        target = self._own_file()
        for offset, rec in enumerate(records):
            rec.spool_id = target.next_id + offset
        target.write([rec.line() for rec in records])
        target.next_id += len(records)
        for rec in records:
            rec.source = target
            target.outstanding += 1
            self._queue.append(rec)

    def peek(self) -> PendingRecord | None:
        return self._queue[0] if self._queue else None

    def mark_try(self, rec: PendingRecord, seq: int, hash_: str) -> None:
        """Record durably that ``rec`` is about to be appended as ``seq`` with ``hash_``."""
        assert rec.source is not None
        rec.source.write([{"op": "try", "id": rec.spool_id, "seq": seq, "hash": hash_}])
        rec.attempt = (seq, hash_)

    def done(self, rec: PendingRecord) -> None:
        """``rec`` (the head of the queue) is in the store."""
        assert self._queue and self._queue[0] is rec
        self._queue.popleft()
        source = rec.source
        assert source is not None
        source.outstanding -= 1
        if source.outstanding:
            return
        if source.own:
            os.ftruncate(source.fd, 0)
            os.fsync(source.fd)
            source.next_id = 1
        else:
            source.path.unlink(missing_ok=True)
            os.close(source.fd)  # releases the flock

    def adopt_orphans(self) -> int:
        """Queue the events of spool files left by processes that are gone; returns how many."""
        if not self._dir.is_dir():
            return 0
        adopted = 0
        own = self._own.path if self._own else None
        for path in sorted(self._dir.glob(f"{_PREFIX}*.jsonl")):
            if path == own:
                continue
            try:
                fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CLOEXEC)
            except FileNotFoundError:
                continue  # adopted and finished by another process meanwhile
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)  # its process is alive (or another one adopted it)
                continue
            if not path.exists():  # finished by its adopter between our open and flock
                os.close(fd)
                continue
            records, next_id = _load(fd)
            source = _SpoolFile(path, fd, own=False)
            source.next_id = next_id
            if not records:
                path.unlink(missing_ok=True)
                os.close(fd)
                continue
            for rec in records:
                rec.source = source
            source.outstanding = len(records)
            self._queue.extend(records)
            adopted += len(records)
        return adopted

    def close(self) -> None:
        """Release the files; pending events stay on disk for the next process to adopt."""
        files = {rec.source for rec in self._queue if rec.source is not None}
        if self._own is not None:
            files.add(self._own)
        for source in files:
            with contextlib.suppress(OSError):
                os.close(source.fd)
        if self._own is not None and self._own.outstanding == 0:
            self._own.path.unlink(missing_ok=True)
        self._own = None
        self._queue.clear()
