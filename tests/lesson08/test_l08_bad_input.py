"""Lesson 8: bad requests get a clear error, and the engine keeps serving afterwards."""

import pytest

from aios import SamplingParams
from aios.engine.llm_engine import RequestError


@pytest.fixture(scope="module")
def llm(make_llm):
    """One small engine shared by these tests (so each checks it still works after the last one's error)."""
    return make_llm(max_model_len=64, max_num_batched_tokens=64, num_kvcache_blocks=6, kvcache_block_size=4)


def still_serving(llm, idle):
    """A good request after the bad one completes, and nothing stays queued or allocated."""
    idle(llm)
    out = llm.generate([[5, 6, 7]], SamplingParams(temperature=0.0, max_tokens=4), use_tqdm=False)
    assert len(out[0]["token_ids"]) == 4
    idle(llm)


def test_prompt_longer_than_the_context(llm, greedy, random_prompt, idle):
    """A prompt that does not fit in max_model_len is refused with an error naming max_model_len."""
    with pytest.raises(RequestError, match="max_model_len"):
        llm.generate([random_prompt(64)], greedy(2), use_tqdm=False)
    still_serving(llm, idle)


def test_empty_prompt_list(llm, greedy, idle):
    """generate([]) is an error that says the prompt list is empty."""
    with pytest.raises(RequestError, match="empty"):
        llm.generate([], greedy(2), use_tqdm=False)
    still_serving(llm, idle)


def test_empty_prompt(llm, greedy, idle):
    """An empty prompt (no tokens) is refused, naming which prompt it was."""
    with pytest.raises(RequestError, match="prompt 1.*empty"):
        llm.generate(["Hello", ""], greedy(2), use_tqdm=False)
    still_serving(llm, idle)


@pytest.mark.parametrize("max_tokens", [0, -3])
def test_non_positive_max_tokens(llm, idle, max_tokens):
    """max_tokens below 1 is an error that names max_tokens."""
    with pytest.raises(ValueError, match="max_tokens"):
        llm.generate(["Hello"], SamplingParams(temperature=0.0, max_tokens=max_tokens), use_tqdm=False)
    still_serving(llm, idle)


def test_negative_temperature(llm, idle):
    """A negative temperature is an error that names temperature."""
    with pytest.raises(ValueError, match="temperature"):
        llm.generate(["Hello"], SamplingParams(temperature=-0.5, max_tokens=2), use_tqdm=False)
    still_serving(llm, idle)


def test_request_that_can_never_fit_in_the_kv_cache(llm, greedy, random_prompt, idle):
    """A request that would outgrow the whole KV cache is refused up front with an error about KV blocks."""
    # 6 blocks of 4 = 24 slots; 10 prompt tokens + 20 new need 29.
    with pytest.raises(RequestError, match="KV"):
        llm.generate([random_prompt(10)], greedy(20), use_tqdm=False)
    still_serving(llm, idle)


def test_a_request_that_exactly_fills_the_cache_runs(llm, greedy, random_prompt, idle):
    """A request whose cached tokens exactly fill the KV cache is accepted and completes."""
    # 24 slots: 10 prompt tokens + 15 new = 25 tokens, the last never cached.
    out = llm.generate([random_prompt(10, seed=3)], greedy(15), use_tqdm=False)
    assert len(out[0]["token_ids"]) == 15
    idle(llm)


def test_one_bad_prompt_rejects_the_whole_call(llm, greedy, random_prompt, idle):
    """When one prompt of a batch is bad, nothing of the batch is queued, and the error says which prompt."""
    prompts = [random_prompt(5), random_prompt(5), random_prompt(70)]
    with pytest.raises(RequestError, match="prompt 2"):
        llm.generate(prompts, greedy(2), use_tqdm=False)
    still_serving(llm, idle)
