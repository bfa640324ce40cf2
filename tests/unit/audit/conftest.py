"""Fixtures for the audit tests: both store backends, a controllable clock, and an honest way
to tamper with a stored trail (rewriting the backend's own storage, as an attacker with access
to the store would, with the seq counter left untouched)."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis.asyncio

from gateway.audit import AuditTrail
from gateway.audit import purge as purge_module
from gateway.errors import StoreUnavailable
from gateway.state import StateStore, open_store


@dataclass
class Backend:
    kind: str
    url: str
    path: Path | None = None

    async def rewrite(self, stream: str, rows: list[tuple[int, bytes]]) -> None:
        """Replace every stored record of ``stream`` with ``rows`` (seq, raw bytes)."""
        if self.kind == "local":
            assert self.path is not None
            db = sqlite3.connect(self.path / "state.sqlite3", isolation_level=None)
            try:
                db.execute("BEGIN IMMEDIATE")
                db.execute("DELETE FROM log_records WHERE stream = ?", (stream,))
                db.executemany("INSERT INTO log_records VALUES (?, ?, ?)", [(stream, s, r) for s, r in rows])
                db.execute("COMMIT")
            finally:
                db.close()
            return
        client = redis.asyncio.Redis.from_url(self.url)
        try:
            key = f"sgw:log:{stream}"
            await client.delete(key)
            for seq, raw in rows:
                await client.xadd(key, {"r": raw}, id=f"{seq}-0")
        finally:
            await client.aclose()


@pytest.fixture(params=["local", "redis"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "local":
        path = tmp_path / "state"
        return Backend("local", f"local:{path}", path)
    return Backend("redis", request.getfixturevalue("redis_url"))


@pytest.fixture
async def store(backend: Backend) -> AsyncIterator[StateStore]:
    async with open_store(backend.url) as opened:
        yield opened


class FlakyStore:
    """A real store whose named methods can be made to fail (``down`` fails everything); with
    ``lose_append_replies`` an append lands but the caller sees StoreUnavailable."""

    def __init__(self, inner: StateStore) -> None:
        self._inner = inner
        self.down = False
        self.failing: set[str] = set()
        self.lose_append_replies = 0

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if not callable(attr) or name == "describe":
            return attr
        if name == "log_read":
            return self._log_read

        async def call(*args: Any, **kwargs: Any) -> Any:
            if self.down or name in self.failing:
                raise StoreUnavailable("store down (test)")
            result = await attr(*args, **kwargs)
            if name == "log_append" and self.lose_append_replies:
                self.lose_append_replies -= 1
                raise StoreUnavailable("reply lost (test)")
            return result

        return call

    async def _log_read(self, *args: Any, **kwargs: Any) -> Any:
        if self.down:
            raise StoreUnavailable("store down (test)")
        async for row in self._inner.log_read(*args, **kwargs):
            yield row


class FakeClock:
    def __init__(self, now: float = 1_795_806_160.123) -> None:  # 2026-11-27T19:02:40.123Z
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def trail(store: StateStore, tmp_path: Path, clock: FakeClock) -> AsyncIterator[AuditTrail]:
    opened = AuditTrail(store, spool_dir=tmp_path / "spool", clock=clock)
    yield opened
    opened.close()


@pytest.fixture
def tenant_registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """An empty purge registry for this test (the real one is module-global)."""
    registry: list[str] = []
    monkeypatch.setattr(purge_module, "_TENANT_DATA", registry)
    yield registry


async def stored(store: StateStore, tenant: str) -> list[tuple[int, bytes]]:
    return [row async for row in store.log_read(f"audit:{tenant}")]


async def stored_records(store: StateStore, tenant: str) -> list[dict[str, Any]]:
    return [orjson.loads(raw) for _, raw in await stored(store, tenant)]


async def export_bytes(trail: AuditTrail, tenant: str, **kwargs: Any) -> bytes:
    return b"".join([chunk async for chunk in trail.export(tenant, **kwargs)])
