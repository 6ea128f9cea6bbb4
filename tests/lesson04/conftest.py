"""Fixtures of lesson 4's tests: the tiny model (unfused, as lesson 3 built it) and a recording wrapper."""

import random

import pytest
import torch


class RecordingModel(torch.nn.Module):
    """Wraps a Qwen3ForCausalLM and remembers what every forward got and what compute_logits gave."""

    def __init__(self, model):
        super().__init__()
        self.inner = model
        self.config = model.config
        self.calls: list[tuple[list[int], list[int]]] = []
        self.logits: list[torch.Tensor] = []

    def parameters(self, recurse=True):
        """The wrapped model's parameters (registration does not see a model in the learner worker)."""
        return self.inner.parameters(recurse)

    def forward(self, input_ids, positions):
        self.calls.append((input_ids.tolist(), positions.tolist()))
        return self.inner(input_ids, positions)

    def compute_logits(self, hidden_states):
        logits = self.inner.compute_logits(hidden_states)
        self.logits.append(logits.detach().reshape(-1, logits.shape[-1])[-1].clone())
        return logits


@pytest.fixture(scope="module")
def tiny_model(tiny_model_dir):
    """The tiny checkpoint in our Qwen3 module, float32 on the CPU, residual add not fused."""
    from aios.utils.loader import load_qwen3

    return load_qwen3(tiny_model_dir, torch.float32, "cpu")


@pytest.fixture
def recording():
    """``recording(model)`` wraps a model in a RecordingModel."""
    return RecordingModel


@pytest.fixture
def random_prompt():
    """``random_prompt(length, seed)``: token ids the tiny tokenizer knows."""

    def make(length: int, seed: int = 0) -> list[int]:
        rng = random.Random(seed)
        return [rng.randrange(3, 500) for _ in range(length)]

    return make


@torch.inference_mode()
def full_sequence_logits(model, tokens: list[int]) -> torch.Tensor:
    """Logits at every position of ``tokens`` from one forward pass without any cache: [len, vocab]."""
    ids = torch.tensor(tokens)
    hidden = model(ids, torch.arange(len(tokens)))
    return model.compute_logits(hidden)


@pytest.fixture
def no_cache_logits():
    """``no_cache_logits(model, tokens)``: every position's logits, recomputed from scratch (lesson 3)."""
    return full_sequence_logits


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Run on one CPU thread: the tiny model's tensors gain nothing from more, and a busy machine loses a lot."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
