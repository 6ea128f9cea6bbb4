"""Lesson 19 GPU benchmark: decode speed with speculative decoding beside its acceptance (aios.bench.speculative).

The target is the 8b shape ($AIOS_SPEC_PRESET) with random weights. n-gram lookup runs on prompts that repeat
a phrase; the draft model (2 layers of the target's shape) runs at controlled acceptance rates, the target
computing what its first 2 layers compute and the draft holding those layers plus noise (sigma). Batch sizes
1, 4, 16, 64: tokens/s, speed-up over plain decoding, acceptance rate, mean accepted length (in the
benchmark's extra_info and $AIOS_BENCH_OUT/speculative.json). Skipped without CUDA.
"""

import json
import os
from pathlib import Path

import pytest

pytestmark = [pytest.mark.gpu, pytest.mark.benchmark_gpu]

#: What the test asserts at batch size 1 (first guesses; docs/benchmarks.md has the measured figures).
MIN_NGRAM_SPEEDUP = 1.3  # n-gram k = 4 on the repetitive workload
MIN_EXACT_DRAFT_SPEEDUP = 1.3  # the draft with sigma = 0 (every proposal accepted)


def sweep_from_environment() -> dict:
    """A shorter sweep when asked: AIOS_SPEC_BATCHES="1,4" and AIOS_SPEC_SIGMAS="0,0.02" (batch 1 and sigma 0 must stay)."""
    sweep = {}
    if os.environ.get("AIOS_SPEC_BATCHES"):
        sweep["batch_sizes"] = tuple(sorted({1, *map(int, os.environ["AIOS_SPEC_BATCHES"].split(","))}))
    if os.environ.get("AIOS_SPEC_SIGMAS"):
        sweep["sigmas"] = tuple(sorted({0.0, *map(float, os.environ["AIOS_SPEC_SIGMAS"].split(","))}))
    return sweep


def test_speculation_speeds_up_batch_one_decoding(benchmark, timed_once, tmp_path):
    """Batch 1: n-gram lookup (k = 4) on repetitive text and an exact draft each decode >= 1.3x faster than plain."""
    from aios.bench.speculative import config_only_checkpoint, run_speculative_benchmark, summary

    target = config_only_checkpoint(os.environ.get("AIOS_SPEC_PRESET", "8b"), tmp_path / "target")
    result = timed_once(run_speculative_benchmark, target, tmp_path, **sweep_from_environment())
    table = summary(result)
    print(table)
    benchmark.extra_info.update({"lesson": 19, **result})
    out = os.environ.get("AIOS_BENCH_OUT")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "speculative.json").write_text(json.dumps(result, indent=2))
    rows = {(r["method"], r.get("k"), r.get("sigma"), r["batch"]): r for r in result["rows"]}
    assert rows[("draft", 4, 0.0, 1)]["acceptance_rate"] > 0.9, table
    assert rows[("ngram", 4, None, 1)]["speedup"] >= MIN_NGRAM_SPEEDUP, table
    assert rows[("draft", 4, 0.0, 1)]["speedup"] >= MIN_EXACT_DRAFT_SPEEDUP, table
