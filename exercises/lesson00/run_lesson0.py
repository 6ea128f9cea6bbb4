"""Lesson 0 demo: check the environment, make a test checkpoint, look inside it.

    python exercises/lesson00/run_lesson0.py               # with your aios/
    python exercises/lesson00/run_lesson0.py --reference   # with solutions/aios/
    python exercises/lesson00/run_lesson0.py --model DIR   # inspect another checkpoint

Nothing here needs code of yours: lesson 0 has no stubs.
"""

import argparse
import importlib.metadata
import json
import platform
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# The syllabus's throughput targets (32 requests, one GPU; lesson 14 uses two).
# They are goals to aim at, not measurements of this repository.
SYLLABUS_LADDER = [
    (3, "~5 tok/s", "baseline, no KV cache"),
    (4, "~25 tok/s", "KV cache"),
    (5, "~30 tok/s", "pre-allocated cache"),
    (6, "~30 tok/s", "paged cache (memory, not speed)"),
    (7, "~400 tok/s", "batching"),
    (8, "~600 tok/s", "continuous batching"),
    (9, "~900 tok/s", "FlashAttention-style kernels"),
    (10, "~1000 tok/s", "fused layers"),
    (11, "~1200 tok/s", "CUDA graphs"),
    (14, "~2000 tok/s", "tensor parallelism, 2 GPUs"),
]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", action="store_true", help="import solutions/aios instead of your aios/")
    parser.add_argument("--model", type=Path, help="checkpoint directory (default: the trained model, assets/aios-tiny-lm)")
    return parser.parse_args()


def select_tree(reference: bool) -> None:
    """Put the chosen ``aios`` first on sys.path, before anything imports it."""
    sys.path.insert(0, str(REPO / "solutions" if reference else REPO))


def report_environment() -> None:
    print(f"Python {platform.python_version()} ({sys.executable})")
    for name in ("torch", "safetensors", "tokenizers", "transformers"):
        try:
            print(f"  {name:<13} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            print(f"  {name:<13} MISSING: pip install -r exercises/lesson00/requirements.txt")
    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none (CPU only: fine for lessons 0-8)"
    print(f"  CUDA device   {device}")


def describe_checkpoint(model_dir: Path) -> None:
    print(f"\nCheckpoint {model_dir}")
    for path in sorted(model_dir.iterdir()):
        print(f"  {path.name:<28} {path.stat().st_size / 1024:10.1f} KiB")
    config = json.loads((model_dir / "config.json").read_text())
    keys = ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim",
            "intermediate_size", "vocab_size", "tie_word_embeddings")
    print("  " + ", ".join(f"{k}={config[k]}" for k in keys))

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    text = "An inference engine is the operating system of an LLM."
    ids = tokenizer(text)["input_ids"]
    print(f"\nTokenizer: {len(text)} characters -> {len(ids)} tokens")
    print("  " + " | ".join(tokenizer.convert_ids_to_tokens(ids)))


def main() -> int:
    args = parse_args()
    select_tree(args.reference)
    import aios
    from aios.fixtures import trained_model

    print(f"aios imported from {Path(aios.__file__).parent}\n")
    report_environment()
    describe_checkpoint(args.model or trained_model())
    print("\nThe syllabus's throughput ladder (targets, not measurements):")
    for lesson, target, change in SYLLABUS_LADDER:
        print(f"  lesson {lesson:>2}: {target:>12}  {change}")
    print("\nReady. Next: python -m grader grade 0, then exercises/lesson01/README.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
