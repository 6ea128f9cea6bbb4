"""Lesson 12 GPU benchmark: what sampling costs — the Sampler alone, and the engine sampled vs greedy.

Nothing here asserts a time: the figures go to the benchmark JSON. The one assertion is loose
and about the engine: sampling with top-k/top-p keeps at least 70% of greedy throughput.
"""

import time

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.benchmark_gpu]

ROWS, VOCAB = 256, 151_936  # a full decode batch of Qwen3's vocabulary
MIN_SAMPLED_OVER_GREEDY = 0.7
ENGINE_WORKLOAD = {"num_requests": 64, "prompt_len": (64, 256), "output_len": (128, 128)}


def sampler_case(name: str):
    """Sampler arguments for a [ROWS, VOCAB] bfloat16 batch: plain, top-k/top-p, or seeded rows."""
    temperatures = torch.full((ROWS,), 0.8, device="cuda")
    kwargs = {"temperatures": temperatures}
    if name in ("top_k_top_p", "everything"):
        kwargs["top_ks"] = torch.full((ROWS,), 50, device="cuda")
        kwargs["top_ps"] = torch.full((ROWS,), 0.95, device="cuda")
    if name in ("seeded", "everything"):
        kwargs["seeds"] = list(range(ROWS))
        kwargs["steps"] = [7] * ROWS
    return kwargs


@pytest.mark.parametrize("case", ["temperature_only", "top_k_top_p", "seeded", "everything"])
def test_sampler_step_cost(benchmark, case):
    """Time one Sampler call on a decode batch of 256 rows x 151936 tokens (bfloat16 logits)."""
    from aios.layers.sampler import Sampler

    torch.manual_seed(0)
    logits = torch.randn(ROWS, VOCAB, device="cuda", dtype=torch.bfloat16)
    kwargs = sampler_case(case)
    sampler = Sampler()

    def one_call():
        tokens = sampler(logits, **kwargs)
        torch.cuda.synchronize()
        return tokens

    one_call()
    tokens = benchmark.pedantic(one_call, rounds=20, iterations=1, warmup_rounds=2)
    benchmark.extra_info.update({"lesson": 12, "case": case, "rows": ROWS, "vocab": VOCAB})
    assert tokens.shape == (ROWS,)


def test_engine_sampled_throughput_close_to_greedy(benchmark):
    """Output tok/s of the lesson-12 engine sampling (T 0.8, top-k 50, top-p 0.95) is >= 70% of greedy."""
    from aios.bench.ladder import benchmark_model_dir, make_workload
    from aios.bench.throughput import build_engine
    from aios.config import features_up_to
    from aios.sampling_params import SamplingParams

    llm = build_engine(benchmark_model_dir(), **features_up_to(12), max_num_seqs=64)
    workload = make_workload(**ENGINE_WORKLOAD, vocab_size=llm.config.hf_config.vocab_size)
    prompts = [list(p) for p in workload.prompts]

    def timed(params: SamplingParams) -> float:
        torch.cuda.synchronize()
        start = time.perf_counter()
        outputs = llm.generate(prompts, params, use_tqdm=False)
        torch.cuda.synchronize()
        return sum(len(o["token_ids"]) for o in outputs) / (time.perf_counter() - start)

    try:
        greedy_params = SamplingParams(temperature=0.0, max_tokens=128, ignore_eos=True)
        timed(greedy_params)  # warm-up on the whole workload: every prefill shape compiled before timing
        greedy = timed(greedy_params)
        sampled_params = SamplingParams(temperature=0.8, top_k=50, top_p=0.95, max_tokens=128, ignore_eos=True)
        llm.generate(prompts[:4], sampled_params, use_tqdm=False)  # the sampler's first call, untimed
        results = []
        benchmark.pedantic(lambda: results.append(timed(sampled_params)), rounds=1, iterations=1)
    finally:
        llm.shutdown()  # the next benchmark's engine sizes its KV cache from the free GPU memory
    ratio = results[-1] / greedy
    info = {"lesson": 12, "greedy_tokens_per_second": round(greedy, 1),
            "sampled_tokens_per_second": round(results[-1], 1), "sampled_over_greedy": round(ratio, 3)}
    print(info)
    benchmark.extra_info.update(info)
    assert ratio >= MIN_SAMPLED_OVER_GREEDY, info
