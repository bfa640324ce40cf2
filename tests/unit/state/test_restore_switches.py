"""Store reset and kill switch extensions (SPEC App. C, review finding MEDIUM 4): the write-back
keeps the later expiry of a switch, whichever instance's copy lands first, so an extended
switch never lifts early. Against a real redis-server."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
import pytest

from gateway.killswitch.registry import SWITCHES_KEY
from tests.support.redis_server import RedisServer
from tests.unit.state import test_restore
from tests.unit.state.test_restore import Instance, spec

instances = test_restore.instances  # the fixture: instances on the shared Redis


def expires_in(instance: Instance, switch_id: str) -> float:
    """What ``instance`` enforces (memory only): seconds until the switch lifts."""
    index = instance.switches.index
    assert index is not None
    (expiry,) = [s.expires_at for s in index.switches if s.id == switch_id]
    assert expiry is not None
    return expiry - time.time()


@pytest.mark.parametrize("order", ["laggard-first", "laggard-last", "together"])
async def test_an_extension_survives_a_write_back_in_any_order(
    instances: Any, shared_redis_server: RedisServer, order: str
) -> None:
    a: Instance = await instances("a")
    b: Instance = await instances("b")
    switch = await a.switches.engage(spec("finance"), ttl=60, actor="t")
    await b.switches.reload()
    await b.stop_refreshing()  # b lags: it never sees the extension
    await a.stop_refreshing()
    extended = await a.switches.extend(switch.id, 7200)
    assert extended is not None and expires_in(a, switch.id) > 7000
    assert expires_in(b, switch.id) < 120

    shared_redis_server.flushall()
    if order == "laggard-first":
        await b.restorer.probe()
        await a.restorer.probe()
    elif order == "laggard-last":
        await a.restorer.probe()
        await b.restorer.probe()
    else:
        await asyncio.gather(a.restorer.probe(), b.restorer.probe())

    record = orjson.loads((await a.store.hgetall(SWITCHES_KEY))[switch.id])
    assert record["expires_at"] == extended.expires_at and record["version"] == extended.version
    c: Instance = await instances("c")
    assert expires_in(c, switch.id) > 7000  # a fresh instance enforces the extension
    assert expires_in(a, switch.id) > 7000
    for _ in range(3):  # the laggard learns it once the marker renewal reaches it
        await b.restorer.probe()
    await b.switches.reload()
    assert expires_in(b, switch.id) > 7000
