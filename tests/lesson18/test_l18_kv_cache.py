"""Lesson 18: the FP8 KV cache — e4m3 keys and values with a scale per layer, stored and attended over.

The quantizing store and the attention over an FP8 cache are checked against float32 attention
over the dequantized cache (exact up to float32 rounding), and the whole engine against the
float32 one on the trained model (assets/aios-tiny-lm): KL divergence and top-1 agreement of
the logits over held-out text (bounds in exercises/lesson18/README.md, 'The FP8 KV cache'),
greedy tokens, and prefix caching. tests/lesson18/test_l18_gpu.py runs the Triton store on a GPU.
"""

from pathlib import Path

import pytest
import torch
from l18_quality import TRAINED, compare, held_out_documents

from aios.config import features_up_to
from aios.layers import fp8_kv_cache as fkv
from aios.layers.attention import causal_attention
from aios.layers.paged_attention import PagedKVCache
from aios.llm import LLM
from aios.sampling_params import SamplingParams
from aios.utils.context import Context

HELPERS = Path(__file__).with_name("l18_kv_helpers.py")
FP8 = torch.float8_e4m3fn
#: e4m3 keeps 3 mantissa bits: a normal value is off by at most half a step, 2**-4 of its size;
#: below 2**-6 (subnormals) the step is 2**-9, so the error is at most 2**-10 (times the scale).
REL_ERROR, ABS_ERROR = 2.0**-4, 2.0**-10
#: FP8 KV cache against the float32 cache on 12 held-out fortunes (README, 'The FP8 KV cache').
KV_QUALITY_BOUNDS = {"kl": 0.02, "top1": 0.90, "ppl_ratio": 1.02}


def device_for(backend: str) -> str:
    """Triton kernels run compiled on a GPU (interpreted on a CPU); the torch backend is tested on the CPU."""
    return "cuda" if backend == "triton" and torch.cuda.is_available() else "cpu"


def assert_within_e4m3_error(stored, x, scale):
    """stored (e4m3) * scale is x up to e4m3's rounding; values beyond 448 * scale saturate."""
    assert stored.dtype == FP8 and stored.shape == x.shape
    seen = stored.float() * scale
    target = x.float().clamp(-448 * scale, 448 * scale)
    bound = torch.maximum(target.abs() * REL_ERROR, torch.tensor(ABS_ERROR * scale)) * 1.0001
    assert torch.all((seen - target).abs() <= bound), (seen - target).abs().max()


@pytest.mark.hint(8)
@pytest.mark.parametrize("scale", [1.0, 0.02, 3.0])
def test_quantize_kv_round_trip_within_e4m3_error(scale):
    """quantize_kv then dequantize_kv gives x back within e4m3's rounding error, for scales != 1 too."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(37, 2, 24, generator=gen) * 4 * scale
    stored = fkv.quantize_kv(x, scale)
    assert_within_e4m3_error(stored, x, scale)
    torch.testing.assert_close(fkv.dequantize_kv(stored, scale), stored.float() * scale)


@pytest.mark.hint(8)
def test_quantize_kv_saturates_instead_of_nan():
    """Values beyond +-448 * scale become +-448 (e4m3 has no infinity; saturate, never NaN)."""
    x = torch.tensor([[[1e4, -1e4, 600.0, 447.0]]])
    stored = fkv.quantize_kv(x, 1.0)
    assert not stored.float().isnan().any()
    assert stored.float().tolist() == [[[448.0, -448.0, 448.0, 448.0]]]
    assert fkv.quantize_kv(x.bfloat16(), 2.0).float().tolist() == [[[448.0, -448.0, 288.0, 224.0]]]  # 300 rounds to 288


@pytest.mark.hint(8)
def test_store_kvcache_fp8_writes_each_token_into_its_slot():
    """store_kvcache_fp8 writes quantize_kv(k) and quantize_kv(v) at the slots; slot -1 writes nothing."""
    gen = torch.Generator().manual_seed(1)
    k_cache = torch.zeros(3, 4, 2, 8, dtype=FP8)
    v_cache = torch.zeros(3, 4, 2, 8, dtype=FP8)
    key, value = torch.randn(3, 2, 8, generator=gen), torch.randn(3, 2, 8, generator=gen)
    fkv.store_kvcache_fp8(key, value, k_cache, v_cache, torch.tensor([5, -1, 10]), 0.5, 0.25)
    flat_k, flat_v = k_cache.view(-1, 2, 8), v_cache.view(-1, 2, 8)
    for token, slot in ((0, 5), (2, 10)):
        assert_within_e4m3_error(flat_k[slot], key[token], 0.5)
        assert_within_e4m3_error(flat_v[slot], value[token], 0.25)
    untouched = [s for s in range(12) if s not in (5, 10)]
    assert flat_k[untouched].float().abs().sum() == 0 and flat_v[untouched].float().abs().sum() == 0


def one_sequence_context(cache, q_len, context_len, block_table, is_prefill=True):
    """The Context of one sequence whose last ``q_len`` of ``context_len`` tokens are new."""
    block_size = cache.block_size
    device = cache.k_cache.device
    positions = torch.arange(context_len - q_len, context_len)
    table = torch.tensor(block_table, dtype=torch.int32)
    slots = table[positions // block_size].long() * block_size + positions % block_size
    return Context(kv_cache=cache, positions=positions.to(device), is_prefill=is_prefill,
                   cu_seqlens_q=torch.tensor([0, q_len], dtype=torch.int32, device=device),
                   context_lens=torch.tensor([context_len], dtype=torch.int32, device=device),
                   slot_mapping=slots.to(device), block_tables=table[None].to(device), max_seqlen_q=q_len,
                   max_seqlen_k=context_len)


@pytest.mark.hint(8)
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_attend_over_fp8_cache_equals_attention_over_dequantized_keys(backend):
    """PagedKVCache(float8_e4m3fn).attend: prefill then decode equal float32 attention over the dequantized
    K and V, with per-layer scales k 0.05 / v 0.02 (the scales must be applied, and not twice)."""
    gen = torch.Generator().manual_seed(2)
    scales = ([1.0, 0.05], [1.0, 0.02])
    device = device_for(backend)
    cache = PagedKVCache(2, 4, 4, 2, 16, FP8, device, backend=backend, kv_scales=scales)
    block_table = [2, 0, 3]
    q = torch.randn(9, 4, 16, generator=gen)
    k = torch.randn(9, 2, 16, generator=gen) * 0.3
    v = torch.randn(9, 2, 16, generator=gen) * 0.1
    scale = 16**-0.5
    qd, kd, vd = q.to(device), k.to(device), v.to(device)
    out = cache.attend(1, qd[:8], kd[:8], vd[:8], one_sequence_context(cache, 8, 8, block_table), scale).cpu()
    out_decode = cache.attend(1, qd[8:], kd[8:], vd[8:], one_sequence_context(cache, 1, 9, block_table, False),
                              scale).cpu()
    k_seen = fkv.quantize_kv(k, 0.05).float() * 0.05
    v_seen = fkv.quantize_kv(v, 0.02).float() * 0.02
    torch.testing.assert_close(out, causal_attention(q[:8], k_seen[:8], v_seen[:8], scale), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out_decode, causal_attention(q[8:], k_seen, v_seen, scale), rtol=1e-4, atol=1e-5)
    assert cache.k_cache[0].float().abs().sum() == 0  # layer 0 untouched


@pytest.mark.hint(8)
def test_fp8_kv_cache_logits_close_to_the_float_cache(learner_helper):
    """The trained model through an FP8 cache: KL, top-1 agreement and perplexity within the README's bounds."""
    helpers = learner_helper(HELPERS)
    documents = held_out_documents(count=12, max_tokens=64)
    figures = compare(helpers.cached_logits(TRAINED, documents, "auto"),
                      helpers.cached_logits(TRAINED, documents, "fp8"), documents)
    print(figures)
    assert figures["kl"] <= KV_QUALITY_BOUNDS["kl"], figures
    assert figures["top1"] >= KV_QUALITY_BOUNDS["top1"], figures
    assert figures["ppl_candidate"] <= figures["ppl_reference"] * KV_QUALITY_BOUNDS["ppl_ratio"], figures


PROMPTS = ["Once upon a time", "The best thing about", "You will", "A friend is", "Never trust",
           "The secret of life is", "Today you", "If at first"]


def greedy(kv_cache_dtype, prompts, max_tokens=12, **options):
    options = {**features_up_to(15), "attention_backend": "torch", "max_num_seqs": 8, "max_model_len": 128,
               "num_kvcache_blocks": 64, "device": "cpu", **options}  # the bounds were measured in float32 on a CPU
    llm = LLM(TRAINED, **options, kv_cache_dtype=kv_cache_dtype)
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    return llm, [out["token_ids"] for out in llm.generate(prompts, params, use_tqdm=False)]


@pytest.mark.hint(8)
def test_engine_with_fp8_kv_cache_generates_like_the_float_engine():
    """LLM(kv_cache_dtype="fp8"): an e4m3 cache; greedy tokens mostly equal the float engine's (one flipped
    token changes the rest of a completion, so the bound is on positions: >= 60%, and 7 of 8 first tokens)."""
    _, reference = greedy("auto", PROMPTS)
    llm, tokens = greedy("fp8", PROMPTS)
    assert llm.model_runner.kv_cache.k_cache.dtype == FP8
    same = sum(a == b for ref, got in zip(reference, tokens) for a, b in zip(ref, got))
    assert same >= 0.6 * sum(map(len, reference)), (reference, tokens)
    assert sum(ref[0] == got[0] for ref, got in zip(reference, tokens)) >= 7, (reference, tokens)


@pytest.mark.hint(8)
def test_fp8_kv_cache_with_prefix_caching_reuses_quantized_blocks():
    """With prefix caching, a repeated 40-token prompt hits its cached FP8 blocks and completes exactly as
    the first time and as an engine without prefix caching."""
    prompt = held_out_documents(count=1, max_tokens=40)
    llm, first = greedy("fp8", prompt, max_tokens=10, enable_prefix_caching=True)
    seq = llm.add_request(prompt[0], SamplingParams(temperature=0.0, max_tokens=10, ignore_eos=True))
    llm.step()  # the prefill: the first two 16-token blocks come from the cache
    assert seq.num_cached_tokens >= 32, seq.num_cached_tokens
    while not llm.is_finished():
        llm.step()
    _, uncached = greedy("fp8", prompt, max_tokens=10, enable_prefix_caching=False)
    assert seq.completion_token_ids == first[0] == uncached[0], (first, seq.completion_token_ids, uncached)
