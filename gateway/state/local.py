"""``local:PATH`` - durable single-node state in ``PATH/state.sqlite3``.

Single process by contract (SPEC §14: with local state, workers must be 1), so pub/sub is an
in-process fan-out and atomicity comes for free: the event loop runs one method at a time and
no method awaits between its read and its write.

The sqlite calls are synchronous on purpose: they are indexed point reads and small writes
(microseconds, plus one fsync per write transaction), cheaper than a thread hop per call;
``log_read`` yields between batches so a long export never holds the loop for long.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Collection, Iterator, Mapping
from pathlib import Path
from typing import Any

from gateway.errors import StoreUnavailable
from gateway.state.base import StateStore, Subscription, merge_rank, tombstone_key, ttl_ms
from gateway.state.inprocess import LocalSubscription

_SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value BLOB NOT NULL, expires_at REAL)
    WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS kv_expiry ON kv (expires_at) WHERE expires_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS hashes (key TEXT, field TEXT, value BLOB NOT NULL,
    PRIMARY KEY (key, field)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS sets (key TEXT, member TEXT, PRIMARY KEY (key, member)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS log_heads (stream TEXT PRIMARY KEY, last_seq INTEGER NOT NULL)
    WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS log_records (stream TEXT, seq INTEGER, record BLOB NOT NULL,
    PRIMARY KEY (stream, seq)) WITHOUT ROWID;
"""
_LOG_BATCH = 500
_PURGE_EVERY = 256  # writes between sweeps of expired keys (reads already hide them)
# Prefix match by substr, not LIKE: LIKE is ASCII case-insensitive and treats % and _ specially.
_KEYS_SQL = (
    "SELECT key FROM kv WHERE substr(key, 1, ?) = ? AND (expires_at IS NULL OR expires_at > ?) "
    "UNION SELECT key FROM hashes WHERE substr(key, 1, ?) = ? "
    "UNION SELECT key FROM sets WHERE substr(key, 1, ?) = ? ORDER BY key"
)
_DELETE_PREFIX_SQL = (
    "DELETE FROM kv WHERE substr(key, 1, ?) = ?",
    "DELETE FROM hashes WHERE substr(key, 1, ?) = ?",
    "DELETE FROM sets WHERE substr(key, 1, ?) = ?",
)


class LocalStore(StateStore):
    kind = "local"
    shared = False

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._dir = Path(path)
        self._db: sqlite3.Connection | None = None
        self._subs: set[LocalSubscription] = set()
        self._writes = 0

    def describe(self) -> str:
        return f"local:{self._dir}"

    async def open(self) -> None:
        if self._db is not None:
            return
        try:
            # SECURITY: the store holds MFA secrets and signing keys: owner-only directory.
            self._dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            db = sqlite3.connect(self._dir / "state.sqlite3", isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            # FULL: a revocation, kill switch or audit record acknowledged to an operator must
            # survive a power cut, not just a process crash; writes are rare enough to afford it.
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA busy_timeout=2000")
            db.executescript(_SCHEMA)
            os.chmod(self._dir / "state.sqlite3", 0o600)
        except (sqlite3.Error, OSError) as exc:
            raise StoreUnavailable(f"local state store unavailable ({type(exc).__name__})") from exc
        self._db = db
        self._purge_expired()

    async def close(self) -> None:
        for sub in list(self._subs):
            await sub.close()
        if self._db is not None:
            db, self._db = self._db, None
            db.close()

    async def ping(self) -> None:
        self._run("SELECT 1")

    # -- plumbing --------------------------------------------------------------------------
    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise StoreUnavailable("local state store is not open")
        return self._db

    def _run(self, sql: str, params: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
        try:
            return self._conn().execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"local state store unavailable ({type(exc).__name__})") from exc

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; BEGIN IMMEDIATE takes the write lock before reading."""
        db = self._conn()
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"local state store unavailable ({type(exc).__name__})") from exc
        self._writes += 1
        if self._writes % _PURGE_EVERY == 0:
            self._purge_expired()

    def _purge_expired(self) -> None:
        self._run("DELETE FROM kv WHERE expires_at <= ?", (time.time(),))

    @staticmethod
    def _live_value(db: sqlite3.Connection, key: str) -> bytes | None:
        row = db.execute(
            "SELECT value FROM kv WHERE key = ? AND (expires_at IS NULL OR expires_at > ?)",
            (key, time.time()),
        ).fetchone()
        return None if row is None else bytes(row[0])

    # -- plain values ----------------------------------------------------------------------
    async def get(self, key: str) -> bytes | None:
        rows = self._run(
            "SELECT value FROM kv WHERE key = ? AND (expires_at IS NULL OR expires_at > ?)",
            (key, time.time()),
        )
        return bytes(rows[0][0]) if rows else None

    async def set(
        self, key: str, value: bytes, *, ttl: float | None = None, only_if_absent: bool = False
    ) -> bool:
        ms = ttl_ms(ttl)
        expires = None if ms is None else time.time() + ms / 1000
        with self._write() as db:
            if only_if_absent and self._live_value(db, key) is not None:
                return False
            db.execute("INSERT OR REPLACE INTO kv VALUES (?, ?, ?)", (key, value, expires))
        return True

    async def delete(self, *keys: str) -> int:
        count, now = 0, time.time()
        with self._write() as db:
            for key in set(keys):
                live = db.execute(
                    "DELETE FROM kv WHERE key = ? AND (expires_at IS NULL OR expires_at > ?)",
                    (key, now),
                ).rowcount
                db.execute("DELETE FROM kv WHERE key = ?", (key,))
                live += db.execute("DELETE FROM hashes WHERE key = ?", (key,)).rowcount
                live += db.execute("DELETE FROM sets WHERE key = ?", (key,)).rowcount
                count += live > 0
        return count

    async def incr(self, key: str, amount: int = 1, *, ttl: float | None = None) -> int:
        ms = ttl_ms(ttl)
        with self._write() as db:
            current = self._live_value(db, key)
            if current is None:
                new = amount
                expires = None if ms is None else time.time() + ms / 1000
                row = (key, b"%d" % new, expires)
                db.execute("INSERT OR REPLACE INTO kv VALUES (?, ?, ?)", row)
            else:
                try:
                    new = int(current) + amount
                except ValueError:
                    raise ValueError("stored value is not an integer") from None
                db.execute("UPDATE kv SET value = ? WHERE key = ?", (b"%d" % new, key))
        return new

    # -- hashes ----------------------------------------------------------------------------
    async def hset(self, key: str, field: str, value: bytes) -> None:
        with self._write() as db:
            db.execute("INSERT OR REPLACE INTO hashes VALUES (?, ?, ?)", (key, field, value))

    async def hget(self, key: str, field: str) -> bytes | None:
        rows = self._run("SELECT value FROM hashes WHERE key = ? AND field = ?", (key, field))
        return bytes(rows[0][0]) if rows else None

    async def hgetall(self, key: str) -> dict[str, bytes]:
        rows = self._run("SELECT field, value FROM hashes WHERE key = ?", (key,))
        return {field: bytes(value) for field, value in rows}

    async def hdel(self, key: str, *fields: str) -> int:
        with self._write() as db:
            return sum(
                db.execute("DELETE FROM hashes WHERE key = ? AND field = ?", (key, f)).rowcount
                for f in set(fields)
            )

    # -- sets ------------------------------------------------------------------------------
    async def sadd(self, key: str, *members: str) -> int:
        with self._write() as db:
            return sum(
                db.execute("INSERT OR IGNORE INTO sets VALUES (?, ?)", (key, m)).rowcount
                for m in set(members)
            )

    async def srem(self, key: str, *members: str) -> int:
        with self._write() as db:
            return sum(
                db.execute("DELETE FROM sets WHERE key = ? AND member = ?", (key, m)).rowcount
                for m in set(members)
            )

    async def smembers(self, key: str) -> builtins.set[str]:
        return {m for (m,) in self._run("SELECT member FROM sets WHERE key = ?", (key,))}

    # -- append-only logs ------------------------------------------------------------------
    async def log_append(self, stream: str, record: bytes) -> int:
        with self._write() as db:
            (seq,) = db.execute(
                "INSERT INTO log_heads VALUES (?, 1) ON CONFLICT (stream) "
                "DO UPDATE SET last_seq = last_seq + 1 RETURNING last_seq",
                (stream,),
            ).fetchone()
            db.execute("INSERT INTO log_records VALUES (?, ?, ?)", (stream, seq, record))
        return int(seq)

    async def log_read(
        self, stream: str, *, start_seq: int = 1, end_seq: int | None = None
    ) -> AsyncIterator[tuple[int, bytes]]:
        last = end_seq if end_seq is not None else 2**63 - 1
        while start_seq <= last:
            rows = self._run(
                "SELECT seq, record FROM log_records WHERE stream = ? AND seq BETWEEN ? AND ? "
                "ORDER BY seq LIMIT ?",
                (stream, start_seq, last, _LOG_BATCH),
            )
            for seq, record in rows:
                yield int(seq), bytes(record)
            if len(rows) < _LOG_BATCH:
                return
            start_seq = int(rows[-1][0]) + 1
            await asyncio.sleep(0)  # let requests run between batches of a long export

    async def log_length(self, stream: str) -> int:
        rows = self._run("SELECT last_seq FROM log_heads WHERE stream = ?", (stream,))
        return int(rows[0][0]) if rows else 0

    async def log_trim(self, stream: str, upto_seq: int) -> int:
        with self._write() as db:
            return db.execute(
                "DELETE FROM log_records WHERE stream = ? AND seq <= ?", (stream, upto_seq)
            ).rowcount

    async def log_streams(self, prefix: str) -> list[str]:
        sql = "SELECT stream FROM log_heads WHERE substr(stream, 1, ?) = ? ORDER BY stream"
        return [s for (s,) in self._run(sql, (len(prefix), prefix))]

    # -- key listing -----------------------------------------------------------------------
    async def keys(self, prefix: str) -> list[str]:
        params = (len(prefix), prefix)
        rows = self._run(_KEYS_SQL, (*params, time.time(), *params, *params))
        return [k for (k,) in rows]

    async def delete_prefix(self, prefix: str) -> int:
        found = await self.keys(prefix)
        if not found:
            return 0
        params = (len(prefix), prefix)
        with self._write() as db:
            for sql in _DELETE_PREFIX_SQL:
                db.execute(sql, params)
        return len(found)

    # -- merge primitives (one write transaction each) -----------------------------------------
    async def compare_and_set(self, key: str, expected: bytes | None, value: bytes) -> bytes | None:
        with self._write() as db:
            current = self._live_value(db, key)
            if current != expected:
                return current
            db.execute("INSERT OR REPLACE INTO kv VALUES (?, ?, NULL)", (key, value))
        return value

    async def hash_compare_and_set(
        self, key: str, field: str, expected: bytes | None, value: bytes
    ) -> bytes | None:
        with self._write() as db:
            row = db.execute("SELECT value FROM hashes WHERE key = ? AND field = ?", (key, field)).fetchone()
            current = None if row is None else bytes(row[0])
            if current != expected:
                return current
            db.execute("INSERT OR REPLACE INTO hashes VALUES (?, ?, ?)", (key, field, value))
        return value

    async def set_max(self, key: str, value: int) -> int:
        with self._write() as db:
            current = self._live_value(db, key)
            try:
                stored = 0 if current is None else int(current)
            except ValueError:
                raise ValueError("stored value is not an integer") from None
            if value <= stored:
                return stored
            db.execute("INSERT OR REPLACE INTO kv VALUES (?, ?, NULL)", (key, b"%d" % value))
        return value

    async def set_keep_later(self, key: str, value: bytes, ttl: float) -> bool:
        expires = time.time() + (ttl_ms(ttl) or 0) / 1000
        with self._write() as db:
            row = db.execute(
                "SELECT expires_at FROM kv WHERE key = ? AND (expires_at IS NULL OR expires_at > ?)",
                (key, time.time()),
            ).fetchone()
            if row is not None and (row[0] is None or row[0] >= expires):
                return False
            db.execute("INSERT OR REPLACE INTO kv VALUES (?, ?, ?)", (key, value, expires))
        return True

    async def hash_merge(
        self,
        key: str,
        entries: Mapping[str, bytes],
        removed: Collection[str] = (),
        *,
        tombstone_ttl: float = 3600.0,
        keep_later: bool = False,
    ) -> int:
        # Tombstones live in kv rows (one per field) so they expire like Redis's tombstone hash.
        tombs = tombstone_key(key)
        expires = time.time() + (ttl_ms(tombstone_ttl) or 0) / 1000
        added = 0
        with self._write() as db:
            for field in removed:
                db.execute("DELETE FROM hashes WHERE key = ? AND field = ?", (key, field))
                db.execute("INSERT OR REPLACE INTO kv VALUES (?, ?, ?)", (f"{tombs}:{field}", b"1", expires))
            for field, value in entries.items():
                if self._live_value(db, f"{tombs}:{field}") is not None:
                    continue
                inserted = db.execute(
                    "INSERT OR IGNORE INTO hashes VALUES (?, ?, ?)", (key, field, value)
                ).rowcount
                if not inserted and keep_later and self._ranks_above(db, key, field, value):
                    db.execute("UPDATE hashes SET value = ? WHERE key = ? AND field = ?", (value, key, field))
                    inserted = 1
                added += inserted
        return added

    @staticmethod
    def _ranks_above(db: sqlite3.Connection, key: str, field: str, value: bytes) -> bool:
        """``hash_merge(keep_later=True)``: the later expiry wins, then the higher version."""
        new = merge_rank(value)
        if new is None:
            return False
        row = db.execute("SELECT value FROM hashes WHERE key = ? AND field = ?", (key, field)).fetchone()
        current = None if row is None else merge_rank(bytes(row[0]))
        return current is None or new > current

    # -- pub/sub ---------------------------------------------------------------------------
    async def publish(self, channel: str, message: bytes) -> None:
        self._conn()  # a closed store refuses, like Redis would
        for sub in list(self._subs):
            if channel in sub.channels:
                sub.deliver(channel, message)

    async def subscribe(self, *channels: str) -> Subscription:
        self._conn()
        if not channels:
            raise ValueError("subscribe needs at least one channel")
        return LocalSubscription(self._subs, frozenset(channels))
