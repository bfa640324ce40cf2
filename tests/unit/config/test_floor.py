"""``gateway.config`` is the floor every feature builds on: importing any of its modules must
load no other part of the gateway (a feature import here would close a circle, since every
feature's ``schema.py`` imports the floor)."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path

import gateway.config

ROOT = Path(__file__).resolve().parents[3]


def test_the_floor_imports_no_other_gateway_package() -> None:
    floor = sorted(f"gateway.config.{m.name}" for m in pkgutil.iter_modules(gateway.config.__path__))
    assert "gateway.config.reader" in floor and "gateway.config.model" in floor
    script = (
        "import importlib, sys\n"
        f"for name in {floor!r}: importlib.import_module(name)\n"
        "print('\\n'.join(sorted(m for m in sys.modules if m.startswith('gateway'))))\n"
    )
    # A fresh interpreter: this test process has imported most of the gateway already.
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True, timeout=60
    )
    loaded = set(result.stdout.split())
    assert loaded - {"gateway", "gateway.config", *floor} == set()
