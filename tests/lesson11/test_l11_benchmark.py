"""Lesson 11 GPU benchmark: decode through CUDA graphs against eager decode (lesson 10), same run, same workload."""

import pytest

pytestmark = [pytest.mark.gpu, pytest.mark.benchmark_gpu]


def test_cuda_graph_speedup_over_lesson10(benchmark, timed_once):
    """The engine with CUDA graphs generates at least LESSON_COMPARISONS[11]["min_speedup"] x lesson 10's tok/s."""
    from aios.bench.ladder import benchmark_model_dir
    from aios.bench.throughput import compare_with_previous

    result = timed_once(compare_with_previous, 11, benchmark_model_dir())
    benchmark.extra_info.update(result)
    print(result)
    assert result["speedup"] >= result["min_speedup"], result
