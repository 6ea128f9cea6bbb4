"""Lesson 16's workload: short requests decoding while long prompts arrive, prefill-first against chunked prefill.

Short requests stream tokens; every few steps a long prompt (8k tokens on the GPU) arrives,
with a few more short requests right behind it. Prefill-first (lesson 8) runs each long
prompt as one big prefill step during which no running request gets a token; chunked
prefill (lesson 16) spreads it over steps of at most ``max_num_batched_tokens`` tokens,
each of which also decodes every running request.

The engine is driven step by step (an offline stand-in for ``aios bench-serve``): requests
join between steps, and each token is stamped with the wall-clock time its step ended
(``LLMEngine.step`` returns host token ids, so the step's GPU work is done). Reported for the
short requests: time to first token (TTFT, from the step they arrived before) and the
inter-token latency (ITL, the gaps between one request's consecutive tokens), p50/p90/p99, and
the TTFT of the short requests that arrived behind a long prompt on their own.

    python -m aios.bench.chunked_prefill --preset tiny --device cpu --scale small   # a CPU smoke run
    python -m aios.bench.chunked_prefill --out DIR                                    # 0.6b shape, GPU
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from aios.bench.ladder import benchmark_model_dir, synchronize

#: The GPU workload: 48 short requests decoding, 6 long prompts of 8192 tokens arriving every
#: 24 steps (from step 8), each followed by 4 more short requests; budget 1024 when chunked.
LATENCY_WORKLOAD = {
    "num_short": 48, "short_prompt": (64, 256), "short_output": (96, 160),
    "num_long": 6, "long_prompt": 8192, "long_output": 8, "first_long_step": 8, "long_every": 24,
    "short_behind_long": 4, "seed": 0,
}
#: The chunked engine's token budget on the GPU workload.
CHUNK_BUDGET = 1024
#: Named ``--scale`` values; ``small`` fits the tiny model on a CPU.
SCALES = {"full": {}, "small": {"num_short": 6, "short_prompt": (4, 16), "short_output": (12, 20),
                                "num_long": 2, "long_prompt": 96, "first_long_step": 2, "long_every": 6,
                                "short_behind_long": 1}}


@dataclass
class Arrival:
    """One request and the engine step before which it joins."""

    step: int
    prompt: list[int]
    max_tokens: int
    long: bool


@dataclass
class LatencyRun:
    """One pass of the workload through one engine configuration."""

    chunked: bool
    max_num_batched_tokens: int
    steps: int
    seconds: float
    output_tokens: int
    short_ttft_ms: dict = field(default_factory=dict)
    short_itl_ms: dict = field(default_factory=dict)
    long_ttft_ms: dict = field(default_factory=dict)
    late_short_ttft_ms: dict = field(default_factory=dict)
    max_step_ms: float = 0.0


def make_arrivals(vocab_size: int, num_short: int, short_prompt: tuple[int, int], short_output: tuple[int, int],
                  num_long: int, long_prompt: int, long_output: int, first_long_step: int, long_every: int,
                  short_behind_long: int, seed: int = 0) -> list[Arrival]:
    """Short requests before step 0, then each long prompt at its step with ``short_behind_long`` short ones behind it."""
    rng = random.Random(seed)

    def short(step: int) -> Arrival:
        prompt = [rng.randrange(vocab_size) for _ in range(rng.randint(*short_prompt))]
        return Arrival(step, prompt, rng.randint(*short_output), long=False)

    arrivals = [short(0) for _ in range(num_short)]
    for i in range(num_long):
        step = first_long_step + i * long_every
        arrivals.append(Arrival(step, [rng.randrange(vocab_size) for _ in range(long_prompt)], long_output, long=True))
        arrivals += [short(step) for _ in range(short_behind_long)]
    return arrivals


def percentiles(values: list[float]) -> dict:
    """p50, p90, p99 and max of ``values`` (milliseconds), rounded; empty when there are none."""
    if not values:
        return {}
    ordered = sorted(values)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)

    return {"p50": at(0.5), "p90": at(0.9), "p99": at(0.99), "max": round(ordered[-1], 3),
            "mean": round(statistics.fmean(ordered), 3), "count": len(ordered)}


def run_arrivals(llm, arrivals: list[Arrival]) -> LatencyRun:
    """Step ``llm`` through the arrivals; stamp every token with its step's end time."""
    from aios.sampling_params import SamplingParams

    pending = sorted(arrivals, key=lambda a: a.step)
    arrived_at, stamps, kinds, seqs, late_ids = {}, {}, {}, {}, set()
    step, step_ms = 0, []
    synchronize(llm.config.device)
    start = time.perf_counter()
    while pending or not llm.is_finished():
        now = time.perf_counter()
        while pending and pending[0].step <= step:
            arrival = pending.pop(0)
            seq = llm.add_request(arrival.prompt, SamplingParams(temperature=0.0, max_tokens=arrival.max_tokens,
                                                                 ignore_eos=True))
            arrived_at[seq.seq_id], kinds[seq.seq_id], seqs[seq.seq_id] = now, arrival.long, seq
            if arrival.step > 0:
                late_ids.add(seq.seq_id)
            stamps[seq.seq_id] = []
        llm.step()
        ended = time.perf_counter()
        step_ms.append((ended - now) * 1000)
        for seq_id, seq in seqs.items():
            stamps[seq_id] += [ended] * (seq.num_completion_tokens - len(stamps[seq_id]))
        step += 1
    seconds = time.perf_counter() - start
    short = [seq_id for seq_id, long in kinds.items() if not long]
    long = [seq_id for seq_id, is_long in kinds.items() if is_long]
    late = [seq_id for seq_id in short if seq_id in late_ids]
    ttft = lambda ids: [(stamps[i][0] - arrived_at[i]) * 1000 for i in ids]  # noqa: E731
    itl = [(b - a) * 1000 for i in short for a, b in zip(stamps[i], stamps[i][1:])]
    config = llm.config
    return LatencyRun(config.enable_chunked_prefill, config.max_num_batched_tokens, step, round(seconds, 4),
                      sum(len(s) for s in stamps.values()), percentiles(ttft(short)), percentiles(itl),
                      percentiles(ttft(long)), percentiles(ttft(late)), round(max(step_ms), 3))


def compare_chunked_prefill(model_dir, device: str = "cuda", scale: str = "full", budget: int = CHUNK_BUDGET,
                            load_format: str = "dummy", **engine_options) -> dict:
    """The workload through a prefill-first engine and a chunked one; returns both runs and the p99 ITL ratio."""
    from aios.bench.throughput import warm_up
    from aios.config import features_up_to
    from aios.engine.llm_engine import release_device_memory
    from aios.llm import LLM
    from aios.utils.hf_config import load_model_config

    workload = {**LATENCY_WORKLOAD, **SCALES[scale]}
    hf = load_model_config(model_dir)
    arrivals = make_arrivals(min(hf.vocab_size, 32000), **workload)
    max_len = max(len(a.prompt) + a.max_tokens for a in arrivals) + 16
    runs = {}
    for chunked in (False, True):
        options = {**features_up_to(16), "device": device, "load_format": load_format, "max_model_len": max_len,
                   "max_num_seqs": min(64, budget), "enable_prefix_caching": False, "enable_chunked_prefill": chunked,
                   "max_num_batched_tokens": budget if chunked else max(max_len, 16384), **engine_options}
        llm = LLM(str(model_dir), **options)
        try:
            if device.startswith("cuda"):
                warm_up(llm)
            runs["chunked" if chunked else "prefill_first"] = asdict(run_arrivals(llm, arrivals))
        finally:
            llm.shutdown()
            del llm
            release_device_memory()
    before, after = runs["prefill_first"]["short_itl_ms"], runs["chunked"]["short_itl_ms"]
    runs["p99_itl_improvement"] = round(before["p99"] / max(after["p99"], 1e-9), 3)
    runs["workload"] = {**workload, "budget": budget, "device": device, "model": str(model_dir)}
    return runs


def summary(result: dict) -> str:
    """Two lines per engine: TTFT and ITL percentiles of the short requests, then the ratio."""
    lines = []
    for name in ("prefill_first", "chunked"):
        run = result[name]
        lines.append(f"{name:>13}: budget {run['max_num_batched_tokens']}, {run['steps']} steps, {run['seconds']} s; "
                     f"short TTFT p50/p99 {run['short_ttft_ms'].get('p50')}/{run['short_ttft_ms'].get('p99')} ms, "
                     f"ITL p50/p99 {run['short_itl_ms'].get('p50')}/{run['short_itl_ms'].get('p99')} ms, "
                     f"short-behind-long TTFT p50 {run['late_short_ttft_ms'].get('p50')} ms, "
                     f"long TTFT p50 {run['long_ttft_ms'].get('p50')} ms, longest step {run['max_step_ms']} ms")
    lines.append(f"p99 ITL of short requests: x{result['p99_itl_improvement']} better with chunked prefill")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import torch

    parser = argparse.ArgumentParser(prog="python -m aios.bench.chunked_prefill", description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default=None, help="fixture preset (default: $AIOS_BENCH_PRESET or 0.6b)")
    parser.add_argument("--model", default=None, help="a checkpoint folder instead of a preset")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--scale", choices=sorted(SCALES), default="full")
    parser.add_argument("--budget", type=int, default=CHUNK_BUDGET, help="max_num_batched_tokens of the chunked run")
    parser.add_argument("--out", type=Path, default=None, help="write DIR/chunked_prefill.json")
    args = parser.parse_args(argv)
    model_dir = Path(args.model) if args.model else benchmark_model_dir(args.preset)
    extra = {}
    if args.device == "cpu":
        torch.set_num_threads(1)  # the small workload's tensors gain nothing from more; a busy machine loses a lot
        extra = {"attention_backend": "torch"}
    result = compare_chunked_prefill(model_dir, args.device, args.scale, args.budget, **extra)
    print(summary(result))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "chunked_prefill.json").write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
