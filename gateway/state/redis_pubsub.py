"""Redis pub/sub subscriptions and the one error constructor of the Redis backend.

Reconnect policy (a choice, see ``Subscription``): a subscription does NOT silently reconnect.
When its connection breaks (Redis restarted, network cut) iteration raises StoreUnavailable
and the subscription is closed. A silent reconnect would hide the messages published while
it was down; raising makes the caller resubscribe and then reload, which closes that gap.
A hung (SIGSTOP'd) Redis is not detected by an idle subscription - nothing is due to arrive -
so consumers also resync periodically (``SyncedSnapshot`` does), and those reads time out.
"""

from __future__ import annotations

import contextlib

from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from gateway.errors import StoreUnavailable
from gateway.state.base import Subscription


def unavailable(exc: BaseException) -> StoreUnavailable:
    # SECURITY: the detail may reach a client (problem+json) and logs: name the error class
    # only - no address, no URL, never the password. The cause stays chained for operators.
    return StoreUnavailable(f"redis state store unavailable ({type(exc).__name__})")


class RedisSubscription(Subscription):
    """One dedicated pub/sub connection for a set of channels."""

    def __init__(self, pubsub: PubSub, prefix: str, registry: set[RedisSubscription]) -> None:
        self._pubsub = pubsub
        self._prefix = prefix
        self._registry = registry
        self._closed = False

    async def start(self, channels: list[str]) -> None:
        """Subscribe; on failure release the connection and let the error propagate."""
        try:
            await self._pubsub.subscribe(*channels)
        except BaseException:
            await self.close()
            raise
        self._registry.add(self)

    async def __anext__(self) -> tuple[str, bytes]:
        while not self._closed:
            try:
                msg = await self._pubsub.get_message(ignore_subscribe_messages=True, timeout=None)
            except (RedisError, OSError) as exc:
                if self._closed:  # close() from another task while we were reading
                    break
                await self.close()
                raise unavailable(exc) from exc
            if msg is not None and msg["type"] == "message":
                channel = msg["channel"].decode()[len(self._prefix) :]
                return channel, msg["data"]
        raise StopAsyncIteration

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._registry.discard(self)
        # The connection may already be dead; closing it must not fail the caller.
        with contextlib.suppress(RedisError, OSError):
            await self._pubsub.aclose()
