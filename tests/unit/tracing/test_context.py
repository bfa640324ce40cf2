"""W3C Trace Context (SPEC Appendix C): strict ``traceparent`` parsing, ``tracestate`` hygiene,
a trusted caller's trace continued with the gateway's own span, anything else replaced."""

from __future__ import annotations

import os
import re

import pytest

from gateway.tracing.context import (
    PARENT_ID,
    SPAN_ID,
    TRACE_ID,
    TRACEPARENT,
    TRACESTATE,
    clean_tracestate,
    continued_trace,
    new_trace,
    parse_traceparent,
)

VALID = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
NEW_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-01\Z")


def test_a_valid_traceparent_is_read() -> None:
    assert parse_traceparent(VALID) == ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", "01")
    assert parse_traceparent(VALID[:-2] + "00") == (
        "4bf92f3577b34da6a3ce929d0e0e4736",
        "00f067aa0ba902b7",
        "00",
    )


@pytest.mark.parametrize(
    "value",
    [
        "",
        VALID.upper(),  # upper-case hex
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # another version
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # the forbidden version
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # all-zero trace id
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  # all-zero parent id
        "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",  # trace id too short
        "00-4bf92f3577b34da6a3ce929d0e0e47366-00f067aa0ba902b7-01",  # too long
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b-01",  # parent id too short
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",  # flags too short
        VALID + "-extra",  # version 00 has exactly four fields
        VALID + "\n",
        " " + VALID,
        "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",  # not hex
        "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01",
    ],
)
def test_an_invalid_traceparent_is_refused(value: str) -> None:
    assert parse_traceparent(value) is None


def test_new_traces_are_well_formed_and_distinct() -> None:
    traces = [new_trace() for _ in range(600)]  # more than one batch
    for trace in traces:
        match = NEW_TRACEPARENT.match(trace[TRACEPARENT])
        assert match is not None and match.groups() == (trace[TRACE_ID], trace[SPAN_ID])
        assert parse_traceparent(trace[TRACEPARENT]) is not None
        assert trace[TRACESTATE] is None and trace[PARENT_ID] is None
    assert len({t[TRACE_ID] for t in traces}) == 600 and len({t[SPAN_ID] for t in traces}) == 600


def test_a_trusted_callers_trace_is_continued_with_the_gateways_own_span() -> None:
    trace = continued_trace([VALID], ["congo=t61rcWkgMzE", "rojo=00f067aa0ba902b7"])
    assert trace[TRACE_ID] == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert trace[PARENT_ID] == "00f067aa0ba902b7"
    assert trace[SPAN_ID] != "00f067aa0ba902b7" and re.fullmatch(r"[0-9a-f]{16}", trace[SPAN_ID])
    assert trace[TRACEPARENT] == f"00-4bf92f3577b34da6a3ce929d0e0e4736-{trace[SPAN_ID]}-01"
    assert trace[TRACESTATE] == "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"
    # The caller's flags are kept (not sampled stays not sampled).
    assert continued_trace([VALID[:-2] + "00"], [])[TRACEPARENT].endswith("-00")


@pytest.mark.parametrize(
    "traceparents",
    [[], [VALID, VALID], ["00-00000000000000000000000000000000-00f067aa0ba902b7-01"], [VALID.upper()]],
)
def test_a_missing_repeated_or_invalid_traceparent_starts_a_new_trace(traceparents: list[str]) -> None:
    trace = continued_trace(traceparents, ["congo=t61rcWkgMzE"])
    assert trace[TRACE_ID] != "4bf92f3577b34da6a3ce929d0e0e4736"
    assert trace[PARENT_ID] is None
    assert trace[TRACESTATE] is None  # a tracestate without a valid traceparent is dropped too


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (["a=1"], "a=1"),
        (["a=1, b=2", "c@sys=3"], "a=1,b=2,c@sys=3"),
        ([""], None),
        (["A=1"], None),  # keys are lower-case
        (["a=1,b"], None),  # a member without a value
        (["a=x=y"], None),  # '=' inside a value
        ([",".join(f"k{i}=v" for i in range(33))], None),  # more than 32 members
        (["k=" + "v" * 600], None),  # longer than we pass on: dropped whole, never cut
    ],
)
def test_tracestate_is_passed_on_only_when_valid(values: list[str], expected: str | None) -> None:
    assert clean_tracestate(values) == expected


def test_a_batch_of_new_traces_is_the_random_digits_in_traceparent_form() -> None:
    # The batch is written 8 digits at a time into one text and split; each trace must still be
    # exactly its own 48 random digits: 32 for the trace id, then 16 for the span id.
    from gateway.tracing.context import _new_traces

    digits = os.urandom(24 * 256).hex()
    traces = _new_traces(digits)
    assert traces == [
        (t, s, f"00-{t}-{s}-01", None, None)
        for t, s in ((digits[i : i + 32], digits[i + 32 : i + 48]) for i in range(0, 48 * 256, 48))
    ]
    # A fixed input, spelled out: the first and last trace of a batch of two.
    two = "0123456789abcdef" * 6
    assert _new_traces(two[:48] + two[48:][::-1]) == [
        (
            "0123456789abcdef0123456789abcdef",
            "0123456789abcdef",
            "00-0123456789abcdef0123456789abcdef-0123456789abcdef-01",
            None,
            None,
        ),
        (
            "fedcba9876543210fedcba9876543210",
            "fedcba9876543210",
            "00-fedcba9876543210fedcba9876543210-fedcba9876543210-01",
            None,
            None,
        ),
    ]
