"""Fixtures of lesson 8's tests: engines over the tiny model with lesson 8's features, and prompts."""

import random

import pytest
import torch


@pytest.fixture(scope="module")
def make_llm(tiny_model_dir):
    """``make_llm(**options)``: an LLM on the tiny model, CPU, lessons <= 8 only (cached per option set)."""
    from aios import LLM
    from aios.config import features_up_to

    engines = {}

    def make(**options):
        key = tuple(sorted(options.items()))
        if key not in engines:
            engines[key] = LLM(str(tiny_model_dir), device="cpu", **{**features_up_to(8), **options})
        return engines[key]

    return make


@pytest.fixture
def random_prompt():
    """``random_prompt(length, seed)``: token ids the tiny tokenizer knows."""

    def make(length: int, seed: int = 0) -> list[int]:
        rng = random.Random(seed)
        return [rng.randrange(3, 500) for _ in range(length)]

    return make


@pytest.fixture
def greedy():
    """``greedy(max_tokens, **more)``: SamplingParams for greedy decoding."""
    from aios import SamplingParams

    def make(max_tokens: int = 8, **more):
        return SamplingParams(temperature=0.0, max_tokens=max_tokens, **more)

    return make


@pytest.fixture
def alone():
    """``alone(llm, prompt, max_tokens)``: the greedy tokens of one prompt run by itself through lesson 5's
    single-sequence loop on the engine's own model (no scheduler, no batching)."""
    from aios.engine.kv_cache import StaticKVCache
    from aios.generate import generate_with_cache

    def run(llm, prompt, max_tokens):
        model = llm.model_runner.model
        return generate_with_cache(model, list(prompt), max_tokens, StaticKVCache.for_model(model, len(prompt) + max_tokens))

    return run


def assert_idle(llm):
    """Nothing waiting, nothing running, every KV block free."""
    assert llm.scheduler.is_finished(), "requests were left in the scheduler"
    assert llm.block_manager.num_free_blocks == llm.block_manager.num_blocks, "KV blocks were left allocated"


@pytest.fixture
def idle():
    return assert_idle


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Run on one CPU thread: the tiny model's tensors gain nothing from more, and a busy machine loses a lot."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
