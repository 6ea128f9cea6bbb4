"""Lesson 17's benchmark: the synchronous engine loop against the overlapped one, same engine, same workload.

Two figures per loop, both engines built in this process with the engine's defaults otherwise
(the 0.6b shape with random weights on a GPU):

- throughput: output tok/s on ``aios bench``'s workload shape (fewer requests: ``OVERLAP_WORKLOAD``)
  and batch-1 decode tok/s (where the host's share of a step is largest);
- the timeline: torch.profiler over ``PROFILE_STEPS`` decode steps of a running batch; the GPU's
  idle time per step is the window minus the union of its kernels' intervals, divided by the steps.
  Overlap hides the host's work behind the GPU's, so the idle time per step must shrink.
  The traces are written as Chrome traces (``--out``) to look at in Perfetto.

    python -m aios.bench.async_overlap --preset tiny --device cpu --scale small   # a CPU smoke run
    python -m aios.bench.async_overlap --out DIR                                    # 0.6b shape, GPU
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from aios.bench.ladder import benchmark_model_dir, make_workload, synchronize

#: The throughput workload: aios bench's lengths (100-1024 in and out), 128 requests to keep it short.
OVERLAP_WORKLOAD = {"num_requests": 128, "prompt_len": (100, 1024), "output_len": (100, 1024), "seed": 0}
#: Batch-1 decode: a 128-token prompt, 512 tokens decoded.
BATCH1 = {"prompt_len": 128, "output_len": 512}
#: The profiled window: this many decode steps of a batch of ``PROFILE_BATCH`` sequences.
PROFILE_STEPS, PROFILE_BATCH = 30, 64
SCALES = {"full": {}, "small": {"workload": {"num_requests": 6, "prompt_len": (4, 24), "output_len": (8, 24),
                                             "seed": 0},
                                "batch1": {"prompt_len": 8, "output_len": 24}, "steps": 6, "batch": 4}}


def build(model_dir, device: str, async_scheduling: bool, **options):
    from aios.llm import LLM

    return LLM(str(model_dir), load_format="dummy", device=device, async_scheduling=async_scheduling, **options)


def greedy(max_tokens: int):
    from aios.sampling_params import SamplingParams

    return SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)


def throughput(llm, workload: dict) -> dict:
    """Output tok/s of ``llm.generate`` over the workload (after one warm-up run of its first requests)."""
    w = make_workload(workload["num_requests"], tuple(workload["prompt_len"]), tuple(workload["output_len"]),
                      llm.config.hf_config.vocab_size, workload["seed"])
    prompts, params = [list(p) for p in w.prompts], [greedy(n) for n in w.output_lens]
    from aios.bench.throughput import timed_generate

    llm.generate(prompts[:4], [greedy(8)] * min(4, len(prompts)), use_tqdm=False)
    outputs, seconds = timed_generate(llm, prompts, params)
    tokens = sum(len(o["token_ids"]) for o in outputs)
    return {"output_tokens": tokens, "seconds": round(seconds, 3), "tokens_per_second": round(tokens / seconds, 1)}


def batch1_decode(llm, prompt_len: int, output_len: int) -> dict:
    """Decode tok/s of one sequence, its prefill left out of the clock."""
    vocab = min(llm.config.hf_config.vocab_size, 2048)
    prompt = [(11 * i) % vocab for i in range(prompt_len)]
    llm.generate([prompt], greedy(4), use_tqdm=False)  # warm-up
    seq = llm.add_request(prompt, greedy(output_len))
    while seq.num_completion_tokens == 0 and not llm.is_finished():
        llm.step()
    synchronize(llm.config.device)
    start, first = time.perf_counter(), seq.num_completion_tokens
    while not llm.is_finished():
        llm.step()
    synchronize(llm.config.device)
    seconds = time.perf_counter() - start
    tokens = seq.num_completion_tokens - first
    return {"output_tokens": tokens, "seconds": round(seconds, 3), "tokens_per_second": round(tokens / seconds, 1)}


def gpu_idle_per_step(intervals: list[tuple[float, float]], steps: int) -> tuple[float, float]:
    """(idle microseconds per step, busy share) of the device over its kernels' span.

    intervals: (start_us, end_us) of every device kernel in the window. Busy time is their union
    (overlapping kernels count once); idle is the span minus it.
    """
    if not intervals:
        return 0.0, 0.0
    intervals = sorted(intervals)
    busy, (start, end) = 0.0, intervals[0]
    first = start
    for a, b in intervals[1:]:
        if a > end:
            busy += end - start
            start, end = a, b
        else:
            end = max(end, b)
    busy += end - start
    span = max(end - first, 1e-9)
    return (span - busy) / steps, busy / span


def profile_steps(llm, steps: int, batch: int, trace: Path | None = None) -> dict:
    """Profile ``steps`` decode steps of ``batch`` running sequences: wall and GPU idle time per step."""
    from torch.profiler import ProfilerActivity, profile

    vocab = min(llm.config.hf_config.vocab_size, 2048)
    for i in range(batch):
        llm.add_request([(7 * i + j) % vocab for j in range(32)], greedy(steps + 16))
    while llm.scheduler.waiting:
        llm.step()
    for _ in range(3):
        llm.step()
    synchronize(llm.config.device)
    cuda = llm.config.device.startswith("cuda")
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        for _ in range(steps):
            llm.step()
        synchronize(llm.config.device)
        wall = time.perf_counter() - start
    while not llm.is_finished():
        llm.step()
    if trace is not None:
        prof.export_chrome_trace(str(trace))
    kernels = [(e.time_range.start, e.time_range.end) for e in prof.events()
               if e.device_type == torch.autograd.DeviceType.CUDA]
    idle, busy_share = gpu_idle_per_step(kernels, steps)
    return {"steps": steps, "batch": batch, "wall_ms_per_step": round(wall / steps * 1e3, 3),
            "gpu_idle_us_per_step": round(idle, 1), "gpu_busy_share": round(busy_share, 3)}


def compare_sync_async(model_dir, device: str = "cuda", scale: str = "full", out: Path | None = None,
                       **options) -> dict:
    """Both loops on the same workloads; the overlapped one's gains as ratios."""
    spec = SCALES[scale]
    workload = spec.get("workload", OVERLAP_WORKLOAD)
    b1 = spec.get("batch1", BATCH1)
    steps, batch = spec.get("steps", PROFILE_STEPS), spec.get("batch", PROFILE_BATCH)
    result = {"device": torch.cuda.get_device_name() if device.startswith("cuda") else "cpu",
              "workload": workload, "batch1": b1}
    for name, overlap in (("sync", False), ("async", True)):
        llm = build(model_dir, device, overlap, **options)
        try:
            trace = out / f"timeline_{name}.json" if out is not None else None
            result[name] = {"throughput": throughput(llm, workload), "batch1": batch1_decode(llm, **b1),
                            "profile": profile_steps(llm, steps, batch, trace)}
        finally:
            llm.shutdown()
    sync, overlapped = result["sync"], result["async"]
    result["throughput_speedup"] = round(overlapped["throughput"]["tokens_per_second"]
                                         / sync["throughput"]["tokens_per_second"], 3)
    result["batch1_speedup"] = round(overlapped["batch1"]["tokens_per_second"]
                                     / sync["batch1"]["tokens_per_second"], 3)
    result["step_time_speedup"] = round(sync["profile"]["wall_ms_per_step"]
                                        / overlapped["profile"]["wall_ms_per_step"], 3)
    return result


def summary(result: dict) -> str:
    lines = [f"lesson 17, sync vs async scheduling [{result['device']}]"]
    for name in ("sync", "async"):
        r = result[name]
        lines.append(f"  {name:5}  throughput {r['throughput']['tokens_per_second']:>10,.1f} tok/s   "
                     f"batch-1 {r['batch1']['tokens_per_second']:>8,.1f} tok/s   "
                     f"decode step {r['profile']['wall_ms_per_step']:.2f} ms, GPU idle "
                     f"{r['profile']['gpu_idle_us_per_step']:.0f} us/step (busy {r['profile']['gpu_busy_share']:.0%})")
    lines.append(f"  async/sync: throughput x{result['throughput_speedup']}, batch-1 x{result['batch1_speedup']}, "
                 f"step time x{result['step_time_speedup']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="checkpoint folder (default: the benchmark fixture of --preset)")
    parser.add_argument("--preset", default=None)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--scale", choices=sorted(SCALES), default="full")
    parser.add_argument("--out", type=Path, help="write async_overlap.json and the two Chrome traces here")
    args = parser.parse_args(argv)
    model_dir = Path(args.model) if args.model else benchmark_model_dir(args.preset)
    options = {"attention_backend": "torch", "max_model_len": 128} if args.device == "cpu" else {}
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
    result = compare_sync_async(model_dir, args.device, args.scale, args.out, **options)
    print(summary(result))
    if args.out:
        (args.out / "async_overlap.json").write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
