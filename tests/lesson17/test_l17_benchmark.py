"""Lesson 17 GPU benchmark: the synchronous loop against the overlapped one, same engine, same process.

aios.bench.async_overlap on the 0.6b shape with random weights: output tok/s on aios bench's workload
shape (128 requests), batch-1 decode tok/s, and a torch.profiler timeline of 30 decode steps of a
64-sequence batch, from which the GPU's idle time per step is measured (the span of the window minus
the union of its kernels). The figures go to the benchmark's extra_info (and to
$AIOS_BENCH_OUT/async_overlap.json with the two Chrome traces when that is set). Skipped without CUDA.
"""

import json
import os
from pathlib import Path

import pytest

pytestmark = [pytest.mark.gpu, pytest.mark.benchmark_gpu]

#: First guesses, to be set from the H200 run (docs/benchmarks.md): overlap must not cost throughput, must
#: speed up batch-1 decode (where the host's share of a step is largest), and must shrink the GPU's idle
#: time between decode steps.
MIN_THROUGHPUT_SPEEDUP = 1.0
MIN_BATCH1_SPEEDUP = 1.05
MAX_IDLE_RATIO = 0.8


def test_overlap_hides_the_host_work(benchmark, timed_once):
    """The overlapped loop: >= the synchronous throughput, >= 1.05x batch-1 decode, GPU idle per step x0.8 or less."""
    from aios.bench.async_overlap import compare_sync_async, summary
    from aios.bench.ladder import benchmark_model_dir

    out = os.environ.get("AIOS_BENCH_OUT")
    out = Path(out) if out else None
    if out:
        out.mkdir(parents=True, exist_ok=True)
    result = timed_once(compare_sync_async, benchmark_model_dir(), "cuda", "full", out)
    print(summary(result))
    benchmark.extra_info.update({"lesson": 17, **result})
    if out:
        (out / "async_overlap.json").write_text(json.dumps(result, indent=2))
    sync, overlapped = result["sync"], result["async"]
    assert overlapped["throughput"]["output_tokens"] == sync["throughput"]["output_tokens"]
    assert result["throughput_speedup"] >= MIN_THROUGHPUT_SPEEDUP, summary(result)
    assert result["batch1_speedup"] >= MIN_BATCH1_SPEEDUP, summary(result)
    idle_ratio = overlapped["profile"]["gpu_idle_us_per_step"] / max(sync["profile"]["gpu_idle_us_per_step"], 1e-9)
    assert idle_ratio <= MAX_IDLE_RATIO, f"GPU idle per step only x{idle_ratio:.2f} of the synchronous loop's\n" + summary(result)
