"""The gateway's state store: one interface (``StateStore``), two backends (SPEC §14).

``open_store(url)`` picks the backend from ``state.url`` and returns it unopened; call
``await store.open()`` (or use ``async with``) in the app's ``cleanup_ctx``, never at import.
"""

from __future__ import annotations

from gateway.errors import StoreUnavailable
from gateway.state.base import StateStore, Subscription
from gateway.state.sync import SyncedSnapshot

__all__ = ["StateStore", "StoreUnavailable", "Subscription", "SyncedSnapshot", "open_store"]

_REDIS_SCHEMES = ("redis://", "rediss://", "redis+sentinel://")


def open_store(url: str, *, prefix: str = "sgw:") -> StateStore:
    """Build the store for ``url``: ``local:PATH`` (relative to the working directory),
    ``redis://``, ``rediss://`` or ``redis+sentinel://host:port[,host:port]/service[/db]``.
    ``prefix`` namespaces Redis keys and channels. ``ValueError`` for anything else."""
    if url.startswith("local:"):
        from gateway.state.local import LocalStore

        path = url.removeprefix("local:")
        if path.startswith("//"):  # tolerate local:///abs/path and local://rel/path
            path = path[2:]
        if not path:
            raise ValueError("state.url: local: needs a directory, e.g. local:./var/state")
        return LocalStore(path)
    if url.startswith(_REDIS_SCHEMES):
        # Imported lazily so local-only deployments never load the Redis driver.
        from gateway.state.redis import RedisStore

        return RedisStore(url, prefix=prefix)
    # SECURITY: echo only the scheme, never the rest of a URL that may carry a password.
    scheme = url.partition(":")[0] if ":" in url else "(none)"
    raise ValueError(
        f"state.url: unsupported scheme {scheme!r}; expected local:PATH, redis://, rediss:// "
        "or redis+sentinel://"
    )
