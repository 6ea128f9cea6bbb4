"""The headline benchmark: offline throughput of the whole engine, and batch-1 decode speed.

Workload (the syllabus's): 256 requests, prompt and output lengths uniform in 100-1024,
random token ids, every request generates exactly its output length (ignore_eos), seed 0,
greedy decoding. The model is the Qwen3-0.6B shape with random weights
(``load_format="dummy"``): throughput does not depend on what the weights are.
The engine runs with its defaults (the fastest settings the device supports).

    python -m aios bench                  # output tokens, seconds, output tok/s
    python -m aios bench --batch1         # one request: decode tok/s at batch size 1
    python -m aios bench --profile        # also: where a decode step's GPU time goes

``engine_speed`` measures one configuration on a smaller workload; the GPU benchmarks of
lessons 9 and 11 use it to compare a lesson's engine with the one before it.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import torch

from aios.bench.ladder import make_workload, synchronize

HEADLINE_WORKLOAD = {"num_requests": 256, "prompt_len": (100, 1024), "output_len": (100, 1024), "seed": 0}
BATCH1_WORKLOAD = {"num_requests": 1, "prompt_len": (128, 128), "output_len": (1024, 1024), "seed": 0}


@dataclass
class BenchResult:
    """One timed run: what was generated, how long it took, on what."""

    mode: str
    requests: int
    prompt_tokens: int
    output_tokens: int
    seconds: float
    device: str
    engine: dict = field(default_factory=dict)

    @property
    def output_tokens_per_second(self) -> float:
        return self.output_tokens / self.seconds

    def as_dict(self) -> dict:
        return {**asdict(self), "output_tokens_per_second": round(self.output_tokens_per_second, 1)}

    def summary(self) -> str:
        return (
            f"{self.mode}: {self.requests} requests, {self.prompt_tokens:,} prompt tokens, "
            f"{self.output_tokens:,} output tokens in {self.seconds:.2f} s = "
            f"{self.output_tokens_per_second:,.0f} output tok/s  [{self.device}]"
        )


def build_engine(model_dir, **options):
    """An LLM with random weights and the engine's defaults, except ``options``."""
    from aios.llm import LLM

    return LLM(str(model_dir), **{"load_format": "dummy", **options})


def engine_summary(llm) -> dict:
    """The settings that decide the figure (for the record)."""
    config = llm.config
    return {
        "dtype": str(config.dtype).removeprefix("torch."),
        "attention_backend": config.attention_backend,
        "enforce_eager": config.enforce_eager,
        "compile_elementwise": config.compile_elementwise and not config.enforce_eager,
        "fused_layers": config.fused_layers,
        "tensor_parallel_size": config.tensor_parallel_size,
        "pipeline_parallel_size": getattr(config, "pipeline_parallel_size", 1),
        "max_num_seqs": config.max_num_seqs,
        "max_num_batched_tokens": config.max_num_batched_tokens,
        "num_kvcache_blocks": config.num_kvcache_blocks,
        "kvcache_block_size": config.kvcache_block_size,
        "async_scheduling": getattr(config, "async_scheduling", False),
        "kv_cache_dtype": getattr(config, "kv_cache_dtype", "auto"),
        "dense_gemv": dense_gemv_summary(),
    }


def dense_gemv_summary() -> dict:
    """Whether the dense linears' decode GEMV was on (``dense_gemv.enabled``) and, once shapes were tuned, what
    each chose ('M N K' -> 'F.linear' or a GEMV setting). Never imported (no decode-sized linear ran on a
    GPU): off, nothing chosen."""
    import sys

    module = sys.modules.get("aios.layers.dense_gemv")  # imported on the first decode-sized linear on a GPU
    if module is None:
        return {"enabled": False, "choices": {}}
    return {"enabled": module.enabled(), "choices": module.dense_choices()}


def device_name(llm) -> str:
    device = torch.device(llm.config.device)
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def warm_up(llm) -> None:
    """Compile everything before the clock starts: Triton specialises kernels on their settings
    (one decode split or several) and torch.compile on shapes, so warm up on one short request
    and on a prefill batch as large as the engine forms (``max_num_batched_tokens``)."""
    from aios.sampling_params import SamplingParams

    config = llm.config
    params = SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True)
    llm.generate([[1, 2, 3, 4]], params, use_tqdm=False)
    count = min(config.max_num_seqs, 8)
    length = max(1, min(config.max_model_len - 8, config.max_num_batched_tokens // count))
    vocab = min(config.hf_config.vocab_size, 2048)
    prompts = [[(7 * i + j) % vocab for j in range(length)] for i in range(count)]
    llm.generate(prompts, params, use_tqdm=False)


def timed_generate(llm, prompts, params, use_tqdm: bool = False) -> tuple[list, float]:
    """``llm.generate(prompts, params)`` between two device synchronisations: (outputs, seconds)."""
    synchronize(llm.config.device)
    start = time.perf_counter()
    outputs = llm.generate(prompts, params, use_tqdm=use_tqdm)
    synchronize(llm.config.device)
    return outputs, time.perf_counter() - start


def run_throughput(llm, num_requests: int, prompt_len, output_len, seed: int = 0, use_tqdm: bool = True,
                   mode: str = "throughput") -> BenchResult:
    """Time ``llm.generate`` on a random workload; every request produces exactly its output length."""
    from aios.sampling_params import SamplingParams

    workload = make_workload(num_requests, tuple(prompt_len), tuple(output_len), llm.config.hf_config.vocab_size, seed)
    params = [SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True) for n in workload.output_lens]
    prompts = [list(p) for p in workload.prompts]
    warm_up(llm)
    outputs, seconds = timed_generate(llm, prompts, params, use_tqdm)
    generated = sum(len(out["token_ids"]) for out in outputs)
    if generated != workload.num_output_tokens:
        print(f"note: {workload.num_output_tokens - generated} tokens fewer than asked for: some requests "
              f"reached max_model_len ({llm.config.max_model_len})")
    return BenchResult(mode, len(prompts), sum(map(len, prompts)), generated, seconds, device_name(llm),
                       engine_summary(llm))


def run_batch1_decode(llm, prompt_len: int = 128, output_len: int = 1024, seed: int = 0) -> BenchResult:
    """Decode speed of a single sequence: the prefill step is left out of the timing."""
    from aios.sampling_params import SamplingParams

    workload = make_workload(1, (prompt_len, prompt_len), (output_len, output_len),
                             llm.config.hf_config.vocab_size, seed)
    warm_up(llm)
    seq = llm.add_request(list(workload.prompts[0]),
                          SamplingParams(temperature=0.0, max_tokens=output_len, ignore_eos=True))
    llm.step()  # prefill: the first output token
    synchronize(llm.config.device)
    start = time.perf_counter()
    steps = 0
    while not llm.is_finished():
        llm.step()
        steps += 1
    synchronize(llm.config.device)
    seconds = time.perf_counter() - start
    tokens = seq.num_completion_tokens - 1  # a speculative step (lesson 19) gives several
    return BenchResult("batch-1 decode", 1, prompt_len, tokens, seconds, device_name(llm), engine_summary(llm))


def profile_decode(llm, batch_size: int = 256, context_len: int = 600, steps: int = 20, row_limit: int = 25) -> str:
    """Where decode steps spend their time: torch.profiler's kernel table over ``steps`` decode steps.

    Also prints wall time per step against GPU-busy time per step: the difference is host
    work (scheduling, metadata, Python) that the GPU waits for.
    """
    from torch.profiler import ProfilerActivity, profile

    from aios.sampling_params import SamplingParams

    warm_up(llm)
    vocab = min(llm.config.hf_config.vocab_size, 2048)
    gen = torch.Generator().manual_seed(0)
    for _ in range(batch_size):
        prompt = torch.randint(0, vocab, (context_len,), generator=gen).tolist()
        llm.add_request(prompt, SamplingParams(temperature=0.0, max_tokens=steps * 3, ignore_eos=True))
    while llm.scheduler.waiting:  # prefill everything first
        llm.step()
    for _ in range(3):
        llm.step()
    synchronize(llm.config.device)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        start = time.perf_counter()
        for _ in range(steps):
            llm.step()
        synchronize(llm.config.device)
        wall = time.perf_counter() - start
    while not llm.is_finished():
        llm.step()
    events = prof.key_averages()
    gpu_us = sum(e.self_device_time_total for e in events if e.device_type == torch.autograd.DeviceType.CUDA)
    table = events.table(sort_by="self_cuda_time_total", row_limit=row_limit)
    head = (f"decode profile: batch {batch_size}, context ~{context_len}, {steps} steps: "
            f"wall {wall / steps * 1e3:.2f} ms/step, GPU kernels {gpu_us / steps / 1e3:.2f} ms/step\n")
    return head + table


def engine_speed(model_dir, lesson: int, workload: dict, max_num_seqs: int, **overrides) -> BenchResult:
    """Output tok/s of the engine of lesson ``lesson`` (``features_up_to``) on a small workload."""
    from aios.config import features_up_to

    block_size = overrides.get("kvcache_block_size", 16)
    longest = workload["prompt_len"][1] + workload["output_len"][1]
    blocks = max_num_seqs * -(-longest // block_size)  # enough for every sequence at once: no preemption
    llm = build_engine(model_dir, **{**features_up_to(lesson), "max_num_seqs": max_num_seqs,
                                     "num_kvcache_blocks": blocks, **overrides})
    try:
        return run_throughput(llm, use_tqdm=False, mode=f"lesson {lesson}", **workload)
    finally:
        llm.shutdown()


# ---------------------------------------------------------------- lesson benchmarks (GPU)

#: What the GPU benchmarks of lessons 9 and 11 compare: the lesson's engine against the stage
#: before it, on a workload where the lesson's change matters, measured in the same process.
#: min_speedup: what the test asserts (cautious: under the speed-up measured on an H100,
#: see docs/benchmarks.md); syllabus: the syllabus's figure.
LESSON_COMPARISONS = {
    # Triton kernels vs the per-sequence PyTorch loop, eager both (batching makes the loop hurt).
    9: {"baseline": 8, "max_num_seqs": 16, "min_speedup": 1.5, "syllabus": 1.5,
        "workload": {"num_requests": 16, "prompt_len": (64, 256), "output_len": (32, 64)}},
    # CUDA graphs vs eager decode, small batches: launch overhead dominates there.
    11: {"baseline": 10, "max_num_seqs": 16, "min_speedup": 3.0, "syllabus": 1.2,
         "workload": {"num_requests": 16, "prompt_len": (32, 128), "output_len": (64, 128)}},
}


def compare_with_previous(lesson: int, model_dir, benchmark=None) -> dict:
    """Output tok/s of lesson ``lesson``'s engine and of its baseline, and the ratio.

    The baseline runs first and is freed before the lesson's engine is built. With a
    pytest-benchmark fixture, the lesson's run is timed through it and the comparison
    is stored in ``benchmark.extra_info``.
    """
    spec = LESSON_COMPARISONS[lesson]
    baseline = engine_speed(model_dir, spec["baseline"], spec["workload"], spec["max_num_seqs"])
    if benchmark is None:
        current = engine_speed(model_dir, lesson, spec["workload"], spec["max_num_seqs"])
    else:
        results = []
        benchmark.pedantic(lambda: results.append(engine_speed(model_dir, lesson, spec["workload"],
                                                               spec["max_num_seqs"])), rounds=1, iterations=1)
        current = results[-1]
    comparison = {
        "lesson": lesson,
        "tokens_per_second": round(current.output_tokens_per_second, 1),
        "baseline_lesson": spec["baseline"],
        "baseline_tokens_per_second": round(baseline.output_tokens_per_second, 1),
        "speedup": round(current.output_tokens_per_second / baseline.output_tokens_per_second, 3),
        "min_speedup": spec["min_speedup"],
        "syllabus_speedup": spec["syllabus"],
        "device": current.device,
    }
    if benchmark is not None:
        benchmark.extra_info.update(comparison)
    return comparison


# ---------------------------------------------------------------- python -m aios bench


def run_command(args) -> int:
    """``python -m aios bench``: build the engine with its defaults, run the workload, print the figure."""
    import json
    from pathlib import Path

    from aios.bench.ladder import benchmark_model_dir

    model_dir = Path(args.model) if args.model else benchmark_model_dir(args.preset)
    options = {"attention_backend": args.attention_backend}
    if getattr(args, "tensor_parallel_size", 1) != 1:
        options["tensor_parallel_size"] = args.tensor_parallel_size
    if getattr(args, "pipeline_parallel_size", 1) != 1:  # lesson 21
        options["pipeline_parallel_size"] = args.pipeline_parallel_size
    if args.enforce_eager:
        options["enforce_eager"] = True
    if args.no_compile:
        options["compile_elementwise"] = False
    if getattr(args, "async_scheduling", None) is not None:  # lesson 17; None: the engine's default
        options["async_scheduling"] = args.async_scheduling
    if getattr(args, "speculative_config", None):  # lesson 19
        options["speculative_config"] = args.speculative_config
    if getattr(args, "kv_cache_dtype", "auto") != "auto":  # lesson 18
        options["kv_cache_dtype"] = args.kv_cache_dtype
    start = time.perf_counter()
    llm = build_engine(model_dir, **options)
    print(f"engine ready in {time.perf_counter() - start:.1f} s (weights, KV cache, compilation, graph capture)")
    print(f"engine: {engine_summary(llm)}", flush=True)
    if args.batch1:
        result = run_batch1_decode(llm, seed=args.seed)
    else:
        workload = {**HEADLINE_WORKLOAD, "num_requests": args.num_requests, "seed": args.seed}
        result = run_throughput(llm, use_tqdm=args.progress, **workload)
    print(result.summary(), flush=True)
    record = result.as_dict()
    spec = llm.speculative_stats() if hasattr(llm, "speculative_stats") else None
    if spec is not None:  # lesson 19
        record["speculative"] = spec
        print(f"speculative decoding: {spec['num_draft_tokens']} proposed, {spec['num_accepted_tokens']} accepted "
              f"(acceptance {spec['acceptance_rate']:.2f}, mean accepted length {spec['mean_accepted_length']:.2f})")
    if args.profile:
        batch = 1 if args.batch1 else min(256, llm.config.max_num_seqs)
        record["profile"] = profile_decode(llm, batch_size=batch)
        print(record["profile"], flush=True)
    if getattr(args, "compare_hf", None):  # issue 15: the ratio to transformers' own continuous batching
        from aios.bench.hf_compare import compare_with_transformers, summary

        record["compare_hf"] = compare_with_transformers(llm, model_dir, args.compare_hf, args.seed)
        print(summary(record["compare_hf"]), flush=True)
    if args.json_path:
        args.json_path.parent.mkdir(parents=True, exist_ok=True)
        args.json_path.write_text(json.dumps(record, indent=2))
    llm.shutdown()
    return 0
