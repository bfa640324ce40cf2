#!/usr/bin/env python3
"""Instructions per request of the lean listener's own path: parsing a head (httptools and
``LeanProtocol``'s callbacks), queueing it and the connection's task running it, with a handler
that answers at once (no pipeline, no upstream, no socket).

The issue-13 head (Host, a ~300-byte bearer token, X-Tenant-ID) is fed ``--requests`` times on
one keep-alive connection; the process runs under callgrind twice, with the requests and without
them, and the difference per request is printed. The figure includes the bench loop's own
``asyncio.sleep(0)`` calls (constant): compare trees (``--tree``), not absolute figures.

    python bench/listener_parse_bench.py [--requests 3000] [--tree /work/wt/base]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HEAD = (
    b"GET /erp/api/v1/items?limit=4 HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n"
    b"Authorization: Bearer " + b"e" * 300 + b"\r\nX-Tenant-ID: tenant-spoofed\r\n\r\n"
)


class _Transport:
    def is_closing(self) -> bool:
        return False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def write(self, data: bytes) -> None:
        pass

    def close(self) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


class _Handler:
    answered = 0

    async def handle(self, request: Any) -> bool:
        _Handler.answered += 1
        return True


class _Guard:
    header_timeout = 10.0
    body_timeout = 30.0
    open_connections = 0
    max_connections = 100
    refused_connections = 0


class _Listener:
    handler = _Handler()
    guarded = _Guard()
    keepalive_timeout = 60.0
    max_line_size = 8190
    max_field_size = 8190
    max_unframed = 65536
    max_headers = 100
    closing = False

    def __init__(self) -> None:
        self.connections: set[Any] = set()


def _serve(requests: int) -> None:
    import uvloop

    from gateway.http1.protocol import LeanProtocol

    async def run() -> None:
        protocol = LeanProtocol(_Listener())  # type: ignore[arg-type]
        protocol.connection_made(_Transport())  # type: ignore[arg-type]
        for _ in range(requests):
            protocol.data_received(HEAD)
            for _ in range(3):  # the task wakes, answers and waits again
                await asyncio.sleep(0)

    uvloop.run(run())
    if _Handler.answered != requests:
        raise SystemExit(f"answered {_Handler.answered} of {requests}")


def _collected(tree: Path, requests: int) -> int:
    with tempfile.TemporaryDirectory() as out:
        done = subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={out}/callgrind.out",
                sys.executable,
                __file__,
                "--serve",
                str(requests),
            ],
            env={**os.environ, "PYTHONPATH": str(tree), "PYTHONHASHSEED": "0"},  # steadier counts
            capture_output=True,
            text=True,
            check=True,
        )
    found = re.search(r"Collected : (\d+)", done.stderr)
    if found is None:
        raise SystemExit(done.stderr)
    return int(found.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--tree", type=Path, default=Path(__file__).resolve().parent.parent)
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve is not None:
        _serve(args.serve)
        return
    per_request = (_collected(args.tree, args.requests) - _collected(args.tree, 0)) / args.requests
    print(f"{args.tree}: {per_request:,.0f} instructions/request")


if __name__ == "__main__":
    main()
