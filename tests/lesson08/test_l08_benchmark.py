"""Lesson 8 GPU benchmark: continuous batching (LLM.generate) against lesson 7's static batches on 64 requests of mixed lengths.

Both stages run in this process on the same workload (aios.bench.ladder.LESSON_BENCHMARKS[8]),
on the 0.6b shape with random weights; the assertion is on their ratio. Skipped without CUDA.
Run them all with scripts/gpu/lessons4to8.sh.
"""

import os

import pytest

pytestmark = [pytest.mark.gpu, pytest.mark.benchmark_gpu]


def test_continuous_batching_speedup_over_static_batches(benchmark, timed_once):
    """Continuous batching reaches at least MIN_SPEEDUP[8] x the tok/s of lesson 7's static batches (64 mixed requests)."""
    from aios.bench import ladder

    rounds = int(os.environ.get("AIOS_BENCH_ROUNDS", "2"))
    comparison = timed_once(ladder.compare_lesson, 8, ladder.benchmark_model_dir(), "cuda", rounds=rounds)
    benchmark.extra_info.update(comparison.extra_info())
    print(comparison.summary())
    assert comparison.speedup >= ladder.MIN_SPEEDUP[8], comparison.summary()
