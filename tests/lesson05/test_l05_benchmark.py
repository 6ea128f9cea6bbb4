"""Lesson 5 GPU benchmark: the pre-allocated KV cache (and fused residual norm) against lesson 4's growing cache.

Both stages run in this process on the same workload (aios.bench.ladder.LESSON_BENCHMARKS[5]),
on the 0.6b shape with random weights; the assertion is on their ratio. Skipped without CUDA.
Run them all with scripts/gpu/lessons4to8.sh.
"""

import os

import pytest

pytestmark = [pytest.mark.gpu, pytest.mark.benchmark_gpu]


def test_static_cache_speed_against_growing_cache(benchmark, timed_once):
    """The pre-allocated cache with the fused norm reaches at least MIN_SPEEDUP[5] x lesson 4's tok/s."""
    from aios.bench import ladder

    rounds = int(os.environ.get("AIOS_BENCH_ROUNDS", "2"))
    comparison = timed_once(ladder.compare_lesson, 5, ladder.benchmark_model_dir(), "cuda", rounds=rounds)
    benchmark.extra_info.update(comparison.extra_info())
    print(comparison.summary())
    assert comparison.speedup >= ladder.MIN_SPEEDUP[5], comparison.summary()
