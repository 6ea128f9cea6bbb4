"""Lesson 7 GPU benchmark: static batching of 32 requests on the ModelRunner against lesson 5's one-at-a-time loop.

Both stages run in this process on the same workload (aios.bench.ladder.LESSON_BENCHMARKS[7]),
on the 0.6b shape with random weights; the assertion is on their ratio. Skipped without CUDA.
Run them all with scripts/gpu/lessons4to8.sh.
"""

import os

import pytest

pytestmark = [pytest.mark.gpu, pytest.mark.benchmark_gpu]


def test_batching_speedup_over_one_at_a_time(benchmark, timed_once):
    """A static batch of 32 requests generates at least MIN_SPEEDUP[7] x the tok/s of lesson 5's single-sequence loop."""
    from aios.bench import ladder

    rounds = int(os.environ.get("AIOS_BENCH_ROUNDS", "2"))
    comparison = timed_once(ladder.compare_lesson, 7, ladder.benchmark_model_dir(), "cuda", rounds=rounds)
    benchmark.extra_info.update(comparison.extra_info())
    print(comparison.summary())
    assert comparison.speedup >= ladder.MIN_SPEEDUP[7], comparison.summary()
