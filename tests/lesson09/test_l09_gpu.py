"""Lesson 9 on a GPU: real Qwen3 attention shapes in bfloat16, compiled kernels, and flash-attn where installed."""

import importlib.util

import pytest
import torch

from aios.config import features_up_to
from aios.layers import triton_attention
from aios.layers.paged_attention import paged_attention, store_kvcache
from aios.utils.context import Context

pytestmark = pytest.mark.gpu

# Qwen3-0.6B: 16 query heads, 8 KV heads, head_dim 128.
Q_HEADS, KV_HEADS, HEAD_DIM, BLOCK_SIZE = 16, 8, 128, 16


def paged_batch(context_lens, query_lens, dtype=torch.bfloat16, seed=0):
    """A random paged cache on the GPU holding each context in shuffled blocks, plus the queries."""
    gen = torch.Generator(device="cuda").manual_seed(seed)
    blocks = [(n + BLOCK_SIZE - 1) // BLOCK_SIZE for n in context_lens]
    num_blocks = sum(blocks) + 8
    shape = (num_blocks, BLOCK_SIZE, KV_HEADS, HEAD_DIM)
    k_cache = torch.randn(shape, generator=gen, device="cuda", dtype=dtype)
    v_cache = torch.randn(shape, generator=gen, device="cuda", dtype=dtype)
    order = torch.randperm(num_blocks, generator=gen, device="cuda").tolist()
    tables = [[order.pop() for _ in range(n)] for n in blocks]
    width = max(blocks)
    cu = [0]
    for n in query_lens:
        cu.append(cu[-1] + n)
    context = Context(
        is_prefill=max(query_lens) > 1,
        cu_seqlens_q=torch.tensor(cu, dtype=torch.int32, device="cuda"),
        context_lens=torch.tensor(context_lens, dtype=torch.int32, device="cuda"),
        block_tables=torch.tensor([t + [-1] * (width - len(t)) for t in tables], dtype=torch.int32, device="cuda"),
        max_seqlen_q=max(query_lens),
        max_seqlen_k=max(context_lens),
    )
    q = torch.randn(cu[-1], Q_HEADS, HEAD_DIM, generator=gen, device="cuda", dtype=dtype)
    return q, k_cache, v_cache, context


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.float() - ref.float()).norm() / ref.float().norm()).item()


def reference(q, k_cache, v_cache, context):
    return paged_attention(q.float(), k_cache.float(), v_cache.float(), context, HEAD_DIM**-0.5)


@pytest.mark.parametrize("context_lens,query_lens", [
    ([1000, 37, 513], [1000, 37, 513]),
    ([1500, 700], [300, 700]),  # the first sequence's 1200 leading tokens come from the cache
    ([2048], [2048]),
])
def test_prefill_bf16_real_shapes(context_lens, query_lens):
    """prefill_attention in bf16 at Qwen3-0.6B shapes is within bf16 rounding of the float32 reference."""
    q, k_cache, v_cache, context = paged_batch(context_lens, query_lens, seed=len(context_lens))
    out = triton_attention.prefill_attention(q, k_cache, v_cache, context, HEAD_DIM**-0.5)
    assert relative_error(out, reference(q, k_cache, v_cache, context)) < 1e-2


@pytest.mark.parametrize("num_splits", [None, 1, 7])
def test_decode_bf16_real_shapes(num_splits):
    """decode_attention in bf16 (planned splits, one split, many) is within bf16 rounding of the reference."""
    lens = [1, 15, 16, 17, 300, 1024, 4000, 63]
    q, k_cache, v_cache, context = paged_batch(lens, [1] * len(lens), seed=5)
    out = triton_attention.decode_attention(q, k_cache, v_cache, context, HEAD_DIM**-0.5, num_splits=num_splits)
    assert relative_error(out, reference(q, k_cache, v_cache, context)) < 1e-2


def test_decode_float32_is_exact_to_float32_rounding():
    """With float32 inputs the kernels use exact (IEEE) dot products, not TF32."""
    q, k_cache, v_cache, context = paged_batch([700, 33], [1, 1], dtype=torch.float32, seed=9)
    out = triton_attention.decode_attention(q, k_cache, v_cache, context, HEAD_DIM**-0.5, num_splits=3)
    assert relative_error(out, reference(q, k_cache, v_cache, context)) < 1e-5


def test_store_kvcache_bf16_real_shapes():
    """The Triton store equals lesson 6's store on 3000 tokens of bf16 K/V with padding slots."""
    gen = torch.Generator(device="cuda").manual_seed(3)
    tokens, num_blocks = 3000, 400
    key = torch.randn(tokens, KV_HEADS, HEAD_DIM, generator=gen, device="cuda", dtype=torch.bfloat16)
    value = torch.randn(tokens, KV_HEADS, HEAD_DIM, generator=gen, device="cuda", dtype=torch.bfloat16)
    slots = torch.randperm(num_blocks * BLOCK_SIZE, generator=gen, device="cuda")[:tokens]
    slots[::7] = -1
    caches = [torch.zeros(num_blocks, BLOCK_SIZE, KV_HEADS, HEAD_DIM, device="cuda", dtype=torch.bfloat16)
              for _ in range(4)]
    triton_attention.store_kvcache(key, value, caches[0], caches[1], slots)
    store_kvcache(key, value, caches[2], caches[3], slots)
    assert torch.equal(caches[0], caches[2]) and torch.equal(caches[1], caches[3])


@pytest.mark.skipif(importlib.util.find_spec("flash_attn") is None, reason="flash-attn is not installed")
def test_matches_flash_attn_varlen():
    """Where flash-attn is installed, prefill_attention agrees with flash_attn_varlen_func on the same K/V."""
    import flash_attn
    lens = [777, 64, 1200]
    q, k_cache, v_cache, context = paged_batch(lens, lens, seed=11)
    ks, vs = [], []
    for i, n in enumerate(lens):
        ids = context.block_tables[i, : (n + BLOCK_SIZE - 1) // BLOCK_SIZE].long()
        ks.append(k_cache[ids].flatten(0, 1)[:n])
        vs.append(v_cache[ids].flatten(0, 1)[:n])
    cu = context.cu_seqlens_q
    expected = flash_attn.flash_attn_varlen_func(
        q, torch.cat(ks), torch.cat(vs), cu, cu, max(lens), max(lens), softmax_scale=HEAD_DIM**-0.5, causal=True)
    out = triton_attention.prefill_attention(q, k_cache, v_cache, context, HEAD_DIM**-0.5)
    assert relative_error(out, expected) < 1e-2


def test_auto_backend_is_triton_and_matches_torch(tiny_model_dir):
    """On CUDA, attention_backend="auto" picks the Triton kernels, and greedy tokens equal the torch backend's."""
    from aios.llm import LLM
    from aios.sampling_params import SamplingParams

    prompts = [list(range(5, 5 + n)) for n in (3, 40, 200, 17)]
    params = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)
    options = {**features_up_to(9), "max_num_seqs": 8, "max_model_len": 512, "num_kvcache_blocks": 512}
    auto = LLM(tiny_model_dir, **{**options, "attention_backend": "auto"})
    assert auto.config.attention_backend == "triton"
    torch_llm = LLM(tiny_model_dir, **{**options, "attention_backend": "torch"})
    assert [o["token_ids"] for o in auto.generate(prompts, params, use_tqdm=False)] == \
        [o["token_ids"] for o in torch_llm.generate(prompts, params, use_tqdm=False)]
