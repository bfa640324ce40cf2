"""``shopino-gateway demo`` in a subprocess on free loopback ports: its banner, its walkthrough."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Sequence
from pathlib import Path

import gateway
from gateway.demo.walkthrough import PASTE_FROM, PASTE_TO
from tests.support.gateway_proc import free_port

BANNER_END = "Ctrl-C stops everything"
STEP_RE = re.compile(r"^# (\d+)\. ")


def this_checkout_env() -> dict[str, str]:
    """The environment with this test run's ``gateway`` first on PYTHONPATH, so a subprocess in
    any working directory runs the code under test (not another installed copy)."""
    root = str(Path(gateway.__file__).resolve().parent.parent)
    rest = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{rest}" if rest else root}


class DemoProc:
    """One demo run. ``command`` is how to start it (default: this interpreter, ``-m gateway``)."""

    def __init__(
        self,
        tmp: Path,
        command: Sequence[str] = (sys.executable, "-m", "gateway"),
        *,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.port, self.admin_port, self.backend_port = free_port(), free_port(), free_port()
        self.log_path = tmp / "demo.log"
        self.command = [
            *command,
            "demo",
            "--port",
            str(self.port),
            "--admin-port",
            str(self.admin_port),
            "--backend-port",
            str(self.backend_port),
        ]
        self.env = env if env is not None else this_checkout_env()
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def start(self, timeout: float = 30.0) -> str:
        """Start and wait for the whole banner; returns the output so far."""
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                self.command, stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=self.cwd
            )
        deadline = time.monotonic() + timeout
        while BANNER_END not in (output := self.output()):
            assert self.proc.poll() is None, f"demo exited with {self.proc.returncode}:\n{output}"
            assert time.monotonic() < deadline, f"no banner within {timeout}s:\n{output}"
            time.sleep(0.1)
        return output

    def stop(self, timeout: float = 15.0) -> int:
        """Ctrl-C, as the banner says; the exit code."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise

    def walkthrough(self) -> str:
        """The paste-able block of the banner, as bash would get it."""
        output = self.output()
        start, end = output.index(PASTE_FROM), output.index(PASTE_TO)
        block = output[output.rindex("\n", 0, start) + 1 : end]
        return textwrap.dedent(block)


def split_steps(script: str) -> tuple[str, dict[str, str]]:
    """(the set-up lines before step 1, {step number: that step's lines})."""
    setup: list[str] = []
    steps: dict[str, list[str]] = {}
    current = setup
    for line in script.splitlines():
        if match := STEP_RE.match(line):
            current = steps.setdefault(match.group(1), [])
        current.append(line)
    return "\n".join(setup), {number: "\n".join(lines) for number, lines in steps.items()}
