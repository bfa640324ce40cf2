"""``/_gateway/ready`` after a store reset (SPEC App. C): degraded until the write-back is done."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

import orjson

from gateway.endpoints.health import ready
from gateway.runtime import GatewayStatus


async def answer(status: GatewayStatus) -> dict[str, Any]:
    switches = SimpleNamespace(healthy=True, version=3)
    runtime = SimpleNamespace(status=status, services=SimpleNamespace(killswitches=switches), generation=1)
    response: Any = await ready(SimpleNamespace(runtime=runtime))  # type: ignore[arg-type]
    assert response.status == 200
    return dict(orjson.loads(response.body))


async def test_ready_is_degraded_while_a_store_reset_is_written_back() -> None:
    status = GatewayStatus("i1", "redis://x", snapshot_loaded=True, store_healthy=True)
    status.store_checked_at = time.time()
    body = await answer(status)
    assert body["state"] == "ready" and body["store"]["restoring"] is False
    status.store_restoring = True  # the store answers, but forgot state this instance holds
    body = await answer(status)
    assert body["state"] == "degraded" and body["store"]["restoring"] is True
    status.store_restoring = False
    assert (await answer(status))["state"] == "ready"
