"""Lesson 9 GPU benchmark: the Triton kernels against lesson 8's PyTorch attention loop, same run, same workload."""

import pytest

pytestmark = [pytest.mark.gpu, pytest.mark.benchmark_gpu]


def test_triton_attention_speedup_over_lesson8(benchmark, timed_once):
    """The engine with Triton attention generates at least LESSON_COMPARISONS[9]["min_speedup"] x lesson 8's tok/s."""
    from aios.bench.ladder import benchmark_model_dir
    from aios.bench.throughput import compare_with_previous

    result = timed_once(compare_with_previous, 9, benchmark_model_dir())
    benchmark.extra_info.update(result)
    print(result)
    assert result["speedup"] >= result["min_speedup"], result
