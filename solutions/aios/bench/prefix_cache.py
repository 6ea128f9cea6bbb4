"""Lesson 13's workload: many requests that share one long system prompt, with prefix caching off and on.

Every request is the same system prompt followed by a short user turn; each generates a
few tokens (greedy, ignore_eos). The engine counts the tokens it prefills (the positive
token counts ``LLMEngine.step`` returns), so the saving is a count, not a timing; the
wall-clock time of the run and of its prefill steps is recorded alongside.

    python -m aios.bench.prefix_cache --preset tiny --device cpu --scale 0.05   # a CPU smoke run
    python -m aios.bench.prefix_cache                                            # 0.6b shape, GPU
"""

from __future__ import annotations

import argparse
import json
import random
import time
from dataclasses import asdict, dataclass

from aios.bench.ladder import synchronize

#: The GPU benchmark's workload: 128 requests, a 2048-token system prompt, 8-24 user tokens, 16 output tokens.
SHARED_PROMPT_WORKLOAD = {"num_requests": 128, "system_len": 2048, "user_len": (8, 24), "output_len": 16, "seed": 0}


@dataclass
class PrefixRun:
    """One pass of the workload through one engine configuration."""

    prefix_caching: bool
    requests: int
    prompt_tokens: int
    prefill_tokens: int
    output_tokens: int
    seconds: float
    prefill_seconds: float


def make_shared_prompt_workload(num_requests: int, system_len: int, user_len: tuple[int, int], vocab_size: int,
                                seed: int = 0) -> list[list[int]]:
    """Prompts as token ids: one random system prompt, then a random user turn of user_len tokens (inclusive range)."""
    rng = random.Random(seed)
    system = [rng.randrange(vocab_size) for _ in range(system_len)]
    return [system + [rng.randrange(vocab_size) for _ in range(rng.randint(*user_len))] for _ in range(num_requests)]


def run_shared_prompt(llm, prompts: list[list[int]], output_len: int) -> PrefixRun:
    """Feed every prompt to ``llm`` and step until done; count prefilled tokens and time the run."""
    from aios.sampling_params import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=output_len, ignore_eos=True)
    device = llm.config.device
    seqs = [llm.add_request(prompt, params) for prompt in prompts]
    prefill_tokens, prefill_seconds = 0, 0.0
    synchronize(device)
    start = time.perf_counter()
    while not llm.is_finished():
        step_start = time.perf_counter()
        _, num_tokens = llm.step()  # returns host token ids: the step's GPU work is done
        if num_tokens > 0:
            prefill_tokens += num_tokens
            prefill_seconds += time.perf_counter() - step_start
    synchronize(device)
    seconds = time.perf_counter() - start
    return PrefixRun(llm.config.enable_prefix_caching, len(prompts), sum(map(len, prompts)), prefill_tokens,
                     sum(seq.num_completion_tokens for seq in seqs), seconds, prefill_seconds)


def warm_up(llm, vocab_size: int) -> None:
    """Compile and size everything once (two requests sharing a prefix), on tokens unrelated to the workload."""
    prompts = make_shared_prompt_workload(2, 64, (4, 4), vocab_size, seed=12345)
    run_shared_prompt(llm, prompts, 4)


def compare_prefix_caching(model_dir, workload: dict | None = None, **options) -> dict:
    """Run the workload with prefix caching off, then on (fresh engines); return both runs and the ratios."""
    from aios.bench.throughput import build_engine
    from aios.config import features_up_to

    spec = {**SHARED_PROMPT_WORKLOAD, **(workload or {})}
    runs = {}
    for caching in (False, True):
        llm = build_engine(model_dir, **{**features_up_to(13), "enable_prefix_caching": caching,
                                         "max_num_seqs": spec["num_requests"], **options})
        vocab = llm.config.hf_config.vocab_size
        prompts = make_shared_prompt_workload(spec["num_requests"], spec["system_len"], tuple(spec["user_len"]),
                                              vocab, spec["seed"])
        warm_up(llm, vocab)
        runs[caching] = run_shared_prompt(llm, prompts, spec["output_len"])
        llm.shutdown()
    off, on = runs[False], runs[True]
    return {
        "workload": spec,
        "off": asdict(off),
        "on": asdict(on),
        "prefill_reduction": round(off.prefill_tokens / on.prefill_tokens, 2),
        "prefill_time_speedup": round(off.prefill_seconds / on.prefill_seconds, 2),
        "total_time_speedup": round(off.seconds / on.seconds, 2),
    }


def summary(result: dict) -> str:
    off, on = result["off"], result["on"]
    return (
        f"{off['requests']} requests sharing a {result['workload']['system_len']}-token system prompt: "
        f"prefilled {off['prefill_tokens']:,} tokens without prefix caching, {on['prefill_tokens']:,} with it "
        f"(x{result['prefill_reduction']} fewer); prefill time {off['prefill_seconds']:.3f} s -> "
        f"{on['prefill_seconds']:.3f} s (x{result['prefill_time_speedup']}); whole run {off['seconds']:.3f} s -> "
        f"{on['seconds']:.3f} s (x{result['total_time_speedup']})"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m aios.bench.prefix_cache", description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default=None, help="fixture preset (default: $AIOS_BENCH_PRESET or 0.6b)")
    parser.add_argument("--model", default=None, help="a checkpoint folder instead of a preset")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--scale", type=float, default=1.0, help="shrink the workload (e.g. 0.05 on a CPU)")
    parser.add_argument("--json", default=None, help="also write the result as JSON to this file")
    args = parser.parse_args(argv)
    from pathlib import Path

    from aios.bench.ladder import benchmark_model_dir

    model_dir = Path(args.model) if args.model else benchmark_model_dir(args.preset)
    spec = dict(SHARED_PROMPT_WORKLOAD)
    if args.scale != 1.0:
        spec["num_requests"] = max(2, round(spec["num_requests"] * args.scale))
        spec["system_len"] = max(16, round(spec["system_len"] * args.scale))
    result = compare_prefix_caching(model_dir, spec, device=args.device, max_model_len=spec["system_len"] + 64)
    print(summary(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
