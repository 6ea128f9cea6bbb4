"""Lesson 8 demo: the LLM API on a continuous-batching scheduler.

    python exercises/lesson08/run_lesson8.py               # with your aios/
    python exercises/lesson08/run_lesson8.py --reference   # with solutions/aios/
    python exercises/lesson08/run_lesson8.py --model DIR --requests 48

Shows: LLM(...).generate on a few prompts; a workload of mixed lengths run as static
batches (lesson 7) and by the scheduler, in tokens per second; and the same workload in a
KV cache too small to hold it, where sequences are preempted and recomputed, with
identical tokens.
"""

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", action="store_true", help="import solutions/aios instead of your aios/")
    parser.add_argument("--model", type=Path, help="checkpoint directory (default: the trained model, assets/aios-tiny-lm)")
    parser.add_argument("--requests", type=int, default=32, help="requests in the mixed workload")
    parser.add_argument("--batch", type=int, default=8, help="max_num_seqs (and the static batch size)")
    return parser.parse_args()


def select_tree(reference: bool) -> None:
    """Put the chosen ``aios`` first on sys.path, before anything imports it."""
    sys.path.insert(0, str(REPO / "solutions" if reference else REPO))


def run(model_dir: Path, num_requests: int, batch: int) -> None:
    from aios import LLM, SamplingParams
    from aios.bench.ladder import make_workload
    from aios.config import features_up_to
    from aios.generate import generate_batch

    llm = LLM(str(model_dir), max_num_seqs=batch, **features_up_to(8))
    questions = ["What is a KV cache?", "Say hello.", "Count from one to ten, in words, slowly."]
    chats = [llm.tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False,
                                               add_generation_prompt=True) for q in questions]
    outputs = llm.generate(chats, SamplingParams(temperature=0.0, max_tokens=24))
    for question, out in zip(questions, outputs):
        print(f"  {question!r:45} -> {out['text'][:40]!r} ({len(out['token_ids'])} tokens, {out['finish_reason']})")

    workload = make_workload(num_requests, prompt_len=(8, 64), output_len=(4, 96), vocab_size=len(llm.tokenizer))
    prompts = [list(p) for p in workload.prompts]
    params = [SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True) for n in workload.output_lens]
    print(f"\n{num_requests} requests, prompts of 8-64 tokens, 4-96 new tokens each "
          f"({workload.num_output_tokens} in all), at most {batch} at once:")
    start = time.perf_counter()
    static = []
    for first in range(0, num_requests, batch):
        static += generate_batch(llm.model_runner, llm.block_manager, prompts[first : first + batch],
                                 list(workload.output_lens[first : first + batch]))
    static_s = time.perf_counter() - start
    start = time.perf_counter()
    continuous = llm.generate(prompts, params, use_tqdm=False)
    continuous_s = time.perf_counter() - start
    total = workload.num_output_tokens
    print(f"  static batches (lesson 7):      {total / static_s:7.1f} tok/s")
    print(f"  continuous batching (lesson 8): {total / continuous_s:7.1f} tok/s")
    print(f"  same tokens: {[o['token_ids'] for o in continuous] == static}")

    blocks = 24
    tight = LLM(str(model_dir), max_num_seqs=batch, num_kvcache_blocks=blocks, kvcache_block_size=8,
                **features_up_to(8))
    squeezed = tight.generate(prompts, params, use_tqdm=False)
    print(f"\nThe same workload in a KV cache of only {blocks} blocks of 8 tokens:")
    print(f"  preemptions: {tight.scheduler.num_preemptions}; same tokens: "
          f"{[o['token_ids'] for o in squeezed] == static}; "
          f"blocks free afterwards: {tight.block_manager.num_free_blocks} of {blocks}")


def main() -> int:
    args = parse_args()
    select_tree(args.reference)
    from aios.fixtures import trained_model

    try:
        run(args.model or trained_model(), args.requests, args.batch)
    except NotImplementedError as error:
        print(f"\nNot implemented yet: {error}\n(run with --reference to see the finished version)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
