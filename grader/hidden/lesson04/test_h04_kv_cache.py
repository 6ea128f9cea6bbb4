"""Lesson 4, hidden: the growing KV cache against transformers and at the edges."""

import pytest
import torch

from aios.engine.kv_cache import GrowingKVCache
from aios.generate import generate_no_cache, generate_with_cache
from aios.layers.attention import causal_attention


def new_cache(model) -> GrowingKVCache:
    return GrowingKVCache(model.config.num_hidden_layers)


@pytest.fixture(scope="module")
def hf_model(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()


def test_step_logits_match_transformers(tiny_model, recording, random_prompt, hf_model):
    """Every cached step's logits match Hugging Face transformers on the same sequence."""
    prompt = random_prompt(17, seed=11)
    model = recording(tiny_model)
    generated = generate_with_cache(model, prompt, 8, new_cache(tiny_model))
    with torch.inference_mode():
        hf_logits = hf_model(torch.tensor([prompt + generated[:-1]]), use_cache=False).logits[0].float()
    for step, logits in enumerate(model.logits):
        torch.testing.assert_close(logits, hf_logits[len(prompt) - 1 + step], rtol=1e-4, atol=1e-4)


@pytest.mark.hint(3)
def test_token_by_token_attention_equals_full_attention():
    """GrowingKVCache fed one token at a time from empty (no prefill) still equals causal attention."""
    g = torch.Generator().manual_seed(3)
    q, k, v = torch.randn(7, 6, 8, generator=g), torch.randn(7, 3, 8, generator=g), torch.randn(7, 3, 8, generator=g)
    expected = causal_attention(q, k, v, 0.3)
    cache = GrowingKVCache(num_layers=3)
    for i in range(7):
        out = cache.attend(2, q[i : i + 1], k[i : i + 1], v[i : i + 1], None, 0.3)
        torch.testing.assert_close(out, expected[i : i + 1], rtol=1e-5, atol=1e-5)


@pytest.mark.hint(5)
def test_one_new_token_needs_only_the_prefill(tiny_model, recording, random_prompt):
    """max_new_tokens=1 runs the model once (the prefill) and returns one token."""
    prompt = random_prompt(8, seed=12)
    model = recording(tiny_model)
    got = generate_with_cache(model, prompt, 1, new_cache(tiny_model))
    assert len(model.calls) == 1 and got == generate_no_cache(tiny_model, prompt, 1)


@pytest.mark.hint(4)
def test_no_token_is_computed_twice(tiny_model, recording, random_prompt):
    """Across all steps the model is fed prompt + new - 1 tokens: nothing is recomputed."""
    prompt = random_prompt(30, seed=13)
    model = recording(tiny_model)
    cache = new_cache(tiny_model)
    generate_with_cache(model, prompt, 9, cache)
    assert sum(len(ids) for ids, _ in model.calls) == 30 + 9 - 1
    assert len(cache) == 30 + 9 - 1, "the cache holds every token fed to the model"
    assert all(keys.shape[0] == 38 for keys in cache.keys), "every layer caches every token"


def test_long_prompt_matches_no_cache(tiny_model, random_prompt):
    """A 300-token prompt generates the same 16 tokens with and without the cache."""
    prompt = random_prompt(300, seed=14)
    assert generate_with_cache(tiny_model, prompt, 16, new_cache(tiny_model)) == generate_no_cache(
        tiny_model, prompt, 16
    )


@pytest.mark.hint(5)
def test_eos_as_the_first_token_stops_at_once(tiny_model, recording, random_prompt):
    """When the very first generated token is the EOS, the result is just [eos] after one forward."""
    prompt = random_prompt(10, seed=15)
    first = generate_no_cache(tiny_model, prompt, 1)[0]
    model = recording(tiny_model)
    assert generate_with_cache(model, prompt, 20, new_cache(tiny_model), eos_token_id=first) == [first]
    assert len(model.calls) == 1
