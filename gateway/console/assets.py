"""Serving the console's files: read once from the package, an allow-list by name (no path
from a request ever reaches the file system), and strict headers on every answer.

The CSP allows scripts and styles from this origin only — no ``unsafe-inline``, no
``unsafe-eval`` — so text an attacker planted in the API's data (a switch reason, an audit
detail) cannot run even if some code path mis-inserted it as markup.
"""

from __future__ import annotations

import re
from importlib import resources

from aiohttp import web

from gateway.errors import NotFound

CONSOLE_PREFIX = "/console"
# SECURITY: no inline script or style, no eval, no framing (clickjacking of destructive buttons),
# nothing fetched from elsewhere, no <base> or form posts to change where requests go.
CONSOLE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
# The admin API's own answers are data, never documents.
API_CSP = "default-src 'none'; frame-ancestors 'none'"
_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*\.(html|js|css|svg)\Z")


def _load() -> dict[str, tuple[bytes, str]]:
    files: dict[str, tuple[bytes, str]] = {}
    for entry in resources.files("gateway.console").joinpath("static").iterdir():
        if entry.is_file() and _NAME.match(entry.name):
            files[entry.name] = (entry.read_bytes(), _TYPES[entry.name[entry.name.rindex(".") :]])
    return files


_FILES: dict[str, tuple[bytes, str]] | None = None


def console_file(name: str) -> tuple[bytes, str]:
    global _FILES
    if _FILES is None:
        _FILES = _load()
    found = _FILES.get(name)
    if found is None:
        raise NotFound("No such console file")
    return found


def console_headers(response: web.StreamResponse) -> None:
    """Every console answer, files and errors alike (Appendix C)."""
    target = response.headers
    target["Content-Security-Policy"] = CONSOLE_CSP
    target["X-Content-Type-Options"] = "nosniff"
    target["X-Frame-Options"] = "DENY"
    target["Referrer-Policy"] = "no-referrer"
    target["Cross-Origin-Opener-Policy"] = "same-origin"
    target.setdefault("Cache-Control", "no-cache")


async def get_console(request: web.Request) -> web.StreamResponse:
    name = request.match_info.get("name") or "index.html"
    body, content_type = console_file(name)
    return web.Response(body=body, headers={"Content-Type": content_type})


async def redirect_to_console(request: web.Request) -> web.StreamResponse:
    return web.Response(status=308, headers={"Location": CONSOLE_PREFIX + "/"})


def is_console_request(request: web.Request) -> bool:
    """Answered without a token: only what the router matched to a console handler, so no
    spelling of a path can reach an API handler through this door."""
    route = request.match_info.route
    return route.handler in (get_console, redirect_to_console) and request.path.startswith(CONSOLE_PREFIX)


def add_console_routes(app: web.Application) -> None:
    app.router.add_get(CONSOLE_PREFIX, redirect_to_console)
    app.router.add_get(CONSOLE_PREFIX + "/", get_console)
    app.router.add_get(CONSOLE_PREFIX + "/{name}", get_console)
