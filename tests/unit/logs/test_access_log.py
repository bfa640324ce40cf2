"""The access log's batching: lines of a few milliseconds share one write, none waits longer."""

from __future__ import annotations

import asyncio
import datetime
import io
import random
import time
from types import SimpleNamespace

import orjson
import pytest

from gateway.context import ContextKey
from gateway.logs import access_log
from gateway.logs.access_log import (
    FLUSH_DELAY,
    AccessLogWriter,
    _UtcStamp,
    flush_access_logs,
    milliseconds,
)
from gateway.redaction.processor import Redactor


class CountingStream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0
        self.flushes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)

    def flush(self) -> None:
        self.flushes += 1


def writer_on(stream: CountingStream) -> AccessLogWriter:
    return AccessLogWriter(
        Redactor(), enabled=True, pseudonymize=True, pseudonym_key=b"k" * 32, stream=stream
    )


def finished_request(request_id: str) -> tuple[dict[object, object], SimpleNamespace]:
    ctx = SimpleNamespace(
        request_id=request_id,
        route=SimpleNamespace(name="orders"),
        target=SimpleNamespace(path="/api/orders", query=""),
        client_ip="192.0.2.77",
        user="alice@acme.example",
        tenant="acme",
        outcome=None,
        ratelimit=None,
        trace=("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", "", None, None),
        refusal=None,
        request=SimpleNamespace(method="GET"),
    )
    request: dict[object, object] = {ContextKey: ctx}
    return request, SimpleNamespace(status=200, body_length=42)


def log_one(writer: AccessLogWriter, request_id: str) -> None:
    fields, response = finished_request(request_id)
    writer.write_entry(fields[ContextKey], response.status, response.body_length, 0.0015)  # type: ignore[arg-type]


def lines_of(stream: CountingStream) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in stream.getvalue().splitlines()]


async def settle() -> None:
    await asyncio.sleep(FLUSH_DELAY * 3)


async def test_lines_of_a_few_milliseconds_go_out_in_one_write_and_none_waits_longer() -> None:
    stream = CountingStream()
    writer = writer_on(stream)
    log_one(writer, "req-0")
    await asyncio.sleep(0)  # other requests finish in the next turns of the loop
    for n in (1, 2):
        log_one(writer, f"req-{n}")
    assert stream.writes == 0  # held for at most FLUSH_DELAY
    await settle()
    assert stream.writes == 1 and stream.flushes == 1
    assert [line["request_id"] for line in lines_of(stream)] == ["req-0", "req-1", "req-2"]
    # A later line starts a new batch: nothing is held back waiting for more.
    log_one(writer, "req-3")
    await settle()
    assert stream.writes == 2
    assert lines_of(stream)[-1]["request_id"] == "req-3"


async def test_batched_lines_keep_every_field_and_its_redaction() -> None:
    stream = CountingStream()
    log_one(writer_on(stream), "req-9")
    await settle()
    (line,) = lines_of(stream)
    assert line["status"] == 200 and line["route"] == "orders" and line["duration_ms"] == 1.5
    assert line["client_ip"] == "192.0.2.0"  # truncated
    assert "alice" not in stream.getvalue()  # the user is a keyed pseudonym


def test_without_a_running_loop_a_line_is_written_at_once() -> None:
    stream = CountingStream()
    log_one(writer_on(stream), "req-1")
    assert stream.writes == 1 and stream.flushes == 1


async def test_lines_still_pending_at_exit_are_written_by_the_exit_hook() -> None:
    stream = CountingStream()
    writer = writer_on(stream)
    log_one(writer, "req-1")
    flush_access_logs()  # what atexit (and a worker's exit) runs when the loop stops first
    assert lines_of(stream)[0]["request_id"] == "req-1"
    await settle()  # the scheduled flush then finds nothing more to write
    assert stream.writes == 1


async def test_client_ips_stay_truncated_however_many_and_however_often() -> None:
    stream = CountingStream()
    writer = writer_on(stream)
    ips = [f"10.{n // 256 % 256}.{n % 256}.9" for n in range(5000)]  # more than the memo holds
    for ip in [*ips, *ips[:10]]:
        fields, response = finished_request("r")
        fields[ContextKey].client_ip = ip  # type: ignore[attr-defined]
        writer.write_entry(fields[ContextKey], response.status, response.body_length, 0.001)  # type: ignore[arg-type]
    await settle()
    seen = [line["client_ip"] for line in lines_of(stream)]
    expected = [ip.rsplit(".", 1)[0] + ".0" for ip in [*ips, *ips[:10]]]
    assert seen == expected


def test_identity_fields_stay_masked_on_repeat_requests() -> None:
    """The user and tenant caches are probed inline: the second and later lines of one identity
    must be exactly as masked as the first."""
    pseudonymized, plain = CountingStream(), CountingStream()
    writers = (
        writer_on(pseudonymized),
        AccessLogWriter(Redactor(), enabled=True, pseudonymize=False, pseudonym_key=b"k" * 32, stream=plain),
    )
    for writer in writers:
        for _ in range(3):
            fields, response = finished_request("r")
            fields[ContextKey].tenant = "bob@globex.example"  # type: ignore[attr-defined]
            writer.write_entry(fields[ContextKey], response.status, response.body_length, 0.001)  # type: ignore[arg-type]
    users = {line["user"] for line in lines_of(pseudonymized)}
    assert len(users) == 1 and next(iter(users)).startswith("u_")
    for stream in (pseudonymized, plain):
        text = stream.getvalue()
        assert len(lines_of(stream)) == 3
        assert "alice@acme.example" not in text and "bob@globex.example" not in text
    # Without pseudonyms the user id is logged through the redactor: the e-mail is masked.
    assert all(line["user"] != "alice@acme.example" for line in lines_of(plain))


@pytest.fixture
def one_second(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every line stamped with the second now running: refusals are thinned per second, and a
    flood the wall clock happened to split in two (about 1 run in 1,000) would count as two."""
    second = float(int(time.time()))
    monkeypatch.setattr(access_log, "_time", lambda: second)


def refused(writer: AccessLogWriter, client_ip: str, slug: str = "rate-limited") -> None:
    fields, response = finished_request("r")
    ctx = fields[ContextKey]
    ctx.refusal, ctx.client_ip, ctx.user, ctx.tenant = slug, client_ip, None, None  # type: ignore[attr-defined]
    response.status = 429
    writer.write_entry(fields[ContextKey], response.status, response.body_length, 0.0001)  # type: ignore[arg-type]


@pytest.mark.usefixtures("one_second")
async def test_a_flood_of_refusals_gets_ten_full_lines_a_second_and_an_exact_count() -> None:
    stream = CountingStream()
    writer = writer_on(stream)
    for _ in range(250):
        refused(writer, "198.51.100.9")
    for _ in range(3):
        refused(writer, "203.0.113.10")  # another client: under the threshold, every line
    refused(writer, "198.51.100.9", slug="invalid-token")  # another reason: its own budget
    writer.flush(final=True)
    lines = lines_of(stream)
    full = [line for line in lines if line["event"] == "access"]
    summaries = [line for line in lines if line["event"] == "access_refusals"]
    assert len(full) == 10 + 3 + 1
    assert summaries == [
        {
            "timestamp": summaries[0]["timestamp"],
            "level": "info",
            "event": "access_refusals",
            "reason": "rate-limited",
            "status": 429,
            "route": "orders",
            "client_ip": "198.51.100.0",  # truncated like every access line
            "count": 240,
        }
    ]


@pytest.mark.usefixtures("one_second")
async def test_refusal_counts_are_written_once_their_second_has_ended() -> None:
    stream = CountingStream()
    writer = writer_on(stream)
    for _ in range(15):
        refused(writer, "203.0.113.5")
    await asyncio.sleep(1.1)
    writer.flush()
    counts = [line["count"] for line in lines_of(stream) if line["event"] == "access_refusals"]
    assert counts == [5]


def test_answered_requests_are_never_thinned() -> None:
    stream = CountingStream()
    writer = writer_on(stream)
    for index in range(50):
        log_one(writer, f"req-{index}")
    writer.flush()
    assert len(lines_of(stream)) == 50


def test_duration_ms_is_round_to_three_places_bit_for_bit() -> None:
    """``milliseconds`` is ``round(elapsed * 1000, 3)`` for every duration: typical ones, exact
    ties at the third place (where it defers to ``round``), tiny ones and streams of hours."""
    random.seed(13)
    cases = [random.random() * 10 ** random.uniform(-7, 4) for _ in range(200_000)]
    cases += [n / 1e6 for n in range(20_000)] + [(n + 0.5) / 1e6 for n in range(20_000)]
    cases += [0.0, 5e-7, 1.5e-6, 2.5e-6, 0.0125, 3600.0, 9000.000_000_5, 86400.123_456_789, 1e9]
    for elapsed in cases:
        assert repr(milliseconds(elapsed)) == repr(round(elapsed * 1000, 3)), elapsed


def test_the_stamp_is_rfc3339_utc_with_its_milliseconds_cut_not_rounded() -> None:
    """The stamp's milliseconds come from a table: for every millisecond, at and around the
    second's edges, and across seconds in any order, exactly the datetime spelling with the
    milliseconds truncated (as ``int((now - second) * 1000):03d`` always gave them)."""
    stamp = _UtcStamp()
    random.seed(7)
    base = 1_767_225_599  # 2025-12-31T23:59:59Z: the next second is another day and year
    cases = [base + ms / 1000 for ms in range(1000)] + [base + 1 + ms / 1000 + 0.0004 for ms in range(1000)]
    cases += [base + random.random() * 5 for _ in range(5000)] + [0.0, 0.9999, 1.0005, base + 0.9999999]
    for now in cases:
        second = int(now)
        day = datetime.datetime.fromtimestamp(second, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S")
        assert stamp(now) == f"{day}.{int((now - second) * 1000):03d}+00:00", now
