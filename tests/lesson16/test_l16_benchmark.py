"""Lesson 16 GPU benchmark: latency of short requests while 8k-token prompts arrive, prefill-first against chunked.

Both engines run the same arrivals in this process (aios.bench.chunked_prefill, the 0.6b shape with
random weights): 48 short requests decoding, six 8192-token prompts arriving every 24 steps, each with
4 short requests behind it. The assertion is on the p99 inter-token latency of the short requests;
TTFT and the other percentiles are recorded in the benchmark's extra_info (and in
$AIOS_BENCH_OUT/chunked_prefill.json when that is set). Skipped without CUDA.
"""

import json
import os
from pathlib import Path

import pytest

pytestmark = [pytest.mark.gpu, pytest.mark.benchmark_gpu]

#: What the test asserts: prefill-first's p99 ITL over chunked prefill's. A prefill-first step that
#: prefills 8192 tokens stalls every running request for the whole prefill; chunks of 1024 bound
#: the stall to one mixed step. Measured on one H200 on 2026-11-30: x1.47 (p99 72.7 -> 49.4 ms,
#: longest gap 1,210 -> 51 ms); the first guess of x2 was not met because a mixed step of a
#: 1024-token chunk costs ~40 ms, about 4x its arithmetic (docs/benchmarks.md, "Open measurements").
MIN_P99_ITL_IMPROVEMENT = 1.3


def test_chunked_prefill_bounds_the_inter_token_latency(benchmark, timed_once):
    """With 8k-token prompts arriving, chunked prefill (budget 1024) cuts the short requests' p99 ITL >= 1.3x."""
    from aios.bench.chunked_prefill import compare_chunked_prefill, summary
    from aios.bench.ladder import benchmark_model_dir

    result = timed_once(compare_chunked_prefill, benchmark_model_dir(), "cuda")
    print(summary(result))
    benchmark.extra_info.update({"lesson": 16, **result})
    out = os.environ.get("AIOS_BENCH_OUT")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "chunked_prefill.json").write_text(json.dumps(result, indent=2))
    assert result["chunked"]["output_tokens"] == result["prefill_first"]["output_tokens"]
    assert result["p99_itl_improvement"] >= MIN_P99_ITL_IMPROVEMENT, summary(result)
