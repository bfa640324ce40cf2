"""``grants list|revoke`` (admin API) and ``grants create`` (public API, as the tenant admin).

``create`` is deliberately not an admin call: only a tenant's own ``tenant-admin`` can open the
tenant's data to support (SPEC §7), so it sends that admin's token (``$SHOPINO_GATEWAY_TOKEN``,
never a flag: flags end up in shell history and ``ps``) to the public listener.
"""

from __future__ import annotations

import argparse
import json
import os
import ssl
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from gateway.cli import operator_client
from gateway.cli.operator_client import EXIT_OK, EXIT_REMOTE_ERROR, EXIT_UNREACHABLE, EXIT_USAGE

TOKEN_ENV = "SHOPINO_GATEWAY_TOKEN"  # noqa: S105 - the variable's name, not a token
URL_ENV = "SHOPINO_GATEWAY_URL"


def add_grants_commands(commands: Any) -> None:
    grants = commands.add_parser("grants", help="support grants (SPEC §7)")
    verbs = grants.add_subparsers(dest="grants_command", required=True)
    listing = verbs.add_parser("list", help="active grants of every tenant (admin API)")
    listing.add_argument("--tenant", help="only this tenant's grants")
    operator_client.add_common_arguments(listing)
    listing.set_defaults(func=cmd_grants_list)

    revoke = verbs.add_parser("revoke", help="revoke a grant at once, on every instance (admin API)")
    revoke.add_argument("grant_id", metavar="ID")
    revoke.add_argument("--reason")
    revoke.add_argument("--incident")
    operator_client.add_common_arguments(revoke)
    revoke.set_defaults(func=cmd_grants_revoke)

    create = verbs.add_parser(
        "create", help=f"grant a support user access (public API, tenant-admin token in ${TOKEN_ENV})"
    )
    create.add_argument("--grantee", required=True, help="the support user's id (token sub)")
    create.add_argument("--modules", required=True, help="comma list, e.g. inventory,finance or *")
    create.add_argument("--ttl", required=True, help="e.g. 4h (at most 24h)")
    create.add_argument("--url", default=None, help=f"the gateway's public URL (${URL_ENV})")
    create.add_argument("--json", action="store_true", help="print the API's JSON answer")
    create.add_argument("--cafile", default=None, help="CA bundle for an https URL")
    create.set_defaults(func=cmd_grants_create)


def _line(grant: dict[str, Any]) -> str:
    modules = ",".join(grant.get("modules", []))
    return (
        f"{grant.get('id')}  tenant={grant.get('tenant')}  grantee={grant.get('grantee')}  "
        f"modules={modules}  expires={grant.get('expires_at')}  by={grant.get('created_by')}"
    )


def cmd_grants_list(args: argparse.Namespace) -> int:
    query = f"?{urllib.parse.urlencode({'tenant': args.tenant})}" if args.tenant else ""
    return operator_client.run_verb(
        args,
        "GET",
        f"/admin/grants{query}",
        None,
        lambda d: "\n".join(_line(g) for g in d.get("grants", [])) or "no active grants",
    )


def cmd_grants_revoke(args: argparse.Namespace) -> int:
    body = {k: v for k in ("reason", "incident") if (v := getattr(args, k))}
    return operator_client.run_verb(
        args,
        "DELETE",
        f"/admin/grants/{urllib.parse.quote(args.grant_id, safe='')}",
        body,
        lambda d: f"revoked {d.get('id')} (tenant {d.get('tenant')}, grantee {d.get('grantee')})",
    )


def _public_request(args: argparse.Namespace, body: dict[str, Any]) -> tuple[urllib.request.Request, Any]:
    base = (args.url or os.environ.get(URL_ENV) or "").rstrip("/")
    if not base.startswith(("http://", "https://")):
        raise ValueError(f"--url (or ${URL_ENV}) must be the gateway's http(s) URL")
    token = os.environ.get(TOKEN_ENV, "")
    if not token:
        raise ValueError(f"${TOKEN_ENV} must hold the tenant admin's MFA-backed token")
    request = urllib.request.Request(  # noqa: S310 - scheme checked above
        base + "/_gateway/grants", data=json.dumps(body).encode(), method="POST"
    )
    request.add_header("Content-Type", "application/json")
    request.add_header("Accept", "application/json")
    request.add_header("Authorization", f"Bearer {token}")
    context = ssl.create_default_context(cafile=args.cafile) if base.startswith("https:") else None
    return request, context


def cmd_grants_create(args: argparse.Namespace) -> int:
    modules = [m.strip() for m in args.modules.split(",") if m.strip()]
    try:
        request, context = _public_request(
            args, {"grantee": args.grantee, "modules": modules, "ttl": args.ttl}
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        with operator_client.open_url(request, context, 10) as response:
            status, data = response.status, operator_client._json(response.read())
    except urllib.error.HTTPError as error:
        status, data = error.code, operator_client._json(error.read())
    except (OSError, urllib.error.URLError) as exc:
        print(f"error: the gateway is unreachable ({getattr(exc, 'reason', exc)})", file=sys.stderr)
        return EXIT_UNREACHABLE
    if args.json:
        print(json.dumps(data, indent=2, sort_keys=True))
    if not 200 <= status < 300:  # a redirect (refused above) is an error too
        if not args.json:
            print(f"error {status}: {data.get('title', '')}: {data.get('detail', '')}", file=sys.stderr)
        return EXIT_REMOTE_ERROR
    if not args.json:
        print(f"granted {_line(data)}")
    return EXIT_OK
