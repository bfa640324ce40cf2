#!/usr/bin/env python3
"""CI's regression guard: the full chain's instructions per request against a committed budget.

Counts ``gateway-full`` (the issue-13 workload of full_chain.py) under callgrind exactly as
instructions_bench.py does, and exits 1 when the count is more than the budget's tolerance
over ``bench/instruction_budget.json``'s budget. Instructions, not seconds: the count repeats
within about 1 % on a loaded host, so the guard does not flake with the machine's noise.

    python bench/instruction_guard.py            # measure and judge (exit 0 within budget)
    python bench/instruction_guard.py --budget-file other.json
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench_contestants import start_bench_env
from bench_support import BENCH_DIR, Launcher, StartFailed, ensure_debian_packages, run_in_workdir
from instructions_bench import CONTESTANTS, count

BUDGET_FILE = BENCH_DIR / "instruction_budget.json"


@dataclass(frozen=True)
class Budget:
    contestant: str
    budget: int
    tolerance: float
    requests: int
    connections: int

    @property
    def ceiling(self) -> float:
        return self.budget * (1 + self.tolerance)


def load_budget(path: Path) -> Budget:
    raw = json.loads(path.read_text())
    return Budget(
        contestant=str(raw["contestant"]),
        budget=int(raw["budget"]),
        tolerance=float(raw["tolerance"]),
        requests=int(raw["requests"]),
        connections=int(raw["connections"]),
    )


def judge(measured: float, budget: Budget) -> tuple[bool, str]:
    """Within the ceiling or not, and the line that says so."""
    share = measured / budget.budget
    verdict = "within budget" if measured <= budget.ceiling else "OVER BUDGET"
    line = (
        f"{budget.contestant}: {measured:,.0f} instructions/request = {share:.3f} x budget "
        f"{budget.budget:,} (ceiling {budget.ceiling:,.0f}, +{budget.tolerance:.0%}): {verdict}"
    )
    return measured <= budget.ceiling, line


def run(budget: Budget, workdir: Path, launcher: Launcher) -> int:
    ensure_debian_packages({"valgrind": "valgrind", "callgrind_control": "valgrind", "nginx": "nginx-light"})
    env = start_bench_env(launcher, workdir, sys.executable)
    try:
        target = CONTESTANTS[budget.contestant](env)
    except StartFailed as exc:
        print(f"instruction guard: {budget.contestant} did not start: {exc}", file=sys.stderr)
        return 2
    measured = count(target, budget.requests, budget.connections, warmup=400)
    ok, line = judge(measured, budget)
    print(line, flush=True)
    return 0 if ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--budget-file", type=Path, default=BUDGET_FILE)
    parser.add_argument("--keep-workdir", action="store_true")
    args = parser.parse_args(argv)
    budget = load_budget(args.budget_file)
    return run_in_workdir("instruction-guard-", args.keep_workdir, lambda w, lch: run(budget, w, lch))


if __name__ == "__main__":
    sys.exit(main())
