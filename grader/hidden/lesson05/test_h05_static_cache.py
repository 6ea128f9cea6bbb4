"""Lesson 5, hidden: the pre-allocated cache and the fused residual norm, in more detail."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from aios.engine.kv_cache import StaticKVCache
from aios.generate import generate_no_cache, generate_with_cache
from aios.layers.attention import causal_attention
from aios.layers.layernorm import RMSNorm, add_rms_norm, rms_norm
from aios.models.qwen3 import Qwen3DecoderLayer
from aios.utils.context import Context


@settings(max_examples=30, deadline=None)
@given(tokens=st.integers(1, 9), hidden=st.sampled_from([8, 64, 96]), eps=st.sampled_from([1e-6, 1e-5, 0.1]),
       seed=st.integers(0, 2**16))
@pytest.mark.hint(3)
def test_add_rms_norm_matches_for_any_shape(tokens, hidden, eps, seed):
    """add_rms_norm equals add-then-rms_norm for any token count, width and eps."""
    g = torch.Generator().manual_seed(seed)
    x, residual = torch.randn(tokens, hidden, generator=g) * 3, torch.randn(tokens, hidden, generator=g)
    weight = torch.randn(hidden, generator=g)
    normed, new_residual = add_rms_norm(x, residual, weight, eps)
    torch.testing.assert_close(new_residual, x + residual)
    torch.testing.assert_close(normed, rms_norm(x + residual, weight, eps), rtol=1e-5, atol=1e-5)


@pytest.mark.hint(3)
def test_add_rms_norm_keeps_bfloat16():
    """In bfloat16, add_rms_norm returns bfloat16 tensors close to the float32 result."""
    g = torch.Generator().manual_seed(1)
    x, residual = torch.randn(4, 32, generator=g), torch.randn(4, 32, generator=g)
    weight = torch.rand(32, generator=g) + 0.5
    normed, new_residual = add_rms_norm(x.bfloat16(), residual.bfloat16(), weight.bfloat16(), 1e-6)
    assert normed.dtype == torch.bfloat16 and new_residual.dtype == torch.bfloat16
    torch.testing.assert_close(normed.float(), rms_norm(x + residual, weight, 1e-6), rtol=0.05, atol=0.05)
    torch.testing.assert_close(new_residual.float(), x + residual, rtol=0.02, atol=0.02)


@pytest.mark.hint(3)
def test_add_rms_norm_bf16_casts_back_before_the_weight():
    """In bfloat16 the normalised sum is cast back, then scaled by the weight (lesson 1's order)."""
    g = torch.Generator().manual_seed(2)
    x, residual = (torch.randn(16, 256, generator=g) * 2).bfloat16(), torch.randn(16, 256, generator=g).bfloat16()
    weight = (1 + 0.3 * torch.randn(256, generator=g)).bfloat16()
    normed, _ = add_rms_norm(x, residual, weight, 1e-6)
    summed = x.float() + residual.float()
    expected = weight * (summed * torch.rsqrt(summed.pow(2).mean(-1, keepdim=True) + 1e-6)).bfloat16()
    differ = (normed != expected).float().mean().item()
    # A float32 formula of another order (x / sqrt) may flip a rare bf16 rounding; a second rounding flips ~25%.
    assert differ <= 0.01, f"{differ:.1%} of the bf16 results differ from weight * (normalised sum cast to bf16)"


@pytest.mark.hint(3)
def test_rmsnorm_module_with_residual_returns_both():
    """RMSNorm(x, residual) returns the normalised sum and the sum itself."""
    norm = RMSNorm(16, eps=1e-6)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    x, residual = torch.randn(3, 16), torch.randn(3, 16)
    normed, new_residual = norm(x, residual)
    torch.testing.assert_close(normed, norm(x + residual), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(new_residual, x + residual)


@pytest.mark.hint(4)
@pytest.mark.parametrize("first_layer", [True, False])
def test_fused_decoder_layer_output_plus_residual_equals_unfused(tiny_model, first_layer):
    """A fused decoder layer's (output + residual) equals the unfused layer's output, with or without an incoming residual."""
    unfused = tiny_model.model.layers[0]
    fused = Qwen3DecoderLayer(tiny_model.config, 0, fuse_residual_norm=True)
    fused.load_state_dict(unfused.state_dict())
    g = torch.Generator().manual_seed(2)
    positions = torch.arange(6)
    stream = torch.randn(6, tiny_model.config.hidden_size, generator=g)
    with torch.inference_mode():
        expected, _ = unfused(positions, stream, None)
        if first_layer:
            out, residual = fused(positions, stream, None)
        else:
            part = torch.randn(6, tiny_model.config.hidden_size, generator=g)
            out, residual = fused(positions, stream - part, part)
    torch.testing.assert_close(out + residual, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.hint(2)
def test_static_cache_layers_are_independent_with_gqa():
    """Each layer of a StaticKVCache keeps its own rows; 6 query heads share 3 KV heads."""
    g = torch.Generator().manual_seed(4)
    cache = StaticKVCache(3, 10, 3, 4, torch.float32, "cpu")
    data = {layer: (torch.randn(5, 6, 4, generator=g), torch.randn(5, 3, 4, generator=g),
                    torch.randn(5, 3, 4, generator=g)) for layer in (0, 2)}
    outs = {}
    for lo, hi in ((0, 3), (3, 4), (4, 5)):
        for layer, (q, k, v) in data.items():
            context = Context(positions=torch.arange(lo, hi))
            outs[layer] = cache.attend(layer, q[lo:hi], k[lo:hi], v[lo:hi], context, 0.5)
    for layer, (q, k, v) in data.items():
        torch.testing.assert_close(outs[layer], causal_attention(q, k, v, 0.5)[-1:], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(cache.k[layer, :5], k)


@pytest.mark.hint(2)
def test_writing_an_earlier_position_overwrites_and_truncates():
    """Attending at position p overwrites row p and looks only at positions 0..p (a rollback)."""
    g = torch.Generator().manual_seed(5)
    q, k, v = torch.randn(6, 2, 4, generator=g), torch.randn(6, 1, 4, generator=g), torch.randn(6, 1, 4, generator=g)
    cache = StaticKVCache(1, 8, 1, 4, torch.float32, "cpu")
    cache.attend(0, q, k, v, Context(positions=torch.arange(6)), 0.5)
    k2, v2 = torch.randn(1, 1, 4, generator=g), torch.randn(1, 1, 4, generator=g)
    out = cache.attend(0, q[2:3], k2, v2, Context(positions=torch.tensor([2])), 0.5)
    keys, values = torch.cat([k[:2], k2]), torch.cat([v[:2], v2])
    torch.testing.assert_close(out, causal_attention(q[2:3], keys, values, 0.5), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cache.k[0, 2], k2[0])


@pytest.mark.hint(1)
def test_for_model_sizes_the_cache_from_the_model(fused_model):
    """StaticKVCache.for_model: one row per position for every layer and KV head, in the model's dtype."""
    cache = StaticKVCache.for_model(fused_model, 33)
    config = fused_model.config
    assert tuple(cache.k.shape) == (config.num_hidden_layers, 33, config.num_key_value_heads, config.head_dim)
    assert cache.k.dtype == cache.v.dtype == torch.float32


def test_cache_exactly_as_long_as_needed(fused_model, random_prompt):
    """A StaticKVCache of exactly prompt + new - 1 rows is enough for the whole generation."""
    prompt = random_prompt(12, seed=7)
    cache = StaticKVCache.for_model(fused_model, 12 + 10 - 1)
    assert generate_with_cache(fused_model, prompt, 10, cache) == generate_no_cache(fused_model, prompt, 10)


def test_fused_static_steps_match_transformers(tiny_model_dir, fused_model, recording, random_prompt):
    """Every step of the fused model with a StaticKVCache matches Hugging Face transformers' logits."""
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    prompt = random_prompt(21, seed=8)
    model = recording(fused_model)
    generated = generate_with_cache(model, prompt, 8, StaticKVCache.for_model(fused_model, 64))
    with torch.inference_mode():
        hf_logits = hf(torch.tensor([prompt + generated[:-1]]), use_cache=False).logits[0].float()
    for step, logits in enumerate(model.logits):
        torch.testing.assert_close(logits, hf_logits[len(prompt) - 1 + step], rtol=1e-4, atol=1e-4)
