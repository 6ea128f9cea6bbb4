"""Lesson 13 demo: prefix caching on a workload that shares one system prompt.

    python exercises/lesson13/run_lesson13.py               # with your aios/
    python exercises/lesson13/run_lesson13.py --reference   # with solutions/aios/
    python exercises/lesson13/run_lesson13.py --model DIR --requests 32

Shows: two requests sharing a system prompt, block by block (which physical blocks they
share, their reference counts, how many tokens the second one skips); the whole workload
with prefix caching off and on — same tokens, prefilled tokens counted, time measured;
and a second conversation turn that finds the first turn's blocks in the cache.
"""

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SYSTEM = ("You are a careful assistant for an inference-engine course. Answer in one short paragraph, "
          "name the data structure involved, and say what it costs in memory and in time.")
QUESTIONS = ["What is a KV cache?", "Why do blocks have a fixed size?", "What does a scheduler decide?",
             "Why share a system prompt?", "What is preemption?", "What is a hash chain?",
             "Why compare tokens after a hash hit?", "What is a reference count?"]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", action="store_true", help="import solutions/aios instead of your aios/")
    parser.add_argument("--model", type=Path, help="checkpoint directory (default: the trained model, assets/aios-tiny-lm)")
    parser.add_argument("--requests", type=int, default=16, help="requests in the shared-prompt workload")
    return parser.parse_args()


def select_tree(reference: bool) -> None:
    """Put the chosen ``aios`` first on sys.path, before anything imports it."""
    sys.path.insert(0, str(REPO / "solutions" if reference else REPO))


def engine(model_dir: Path, caching: bool, **options):
    """An engine with everything up to lesson 13 (PyTorch attention on a CPU: Triton would run interpreted)."""
    import torch

    from aios import LLM
    from aios.config import features_up_to

    settings = {**features_up_to(13), "enable_prefix_caching": caching, **options}
    if not torch.cuda.is_available():
        settings["attention_backend"] = "torch"
    return LLM(str(model_dir), **settings)


def chat(llm, question: str) -> list[int]:
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]
    text = llm.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return llm.tokenize(text)


def show_two_requests(model_dir: Path) -> None:
    from aios import SamplingParams

    llm = engine(model_dir, True, kvcache_block_size=16)
    first, second = chat(llm, QUESTIONS[0]), chat(llm, QUESTIONS[1])
    common = next((i for i, (a, b) in enumerate(zip(first, second)) if a != b), min(len(first), len(second)))
    params = SamplingParams(temperature=0.0, max_tokens=4)
    seqs = [llm.add_request(first, params), llm.add_request(second, params)]
    llm.step()  # one prefill step admits both
    blocks = llm.block_manager.blocks
    print(f"Two requests, {len(first)} and {len(second)} tokens; the first {common} are the same "
          f"(system prompt + chat template), blocks of 16:")
    for name, seq in zip("AB", seqs):
        refs = " ".join(f"{b}(x{blocks[b].ref_count})" for b in seq.block_table)
        print(f"  {name}: block table {refs}   cached tokens: {seq.num_cached_tokens}")
    while not llm.is_finished():
        llm.step()


def show_workload(model_dir: Path, num_requests: int) -> None:
    from aios import SamplingParams

    print(f"\n{num_requests} requests with the same system prompt, prefix caching off and on:")
    results = {}
    for caching in (False, True):
        llm = engine(model_dir, caching)
        prompts = [chat(llm, QUESTIONS[i % len(QUESTIONS)] + f" (request {i})") for i in range(num_requests)]
        params = SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True)
        seqs = [llm.add_request(prompt, params) for prompt in prompts]
        prefilled, start = 0, time.perf_counter()
        while not llm.is_finished():
            _, num_tokens = llm.step()
            prefilled += max(num_tokens, 0)
        seconds = time.perf_counter() - start
        results[caching] = [seq.completion_token_ids for seq in seqs]
        print(f"  prefix caching {'on ' if caching else 'off'}: {sum(map(len, prompts)):6} prompt tokens, "
              f"{prefilled:6} prefilled, {seconds:6.2f} s")
    print(f"  same tokens: {results[False] == results[True]}")


def show_second_turn(model_dir: Path) -> None:
    from aios import SamplingParams

    llm = engine(model_dir, True, kvcache_block_size=16)
    first = chat(llm, QUESTIONS[0])
    answer = llm.generate([first], SamplingParams(temperature=0.0, max_tokens=40, ignore_eos=True),
                          use_tqdm=False)[0]["token_ids"]
    follow_up = first + answer + llm.tokenizer.encode(" And what does it cost?")
    seq = llm.add_request(follow_up, SamplingParams(temperature=0.0, max_tokens=8))
    _, prefilled = llm.step()
    print(f"\nA second turn resends turn one ({len(first)} prompt + {len(answer)} answer tokens) plus a question: "
          f"{len(follow_up)} tokens, {seq.num_cached_tokens} found in the cache, {prefilled} prefilled.")
    while not llm.is_finished():
        llm.step()


def main() -> int:
    args = parse_args()
    select_tree(args.reference)
    from aios.fixtures import trained_model

    model_dir = args.model or trained_model()
    try:
        show_two_requests(model_dir)
        show_workload(model_dir, args.requests)
        show_second_turn(model_dir)
    except NotImplementedError as error:
        print(f"\nNot implemented yet: {error}\n(run with --reference to see the finished version)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
