"""Not collected on its own: test_switch.py runs it in a child pytest to see the gpu markers work."""

import pytest


@pytest.mark.gpu
def test_needs_cuda():
    import torch

    assert torch.cuda.is_available()


@pytest.mark.benchmark_gpu
def test_gpu_benchmark():
    import torch

    assert torch.cuda.is_available()


def test_plain():
    assert True
