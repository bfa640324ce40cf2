"""Unit tests mirror the source tree (gateway/a/b.py -> tests/unit/a/test_b.py): a test file at
the top of tests/unit/ is only for a module at the top of gateway/, and every test folder is a
package named after a gateway/ package, so a new test cannot quietly land in the wrong place."""

from __future__ import annotations

from pathlib import Path

import gateway

SOURCE = Path(gateway.__file__).parent
UNIT_TESTS = Path(__file__).parents[1] / "unit"


def misplaced(tests: Path, source: Path) -> list[str]:
    """Why each test file or folder directly under ``tests`` breaks the mirror of ``source``."""
    found = []
    for path in sorted(tests.glob("test_*.py")):
        module = path.name.removeprefix("test_")
        if not (source / module).is_file():
            found.append(f"{path.name}: gateway/{module} is not top-level; move it to its package's folder")
    # A folder holding no Python file (only a __pycache__ left by a removed folder) is not a test.
    for folder in sorted(p for p in tests.iterdir() if p.is_dir() and any(p.glob("*.py"))):
        if not (source / folder.name / "__init__.py").is_file():
            found.append(f"{folder.name}/: gateway/{folder.name}/ is not a package")
        if not (folder / "__init__.py").is_file():
            found.append(f"{folder.name}/: no __init__.py (test modules of the same name would collide)")
    return found


def test_unit_tests_mirror_the_source_tree() -> None:
    assert misplaced(UNIT_TESTS, SOURCE) == []


def test_a_stray_test_file_or_folder_is_reported(tmp_path: Path) -> None:
    source, tests = tmp_path / "gateway", tmp_path / "unit"
    (source / "logs").mkdir(parents=True)
    (source / "logs" / "__init__.py").touch()
    (source / "logs" / "access_log.py").touch()
    (source / "routing.py").touch()
    (tests / "logs").mkdir(parents=True)
    (tests / "logs" / "__init__.py").touch()
    for name in ("test_routing.py", "test_access_log.py", "test_routing_extra.py"):
        (tests / name).touch()
    (tests / "upstream").mkdir()  # no such package, and no __init__.py
    (tests / "upstream" / "test_pools.py").touch()
    (tests / "__pycache__").mkdir()
    assert misplaced(tests, source) == [
        "test_access_log.py: gateway/access_log.py is not top-level; move it to its package's folder",
        "test_routing_extra.py: gateway/routing_extra.py is not top-level; move it to its package's folder",
        "upstream/: gateway/upstream/ is not a package",
        "upstream/: no __init__.py (test modules of the same name would collide)",
    ]
