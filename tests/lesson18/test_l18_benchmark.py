"""Lesson 18 GPU benchmark: batch-1 decode of the Qwen3-8B shape with INT4 and INT8 weights against bf16.

At batch 1 a decode step reads every weight once and does little else, so its time is
the weight bytes over the memory bandwidth: INT8 halves the bytes, INT4 (plus its scales and
zero points) cuts them to about 0.28x. The issue's targets are INT4 >= 2.5x and INT8 >= 1.6x
the bf16 engine (KV cache and attention are the same in all three, and CUDA graphs remove
the launch overhead). Random weights (load_format="dummy"): speed does not depend on them.

Each test asserts a floor the reference engine reaches on an H200 (measured twice on 2026-11-30,
docs/benchmarks.md "Quantization (lesson 18)"), so a regression fails it; the issue's targets
(TARGET_*) are reported beside the figure (``target_met`` in extra_info) and are not met yet:
the per-step work that is not a weight matmul (~1.8 ms per token on the 8B shape) bounds batch-1
speed-ups at about x1.5 (INT8) and x2 (INT4) even with matmuls at full bandwidth.
"""

import pytest

pytestmark = [pytest.mark.gpu, pytest.mark.benchmark_gpu]

#: Issue 16's batch-1 targets, and the floors asserted (H200 2026-11-30: INT8 x1.32 twice, INT4 x0.89 / x0.90
#: against cuBLAS bf16; INT8 x1.21, INT4 x0.89 once bf16's M = 1 projections ran on the dense GEMV).
TARGET_SPEEDUP = {"int8": 1.6, "int4": 2.5}
MIN_SPEEDUP = {"int8": 1.1, "int4": 0.8}
#: FP8 W8A8 on the throughput workload: the batch is large, so the matmuls run on the tensor cores in FP8 and
#: read half the weight bytes. Target 1.3 (issue 16). H200: x0.78 and x0.77 with the Triton kernel alone, x1.14
#: with cuBLAS's block-scaled matmul chosen per shape (2026-11-30, 4c19eeb); the floor: no loss against bf16.
TARGET_FP8_THROUGHPUT_SPEEDUP = 1.3
MIN_FP8_THROUGHPUT_SPEEDUP = 1.0
#: Half of the headline workload (`aios bench`: 256 requests of 100-1024 + 100-1024 tokens), to keep
#: two 8B-shape engines inside one benchmark call.
FP8_WORKLOAD = {"num_requests": 128, "prompt_len": (100, 1024), "output_len": (100, 512), "seed": 0}
PROMPT_LEN, OUTPUT_LEN = 128, 256


def batch1_decode(model_dir, quantization):
    from aios.bench.throughput import build_engine, run_batch1_decode

    llm = build_engine(model_dir, quantization=quantization, dtype="bfloat16", max_num_seqs=8, max_model_len=1024,
                       async_scheduling=False)  # lesson 18 needs lessons <= 15 only
    try:
        return run_batch1_decode(llm, prompt_len=PROMPT_LEN, output_len=OUTPUT_LEN)
    finally:
        llm.shutdown()


@pytest.fixture(scope="module")
def qwen3_8b_dir(tmp_path_factory):
    """config.json and tokenizer of the Qwen3-8B shape, no weights (the engines use load_format='dummy')."""
    from aios.fixtures import tokenizer
    from aios.fixtures.make import write_model_files
    from aios.fixtures.presets import TOKENIZER_SIZES, build_config

    config = build_config("8b", dtype="bfloat16")
    tok_json = tokenizer.tokenizer_json(TOKENIZER_SIZES["8b"])
    ids = tokenizer.special_token_ids(tok_json)
    config.update(bos_token_id=ids[tokenizer.ENDOFTEXT], eos_token_id=ids[tokenizer.IM_END])
    folder = tmp_path_factory.mktemp("qwen3-8b")
    write_model_files(folder, config, tok_json)
    return folder


def gemv_choices(method):
    """'M N K' -> the kernel quant_gemv's first-call tuning chose for each decode matmul shape of ``method``."""
    from aios.layers import quant_gemv

    return quant_gemv.tuned_choices(method)


@pytest.mark.parametrize("method", ["int8", "int4"])
def test_quantized_batch1_decode_speedup(method, qwen3_8b_dir, benchmark):
    """Batch-1 decode with `method` weights reaches MIN_SPEEDUP[method] x the bf16 engine (Qwen3-8B shape; target in extra_info)."""
    baseline = batch1_decode(qwen3_8b_dir, None)
    runs = []
    benchmark.pedantic(lambda: runs.append(batch1_decode(qwen3_8b_dir, method)), rounds=1, iterations=1)
    quantized = runs[-1]
    speedup = quantized.output_tokens_per_second / baseline.output_tokens_per_second
    comparison = {
        "lesson": 18,
        "method": method,
        "tokens_per_second": round(quantized.output_tokens_per_second, 1),
        "baseline": "bf16 engine, same settings",
        "baseline_tokens_per_second": round(baseline.output_tokens_per_second, 1),
        "speedup": round(speedup, 3),
        "min_speedup": MIN_SPEEDUP[method],
        "target_speedup": TARGET_SPEEDUP[method],
        "target_met": speedup >= TARGET_SPEEDUP[method],
        "device": quantized.device,
        "gemv_choices": gemv_choices(method),
    }
    benchmark.extra_info.update(comparison)
    print(comparison)
    assert speedup >= MIN_SPEEDUP[method], comparison


def test_fp8_w8a8_throughput_speedup(qwen3_8b_dir, benchmark):
    """FP8 W8A8 (block-scaled weights, per-token activations) reaches MIN_FP8_THROUGHPUT_SPEEDUP x bf16 (8B shape; target in extra_info)."""
    import torch

    from aios.bench.throughput import build_engine, run_throughput

    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("FP8 needs compute capability >= 8.9")

    def throughput(quantization):
        llm = build_engine(qwen3_8b_dir, quantization=quantization, dtype="bfloat16", max_num_seqs=128,
                           max_model_len=2048, async_scheduling=False)
        try:
            return run_throughput(llm, use_tqdm=False, **FP8_WORKLOAD)
        finally:
            llm.shutdown()

    baseline = throughput(None)
    runs = []
    benchmark.pedantic(lambda: runs.append(throughput("fp8")), rounds=1, iterations=1)
    speedup = runs[-1].output_tokens_per_second / baseline.output_tokens_per_second
    comparison = {"lesson": 18, "method": "fp8 W8A8", "workload": FP8_WORKLOAD,
                  "tokens_per_second": round(runs[-1].output_tokens_per_second, 1),
                  "baseline_tokens_per_second": round(baseline.output_tokens_per_second, 1),
                  "speedup": round(speedup, 3), "min_speedup": MIN_FP8_THROUGHPUT_SPEEDUP,
                  "target_speedup": TARGET_FP8_THROUGHPUT_SPEEDUP, "target_met": speedup >= TARGET_FP8_THROUGHPUT_SPEEDUP,
                  "device": runs[-1].device, **fp8_matmul_report()}
    benchmark.extra_info.update(comparison)
    print(comparison)
    for shape, choice in comparison["fp8_matmul_choices"].items():
        print(f"FP8 W8A8 matmul, rows N K = {shape}: {choice}  (us: {comparison['fp8_matmul_us'][shape]})")
    assert speedup >= MIN_FP8_THROUGHPUT_SPEEDUP, comparison


def fp8_matmul_report() -> dict:
    """What fp8_scaled_mm's first-call tuning chose per (row class, N, K) ('dot': the Triton kernel, 'cublas-...':
    cuBLAS's block-scaled matmul), each candidate's microseconds, and why cuBLAS was not tried where it was not."""
    import torch

    from aios.layers import fp8_scaled_mm, quant_gemv

    entries = [entry for entry in quant_gemv.TUNING_LOG if entry["key"][0] == "fp8"]
    probe = torch.zeros(64, 4096, dtype=torch.bfloat16, device="cuda")
    return {"fp8_matmul_choices": fp8_scaled_mm.fp8_choices(),
            "fp8_matmul_us": {" ".join(entry["key"][1:4]): entry["us"] for entry in entries},
            "fp8_cublas_unavailable": fp8_scaled_mm.unavailable_reason(probe, 4096, 4096)}


#: FP8 KV cache on the headline workload: decode attention, most of a decode step's time on the 0.6B shape,
#: reads K and V in one byte instead of two. Target 1.3 (issue 16); floor from the H200 (x0.96, then x0.84 with
#: the other GPU busy: the whole workload fits the bf16 cache, so the doubled capacity buys nothing there; the
#: memory-bound test below is where it pays). The cache must hold ~2x the blocks.
TARGET_FP8_KV_SPEEDUP = 1.3
MIN_FP8_KV_SPEEDUP = 0.8
MIN_FP8_KV_BLOCK_RATIO = 1.8


@pytest.fixture(scope="module")
def qwen3_0_6b_dir(tmp_path_factory):
    """config.json and tokenizer of the Qwen3-0.6B shape, no weights (the engines use load_format='dummy')."""
    from aios.fixtures import tokenizer
    from aios.fixtures.make import write_model_files
    from aios.fixtures.presets import TOKENIZER_SIZES, build_config

    config = build_config("0.6b", dtype="bfloat16")
    tok_json = tokenizer.tokenizer_json(TOKENIZER_SIZES["0.6b"])
    ids = tokenizer.special_token_ids(tok_json)
    config.update(bos_token_id=ids[tokenizer.ENDOFTEXT], eos_token_id=ids[tokenizer.IM_END])
    folder = tmp_path_factory.mktemp("qwen3-0.6b")
    write_model_files(folder, config, tok_json)
    return folder


def test_fp8_kv_cache_throughput_speedup(qwen3_0_6b_dir, benchmark):
    """kv_cache_dtype="fp8" holds ~2x the blocks and reaches MIN_FP8_KV_SPEEDUP x the bf16 KV cache (headline, 0.6B)."""
    import torch

    from aios.bench.throughput import HEADLINE_WORKLOAD, build_engine, run_throughput

    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("FP8 needs compute capability >= 8.9")

    def throughput(kv_cache_dtype):
        llm = build_engine(qwen3_0_6b_dir, kv_cache_dtype=kv_cache_dtype, dtype="bfloat16",
                           async_scheduling=False)  # lesson 18 needs lessons <= 15 only
        try:
            result = run_throughput(llm, use_tqdm=False, **HEADLINE_WORKLOAD)
            return result, llm.config.num_kvcache_blocks
        finally:
            llm.shutdown()

    baseline, baseline_blocks = throughput("auto")
    runs = []
    benchmark.pedantic(lambda: runs.append(throughput("fp8")), rounds=1, iterations=1)
    result, blocks = runs[-1]
    speedup = result.output_tokens_per_second / baseline.output_tokens_per_second
    comparison = {"lesson": 18, "method": "fp8 KV cache", "workload": HEADLINE_WORKLOAD,
                  "tokens_per_second": round(result.output_tokens_per_second, 1),
                  "baseline_tokens_per_second": round(baseline.output_tokens_per_second, 1),
                  "kv_blocks": blocks, "baseline_kv_blocks": baseline_blocks,
                  "speedup": round(speedup, 3), "min_speedup": MIN_FP8_KV_SPEEDUP,
                  "target_speedup": TARGET_FP8_KV_SPEEDUP, "target_met": speedup >= TARGET_FP8_KV_SPEEDUP,
                  "device": result.device}
    benchmark.extra_info.update(comparison)
    print(comparison)
    assert blocks >= MIN_FP8_KV_BLOCK_RATIO * baseline_blocks, comparison
    assert speedup >= MIN_FP8_KV_SPEEDUP, comparison


#: The memory-bound run: the same KV bytes for both caches, a quarter of the blocks the headline workload would
#: take at bf16 if every request ran at once (~17k), so the bf16 cache holds ~1/4 of the requests at a time and the
#: e4m3 cache, twice the blocks, ~1/2. Each decode step then reads about the same KV bytes with twice the batch.
#: Expected >= 1.3 (the issue's target): decode steps dominate a memory-bound run and make ~2x the tokens for
#: the same KV read; the prefills (the same work for both) and the e4m3 conversion in attention (x0.96 when
#: memory is not short) take part of it. H200, 2026-11-30 (4c19eeb): x1.17, decode batch 91 against 58 on
#: average, 151 against 199 preemptions; the floor is 1.1 (run-to-run noise was ~5%).
KV_BUDGET_FRACTION = 0.25
MIN_FP8_KV_MEMORY_BOUND_SPEEDUP = 1.1


def workload_kv_blocks(workload: dict, vocab_size: int, block_size: int) -> int:
    """KV blocks the workload's requests would hold if all ran at once at full length (prompt + output)."""
    from aios.bench.ladder import make_workload

    requests = make_workload(workload["num_requests"], tuple(workload["prompt_len"]), tuple(workload["output_len"]),
                             vocab_size, workload["seed"])
    return sum(-(-(len(p) + n) // block_size) for p, n in zip(requests.prompts, requests.output_lens))


def timed_run_with_batch_sizes(llm, workload: dict) -> dict:
    """run_throughput's timed run, recording each decode step's batch size and the preemptions (warm-up excluded)."""
    from aios.bench.ladder import make_workload
    from aios.bench.throughput import timed_generate, warm_up
    from aios.engine.model_runner import kv_block_bytes, kv_cache_dtype
    from aios.sampling_params import SamplingParams

    requests = make_workload(workload["num_requests"], tuple(workload["prompt_len"]), tuple(workload["output_len"]),
                             llm.config.hf_config.vocab_size, workload["seed"])
    params = [SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True) for n in requests.output_lens]
    warm_up(llm)
    sizes, run = [], llm.model_runner.run

    def recording_run(seqs, is_prefill):
        if not is_prefill:
            sizes.append(len(seqs))
        return run(seqs, is_prefill)

    llm.model_runner.run = recording_run
    preempted_before = llm.scheduler.num_preemptions
    try:
        outputs, seconds = timed_generate(llm, [list(p) for p in requests.prompts], params)
    finally:
        llm.model_runner.run = run
    config = llm.config
    tokens = sum(len(out["token_ids"]) for out in outputs)
    return {"tokens_per_second": round(tokens / seconds, 1), "output_tokens": tokens, "seconds": round(seconds, 2),
            "kv_blocks": config.num_kvcache_blocks,
            "kv_bytes": config.num_kvcache_blocks * kv_block_bytes(config.hf_config, config.kvcache_block_size,
                                                                    kv_cache_dtype(config)),
            "decode_steps": len(sizes), "max_decode_batch": max(sizes, default=0),
            "mean_decode_batch": round(sum(sizes) / max(1, len(sizes)), 1),
            "preemptions": llm.scheduler.num_preemptions - preempted_before}


def test_fp8_kv_cache_memory_bound_speedup(qwen3_0_6b_dir, benchmark):
    """With the same KV bytes (bf16: 1/4 of what the headline workload needs; e4m3: twice the blocks) the FP8 cache
    runs ~2x the decode batch and reaches MIN_FP8_KV_MEMORY_BOUND_SPEEDUP x bf16 (0.6B shape; target in extra_info)."""
    import torch

    from aios.bench.throughput import HEADLINE_WORKLOAD, build_engine

    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("FP8 needs compute capability >= 8.9")

    def run(kv_cache_dtype, blocks):
        llm = build_engine(qwen3_0_6b_dir, kv_cache_dtype=kv_cache_dtype, dtype="bfloat16", num_kvcache_blocks=blocks,
                           async_scheduling=False)  # lesson 18 needs lessons <= 15 only
        try:
            return timed_run_with_batch_sizes(llm, HEADLINE_WORKLOAD)
        finally:
            llm.shutdown()

    from aios.fixtures.presets import build_config

    needed = workload_kv_blocks(HEADLINE_WORKLOAD, build_config("0.6b")["vocab_size"], 16)
    bf16_blocks = int(needed * KV_BUDGET_FRACTION)
    baseline = run("auto", bf16_blocks)
    runs = []
    benchmark.pedantic(lambda: runs.append(run("fp8", 2 * bf16_blocks)), rounds=1, iterations=1)
    fp8 = runs[-1]
    speedup = fp8["tokens_per_second"] / baseline["tokens_per_second"]
    comparison = {"lesson": 18, "method": "fp8 KV cache, memory-bound", "workload": HEADLINE_WORKLOAD,
                  "workload_kv_blocks_at_once": needed, "kv_budget_fraction": KV_BUDGET_FRACTION,
                  "fp8": fp8, "bf16": baseline,
                  "tokens_per_second": fp8["tokens_per_second"], "baseline_tokens_per_second": baseline["tokens_per_second"],
                  "speedup": round(speedup, 3), "min_speedup": MIN_FP8_KV_MEMORY_BOUND_SPEEDUP,
                  "target_speedup": TARGET_FP8_KV_SPEEDUP, "target_met": speedup >= TARGET_FP8_KV_SPEEDUP,
                  "device": torch.cuda.get_device_name()}
    benchmark.extra_info.update(comparison)
    print(comparison)
    print(f"FP8 KV cache, memory-bound (same {baseline['kv_bytes'] / 2**30:.2f} GiB of KV): "
          f"{fp8['tokens_per_second']:,.0f} vs {baseline['tokens_per_second']:,.0f} output tok/s = x{speedup:.2f} "
          f"(target x{TARGET_FP8_KV_SPEEDUP}); decode batch mean {fp8['mean_decode_batch']} vs "
          f"{baseline['mean_decode_batch']}, max {fp8['max_decode_batch']} vs {baseline['max_decode_batch']}; "
          f"preemptions {fp8['preemptions']} vs {baseline['preemptions']}")
    assert fp8["kv_bytes"] <= baseline["kv_bytes"] * 1.001, comparison
    assert fp8["mean_decode_batch"] > baseline["mean_decode_batch"], comparison
    assert speedup >= MIN_FP8_KV_MEMORY_BOUND_SPEEDUP, comparison
