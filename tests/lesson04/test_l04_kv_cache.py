"""Lesson 4: the prefill/decode split with a growing KV cache."""

import pytest
import torch

from aios.engine.kv_cache import GrowingKVCache
from aios.generate import generate_no_cache, generate_with_cache
from aios.layers.attention import causal_attention

SCALE = 16**-0.5


def random_qkv(tokens: int, seed: int = 0):
    """q [tokens, 4, 16], k and v [tokens, 2, 16]: four query heads share two KV heads."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(tokens, 4, 16, generator=g), torch.randn(tokens, 2, 16, generator=g),
            torch.randn(tokens, 2, 16, generator=g))


@pytest.mark.hint(2)
def test_growing_cache_attends_over_everything_seen():
    """GrowingKVCache.attend: new queries see every cached key plus their own, like full causal attention."""
    q, k, v = random_qkv(9)
    expected = causal_attention(q, k, v, SCALE)
    cache = GrowingKVCache(num_layers=1)
    start = 0
    for chunk in (5, 1, 1, 2):
        end = start + chunk
        out = cache.attend(0, q[start:end], k[start:end], v[start:end], None, SCALE)
        torch.testing.assert_close(out, expected[start:end], rtol=1e-5, atol=1e-5)
        start = end


@pytest.mark.hint(2)
def test_growing_cache_keeps_layers_apart():
    """GrowingKVCache keeps one K/V history per layer: layer 1's tokens never leak into layer 0."""
    q0, k0, v0 = random_qkv(6, seed=1)
    q1, k1, v1 = random_qkv(6, seed=2)
    cache = GrowingKVCache(num_layers=2)
    for lo, hi in ((0, 4), (4, 5), (5, 6)):
        out0 = cache.attend(0, q0[lo:hi], k0[lo:hi], v0[lo:hi], None, SCALE)
        out1 = cache.attend(1, q1[lo:hi], k1[lo:hi], v1[lo:hi], None, SCALE)
    torch.testing.assert_close(out0, causal_attention(q0, k0, v0, SCALE)[-1:], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out1, causal_attention(q1, k1, v1, SCALE)[-1:], rtol=1e-5, atol=1e-5)
    assert len(cache) == 6


@pytest.mark.parametrize("prompt_len", [1, 7, 40])
def test_cached_generation_gives_the_no_cache_tokens(tiny_model, random_prompt, prompt_len):
    """generate_with_cache produces exactly the tokens of lesson 3's generate_no_cache."""
    prompt = random_prompt(prompt_len, seed=prompt_len)
    expected = generate_no_cache(tiny_model, prompt, 12)
    got = generate_with_cache(tiny_model, prompt, 12, GrowingKVCache(tiny_model.config.num_hidden_layers))
    assert got == expected


def test_every_step_logits_equal_the_no_cache_logits(tiny_model, recording, random_prompt, no_cache_logits):
    """Each step's logits with the cache equal the logits of recomputing the whole sequence."""
    prompt = random_prompt(23, seed=4)
    model = recording(tiny_model)
    generated = generate_with_cache(model, prompt, 10, GrowingKVCache(tiny_model.config.num_hidden_layers))
    assert len(generated) == 10 and len(model.logits) == 10
    reference = no_cache_logits(tiny_model, prompt + generated[:-1])
    for step, logits in enumerate(model.logits):
        torch.testing.assert_close(logits, reference[len(prompt) - 1 + step], rtol=1e-4, atol=1e-4)
        assert generated[step] == int(logits.argmax())


@pytest.mark.hint(4)
def test_prefill_once_then_one_token_per_decode_step(tiny_model, recording, random_prompt):
    """The first forward is the whole prompt; every later forward feeds one token at its absolute position."""
    prompt = random_prompt(11, seed=5)
    model = recording(tiny_model)
    generated = generate_with_cache(model, prompt, 6, GrowingKVCache(tiny_model.config.num_hidden_layers))
    assert model.calls[0] == (prompt, list(range(11)))
    decode_calls = model.calls[1:]
    assert len(decode_calls) == 5, "6 new tokens take one prefill and 5 decode steps"
    for i, (input_ids, positions) in enumerate(decode_calls):
        assert input_ids == [generated[i]], f"decode step {i} must feed only the newest token"
        assert positions == [11 + i]


@pytest.mark.hint(5)
def test_stops_after_the_eos_token(tiny_model, random_prompt):
    """generation stops right after eos_token_id and includes it."""
    prompt = random_prompt(9, seed=6)
    free_run = generate_no_cache(tiny_model, prompt, 8)
    eos = free_run[3]
    first = free_run.index(eos)
    got = generate_with_cache(tiny_model, prompt, 8, GrowingKVCache(tiny_model.config.num_hidden_layers), eos)
    assert got == free_run[: first + 1]
