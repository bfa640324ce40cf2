"""Micro-benchmark of the upstream leg: AiohttpTransport vs HttptoolsTransport, same run.

    python bench/transport_bench.py [--requests 20000] [--concurrency 50] [--rounds 3]

A raw keep-alive HTTP/1.1 upstream (fixed 100-byte ``200``) runs in a child process on
127.0.0.1, so the figures are the client side only. Both transports run under uvloop in this
process, interleaved round by round (a noisy moment hurts both); each round sends ``--requests``
GETs from ``--concurrency`` workers, every request carrying the headers the proxy forwards, and
reads the body to the end. Printed: µs of wall time and of process CPU time per request (best
round each), and the ratio aiohttp / httptools. Nothing here asserts on speed.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time
from pathlib import Path

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.config.model import UpstreamConfig
from gateway.upstream.forwarding import UpstreamHeaders
from gateway.upstream.transport_aiohttp import AiohttpTransport
from gateway.upstream.transport_httptools import HttptoolsTransport

# AiohttpResponse.headers is a CIMultiDictProxy, which mypy will not match to the protocol's
# settable union attribute, so the two concrete transports are named here.
Transport = AiohttpTransport | HttptoolsTransport
BODY = b"x" * 100
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s" % (len(BODY), BODY)
HEADERS = (
    ("User-Agent", "wrk"),
    ("Accept", "*/*"),
    ("X-Forwarded-For", "203.0.113.7"),
    ("X-Forwarded-Proto", "https"),
    ("X-Forwarded-Host", "erp.example.com"),
    ("Forwarded", 'for=203.0.113.7;proto=https;host="erp.example.com"'),
    ("X-Request-ID", "r-7b3d4c5e8f9a0b1c"),
    ("X-Shopino-Tenant", "acme"),
)


# ---------------------------------------------------------------- the upstream (child process)
class _Upstream(asyncio.Protocol):
    """Answers every request head with RESPONSE; GETs only, so a head ends the request."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.pending = b""

    def data_received(self, data: bytes) -> None:
        data = self.pending + data
        count = data.count(b"\r\n\r\n")
        self.pending = data[data.rfind(b"\r\n\r\n") + 4 :] if count else data
        if count:
            self.transport.write(RESPONSE * count)


async def _serve() -> None:
    server = await asyncio.get_running_loop().create_server(_Upstream, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    await asyncio.Event().wait()


# ---------------------------------------------------------------- the client side
async def _round(transport: Transport, requests: int, concurrency: int) -> tuple[float, float]:
    """(wall µs/request, CPU µs/request) for one round."""
    remaining = requests

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            response = await transport.send(
                "GET", "/api/v1/orders?page=2", UpstreamHeaders.of(HEADERS), None, retryable=True
            )
            try:
                size = 0
                async for chunk in response.iter_chunks():
                    size += len(chunk)
                assert response.status == 200 and size == len(BODY)
            finally:
                response.release()

    wall, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return (
        (time.perf_counter() - wall) / requests * 1e6,
        (time.process_time() - cpu) / requests * 1e6,
    )


async def _compare(port: int, args: argparse.Namespace) -> None:
    config = UpstreamConfig(name="bench", urls=(f"http://127.0.0.1:{port}",), pool_size=args.concurrency)
    contestants: dict[str, Transport] = {
        "aiohttp": AiohttpTransport(config),
        "httptools": HttptoolsTransport(config),
    }
    best: dict[str, tuple[float, float]] = {}
    try:
        for transport in contestants.values():  # warm pools and code paths, unmeasured
            await _round(transport, max(2000, args.concurrency), args.concurrency)
        for round_no in range(args.rounds):
            order = list(contestants) if round_no % 2 == 0 else list(reversed(contestants))
            for name in order:
                wall, cpu = await _round(contestants[name], args.requests, args.concurrency)
                print(f"round {round_no + 1} {name:>9}: {wall:7.1f} µs wall  {cpu:7.1f} µs CPU per request")
                previous = best.get(name, (float("inf"), float("inf")))
                best[name] = (min(previous[0], wall), min(previous[1], cpu))
    finally:
        for transport in contestants.values():
            await transport.close()
    (a_wall, a_cpu), (h_wall, h_cpu) = best["aiohttp"], best["httptools"]
    print()
    print(f"{'transport':>10} | {'µs/req wall':>11} | {'µs/req CPU':>10}")
    print(f"{'aiohttp':>10} | {a_wall:11.1f} | {a_cpu:10.1f}")
    print(f"{'httptools':>10} | {h_wall:11.1f} | {h_cpu:10.1f}")
    print(f"{'ratio':>10} | {a_wall / h_wall:10.2f}x | {a_cpu / h_cpu:9.2f}x   (aiohttp / httptools)")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args()
    if args.serve:
        uvloop.run(_serve())
        return
    child = subprocess.Popen([sys.executable, __file__, "--serve"], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        port = int(child.stdout.readline())
        print(
            f"# {args.requests} GETs x {args.rounds} rounds, {args.concurrency} concurrent,"
            f" Python {sys.version.split()[0]}, uvloop {uvloop.__version__}"
        )
        uvloop.run(_compare(port, args))
    finally:
        child.terminate()
        child.wait(timeout=10)


if __name__ == "__main__":
    main()
