"""``grants create`` sends the tenant admin's token to the named gateway URL and nowhere else."""

from __future__ import annotations

import argparse
import http.server
import threading
from collections.abc import Iterator

import pytest

from gateway.cli.grants import cmd_grants_create
from gateway.cli.operator_client import EXIT_REMOTE_ERROR

TOKEN = "eyJ.tenant-admin.token"


class _Server(http.server.ThreadingHTTPServer):
    seen: list[str | None]
    location: str


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server

    def _answer(self) -> None:
        self.server.seen.append(self.headers.get("Authorization"))
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        if self.server.location:
            self.send_response(302)
            self.send_header("Location", self.server.location)
        else:
            self.send_response(404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_POST = _answer

    def log_message(self, *args: object) -> None:
        pass


def _serve(location: str) -> _Server:
    server = _Server(("127.0.0.1", 0), _Handler)
    server.seen, server.location = [], location
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def servers() -> Iterator[tuple[_Server, _Server]]:
    elsewhere = _serve("")
    gateway = _serve(f"http://127.0.0.1:{elsewhere.server_address[1]}/steal")
    yield gateway, elsewhere
    for server in (gateway, elsewhere):
        server.shutdown()
        server.server_close()


def test_a_redirect_never_carries_the_token_elsewhere(
    servers: tuple[_Server, _Server], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Regression: urllib followed the 302 and re-sent "Authorization: Bearer <token>" to the
    # redirect's host (urllib keeps every non-content header across redirects).
    gateway, elsewhere = servers
    monkeypatch.setenv("SHOPINO_GATEWAY_TOKEN", TOKEN)
    args = argparse.Namespace(
        grantee="sam",
        modules="inventory",
        ttl="1h",
        url=f"http://127.0.0.1:{gateway.server_address[1]}",
        json=False,
        cafile=None,
    )
    assert cmd_grants_create(args) == EXIT_REMOTE_ERROR
    assert gateway.seen == [f"Bearer {TOKEN}"]
    assert elsewhere.seen == []


def test_admin_verbs_never_carry_the_admin_token_to_a_redirect(
    servers: tuple[_Server, _Server], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The same urllib behaviour in the shared admin client (every operator verb uses it).
    from gateway.cli.operator_client import call_admin

    gateway, elsewhere = servers
    monkeypatch.setenv("SHOPINO_GATEWAY_ADMIN_TOKEN", "admin-secret-token")
    status, _ = call_admin(
        "POST",
        "/admin/killswitch",
        {"scope": "global"},
        admin_url=f"http://127.0.0.1:{gateway.server_address[1]}",
    )
    assert status == 302
    assert gateway.seen == ["Bearer admin-secret-token"]
    assert elsewhere.seen == []
