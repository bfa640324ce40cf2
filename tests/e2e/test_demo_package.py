"""``shopino-gateway demo`` from a wheel in a fresh venv, not from the source checkout.

The wheel is built from exactly what the Dockerfile's build stage copies, so a file the package
needs but the image build leaves out fails here too.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

import gateway
from tests.support.demo_proc import DemoProc
from tests.support.gateway_proc import insecure_client_context

ROOT = Path(gateway.__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


def _copy_build_context(into: Path) -> None:
    """Replay the ``COPY`` lines of the Dockerfile's build stage (``WORKDIR /src``)."""
    lines = (ROOT / "Dockerfile").read_text().splitlines()
    build_stage = lines[: next(i for i, line in enumerate(lines) if line.startswith("FROM") and i > 1)]
    copies = [line.split()[1:] for line in build_stage if line.startswith("COPY ")]
    assert copies, "the Dockerfile's build stage copies nothing?"
    for *sources, dest in copies:
        for source in sources:
            target = into / dest / source if dest.endswith("/") else into / dest
            if (ROOT / source).is_dir():
                ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
                shutil.copytree(ROOT / source, target, symlinks=True, ignore=ignore)
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / source, target)


def _build_wheel(tmp: Path) -> Path:
    context, wheels = tmp / "src", tmp / "wheels"
    _copy_build_context(context)
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), "."]
    # Offline when this environment can build wheels itself; otherwise pip fetches the
    # build-system requirements (setuptools, wheel) from the package index.
    can_build = importlib.util.find_spec("wheel") is not None or importlib.util.find_spec(
        "setuptools.command.bdist_wheel"
    )
    if can_build:
        command.insert(5, "--no-build-isolation")
    subprocess.run(command, cwd=context, check=True, capture_output=True, timeout=120)
    (wheel,) = wheels.glob("shopino_gateway-*.whl")
    return wheel


def _venv_with(wheel: Path, tmp: Path) -> Path:
    venv = tmp / "venv"
    # System site-packages: the dependencies are there already (no download). Its own
    # site-packages comes first on sys.path, so `gateway` is the wheel's (checked below).
    subprocess.run(
        [sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)],
        check=True,
        timeout=60,
    )
    pip = [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python")]
    subprocess.run(
        [*pip, "install", "-q", "--no-deps", "--no-index", str(wheel)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return venv


def test_demo_runs_from_a_wheel_in_a_fresh_venv(tmp_path: Path) -> None:
    venv = _venv_with(_build_wheel(tmp_path), tmp_path)
    run_dir, scratch = tmp_path / "elsewhere", tmp_path / "tmpdir"
    run_dir.mkdir()
    scratch.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["TMPDIR"] = str(scratch)
    where = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import gateway; print(gateway.__file__)"],
        cwd=run_dir,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    package = Path(where.stdout.strip()).parent
    assert package.is_relative_to(venv), package  # the wheel's code, not the checkout's

    demo = DemoProc(tmp_path, [str(venv / "bin" / "shopino-gateway")], env=env, cwd=run_dir)
    try:
        output = demo.start()
        shipped = (ROOT / "config" / "gateway.yaml").read_bytes()
        assert (package / "default_config.yaml").read_bytes() == shipped  # a copy in the wheel, not a link
        with urllib.request.urlopen(
            f"{demo.url}/_gateway/health", timeout=5, context=insecure_client_context()
        ) as response:
            assert response.status == 200
        # The console ships in the wheel, and the banner says where it is (issue 16).
        console = next(line for line in output.splitlines() if "incident console:" in line).split()[2]
        for name in ("", "main.js", "board.js", "console.css"):
            with urllib.request.urlopen(console + name, timeout=5) as response:
                assert response.status == 200 and response.read()
        # State, keys and the certificate: a fresh temporary directory, not the package's.
        state = Path(next(line for line in output.splitlines() if "state, keys and TLS" in line).split()[5])
        assert state.is_relative_to(scratch) and (state / "tls" / "self-signed.crt").exists()
        assert not any(package.rglob("*.crt")) and not (package / "var").exists()
        assert not (run_dir / "var").exists()
    finally:
        code = demo.stop()
    assert code == 0, demo.output()
    assert "demo stopped" in demo.output()
