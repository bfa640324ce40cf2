"""The refusal aggregator: which refusals get a full access line, and exact counts of the rest."""

from __future__ import annotations

from gateway.logs.refusals import RefusalAggregator


def test_the_first_lines_of_each_key_and_second_are_full_and_the_rest_counted() -> None:
    agg = RefusalAggregator(full_lines=2)
    decisions = [agg.admit(100, "rate-limited", "10.0.0.0", 429, "api") for _ in range(5)]
    assert decisions == [True, True, False, False, False]
    assert agg.admit(100, "rate-limited", "10.0.1.0", 429, "api")  # another client
    assert agg.admit(100, "invalid-token", "10.0.0.0", 401, "api")  # another reason
    assert agg.take_summaries(100) == []  # the second is still running
    assert agg.admit(101, "rate-limited", "10.0.0.0", 429, "api")  # a new second: full again
    assert agg.take_summaries(102) == [
        {
            "event": "access_refusals",
            "reason": "rate-limited",
            "status": 429,
            "route": "api",
            "client_ip": "10.0.0.0",
            "count": 3,
            "second": 100,
        }
    ]
    assert agg.take_summaries(103) == []  # handed out once


def test_a_final_take_reports_the_running_second() -> None:
    agg = RefusalAggregator(full_lines=1)
    for _ in range(4):
        agg.admit(7, "locked-out", "10.0.0.0", 429, None)
    (summary,) = agg.take_summaries(None)
    assert summary["count"] == 3 and summary["second"] == 7
    assert agg.take_summaries(None) == []
