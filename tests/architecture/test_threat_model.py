"""THREAT_MODEL.md stays true to the code: every file, test and name it cites exists.

The table is how a reviewer finds the code and the test that answer a threat; a row that cites a
renamed function or a moved test file sends them nowhere. Names are checked by definition
(``def``/``class``/assignment) anywhere under gateway/ and tests/.
"""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
THREAT_MODEL = ROOT / "THREAT_MODEL.md"
_CITED = re.compile(r"`([^`\s]+)`")
_PATH = re.compile(
    r"^(?:gateway/|tests/|middleware/|bench/|deploy/|config/)[\w/.-]+\.(?:py|yaml|yml|md|lua|cfg)(?:::\w+)?$"
)
# Code names: `Class`, `Class.method`, `module.name`, `function_name` (a Python identifier with
# an underscore or a capital, so header names and words in backticks are not taken for code).
_NAME = re.compile(r"^(?:[A-Za-z_][A-Za-z0-9_]*\.)*[A-Za-z_][A-Za-z0-9_]*$")
_NOT_CODE = re.compile(r"^(?:[A-Z][A-Z0-9_]*|[A-Z][a-z]+(?:[-_][A-Z][a-z]+)*|_|_system|DummyCookieJar)$")


def _citations() -> list[str]:
    return sorted(set(_CITED.findall(THREAT_MODEL.read_text())))


@cache
def _definitions() -> frozenset[str]:
    """Every function, class, assigned name and ``self.attribute`` defined in the project, and
    every string literal (audit event names such as ``tenant.leak_blocked`` are cited too)."""
    names: set[str] = set()
    for folder in ("gateway", "tests", "bench"):
        for path in (ROOT / folder).rglob("*.py"):
            if path.parent == Path(__file__).parent:
                continue  # this folder's own examples of stale names are not definitions
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                    names.add(node.name)
                elif isinstance(node, ast.Name | ast.arg) and isinstance(
                    getattr(node, "ctx", ast.Store()), ast.Store
                ):
                    names.add(node.id if isinstance(node, ast.Name) else node.arg)
                elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                    names.add(node.attr)
                elif isinstance(node, ast.Constant) and isinstance(node.value, str) and len(node.value) < 80:
                    names.add(node.value)
    return frozenset(names)


def _file_named(name: str) -> bool:
    return any(True for _ in (ROOT / "gateway").rglob(name)) or any(
        True for _ in (ROOT / "tests").rglob(name)
    )


def _path_exists(cited: str) -> bool:
    file, _, test = cited.partition("::")
    candidates = [ROOT / file, ROOT / "gateway" / file]
    found = next((c for c in candidates if c.is_file()), None)
    if found is None:
        return False
    return not test or re.search(rf"def {re.escape(test)}\b", found.read_text()) is not None


PATHS = [c for c in _citations() if _PATH.match(c)]
NAMES = [
    c
    for c in _citations()
    if not _PATH.match(c)
    and _NAME.match(c)
    and not _NOT_CODE.match(c)
    and ("_" in c or c[0].isupper() or "." in c)
]


@pytest.mark.parametrize("cited", PATHS)
def test_every_cited_file_and_test_exists(cited: str) -> None:
    assert _path_exists(cited), f"THREAT_MODEL.md cites {cited}, which does not exist"


@pytest.mark.parametrize("cited", NAMES)
def test_every_cited_name_is_defined(cited: str) -> None:
    if cited.endswith(".py"):
        assert _file_named(cited), f"THREAT_MODEL.md cites {cited}: no such file"
        return
    last = cited.rsplit(".", 1)[-1]
    if _file_named(f"{last}.py"):
        return  # a module cited by name
    assert cited in _definitions() or last in _definitions(), (
        f"THREAT_MODEL.md cites {cited}: no definition of {last} in gateway/, tests/ or bench/"
    )


def test_the_check_would_see_a_stale_citation() -> None:
    assert len(PATHS) > 20 and len(NAMES) > 20
    assert not _path_exists("gateway/no_such_module.py")
    assert not _path_exists("tests/unit/test_routing.py::test_no_such_case")
    assert "no_such_function_anywhere" not in _definitions()
