"""Fixtures of lesson 6's tests: the tiny model (fused, as lesson 5 left it) and prompts."""

import random

import pytest
import torch


@pytest.fixture(scope="module")
def fused_model(tiny_model_dir):
    """The tiny checkpoint in our Qwen3 module, float32 on the CPU, residual add fused (lesson 5)."""
    from aios.utils.loader import load_qwen3

    return load_qwen3(tiny_model_dir, torch.float32, "cpu", fuse_residual_norm=True)


@pytest.fixture
def random_prompt():
    """``random_prompt(length, seed)``: token ids the tiny tokenizer knows."""

    def make(length: int, seed: int = 0) -> list[int]:
        rng = random.Random(seed)
        return [rng.randrange(3, 500) for _ in range(length)]

    return make


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Run on one CPU thread: the tiny model's tensors gain nothing from more, and a busy machine loses a lot."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
