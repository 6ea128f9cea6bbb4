"""Lesson 21 demo: the model cut into pipeline stages (GPUs, or CPU processes talking gloo).

    python exercises/lesson21/run_lesson21.py                  # with your aios/
    python exercises/lesson21/run_lesson21.py --reference      # with solutions/aios/
    python exercises/lesson21/run_lesson21.py --pp 2 --tp 2 --model DIR --show-failure

Shows: how each preset's layers split into stages; the engine at PP=1, at PP=N and at
TP=2 x PP=N generating the same greedy tokens (N CPU processes over gloo without GPUs:
slower, not faster; the point there is correctness); with ``--show-failure``, what the
driver says when a stage is killed in the middle of a run.
"""

import argparse
import os
import signal
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PROMPTS = ["Cut the layers", "Every stage holds", "The residual travels", "The last stage samples"]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", action="store_true", help="import solutions/aios instead of your aios/")
    parser.add_argument("--model", type=Path, help="checkpoint directory (default: the trained model, assets/aios-tiny-lm)")
    parser.add_argument("--pp", type=int, default=2, help="pipeline-parallel size (default: 2)")
    parser.add_argument("--tp", type=int, default=2, help="tensor-parallel size of the TP x PP run (default: 2)")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--show-failure", action="store_true", help="kill a stage mid-run and show the report")
    return parser.parse_args()


def select_tree(reference: bool) -> None:
    """Put the chosen ``aios`` first on sys.path, before anything imports it (workers inherit the path)."""
    sys.path.insert(0, str(REPO / "solutions" if reference else REPO))


def show_splits(pp: int) -> None:
    """The stages of every real Qwen3 shape at ``pp`` stages."""
    from aios.engine.pipeline import partition_layers
    from aios.fixtures import PRESETS

    print(f"== layers per stage at PP={pp} (remainder on the first stages)")
    for name in ("0.6b", "8b", "14b", "32b"):
        layers = PRESETS[name]["num_hidden_layers"]
        ranges = partition_layers(layers, pp)
        print(f"   Qwen3-{name:5s} {layers:3d} layers -> " + "  ".join(f"[{a:2d}, {b:2d})" for a, b in ranges))


def generate(model: str, max_tokens: int, **options) -> tuple[list[str], float, object]:
    from aios import LLM, SamplingParams

    start = time.perf_counter()
    llm = LLM(model, attention_backend="torch", max_num_seqs=8, max_model_len=256, **options)
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    texts = [out["text"] for out in llm.generate(PROMPTS, params, use_tqdm=False)]
    return texts, time.perf_counter() - start, llm


def show_failure(model: str, pp: int) -> None:
    """Freeze the last stage, kill it a second later, and print what generate() raises."""
    from aios import LLM, SamplingParams

    llm = LLM(model, attention_backend="torch", max_num_seqs=8, max_model_len=256, pipeline_parallel_size=pp)
    victim = llm.model_runner.processes[-1]
    print(f"== killing rank {pp - 1} (pid {victim.pid}) mid-run")
    os.kill(victim.pid, signal.SIGSTOP)
    threading.Timer(1.0, os.kill, (victim.pid, signal.SIGKILL)).start()
    start = time.perf_counter()
    try:
        llm.generate(PROMPTS * 4, SamplingParams(max_tokens=64, ignore_eos=True), use_tqdm=False)
    except Exception as error:  # noqa: BLE001 - the point is to show it
        print(f"   after {time.perf_counter() - start:.1f} s: {type(error).__name__}: {str(error)[:400]}")
    finally:
        llm.shutdown()


def main() -> None:
    args = parse_args()
    select_tree(args.reference)
    from aios.fixtures import trained_model

    model = str(args.model or trained_model())
    show_splits(args.pp)
    baseline, seconds, llm = generate(model, args.max_tokens)
    print(f"== PP=1: {seconds:.1f} s")
    for text in baseline:
        print(f"   {text!r}")
    for tp, pp in ((1, args.pp), (args.tp, args.pp)):
        texts, seconds, llm = generate(model, args.max_tokens, tensor_parallel_size=tp, pipeline_parallel_size=pp)
        runner = llm.model_runner
        print(f"== TP={tp} x PP={pp}: {seconds:.1f} s (start-up included); stage 0 holds layers "
              f"[{runner.stage.start}, {runner.stage.end}), KV cache {tuple(runner.kv_cache.k_cache.shape)}; "
              f"same tokens as PP=1: {texts == baseline}")
        llm.shutdown()
    if args.show_failure:
        show_failure(model, args.pp)


if __name__ == "__main__":
    main()
