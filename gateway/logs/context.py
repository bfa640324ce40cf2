"""The fields every log line of one request carries (its id, its tenant once known).

One context variable holds one small dict per request. structlog's own contextvars helpers keep
a variable per key, and clearing them copies and walks the whole context: on the proxy path that
was a measurable share of a request, for two fields.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from contextvars import ContextVar
from typing import Any

_FIELDS: ContextVar[dict[str, str] | None] = ContextVar("gateway_log_fields", default=None)


def begin_request(request_id: str) -> None:
    """A new request on this task: the previous request's fields are gone (keep-alive
    connections run their requests one after another on one task)."""
    _FIELDS.set({"request_id": request_id})


def bind(**fields: str) -> None:
    """Add fields to the current request's lines (tasks it spawned see them too)."""
    current = _FIELDS.get()
    if current is None:
        _FIELDS.set(dict(fields))
    else:
        current.update(fields)


def bind_tenant(tenant: str) -> None:
    """``bind(tenant=tenant)``, without building keyword arguments (every authenticated request)."""
    current = _FIELDS.get()
    if current is None:
        _FIELDS.set({"tenant": tenant})
    else:
        current["tenant"] = tenant


def current_fields() -> dict[str, str]:
    return dict(_FIELDS.get() or {})


def merge_request_fields(
    logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: the request's fields, unless the event names them itself."""
    fields = _FIELDS.get()
    if fields:
        for key, value in fields.items():
            event_dict.setdefault(key, value)
    return event_dict
