"""``UpstreamHeaders`` holds ``Name: value`` lines (issue 13: the per-pair join was half of the
request head's cost). The lines give back the pairs they were made of, and ``request_head`` over
them writes the bytes the former ``request_head`` over (name, value) pairs wrote; that former
function is frozen below."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.header_lines import header_line, line_name, line_pair
from gateway.upstream.forwarding import UpstreamHeaders
from gateway.upstream.request_head import request_head

MAX_EXAMPLES = 50 if os.environ.get("CI") == "true" else 300


# --- the former request_head, over (name, value) pairs, frozen ----------------------------------
def _old_request_head(
    method: str,
    target: str,
    pairs: list[tuple[str, str]],
    host_at: int,
    framed: bool,
    host: str,
    *,
    has_body: bool,
) -> tuple[bytes, int | None]:
    declared: list[str] = []
    lines = [f"{method} {target} HTTP/1.1"]
    host_line = "Host: " + host
    if framed:
        for index, pair in enumerate(pairs):
            if index == host_at:
                lines.append(host_line)
            lower = pair[0].lower()
            if lower == "content-length":
                declared.append(pair[1])
            elif lower != "transfer-encoding":
                lines.append(": ".join(pair))
        if host_at >= len(pairs):
            lines.append(host_line)
    else:
        lines += map(": ".join, pairs)
        lines.insert(host_at + 1, host_line)
    length: int | None = None
    if has_body and len(declared) == 1 and declared[0].isascii() and declared[0].isdigit():
        length = int(declared[0])
    if not has_body:
        if method in ("POST", "PUT", "PATCH"):
            lines.append("Content-Length: 0")
    else:
        lines.append("Transfer-Encoding: chunked" if length is None else f"Content-Length: {length}")
    probe = "".join(lines)
    if "\n" in probe or "\r" in probe or "\x00" in probe or " " in target:
        raise ValueError("A request line or header contains CR, LF, NUL or a stray space")
    lines += ("", "")
    return "\r\n".join(lines).encode("utf-8", "surrogateescape"), length


# RFC 9110 §5.1 token characters: what a listener lets through as a name (never ':').
TOKEN = st.text(
    alphabet="!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ",
    min_size=1,
    max_size=12,
)
NAMES = st.one_of(
    TOKEN,
    st.sampled_from(["Content-Length", "content-length", "Transfer-Encoding", "TRANSFER-ENCODING", "Accept"]),
)
# Any value, colons, leading and trailing blanks included; CR, LF and NUL now and then.
VALUES = st.one_of(
    st.text(max_size=20),
    st.sampled_from(["", " ", ": x", "a:b", "  lead", "5", "+5", "chunked", "a\r\nX-Injected: 1", "a\x00"]),
)
PAIRS = st.lists(st.tuples(NAMES, VALUES), max_size=10)


@settings(max_examples=MAX_EXAMPLES, deadline=None)
@given(pairs=PAIRS)
def test_the_lines_give_back_their_pairs(pairs: list[tuple[str, str]]) -> None:
    headers = UpstreamHeaders.of(pairs)
    assert headers.pairs() == pairs
    assert [line_name(line) for line in headers] == [name for name, _ in pairs]
    assert all(line_pair(header_line(name, value)) == (name, value) for name, value in pairs)


@settings(max_examples=MAX_EXAMPLES, deadline=None)
@given(
    pairs=PAIRS,
    host_at=st.integers(min_value=0, max_value=10),
    method=st.sampled_from(["GET", "HEAD", "POST", "PUT", "DELETE"]),
    has_body=st.booleans(),
    target=st.sampled_from(["/", "/api/v1/items?limit=4", "/a b", "/x\r\ny"]),
)
def test_the_head_from_lines_is_the_head_from_pairs(
    pairs: list[tuple[str, str]], host_at: int, method: str, has_body: bool, target: str
) -> None:
    headers = UpstreamHeaders.of(pairs, min(host_at, len(pairs)))
    args = (method, target, pairs, headers.host_at, headers.framed, "erp.internal:9000")
    try:
        old = _old_request_head(*args, has_body=has_body)
    except ValueError:
        with pytest.raises(ValueError, match="CR, LF"):
            request_head(method, target, headers, "erp.internal:9000", has_body=has_body)
        return
    assert request_head(method, target, headers, "erp.internal:9000", has_body=has_body) == old
