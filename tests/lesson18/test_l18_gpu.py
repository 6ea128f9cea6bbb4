"""Lesson 18 on a GPU: the kernels at Qwen3-8B shapes in bfloat16, and the quantized engines end to end.

Skipped without CUDA (the CPU runs the same kernels under Triton's interpreter in
tests/lesson18/test_l18_kernels.py, on small shapes).
"""

import pytest
import torch

from aios.layers import quant_kernels
from aios.layers import quantization as qz

pytestmark = pytest.mark.gpu

# (in_features, out_features) of Qwen3-8B's qkv_proj, o_proj, gate_up_proj and down_proj.
QWEN3_8B_LINEARS = [(4096, 6144), (4096, 4096), (4096, 24576), (12288, 4096)]


@pytest.mark.hint(6)
@pytest.mark.parametrize("tokens", [1, 7, 256])
@pytest.mark.parametrize("in_features,out_features", QWEN3_8B_LINEARS[:2] + QWEN3_8B_LINEARS[3:])
def test_int4_kernel_at_qwen3_8b_shapes(tokens, in_features, out_features):
    """int4_matmul in bf16 equals the float32 x @ dequantized(W).T within bf16 rounding."""
    gen = torch.Generator(device="cuda").manual_seed(0)
    w = torch.randn(out_features, in_features, device="cuda", generator=gen) * 0.02
    x = torch.randn(tokens, in_features, device="cuda", generator=gen).to(torch.bfloat16)
    qweight, qzeros, scales = qz.quantize_int4(w, 128)
    out = quant_kernels.int4_matmul(x, qweight, qzeros, scales, 128)
    expected = x.float() @ qz.dequantize_int4(qweight, qzeros, scales, 128).T
    torch.testing.assert_close(out.float(), expected, rtol=2e-2, atol=2e-2)


@pytest.mark.hint(6)
@pytest.mark.parametrize("tokens", [1, 256])
def test_int8_kernel_at_a_qwen3_8b_shape(tokens):
    """int8_matmul in bf16 equals the float32 x @ dequantized(W).T within bf16 rounding (down_proj's shape)."""
    gen = torch.Generator(device="cuda").manual_seed(1)
    w = torch.randn(4096, 12288, device="cuda", generator=gen) * 0.02
    x = torch.randn(tokens, 12288, device="cuda", generator=gen).to(torch.bfloat16)
    qweight, scale = qz.quantize_int8(w)
    out = quant_kernels.int8_matmul(x, qweight, scale)
    expected = x.float() @ qz.dequantize_int8(qweight, scale).T
    torch.testing.assert_close(out.float(), expected, rtol=2e-2, atol=5e-2)


@pytest.mark.parametrize("tokens", [1, 7, 256])
@pytest.mark.parametrize("in_features,out_features", QWEN3_8B_LINEARS)
def test_fp8_w8a8_kernel_at_qwen3_8b_shapes(tokens, in_features, out_features):
    """fp8_block_matmul in bf16 equals the float32 product of the per-token quantized x and the dequantized W."""
    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("FP8 needs compute capability >= 8.9")
    gen = torch.Generator(device="cuda").manual_seed(2)
    w = torch.randn(out_features, in_features, device="cuda", generator=gen) * 0.02
    x = torch.randn(tokens, in_features, device="cuda", generator=gen).to(torch.bfloat16)
    weight, scale_inv = qz.quantize_fp8_block(w)
    out = quant_kernels.fp8_block_matmul(x, weight, scale_inv)
    xq, x_scale = quant_kernels.quantize_fp8_rows(x)
    x_seen = xq.float() * x_scale.repeat_interleave(128, dim=1)[:, :in_features]
    expected = x_seen @ qz.dequantize_fp8_block(weight, scale_inv).T
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), expected, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("method", ["int8", "int4", "fp8"])
def test_quantized_engine_generates_on_the_gpu(method):
    """LLM(quantization=method) on the trained model, with CUDA graphs and Triton attention, generates text."""
    from l18_quality import TRAINED

    from aios.llm import LLM
    from aios.sampling_params import SamplingParams

    if method == "fp8" and torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("FP8 needs compute capability >= 8.9")
    llm = LLM(TRAINED, quantization=method, dtype="bfloat16", max_num_seqs=8, max_model_len=256,
              async_scheduling=False)  # lesson 18 needs lessons <= 15 only, not lesson 17's loop
    try:
        outputs = llm.generate(["Once upon a time", "You will"], SamplingParams(temperature=0.0, max_tokens=16),
                               use_tqdm=False)
        assert all(len(out["token_ids"]) > 0 for out in outputs)
    finally:
        llm.shutdown()


# ---------------------------------------------------------------------------- the FP8 KV cache on the GPU

FP8 = torch.float8_e4m3fn


def needs_fp8():
    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("FP8 needs compute capability >= 8.9")


@pytest.mark.hint(8)
@pytest.mark.parametrize("k_scale,v_scale", [(1.0, 1.0), (0.05, 0.02)])
def test_fp8_store_kernel_equals_torch_quantize_at_qwen3_0_6b_shape(k_scale, v_scale):
    """The Triton quantizing store writes exactly quantize_kv's e4m3 bits (8 KV heads x 128, bf16 views of a qkv
    row, padding slots skipped)."""
    from aios.layers import fp8_kv_cache as fkv

    needs_fp8()
    gen = torch.Generator(device="cuda").manual_seed(3)
    qkv = torch.randn(37, (16 + 8 + 8) * 128, device="cuda", generator=gen).to(torch.bfloat16) * 3
    k = qkv[:, 16 * 128: 24 * 128].view(37, 8, 128)  # strided views, as the attention layer passes them
    v = qkv[:, 24 * 128:].view(37, 8, 128)
    k_cache = torch.zeros(6, 16, 8, 128, dtype=FP8, device="cuda")
    v_cache = torch.zeros_like(k_cache)
    slots = torch.randperm(96, device="cuda", generator=gen)[:37]
    slots[5] = -1
    fkv.store_kvcache_fp8(k, v, k_cache, v_cache, slots, k_scale, v_scale)
    keep = slots >= 0
    # compared as bytes (indexing float8 tensors is not implemented on every torch build)
    flat_k, flat_v = k_cache.view(torch.uint8).view(-1, 8, 128), v_cache.view(torch.uint8).view(-1, 8, 128)
    assert torch.equal(flat_k[slots[keep]], fkv.quantize_kv(k[keep], k_scale).view(torch.uint8))
    assert torch.equal(flat_v[slots[keep]], fkv.quantize_kv(v[keep], v_scale).view(torch.uint8))
    untouched = torch.ones(96, dtype=torch.bool, device="cuda")
    untouched[slots[keep]] = False
    assert not flat_k[untouched].any() and not flat_v[untouched].any()


@pytest.mark.hint(8)
@pytest.mark.parametrize("context_len", [37, 700])
def test_fp8_cache_attention_kernels_at_qwen3_0_6b_shape(context_len):
    """Lesson 9's prefill and decode kernels over an FP8 cache (bf16 queries, 16 heads over 8 KV heads of 128)
    equal float32 attention over the dequantized keys and values, within bf16 rounding."""
    from aios.layers import fp8_kv_cache as fkv
    from aios.layers.attention import causal_attention
    from aios.layers.paged_attention import PagedKVCache
    from aios.utils.context import Context

    needs_fp8()
    gen = torch.Generator(device="cuda").manual_seed(context_len)
    blocks = (context_len + 15) // 16
    cache = PagedKVCache(1, blocks + 3, 16, 8, 128, FP8, "cuda", backend="triton", kv_scales=([0.5], [0.25]))
    table = torch.randperm(blocks + 3, device="cuda", generator=gen)[:blocks].to(torch.int32)
    q = torch.randn(context_len, 16, 128, device="cuda", generator=gen).to(torch.bfloat16)
    k = torch.randn(context_len, 8, 128, device="cuda", generator=gen).to(torch.bfloat16)
    v = torch.randn(context_len, 8, 128, device="cuda", generator=gen).to(torch.bfloat16)
    positions = torch.arange(context_len, device="cuda")
    slots = table[positions // 16].long() * 16 + positions % 16

    def context(start, end, is_prefill):
        """Queries at positions start..end-1 over keys 0..end-1."""
        return Context(kv_cache=cache, positions=positions[start:end], is_prefill=is_prefill,
                       cu_seqlens_q=torch.tensor([0, end - start], dtype=torch.int32, device="cuda"),
                       context_lens=torch.tensor([end], dtype=torch.int32, device="cuda"),
                       slot_mapping=slots[start:end], block_tables=table[None], max_seqlen_q=end - start,
                       max_seqlen_k=end)

    scale = 128**-0.5
    last = context_len - 1
    prefill = cache.attend(0, q[:last], k[:last], v[:last], context(0, last, True), scale)
    decode = cache.attend(0, q[last:], k[last:], v[last:], context(last, context_len, False), scale)
    k_seen = fkv.quantize_kv(k, 0.5).float() * 0.5
    v_seen = fkv.quantize_kv(v, 0.25).float() * 0.25
    expected = causal_attention(q.float(), k_seen, v_seen, scale)
    torch.testing.assert_close(prefill.float(), expected[:-1], rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(decode.float(), expected[-1:], rtol=2e-2, atol=2e-2)


@pytest.mark.hint(8)
def test_fp8_kv_engine_on_the_gpu_with_graphs_and_prefix_caching():
    """LLM(kv_cache_dtype="fp8") with CUDA graphs, Triton attention and prefix caching: about twice the KV blocks of
    the bf16 cache, greedy tokens mostly equal the bf16 cache's, and a repeated prompt completes the same."""
    from l18_quality import TRAINED, held_out_documents

    from aios.llm import LLM
    from aios.sampling_params import SamplingParams

    needs_fp8()
    prompts = held_out_documents(count=8, max_tokens=40)
    params = SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True)
    results, blocks = {}, {}
    for kv in ("auto", "fp8"):
        import gc

        gc.collect()
        torch.cuda.empty_cache()
        free, total = torch.cuda.mem_get_info()
        # About 4 GB beyond what is in use now: a budget that binds, without millions of blocks of the tiny model.
        utilization = min(0.9, (total - free + 4e9) / total)
        llm = LLM(TRAINED, kv_cache_dtype=kv, dtype="bfloat16", max_num_seqs=8, max_model_len=256,
                  gpu_memory_utilization=utilization, compile_elementwise=False,  # graphs without compile time
                  async_scheduling=False)  # lesson 18 needs lessons <= 15 only
        try:
            assert not llm.config.enforce_eager and llm.config.enable_prefix_caching
            blocks[kv] = llm.config.num_kvcache_blocks
            results[kv] = [out["token_ids"] for out in llm.generate(prompts, params, use_tqdm=False)]
            again = [out["token_ids"] for out in llm.generate(prompts, params, use_tqdm=False)]  # prefix-cache hits
            # bf16 matmuls of another batch shape may round differently: nearly, not exactly, the same tokens
            repeated = sum(a == b for first, second in zip(results[kv], again) for a, b in zip(first, second))
            assert repeated >= 0.9 * sum(map(len, results[kv])), (kv, results[kv], again)
        finally:
            llm.shutdown()
    assert 1.8 <= blocks["fp8"] / blocks["auto"] <= 2.2, blocks
    same = sum(a == b for ref, got in zip(results["auto"], results["fp8"]) for a, b in zip(ref, got))
    assert same >= 0.4 * sum(map(len, results["auto"])), results  # one flipped token changes the rest of a row
