"""The throughput ladder of lessons 3-8: one workload, each lesson's generation loop, timed alike.

    stage  generation loop                                   what changed
    3      generate_no_cache, one request at a time          (baseline: recompute everything)
    4      generate_with_cache + GrowingKVCache              KV cache reuse
    5      generate_with_cache + StaticKVCache, fused norm   pre-allocated cache
    6      generate_with_cache + PagedSequenceKVCache        paged cache (memory, not speed)
    7      generate_batch: a static batch on ModelRunner     batching
    8      LLM.generate: the scheduler                       continuous batching

Every stage generates exactly the workload's output lengths (no early stop at EOS),
so tokens per second compare like for like. The GPU benchmark of lesson N
(``tests/lessonNN/test_lNN_benchmark.py``) times stage N and the stage before it in
the same process and checks the speed-up against ``MIN_SPEEDUP[N]``.

    python -m aios.bench.ladder --preset tiny --device cpu      # the whole ladder, printed
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

#: The syllabus's speed-ups of stage N over the stage each lesson compares with
#: (docs: 5x for the KV cache, 13x for batching at 32 requests, 1.5x for continuous batching).
SYLLABUS_SPEEDUP = {4: 5.0, 5: 1.2, 6: 1.0, 7: 13.0, 8: 1.5}

#: The ratios the GPU benchmarks assert. AWAITING CALIBRATION: these are cautious first
#: guesses, not measurements. They will be replaced by what the lessons 4-8 GPU run
#: (scripts/gpu/lessons4to8.sh, 0.6b shape, bf16, H100) records, minus a safety margin.
#: Why below the syllabus: stages 7 and 8 use lesson 7's PyTorch attention, a Python loop
#: over the sequences, so a step's cost grows with the batch; the Triton kernels of
#: lesson 9 remove that loop.
MIN_SPEEDUP = {4: 1.5, 5: 0.9, 6: 0.5, 7: 2.0, 8: 1.0}


@dataclass(frozen=True)
class Workload:
    """Requests as token ids, each with the exact number of tokens to generate."""

    prompts: tuple[tuple[int, ...], ...]
    output_lens: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.prompts)

    @property
    def num_output_tokens(self) -> int:
        return sum(self.output_lens)

    @property
    def longest(self) -> int:
        """The most tokens any request reaches (prompt + output)."""
        return max(len(p) + n for p, n in zip(self.prompts, self.output_lens))

    def subset(self, count: int) -> "Workload":
        """``count`` requests spread evenly over the workload (for the slow single-sequence stages)."""
        if count >= len(self):
            return self
        picks = [round(i * (len(self) - 1) / max(count - 1, 1)) for i in range(count)]
        return Workload(tuple(self.prompts[i] for i in picks), tuple(self.output_lens[i] for i in picks))


def make_workload(
    num_requests: int, prompt_len: tuple[int, int], output_len: tuple[int, int], vocab_size: int, seed: int = 0
) -> Workload:
    """Random prompts and output lengths, uniform in the inclusive ranges given, the same for a seed."""
    rng = random.Random(seed)
    prompts = tuple(
        tuple(rng.randrange(vocab_size) for _ in range(rng.randint(*prompt_len))) for _ in range(num_requests)
    )
    outputs = tuple(rng.randint(*output_len) for _ in range(num_requests))
    return Workload(prompts, outputs)


@dataclass(frozen=True)
class LessonBenchmark:
    """What the GPU benchmark of one lesson compares.

    stage / baseline:  the ladder stages timed (the lesson's, and the one it must beat).
    workload:          make_workload's arguments (vocab_size comes from the model).
    single_subset:     single-sequence stages (3-6) time only this many of the requests:
                       their tokens per second do not depend on how many there are.
    max_num_seqs:      batch size of stages 7 and 8.
    """

    stage: int
    baseline: int
    workload: dict
    single_subset: int = 4
    max_num_seqs: int = 32

    @property
    def min_speedup(self) -> float:
        return MIN_SPEEDUP[self.stage]


_SINGLE = {"num_requests": 4, "prompt_len": (384, 512), "output_len": (128, 128)}
LESSON_BENCHMARKS = {
    4: LessonBenchmark(stage=4, baseline=3, workload=_SINGLE, single_subset=2),
    5: LessonBenchmark(stage=5, baseline=4, workload=_SINGLE),
    6: LessonBenchmark(stage=6, baseline=5, workload=_SINGLE),
    # Syllabus: batching over the pre-allocated cache, at 32 requests.
    7: LessonBenchmark(stage=7, baseline=5, workload={"num_requests": 32, "prompt_len": (64, 512),
                                                       "output_len": (128, 128)}),
    # Continuous batching pays off when output lengths differ and requests outnumber the batch.
    8: LessonBenchmark(stage=8, baseline=7, max_num_seqs=16,
                       workload={"num_requests": 64, "prompt_len": (32, 256), "output_len": (16, 256)}),
}


def synchronize(device: str | torch.device) -> None:
    """Wait for queued GPU work, so that wall-clock time measures it."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


# ---------------------------------------------------------------- the stages


class Stage:
    """One rung of the ladder, built once, run many times: ``run(workload)`` returns tokens generated."""

    stage: int = 0
    name: str = ""

    def run(self, workload: Workload) -> int:
        raise NotImplementedError

    def close(self) -> None:
        """Free what the stage holds (models, caches)."""


class SingleSequenceStage(Stage):
    """Stages 3-6: the single-sequence drivers of generate.py, one request after another."""

    NAMES = {3: "no KV cache", 4: "growing KV cache", 5: "pre-allocated KV cache", 6: "paged KV cache"}

    def __init__(self, stage: int, model_dir, device: str, dtype=None, load_format: str = "dummy",
                 block_size: int = 16):
        from aios.utils.loader import load_qwen3

        self.stage, self.name = stage, self.NAMES[stage]
        self.device = device
        self.block_size = block_size
        self.model = load_qwen3(model_dir, dtype, device, load_format, fuse_residual_norm=stage >= 5)

    def _cache(self, num_tokens: int):
        from aios.engine.kv_cache import GrowingKVCache, PagedSequenceKVCache, StaticKVCache

        if self.stage == 3:
            return None
        if self.stage == 4:
            return GrowingKVCache(self.model.config.num_hidden_layers)
        if self.stage == 5:
            return StaticKVCache.for_model(self.model, num_tokens)
        return PagedSequenceKVCache.for_model(self.model, math.ceil(num_tokens / self.block_size), self.block_size)

    def run(self, workload: Workload) -> int:
        from aios.generate import generate_no_cache, generate_with_cache

        generated = 0
        for prompt, count in zip(workload.prompts, workload.output_lens):
            cache = self._cache(len(prompt) + count)
            if cache is None:
                generated += len(generate_no_cache(self.model, list(prompt), count))
            else:
                generated += len(generate_with_cache(self.model, list(prompt), count, cache))
        return generated

    def close(self) -> None:
        del self.model


class EngineStage(Stage):
    """Stages 7 and 8 on one engine: its ModelRunner in static batches (7) or LLM.generate (8)."""

    NAMES = {7: "static batching", 8: "continuous batching"}

    def __init__(self, stage: int, model_dir, device: str, max_num_seqs: int, longest: int,
                 load_format: str = "dummy", block_size: int = 16, **options):
        from aios.config import features_up_to
        from aios.llm import LLM

        self.stage, self.name = stage, self.NAMES[stage]
        self.max_num_seqs = max_num_seqs
        blocks = max_num_seqs * math.ceil(longest / block_size)
        engine_options = {**features_up_to(stage), "device": device, "max_num_seqs": max_num_seqs,
                          "num_kvcache_blocks": blocks, "kvcache_block_size": block_size,
                          "load_format": load_format, **options}
        self.llm = LLM(str(model_dir), **engine_options)

    def run(self, workload: Workload) -> int:
        if self.stage == 7:
            return self._run_static(workload)
        from aios.sampling_params import SamplingParams

        params = [SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True) for n in workload.output_lens]
        outputs = self.llm.generate([list(p) for p in workload.prompts], params, use_tqdm=False)
        return sum(len(out["token_ids"]) for out in outputs)

    def _run_static(self, workload: Workload) -> int:
        from aios.generate import generate_batch

        generated = 0
        for start in range(0, len(workload), self.max_num_seqs):
            prompts = [list(p) for p in workload.prompts[start : start + self.max_num_seqs]]
            counts = list(workload.output_lens[start : start + self.max_num_seqs])
            outputs = generate_batch(self.llm.model_runner, self.llm.block_manager, prompts, counts)
            generated += sum(len(ids) for ids in outputs)
        return generated

    def close(self) -> None:
        del self.llm


def build_stage(stage: int, model_dir, device: str, bench: LessonBenchmark, workload: Workload,
                load_format: str = "dummy") -> Stage:
    """The stage object for ``stage``, sized for ``workload``."""
    if stage <= 6:
        return SingleSequenceStage(stage, model_dir, device, load_format=load_format)
    return EngineStage(stage, model_dir, device, bench.max_num_seqs, workload.longest, load_format=load_format)


def stage_workload(stage: int, bench: LessonBenchmark, workload: Workload) -> Workload:
    """What a stage is timed on: single-sequence stages take only ``bench.single_subset`` requests."""
    return workload.subset(bench.single_subset) if stage <= 6 else workload


# ---------------------------------------------------------------- timing


@dataclass
class Measurement:
    """Wall-clock seconds of each timed round of one stage, and the tokens each round generated."""

    stage: int
    name: str
    tokens: int
    seconds: list[float] = field(default_factory=list)

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / statistics.median(self.seconds)


def time_stage(stage: Stage, workload: Workload, device: str, rounds: int = 1) -> Measurement:
    """Warm up on one short request, then time ``rounds`` full runs of ``workload``."""
    warmup = Workload(workload.prompts[:1], (min(4, workload.output_lens[0]),))
    stage.run(warmup)
    result = Measurement(stage.stage, stage.name, tokens=0)
    for _ in range(rounds):
        synchronize(device)
        start = time.perf_counter()
        result.tokens = stage.run(workload)
        synchronize(device)
        result.seconds.append(time.perf_counter() - start)
    return result


@dataclass
class Comparison:
    """A lesson's stage against its baseline, measured in the same run."""

    lesson: int
    current: Measurement
    baseline: Measurement

    @property
    def speedup(self) -> float:
        return self.current.tokens_per_second / self.baseline.tokens_per_second

    def summary(self) -> str:
        return (
            f"lesson {self.lesson}: {self.current.name} {self.current.tokens_per_second:.1f} tok/s vs "
            f"{self.baseline.name} {self.baseline.tokens_per_second:.1f} tok/s = x{self.speedup:.2f} "
            f"(asserted >= x{MIN_SPEEDUP[self.lesson]}, syllabus x{SYLLABUS_SPEEDUP[self.lesson]})"
        )

    def extra_info(self) -> dict:
        """What a pytest-benchmark record keeps beside the timings."""
        return {
            "lesson": self.lesson,
            "stage": self.current.name,
            "tokens_per_second": round(self.current.tokens_per_second, 2),
            "baseline_stage": self.baseline.name,
            "baseline_tokens_per_second": round(self.baseline.tokens_per_second, 2),
            "speedup": round(self.speedup, 3),
            "min_speedup": MIN_SPEEDUP[self.lesson],
            "syllabus_speedup": SYLLABUS_SPEEDUP[self.lesson],
        }


def scaled(workload_args: dict, scale: float) -> dict:
    """make_workload arguments with request count and lengths multiplied by ``scale`` (at least 1 each)."""
    if scale == 1:
        return dict(workload_args)
    size = lambda n: max(1, round(n * scale))  # noqa: E731
    out = dict(workload_args)
    out["num_requests"] = size(out["num_requests"])
    for key in ("prompt_len", "output_len"):
        out[key] = tuple(size(n) for n in out[key])
    return out


def compare_lesson(lesson: int, model_dir, device: str, benchmark=None, rounds: int = 1,
                   load_format: str = "dummy", scale: float = 1.0) -> Comparison:
    """Time lesson ``lesson``'s stage and its baseline on the lesson's workload.

    The baseline is timed first and freed before the lesson's stage is built (so both get
    the same GPU memory). With a pytest-benchmark fixture as ``benchmark``, the lesson's stage
    is timed through ``benchmark.pedantic`` and the comparison lands in ``extra_info``.
    ``scale`` shrinks the workload (request count and lengths) for quick CPU smoke runs.
    """
    from aios.utils.hf_config import load_model_config

    bench = LESSON_BENCHMARKS[lesson]
    vocab = min(load_model_config(model_dir).vocab_size, _tokenizer_size(model_dir))
    workload = make_workload(**scaled(bench.workload, scale), vocab_size=vocab)

    stage = build_stage(bench.baseline, model_dir, device, bench, workload, load_format)
    baseline = time_stage(stage, stage_workload(bench.baseline, bench, workload), device, rounds)
    stage.close()
    _free_memory(device)

    stage = build_stage(bench.stage, model_dir, device, bench, workload, load_format)
    current_workload = stage_workload(bench.stage, bench, workload)
    if benchmark is None:
        current = time_stage(stage, current_workload, device, rounds)
    else:
        current = _time_with_benchmark(benchmark, stage, current_workload, device, rounds)
    stage.close()
    _free_memory(device)
    comparison = Comparison(lesson, current, baseline)
    if benchmark is not None:
        benchmark.extra_info.update(comparison.extra_info())
    return comparison


def _time_with_benchmark(benchmark, stage: Stage, workload: Workload, device: str, rounds: int) -> Measurement:
    """Time ``stage`` through pytest-benchmark's ``pedantic`` (one warm-up, ``rounds`` rounds)."""
    result = Measurement(stage.stage, stage.name, tokens=0)

    def one_round() -> None:
        synchronize(device)
        start = time.perf_counter()
        result.tokens = stage.run(workload)
        synchronize(device)
        result.seconds.append(time.perf_counter() - start)

    stage.run(Workload(workload.prompts[:1], (min(4, workload.output_lens[0]),)))
    benchmark.pedantic(one_round, rounds=rounds, iterations=1, warmup_rounds=0)
    return result


def _tokenizer_size(model_dir) -> int:
    """How many token ids the checkpoint's tokenizer knows (prompts stay inside it)."""
    import json

    path = Path(model_dir) / "tokenizer.json"
    if not path.is_file():
        return 1 << 30
    vocab = json.loads(path.read_text(encoding="utf-8")).get("model", {}).get("vocab", {})
    return len(vocab) or 1 << 30


def _free_memory(device: str) -> None:
    import gc

    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()


def benchmark_model_dir(preset: str | None = None) -> Path:
    """The checkpoint the benchmarks use: ``$AIOS_BENCH_MODEL`` if set, else ``cached_model(preset)``
    (preset: ``$AIOS_BENCH_PRESET``, default ``0.6b``). The weights are never read (load_format="dummy")."""
    import os

    from aios.fixtures import cached_model

    if os.environ.get("AIOS_BENCH_MODEL"):
        return Path(os.environ["AIOS_BENCH_MODEL"])
    return Path(cached_model(preset or os.environ.get("AIOS_BENCH_PRESET", "0.6b")))


# ---------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    """Print each lesson's comparison (``--lessons 4,5``) for a preset on a device."""
    parser = argparse.ArgumentParser(prog="python -m aios.bench.ladder", description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default=None, help="fixture preset (default: $AIOS_BENCH_PRESET or 0.6b)")
    parser.add_argument("--model", default=None, help="a checkpoint folder instead of a preset")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--lessons", default="4,5,6,7,8", help="comma-separated lessons (4-8)")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--scale", type=float, default=1.0, help="shrink the workloads (e.g. 0.1 for a CPU smoke run)")
    args = parser.parse_args(argv)
    model_dir = Path(args.model) if args.model else benchmark_model_dir(args.preset)
    for lesson in (int(x) for x in args.lessons.split(",") if x.strip()):
        comparison = compare_lesson(lesson, model_dir, args.device, rounds=args.rounds, scale=args.scale)
        verdict = "ok" if comparison.speedup >= MIN_SPEEDUP[lesson] else "BELOW THRESHOLD"
        print(f"{comparison.summary()}  [{verdict}]", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
