"""Pipeline stages: thin adapters, one per file, ordered in ``gateway.pipeline.PIPELINE``.

Every stage here has the one shape below (``gateway.pipeline`` says how the runner treats it)."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from aiohttp import web

from gateway.context import RequestContext

# ``None``: go on; a response: answer early; a coroutine: the stage has to wait, and the
# runner awaits it for one of those two (a coroutine, not any awaitable: see gateway.pipeline).
StageResult = web.StreamResponse | Coroutine[Any, Any, web.StreamResponse | None] | None
Stage = Callable[[RequestContext], StageResult]
