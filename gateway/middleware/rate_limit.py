"""SPEC §3.4 / §3.7 / §8: the rate-limit stages and the login-failure response check.

``limit_pre_auth`` counts ``rate_limits.pre_auth`` by client IP before any token is verified
(the cheap shed); ``limit_route`` counts the route's policies once user and acting tenant are
known, and on ``login: true`` routes refuses locked IPs and usernames before the upstream sees
the attempt. ``check_login_outcome`` runs on the upstream's status: 401/403 are failures.
"""

from __future__ import annotations

import asyncio
import email.errors
import email.policy
import json
from collections.abc import Mapping
from email.message import Message
from email.parser import BytesParser
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.context import RequestContext
from gateway.errors import BadRequest, LockedOut, PayloadTooLarge, RateLimited
from gateway.middleware.webhook import DEFAULT_MAX_BODY as WEBHOOK_MAX_BODY
from gateway.proxy import send_continue
from gateway.ratelimit.headers import POLICY_HEADER, STATE_HEADER, retry_after, state_header
from gateway.ratelimit.limiter import Verdict
from gateway.ratelimit.policies import LimitItem
from gateway.ratelimit.service import RateLimitRuntime

DEFAULT_MAX_BODY = 64 * 1024  # a login form or JSON body; routes may set max_body
# SECURITY: counted bodies are held in memory before any authentication; a route's large
# max_body (an upload route with a body: key) must not let a flood pin that much per request.
COUNTED_BODY_CAP = 1024 * 1024
_FAILURE_STATUSES = frozenset((401, 403))
_SAFE_METHODS = frozenset(("GET", "HEAD", "OPTIONS"))


def _checks(
    ctx: RequestContext, rl: RateLimitRuntime, items: tuple[LimitItem, ...], fields: Mapping[str, Any] | None
) -> list[tuple[LimitItem, str]]:
    method = ctx.request.method
    digest = rl.backend.hash
    checks = []
    # The items of one rule ("50/second;2000/minute") share one key object and sit side by side:
    # its value is read, canonicalised and hashed once, not once per item.
    last_key: object = None
    hashed: str | None = None
    for item in items:
        if not item.applies(method):
            continue
        if item.key is not last_key:
            last_key = item.key
            value = item.key.raw_value(ctx, fields)
            hashed = None if value is None else digest(value)
        if hashed is not None:
            checks.append((item, hashed))
    return checks


def _apply(ctx: RequestContext, verdict: Verdict | None) -> None:
    if verdict is None:  # on_store_failure: allow while the store is down
        return
    item = verdict.item
    headers = ctx.response_headers
    headers[POLICY_HEADER] = item.policy_header
    headers[STATE_HEADER] = state_header(item.policy, verdict.remaining, verdict.reset_in)
    if not verdict.allowed:
        wait = retry_after(verdict.reset_in)
        raise RateLimited(
            "Too many requests; retry later",
            headers={"Retry-After": str(wait)},
            extensions={"retry_after": wait},
        )


async def limit_pre_auth(ctx: RequestContext) -> web.StreamResponse | None:
    rl = ctx.runtime.rate_limits
    if rl is None or not rl.compiled.pre_auth:
        return None
    checks = _checks(ctx, rl, rl.compiled.pre_auth, None)
    if checks:
        verdict = await rl.backend.check(checks, rl.compiled, "pre_auth", state=False)
        if verdict is not None and not verdict.allowed:
            _apply(ctx, verdict)  # raises; an allowed pre_auth item adds no headers of its own
    return None


async def limit_route(ctx: RequestContext) -> web.StreamResponse | None:
    rl = ctx.runtime.rate_limits
    route = ctx.route
    if rl is None or route is None:
        return None
    compiled = rl.compiled
    items = compiled.by_route.get(route.name, ())
    if not items and route.name not in compiled.needs_body:
        return None  # the common case: nothing to count, nothing to read
    fields = await read_body_fields(ctx) if route.name in compiled.needs_body else None
    if fields is not None and fields.repeated:
        counted = {i.key.name for i in items if i.key.needs_body}
        if route.login:
            counted.add(compiled.login.username_field)
        if fields.repeated & counted:
            # SECURITY: the gateway would count one value while the upstream may act on another
            # (first vs last wins), so each attempt would get a fresh bucket and no lockout.
            raise BadRequest("A rate-limited body field is given more than once")
    checks = _checks(ctx, rl, items, fields)
    limited = rl.backend.check(checks, compiled, "route") if checks else _nothing()
    if not route.login:
        _apply(ctx, await limited)
        return None
    username = fields.get(compiled.login.username_field) if fields is not None else None
    subjects = rl.lockouts.subjects(ctx.client_ip, username if isinstance(username, str) else None)
    ctx.login_subjects = subjects
    verdict, locked = await asyncio.gather(limited, rl.lockouts.locked_for(subjects))
    if locked is not None:
        if verdict is not None:  # SPEC §8: every response of a route with a policy carries them
            ctx.response_headers[POLICY_HEADER] = verdict.item.policy_header
            ctx.response_headers[STATE_HEADER] = state_header(
                verdict.item.policy, verdict.remaining, verdict.reset_in
            )
        wait = retry_after(locked)
        # SECURITY: credential stuffing — a locked IP or username never reaches the upstream.
        raise LockedOut(
            "Too many failed attempts; retry later",
            headers={"Retry-After": str(wait)},
            extensions={"retry_after": wait},
        )
    _apply(ctx, verdict)
    return None


async def _nothing() -> None:
    return None


async def read_body_fields(ctx: RequestContext) -> Fields:
    """Read the body whole (bounded), keep the exact bytes for the proxy, parse JSON or form."""
    request = ctx.request
    route = ctx.route
    limit = DEFAULT_MAX_BODY
    if route is not None:  # a webhook route keeps its own default: the signature stage reuses ctx.body
        if route.auth == "webhook":
            limit = route.max_body or WEBHOOK_MAX_BODY
        else:
            limit = min(route.max_body or DEFAULT_MAX_BODY, COUNTED_BODY_CAP)
    if ctx.body is None:
        if (request.content_length or 0) > limit:
            raise PayloadTooLarge("The request body is larger than this route allows")
        if not request.body_exists:
            return Fields()
        send_continue(ctx)  # every check that needs no body has passed
        chunks, size = [], 0
        async for chunk in request.content.iter_chunked(64 * 1024):
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge("The request body is larger than this route allows")
            chunks.append(chunk)
        ctx.body = b"".join(chunks)  # forwarded intact by the proxy
    return parse_fields(request.headers.get("Content-Type", ""), ctx.body)


class Fields(dict[str, Any]):
    """Top-level body fields; ``repeated`` names the fields given more than once with
    different values (an upstream may read the first where the gateway would count the last)."""

    repeated: frozenset[str] = frozenset()


def _fields(pairs: list[tuple[str, Any]]) -> Fields:
    fields = Fields()
    repeated = set()
    for name, value in pairs:
        if name in fields and fields[name] != value:
            repeated.add(name)
        fields[name] = value
    fields.repeated = frozenset(repeated)
    return fields


def _json_fields(body: bytes, charset: str | None) -> Fields | None:
    """A JSON object's fields, parsed as leniently as Python upstreams parse (NaN, UTF-16/32
    and BOM detection, or the declared charset); None when the body is not a JSON object."""
    try:
        text: str | bytes = body.decode(charset) if charset else body
        value = json.loads(text, object_pairs_hook=_fields)
    except (ValueError, LookupError, RecursionError):
        return None
    return value if isinstance(value, Fields) else None


def _form_fields(body: bytes, charset: str | None) -> Fields:
    charset = charset or "utf-8"
    try:
        text = body.rstrip().decode(charset)
        return _fields(parse_qsl(text, keep_blank_values=True, encoding=charset))
    except (UnicodeError, LookupError, ValueError):
        return Fields()


def _multipart_fields(content_type: str, body: bytes, charset: str | None) -> Fields:
    head = f"Content-Type: {content_type}\r\n\r\n".encode("latin-1", "replace")
    try:
        message = BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
        pairs = []
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            if not isinstance(name, str) or part.get_filename() is not None:
                continue
            payload = part.get_payload(decode=True) or b""
            pairs.append((name, payload.decode(part.get_content_charset() or charset or "utf-8")))
        return _fields(pairs)
    except (UnicodeError, LookupError, ValueError, TypeError, email.errors.MessageError):
        return Fields()


def parse_fields(content_type: str, body: bytes) -> Fields:
    """Top-level fields of a JSON object, a urlencoded form or a multipart form; {} otherwise.

    ``content_type`` is the whole header (charset and boundary included). SECURITY: the
    counted value must be the one the upstream acts on, or each request gets a fresh bucket:
    the declared charset is honoured, JSON is parsed as leniently as Python's own parser, and
    a body of another (or no) declared type still counts when it is a JSON object."""
    header = Message()
    header["Content-Type"] = content_type or "application/octet-stream"
    mime = header.get_content_type()
    charset = header.get_param("charset")
    charset = charset if isinstance(charset, str) and charset else None
    if mime == "application/x-www-form-urlencoded":
        return _form_fields(body, charset)
    if mime == "multipart/form-data":
        return _multipart_fields(content_type, body, charset)
    return _json_fields(body, charset) or Fields()


async def check_login_outcome(
    ctx: RequestContext, status: int, headers: CIMultiDict[str] | CIMultiDictProxy[str]
) -> None:
    """RESPONSE_CHECKS entry: upstream 401/403 on a login route count as failures."""
    subjects = ctx.login_subjects
    rl = ctx.runtime.rate_limits
    if subjects is None or rl is None:
        return
    if status in _FAILURE_STATUSES:
        await rl.lockouts.record_failure(subjects, ctx.request_id)
    elif 200 <= status < 400 and ctx.request.method not in _SAFE_METHODS:
        # SECURITY: only a login attempt can succeed. A GET of the login page (a 200 with a
        # body naming the victim) must not wipe the victim's failure count.
        await rl.lockouts.record_success(subjects)
