"""Lesson 4 GPU benchmark: the growing KV cache against lesson 3's loop that recomputes the whole sequence every step.

Both stages run in this process on the same workload (aios.bench.ladder.LESSON_BENCHMARKS[4]),
on the 0.6b shape with random weights; the assertion is on their ratio. Skipped without CUDA.
Run them all with scripts/gpu/lessons4to8.sh.
"""

import os

import pytest

pytestmark = [pytest.mark.gpu, pytest.mark.benchmark_gpu]


def test_kv_cache_speedup_over_no_cache(benchmark, timed_once):
    """Generating with the growing KV cache is at least MIN_SPEEDUP[4] x faster than lesson 3's no-cache loop."""
    from aios.bench import ladder

    rounds = int(os.environ.get("AIOS_BENCH_ROUNDS", "2"))
    comparison = timed_once(ladder.compare_lesson, 4, ladder.benchmark_model_dir(), "cuda", rounds=rounds)
    benchmark.extra_info.update(comparison.extra_info())
    print(comparison.summary())
    assert comparison.speedup >= ladder.MIN_SPEEDUP[4], comparison.summary()
