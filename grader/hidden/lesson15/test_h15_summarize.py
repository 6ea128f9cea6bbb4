"""Lesson 15 (hidden): bench-serve's summary on hand-made records."""

import math

import pytest

from aios.server.bench import RequestRecord, summarize


def record(ttft, latency, tokens, times=None, prompt=4):
    return RequestRecord(ok=True, prompt_tokens=prompt, output_tokens=tokens, ttft=ttft, latency=latency,
                         chunk_times=times or [])


@pytest.mark.hint(7)
def test_percentiles_interpolate():
    """p50/p90/p99 of TTFT over 11 requests with TTFT 0..100 ms are 50, 90 and 99 ms."""
    records = [record(i / 1000 * 10, 1.0, 2) for i in range(11)]
    summary = summarize(records, duration=1.0)
    assert math.isclose(summary["ttft_p50_ms"], 50.0)
    assert math.isclose(summary["ttft_p90_ms"], 90.0)
    assert math.isclose(summary["ttft_p99_ms"], 99.0)


@pytest.mark.hint(7)
def test_single_token_requests_have_no_tpot():
    """A request with one output token has no time-per-output-token; the others still count."""
    summary = summarize([record(0.1, 0.1, 1), record(0.1, 0.4, 4)], duration=1.0)
    assert math.isclose(summary["tpot_mean_ms"], 100.0)
    assert summary["completed"] == 2 and summary["total_output_tokens"] == 5


@pytest.mark.hint(7)
def test_failed_requests_do_not_count():
    """Failed requests are counted as failed and add no tokens or latencies."""
    failed = RequestRecord(ok=False, prompt_tokens=100, output_tokens=100, ttft=9.0, latency=9.0, error="boom")
    summary = summarize([record(0.2, 0.5, 3), failed], duration=0.5)
    assert summary["failed"] == 1 and summary["completed"] == 1
    assert summary["total_output_tokens"] == 3 and summary["total_input_tokens"] == 4
    assert math.isclose(summary["e2e_p99_ms"], 500.0)
    assert math.isclose(summary["total_token_throughput"], 14.0)


@pytest.mark.hint(7)
def test_itl_pools_gaps_of_all_requests():
    """ITL samples are the gaps between consecutive chunks, pooled over requests."""
    summary = summarize([record(0.1, 0.4, 3, [0.1, 0.2, 0.4]), record(0.3, 0.6, 2, [0.3, 0.6])], duration=1.0)
    assert math.isclose(summary["itl_mean_ms"], 200.0)
    assert math.isclose(summary["itl_p50_ms"], 200.0)


@pytest.mark.hint(7)
def test_nothing_completed_gives_nan_latencies():
    """With no successful request, throughput is 0 and latency statistics are nan."""
    summary = summarize([RequestRecord(ok=False, error="x")], duration=2.0)
    assert summary["completed"] == 0 and summary["request_throughput"] == 0
    assert math.isnan(summary["ttft_p50_ms"]) and math.isnan(summary["tpot_mean_ms"])
