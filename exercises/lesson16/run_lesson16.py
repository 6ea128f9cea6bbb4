"""Lesson 16 demo: chunked prefill, a long prompt served in budget-sized chunks beside running decodes.

    python exercises/lesson16/run_lesson16.py               # with your aios/
    python exercises/lesson16/run_lesson16.py --reference   # with solutions/aios/
    python exercises/lesson16/run_lesson16.py --model DIR --budget 32

Shows: the plan of each step (which request decodes, which chunk of the long prompt runs) while
two short requests stream; the longest step and the gaps the short requests see, prefill-first
against chunked; and that both engines generate the same tokens.
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
    parser.add_argument("--budget", type=int, default=24, help="max_num_batched_tokens of the chunked engine")
    parser.add_argument("--long", type=int, default=200, help="tokens of the long prompt")
    return parser.parse_args()


def select_tree(reference: bool) -> None:
    """Put the chosen ``aios`` first on sys.path, before anything imports it."""
    sys.path.insert(0, str(REPO / "solutions" if reference else REPO))


def engine(model_dir: Path, chunked: bool, budget: int):
    """An engine with everything up to lesson 16 (PyTorch attention on a CPU: Triton would run interpreted)."""
    import torch

    from aios import LLM
    from aios.config import features_up_to

    settings = {**features_up_to(16), "enable_chunked_prefill": chunked, "max_num_seqs": 4,
                "enable_prefix_caching": False, "max_model_len": 512,
                "max_num_batched_tokens": budget if chunked else 512}
    if not torch.cuda.is_available():
        settings["attention_backend"] = "torch"
    return LLM(str(model_dir), **settings)


def requests(llm, long_len: int):
    """Two short questions and one long prompt (a text repeated to ``long_len`` tokens)."""
    text = ("The scheduler decides who runs next; the model runner does the work. " * 40)
    long_prompt = llm.tokenize(text)[:long_len]
    return [llm.tokenize("What is a KV cache?"), llm.tokenize("Why chunk a prompt?")], long_prompt


def serve(llm, long_len: int, show: bool) -> tuple[list[list[int]], int, int, float]:
    """The two short requests start; after two steps the long prompt arrives. Returns the tokens, the largest
    step (tokens), how many steps A or B sat without a token while running, and the longest step (s)."""
    from aios import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)
    shorts, long_prompt = requests(llm, long_len)
    llm.generate(shorts, SamplingParams(temperature=0.0, max_tokens=2), use_tqdm=False)  # warm-up, off the clock
    seqs = [llm.add_request(p, params) for p in shorts]
    largest, stalls, longest, step = 0, 0, 0.0, 0
    while not llm.is_finished() or step < 2:
        if step == 2:
            seqs.append(llm.add_request(long_prompt, SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)))
        before = {seq.seq_id: (seq.num_computed_tokens, seq.num_completion_tokens) for seq in seqs}
        start = time.perf_counter()
        _, num_tokens = llm.step()
        longest = max(longest, time.perf_counter() - start)
        largest = max(largest, abs(num_tokens))
        stalls += sum(1 for seq in seqs[:2] if 0 < before[seq.seq_id][1] == seq.num_completion_tokens
                      and not seq.is_finished)
        if show and step < 14:
            parts = []
            for name, seq in zip("ABL", seqs):
                computed, completed = before[seq.seq_id]
                if seq.num_completion_tokens > completed and seq.num_completion_tokens > 1:
                    parts.append(f"{name} decodes")
                elif seq.num_computed_tokens > computed or seq.num_completion_tokens > completed:
                    end = seq.num_computed_tokens if seq.num_completion_tokens == completed else seq.num_prompt_tokens
                    parts.append(f"{name} tokens {computed}..{end - 1}")
            print(f"  step {step:2}: {num_tokens:4} tokens  " + ", ".join(parts))
        step += 1
    return [seq.completion_token_ids for seq in seqs], largest, stalls, longest


def main() -> int:
    args = parse_args()
    select_tree(args.reference)
    from aios.fixtures import trained_model

    model_dir = args.model or trained_model()
    try:
        print(f"Chunked prefill, budget {args.budget}: two short requests (A, B) stream; "
              f"a {args.long}-token prompt (L) arrives at step 2.")
        chunked = serve(engine(model_dir, True, args.budget), args.long, show=True)
        plain = serve(engine(model_dir, False, args.budget), args.long, show=False)
    except NotImplementedError as error:
        print(f"\nNot implemented yet: {error}\n(run with --reference to see the finished version)")
        return 1
    print("\n                 largest step   steps A or B waited without a token   longest step")
    for name, (_, largest, stalls, longest) in (("prefill-first", plain), ("chunked", chunked)):
        print(f"  {name:>13}: {largest:6} tokens   {stalls:6}{'':31}{longest * 1000:8.1f} ms")
    print("  (on a busy CPU the times are noise; tests/lesson16/test_l16_benchmark.py measures latency on a GPU)")
    print(f"  same tokens: {plain[0] == chunked[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
