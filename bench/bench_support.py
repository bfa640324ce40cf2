"""Process, port, HTTP-probe, CPU-accounting and wrk helpers for run_proxy_bench.py.

Everything here targets 127.0.0.1 only and every wait is bounded by a deadline.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

LOOPBACK = "127.0.0.1"
BENCH_DIR = Path(__file__).resolve().parent
PROJECT_ROOT = BENCH_DIR.parent
PROXY_CPU, LOAD_CPU = 0, 1  # the proxy under test on one core; wrk and the upstream on the other
SBIN_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class BenchError(RuntimeError):
    """A setup step failed; the message is meant for the person running the bench."""


class StartFailed(BenchError):
    """A contestant did not come up (or did not do its job); it is skipped, not fatal."""


# ---------------------------------------------------------------- Debian packages
def which(binary: str) -> str | None:
    return shutil.which(binary, path=SBIN_PATH)


def ensure_debian_packages(binary_to_package: dict[str, str]) -> None:
    """apt-get install the packages whose binaries are missing; fail clearly otherwise."""
    missing = sorted({pkg for binary, pkg in binary_to_package.items() if which(binary) is None})
    if not missing:
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise BenchError(
            f"missing Debian packages {missing} and cannot install them (need root and apt-get);"
            f" run: sudo apt-get install -y {' '.join(missing)}"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", *missing]
    print(f"# installing {' '.join(missing)} with apt-get ...", flush=True)
    if subprocess.run(install, env=env, capture_output=True, timeout=600).returncode != 0:
        # The package lists may be absent or stale: update once and try again.
        subprocess.run(["apt-get", "update"], env=env, capture_output=True, timeout=600)
        done = subprocess.run(install, env=env, capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            raise BenchError(f"apt-get install {' '.join(missing)} failed:\n{done.stderr[-2000:]}")
    still = [b for b in binary_to_package if which(b) is None]
    if still:
        raise BenchError(f"installed {missing} but still cannot find {still} on PATH")


# ---------------------------------------------------------------- ports and HTTP
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def http_get(
    port: int, path: str = "/", headers: dict[str, str] | None = None, timeout: float = 2.0
) -> tuple[int, bytes]:
    """One GET to 127.0.0.1:<port>; (status, body)."""
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=timeout)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


# ---------------------------------------------------------------- processes
class Launcher:
    """Starts processes in their own process groups and stops every one of them."""

    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self._procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        cpu: int | None,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> subprocess.Popen[bytes]:
        command = [*(["taskset", "-c", str(cpu)] if cpu is not None else []), *argv]
        with open(self.log_path(name), "ab") as log:
            proc = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env=env,
                cwd=cwd,
            )
        self._procs.append((name, proc))
        return proc

    def pid_of(self, name: str) -> int:
        """The pid of the newest process started under ``name``."""
        for started, proc in reversed(self._procs):
            if started == name:
                return proc.pid
        raise KeyError(name)

    def log_path(self, name: str) -> Path:
        return self.logdir / f"{name}.log"

    def log_tail(self, name: str, lines: int = 8) -> str:
        try:
            text = self.log_path(name).read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.strip().splitlines()[-lines:])

    def stop(self, proc: subprocess.Popen[bytes], grace: float = 5.0) -> None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)  # the group: workers and helpers go too
            try:
                proc.wait(timeout=grace)
                return
            except subprocess.TimeoutExpired:
                continue
        proc.wait(timeout=grace)

    def stop_named(self, name: str) -> None:
        """Stop the processes started under ``name`` (the rest keep running)."""
        for started, proc in [entry for entry in self._procs if entry[0] == name]:
            self.stop(proc)
            self._procs.remove((started, proc))

    def stop_all(self) -> None:
        while self._procs:
            _, proc = self._procs.pop()
            try:
                self.stop(proc)
            except Exception as exc:  # keep stopping the others
                print(f"# warning: could not stop pid {proc.pid}: {exc}", flush=True)


def run_in_workdir(prefix: str, keep_workdir: bool, body: Callable[[Path, Launcher], int]) -> int:
    """Run ``body`` with a fresh work directory and launcher; every process it started is
    stopped at the end, on an error and on Ctrl-C. Returns the exit code for ``sys.exit``."""
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    launcher = Launcher(workdir)
    try:
        return body(workdir, launcher)
    except KeyboardInterrupt:
        print("\ninterrupted; stopping everything", file=sys.stderr)
        return 130
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        launcher.stop_all()
        if keep_workdir:
            print(f"# kept {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def wait_ready(
    launcher: Launcher,
    name: str,
    proc: subprocess.Popen[bytes],
    probe: Callable[[], str | None],
    timeout: float,
) -> None:
    """Poll probe() (None = ready, else why not) until ready, the process dies, or timeout."""
    deadline = time.monotonic() + timeout
    reason = "no probe yet"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            output = launcher.log_tail(name) or "(no output)"
            raise StartFailed(f"exited with code {proc.returncode}: {output}")
        try:
            result = probe()
        except OSError as exc:
            result = f"{type(exc).__name__}: {exc}"
        if result is None:
            return
        reason = result
        time.sleep(0.1)
    raise StartFailed(f"not ready after {timeout:.0f}s ({reason}); {launcher.log_tail(name)}")


# ---------------------------------------------------------------- CPU accounting
def _stat_fields(pid: str) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2 :].split()  # fields from #3 (state) on


def tree_cpu_seconds(root_pid: int) -> float:
    """utime+stime (+ reaped children's) of root_pid and all its descendants / session."""
    table: dict[int, tuple[int, int, int]] = {}  # pid -> (ppid, session, ticks)
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(entry.name)
        if fields is None:
            continue
        ticks = sum(int(fields[i]) for i in (11, 12, 13, 14))  # utime stime cutime cstime
        table[int(entry.name)] = (int(fields[1]), int(fields[3]), ticks)
    if root_pid not in table:
        return 0.0
    session = table[root_pid][1]
    total = 0
    for pid, (_ppid, sid, ticks) in table.items():
        if sid == session or pid == root_pid or _descends_from(pid, root_pid, table):
            total += ticks
    return total / CLOCK_TICKS


def _descends_from(pid: int, root: int, table: dict[int, tuple[int, int, int]]) -> bool:
    for _ in range(64):  # bounded walk up the tree
        parent = table.get(pid, (0, 0, 0))[0]
        if parent == root:
            return True
        if parent <= 1:
            return False
        pid = parent
    return False


def core_ticks() -> dict[int, tuple[int, int]]:
    """Per CPU: (busy, total) jiffies since boot, from /proc/stat (busy = not idle/iowait)."""
    ticks: dict[int, tuple[int, int]] = {}
    for line in Path("/proc/stat").read_text().splitlines():
        name, *values = line.split()
        if name.startswith("cpu") and name[3:].isdigit():
            numbers = [int(v) for v in values]
            total = sum(numbers[:8])  # guest time is already inside user
            ticks[int(name[3:])] = (total - numbers[3] - numbers[4], total)
    return ticks


def core_busy_percent(
    before: dict[int, tuple[int, int]], after: dict[int, tuple[int, int]], cpu: int
) -> float:
    busy = after[cpu][0] - before[cpu][0]
    total = after[cpu][1] - before[cpu][1]
    return 100.0 * busy / total if total else 0.0


# ---------------------------------------------------------------- wrk
@dataclass(frozen=True)
class WrkResult:
    requests: int
    seconds: float
    p50_us: float
    p99_us: float
    errors: int  # socket errors + non-2xx/3xx
    cpu_seconds: float = 0.0
    side_cpu_seconds: float = 0.0  # a helper process charged separately (gateway-full's Redis)
    core_busy: tuple[float, ...] = ()  # whole-machine busy % per CPU during the run

    @property
    def req_per_s(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def cpu_us_per_req(self) -> float:
        return self.cpu_seconds * 1e6 / self.requests if self.requests else float("nan")

    @property
    def side_cpu_us_per_req(self) -> float:
        return self.side_cpu_seconds * 1e6 / self.requests if self.requests else float("nan")

    @property
    def cpu_percent(self) -> float:
        return 100.0 * self.cpu_seconds / self.seconds if self.seconds else 0.0


_RESULT = re.compile(r"^BENCH_RESULT (.*)$", re.MULTILINE)


def run_wrk(
    *,
    port: int,
    duration: int,
    connections: int,
    threads: int,
    headers: dict[str, str],
    cpu: int,
    lua: Path,
    path: str = "/",
) -> WrkResult:
    """Run wrk against 127.0.0.1:<port><path> and parse the line printed by wrk_report.lua (a
    script may also build each request itself, as full_chain.py's does)."""
    wrk = which("wrk")
    if wrk is None:
        raise BenchError("wrk is not installed")
    argv = [
        wrk,
        "-t",
        str(threads),
        "-c",
        str(connections),
        "-d",
        f"{duration}s",
        "--latency",
        "--timeout",
        "5s",
        "-s",
        str(lua),
    ]
    for key, value in headers.items():
        argv += ["-H", f"{key}: {value}"]
    argv.append(f"http://{LOOPBACK}:{port}{path}")
    proc = subprocess.Popen(
        ["taskset", "-c", str(cpu), *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=duration + 30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)
    text = out.decode(errors="replace")
    match = _RESULT.search(text)
    if proc.returncode != 0 or match is None:
        raise BenchError(f"wrk failed (exit {proc.returncode}):\n{text[-1500:]}")
    values = {k: float(v) for k, v in (kv.split("=") for kv in match.group(1).split())}
    errors = sum(int(values[k]) for k in ("connect", "read", "write", "status", "timeout"))
    return WrkResult(
        requests=int(values["requests"]),
        seconds=values["duration_us"] / 1e6,
        p50_us=values["p50_us"],
        p99_us=values["p99_us"],
        errors=errors,
    )


def start_gateway_process(
    launcher: Launcher,
    name: str,
    config_file: Path,
    port: int,
    *,
    cpu: int | None,
    project_root: Path,
    master_key: str,
    timeout: float = 20.0,
) -> subprocess.Popen[bytes]:
    """``python -m gateway run -c config_file`` under ``launcher``; returns once /_gateway/ready
    answers 200 on ``port`` (the first snapshot of switches, keys and revocations is held)."""
    import sys

    env = {**os.environ, "PYTHONPATH": str(project_root), "SHOPINO_GATEWAY_MASTER_KEY": master_key}
    proc = launcher.start(
        name,
        [sys.executable, "-m", "gateway", "run", "-c", str(config_file)],
        cpu=cpu,
        env=env,
        cwd=project_root,
    )

    def ready() -> str | None:
        status, body = http_get(port, "/_gateway/ready")
        return None if status == 200 else f"ready -> {status} {body[:60]!r}"

    wait_ready(launcher, name, proc, ready, timeout)
    return proc


def start_redis(launcher: Launcher, workdir: Path, cpu: int | None, name: str = "redis") -> str:
    """A throwaway redis-server (no persistence) on a free loopback port; returns its URL (its
    pid is ``launcher.pid_of(name)``)."""
    port = free_port()
    binary = shutil.which("redis-server")
    if binary is None:
        raise StartFailed("redis-server is not installed")
    launcher.start(
        name,
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", str(workdir)],
        cpu=cpu,
    )
    time.sleep(0.5)
    return f"redis://127.0.0.1:{port}/0"


def listen_server() -> dict[str, str]:
    """``listen.server`` for the gateway contestants: $SHOPINO_BENCH_LISTEN_SERVER (lean or
    aiohttp) when set, so one session can measure both listeners; else the config default."""
    server = os.environ.get("SHOPINO_BENCH_LISTEN_SERVER")
    return {"server": server} if server else {}
