"""The import graph of ``gateway/`` points only downward (issue 17, docs/architecture.md).

Floors, top to bottom: entry points → listeners → pipeline and stages (with the gateway's own
``/_gateway`` endpoints, which the route stage answers: SPEC §3.2) → domain packages → base
values. A module may import its own floor or any floor below, never above; no
circle at all (``TYPE_CHECKING`` imports count: an outside reader draws them too), nor between
the domain floor's packages; a domain or
base module imports neither the server (aiohttp) nor the per-request context; and no import sits
inside a function to dodge a circle (the few lazy imports that exist keep the CLI's start-up
fast and are listed here with that reason).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "gateway"

# (floor, module prefixes). A module's floor is that of its longest matching prefix.
FLOORS: dict[int, tuple[str, ...]] = {
    5: ("gateway.__main__", "gateway.cli", "gateway.server", "gateway.demo"),
    4: (
        "gateway.app",
        "gateway.listener",
        "gateway.http1",
        "gateway.admin",
        "gateway.console",
        "gateway.aiohttp_access_log",  # aiohttp's access-logger hook for the aiohttp listener
    ),
    3: (
        "gateway.pipeline",
        "gateway.middleware",
        "gateway.upstream",
        "gateway.proxy",
        "gateway.context",
        "gateway.exchange",  # the request and answer-writer Protocols the context is typed by
        "gateway.runtime",
        "gateway.deferred_pre_auth",  # settles a deferred pre_auth hit for the stages and the runner
        "gateway.http",
        "gateway.config_schema",  # assembles every feature's schema.py into one config
        "gateway.jwks_client",  # the aiohttp download behind auth's key sources
        "gateway.endpoints",
    ),
    2: (
        "gateway.auth",
        "gateway.tenancy",
        "gateway.ratelimit",
        "gateway.killswitch",
        "gateway.audit",
        "gateway.redaction",
        "gateway.tracing",
        "gateway.traffic",
        "gateway.routing",
        "gateway.logs",
        "gateway.metrics",
        "gateway.facts",
        "gateway.hygiene",  # App. C request hygiene over header values
        "gateway.origins",  # App. B origin rules: CORS answers and the CSRF rule for cookie tokens
        "gateway.config_model",  # the whole config's type: every feature's config values
    ),
    1: (
        "gateway.state",
        "gateway.config",
        "gateway.errors",
        "gateway.http.answer_headers",
        "gateway.header_lines",  # the upstream request's header lines (identity, forwarding)
        "gateway.crypto",
        "gateway.random_batches",
        "gateway.bounded_memo",  # the bound every client-keyed memo of the hot path keeps
        "gateway",
    ),
}
FLOOR_NAMES = {5: "entry points", 4: "listeners", 3: "pipeline/stages", 2: "domain", 1: "base"}
SERVER_MODULES = ("aiohttp.web", "gateway.context", "gateway.middleware", "gateway.pipeline", "gateway.http1")

# Lazy imports, each for start-up cost or import order, never to dodge a circle (the test below
# hoists them all and still finds none).
LAZY_ALLOWED = {
    "gateway.cli.commands": "a command imports its machinery only when it runs",
    "gateway.cli.audit": "audit verify loads the anchor machinery only when asked",
    "gateway.demo.command": "the demo's parts load only for `demo`",
    "gateway.state": "a local store never loads the Redis driver",
    "gateway.runtime": "opentelemetry only with an OTLP endpoint; prometheus_client after the metrics dir",
}


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


MODULES = _modules()


def _targets(module: str, node: ast.Import | ast.ImportFrom) -> Iterator[str]:
    if isinstance(node, ast.Import):
        yield from (alias.name for alias in node.names)
        return
    if node.level:
        base = module.split(".")
        if MODULES[module].name != "__init__.py":
            base = base[:-1]
        base = base[: len(base) - (node.level - 1)]
        source = ".".join([*base, node.module] if node.module else base)
    else:
        source = node.module or ""
    for alias in node.names:
        yield f"{source}.{alias.name}" if f"{source}.{alias.name}" in MODULES else source


def _imports(module: str) -> Iterator[tuple[str, bool]]:
    """(imported module, inside a function?) for every import statement of ``module``."""
    tree = ast.parse(MODULES[module].read_text())
    inner: set[int] = set()
    for fn in ast.walk(tree):
        if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
            inner.update(id(n) for n in ast.walk(fn) if isinstance(n, ast.Import | ast.ImportFrom))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            for target in _targets(module, node):
                yield target, id(node) in inner


GRAPH = {m: {t for t, _ in _imports(m) if t in MODULES and t != m} for m in MODULES}


def floor_of(module: str) -> int:
    best = max(
        (p for ps in FLOORS.values() for p in ps if module == p or module.startswith(p + ".")), key=len
    )
    return next(f for f, ps in FLOORS.items() if best in ps)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_every_module_has_a_floor() -> None:
    for module in MODULES:
        assert floor_of(module) in FLOOR_NAMES


def test_no_import_circle() -> None:
    assert _cycles(GRAPH) == []


def _packages(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """Modules grouped by package (``gateway.<first part>``; a top-level module is its own):
    package → the other packages its modules import."""

    def package(module: str) -> str:
        return ".".join(module.split(".")[:2])

    packages: dict[str, set[str]] = {package(m): set() for m in graph}
    for m, targets in graph.items():
        packages[package(m)] |= {package(t) for t in targets} - {package(m)}
    return packages


def test_no_circle_between_packages() -> None:
    """A circle through modules of different packages (auth → tenancy → auth) is no module circle
    but still ties the packages together: neither can be read, tested or moved without the other."""
    assert _cycles(_packages(GRAPH)) == []
    planted = {m: set(t) for m, t in GRAPH.items()}
    planted["gateway.audit.record"].add("gateway.auth.jwt")  # auth files audit records
    assert any({"gateway.audit", "gateway.auth"} <= set(c) for c in _cycles(_packages(planted)))


def test_no_lazy_import_hides_a_circle() -> None:
    hoisted = {m: set(t) for m, t in GRAPH.items()}
    for m in MODULES:
        hoisted[m] |= {t for t, lazy in _imports(m) if lazy and t in MODULES and t != m}
    assert _cycles(hoisted) == []


def _upward(graph: dict[str, set[str]]) -> list[str]:
    return [
        f"{m} ({FLOOR_NAMES[floor_of(m)]}) imports {t} ({FLOOR_NAMES[floor_of(t)]})"
        for m, targets in sorted(graph.items())
        for t in sorted(targets)
        if floor_of(t) > floor_of(m)
    ]


def test_imports_only_point_down() -> None:
    assert _upward(GRAPH) == []


@pytest.mark.parametrize("module", sorted(m for m in MODULES if floor_of(m) <= 2))
def test_domain_and_base_do_not_import_the_server_or_the_context(module: str) -> None:
    bad = sorted(
        t
        for t, _ in _imports(module)
        if t == "aiohttp" or any(t == s or t.startswith(s + ".") for s in SERVER_MODULES)
    )
    assert bad == [], f"{module} imports {bad}"


def _stage_imports(graph: dict[str, set[str]]) -> list[str]:
    return [
        f"{m} imports {t}"
        for m, targets in sorted(graph.items())
        if m.startswith("gateway.middleware.")
        for t in sorted(targets)
        if t.startswith("gateway.middleware.")
    ]


def test_no_stage_imports_another_stage() -> None:
    """``gateway/middleware/`` holds the pipeline's stages only, each a thin adapter over the
    domain: what two stages share lives below them (the domain) or beside them
    (``gateway/deferred_pre_auth.py``), never in one stage that the other imports."""
    assert _stage_imports(GRAPH) == []
    planted = {m: set(t) for m, t in GRAPH.items()}
    planted["gateway.middleware.authenticate"].add("gateway.middleware.cors")
    assert _stage_imports(planted) == ["gateway.middleware.authenticate imports gateway.middleware.cors"]


def test_no_import_inside_a_function_except_the_cli_start_up() -> None:
    inner = sorted(
        f"{m} -> {t}"
        for m in MODULES
        if m not in LAZY_ALLOWED
        for t, lazy in _imports(m)
        if lazy and t.startswith("gateway")
    )
    assert inner == []


def test_the_checker_sees_a_circle_and_an_upward_import() -> None:
    """The checks above are only as good as the graph: a planted edge from the base floor up to the
    request handler (which imports the error module) is both a circle and an upward import."""
    assert "gateway.errors" in GRAPH["gateway.app"]
    planted = {m: set(t) for m, t in GRAPH.items()}
    planted["gateway.errors"].add("gateway.app")
    assert any({"gateway.errors", "gateway.app"} <= set(c) for c in _cycles(planted))
    assert "gateway.errors (base) imports gateway.app (listeners)" in _upward(planted)
