"""Lesson 11 demo: decode steps through CUDA graphs.

    python exercises/lesson11/run_lesson11.py               # with your aios/
    python exercises/lesson11/run_lesson11.py --reference   # with solutions/aios/
    python exercises/lesson11/run_lesson11.py --model DIR --requests 8

Shows: the batch sizes the runner captures and how a step is padded into the static
buffers; on a GPU, the same requests decoded eagerly and through graphs (identical
tokens, and the time per step of each).
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
    parser.add_argument("--requests", type=int, default=8, help="requests decoded together on the GPU")
    return parser.parse_args()


def select_tree(reference: bool) -> None:
    """Put the chosen ``aios`` first on sys.path, before anything imports it."""
    sys.path.insert(0, str(REPO / "solutions" if reference else REPO))


def show_padding() -> None:
    import torch

    from aios.engine.model_runner import DecodeGraphInputs, fill_graph_inputs, graph_batch_size_for, graph_batch_sizes
    from aios.utils.context import Context

    sizes = graph_batch_sizes(256)
    print(f"graph_batch_sizes(256): {sizes}")
    for n in (1, 3, 37, 250):
        print(f"  a decode step of {n:3d} sequences replays the graph of {graph_batch_size_for(n, sizes)}")
    inputs = DecodeGraphInputs.allocate(8, 4, hidden_size=4, dtype=torch.float32, device="cpu")
    context = Context(is_prefill=False, cu_seqlens_q=torch.arange(4, dtype=torch.int32),
                      context_lens=torch.tensor([17, 5, 33], dtype=torch.int32),
                      slot_mapping=torch.tensor([80, 20, 130]),
                      block_tables=torch.tensor([[4, 5], [1, -1], [6, 8]], dtype=torch.int32), max_seqlen_q=1,
                      max_seqlen_k=33)
    fill_graph_inputs(inputs, torch.tensor([11, 12, 13]), torch.tensor([16, 4, 32]), context,
                      batch_size=graph_batch_size_for(3, graph_batch_sizes(8)))
    print("\n3 sequences padded to the graph of 4 (static buffers, first 4 rows):")
    for name in ("input_ids", "positions", "slot_mapping", "context_lens"):
        print(f"  {name:13s} {getattr(inputs, name)[:4].tolist()}")


def time_decode(model_dir: Path, num_requests: int) -> None:
    import torch

    from aios import LLM, SamplingParams
    from aios.config import features_up_to

    prompts = [list(range(3 + i, 40 + 3 * i)) for i in range(num_requests)]
    params = SamplingParams(temperature=0.0, max_tokens=128, ignore_eos=True)
    results = {}
    for eager in (True, False):
        start = time.perf_counter()
        llm = LLM(str(model_dir), **{**features_up_to(11), "enforce_eager": eager}, max_num_seqs=max(num_requests, 1),
                  num_kvcache_blocks=64 * num_requests)
        built = time.perf_counter() - start
        llm.generate(prompts[:1], SamplingParams(temperature=0.0, max_tokens=4), use_tqdm=False)  # warm-up
        for prompt in prompts:
            llm.add_request(prompt, params)
        llm.step()  # the prefill
        torch.cuda.synchronize()
        start, steps = time.perf_counter(), 0
        while not llm.is_finished():
            finished, _ = llm.step()
            steps += 1
        torch.cuda.synchronize()
        per_step = (time.perf_counter() - start) / steps
        label = "eager" if eager else f"graphs ({len(llm.model_runner.graphs)} captured)"
        print(f"  {label:22s} engine ready in {built:5.1f} s; {per_step * 1e3:6.2f} ms per decode step = "
              f"{num_requests / per_step:8.0f} tok/s")
        results[eager] = per_step
    print(f"  graphs are x{results[True] / results[False]:.1f} faster per step")


def main() -> None:
    args = parse_args()
    select_tree(args.reference)
    import torch

    from aios.fixtures import trained_model

    print(f"aios from {'solutions/' if args.reference else 'your aios/'}\n")
    show_padding()
    if not torch.cuda.is_available():
        print("\n(no GPU: CUDA graphs need one; the tests replay with a CPU stand-in)")
        return
    model_dir = args.model or trained_model()
    print(f"\n{args.requests} requests decoded together on {model_dir}:")
    time_decode(Path(model_dir), args.requests)


if __name__ == "__main__":
    main()
