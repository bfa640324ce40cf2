"""The operator verbs' admin-API client: one request, a human line or ``--json``, an exit code."""

from __future__ import annotations

import argparse
import json
import os
import ssl
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

EXIT_OK, EXIT_USAGE, EXIT_REMOTE_ERROR, EXIT_UNREACHABLE = 0, 1, 2, 3
DEFAULT_ADMIN_URL = "http://127.0.0.1:9090"


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--admin-url", default=None, help="admin API base URL ($SHOPINO_GATEWAY_ADMIN_URL)")
    parser.add_argument("--json", action="store_true", help="print the API's JSON answer")
    parser.add_argument("--cafile", default=None, help="CA bundle for an https admin URL")


def admin_request(
    method: str, path: str, body: dict[str, Any] | None, *, admin_url: str | None, cafile: str | None = None
) -> tuple[urllib.request.Request, ssl.SSLContext | None]:
    """The authenticated request for ``path`` on the admin API; ``ValueError`` for a non-http(s) URL."""
    base = (admin_url or os.environ.get("SHOPINO_GATEWAY_ADMIN_URL") or DEFAULT_ADMIN_URL).rstrip("/")
    if not base.startswith(("http://", "https://")):
        raise ValueError("--admin-url must be an http(s) URL")
    token = os.environ.get("SHOPINO_GATEWAY_ADMIN_TOKEN", "")
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(base + path, data=data, method=method)  # noqa: S310 - scheme checked
    request.add_header("Accept", "application/json")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    context = ssl.create_default_context(cafile=cafile) if base.startswith("https:") else None
    return request, context


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """SECURITY: urllib re-sends every header, Authorization included, to wherever a redirect
    points (another host, or https to http). An admin or tenant-admin bearer token must only
    ever reach the URL the operator named, so a redirect is reported as the error it is."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def open_url(request: urllib.request.Request, context: ssl.SSLContext | None, timeout: float) -> Any:
    """``urlopen`` without following redirects (an HTTPError for a 3xx); ``OSError`` if unreachable."""
    handlers: list[urllib.request.BaseHandler] = [_NoRedirect()]
    if context is not None:
        handlers.append(urllib.request.HTTPSHandler(context=context))
    return urllib.request.build_opener(*handlers).open(request, timeout=timeout)


def call_admin(
    method: str,
    path: str,
    body: dict[str, Any] | None,
    *,
    admin_url: str | None,
    cafile: str | None = None,
    timeout: float = 10.0,
) -> tuple[int, dict[str, Any]]:
    """(HTTP status, JSON body). Raises ``OSError`` when the gateway cannot be reached."""
    request, context = admin_request(method, path, body, admin_url=admin_url, cafile=cafile)
    try:
        with open_url(request, context, timeout) as response:
            return response.status, _json(response.read())
    except urllib.error.HTTPError as error:
        return error.code, _json(error.read())


def _json(raw: bytes) -> dict[str, Any]:
    try:
        value = json.loads(raw or b"{}")
    except ValueError:
        return {"detail": "the gateway answered with a non-JSON body"}
    return value if isinstance(value, dict) else {"items": value}


class VerbFailed(Exception):
    """The call failed and the error is already reported; ``exit_code`` is the CLI's exit code."""

    def __init__(self, exit_code: int) -> None:
        super().__init__(exit_code)
        self.exit_code = exit_code


def report_unreachable(exc: OSError | urllib.error.URLError) -> int:
    """Say on stderr that the admin API did not answer; the exit code for it."""
    print(f"error: the gateway's admin API is unreachable ({getattr(exc, 'reason', exc)})", file=sys.stderr)
    return EXIT_UNREACHABLE


def checked_call(
    args: argparse.Namespace,
    method: str,
    path: str,
    body: dict[str, Any] | None,
    *,
    allowed: frozenset[int] = frozenset(),
) -> tuple[int, dict[str, Any]]:
    """(status, JSON) of a 2xx answer or one of ``allowed``; anything else is reported on stderr
    (the JSON on stdout with ``--json``) and raised as :class:`VerbFailed`."""
    try:
        status, data = call_admin(method, path, body, admin_url=args.admin_url, cafile=args.cafile)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise VerbFailed(EXIT_USAGE) from None
    except (OSError, urllib.error.URLError) as exc:
        raise VerbFailed(report_unreachable(exc)) from None
    if not 200 <= status < 300 and status not in allowed:  # a refused redirect is an error too
        if args.json:
            print(json.dumps(data, indent=2, sort_keys=True))
        else:
            print(f"error {status}: {data.get('title', '')}: {data.get('detail', '')}", file=sys.stderr)
            for line in data.get("errors", []):
                print(f"  {line}", file=sys.stderr)
        raise VerbFailed(EXIT_REMOTE_ERROR)
    return status, data


def run_verb(
    args: argparse.Namespace,
    method: str,
    path: str,
    body: dict[str, Any] | None,
    human: Callable[[dict[str, Any]], str],
) -> int:
    try:
        _, data = checked_call(args, method, path, body)
    except VerbFailed as failed:
        return failed.exit_code
    print(json.dumps(data, indent=2, sort_keys=True) if args.json else human(data))
    return EXIT_OK
