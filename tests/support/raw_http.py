"""Raw-socket HTTP for what HTTP clients will not send: malformed heads, bodies that stall."""

from __future__ import annotations

import socket
import ssl

from tests.support.gateway_proc import insecure_client_context


def connect(port: int, *, tls: bool = False, timeout: float = 5.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    if tls:
        context: ssl.SSLContext = insecure_client_context()
        return context.wrap_socket(sock)
    return sock


def _read_head(sock: socket.socket) -> tuple[str, dict[str, str], bytes]:
    """The head (status line and fields, latin-1), its fields (lower-case names, last value wins)
    and whatever of the body came with it."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    text = head.decode("latin-1")
    headers = {}
    for line in text.split("\r\n")[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return text, headers, body


def _read_body(sock: socket.socket, body: bytes, length: int) -> bytes:
    """``body`` completed to ``length`` bytes (-1: until the server closes)."""
    while length < 0 or len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return body


def read_head(sock: socket.socket) -> tuple[str, dict[str, str], bytes]:
    """The status line, the headers (lower-case names) and what followed them: for an answer
    whose end is not framed (a 101, after which the connection speaks another protocol)."""
    head, headers, rest = _read_head(sock)
    return head.split("\r\n", 1)[0], headers, rest


def read_response(sock: socket.socket) -> tuple[str, dict[str, str], bytes]:
    """The status line, the headers (lower-case names, last value wins) and the body (by
    Content-Length, else until the server closes)."""
    head, headers, body = _read_head(sock)
    body = _read_body(sock, body, int(headers.get("content-length", "-1")))
    return head.split("\r\n", 1)[0], headers, body


def exchange(port: int, data: bytes, *, tls: bool = False) -> tuple[str, dict[str, str], bytes]:
    with connect(port, tls=tls) as sock:
        sock.sendall(data)
        return read_response(sock)


def raw_request(port: int, text: str, timeout: float = 5.0) -> tuple[int, str, bytes]:
    """Sends ``text`` as is; the status (0 if none came), the whole head as text and the body
    (by Content-Length, else none: the connection may stay open)."""
    with connect(port, timeout=timeout) as sock:
        sock.sendall(text.encode("latin-1"))
        head, headers, body = _read_head(sock)
        body = _read_body(sock, body, int(headers.get("content-length", "0")))
    status = int(head.split(" ")[1]) if head else 0
    return status, head, body


class ResponseReader:
    """Reads several responses off one socket (pipelining): bytes past one answer are kept for
    the next. Content-Length framed answers only."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def _fill(self) -> bool:
        chunk = self.sock.recv(65536)
        self.buffer += chunk
        return bool(chunk)

    def read(self) -> tuple[str, dict[str, str], bytes]:
        while b"\r\n\r\n" not in self.buffer:
            if not self._fill():
                return "", {}, b""
        head, _, rest = self.buffer.partition(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        while len(rest) < length and self._fill():
            rest = self.buffer.partition(b"\r\n\r\n")[2]
        self.buffer = rest[length:]
        return status_line, headers, rest[:length]

    def read_head_only(self) -> tuple[str, dict[str, str], bytes]:
        """The answer to a HEAD request: its Content-Length announces a body that never comes."""
        while b"\r\n\r\n" not in self.buffer:
            if not self._fill():
                return "", {}, b""
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        return status_line, headers, b""
