"""The ``routes`` section builder.

Routes are the config's core: every feature hangs its per-route settings on them, and
``gateway.routing`` compiles them into the route table. So the builder sits in the floor package
and knows no feature: the fields a feature adds to a route (tenancy's ``roles``, ``tenant_from``,
``require_tenant_echo``) are read by a function that feature supplies, passed in by the
assembler (``gateway.config_schema``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from gateway.config.model import RouteConfig
from gateway.config.reader import Node

HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# A route may opt in to TRACE and CONNECT (App. C); TRACK never gets past the HTTP parser.
ROUTE_METHODS = HTTP_METHODS | {"TRACE", "CONNECT"}

#: Reads the route fields one feature adds, from the route's node, validated.
RouteFields = Callable[[Node], Mapping[str, object]]


def _methods(node: Node) -> frozenset[str] | None:
    if not node.has("methods"):
        node.raw("methods", None)
        return None
    methods = frozenset(m.upper() for m in node.string_list("methods"))
    unknown = sorted(methods - ROUTE_METHODS)
    if unknown:
        node.report.error(node.child_path("methods"), f"unknown method {unknown[0]}")
    return methods


def build_routes(root: Node, feature_fields: RouteFields) -> tuple[RouteConfig, ...]:
    routes: list[RouteConfig] = []
    names: set[str] = set()
    prefixes: set[str] = set()
    case_insensitive = root.data.get("routes_case_insensitive") is True
    for _, raw, path in root.items("routes"):
        node = Node(raw, path, root.report)
        name = node.string("name")
        prefix = node.string("prefix")
        if name and name in names:
            node.report.error(node.child_path("name"), f"duplicate route name {name!r}")
        names.add(name)
        key = prefix.rstrip("/") or "/"
        key = key.casefold() if case_insensitive else key
        if prefix and key in prefixes:
            # One of two equal prefixes would silently shadow the other.
            node.report.error(node.child_path("prefix"), f"another route already has prefix {prefix!r}")
        prefixes.add(key)
        if prefix and (not prefix.startswith("/") or "//" in prefix or "/../" in f"{prefix}/"):
            node.report.error(node.child_path("prefix"), "expected an absolute path like /api/finance")
        routes.append(
            RouteConfig(
                name=name,
                prefix=prefix,
                upstream=node.string("upstream"),
                methods=_methods(node),
                module=node.string("module", None),
                auth=node.string("auth", "jwt", choices=("jwt", "none", "webhook")),
                integration=node.string("integration", None),
                mfa=node.boolean("mfa", True),
                mfa_max_age=node.duration("mfa_max_age", None),
                max_body=node.size("max_body", None),
                cors=node.string("cors", None),
                websocket=node.boolean("websocket", True),
                audit=node.boolean("audit", False),
                rate_limit=node.string_list("rate_limit"),
                login=node.boolean("login", False),
                **feature_fields(node),  # type: ignore[arg-type]
            )
        )
        node.done()
    return tuple(routes)
