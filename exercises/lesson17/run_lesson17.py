"""Lesson 17 demo: the overlapped engine loop, step by step, beside the synchronous one.

    python exercises/lesson17/run_lesson17.py               # with your aios/
    python exercises/lesson17/run_lesson17.py --reference   # with solutions/aios/
    python exercises/lesson17/run_lesson17.py --model DIR

Shows, for every step() call of the overlapped engine: what it launched (prefill tokens or decode
rows), which requests' tokens it resolved (the step before's), and who finished; then that both loops
answer the same, and on a GPU how long a step takes in each.
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
    parser.add_argument("--max-tokens", type=int, default=12, help="tokens per request")
    return parser.parse_args()


def select_tree(reference: bool) -> None:
    """Put the chosen ``aios`` first on sys.path, before anything imports it."""
    sys.path.insert(0, str(REPO / "solutions" if reference else REPO))


def engine(model_dir: Path, overlap: bool):
    """An engine with everything up to lesson 17, the loop chosen by ``overlap`` (PyTorch attention on a CPU)."""
    import torch

    from aios import LLM
    from aios.config import features_up_to

    settings = {**features_up_to(17), "async_scheduling": overlap, "max_num_seqs": 4, "max_model_len": 256}
    if not torch.cuda.is_available():
        settings["attention_backend"] = "torch"
    return LLM(str(model_dir), **settings)


QUESTIONS = ["What is a KV cache?", "Why overlap the host with the GPU?", "Name a prime number."]


def serve(llm, max_tokens: int, show: bool) -> tuple[list[list[int]], float]:
    """The three questions, one with max_tokens=1; returns the answers and the mean step time (s)."""
    from aios import SamplingParams

    limits = [max_tokens, 1, max_tokens // 2]
    llm.generate([llm.tokenize("warm up")], SamplingParams(temperature=0.0, max_tokens=2), use_tqdm=False)
    seqs = [llm.add_request(llm.tokenize(q), SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True))
            for q, n in zip(QUESTIONS, limits)]
    names = {seq.seq_id: name for seq, name in zip(seqs, "ABC")}
    steps, start = 0, time.perf_counter()
    while not llm.is_finished():
        before = [seq.num_completion_tokens for seq in seqs]
        finished, num_tokens = llm.step()
        steps += 1
        if show:
            launched = f"prefill {num_tokens:3} tokens" if num_tokens > 0 else (
                f"decode {-num_tokens} rows     " if num_tokens < 0 else "nothing          ")
            got = [f"{names[s.seq_id]}+{s.completion_token_ids[-1]}" for s, b in zip(seqs, before)
                   if s.num_completion_tokens > b]
            done = [f"{names[s.seq_id]} ({s.finish_reason})" for s in finished]
            print(f"  step() {steps:2}: launched {launched}   resolved {', '.join(got) or '-':24} "
                  f"finished {', '.join(done) or '-'}")
    return [seq.completion_token_ids for seq in seqs], (time.perf_counter() - start) / max(steps, 1)


def main() -> int:
    args = parse_args()
    select_tree(args.reference)
    from aios.fixtures import trained_model

    model_dir = args.model or trained_model()
    try:
        print("Overlapped loop: each step() launches the next batch, then resolves the previous one's tokens.")
        print("A and C ask for", args.max_tokens, "and", args.max_tokens // 2, "tokens, B for 1 (it never decodes).")
        overlapped, overlapped_step = serve(engine(model_dir, True), args.max_tokens, show=True)
        plain, plain_step = serve(engine(model_dir, False), args.max_tokens, show=False)
    except NotImplementedError as error:
        print(f"\nNot implemented yet: {error}\n(run with --reference to see the finished version)")
        return 1
    print(f"\n  same tokens as the synchronous loop: {overlapped == plain}")
    print(f"  mean step: synchronous {plain_step * 1e3:.2f} ms, overlapped {overlapped_step * 1e3:.2f} ms "
          "(on a CPU nothing runs asynchronously: aios.bench.async_overlap measures it on a GPU)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
