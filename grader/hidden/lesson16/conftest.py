"""Fixtures of lesson 16's tests: chunked-prefill engines over the tiny model, prompts, reference tokens."""

import random

import pytest
import torch

#: Lesson 16's engine on the CPU: the PyTorch attention path (lesson 7) keeps the tests fast; one test runs Triton's.
ENGINE = {"attention_backend": "torch", "kvcache_block_size": 8, "max_model_len": 128}


@pytest.fixture(scope="module")
def make_llm(tiny_model_dir):
    """``make_llm(**options)``: an LLM on the tiny model, CPU, lessons <= 16 (chunked prefill on), cached per option set."""
    from aios import LLM
    from aios.config import features_up_to

    engines = {}

    def make(**options):
        options = {**features_up_to(16), **ENGINE, **options}
        key = tuple(sorted(options.items()))
        if key not in engines:
            engines[key] = LLM(str(tiny_model_dir), device="cpu", **options)
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
    """``greedy(max_tokens, **more)``: SamplingParams for greedy decoding (EOS ignored: every request runs its length)."""
    from aios import SamplingParams

    def make(max_tokens: int = 8, **more):
        return SamplingParams(temperature=0.0, max_tokens=max_tokens, **{"ignore_eos": True, **more})

    return make


@pytest.fixture
def unchunked(make_llm):
    """``unchunked(prompts, params)``: the token ids lesson 8's prefill-first engine generates for the same requests."""

    def run(prompts, params):
        llm = make_llm(enable_chunked_prefill=False, enable_prefix_caching=False, num_kvcache_blocks=256)
        return [out["token_ids"] for out in llm.generate(prompts, params, use_tqdm=False)]

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
