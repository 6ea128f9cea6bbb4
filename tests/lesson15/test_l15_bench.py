"""Lesson 15: bench-serve's numbers — throughput, TTFT and TPOT — measured against the live server."""

import asyncio
import math

import pytest

from aios.server.bench import BenchConfig, RequestRecord, run_benchmark, summarize


@pytest.mark.hint(7)
def test_summarize_small_example():
    """TTFT, TPOT = (latency - ttft) / (tokens - 1), throughput and counts for two hand-made requests."""
    records = [
        RequestRecord(ok=True, prompt_tokens=5, output_tokens=3, ttft=0.1, latency=0.5, chunk_times=[0.1, 0.3, 0.5]),
        RequestRecord(ok=True, prompt_tokens=7, output_tokens=5, ttft=0.2, latency=1.0,
                      chunk_times=[0.2, 0.4, 0.6, 0.8, 1.0]),
        RequestRecord(ok=False, error="HTTP 500"),
    ]
    summary = summarize(records, duration=2.0)
    assert summary["completed"] == 2 and summary["failed"] == 1
    assert summary["total_input_tokens"] == 12 and summary["total_output_tokens"] == 8
    assert math.isclose(summary["request_throughput"], 1.0)
    assert math.isclose(summary["output_throughput"], 4.0)
    assert math.isclose(summary["ttft_mean_ms"], 150.0)
    assert math.isclose(summary["tpot_mean_ms"], 200.0)  # both requests: 0.4 s / 2 and 0.8 s / 4
    assert math.isclose(summary["itl_p50_ms"], 200.0)
    assert math.isclose(summary["e2e_p50_ms"], 750.0)


@pytest.mark.hint(6)
def test_bench_against_live_server(server):
    """A short bench run completes every request with output_len tokens and sane latency percentiles."""
    config = BenchConfig(base_url=server.base_url, model=server.model, num_prompts=6, max_concurrency=3,
                         input_len=8, output_len=6, duration=60, request_timeout=60)
    summary, records = asyncio.run(run_benchmark(config, progress=False))
    assert summary["completed"] == 6 and summary["failed"] == 0, [r.error for r in records]
    assert summary["total_output_tokens"] == 36
    assert summary["output_throughput"] > 0 and summary["request_throughput"] > 0
    assert 0 < summary["ttft_p50_ms"] <= summary["ttft_p99_ms"] <= summary["e2e_p99_ms"]
    assert summary["tpot_p50_ms"] > 0
