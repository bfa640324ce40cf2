"""Per-request log fields: every line of a request names it (and its tenant), none of the next."""

from __future__ import annotations

import asyncio
import contextvars
import io
import logging
from collections.abc import Iterator

import orjson
import pytest
import structlog

from gateway.logs import context as log_context
from gateway.logs.setup import configure_logging


def lines(captured: str) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in captured.splitlines() if line.startswith("{")]


@pytest.fixture
def output() -> Iterator[io.StringIO]:
    """The gateway's real logging chain, writing to a buffer instead of stdout."""
    buffer = io.StringIO()
    configure_logging()
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(buffer))
    (handler,) = logging.getLogger().handlers
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(buffer)
    yield buffer
    configure_logging()


def test_a_request_s_lines_carry_its_id_and_tenant_and_the_next_request_starts_clean(
    output: io.StringIO,
) -> None:
    log = structlog.get_logger("test")
    log_context.begin_request("req-1")
    log.warning("before_auth")
    log_context.bind(tenant="acme")
    log.warning("after_auth")
    log_context.begin_request("req-2")  # the same task, the next keep-alive request
    log.warning("next_request")
    first, second, third = lines(output.getvalue())
    assert first["request_id"] == "req-1" and "tenant" not in first
    assert second["request_id"] == "req-1" and second["tenant"] == "acme"
    assert third["request_id"] == "req-2" and "tenant" not in third


def test_an_event_s_own_field_wins_and_stdlib_records_get_the_fields_too(
    output: io.StringIO,
) -> None:
    log_context.begin_request("req-7")
    structlog.get_logger("test").warning("explicit", request_id="other")
    logging.getLogger("gateway.some_module").warning("from the standard library")
    explicit, stdlib = lines(output.getvalue())
    assert explicit["request_id"] == "other"
    assert stdlib["request_id"] == "req-7"


async def test_tasks_see_their_own_request_only() -> None:
    async def handle(request_id: str, tenant: str) -> dict[str, str]:
        log_context.begin_request(request_id)
        await asyncio.sleep(0)  # the other request runs in between
        log_context.bind(tenant=tenant)
        await asyncio.sleep(0)
        return log_context.current_fields()

    one, two = await asyncio.gather(handle("a", "acme"), handle("b", "globex"))
    assert one == {"request_id": "a", "tenant": "acme"}
    assert two == {"request_id": "b", "tenant": "globex"}


def test_bind_tenant_is_bind_with_the_tenant_field() -> None:
    async def request() -> tuple[dict[str, str], dict[str, str]]:
        log_context.begin_request("req-1")
        log_context.bind_tenant("acme")
        bound = log_context.current_fields()
        log_context.bind(tenant="acme")
        return bound, log_context.current_fields()

    bound, via_bind = asyncio.run(request())
    assert bound == via_bind == {"request_id": "req-1", "tenant": "acme"}

    def fresh() -> dict[str, str]:
        log_context.bind_tenant("acme")  # nothing bound yet in this context: a new dict
        return log_context.current_fields()

    assert contextvars.Context().run(fresh) == {"tenant": "acme"}
