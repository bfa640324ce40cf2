"""Issue 13's regression guard, run by CI: the full chain's instructions per request (callgrind)
must stay within 10 % of the budget committed in bench/instruction_budget.json."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH_DIR = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH_DIR))

from instruction_guard import BUDGET_FILE, Budget, judge, load_budget  # noqa: E402


def _budget(budget: int = 1_000_000, tolerance: float = 0.10) -> Budget:
    return Budget("gateway-full", budget, tolerance, requests=100, connections=1)


def test_a_count_within_the_tolerance_passes() -> None:
    assert judge(1_099_999, _budget())[0]
    assert judge(500_000, _budget())[0]


def test_a_count_more_than_the_tolerance_over_fails() -> None:
    ok, line = judge(1_100_001, _budget())
    assert not ok
    assert "OVER BUDGET" in line and "1,100,001" in line


def test_the_committed_budget_names_the_full_chain_with_a_ten_percent_tolerance() -> None:
    budget = load_budget(BUDGET_FILE)
    assert budget.contestant == "gateway-full"
    assert budget.tolerance == pytest.approx(0.10)
    assert budget.budget > 0 and budget.requests >= 500


@pytest.mark.e2e
@pytest.mark.slow
def test_the_full_chain_stays_within_its_instruction_budget() -> None:
    done = subprocess.run(
        [sys.executable, str(BENCH_DIR / "instruction_guard.py")],
        capture_output=True,
        text=True,
        timeout=900,
    )
    print(done.stdout, done.stderr)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "within budget" in done.stdout
