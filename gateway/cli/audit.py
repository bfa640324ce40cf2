"""``audit export|verify`` and ``tenant purge`` (SPEC §1, App. B)."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from gateway.cli import operator_client
from gateway.cli.operator_client import EXIT_OK, EXIT_REMOTE_ERROR, EXIT_USAGE

EXIT_TAMPERED = 4


def add_audit_commands(commands: Any) -> None:
    audit = commands.add_parser("audit", help="export or verify a tenant's audit trail")
    verbs = audit.add_subparsers(dest="audit_command", required=True)
    export = verbs.add_parser("export", help="stream a tenant's trail as json, csv or xml")
    export.add_argument("--tenant", required=True)
    export.add_argument("--format", choices=("json", "csv", "xml"), default="json")
    export.add_argument("--since", help="RFC 3339 time or Unix seconds")
    export.add_argument("--until", help="RFC 3339 time or Unix seconds")
    export.add_argument("-o", "--output", help="file to write (default: stdout)")
    operator_client.add_common_arguments(export)
    export.set_defaults(func=cmd_audit_export)

    verify = verbs.add_parser("verify", help="check a trail's hash chain (exit 4 when broken)")
    source = verify.add_mutually_exclusive_group(required=True)
    source.add_argument("--tenant")
    source.add_argument("--file", help="a JSON or CSV export, checked offline")
    verify.add_argument(
        "--jwks",
        help="with --file: the gateway's JWKS (`audit jwks`); the export's anchors must verify with it",
    )
    operator_client.add_common_arguments(verify)
    verify.set_defaults(func=cmd_audit_verify)

    jwks = verbs.add_parser("jwks", help="the public keys that sign audit anchors (for verify --jwks)")
    jwks.add_argument("-o", "--output", help="file to write (default: stdout)")
    operator_client.add_common_arguments(jwks)
    jwks.set_defaults(func=cmd_audit_jwks)

    tenant = commands.add_parser("tenant", help="tenant data operations")
    tenant_verbs = tenant.add_subparsers(dest="tenant_command", required=True)
    purge = tenant_verbs.add_parser("purge", help="delete a tenant's gateway data and audit trail")
    purge.add_argument("tenant")
    purge.add_argument("--yes", action="store_true", help="confirm: this cannot be undone")
    operator_client.add_common_arguments(purge)
    purge.set_defaults(func=cmd_tenant_purge)


def cmd_audit_export(args: argparse.Namespace) -> int:
    query = {"tenant": args.tenant, "format": args.format}
    query.update({k: v for k in ("since", "until") if (v := getattr(args, k))})
    try:
        request, context = operator_client.admin_request(
            "GET",
            f"/admin/audit?{urllib.parse.urlencode(query)}",
            None,
            admin_url=args.admin_url,
            cafile=args.cafile,
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        with operator_client.open_url(request, context, 60) as response:
            target = open(args.output, "wb") if args.output else sys.stdout.buffer  # noqa: SIM115
            try:
                shutil.copyfileobj(response, target, 64 * 1024)  # streamed: constant memory
            finally:
                if args.output:
                    target.close()
    except urllib.error.HTTPError as error:
        body = error.read()
        print(f"error {error.code}: {_detail(body)}", file=sys.stderr)
        return EXIT_REMOTE_ERROR
    except (OSError, urllib.error.URLError) as exc:
        return operator_client.report_unreachable(exc)
    return EXIT_OK


def _detail(body: bytes) -> str:
    try:
        return str(json.loads(body).get("detail", ""))
    except ValueError:
        return "the gateway answered with a non-JSON body"


def _read_jwks(path: str) -> Any:
    from gateway.audit.anchors import AnchorKeys

    try:
        with open(path, "rb") as handle:
            return AnchorKeys.from_jwks(json.load(handle))
    except (OSError, ValueError) as exc:
        print(f"audit verify: cannot read a JWKS from {path}: {exc}", file=sys.stderr)
        return None


def cmd_audit_verify(args: argparse.Namespace) -> int:
    if args.jwks and not args.file:
        print("audit verify: --jwks goes with --file (online the gateway checks anchors)", file=sys.stderr)
        return EXIT_USAGE
    if args.file:
        from gateway.audit import iter_export_records, verify_records

        keys = _read_jwks(args.jwks) if args.jwks else None
        if args.jwks and keys is None:
            return EXIT_USAGE
        try:
            with open(args.file, "rb") as handle:  # streamed: constant memory for big exports
                result = verify_records(iter_export_records(handle), anchor_keys=keys)
        except (OSError, ValueError) as exc:
            print(f"audit verify: cannot read a JSON or CSV export from {args.file}: {exc}", file=sys.stderr)
            return EXIT_USAGE
        data = {
            "file": args.file,
            "ok": result.ok,
            "records": result.records,
            "problem": result.problem,
            "first_bad_seq": result.bad_seq,
            "anchors": result.anchors if keys is not None else None,
            "signed_through": result.signed_through,
            "signed_by_key_revoked_at": result.last_anchor_revoked_at,
        }
        return _report_verify(args, data)
    query = urllib.parse.urlencode({"tenant": args.tenant})
    try:
        status, data = operator_client.call_admin(
            "GET", f"/admin/audit/verify?{query}", None, admin_url=args.admin_url, cafile=args.cafile
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (OSError, urllib.error.URLError) as exc:
        return operator_client.report_unreachable(exc)
    if status >= 400:
        print(f"error {status}: {data.get('detail', '')}", file=sys.stderr)
        return EXIT_REMOTE_ERROR
    return _report_verify(args, data)


def _report_verify(args: argparse.Namespace, data: dict[str, Any]) -> int:
    if args.json:
        print(json.dumps(data, indent=2, sort_keys=True))
    elif data.get("ok"):
        signed = ""
        if data.get("anchors") is not None:
            through = data.get("signed_through")
            signed = f", {data['anchors']} anchors verified" + (
                f", signed through record {through}" if through else ", none signed yet"
            )
        print(f"intact: {data.get('records')} records{signed}")
        if data.get("signed_by_key_revoked_at"):
            # A key revoked as exposed: its holder could have signed this, dated before then.
            print(
                f"note: the last anchor's key was revoked at {data['signed_by_key_revoked_at']}; "
                "it vouches only if the key was not exposed before. Take a fresh export."
            )
    else:
        print(f"BROKEN: {data.get('problem')}")
    return EXIT_OK if data.get("ok") else EXIT_TAMPERED


def cmd_audit_jwks(args: argparse.Namespace) -> int:
    try:
        _, data = operator_client.checked_call(args, "GET", "/admin/audit/jwks", None)
    except operator_client.VerbFailed as failed:
        return failed.exit_code
    text = json.dumps(data, indent=2, sort_keys=True) + "\n"
    if args.output:
        with open(args.output, "w", encoding="utf-8") as handle:
            handle.write(text)
    else:
        sys.stdout.write(text)
    return EXIT_OK


def cmd_tenant_purge(args: argparse.Namespace) -> int:
    if not args.yes:
        print("tenant purge deletes the tenant's gateway data and audit trail; add --yes", file=sys.stderr)
        return EXIT_USAGE
    path = f"/admin/tenants/{urllib.parse.quote(args.tenant, safe='')}"
    return operator_client.run_verb(
        args,
        "DELETE",
        path,
        None,
        lambda d: (
            f"purged tenant {d.get('tenant')}: {d.get('removed_records', 0)} "
            "audit records removed; one tenant.purged record remains"
        ),
    )
