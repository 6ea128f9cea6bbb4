"""Lesson 18 (hidden): the FP8 KV cache against an e4m3 grid of the tests' own, strided inputs, batches, scales."""

from pathlib import Path

import pytest
import torch
from h18_helpers import quality

from aios.config import features_up_to
from aios.layers import fp8_kv_cache as fkv
from aios.layers.attention import causal_attention
from aios.layers.paged_attention import PagedKVCache
from aios.llm import LLM
from aios.sampling_params import SamplingParams
from aios.utils.context import Context

FP8 = torch.float8_e4m3fn
HELPERS = Path(__file__).with_name("h18_kv_helpers.py")


def device_for(backend: str) -> str:
    """Triton kernels run compiled on a GPU (interpreted on a CPU); the torch backend is tested on the CPU."""
    return "cuda" if backend == "triton" and torch.cuda.is_available() else "cpu"


def e4m3_grid() -> torch.Tensor:
    """Every finite e4m3fn value, ascending (254 codes: 0x7f and 0xff are NaN; -0 and +0 both 0)."""
    values = torch.arange(256, dtype=torch.int32).to(torch.uint8).view(FP8).float()
    return values[~values.isnan()].unique()


def nearest_even(x: torch.Tensor) -> torch.Tensor:
    """x rounded to the e4m3 grid, ties to the value with an even code, beyond +-448 saturated."""
    grid = e4m3_grid()
    x = x.float().clamp(-448, 448)
    upper = torch.searchsorted(grid, x).clamp(1, len(grid) - 1)
    low, high = grid[upper - 1], grid[upper]
    pick_high = (high - x) < (x - low)
    tie = (high - x) == (x - low)
    high_code_even = (high.to(FP8).view(torch.uint8) % 2) == 0
    pick_high |= tie & high_code_even
    return torch.where(x == grid[upper - 1], low, torch.where(pick_high, high, low))


@pytest.mark.hint(8)
def test_quantize_kv_rounds_to_nearest_even_on_the_e4m3_grid():
    """quantize_kv(x, s) is x / s rounded to the nearest e4m3 value (ties to even), for random values and exact ties."""
    grid = e4m3_grid()
    gen = torch.Generator().manual_seed(5)
    random = torch.randn(4000, generator=gen) * torch.logspace(-3, 2.5, 4000)
    ties = (grid[1:] + grid[:-1]) / 2
    for scale in (1.0, 0.125, 0.37):
        for x in (random, ties[ties.abs() < 448]):
            stored = x * scale
            got = fkv.quantize_kv(stored[:, None, None], scale)
            assert got.dtype == FP8
            expected = nearest_even(stored / scale)
            assert torch.equal(got.float().flatten(), expected), scale


@pytest.mark.hint(8)
def test_quantize_kv_keeps_small_values_and_half_precision_inputs():
    """Values below 2**-6 keep e4m3's subnormal steps of 2**-9 (not flushed to 0); bf16 and fp16 inputs work."""
    x = torch.tensor([0.002, -0.004, 0.003, 0.0009, 0.0])[:, None, None]
    assert fkv.quantize_kv(x, 1.0).float().flatten().tolist() == [2**-9, -2 * 2**-9, 2 * 2**-9, 0.0, 0.0]
    for dtype in (torch.bfloat16, torch.float16):
        y = torch.tensor([[[3.3, -100.0, 1000.0]]], dtype=dtype)
        assert fkv.quantize_kv(y, 0.5).float().flatten().tolist() == [6.5, -192.0, 448.0]
        assert fkv.dequantize_kv(fkv.quantize_kv(y, 0.5), 0.5).dtype == torch.float32


@pytest.mark.hint(8)
def test_store_kvcache_fp8_takes_strided_views_and_skips_padding():
    """K and V as strided views of a qkv row (as attention passes them); an all-padding step writes nothing."""
    gen = torch.Generator().manual_seed(6)
    qkv = torch.randn(5, (4 + 2 + 2) * 8, generator=gen)
    k, v = qkv[:, 32:48].view(5, 2, 8), qkv[:, 48:].view(5, 2, 8)
    k_cache = torch.zeros(2, 4, 2, 8, dtype=FP8)
    v_cache = torch.zeros_like(k_cache)
    fkv.store_kvcache_fp8(k, v, k_cache, v_cache, torch.full((5,), -1), 1.0, 1.0)
    assert k_cache.float().abs().sum() == 0 and v_cache.float().abs().sum() == 0
    slots = torch.tensor([7, 0, 3, -1, 6])
    fkv.store_kvcache_fp8(k, v, k_cache, v_cache, slots, 0.25, 2.0)
    for token, slot in enumerate(slots.tolist()):
        if slot >= 0:
            assert torch.equal(k_cache.view(-1, 2, 8)[slot].float(), nearest_even(k[token] / 0.25))
            assert torch.equal(v_cache.view(-1, 2, 8)[slot].float(), nearest_even(v[token] / 2.0))


def batch_context(cache, seqs, is_prefill):
    """Context for sequences given as (q_len, context_len, block table)."""
    device = cache.k_cache.device
    positions, slots, cu, lens = [], [], [0], []
    width = max(len(table) for _, _, table in seqs)
    tables = torch.full((len(seqs), width), -1, dtype=torch.int32)
    for i, (q_len, context_len, table) in enumerate(seqs):
        tables[i, :len(table)] = torch.tensor(table, dtype=torch.int32)
        pos = torch.arange(context_len - q_len, context_len)
        positions.append(pos)
        slots.append(tables[i][pos // cache.block_size].long() * cache.block_size + pos % cache.block_size)
        cu.append(cu[-1] + q_len)
        lens.append(context_len)
    return Context(kv_cache=cache, positions=torch.cat(positions).to(device), is_prefill=is_prefill,
                   cu_seqlens_q=torch.tensor(cu, dtype=torch.int32, device=device),
                   context_lens=torch.tensor(lens, dtype=torch.int32, device=device),
                   slot_mapping=torch.cat(slots).to(device), block_tables=tables.to(device),
                   max_seqlen_q=max(q for q, _, _ in seqs), max_seqlen_k=max(lens))


@pytest.mark.hint(8)
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_batch_over_fp8_cache_prefix_prefill_then_decode(backend):
    """Two sequences: a prefill whose first tokens are already cached, then a decode step of both; each equals
    float32 attention over its own dequantized keys and values (layer scales k 0.1, v 0.3)."""
    gen = torch.Generator().manual_seed(7)
    device = device_for(backend)
    cache = PagedKVCache(1, 8, 4, 1, 16, FP8, device, backend=backend, kv_scales=([0.1], [0.3]))
    tables = [[5, 1, 6], [0, 2]]
    lens = [10, 7]
    k = [torch.randn(n + 1, 1, 16, generator=gen) for n in lens]  # head_dim 16: tl.dot's smallest on a GPU
    v = [torch.randn(n + 1, 1, 16, generator=gen) for n in lens]
    q = [torch.randn(n + 1, 2, 16, generator=gen) for n in lens]
    scale = 16**-0.5
    # the first 6 and 3 tokens come "from a prefix cache": stored by an earlier step
    cache.attend(0, torch.cat([q[0][:6], q[1][:3]]).to(device), torch.cat([k[0][:6], k[1][:3]]).to(device),
                 torch.cat([v[0][:6], v[1][:3]]).to(device),
                 batch_context(cache, [(6, 6, tables[0]), (3, 3, tables[1])], True), scale)
    prefill = cache.attend(0, torch.cat([q[0][6:10], q[1][3:7]]).to(device),
                           torch.cat([k[0][6:10], k[1][3:7]]).to(device), torch.cat([v[0][6:10], v[1][3:7]]).to(device),
                           batch_context(cache, [(4, 10, tables[0]), (4, 7, tables[1])], True), scale).cpu()
    decode = cache.attend(0, torch.cat([q[0][10:], q[1][7:]]).to(device), torch.cat([k[0][10:], k[1][7:]]).to(device),
                          torch.cat([v[0][10:], v[1][7:]]).to(device),
                          batch_context(cache, [(1, 11, tables[0]), (1, 8, tables[1])], False), scale).cpu()
    for i, (rows_prefill, rows_decode) in enumerate(((slice(0, 4), slice(0, 1)), (slice(4, 8), slice(1, 2)))):
        ks, vs = nearest_even(k[i] / 0.1) * 0.1, nearest_even(v[i] / 0.3) * 0.3
        n = lens[i]
        torch.testing.assert_close(prefill[rows_prefill], causal_attention(q[i][n - 4:n], ks[:n], vs[:n], scale),
                                   rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(decode[rows_decode], causal_attention(q[i][n:], ks, vs, scale), rtol=1e-4, atol=1e-5)


@pytest.mark.hint(8)
def test_fp8_cache_logits_with_scales_and_a_cached_half(learner_helper, trained_dir, held_out_documents):
    """More held-out text, each document prefilled in two halves through the FP8 cache, with scales 1.0 and with
    k_scale 0.02 / v_scale 0.005: KL and top-1 agreement against the float32 cache within the README's bounds."""
    helpers = learner_helper(HELPERS)
    documents = held_out_documents[:8]
    reference = helpers.logits_through_cache(trained_dir, documents, fp8=False)
    layers = 4
    for scales in (None, ([0.02] * layers, [0.005] * layers)):
        figures = quality(reference, helpers.logits_through_cache(trained_dir, documents, True, scales), documents)
        assert figures["kl"] <= 0.02 and figures["top1"] >= 0.90, (scales, figures)


@pytest.mark.hint(8)
def test_engine_reads_checkpoint_kv_scales(trained_dir, tmp_path):
    """A checkpoint with vLLM-style self_attn.k_scale / v_scale: the FP8 engine stores with them and still
    generates like the float engine (first greedy tokens equal, most positions equal)."""
    import shutil

    from safetensors.torch import load_file, save_file

    folder = tmp_path / "scaled"
    shutil.copytree(trained_dir, folder)
    tensors = load_file(str(folder / "model.safetensors"))
    for layer in range(4):
        tensors[f"model.layers.{layer}.self_attn.k_scale"] = torch.tensor(0.03)
        tensors[f"model.layers.{layer}.self_attn.v_scale"] = torch.tensor(0.01)
    save_file(tensors, str(folder / "model.safetensors"))
    prompts = ["Never trust", "A friend is", "The secret of life is", "Today you", "If at first", "You will"]
    params = SamplingParams(temperature=0.0, max_tokens=10, ignore_eos=True)
    options = {**features_up_to(15), "attention_backend": "torch", "max_num_seqs": 8, "max_model_len": 128,
               "num_kvcache_blocks": 48, "device": "cpu"}
    tokens = {}
    for kv in ("auto", "fp8"):
        llm = LLM(str(folder), kv_cache_dtype=kv, **options)
        tokens[kv] = [out["token_ids"] for out in llm.generate(prompts, params, use_tqdm=False)]
    assert llm.model_runner.kv_cache.k_scales == pytest.approx([0.03] * 4)
    assert llm.model_runner.kv_cache.k_cache.float().abs().max() > 20  # stored as x / 0.03, not x
    same = sum(a == b for ref, got in zip(tokens["auto"], tokens["fp8"]) for a, b in zip(ref, got))
    assert same >= 0.5 * sum(map(len, tokens["auto"])), tokens
    assert sum(ref[0] == got[0] for ref, got in zip(tokens["auto"], tokens["fp8"])) >= 5, tokens
