"""The kill switch registry runs its tests on both store backends."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.state import StateStore, open_store


@pytest.fixture(params=["local", "redis"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "local":
        return f"local:{tmp_path / 'state'}"
    return str(request.getfixturevalue("redis_url"))


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[StateStore]:
    async with open_store(store_url) as opened:
        yield opened
