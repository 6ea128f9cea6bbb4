"""Lesson 5: the pre-allocated KV cache and RMSNorm fused with the residual add."""

import pytest
import torch

from aios.engine.kv_cache import GrowingKVCache, StaticKVCache
from aios.generate import generate_with_cache
from aios.layers.attention import causal_attention
from aios.layers.layernorm import add_rms_norm, rms_norm
from aios.utils.context import Context

SCALE = 8**-0.5


def random_qkv(tokens: int, seed: int = 0):
    """q [tokens, 4, 8], k and v [tokens, 2, 8]."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(tokens, 4, 8, generator=g), torch.randn(tokens, 2, 8, generator=g),
            torch.randn(tokens, 2, 8, generator=g))


def at(positions) -> Context:
    """A Context holding only the positions of this step's tokens."""
    return Context(positions=torch.tensor(positions))


class WatchedCache:
    """Forwards attend() to a StaticKVCache and notes which storage it holds after every call."""

    def __init__(self, cache):
        self.cache = cache
        self.storage = set()

    def attend(self, layer_idx, q, k, v, context, scale):
        out = self.cache.attend(layer_idx, q, k, v, context, scale)
        self.storage.add((self.cache.k.data_ptr(), self.cache.v.data_ptr(), tuple(self.cache.k.shape)))
        return out


@pytest.mark.hint(1)
def test_static_cache_is_allocated_up_front():
    """StaticKVCache.__init__ allocates K and V as [layers, max_len, kv_heads, head_dim] in the given dtype."""
    cache = StaticKVCache(num_layers=3, max_len=20, num_kv_heads=2, head_dim=8, dtype=torch.float64, device="cpu")
    for tensor in (cache.k, cache.v):
        assert tuple(tensor.shape) == (3, 20, 2, 8)
        assert tensor.dtype == torch.float64 and tensor.device.type == "cpu"
    assert cache.k.data_ptr() != cache.v.data_ptr(), "K and V need storage of their own"


@pytest.mark.hint(2)
def test_static_cache_writes_each_token_at_its_position():
    """StaticKVCache.attend writes K/V rows at context.positions and attends over positions 0..last."""
    q, k, v = random_qkv(7)
    cache = StaticKVCache(2, 16, 2, 8, torch.float32, "cpu")
    untouched = cache.k[1].clone(), cache.v[1].clone()
    expected = causal_attention(q, k, v, SCALE)
    for lo, hi in ((0, 5), (5, 6), (6, 7)):
        out = cache.attend(0, q[lo:hi], k[lo:hi], v[lo:hi], at(list(range(lo, hi))), SCALE)
        torch.testing.assert_close(out, expected[lo:hi], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cache.k[0, :7], k)
    torch.testing.assert_close(cache.v[0, :7], v)
    torch.testing.assert_close(cache.k[1], untouched[0], msg="layer 1 was never written")
    torch.testing.assert_close(cache.v[1], untouched[1], msg="layer 1 was never written")


@pytest.mark.hint(1)
def test_cache_storage_is_allocated_once(fused_model, random_prompt):
    """Generating with a StaticKVCache keeps the same K/V tensors, same size, from the first step to the last."""
    cache = StaticKVCache.for_model(fused_model, 64)
    before = (cache.k.data_ptr(), cache.v.data_ptr(), tuple(cache.k.shape))
    watched = WatchedCache(cache)
    generate_with_cache(fused_model, random_prompt(20, seed=1), 10, watched)
    assert watched.storage == {before}, "the cache tensors were replaced or resized while generating"


def test_static_cache_holds_what_the_growing_cache_holds(tiny_model, random_prompt):
    """After the same generation, StaticKVCache rows 0..n-1 of every layer equal GrowingKVCache's K and V."""
    prompt = random_prompt(15, seed=2)
    layers = tiny_model.config.num_hidden_layers
    growing = GrowingKVCache(layers)
    static = StaticKVCache.for_model(tiny_model, 40)
    assert generate_with_cache(tiny_model, prompt, 8, growing) == generate_with_cache(tiny_model, prompt, 8, static)
    n = len(growing)
    for layer in range(layers):
        torch.testing.assert_close(static.k[layer, :n], growing.keys[layer])
        torch.testing.assert_close(static.v[layer, :n], growing.values[layer])


def test_outputs_identical_to_lesson_4(tiny_model, fused_model, recording, random_prompt):
    """The fused model with a StaticKVCache gives lesson 4's tokens and, step by step, its logits."""
    prompt = random_prompt(25, seed=3)
    lesson4, lesson5 = recording(tiny_model), recording(fused_model)
    expected = generate_with_cache(lesson4, prompt, 12, GrowingKVCache(tiny_model.config.num_hidden_layers))
    got = generate_with_cache(lesson5, prompt, 12, StaticKVCache.for_model(fused_model, 64))
    assert got == expected
    for old, new in zip(lesson4.logits, lesson5.logits, strict=True):
        torch.testing.assert_close(new, old, rtol=1e-4, atol=1e-4)


@pytest.mark.hint(3)
def test_add_rms_norm_equals_add_then_rms_norm():
    """add_rms_norm(x, residual) returns (rms_norm(x + residual), x + residual)."""
    g = torch.Generator().manual_seed(5)
    x, residual, weight = torch.randn(6, 64, generator=g), torch.randn(6, 64, generator=g), torch.rand(64, generator=g)
    normed, new_residual = add_rms_norm(x, residual, weight, 1e-6)
    torch.testing.assert_close(new_residual, x + residual)
    torch.testing.assert_close(normed, rms_norm(x + residual, weight, 1e-6), rtol=1e-5, atol=1e-5)


@pytest.mark.hint(4)
def test_fused_model_logits_equal_unfused(tiny_model, fused_model, random_prompt, no_cache_logits):
    """With the residual add fused into RMSNorm, the model's logits at every position are unchanged."""
    tokens = random_prompt(48, seed=6)
    torch.testing.assert_close(no_cache_logits(fused_model, tokens), no_cache_logits(tiny_model, tokens),
                               rtol=1e-4, atol=1e-4)
