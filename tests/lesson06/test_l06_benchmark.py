"""Lesson 6 GPU benchmark: the paged KV cache (one sequence) against lesson 5's contiguous cache: memory, not speed.

Both stages run in this process on the same workload (aios.bench.ladder.LESSON_BENCHMARKS[6]),
on the 0.6b shape with random weights; the assertion is on their ratio. Skipped without CUDA.
Run them all with scripts/gpu/lessons4to8.sh.
"""

import os

import pytest

pytestmark = [pytest.mark.gpu, pytest.mark.benchmark_gpu]


def test_paged_cache_speed_against_static_cache(benchmark, timed_once):
    """The single-sequence paged cache keeps at least MIN_SPEEDUP[6] x lesson 5's tok/s (it saves memory, not time)."""
    from aios.bench import ladder

    rounds = int(os.environ.get("AIOS_BENCH_ROUNDS", "2"))
    comparison = timed_once(ladder.compare_lesson, 6, ladder.benchmark_model_dir(), "cuda", rounds=rounds)
    benchmark.extra_info.update(comparison.extra_info())
    print(comparison.summary())
    assert comparison.speedup >= ladder.MIN_SPEEDUP[6], comparison.summary()
