"""Where a chunked-prefill step's time goes (lesson 16's open measurement): torch.profiler per step.

48 short requests decode while one long prompt (8,192 tokens) is prefilled in chunks of the
budget (1,024 by default). A first long prompt runs unprofiled (it compiles whatever the chunk
shapes need); the second one's steps are profiled. For comparison the same long prompt is also
prefilled in one step by a prefill-first engine. Prints, per engine, the wall time of each step
and the top kernels, and writes the figures as JSON.

    PYTHONPATH=solutions python3 scripts/gpu/mixed_step_profile.py --model /tmp/aios_q06 --json $OUT/mixed_step.json
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def long_prompt_steps(llm, prompt: list[int], sampling) -> list[float]:
    """Add ``prompt`` and step until it has its first token; the wall milliseconds of each step."""
    from aios.bench.ladder import synchronize

    seq = llm.add_request(prompt, sampling)
    times = []
    while seq.num_completion_tokens == 0:
        start = time.perf_counter()
        llm.step()
        synchronize(llm.config.device)
        times.append((time.perf_counter() - start) * 1e3)
    return times


def profile_engine(model: str, chunked: bool, budget: int, long_len: int, rows: int, **options) -> dict:
    """One engine: warm up, 48 decodes running, then a profiled long prompt beside them."""
    from torch.profiler import ProfilerActivity, profile

    from aios.bench.throughput import warm_up
    from aios.config import features_up_to
    from aios.llm import LLM
    from aios.sampling_params import SamplingParams

    llm = LLM(model, **{**features_up_to(16), "load_format": "dummy", "max_model_len": long_len + 512,
                        "max_num_seqs": min(64, budget), "enable_prefix_caching": False, "enable_chunked_prefill": chunked,
                        "max_num_batched_tokens": budget if chunked else max(long_len + 512, 16384), **options})
    try:
        if str(llm.config.device).startswith("cuda"):
            warm_up(llm)
        gen = torch.Generator().manual_seed(0)
        vocab = min(llm.config.hf_config.vocab_size, 32000)
        tokens = lambda n: torch.randint(0, vocab, (n,), generator=gen).tolist()  # noqa: E731
        decode = SamplingParams(temperature=0.0, max_tokens=400, ignore_eos=True)
        for _ in range(min(48, budget - 1)):
            llm.add_request(tokens(128), decode)
        while llm.scheduler.waiting:
            llm.step()
        one_token = SamplingParams(temperature=0.0, max_tokens=1, ignore_eos=True)
        warm = long_prompt_steps(llm, tokens(long_len), one_token)
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
        with profile(activities=activities) as prof:
            start = time.perf_counter()
            steps = long_prompt_steps(llm, tokens(long_len), one_token)
            wall = time.perf_counter() - start
        events = prof.key_averages()
        gpu_us = sum(e.self_device_time_total for e in events if e.device_type == torch.autograd.DeviceType.CUDA)
        table = events.table(sort_by="self_cuda_time_total", row_limit=rows)
        return {"chunked": chunked, "budget": budget if chunked else None, "warm_up_steps_ms": [round(t, 2) for t in warm],
                "steps_ms": [round(t, 2) for t in steps], "wall_ms": round(wall * 1e3, 2),
                "gpu_kernel_ms": round(gpu_us / 1e3, 2), "table": table}
    finally:
        llm.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--budget", type=int, default=1024)
    parser.add_argument("--long", type=int, default=8192)
    parser.add_argument("--rows", type=int, default=18)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--json")
    args = parser.parse_args()
    options = {"device": args.device} if args.device == "cuda" else {"device": args.device, "attention_backend": "torch"}
    results = []
    for chunked in (True, False):
        result = profile_engine(args.model, chunked, args.budget, args.long, args.rows, **options)
        name = f"chunked (budget {args.budget})" if chunked else "prefill-first"
        print(f"=== {name}: the long prompt took {len(result['steps_ms'])} steps, {result['wall_ms']} ms wall, "
              f"{result['gpu_kernel_ms']} ms of GPU kernels (with the profiler)\n"
              f"steps (ms): {result['steps_ms']}\nwarm-up run's steps (ms): {result['warm_up_steps_ms']}")
        print(result["table"], flush=True)
        results.append(result)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
