"""Lesson 14 demo: the model split over several processes (GPUs, or CPU processes talking gloo).

    python exercises/lesson14/run_lesson14.py                  # with your aios/
    python exercises/lesson14/run_lesson14.py --reference      # with solutions/aios/
    python exercises/lesson14/run_lesson14.py --tp 2 --model DIR --show-failure

Shows: what each rank holds of every weight; the engine at TP=1 and at TP=N generating
the same greedy tokens (on a machine with N GPUs over NCCL, otherwise N CPU processes over
gloo, where it is slower, not faster: the point there is correctness); and, with
``--show-failure``, what the driver says when a worker dies in the middle of a step.
"""

import argparse
import os
import signal
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PROMPTS = ["Split the weights", "Every rank holds", "An all-reduce adds", "The driver samples"]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", action="store_true", help="import solutions/aios instead of your aios/")
    parser.add_argument("--model", type=Path, help="checkpoint directory (default: the trained model, assets/aios-tiny-lm)")
    parser.add_argument("--tp", type=int, default=2, help="tensor-parallel size (default: 2)")
    parser.add_argument("--max-tokens", type=int, default=24)
    parser.add_argument("--show-failure", action="store_true", help="kill a worker mid-step and show the report")
    return parser.parse_args()


def select_tree(reference: bool) -> None:
    """Put the chosen ``aios`` first on sys.path, before anything imports it (workers inherit the path)."""
    sys.path.insert(0, str(REPO / "solutions" if reference else REPO))


def show_shards(hf, tp: int) -> None:
    """Full and per-rank shapes of one layer's weights and of the vocabulary matrices."""
    head_dim = hf.head_dim
    q, kv = hf.num_attention_heads * head_dim, hf.num_key_value_heads * head_dim
    rows = [
        ("embed_tokens / lm_head", (hf.vocab_size, hf.hidden_size), 0, "vocab rows; all-reduce / gather"),
        ("qkv_proj", (q + 2 * kv, hf.hidden_size), 0, "column parallel: whole heads"),
        ("o_proj", (hf.hidden_size, q), 1, "row parallel: all-reduce after"),
        ("gate_up_proj", (2 * hf.intermediate_size, hf.hidden_size), 0, "column parallel"),
        ("down_proj", (hf.hidden_size, hf.intermediate_size), 1, "row parallel: all-reduce after"),
    ]
    print(f"What each of {tp} ranks holds ({hf.num_attention_heads} query heads, "
          f"{hf.num_key_value_heads} KV heads -> {hf.num_attention_heads // tp} and "
          f"{hf.num_key_value_heads // tp} per rank):")
    for name, shape, dim, note in rows:
        shard = list(shape)
        shard[dim] //= tp
        print(f"  {name:<24} full {str(shape):<14} per rank {str(tuple(shard)):<14} {note}")


def build(model_dir: Path, tp: int, device: str):
    from aios import LLM
    from aios.config import features_up_to

    options = {**features_up_to(14), "device": device, "tensor_parallel_size": tp}
    if device == "cpu":
        options.update(attention_backend="torch", num_kvcache_blocks=512)  # no Triton interpreter, a small cache
    start = time.perf_counter()
    llm = LLM(str(model_dir), **options)
    print(f"  TP={tp}: engine ready in {time.perf_counter() - start:.1f} s")
    return llm


def generate(llm, max_tokens: int):
    from aios import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    start = time.perf_counter()
    outputs = llm.generate(PROMPTS, params, use_tqdm=False)
    seconds = time.perf_counter() - start
    tokens = sum(len(out["token_ids"]) for out in outputs)
    print(f"         {tokens} tokens in {seconds:.2f} s = {tokens / seconds:,.0f} tok/s")
    return [out["token_ids"] for out in outputs], outputs[0]["text"]


def compare(model_dir: Path, tp: int, device: str, max_tokens: int) -> None:
    print(f"\nThe engine on {device}, TP=1 and TP={tp}:")
    one = build(model_dir, 1, device)
    expected, _ = generate(one, max_tokens)
    del one
    many = build(model_dir, tp, device)
    try:
        got, text = generate(many, max_tokens)
    finally:
        many.shutdown()
    print(f"  same greedy tokens: {got == expected}")
    print(f"  e.g. {PROMPTS[0]!r} -> {text!r}")


def show_failure(model_dir: Path, tp: int, device: str) -> None:
    from aios.engine.tp_runner import TensorParallelError

    print(f"\nKilling worker rank 1 in the middle of a step (TP={tp}):")
    llm = build(model_dir, tp, device)
    pid = llm.model_runner.workers[0].process.pid
    os.kill(pid, signal.SIGSTOP)  # frozen: the driver's step will wait for it in a collective ...
    threading.Timer(1.0, os.kill, (pid, signal.SIGKILL)).start()  # ... until it dies
    start = time.perf_counter()
    try:
        generate(llm, 8)
        print("  the step finished?! (it should not have)")
    except TensorParallelError as error:
        print(f"  after {time.perf_counter() - start:.1f} s the driver reports:\n    {error}")
    finally:
        llm.shutdown()


def main() -> None:
    args = parse_args()
    select_tree(args.reference)
    import torch

    from aios.fixtures import trained_model
    from aios.utils.hf_config import load_model_config

    model_dir = Path(args.model or trained_model())
    device = "cuda" if torch.cuda.device_count() >= args.tp else "cpu"
    show_shards(load_model_config(model_dir), args.tp)
    compare(model_dir, args.tp, device, args.max_tokens)
    if args.show_failure:
        show_failure(model_dir, args.tp, device)


if __name__ == "__main__":
    main()
