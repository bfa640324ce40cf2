"""``incident contain`` and ``incident status`` (SPEC §1, App. B): containment in one command.

``contain`` runs, in this order, each step tagged with the incident id so ``status`` finds it:
1. the kill switch (``POST /admin/killswitch``) when ``--scope`` is given - or ``--tenant``
   without ``--scope``, which isolates that tenant (``--no-switch`` skips the switch);
2. session revocation of ``--tenant`` (``--revoke-sessions``);
3. key rotation with the older keys revoked (``--rotate-keys``).
Isolation comes first so nothing more gets through while sessions and keys are replaced. Each
step is printed as it completes; the first failure stops the run with a message naming what
was done and what was not (exit 2 when the gateway refused, 3 when it was unreachable).
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gateway.audit.incidents import validate_incident
from gateway.cli import operator_client
from gateway.cli.operator_client import EXIT_OK, EXIT_REMOTE_ERROR, EXIT_UNREACHABLE, EXIT_USAGE
from gateway.killswitch.scopes import SCOPES


@dataclass(frozen=True)
class Step:
    action: str  # "killswitch", "sessions", "keys"
    label: str  # what the operator reads in "not done: ..."
    path: str
    body: dict[str, Any]
    describe: Callable[[dict[str, Any]], str]


def add_incident_commands(commands: Any) -> None:
    incident = commands.add_parser("incident", help="incident response: contain, then review")
    verbs = incident.add_subparsers(dest="incident_command", required=True)
    contain = verbs.add_parser(
        "contain",
        help="kill switch, session revocation and key rotation in one step, tagged with the incident",
    )
    contain.add_argument("--incident", required=True, help="the incident id, e.g. INC-2026-041")
    contain.add_argument("--scope", choices=SCOPES)
    contain.add_argument("--target", help="what the switch isolates (module name, tenant, 'POST /api/x/*')")
    contain.add_argument("--mode", choices=("block", "read-only"), default="block")
    contain.add_argument("--reason", help='why (default: "incident <ID>")')
    contain.add_argument("--ttl", help="auto-release the switch after this long, e.g. 2h")
    contain.add_argument("--tenant", help="tenant whose sessions are revoked; alone, also the switch target")
    contain.add_argument("--no-switch", action="store_true", help="engage no kill switch (--tenant alone)")
    contain.add_argument("--revoke-sessions", action="store_true", help="refuse every token of --tenant")
    contain.add_argument("--rotate-keys", action="store_true", help="new signing key; older keys revoked now")
    operator_client.add_common_arguments(contain)
    contain.set_defaults(func=cmd_incident_contain)

    status = verbs.add_parser("status", help="everything done under an incident id, oldest first")
    status.add_argument("incident")
    operator_client.add_common_arguments(status)
    status.set_defaults(func=cmd_incident_status)


def _usage(message: str) -> int:
    print(f"incident contain: {message}", file=sys.stderr)
    return EXIT_USAGE


def _switch_step(args: argparse.Namespace) -> Step | None:
    scope, target = args.scope, args.target
    if scope is None and args.tenant and not args.no_switch:
        scope, target = "tenant", args.tenant  # --tenant alone: isolate that tenant
    if scope is None:
        return None
    body: dict[str, Any] = {
        "scope": scope,
        "mode": args.mode,
        "reason": args.reason or f"incident {args.incident}",
        "incident": args.incident,
    }
    if target is not None:
        body["target"] = target
    if args.ttl:
        body["ttl"] = args.ttl
    return Step(
        "killswitch", f"kill switch ({scope} {target or '*'})", "/admin/killswitch", body, _said_switch
    )


def _said_switch(d: dict[str, Any]) -> str:
    acked, lagging = d.get("acknowledged") or [], d.get("lagging") or []
    line = (
        f"engaged switch {d.get('id')} ({d.get('scope')} {d.get('target')}, {d.get('mode')}) "
        f"acknowledged by {len(acked)} instance{'' if len(acked) == 1 else 's'}"
    )
    return line + (f"; NOT yet applied by: {', '.join(map(str, lagging))}" if lagging else "")


def _said_sessions(d: dict[str, Any]) -> str:
    return f"revoked sessions of tenant {d.get('tenant')} issued at or before {d.get('revoked_at')}"


def _said_keys(d: dict[str, Any]) -> str:
    return f"rotated signing keys; older keys revoked (new kid {d.get('kid')})"


def plan(args: argparse.Namespace) -> list[Step]:
    """The steps of ``contain`` in order; ValueError for a usage error."""
    validate_incident(args.incident)
    if args.target and not args.scope:
        raise ValueError("--target needs --scope")
    if args.scope and args.scope != "global" and not args.target:
        raise ValueError(f"--scope {args.scope} needs --target")
    if args.revoke_sessions and not args.tenant:
        raise ValueError("--revoke-sessions needs --tenant (whose sessions to revoke)")
    steps = [s for s in [_switch_step(args)] if s is not None]
    if args.revoke_sessions:
        body = {"tenant": args.tenant, "incident": args.incident}
        steps.append(Step("sessions", "session revocation", "/admin/sessions/revoke", body, _said_sessions))
    if args.rotate_keys:
        body = {"revoke_old": True, "incident": args.incident}
        steps.append(Step("keys", "key rotation", "/admin/keys/rotate", body, _said_keys))
    if not steps:
        raise ValueError("nothing to do: give --scope/--target or --tenant, --revoke-sessions, --rotate-keys")
    return steps


def cmd_incident_contain(args: argparse.Namespace) -> int:
    try:
        steps = plan(args)
    except ValueError as exc:
        return _usage(str(exc))
    results: list[dict[str, Any]] = []
    code = EXIT_OK
    for step in steps:
        try:
            status, data = operator_client.call_admin(
                "POST", step.path, step.body, admin_url=args.admin_url, cafile=args.cafile
            )
        except ValueError as exc:
            return _usage(str(exc))
        except (OSError, urllib.error.URLError) as exc:
            reason = f"the gateway's admin API is unreachable ({getattr(exc, 'reason', exc)})"
            results.append({"action": step.action, "ok": False, "error": reason})
            code = EXIT_UNREACHABLE
            break
        ok = status < 400
        results.append({"action": step.action, "ok": ok, "status": status, "result": data})
        if not ok:
            code = EXIT_REMOTE_ERROR
            break
        if not args.json:
            print(step.describe(data), flush=True)
    return _report_contain(args, steps, results, code)


def _report_contain(
    args: argparse.Namespace, steps: list[Step], results: list[dict[str, Any]], code: int
) -> int:
    not_done = [] if code == EXIT_OK else [s.action for s in steps[len(results) - 1 :]]
    if args.json:
        summary = {"incident": args.incident, "ok": code == EXIT_OK, "steps": results, "not_done": not_done}
        print(json.dumps(summary, indent=2, sort_keys=True))
        return code
    if code == EXIT_OK:
        print(
            f"contained: {len(steps)} action(s) under incident {args.incident}; "
            f"review with: shopino-gateway incident status {args.incident}"
        )
        return code
    failed, step = results[-1], steps[len(results) - 1]
    detail = failed.get("error") or _problem_text(failed)
    print(f"error: {step.label} FAILED: {detail}", file=sys.stderr)
    done = [s.label for s in steps[: len(results) - 1]]
    print(f"done: {', '.join(done) or 'nothing'}", file=sys.stderr)
    print(f"NOT done: {', '.join(s.label for s in steps[len(results) - 1 :])}", file=sys.stderr)
    if code == EXIT_UNREACHABLE:
        # The request may have landed before the connection failed: the index knows.
        print(f"check what landed with: shopino-gateway incident status {args.incident}", file=sys.stderr)
    return code


def _problem_text(failed: dict[str, Any]) -> str:
    data = failed.get("result") or {}
    return f"{failed.get('status')} {data.get('title', '')}: {data.get('detail', '')}".strip()


def cmd_incident_status(args: argparse.Namespace) -> int:
    try:
        validate_incident(args.incident)
    except ValueError as exc:
        print(f"incident status: {exc}", file=sys.stderr)
        return EXIT_USAGE
    path = f"/admin/incidents/{urllib.parse.quote(args.incident, safe='')}"
    return operator_client.run_verb(args, "GET", path, None, _actions_table)


def _actions_table(data: dict[str, Any]) -> str:
    rows = [("TIME", "TENANT", "EVENT", "ACTOR", "DETAILS")]
    for action in data.get("actions", []):
        details = json.dumps(action.get("details") or {}, sort_keys=True, separators=(",", ":"))
        rows.append(
            (
                str(action.get("time")),
                ",".join(map(str, action.get("tenants") or [action.get("tenant")])),
                str(action.get("event")),
                str(action.get("actor")),
                details,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = [f"incident {data.get('incident')}: {len(rows) - 1} action(s)"]
    lines += [
        "  ".join([*(cell.ljust(w) for cell, w in zip(row[:4], widths, strict=True)), row[4]]) for row in rows
    ]
    if data.get("truncated"):
        lines.append("(truncated: more actions are recorded than one answer holds)")
    return "\n".join(lines)
