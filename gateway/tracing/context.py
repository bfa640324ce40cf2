"""W3C Trace Context (``traceparent`` / ``tracestate``) for every request (SPEC Appendix C).

A trusted peer's (``trusted_proxies``) valid ``traceparent`` is continued: its trace id and
flags are kept, its parent id becomes this span's parent, and its ``tracestate`` is passed on.
Anything else — an untrusted peer, a missing, repeated or invalid header — starts a new trace.
Either way the upstream gets ``00-<trace id>-<the gateway's own span id>-<flags>``.

On the hot path of every request: new traces come ready-made, 256 at a time, from one
``os.urandom`` call whose hex digits are copied into the batch's traceparent text column by
column and split (ids and the header value), so a request pays one ``list.pop``. The ids are not
secrets; urandom is simply the cheapest batch source.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from itertools import repeat
from typing import Final

from gateway.facts import TraceFacts
from gateway.random_batches import RandomBatches

# (trace id, span id, the traceparent sent upstream, tracestate sent upstream or None,
# the trusted caller's span id (this span's parent) or None). A plain tuple: built 256 at a
# time in a comprehension and read by index on the hot path (access line, proxy).
Trace = TraceFacts  # one spelling, in gateway.facts (which imports no domain package)
# Final: each index is a literal to the type checker, so ``trace[SPAN_ID]`` is typed ``str``.
TRACE_ID: Final = 0
SPAN_ID: Final = 1
TRACEPARENT: Final = 2
TRACESTATE: Final = 3
PARENT_ID: Final = 4

# W3C Trace Context level 1, version 00 only: exactly 55 characters, lower-case hex fields.
_TRACEPARENT_RE = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})\Z")
_ZERO_TRACE, _ZERO_SPAN = "0" * 32, "0" * 16
# tracestate: at most 32 list members; the spec asks to pass on at least 512 characters, and a
# longer value is dropped whole rather than cut mid-entry.
TRACESTATE_MAX_MEMBERS, TRACESTATE_MAX_CHARS = 32, 512
_TRACESTATE_MEMBER_RE = re.compile(
    r"[a-z0-9][a-z0-9_*/-]{0,255}(?:@[a-z][a-z0-9_*/-]{0,13})?"  # key, or tenant@system
    r"=[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]\Z"  # value: no ',' '='
)
NEW_FLAGS = "01"  # a trace started here is sampled: its id is in the access line (and the span)
_BATCH = 256


# One new trace's traceparent and the space after it in a batch's text: 56 characters, seven
# 8-byte units. The trace id starts at 3 and the span id at 36: 8-byte views of the text from
# offsets 3 and 4 put each on unit boundaries.
_TRACEPARENT_TEXT = b"00-" + b"0" * 32 + b"-" + b"0" * 16 + b"-" + NEW_FLAGS.encode("ascii") + b" "
_UNITS = len(_TRACEPARENT_TEXT) // 8  # 7


def _new_traces(h: str) -> list[Trace]:
    """Traces from 48 hex digits each: the first 32 the trace id, the next 16 the span id
    (exactly ``(t, s, f"00-{t}-{s}-01", None, None)``). The batch's traceparent text is written
    8 digits at a time as strided copies (six, each over the whole batch), then split twice: at
    the spaces into traceparents and at the dashes into ids, a few dozen C-level operations per
    batch instead of slicing and formatting per trace (about a fifth fewer instructions)."""
    n = len(h) // 48
    text = bytearray(_TRACEPARENT_TEXT * n)
    size = len(text) - 8  # each view: whole 8-byte units, from its offset, inside the text
    with (
        memoryview(h.encode("ascii")).cast("Q") as digits,  # six units per trace
        memoryview(text) as whole,
        whole[3 : 3 + size].cast("Q") as trace_ids,  # unit 7k + j: trace k's digits 8j..8j+7
        whole[4 : 4 + size].cast("Q") as span_ids,  # unit 7k + 4 + j: span k's digits 8j..8j+7
    ):
        for j in range(4):
            trace_ids[j::_UNITS] = digits[j::6]
        span_ids[4::_UNITS] = digits[4::6]
        span_ids[5::_UNITS] = digits[5::6]
    del text[-1]  # the last space: no empty traceparent after it
    traceparents = text.decode("ascii")
    # "00", trace id, span id, "01 00", trace id, span id, ..., "01": ids at 1 and 2 mod 3
    fields = traceparents.split("-")
    return list(zip(fields[1::3], fields[2::3], traceparents.split(" "), repeat(None), repeat(None)))


# An all-zero trace or span id is invalid: sixteen zero digits anywhere in a batch (about 2^-52
# likely) throw it away whole (one substring search, not a test per id).
_POOL = RandomBatches(24 * _BATCH, _new_traces, reject=_ZERO_SPAN)


def new_trace() -> Trace:
    """A new trace with a new span: one pop on the hot path."""
    return (_POOL.items or _POOL.refill()).pop()


def parse_traceparent(value: str) -> tuple[str, str, str] | None:
    """(trace id, parent id, flags) of a valid version-00 ``traceparent``, else None: another
    version, upper-case hex, wrong lengths, surrounding text or an all-zero id are invalid."""
    match = _TRACEPARENT_RE.match(value)
    if match is None:
        return None
    trace_id, parent_id, flags = match.groups()
    if trace_id == _ZERO_TRACE or parent_id == _ZERO_SPAN:
        return None
    return trace_id, parent_id, flags


def clean_tracestate(values: Sequence[str]) -> str | None:
    """Several ``tracestate`` headers combined (RFC 9110 list); None when empty or invalid."""
    combined = ",".join(values)
    if not combined or len(combined) > TRACESTATE_MAX_CHARS:
        return None
    members = [m.strip(" \t") for m in combined.split(",")]
    members = [m for m in members if m]
    if not members or len(members) > TRACESTATE_MAX_MEMBERS:
        return None
    for member in members:
        if _TRACESTATE_MEMBER_RE.match(member) is None:
            return None
    return ",".join(members)


def continued_trace(traceparents: Sequence[str], tracestates: Sequence[str]) -> Trace:
    """The trace of a request from a trusted peer: continued when it sent exactly one valid
    ``traceparent``, else new (and its ``tracestate`` dropped with it)."""
    # SECURITY: two traceparent headers are ambiguous (W3C: treat as invalid), never merged.
    parsed = parse_traceparent(traceparents[0]) if len(traceparents) == 1 else None
    if parsed is None:
        return new_trace()
    trace_id, parent_id, flags = parsed
    span_id = new_trace()[SPAN_ID]
    return (trace_id, span_id, f"00-{trace_id}-{span_id}-{flags}", clean_tracestate(tracestates), parent_id)
