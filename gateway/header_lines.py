"""Request header lines as the upstream request carries them (``Name: value``, no CRLF): the
form ``gateway.upstream.forwarding.UpstreamHeaders`` holds, so lines that repeat from request to
request (the forwarding headers, a token's identity) are joined once, not per request. A leaf
module: the identity the tenancy makes and the proxy's own headers take the format from here."""

from __future__ import annotations

from collections.abc import Callable

pair_line: Callable[[tuple[str, str]], str] = ": ".join
"""The header line ``name: value`` of a (name, value) pair (no CRLF); a call into C, no frame:
the proxy makes one per forwarded client header."""


def header_line(name: str, value: str) -> str:
    """The header line ``name: value`` (no CRLF)."""
    return pair_line((name, value))


def line_pair(line: str) -> tuple[str, str]:
    """The (name, value) pair of a ``header_line``. No name holds a ':': a client's name is what
    the listener's parser read up to the first ':' of its line (llhttp and aiohttp both; RFC
    9110 §5.1 makes it a token), and the gateway's own names are constants. So the first ':'
    ends the name, and whatever the value holds (colons, blanks) comes back as it was."""
    name, _, value = line.partition(":")
    return name, value[1:]


def line_name(line: str) -> str:
    """The name of a ``header_line`` (see ``line_pair``)."""
    return line[: line.find(":")]
