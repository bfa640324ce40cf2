"""Request header lines as the upstream request carries them (``Name: value``, no CRLF): the
form ``gateway.upstream.forwarding.UpstreamHeaders`` holds, so lines that repeat from request to
request (the forwarding headers, a token's identity) are joined once, not per request. A leaf
module: the identity the tenancy makes and the proxy's own headers take the format from here."""

from __future__ import annotations


def header_line(name: str, value: str) -> str:
    """The header line ``name: value`` (no CRLF)."""
    return name + ": " + value


def line_pair(line: str) -> tuple[str, str]:
    """The (name, value) pair of a ``header_line``. A name is a token (RFC 9110 §5.1: the
    listeners' parsers refuse any other byte, the gateway's own names are constants), so the
    first ':' ends it."""
    name, _, value = line.partition(":")
    return name, value[1:]


def line_name(line: str) -> str:
    """The name of a ``header_line`` (see ``line_pair``)."""
    return line[: line.find(":")]
