"""The per-request context every pipeline stage reads and writes (and nothing else)."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aiohttp import web

from gateway.exchange import AnswerWriter, ServerRequest
from gateway.random_batches import RandomBatches

if TYPE_CHECKING:
    from gateway.auth.jwt import TokenMemo, VerifiedClaims
    from gateway.config.model import RouteConfig
    from gateway.ratelimit.deferred import Checks
    from gateway.ratelimit.lockout import Subject
    from gateway.routing import CanonicalTarget
    from gateway.runtime import Runtime
    from gateway.tenancy.grants import Grant
    from gateway.tracing.context import Trace

# SPEC §3: a client-chosen id is kept only when it is short and harmless in a log line.
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._~:-]{1,64}\Z")


_BATCH = 256  # ids made per os.urandom call: a system call per request was measurable
# The variant digit of a version 4 UUID (RFC 9562: binary 10xx) for each random hex digit.
_VARIANT = bytes.maketrans(b"0123456789abcdef", b"89ab89ab89ab89ab")
_ID = 37  # one id's text and the space after it in a batch's text
# (first hex digit of a run, its length, where it lands in the id's text): 8-4-3-3-12 of the 32
# random digits; digit 12 is replaced by the version (4), digit 16 is the variant's source.
_RUNS = ((0, 8, 0), (8, 4, 9), (13, 3, 15), (17, 3, 20), (20, 12, 24))


def _request_ids(h: str) -> list[str]:
    """Version 4 UUIDs in their usual text form from 32 hex digits each (the same 122 random
    bits as ``uuid4()``). The batch's text is written column by column (a strided copy per
    character position, each over the whole batch), then split once: a few dozen C-level
    operations per batch instead of a formatting per id."""
    n = len(h) // 32
    digits = h.encode("ascii")
    text = bytearray(b"-" * (_ID * n))  # the four dashes stay where no digit is written
    for first, length, at in _RUNS:
        for k in range(length):
            text[at + k :: _ID] = digits[first + k :: 32]
    text[14::_ID] = b"4" * n
    text[19::_ID] = digits[16::32].translate(_VARIANT)
    text[36::_ID] = b" " * n
    return text.decode("ascii").split()


_POOL = RandomBatches(16 * _BATCH, _request_ids)


def new_request_id() -> str:
    """A random (version 4) UUID in its usual text form, without building a ``uuid.UUID``:
    the same 122 random bits as ``uuid4()`` at a fraction of its cost (every request)."""
    return (_POOL.items or _POOL.refill()).pop()


def request_id_for(incoming: str | None) -> str:
    if incoming is not None and _REQUEST_ID_RE.match(incoming):
        return incoming
    return new_request_id()


_NO_TRACE: Trace = ("", "", "", None, None)


# init=False: the __init__ below takes every argument positionally and stores the other fields'
# defaults as constants. The generated one (keyword arguments, a test per default factory) cost
# about 2,500 instructions more per request (callgrind).
@dataclass(slots=True, init=False)
class RequestContext:
    request: ServerRequest  # aiohttp's web.BaseRequest or the lean listener's LeanRequest
    runtime: Runtime
    request_id: str
    client_ip: str
    peer_ip: str
    peer_trusted: bool
    started: float = field(default_factory=time.monotonic)
    target: CanonicalTarget | None = None
    route: RouteConfig | None = None
    response_headers: dict[str, str] = field(default_factory=dict)
    status: int = 0
    outcome: str | None = None  # why the request ended unanswered (the access line's "reason")
    refusal: str | None = None  # the problem type slug when the gateway refused the request
    ratelimit: str | None = None  # "limited" (a 429) or "shadow" (a shadow rule was over): the access line's
    upstream_url: str | None = None
    claims: VerifiedClaims | None = None  # set by authentication
    user: str | None = None  # set by authentication
    tenant: str | None = None  # the ACTING tenant: the token's, or the granting one (apply_tenancy)
    grant: Grant | None = None  # a support grant this request acts under (apply_tenancy)
    body: bytes | None = None  # a body the gateway had to read whole (webhook signatures)
    continue_sent: bool = False  # "100 Continue" already written
    killswitch_index: object | None = None  # the switch set this request was checked against
    login_subjects: list[Subject] | None = None  # login: true routes: IP and username counted
    # the pre_auth stage's hit, deferred to go with the route stage's in one store call
    # (gateway.ratelimit.deferred: settled alone whenever that cannot be, by
    # gateway.deferred_pre_auth)
    deferred_pre_auth: Checks | None = None
    downstream: AnswerWriter | None = None  # the lean listener's answer writer (None on aiohttp's)
    # W3C trace context (gateway.tracing.context: trace id, this span's id, the traceparent and
    # tracestate sent upstream, the trusted caller's span id); set by begin_request
    trace: Trace = _NO_TRACE
    killswitch_id: str | None = None  # the switch that refused this request (span attribute)
    # the connection's last bearer token and its digest (the listener's, handed over by
    # begin_request; None where the connection keeps none): the authentication stage's
    token_memo: TokenMemo | None = None

    def __init__(
        self,
        request: ServerRequest,
        runtime: Runtime,
        request_id: str,
        client_ip: str,
        peer_ip: str,
        peer_trusted: bool,
        response_headers: dict[str, str] | None = None,
        trace: Trace = _NO_TRACE,
        token_memo: TokenMemo | None = None,
    ) -> None:
        self.request = request
        self.runtime = runtime
        self.request_id = request_id
        self.client_ip = client_ip
        self.peer_ip = peer_ip
        self.peer_trusted = peer_trusted
        self.started = time.monotonic()
        self.target = None
        self.route = None
        self.response_headers = {} if response_headers is None else response_headers
        self.status = 0
        self.outcome = None
        self.refusal = None
        self.ratelimit = None
        self.upstream_url = None
        self.claims = None
        self.user = None
        self.tenant = None
        self.grant = None
        self.body = None
        self.continue_sent = False
        self.killswitch_index = None
        self.login_subjects = None
        self.deferred_pre_auth = None
        self.downstream = None
        self.trace = trace
        self.killswitch_id = None
        self.token_memo = token_memo


ContextKey = web.RequestKey("gateway_context", RequestContext)
