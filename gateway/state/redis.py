"""Redis state backend (``redis://``, ``rediss://``, ``redis+sentinel://``), shared by every
instance and worker.

Layout under the key prefix (default ``sgw:``): ``k:<key>`` values, hashes and sets;
``log:<stream>`` a Redis stream whose entry ids are ``<seq>-0``; ``logseq:<stream>`` that
stream's counter. Pub/sub channels are prefixed the same way.

Failure behaviour: short socket timeouts and no driver-level retries, so a dead or hung Redis
costs a caller at most about one ``socket_timeout``; a retried INCR or log append could
apply twice. Broken connections are dropped on failure and the pool reconnects on the next
call, so the same store object recovers after a Redis restart.
"""

from __future__ import annotations

import builtins
import functools
from collections.abc import AsyncIterator, Callable, Collection, Coroutine, Mapping
from typing import Any, Concatenate, ParamSpec, TypeVar

from redis.asyncio import BlockingConnectionPool, Redis, SSLConnection
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError, ResponseError

from gateway.errors import StoreUnavailable
from gateway.state.base import StateStore, Subscription, tombstone_key, ttl_ms
from gateway.state.redis_pubsub import RedisSubscription, unavailable
from gateway.state.redis_url import RedisTarget, parse_redis_url

P = ParamSpec("P")
R = TypeVar("R")

# INCR and XADD in one script so a seq is never taken without its record being written.
_LOG_APPEND = """
local seq = redis.call('INCR', KEYS[1])
redis.call('XADD', KEYS[2], seq .. '-0', 'r', ARGV[1])
return seq
"""
# The merge primitives of StateStore (see base.py), each one atomic script.
_COMPARE_AND_SET = """
local cur = redis.call('GET', KEYS[1])
if (ARGV[1] == '0' and not cur) or (ARGV[1] == '1' and cur == ARGV[2]) then
  redis.call('SET', KEYS[1], ARGV[3])
  return ARGV[3]
end
return cur
"""
_HASH_COMPARE_AND_SET = """
local cur = redis.call('HGET', KEYS[1], ARGV[2])
if (ARGV[1] == '0' and not cur) or (ARGV[1] == '1' and cur == ARGV[3]) then
  redis.call('HSET', KEYS[1], ARGV[2], ARGV[4])
  return ARGV[4]
end
return cur
"""
_SET_MAX = """
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
if cur == nil then return redis.error_reply('ERR value is not an integer') end
local v = tonumber(ARGV[1])
if v > cur then
  redis.call('SET', KEYS[1], ARGV[1])
  return ARGV[1]
end
return tostring(cur)
"""
_SET_KEEP_LATER = """
local left = redis.call('PTTL', KEYS[1])
if left == -1 or left >= tonumber(ARGV[2]) then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""
_HASH_MERGE = """
local keep_later = ARGV[2] == '1'
local n = tonumber(ARGV[3])
for i = 4, 3 + n do
  redis.call('HDEL', KEYS[1], ARGV[i])
  redis.call('HSET', KEYS[2], ARGV[i], '1')
end
if n > 0 then redis.call('PEXPIRE', KEYS[2], ARGV[1]) end
-- (expiry, version) of a JSON record, as base.merge_rank: no expiry ranks above any.
local function rank(raw)
  local ok, r = pcall(cjson.decode, raw)
  if not ok or type(r) ~= 'table' then return nil end
  local e, v = r['expires_at'], r['version']
  if e == nil or e == cjson.null then e = math.huge elseif type(e) ~= 'number' then return nil end
  if type(v) ~= 'number' then v = 0 end
  return e, v
end
local added = 0
for i = 4 + n, #ARGV, 2 do
  if redis.call('HEXISTS', KEYS[2], ARGV[i]) == 0 then
    if redis.call('HSETNX', KEYS[1], ARGV[i], ARGV[i + 1]) == 1 then
      added = added + 1
    elseif keep_later then
      local ne, nv = rank(ARGV[i + 1])
      if ne then
        local ce, cv = rank(redis.call('HGET', KEYS[1], ARGV[i]))
        if not ce or ne > ce or (ne == ce and nv > cv) then
          redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
          added = added + 1
        end
      end
    end
  end
end
return added
"""
_LOG_BATCH = 500
_SCAN_COUNT = 1000
_GLOB_SPECIAL = str.maketrans({c: "\\" + c for c in "\\*?[]"})


class _BlockingSentinelPool(SentinelConnectionPool, BlockingConnectionPool):
    """Sentinel master discovery with the blocking pool's wait-for-a-free-connection."""


def _guarded(
    method: Callable[Concatenate[RedisStore, P], Coroutine[Any, Any, R]],
) -> Callable[Concatenate[RedisStore, P], Coroutine[Any, Any, R]]:
    """Turn every driver/socket error into StoreUnavailable, the one failure callers see."""

    @functools.wraps(method)
    async def wrapper(self: RedisStore, *args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await method(self, *args, **kwargs)
        except ResponseError as exc:
            if "not an integer" in str(exc):
                raise ValueError("stored value is not an integer") from None
            raise unavailable(exc) from exc
        except (RedisError, OSError) as exc:
            raise unavailable(exc) from exc

    return wrapper


class RedisStore(StateStore):
    kind = "redis"
    shared = True

    def __init__(self, url: str | RedisTarget, *, prefix: str = "sgw:") -> None:
        self._target = parse_redis_url(url) if isinstance(url, str) else url
        self._prefix = prefix
        self._client: Redis | None = None
        self._sentinels: list[Redis] = []  # sentinel clients, closed with the store
        self._subs: set[RedisSubscription] = set()
        self._scripts: dict[str, AsyncScript] = {}

    def describe(self) -> str:
        return self._target.display

    async def open(self) -> None:
        if self._client is not None:
            return
        t = self._target
        kwargs: dict[str, Any] = dict(t.options)
        # No retries: see the module docstring. The failure callback still drops the broken
        # connection, so the next call reconnects.
        kwargs.update(retry=Retry(NoBackoff(), 0), username=t.username, password=t.password)
        # A blocking pool: a burst of callers waits for a free connection instead of failing
        # with "Too many connections" as the default pool does. On a hung Redis every busy
        # connection times out within socket_timeout, so twice that bounds the wait.
        kwargs.setdefault("max_connections", 64)
        kwargs["timeout"] = 2 * kwargs["socket_timeout"]
        if t.scheme == "redis+sentinel":
            assert t.service is not None
            sentinel_kwargs = {k: v for k, v in t.options.items() if k.startswith("socket_")}
            sentinel_kwargs.update(password=t.sentinel_password, retry=Retry(NoBackoff(), 0))
            sentinel = Sentinel(list(t.hosts), sentinel_kwargs=sentinel_kwargs)
            self._sentinels = list(sentinel.sentinels)
            self._client = sentinel.master_for(
                t.service, connection_pool_class=_BlockingSentinelPool, db=t.db, **kwargs
            )
        else:
            (host, port), *_ = t.hosts
            if kwargs.pop("ssl", False):  # pools take a connection class, not ssl=True
                kwargs["connection_class"] = SSLConnection
            pool = BlockingConnectionPool(host=host, port=port, db=t.db, **kwargs)
            self._client = Redis.from_pool(pool)
        self._append_script = self._client.register_script(_LOG_APPEND)

    async def close(self) -> None:
        for sub in list(self._subs):
            await sub.close()
        clients, self._sentinels = self._sentinels, []
        if self._client is not None:
            clients.append(self._client)
            self._client = None
        for client in clients:
            await client.aclose()

    def _redis(self) -> Any:
        # Any: redis-py's asyncio hints are shared with the sync client (``Awaitable[T] | T``).
        if self._client is None:
            raise StoreUnavailable("redis state store is not open")
        return self._client

    def _k(self, key: str) -> str:
        return f"{self._prefix}k:{key}"

    @_guarded
    async def ping(self) -> None:
        await self._redis().ping()

    # -- plain values ----------------------------------------------------------------------
    @_guarded
    async def get(self, key: str) -> bytes | None:
        return await self._redis().get(self._k(key))

    @_guarded
    async def set(
        self, key: str, value: bytes, *, ttl: float | None = None, only_if_absent: bool = False
    ) -> bool:
        written = await self._redis().set(self._k(key), value, px=ttl_ms(ttl), nx=only_if_absent)
        return bool(written)

    @_guarded
    async def delete(self, *keys: str) -> int:
        if not keys:
            return 0
        return int(await self._redis().delete(*(self._k(k) for k in keys)))

    @_guarded
    async def incr(self, key: str, amount: int = 1, *, ttl: float | None = None) -> int:
        ms = ttl_ms(ttl)
        if ms is None:
            return int(await self._redis().incrby(self._k(key), amount))
        # MULTI: create at 0 with the ttl only if absent, then add - one atomic step.
        async with self._redis().pipeline(transaction=True) as pipe:
            pipe.set(self._k(key), 0, px=ms, nx=True).incrby(self._k(key), amount)
            _, value = await pipe.execute()
        return int(value)

    # -- hashes ----------------------------------------------------------------------------
    @_guarded
    async def hset(self, key: str, field: str, value: bytes) -> None:
        await self._redis().hset(self._k(key), field, value)

    @_guarded
    async def hget(self, key: str, field: str) -> bytes | None:
        return await self._redis().hget(self._k(key), field)

    @_guarded
    async def hgetall(self, key: str) -> dict[str, bytes]:
        raw = await self._redis().hgetall(self._k(key))
        return {f.decode(): v for f, v in raw.items()}

    @_guarded
    async def hdel(self, key: str, *fields: str) -> int:
        if not fields:
            return 0
        return int(await self._redis().hdel(self._k(key), *fields))

    # -- sets ------------------------------------------------------------------------------
    @_guarded
    async def sadd(self, key: str, *members: str) -> int:
        if not members:
            return 0
        return int(await self._redis().sadd(self._k(key), *members))

    @_guarded
    async def srem(self, key: str, *members: str) -> int:
        if not members:
            return 0
        return int(await self._redis().srem(self._k(key), *members))

    @_guarded
    async def smembers(self, key: str) -> builtins.set[str]:
        raw = await self._redis().smembers(self._k(key))
        return {m.decode() for m in raw}

    # -- append-only logs ------------------------------------------------------------------
    def _log_keys(self, stream: str) -> list[str]:
        return [f"{self._prefix}logseq:{stream}", f"{self._prefix}log:{stream}"]

    @_guarded
    async def log_append(self, stream: str, record: bytes) -> int:
        self._redis()
        return int(await self._append_script(keys=self._log_keys(stream), args=[record]))

    async def log_read(
        self, stream: str, *, start_seq: int = 1, end_seq: int | None = None
    ) -> AsyncIterator[tuple[int, bytes]]:
        last = "+" if end_seq is None else f"{end_seq}-0"
        start = max(start_seq, 1)
        while end_seq is None or start <= end_seq:
            batch = await self._xrange(self._log_keys(stream)[1], f"{start}-0", last)
            for entry_id, fields in batch:
                yield int(entry_id.split(b"-", 1)[0]), fields[b"r"]
            if len(batch) < _LOG_BATCH:
                return
            start = int(batch[-1][0].split(b"-", 1)[0]) + 1

    @_guarded
    async def _xrange(self, name: str, low: str, high: str) -> list[tuple[bytes, dict[bytes, bytes]]]:
        return await self._redis().xrange(name, low, high, count=_LOG_BATCH)

    @_guarded
    async def log_length(self, stream: str) -> int:
        return int(await self._redis().get(self._log_keys(stream)[0]) or 0)

    @_guarded
    async def log_trim(self, stream: str, upto_seq: int) -> int:
        if upto_seq < 1:
            return 0
        name = self._log_keys(stream)[1]
        # MINID needs Redis >= 6.2; approximate=False or Redis may keep whole radix nodes.
        return int(await self._redis().xtrim(name, minid=f"{upto_seq + 1}-0", approximate=False))

    @_guarded
    async def log_streams(self, prefix: str) -> list[str]:
        return await self._scan(f"{self._prefix}logseq:", prefix)

    # -- key listing -----------------------------------------------------------------------
    async def _scan(self, namespace: str, prefix: str) -> list[str]:
        # SCAN, never KEYS: KEYS blocks Redis for every other instance while it walks.
        pattern = (namespace + prefix).translate(_GLOB_SPECIAL) + "*"
        found: builtins.set[str] = set()  # SCAN may return a key more than once
        async for raw in self._redis().scan_iter(match=pattern, count=_SCAN_COUNT):
            found.add(raw.decode()[len(namespace) :])
        return sorted(found)

    @_guarded
    async def keys(self, prefix: str) -> list[str]:
        return await self._scan(self._k(""), prefix)

    @_guarded
    async def delete_prefix(self, prefix: str) -> int:
        found = await self._scan(self._k(""), prefix)
        deleted = 0
        for i in range(0, len(found), _SCAN_COUNT):
            batch = [self._k(k) for k in found[i : i + _SCAN_COUNT]]
            deleted += int(await self._redis().unlink(*batch))
        return deleted

    # -- merge primitives ------------------------------------------------------------------
    def _script(self, source: str) -> AsyncScript:
        script = self._scripts.get(source)
        if script is None:  # registered on first use: EVALSHA, reloaded by redis-py if flushed
            script = self._scripts[source] = self._redis().register_script(source)
        return script

    @_guarded
    async def compare_and_set(self, key: str, expected: bytes | None, value: bytes) -> bytes | None:
        args: list[str | bytes] = ["0", b""] if expected is None else ["1", expected]
        stored = await self._script(_COMPARE_AND_SET)(keys=[self._k(key)], args=[*args, value])
        return None if stored is None else bytes(stored)

    @_guarded
    async def hash_compare_and_set(
        self, key: str, field: str, expected: bytes | None, value: bytes
    ) -> bytes | None:
        args: list[str | bytes] = ["0", field, b""] if expected is None else ["1", field, expected]
        script = self._script(_HASH_COMPARE_AND_SET)
        stored = await script(keys=[self._k(key)], args=[*args, value])
        return None if stored is None else bytes(stored)

    @_guarded
    async def set_max(self, key: str, value: int) -> int:
        return int(await self._script(_SET_MAX)(keys=[self._k(key)], args=[int(value)]))

    @_guarded
    async def set_keep_later(self, key: str, value: bytes, ttl: float) -> bool:
        ms = ttl_ms(ttl)
        return bool(await self._script(_SET_KEEP_LATER)(keys=[self._k(key)], args=[value, ms]))

    @_guarded
    async def hash_merge(
        self,
        key: str,
        entries: Mapping[str, bytes],
        removed: Collection[str] = (),
        *,
        tombstone_ttl: float = 3600.0,
        keep_later: bool = False,
    ) -> int:
        if not entries and not removed:
            return 0
        args: list[Any] = [ttl_ms(tombstone_ttl), "1" if keep_later else "0", len(removed), *removed]
        for field, value in entries.items():
            args += [field, value]
        keys = [self._k(key), self._k(tombstone_key(key))]
        return int(await self._script(_HASH_MERGE)(keys=keys, args=args))

    # -- pub/sub ---------------------------------------------------------------------------
    @_guarded
    async def publish(self, channel: str, message: bytes) -> None:
        await self._redis().publish(self._prefix + channel, message)

    @_guarded
    async def subscribe(self, *channels: str) -> Subscription:
        if not channels:
            raise ValueError("subscribe needs at least one channel")
        sub = RedisSubscription(self._redis().pubsub(), self._prefix, self._subs)
        await sub.start([self._prefix + c for c in channels])
        return sub
