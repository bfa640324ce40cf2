"""``GET /admin/lockouts`` and ``DELETE /admin/lockouts?ip=…|username=…`` (SPEC §8, App. B).

Usernames are never stored in clear: the listing shows each locked username as its keyed hash,
and clearing by username hashes the given name the same way (after canonicalisation).

A ``gateway-viewer`` (read-only, watches the console) sees what the traffic view shows: IPs
truncated (/24, /48) and users as the access log's keyed pseudonym, never the full address or
the store's username hash. The listing is capped at ``MAX_LISTED`` (``truncated: true`` then):
one store read per lockout, polled by the console every few seconds.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Any

from aiohttp import web

from gateway.admin.auth import GATEWAY_ADMIN, INCIDENT_RESPONDER
from gateway.admin.context import ActorKey, AuditKey, RequestIdKey, RolesKey, RuntimeKey
from gateway.audit import SYSTEM_TRAIL
from gateway.errors import BadRequest
from gateway.http.json_body import json_response
from gateway.ratelimit.keys import canonical_username, ip_subject
from gateway.ratelimit.lockout import Subject
from gateway.redaction.processor import truncate_ip

MAX_LISTED = 500
_FULL_VIEW = frozenset((GATEWAY_ADMIN, INCIDENT_RESPONDER))  # they clear lockouts: they need the subject


def _pseudonymized(record: dict[str, Any], pseudonym: Callable[[str], str]) -> dict[str, Any]:
    subject = str(record["subject"])
    # An IPv6 client is locked by its /64 ("2001:db8:1:2::/64"): truncate the address part.
    shown = truncate_ip(subject.partition("/")[0]) if record["kind"] == "ip" else pseudonym(subject)
    return {**record, "subject": shown}


async def list_lockouts(request: web.Request) -> web.Response:
    runtime = request.app[RuntimeKey]()
    lockouts, truncated = await runtime.rate_limits.lockouts.list_bounded(MAX_LISTED)
    body: dict[str, Any] = {"lockouts": lockouts, "truncated": truncated, "pseudonymized": False}
    if not request[RolesKey] & _FULL_VIEW:
        # SECURITY: a viewer gets no full client address and no store key of a username.
        body["lockouts"] = [_pseudonymized(r, runtime.access_log.pseudonym) for r in lockouts]
        body["pseudonymized"] = True
    return json_response(body)


def _subject(request: web.Request) -> Subject:
    ip, username = request.query.get("ip"), request.query.get("username")
    if (ip is None) == (username is None):
        raise BadRequest("Give exactly one of ?ip= or ?username=")
    if ip is not None:
        try:
            return Subject("ip", ip_subject(str(ipaddress.ip_address(ip))))
        except ValueError:
            pass
        try:  # as listed: an IPv6 client is counted (and locked) by its /64
            network = ipaddress.ip_network(ip)
        except ValueError:
            network = None
        if isinstance(network, ipaddress.IPv6Network) and network.prefixlen == 64:
            return Subject("ip", str(network))
        raise BadRequest("'ip' must be an IP address (or an IPv6 /64 as listed)")
    assert username is not None
    if not canonical_username(username) or len(username) > 256:
        raise BadRequest("'username' must be a non-empty name")
    lockouts = request.app[RuntimeKey]().rate_limits.lockouts
    return Subject("user", lockouts.username_hash(username))


async def clear_lockout(request: web.Request) -> web.Response:
    subject = _subject(request)
    cleared = await request.app[RuntimeKey]().rate_limits.lockouts.clear(subject)
    await request.app[AuditKey].record(
        "ratelimit.lockout_cleared",
        tenants=[SYSTEM_TRAIL],
        actor=request[ActorKey],
        request_id=request[RequestIdKey],
        details={"kind": subject.kind, "subject": subject.id, "was_locked": cleared},
    )
    return json_response({"kind": subject.kind, "subject": subject.id, "cleared": cleared})


def add_lockout_routes(app: web.Application) -> None:
    app.router.add_get("/admin/lockouts", list_lockouts)
    app.router.add_delete("/admin/lockouts", clear_lockout)
